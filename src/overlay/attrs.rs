//! Changes to what a file is rather than where it is: attributes (mode, owner, size, times),
//! xattrs, opening for writing and the data written. Each copies up the file it touches
//! first; names and places change in [`super::write`].

use std::ffi::CString;
use std::io;
use std::os::fd::OwnedFd;

use rustix::fs::{AtFlags, Gid, Mode, Timespec, Timestamps, Uid};
use rustix::io::Errno;

use super::acl;
use crate::overlay::copyup::Data;
use crate::overlay::inode::{Attr, Node};
use crate::overlay::upper::cname;
use crate::overlay::{Overlay, errno};
use crate::stack::override_stat::Override;

/// A time to set.
#[derive(Debug, Clone, Copy)]
pub enum SetTime {
    Now,
    At(i64, u32),
}

/// Attribute changes of a SETATTR.
#[derive(Debug, Clone, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<SetTime>,
    pub mtime: Option<SetTime>,
    /// Set to the caller's group when it lacks CAP_FSETID: a truncate then clears
    /// set-user/group-ID as the VFS would.
    pub kill_suidgid: Option<u32>,
}

fn to_ts(t: Option<SetTime>) -> Timespec {
    match t {
        None => Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_OMIT,
        },
        Some(SetTime::Now) => Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_NOW,
        },
        Some(SetTime::At(s, n)) => Timespec {
            tv_sec: s,
            tv_nsec: n as _,
        },
    }
}

impl Overlay {
    /// The parent directory (in the writable layer) and final name of a node, for `*at` calls;
    /// `.` of the upper root for the root.
    fn at(&self, node: &Node) -> io::Result<(OwnedFd, CString)> {
        match node.link() {
            Some((p, n)) => Ok((self.layers[0].open_dir(&p.path())?, cname(&n)?)),
            None => Ok((self.layers[0].open_dir(b"")?, cname(b".")?)),
        }
    }

    /// chmod, chown, truncate, utimens. `fd` is the caller's open file when it gave one.
    pub fn setattr(&self, ino: u64, sa: &SetAttr, fd: Option<&OwnedFd>) -> io::Result<Attr> {
        let r = self.setattr_inner(ino, sa, fd);
        // A chown or truncate drops `security.capability` (whether or not it succeeded in full).
        if let Ok(node) = self.node(ino) {
            node.xattrs_after_content_change();
        }
        r
    }

    fn setattr_inner(&self, ino: u64, sa: &SetAttr, fd: Option<&OwnedFd>) -> io::Result<Attr> {
        let node = self.node(ino)?;
        self.upper()?;
        if node.is_detached() {
            // Only descriptors reach it now: the caller's, else any open handle's.
            let open = node.any_open_fd();
            let f = fd.or(open.as_deref()).ok_or_else(|| errno(libc::ENOENT))?;
            return self.setattr_fd(&node, sa, f, f);
        }
        // A file open on the writable layer is reached through its descriptor, without a path
        // walk per change: tar, cp -p, dpkg and pip set owner, mode and times on the file they
        // have just written. A truncate needs a descriptor open for writing: the caller's.
        if self.ids.override_xattr.is_none() && (sa.size.is_none() || fd.is_some()) {
            if let Some(open) = node.upper_fd() {
                let _ns = self.names.change();
                return self.setattr_fd(&node, sa, &open, fd.unwrap_or(&open));
            }
        }
        let _ns = self.names.change();
        let data = if sa.size == Some(0) {
            Data::Skip
        } else {
            Data::Copy
        };
        self.copy_up(&node, data)?;
        let is_link = node.attr().kind() == libc::S_IFLNK;
        let (pdir, cn) = self.at(&node)?;
        if sa.uid.is_some() || sa.gid.is_some() {
            self.chown(&node, &pdir, &cn, sa.uid, sa.gid)?;
        }
        if let Some(m) = sa.mode {
            if let Some(x) = self.ids.override_xattr {
                self.update_override(&node, x.name(), |o| o.perm = m & 0o7777)?;
            } else if !is_link {
                rustix::fs::chmodat(
                    &pdir,
                    &cn,
                    Mode::from_raw_mode(m & 0o7777),
                    AtFlags::empty(),
                )?;
            }
        }
        if let Some(size) = sa.size {
            let f = match fd {
                Some(f) => rustix::io::dup(f)?,
                None => self.layers[0].open_rw(&node.path())?,
            };
            rustix::fs::ftruncate(&f, size)?;
            if let Some(gid) = sa.kill_suidgid {
                self.kill_suidgid(&node, &f, gid)?;
            }
        }
        if sa.atime.is_some() || sa.mtime.is_some() {
            let t = Timestamps {
                last_access: to_ts(sa.atime),
                last_modification: to_ts(sa.mtime),
            };
            rustix::fs::utimensat(&pdir, &cn, &t, AtFlags::SYMLINK_NOFOLLOW)?;
        }
        drop(_ns);
        self.attr(&node)
    }

    /// setattr of a writable-layer file through a descriptor of it, `sized` the one open for
    /// writing that a truncate uses. The order is the path variant's: owner before mode, as a
    /// chown clears set-ID bits.
    fn setattr_fd(
        &self,
        node: &Node,
        sa: &SetAttr,
        f: &OwnedFd,
        sized: &OwnedFd,
    ) -> io::Result<Attr> {
        if sa.uid.is_some() || sa.gid.is_some() {
            let (u, g) = self.disk_owner(sa.uid, sa.gid)?;
            rustix::fs::fchown(f, u.map(Uid::from_raw), g.map(Gid::from_raw))?;
        }
        if let Some(m) = sa.mode {
            rustix::fs::fchmod(f, Mode::from_raw_mode(m & 0o7777))?;
        }
        if let Some(size) = sa.size {
            rustix::fs::ftruncate(sized, size)?;
            if let Some(gid) = sa.kill_suidgid {
                self.kill_suidgid(node, sized, gid)?;
            }
        }
        if sa.atime.is_some() || sa.mtime.is_some() {
            let t = Timestamps {
                last_access: to_ts(sa.atime),
                last_modification: to_ts(sa.mtime),
            };
            rustix::fs::futimens(f, &t)?;
        }
        self.attr_by_fd(node, f)
    }

    /// The on-disk owner for a chown to presented `uid`/`gid`: `None` leaves one as it is
    /// (not asked for, or squashed); an id outside the mount's map is EINVAL.
    fn disk_owner(
        &self,
        uid: Option<u32>,
        gid: Option<u32>,
    ) -> io::Result<(Option<u32>, Option<u32>)> {
        let map = |v: Option<u32>,
                   squash: bool,
                   f: &dyn Fn(u32) -> Option<u32>|
         -> io::Result<Option<u32>> {
            match v {
                None => Ok(None),
                Some(_) if squash => Ok(None),
                Some(v) => f(v).map(Some).ok_or_else(|| errno(libc::EINVAL)),
            }
        };
        let u = map(uid, self.ids.squash_uid.is_some(), &|v| {
            self.ids.uid_to_disk(v)
        })?;
        let g = map(gid, self.ids.squash_gid.is_some(), &|v| {
            self.ids.gid_to_disk(v)
        })?;
        Ok((u, g))
    }

    fn chown(
        &self,
        node: &Node,
        pdir: &OwnedFd,
        cn: &CString,
        uid: Option<u32>,
        gid: Option<u32>,
    ) -> io::Result<()> {
        let (u, g) = self.disk_owner(uid, gid)?;
        if let Some(x) = self.ids.override_xattr {
            return self.update_override(node, x.name(), |o| {
                if let Some(u) = u {
                    o.uid = u;
                }
                if let Some(g) = g {
                    o.gid = g;
                }
            });
        }
        rustix::fs::chownat(
            pdir,
            cn,
            u.map(Uid::from_raw),
            g.map(Gid::from_raw),
            AtFlags::SYMLINK_NOFOLLOW,
        )?;
        Ok(())
    }

    /// Rewrite the override xattr of an upper entry, starting from what it presents now.
    fn update_override(
        &self,
        node: &Node,
        xname: &[u8],
        f: impl FnOnce(&mut Override),
    ) -> io::Result<()> {
        let rel = node.path();
        let cur = self.layers[0].get_xattr(&rel, xname)?;
        let mut o = cur.as_deref().and_then(Override::parse).unwrap_or_else(|| {
            let a = node.attr();
            Override {
                uid: self.ids.uid_to_disk(a.uid).unwrap_or(a.uid),
                gid: self.ids.gid_to_disk(a.gid).unwrap_or(a.gid),
                perm: a.mode & 0o7777,
                kind: None,
            }
        });
        f(&mut o);
        self.layers[0].set_xattr(&rel, xname, o.format().as_bytes(), 0)
    }

    pub fn set_xattr(&self, ino: u64, name: &[u8], value: &[u8], flags: i32) -> io::Result<()> {
        if self.is_hidden_xattr(name) {
            return Err(errno(libc::EPERM));
        }
        let node = self.node(ino)?;
        self.upper()?;
        let _ns = self.names.change();
        self.copy_up(&node, Data::Copy)?;
        self.layers[0].set_xattr(&node.path(), name, value, flags)?;
        if name == acl::ACCESS.as_bytes() {
            // The upper filesystem changed the mode to match the ACL: the kernel must see it.
            drop(_ns);
            self.attr(&node)?;
            self.names.stale_inode(node.ino);
        }
        node.xattrs_changed();
        Ok(())
    }

    /// Clear set-group-ID of `ino` (an ACL set by a caller outside the file's group, as the
    /// VFS does for `setfacl`).
    pub fn clear_sgid(&self, ino: u64) -> io::Result<()> {
        let attr = self.getattr(ino)?;
        if attr.mode & libc::S_ISGID == 0 {
            return Ok(());
        }
        let sa = SetAttr {
            mode: Some(attr.mode & 0o7777 & !libc::S_ISGID),
            ..SetAttr::default()
        };
        self.setattr(ino, &sa, None)?;
        self.names.stale_inode(ino);
        Ok(())
    }

    pub fn remove_xattr(&self, ino: u64, name: &[u8]) -> io::Result<()> {
        if self.is_hidden_xattr(name) {
            return Err(errno(libc::ENODATA));
        }
        let node = self.node(ino)?;
        self.upper()?;
        let _ns = self.names.change();
        self.copy_up(&node, Data::Copy)?;
        let r = self.layers[0].remove_xattr(&node.path(), name);
        node.xattrs_changed();
        r
    }

    /// Open a file. Opens for writing (or truncating) copy it up first; the descriptor is the
    /// upper file's, opened read-write whatever the caller asked, so one serves all handles.
    /// `kill_suidgid`: the caller's group when it lacks CAP_FSETID, so O_TRUNC clears
    /// set-user/group-ID.
    pub fn open(
        &self,
        ino: u64,
        flags: i32,
        kill_suidgid: Option<u32>,
    ) -> io::Result<(OwnedFd, bool)> {
        let node = self.node(ino)?;
        match node.attr().kind() {
            libc::S_IFREG => {}
            libc::S_IFDIR => return Err(errno(libc::EISDIR)),
            _ => return Err(errno(libc::EINVAL)),
        }
        let trunc = flags & libc::O_TRUNC != 0;
        let write = flags & libc::O_ACCMODE != libc::O_RDONLY || trunc;
        if !write {
            let fd = self.open_file(&node)?;
            if node.top() != 0 {
                self.offer_siblings(&node);
            }
            return Ok((fd, false));
        }
        self.upper()?;
        {
            let _ns = self.names.change();
            self.copy_up(&node, if trunc { Data::Skip } else { Data::Copy })?;
        }
        let fd = self.layers[0].open_rw(&node.path())?;
        if let Some(t) = self.tally() {
            t.file_opened(0);
        }
        if trunc {
            rustix::fs::ftruncate(&fd, 0)?;
            node.xattrs_after_content_change();
            if let Some(gid) = kill_suidgid {
                self.kill_suidgid(&node, &fd, gid)?;
            }
        }
        Ok((fd, true))
    }

    /// Clears set-user-ID, and set-group-ID on a group-executable file or one of a group
    /// the caller (`gid`) is not in, after a write or truncate by a caller without
    /// CAP_FSETID, as the VFS does. The mount takes this over (FUSE_HANDLE_KILLPRIV_V2) so
    /// that the kernel stops asking for `security.capability` before every write; the upper
    /// filesystem drops that xattr itself when we write to it.
    pub fn kill_suidgid(&self, node: &Node, fd: &OwnedFd, gid: u32) -> io::Result<()> {
        let attr = self.attr(node)?;
        let perm = attr.mode & 0o7777;
        let mut kill = perm & libc::S_ISUID;
        if perm & libc::S_ISGID != 0 && (perm & libc::S_IXGRP != 0 || attr.gid != gid) {
            kill |= libc::S_ISGID;
        }
        if kill == 0 {
            return Ok(());
        }
        match self.ids.override_xattr {
            Some(x) => self.update_override(node, x.name(), |o| o.perm = perm & !kill)?,
            None => rustix::fs::fchmod(fd, Mode::from_raw_mode(perm & !kill))?,
        }
        // The kernel caches the mode it last saw and a write reply carries no attributes:
        // have the front end tell it, and keep ours current.
        self.attr(node)?;
        self.names.stale_inode(node.ino);
        node.xattrs_changed();
        Ok(())
    }

    /// write(2) of `data` at `offset` to the open upper file `fd` of `ino`. `kill_suidgid`:
    /// the caller's group when the kernel asks us to clear set-ID bits (FUSE_HANDLE_KILLPRIV_V2).
    pub fn write_data(
        &self,
        ino: u64,
        fd: &OwnedFd,
        offset: u64,
        data: &[u8],
        kill_suidgid: Option<u32>,
    ) -> io::Result<usize> {
        if let Some(gid) = kill_suidgid {
            let node = self.node(ino)?;
            self.kill_suidgid(&node, fd, gid)?;
        }
        let mut done = 0;
        while done < data.len() {
            match rustix::io::pwrite(fd, &data[done..], offset + done as u64) {
                Ok(n) => done += n,
                Err(Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        if let Ok(node) = self.node(ino) {
            node.xattrs_after_content_change();
        }
        Ok(done)
    }

    /// fallocate(2) on the open upper file `fd` of `ino`, every mode (allocate, punch hole,
    /// zero range …). Like any change of content by a caller without CAP_FSETID
    /// (`kill_suidgid`: its group), it clears set-ID bits, as the VFS does on the upper file
    /// under kernel overlayfs.
    pub fn fallocate(
        &self,
        ino: u64,
        fd: &OwnedFd,
        offset: u64,
        length: u64,
        mode: i32,
        kill_suidgid: Option<u32>,
    ) -> io::Result<()> {
        let flags = rustix::fs::FallocateFlags::from_bits_retain(mode as u32);
        rustix::fs::fallocate(fd, flags, offset, length)?;
        if let Ok(node) = self.node(ino) {
            node.xattrs_after_content_change();
        }
        if let Some(gid) = kill_suidgid {
            let node = self.node(ino)?;
            self.kill_suidgid(&node, fd, gid)?;
        }
        Ok(())
    }

    /// fsync(2) of an open file, unless the mount was asked not to (`fsync=0`, `volatile`).
    pub fn fsync(&self, fd: &OwnedFd, datasync: bool) -> io::Result<()> {
        if self.upper.as_ref().is_some_and(|u| !u.syncs()) {
            return Ok(());
        }
        if datasync {
            Ok(rustix::fs::fdatasync(fd)?)
        } else {
            Ok(rustix::fs::fsync(fd)?)
        }
    }
}
