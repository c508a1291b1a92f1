//! `convert --publish`: one ingest or none, and whiteouts and opaque directories as umoci unpacks them.

use super::*;

#[test]
fn convert_publishes_in_one_ingest_or_not_at_all() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let client = cvmfs_up();
    let tmp = tempfile::tempdir().unwrap();
    let layout = app_image(tmp.path());
    let unique = unique();
    let target = format!("cvmfs:{REPO}");
    // `convert --publish` into /cvmfs/REPO/<sub>.
    let convert_into = |sub: &str, layout: &Path| {
        convert(
            Path::new(&format!("/cvmfs/{REPO}/{sub}")),
            layout,
            "example.org/sci/app:1",
            &["--publish", &target],
        )
    };
    let in_txn = || Path::new(&format!("/var/spool/cvmfs/{REPO}/in_transaction.lock")).exists();
    let stages = || {
        std::fs::read_dir(format!("/var/spool/cvmfs/{REPO}"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with("stratafs-stage.")
            })
            .count()
    };

    // --repo outside the repository's tree: refused before any transaction.
    let out = convert(
        &tmp.path().join("repo"),
        &layout,
        "example.org/sci/app:1",
        &["--publish", &target],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("is not inside /cvmfs/unpacked.test"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(!in_txn());

    // A convert that fails half-way (a corrupt layer blob, found after the base layer is
    // in place) publishes nothing and leaves no transaction open.
    let bad = tmp.path().join("bad-layout");
    run_ok(Command::new("cp").arg("-a").arg(&layout).arg(&bad));
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bad.join("index.json")).unwrap()).unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(blob_path(
            &bad,
            index["manifests"][0]["digest"].as_str().unwrap(),
        ))
        .unwrap(),
    )
    .unwrap();
    let app_blob = blob_path(&bad, manifest["layers"][1]["digest"].as_str().unwrap());
    let mut bytes = std::fs::read(&app_blob).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&app_blob, bytes).unwrap();
    let failed_sub = format!("stratafs-e2e/failed-{unique}");
    let out = convert_into(&failed_sub, &bad);
    assert!(
        !out.status.success(),
        "a corrupt layer must fail the convert"
    );
    assert!(!in_txn(), "the transaction was aborted");
    assert_eq!(stages(), 0, "the stage of a failed convert is removed");
    cvmfs_up();
    assert!(
        !client.join(&failed_sub).exists(),
        "nothing of a failed convert is published"
    );

    // The good one: published whole, without stratafs' scratch.
    let sub = format!("stratafs-e2e/published-{unique}");
    let out = convert_into(&sub, &layout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!in_txn());
    assert_eq!(stages(), 0);
    cvmfs_up();
    let published = client.join(&sub);
    let images = run_ok(
        Command::new(BIN)
            .arg("images")
            .arg("--repo")
            .arg(&published),
    );
    assert!(
        String::from_utf8_lossy(&images.stdout).contains("example.org/sci/app:1"),
        "{}",
        String::from_utf8_lossy(&images.stdout)
    );
    for scratch in [".stratafs-tmp", ".stratafs.lock"] {
        assert!(!published.join(scratch).exists(), "{scratch} was published");
    }
    let mnt = user_dir(&tmp.path().join("mnt"));
    {
        let _m = UserMount::new(&published, "example.org/sci/app:1", &mnt, &[]);
        assert_eq!(
            job(&mnt),
            "hello from cvmfs\nthe one file the job reads\ndone\n"
        );
    }
    unpublish(&sub);
}

/// Layers that delete what earlier ones hold: an OCI whiteout, an opaque directory, a deleted
/// directory, a path deleted and made again as another type; and a device node, as images
/// ship in /dev.
fn deleting_image(dir: &Path) -> PathBuf {
    use TarEntry::*;
    let l1 = tar_bytes(&[
        Dir("dev/"),
        Char("dev/null", 1, 3),
        Dir("etc/"),
        File("etc/msg", b"hello\n"),
        Dir("data/"),
        Dir("data/keep/"),
        File("data/keep/a", b"a\n"),
        Dir("data/replace/"),
        File("data/replace/old", b"old\n"),
        File("data/replace/.hidden", b"h\n"),
        File("data/gone", b"gone\n"),
        Symlink("data/link", "keep/a"),
        Dir("usr/"),
        Dir("usr/share/"),
        Dir("usr/share/doc/"),
        Dir("usr/share/doc/pkg/"),
        File("usr/share/doc/pkg/README", b"doc\n"),
    ]);
    let l2 = tar_bytes(&[
        Dir("data/"),
        File("data/.wh.gone", b""),
        File("data/.wh.link", b""),
        Dir("data/replace/"),
        File("data/replace/.wh..wh..opq", b""),
        File("data/replace/new", b"new\n"),
        File("data/keep/b", b"b\n"),
        Dir("usr/share/"),
        File("usr/share/.wh.doc", b""),
    ]);
    let l3 = tar_bytes(&[
        Dir("data/gone/"),
        File("data/gone/back", b"back\n"),
        File("data/link", b"a file now\n"),
    ]);
    let layout = dir.join("deleting-layout");
    make_layout(&layout, "v1", &[l1, l2, l3]);
    layout
}

/// A tree as an image's content: kind, mode, owner, content or target, mtime of non-directories,
/// device number.
fn image_entries(root: &Path) -> BTreeMap<PathBuf, String> {
    snapshot(root)
        .into_iter()
        .filter(|(p, _)| p != Path::new(""))
        .map(|(p, e)| {
            let mtime = if e.kind == "dir" { 0 } else { e.mtime.0 };
            let v = format!(
                "{} {:o} {}:{} {:?} {:?} {mtime} rdev {:x}",
                e.kind, e.mode, e.uid, e.gid, e.content, e.target, e.rdev
            );
            (p, v)
        })
        .collect()
}

#[test]
fn published_whiteouts_and_opaque_directories_equal_umoci_unpack() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    for t in ["umoci", "runuser", "fusermount3"] {
        require_tool(t);
    }
    let client = cvmfs_up();
    let tmp = shared_tempdir();
    let layout = deleting_image(tmp.path());
    let sub = format!("stratafs-e2e/deleting-{}", unique());
    let out = convert(
        Path::new(&format!("/cvmfs/{REPO}/{sub}")),
        &layout,
        "example.org/sci/deleting:1",
        &["--publish", &format!("cvmfs:{REPO}")],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    cvmfs_up();
    let published = client.join(&sub);
    wait_until("the client sees the new revision", || published.is_dir());

    // Every whiteout and opaque marker of the layer directories is on the client.
    let markers = |root: &Path| -> BTreeSet<String> {
        let mut found = BTreeSet::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let e = e.unwrap();
                let name = e.file_name().to_string_lossy().into_owned();
                if e.file_type().unwrap().is_dir() {
                    stack.push(e.path());
                } else if name.starts_with(".wh.") {
                    found.insert(e.path().strip_prefix(root).unwrap().display().to_string());
                }
            }
        }
        found
    };
    let local = markers(Path::new(&format!("/cvmfs/{REPO}/{sub}/.layers")));
    assert_eq!(local.len(), 4, "{local:?}");
    assert_eq!(markers(&published.join(".layers")), local);

    // Mounted by name from the client, the image is what umoci unpacks.
    let bundle = tmp.path().join("umoci-bundle");
    run_ok(
        Command::new("umoci")
            .args(["unpack", "--image"])
            .arg(format!("{}:v1", layout.display()))
            .arg(&bundle),
    );
    let want = image_entries(&bundle.join("rootfs"));
    assert!(want.contains_key(Path::new("data/gone/back")), "{want:?}");
    assert!(!want.contains_key(Path::new("usr/share/doc")));
    let mnt = user_dir(&tmp.path().join("mnt"));
    let got = {
        let _m = UserMount::new(&published, "example.org/sci/deleting:1", &mnt, &[]);
        image_entries(&mnt)
    };
    assert_eq!(got, want);

    unpublish(&sub);
}
