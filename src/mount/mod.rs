//! Front ends that put the overlay core in front of the kernel: the fuser adapter
//! ([`fuse`]), the fuse-overlayfs option language ([`options`]) and the typed mount plan built
//! from it ([`plan`]), daemonizing ([`daemon`]), FUSE over io_uring ([`uring`]), and measuring what a mount was asked for
//! ([`access`], [`report`]).

pub mod access;
pub mod daemon;
pub mod error;
pub mod fuse;
pub mod options;
pub mod plan;
pub mod report;
mod requests;
pub mod run;
pub mod stats;
pub mod uring;

pub use error::Error;
