//! The delta against the real kernel overlayfs: what a convert does on it (delete, replace a
//! directory, change a type, rewrite a link, add `.wh.` files that are data), read back from
//! its upper directory and applied to a copy of the lower one the way `cvmfs_server ingest`
//! applies it, gives the merged tree.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use stratafs::image::publish::delta::Delta;

/// The tree below `root` as content (the root itself left out: a copy's root is not
/// published).
fn tree(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut t = common::content_tree(root);
    t.remove(Path::new(""));
    t
}

fn sh(dir: &Path, script: &str) {
    let st = Command::new("sh")
        .arg("-ec")
        .arg(script)
        .current_dir(dir)
        .status()
        .unwrap();
    assert!(st.success(), "{script}");
}

/// What `ingest` does with a delta, on a plain directory.
fn apply(delta: &Delta, tar: &Path, published: &Path) {
    for p in delta.replaced.iter().chain(&delta.deletes) {
        let full = published.join(p);
        if std::fs::symlink_metadata(&full).unwrap().is_dir() {
            std::fs::remove_dir_all(&full).unwrap();
        } else {
            std::fs::remove_file(&full).unwrap();
        }
    }
    let mut ar = tar::Archive::new(std::fs::File::open(tar).unwrap());
    ar.set_preserve_permissions(true);
    ar.set_overwrite(true);
    ar.unpack(published).unwrap();
}

#[test]
fn a_delta_read_from_a_kernel_overlay_rebuilds_its_merged_tree() {
    common::require_root();
    let tmp = std::env::temp_dir().join(format!("stratafs-delta-{}", std::process::id()));
    let (lower, upper, work, merged) = (
        tmp.join("lower"),
        tmp.join("upper"),
        tmp.join("work"),
        tmp.join("merged"),
    );
    for d in [&lower, &upper, &work, &merged] {
        std::fs::create_dir_all(d).unwrap();
    }
    sh(
        &lower,
        "mkdir -p a d/x opq/sub t2/in w; echo f > a/f; echo g > a/g; echo y > d/x/y; \
         echo old > opq/old; echo s > opq/sub/s; echo k > opq/keep; echo t > t; \
         echo i > t2/in/i; ln -s x link; echo wh > w/.wh.gone; touch w/.wh..wh..opq",
    );
    let opts = format!(
        "lowerdir={},upperdir={},workdir={},redirect_dir=off,index=off,metacopy=off",
        lower.display(),
        upper.display(),
        work.display()
    );
    let st = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &opts])
        .arg(&merged)
        .status()
        .unwrap();
    assert!(st.success(), "mount overlay");
    sh(
        &merged,
        "rm a/f; echo h > a/h; chmod 600 a/g; rm -rf opq; mkdir -p opq/sub; echo n > opq/new; \
         echo k2 > opq/keep; echo s2 > opq/sub/s2; rm t; mkdir t; echo in > t/in; rm -rf t2; \
         echo file > t2; ln -sfn y link; rm -rf d; mkdir -p n/m; echo q > n/m/q; \
         echo data > w/.wh.new; rm w/.wh.gone",
    );
    let want = tree(&merged);
    let st = Command::new("umount").arg(&merged).status().unwrap();
    assert!(st.success());

    let delta = Delta::between(&upper, &lower).unwrap();
    let p = |s: &str| PathBuf::from(s);
    let mut deletes = delta.deletes.clone();
    deletes.sort();
    assert_eq!(
        deletes,
        vec![
            p("a/f"),
            p("d"),
            p("opq/old"),
            p("opq/sub/s"),
            p("w/.wh.gone")
        ]
    );
    assert_eq!(delta.replaced, vec![p("t"), p("t2")]);
    for added in [
        "a/h",
        "a/g",
        "opq/new",
        "opq/keep",
        "opq/sub/s2",
        "t/in",
        "n/m/q",
    ] {
        assert!(delta.adds.contains(&p(added)), "{added}: {delta:?}");
    }
    assert!(delta.adds.contains(&p("w/.wh.new")), "a .wh. file is data");
    assert!(!delta.adds.contains(&p("a/f")));

    let tar = tmp.join("delta.tar");
    delta.write_tar(&upper, &tar).unwrap();
    let published = tmp.join("published");
    sh(&tmp, "cp -a lower published");
    apply(&delta, &tar, &published);
    assert_eq!(tree(&published), want);
    assert_eq!(
        std::fs::metadata(published.join("a/g"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    std::fs::remove_dir_all(&tmp).unwrap();
}
