//! The Debian package: built by `packaging/build-deb.sh` from the binary under test,
//! installed with dpkg, used, removed.

mod common;

use std::process::Command;

use common::*;

#[test]
fn debian_package_builds_installs_and_runs() {
    require_root();
    for t in ["dpkg-deb", "dpkg", "man"] {
        require_tool(t);
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = run_ok(
        Command::new("bash")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/packaging/build-deb.sh"
            ))
            .arg(tmp.path())
            .env("STRATAFS_BIN", BIN),
    );
    let deb = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let listing =
        String::from_utf8_lossy(&run_ok(Command::new("dpkg-deb").args(["-c", &deb])).stdout)
            .to_string();
    for f in [
        "./usr/bin/stratafs",
        "./usr/share/man/man1/stratafs.1.gz",
        "./usr/share/man/man1/stratafs-convert.1.gz",
        "./usr/share/man/man1/stratafs-mount.1.gz",
        "./usr/share/man/man1/stratafs-snapshotter.1.gz",
        "./usr/share/doc/stratafs/examples/storage.conf",
        "./usr/share/doc/stratafs/examples/containerd-config.toml",
        "./usr/share/doc/stratafs/examples/snapshotter.toml",
        "./usr/share/doc/stratafs/examples/stratafs-snapshotter.service",
        "./usr/share/doc/stratafs/examples/fuse-io-uring.conf",
    ] {
        assert!(listing.contains(f), "{f} not in the package:\n{listing}");
    }
    // The man pages render.
    let x = tmp.path().join("x");
    run_ok(Command::new("dpkg-deb").args(["-x", &deb]).arg(&x));
    let man = run_ok(
        Command::new("man")
            .arg("-l")
            .arg(x.join("usr/share/man/man1/stratafs-convert.1.gz"))
            .env("MANPAGER", "cat"),
    );
    assert!(String::from_utf8_lossy(&man.stdout).contains("--recipe"));
    // The io_uring switch, offered as a tmpfiles.d line that writes Y at boot.
    let uring =
        std::fs::read_to_string(x.join("usr/share/doc/stratafs/examples/fuse-io-uring.conf"))
            .unwrap();
    assert!(
        uring
            .lines()
            .any(|l| l == "w /sys/module/fuse/parameters/enable_uring - - - - Y"),
        "{uring}"
    );
    run_ok(Command::new("dpkg").args(["-i", &deb]));
    let version = run(Command::new("/usr/bin/stratafs").arg("--version"));
    let listed = run(Command::new("dpkg").args(["-L", "stratafs"]));
    run_ok(Command::new("dpkg").args(["-r", "stratafs"]));
    assert!(version.status.success());
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("stratafs "));
    assert!(String::from_utf8_lossy(&listed.stdout).contains("/usr/bin/stratafs"));
    assert!(!std::path::Path::new("/usr/bin/stratafs").exists());
}

/// The containerd example parses as containerd reads it, and names the snapshotter's socket
/// as the example snapshotter config does; the snapshotter accepts that config.
#[test]
fn containerd_and_snapshotter_examples_are_valid() {
    require_root();
    require_tool("containerd");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging");
    let dump = run_ok(
        Command::new("containerd")
            .arg("--config")
            .arg(dir.join("containerd-config.toml"))
            .args(["config", "dump"]),
    );
    let dump = String::from_utf8_lossy(&dump.stdout).to_string();
    assert!(
        dump.contains("[proxy_plugins.stratafs]")
            && dump.contains("address = \"/run/stratafs/snapshotter.sock\"")
            && dump.contains("snapshotter = \"stratafs\"")
            && dump.contains("disable_snapshot_annotations = false"),
        "containerd config dump:\n{dump}"
    );
    let snap = std::fs::read_to_string(dir.join("snapshotter.toml")).unwrap();
    assert!(snap.contains("address = \"/run/stratafs/snapshotter.sock\""));

    // The file's keys are the snapshotter's; the command line overrides its paths.
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    std::fs::create_dir_all(repo.join(".layers")).unwrap();
    let sock = tmp.path().join("s.sock");
    let mut child = Command::new(BIN)
        .arg("snapshotter")
        .arg("--config")
        .arg(dir.join("snapshotter.toml"))
        .arg("--repo")
        .arg(&repo)
        .arg("--root")
        .arg(tmp.path().join("state"))
        .arg("--address")
        .arg(&sock)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t = std::time::Instant::now();
    while !sock.exists() {
        if let Some(st) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
            panic!("the snapshotter refused packaging/snapshotter.toml ({st}): {err}");
        }
        assert!(t.elapsed().as_secs() < 20, "the snapshotter never listened");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    run_ok(Command::new("kill").arg(child.id().to_string()));
    let st = child.wait().unwrap();
    assert!(st.success(), "SIGTERM ends the snapshotter cleanly: {st}");
    assert!(!sock.exists(), "the socket is removed at exit");
}
