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
        "./usr/share/doc/stratafs/examples/storage.conf",
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
    run_ok(Command::new("dpkg").args(["-i", &deb]));
    let version = run(Command::new("/usr/bin/stratafs").arg("--version"));
    let listed = run(Command::new("dpkg").args(["-L", "stratafs"]));
    run_ok(Command::new("dpkg").args(["-r", "stratafs"]));
    assert!(version.status.success());
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("stratafs "));
    assert!(String::from_utf8_lossy(&listed.stdout).contains("/usr/bin/stratafs"));
    assert!(!std::path::Path::new("/usr/bin/stratafs").exists());
}
