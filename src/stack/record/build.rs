//! Building a record: a walk of the tree (an unpacked layer or a flat root) that takes each
//! file's content digest from what the unpack computed, or hashes it, then the layout
//! described in [`super`].

use super::*;

/// One entry found by the walk, before it is laid out.
struct Found {
    name: Vec<u8>,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    target: Vec<u8>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    digest: Option<FileDigest>,
    children: Vec<Found>,
}

/// Where the content digests of a tree being recorded come from: by path and stat; a file
/// without one is hashed from disk.
pub type Known<'a> = &'a dyn Fn(&[u8], &rustix::fs::Stat) -> Option<FileDigest>;

/// Content digests by path (taken while unpacking).
pub fn by_path(
    m: &HashMap<Vec<u8>, FileDigest>,
) -> impl Fn(&[u8], &rustix::fs::Stat) -> Option<FileDigest> + '_ {
    move |p, _| m.get(p).cloned()
}

/// Build the record of the tree at `root` (an unpacked layer, or an image's flat root).
/// `known` gives the content digests taken while unpacking; a regular file without one (a
/// hard link made from a lower layer) is hashed from disk. `layer` is the blob digest and
/// diff ID (a flat root: its config digest, and zeros).
pub fn build(root: &Path, known: Known<'_>, layer: (Hash, Hash)) -> Result<Vec<u8>, RecordError> {
    let dir = rustix::fs::open(
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| RecordError::Io {
        path: root.into(),
        source: e.into(),
    })?;
    let st = rustix::fs::fstat(&dir).map_err(|e| RecordError::Io {
        path: root.into(),
        source: e.into(),
    })?;
    let mut top = Found {
        name: Vec::new(),
        mode: st.st_mode,
        uid: st.st_uid,
        gid: st.st_gid,
        size: 0,
        target: Vec::new(),
        xattrs: xattrs_of(&dir, None).map_err(|source| RecordError::Entry {
            path: root.into(),
            what: "the root's xattrs".into(),
            source,
        })?,
        digest: None,
        children: Vec::new(),
    };
    walk(root, &dir, b"", known, &mut top)?;
    Ok(lay_out(top, layer))
}

fn walk(
    root: &Path,
    dir: &OwnedFd,
    rel: &[u8],
    known: Known<'_>,
    into: &mut Found,
) -> Result<(), RecordError> {
    let entry_err = |name: &[u8], source: io::Error| RecordError::Entry {
        path: root.into(),
        what: String::from_utf8_lossy(&crate::stack::join(rel, name)).into_owned(),
        source,
    };
    let fd = rustix::fs::openat(
        dir,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| entry_err(b"", e.into()))?;
    let mut names = Vec::new();
    let mut d = rustix::fs::Dir::read_from(&fd).map_err(|e| entry_err(b"", e.into()))?;
    while let Some(ent) = d.read() {
        let ent = ent.map_err(|e| entry_err(b"", e.into()))?;
        let n = ent.file_name().to_bytes();
        if n != b"." && n != b".." {
            names.push(n.to_vec());
        }
    }
    names.sort();
    for name in names {
        let path = crate::stack::join(rel, &name);
        let c = confined::cstr(&name).map_err(|e| entry_err(&name, e))?;
        let st = rustix::fs::statat(dir, &c, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| entry_err(&name, e.into()))?;
        let kind = st.st_mode & libc::S_IFMT;
        let mut f = Found {
            name: name.clone(),
            mode: st.st_mode,
            uid: st.st_uid,
            gid: st.st_gid,
            size: match kind {
                libc::S_IFREG => st.st_size as u64,
                libc::S_IFCHR | libc::S_IFBLK => st.st_rdev,
                _ => 0,
            },
            target: Vec::new(),
            xattrs: Vec::new(),
            digest: None,
            children: Vec::new(),
        };
        match kind {
            libc::S_IFDIR => {
                let sub =
                    confined::open_dir_beneath(dir, &name).map_err(|e| entry_err(&name, e))?;
                f.xattrs = xattrs_of(&sub, None).map_err(|e| entry_err(&name, e))?;
                walk(root, &sub, &path, known, &mut f)?;
            }
            libc::S_IFLNK => {
                f.target = rustix::fs::readlinkat(dir, &c, Vec::new())
                    .map_err(|e| entry_err(&name, e.into()))?
                    .into_bytes();
                f.xattrs = xattrs_of(dir, Some(&c)).map_err(|e| entry_err(&name, e))?;
            }
            libc::S_IFREG => {
                let file = rustix::fs::openat2(
                    dir,
                    &c,
                    OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                    confined::beneath(),
                )
                .map_err(|e| entry_err(&name, e.into()))?;
                f.xattrs = xattrs_of(&file, None).map_err(|e| entry_err(&name, e))?;
                f.digest = Some(match known(&path, &st) {
                    Some(d) => d,
                    None => digest_of(File::from(file)).map_err(|e| entry_err(&name, e))?,
                });
            }
            _ => {
                f.xattrs = xattrs_of(dir, Some(&c)).map_err(|e| entry_err(&name, e))?;
            }
        }
        into.children.push(f);
    }
    Ok(())
}

/// The xattrs of the open `fd` (a file or directory), or of `name` in directory `fd` (a
/// symlink or device, not followed), sorted by name.
fn xattrs_of(fd: &OwnedFd, name: Option<&std::ffi::CStr>) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    use crate::stack::layer::{get_xattr_at, get_xattr_fd, list_xattrs_at, list_xattrs_fd};
    let p = name
        .map(|n| confined::proc_path(fd, n.to_bytes()))
        .transpose()?;
    let names = match &p {
        Some(p) => list_xattrs_at(p)?,
        None => list_xattrs_fd(fd)?,
    };
    let mut out = Vec::new();
    for n in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let cn = confined::cstr(n)?;
        let v = match &p {
            Some(p) => get_xattr_at(p, &cn)?,
            None => get_xattr_fd(fd.as_fd(), &cn)?,
        };
        if let Some(v) = v {
            out.push((n.to_vec(), v));
        }
    }
    out.sort();
    Ok(out)
}

/// Lay the tree out: breadth first, so that each directory's children are contiguous.
fn lay_out(top: Found, layer: (Hash, Hash)) -> Vec<u8> {
    let mut entries: Vec<u8> = Vec::new();
    let mut strings: Vec<u8> = Vec::new();
    let mut hashes: Vec<Hash> = Vec::new();
    let mut queue = std::collections::VecDeque::new();
    queue.push_back(top);
    let mut next = 1u32; // index of the next child slot
    let mut count = 0u32;
    while let Some(f) = queue.pop_front() {
        count += 1;
        let push_str = |strings: &mut Vec<u8>, s: &[u8]| -> (u32, u32) {
            let off = strings.len() as u32;
            strings.extend_from_slice(s);
            (off, s.len() as u32)
        };
        let (no, nl) = push_str(&mut strings, &f.name);
        let mut xb = Vec::new();
        for (n, v) in &f.xattrs {
            xb.extend_from_slice(&(n.len() as u16).to_le_bytes());
            xb.extend_from_slice(&(v.len() as u32).to_le_bytes());
            xb.extend_from_slice(n);
            xb.extend_from_slice(v);
        }
        let (xo, xl) = push_str(&mut strings, &xb);
        let (first, n) = match f.mode & libc::S_IFMT {
            libc::S_IFDIR => {
                let r = (next, f.children.len() as u32);
                next += f.children.len() as u32;
                r
            }
            libc::S_IFLNK => push_str(&mut strings, &f.target),
            libc::S_IFREG => {
                let first = hashes.len() as u32;
                match f.digest.as_ref().expect("regular files have digests") {
                    FileDigest::Whole(h) => {
                        hashes.push(*h);
                        (first, 0)
                    }
                    FileDigest::Blocks(b) => {
                        hashes.extend_from_slice(b);
                        (first, b.len() as u32)
                    }
                }
            }
            _ => (0, 0),
        };
        let mut e = [0u8; ENTRY];
        for (at, v) in [
            (0, no),
            (4, nl),
            (8, f.mode),
            (12, f.uid),
            (16, f.gid),
            (20, first),
            (24, n),
            (28, xo),
            (32, xl),
        ] {
            e[at..at + 4].copy_from_slice(&v.to_le_bytes());
        }
        e[40..48].copy_from_slice(&f.size.to_le_bytes());
        entries.extend_from_slice(&e);
        queue.extend(f.children);
    }
    let strings_off = HEADER + entries.len();
    let digests_off = strings_off + strings.len();
    let total = digests_off + hashes.len() * 32;
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&BLOCK_SHIFT.to_le_bytes());
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    for v in [strings_off, digests_off, total] {
        out.extend_from_slice(&(v as u64).to_le_bytes());
    }
    out.extend_from_slice(&layer.0);
    out.extend_from_slice(&layer.1);
    out.resize(HEADER, 0);
    out.extend_from_slice(&entries);
    out.extend_from_slice(&strings);
    for h in &hashes {
        out.extend_from_slice(h);
    }
    out
}
