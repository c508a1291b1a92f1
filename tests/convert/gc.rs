//! Moved tags, rmi and gc: what no image uses goes.

use super::*;

/// Layouts `a` and `b` (tag `t`) of two images whose first layer is the same.
fn two_layouts_sharing_a_layer(dir: &Path) -> (Layout, Layout) {
    let shared = tar_bytes(&[TarEntry::File("shared", b"s")]);
    let a = dir.join("a");
    let da = make_layout(
        &a,
        "t",
        &[shared.clone(), tar_bytes(&[TarEntry::File("a", b"a")])],
    );
    let b = dir.join("b");
    let db = make_layout(&b, "t", &[shared, tar_bytes(&[TarEntry::File("b", b"b")])]);
    ((a, da), (b, db))
}

#[test]
fn moved_tag_is_scheduled_and_gc_removes_what_no_image_uses() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let ((a, da), (b, db)) = two_layouts_sharing_a_layer(tmp.path());
    let repo = tmp.path().join("repo");
    let r = repo.to_str().unwrap();
    convert_ok(&[
        "--repo",
        r,
        &format!("oci:{}:t", a.display()),
        "--name",
        "reg.io/x:latest",
    ]);
    let old_flat = std::fs::canonicalize(repo.join("reg.io/x:latest")).unwrap();
    // The tag now names another image.
    let s = convert_ok(&[
        "--repo",
        r,
        &format!("oci:{}:t", b.display()),
        "--name",
        "reg.io/x:latest",
    ]);
    assert_eq!(s["images"][0]["status"], "updated");
    assert_eq!(s["layers_fetched"], 1, "the shared layer is reused");
    assert!(repo.join("reg.io/x:latest/b").exists());
    let sched = json(&repo.join(".metadata/remove-schedule.json"));
    assert_eq!(sched[0]["image"], "reg.io/x:latest");
    assert_eq!(sched[0]["manifest"]["layers"][1]["digest"], da[1].as_str());

    let out = run_ok(Command::new(BIN).args(["gc", "--repo", r, "--dry-run"]));
    let listed = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(listed.contains(&da[1][7..]), "{listed}");
    assert!(
        !listed.contains(&db[1][7..]) && !listed.contains(&da[0][7..]),
        "{listed}"
    );
    assert!(old_flat.exists(), "dry run removed something");
    run_ok(Command::new(BIN).args(["gc", "--repo", r]));
    assert!(!old_flat.exists());
    assert!(!layer_dir(&repo, &da[1]).exists());
    assert!(layer_dir(&repo, &da[0]).exists() && layer_dir(&repo, &db[1]).exists());
    assert!(repo.join("reg.io/x:latest/shared").exists());
    assert!(!repo.join(".metadata/remove-schedule.json").exists());
}

#[test]
fn rmi_removes_the_name_and_gc_the_layers_only_it_used() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let ((a, da), (b, db)) = two_layouts_sharing_a_layer(tmp.path());
    let repo = tmp.path().join("repo");
    let r = repo.to_str().unwrap();
    for (dir, name) in [(&a, "reg.io/x:latest"), (&b, "reg.io/y:1")] {
        convert_ok(&[
            "--repo",
            r,
            &format!("oci:{}:t", dir.display()),
            "--name",
            name,
        ]);
    }
    let store = repo.join("podmanStore/overlay-images/images.json");
    assert!(
        std::fs::read_to_string(&store)
            .unwrap()
            .contains("reg.io/x:latest")
    );

    let out = run_ok(Command::new(BIN).args(["rmi", "--repo", r, "reg.io/x:latest"]));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "removed reg.io/x:latest\n"
    );
    assert!(std::fs::symlink_metadata(repo.join("reg.io/x:latest")).is_err());
    assert!(!repo.join(".metadata/reg.io/x:latest").exists());
    let images = run_ok(Command::new(BIN).args(["images", "--repo", r]));
    let listed = String::from_utf8_lossy(&images.stdout).to_string();
    assert!(
        !listed.contains("reg.io/x") && listed.contains("reg.io/y:1"),
        "{listed}"
    );
    let in_store = std::fs::read_to_string(&store).unwrap();
    assert!(!in_store.contains("reg.io/x") && in_store.contains("reg.io/y:1"));
    // Its layers wait for gc, which takes only what no other image uses.
    assert!(layer_dir(&repo, &da[1]).exists());
    let gone = run_ok(Command::new(BIN).args(["gc", "--repo", r]));
    let gone = String::from_utf8_lossy(&gone.stdout).to_string();
    assert!(
        gone.contains(&da[1][7..]) && gone.starts_with("removed "),
        "{gone}"
    );
    assert!(!layer_dir(&repo, &da[1]).exists());
    assert!(layer_dir(&repo, &da[0]).exists() && layer_dir(&repo, &db[1]).exists());

    let out = run(Command::new(BIN).args(["rmi", "--repo", r, "reg.io/x:latest"]));
    assert_eq!(out.status.code(), Some(1));
    let e = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_eq!(e.lines().count(), 1, "{e}");
    assert!(
        e.ends_with("no image 'reg.io/x:latest' (see stratafs images --repo)"),
        "{e}"
    );
}
