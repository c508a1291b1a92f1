//! One layer of the stack: a directory tree reached only through a file descriptor to its root.
//!
//! Every access is relative to that descriptor, so a layer keeps working when the mount covers
//! its path (apptainer mounts over the last lowerdir) and nothing resolves outside it: opens use
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`, stats never follow the final symlink, and the
//! intermediate components of a path are directories the overlay has already checked.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags, Stat, StatVfs};

use crate::error::Error;
use crate::whiteout;

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

pub(crate) fn cpath(rel: &RelPath) -> io::Result<CString> {
    let bytes = if rel.is_empty() { b"." as &[u8] } else { rel };
    CString::new(bytes).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn absent(e: &rustix::io::Errno) -> bool {
    *e == rustix::io::Errno::NOENT || *e == rustix::io::Errno::NOTDIR
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
}

impl Layer {
    /// Open a layer root. Fails with an error naming the path if it is missing, not a
    /// directory or not readable.
    pub fn open(index: usize, path: &Path) -> Result<Layer, Error> {
        let root = rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| match e {
            rustix::io::Errno::NOTDIR => Error::LayerNotDir { path: path.into() },
            rustix::io::Errno::ACCESS => Error::LayerUnreadable {
                path: path.into(),
                source: e.into(),
            },
            e => Error::LayerOpen {
                path: path.into(),
                source: e.into(),
            },
        })?;
        rustix::fs::accessat(&root, ".", rustix::fs::Access::EXEC_OK, AtFlags::empty()).map_err(
            |e| Error::LayerUnreadable {
                path: path.into(),
                source: e.into(),
            },
        )?;
        let st = rustix::fs::fstat(&root).map_err(|e| Error::LayerOpen {
            path: path.into(),
            source: e.into(),
        })?;
        Ok(Layer {
            index,
            path: path.into(),
            root,
            dev: st.st_dev,
        })
    }

    /// `lstat` of an entry; `None` when it does not exist.
    pub fn stat(&self, rel: &RelPath) -> io::Result<Option<Stat>> {
        match rustix::fs::statat(&self.root, cpath(rel)?, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(st)),
            Err(e) if absent(&e) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    pub fn exists(&self, rel: &RelPath) -> io::Result<bool> {
        Ok(self.stat(rel)?.is_some())
    }

    fn open_beneath(&self, rel: &RelPath, flags: OFlags) -> io::Result<OwnedFd> {
        let flags = flags | OFlags::CLOEXEC | OFlags::NOFOLLOW | OFlags::NOCTTY;
        let resolve =
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
        Ok(rustix::fs::openat2(
            &self.root,
            cpath(rel)?,
            flags,
            Mode::empty(),
            resolve,
        )?)
    }

    /// Open a regular file for reading.
    pub fn open_read(&self, rel: &RelPath) -> io::Result<OwnedFd> {
        self.open_beneath(rel, OFlags::RDONLY)
    }

    /// Open a regular file for reading and writing (the writable layer only).
    pub fn open_rw(&self, rel: &RelPath) -> io::Result<OwnedFd> {
        self.open_beneath(rel, OFlags::RDWR)
    }

    /// Open a directory of the layer, never through a symlink.
    pub fn open_dir(&self, rel: &RelPath) -> io::Result<OwnedFd> {
        self.open_beneath(rel, OFlags::RDONLY | OFlags::DIRECTORY)
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
        let fd = self.open_beneath(rel, OFlags::RDONLY | OFlags::DIRECTORY)?;
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
                kind = st.st_mode & libc::S_IFMT;
                char_whiteout = whiteout::is_char_whiteout(st.st_mode, st.st_rdev);
            }
            out.push(RawEntry {
                name: name.to_vec(),
                kind,
                ino: ent.ino(),
                char_whiteout,
            });
        }
        Ok(out)
    }

    pub fn readlink(&self, rel: &RelPath) -> io::Result<Vec<u8>> {
        Ok(rustix::fs::readlinkat(&self.root, cpath(rel)?, Vec::new())?.into_bytes())
    }

    /// A path that reaches `rel` through this process's descriptor of the layer root; used for
    /// the xattr calls, which have no `*at` form.
    fn proc_path(&self, rel: &RelPath) -> io::Result<CString> {
        proc_path(&self.root, rel)
    }

    pub fn set_xattr(
        &self,
        rel: &RelPath,
        name: &[u8],
        value: &[u8],
        flags: i32,
    ) -> io::Result<()> {
        let p = self.proc_path(rel)?;
        let name = CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        let flags = rustix::fs::XattrFlags::from_bits_retain(flags as u32);
        Ok(rustix::fs::lsetxattr(&p, &name, value, flags)?)
    }

    pub fn remove_xattr(&self, rel: &RelPath, name: &[u8]) -> io::Result<()> {
        let p = self.proc_path(rel)?;
        let name = CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        Ok(rustix::fs::lremovexattr(&p, &name)?)
    }

    /// All xattr names of an entry (the symlink itself for symlinks), NUL-separated.
    pub fn list_xattrs(&self, rel: &RelPath) -> io::Result<Vec<u8>> {
        let p = self.proc_path(rel)?;
        loop {
            let n = match rustix::fs::llistxattr_query(&p) {
                Ok(n) => n,
                Err(rustix::io::Errno::NOTSUP) => return Ok(Vec::new()),
                Err(e) => return Err(e.into()),
            };
            if n == 0 {
                return Ok(Vec::new());
            }
            let mut buf = vec![0u8; n];
            match rustix::fs::llistxattr(&p, &mut buf[..]) {
                Ok(m) => {
                    buf.truncate(m);
                    return Ok(buf);
                }
                Err(rustix::io::Errno::RANGE) => continue, // grew meanwhile
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The value of one xattr; `None` when absent.
    pub fn get_xattr(&self, rel: &RelPath, name: &[u8]) -> io::Result<Option<Vec<u8>>> {
        let p = self.proc_path(rel)?;
        let name = CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        loop {
            let n = match rustix::fs::lgetxattr_query(&p, &name) {
                Ok(n) => n,
                Err(rustix::io::Errno::NODATA | rustix::io::Errno::NOTSUP) => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            let mut buf = vec![0u8; n];
            match rustix::fs::lgetxattr(&p, &name, &mut buf[..]) {
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

    /// Whether the directory at `rel` hides the layers below it (xattr or `.wh..wh..opq`).
    pub fn is_opaque_dir(&self, rel: &RelPath) -> io::Result<bool> {
        if self.exists(&join(rel, whiteout::OPAQUE_MARKER))? {
            return Ok(true);
        }
        let names = self.list_xattrs(rel)?;
        for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
            if whiteout::OPAQUE_XATTRS.iter().any(|x| x.as_bytes() == name)
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

/// `/proc/self/fd/N/rel`: reaches `rel` under an open directory for calls with no `*at` form.
/// The final component is never followed by the `l*` calls that use it.
pub fn proc_path(dir: &OwnedFd, rel: &RelPath) -> io::Result<CString> {
    let mut p = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
    // "N/." is the directory itself; a bare "N" would be the magic link, which the `l*` calls
    // do not follow.
    p.extend_from_slice(if rel.is_empty() { b"." } else { rel });
    CString::new(p).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
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
