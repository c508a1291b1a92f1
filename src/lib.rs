//! stratafs: present a stack of unpacked container image layers as one merged tree, lazily,
//! with an optional writable layer on top; and convert images into the repository layout
//! that CernVM-FS publishes.
//!
//! The crate has seven parts with one-way dependencies (tests/architecture.rs keeps them so):
//!
//! | module | what | may use |
//! |---|---|---|
//! | [`confined`] | descriptor-relative, symlink-free filesystem helpers | — |
//! | [`exposition`] | Prometheus' metric model and text format | — |
//! | [`stack`] | the on-disk layer-stack contract: layers, whiteouts, override xattr, resolution | `confined` |
//! | [`overlay`] | the FUSE-free merged filesystem core: inodes, listings, writes, copy-up | `stack`, `confined` |
//! | [`mount`] | front ends: mount options and plan, the kernel mount, one FUSE session over /dev/fuse or io_uring, daemon, access log, metrics | `overlay`, `stack`, `confined`, `exposition` |
//! | [`image`] (feature `image`) | references, registries, unpacking, flat roots, the repository | `stack`, `confined` |
//! | [`snapshotter`] (feature `snapshotter`) | containerd's Snapshots API over the repository | `image`, `stack`, `confined`, `exposition` |
//! | [`cli`] | the command line over all of them | everything |

pub mod cli;
pub mod confined;
pub mod exposition;
#[cfg(feature = "image")]
pub mod image;
pub mod mount;
pub mod overlay;
#[cfg(feature = "snapshotter")]
pub mod snapshotter;
pub mod stack;

/// Generated-input tests: `n` cases, or `PROPTEST_CASES` for a longer run.
#[cfg(test)]
pub(crate) fn test_cases(n: u32) -> proptest::test_runner::Config {
    let n = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(n);
    proptest::test_runner::Config::with_cases(n)
}
