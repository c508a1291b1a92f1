//! The real thing underneath: a repository converted here, published into a CernVM-FS
//! stratum-0 on loopback, and used from a real CernVM-FS client mount (lazy, over HTTP, with
//! an empty cache). Checked against apache's access log of the client's requests:
//! - listing the whole image through `stratafs mount --repo` downloads no file content, and a
//!   job run under bwrap by an ordinary user downloads exactly the files the access log says
//!   it read;
//! - what the client adds is not image content: `.cvmfscatalog` markers, its magic `user.*`
//!   xattrs, the owner it claims, inode numbers it renumbers on a new revision;
//! - a trace saved from the access log makes the next mount download the job's files before
//!   the job asks, and `stratafs report` says so;
//! - rootless podman runs the image from the published `podmanStore`;
//! - `stratafs convert --publish cvmfs:REPO` publishes in one ingest, and a failing convert
//!   publishes nothing; an image whose layers delete files (whiteouts, opaque directories) is
//!   published entry for entry and, mounted from the client, equals `umoci unpack` of it.
//!
//! The CernVM-FS kit (client, server, scripts) is `../shared/cvmfs` beside the checkout, or
//! `$STRATAFS_CVMFS_KIT`; scripts/setup.sh installs it.

#[path = "../common/mod.rs"]
mod common;
mod publish;
mod verify;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use common::image::{busybox_base_tar, busybox_with_layer};
use common::layout::*;
use common::podman::Store;
use common::*;

const REPO: &str = "unpacked.test";
const CLIENT_LOG: &str = "/var/log/apache2/cvmfs-client-access.log";

/// One stratum-0 and one client: the tests take turns.
static SERIAL: Mutex<()> = Mutex::new(());

/// Start apache, the stratum-0 and the client (idempotent); remounts the client to the newest
/// revision. Returns the client's mount of the repository.
fn cvmfs_up() -> PathBuf {
    require_root();
    let mut first = false;
    FIRST_UP.call_once(|| {
        first = true;
        detach_dead_mounts();
    });
    let out = run_ok(Command::new("bash").arg(cvmfs_kit().join("cvmfs-up.sh")));
    let client = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(
        is_mountpoint(&client),
        "{} is not mounted",
        client.display()
    );
    if first {
        abort_stale_transaction();
    }
    client
}

/// Mends, once per run, what an earlier run killed from outside (a job runner ending stray
/// processes, the OOM killer) leaves behind.
static FIRST_UP: std::sync::Once = std::sync::Once::new();

/// A killed CernVM-FS daemon leaves its mount answering ENOTCONN, and the kit's scripts take
/// a mount point for a live mount. Detach dead ones (every copy stacked on the same point) so
/// that cvmfs-up.sh mounts afresh: the client, and the stratum-0's read-only mount with the
/// overlay on top of it.
fn detach_dead_mounts() {
    // The kernel may still answer stat from cached attributes; a listing asks the daemon.
    let dead = |p: &Path| {
        std::fs::read_dir(p).err().and_then(|e| e.raw_os_error()) == Some(libc::ENOTCONN)
    };
    let client = PathBuf::from(format!("/var/tmp/cvmfs-client/{REPO}"));
    let rdonly = PathBuf::from(format!("/var/spool/cvmfs/{REPO}/rdonly"));
    let union = PathBuf::from(format!("/cvmfs/{REPO}"));
    let mut stale = Vec::new();
    if dead(&client) {
        stale.push(client);
    }
    if dead(&rdonly) {
        stale.push(union);
        stale.push(rdonly);
    }
    for m in stale {
        while is_mountpoint(&m) {
            eprintln!("cvmfs: detaching the dead mount {}", m.display());
            run_ok(Command::new("umount").arg("-l").arg(&m));
        }
    }
}

/// A transaction a killed run left open would make every publish fail; the repository is
/// this suite's own.
fn abort_stale_transaction() {
    if Path::new(&format!("/var/spool/cvmfs/{REPO}/in_transaction.lock")).exists() {
        eprintln!("cvmfs: aborting the transaction an earlier run left open");
        run_ok(Command::new("cvmfs_server").args(["abort", "-f", REPO]));
    }
}

/// Publish `dir` at `/cvmfs/REPO/<sub>` in one transaction and make the client see it.
fn publish(dir: &Path, sub: &str) -> PathBuf {
    run_ok(
        Command::new("bash")
            .arg(cvmfs_kit().join("cvmfs-publish.sh"))
            .arg(dir)
            .arg(sub),
    );
    let client = cvmfs_up();
    let p = client.join(sub);
    wait_until("the client sees the new revision", || p.is_dir());
    p
}

/// Remove `/cvmfs/REPO/<sub>` in one publish. By `ingest -d`: a transaction that deletes a
/// file named `.wh.NAME` reads it as a whiteout and fails.
fn unpublish(sub: &str) {
    run_ok(Command::new("cvmfs_server").args(["ingest", "-d", sub, REPO]));
}

/// A name no earlier run published (the stratum-0 outlives test runs).
fn unique() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{}-{nanos}", std::process::id())
}

/// Empty the client's cache: every object is downloaded again on first use.
fn drop_client_cache() {
    run_ok(Command::new("cvmfs_talk").args(["-i", REPO, "cleanup", "0"]));
    std::fs::write("/proc/sys/vm/drop_caches", "3").unwrap();
}

fn log_lines() -> usize {
    std::fs::read_to_string(CLIENT_LOG)
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

/// The data objects (`xx/hash[suffix]`) the client downloaded after line `mark` of the log.
fn data_objects_since(mark: usize) -> Vec<String> {
    let text = std::fs::read_to_string(CLIENT_LOG).unwrap();
    text.lines()
        .skip(mark)
        .filter_map(|l| {
            let path = l.split('"').nth(1)?.split(' ').nth(1)?;
            let rest = path.strip_prefix(&format!("/cvmfs/{REPO}/data/"))?;
            Some(rest.to_string())
        })
        .collect()
}

/// Content objects (hashes, no suffix) the client downloaded after line `mark` of the log.
fn downloads_since(mark: usize) -> BTreeSet<String> {
    data_objects_since(mark)
        .into_iter()
        .filter_map(|rest| {
            let (xx, h) = rest.split_once('/')?;
            // Catalogs (C), chunks (P) and the like carry a suffix; whole files do not.
            h.bytes()
                .all(|b| b.is_ascii_hexdigit())
                .then(|| format!("{xx}{h}"))
        })
        .collect()
}

/// The content hash the client knows for a file (a magic xattr: no download).
fn content_hash(p: &Path) -> String {
    let mut buf = [0u8; 256];
    let n = rustix::fs::getxattr(p, "user.hash", &mut buf[..])
        .unwrap_or_else(|e| panic!("user.hash of {}: {e}", p.display()));
    String::from_utf8_lossy(&buf[..n]).trim().to_string()
}

/// Every regular file of the image's layer directories on the client, with its hash.
fn layer_file_hashes(layers: &[PathBuf]) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let mut stack = layers.to_vec();
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() && e.metadata().unwrap().len() > 0 {
                out.push((e.path(), content_hash(&e.path())));
            }
        }
    }
    out
}

/// Busybox plus an application layer with what a real image has and publishing changes: a
/// hard link, a directory owned by an ordinary user, nested directories.
fn app_image(dir: &Path) -> PathBuf {
    let root = dir.join("app-root");
    for d in ["proc", "dev", "etc", "opt/app/data", "home/user"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(root.join("etc/msg"), "hello from cvmfs\n").unwrap();
    std::fs::write(
        root.join("opt/app/run.sh"),
        "cat /etc/msg; cat /opt/app/data/one; echo done\n",
    )
    .unwrap();
    for i in 0..40 {
        std::fs::write(
            root.join(format!("opt/app/data/f{i:02}")),
            format!("data file {i}\n").repeat(50),
        )
        .unwrap();
    }
    std::fs::write(
        root.join("opt/app/data/one"),
        "the one file the job reads\n",
    )
    .unwrap();
    std::fs::hard_link(root.join("opt/app/data/one"), root.join("opt/app/one-link")).unwrap();
    run_ok(
        Command::new("chown")
            .args(["1000:1000"])
            .arg(root.join("home/user")),
    );
    busybox_with_layer(dir, &root).0
}

fn convert(repo: &Path, layout: &Path, name: &str, extra: &[&str]) -> std::process::Output {
    run(Command::new(BIN)
        .arg("convert")
        .arg("--repo")
        .arg(repo)
        .args(extra)
        .arg(format!("oci:{}:v1", layout.display()))
        .arg("--name")
        .arg(name))
}

/// Convert the image at `layout` into `<dir>/repo` as `name`, and publish it under a fresh
/// `<area>/<unique>`: (the repository, its place under the stratum-0, the client's view).
fn convert_and_publish(
    dir: &Path,
    layout: &Path,
    name: &str,
    area: &str,
) -> (PathBuf, String, PathBuf) {
    let repo = dir.join("repo");
    let out = convert(&repo, layout, name, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sub = format!("{area}/{}", unique());
    let client_repo = publish(&repo, &sub);
    (repo, sub, client_repo)
}

/// A directory the test user owns (mount points, access logs).
fn user_dir(p: &Path) -> PathBuf {
    std::fs::create_dir_all(p).unwrap();
    run_ok(Command::new("chown").arg("stratafs-test").arg(p));
    p.to_path_buf()
}

fn as_user(args: &[&std::ffi::OsStr]) -> std::process::Output {
    run(Command::new("runuser")
        .args(["-u", "stratafs-test", "--"])
        .args(args))
}

/// `stratafs mount --repo` as the test user; unmounted when dropped.
struct UserMount(PathBuf);
impl UserMount {
    fn new(repo: &Path, image: &str, mnt: &Path, extra: &[&str]) -> UserMount {
        // allow_other: the test, as root, looks at the mount too.
        let mut args: Vec<&std::ffi::OsStr> = vec![
            BIN.as_ref(),
            "mount".as_ref(),
            "-o".as_ref(),
            "allow_other".as_ref(),
            "--repo".as_ref(),
            repo.as_os_str(),
        ];
        args.extend(extra.iter().map(std::ffi::OsStr::new));
        args.extend([std::ffi::OsStr::new(image), mnt.as_os_str()]);
        let out = as_user(&args);
        assert!(
            out.status.success(),
            "mount as stratafs-test: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        UserMount(mnt.to_path_buf())
    }
}
impl Drop for UserMount {
    fn drop(&mut self) {
        let _ = as_user(&["fusermount3".as_ref(), "-u".as_ref(), self.0.as_os_str()]);
        // The daemon writes the access log as it exits.
        wait_until("the mount to go", || !is_mountpoint(&self.0));
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
}

/// `script` run by /bin/sh as the ordinary user, in bubblewrap with `mnt` as its root (`bind`:
/// `--bind` or `--ro-bind`).
fn in_bwrap(mnt: &Path, bind: &str, script: &str) -> std::process::Output {
    as_user(&[
        "bwrap".as_ref(),
        "--unshare-all".as_ref(),
        bind.as_ref(),
        mnt.as_os_str(),
        "/".as_ref(),
        "--proc".as_ref(),
        "/proc".as_ref(),
        "--dev".as_ref(),
        "/dev".as_ref(),
        "/bin/sh".as_ref(),
        script.as_ref(),
    ])
}

fn job(mnt: &Path) -> String {
    let out = in_bwrap(mnt, "--bind", "/opt/app/run.sh");
    assert!(
        out.status.success(),
        "job: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Paths (merged) the access log says were read.
fn logged_paths(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["path"].as_str().unwrap().to_string()
        })
        .collect()
}

/// The layer directories on the client (the test image's two: no path is in both).
fn client_layers(client_repo: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(client_repo.join(".layers"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().unwrap().is_dir())
        .flat_map(|xx| std::fs::read_dir(xx.path()).unwrap().filter_map(|e| e.ok()))
        .map(|e| e.path().join("layerfs"))
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs
}

/// Where the file at merged path `rel` lives on the client (the topmost layer holding it).
/// One test at a time on the client, with the tools a job on it needs and the kit up.
fn job_on_the_client() -> std::sync::MutexGuard<'static, ()> {
    let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    for t in ["bwrap", "runuser", "cvmfs_talk", "fusermount3"] {
        require_tool(t);
    }
    cvmfs_up();
    serial
}

fn on_client(layers: &[PathBuf], rel: &str) -> PathBuf {
    layers
        .iter()
        .map(|l| l.join(rel))
        .find(|p| p.symlink_metadata().is_ok())
        .unwrap_or_else(|| panic!("{rel} is in no layer"))
}

#[test]
fn an_image_from_a_real_cernvm_fs_client() {
    let _serial = job_on_the_client();
    let tmp = shared_tempdir();
    let layout = app_image(tmp.path());
    let (repo, sub, client_repo) =
        convert_and_publish(tmp.path(), &layout, "example.org/sci/app:1", "stratafs-e2e");
    let layers = client_layers(&client_repo);
    assert_eq!(layers.len(), 2, "{layers:?}");
    // What the client shows underneath, so the checks below mean something.
    assert!(
        layers.iter().all(|l| l.join(".cvmfscatalog").is_file()),
        "layer directories carry catalog markers"
    );
    let etc_msg = on_client(&layers, "etc/msg");
    let owner = std::fs::metadata(&etc_msg).unwrap();
    let claimed = owner.uid() != 0;
    assert_ne!(
        std::fs::metadata(on_client(&layers, "opt/app/one-link"))
            .unwrap()
            .ino(),
        std::fs::metadata(on_client(&layers, "opt/app/data/one"))
            .unwrap()
            .ino(),
        "publishing splits hard links"
    );

    // The image by name, as stratafs images lists it.
    let images = run_ok(
        Command::new(BIN)
            .arg("images")
            .arg("--repo")
            .arg(&client_repo),
    );
    let images = String::from_utf8_lossy(&images.stdout);
    assert!(images.contains("example.org/sci/app:1"), "{images}");

    drop_client_cache();
    let hashes = layer_file_hashes(&layers);
    let work = user_dir(&tmp.path().join("work"));
    let mnt = user_dir(&work.join("mnt"));

    // 1. Listing everything downloads no file content.
    let mark = log_lines();
    {
        let _m = UserMount::new(
            &client_repo,
            "example.org/sci/app:1",
            &mnt,
            &["--no-prefetch"],
        );
        let listed = run_ok(
            Command::new("find")
                .arg(&mnt)
                .args(["-printf", "%p %s %u %m\n"]),
        );
        let listed = String::from_utf8_lossy(&listed.stdout);
        assert!(listed.contains("opt/app/data/f39"), "{listed}");
        assert!(
            !listed.contains(".cvmfscatalog"),
            "catalog markers are not image content:\n{listed}"
        );
        let content: BTreeSet<&String> = hashes.iter().map(|(_, h)| h).collect();
        let got = downloads_since(mark);
        let leaked: Vec<_> = got.iter().filter(|h| content.contains(h)).collect();
        assert!(
            leaked.is_empty(),
            "listing downloaded file content: {leaked:?}"
        );

        // Owners: the image's (root), whatever the client claims.
        let st = std::fs::metadata(mnt.join("etc/msg")).unwrap();
        assert_eq!((st.uid(), st.gid()), (0, 0), "claimed ownership: {claimed}");
        // The client's magic xattrs are not the image's.
        for x in ["user.fqrn", "user.pid", "user.hash", "user.revision"] {
            let mut buf = [0u8; 256];
            assert_eq!(
                rustix::fs::getxattr(mnt.join("etc/msg"), x, &mut buf[..]).err(),
                Some(rustix::io::Errno::NODATA),
                "{x} must not show through the mount"
            );
        }
    }

    // 2. The job downloads what it reads, and nothing else of the image.
    drop_client_cache();
    let log1 = work.join("run1.log");
    let mark = log_lines();
    let inos_before;
    {
        let _m = UserMount::new(
            &client_repo,
            "example.org/sci/app:1",
            &mnt,
            &["--no-prefetch", "--access-log", log1.to_str().unwrap()],
        );
        assert_eq!(
            job(&mnt),
            "hello from cvmfs\nthe one file the job reads\ndone\n"
        );
        inos_before = (
            std::fs::metadata(mnt.join("etc/msg")).unwrap().ino(),
            std::fs::metadata(mnt.join("opt/app/run.sh")).unwrap().ino(),
        );
    }
    let read = logged_paths(&log1);
    for want in [
        "bin/busybox",
        "opt/app/run.sh",
        "etc/msg",
        "opt/app/data/one",
    ] {
        assert!(read.iter().any(|p| p == want), "{want} not in {read:?}");
    }
    let expected: BTreeSet<String> = read
        .iter()
        .map(|p| content_hash(&on_client(&layers, p)))
        .collect();
    let content: BTreeSet<String> = hashes.iter().map(|(_, h)| h.clone()).collect();
    let downloaded: BTreeSet<String> = downloads_since(mark)
        .into_iter()
        .filter(|h| content.contains(h))
        .collect();
    assert_eq!(
        downloaded, expected,
        "downloaded content objects == the files the access log lists"
    );

    // 3. A trace from that log, published with the image, makes the next mount fetch the
    //    job's files before the job runs.
    run_ok(
        Command::new(BIN)
            .args(["trace", "--repo"])
            .arg(&repo)
            .arg(&log1),
    );
    let client_repo = publish(&repo, &sub);
    drop_client_cache();
    let log2 = work.join("run2.log");
    let mark = log_lines();
    {
        let _m = UserMount::new(
            &client_repo,
            "example.org/sci/app:1",
            &mnt,
            &["--access-log", log2.to_str().unwrap()],
        );
        wait_until("the prefetch to download the traced files", || {
            downloads_since(mark).is_superset(&expected)
        });
        assert_eq!(
            job(&mnt),
            "hello from cvmfs\nthe one file the job reads\ndone\n"
        );
        // Inode numbers stay those of the first mount, though the client loaded a new
        // revision (and numbers its inodes afresh).
        assert_eq!(
            (
                std::fs::metadata(mnt.join("etc/msg")).unwrap().ino(),
                std::fs::metadata(mnt.join("opt/app/run.sh")).unwrap().ino(),
            ),
            inos_before
        );
    }
    let report = run_ok(Command::new(BIN).arg("report").arg(&log2));
    let report = String::from_utf8_lossy(&report.stdout);
    // Every read found its file fetched, or (a race of milliseconds after the download)
    // still being fetched: none had to start a download of its own.
    let line = report
        .lines()
        .find(|l| l.starts_with("reads served by the prefetch:"))
        .unwrap_or_else(|| panic!("{report}"));
    let nums: Vec<usize> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    // served, of, (percent whole, percent tenths), fetching, not yet, skipped, not in trace
    let (served, of, fetching) = (nums[0], nums[1], nums[4]);
    assert_eq!(of, read.len(), "{report}");
    assert_eq!(served + fetching, read.len(), "{report}");
    assert!(served > 0, "{report}");

    // 4. Rootless podman runs it from the published podmanStore.
    let podman = Store::new(
        &tmp.path().join("podman"),
        Path::new(BIN),
        Some("stratafs-test"),
        Some(&client_repo.join("podmanStore")),
    );
    let out = podman.podman(&[
        "run",
        "--rm",
        "example.org/sci/app:1",
        "/bin/sh",
        "/opt/app/run.sh",
    ]);
    assert_eq!(out, "hello from cvmfs\nthe one file the job reads\ndone\n");
    let ls = podman.podman(&["run", "--rm", "example.org/sci/app:1", "/bin/ls", "-a", "/"]);
    assert!(!ls.contains(".cvmfscatalog"), "{ls}");

    drop(podman);
    // Leave the stratum-0 small: the next run publishes its own copy.
    unpublish(&sub);
}
