//! Hostile layers: symlinks are shown, never followed by the daemon while it resolves paths
//! inside a layer, so nothing outside the layers becomes visible through the mount.

mod common;

use std::path::Path;

use common::*;

#[test]
fn symlinks_in_layers_never_lead_outside() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let (top, mid, bottom) = (
        tmp.path().join("top"),
        tmp.path().join("mid"),
        tmp.path().join("bottom"),
    );
    for l in [&top, &mid, &bottom] {
        std::fs::create_dir_all(l).unwrap();
    }
    // The top shows a directory "a"; a lower layer has "a" as a link to the host's /etc,
    // which must neither merge into "a" nor be walked.
    std::fs::create_dir(top.join("a")).unwrap();
    std::fs::write(top.join("a/mine"), "mine").unwrap();
    std::os::unix::fs::symlink("/etc", mid.join("a")).unwrap();
    // A link at the top that a lower directory's content must not be reached through.
    std::os::unix::fs::symlink("/etc", top.join("etc")).unwrap();
    std::fs::create_dir(bottom.join("etc")).unwrap();
    std::fs::write(bottom.join("etc/layer-file"), "x").unwrap();
    // Escaping link targets are kept verbatim.
    std::os::unix::fs::symlink("../../../../../../etc/shadow", top.join("up")).unwrap();

    let m = StrataMount::new(&[top, mid, bottom], &tmp.path().join("mnt"));
    let names: Vec<String> = std::fs::read_dir(m.path.join("a"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        vec!["mine"],
        "a lower symlink leaked into a merged directory"
    );
    assert!(!m.path.join("a/passwd").exists());

    let etc = std::fs::symlink_metadata(m.path.join("etc")).unwrap();
    assert!(etc.file_type().is_symlink());
    assert_eq!(
        std::fs::read_link(m.path.join("etc")).unwrap(),
        Path::new("/etc")
    );
    assert_eq!(
        std::fs::read_link(m.path.join("up")).unwrap(),
        Path::new("../../../../../../etc/shadow")
    );
    // The daemon itself answers lookups below a symlink with ENOTDIR, never with the host's
    // files; following the link is the caller's kernel's business, in its own root.
    let snap = snapshot(&m.path);
    assert!(
        snap.keys()
            .all(|p| p == Path::new("etc") || !p.starts_with("etc")),
        "{snap:?}"
    );
}

#[test]
fn statfs_reports_the_top_layer() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let (top, bottom) = (tmp.path().join("top"), tmp.path().join("bottom"));
    std::fs::create_dir_all(&top).unwrap();
    std::fs::create_dir_all(&bottom).unwrap();
    let m = StrataMount::new(&[top.clone(), bottom], &tmp.path().join("mnt"));
    let ours = rustix::fs::statvfs(&m.path).unwrap();
    let real = rustix::fs::statvfs(&top).unwrap();
    assert_eq!(ours.f_blocks, real.f_blocks);
    assert_eq!(ours.f_bsize, real.f_bsize);
    assert_eq!(ours.f_files, real.f_files);
    assert!(ours.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY));
}
