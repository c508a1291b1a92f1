//! Unpacking one layer blob into a directory, in one streamed pass: the compressed bytes are
//! hashed (the layer digest), decompressed (gzip with several members, zstd, or none),
//! hashed again (the diff ID) and written out entry by entry.
//!
//! Every image is treated as hostile. All writes go through descriptors opened beneath the
//! layer root with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`, so no entry can write outside the
//! layer or through a symlink another entry planted; names with `..` are refused; a hard link
//! must name an entry of the same layer (or, deferred, a file of a lower layer of the image).

use std::collections::HashMap;
use std::ffi::CString;
use std::io::{self, BufRead, BufReader, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use rustix::fs::{AtFlags, Mode, OFlags, Timespec, Timestamps};
use rustix::io::Errno;
use tracing::warn;

use crate::image::Error as ImageError;
use crate::image::digest::{Digest, HashingReader};
use crate::stack::override_stat::{self, Override};
use crate::stack::record::{ContentHasher, FileDigest, HashingWriter};
use crate::stack::whiteout;

/// Where the unpacked layer is written and with what privileges.
pub struct Target<'a> {
    /// For error messages: the image and the layer.
    pub image: &'a str,
    pub layer: &'a str,
    /// Owners, device nodes and all xattr namespaces can be applied (root). Otherwise what
    /// cannot be applied is recorded in `user.containers.override_stat`.
    pub privileged: bool,
    /// The most bytes the layer's tar may unpack to: a hostile blob of a few kilobytes can
    /// inflate to fill the disk.
    pub max_size: u64,
}

/// A reader that fails once more than `left` bytes went through it, and says so in `hit`.
struct Limit<R> {
    inner: R,
    left: u64,
    hit: std::rc::Rc<std::cell::Cell<bool>>,
}

impl<R: Read> Read for Limit<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        match self.left.checked_sub(n as u64) {
            Some(l) => {
                self.left = l;
                Ok(n)
            }
            None => {
                self.hit.set(true);
                Err(io::Error::other("layer size limit"))
            }
        }
    }
}

/// What one layer held.
#[derive(Debug, Default, Clone)]
pub struct Unpacked {
    pub compressed_digest: Option<Digest>,
    pub compressed_size: u64,
    pub diff_id: Option<Digest>,
    pub diff_size: u64,
    pub files: u64,
    /// Hard links whose target is not in this layer: (link path, target path). The caller
    /// materialises them from the image's lower layers.
    pub deferred_links: Vec<(Vec<u8>, Vec<u8>)>,
    /// Content digests of the regular files, by path, taken as the tar streamed by: what the
    /// layer's record is made from (see [`crate::stack::record`]).
    pub digests: HashMap<Vec<u8>, FileDigest>,
}

/// xattrs an image may not set: they would steer our own mount (overlay markers, the
/// ownership override) rather than describe a file.
fn forbidden_xattr(name: &str) -> bool {
    whiteout::is_internal_xattr(name.as_bytes())
        || override_stat::is_override_xattr(name.as_bytes())
}

pub const OVERRIDE_XATTR: &str = override_stat::USER_NAME;

/// Split an entry name into components: leading `/` and `.` parts dropped (as tar does),
/// `..` refused.
pub fn components(path: &[u8]) -> Result<Vec<&[u8]>, &'static str> {
    let mut out = Vec::new();
    for c in path.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err("'..' in the name: refused, it could climb out of the layer"),
            c => out.push(c),
        }
    }
    Ok(out)
}

use crate::confined::{cstr, open_beneath};

/// Metadata of one tar entry, with PAX overrides applied.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: Timespec,
    atime: Timespec,
    xattrs: Vec<(String, Vec<u8>)>,
}

fn parse_time(v: &[u8]) -> Option<Timespec> {
    let s = std::str::from_utf8(v).ok()?;
    let (sec, frac) = s.split_once('.').unwrap_or((s, ""));
    let sec: i64 = sec.parse().ok()?;
    let mut nsec = 0i64;
    if !frac.is_empty() {
        let digits: String = frac.chars().take(9).collect();
        nsec = digits.parse::<i64>().ok()? * 10i64.pow(9 - digits.len() as u32);
    }
    // "-1.5" means 1.5 s before the epoch.
    let (sec, nsec) = if s.starts_with('-') && nsec > 0 {
        (sec - 1, 1_000_000_000 - nsec)
    } else {
        (sec, nsec)
    };
    Some(Timespec {
        tv_sec: sec,
        tv_nsec: nsec as _,
    })
}

fn meta_of<R: Read>(entry: &mut tar::Entry<'_, R>) -> io::Result<Meta> {
    let h = entry.header();
    let sec = h.mtime().unwrap_or(0) as i64;
    let mut m = Meta {
        mode: h.mode().unwrap_or(0o644) & 0o7777,
        uid: h.uid().unwrap_or(0) as u32,
        gid: h.gid().unwrap_or(0) as u32,
        mtime: Timespec {
            tv_sec: sec,
            tv_nsec: 0,
        },
        atime: Timespec {
            tv_sec: sec,
            tv_nsec: 0,
        },
        xattrs: Vec::new(),
    };
    let mut atime = None;
    if let Some(pax) = entry.pax_extensions()? {
        for ext in pax {
            let ext = ext?;
            let Ok(key) = ext.key() else { continue };
            let v = ext.value_bytes();
            match key {
                "mtime" => m.mtime = parse_time(v).unwrap_or(m.mtime),
                "atime" => atime = parse_time(v),
                "uid" => {
                    m.uid = std::str::from_utf8(v)
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(m.uid)
                }
                "gid" => {
                    m.gid = std::str::from_utf8(v)
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(m.gid)
                }
                k => {
                    if let Some(name) = k.strip_prefix("SCHILY.xattr.") {
                        m.xattrs.push((name.to_string(), v.to_vec()));
                    }
                }
            }
        }
    }
    m.atime = atime.unwrap_or(m.mtime);
    Ok(m)
}

/// A directory whose mode and times are set once everything inside it is written.
struct PendingDir {
    comps: Vec<Vec<u8>>,
    meta: Meta,
}

/// Decompress by magic number: gzip (any number of members), zstd, or a plain tar.
fn decoder<'a, R: BufRead + 'a>(mut r: R) -> io::Result<Box<dyn Read + 'a>> {
    let head = r.fill_buf()?;
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(flate2::bufread::MultiGzDecoder::new(r)))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Ok(Box::new(zstd::stream::read::Decoder::with_buffer(r)?))
    } else {
        Ok(Box::new(r))
    }
}

/// Unpack `blob` into the (empty) directory `dest`.
pub fn unpack(blob: impl Read, dest: &Path, t: &Target<'_>) -> Result<Unpacked, ImageError> {
    let root = rustix::fs::open(
        dest,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| ImageError::io(dest, e.into()))?;
    let mut compressed = BufReader::with_capacity(1 << 20, HashingReader::new(blob));
    let mut out = Unpacked::default();
    let layer_err = |e: ImageError| ImageError::Layer {
        image: t.image.to_string(),
        layer: t.layer.to_string(),
        source: Box::new(e),
    };
    let hit = std::rc::Rc::new(std::cell::Cell::new(false));
    let io_err = |what: &str, e: io::Error| {
        layer_err(if hit.get() {
            ImageError::TooLarge { limit: t.max_size }
        } else {
            ImageError::format(what.to_string(), e)
        })
    };
    {
        let dec = decoder(&mut compressed).map_err(|e| io_err("reading the blob", e))?;
        let dec = Limit {
            inner: dec,
            left: t.max_size,
            hit: std::rc::Rc::clone(&hit),
        };
        let mut plain = HashingReader::new(dec);
        let mut pending = Vec::new();
        {
            let mut ar = tar::Archive::new(&mut plain);
            let entries = ar.entries().map_err(|e| io_err("reading the tar", e))?;
            for entry in entries {
                let mut entry = entry.map_err(|e| io_err("reading the tar", e))?;
                let name = entry.path_bytes().into_owned();
                let shown = String::from_utf8_lossy(&name).into_owned();
                let unsafe_entry = |reason: String| ImageError::UnsafeEntry {
                    image: t.image.to_string(),
                    layer: t.layer.to_string(),
                    entry: shown.clone(),
                    reason,
                };
                match write_entry(&root, &mut entry, &name, t, &mut pending, &mut out) {
                    Ok(()) => {}
                    Err(_) if hit.get() => return Err(io_err("", io::ErrorKind::Other.into())),
                    Err(EntryError::Unsafe(r)) => return Err(unsafe_entry(r)),
                    Err(EntryError::Io(e)) => return Err(unsafe_entry(e.to_string())),
                }
            }
        }
        let (diff_id, diff_size) = plain.finish().map_err(|e| io_err("reading the tar", e))?;
        out.diff_id = Some(diff_id);
        out.diff_size = diff_size;
        // Deepest first, so setting a parent's times is the last change to it.
        pending.sort_by_key(|d: &PendingDir| std::cmp::Reverse(d.comps.len()));
        for d in &pending {
            let comps: Vec<&[u8]> = d.comps.iter().map(|c| c.as_slice()).collect();
            let fd = open_beneath(&root, &comps, false)
                .and_then(|fd| finish_dir(&fd, &d.meta))
                .map_err(|e| {
                    io_err(
                        &format!(
                            "directory '{}'",
                            String::from_utf8_lossy(&d.comps.join(&b'/'))
                        ),
                        e,
                    )
                });
            fd?;
        }
    }
    let (digest, size) = compressed
        .into_inner()
        .finish()
        .map_err(|e| io_err("reading the blob", e))?;
    out.compressed_digest = Some(digest);
    out.compressed_size = size;
    Ok(out)
}

enum EntryError {
    Unsafe(String),
    Io(io::Error),
}

impl From<io::Error> for EntryError {
    fn from(e: io::Error) -> Self {
        EntryError::Io(e)
    }
}

impl From<Errno> for EntryError {
    fn from(e: Errno) -> Self {
        EntryError::Io(e.into())
    }
}

fn write_entry<R: Read>(
    root: &OwnedFd,
    entry: &mut tar::Entry<'_, R>,
    name: &[u8],
    t: &Target<'_>,
    pending: &mut Vec<PendingDir>,
    out: &mut Unpacked,
) -> Result<(), EntryError> {
    use tar::EntryType as E;
    let kind = entry.header().entry_type();
    if matches!(
        kind,
        E::XGlobalHeader | E::XHeader | E::GNULongName | E::GNULongLink
    ) {
        return Ok(());
    }
    let comps = components(name).map_err(|r| EntryError::Unsafe(r.into()))?;
    let meta = meta_of(entry)?;
    let Some((last, parents)) = comps.split_last() else {
        // The layer root itself ("./"): its metadata, applied at the end.
        if kind == E::Directory {
            pending.push(PendingDir {
                comps: Vec::new(),
                meta,
            });
        }
        return Ok(());
    };
    let dir = open_beneath(root, parents, true).map_err(|e| match e.raw_os_error() {
        Some(libc::ELOOP) | Some(libc::EXDEV) => {
            EntryError::Unsafe("a parent is a symlink: writes through symlinks are refused".into())
        }
        Some(libc::ENOTDIR) => EntryError::Unsafe("a parent is not a directory".into()),
        _ => EntryError::Io(e),
    })?;
    let at = At {
        root,
        dir: &dir,
        cn: cstr(last)?,
        meta: &meta,
        t,
        name,
    };
    let existing = rustix::fs::statat(&dir, &at.cn, AtFlags::SYMLINK_NOFOLLOW).ok();
    let existing_dir = existing
        .as_ref()
        .is_some_and(|s| s.st_mode & libc::S_IFMT == libc::S_IFDIR);
    if kind == E::Directory {
        at.dir(existing.is_some() && !existing_dir, existing_dir)?;
        pending.push(PendingDir {
            comps: comps.iter().map(|c| c.to_vec()).collect(),
            meta,
        });
        return Ok(());
    }
    if existing_dir {
        return Err(EntryError::Unsafe(
            "replaces a directory of the same layer".into(),
        ));
    }
    if existing.is_some() {
        rustix::fs::unlinkat(&dir, &at.cn, AtFlags::empty())?;
    }
    out.files += 1;
    let path = comps.join(&b'/');
    out.digests.remove(&path);
    match kind {
        E::Regular | E::Continuous | E::GNUSparse => at.file(entry, path, out),
        E::Symlink => at.symlink(entry),
        E::Link => at.hard_link(entry, path, out),
        E::Char | E::Block | E::Fifo => at.special(entry.header(), kind),
        other => {
            out.files -= 1;
            warn!(
                image = t.image,
                layer = t.layer,
                entry = %String::from_utf8_lossy(name),
                "skipping tar entry of type {other:?}"
            );
            Ok(())
        }
    }
}

/// Where one tar entry goes: name `cn` in `dir`, a directory of the layer `root` opened
/// beneath it; with the entry's metadata and its name in the tar (for messages).
struct At<'a> {
    root: &'a OwnedFd,
    dir: &'a OwnedFd,
    cn: CString,
    meta: &'a Meta,
    t: &'a Target<'a>,
    name: &'a [u8],
}

impl At<'_> {
    /// A new empty file, private until its metadata is set.
    fn create(&self) -> Result<OwnedFd, Errno> {
        rustix::fs::openat(
            self.dir,
            &self.cn,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
    }

    /// A directory, made unless it is there; replacing a non-directory (`replace`). Its
    /// mode and times are applied at the end, once nothing more is written into it.
    fn dir(&self, replace: bool, exists: bool) -> Result<(), EntryError> {
        if replace {
            rustix::fs::unlinkat(self.dir, &self.cn, AtFlags::empty())?;
        }
        if !exists {
            rustix::fs::mkdirat(self.dir, &self.cn, Mode::from_raw_mode(0o700))?;
        }
        let fd = rustix::fs::openat(
            self.dir,
            &self.cn,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        set_owner_xattrs(&fd, self.meta, libc::S_IFDIR, 0, self.t)?;
        Ok(())
    }

    /// A regular file, its content hashed as it is written (the record's digest).
    fn file<R: Read>(
        &self,
        entry: &mut tar::Entry<'_, R>,
        path: Vec<u8>,
        out: &mut Unpacked,
    ) -> Result<(), EntryError> {
        let fd = self.create()?;
        let mut w = HashingWriter {
            inner: std::fs::File::from(fd),
            hasher: ContentHasher::default(),
        };
        io::copy(entry, &mut w)?;
        let f = w.inner;
        out.digests.insert(path, w.hasher.finish());
        set_owner_xattrs(f.as_fd(), self.meta, libc::S_IFREG, 0, self.t)?;
        rustix::fs::fchmod(&f, Mode::from_raw_mode(self.meta.mode))?;
        rustix::fs::futimens(&f, &times(self.meta))?;
        Ok(())
    }

    fn symlink<R: Read>(&self, entry: &tar::Entry<'_, R>) -> Result<(), EntryError> {
        let target = entry
            .link_name_bytes()
            .ok_or_else(|| EntryError::Unsafe("symlink without a target".into()))?;
        rustix::fs::symlinkat(cstr(&target)?, self.dir, &self.cn)?;
        if self.t.privileged {
            chown_at(self.dir, &self.cn, self.meta)?;
        }
        rustix::fs::utimensat(
            self.dir,
            &self.cn,
            &times(self.meta),
            AtFlags::SYMLINK_NOFOLLOW,
        )?;
        Ok(())
    }

    /// A hard link to a file of this layer, looked up beneath the layer's root. A target
    /// not (yet) in this layer is one of a lower layer: the link is made once every layer is
    /// in place (`deferred_links`).
    fn hard_link<R: Read>(
        &self,
        entry: &tar::Entry<'_, R>,
        path: Vec<u8>,
        out: &mut Unpacked,
    ) -> Result<(), EntryError> {
        let target = entry
            .link_name_bytes()
            .ok_or_else(|| EntryError::Unsafe("hard link without a target".into()))?
            .into_owned();
        let tcomps = components(&target)
            .map_err(|r| EntryError::Unsafe(format!("hard link target: {r}")))?;
        let Some((tlast, tparents)) = tcomps.split_last() else {
            return Err(EntryError::Unsafe("hard link to the layer root".into()));
        };
        let linked = open_beneath(self.root, tparents, false).and_then(|tdir| {
            Ok(rustix::fs::linkat(
                &tdir,
                cstr(tlast)?,
                self.dir,
                &self.cn,
                AtFlags::empty(),
            )?)
        });
        let target_shown = || String::from_utf8_lossy(&target).into_owned();
        match linked.map_err(|e| e.raw_os_error()) {
            Ok(()) => {
                if let Some(d) = out.digests.get(&tcomps.join(&b'/')).cloned() {
                    out.digests.insert(path, d);
                }
                Ok(())
            }
            Err(Some(libc::ENOENT)) => {
                out.files -= 1;
                out.deferred_links.push((path, tcomps.join(&b'/')));
                Ok(())
            }
            Err(Some(libc::EPERM)) => Err(EntryError::Unsafe(format!(
                "hard link to '{}', a directory",
                target_shown()
            ))),
            Err(Some(libc::ELOOP) | Some(libc::EXDEV) | Some(libc::ENOTDIR)) => {
                Err(EntryError::Unsafe(format!(
                    "hard link target '{}' goes through a symlink or a non-directory",
                    target_shown()
                )))
            }
            Err(e) => Err(EntryError::Io(io::Error::from_raw_os_error(
                e.unwrap_or(libc::EIO),
            ))),
        }
    }

    /// A device node or fifo. Without privilege a device is an empty file whose override
    /// xattr says what it is, as containers/storage does for rootless images.
    fn special(&self, h: &tar::Header, kind: tar::EntryType) -> Result<(), EntryError> {
        use tar::EntryType as E;
        let (ma, mi) = (
            h.device_major().ok().flatten().unwrap_or(0),
            h.device_minor().ok().flatten().unwrap_or(0),
        );
        let (ifmt, ft) = match kind {
            E::Char => (libc::S_IFCHR, rustix::fs::FileType::CharacterDevice),
            E::Block => (libc::S_IFBLK, rustix::fs::FileType::BlockDevice),
            _ => (libc::S_IFIFO, rustix::fs::FileType::Fifo),
        };
        let rdev = libc::makedev(ma, mi);
        let meta = self.meta;
        if ifmt == libc::S_IFIFO || self.t.privileged {
            rustix::fs::mknodat(self.dir, &self.cn, ft, Mode::from_raw_mode(0o600), rdev)?;
            if self.t.privileged {
                chown_at(self.dir, &self.cn, meta)?;
            } else if meta.uid != own_uid() || meta.gid != own_gid() {
                // user.* xattrs cannot be set on a fifo: the owner is lost.
                warn!(image = self.t.image, layer = self.t.layer,
                    entry = %String::from_utf8_lossy(self.name),
                    "fifo owner {}:{} not kept", meta.uid, meta.gid);
            }
        } else {
            let fd = self.create()?;
            set_override(&fd, meta, ifmt, rdev)?;
        }
        rustix::fs::chmodat(
            self.dir,
            &self.cn,
            Mode::from_raw_mode(meta.mode),
            AtFlags::empty(),
        )?;
        rustix::fs::utimensat(self.dir, &self.cn, &times(meta), AtFlags::SYMLINK_NOFOLLOW)?;
        Ok(())
    }
}

fn chown_at(dir: &OwnedFd, name: &CString, m: &Meta) -> io::Result<()> {
    Ok(rustix::fs::chownat(
        dir,
        name,
        Some(rustix::fs::Uid::from_raw(m.uid)),
        Some(rustix::fs::Gid::from_raw(m.gid)),
        AtFlags::SYMLINK_NOFOLLOW,
    )?)
}

fn times(m: &Meta) -> Timestamps {
    Timestamps {
        last_access: m.atime,
        last_modification: m.mtime,
    }
}

fn own_uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

fn own_gid() -> u32 {
    rustix::process::getegid().as_raw()
}

/// Record what could not be applied (owner, mode, type) in the override xattr.
fn set_override(fd: impl AsFd, meta: &Meta, ifmt: u32, rdev: u64) -> io::Result<()> {
    let o = Override {
        uid: meta.uid,
        gid: meta.gid,
        perm: meta.mode,
        kind: Some((ifmt, rdev)),
    };
    Ok(rustix::fs::fsetxattr(
        fd,
        OVERRIDE_XATTR,
        o.format().as_bytes(),
        rustix::fs::XattrFlags::empty(),
    )?)
}

/// Owner and xattrs on an open file or directory. Unprivileged, an owner other than our own
/// goes into the override xattr, and xattrs outside `user.` are dropped with a warning.
fn set_owner_xattrs(
    fd: impl AsFd,
    meta: &Meta,
    ifmt: u32,
    rdev: u64,
    t: &Target<'_>,
) -> io::Result<()> {
    let fd = fd.as_fd();
    if t.privileged {
        rustix::fs::fchown(
            fd,
            Some(rustix::fs::Uid::from_raw(meta.uid)),
            Some(rustix::fs::Gid::from_raw(meta.gid)),
        )?;
    } else if meta.uid != own_uid() || meta.gid != own_gid() {
        set_override(fd, meta, ifmt, rdev)?;
    }
    for (name, value) in &meta.xattrs {
        if forbidden_xattr(name) {
            warn!(image = t.image, layer = t.layer, xattr = %name, "xattr refused");
            continue;
        }
        if let Err(e) =
            rustix::fs::fsetxattr(fd, name.as_str(), value, rustix::fs::XattrFlags::empty())
        {
            if t.privileged || name.starts_with("user.") {
                return Err(e.into());
            }
            warn!(image = t.image, layer = t.layer, xattr = %name, "xattr not kept: {e}");
        }
    }
    Ok(())
}

fn finish_dir(fd: &OwnedFd, m: &Meta) -> io::Result<()> {
    rustix::fs::fchmod(fd, Mode::from_raw_mode(m.mode))?;
    rustix::fs::futimens(fd, &times(m))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_cleaned_and_dotdot_refused() {
        assert_eq!(components(b"/a/./b/").unwrap(), vec![&b"a"[..], b"b"]);
        assert_eq!(components(b"./").unwrap(), Vec::<&[u8]>::new());
        assert!(components(b"a/../../etc/passwd").is_err());
        assert!(components(b"../x").is_err());
    }

    #[test]
    fn pax_times_keep_nanoseconds() {
        let t = parse_time(b"1700000000.123456789").unwrap();
        assert_eq!((t.tv_sec, t.tv_nsec), (1700000000, 123456789));
        let t = parse_time(b"12.5").unwrap();
        assert_eq!((t.tv_sec, t.tv_nsec), (12, 500000000));
        let t = parse_time(b"-1.25").unwrap();
        assert_eq!((t.tv_sec, t.tv_nsec), (-2, 750000000));
    }
}
