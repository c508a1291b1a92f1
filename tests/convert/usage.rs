//! Running as an ordinary user, bad input, progress on a terminal.

use super::*;

/// As an ordinary user: owners and device nodes go into user.containers.override_stat, and a
/// stratafs mount with xattr_permissions=2 shows them.
#[test]
fn unprivileged_convert_records_what_it_cannot_apply() {
    require_root();
    require_tool("runuser");
    let tmp = shared_tempdir();
    let layout = tmp.path().join("l");
    let mut owned = tar::Header::new_gnu();
    owned.set_entry_type(tar::EntryType::Regular);
    let mut layer = tar_bytes(&[TarEntry::Dir("etc"), TarEntry::Char("etc/null", 1, 3)]);
    // A file owned by 1234:5678, mode 04750.
    layer.truncate(layer.len() - 1024);
    owned.set_path("etc/owned").unwrap();
    owned.set_size(2);
    owned.set_mode(0o4750);
    owned.set_uid(1234);
    owned.set_gid(5678);
    owned.set_mtime(1_600_000_000);
    owned.set_cksum();
    layer.extend_from_slice(owned.as_bytes());
    layer.extend_from_slice(b"ok");
    layer.resize(layer.len().div_ceil(512) * 512 + 1024, 0);
    make_layout(&layout, "t", &[layer]);
    run_ok(
        Command::new("chown")
            .arg("-R")
            .arg("stratafs-test")
            .arg(tmp.path()),
    );
    let repo = tmp.path().join("repo");
    let out = run(Command::new("runuser")
        .args(["-u", "stratafs-test", "--"])
        .arg(BIN)
        .args([
            "convert",
            "--repo",
            repo.to_str().unwrap(),
            &format!("oci:{}:t", layout.display()),
        ]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let flat = repo.join("localhost/l:t");
    let x = xattrs_of(&flat.join("etc/owned"));
    assert_eq!(
        x.get(&b"user.containers.override_stat"[..])
            .map(|v| String::from_utf8_lossy(v).into_owned()),
        Some("1234:5678:4750:file".to_string())
    );
    let x = xattrs_of(&flat.join("etc/null"));
    assert_eq!(
        x.get(&b"user.containers.override_stat"[..])
            .map(|v| String::from_utf8_lossy(v).into_owned()),
        Some("0:0:0666:char-1-3".to_string())
    );
    // The mount presents them.
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    run_ok(Command::new("chown").arg("stratafs-test").arg(&mnt));
    let flat_real = std::fs::canonicalize(&flat).unwrap();
    run_ok(
        Command::new("runuser")
            .args(["-u", "stratafs-test", "--"])
            .arg(BIN)
            .arg("-o")
            .arg(format!(
                "lowerdir={},xattr_permissions=2,allow_other",
                flat_real.display()
            ))
            .arg(&mnt),
    );
    let owned = std::fs::symlink_metadata(mnt.join("etc/owned"));
    let null = std::fs::symlink_metadata(mnt.join("etc/null"));
    let _ = Command::new("fusermount3").arg("-u").arg(&mnt).status();
    let owned = owned.unwrap();
    assert_eq!(
        (owned.uid(), owned.gid(), owned.mode() & 0o7777),
        (1234, 5678, 0o4750)
    );
    let null = null.unwrap();
    assert!(std::os::unix::fs::FileTypeExt::is_char_device(
        &null.file_type()
    ));
    assert_eq!(null.rdev(), libc::makedev(1, 3));
}

#[test]
fn bad_input_gets_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let r = tmp.path().join("repo");
    let r = r.to_str().unwrap();
    let e = convert_err(&["--repo", r, "centos:7"]);
    assert!(e.contains("image reference 'centos:7'"), "{e}");
    let e = convert_err(&["--repo", r, "oci:/nonexistent/layout:t"]);
    assert!(e.contains("/nonexistent/layout/index.json"), "{e}");
    let e = convert_err(&["--repo", r, "--platform", "amd64", "oci:/x"]);
    assert!(e.contains("--platform 'amd64'"), "{e}");
    let recipe = tmp.path().join("r.yaml");
    std::fs::write(&recipe, "version: 2\ninput: []\n").unwrap();
    let e = convert_err(&["--repo", r, "--recipe", recipe.to_str().unwrap()]);
    assert!(e.contains("recipe") && e.contains("version 2"), "{e}");
    let e = convert_err(&["--repo", r]);
    assert!(e.contains("nothing to convert"), "{e}");
    // A run that failed on its first input left no repository skeleton behind.
    assert!(!Path::new(r).exists(), "{r} was left behind");
    // A file where the repository should be.
    let file = tmp.path().join("plain-file");
    std::fs::write(&file, "x").unwrap();
    let e = convert_err(&["--repo", file.to_str().unwrap(), "oci:/x"]);
    assert!(
        e.contains("plain-file") && e.ends_with("not a directory"),
        "{e}"
    );
}

/// On a terminal each layer gets a progress bar (run under `script`, which gives a pty).
#[test]
fn progress_bars_on_a_terminal() {
    require_root();
    require_tool("script");
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("l");
    let d = make_layout(
        &layout,
        "t",
        &[tar_bytes(&[TarEntry::File("f", &[1u8; 100_000])])],
    );
    let repo = tmp.path().join("repo");
    let cmd = format!(
        "{BIN} convert --repo {} oci:{}:t",
        repo.display(),
        layout.display()
    );
    let out = run_ok(Command::new("script").args(["-q", "-e", "-c", &cmd, "/dev/null"]));
    let shown = String::from_utf8_lossy(&out.stdout).to_string();
    let bar = format!("{} [", &d[0][7..19]);
    assert!(
        shown.contains(&bar),
        "no progress bar for the layer:\n{shown}"
    );
    assert!(repo.join("localhost/l:t").exists());
}
