//! The merged root of an image (`.flat/<xx>/<config>`): the layers merged as the mount merges
//! them (every whiteout and opaque form), files hard-linked to the layer's own copy so an image costs about one copy
//! of its content, directories made fresh with the metadata of the topmost layer that has
//! them, plus the scaffolding apptainer expects.

use std::collections::HashMap;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use rustix::fs::{AtFlags, Mode, OFlags, Timestamps};
use rustix::io::Errno;

use crate::confined::cstr;
use crate::image::manifest::ImageConfig;
use crate::stack::{Layer, join, resolve};

fn open_dir(at: impl AsFd, name: &[u8]) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat(
        at,
        cstr(name)?,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Builds the merged tree in `dest` (an empty directory) from `layers`, bottom first, by the
/// same rules the mount applies ([`crate::stack::resolve`]): every whiteout and opaque form,
/// walked from the top so that nothing hidden is ever copied.
pub struct FlatBuilder {
    /// Directory path -> the stack index (top first) of the layer its metadata comes from.
    dir_source: HashMap<Vec<u8>, u16>,
    pub files: u64,
}

impl FlatBuilder {
    pub fn build(layers: &[&Path], dest: &Path, config: &ImageConfig) -> io::Result<FlatBuilder> {
        let stack: Vec<Layer> = layers
            .iter()
            .rev()
            .enumerate()
            .map(|(i, p)| Layer::open(i, p).map_err(|e| io::Error::other(e.to_string())))
            .collect::<io::Result<_>>()?;
        let mut b = FlatBuilder {
            dir_source: HashMap::new(),
            files: 0,
        };
        let out = open_dir(rustix::fs::CWD, dest.as_os_str().as_encoded_bytes())?;
        // The root merges every layer down to the first whose root is opaque.
        let mut root_layers = Vec::new();
        for (i, l) in stack.iter().enumerate() {
            root_layers.push(i as u16);
            if l.is_opaque_dir(b"")? {
                break;
            }
        }
        if !stack.is_empty() {
            b.dir_source.insert(Vec::new(), 0);
            b.walk(&stack, &root_layers, b"", &out)?;
        }
        scaffold(&out, config)?;
        b.finish_dirs(&stack, &out)?;
        Ok(b)
    }

    fn walk(
        &mut self,
        stack: &[Layer],
        layers: &[u16],
        rel: &[u8],
        out: &OwnedFd,
    ) -> io::Result<()> {
        // Each layer's copy of this directory, opened when a file is linked from it.
        let mut dirs: HashMap<u16, OwnedFd> = HashMap::new();
        for m in resolve::merge_dir(stack, layers, rel)? {
            let name = m.entry.name;
            let cn = cstr(&name)?;
            let child = join(rel, &name);
            if m.entry.kind == libc::S_IFDIR {
                // Which layers the merged directory is made of (cut at an opaque one).
                let Some((holders, _)) = resolve::child(stack, layers, rel, &name)? else {
                    continue;
                };
                rustix::fs::mkdirat(out, &cn, Mode::from_raw_mode(0o700))?;
                self.dir_source.insert(child.clone(), holders[0]);
                let o = open_dir(out, &name)?;
                self.walk(stack, &holders, &child, &o)?;
                continue;
            }
            let src = match dirs.entry(m.top) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(stack[m.top as usize].open_dir(rel)?)
                }
            };
            self.files += 1;
            match rustix::fs::linkat(&*src, &cn, out, &cn, AtFlags::empty()) {
                Ok(()) => {}
                // Not linkable here (another filesystem, protected_hardlinks): copy.
                Err(Errno::XDEV | Errno::PERM | Errno::MLINK) => copy_entry(src, out, &cn)?,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Mode, owner, xattrs and times of each directory from its topmost layer; deepest first
    /// so that a parent's times are set after its children are complete.
    fn finish_dirs(&self, stack: &[Layer], out: &OwnedFd) -> io::Result<()> {
        let mut dirs: Vec<(&Vec<u8>, &u16)> = self.dir_source.iter().collect();
        dirs.sort_by(|a, b| {
            let depth =
                |p: &[u8]| p.iter().filter(|c| **c == b'/').count() + usize::from(!p.is_empty());
            depth(b.0).cmp(&depth(a.0))
        });
        for (rel, &layer) in dirs {
            let path: &[u8] = if rel.is_empty() { b"." } else { rel };
            let dst = open_dir(out, path)?;
            let src = stack[layer as usize].open_dir(rel)?;
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
