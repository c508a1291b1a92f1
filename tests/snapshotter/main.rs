//! `stratafs snapshotter` under a real containerd (Debian's 1.6, private root, state and
//! socket): images converted into a repository and pushed to a loopback docker-registry are
//! pulled with `ctr-remote images rpull` without their layer blobs, run with `ctr run`, and
//! survive a kill -9 of the snapshotter.

#[path = "../common/mod.rs"]
mod common;
#[path = "../common/cri.rs"]
mod cri;
mod metrics;
mod pods;
mod usage;
mod verify;

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
