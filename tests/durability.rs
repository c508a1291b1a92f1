//! How a copy-up puts its data on disk before the file gets its name in U, observed with
//! strace on the daemon over real filesystems made for the test: on a journaled ext4 the data
//! is written out with sync_file_range and no journal commit is forced per file; on ext4
//! without a journal (which orders nothing) every copy-up is fsync'ed, as kernel overlayfs
//! does everywhere; with `fsync=0` neither. Each upper must hold the copied-up files whole and
//! pass `e2fsck -fn` afterwards.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use common::*;

/// The durability calls the daemon made, by name, over a chmod (metadata copy-up) and an
/// append (data copy-up) of two lower files, with U and W on a fresh ext4 made by `mkfs`.
fn copy_up_syncs(mkfs_opts: &[&str], mount_opts: &str) -> (usize, usize) {
    require_root();
    for t in ["strace", "mkfs.ext4", "e2fsck", "losetup"] {
        require_tool(t);
    }
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("upper.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    run_ok(
        Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .args(mkfs_opts)
            .arg(&img),
    );
    let fs = tmp.path().join("fs");
    std::fs::create_dir(&fs).unwrap();
    run_ok(
        Command::new("mount")
            .args(["-o", "loop"])
            .arg(&img)
            .arg(&fs),
    );
    let low = tmp.path().join("low");
    std::fs::create_dir(&low).unwrap();
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(low.join("f"), &data).unwrap();
    std::fs::write(low.join("g"), &data).unwrap();
    for d in ["u", "w"] {
        std::fs::create_dir(fs.join(d)).unwrap();
    }
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let log = tmp.path().join("trace");
    let opts = format!(
        "{},upperdir={},workdir={}{mount_opts}",
        lowerdir_opt(std::slice::from_ref(&low)),
        fs.join("u").display(),
        fs.join("w").display()
    );
    let mut daemon = traced_mount("fsync,fdatasync,sync_file_range", &log, &opts, &mnt);
    std::fs::set_permissions(mnt.join("f"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut g = std::fs::OpenOptions::new()
        .append(true)
        .open(mnt.join("g"))
        .unwrap();
    std::io::Write::write_all(&mut g, b"appended").unwrap();
    drop(g);
    fuse_unmount(&mnt);
    assert!(daemon.wait().unwrap().success(), "daemon exit status");
    let trace = std::fs::read_to_string(&log).unwrap();
    let calls = |name: &str| {
        trace
            .lines()
            .filter(|l| l.contains(&format!(" {name}(")))
            .count()
    };
    let counts = (
        calls("sync_file_range"),
        calls("fsync") + calls("fdatasync"),
    );
    // Whole copies in U, and a filesystem that checks clean.
    assert_eq!(std::fs::read(fs.join("u/f")).unwrap(), data, "u/f");
    let mut appended = data.clone();
    appended.extend_from_slice(b"appended");
    assert_eq!(std::fs::read(fs.join("u/g")).unwrap(), appended, "u/g");
    run_ok(Command::new("umount").arg(&fs));
    run_ok(Command::new("e2fsck").arg("-fn").arg(&img));
    counts
}

fn assert_counts(what: &str, got: (usize, usize), want: (usize, usize)) {
    assert_eq!(
        got, want,
        "{what}: (sync_file_range, fsync) calls of the daemon over two copy-ups"
    );
}

#[test]
fn journaled_ext4_writes_copied_up_data_out_without_a_commit() {
    assert_counts("journaled ext4", copy_up_syncs(&[], ""), (2, 0));
}

#[test]
fn ext4_without_a_journal_fsyncs_each_copy_up() {
    assert_counts(
        "ext4 -O ^has_journal",
        copy_up_syncs(&["-O", "^has_journal"], ""),
        (0, 2),
    );
}

#[test]
fn fsync_0_syncs_nothing() {
    assert_counts("fsync=0", copy_up_syncs(&[], ",fsync=0"), (0, 0));
}
