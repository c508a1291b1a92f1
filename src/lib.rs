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

/// Everything under `dir`, as paths (tests that check nothing was written outside a place).
#[cfg(test)]
pub(crate) fn all_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out
}

/// Generated-input tests: `n` cases, or `PROPTEST_CASES` for a longer run.
#[cfg(test)]
pub(crate) fn test_cases(n: u32) -> proptest::test_runner::Config {
    let n = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(n);
    proptest::test_runner::Config::with_cases(n)
}
