//! Confined filesystem helpers shared by the overlay and the image side: every path is taken
//! relative to an open directory, never through a symlink, never above that directory.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

/// A C string of a name or relative path; a NUL inside is `EINVAL`.
pub fn cstr(b: &[u8]) -> io::Result<CString> {
    CString::new(b).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// `openat2` flags that keep a resolution beneath its starting directory.
pub fn beneath() -> ResolveFlags {
    ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS
}

/// Open a directory beneath `root` without following any symlink; with `create`, missing
/// components are made (mode 0755, as tar does for parents the archive did not list).
pub fn open_beneath(root: impl AsFd, comps: &[&[u8]], create: bool) -> io::Result<OwnedFd> {
    let root = root.as_fd();
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let path = if comps.is_empty() {
        b".".to_vec()
    } else {
        comps.join(&b'/')
    };
    if path.len() < PATH_CHUNK {
        match rustix::fs::openat2(root, cstr(&path)?, flags, Mode::empty(), beneath()) {
            Ok(fd) => return Ok(fd),
            Err(Errno::NOENT) if create => {}
            Err(e) => return Err(e.into()),
        }
    }
    let mut dir = rustix::io::dup(root)?;
    for c in comps {
        let cn = cstr(c)?;
        if create {
            match rustix::fs::mkdirat(&dir, &cn, Mode::from_raw_mode(0o755)) {
                Ok(()) | Err(Errno::EXIST) => {}
                Err(e) => return Err(e.into()),
            }
        }
        dir = rustix::fs::openat2(&dir, &cn, flags, Mode::empty(), beneath())?;
    }
    Ok(dir)
}

/// Relative paths longer than this are resolved a piece at a time, so that paths deeper than
/// PATH_MAX (4096) still work below a directory descriptor.
pub const PATH_CHUNK: usize = 3072;

/// Split `rel` (relative, `/`-separated) into a prefix of at most [`PATH_CHUNK`] bytes that
/// ends at a component boundary, and the rest.
pub fn split_long(rel: &[u8]) -> (&[u8], &[u8]) {
    if rel.len() < PATH_CHUNK {
        return (rel, b"");
    }
    match rel[..PATH_CHUNK].iter().rposition(|&b| b == b'/') {
        Some(i) if i > 0 => (&rel[..i], &rel[i + 1..]),
        _ => (rel, b""),
    }
}

/// Open directory `rel` beneath `root` (resolved beneath it, no symlinks), piecewise when the
/// path is long.
pub fn open_dir_beneath(root: impl AsFd, rel: &[u8]) -> io::Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW;
    let (head, mut rest) = split_long(rel);
    let head = if head.is_empty() { b"." as &[u8] } else { head };
    let mut dir = rustix::fs::openat2(root, cstr(head)?, flags, Mode::empty(), beneath())?;
    while !rest.is_empty() {
        let (h, r) = split_long(rest);
        dir = rustix::fs::openat2(&dir, cstr(h)?, flags, Mode::empty(), beneath())?;
        rest = r;
    }
    Ok(dir)
}

/// `/proc/self/fd/N/rel`: reaches `rel` under an open directory for calls with no `*at` form.
/// The final component is never followed by the `l*` calls that use it.
pub fn proc_path(dir: impl AsFd, rel: &[u8]) -> io::Result<CString> {
    let mut p = format!("/proc/self/fd/{}/", dir.as_fd().as_raw_fd()).into_bytes();
    // "N/." is the directory itself; a bare "N" would be the magic link, which the `l*` calls
    // do not follow.
    p.extend_from_slice(if rel.is_empty() { b"." } else { rel });
    cstr(&p)
}

/// Open a subdirectory `name` of `dir`, never through a symlink.
pub fn open_subdir(dir: impl AsFd, name: &[u8]) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat(
        dir,
        cstr(name)?,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Names in a directory, without `.` and `..`.
pub fn list(dir: impl AsFd) -> io::Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    for e in rustix::fs::Dir::read_from(dir)? {
        let e = e?;
        let n = e.file_name().to_bytes();
        if n != b"." && n != b".." {
            out.push(n.to_vec());
        }
    }
    Ok(out)
}

fn ignore_absent(r: rustix::io::Result<()>) -> io::Result<()> {
    match r {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Delete `dir/name` and everything below it, never following symlinks.
pub fn remove_tree(dir: impl AsFd, name: &[u8]) -> io::Result<()> {
    let dir = dir.as_fd();
    let cn = cstr(name)?;
    match rustix::fs::unlinkat(dir, &cn, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => return Ok(()),
        Err(Errno::ISDIR | Errno::PERM) => {}
        Err(e) => return Err(e.into()),
    }
    let sub = open_subdir(dir, name)?;
    for n in list(&sub)? {
        remove_tree(&sub, &n)?;
    }
    ignore_absent(rustix::fs::unlinkat(dir, &cn, AtFlags::REMOVEDIR))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_paths_split_at_components() {
        let comp = vec![b'd'; 200];
        let mut p = comp.clone();
        for _ in 0..30 {
            p.push(b'/');
            p.extend_from_slice(&comp);
        }
        let (h, r) = split_long(&p);
        assert!(h.len() < PATH_CHUNK && !r.is_empty());
        assert_eq!([h, b"/", r].concat(), p);
        assert_eq!(split_long(b"a/b"), (&b"a/b"[..], &b""[..]));
    }

    #[test]
    fn deep_trees_open_and_remove() {
        let t = tempfile::tempdir().unwrap();
        let root =
            rustix::fs::open(t.path(), OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
        let comp = vec![b'd'; 200];
        let comps: Vec<&[u8]> = (0..25).map(|_| comp.as_slice()).collect();
        open_beneath(&root, &comps, true).unwrap();
        let rel = comps.join(&b'/');
        assert!(rel.len() > 4096);
        open_dir_beneath(&root, &rel).unwrap();
        std::os::unix::fs::symlink("/", t.path().join("up")).unwrap();
        assert!(
            open_dir_beneath(&root, b"up").is_err(),
            "symlinks are not followed"
        );
        remove_tree(&root, &comp).unwrap();
        assert!(list(&root).unwrap() == vec![b"up".to_vec()]);
    }
}
