//! Putting the overlay core in front of the kernel: the fuse-overlayfs option language
//! ([`options`]) and the typed mount plan built from it ([`plan`]), the kernel mount
//! ([`kernel`]), one FUSE [`session`] that answers every request from the protocol's bytes
//! ([`wire`]) whichever transport carries them (`/dev/fuse`: [`devfuse`]; io_uring:
//! [`uring`]), daemonizing ([`daemon`]), and measuring what a mount was asked for
//! ([`access`], [`report`], [`stats`]).

pub mod access;
pub mod daemon;
pub mod devfuse;
pub mod error;
pub mod journal;
pub mod keeper;
pub mod kernel;
pub mod metrics;
pub mod options;
pub mod plan;
pub mod report;
pub mod run;
pub mod session;
pub mod stats;
pub mod uring;
pub mod wire;

pub use error::Error;

#[cfg(test)]
mod framing_tests;
