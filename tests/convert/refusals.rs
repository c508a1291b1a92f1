//! Hostile, corrupt and oversized layers are refused

use super::*;

/// Every escape is refused with the image, layer and entry named; nothing is written outside
/// the repository and no layer appears under its final name.
#[test]
fn hostile_layers_are_refused() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret"), "secret").unwrap();
    let o = outside.to_str().unwrap().to_string();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "dotdot",
            tar_bytes(&[TarEntry::File("../../escape", b"x")]),
            "'..'",
        ),
        (
            "symlink-parent",
            tar_bytes(&[
                TarEntry::Symlink("link", &o),
                TarEntry::File("link/pwned", b"x"),
            ]),
            "symlink",
        ),
        (
            "symlink-relative-parent",
            tar_bytes(&[
                TarEntry::Symlink("up", "../../../../../../../.."),
                TarEntry::File("up/tmp/pwned", b"x"),
            ]),
            "symlink",
        ),
        (
            "hardlink-dotdot",
            tar_bytes(&[TarEntry::HardLink("h", "../../../../etc/passwd")]),
            "'..'",
        ),
        (
            "hardlink-absolute",
            tar_bytes(&[TarEntry::HardLink("h", &format!("{o}/secret"))]),
            "neither this layer nor a lower one",
        ),
        (
            "hardlink-through-symlink",
            tar_bytes(&[
                TarEntry::Symlink("l", &o),
                TarEntry::HardLink("h", "l/secret"),
            ]),
            "symlink",
        ),
    ];
    let repo = tmp.path().join("repo");
    for (name, layer, why) in cases {
        let layout = tmp.path().join(name);
        let digests = make_layout(&layout, "t", &[layer]);
        let e = convert_err(&[
            "--repo",
            repo.to_str().unwrap(),
            &format!("oci:{}:t", layout.display()),
        ]);
        assert!(e.contains(&digests[0]), "{name}: layer not named: {e}");
        assert!(e.contains("entry '"), "{name}: entry not named: {e}");
        assert!(e.contains(why), "{name}: expected '{why}' in: {e}");
        assert!(
            !layer_dir(&repo, &digests[0]).exists(),
            "{name}: layer installed"
        );
    }
    let names: Vec<_> = std::fs::read_dir(&outside)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("secret")]);
    assert_eq!(
        std::fs::read_to_string(outside.join("secret")).unwrap(),
        "secret"
    );
    assert!(!tmp.path().join("escape").exists());
    assert!(!Path::new("/tmp/pwned").exists());

    // Absolute names are taken relative to the layer root, as tar does; a symlink pointing
    // anywhere is kept as a symlink and never followed.
    let layout = tmp.path().join("absolute");
    let d = make_layout(
        &layout,
        "t",
        &[tar_bytes(&[
            TarEntry::File("/etc/abs", b"abs\n"),
            TarEntry::Symlink("etc/passwd-link", "/etc/passwd"),
        ])],
    );
    convert_ok(&[
        "--repo",
        repo.to_str().unwrap(),
        &format!("oci:{}:t", layout.display()),
    ]);
    let lfs = layer_dir(&repo, &d[0]).join("layerfs");
    assert_eq!(
        std::fs::read_to_string(lfs.join("etc/abs")).unwrap(),
        "abs\n"
    );
    assert_eq!(
        std::fs::read_link(lfs.join("etc/passwd-link")).unwrap(),
        PathBuf::from("/etc/passwd")
    );
}

/// A hard link whose target a lower layer holds is legitimate: it becomes that file.
#[test]
fn hard_link_to_a_lower_layer_is_materialised() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("l");
    let d = make_layout(
        &layout,
        "t",
        &[
            tar_bytes(&[
                TarEntry::Dir("usr"),
                TarEntry::File("usr/lib.so", b"library\n"),
            ]),
            tar_bytes(&[
                TarEntry::Dir("opt"),
                TarEntry::HardLink("opt/lib.so", "usr/lib.so"),
            ]),
        ],
    );
    let repo = tmp.path().join("repo");
    convert_ok(&[
        "--repo",
        repo.to_str().unwrap(),
        &format!("oci:{}:t", layout.display()),
    ]);
    let top = layer_dir(&repo, &d[1]).join("layerfs/opt/lib.so");
    assert_eq!(std::fs::read_to_string(&top).unwrap(), "library\n");
    let flat = repo.join("localhost/l:t");
    assert_eq!(
        std::fs::read_to_string(flat.join("opt/lib.so")).unwrap(),
        "library\n"
    );

    // The same link where the lower file was whited out in between has nothing to link to.
    let layout = tmp.path().join("w");
    make_layout(
        &layout,
        "t",
        &[
            tar_bytes(&[
                TarEntry::Dir("usr"),
                TarEntry::File("usr/lib.so", b"library\n"),
            ]),
            tar_bytes(&[TarEntry::File("usr/.wh.lib.so", b"")]),
            tar_bytes(&[TarEntry::HardLink("lib.so", "usr/lib.so")]),
        ],
    );
    let e = convert_err(&[
        "--repo",
        repo.to_str().unwrap(),
        &format!("oci:{}:t", layout.display()),
    ]);
    assert!(
        e.contains("entry 'lib.so'") && e.contains("neither this layer nor a lower one"),
        "{e}"
    );
}

#[test]
fn corrupt_blob_is_refused() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("l");
    let d = make_layout(
        &layout,
        "t",
        &[tar_bytes(&[TarEntry::File("f", &[7u8; 10000])])],
    );
    // Same length, other bytes: the compressed stream still decodes until the checksum.
    let p = blob_path(&layout, &d[0]);
    let mut b = std::fs::read(&p).unwrap();
    let n = b.len();
    b[n - 5] ^= 0xff;
    std::fs::write(&p, &b).unwrap();
    let repo = tmp.path().join("repo");
    let e = convert_err(&[
        "--repo",
        repo.to_str().unwrap(),
        &format!("oci:{}:t", layout.display()),
    ]);
    assert!(e.contains(&d[0]), "{e}");
    assert!(!layer_dir(&repo, &d[0]).exists());
    assert!(!repo.join("localhost/l:t").exists());
}

#[test]
fn killed_convert_leaves_no_half_layer_and_the_next_run_finishes() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("big");
    // 300 MB of incompressible data in one layer: slow enough to be killed in the middle.
    let mut data = vec![0u8; 300 << 20];
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for c in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        c.copy_from_slice(&x.to_le_bytes()[..c.len()]);
    }
    let d = make_layout(
        &layout,
        "t",
        &[tar_bytes(&[
            TarEntry::File("small", b"s"),
            TarEntry::File("big", &data),
        ])],
    );
    drop(data);
    let repo = tmp.path().join("repo");
    let img = format!("oci:{}:t", layout.display());
    let mut child = Command::new(BIN)
        .args(["convert", "--repo", repo.to_str().unwrap(), &img])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill as soon as the layer's temporary directory holds part of the big file.
    wait_until("unpacking started", || {
        walk_files(&repo.join(".stratafs-tmp")).iter().any(|p| {
            p.ends_with("big") && std::fs::metadata(p).map(|m| m.len() > 0).unwrap_or(false)
        })
    });
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        !layer_dir(&repo, &d[0]).exists(),
        "half layer under its final name"
    );
    assert!(!repo.join("localhost/big:t").exists());
    let s = convert_ok(&["--repo", repo.to_str().unwrap(), &img]);
    assert_eq!(s["images"][0]["status"], "converted");
    assert_eq!(
        std::fs::metadata(layer_dir(&repo, &d[0]).join("layerfs/big"))
            .unwrap()
            .len(),
        300 << 20
    );
    assert!(
        repo.join(".stratafs-tmp")
            .read_dir()
            .unwrap()
            .next()
            .is_none()
    );
}

fn walk_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// A layer of a few kilobytes that inflates to 3 MiB, against a limit of 1 MiB: refused with
/// one line naming the layer, nothing of it kept in a repository that holds other images.
#[test]
fn a_layer_that_inflates_past_the_limit_is_refused() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    let r = repo.to_str().unwrap();
    let ok = tmp.path().join("ok");
    make_layout(&ok, "t", &[tar_bytes(&[TarEntry::File("small", b"s")])]);
    convert_ok(&["--repo", r, &format!("oci:{}:t", ok.display())]);
    let zeros = vec![0u8; 3 << 20];
    let bomb = tmp.path().join("bomb");
    let d = make_layout(&bomb, "t", &[tar_bytes(&[TarEntry::File("zeros", &zeros)])]);
    let blob = std::fs::metadata(bomb.join("blobs/sha256").join(&d[0][7..]))
        .unwrap()
        .len();
    assert!(blob < 64 << 10, "the blob is small: {blob} bytes");
    let src = format!("oci:{}:t", bomb.display());
    let e = convert_err(&["--repo", r, "--max-layer-size", "1M", &src]);
    assert!(
        e.contains(&d[0])
            && e.ends_with("unpacks to more than 1048576 bytes (convert --max-layer-size)"),
        "{e}"
    );
    assert!(!layer_dir(&repo, &d[0]).exists());
    assert!(walk_files(&repo.join(".stratafs-tmp")).is_empty());
    let out = convert(&["--repo", r, "--max-layer-size", "lots", &src]);
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && e.contains("'lots'"), "{e}");
    // Within the limit it converts.
    convert_ok(&["--repo", r, "--max-layer-size", "4M", &src]);
    assert!(layer_dir(&repo, &d[0]).exists());
}
