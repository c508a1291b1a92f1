//! The session's requests that need more than one call into the overlay: open handles,
//! writes through them, creating and linking entries, extended attributes.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::{Handle, Session};
use crate::overlay::acl;
use crate::overlay::inode::{Attr, ROOT_INO};
use crate::overlay::write::{Caller, NewEntry, SetAttr};

/// `RENAME_WHITEOUT`: only overlayfs itself may ask for it.
const RENAME_WHITEOUT: u32 = 1 << 2;

/// The open flags of the reply to a CREATE with open(2) flags `flags`. A file created
/// write-only (tar, cp, a compiler's output) gets direct I/O: its writes then come with
/// FUSE_WRITE_KILL_SUIDGID where needed instead of the kernel asking for
/// `security.capability` first (one round trip less per new file). Such a descriptor can
/// neither read nor map the file, so it loses nothing by bypassing the page cache; the
/// file's later readers fill the cache as usual. Anything else keeps the cache.
pub(crate) fn create_open_flags(flags: u32) -> u32 {
    if flags & libc::O_ACCMODE as u32 == libc::O_WRONLY as u32 {
        crate::mount::wire::FOPEN_DIRECT_IO
    } else {
        crate::mount::wire::FOPEN_KEEP_CACHE
    }
}

fn ebadf() -> io::Error {
    io::Error::from_raw_os_error(libc::EBADF)
}

/// The caller's group if it would lack CAP_FSETID. FUSE does not pass capabilities; the
/// mount's root (also root of a rootless user namespace) is taken to hold it, others not.
pub(crate) fn lacks_fsetid(uid: u32, gid: u32) -> Option<u32> {
    (uid != 0).then_some(gid)
}

impl Session {
    /// The attributes of `name` in `parent`; `None` is a negative entry.
    pub(crate) fn lookup_attr(&self, parent: u64, name: &[u8]) -> io::Result<Option<Attr>> {
        match self.ov.lookup(parent, name)? {
            Some(node) => {
                let attr = self.ov.attr(&node)?;
                if !attr.is_dir() {
                    self.ov.looked_up_in(parent);
                }
                Ok(Some(attr))
            }
            None => Ok(None),
        }
    }

    /// The attributes of `ino`; the root keeps the kernel's fixed number.
    pub(crate) fn getattr_of(&self, ino: u64) -> io::Result<Attr> {
        let mut a = self.ov.getattr(ino)?;
        if ino == ROOT_INO {
            a.ino = ROOT_INO;
        }
        Ok(a)
    }

    /// Open `ino` on the writable mount; the new handle.
    pub(crate) fn open_handle(&self, ino: u64, flags: i32, kill: Option<u32>) -> io::Result<u64> {
        let (fd, writable) = self.ov.open(ino, flags, kill)?;
        Ok(self.add_handle(ino, fd, writable))
    }

    pub(crate) fn add_handle(&self, ino: u64, fd: OwnedFd, writable: bool) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.insert_handle(fh, ino, fd, writable);
        fh
    }

    pub(crate) fn insert_handle(&self, fh: u64, ino: u64, fd: OwnedFd, writable: bool) {
        let fd = Arc::new(fd);
        self.ov.opened(ino, &fd);
        self.handles.insert(
            fh,
            Handle {
                ino,
                fd,
                passthrough: false,
                writable,
            },
        );
    }

    /// The descriptor behind a handle opened for writing.
    fn writable_fd(&self, fh: u64) -> io::Result<Arc<OwnedFd>> {
        self.handles
            .get(&fh)
            .filter(|h| h.writable)
            .map(|h| Arc::clone(&h.fd))
            .ok_or_else(ebadf)
    }

    /// `ino` was opened to read as handle `fh`: its atime, as the mount's options say.
    pub(crate) fn accessed(&self, ino: u64, fh: u64) {
        if let (Ok(node), Some(fd)) = (self.ov.node(ino), self.handle_fd(fh)) {
            self.ov.accessed(&node, &fd);
        }
    }

    fn handle_fd(&self, fh: u64) -> Option<Arc<OwnedFd>> {
        self.handles.get(&fh).map(|h| Arc::clone(&h.fd))
    }

    /// `kill`: the caller's group when set-ID bits must go (it lacks CAP_FSETID).
    pub(crate) fn write_handle(
        &self,
        ino: u64,
        fh: u64,
        offset: u64,
        data: &[u8],
        kill: Option<u32>,
    ) -> io::Result<usize> {
        let fd = self.writable_fd(fh)?;
        self.ov.write_data(ino, &fd, offset, data, kill)
    }

    pub(crate) fn fsync_handle(&self, fh: u64, datasync: bool) -> io::Result<()> {
        match self.handle_fd(fh) {
            Some(fd) => self.ov.fsync(&fd, datasync),
            None => Ok(()),
        }
    }

    pub(crate) fn fallocate_handle(
        &self,
        ino: u64,
        fh: u64,
        (offset, length, mode): (u64, u64, i32),
        kill: Option<u32>,
    ) -> io::Result<()> {
        let fd = self.writable_fd(fh)?;
        self.ov.fallocate(ino, &fd, offset, length, mode, kill)
    }

    pub(crate) fn set_attr(&self, ino: u64, sa: &SetAttr, fh: Option<u64>) -> io::Result<Attr> {
        let fd = fh.and_then(|fh| self.handle_fd(fh));
        self.ov.setattr(ino, sa, fd.as_deref())
    }

    /// Create and open a regular file: its attributes and handle.
    pub(crate) fn create_file(
        &self,
        parent: u64,
        name: &[u8],
        mode: u32,
        who: Caller,
    ) -> io::Result<(Attr, u64)> {
        match self.ov.create(parent, name, NewEntry::File, mode, who)? {
            (node, Some(fd)) => {
                // Fresh: the node was made from the new file's stat.
                let attr = node.attr();
                Ok((attr, self.add_handle(node.ino, fd, true)))
            }
            (_, None) => Err(io::Error::from_raw_os_error(libc::EIO)),
        }
    }

    /// mkdir, mknod or symlink: the new entry's attributes.
    pub(crate) fn make(
        &self,
        parent: u64,
        name: &[u8],
        what: NewEntry<'_>,
        mode: u32,
        who: Caller,
    ) -> io::Result<Attr> {
        let (node, _) = self.ov.create(parent, name, what, mode, who)?;
        self.ov.attr(&node)
    }

    pub(crate) fn hard_link(&self, ino: u64, newparent: u64, newname: &[u8]) -> io::Result<Attr> {
        let node = self.ov.link(ino, newparent, newname)?;
        self.ov.attr(&node)
    }

    pub(crate) fn rename_entry(
        &self,
        from: (u64, &[u8]),
        to: (u64, &[u8]),
        flags: u32,
    ) -> io::Result<()> {
        if flags & RENAME_WHITEOUT != 0 {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        self.ov.rename(from.0, from.1, to.0, to.1, flags)
    }

    /// setxattr by the process `pid` (ids `uid`, `gid`): an access ACL set by someone not in
    /// the file's group clears set-group-ID, as the VFS does.
    pub(crate) fn set_xattr(
        &self,
        ino: u64,
        (name, value, flags): (&[u8], &[u8], i32),
        (uid, gid, pid): (u32, u32, u32),
    ) -> io::Result<()> {
        if !self.ov.writable() {
            return Err(io::Error::from_raw_os_error(libc::EROFS));
        }
        self.ov.set_xattr(ino, name, value, flags)?;
        if name == acl::ACCESS.as_bytes() && uid != 0 {
            let a = self.ov.getattr(ino)?;
            if !in_group(pid, gid, a.gid) {
                self.ov.clear_sgid(ino)?;
            }
        }
        Ok(())
    }

    pub(crate) fn remove_xattr(&self, ino: u64, name: &[u8]) -> io::Result<()> {
        if !self.ov.writable() {
            return Err(io::Error::from_raw_os_error(libc::EROFS));
        }
        self.ov.remove_xattr(ino, name)
    }
}

/// Whether process `pid`, whose primary group is `primary`, is in group `gid` (its primary
/// or a supplementary group).
fn in_group(pid: u32, primary: u32, gid: u32) -> bool {
    if primary == gid {
        return true;
    }
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .is_some_and(|g| g.split_whitespace().any(|x| x.parse() == Ok(gid)))
}
