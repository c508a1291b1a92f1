//! The core without any front end: layers on disk, lookups and listings in process.

use super::*;

fn stack() -> (tempfile::TempDir, Overlay) {
    let t = tempfile::tempdir().unwrap();
    let (top, bottom) = (t.path().join("top"), t.path().join("bottom"));
    for d in ["d", "opq", "gone"] {
        std::fs::create_dir_all(bottom.join(d)).unwrap();
    }
    std::fs::write(bottom.join("d/low"), "low").unwrap();
    std::fs::write(bottom.join("d/shadowed"), "bottom").unwrap();
    std::fs::write(bottom.join("opq/hidden"), "").unwrap();
    std::fs::create_dir_all(top.join("d")).unwrap();
    std::fs::create_dir_all(top.join("opq")).unwrap();
    std::fs::write(top.join("d/shadowed"), "top").unwrap();
    std::fs::write(top.join("opq/.wh..wh..opq"), "").unwrap();
    std::fs::write(top.join("opq/mine"), "").unwrap();
    std::fs::write(top.join(".wh.gone"), "").unwrap();
    let ov = Overlay::new(&[top, bottom]).unwrap();
    (t, ov)
}

fn names(ov: &Overlay, dir: &Arc<Node>) -> Vec<String> {
    let mut v: Vec<String> = ov
        .with_listing(dir, |l| {
            l.entries()
                .iter()
                .filter(|e| !e.removed)
                .map(|e| String::from_utf8_lossy(&e.name).into_owned())
                .collect()
        })
        .unwrap();
    v.sort();
    v
}

#[test]
fn merges_shadows_and_hides() {
    let (_t, ov) = stack();
    let root = ov.node(ROOT_INO).unwrap();
    assert_eq!(names(&ov, &root), ["d", "opq"]);
    assert!(ov.lookup(ROOT_INO, b"gone").unwrap().is_none());
    assert!(ov.lookup(ROOT_INO, b".wh.gone").unwrap().is_none());
    let d = ov.lookup(ROOT_INO, b"d").unwrap().unwrap();
    assert_eq!(d.layers().len(), 2);
    assert_eq!(names(&ov, &d), ["low", "shadowed"]);
    let opq = ov.lookup(ROOT_INO, b"opq").unwrap().unwrap();
    assert_eq!(opq.layers().len(), 1, "opaque dir must not merge");
    assert_eq!(names(&ov, &opq), ["mine"]);
    let f = ov.lookup(d.ino, b"shadowed").unwrap().unwrap();
    let fd = ov.open_file(&f).unwrap();
    let mut buf = [0u8; 16];
    let n = Overlay::read_at(&fd, &mut buf, 0).unwrap();
    assert_eq!(&buf[..n], b"top");
}

#[test]
fn nodes_live_until_forgotten_and_keep_their_number() {
    let (_t, ov) = stack();
    let d1 = ov.lookup(ROOT_INO, b"d").unwrap().unwrap();
    let d2 = ov.lookup(ROOT_INO, b"d").unwrap().unwrap();
    assert!(Arc::ptr_eq(&d1, &d2));
    let ino = d1.ino;
    let before = ov.live_nodes();
    ov.forget(ino, 1);
    assert_eq!(ov.live_nodes(), before, "one reference left");
    ov.forget(ino, 1);
    assert_eq!(ov.live_nodes(), before - 1);
    let again = ov.lookup(ROOT_INO, b"d").unwrap().unwrap();
    assert_eq!(again.ino, ino, "inode numbers are stable across forget");
}
