//! The answer to every opcode, once for both transports: decoded arguments and the caller's
//! ids in, the reply's payload (or an errno) out.

use std::io;

use super::{Session, TTL};
use crate::mount::stats::Op;
use crate::mount::wire::{self, Args, InHeader, Out, SetattrIn, fattr};
use crate::overlay::inode::Attr;
use crate::overlay::readdir::PlusEntry;
use crate::overlay::write::{Caller, NewEntry, SetAttr, SetTime};

/// `Err(Some(errno))` is an error reply, `Err(None)` no reply at all.
pub(super) type Answer = Result<(), Option<i32>>;

fn errno(e: io::Error) -> Option<i32> {
    Some(e.raw_os_error().unwrap_or(libc::EIO))
}

fn caller(h: &InHeader, umask: u32) -> Caller {
    Caller {
        uid: h.uid,
        gid: h.gid,
        umask,
    }
}

fn lacks_fsetid(h: &InHeader) -> Option<u32> {
    super::requests::lacks_fsetid(h.uid, h.gid)
}

/// The stats line a request is counted under.
fn op_of(a: &Args<'_>) -> Option<Op> {
    Some(match a {
        Args::Lookup { .. } => Op::Lookup,
        Args::Forget { .. } | Args::BatchForget { .. } => Op::Forget,
        Args::Getattr => Op::Getattr,
        Args::Setattr(_) => Op::Setattr,
        Args::Readlink => Op::Readlink,
        Args::Symlink { .. } => Op::Symlink,
        Args::Mknod { .. } => Op::Mknod,
        Args::Mkdir { .. } => Op::Mkdir,
        Args::Unlink { .. } => Op::Unlink,
        Args::Rmdir { .. } => Op::Rmdir,
        Args::Rename { .. } => Op::Rename,
        Args::Link { .. } => Op::Link,
        Args::Open { .. } => Op::Open,
        Args::Read { .. } => Op::Read,
        Args::Write { .. } => Op::Write,
        Args::Statfs => Op::Statfs,
        Args::Release { .. } => Op::Release,
        Args::Fsync { .. } => Op::Fsync,
        Args::Fsyncdir => Op::Fsyncdir,
        Args::Setxattr { .. } => Op::Setxattr,
        Args::Getxattr { .. } => Op::Getxattr,
        Args::Listxattr { .. } => Op::Listxattr,
        Args::Removexattr { .. } => Op::Removexattr,
        Args::Flush => Op::Flush,
        Args::Opendir => Op::Opendir,
        Args::Readdir { .. } => Op::Readdir,
        Args::Readdirplus { .. } => Op::Readdirplus,
        Args::Releasedir => Op::Releasedir,
        Args::Access { .. } => Op::Access,
        Args::Create { .. } => Op::Create,
        Args::Destroy => Op::Destroy,
        Args::Ioctl => Op::Ioctl,
        Args::Fallocate { .. } => Op::Fallocate,
        Args::Other(_) => Op::Other,
        // The transport's own business; not a filesystem request.
        Args::Init | Args::Interrupt => return None,
    })
}

fn set_attr(a: &SetattrIn, h: &InHeader) -> SetAttr {
    let has = |bit| a.valid & bit != 0;
    let time = |set, now, t: (i64, u32)| {
        has(set).then(|| {
            if has(now) {
                SetTime::Now
            } else {
                SetTime::At(t.0, t.1)
            }
        })
    };
    SetAttr {
        mode: has(fattr::MODE).then_some(a.mode),
        uid: has(fattr::UID).then_some(a.uid),
        gid: has(fattr::GID).then_some(a.gid),
        size: has(fattr::SIZE).then_some(a.size),
        atime: time(fattr::ATIME, fattr::ATIME_NOW, a.atime),
        mtime: time(fattr::MTIME, fattr::MTIME_NOW, a.mtime),
        kill_suidgid: lacks_fsetid(h),
    }
}

impl Session {
    /// An entry reply for `name` made in `parent`.
    fn entry(&self, out: &mut Out<'_>, r: io::Result<Attr>, parent: u64, name: &[u8]) -> Answer {
        let a = r.map_err(errno)?;
        self.note_node(a.ino, parent, name);
        out.entry(Some(&a), TTL.as_secs());
        Ok(())
    }

    fn forget_node(&self, ino: u64, n: u64) {
        if self.ov.forget(ino, n) {
            if let Some(j) = self.journal() {
                j.forget(ino);
            }
        }
    }

    pub(super) fn answer(&self, h: &InHeader, args: Args<'_>, out: &mut Out<'_>) -> Answer {
        let op = op_of(&args);
        let _t = op.and_then(|op| self.timed(op));
        let r = self.answer_timed(h, args, out);
        if let (Err(Some(_)), Some(op), Some(st)) = (&r, op, self.stats()) {
            st.error(op);
        }
        r
    }

    fn answer_timed(&self, h: &InHeader, args: Args<'_>, out: &mut Out<'_>) -> Answer {
        if !self.allowed(h) {
            return Err(Some(libc::EACCES));
        }
        if self.ov.writable() {
            if let Some(r) = self.answer_write(h, args, out) {
                return r;
            }
        } else if wire::op::MUTATING.contains(&h.opcode) {
            return Err(Some(libc::EROFS));
        }
        self.answer_read(h, args, out)
    }

    /// The writable layer's requests; `None` when `args` is not one of them.
    fn answer_write(&self, h: &InHeader, args: Args<'_>, out: &mut Out<'_>) -> Option<Answer> {
        let ttl = TTL.as_secs();
        let ino = h.nodeid;
        let r = match args {
            Args::Open { flags } => self.on_open(h, flags, out),
            Args::Create {
                name,
                mode,
                umask,
                flags,
            } => self.on_create(h, (name, mode, umask), flags, out),
            Args::Mkdir { name, mode, umask } => {
                let r = self.make(ino, name, NewEntry::Dir, mode, caller(h, umask));
                self.entry(out, self.made_before(h, r, ino, name), ino, name)
            }
            Args::Mknod {
                name,
                mode,
                rdev,
                umask,
            } => {
                let what = if mode & libc::S_IFMT == libc::S_IFREG {
                    NewEntry::File
                } else {
                    NewEntry::Node(rdev as u64)
                };
                let r = self.make(ino, name, what, mode, caller(h, umask));
                self.entry(out, self.made_before(h, r, ino, name), ino, name)
            }
            Args::Symlink { name, target } => {
                let (what, mode) = (NewEntry::Symlink(target), libc::S_IFLNK | 0o777);
                let r = self.make(ino, name, what, mode, caller(h, 0));
                self.entry(out, self.made_before(h, r, ino, name), ino, name)
            }
            Args::Link { old, name } => {
                let r = self.hard_link(old, ino, name);
                self.entry(out, self.made_before(h, r, ino, name), ino, name)
            }
            Args::Unlink { name } | Args::Rmdir { name } => {
                let gone = self.peek(ino, name);
                let dir = h.opcode == wire::op::RMDIR;
                let r = self.ov.remove(ino, name, dir).map_err(errno);
                if r.is_ok() {
                    self.note_moves(&[], &[gone]);
                }
                r
            }
            Args::Rename {
                newdir,
                name,
                newname,
                flags,
            } => self.on_rename((ino, name), (newdir, newname), flags),
            Args::Setattr(a) => {
                let fh = (a.valid & fattr::FH != 0).then_some(a.fh);
                self.set_attr(ino, &set_attr(&a, h), fh)
                    .map(|a| out.attr_out(&a, ttl))
                    .map_err(errno)
            }
            Args::Write {
                fh,
                offset,
                flags,
                data,
            } => {
                let kill = (flags & wire::WRITE_KILL_SUIDGID != 0).then_some(h.gid);
                self.write_handle(ino, fh, offset, data, kill)
                    .map(|n| out.write_out(n as u32))
                    .map_err(errno)
            }
            Args::Fsync { fh, datasync } => self.fsync_handle(fh, datasync).map_err(errno),
            Args::Fallocate {
                fh,
                offset,
                length,
                mode,
            } => self
                .fallocate_handle(ino, fh, (offset, length, mode), lacks_fsetid(h))
                .map_err(errno),
            Args::Setxattr { name, value, flags } => self
                .set_xattr(ino, (name, value, flags), (h.uid, h.gid, h.pid))
                .map_err(errno),
            Args::Removexattr { name } => self.remove_xattr(ino, name).map_err(errno),
            _ => return None,
        };
        Some(r)
    }

    fn on_open(&self, h: &InHeader, flags: u32, out: &mut Out<'_>) -> Answer {
        let ino = h.nodeid;
        let fh = self
            .open_handle(ino, flags as i32, lacks_fsetid(h))
            .map_err(errno)?;
        if let Some(j) = self.journal() {
            j.open(fh, ino, flags);
        }
        // An open to read is the access the kernel would stamp on read (FUSE leaves atimes
        // to us; cached pages are read without asking).
        if flags as i32 & libc::O_ACCMODE != libc::O_WRONLY {
            self.accessed(ino, fh);
        }
        out.open_out(fh, wire::FOPEN_KEEP_CACHE);
        Ok(())
    }

    /// CREATE: the name, mode and umask, then the open flags.
    fn on_create(
        &self,
        h: &InHeader,
        (name, mode, umask): (&[u8], u32, u32),
        flags: u32,
        out: &mut Out<'_>,
    ) -> Answer {
        let ino = h.nodeid;
        let (a, fh) = self
            .create_file(ino, name, mode, caller(h, umask))
            .or_else(|e| self.created_before(h, e, ino, name, flags))
            .map_err(errno)?;
        self.note_node(a.ino, ino, name);
        if let Some(j) = self.journal() {
            j.open(fh, a.ino, flags);
        }
        out.entry(Some(&a), TTL.as_secs());
        out.open_out(fh, super::create_open_flags(flags));
        Ok(())
    }

    /// RENAME and RENAME2, and what the moves mean for the nodes the kernel knows.
    fn on_rename(&self, from: (u64, &[u8]), to: (u64, &[u8]), flags: u32) -> Answer {
        let (src, dst) = (self.peek(from.0, from.1), self.peek(to.0, to.1));
        self.rename_entry(from, to, flags).map_err(errno)?;
        if flags & libc::RENAME_EXCHANGE != 0 {
            self.note_moves(&[(src, to.0, to.1), (dst, from.0, from.1)], &[]);
        } else {
            self.note_moves(&[(src, to.0, to.1)], &[dst]);
        }
        Ok(())
    }

    fn answer_read(&self, h: &InHeader, args: Args<'_>, out: &mut Out<'_>) -> Answer {
        let ttl = TTL.as_secs();
        let (ov, ino) = (&self.ov, h.nodeid);
        match args {
            Args::Lookup { name } => {
                // A negative entry the kernel may cache as long as a positive one.
                let a = self.lookup_attr(ino, name).map_err(errno)?;
                if let Some(a) = &a {
                    self.note_node(a.ino, ino, name);
                }
                out.entry(a.as_ref(), ttl);
            }
            Args::Forget { nlookup } => {
                self.forget_node(ino, nlookup);
                return Err(None);
            }
            Args::BatchForget { items } => {
                for it in items.chunks_exact(16) {
                    self.forget_node(wire::u64_at(it, 0), wire::u64_at(it, 8));
                }
                return Err(None);
            }
            Args::Getattr => out.attr_out(&self.getattr_of(ino).map_err(errno)?, ttl),
            Args::Readlink => {
                let t = ov.readlink(ino).map_err(errno)?;
                if t.len() > out.room() {
                    return Err(Some(libc::ENAMETOOLONG));
                }
                out.bytes(&t);
            }
            Args::Open { flags }
                if self.handle_opens.load(std::sync::atomic::Ordering::Relaxed) =>
            {
                return self.open_passthrough(ino, flags, out).map_err(Some);
            }
            Args::Read { fh, offset, size } => {
                let want = (size as usize).min(out.room());
                let n = self
                    .read_into(ino, fh, offset, &mut out.tail()[..want])
                    .map_err(errno)?;
                out.advance(n);
            }
            Args::Statfs => out.statfs(&ov.statfs().map_err(errno)?),
            Args::Release { fh } => self.release_handle(fh),
            Args::Getxattr { name, size } => match ov.get_xattr(ino, name).map_err(errno)? {
                Some(v) => xattr(out, size, &v)?,
                None => return Err(Some(libc::ENODATA)),
            },
            Args::Listxattr { size } => xattr(out, size, &ov.list_xattrs(ino).map_err(errno)?)?,
            Args::Access { mask } => ov.access(ino, mask as i32, h.uid, h.gid).map_err(errno)?,
            Args::Readdir { offset, size } => {
                if offset == 0 {
                    ov.dir_accessed(ino);
                }
                out.limit(size as usize);
                ov.read_dir(ino, offset, |e| !out.dirent(e.ino, e.next, e.kind, e.name))
                    .map_err(errno)?;
            }
            Args::Readdirplus { offset, size } => {
                if offset == 0 {
                    ov.dir_accessed(ino);
                }
                out.limit(size as usize);
                ov.read_dir_plus(ino, offset, self.bare, |e| !match e.entry {
                    PlusEntry::Linked(a) => {
                        self.note_node(a.ino, ino, e.name);
                        out.direntplus(&a, ttl, e.next, e.name)
                    }
                    PlusEntry::Dot(a) => out.direntplus(&a, 0, e.next, e.name),
                    PlusEntry::Bare { ino, kind } => out.direntplus_bare(ino, kind, e.next, e.name),
                })
                .map_err(errno)?;
            }
            // Zero-message opens on a read-only mount and no FLUSH: the kernel then stops
            // asking (and caches listings: FOPEN_CACHE_DIR). Writes go straight to the layer,
            // so there is nothing to flush.
            Args::Open { .. } | Args::Opendir | Args::Flush => return Err(Some(libc::ENOSYS)),
            // Read-only: nothing to write back.
            Args::Releasedir | Args::Fsyncdir | Args::Fsync { .. } => {}
            Args::Destroy => self.unmounted(),
            // No ioctl is served: what a regular file says to a terminal ioctl. Counted,
            // since the kernel asks again every time.
            Args::Ioctl => return Err(Some(libc::ENOTTY)),
            // The transport answers INIT. Requests are not interrupted (each ends soon on
            // its own): ENOSYS makes the kernel stop sending INTERRUPT for good.
            Args::Init => return Err(Some(libc::EIO)),
            Args::Interrupt => return Err(Some(libc::ENOSYS)),
            // Anything else (lseek, poll, locks, copy_file_range): the kernel stops sending
            // each after the first ENOSYS and does the work itself.
            a => {
                tracing::debug!(opcode = h.opcode, args = ?a, "not implemented");
                return Err(Some(libc::ENOSYS));
            }
        }
        Ok(())
    }
}

/// A value or name list, or the size it needs when the caller asked with size 0.
fn xattr(out: &mut Out<'_>, size: u32, v: &[u8]) -> Answer {
    if size == 0 {
        out.xattr_size(v.len());
    } else if v.len() > size as usize || v.len() > out.room() {
        return Err(Some(libc::ERANGE));
    } else {
        out.bytes(v);
    }
    Ok(())
}
