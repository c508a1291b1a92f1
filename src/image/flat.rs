//! The merged root of an image (`.flat/<xx>/<config>`): the layers applied bottom to top with
//! their whiteouts, files hard-linked to the layer's own copy so an image costs about one copy
//! of its content, directories made fresh with the metadata of the topmost layer that has
//! them, plus the scaffolding apptainer expects.

use std::collections::HashMap;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use rustix::fs::{AtFlags, Mode, OFlags, Timestamps};
use rustix::io::Errno;

use crate::confined::remove_tree;
use crate::image::manifest::ImageConfig;
use crate::stack::whiteout::{OPAQUE_MARKER, WH_PREFIX};

fn cstr(b: &[u8]) -> io::Result<CString> {
    CString::new(b).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn open_dir(at: impl AsFd, name: &[u8]) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat(
        at,
        cstr(name)?,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

fn names(dir: &OwnedFd) -> io::Result<Vec<(Vec<u8>, bool)>> {
    let mut out = Vec::new();
    for e in rustix::fs::Dir::read_from(dir)? {
        let e = e?;
        let n = e.file_name().to_bytes();
        if n == b"." || n == b".." {
            continue;
        }
        let is_dir = match e.file_type() {
            rustix::fs::FileType::Directory => true,
            rustix::fs::FileType::Unknown => {
                rustix::fs::statat(dir, e.file_name(), AtFlags::SYMLINK_NOFOLLOW)
                    .map(|s| s.st_mode & libc::S_IFMT == libc::S_IFDIR)?
            }
            _ => false,
        };
        out.push((n.to_vec(), is_dir));
    }
    Ok(out)
}

/// Builds the merged tree in `dest` (an empty directory) from `layers`, bottom first.
pub struct FlatBuilder {
    /// Directory path -> the layer its metadata comes from.
    dir_source: HashMap<Vec<u8>, usize>,
    pub files: u64,
}

impl FlatBuilder {
    pub fn build(layers: &[&Path], dest: &Path, config: &ImageConfig) -> io::Result<FlatBuilder> {
        let mut b = FlatBuilder {
            dir_source: HashMap::new(),
            files: 0,
        };
        let out = open_dir(rustix::fs::CWD, dest.as_os_str().as_encoded_bytes())?;
        for (i, l) in layers.iter().enumerate() {
            let src = open_dir(rustix::fs::CWD, l.as_os_str().as_encoded_bytes())?;
            b.dir_source.insert(Vec::new(), i);
            b.apply_dir(i, &src, &out, b"")?;
        }
        scaffold(&out, config)?;
        b.finish_dirs(layers, &out)?;
        Ok(b)
    }

    fn apply_dir(
        &mut self,
        layer: usize,
        src: &OwnedFd,
        out: &OwnedFd,
        rel: &[u8],
    ) -> io::Result<()> {
        let entries = names(src)?;
        // Opaque first, then whiteouts: both speak of the layers below, not this one.
        if entries.iter().any(|(n, _)| n == OPAQUE_MARKER) {
            for (n, _) in names(out)? {
                remove_tree(out, &n)?;
            }
        }
        for (n, _) in &entries {
            if let Some(target) = n.strip_prefix(WH_PREFIX) {
                if !target.is_empty() && n != OPAQUE_MARKER && target != b"." && target != b".." {
                    remove_tree(out, target)?;
                }
            }
        }
        for (n, is_dir) in entries {
            if n.starts_with(WH_PREFIX) {
                continue;
            }
            let cn = cstr(&n)?;
            let existing = rustix::fs::statat(out, &cn, AtFlags::SYMLINK_NOFOLLOW).ok();
            let child_rel = if rel.is_empty() {
                n.clone()
            } else {
                [rel, b"/", &n].concat()
            };
            if is_dir {
                match existing {
                    Some(s) if s.st_mode & libc::S_IFMT == libc::S_IFDIR => {}
                    Some(_) => {
                        rustix::fs::unlinkat(out, &cn, AtFlags::empty())?;
                        rustix::fs::mkdirat(out, &cn, Mode::from_raw_mode(0o700))?;
                    }
                    None => rustix::fs::mkdirat(out, &cn, Mode::from_raw_mode(0o700))?,
                }
                self.dir_source.insert(child_rel.clone(), layer);
                let s = open_dir(src, &n)?;
                let o = open_dir(out, &n)?;
                self.apply_dir(layer, &s, &o, &child_rel)?;
            } else {
                if existing.is_some() {
                    remove_tree(out, &n)?;
                }
                self.files += 1;
                match rustix::fs::linkat(src, &cn, out, &cn, AtFlags::empty()) {
                    Ok(()) => {}
                    // Not linkable here (another filesystem, protected_hardlinks): copy.
                    Err(Errno::XDEV | Errno::PERM | Errno::MLINK) => copy_entry(src, out, &cn)?,
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(())
    }

    /// Mode, owner, xattrs and times of each directory from its topmost layer; deepest first
    /// so that a parent's times are set after its children are complete.
    fn finish_dirs(&self, layers: &[&Path], out: &OwnedFd) -> io::Result<()> {
        let mut dirs: Vec<(&Vec<u8>, &usize)> = self.dir_source.iter().collect();
        dirs.sort_by(|a, b| {
            let depth =
                |p: &[u8]| p.iter().filter(|c| **c == b'/').count() + usize::from(!p.is_empty());
            depth(b.0).cmp(&depth(a.0))
        });
        let roots: Vec<OwnedFd> = layers
            .iter()
            .map(|l| open_dir(rustix::fs::CWD, l.as_os_str().as_encoded_bytes()))
            .collect::<io::Result<_>>()?;
        for (rel, &layer) in dirs {
            let path: &[u8] = if rel.is_empty() { b"." } else { rel };
            // Whited out by a later layer: nothing to finish.
            let dst = match open_dir(out, path) {
                Ok(d) => d,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
                Err(e) => return Err(e),
            };
            let src = open_dir(&roots[layer], path)?;
            copy_meta(&src, &dst)?;
        }
        Ok(())
    }
}

/// Owner, mode, xattrs and times of `src` onto `dst` (both open).
fn copy_meta(src: &OwnedFd, dst: &OwnedFd) -> io::Result<()> {
    let st = rustix::fs::fstat(src)?;
    copy_xattrs(src, dst)?;
    if rustix::process::geteuid().is_root() {
        rustix::fs::fchown(
            dst,
            Some(rustix::fs::Uid::from_raw(st.st_uid)),
            Some(rustix::fs::Gid::from_raw(st.st_gid)),
        )?;
    }
    rustix::fs::fchmod(dst, Mode::from_raw_mode(st.st_mode & 0o7777))?;
    let t = Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: st.st_atime as _,
            tv_nsec: st.st_atime_nsec as _,
        },
        last_modification: rustix::fs::Timespec {
            tv_sec: st.st_mtime as _,
            tv_nsec: st.st_mtime_nsec as _,
        },
    };
    rustix::fs::futimens(dst, &t)?;
    Ok(())
}

fn copy_xattrs(src: &OwnedFd, dst: &OwnedFd) -> io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    let n = match rustix::fs::flistxattr(src, &mut buf) {
        Ok(n) => n,
        Err(Errno::NOTSUP) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let list = buf[..n].to_vec();
    for name in list.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let cn = cstr(name)?;
        let mut v = vec![0u8; 64 * 1024];
        let len = rustix::fs::fgetxattr(src, &cn, &mut v)?;
        match rustix::fs::fsetxattr(dst, &cn, &v[..len], rustix::fs::XattrFlags::empty()) {
            Ok(()) | Err(Errno::PERM | Errno::NOTSUP) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// A copy of a file that could not be hard-linked (same content, mode, owner, times).
fn copy_entry(src: &OwnedFd, out: &OwnedFd, name: &CString) -> io::Result<()> {
    let st = rustix::fs::statat(src, name, AtFlags::SYMLINK_NOFOLLOW)?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(io::Error::from_raw_os_error(libc::EXDEV));
    }
    let from = rustix::fs::openat(
        src,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let to = rustix::fs::openat(
        out,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )?;
    let mut r = std::fs::File::from(from);
    let mut w = std::fs::File::from(to);
    io::copy(&mut r, &mut w)?;
    let r = OwnedFd::from(r);
    let w = OwnedFd::from(w);
    copy_meta(&r, &w)
}

/// What apptainer (and DUCC's `.flat`) expect at the root: `.singularity.d` with the
/// environment and runscript of the image config, and the usual mount points.
fn scaffold(root: &OwnedFd, config: &ImageConfig) -> io::Result<()> {
    for d in [
        "dev", "proc", "sys", "tmp", "var", "var/tmp", "home", "root", "etc",
    ] {
        mkdir_missing(root, d, if d.ends_with("tmp") { 0o1777 } else { 0o755 })?;
    }
    if rustix::fs::statat(root, ".singularity.d", AtFlags::SYMLINK_NOFOLLOW).is_ok() {
        return Ok(());
    }
    for d in [
        ".singularity.d",
        ".singularity.d/actions",
        ".singularity.d/env",
        ".singularity.d/libs",
    ] {
        mkdir_missing(root, d, 0o755)?;
    }
    let rc = config.config.clone().unwrap_or_default();
    let mut env = String::from("#!/bin/sh\n");
    for e in rc.env.unwrap_or_default() {
        if let Some((k, v)) = e.split_once('=') {
            if !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                env.push_str(&format!("export {k}=\"${{{k}:-{}}}\"\n", sh_escape_dq(v)));
            }
        }
    }
    write_file(
        root,
        ".singularity.d/env/10-docker2singularity.sh",
        env.as_bytes(),
        0o755,
    )?;
    let mut args: Vec<String> = rc.entrypoint.unwrap_or_default();
    args.extend(rc.cmd.unwrap_or_default());
    let mut run = String::from("#!/bin/sh\n");
    if args.is_empty() {
        run.push_str("exec /bin/sh \"$@\"\n");
    } else {
        let quoted: Vec<String> = args
            .iter()
            .map(|a| format!("'{}'", a.replace('\'', "'\\''")))
            .collect();
        run.push_str(&format!("exec {} \"$@\"\n", quoted.join(" ")));
    }
    write_file(root, ".singularity.d/runscript", run.as_bytes(), 0o755)
}

fn sh_escape_dq(v: &str) -> String {
    v.chars()
        .flat_map(|c| match c {
            '"' | '\\' | '`' => vec!['\\', c],
            c => vec![c],
        })
        .collect()
}

/// The parent of `rel` opened beneath `root` (no symlink followed: an image's `var` may be
/// a symlink to anywhere) and the last component.
fn parent_of<'a>(root: &OwnedFd, rel: &'a str) -> io::Result<(OwnedFd, &'a str)> {
    let (parents, last) = rel.rsplit_once('/').unwrap_or(("", rel));
    let comps: Vec<&[u8]> = parents
        .split('/')
        .filter(|c| !c.is_empty())
        .map(str::as_bytes)
        .collect();
    Ok((crate::confined::open_beneath(root, &comps, false)?, last))
}

fn mkdir_missing(root: &OwnedFd, rel: &str, mode: u32) -> io::Result<()> {
    let (dir, name) = match parent_of(root, rel) {
        Ok(p) => p,
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::ENOTDIR | libc::ELOOP | libc::ENOENT | libc::EXDEV)
            ) =>
        {
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    match rustix::fs::mkdirat(&dir, name, Mode::from_raw_mode(mode)) {
        Ok(()) => {
            rustix::fs::chmodat(&dir, name, Mode::from_raw_mode(mode), AtFlags::empty())?;
            Ok(())
        }
        // Present already (or as a symlink, e.g. var/tmp -> /tmp): leave it.
        Err(Errno::EXIST) => Ok(()),
        // A parent that is a symlink or a file: no scaffolding there.
        Err(Errno::NOTDIR | Errno::LOOP | Errno::NOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn write_file(root: &OwnedFd, rel: &str, data: &[u8], mode: u32) -> io::Result<()> {
    let (dir, name) = parent_of(root, rel)?;
    let fd = rustix::fs::openat(
        &dir,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(mode),
    )?;
    rustix::io::write(&fd, data)?;
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode))?;
    Ok(())
}
