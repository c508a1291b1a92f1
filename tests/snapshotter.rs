//! `stratafs snapshotter` under a real containerd (Debian's 1.6, private root, state and
//! socket): images converted into a repository and pushed to a loopback docker-registry are
//! pulled with `ctr-remote images rpull` without their layer blobs, run with `ctr run`, and
//! survive a kill -9 of the snapshotter.

mod common;
#[path = "common/cri.rs"]
mod cri;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::image::Podman;
use common::layout::TestRegistry;
use common::layout::free_port;
use common::*;
use cri::Cri;

/// A private containerd with the snapshotter as its `stratafs` proxy plugin.
struct Containerd {
    dir: PathBuf,
    address: PathBuf,
    child: Child,
    snap: Option<Child>,
    /// Extra arguments of the snapshotter (`--metrics-address`).
    snap_args: Vec<String>,
    repo: PathBuf,
    /// PATH with `stratafs` first, for mount.fuse3 started by containerd and its shims.
    path: String,
}

impl Containerd {
    /// `cri`: the CRI plugin's settings; `None` disables the plugin.
    fn start(dir: &Path, repo: &Path, cri: Option<&str>) -> Containerd {
        Containerd::start_with(dir, repo, cri, &[])
    }

    fn start_with(dir: &Path, repo: &Path, cri: Option<&str>, snap_args: &[String]) -> Containerd {
        for t in ["containerd", "ctr", "ctr-remote", "runc", "mount.fuse3"] {
            require_tool(t);
        }
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let _ = std::fs::remove_file(bin.join("stratafs"));
        std::os::unix::fs::symlink(BIN, bin.join("stratafs")).unwrap();
        let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
        let address = dir.join("containerd.sock");
        std::fs::write(
            dir.join("config.toml"),
            format!(
                "version = 2\nroot = \"{0}/root\"\nstate = \"{0}/state\"\n{2}\n\
                 [grpc]\n  address = \"{1}\"\n\
                 [proxy_plugins.stratafs]\n  type = \"snapshot\"\n  address = \"{0}/snap.sock\"\n\
                 {3}",
                dir.display(),
                address.display(),
                if cri.is_none() {
                    "disabled_plugins = [\"io.containerd.grpc.v1.cri\"]"
                } else {
                    ""
                },
                cri.unwrap_or("")
            ),
        )
        .unwrap();
        let mut c = Containerd {
            dir: dir.to_path_buf(),
            address: address.clone(),
            child: Command::new("containerd")
                .arg("--config")
                .arg(dir.join("config.toml"))
                .env("PATH", &path)
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.join("containerd.log")).unwrap())
                .spawn()
                .expect("start containerd"),
            snap: None,
            snap_args: snap_args.to_vec(),
            repo: repo.to_path_buf(),
            path,
        };
        c.start_snapshotter();
        wait_until("containerd socket", || address.exists());
        c
    }

    fn start_snapshotter(&mut self) {
        let sock = self.dir.join("snap.sock");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("snapshotter.log"))
            .unwrap();
        self.snap = Some(
            Command::new(BIN)
                .arg("snapshotter")
                .arg("--repo")
                .arg(&self.repo)
                .arg("--root")
                .arg(self.dir.join("snap-state"))
                .arg("--address")
                .arg(&sock)
                .args(&self.snap_args)
                .env("STRATAFS_LOG", "info,stratafs=debug")
                .stderr(log)
                .spawn()
                .expect("start stratafs snapshotter"),
        );
        wait_until("snapshotter socket", || {
            std::os::unix::net::UnixStream::connect(&sock).is_ok()
        });
    }

    fn kill_snapshotter(&mut self) {
        if let Some(mut s) = self.snap.take() {
            let _ = s.kill();
            let _ = s.wait();
        }
    }

    fn cmd(&self, prog: &str) -> Command {
        let mut c = Command::new(prog);
        c.arg("--address")
            .arg(&self.address)
            .env("PATH", &self.path);
        c
    }

    /// `ctr-remote images rpull` into the stratafs snapshotter: it sends each layer's digest.
    fn rpull(&self, image: &str) {
        self.ok(
            "ctr-remote",
            &[
                "images",
                "rpull",
                "--plain-http",
                "--snapshotter",
                "stratafs",
                image,
            ],
        );
    }

    /// Run `ctr`/`ctr-remote` and return stdout; fail with both streams and the logs.
    fn ok(&self, prog: &str, args: &[&str]) -> String {
        let out = run(self.cmd(prog).args(args));
        assert!(
            out.status.success(),
            "{prog} {args:?} failed:\n{}{}\n--- snapshotter log (tail):\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log_tail("snapshotter.log")
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn log_tail(&self, name: &str) -> String {
        let log = std::fs::read_to_string(self.dir.join(name)).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    fn layer_blobs_in_content_store(&self, layers: &[String]) -> Vec<String> {
        self.layer_blobs_in_namespace("default", layers)
    }

    fn layer_blobs_in_namespace(&self, namespace: &str, layers: &[String]) -> Vec<String> {
        let content = self.ok("ctr", &["-n", namespace, "content", "ls", "-q"]);
        layers
            .iter()
            .filter(|l| content.lines().any(|c| c.trim() == l.as_str()))
            .cloned()
            .collect()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Containers first (their rootfs mounts go with them), then the daemons.
        if let Ok(out) = self.cmd("ctr").args(["tasks", "ls", "-q"]).output() {
            for id in String::from_utf8_lossy(&out.stdout).lines() {
                let _ = self
                    .cmd("ctr")
                    .args(["tasks", "kill", "-s", "9", id])
                    .output();
                std::thread::sleep(Duration::from_millis(200));
                let _ = self.cmd("ctr").args(["tasks", "rm", "-f", id]).output();
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.kill_snapshotter();
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let dir = self.dir.to_string_lossy().to_string();
        let mut mps: Vec<&str> = info
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| m.starts_with(&dir))
            .collect();
        mps.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mps {
            let _ = Command::new("umount").arg("-l").arg(m).status();
        }
    }
}

/// The compressed layer digests of `image` in the registry.
fn registry_layers(reg: &TestRegistry, image: &str) -> Vec<String> {
    let out = run_ok(Command::new("skopeo").args([
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{}/{image}", reg.host()),
    ]));
    let m: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    m["layers"]
        .as_array()
        .expect("a single-platform manifest")
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect()
}

/// Two images in a loopback registry, `snap/app:1` converted into a repository and
/// `snap/extra:1` (one more layer) not.
struct Fixture {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    reg: TestRegistry,
    repo: PathBuf,
}

fn fixture() -> Fixture {
    require_root();
    let tmp = tempfile::tempdir_in("/var/tmp").unwrap();
    let dir = tmp.path().to_path_buf();
    let podman = Podman::new(&dir.join("podman"));
    podman.import_busybox_base();
    podman.build(
        "localhost/snap-app",
        "FROM localhost/strata-base\nRUN echo hello > /greeting && echo doomed > /victim\n\
         RUN rm /victim && echo two > /second\n",
    );
    podman.build(
        "localhost/snap-extra",
        "FROM localhost/snap-app\nRUN echo extra > /extra\n",
    );
    // The pod sandbox ("pause") image of the CRI test.
    podman.build(
        "localhost/snap-pause",
        "FROM localhost/strata-base\nENTRYPOINT [\"/bin/busybox\", \"sleep\", \"1000000\"]\n",
    );
    let reg = TestRegistry::start(&dir.join("registry"), &[]);
    for (img, repo) in [
        ("localhost/snap-app", "snap/app"),
        ("localhost/snap-extra", "snap/extra"),
        ("localhost/snap-pause", "snap/pause"),
    ] {
        reg.push(&podman.storage_ref(img), repo, "1", None, false);
    }
    let repo = dir.join("repo");
    run_ok(
        Command::new(BIN)
            .args(["convert", "--repo"])
            .arg(&repo)
            .arg(format!("http://{}/snap/app:1", reg.host())),
    );
    Fixture {
        _tmp: tmp,
        dir,
        reg,
        repo,
    }
}

#[test]
fn containerd_runs_images_from_the_repository_without_fetching_layers() {
    let fx = fixture();
    let app_layers = registry_layers(&fx.reg, "snap/app:1");
    let extra_layers = registry_layers(&fx.reg, "snap/extra:1");
    assert_eq!(extra_layers.len(), app_layers.len() + 1);
    let repo_before = tree_listing(&fx.repo);
    let mut ctrd = Containerd::start(&fx.dir.join("ctrd"), &fx.repo, None);

    // Every layer is in the repository: containerd fetches none.
    let app = format!("{}/snap/app:1", fx.reg.host());
    ctrd.rpull(&app);
    assert_eq!(
        ctrd.layer_blobs_in_content_store(&app_layers),
        Vec::<String>::new(),
        "layer blobs were downloaded although the repository has them"
    );

    // The container's root is a stratafs mount of the repository's layers: the whiteout of
    // the top layer hides /victim, and writes stay out of the repository.
    let out = ctrd.ok(
        "ctr",
        &[
            "run", "--rm", "--snapshotter", "stratafs", &app, "c1", "sh", "-c",
            "cat /greeting /second; test -e /victim && echo victim-visible; \
             echo written > /new-file && cat /new-file; \
             while read dev mp type rest; do [ \"$mp\" = / ] && echo root=$type; done < /proc/mounts; true",
        ],
    );
    assert_eq!(
        out, "hello\ntwo\nwritten\nroot=fuse.stratafs\n",
        "container output"
    );
    let leaked = run_ok(
        Command::new("find")
            .arg(&fx.repo)
            .args(["-name", "new-file"]),
    );
    assert!(
        leaked.stdout.is_empty(),
        "a container write reached the repository"
    );

    // The container outlives its mount's server: a workload in it reads, writes, renames and
    // appends while the server of its root is SIGKILLed; it sees no error.
    let script = "exec 2>&1; err=0; exec 7>>/tmp/kept; \
        for i in $(seq 1 1500); do \
          [ \"$(cat /greeting)\" = hello ] || { echo BAD read $i; err=1; }; \
          echo $i > /tmp/n$i || { echo BAD write $i; err=1; }; \
          mv /tmp/n$i /tmp/m$((i % 10)) || { echo BAD mv $i; err=1; }; \
          echo $i >&7 || { echo BAD append $i; err=1; }; \
        done; exec 7>&-; [ $(wc -l < /tmp/kept) = 1500 ] || { echo BAD kept; err=1; }; \
        echo \"done err $err\"";
    let job = ctrd
        .cmd("ctr")
        .args([
            "run",
            "--rm",
            "--snapshotter",
            "stratafs",
            &app,
            "c-kill",
            "sh",
            "-c",
            script,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut kills = 0;
    let start = std::time::Instant::now();
    let mut job = job;
    while kills < 3
        && job.try_wait().unwrap().is_none()
        && start.elapsed() < Duration::from_secs(120)
    {
        std::thread::sleep(Duration::from_millis(300));
        // The snapshotter runs `stratafs -o OPTIONS… stratafs STATE/snapshots/N/mnt`.
        kills += kill_servers("stratafs .*/snapshots/[0-9]+/mnt( |$)", None);
    }
    let out = job.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.trim().ends_with("done err 0") && !said.contains("BAD"),
        "the container saw an error: {said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        kills >= 2,
        "only {kills} servers killed: the workload ended too soon"
    );

    // One layer that the repository lacks: only that blob is fetched.
    let extra = format!("{}/snap/extra:1", fx.reg.host());
    ctrd.rpull(&extra);
    assert_eq!(
        ctrd.layer_blobs_in_content_store(&extra_layers),
        vec![extra_layers.last().unwrap().clone()],
        "exactly the layer missing from the repository is downloaded"
    );
    let out = ctrd.ok(
        "ctr",
        &[
            "run",
            "--rm",
            "--snapshotter",
            "stratafs",
            &extra,
            "c2",
            "sh",
            "-c",
            "cat /extra /greeting; test -e /victim && echo victim-visible; true",
        ],
    );
    assert_eq!(out, "extra\nhello\n");

    // kill -9 the snapshotter under a running container; a new one knows every snapshot.
    ctrd.ok(
        "ctr",
        &[
            "run",
            "-d",
            "--snapshotter",
            "stratafs",
            &app,
            "long",
            "busybox",
            "sleep",
            "600",
        ],
    );
    let before = ctrd.ok("ctr", &["snapshots", "--snapshotter", "stratafs", "ls"]);
    ctrd.kill_snapshotter();
    ctrd.start_snapshotter();
    // containerd redials a proxy plugin with a backoff of up to 3 s; until then its calls
    // fail with "connection refused".
    wait_until("containerd reconnecting to the snapshotter", || {
        ctrd.cmd("ctr")
            .args(["snapshots", "--snapshotter", "stratafs", "ls"])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    let after = ctrd.ok("ctr", &["snapshots", "--snapshotter", "stratafs", "ls"]);
    assert_eq!(before, after, "snapshots after a restart");
    let tasks = ctrd.ok("ctr", &["tasks", "ls"]);
    assert!(
        tasks
            .lines()
            .any(|l| l.starts_with("long") && l.contains("RUNNING")),
        "the container survives the snapshotter's restart: {tasks}"
    );
    let out = ctrd.ok(
        "ctr",
        &[
            "run",
            "--rm",
            "--snapshotter",
            "stratafs",
            &app,
            "c3",
            "cat",
            "/greeting",
        ],
    );
    assert_eq!(out, "hello\n");
    let out = ctrd.ok(
        "ctr",
        &["tasks", "exec", "--exec-id", "e1", "long", "cat", "/second"],
    );
    assert_eq!(out, "two\n");

    // Stat, Update (labels) and Usage of the running container's active snapshot.
    let sn = |args: &[&str]| {
        let mut a = vec!["snapshots", "--snapshotter", "stratafs"];
        a.extend_from_slice(args);
        ctrd.ok("ctr", &a)
    };
    sn(&["label", "long", "stratafs.test=yes"]);
    let info = sn(&["info", "long"]);
    assert!(
        info.contains("\"stratafs.test\": \"yes\"") && info.contains("\"Kind\": \"Active\""),
        "ctr snapshots info: {info}"
    );
    let usage = sn(&["usage", "long"]);
    assert!(
        usage.lines().any(|l| l.starts_with("long")),
        "ctr snapshots usage: {usage}"
    );
    let missing = run(ctrd.cmd("ctr").args([
        "snapshots",
        "--snapshotter",
        "stratafs",
        "info",
        "no-such-snapshot",
    ]));
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(
        !missing.status.success() && err.contains("not found"),
        "info of a missing snapshot: {err}"
    );

    // A root whose daemons died (a reboot, the OOM killer) is mounted again when containerd
    // next asks for the snapshot's mounts; a removed snapshot's root is unmounted.
    ctrd.ok(
        "ctr",
        &[
            "containers",
            "create",
            "--snapshotter",
            "stratafs",
            &app,
            "idle",
            "true",
        ],
    );
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(ctrd.dir.join("snap-state/metadata.json")).unwrap())
            .unwrap();
    // containerd names it NAMESPACE/N/KEY.
    let id = state["snapshots"]
        .as_object()
        .and_then(|m| m.iter().find(|(k, _)| k.ends_with("/idle")))
        .and_then(|(_, r)| r["id"].as_u64())
        .unwrap_or_else(|| panic!("the idle container's snapshot in {state}"));
    let mnt = ctrd.dir.join(format!("snap-state/snapshots/{id}/mnt"));
    assert_eq!(
        std::fs::read_to_string(mnt.join("greeting")).unwrap(),
        "hello\n"
    );
    run(Command::new("pkill").args(["-9", "-f", &format!("stratafs .*{}( |$)", mnt.display())]));
    wait_until("the root's daemons gone", || {
        // Its attributes are cached: a stat the kernel must send shows the dead connection.
        rustix::fs::statx(
            rustix::fs::CWD,
            &mnt,
            rustix::fs::AtFlags::STATX_FORCE_SYNC,
            rustix::fs::StatxFlags::BASIC_STATS,
        )
        .is_err_and(|e| e == rustix::io::Errno::NOTCONN)
    });
    sn(&["mounts", "/unused", "idle"]);
    assert_eq!(
        std::fs::read_to_string(mnt.join("greeting")).unwrap(),
        "hello\n",
        "the dead root was not mounted again"
    );
    ctrd.ok("ctr", &["containers", "rm", "idle"]);
    wait_until("the removed snapshot's root unmounted", || {
        !is_mountpoint(&mnt)
    });

    // Removing the images lets containerd's garbage collector remove every snapshot; the
    // repository's layers are only borrowed and stay as they were.
    ctrd.ok("ctr", &["tasks", "kill", "-s", "9", "long"]);
    wait_until("the task to stop", || {
        ctrd.ok("ctr", &["tasks", "ls"])
            .lines()
            .all(|l| !l.starts_with("long") || l.contains("STOPPED"))
    });
    ctrd.ok("ctr", &["tasks", "rm", "long"]);
    ctrd.ok("ctr", &["containers", "rm", "long"]);
    ctrd.ok("ctr", &["images", "rm", "--sync", &app, &extra]);
    let left = ctrd.ok("ctr", &["snapshots", "--snapshotter", "stratafs", "ls"]);
    assert_eq!(left.lines().count(), 1, "snapshots left: {left}");
    assert_eq!(
        tree_listing(&fx.repo),
        repo_before,
        "the repository changed"
    );
}

/// Every path under `dir` with its size, sorted.
fn tree_listing(dir: &Path) -> String {
    let out = run_ok(
        Command::new("find")
            .arg(dir)
            .args(["-printf", "%P %s %y\n"]),
    );
    let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect();
    lines.sort();
    lines.join("\n")
}

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

#[test]
fn kubernetes_cri_runs_a_pod_from_the_repository() {
    let fx = fixture();
    let app_layers = registry_layers(&fx.reg, "snap/app:1");
    let host = fx.reg.host();
    let dir = fx.dir.join("cri");
    std::fs::create_dir_all(dir.join("pods")).unwrap();
    // restrict_oom_score_adj: the test may run without CAP_SYS_RESOURCE (in a container),
    // where the sandbox's default oom_score_adj of -998 cannot be set.
    let cri_config = format!(
        "[plugins.\"io.containerd.grpc.v1.cri\"]\n\
         \x20 sandbox_image = \"{host}/snap/pause:1\"\n\
         \x20 restrict_oom_score_adj = true\n\
         [plugins.\"io.containerd.grpc.v1.cri\".containerd]\n\
         \x20 snapshotter = \"stratafs\"\n\
         \x20 disable_snapshot_annotations = false\n\
         [plugins.\"io.containerd.grpc.v1.cri\".cni]\n\
         \x20 bin_dir = \"{0}/cni-bin\"\n\
         \x20 conf_dir = \"{0}/cni-conf\"\n\
         [plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors.\"{host}\"]\n\
         \x20 endpoint = [\"http://{host}\"]\n",
        dir.display()
    );
    let ctrd = Containerd::start(&dir, &fx.repo, Some(&cri_config));
    let fail = |e: String| -> ! { panic!("{e}\n{}", ctrd.log_tail("containerd.log")) };
    let mut cri = Cri::connect(&ctrd.address).unwrap_or_else(|e| fail(e));
    let app = format!("{host}/snap/app:1");
    let image_ref = cri.pull(&app).unwrap_or_else(|e| fail(e));
    assert!(!image_ref.is_empty(), "PullImage returned no image ref");
    let pod = cri
        .run_pod("snap-pod", &dir.join("pods"))
        .unwrap_or_else(|e| fail(e));
    let log = cri
        .run_container(
            &pod,
            &image_ref,
            &[
                "sh",
                "-c",
                "cat /greeting /second; test -e /victim && echo victim-visible; \
                 while read dev mp type rest; do [ \"$mp\" = / ] && echo root=$type; \
                 done < /proc/mounts; true",
            ],
        )
        .unwrap_or_else(|e| fail(e));
    assert_eq!(log, ["hello", "two", "root=fuse.stratafs"], "container log");
    assert_eq!(
        ctrd.layer_blobs_in_namespace("k8s.io", &app_layers),
        Vec::<String>::new(),
        "the CRI pull downloaded layer blobs the repository has"
    );
    cri.remove_pod(pod).unwrap_or_else(|e| fail(e));
    assert_eq!(
        cri.pod_count().unwrap_or_else(|e| fail(e)),
        0,
        "pods left after RemovePodSandbox"
    );
}

fn http_get(url: &str) -> String {
    ureq::get(url)
        .call()
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .body_mut()
        .read_to_string()
        .unwrap()
}

/// `promtool check metrics` on what `url` serves.
fn promtool_accepts(url: &str) {
    let body = http_get(url);
    assert!(body.contains("# TYPE"), "{url} served no metrics:\n{body}");
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics refused {url}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The value of an instant query's first sample, once Prometheus has one.
fn query(prom: &str, q: &str) -> Option<f64> {
    let url = format!(
        "http://{prom}/api/v1/query?query={}",
        q.bytes()
            .map(|b| if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            })
            .collect::<String>()
    );
    let v: serde_json::Value = serde_json::from_str(
        &ureq::get(&url)
            .call()
            .ok()?
            .body_mut()
            .read_to_string()
            .ok()?,
    )
    .ok()?;
    v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A real Prometheus scrapes the snapshotter (its own metrics and its container's mount), a
/// mount made by hand with -o metrics=, and `stratafs metrics` for the whole node, while a
/// container runs; counters that must have moved are read back from its query API.
#[test]
fn prometheus_scrapes_the_snapshotter_a_mount_and_the_node() {
    for t in ["prometheus", "promtool"] {
        require_tool(t);
    }
    let fx = fixture();
    let (snap_port, mount_port, node_port, prom_port) =
        (free_port(), free_port(), free_port(), free_port());
    let ctrd = Containerd::start_with(
        &fx.dir.join("ctrd"),
        &fx.repo,
        None,
        &["--metrics-address".into(), format!("127.0.0.1:{snap_port}")],
    );
    let app = format!("{}/snap/app:1", fx.reg.host());
    ctrd.rpull(&app);
    // A container that stays while Prometheus scrapes.
    ctrd.ok(
        "ctr",
        &[
            "run",
            "-d",
            "--snapshotter",
            "stratafs",
            &app,
            "c-metrics",
            "sh",
            "-c",
            "cat /greeting; sleep 600",
        ],
    );
    // A mount by hand with its own endpoint, read from.
    let mnt = fx.dir.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    run_ok(
        Command::new(BIN)
            .args(["mount", "--repo"])
            .arg(&fx.repo)
            .arg(&app)
            .arg(&mnt)
            .args(["-o", &format!("metrics=127.0.0.1:{mount_port}")]),
    );
    assert_eq!(
        std::fs::read_to_string(mnt.join("greeting")).unwrap(),
        "hello\n"
    );
    let _node = Killed(
        Command::new(BIN)
            .args(["metrics", "--listen", &format!("127.0.0.1:{node_port}")])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let prom_dir = fx.dir.join("prometheus");
    std::fs::create_dir_all(&prom_dir).unwrap();
    let config = prom_dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n\
             - job_name: snapshotter\n  static_configs: [{{targets: ['127.0.0.1:{snap_port}']}}]\n\
             - job_name: mount\n  static_configs: [{{targets: ['127.0.0.1:{mount_port}']}}]\n\
             - job_name: node\n  static_configs: [{{targets: ['127.0.0.1:{node_port}']}}]\n"
        ),
    )
    .unwrap();
    let prom = format!("127.0.0.1:{prom_port}");
    let _prometheus = Killed(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                prom_dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={prom}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(prom_dir.join("log")).unwrap())
            .spawn()
            .expect("start prometheus"),
    );
    for url in [snap_port, mount_port, node_port].map(|p| format!("http://127.0.0.1:{p}/metrics")) {
        promtool_accepts(&url);
    }
    let group = format!("snapshotter:{}", fx.dir.join("ctrd/snap-state").display());
    let want = [
        // The container's root, reported by the snapshotter: it answered requests.
        "sum(stratafs_fuse_requests_total{job=\"snapshotter\"})".to_string(),
        format!("count(stratafs_mount_info{{job=\"snapshotter\",group=\"{group}\"}})"),
        "stratafs_snapshotter_mounts_total{type=\"bind\"}".to_string(),
        "stratafs_snapshotter_roots_mounted_total".to_string(),
        "stratafs_snapshotter_remote_layers_total{result=\"found\"}".to_string(),
        // The hand mount: the bytes of /greeting, read from the top layer.
        "sum(stratafs_layer_read_bytes_total{job=\"mount\"})".to_string(),
        "sum(stratafs_layer_files_opened_total{job=\"mount\"})".to_string(),
        // The node: both mounts.
        "stratafs_mounts{job=\"node\"} >= 2".to_string(),
    ];
    for q in &want {
        let mut last = None;
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while std::time::Instant::now() < deadline {
            last = query(&prom, q);
            if last.is_some_and(|v| v > 0.0) {
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        assert!(
            last.is_some_and(|v| v > 0.0),
            "Prometheus query {q} gave {last:?}\n--- prometheus log:\n{}",
            std::fs::read_to_string(prom_dir.join("log")).unwrap_or_default()
        );
    }
    run_ok(Command::new("umount").arg(&mnt));
}

/// `verify=on` through the snapshotter's `--mount-option`: a container runs from layers
/// checked against their records; a file changed in its layer fails the container's read.
#[test]
fn containerd_runs_verified_layers_and_refuses_a_changed_file() {
    let fx = fixture();
    let opts: Vec<String> = [
        "--mount-option",
        "verify=on",
        "--mount-option",
        "verify_cache=none",
    ]
    .map(String::from)
    .to_vec();
    let ctrd = Containerd::start_with(&fx.dir.join("ctrd"), &fx.repo, None, &opts);
    let app = format!("{}/snap/app:1", fx.reg.host());
    ctrd.rpull(&app);
    let run_in = |name: &str, file: &str| {
        run(ctrd.cmd("ctr").args([
            "run",
            "--rm",
            "--snapshotter",
            "stratafs",
            &app,
            name,
            "cat",
            file,
        ]))
    };
    let out = run_in("v1", "/greeting");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello\n",
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        ctrd.log_tail("snapshotter.log")
    );
    let second = std::fs::read_dir(fx.repo.join(".layers"))
        .unwrap()
        .flat_map(|x| std::fs::read_dir(x.unwrap().path()).into_iter().flatten())
        .map(|l| l.unwrap().path().join("layerfs/second"))
        .find(|p| p.is_file())
        .expect("a layer holds /second");
    std::fs::write(&second, b"TWO\n").unwrap();
    let out = run_in("v2", "/second");
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        all.contains("Input/output error") && !all.contains("TWO"),
        "{all}"
    );
    let out = run_in("v3", "/greeting");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\n");
}
