//! The mount outlives its server: a keeper holds the connection and starts a new server on it.
//! A workload reads lower files and checks them, writes, renames and removes upper files,
//! appends to a file it keeps open, writes one it removed while open, and lists a large directory while its server is killed
//! with SIGKILL at random moments; it sees no error, and the tree it leaves equals what the
//! same workload leaves on kernel overlayfs (the oracle). Also: a server that keeps dying
//! ends the mount within the bound, nothing hangs; `stratafs status`; `stratafs upgrade` to
//! another binary under load. Over /dev/fuse (io_uring mounts are not taken over).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use rand::Rng;

/// The workload: N rounds; prints BAD lines for anything unexpected, "done N" at the end.
const WORKLOAD: &str = r#"
m=$1; rounds=$2; err=0
exec 7>>"$m/kept.log"
exec 8<>"$m/unlinked"; rm "$m/unlinked"
for n in $(seq 1 $rounds); do
  echo "u $n" >&8 || { echo "BAD write unlinked $n"; err=1; }
  [ $((n % 100)) = 1 ] && { exec 9<>"$m/replaced"; echo "r $n" > "$m/new-r"; mv "$m/new-r" "$m/replaced"; }
  [ $((n % 100)) -gt 1 ] && { echo "r $n" >&9 || { echo "BAD write replaced $n"; err=1; }; }
  i=$((n % 300 + 1))
  [ "$(cat "$m/d/f$i")" = "file $i" ] || { echo "BAD read f$i"; err=1; }
  echo "w$n" > "$m/new.$n" || { echo "BAD write $n"; err=1; }
  mv "$m/new.$n" "$m/d/moved.$((n % 50))" || { echo "BAD mv $n"; err=1; }
  echo "line $n" >&7 || { echo "BAD append $n"; err=1; }
  [ "$(ls "$m/big" | wc -l)" = 2000 ] || { echo "BAD ls $n"; err=1; }
  mkdir -p "$m/dirs/$((n % 20))/sub" || { echo "BAD mkdir $n"; err=1; }
  rm -f "$m/d/moved.$(((n + 25) % 50))" || { echo "BAD rm $n"; err=1; }
  [ $((n % 7)) = 0 ] && { rm "$m/gone/g$((n / 7))" || { echo "BAD rm lower $n"; err=1; }; }
done
exec 7>&- 8>&- 9>&-
[ "$(wc -l < "$m/kept.log")" = "$rounds" ] || { echo "BAD kept.log"; err=1; }
echo "done $rounds err $err"
"#;

const ROUNDS: u32 = 1200;
const TEST_USER: &str = "stratafs-test";

fn lower(dir: &Path) -> PathBuf {
    let l = dir.join("lower");
    std::fs::create_dir_all(l.join("d")).unwrap();
    std::fs::create_dir_all(l.join("big")).unwrap();
    for i in 1..=300 {
        std::fs::write(l.join(format!("d/f{i}")), format!("file {i}\n")).unwrap();
    }
    std::fs::create_dir_all(l.join("gone")).unwrap();
    for i in 1..=(ROUNDS / 7) {
        std::fs::write(l.join(format!("gone/g{i}")), "to be removed\n").unwrap();
    }
    for i in 0..2000 {
        std::fs::write(l.join(format!("big/entry-{i:05}")), "").unwrap();
    }
    l
}

fn workload(mnt: &Path) -> Command {
    let mut c = Command::new("bash");
    c.arg("-c")
        .arg(WORKLOAD)
        .arg("workload")
        .arg(mnt)
        .arg(ROUNDS.to_string());
    c
}

/// A mount taken away when the test ends, passed or not.
struct Mnt(PathBuf);

impl std::ops::Deref for Mnt {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<std::ffi::OsStr> for Mnt {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.0.as_os_str()
    }
}

impl Drop for Mnt {
    fn drop(&mut self) {
        if is_mountpoint(&self.0) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

fn mount(l: &Path, dir: &Path, name: &str, extra: &str) -> Mnt {
    let (u, w, m) = (
        dir.join(format!("{name}-upper")),
        dir.join(format!("{name}-work")),
        dir.join(name),
    );
    for d in [&u, &w, &m] {
        std::fs::create_dir_all(d).unwrap();
    }
    run_ok(
        Command::new(BIN)
            .arg("-o")
            .arg(format!(
                "lowerdir={},upperdir={},workdir={},io_uring=off{extra}",
                l.display(),
                u.display(),
                w.display()
            ))
            .arg(&m),
    );
    assert!(is_mountpoint(&m));
    Mnt(m)
}

fn status(m: &Path) -> BTreeMap<String, String> {
    let out = run_ok(Command::new(BIN).arg("status").arg(m));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn server_of(m: &Path) -> u32 {
    status(m)["server"].parse().unwrap()
}

fn kill9(pid: u32) {
    run_ok(Command::new("kill").arg("-9").arg(pid.to_string()));
}

/// Until `status` names a server other than `old`.
fn wait_new_server(m: &Path, old: u32) -> u32 {
    let mut new = old;
    wait_until("a new server", || {
        new = server_of(m);
        new != old
    });
    new
}

fn connection(m: &Path) -> String {
    let out = run_ok(Command::new("mountpoint").arg("-d").arg(m));
    let dev = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let (ma, mi) = dev.split_once(':').unwrap();
    (ma.parse::<u64>().unwrap() << 20 | mi.parse::<u64>().unwrap()).to_string()
}

fn unmount(m: &Path) {
    fuse_unmount(m);
}

#[test]
fn killed_servers_are_replaced_and_the_workload_sees_no_error() {
    require_root();
    require_tool("fusermount3");
    let tmp = shared_tempdir();
    let l = lower(tmp.path());

    // The oracle: the same workload on kernel overlayfs.
    let (ku, kw, km) = (
        tmp.path().join("k-upper"),
        tmp.path().join("k-work"),
        tmp.path().join("kernel"),
    );
    for d in [&ku, &kw, &km] {
        std::fs::create_dir_all(d).unwrap();
    }
    run_ok(
        Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o"])
            .arg(format!(
                "lowerdir={},upperdir={},workdir={}",
                l.display(),
                ku.display(),
                kw.display()
            ))
            .arg(&km),
    );
    let out = run_ok(&mut workload(&km));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("done {ROUNDS} err 0")
    );
    let want = content_tree(&km);
    run_ok(Command::new("umount").arg(&km));

    let m = mount(&l, tmp.path(), "strata", "");
    let st = status(&m);
    assert_eq!(st["transport"], "dev", "{st:?}");
    assert_eq!(st["restarts"], "0");
    let keeper: u32 = st["keeper"].parse().unwrap();
    let conn = connection(&m);

    let mut job = workload(&m)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut rng = rand::rng();
    let mut kills = 0;
    while kills < 10 && job.try_wait().unwrap().is_none() {
        std::thread::sleep(Duration::from_millis(rng.random_range(100..600)));
        let pid = server_of(&m);
        kill9(pid);
        kills += 1;
        wait_new_server(&m, pid);
    }
    let out = job.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.trim() == format!("done {ROUNDS} err 0"),
        "{said}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        kills >= 5,
        "the workload ended before 5 kills: make it longer"
    );
    assert_eq!(status(&m)["restarts"], kills.to_string());
    assert_eq!(
        std::fs::read_to_string(format!("/sys/fs/fuse/connections/{conn}/waiting"))
            .unwrap()
            .trim(),
        "0"
    );
    assert_eq!(
        content_tree(&m),
        want,
        "the tree differs from kernel overlayfs'"
    );

    unmount(&m);
    wait_until("the keeper to exit", || {
        !Path::new(&format!("/proc/{keeper}")).exists()
    });
    let work = tmp.path().join("strata-work/work");
    let left: Vec<_> = std::fs::read_dir(&work)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{} holds {left:?}", work.display());
}

#[test]
fn a_server_that_keeps_dying_ends_the_mount_and_nothing_hangs() {
    require_root();
    let tmp = shared_tempdir();
    let l = lower(tmp.path());
    let m = mount(&l, tmp.path(), "crashing", "");
    let keeper: u32 = status(&m)["keeper"].parse().unwrap();
    let start = Instant::now();
    let mut last = 0;
    // Kill every server as soon as it serves, as a crash at start would.
    while Path::new(&format!("/proc/{keeper}")).exists() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the keeper still restarts after 60 s"
        );
        let Ok(out) = Command::new(BIN).arg("status").arg(&m).output() else {
            continue;
        };
        let text = String::from_utf8_lossy(&out.stdout);
        if let Some(pid) = text
            .lines()
            .find_map(|l| l.strip_prefix("server "))
            .and_then(|p| p.parse::<u32>().ok())
            .filter(|p| *p != last)
        {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            last = pid;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // The mount is gone or answers ENOTCONN, at once.
    let t = Instant::now();
    let r = std::fs::read_dir(m.join("d"));
    assert!(t.elapsed() < Duration::from_secs(5), "a lookup hung");
    match r {
        Err(e) => assert!(
            matches!(e.raw_os_error(), Some(libc::ENOTCONN | libc::ENOENT)),
            "{e}"
        ),
        Ok(_) => assert!(!is_mountpoint(&m), "still served after the keeper gave up"),
    }
    let _ = Command::new("umount").arg("-l").arg(&m).status();
}

#[test]
fn status_names_the_processes_and_refuses_what_is_not_a_stratafs_mount() {
    require_root();
    let tmp = shared_tempdir();
    let l = lower(tmp.path());
    let m = mount(&l, tmp.path(), "shown", "");
    let st = status(&m);
    for k in [
        "mountpoint",
        "server",
        "keeper",
        "restarts",
        "transport",
        "upper",
    ] {
        assert!(st.contains_key(k), "{k} missing: {st:?}");
    }
    let server: u32 = st["server"].parse().unwrap();
    let keeper: u32 = st["keeper"].parse().unwrap();
    let ppid = parent_pid(server).unwrap();
    assert_eq!(ppid, keeper, "the keeper is the server's parent");
    assert_eq!(
        st["upper"],
        tmp.path().join("shown-upper").display().to_string()
    );

    let out = run(Command::new(BIN).arg("status").arg(tmp.path()));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a stratafs mount"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    unmount(&m);

    // Without a keeper, status says so (the server publishes its own status and metrics),
    // and an upgrade, which needs a keeper to start the new server, is refused.
    let m = mount(&l, tmp.path(), "alone", ",failover=off");
    let st = status(&m);
    assert!(st["keeper"].contains("failover=off"), "{st:?}");
    let out = run(Command::new(BIN).arg("upgrade").arg(&m));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("failover=off"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(is_mountpoint(&m), "a refused upgrade left the mount alone");
    unmount(&m);
}

#[test]
fn upgrade_hands_a_mount_under_load_to_another_binary() {
    require_root();
    let tmp = shared_tempdir();
    let l = lower(tmp.path());
    // Another binary: a copy at another path (a build of another commit works the same way:
    // the journal format is what both must share).
    let other = tmp.path().join("stratafs-next");
    std::fs::copy(BIN, &other).unwrap();
    let m = mount(&l, tmp.path(), "upgraded", "");
    let old = server_of(&m);
    let job = workload(&m)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let out = run_ok(
        Command::new(BIN)
            .arg("upgrade")
            .arg(&m)
            .arg("--binary")
            .arg(&other),
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("stratafs-next"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let new = server_of(&m);
    assert_ne!(new, old);
    assert_eq!(
        std::fs::read_link(format!("/proc/{new}/exe")).unwrap(),
        other
    );
    let out = job.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("done {ROUNDS} err 0")
    );
    // An upgrade is not a crash: it does not count against the restart bound.
    assert_eq!(status(&m)["restarts"], "1");
    unmount(&m);
}

#[test]
fn a_rootless_podman_container_outlives_its_killed_servers() {
    require_root();
    let tmp = shared_tempdir();
    let store = common::podman::Store::new(
        &tmp.path().join("podman"),
        Path::new(BIN),
        Some(TEST_USER),
        None,
    );
    let tar = common::image::busybox_base_tar(&store.dir);
    run_ok(Command::new("chown").arg(TEST_USER).arg(&tar));
    store.podman(&[
        "import",
        "-q",
        tar.to_str().unwrap(),
        "localhost/strata-base",
    ]);
    // In the container: read and check files of the image, write, rename and remove files of
    // the container's layer, append to a file kept open.
    let script = "exec 2>&1; err=0; exec 7>>/tmp/kept; want=NAME=strata-test; nbin=$(ls /bin | wc -l); \
        for i in $(seq 1 1500); do \
          [ \"$(cat /etc/os-release)\" = \"$want\" ] || { echo BAD read $i; err=1; }; \
          echo $i > /tmp/n$i || { echo BAD write $i; err=1; }; \
          mv /tmp/n$i /tmp/m$((i % 10)) || { echo BAD mv $i; err=1; }; \
          echo $i >&7 || { echo BAD append $i; err=1; }; \
          [ $(ls /bin | wc -l) = $nbin ] || { echo BAD ls $i; err=1; }; \
          rm -f /tmp/m$(((i + 5) % 10)) || { echo BAD rm $i; err=1; }; \
        done; exec 7>&-; [ $(wc -l < /tmp/kept) = 1500 ] || { echo BAD kept; err=1; }; \
        echo \"done err $err\"";
    let dir = store.dir.clone();
    let job = std::thread::spawn(move || {
        let s = common::podman::Store {
            dir,
            user: Some(TEST_USER),
        };
        let out = s.podman(&["run", "--rm", "localhost/strata-base", "sh", "-c", script]);
        std::mem::forget(s); // the outer store cleans up
        out
    });
    let mut kills = 0;
    let start = Instant::now();
    while kills < 5 && !job.is_finished() && start.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(400));
        kills += kill_servers("stratafs .*merged$", Some(TEST_USER));
    }
    let out = job.join().expect("podman run");
    assert!(
        out.trim().ends_with("done err 0") && !out.contains("BAD"),
        "the container saw an error: {out}"
    );
    assert!(
        kills >= 3,
        "only {kills} servers killed: the workload ended too soon"
    );
}

/// A memory cgroup holding only the server, limited to a little more than it uses: as the
/// workload makes it grow (listings, journal pages), the OOM killer ends it. The keeper is
/// outside, and so is the server it starts next. cgroup v1 (this machine's memory
/// controller) or v2.
struct OomCage {
    dir: PathBuf,
    v1: bool,
}

impl OomCage {
    fn new(pid: u32) -> OomCage {
        let v1 = Path::new("/sys/fs/cgroup/memory/cgroup.procs").exists();
        let root = if v1 {
            PathBuf::from("/sys/fs/cgroup/memory")
        } else {
            let ctl = std::fs::read_to_string("/sys/fs/cgroup/cgroup.subtree_control")
                .expect("no memory cgroup: neither /sys/fs/cgroup/memory (v1) nor a v2 root");
            if !ctl.contains("memory") {
                std::fs::write("/sys/fs/cgroup/cgroup.subtree_control", "+memory")
                    .expect("cannot enable the v2 memory controller");
            }
            PathBuf::from("/sys/fs/cgroup")
        };
        let dir = root.join(format!("stratafs-oom-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cgroup.procs"), pid.to_string()).unwrap();
        let usage: u64 = std::fs::read_to_string(dir.join(if v1 {
            "memory.usage_in_bytes"
        } else {
            "memory.current"
        }))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
        let limit = (usage + (256 << 10)).to_string();
        std::fs::write(
            dir.join(if v1 {
                "memory.limit_in_bytes"
            } else {
                "memory.max"
            }),
            &limit,
        )
        .unwrap();
        OomCage { dir, v1 }
    }

    /// How many processes the OOM killer ended in the cage.
    fn kills(&self) -> u64 {
        let (file, key) = if self.v1 {
            ("memory.oom_control", "oom_kill")
        } else {
            ("memory.events", "oom_kill")
        };
        std::fs::read_to_string(self.dir.join(file))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix(key)?.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for OomCage {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
    }
}

#[test]
fn the_oom_killer_ends_a_server_and_the_workload_goes_on() {
    require_root();
    let tmp = shared_tempdir();
    let l = lower(tmp.path());
    let m = mount(&l, tmp.path(), "oom", "");
    let server = server_of(&m);
    let cage = OomCage::new(server);
    let out = run(&mut workload(&m));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.trim() == format!("done {ROUNDS} err 0"),
        "{said}"
    );
    assert!(cage.kills() >= 1, "the OOM killer never ended the server");
    assert!(!Path::new(&format!("/proc/{server}")).exists());
    assert!(status(&m)["restarts"].parse::<u32>().unwrap() >= 1);
    unmount(&m);
}
