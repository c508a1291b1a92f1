//! What a convert changed in a CernVM-FS repository, read from the upper directory of the
//! kernel overlayfs it ran on, as `cvmfs_server ingest` can apply it: a tar of what is new or
//! rewritten, and the paths to delete.
//!
//! Why not a plain transaction: a transaction reads a file named `.wh.NAME` as "delete NAME",
//! so every whiteout of every layer directory would be lost. `ingest` stores a tar's names as
//! they are. What `ingest` (CernVM-FS 2.12) does, measured here: a directory in the tar is
//! merged with the one published (its own mode and owner are kept), a file or symlink
//! replaces the published one, `-d` paths go in the same publish, and a path that is both
//! deleted and added in one ingest, or whose type changes, makes it abort. Such paths are
//! [`Delta::replaced`]: they need a publish of their own first.

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// The kernel overlayfs marks a directory that hides everything beneath it with this xattr.
const OPAQUE: &str = "trusted.overlay.opaque";

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Delta {
    /// Paths (relative to the repository root) that exist in the published tree and not in
    /// the new one: the topmost of each removed subtree.
    pub deletes: Vec<PathBuf>,
    /// Paths whose type changes (a file becomes a directory, …): deleted before the rest.
    pub replaced: Vec<PathBuf>,
    /// Entries of the upper directory to put into the tar, parents before children.
    pub adds: Vec<PathBuf>,
}

impl Delta {
    pub fn is_empty(&self) -> bool {
        self.deletes.is_empty() && self.replaced.is_empty() && self.adds.is_empty()
    }

    /// Compare the overlay's `upper` with its `lower` (the published tree).
    pub fn between(upper: &Path, lower: &Path) -> io::Result<Delta> {
        let mut d = Delta::default();
        d.dir(upper, lower, Path::new(""), false)?;
        Ok(d)
    }

    /// `rel` is a directory in the upper layer (and the new tree); `hides` says whether the
    /// published directory at `rel`, if any, is hidden by it (opaque here or above), so that
    /// whatever it holds that the upper one does not is gone.
    fn dir(&mut self, upper: &Path, lower: &Path, rel: &Path, hides: bool) -> io::Result<()> {
        let names = sorted_names(&upper.join(rel))?;
        for name in &names {
            let r = rel.join(name);
            let u = std::fs::symlink_metadata(upper.join(&r))?;
            let l = match std::fs::symlink_metadata(lower.join(&r)) {
                Ok(m) => Some(m),
                Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                Err(e) => return Err(e),
            };
            if is_whiteout(&u) {
                if l.is_some() {
                    self.deletes.push(r);
                }
                continue;
            }
            match l {
                None => self.subtree(upper, &r)?,
                Some(l) if l.file_type() != u.file_type() => {
                    self.replaced.push(r.clone());
                    self.subtree(upper, &r)?;
                }
                Some(_) if u.is_dir() => {
                    self.adds.push(r.clone());
                    let opaque = hides || is_opaque(&upper.join(&r));
                    self.dir(upper, lower, &r, opaque)?;
                }
                Some(_) => self.adds.push(r),
            }
        }
        if hides {
            let gone = match std::fs::read_dir(lower.join(rel)) {
                Ok(rd) => rd,
                // Nothing was published there.
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => {
                    return Ok(());
                }
                Err(e) => return Err(e),
            };
            let mut deleted = Vec::new();
            for ent in gone {
                let n = ent?.file_name();
                if names.binary_search(&n).is_err() {
                    deleted.push(rel.join(n));
                }
            }
            deleted.sort();
            self.deletes.extend(deleted);
        }
        Ok(())
    }

    /// `rel` and everything under it is new.
    fn subtree(&mut self, upper: &Path, rel: &Path) -> io::Result<()> {
        self.adds.push(rel.to_path_buf());
        if !std::fs::symlink_metadata(upper.join(rel))?.is_dir() {
            return Ok(());
        }
        for n in sorted_names(&upper.join(rel))? {
            let r = rel.join(n);
            // A directory made where one was deleted is opaque, never holds whiteouts that
            // matter (nothing is beneath it), but the kernel may leave some.
            if !is_whiteout(&std::fs::symlink_metadata(upper.join(&r))?) {
                self.subtree(upper, &r)?;
            }
        }
        Ok(())
    }

    /// Write the added entries of `upper` as one tar (names relative to the repository root,
    /// owners, modes and times as they are; hard links as separate files, which is what a
    /// CernVM-FS catalog holds anyway).
    pub fn write_tar(&self, upper: &Path, out: &Path) -> io::Result<()> {
        let file = std::fs::File::create(out)?;
        let mut b = tar::Builder::new(io::BufWriter::new(file));
        b.follow_symlinks(false);
        b.mode(tar::HeaderMode::Complete);
        for rel in &self.adds {
            let path = upper.join(rel);
            let meta = std::fs::symlink_metadata(&path)?;
            let ft = meta.file_type();
            if ft.is_char_device() || ft.is_block_device() || ft.is_fifo() {
                // The tar crate (0.4.46) names a special file by its path on disk, not by the
                // name it is given (an absolute path, which it then refuses; tar-rs issue 327):
                // write its header here. The metadata gives its type, mode and size 0.
                let mut h = tar::Header::new_gnu();
                h.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
                let rdev = meta.rdev();
                h.set_device_major(libc::major(rdev))?;
                h.set_device_minor(libc::minor(rdev))?;
                b.append_data(&mut h, rel, io::empty())?;
            } else {
                b.append_path_with_name(path, rel)?;
            }
        }
        let w = b.into_inner()?;
        w.into_inner().map_err(|e| e.into_error())?.sync_all()
    }
}

/// The names in directory `d`, sorted (so that deltas and tars come out the same each run).
fn sorted_names(d: &Path) -> io::Result<Vec<std::ffi::OsString>> {
    let mut names = Vec::new();
    for ent in std::fs::read_dir(d)? {
        names.push(ent?.file_name());
    }
    names.sort();
    Ok(names)
}

/// A kernel overlayfs whiteout: a character device 0/0.
fn is_whiteout(m: &std::fs::Metadata) -> bool {
    m.file_type().is_char_device() && m.rdev() == 0
}

fn is_opaque(p: &Path) -> bool {
    let mut buf = [0u8; 2];
    rustix::fs::lgetxattr(p, OPAQUE, &mut buf).is_ok_and(|n| &buf[..n] == b"y")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Special files go into the tar under their name in the repository (a FIFO stands for
    /// device nodes here: making one needs no root).
    #[test]
    fn special_files_keep_their_relative_names() {
        let t = tempfile::tempdir().unwrap();
        let (upper, lower) = (t.path().join("upper"), t.path().join("lower"));
        std::fs::create_dir_all(upper.join("img/dev")).unwrap();
        std::fs::create_dir_all(&lower).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            upper.join("img/dev/pipe"),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o640),
            0,
        )
        .unwrap();
        std::fs::write(upper.join("img/dev/file"), b"x").unwrap();
        // Modes set, not left to the umask.
        use std::os::unix::fs::PermissionsExt;
        for (p, m) in [
            ("img", 0o755),
            ("img/dev", 0o755),
            ("img/dev/file", 0o644),
            ("img/dev/pipe", 0o640),
        ] {
            std::fs::set_permissions(upper.join(p), std::fs::Permissions::from_mode(m)).unwrap();
        }
        let d = Delta::between(&upper, &lower).unwrap();
        let out = t.path().join("delta.tar");
        d.write_tar(&upper, &out).unwrap();
        let mut ar = tar::Archive::new(std::fs::File::open(&out).unwrap());
        let entries: Vec<(String, tar::EntryType, u32)> = ar
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                (
                    e.path().unwrap().display().to_string(),
                    h.entry_type(),
                    h.mode().unwrap() & 0o7777,
                )
            })
            .collect();
        assert_eq!(
            entries,
            [
                ("img".into(), tar::EntryType::Directory, 0o755),
                ("img/dev".into(), tar::EntryType::Directory, 0o755),
                ("img/dev/file".into(), tar::EntryType::Regular, 0o644),
                ("img/dev/pipe".into(), tar::EntryType::Fifo, 0o640),
            ]
        );
    }
}
