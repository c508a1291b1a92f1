//! The mount command as callers meet it: invocation forms, daemonizing, unmount, and every
//! bad-input case giving one line that names the culprit, a non-zero exit and no mount.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

fn two_layers(dir: &Path) -> Vec<PathBuf> {
    let top = dir.join("top");
    let bottom = dir.join("bottom");
    std::fs::create_dir_all(top.join("d")).unwrap();
    std::fs::create_dir_all(bottom.join("d")).unwrap();
    std::fs::write(top.join("d/top.txt"), "top").unwrap();
    std::fs::write(bottom.join("d/bottom.txt"), "bottom").unwrap();
    std::fs::write(bottom.join("d/.wh.nothing"), "").unwrap();
    vec![top, bottom]
}

/// Run stratafs expecting failure; return its single stderr line.
fn fails(args: &[&str], mountpoint: &Path) -> String {
    let out = run(Command::new(BIN).args(args));
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert!(!out.status.success(), "{args:?} succeeded");
    assert_eq!(
        err.lines().count(),
        1,
        "want one line of stderr, got:\n{err}"
    );
    assert!(!is_mountpoint(mountpoint), "{args:?} left a mount behind");
    err
}

#[test]
fn bad_input_is_one_line_naming_the_culprit() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let layers = two_layers(tmp.path());
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let m = mnt.to_str().unwrap();
    let top = layers[0].to_str().unwrap();

    let missing = tmp.path().join("no-such-layer");
    let e = fails(
        &["-o", &format!("lowerdir={top}:{}", missing.display()), m],
        &mnt,
    );
    assert!(e.contains("no-such-layer"), "{e}");

    let file = tmp.path().join("plain-file");
    std::fs::write(&file, "x").unwrap();
    let e = fails(&["-o", &format!("lowerdir={}", file.display()), m], &mnt);
    assert!(
        e.contains("plain-file") && e.contains("not a directory"),
        "{e}"
    );

    let e = fails(&["-o", &format!("lowerdir={top},threads=lots"), m], &mnt);
    assert!(e.contains("threads=lots"), "{e}");

    let e = fails(
        &["-o", &format!("lowerdir={top},passthrough=maybe"), m],
        &mnt,
    );
    assert!(e.contains("passthrough=maybe"), "{e}");

    let e = fails(&["-o", "ro", m], &mnt);
    assert!(e.contains("lowerdir"), "{e}");

    // A typo mounts nothing (it once mounted read-only, exit 0), and says what was meant.
    let upper = tmp.path().join("u");
    let e = fails(
        &[
            "-o",
            &format!("lowerdir={top},uppperdir={}", upper.display()),
            m,
        ],
        &mnt,
    );
    assert!(
        e.contains("uppperdir=") && e.contains("did you mean upperdir?"),
        "{e}"
    );
    let e = fails(&["-o", &format!("lowerdir={top},nosiud"), m], &mnt);
    assert!(e.contains("nosiud") && e.contains("nosuid"), "{e}");

    // Files the daemon cannot write, found after it forked: still one line.
    for opt in ["stats", "access_log"] {
        let e = fails(
            &["-o", &format!("lowerdir={top},{opt}=/no/such/dir/f"), m],
            &mnt,
        );
        assert!(e.contains(opt) && e.contains("/no/such/dir/f"), "{e}");
    }

    // A metrics address that is malformed, or taken: refused before anything is mounted,
    // with or without a keeper.
    let e = fails(&["-o", &format!("lowerdir={top},metrics=nowhere"), m], &mnt);
    assert!(e.contains("metrics=nowhere"), "{e}");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    for failover in ["on", "off"] {
        let e = fails(
            &[
                "-o",
                &format!("lowerdir={top},metrics={addr},failover={failover}"),
                m,
            ],
            &mnt,
        );
        assert!(
            e.contains(&format!("metrics={addr}")) && e.contains("in use"),
            "{e}"
        );
    }

    let nomnt = tmp.path().join("no-such-mountpoint");
    let e = fails(
        &["-o", &format!("lowerdir={top}"), nomnt.to_str().unwrap()],
        &nomnt,
    );
    assert!(e.contains("no-such-mountpoint"), "{e}");

    let e = fails(
        &["-o", &format!("lowerdir={top}"), file.to_str().unwrap()],
        &file,
    );
    assert!(e.contains("plain-file"), "{e}");

    // Busy: something is already mounted there.
    let _first = StrataMount::new(&layers, &mnt);
    let out = run(Command::new(BIN).args(["-o", &format!("lowerdir={top}"), m]));
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_eq!(e.lines().count(), 1, "{e}");
    assert!(e.contains(m) && e.contains("already a mount point"), "{e}");
}

#[test]
fn unreadable_lowerdir_is_refused_for_an_ordinary_user() {
    require_root();
    require_tool("runuser");
    assert!(
        run(Command::new("id").arg("stratafs-test"))
            .status
            .success(),
        "test user stratafs-test missing: run scripts/setup.sh"
    );
    let tmp = shared_tempdir();
    let secret = tmp.path().join("secret-layer");
    std::fs::create_dir(&secret).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o700)).unwrap();
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    std::os::unix::fs::chown(&mnt, Some(uid_of("stratafs-test")), None).unwrap();
    let bin = tmp.path().join("stratafs");
    std::fs::copy(BIN, &bin).unwrap();
    let out = run(Command::new("runuser")
        .args(["-u", "stratafs-test", "--"])
        .arg(&bin)
        .arg("-o")
        .arg(format!("lowerdir={}", secret.display()))
        .arg(&mnt));
    let e = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert!(!out.status.success());
    assert_eq!(e.lines().count(), 1, "{e}");
    assert!(e.contains("secret-layer") && e.contains("readable"), "{e}");
    assert!(!is_mountpoint(&mnt));
}

fn uid_of(user: &str) -> u32 {
    let out = run_ok(Command::new("id").args(["-u", user]));
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

#[test]
fn foreground_daemon_exits_zero_on_unmount() {
    require_root();
    require_tool("fusermount3");
    let tmp = tempfile::tempdir().unwrap();
    let layers = two_layers(tmp.path());
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mut child = Command::new(BIN)
        .arg("-f")
        .arg("-o")
        .arg(lowerdir_opt(&layers))
        .arg(&mnt)
        .spawn()
        .unwrap();
    wait_until("foreground mount", || is_mountpoint(&mnt));
    assert_eq!(
        std::fs::read_to_string(mnt.join("d/bottom.txt")).unwrap(),
        "bottom"
    );
    fuse_unmount(&mnt);
    let status = child.wait().unwrap();
    assert!(status.success(), "daemon exited with {status}");
}

fn daemon_pids(mountpoint: &Path) -> Vec<u32> {
    let want = mountpoint.to_str().unwrap().as_bytes().to_vec();
    let mut pids = Vec::new();
    for ent in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = ent.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(ent.path().join("cmdline")) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(ent.path().join("stat")) else {
            continue;
        };
        let zombie = stat.split(") ").nth(1).is_some_and(|s| s.starts_with('Z'));
        if !zombie && cmd.split(|&b| b == 0).any(|a| a == want.as_slice()) {
            pids.push(pid);
        }
    }
    pids
}

#[test]
fn daemon_mode_returns_once_live_and_exits_on_umount() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let layers = two_layers(tmp.path());
    let mnt = tmp.path().join("mnt");
    let m = StrataMount::new(&layers, &mnt);
    // Exit 0 came only once the mount was live: the tree is there at once.
    assert_eq!(
        std::fs::read_to_string(mnt.join("d/top.txt")).unwrap(),
        "top"
    );
    // Two stay: the keeper, which holds the connection, and the server it started.
    let pids = daemon_pids(&mnt);
    assert_eq!(
        pids.len(),
        2,
        "expected a keeper and a server, found {pids:?}"
    );
    run_ok(Command::new("umount").arg(&mnt));
    wait_until("daemon exit after umount", || daemon_pids(&mnt).is_empty());
    drop(m);
}

/// `stratafs MOUNTPOINT -o …` with relative paths, as a person types it: the server a keeper
/// starts gets the same arguments and must not look at the mountpoint (which its keeper has
/// mounted and nobody answers yet) before it serves. It did, and the mount hung.
#[test]
fn mountpoint_first_with_relative_paths() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    two_layers(tmp.path());
    std::fs::create_dir(tmp.path().join("mnt")).unwrap();
    let out = run(Command::new(BIN)
        .current_dir(tmp.path())
        .args(["mnt", "-o", "lowerdir=top:bottom"])
        .arg("-o")
        .arg("failover=on"));
    assert!(
        out.status.success(),
        "mount failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mnt = tmp.path().join("mnt");
    assert_eq!(
        std::fs::read_to_string(mnt.join("d/bottom.txt")).unwrap(),
        "bottom"
    );
    run_ok(Command::new("umount").arg(&mnt));
    wait_until("daemon exit after umount", || daemon_pids(&mnt).is_empty());
}

/// mount.fuse3 runs "stratafs SOURCE MOUNTPOINT -o OPTS" through the PATH: a PATH that
/// starts with a directory holding the binary under test as `stratafs`.
fn path_with_stratafs(dir: &Path) -> String {
    let bindir = dir.join("bin");
    std::fs::create_dir(&bindir).unwrap();
    std::os::unix::fs::symlink(BIN, bindir.join("stratafs")).unwrap();
    format!("{}:{}", bindir.display(), std::env::var("PATH").unwrap())
}

#[test]
fn mount_fuse3_form_and_mountpoint_as_last_lowerdir() {
    require_root();
    require_tool("mount.fuse3");
    let tmp = tempfile::tempdir().unwrap();
    let layers = two_layers(tmp.path());
    let path = path_with_stratafs(tmp.path());
    // apptainer style: mount over the bottom layer itself.
    let mnt = layers[1].clone();
    run_ok(
        Command::new("mount.fuse3")
            .env("PATH", path)
            .arg("overlay")
            .arg(&mnt)
            .args(["-t", "stratafs", "-o"])
            .arg(format!("ro,dev,suid,{}", lowerdir_opt(&layers))),
    );
    let _guard = StrataMountGuard(mnt.clone());
    assert!(is_mountpoint(&mnt));
    let names: Vec<String> = std::fs::read_dir(mnt.join("d"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let mut names = names;
    names.sort();
    assert_eq!(names, vec!["bottom.txt", "top.txt"]);
    assert_eq!(
        std::fs::read_to_string(mnt.join("d/bottom.txt")).unwrap(),
        "bottom"
    );
}

/// The form containerd uses for a FUSE snapshotter's mount:
/// `mount.fuse3 overlay TARGET -o lowerdir=…,upperdir=…,workdir=… -t stratafs`.
#[test]
fn mount_fuse3_form_with_an_upper_layer() {
    require_root();
    require_tool("mount.fuse3");
    let tmp = tempfile::tempdir().unwrap();
    let layers = two_layers(tmp.path());
    let path = path_with_stratafs(tmp.path());
    let (upper, work, mnt) = (
        tmp.path().join("upper"),
        tmp.path().join("work"),
        tmp.path().join("mnt"),
    );
    for d in [&upper, &work, &mnt] {
        std::fs::create_dir(d).unwrap();
    }
    run_ok(
        Command::new("mount.fuse3")
            .env("PATH", path)
            .arg("overlay")
            .arg(&mnt)
            .args(["-t", "stratafs", "-o"])
            .arg(format!(
                "rw,{},upperdir={},workdir={}",
                lowerdir_opt(&layers),
                upper.display(),
                work.display()
            )),
    );
    let guard = StrataMountGuard(mnt.clone());
    std::fs::write(mnt.join("d/new.txt"), "new").unwrap();
    std::fs::remove_file(mnt.join("d/bottom.txt")).unwrap();
    assert_eq!(
        std::fs::read_to_string(mnt.join("d/new.txt")).unwrap(),
        "new"
    );
    drop(guard);
    wait_until("unmount", || !is_mountpoint(&mnt));
    // The change is in the upper dir; the layers are untouched.
    assert_eq!(
        std::fs::read_to_string(upper.join("d/new.txt")).unwrap(),
        "new"
    );
    let wh = std::fs::symlink_metadata(upper.join("d/bottom.txt")).unwrap();
    assert!(std::os::unix::fs::FileTypeExt::is_char_device(
        &wh.file_type()
    ));
    assert!(layers[1].join("d/bottom.txt").exists());
}

struct StrataMountGuard(PathBuf);
impl Drop for StrataMountGuard {
    fn drop(&mut self) {
        if !is_mountpoint(&self.0) {
            return;
        }
        let _ = Command::new("fusermount3").arg("-u").arg(&self.0).status();
    }
}

#[test]
fn mounts_show_as_fuse_stratafs() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let layers = two_layers(tmp.path());
    let m = StrataMount::new(&layers, &tmp.path().join("mnt"));
    assert_eq!(mount_type(&m.path).as_deref(), Some("fuse.stratafs"));
}

#[test]
fn an_ordinary_user_mounts_through_fusermount3() {
    require_root();
    require_tool("runuser");
    require_tool("fusermount3");
    let tmp = shared_tempdir();
    let layers = two_layers(tmp.path());
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let user = uid_of("stratafs-test");
    std::os::unix::fs::chown(&mnt, Some(user), None).unwrap();
    let bin = tmp.path().join("stratafs");
    std::fs::copy(BIN, &bin).unwrap();
    let as_user = |args: &[&std::ffi::OsStr]| {
        run_ok(
            Command::new("runuser")
                .args(["-u", "stratafs-test", "--"])
                .args(args),
        )
    };
    as_user(&[
        bin.as_os_str(),
        "-o".as_ref(),
        lowerdir_opt(&layers).as_ref(),
        mnt.as_os_str(),
    ]);
    let _guard = StrataMountGuard(mnt.clone());
    assert_eq!(mount_type(&mnt).as_deref(), Some("fuse.stratafs"));
    let out = as_user(&["cat".as_ref(), mnt.join("d/bottom.txt").as_os_str()]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "bottom");
    as_user(&["fusermount3".as_ref(), "-u".as_ref(), mnt.as_os_str()]);
    assert!(!is_mountpoint(&mnt));
}

/// `-o stats=FILE`: every request the daemon served, by opcode, with its time, written at
/// unmount.
#[test]
fn request_statistics_at_unmount() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let layers = two_layers(tmp.path());
    let mnt = tmp.path().join("mnt");
    let stats = tmp.path().join("stats.json");
    {
        let _m = StrataMount::with_opts(&layers, &mnt, &[&format!("stats={}", stats.display())]);
        run_ok(Command::new("ls").arg("-lR").arg(&mnt));
        run_ok(Command::new("cat").arg(mnt.join("d/top.txt")));
    }
    wait_until("stats written", || {
        std::fs::read(&stats)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .is_some_and(|v| v["requests"].as_u64() > Some(0))
    });
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&stats).unwrap()).unwrap();
    let ops = &v["ops"];
    assert!(
        ops["readdirplus"]["count"].as_u64() > Some(0)
            || ops["readdir"]["count"].as_u64() > Some(0),
        "{v}"
    );
    assert_eq!(ops["read"]["count"], 1, "one read of one small file: {v}");
    let sum: u64 = ops
        .as_object()
        .unwrap()
        .values()
        .map(|o| o["count"].as_u64().unwrap())
        .sum();
    assert_eq!(v["requests"].as_u64(), Some(sum), "{v}");
}

#[test]
fn a_mistyped_subcommand_is_named_with_the_one_meant() {
    for (typed, meant) in [("mont", "mount"), ("imgaes", "images")] {
        let out = run(Command::new(BIN).args([typed, "--repo", "/nonexistent-repo", "img", "m"]));
        let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
        assert_eq!(out.status.code(), Some(2), "{typed}: {err}");
        assert_eq!(
            err,
            format!("stratafs: unknown command '{typed}' (did you mean `{meant}`?)")
        );
    }
}

/// `stratafs --help` and `stratafs help` show the mount form and every command with a line
/// each; `stratafs help CMD` is that command's help; an unknown one is one line.
#[test]
fn help_lists_every_command() {
    for args in [&["--help"][..], &["help"], &["-h"]] {
        let out = run(Command::new(BIN).args(args));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("MOUNTPOINT"), "{args:?}: {text}");
        if args != ["-h"] {
            assert!(text.contains("lowerdir=TOP:...:BOTTOM"), "{args:?}: {text}");
        }
        for c in stratafs::cli::SUBCOMMANDS {
            assert!(
                text.lines()
                    .any(|l| l.trim_start().starts_with(&format!("{c} "))),
                "{args:?} does not list {c}: {text}"
            );
        }
    }
    let out = run(Command::new(BIN).args(["help", "convert"]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("--repo"), "{text}");
    let out = run(Command::new(BIN).args(["help", "bogus"]));
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "stratafs: help: unknown command 'bogus' (stratafs help lists them)\n"
    );
}

/// `uidmapping`/`gidmapping` through a real mount: owners on disk are shown shifted, and a
/// chown through the mount writes the unshifted ids back to the upper layer.
#[test]
fn id_mappings_shift_owners_through_a_mount() {
    use std::os::unix::fs::MetadataExt;
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let (lower, upper, work, mnt) = (
        tmp.path().join("l"),
        tmp.path().join("u"),
        tmp.path().join("w"),
        tmp.path().join("m"),
    );
    for d in [&lower, &upper, &work, &mnt] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(lower.join("f"), "x").unwrap();
    std::os::unix::fs::chown(lower.join("f"), Some(0), Some(0)).unwrap();
    std::os::unix::fs::chown(&lower, Some(0), Some(0)).unwrap();
    let opts = format!(
        "lowerdir={},upperdir={},workdir={},uidmapping=0:100000:65536,gidmapping=0:200000:65536",
        lower.display(),
        upper.display(),
        work.display()
    );
    run_ok(Command::new(BIN).arg("-o").arg(&opts).arg(&mnt));
    let _guard = StrataMountGuard(mnt.clone());
    let md = std::fs::metadata(mnt.join("f")).unwrap();
    assert_eq!((md.uid(), md.gid()), (100000, 200000), "shown shifted");
    std::os::unix::fs::chown(mnt.join("f"), Some(100005), Some(200007)).unwrap();
    let md = std::fs::metadata(mnt.join("f")).unwrap();
    assert_eq!((md.uid(), md.gid()), (100005, 200007));
    let disk = std::fs::metadata(upper.join("f")).unwrap();
    assert_eq!((disk.uid(), disk.gid()), (5, 7), "written back unshifted");
    // An id outside the mapping cannot be written.
    let e = std::os::unix::fs::chown(mnt.join("f"), Some(42), None).unwrap_err();
    assert!(e.raw_os_error().is_some(), "{e}");
}
