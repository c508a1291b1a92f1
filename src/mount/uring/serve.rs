//! Answering one ring request: decode it, call the same core the fuser adapter calls, and
//! write the reply into the entry's buffers. The ring serves read-only mounts; what it answers
//! matches [`crate::mount::fuse`] request for request.

use std::io;

use super::wire::{self, InHeader, Out, op};
use crate::mount::fuse::{StrataFs, TTL};
use crate::mount::stats::Op;
use crate::overlay::inode::ROOT_INO;

fn errno(e: io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

/// Serve the request in `header`/`payload` and leave the reply there.
pub fn request(fs: &StrataFs, header: &mut [u8], payload: &mut [u8]) {
    let h = InHeader::parse(header);
    let mut op_in = [0u8; 128];
    op_in.copy_from_slice(wire::op_in(header));
    let n = wire::payload_len(header).min(payload.len());
    // Arguments in the payload (names) are copied out before the reply overwrites it.
    let args: smallvec::SmallVec<[u8; 256]> = smallvec::SmallVec::from_slice(&payload[..n]);
    let mut out = Out::new(payload);
    let r = dispatch(fs, &h, &op_in, &args, &mut out);
    match r {
        Ok(()) => {
            let len = out.len();
            wire::set_reply(header, h.unique, 0, len)
        }
        Err(e) => wire::set_reply(header, h.unique, -e, 0),
    }
}

fn dispatch(
    fs: &StrataFs,
    h: &InHeader,
    op_in: &[u8],
    args: &[u8],
    out: &mut Out<'_>,
) -> Result<(), i32> {
    let ov = fs.overlay();
    let ttl = TTL.as_secs();
    match h.opcode {
        op::LOOKUP => {
            let _t = fs.timed(Op::Lookup);
            match ov.lookup(h.nodeid, wire::name(args)).map_err(errno)? {
                Some(node) => out.entry(Some(&ov.attr(&node).map_err(errno)?), ttl),
                // A negative entry the kernel may cache as long as a positive one.
                None => out.entry(None, ttl),
            }
        }
        op::GETATTR => {
            let _t = fs.timed(Op::Getattr);
            let mut a = ov.getattr(h.nodeid).map_err(errno)?;
            if h.nodeid == ROOT_INO {
                a.ino = ROOT_INO;
            }
            out.attr_out(&a, ttl);
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
            let mut dir = Out::new(&mut out.tail()[..size as usize]);
            ov.read_dir(h.nodeid, offset, |e| {
                !dir.dirent(e.ino, e.next, e.kind, e.name)
            })
            .map_err(errno)?;
            let n = dir.len();
            out.advance(n);
        }
        op::READDIRPLUS => {
            let _t = fs.timed(Op::Readdirplus);
            let (_, offset, size) = wire::read_in(op_in);
            let mut dir = Out::new(&mut out.tail()[..size as usize]);
            ov.read_dir_plus(h.nodeid, offset, |e| {
                let ttl = if e.counted { ttl } else { 0 };
                !dir.direntplus(&e.attr, ttl, e.next, e.name)
            })
            .map_err(errno)?;
            let n = dir.len();
            out.advance(n);
        }
        // Zero-message opens and no FLUSH, as the fuser adapter answers them on a read-only
        // mount: the kernel then stops asking.
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
        op::FSYNC | op::FSYNCDIR | op::DESTROY => {}
        o if op::MUTATING.contains(&o) => return Err(libc::EROFS),
        _ => return Err(libc::ENOSYS),
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
