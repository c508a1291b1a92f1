//! stratafs: present a stack of unpacked container image layers as one merged tree, lazily.
//!
//! The overlay core ([`overlay`], [`inode`], [`layer`], [`whiteout`], [`dir`]) is plain Rust and
//! knows nothing of FUSE; [`fuse`] is the thin adapter that maps kernel requests onto it.

pub mod cli;
pub mod daemon;
pub mod dir;
pub mod error;
pub mod fuse;
pub mod inode;
pub mod layer;
pub mod options;
pub mod overlay;
pub mod whiteout;

pub use error::Error;
