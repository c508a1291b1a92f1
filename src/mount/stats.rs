//! Per-mount request statistics, counted in the mount's metrics page
//! ([`super::metrics::page`]) and, with `-o stats=FILE`, written out: how many FUSE requests
//! of each opcode the daemon served and the time it spent in them (from the request's arrival in its handler to
//! the reply written), so that a benchmark states requests per file next to its time and a
//! change is judged by the requests it removed. Written at unmount, as JSON:
//!
//! ```json
//! {"mount":"/mnt","seconds":12.5,"requests":1234,"io_uring_requests":0,"ops":{"lookup":{"count":1000,"us":4321}, …}}
//! ```

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use super::metrics::page::{Page, Scalar};

macro_rules! ops {
    ($($v:ident => $n:literal),* $(,)?) => {
        /// The requests the session answers.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Op { $($v),* }
        pub(crate) const NAMES: &[&str] = &[$($n),*];
    };
}

ops! {
    Lookup => "lookup", Forget => "forget", Getattr => "getattr", Setattr => "setattr",
    Readlink => "readlink", Open => "open", Read => "read", Write => "write", Flush => "flush",
    Release => "release", Fsync => "fsync", Opendir => "opendir", Readdir => "readdir",
    Readdirplus => "readdirplus", Releasedir => "releasedir", Fsyncdir => "fsyncdir",
    Statfs => "statfs", Getxattr => "getxattr", Listxattr => "listxattr",
    Setxattr => "setxattr", Removexattr => "removexattr", Access => "access",
    Create => "create", Mkdir => "mkdir", Mknod => "mknod", Symlink => "symlink",
    Link => "link", Unlink => "unlink", Rmdir => "rmdir", Rename => "rename",
    Fallocate => "fallocate", Destroy => "destroy",
    // Answered ENOTTY: the kernel sends every ioctl on a file to the daemon, with no negative
    // cache (Python's isatty() on each file it opens is one).
    Ioctl => "ioctl",
    // Opcodes answered ENOSYS (lseek, poll, locks, copy_file_range …): the kernel stops
    // sending each after the first.
    Other => "other",
}

/// A mount's request counters ([`Page`], which exporters read too) and, with `-o stats=FILE`,
/// the file they are written to at unmount.
pub struct Stats {
    file: Option<PathBuf>,
    mount: PathBuf,
    start: Instant,
    page: Page,
}

/// Counts one request when dropped.
pub struct Timer<'a> {
    stats: &'a Stats,
    op: Op,
    t0: Instant,
}

impl Drop for Timer<'_> {
    fn drop(&mut self) {
        let nanos = self.t0.elapsed().as_nanos() as u64;
        self.stats.page.request(self.op, nanos);
    }
}

#[derive(Serialize)]
struct OpLine {
    count: u64,
    us: u64,
}

#[derive(Serialize)]
struct Report<'a> {
    mount: &'a Path,
    seconds: f64,
    requests: u64,
    io_uring_requests: u64,
    /// Bytes the server read for callers, all layers together.
    read_bytes: u64,
    /// Bytes hashed to check layer content against records (verify=on).
    verified_bytes: u64,
    ops: BTreeMap<&'static str, OpLine>,
}

impl Stats {
    /// Counters in `page`; `file`, if given, is checked now that it can be written (the
    /// error is the mount's, before it starts).
    pub fn new(page: Page, file: Option<&Path>, mount: &Path) -> io::Result<Stats> {
        let s = Stats {
            file: file.map(std::path::absolute).transpose()?,
            mount: mount.to_path_buf(),
            start: Instant::now(),
            page,
        };
        s.write()?;
        Ok(s)
    }

    pub fn page(&self) -> &Page {
        &self.page
    }

    pub fn time(&self, op: Op) -> Timer<'_> {
        Timer {
            stats: self,
            op,
            t0: Instant::now(),
        }
    }

    /// Count `n` requests of `op` that took no measurable time (forgets of a batch).
    pub fn add(&self, op: Op, n: u64) {
        self.page.requests(op, n);
    }

    /// A request of `op` was answered with an error.
    pub fn error(&self, op: Op) {
        self.page.error(op);
    }

    /// Count one request that came through the rings.
    pub fn ring_request(&self) {
        self.page.add(Scalar::RingRequests, 1);
    }

    fn report(&self) -> Report<'_> {
        let mut ops = BTreeMap::new();
        let mut requests = 0;
        for (i, name) in NAMES.iter().enumerate() {
            let f = self.page.op(i);
            if f.count > 0 {
                requests += f.count;
                ops.insert(
                    *name,
                    OpLine {
                        count: f.count,
                        us: f.nanos / 1000,
                    },
                );
            }
        }
        Report {
            mount: &self.mount,
            seconds: self.start.elapsed().as_secs_f64(),
            requests,
            io_uring_requests: self.page.scalar(Scalar::RingRequests),
            read_bytes: (0..self.page.layers())
                .map(|l| self.page.layer(l).bytes_read)
                .sum(),
            verified_bytes: self.page.scalar(Scalar::VerifiedBytes),
            ops,
        }
    }

    /// One line for the log: `requests=N lookup=… getattr=…`.
    pub fn summary(&self) -> String {
        let r = self.report();
        let mut s = format!("requests={}", r.requests);
        if r.io_uring_requests > 0 {
            s.push_str(&format!(" io_uring={}", r.io_uring_requests));
        }
        for (name, l) in &r.ops {
            s.push_str(&format!(" {name}={}/{}us", l.count, l.us));
        }
        s
    }

    /// Write the whole report, if a file was asked for (temporary name, then rename).
    pub fn write(&self) -> io::Result<()> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        let tmp = file.with_file_name(format!(
            ".{}.tmp",
            file.file_name().unwrap_or_default().to_string_lossy()
        ));
        std::fs::write(&tmp, serde_json::to_vec(&self.report())?)?;
        std::fs::rename(&tmp, file)
    }
}

impl crate::overlay::Tally for Stats {
    fn file_opened(&self, layer: usize) {
        self.page.file_opened(layer);
    }

    fn copied_up(&self) {
        self.page.add(Scalar::CopyUps, 1);
    }

    fn verified(&self, failures: u64, bytes: u64) {
        self.page.add(Scalar::VerifyFailures, failures);
        self.page.add(Scalar::VerifiedBytes, bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_writes() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("stats.json");
        let s = Stats::new(Page::anonymous(0).unwrap(), Some(&f), Path::new("/mnt")).unwrap();
        drop(s.time(Op::Lookup));
        drop(s.time(Op::Lookup));
        s.add(Op::Forget, 3);
        s.write().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&f).unwrap()).unwrap();
        assert_eq!(v["requests"], 5);
        assert_eq!(v["ops"]["lookup"]["count"], 2);
        assert_eq!(v["ops"]["forget"]["count"], 3);
        assert!(v["ops"].get("read").is_none());
        assert!(s.summary().starts_with("requests=5 "));
    }
}
