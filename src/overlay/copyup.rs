//! Copy-up: give a lower entry a copy in the writable layer before it changes.
//!
//! The copy is built whole, with its content (reflink, else copy_file_range, else
//! read/write), owner, xattrs, mode and ns times, before it gets its name in U, so U never
//! shows a partial file: a regular file as an unnamed inode (O_TMPFILE) in its upper directory,
//! then linked in (as overlayfs does, and the inode lands near its directory); anything else,
//! or where O_TMPFILE is missing, under a temporary name in W, then renamed into U in one step.
//! As overlayfs does, the parent's times are put back afterwards: a copy-up is not a change of
//! the directory.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timespec, Timestamps};
use rustix::io::Errno;
use smallvec::smallvec;
use tracing::debug;

use crate::confined::proc_path;
use crate::overlay::inode::Node;
use crate::overlay::upper::{self, Upper, cname};
use crate::overlay::{Overlay, errno};
use crate::stack::{Layer, RelPath, whiteout};

/// Whether a copy-up carries the content (not when the file is about to be truncated).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Data {
    Copy,
    Skip,
}

/// One entry to copy up: where it is read from and the upper directory and name it gets.
#[derive(Clone, Copy)]
struct CopyUp<'a> {
    src: &'a Layer,
    rel: &'a RelPath,
    st: &'a rustix::fs::Stat,
    pdir: &'a OwnedFd,
    name: &'a [u8],
    data: Data,
}

fn ts(sec: i64, nsec: u64) -> Timespec {
    Timespec {
        tv_sec: sec,
        tv_nsec: nsec as _,
    }
}

/// Copy all of `src` into `dst`: share extents where the filesystem can, else copy in the
/// kernel, else through a buffer.
pub fn copy_data(src: &OwnedFd, dst: &OwnedFd, len: u64) -> io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    if rustix::fs::ioctl_ficlone(dst, src).is_ok() {
        return Ok(());
    }
    let (mut off_in, mut off_out) = (0u64, 0u64);
    let mut kernel_copy = true;
    while off_in < len {
        let want = (len - off_in).min(1 << 30) as usize;
        if kernel_copy {
            match rustix::fs::copy_file_range(src, Some(&mut off_in), dst, Some(&mut off_out), want)
            {
                Ok(0) => break, // the source shrank: it cannot, lower layers are read-only
                Ok(_) => continue,
                Err(Errno::XDEV | Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP) => {
                    kernel_copy = false;
                }
                Err(e) => return Err(e.into()),
            }
        }
        let mut buf = vec![0u8; want.min(1 << 20)];
        let n = rustix::io::pread(src, &mut buf, off_in)?;
        if n == 0 {
            break;
        }
        let mut done = 0;
        while done < n {
            done += rustix::io::pwrite(dst, &buf[done..n], off_out + done as u64)?;
        }
        off_in += n as u64;
        off_out += n as u64;
    }
    Ok(())
}

impl Overlay {
    /// Make sure `node` (and every directory above it) has an entry in the writable layer.
    /// Callers hold the namespace lock exclusively.
    pub(super) fn copy_up(&self, node: &Arc<Node>, data: Data) -> io::Result<()> {
        let Some(upper) = &self.upper else {
            return Err(errno(libc::EROFS));
        };
        if node.top() == 0 {
            return Ok(());
        }
        if node.is_detached() {
            return Err(errno(libc::ENOENT));
        }
        let Some((parent, name)) = node.link() else {
            return Ok(()); // the root always has the upper layer
        };
        self.copy_up(&parent, Data::Copy)?;
        let src = self.top_layer(node);
        let rel = node.path();
        let st = src.stat(&rel)?.ok_or_else(|| errno(libc::ENOENT))?;
        let pdir = self.layers[0].open_dir(&parent.path())?;
        let pst = rustix::fs::fstat(&pdir)?;
        let kind = st.st_mode & libc::S_IFMT;
        let c = CopyUp {
            src,
            rel: &rel,
            st: &st,
            pdir: &pdir,
            name: &name,
            data,
        };
        if !(kind == libc::S_IFREG && Self::copy_file_in_place(upper, &c)?) {
            Self::copy_in_work(upper, &c)?;
        }
        if let Some(t) = self.tally() {
            t.copied_up();
        }
        let ptimes = Timestamps {
            last_access: ts(pst.st_atime, pst.st_atime_nsec),
            last_modification: ts(pst.st_mtime, pst.st_mtime_nsec),
        };
        rustix::fs::futimens(&pdir, &ptimes)?;

        let ust = self.layers[0]
            .stat(&rel)?
            .ok_or_else(|| errno(libc::ENOENT))?;
        let real = self.compose_ino(&self.layers[0], ust.st_ino);
        self.names.keep_number(real, node.ino);
        {
            let mut s = node.state.write();
            if kind == libc::S_IFDIR && s.layers.len() == 1 {
                self.names.stale_inode(node.ino);
            }
            s.layers = if kind == libc::S_IFDIR {
                let mut l = smallvec![0];
                l.extend(s.layers.iter().copied());
                l
            } else {
                smallvec![0]
            };
            s.real = real;
        }
        node.xattrs_changed();
        let dropped = node.keep_only_name(parent.ino, &name);
        self.names.stale_entries(dropped);
        if let Some(l) = parent.listing.write().as_mut() {
            l.update(&name, 0, node.ino);
        }
        self.evict_file(node.ino);
        debug!(path = %String::from_utf8_lossy(&rel), "copied up");
        Ok(())
    }

    /// Build the copy of a lower entry under a temporary name in W, then move it to
    /// `pdir/name` in one step (directories, symlinks, devices; files where O_TMPFILE is
    /// missing).
    fn copy_in_work(upper: &Upper, c: &CopyUp<'_>) -> io::Result<()> {
        let work = upper.work();
        let tmp = upper.temp();
        let kind = c.st.st_mode & libc::S_IFMT;
        let mut file = None;
        match kind {
            libc::S_IFDIR => rustix::fs::mkdirat(work, &*tmp, Mode::from_raw_mode(0o700))?,
            libc::S_IFREG => {
                let out = rustix::fs::openat(
                    work,
                    &*tmp,
                    OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )?;
                if c.data == Data::Copy {
                    let input = c.src.open_read(c.rel)?;
                    copy_data(&input, &out, c.st.st_size as u64)?;
                    c.src.check_copy(c.rel, &out)?;
                }
                file = Some(out);
            }
            libc::S_IFLNK => {
                let target = c.src.readlink(c.rel)?;
                rustix::fs::symlinkat(cname(&target)?.as_c_str(), work, &*tmp)?;
            }
            _ => {
                let ft = FileType::from_raw_mode(c.st.st_mode);
                rustix::fs::mknodat(work, &*tmp, ft, Mode::from_raw_mode(0o600), c.st.st_rdev)?;
            }
        }
        // Metadata on the temporary entry: owner first (a chown clears set-id bits and drops
        // `security.capability`, as the kernel does on every chown), then xattrs, then mode
        // (which puts set-id bits back), then times.
        match rustix::fs::chownat(
            work,
            &*tmp,
            Some(rustix::fs::Uid::from_raw(c.st.st_uid)),
            Some(rustix::fs::Gid::from_raw(c.st.st_gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        ) {
            Ok(()) => {}
            // An unprivileged daemon keeps files as its own; the override xattr (copied below)
            // carries the owner where the mount uses one.
            Err(Errno::PERM | Errno::INVAL) => debug!("owner not kept on copy-up"),
            Err(e) => return Err(e.into()),
        }
        let tp = proc_path(work, tmp.as_bytes())?;
        copy_xattrs(c.src, c.rel, |n, v| {
            rustix::fs::lsetxattr(&tp, n, v, rustix::fs::XattrFlags::empty())
        })?;
        if kind != libc::S_IFLNK {
            rustix::fs::chmodat(
                work,
                &*tmp,
                Mode::from_raw_mode(c.st.st_mode & 0o7777),
                AtFlags::empty(),
            )?;
        }
        if let Some(f) = &file {
            upper.settle(f)?;
        }
        let times = Timestamps {
            last_access: ts(c.st.st_atime, c.st.st_atime_nsec),
            last_modification: ts(c.st.st_mtime, c.st.st_mtime_nsec),
        };
        rustix::fs::utimensat(work, &*tmp, &times, AtFlags::SYMLINK_NOFOLLOW)?;
        upper.install(&tmp, c.pdir, c.name, kind == libc::S_IFDIR)
    }

    /// Copy a lower regular file as an unnamed inode (O_TMPFILE) in its upper directory, made
    /// whole (content, owner, xattrs, mode, times, fsync) and then linked in: a crash before
    /// the link leaves nothing, and there is no W entry to make and rename away. `false`:
    /// the filesystem (or /proc) cannot do it; the caller takes the W path.
    fn copy_file_in_place(upper: &Upper, c: &CopyUp<'_>) -> io::Result<bool> {
        let Some(out) = upper::unnamed_file(c.pdir)? else {
            return Ok(false);
        };
        if c.data == Data::Copy {
            copy_data(&c.src.open_read(c.rel)?, &out, c.st.st_size as u64)?;
            c.src.check_copy(c.rel, &out)?;
        }
        // Owner first (a chown drops set-id bits and file capabilities), then xattrs, mode.
        match rustix::fs::fchown(
            &out,
            Some(rustix::fs::Uid::from_raw(c.st.st_uid)),
            Some(rustix::fs::Gid::from_raw(c.st.st_gid)),
        ) {
            Ok(()) => {}
            Err(Errno::PERM | Errno::INVAL) => debug!("owner not kept on copy-up"),
            Err(e) => return Err(e.into()),
        }
        copy_xattrs(c.src, c.rel, |n, v| {
            rustix::fs::fsetxattr(&out, n, v, rustix::fs::XattrFlags::empty())
        })?;
        rustix::fs::fchmod(&out, Mode::from_raw_mode(c.st.st_mode & 0o7777))?;
        upper.settle(&out)?;
        let times = Timestamps {
            last_access: ts(c.st.st_atime, c.st.st_atime_nsec),
            last_modification: ts(c.st.st_mtime, c.st.st_mtime_nsec),
        };
        rustix::fs::futimens(&out, &times)?;
        upper::link_unnamed(&out, c.pdir, c.name)
    }
}

/// Copy `rel`'s xattrs but the overlay's own with `set` (a refusal is logged, not fatal).
fn copy_xattrs(
    src: &Layer,
    rel: &RelPath,
    set: impl Fn(&std::ffi::CStr, &[u8]) -> rustix::io::Result<()>,
) -> io::Result<()> {
    let names = src.list_xattrs(rel)?;
    for xname in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        if whiteout::is_internal_xattr(xname) {
            continue;
        }
        if let Some(v) = src.get_xattr(rel, xname)? {
            if let Err(e) = set(&cname(xname)?, &v) {
                debug!(xattr = %String::from_utf8_lossy(xname), error = %e, "xattr not copied up");
            }
        }
    }
    Ok(())
}
