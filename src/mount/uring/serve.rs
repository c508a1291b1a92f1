//! Answering one ring request: decode it, call what the fuser adapter calls (the overlay
//! core and [`crate::mount::requests`]), and write the reply into the entry's buffers. What
//! it answers matches [`crate::mount::fuse`] request for request.

use std::io;

use super::wire::{self, InHeader, Out, fattr, op};
use crate::mount::fuse::{StrataFs, TTL};
use crate::mount::stats::Op;
use crate::overlay::readdir::PlusEntry;
use crate::overlay::write::{Caller, NewEntry, SetAttr, SetTime};

fn errno(e: io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

/// Serve the request in `header`/`payload` and leave the reply there. True when the request
/// may have left kernel caches stale (see [`StrataFs::notify_stale`]).
pub fn request(fs: &StrataFs, header: &mut [u8], payload: &mut [u8]) -> bool {
    let h = InHeader::parse(header);
    if let Some(s) = fs.stats() {
        s.ring_request();
    }
    let mut op_in = [0u8; 128];
    op_in.copy_from_slice(wire::op_in(header));
    let n = wire::payload_len(header).min(payload.len());
    let r = if h.opcode == op::WRITE {
        // The data is read in place; the 8-byte reply overwrites it afterwards.
        write(fs, &h, &op_in, &payload[..n]).map(|size| {
            Out::new(payload).write_out(size);
            8
        })
    } else {
        // Arguments in the payload (names) are copied out before the reply overwrites it.
        let args: smallvec::SmallVec<[u8; 256]> = smallvec::SmallVec::from_slice(&payload[..n]);
        let mut out = Out::new(payload);
        dispatch(fs, &h, &op_in, &args, &mut out).map(|()| out.len())
    };
    match r {
        Ok(len) => wire::set_reply(header, h.unique, 0, len),
        Err(e) => wire::set_reply(header, h.unique, -e, 0),
    }
    fs.overlay().writable() && (op::MUTATING.contains(&h.opcode) || h.opcode == op::OPEN)
}

fn lacks_fsetid(h: &InHeader) -> Option<u32> {
    crate::mount::requests::lacks_fsetid(h.uid, h.gid)
}

fn caller(h: &InHeader, umask: u32) -> Caller {
    Caller {
        uid: h.uid,
        gid: h.gid,
        umask,
    }
}

fn write(fs: &StrataFs, h: &InHeader, op_in: &[u8], data: &[u8]) -> Result<u32, i32> {
    let _t = fs.timed(Op::Write);
    if !fs.overlay().writable() {
        return Err(libc::EROFS);
    }
    let (fh, offset, size) = wire::read_in(op_in);
    let flags = wire::u32_at(op_in, 20);
    let kill = (flags & wire::WRITE_KILL_SUIDGID != 0).then_some(h.gid);
    let data = &data[..(size as usize).min(data.len())];
    let n = fs
        .write_handle(h.nodeid, fh, offset, data, kill)
        .map_err(errno)?;
    Ok(n as u32)
}

/// The writable layer's requests; `None` when `h` is not one of them.
fn dispatch_write(
    fs: &StrataFs,
    h: &InHeader,
    op_in: &[u8],
    args: &[u8],
    out: &mut Out<'_>,
) -> Option<Result<(), i32>> {
    let ttl = TTL.as_secs();
    let entry = |out: &mut Out<'_>, r: io::Result<crate::overlay::inode::Attr>| {
        r.map(|a| out.entry(Some(&a), ttl)).map_err(errno)
    };
    let u32_at = |at| wire::u32_at(op_in, at);
    let r = match h.opcode {
        op::OPEN => {
            let _t = fs.timed(Op::Open);
            let flags = u32_at(0) as i32;
            fs.open_handle(h.nodeid, flags, lacks_fsetid(h))
                .map(|fh| out.open_out(fh, wire::FOPEN_KEEP_CACHE))
                .map_err(errno)
        }
        op::CREATE => {
            let _t = fs.timed(Op::Create);
            let who = caller(h, u32_at(8));
            match fs.create_file(h.nodeid, wire::name(args), u32_at(4), who) {
                Ok((a, fh)) => {
                    out.entry(Some(&a), ttl);
                    out.open_out(fh, crate::mount::requests::create_open_flags(u32_at(0)));
                    Ok(())
                }
                Err(e) => Err(errno(e)),
            }
        }
        op::MKDIR => {
            let _t = fs.timed(Op::Mkdir);
            let who = caller(h, u32_at(4));
            let r = fs.make(h.nodeid, wire::name(args), NewEntry::Dir, u32_at(0), who);
            entry(out, r)
        }
        op::MKNOD => {
            let _t = fs.timed(Op::Mknod);
            let (mode, rdev) = (u32_at(0), u32_at(4));
            let what = if mode & libc::S_IFMT == libc::S_IFREG {
                NewEntry::File
            } else {
                NewEntry::Node(rdev as u64)
            };
            let r = fs.make(h.nodeid, wire::name(args), what, mode, caller(h, u32_at(8)));
            entry(out, r)
        }
        op::SYMLINK => {
            let _t = fs.timed(Op::Symlink);
            let (name, target) = wire::two_names(args);
            let (what, mode) = (NewEntry::Symlink(target), libc::S_IFLNK | 0o777);
            entry(out, fs.make(h.nodeid, name, what, mode, caller(h, 0)))
        }
        op::LINK => {
            let _t = fs.timed(Op::Link);
            let old = wire::u64_at(op_in, 0);
            entry(out, fs.hard_link(old, h.nodeid, wire::name(args)))
        }
        op::UNLINK | op::RMDIR => {
            let rmdir = h.opcode == op::RMDIR;
            let _t = fs.timed(if rmdir { Op::Rmdir } else { Op::Unlink });
            let ov = fs.overlay();
            ov.remove(h.nodeid, wire::name(args), rmdir).map_err(errno)
        }
        op::RENAME | op::RENAME2 => {
            let _t = fs.timed(Op::Rename);
            let newdir = wire::u64_at(op_in, 0);
            let flags = if h.opcode == op::RENAME2 {
                u32_at(8)
            } else {
                0
            };
            let (old, new) = wire::two_names(args);
            fs.rename_entry((h.nodeid, old), (newdir, new), flags)
                .map_err(errno)
        }
        op::SETATTR => {
            let _t = fs.timed(Op::Setattr);
            let a = wire::SetattrIn::parse(op_in);
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
            let sa = SetAttr {
                mode: has(fattr::MODE).then_some(a.mode),
                uid: has(fattr::UID).then_some(a.uid),
                gid: has(fattr::GID).then_some(a.gid),
                size: has(fattr::SIZE).then_some(a.size),
                atime: time(fattr::ATIME, fattr::ATIME_NOW, a.atime),
                mtime: time(fattr::MTIME, fattr::MTIME_NOW, a.mtime),
                kill_suidgid: lacks_fsetid(h),
            };
            fs.set_attr(h.nodeid, &sa, has(fattr::FH).then_some(a.fh))
                .map(|a| out.attr_out(&a, ttl))
                .map_err(errno)
        }
        op::FSYNC => {
            let _t = fs.timed(Op::Fsync);
            let (fh, flags) = (wire::u64_at(op_in, 0), u32_at(8));
            fs.fsync_handle(fh, flags & 1 != 0).map_err(errno)
        }
        op::FALLOCATE => {
            let _t = fs.timed(Op::Fallocate);
            let fh = wire::u64_at(op_in, 0);
            let range = (
                wire::u64_at(op_in, 8),
                wire::u64_at(op_in, 16),
                u32_at(24) as i32,
            );
            fs.fallocate_handle(h.nodeid, fh, range, lacks_fsetid(h))
                .map_err(errno)
        }
        op::SETXATTR => {
            let _t = fs.timed(Op::Setxattr);
            // The 8-byte fuse_setxattr_in: FUSE_SETXATTR_EXT is not negotiated.
            let (size, flags) = (u32_at(0) as usize, u32_at(4) as i32);
            let name = wire::name(args);
            let value = args.get(name.len() + 1..name.len() + 1 + size);
            let value = value.ok_or(libc::EINVAL);
            value.and_then(|v| {
                fs.set_xattr(h.nodeid, (name, v, flags), (h.uid, h.gid, h.pid))
                    .map_err(errno)
            })
        }
        op::REMOVEXATTR => {
            let _t = fs.timed(Op::Removexattr);
            fs.remove_xattr(h.nodeid, wire::name(args)).map_err(errno)
        }
        _ => return None,
    };
    Some(r)
}

fn dispatch(
    fs: &StrataFs,
    h: &InHeader,
    op_in: &[u8],
    args: &[u8],
    out: &mut Out<'_>,
) -> Result<(), i32> {
    let ov = fs.overlay();
    if ov.writable() {
        if let Some(r) = dispatch_write(fs, h, op_in, args, out) {
            return r;
        }
    }
    let ttl = TTL.as_secs();
    match h.opcode {
        op::LOOKUP => {
            let _t = fs.timed(Op::Lookup);
            // A negative entry the kernel may cache as long as a positive one.
            let a = fs.lookup_attr(h.nodeid, wire::name(args)).map_err(errno)?;
            out.entry(a.as_ref(), ttl);
        }
        op::GETATTR => {
            let _t = fs.timed(Op::Getattr);
            out.attr_out(&fs.getattr_of(h.nodeid).map_err(errno)?, ttl);
        }
        op::READLINK => {
            let _t = fs.timed(Op::Readlink);
            let t = ov.readlink(h.nodeid).map_err(errno)?;
            if t.len() > out.room() {
                return Err(libc::ENAMETOOLONG);
            }
            out.bytes(&t);
        }
        op::READ => {
            let _t = fs.timed(Op::Read);
            let (fh, offset, size) = wire::read_in(op_in);
            let want = (size as usize).min(out.room());
            let n = fs
                .read_into(h.nodeid, fh, offset, &mut out.tail()[..want])
                .map_err(errno)?;
            out.advance(n);
        }
        op::STATFS => {
            let _t = fs.timed(Op::Statfs);
            out.statfs(&ov.statfs().map_err(errno)?);
        }
        op::RELEASE => {
            let _t = fs.timed(Op::Release);
            fs.release_handle(wire::release_fh(op_in));
        }
        op::RELEASEDIR => {
            let _t = fs.timed(Op::Releasedir);
        }
        op::GETXATTR => {
            let _t = fs.timed(Op::Getxattr);
            let name = wire::name(args);
            match ov.get_xattr(h.nodeid, name).map_err(errno)? {
                Some(v) => xattr(out, wire::xattr_size(op_in), &v)?,
                None => return Err(libc::ENODATA),
            }
        }
        op::LISTXATTR => {
            let _t = fs.timed(Op::Listxattr);
            let v = ov.list_xattrs(h.nodeid).map_err(errno)?;
            xattr(out, wire::xattr_size(op_in), &v)?;
        }
        op::ACCESS => {
            let _t = fs.timed(Op::Access);
            ov.access(h.nodeid, wire::access_mask(op_in) as i32, h.uid, h.gid)
                .map_err(errno)?;
        }
        op::READDIR => {
            let _t = fs.timed(Op::Readdir);
            let (_, offset, size) = wire::read_in(op_in);
            out.limit(size as usize);
            ov.read_dir(h.nodeid, offset, |e| {
                !out.dirent(e.ino, e.next, e.kind, e.name)
            })
            .map_err(errno)?;
        }
        op::READDIRPLUS => {
            let _t = fs.timed(Op::Readdirplus);
            let (_, offset, size) = wire::read_in(op_in);
            out.limit(size as usize);
            ov.read_dir_plus(h.nodeid, offset, fs.bare_entries(), |e| !match e.entry {
                PlusEntry::Linked(a) => out.direntplus(&a, ttl, e.next, e.name),
                PlusEntry::Dot(a) => out.direntplus(&a, 0, e.next, e.name),
                PlusEntry::Bare { ino, kind } => out.direntplus_bare(ino, kind, e.next, e.name),
            })
            .map_err(errno)?;
        }
        // Zero-message opens on a read-only mount and no FLUSH, as the fuser adapter answers
        // them: the kernel then stops asking.
        op::OPEN | op::OPENDIR => {
            let _t = fs.timed(if h.opcode == op::OPEN {
                Op::Open
            } else {
                Op::Opendir
            });
            return Err(libc::ENOSYS);
        }
        op::FLUSH => {
            let _t = fs.timed(Op::Flush);
            return Err(libc::ENOSYS);
        }
        op::FSYNCDIR => {
            let _t = fs.timed(Op::Fsyncdir);
        }
        // Read-only: nothing to write back.
        op::FSYNC => {
            let _t = fs.timed(Op::Fsync);
        }
        op::DESTROY => {
            let _t = fs.timed(Op::Destroy);
        }
        // No ioctl is served: what a regular file says to a terminal ioctl.
        op::IOCTL => {
            let _t = fs.timed(Op::Ioctl);
            return Err(libc::ENOTTY);
        }
        o if op::MUTATING.contains(&o) => return Err(libc::EROFS),
        o => {
            let _t = fs.timed(Op::Other);
            tracing::debug!(opcode = o, "not implemented");
            return Err(libc::ENOSYS);
        }
    }
    Ok(())
}

/// A value or name list, or the size it needs when the caller asked with size 0.
fn xattr(out: &mut Out<'_>, size: u32, v: &[u8]) -> Result<(), i32> {
    if size == 0 {
        out.xattr_size(v.len());
    } else if v.len() > size as usize || v.len() > out.room() {
        return Err(libc::ERANGE);
    } else {
        out.bytes(v);
    }
    Ok(())
}
