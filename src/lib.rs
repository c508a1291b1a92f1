//! stratafs: present a stack of unpacked container image layers as one merged tree, lazily,
//! with an optional writable layer on top.
//!
//! The overlay core ([`overlay`], [`inode`], [`layer`], [`whiteout`], [`dir`], and for the
//! writable layer [`upper`], [`copyup`], [`write`], [`idmap`]) is plain Rust and knows nothing
//! of FUSE; [`fuse`] is the thin adapter that maps kernel requests onto it.

pub mod cli;
pub mod copyup;
pub mod daemon;
pub mod dir;
pub mod error;
pub mod fuse;
pub mod idmap;
pub mod inode;
pub mod layer;
pub mod options;
pub mod overlay;
pub mod upper;
pub mod whiteout;
pub mod write;

pub use error::Error;
pub mod access;
pub mod commands;
pub mod convert;
pub mod digest;
pub mod flat;
pub mod image;
pub mod podman_store;
pub mod recipe;
pub mod reference;
pub mod registry;
pub mod repo;
pub mod report;
pub mod source;
pub mod thin;
pub mod unpack;
