//! Laziness, observed with strace on the daemon: mounting reads no directory, and using one
//! file touches only the directories on its path and opens only that file (look-ahead off:
//! with it on, reading a file also reads ahead its small siblings, and nothing else).

mod common;

use std::path::Path;
use std::process::Child;

use common::*;

/// Unmount and check the daemon exited 0.
fn unmount(mut child: Child, mnt: &Path) {
    fuse_unmount(mnt);
    assert!(child.wait().unwrap().success());
}

#[test]
fn mount_walks_nothing_and_a_read_opens_one_file() {
    require_root();
    require_tool("strace");
    let tmp = tempfile::tempdir().unwrap();
    let big = tmp.path().join("big");
    let small = tmp.path().join("small");
    for d in 0..100 {
        let dir = big.join(format!("pkg{d:03}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..100 {
            std::fs::write(dir.join(format!("mod{f:03}.py")), "x").unwrap();
        }
    }
    std::fs::create_dir_all(small.join("pkg042")).unwrap();
    std::fs::write(small.join("pkg042/wanted.txt"), "wanted").unwrap();
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let log = tmp.path().join("trace");
    let lower = lowerdir_opt(&[small.clone(), big.clone()]);
    let opts = format!("{lower},lookahead=off");
    let child = traced_mount("getdents64,openat,openat2,open", &log, &opts, &mnt);
    let after_mount = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        std::fs::read_to_string(mnt.join("pkg042/wanted.txt")).unwrap(),
        "wanted"
    );
    let md = std::fs::metadata(mnt.join("pkg007/mod005.py")).unwrap();
    assert_eq!(md.len(), 1);
    unmount(child, &mnt);
    let trace = std::fs::read_to_string(&log).unwrap();

    assert!(
        !after_mount.contains("getdents64"),
        "the mount listed a directory:\n{after_mount}"
    );
    assert!(
        !trace.contains("getdents64"),
        "a directory was listed:\n{trace}"
    );
    let opened: Vec<&str> = trace
        .lines()
        .filter(|l| l.contains("openat2(") && !l.contains("= -1"))
        .collect();
    assert_eq!(
        opened.len(),
        1,
        "expected one file opened in a layer, got:\n{}",
        opened.join("\n")
    );
    assert!(opened[0].contains("pkg042/wanted.txt"), "{}", opened[0]);
}

#[test]
fn passthrough_reads_bypass_the_daemon() {
    require_root();
    require_tool("strace");
    let tmp = tempfile::tempdir().unwrap();
    let layer = tmp.path().join("layer");
    std::fs::create_dir(&layer).unwrap();
    let data = vec![7u8; 4 << 20];
    std::fs::write(layer.join("big"), &data).unwrap();
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let trace_read = |opts: &str| -> String {
        let log = tmp.path().join(format!("trace-{opts}"));
        let options = format!("{},{opts}", lowerdir_opt(std::slice::from_ref(&layer)));
        let child = traced_mount("pread64,ioctl", &log, &options, &mnt);
        assert!(std::fs::read(mnt.join("big")).unwrap() == data);
        unmount(child, &mnt);
        std::fs::read_to_string(&log).unwrap()
    };
    // Data reads of the daemon (the loader's small pread64 of ELF headers do not count).
    let data_reads = |trace: &str| -> usize {
        trace
            .lines()
            .filter(|l| l.contains("pread64("))
            .filter(|l| {
                let args: Vec<&str> = l.rsplitn(3, ", ").collect();
                args.get(1)
                    .and_then(|n| n.parse::<usize>().ok())
                    .unwrap_or(0)
                    >= 4096
            })
            .count()
    };
    let off = trace_read("passthrough=off");
    assert!(
        data_reads(&off) > 0,
        "without passthrough the daemon reads:\n{off}"
    );
    let on = trace_read("passthrough=on");
    assert!(
        data_reads(&on) == 0,
        "with passthrough the kernel reads the layer file itself, yet the daemon read:\n{on}"
    );
    assert!(
        on.contains("ioctl("),
        "no backing file was registered:\n{on}"
    );
}

/// With look-ahead on, reading one file reads ahead the small files of its own directory, in
/// every lower layer that has it, and opens nothing outside that directory.
#[test]
fn look_ahead_reads_only_the_siblings_of_a_read_file() {
    require_root();
    require_tool("strace");
    let tmp = tempfile::tempdir().unwrap();
    let (top, bottom) = (tmp.path().join("top"), tmp.path().join("bottom"));
    for d in ["a", "b"] {
        std::fs::create_dir_all(bottom.join(d)).unwrap();
        for f in 0..20 {
            std::fs::write(bottom.join(d).join(format!("f{f:02}")), "x").unwrap();
        }
    }
    std::fs::create_dir_all(top.join("a")).unwrap();
    std::fs::write(top.join("a/wanted"), "wanted").unwrap();
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let log = tmp.path().join("trace");
    let child = traced_mount("openat2", &log, &lowerdir_opt(&[top, bottom]), &mnt);
    assert_eq!(
        std::fs::read_to_string(mnt.join("a/wanted")).unwrap(),
        "wanted"
    );
    wait_until("the siblings read ahead", || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("a/f19"))
    });
    unmount(child, &mnt);
    let trace = std::fs::read_to_string(&log).unwrap();
    let opened: Vec<&str> = trace
        .lines()
        .filter(|l| l.contains("openat2(") && !l.contains("= -1"))
        .collect();
    assert!(
        opened
            .iter()
            .all(|l| l.contains("\"a") || l.contains("\".\"")),
        "{trace}"
    );
    assert!(
        !trace.contains("\"b"),
        "nothing outside the read file's directory:\n{trace}"
    );
}
