//! Shared helpers of the integration tests: real mounts (stratafs and kernel overlayfs) and a
//! snapshot of a tree that two mounts can be compared by.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_stratafs");

/// Fail, naming what is missing, unless the tests run as root (kernel overlayfs is the oracle).
pub fn require_root() {
    assert!(
        rustix::process::geteuid().is_root(),
        "these tests mount kernel overlayfs and need root: run scripts/test.sh as root"
    );
}

/// Fail, naming the tool, when a program the test needs is not installed.
pub fn require_tool(tool: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "required tool '{tool}' is not installed: run scripts/setup.sh"
    );
}

/// A temporary directory other users may enter (the test user, rootless podman's processes).
pub fn shared_tempdir() -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        t.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    t
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"))
}

pub fn run_ok(cmd: &mut Command) -> Output {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `fusermount3 -u p`, again while it says the mount is busy. The tests of one binary are
/// threads of one process: a child another test forks holds copies of this test's open files
/// until it execs (they are close-on-exec), so a mount whose files were all closed can be busy
/// for a moment.
pub fn fuse_unmount(p: &Path) {
    let start = std::time::Instant::now();
    loop {
        let out = run(Command::new("fusermount3").arg("-u").arg(p));
        if out.status.success() {
            return;
        }
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("busy") && start.elapsed() < std::time::Duration::from_secs(10),
            "fusermount3 -u {}: {err}",
            p.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

pub fn is_mountpoint(p: &Path) -> bool {
    let p = std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .any(|l| l.split(' ').nth(4) == Some(p.to_str().unwrap()))
}

/// The filesystem type of the mount at `p` (`fuse.stratafs` …), if `p` is a mount point.
pub fn mount_type(p: &Path) -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        (f.get(4) == Some(&p.to_str().unwrap()))
            .then(|| f[f.iter().position(|x| *x == "-").unwrap() + 1].to_string())
    })
}

pub fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn lowerdir_opt(layers: &[PathBuf]) -> String {
    format!("lowerdir={}", stratafs::stack::lowerdir::join(layers))
}

/// Mount options that pick the transport the suites run over:
/// `STRATAFS_TEST_TRANSPORT=io_uring` (scripts/test.sh runs the differential and podman suites
/// again that way) serves every stratafs mount of a suite through FUSE over io_uring, which the
/// kernel must then allow.
pub fn transport_opts() -> Vec<&'static str> {
    match std::env::var("STRATAFS_TEST_TRANSPORT").as_deref() {
        Ok("io_uring") => {
            let p = "/sys/module/fuse/parameters/enable_uring";
            let on = std::fs::read_to_string(p).unwrap_or_default();
            assert_eq!(
                on.trim(),
                "Y",
                "STRATAFS_TEST_TRANSPORT=io_uring needs `echo Y > {p}` (as root)"
            );
            vec!["io_uring"]
        }
        Ok("dev") | Err(_) => vec![],
        Ok(t) => panic!("STRATAFS_TEST_TRANSPORT={t}: expected io_uring or dev"),
    }
}

/// The parent of process `pid`.
pub fn parent_pid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(") ").next()?.split(' ').nth(1)?.parse().ok()
}

/// Processes whose command line matches `pattern` (`pgrep -f`, of `user` if given), and of
/// those the servers: the ones whose parent (their keeper) matches too.
pub fn keeper_servers(pattern: &str, user: Option<&str>) -> (Vec<u32>, Vec<u32>) {
    let mut c = Command::new("pgrep");
    if let Some(u) = user {
        c.args(["-u", u]);
    }
    let out = run(c.arg("-f").arg(pattern));
    let pids: Vec<u32> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    let servers = pids
        .iter()
        .copied()
        .filter(|p| parent_pid(*p).is_some_and(|pp| pids.contains(&pp)))
        .collect();
    (pids, servers)
}

/// SIGKILL the servers `keeper_servers` finds; how many were killed.
pub fn kill_servers(pattern: &str, user: Option<&str>) -> usize {
    keeper_servers(pattern, user)
        .1
        .into_iter()
        .filter(|pid| {
            Command::new("kill")
                .arg("-9")
                .arg(pid.to_string())
                .status()
                .is_ok_and(|s| s.success())
        })
        .count()
}

/// The process serving `mountpoint` (its command line ends with the mountpoint): the server,
/// not its keeper (whose child it is, with the same command line).
pub fn daemon_pid(mountpoint: &Path) -> u32 {
    let (all, servers) = keeper_servers(&format!("{} .*{}$", BIN, mountpoint.display()), None);
    *servers.first().or(all.first()).expect("daemon pid")
}

/// The threads of process `pid`, by name.
pub fn thread_names(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
                .map(|c| c.trim().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// When the suite runs over io_uring, the mount at `mountpoint` must really serve through the
/// rings: a mount that fell back to /dev/fuse (it does, quietly, when rings cannot be set up)
/// would pass every check of the suite without testing what it claims to.
/// Over /dev/fuse (the default), a mount whose command line does not ask for io_uring must not
/// serve through rings: scripts/test.sh turns the kernel's switch off for that pass, and a
/// machine where it stayed on would run the "/dev/fuse" pass over io_uring.
/// Set by a test that turns the kernel's io_uring switch on itself (tests/io_uring.rs): its
/// mounts serve through rings by default, as they should.
pub static SWITCH_ON_BY_TEST: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

pub fn assert_transport(mountpoint: &Path) {
    let pid = daemon_pid(mountpoint);
    let names = thread_names(pid);
    let on_rings = names.iter().any(|n| n.starts_with("fuse-ring-"));
    if !transport_opts().is_empty() {
        assert!(
            on_rings,
            "{} asked for io_uring but serves /dev/fuse (threads {names:?})",
            mountpoint.display()
        );
        return;
    }
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let asked = String::from_utf8_lossy(&cmdline)
        .split(['\0', ','])
        .any(|o| o == "io_uring" || o == "io_uring=on" || o == "io_uring=auto");
    let by_test = SWITCH_ON_BY_TEST.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        asked || by_test || !on_rings,
        "{} runs in the /dev/fuse pass but serves through io_uring (is {} Y?)",
        mountpoint.display(),
        "/sys/module/fuse/parameters/enable_uring"
    );
}

/// A stratafs mount, unmounted on drop.
pub struct StrataMount {
    pub path: PathBuf,
}

impl StrataMount {
    pub fn new(layers: &[PathBuf], mountpoint: &Path) -> StrataMount {
        Self::with_opts(layers, mountpoint, &[])
    }

    pub fn with_opts(layers: &[PathBuf], mountpoint: &Path, extra: &[&str]) -> StrataMount {
        require_tool("fusermount3"); // unmounting needs it
        std::fs::create_dir_all(mountpoint).unwrap();
        let mut cmd = Command::new(BIN);
        cmd.arg("-o").arg(lowerdir_opt(layers));
        for e in extra {
            cmd.arg("-o").arg(e);
        }
        for e in transport_opts() {
            cmd.arg("-o").arg(e);
        }
        cmd.arg(mountpoint);
        run_ok(&mut cmd);
        // The daemonizing parent exits 0 only once the mount is live.
        assert!(
            is_mountpoint(mountpoint),
            "stratafs exited 0 but nothing is mounted"
        );
        assert_transport(mountpoint);
        StrataMount {
            path: mountpoint.to_path_buf(),
        }
    }
}

impl Drop for StrataMount {
    fn drop(&mut self) {
        let _ = Command::new("fusermount3")
            .arg("-u")
            .arg(&self.path)
            .status();
        if is_mountpoint(&self.path) {
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}

/// A kernel overlayfs mount of the same lower layers, the oracle.
pub struct KernelMount {
    pub path: PathBuf,
}

impl KernelMount {
    pub fn new(layers: &[PathBuf], mountpoint: &Path) -> KernelMount {
        assert!(
            layers.len() >= 2,
            "kernel overlayfs needs two lower layers without upperdir"
        );
        std::fs::create_dir_all(mountpoint).unwrap();
        let lower: Vec<&str> = layers.iter().map(|p| p.to_str().unwrap()).collect();
        run_ok(
            Command::new("mount")
                .args(["-t", "overlay", "overlay", "-o"])
                .arg(format!("lowerdir={}", lower.join(":")))
                .arg(mountpoint),
        );
        KernelMount {
            path: mountpoint.to_path_buf(),
        }
    }
}

impl Drop for KernelMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
    }
}

/// What the tests compare of one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub kind: &'static str,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime: (i64, i64),
    pub nlink: u64,
    pub rdev: u64,
    pub target: Option<Vec<u8>>,
    pub content: Option<Vec<u8>>,
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// For non-directories: the inode number (hard links must share it).
    pub ino: Option<u64>,
}

pub fn kind_of(ft: std::fs::FileType) -> &'static str {
    if ft.is_dir() {
        "dir"
    } else if ft.is_symlink() {
        "symlink"
    } else if ft.is_file() {
        "file"
    } else if ft.is_fifo() {
        "fifo"
    } else if ft.is_char_device() {
        "char"
    } else if ft.is_block_device() {
        "block"
    } else {
        "socket"
    }
}

pub fn xattrs_of(p: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    let mut out = BTreeMap::new();
    let n = rustix::fs::llistxattr_query(&c).unwrap_or(0);
    if n == 0 {
        return out;
    }
    let mut buf = vec![0u8; n];
    let n = rustix::fs::llistxattr(&c, &mut buf[..]).unwrap();
    for name in buf[..n].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let cn = std::ffi::CString::new(name).unwrap();
        let len = rustix::fs::lgetxattr_query(&c, &cn).unwrap();
        let mut v = vec![0u8; len];
        let len = rustix::fs::lgetxattr(&c, &cn, &mut v[..]).unwrap();
        v.truncate(len);
        out.insert(name.to_vec(), v);
    }
    out
}

/// Walk a tree (never following symlinks) and record every entry by its relative path.
pub fn snapshot(root: &Path) -> BTreeMap<PathBuf, Entry> {
    snapshot_impl(root, false)
}

/// The same for kernel overlayfs. It passes the listing of a directory that is not merged
/// with any lower one straight through, so a whiteout with nothing beneath it shows in
/// readdir while lookup says ENOENT. The contract says marker names never appear, which is
/// what stratafs does; such names are left out of the oracle.
pub fn snapshot_oracle(root: &Path) -> BTreeMap<PathBuf, Entry> {
    snapshot_impl(root, true)
}

fn snapshot_impl(root: &Path, oracle: bool) -> BTreeMap<PathBuf, Entry> {
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let full = root.join(&rel);
        let md = match std::fs::symlink_metadata(&full) {
            Ok(md) => md,
            Err(e) if oracle && e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => panic!("{full:?}: {e}"),
        };
        let kind = kind_of(md.file_type());
        let e = Entry {
            kind,
            mode: md.mode(),
            uid: md.uid(),
            gid: md.gid(),
            size: md.size(),
            mtime: (md.mtime(), md.mtime_nsec()),
            nlink: md.nlink(),
            rdev: md.rdev(),
            target: (kind == "symlink").then(|| {
                std::fs::read_link(&full)
                    .unwrap()
                    .into_os_string()
                    .into_vec()
            }),
            content: (kind == "file").then(|| std::fs::read(&full).unwrap()),
            xattrs: xattrs_of(&full),
            ino: (kind != "dir").then_some(md.ino()),
        };
        if kind == "dir" {
            for ent in std::fs::read_dir(&full).unwrap() {
                stack.push(rel.join(ent.unwrap().file_name()));
            }
        }
        out.insert(rel, e);
    }
    out
}

use std::os::unix::ffi::OsStringExt;

/// A tree as its content alone: kind, permission bits, file content or link target by path
/// (the root included). For comparing trees whose owners and times may differ.
pub fn content_tree(root: &Path) -> BTreeMap<PathBuf, String> {
    snapshot(root)
        .into_iter()
        .map(|(p, e)| {
            let v = format!(
                "{} {:o} {:?} {:?}",
                e.kind,
                e.mode & 0o7777,
                e.content,
                e.target
            );
            (p, v)
        })
        .collect()
}

/// Compare two snapshots; on mismatch, report the first differing paths.
pub fn assert_same_tree(ours: &BTreeMap<PathBuf, Entry>, oracle: &BTreeMap<PathBuf, Entry>) {
    let mut problems = Vec::new();
    for (p, o) in oracle {
        match ours.get(p) {
            None => problems.push(format!("missing in stratafs: {p:?}")),
            Some(e) if e != o => {
                problems.push(format!("{p:?}:\n  stratafs {e:?}\n  kernel   {o:?}"))
            }
            _ => {}
        }
    }
    for p in ours.keys() {
        if !oracle.contains_key(p) {
            problems.push(format!("only in stratafs: {p:?}"));
        }
    }
    assert!(
        problems.is_empty(),
        "{} differences, first ones:\n{}",
        problems.len(),
        problems
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// An unpacked image's tree as comparable: the root's mtime left out (layer tars made by
/// podman carry no root entry, so it is the extraction time), directories without the fields
/// merging changes (link count, size), hard links as groups (numbered by first path).
pub fn image_tree(mut s: BTreeMap<PathBuf, Entry>) -> BTreeMap<PathBuf, Entry> {
    if let Some(root) = s.get_mut(&PathBuf::new()) {
        root.mtime = (0, 0);
    }
    let mut first: BTreeMap<u64, u64> = BTreeMap::new();
    for e in s.values_mut() {
        if e.kind == "dir" {
            e.nlink = 0;
            e.size = 0;
        }
        if let Some(ino) = e.ino {
            let next = first.len() as u64 + 1;
            e.ino = Some(*first.entry(ino).or_insert(next));
        }
    }
    s
}

pub mod image;
pub mod layout;
pub mod logwrites;
pub mod podman;

pub fn name(s: &str) -> &OsStr {
    OsStr::new(s)
}

/// A foreground stratafs under `strace -e trace=SYSCALLS`, once its mount is live.
pub fn traced_mount(syscalls: &str, log: &Path, options: &str, mnt: &Path) -> std::process::Child {
    let child = Command::new("strace")
        .args(["-f", "-qq", "-e", &format!("trace={syscalls}"), "-o"])
        .arg(log)
        .arg(BIN)
        .args(["-f", "-o", options])
        .arg(mnt)
        .spawn()
        .unwrap();
    wait_until("mount under strace", || is_mountpoint(mnt));
    child
}

/// The CernVM-FS kit (a stratum-0, a client and the scripts that start them), for the tests
/// that publish to or read from a real one.
pub fn cvmfs_kit() -> PathBuf {
    let candidates = [
        std::env::var_os("STRATAFS_CVMFS_KIT").map(PathBuf::from),
        Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/cvmfs")),
        Some(PathBuf::from("/work/shared/cvmfs")),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|k| k.join("cvmfs-up.sh").is_file())
        .expect(
            "the CernVM-FS kit (cvmfs-up.sh, cvmfs-publish.sh) is missing: put it at \
             ../shared/cvmfs beside the checkout or set STRATAFS_CVMFS_KIT",
        )
}
