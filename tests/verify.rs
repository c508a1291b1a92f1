//! `verify=on`: a converted image's layers are checked against the records `convert` wrote.
//! The layer directories are tampered with after conversion — a byte changed, a file added,
//! a mode changed, a file replaced by a symlink, a byte changed in the middle of a big file
//! and of an executable — and each change is caught through the mount (cat, ls, exec, bwrap)
//! while untouched files read normally; with verify=off the same mount serves the changes.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use common::image::{busybox_base_tar, which};
use common::layout::*;
use common::*;

const BIG: usize = 3 * (1 << 20) + 5;

fn big_content() -> Vec<u8> {
    (0..BIG).map(|i| (i * 7 % 251) as u8).collect()
}

/// busybox, then a layer with the files the cases change.
fn image(dir: &Path) -> PathBuf {
    let base = std::fs::read(busybox_base_tar(dir)).unwrap();
    let bb = std::fs::read(which("busybox")).unwrap();
    let big = big_content();
    let app = tar_bytes(&[
        TarEntry::Dir("proc"),
        TarEntry::Dir("dev"),
        TarEntry::File("hello.sh", b"echo hello from $(cat /keep.txt)\n"),
        TarEntry::File("keep.txt", b"kept\n"),
        TarEntry::File("byte.txt", b"original\n"),
        TarEntry::Dir("sub"),
        TarEntry::File("sub/one", b"1\n"),
        TarEntry::File("mode.txt", b"mode\n"),
        TarEntry::File("link.txt", b"link\n"),
        TarEntry::File("aaaa.txt", b"aaaa\n"),
        TarEntry::File("bbbb.txt", b"bbbb\n"),
        TarEntry::File("big.bin", &big),
        TarEntry::Dir("opt"),
        TarEntry::Exec("opt/bb", &bb),
    ]);
    let layout = dir.join("layout");
    make_layout(&layout, "v1", &[base, app]);
    layout
}

/// The `layerfs` directory of the repository's layer holding `file`.
fn layer_with(repo: &Path, file: &str) -> PathBuf {
    for xx in std::fs::read_dir(repo.join(".layers")).unwrap() {
        let xx = xx.unwrap().path();
        if !xx.is_dir() {
            continue;
        }
        for l in std::fs::read_dir(&xx).unwrap() {
            let fs = l.unwrap().path().join("layerfs");
            if fs.join(file).exists() {
                return fs;
            }
        }
    }
    panic!("no layer of {} holds {file}", repo.display());
}

fn flip_byte(p: &Path, at: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(p)
        .unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 0x20], at).unwrap();
}

/// Mount options `o` with the suite's transport (`STRATAFS_TEST_TRANSPORT`) added.
fn with_transport(o: &str) -> String {
    std::iter::once(o)
        .chain(transport_opts())
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(",")
}

/// A foreground mount whose log is kept; unmounted on drop.
struct Mounted {
    mnt: PathBuf,
    child: Child,
    log: PathBuf,
}

impl Mounted {
    fn new(repo: &Path, opts: &str, mnt: &Path, log: &Path) -> Mounted {
        let err = std::fs::File::create(log).unwrap();
        let child = Command::new(BIN)
            .env("STRATAFS_LOG", "info,stratafs=debug")
            .args(["mount", "-f", "--repo"])
            .arg(repo)
            .args(["-o", &with_transport(opts), "example.org/v/app:v1"])
            .arg(mnt)
            .stderr(err)
            .spawn()
            .unwrap();
        let mut m = Mounted {
            mnt: mnt.into(),
            child,
            log: log.into(),
        };
        wait_until("the mount", || {
            if let Ok(Some(st)) = m.child.try_wait() {
                panic!("mount exited {st}: {}", m.log());
            }
            is_mountpoint(mnt)
        });
        assert_transport(mnt);
        m
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Run `args` chrooted in the mount: (exit status success, stdout, stderr).
    fn run(&self, args: &[&str]) -> (bool, String, String) {
        let out = run(Command::new("chroot").arg(&self.mnt).args(args));
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("fusermount3")
            .arg("-u")
            .arg(&self.mnt)
            .status();
        let _ = self.child.wait();
    }
}

fn converted(tmp: &Path) -> PathBuf {
    let layout = image(tmp);
    let repo = tmp.join("repo");
    run_ok(Command::new(BIN).args([
        "convert",
        "--repo",
        repo.to_str().unwrap(),
        &format!("oci:{}:v1", layout.display()),
        "--name",
        "example.org/v/app:v1",
    ]));
    repo
}

/// Change the app layer in every way the cases check.
fn tamper(app: &Path) {
    flip_byte(&app.join("byte.txt"), 3);
    std::fs::write(app.join("sub/added"), b"added\n").unwrap();
    std::fs::set_permissions(app.join("mode.txt"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::remove_file(app.join("link.txt")).unwrap();
    std::os::unix::fs::symlink("keep.txt", app.join("link.txt")).unwrap();
    flip_byte(&app.join("big.bin"), 2 * (1 << 20) + 100);
    flip_byte(&app.join("opt/bb"), 1000);
}

#[test]
fn changes_to_a_layer_are_caught_and_the_rest_reads() {
    require_root();
    require_tool("bwrap");
    let tmp = tempfile::tempdir().unwrap();
    let repo = converted(tmp.path());
    let app = layer_with(&repo, "hello.sh");
    let record = app.parent().unwrap().join(".metadata/record");
    assert!(
        record.is_file(),
        "convert wrote no record at {}",
        record.display()
    );
    tamper(&app);
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let cache = tmp.path().join("verified");
    let port = free_port();
    let opts = format!(
        "verify=on,verify_cache={},metrics=127.0.0.1:{port}",
        cache.display()
    );
    let m = Mounted::new(&repo, &opts, &mnt, &tmp.path().join("on.log"));

    // Untouched files, in the changed layer and below it, read and run.
    assert_eq!(m.run(&["/bin/cat", "/keep.txt"]).1, "kept\n");
    assert_eq!(m.run(&["/bin/sh", "/hello.sh"]).1, "hello from kept\n");
    assert_eq!(m.run(&["/bin/cat", "/sub/one"]).1, "1\n");
    // The first block of the big file is intact: read alone, it reads.
    let (ok, head, err) = m.run(&[
        "/bin/sh",
        "-c",
        "busybox head -c 4096 /big.bin | busybox od -An -tx1 | busybox head -1",
    ]);
    assert!(ok, "{err}");
    let want: Vec<String> = big_content()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(head.split_whitespace().collect::<Vec<_>>(), want);

    // EIO is what the caller sees (busybox tail reports it but exits 0).
    let eio = |args: &[&str]| {
        let (ok, out, err) = m.run(args);
        assert!(
            err.contains("I/O error") || err.contains("Input/output error"),
            "{args:?} was not refused: ok={ok} out={out:?} err={err:?}\n{}",
            m.log()
        );
    };
    eio(&["/bin/cat", "/byte.txt"]);
    // busybox ls does not report a failed readdir: GNU ls from outside does.
    let out = run(Command::new("ls").arg(mnt.join("sub")));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("Input/output error"),
        "ls: {err}"
    );
    eio(&["/bin/ls", "-l", "/mode.txt"]);
    eio(&["/bin/cat", "/link.txt"]);
    eio(&[
        "/bin/sh",
        "-c",
        "set -o pipefail; busybox tail -c 1100000 /big.bin | busybox wc -c",
    ]);
    let (ok, _, err) = m.run(&["/opt/bb", "true"]);
    assert!(!ok, "a changed executable ran: {err}");
    // The same through bwrap, the unprivileged runtime of HPC nodes.
    let bw = |cmd: &[&str]| {
        run(Command::new("bwrap")
            .arg("--ro-bind")
            .arg(&mnt)
            .args(["/", "--proc", "/proc", "--dev", "/dev", "--unshare-all"])
            .args(cmd))
    };
    let out = bw(&["/bin/cat", "/byte.txt"]);
    assert!(!out.status.success(), "bwrap read a changed file");
    let out = bw(&["/bin/sh", "/hello.sh"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello from kept\n");

    // One line per refusal, naming the layer, the path, what was expected and found.
    let log = m.log();
    let line = log
        .lines()
        .find(|l| l.contains("verification failed") && l.contains("/byte.txt"))
        .unwrap_or_else(|| panic!("no log line for /byte.txt:\n{log}"));
    assert!(line.contains(&app.display().to_string()), "{line}");
    assert!(line.contains("content: expected "), "{line}");
    for what in [
        "/sub/added",
        "/mode.txt: mode",
        "/link.txt",
        "/big.bin: content",
        "/opt/bb: content",
    ] {
        assert!(log.contains(what), "no log line for {what}:\n{log}");
    }
    // The refusals and the bytes hashed are counted.
    let metrics = scrape(port);
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in:\n{metrics}"))
    };
    assert!(value("stratafs_verify_failures_total") >= 6.0, "{metrics}");
    assert!(
        value("stratafs_verified_bytes_total") >= 65536.0,
        "{metrics}"
    );
    drop(m);

    // verify=off: the same layers mount, changes and all.
    let m = Mounted::new(&repo, "verify=off", &mnt, &tmp.path().join("off.log"));
    assert_eq!(m.run(&["/bin/cat", "/byte.txt"]).1, "oriGinal\n");
    assert!(m.run(&["/bin/ls", "/sub"]).1.contains("added"));
    drop(m);

    // A daemon (as podman starts them) has no stderr: its refusals reach syslog.
    let sock_path = tmp.path().join("syslog.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    run_ok(
        Command::new(BIN)
            .env("STRATAFS_SYSLOG", &sock_path)
            .args(["mount", "--repo"])
            .arg(&repo)
            .args([
                "-o",
                &with_transport("verify=on,verify_cache=none"),
                "example.org/v/app:v1",
            ])
            .arg(&mnt),
    );
    assert_transport(&mnt);
    let read = std::fs::read(mnt.join("byte.txt"));
    let _ = Command::new("fusermount3").arg("-u").arg(&mnt).status();
    assert_eq!(read.map_err(|e| e.raw_os_error()), Err(Some(libc::EIO)));
    let mut buf = [0u8; 4096];
    let mut got = Vec::new();
    while let Ok(n) = sock.recv(&mut buf) {
        let line = String::from_utf8_lossy(&buf[..n]).into_owned();
        let done = line.contains("verification failed");
        got.push(line);
        if done {
            break;
        }
    }
    let line = got.last().cloned().unwrap_or_default();
    assert!(
        line.starts_with("<27>stratafs[") && line.contains("/byte.txt: content"),
        "{got:?}"
    );
}

/// A layer without a record (converted before records existed) refuses a verify=on mount
/// with one line naming it; so does a damaged record. Without verify the mount works.
#[test]
fn a_layer_without_a_good_record_is_refused() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let repo = converted(tmp.path());
    let app = layer_with(&repo, "hello.sh");
    let record = app.parent().unwrap().join(".metadata/record");
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mount = |opts: &str| {
        run(Command::new(BIN)
            .args(["mount", "--repo"])
            .arg(&repo)
            .args(["-o", &with_transport(opts), "example.org/v/app:v1"])
            .arg(&mnt))
    };
    let saved = std::fs::read(&record).unwrap();
    std::fs::remove_file(&record).unwrap();
    let out = mount("verify=on,verify_cache=none");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && !is_mountpoint(&mnt), "{err}");
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("stratafs:")).collect();
    assert_eq!(errors.len(), 1, "{err}");
    assert!(
        err.contains(&app.display().to_string()) && err.contains("no record"),
        "{err}"
    );

    let mut bad = saved.clone();
    bad.truncate(bad.len() - 7);
    std::fs::write(&record, &bad).unwrap();
    let out = mount("verify=on,verify_cache=none");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && !is_mountpoint(&mnt), "{err}");
    assert!(err.contains("not a layer record"), "{err}");

    // Another layer's record in its place.
    let base = layer_with(&repo, "bin/busybox");
    std::fs::copy(base.parent().unwrap().join(".metadata/record"), &record).unwrap();
    let out = mount("verify=on,verify_cache=none");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("not of this one"), "{err}");

    let out = mount("verify=off");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = Command::new("fusermount3").arg("-u").arg(&mnt).status();

    // --repair: the layers of the given image without a record are fetched again, checked
    // and put in place with one (a change made to them goes too); a layer no given image
    // holds is named.
    let other = tmp.path().join("other");
    make_layout(&other, "v1", &[tar_bytes(&[TarEntry::File("o", b"o\n")])]);
    let conv = |src: &Path, name: &str, repair: bool| {
        let mut c = Command::new(BIN);
        c.args(["convert", "--repo"]).arg(&repo);
        if repair {
            c.arg("--repair");
        }
        run(c
            .arg(format!("oci:{}:v1", src.display()))
            .args(["--name", name]))
    };
    assert!(
        conv(&other, "example.org/v/other:v1", false)
            .status
            .success()
    );
    let other_layer = layer_with(&repo, "o");
    std::fs::remove_file(other_layer.parent().unwrap().join(".metadata/record")).unwrap();
    std::fs::remove_file(&record).unwrap();
    flip_byte(&app.join("byte.txt"), 3);
    let out = conv(&tmp.path().join("layout"), "example.org/v/app:v1", true);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(record.is_file(), "--repair wrote no record: {err}");
    let warned = err
        .lines()
        .find(|l| l.contains("no record"))
        .unwrap_or_else(|| panic!("the other layer was not named: {err}"));
    let other_dir = other_layer.parent().unwrap().display().to_string();
    assert!(warned.contains(&other_dir), "{warned}");
    let out = mount("verify=on,verify_cache=none");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read = std::fs::read(mnt.join("byte.txt"));
    let _ = Command::new("fusermount3").arg("-u").arg(&mnt).status();
    assert_eq!(read.unwrap(), b"original\n");

    // A layer whose record is in place but whose files were changed is found by --repair
    // (every byte hashed) and fetched again; so is a flat root that gained a file.
    flip_byte(&app.join("byte.txt"), 3);
    let flat = std::fs::canonicalize(repo.join("example.org/v/app:v1")).unwrap();
    std::fs::write(flat.join("planted"), b"x").unwrap();
    let out = conv(&tmp.path().join("layout"), "example.org/v/app:v1", true);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("does not match its record") && err.contains(&app.display().to_string()),
        "{err}"
    );
    assert!(
        !flat.join("planted").exists(),
        "the flat root was not built again: {err}"
    );
    assert_eq!(std::fs::read(app.join("byte.txt")).unwrap(), b"original\n");
}

/// GET /metrics of a mount's endpoint.
fn scrape(port: u16) -> String {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut s = String::new();
    c.read_to_string(&mut s).unwrap();
    s
}

/// `convert --sign KEY` signs each record; a mount that trusts the key (`--trust`,
/// `-o verify_trust=`) takes the layers, one that trusts another key, or finds a record
/// changed after signing or unsigned, refuses with one line naming the layer.
#[test]
fn signed_records_are_checked_against_the_trusted_keys() {
    require_root();
    require_tool("openssl");
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    for k in ["a", "b"] {
        run_ok(
            Command::new("openssl")
                .args(["genpkey", "-algorithm", "ed25519", "-out"])
                .arg(t.join(format!("{k}.key"))),
        );
        run_ok(
            Command::new("openssl")
                .args(["pkey", "-pubout", "-in"])
                .arg(t.join(format!("{k}.key")))
                .arg("-out")
                .arg(t.join(format!("{k}.pub"))),
        );
    }
    let layout = image(t);
    let repo = t.join("repo");
    run_ok(
        Command::new(BIN)
            .args(["convert", "--repo"])
            .arg(&repo)
            .arg("--sign")
            .arg(t.join("a.key"))
            .arg(format!("oci:{}:v1", layout.display()))
            .args(["--name", "example.org/v/app:v1"]),
    );
    let app = layer_with(&repo, "hello.sh");
    let meta = app.parent().unwrap().join(".metadata");
    let mnt = t.join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mount = |args: &[&str]| {
        let out = run(Command::new(BIN)
            .args(["mount", "--repo"])
            .arg(&repo)
            .args(args)
            .args(transport_opts().into_iter().flat_map(|t| ["-o", t]))
            .args(["example.org/v/app:v1"])
            .arg(&mnt));
        let read = std::fs::read_to_string(mnt.join("keep.txt"));
        if is_mountpoint(&mnt) {
            let _ = Command::new("fusermount3").arg("-u").arg(&mnt).status();
        }
        let errors: Vec<String> = String::from_utf8_lossy(&out.stderr)
            .lines()
            .filter(|l| l.starts_with("stratafs:"))
            .map(String::from)
            .collect();
        (out.status.success(), read.ok(), errors)
    };
    let a_pub = t.join("a.pub").display().to_string();
    let b_pub = t.join("b.pub").display().to_string();
    let (ok, read, errors) = mount(&["--trust", &a_pub, "-o", "verify_cache=none"]);
    assert!(ok, "{errors:?}");
    assert_eq!(read.as_deref(), Some("kept\n"));
    let (ok, _, errors) = mount(&["-o", &format!("verify_trust={a_pub},verify_cache=none")]);
    assert!(ok, "{errors:?}");

    let refused = |args: &[&str], want: &[&str]| {
        let (ok, _, errors) = mount(args);
        assert!(!ok && !is_mountpoint(&mnt), "{args:?} mounted");
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(want.iter().all(|w| errors[0].contains(w)), "{errors:?}");
    };
    let layer = app.display().to_string();
    let untrusted = [layer.as_str(), "not signed by a trusted key"];
    // Another key: the manifest, checked first, is not signed by it.
    refused(
        &["--trust", &b_pub],
        &["manifest", "not signed by a trusted key"],
    );
    // Which layers make the image is signed too: a changed manifest is refused, and so is a
    // layer directory that is a symlink to another (signed) layer.
    let manifest = repo.join(".metadata/example.org/v/app:v1/manifest.json");
    let saved = std::fs::read(&manifest).unwrap();
    let mut changed = saved.clone();
    changed.push(b'\n');
    std::fs::write(&manifest, &changed).unwrap();
    refused(
        &["--trust", &a_pub],
        &["manifest", "not signed by a trusted key"],
    );
    std::fs::write(&manifest, &saved).unwrap();
    let app_dir = app.parent().unwrap().to_path_buf();
    let base_dir = layer_with(&repo, "bin/busybox")
        .parent()
        .unwrap()
        .to_path_buf();
    let aside = app_dir.with_extension("aside");
    std::fs::rename(&app_dir, &aside).unwrap();
    std::os::unix::fs::symlink(&base_dir, &app_dir).unwrap();
    refused(&["--trust", &a_pub], &["not of this one"]);
    std::fs::remove_file(&app_dir).unwrap();
    std::fs::rename(&aside, &app_dir).unwrap();
    // A record changed after it was signed (its last digest).
    let record = meta.join("record");
    let mut bytes = std::fs::read(&record).unwrap();
    let n = bytes.len();
    bytes[n - 1] ^= 1;
    std::fs::write(&record, &bytes).unwrap();
    refused(&["--trust", &a_pub], &untrusted);
    bytes[n - 1] ^= 1;
    std::fs::write(&record, &bytes).unwrap();
    std::fs::remove_file(meta.join("record.sig")).unwrap();
    refused(&["--trust", &a_pub], &[&layer, "no signature"]);
    // A bad key file is one line naming it.
    refused(
        &["--trust", "/etc/hostname"],
        &["verify_trust", "/etc/hostname"],
    );
}

/// Podman (rootful) runs an image of the repository's podmanStore — a flat root, checked
/// against the flat root's record — with `mountopt = "verify=on"`: untouched files run, a
/// changed one fails the container's command.
#[test]
fn podman_runs_verified_images_and_refuses_changed_files() {
    require_root();
    let tmp = shared_tempdir();
    let repo = converted(tmp.path());
    let app = layer_with(&repo, "hello.sh");
    let podman = common::podman::Store::with_mountopt(
        &tmp.path().join("podman"),
        Path::new(BIN),
        None,
        Some(&repo.join("podmanStore")),
        &["verify=on", "verify_cache=none"],
    );
    let out = podman.podman(&[
        "run",
        "--rm",
        "example.org/v/app:v1",
        "/bin/sh",
        "/hello.sh",
    ]);
    assert_eq!(out, "hello from kept\n");
    // The flat root's files are hard links to the layers': a change to one is a change to both.
    flip_byte(&app.join("byte.txt"), 3);
    let out = podman.try_podman(&[
        "run",
        "--rm",
        "example.org/v/app:v1",
        "/bin/cat",
        "/byte.txt",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("Input/output error"),
        "{err}"
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("oriGinal"));
    let out = podman.podman(&[
        "run",
        "--rm",
        "example.org/v/app:v1",
        "/bin/cat",
        "/keep.txt",
    ]);
    assert_eq!(out, "kept\n");
}

/// A writable mount copies up only checked content: appending to a changed file fails (the
/// copy-up reads it whole first), to an intact one works; with passthrough, a big file is
/// still served by the mount (its blocks are checked as read).
#[test]
fn copy_ups_and_passthrough_take_only_checked_content() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let repo = converted(tmp.path());
    let app = layer_with(&repo, "hello.sh");
    flip_byte(&app.join("byte.txt"), 3);
    flip_byte(&app.join("big.bin"), 2 * (1 << 20) + 100);
    let (upper, work, mnt) = (
        tmp.path().join("u"),
        tmp.path().join("w"),
        tmp.path().join("mnt"),
    );
    for d in [&upper, &work, &mnt] {
        std::fs::create_dir(d).unwrap();
    }
    run_ok(
        Command::new(BIN)
            .args(["mount", "--repo"])
            .arg(&repo)
            .arg("--upper")
            .arg(&upper)
            .arg("--work")
            .arg(&work)
            .args([
                "-o",
                &with_transport("verify=on,verify_cache=none"),
                "example.org/v/app:v1",
            ])
            .arg(&mnt),
    );
    assert_transport(&mnt);
    let append = |f: &str| {
        use std::io::Write;
        std::fs::OpenOptions::new()
            .append(true)
            .open(mnt.join(f))
            .and_then(|mut h| h.write_all(b"more\n"))
            .map_err(|e| e.raw_os_error())
    };
    assert_eq!(append("keep.txt"), Ok(()));
    assert_eq!(append("byte.txt"), Err(Some(libc::EIO)));
    assert_eq!(append("big.bin"), Err(Some(libc::EIO)));
    let _ = Command::new("fusermount3").arg("-u").arg(&mnt).status();
    assert_eq!(
        std::fs::read(upper.join("keep.txt")).unwrap(),
        b"kept\nmore\n"
    );
    assert!(!upper.join("byte.txt").exists() && !upper.join("big.bin").exists());

    // Read-only with passthrough (over /dev/fuse, whatever the suite's transport: a
    // passthrough open needs it): the small intact file may pass through, the big file's
    // changed block is still refused.
    run_ok(
        Command::new(BIN)
            .args(["mount", "--repo"])
            .arg(&repo)
            .args([
                "-o",
                "verify=on,verify_cache=none,passthrough,io_uring=off",
                "example.org/v/app:v1",
            ])
            .arg(&mnt),
    );
    let keep = std::fs::read(mnt.join("keep.txt"));
    let big = std::fs::read(mnt.join("big.bin"));
    let _ = Command::new("fusermount3").arg("-u").arg(&mnt).status();
    assert_eq!(keep.unwrap(), b"kept\n");
    assert_eq!(big.map_err(|e| e.raw_os_error()), Err(Some(libc::EIO)));
}

/// A check is remembered for a file, not for a name: a file renamed over one that was read
/// and checked is checked again when opened; a name made a hard link to another file (same
/// size, mode and owner) does not read as that file.
#[test]
fn a_file_put_in_place_after_its_check_is_checked_again() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let repo = converted(tmp.path());
    let app = layer_with(&repo, "hello.sh");
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let m = Mounted::new(
        &repo,
        "verify=on,verify_cache=none",
        &mnt,
        &tmp.path().join("log"),
    );
    assert_eq!(std::fs::read(mnt.join("keep.txt")).unwrap(), b"kept\n");
    assert_eq!(std::fs::read(mnt.join("aaaa.txt")).unwrap(), b"aaaa\n");
    // Same size, another file, renamed over the checked one.
    let t = app.join(".tampered");
    std::fs::write(&t, b"kepT\n").unwrap();
    std::fs::rename(&t, app.join("keep.txt")).unwrap();
    // bbbb.txt becomes another name of aaaa.txt.
    std::fs::remove_file(app.join("bbbb.txt")).unwrap();
    std::fs::hard_link(app.join("aaaa.txt"), app.join("bbbb.txt")).unwrap();
    std::fs::write("/proc/sys/vm/drop_caches", "3").unwrap();
    let eio = |f: &str| {
        let r = std::fs::read(mnt.join(f));
        assert_eq!(
            r.as_ref().map_err(|e| e.raw_os_error()),
            Err(Some(libc::EIO)),
            "{f}: {:?}\n{}",
            r.as_ref().map(|b| String::from_utf8_lossy(b).into_owned()),
            m.log()
        );
    };
    eio("keep.txt");
    eio("bbbb.txt");
    assert_eq!(std::fs::read(mnt.join("aaaa.txt")).unwrap(), b"aaaa\n");
}
