//! Listing a 100,000-entry merged directory: no entry repeated or skipped, and seekdir to any
//! telldir position resumes exactly there.

mod common;

use std::collections::BTreeSet;
use std::ffi::{CStr, CString};
use std::os::unix::ffi::OsStrExt;

use common::*;

struct Dir(*mut libc::DIR);

impl Dir {
    fn open(p: &std::path::Path) -> Dir {
        let c = CString::new(p.as_os_str().as_bytes()).unwrap();
        // SAFETY: valid C string; the handle is closed in Drop.
        let d = unsafe { libc::opendir(c.as_ptr()) };
        assert!(!d.is_null(), "opendir {p:?}");
        Dir(d)
    }
    fn tell(&self) -> libc::c_long {
        // SAFETY: open handle.
        unsafe { libc::telldir(self.0) }
    }
    fn seek(&self, pos: libc::c_long) {
        // SAFETY: open handle, position from telldir.
        unsafe { libc::seekdir(self.0, pos) }
    }
    fn next(&self) -> Option<Vec<u8>> {
        // SAFETY: open handle; the entry is copied before the next call.
        let e = unsafe { libc::readdir(self.0) };
        if e.is_null() {
            return None;
        }
        // SAFETY: a non-null entry from readdir, whose name is NUL-terminated.
        let name = unsafe { CStr::from_ptr((*e).d_name.as_ptr()) };
        Some(name.to_bytes().to_vec())
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        // SAFETY: closing the handle we opened.
        unsafe { libc::closedir(self.0) };
    }
}

#[test]
fn hundred_thousand_entries_seekdir_telldir() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let (top, bottom) = (tmp.path().join("top"), tmp.path().join("bottom"));
    std::fs::create_dir_all(top.join("big")).unwrap();
    std::fs::create_dir_all(bottom.join("big")).unwrap();
    let mut expected = BTreeSet::new();
    for i in 0..90_000 {
        let n = format!("file-{i:06}");
        std::fs::File::create(bottom.join("big").join(&n)).unwrap();
        // Every tenth bottom file is deleted by the top layer, OCI style.
        if i % 10 == 0 {
            std::fs::File::create(top.join("big").join(format!(".wh.{n}"))).unwrap();
        } else {
            expected.insert(n.into_bytes());
        }
    }
    for i in 0..19_000 {
        let n = format!("top-{i:06}");
        std::fs::File::create(top.join("big").join(&n)).unwrap();
        expected.insert(n.into_bytes());
    }
    assert_eq!(expected.len(), 100_000);
    let m = StrataMount::new(&[top, bottom], &tmp.path().join("m"));

    let dir = Dir::open(&m.path.join("big"));
    let mut seen = Vec::new();
    let mut dots = 0;
    loop {
        let pos = dir.tell();
        let Some(name) = dir.next() else { break };
        if name != b"." && name != b".." {
            seen.push((pos, name));
        } else {
            dots += 1;
        }
    }
    assert_eq!(dots, 2, "\".\" and \"..\" must be listed");
    let names: BTreeSet<_> = seen.iter().map(|(_, n)| n.clone()).collect();
    assert_eq!(names.len(), seen.len(), "an entry was listed twice");
    assert!(names == expected, "listing differs from the merged layers");

    // Resume at scattered positions, forwards and backwards.
    for k in (0..seen.len())
        .step_by(997)
        .rev()
        .chain((0..seen.len()).step_by(4999))
    {
        dir.seek(seen[k].0);
        for (_, want) in &seen[k..(k + 3).min(seen.len())] {
            assert_eq!(
                dir.next().as_ref(),
                Some(want),
                "after seekdir to entry {k}"
            );
        }
    }

    // A second, independent listing sees the same order (offsets are stable).
    let again = Dir::open(&m.path.join("big"));
    let mut order = Vec::new();
    while let Some(n) = again.next() {
        if n != b"." && n != b".." {
            order.push(n);
        }
    }
    assert!(
        order.iter().eq(seen.iter().map(|(_, n)| n)),
        "second listing in another order"
    );
}
