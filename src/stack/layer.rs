//! One layer of the stack: a directory tree reached only through a file descriptor to its root.
//!
//! Every access is relative to that descriptor, so a layer keeps working when the mount covers
//! its path (apptainer mounts over the last lowerdir) and nothing resolves outside it: opens use
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`, stats never follow the final symlink, and the
//! intermediate components of a path are directories the overlay has already checked.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Mode, OFlags, Stat, StatVfs};

use super::verify::Verifier;
use super::{cvmfs, whiteout};
use crate::confined::{self, cstr, split_long};

/// Why a layer root cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("{path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("{path}: not a directory")]
    NotDir { path: PathBuf },
    #[error("{path}: not readable: {source}")]
    Unreadable { path: PathBuf, source: io::Error },
}

/// A path inside a layer: relative, `/`-separated, empty for the layer root.
pub type RelPath = [u8];

/// Append `name` to a relative path.
pub fn join(parent: &RelPath, name: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(parent.len() + 1 + name.len());
    if !parent.is_empty() {
        v.extend_from_slice(parent);
        v.push(b'/');
    }
    v.extend_from_slice(name);
    v
}

/// Errors that mean "no such entry": a missing component, a file where a directory was
/// expected, or a name too long to exist (a `.wh.` probe of a 252-255 byte name).
fn absent(e: &rustix::io::Errno) -> bool {
    use rustix::io::Errno;
    matches!(*e, Errno::NOENT | Errno::NOTDIR | Errno::NAMETOOLONG)
}

/// A raw entry of one layer directory, as `getdents` gives it.
#[derive(Debug, Clone)]
pub struct RawEntry {
    pub name: Vec<u8>,
    /// `S_IFMT` bits of the entry.
    pub kind: u32,
    pub ino: u64,
    /// A 0:0 character device: a kernel-form whiteout.
    pub char_whiteout: bool,
}

#[derive(Debug)]
pub struct Layer {
    /// Position in the stack, 0 = top.
    pub index: usize,
    /// The path the user gave, for messages.
    pub path: PathBuf,
    root: OwnedFd,
    /// `st_dev` of the layer root.
    pub dev: u64,
    /// Set when the layer is read through a CernVM-FS client.
    pub cvmfs: Option<cvmfs::Client>,
    /// O_NOATIME was refused here once (files of another owner, without CAP_FOWNER): files
    /// are opened without it from then on.
    noatime_denied: std::sync::atomic::AtomicBool,
    /// Set under `verify=on`: every answer of this layer is checked against its record.
    verifier: Option<Verifier>,
}

impl Layer {
    /// Open a layer root. Fails with an error naming the path if it is missing, not a
    /// directory or not readable.
    pub fn open(index: usize, path: &Path) -> Result<Layer, LayerError> {
        let root = rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| match e {
            rustix::io::Errno::NOTDIR => LayerError::NotDir { path: path.into() },
            rustix::io::Errno::ACCESS => LayerError::Unreadable {
                path: path.into(),
                source: e.into(),
            },
            e => LayerError::Open {
                path: path.into(),
                source: e.into(),
            },
        })?;
        rustix::fs::accessat(&root, ".", rustix::fs::Access::EXEC_OK, AtFlags::empty()).map_err(
            |e| LayerError::Unreadable {
                path: path.into(),
                source: e.into(),
            },
        )?;
        let st = rustix::fs::fstat(&root).map_err(|e| LayerError::Open {
            path: path.into(),
            source: e.into(),
        })?;
        let cvmfs = cvmfs::detect(root.as_fd(), path, (st.st_uid, st.st_gid));
        if let Some(c) = &cvmfs {
            tracing::debug!(layer = %path.display(), fqrn = %c.fqrn, claimed = ?c.claimed, "layer on a CernVM-FS client");
        }
        Ok(Layer {
            index,
            path: path.into(),
            root,
            dev: st.st_dev,
            cvmfs,
            noatime_denied: std::sync::atomic::AtomicBool::new(false),
            verifier: None,
        })
    }

    /// Check everything this layer answers from now on against `v`.
    pub fn set_verifier(&mut self, v: Verifier) {
        self.verifier = Some(v);
    }

    pub fn verifier(&self) -> Option<&Verifier> {
        self.verifier.as_ref()
    }

    /// Run `f` on (directory, rest) reaching `rel`: the root and `rel` itself when it is short,
    /// else a directory opened beneath the root piece by piece and the final stretch, so that
    /// paths longer than PATH_MAX work.
    fn at<R>(
        &self,
        rel: &RelPath,
        f: impl FnOnce(BorrowedFd<'_>, &CStr) -> rustix::io::Result<R>,
    ) -> io::Result<R> {
        let (head, rest) = split_long(rel);
        if rest.is_empty() {
            let p = cstr(if rel.is_empty() { b"." } else { rel })?;
            return Ok(f(self.root.as_fd(), &p)?);
        }
        let mut dir = confined::open_dir_beneath(&self.root, head)?;
        let mut rest = rest;
        loop {
            let (h, r) = split_long(rest);
            if r.is_empty() {
                return Ok(f(dir.as_fd(), &cstr(h)?)?);
            }
            dir = confined::open_dir_beneath(&dir, h)?;
            rest = r;
        }
    }

    /// `lstat` of an entry; `None` when it does not exist.
    pub fn stat(&self, rel: &RelPath) -> io::Result<Option<Stat>> {
        match self.at(rel, |d, p| {
            rustix::fs::statat(d, p, AtFlags::SYMLINK_NOFOLLOW)
        }) {
            Ok(mut st) => {
                if let Some(v) = &self.verifier {
                    v.check_stat(rel, Some(&st))?;
                }
                if let Some(c) = &self.cvmfs {
                    (st.st_uid, st.st_gid) = c.owner(st.st_uid, st.st_gid);
                    st.st_ino = c.ino(rel);
                }
                Ok(Some(st))
            }
            Err(e)
                if e.raw_os_error()
                    .is_some_and(|c| absent(&rustix::io::Errno::from_raw_os_error(c))) =>
            {
                if let Some(v) = &self.verifier {
                    v.check_stat(rel, None)?;
                }
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    pub fn exists(&self, rel: &RelPath) -> io::Result<bool> {
        Ok(self.stat(rel)?.is_some())
    }

    fn open_beneath(&self, rel: &RelPath, flags: OFlags) -> io::Result<OwnedFd> {
        let flags = flags | OFlags::CLOEXEC | OFlags::NOFOLLOW | OFlags::NOCTTY;
        self.at(rel, |d, p| {
            rustix::fs::openat2(d, p, flags, Mode::empty(), confined::beneath())
        })
    }

    /// Open a file for data, with O_NOATIME where allowed: as on kernel overlayfs, reading
    /// through the mount never touches a layer file's access time on its own; the mount's
    /// atime options decide (see `Overlay::accessed`).
    fn open_data(&self, rel: &RelPath, flags: OFlags) -> io::Result<OwnedFd> {
        use std::sync::atomic::Ordering::Relaxed;
        if !self.noatime_denied.load(Relaxed) {
            match self.open_beneath(rel, flags | OFlags::NOATIME) {
                Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                    self.noatime_denied.store(true, Relaxed)
                }
                r => return r,
            }
        }
        self.open_beneath(rel, flags)
    }

    /// Open a regular file for reading. Under `verify=on` a file of one block or less is
    /// checked whole before the descriptor is returned.
    pub fn open_read(&self, rel: &RelPath) -> io::Result<OwnedFd> {
        let fd = self.open_data(rel, OFlags::RDONLY)?;
        if let Some(v) = &self.verifier {
            v.check_open(rel, &fd, self.cvmfs.is_some())?;
        }
        Ok(fd)
    }

    /// Open a regular file only to have the kernel read it ahead (`fadvise`): nothing read
    /// through this descriptor reaches a caller, so nothing is checked.
    pub fn open_for_readahead(&self, rel: &RelPath) -> io::Result<OwnedFd> {
        self.open_data(rel, OFlags::RDONLY)
    }

    /// Under `verify=on`, check the copy a copy-up made of `rel` against the record (the
    /// copy, not the layer's file, which could change between a check and the copy).
    pub fn check_copy(&self, rel: &RelPath, copy: &OwnedFd) -> io::Result<()> {
        match &self.verifier {
            Some(v) => v.check_copy(rel, copy),
            None => Ok(()),
        }
    }

    /// Read from `fd` (opened by [`Layer::open_read`] for `rel`) at `offset` until `buf`
    /// is full or the file ends; under `verify=on` the blocks read are checked first.
    pub fn read(
        &self,
        rel: &RelPath,
        fd: &OwnedFd,
        buf: &mut [u8],
        offset: u64,
    ) -> io::Result<usize> {
        match &self.verifier {
            Some(v) => v.read(rel, fd, buf, offset, self.cvmfs.is_some()),
            None => read_at(fd, buf, offset),
        }
    }

    /// The record entry reads of the file `rel` are checked against, found once per file;
    /// `None` without a verifier.
    pub fn read_plan(&self, rel: &RelPath) -> io::Result<Option<u32>> {
        match &self.verifier {
            Some(v) => v.entry_index(rel).map(Some),
            None => Ok(None),
        }
    }

    /// [`Layer::read`] by a plan from [`Layer::read_plan`]; `st`: an fstat of `fd`, made
    /// by the caller.
    pub fn read_planned(
        &self,
        entry: u32,
        rel: &RelPath,
        (fd, st): (&OwnedFd, &Stat),
        buf: &mut [u8],
        offset: u64,
    ) -> io::Result<usize> {
        match &self.verifier {
            Some(v) => {
                let q = super::verify::Quick::from_stat(st);
                v.read_entry(entry, rel, (fd, q), buf, offset, self.cvmfs.is_some())
            }
            None => read_at(fd, buf, offset),
        }
    }

    /// Whether the kernel may read `rel` straight from the layer (passthrough): only when
    /// nothing is left to check after open.
    pub fn may_pass_through(&self, rel: &RelPath) -> bool {
        self.verifier
            .as_ref()
            .is_none_or(|v| v.checked_at_open(rel))
    }

    /// Open a regular file for reading and writing (the writable layer only).
    pub fn open_rw(&self, rel: &RelPath) -> io::Result<OwnedFd> {
        self.open_data(rel, OFlags::RDWR)
    }

    /// Open a directory of the layer, never through a symlink.
    pub fn open_dir(&self, rel: &RelPath) -> io::Result<OwnedFd> {
        self.open_data(rel, OFlags::RDONLY | OFlags::DIRECTORY)
    }

    /// An `O_PATH` descriptor of any entry (symlinks included, not followed).
    pub fn open_path(&self, rel: &RelPath) -> io::Result<OwnedFd> {
        self.open_beneath(rel, OFlags::PATH)
    }

    pub fn root(&self) -> &OwnedFd {
        &self.root
    }

    /// Read a whole directory of this layer.
    pub fn read_dir(&self, rel: &RelPath) -> io::Result<Vec<RawEntry>> {
        let fd = self.open_data(rel, OFlags::RDONLY | OFlags::DIRECTORY)?;
        let mut dir = rustix::fs::Dir::new(fd)?;
        let mut out = Vec::new();
        while let Some(ent) = dir.read() {
            let ent = ent?;
            let name = ent.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            let mut kind = filetype_bits(ent.file_type());
            let mut char_whiteout = false;
            // getdents does not carry rdev (and some filesystems give no type): stat those.
            if kind == 0 || kind == libc::S_IFCHR {
                let st = rustix::fs::statat(dir.fd()?, ent.file_name(), AtFlags::SYMLINK_NOFOLLOW)?;
                if let Some(v) = &self.verifier {
                    // A device's number decides whether it is a whiteout: check it here.
                    v.check_stat(&join(rel, name), Some(&st))?;
                }
                kind = st.st_mode & libc::S_IFMT;
                char_whiteout = whiteout::is_char_whiteout(st.st_mode, st.st_rdev);
            }
            out.push(RawEntry {
                ino: match &self.cvmfs {
                    Some(c) => c.ino(&join(rel, name)),
                    None => ent.ino(),
                },
                name: name.to_vec(),
                kind,
                char_whiteout,
            });
        }
        if let Some(v) = &self.verifier {
            v.check_listing(rel, out.iter().map(|e| (&e.name[..], e.kind)))?;
        }
        Ok(out)
    }

    pub fn readlink(&self, rel: &RelPath) -> io::Result<Vec<u8>> {
        let target = self
            .at(rel, |d, p| rustix::fs::readlinkat(d, p, Vec::new()))
            .map(|l| l.into_bytes())?;
        if let Some(v) = &self.verifier {
            v.check_target(rel, &target)?;
        }
        Ok(target)
    }

    /// Run `f` on a path that reaches `rel` through this process's descriptor of its parent
    /// directory; for the xattr calls, which have no `*at` form.
    fn with_proc_path<R>(
        &self,
        rel: &RelPath,
        f: impl FnOnce(&CString) -> io::Result<R>,
    ) -> io::Result<R> {
        match rel.iter().rposition(|&b| b == b'/') {
            None => f(&confined::proc_path(&self.root, rel)?),
            Some(i) => {
                let dir = confined::open_dir_beneath(&self.root, &rel[..i])?;
                f(&confined::proc_path(&dir, &rel[i + 1..])?)
            }
        }
    }

    pub fn set_xattr(
        &self,
        rel: &RelPath,
        name: &[u8],
        value: &[u8],
        flags: i32,
    ) -> io::Result<()> {
        let name = cstr(name)?;
        let flags = rustix::fs::XattrFlags::from_bits_retain(flags as u32);
        self.with_proc_path(rel, |p| Ok(rustix::fs::lsetxattr(p, &name, value, flags)?))
    }

    pub fn remove_xattr(&self, rel: &RelPath, name: &[u8]) -> io::Result<()> {
        let name = cstr(name)?;
        self.with_proc_path(rel, |p| Ok(rustix::fs::lremovexattr(p, &name)?))
    }

    /// All xattr names of an entry (the symlink itself for symlinks), NUL-separated; without
    /// a CernVM-FS client's magic ones.
    pub fn list_xattrs(&self, rel: &RelPath) -> io::Result<Vec<u8>> {
        let names = self.with_proc_path(rel, list_xattrs_at)?;
        let names = if self.cvmfs.is_none() {
            names
        } else {
            let mut out = Vec::with_capacity(names.len());
            for n in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
                if !cvmfs::is_magic_xattr(n) {
                    out.extend_from_slice(n);
                    out.push(0);
                }
            }
            out
        };
        if let Some(v) = &self.verifier {
            v.check_xattr_names(rel, &names)?;
        }
        Ok(names)
    }

    /// The value of one xattr; `None` when absent.
    pub fn get_xattr(&self, rel: &RelPath, name: &[u8]) -> io::Result<Option<Vec<u8>>> {
        // A CernVM-FS client answers its magic names for every path without listing them.
        // (Callers ask for names the entry lists: the mount checks its cached list first.)
        if self.cvmfs.is_some() && cvmfs::is_magic_xattr(name) {
            return Ok(None);
        }
        let cname = cstr(name)?;
        let value = self.with_proc_path(rel, |p| get_xattr_at(p, &cname))?;
        if let Some(v) = &self.verifier {
            v.check_xattr(rel, name, value.as_deref())?;
        }
        Ok(value)
    }

    /// Whether the directory at `rel` hides the layers below it (xattr or `.wh..wh..opq`).
    pub fn is_opaque_dir(&self, rel: &RelPath) -> io::Result<bool> {
        if self.exists(&join(rel, whiteout::OPAQUE_MARKER))? {
            return Ok(true);
        }
        let names = self.list_xattrs(rel)?;
        for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
            if whiteout::is_opaque_xattr(name)
                && self
                    .get_xattr(rel, name)?
                    .is_some_and(|v| whiteout::is_opaque_value(&v))
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    pub fn statvfs(&self) -> io::Result<StatVfs> {
        Ok(rustix::fs::fstatvfs(self.root.as_fd())?)
    }
}

/// All xattr names at a path (not following it), NUL-separated.
pub(crate) fn list_xattrs_at(p: &CString) -> io::Result<Vec<u8>> {
    list_xattrs_with(
        || rustix::fs::llistxattr_query(p),
        |buf| rustix::fs::llistxattr(p, buf),
    )
}

/// The xattr names of an open file, NUL-separated.
pub fn list_xattrs_fd(fd: &OwnedFd) -> io::Result<Vec<u8>> {
    list_xattrs_with(
        || rustix::fs::flistxattr_query(fd),
        |buf| rustix::fs::flistxattr(fd, buf),
    )
}

fn list_xattrs_with(
    query: impl Fn() -> rustix::io::Result<usize>,
    list: impl Fn(&mut [u8]) -> rustix::io::Result<usize>,
) -> io::Result<Vec<u8>> {
    loop {
        let n = match query() {
            Ok(n) => n,
            Err(rustix::io::Errno::NOTSUP) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        if n == 0 {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; n];
        match list(&mut buf[..]) {
            Ok(m) => {
                buf.truncate(m);
                return Ok(buf);
            }
            Err(rustix::io::Errno::RANGE) => continue, // grew meanwhile
            Err(e) => return Err(e.into()),
        }
    }
}

/// One xattr's value at a path (not following it); `None` when absent.
pub(crate) fn get_xattr_at(p: &CString, name: &CStr) -> io::Result<Option<Vec<u8>>> {
    get_xattr_with(
        || rustix::fs::lgetxattr_query(p, name),
        |buf| rustix::fs::lgetxattr(p, name, buf),
    )
}

/// One xattr's value of an open file; `None` when absent.
pub(crate) fn get_xattr_fd(fd: BorrowedFd<'_>, name: &CStr) -> io::Result<Option<Vec<u8>>> {
    get_xattr_with(
        || rustix::fs::fgetxattr_query(fd, name),
        |buf| rustix::fs::fgetxattr(fd, name, buf),
    )
}

fn get_xattr_with(
    query: impl Fn() -> rustix::io::Result<usize>,
    get: impl Fn(&mut [u8]) -> rustix::io::Result<usize>,
) -> io::Result<Option<Vec<u8>>> {
    loop {
        let n = match query() {
            Ok(n) => n,
            Err(rustix::io::Errno::NODATA | rustix::io::Errno::NOTSUP) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let mut buf = vec![0u8; n];
        match get(&mut buf[..]) {
            Ok(m) => {
                buf.truncate(m);
                return Ok(Some(buf));
            }
            Err(rustix::io::Errno::RANGE) => continue,
            Err(rustix::io::Errno::NODATA) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    }
}

fn filetype_bits(t: rustix::fs::FileType) -> u32 {
    use rustix::fs::FileType as T;
    match t {
        T::RegularFile => libc::S_IFREG,
        T::Directory => libc::S_IFDIR,
        T::Symlink => libc::S_IFLNK,
        T::Fifo => libc::S_IFIFO,
        T::Socket => libc::S_IFSOCK,
        T::CharacterDevice => libc::S_IFCHR,
        T::BlockDevice => libc::S_IFBLK,
        T::Unknown => 0,
    }
}

/// Read from `fd` at `offset` until `buf` is full or the file ends.
pub fn read_at(fd: &OwnedFd, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match rustix::io::pread(fd, &mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(done)
}
