//! Access times through the mount, governed by its own atime options as on kernel overlayfs:
//! layer files are opened with O_NOATIME (see `stack::layer`), and an access to an entry of
//! the writable layer updates its atime as `noatime`, `relatime` (the default), `strictatime`
//! and `nodiratime` say. Lower layers' files never change: overlayfs does not copy up for an
//! atime.

use std::os::fd::{AsRawFd, OwnedFd};

use super::Overlay;
use super::inode::Node;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Atime {
    /// Update when the atime is not newer than mtime or ctime, or a day old (`relatime`).
    #[default]
    Relative,
    /// Never (`noatime`, and `ro`).
    Never,
    /// On every access (`strictatime`).
    Strict,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AtimePolicy {
    pub mode: Atime,
    /// Directories never (`nodiratime`).
    pub nodiratime: bool,
}

impl AtimePolicy {
    /// Whether an access at `now` (seconds) updates an entry with stat `st`: the VFS's rule.
    pub fn needs_update(&self, st: &rustix::fs::Stat, now: i64) -> bool {
        let dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
        match self.mode {
            _ if dir && self.nodiratime => false,
            Atime::Never => false,
            Atime::Strict => true,
            Atime::Relative => {
                // The VFS's rule, but a ctime equal to the atime is not newer: futimens, our
                // only way to set an atime, stamps both with the same time.
                let a = (st.st_atime, st.st_atime_nsec);
                a <= (st.st_mtime, st.st_mtime_nsec)
                    || a < (st.st_ctime, st.st_ctime_nsec)
                    || now - st.st_atime >= 24 * 3600
            }
        }
    }
}

impl Overlay {
    /// `node` was read (opened for reading, executed, listed) through `fd`, an open descriptor
    /// of its writable-layer copy if it has one.
    pub fn accessed(&self, node: &Node, fd: &OwnedFd) {
        if self.read_only || self.upper.is_none() || node.top() != 0 {
            return;
        }
        let policy = self.atime;
        if policy.mode == Atime::Never {
            return;
        }
        let Ok(st) = rustix::fs::fstat(fd) else {
            return;
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        if !policy.needs_update(&st, now) {
            return;
        }
        let times = [
            libc::timespec {
                tv_sec: 0,
                tv_nsec: libc::UTIME_NOW,
            },
            libc::timespec {
                tv_sec: 0,
                tv_nsec: libc::UTIME_OMIT,
            },
        ];
        // SAFETY: a live descriptor and two timespecs, as futimens(3) takes them.
        let r = unsafe { libc::futimens(fd.as_raw_fd(), times.as_ptr()) };
        if r != 0 {
            tracing::debug!(ino = node.ino, error = %std::io::Error::last_os_error(), "atime not updated");
        } else {
            // The kernel reads cached pages without asking: its attributes must go.
            self.names.stale_inode(node.ino);
        }
    }

    /// A directory of the writable layer was listed from its start.
    pub fn dir_accessed(&self, ino: u64) {
        if self.read_only || self.upper.is_none() || self.atime.mode == Atime::Never {
            return;
        }
        let Ok(node) = self.node(ino) else { return };
        if node.top() != 0 || !node.attr().is_dir() {
            return;
        }
        // A directory being written in has its descriptor open already.
        let cached = self.upper.as_ref().and_then(|u| u.peek_dir(ino));
        match cached {
            Some(fd) => self.accessed(&node, &fd),
            None => {
                if let Ok(fd) = self.layers[0].open_dir(&node.path()) {
                    self.accessed(&node, &fd);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vfs_rule_for_each_option() {
        // SAFETY: Stat is a plain C struct of integers: all zeroes is a valid value.
        let mut st: rustix::fs::Stat = unsafe { std::mem::zeroed() };
        st.st_mode = libc::S_IFREG | 0o644;
        (st.st_atime, st.st_mtime, st.st_ctime) = (100, 100, 100);
        let p = |mode, nodiratime| AtimePolicy { mode, nodiratime };
        assert!(p(Atime::Relative, false).needs_update(&st, 200));
        st.st_atime = 150;
        assert!(!p(Atime::Relative, false).needs_update(&st, 200));
        assert!(p(Atime::Relative, false).needs_update(&st, 150 + 24 * 3600));
        assert!(p(Atime::Strict, false).needs_update(&st, 200));
        assert!(!p(Atime::Never, false).needs_update(&st, 200));
        st.st_mode = libc::S_IFDIR | 0o755;
        assert!(!p(Atime::Strict, true).needs_update(&st, 200));
        assert!(p(Atime::Strict, false).needs_update(&st, 200));
    }
}
