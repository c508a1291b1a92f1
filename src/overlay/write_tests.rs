//! The writable layer without a mount: the core on temporary directories, as an ordinary
//! user. What lands in the upper directory is checked on disk, in the format kernel
//! overlayfs reads. (The same operations against kernel overlayfs, through real mounts, are in
//! `tests/write_differential/` and `tests/posix.rs`.)

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::inode::{Node, ROOT_INO};
use super::upper::WhiteoutForm;
use super::write::{Caller, NewEntry, SetAttr};
use super::{Config, Overlay};

struct Fixture {
    _t: tempfile::TempDir,
    lower: PathBuf,
    upper: PathBuf,
    ov: Overlay,
}

fn fixture() -> Fixture {
    let t = tempfile::tempdir().unwrap();
    let (lower, upper, work) = (t.path().join("l"), t.path().join("u"), t.path().join("w"));
    for d in [&upper, &work] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::create_dir_all(lower.join("dir/sub")).unwrap();
    std::fs::write(lower.join("dir/file"), "lower content").unwrap();
    std::fs::write(lower.join("dir/sub/deep"), "deep").unwrap();
    std::fs::write(lower.join("top"), "top").unwrap();
    let ov = Overlay::with_config(&Config {
        lowerdirs: vec![lower.clone()],
        upper: Some((upper.clone(), work)),
        fsync: false,
        ..Config::default()
    })
    .unwrap();
    Fixture {
        _t: t,
        lower,
        upper,
        ov,
    }
}

fn me() -> Caller {
    Caller {
        uid: rustix::process::geteuid().as_raw(),
        gid: rustix::process::getegid().as_raw(),
        umask: 0o022,
    }
}

fn look(ov: &Overlay, parent: u64, name: &str) -> Option<Arc<Node>> {
    ov.lookup(parent, name.as_bytes()).unwrap()
}

/// A whiteout for `name` in the upper directory `dir`, in either form.
fn whited(dir: &Path, name: &str) -> bool {
    let dev = dir
        .join(name)
        .symlink_metadata()
        .is_ok_and(|m| m.file_type().is_char_device() && m.rdev() == 0);
    dev || dir.join(format!(".wh.{name}")).exists()
}

#[test]
fn writing_a_lower_file_copies_it_up_and_leaves_the_lower_alone() {
    let f = fixture();
    let dir = look(&f.ov, ROOT_INO, "dir").unwrap();
    let file = look(&f.ov, dir.ino, "file").unwrap();
    let (fd, writable) = f.ov.open(file.ino, libc::O_WRONLY, None).unwrap();
    assert!(writable);
    f.ov.write_data(file.ino, &fd, 0, b"UPPER", None).unwrap();
    assert_eq!(
        std::fs::read_to_string(f.upper.join("dir/file")).unwrap(),
        "UPPER content"
    );
    assert_eq!(
        std::fs::read_to_string(f.lower.join("dir/file")).unwrap(),
        "lower content"
    );
    // The parent came up as a directory, with the lower one's mode.
    let (lm, um) = (
        std::fs::metadata(f.lower.join("dir")).unwrap().mode(),
        std::fs::metadata(f.upper.join("dir")).unwrap().mode(),
    );
    assert_eq!(lm, um);
    // The node kept its inode number across the copy-up.
    assert_eq!(look(&f.ov, dir.ino, "file").unwrap().ino, file.ino);
}

#[test]
fn removing_lower_entries_writes_whiteouts() {
    let f = fixture();
    f.ov.remove(ROOT_INO, b"top", false).unwrap();
    assert!(whited(&f.upper, "top"));
    assert!(look(&f.ov, ROOT_INO, "top").is_none());
    let dir = look(&f.ov, ROOT_INO, "dir").unwrap();
    let e = f.ov.remove(ROOT_INO, b"dir", true).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOTEMPTY));
    f.ov.remove(dir.ino, b"file", false).unwrap();
    let sub = look(&f.ov, dir.ino, "sub").unwrap();
    f.ov.remove(sub.ino, b"deep", false).unwrap();
    f.ov.remove(dir.ino, b"sub", true).unwrap();
    f.ov.remove(ROOT_INO, b"dir", true).unwrap();
    assert!(whited(&f.upper, "dir"));
    // A directory made again over the whiteout hides the lower one: opaque.
    let (d, _) =
        f.ov.create(ROOT_INO, b"dir", NewEntry::Dir, libc::S_IFDIR | 0o755, me())
            .unwrap();
    assert!(look(&f.ov, d.ino, "file").is_none());
    let opaque = f.upper.join("dir/.wh..wh..opq").exists()
        || xattr_is_y(&f.upper.join("dir"), "trusted.overlay.opaque")
        || xattr_is_y(&f.upper.join("dir"), "user.overlay.opaque");
    assert!(opaque, "the new directory must be opaque");
    assert!(f.lower.join("dir/file").exists());
}

fn xattr_is_y(p: &Path, name: &str) -> bool {
    let mut buf = [0u8; 4];
    rustix::fs::lgetxattr(p, name, &mut buf).is_ok_and(|n| &buf[..n] == b"y")
}

#[test]
fn rename_rules() {
    let f = fixture();
    let dir = look(&f.ov, ROOT_INO, "dir").unwrap();
    // A directory that exists in a lower layer cannot be renamed (no redirect_dir): EXDEV,
    // and `mv` copies it instead.
    let e =
        f.ov.rename(ROOT_INO, b"dir", ROOT_INO, b"moved", 0)
            .unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EXDEV));
    // A lower file moves: copied up under the new name, whited out under the old one.
    f.ov.rename(dir.ino, b"file", ROOT_INO, b"renamed", 0)
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(f.upper.join("renamed")).unwrap(),
        "lower content"
    );
    assert!(whited(&f.upper.join("dir"), "file"));
    assert!(look(&f.ov, dir.ino, "file").is_none());
    // RENAME_NOREPLACE onto an existing name.
    let e =
        f.ov.rename(
            ROOT_INO,
            b"renamed",
            ROOT_INO,
            b"top",
            libc::RENAME_NOREPLACE,
        )
        .unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EEXIST));
    // A new file replaces a lower one.
    f.ov.create(
        ROOT_INO,
        b"new",
        NewEntry::File,
        libc::S_IFREG | 0o600,
        me(),
    )
    .unwrap();
    f.ov.rename(ROOT_INO, b"new", ROOT_INO, b"top", 0).unwrap();
    assert!(look(&f.ov, ROOT_INO, "new").is_none());
    assert_eq!(std::fs::read(f.upper.join("top")).unwrap(), b"");
}

#[test]
fn new_entries_get_the_umask_and_chmod_copies_up_metadata() {
    let f = fixture();
    let (n, _) =
        f.ov.create(
            ROOT_INO,
            b"made",
            NewEntry::File,
            libc::S_IFREG | 0o666,
            me(),
        )
        .unwrap();
    assert_eq!(n.attr().mode & 0o777, 0o644);
    let top = look(&f.ov, ROOT_INO, "top").unwrap();
    let sa = SetAttr {
        mode: Some(0o600),
        ..SetAttr::default()
    };
    assert_eq!(
        f.ov.setattr(top.ino, &sa, None).unwrap().mode & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::metadata(f.upper.join("top")).unwrap().mode() & 0o777,
        0o600
    );
    assert_eq!(std::fs::read_to_string(f.upper.join("top")).unwrap(), "top");
}

#[test]
fn whiteout_forms_and_the_work_dir() {
    let f = fixture();
    let u = f.ov.upper.as_ref().unwrap();
    // Whatever this machine allows, the form is one the kernel reads.
    assert!(matches!(
        u.whiteout_form(),
        WhiteoutForm::CharDevice | WhiteoutForm::WhFile
    ));
    f.ov.remove(ROOT_INO, b"top", false).unwrap();
    let dir = look(&f.ov, ROOT_INO, "dir").unwrap();
    f.ov.remove(dir.ino, b"file", false).unwrap();
    // Nothing is left in W/work after an operation but the shared whiteout, which the
    // character-device whiteouts of lower files are hard links of (as the kernel's are).
    let work = f.upper.parent().unwrap().join("w/work");
    let left: Vec<_> = std::fs::read_dir(&work)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    if u.whiteout_form() == WhiteoutForm::CharDevice {
        assert_eq!(left, ["whiteout"]);
        let shared = work.join("whiteout").symlink_metadata().unwrap();
        for w in [f.upper.join("top"), f.upper.join("dir/file")] {
            let m = w.symlink_metadata().unwrap();
            assert!(m.file_type().is_char_device() && m.rdev() == 0);
            assert_eq!(m.ino(), shared.ino());
        }
        assert_eq!(shared.nlink(), 3);
    } else {
        assert!(left.is_empty(), "{left:?}");
        assert!(whited(&f.upper, "top") && whited(&f.upper.join("dir"), "file"));
    }
}

#[test]
fn a_removed_directory_is_deleted_from_w_by_unmount() {
    let f = fixture();
    let dir = look(&f.ov, ROOT_INO, "dir").unwrap();
    let sub = look(&f.ov, dir.ino, "sub").unwrap();
    // dir/sub gets an upper copy holding the whiteout of deep; removing it moves that copy
    // into W (a whiteout takes its place) and a background thread deletes it there.
    f.ov.remove(sub.ino, b"deep", false).unwrap();
    assert!(f.upper.join("dir/sub").is_dir());
    f.ov.remove(dir.ino, b"sub", true).unwrap();
    let m = f.upper.join("dir/sub").symlink_metadata().unwrap();
    assert!(!m.is_dir(), "dir/sub is whited out, not a directory");
    assert!(look(&f.ov, dir.ino, "sub").is_none());
    f.ov.unmounted();
    let work = f.upper.parent().unwrap().join("w/work");
    let left: Vec<_> = std::fs::read_dir(&work)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "W/work after unmount: {left:?}");
    assert_eq!(
        std::fs::read_to_string(f.lower.join("dir/sub/deep")).unwrap(),
        "deep",
        "the lower layer is untouched"
    );
}

/// Names in `dir`'s stored listing (none stored: `None`).
fn listed(dir: &Node) -> Option<Vec<String>> {
    let guard = dir.listing.read();
    let l = guard.as_ref()?;
    Some(
        l.entries()
            .iter()
            .filter(|e| !e.removed)
            .map(|e| String::from_utf8_lossy(&e.name).into_owned())
            .collect(),
    )
}

#[test]
fn a_listing_built_ahead_is_dropped_when_the_namespace_changed_meanwhile() {
    let f = fixture();
    let dir = look(&f.ov, ROOT_INO, "dir").unwrap();
    // Built, then a file is made in the directory before the listing is stored: it would
    // miss the new name, so it is not kept; the next listing is built afresh.
    let (before, listing) = f.ov.listing_ahead(&dir).unwrap();
    f.ov.create(dir.ino, b"new", NewEntry::File, libc::S_IFREG | 0o644, me())
        .unwrap();
    assert!(!f.ov.keep_listing_ahead(&dir, before, listing));
    assert_eq!(listed(&dir), None);
    let mut names =
        f.ov.with_listing(&dir, |_| ())
            .map(|_| listed(&dir))
            .unwrap()
            .unwrap();
    names.sort();
    assert_eq!(names, ["file", "new", "sub"]);
    // Nothing changed between building and storing: kept, and then it is what lookups use.
    let sub = look(&f.ov, dir.ino, "sub").unwrap();
    let (before, listing) = f.ov.listing_ahead(&sub).unwrap();
    assert!(f.ov.keep_listing_ahead(&sub, before, listing));
    assert_eq!(listed(&sub), Some(vec!["deep".to_string()]));
    assert!(look(&f.ov, sub.ino, "deep").is_some());
    // A directory with a listing gets none built ahead.
    assert!(f.ov.listing_ahead(&sub).is_none());
}
