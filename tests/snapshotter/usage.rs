//! Bad input to `stratafs snapshotter` gets one clear line.

use super::*;

fn snapshotter(args: &[&str]) -> (bool, String) {
    let mut c = Command::new(BIN);
    c.arg("snapshotter").args(args);
    let mut child = c
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // A snapshotter that starts serves until killed: give it a moment to fail.
    for _ in 0..50 {
        if let Some(st) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
            return (st.success(), err);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    (true, "still running".into())
}

#[test]
fn bad_input_is_one_clear_line() {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let s = |p: &str| d.join(p).to_str().unwrap().to_string();
    std::fs::create_dir(d.join("repo")).unwrap();

    let (ok, err) = snapshotter(&[
        "--repo",
        &s("nope"),
        "--root",
        &s("st"),
        "--address",
        &s("a.sock"),
    ]);
    assert!(!ok);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(&s("nope")) && err.contains("No such file"),
        "{err}"
    );

    // A mount option for the roots that a mount would refuse, or one of the stack's own.
    for (opt, says) in [
        ("bogus=1", "unknown option"),
        ("upperdir=/x", "sets the stack's options itself"),
    ] {
        let (ok, err) = snapshotter(&[
            "--repo",
            &s("repo"),
            "--root",
            &s("st0"),
            "--address",
            &s("o.sock"),
            "--mount-option",
            opt,
        ]);
        assert!(!ok);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(opt) && err.contains(says), "{err}");
    }

    // A socket a live snapshotter serves is refused.
    let mut first = Command::new(BIN)
        .args([
            "snapshotter",
            "--repo",
            &s("repo"),
            "--root",
            &s("st1"),
            "--address",
            &s("a.sock"),
        ])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("first snapshotter", || d.join("a.sock").exists());
    let (ok, err) = snapshotter(&[
        "--repo",
        &s("repo"),
        "--root",
        &s("st2"),
        "--address",
        &s("a.sock"),
    ]);
    let _ = first.kill();
    let _ = first.wait();
    assert!(!ok);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(&s("a.sock")) && err.contains("in use"),
        "{err}"
    );

    // A state dir that is a file, and one the user cannot read.
    std::fs::write(d.join("file"), "").unwrap();
    let (ok, err) = snapshotter(&[
        "--repo",
        &s("repo"),
        "--root",
        &s("file"),
        "--address",
        &s("b.sock"),
    ]);
    assert!(!ok);
    assert!(
        err.lines().count() == 1 && err.contains(&s("file")),
        "{err}"
    );

    let locked = d.join("locked");
    std::fs::create_dir(&locked).unwrap();
    std::fs::set_permissions(&locked, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = run(Command::new("runuser").args([
        "-u",
        "stratafs-test",
        "--",
        BIN,
        "snapshotter",
        "--repo",
        &s("repo"),
        "--root",
        &format!("{}/st", locked.display()),
        "--address",
        "/tmp/stratafs-test-unused.sock",
    ]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.lines().count() == 1 && err.contains("locked/st") && err.contains("Permission denied"),
        "{err}"
    );

    // A config file with an unknown key names the file.
    std::fs::write(d.join("c.toml"), "repository = \"/x\"\nbogus = 1\n").unwrap();
    let (ok, err) = snapshotter(&["--config", &s("c.toml")]);
    assert!(!ok);
    assert!(
        err.lines().count() == 1 && err.contains("c.toml") && err.contains("bogus"),
        "{err}"
    );
}
