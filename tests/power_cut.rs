//! Power cuts replayed: copy-ups, creates, renames, unlinks and rmdirs through a stratafs
//! mount whose upper layer lives on a filesystem made on a logged block device
//! ([`common::logwrites`]); then the filesystem as a power cut at each of many flushes would
//! have left it (and with a random part of the writes after that flush) is checked: its fsck
//! passes, and a new mount of the same layers over it shows every file whole — a copied-up
//! file is its lower content, never empty, holed or zeros; a name is never lost by a rename.
//!
//! Meanwhile another process fsyncs a file of its own on the same filesystem every few
//! milliseconds, as any busy node does: each fsync commits the journal with whatever of our
//! work it holds, so the flushes fall between every step of a copy-up.

mod common;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::logwrites::{Log, LoggedDevice};
use common::*;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Fs {
    Ext4,
    Ext4NoJournal,
    Xfs,
}

impl Fs {
    /// xfs wants 300 MB at least.
    fn size(self) -> u64 {
        match self {
            Fs::Xfs => 320 << 20,
            _ => 64 << 20,
        }
    }

    fn tools(self) -> &'static [&'static str] {
        match self {
            Fs::Xfs => &["mkfs.xfs", "xfs_repair"],
            _ => &["mkfs.ext4", "e2fsck"],
        }
    }

    fn mkfs(self, img: &Path) {
        let mut cmd = match self {
            Fs::Ext4 => Command::new("mkfs.ext4"),
            Fs::Ext4NoJournal => {
                let mut c = Command::new("mkfs.ext4");
                c.args(["-O", "^has_journal"]);
                c
            }
            Fs::Xfs => {
                let mut c = Command::new("mkfs.xfs");
                c.arg("-q");
                c
            }
        };
        if self != Fs::Xfs {
            cmd.args(["-q", "-F", "-b", "4096"]);
        }
        run_ok(cmd.arg(img));
    }

    /// Whether the filesystem keeps a new file's data ahead of its size (a journal in order):
    /// then a file written without fsync is, after a power cut, a prefix of what was written;
    /// without a journal it may hold anything.
    fn ordered(self) -> bool {
        self != Fs::Ext4NoJournal
    }

    /// Repair after the cut as an operator would (the journal replayed), then check: ext4,
    /// `e2fsck -fy` exits 0 or 1 (errors fixed) and `e2fsck -fn` then finds nothing. xfs
    /// replays its log when mounted, so that comes first ([`Fs::check_after_mount`]).
    fn repair(self, img: &Path) -> Result<(), String> {
        if self == Fs::Xfs {
            return Ok(());
        }
        let fix = run(Command::new("e2fsck").arg("-fy").arg(img));
        if fix.status.code().is_none_or(|c| c > 1) {
            return Err(format!(
                "e2fsck -fy exited {:?}: {}",
                fix.status.code(),
                String::from_utf8_lossy(&fix.stdout)
            ));
        }
        let check = run(Command::new("e2fsck").arg("-fn").arg(img));
        if !check.status.success() {
            return Err(format!(
                "e2fsck -fn after -fy exited {:?}: {}",
                check.status.code(),
                String::from_utf8_lossy(&check.stdout)
            ));
        }
        Ok(())
    }

    fn check_after_mount(self, img: &Path) -> Result<(), String> {
        if self != Fs::Xfs {
            return Ok(());
        }
        let out = run(Command::new("xfs_repair").arg("-n").arg(img));
        if !out.status.success() {
            return Err(format!(
                "xfs_repair -n exited {:?}: {}{}",
                out.status.code(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(())
    }
}

/// What a name may show after a power cut.
#[derive(Debug, Clone)]
struct Allowed {
    /// Whole contents it may have.
    whole: Vec<Vec<u8>>,
    /// It may also be any prefix of this (a file written without fsync on an ordered
    /// filesystem).
    prefix_of: Option<Vec<u8>>,
    /// It may hold anything (a file written without fsync: ext4 may show its size with
    /// zeros, kernel overlayfs over it too).
    anything: bool,
    may_be_absent: bool,
    modes: Vec<u32>,
    /// From this many log entries on (its fsync returned then), only whole, and present
    /// unless the filesystem has no journal to keep its name.
    synced_at: Option<usize>,
}

impl Allowed {
    fn exactly(content: &[u8], may_be_absent: bool) -> Allowed {
        Allowed {
            whole: vec![content.to_vec()],
            prefix_of: None,
            anything: false,
            may_be_absent,
            modes: vec![0o644],
            synced_at: None,
        }
    }

    /// What it may be in a state made of the first `applied` log entries.
    fn at(&self, applied: usize, ordered: bool) -> Allowed {
        let mut a = self.clone();
        if self.synced_at.is_some_and(|n| applied >= n) {
            a.anything = false;
            a.prefix_of = None;
            a.may_be_absent = !ordered;
        }
        a
    }

    fn admits(&self, content: &[u8]) -> bool {
        self.anything
            || self.whole.iter().any(|w| w == content)
            || self
                .prefix_of
                .as_ref()
                .is_some_and(|p| p.starts_with(content))
    }
}

/// Bytes with no zero among them, so that zeros where data was are seen.
fn content(seed: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|j| ((seed * 7919 + j * 31 + j / 4096) % 255 + 1) as u8)
        .collect()
}

struct Workload {
    lower: PathBuf,
    /// Regular files by path under the mount.
    files: BTreeMap<String, Allowed>,
    /// Directories that may (`true`: must) exist.
    dirs: BTreeMap<String, bool>,
    /// Names that must not all be absent at once (a rename's old and new name).
    one_of: Vec<[String; 2]>,
    ordered: bool,
}

impl Workload {
    /// The lower layer: files to copy up by opening for writing (`c/`), by chmod (`m/`), to
    /// rename (`r/`), to unlink (`x/`), directories to empty and remove (`d/`) and files
    /// left alone (`keep/`).
    fn lower(dir: &Path, ordered: bool) -> Workload {
        let lower = dir.join("lower");
        let mut w = Workload {
            lower: lower.clone(),
            files: BTreeMap::new(),
            dirs: BTreeMap::new(),
            one_of: Vec::new(),
            ordered,
        };
        let mut seed = 0;
        let mut put = |w: &mut Workload, rel: String, len: usize| -> Vec<u8> {
            seed += 1;
            let c = content(seed, len);
            let p = lower.join(&rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, &c).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
            w.files.insert(rel, Allowed::exactly(&c, false));
            c
        };
        for d in ["c", "m", "r", "x", "d", "keep"] {
            w.dirs.insert(d.into(), true);
        }
        for i in 0..24 {
            put(&mut w, format!("c/{i:02}"), ((i * 37) % 200 + 1) * 1024 + i);
        }
        for i in 0..12 {
            put(&mut w, format!("m/{i:02}"), (i % 5 + 1) * 3000);
            w.files.get_mut(&format!("m/{i:02}")).unwrap().modes = vec![0o644, 0o640];
        }
        for i in 0..8 {
            let c = put(&mut w, format!("r/{i:02}"), (i + 1) * 10_000);
            let old = format!("r/{i:02}");
            let new = format!("r/{i:02}.moved");
            w.files.get_mut(&old).unwrap().may_be_absent = true;
            w.files.insert(new.clone(), Allowed::exactly(&c, true));
            w.one_of.push([old, new]);
        }
        for i in 0..8 {
            put(&mut w, format!("x/{i:02}"), (i + 1) * 5000);
            w.files.get_mut(&format!("x/{i:02}")).unwrap().may_be_absent = true;
        }
        for i in 0..4 {
            for f in ["a", "b"] {
                let rel = format!("d/{i:02}/{f}");
                put(&mut w, rel.clone(), 2000 + i);
                w.files.get_mut(&rel).unwrap().may_be_absent = true;
            }
            w.dirs.insert(format!("d/{i:02}"), false);
        }
        for i in 0..6 {
            put(&mut w, format!("keep/{i:02}"), 50_000 + i);
        }
        // New files, written through the mount; every other one fsync'ed.
        w.dirs.insert("new".into(), false);
        for i in 0..16 {
            let c = content(1000 + i, (i + 1) * 7000);
            w.files.insert(
                format!("new/{i:02}"),
                Allowed {
                    whole: vec![c.clone()],
                    prefix_of: None,
                    anything: true,
                    may_be_absent: true,
                    modes: vec![0o644, 0o600],
                    synced_at: None,
                },
            );
        }
        w.ordered = ordered;
        w
    }

    /// Do it all through the mount `m`, interleaved so that every kind of step meets the
    /// other process's commits. `durable()`: how many log entries are on disk for sure.
    fn run(&mut self, m: &Path, durable: &dyn Fn() -> usize) {
        std::fs::create_dir(m.join("new")).unwrap();
        for i in 0..24 {
            // Opening for writing copies the whole file up; nothing is written.
            drop(
                std::fs::OpenOptions::new()
                    .append(true)
                    .open(m.join(format!("c/{i:02}")))
                    .unwrap(),
            );
            if i < 12 {
                std::fs::set_permissions(
                    m.join(format!("m/{i:02}")),
                    std::fs::Permissions::from_mode(0o640),
                )
                .unwrap();
            }
            if i < 8 {
                std::fs::rename(
                    m.join(format!("r/{i:02}")),
                    m.join(format!("r/{i:02}.moved")),
                )
                .unwrap();
                std::fs::remove_file(m.join(format!("x/{i:02}"))).unwrap();
            }
            if i < 4 {
                let d = m.join(format!("d/{i:02}"));
                std::fs::remove_file(d.join("a")).unwrap();
                std::fs::remove_file(d.join("b")).unwrap();
                std::fs::remove_dir(&d).unwrap();
            }
            if i < 16 {
                let rel = format!("new/{i:02}");
                let mut f = File::create(m.join(&rel)).unwrap();
                f.write_all(&self.files[&rel].whole[0]).unwrap();
                if i % 2 == 1 {
                    f.sync_all().unwrap();
                    self.files.get_mut(&rel).unwrap().synced_at = Some(durable());
                }
            }
        }
    }

    /// Check the merged view at `m` against what a power cut after the first `applied` log
    /// entries may leave.
    fn check(&self, m: &Path, applied: usize) -> Result<(), String> {
        let mut seen = Vec::new();
        walk(m, m, &mut seen).map_err(|e| format!("listing the mount: {e}"))?;
        for (rel, is_dir) in &seen {
            let known = if *is_dir {
                self.dirs.contains_key(rel)
            } else {
                self.files.contains_key(rel)
            };
            if !known {
                return Err(format!("{rel}: a name nothing made"));
            }
        }
        for (d, must) in &self.dirs {
            if *must && !m.join(d).is_dir() {
                return Err(format!("{d}/: lost"));
            }
        }
        for (rel, a) in &self.files {
            let a = &a.at(applied, self.ordered);
            let p = m.join(rel);
            match std::fs::read(&p) {
                Ok(c) => {
                    if !a.admits(&c) {
                        let zeros = c.iter().filter(|b| **b == 0).count();
                        return Err(format!(
                            "{rel}: {} bytes ({zeros} of them zero), not what was written{}",
                            c.len(),
                            a.whole
                                .first()
                                .map(|w| format!(" ({} bytes)", w.len()))
                                .unwrap_or_default()
                        ));
                    }
                    let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o7777;
                    if !a.modes.contains(&mode) {
                        return Err(format!("{rel}: mode {mode:o}"));
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    if !a.may_be_absent {
                        return Err(format!("{rel}: lost"));
                    }
                }
                Err(e) => return Err(format!("{rel}: {e}")),
            }
        }
        for [a, b] in &self.one_of {
            if !m.join(a).exists() && !m.join(b).exists() {
                return Err(format!("{a} renamed to {b}: both names gone"));
            }
        }
        Ok(())
    }
}

fn walk(root: &Path, d: &Path, out: &mut Vec<(String, bool)>) -> std::io::Result<()> {
    for e in std::fs::read_dir(d)? {
        let e = e?;
        let p = e.path();
        let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
        let dir = e.file_type()?.is_dir();
        out.push((rel, dir));
        if dir {
            walk(root, &p, out)?;
        }
    }
    Ok(())
}

/// Unmount `p`, waiting while it is busy (a daemon still closing its files).
fn umount(p: &Path) {
    wait_until(&format!("{} unmounted", p.display()), || {
        Command::new("umount")
            .arg(p)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
            || !is_mountpoint(p)
    });
}

/// Unmount a stratafs mount (its daemon may still hold the upper layer: [`umount`] of the
/// filesystem below waits for it).
fn unmount_stratafs(m: &Path) {
    fuse_unmount(m);
}

/// Mount `lower` with the upper and work directories under `fs`, over /dev/fuse (what the
/// upper receives does not depend on the transport; said, so the kernel's switch cannot
/// change it).
fn mount_stratafs(lower: &Path, fs: &Path, m: &Path, extra: &[&str]) -> Result<(), String> {
    std::fs::create_dir_all(m).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.arg("-o").arg(format!(
        "{},upperdir={},workdir={},io_uring=off",
        lowerdir_opt(&[lower.to_path_buf()]),
        fs.join("u").display(),
        fs.join("w").display()
    ));
    for e in extra {
        cmd.arg("-o").arg(e);
    }
    let out = run(cmd.arg(m));
    if !out.status.success() {
        return Err(format!(
            "mount: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// A small xorshift: the subsets are random but reproducible from the seed printed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

struct Outcome {
    entries: usize,
    barriers: usize,
    states: usize,
    failures: Vec<String>,
}

/// Record the workload on a fresh `fs` and check the states after power cuts at up to
/// `points` flushes, each also with a random part of the writes after it.
fn record_and_replay(fs: Fs, extra: &[&str], points: usize) -> Outcome {
    require_root();
    for t in ["qemu-storage-daemon", "losetup", "fusermount3", "cp"] {
        require_tool(t);
    }
    for t in fs.tools() {
        require_tool(t);
    }
    let tmp = tempfile::tempdir_in("/var/tmp").unwrap();
    let dir = tmp.path();
    let mut work = Workload::lower(dir, fs.ordered());
    let img = dir.join("disk.img");
    File::create(&img).unwrap().set_len(fs.size()).unwrap();
    fs.mkfs(&img);
    let fsdir = dir.join("fs");
    std::fs::create_dir(&fsdir).unwrap();
    run_ok(
        Command::new("mount")
            .args(["-o", "loop"])
            .arg(&img)
            .arg(&fsdir),
    );
    for d in ["u", "w"] {
        std::fs::create_dir(fsdir.join(d)).unwrap();
    }
    umount(&fsdir);
    let base = dir.join("base.img");
    run_ok(
        Command::new("cp")
            .arg("--sparse=always")
            .arg(&img)
            .arg(&base),
    );

    // Record.
    let dev = LoggedDevice::start(&img, &dir.join("log"), 2 << 30, dir);
    run_ok(Command::new("mount").arg(&dev.loopdev).arg(&fsdir));
    let stop = Arc::new(AtomicBool::new(false));
    let ticker = {
        let stop = stop.clone();
        let path = fsdir.join("ticker");
        std::thread::spawn(move || {
            let mut f = File::create(path).unwrap();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                f.write_all(&n.to_le_bytes().repeat(512)).unwrap();
                f.sync_all().unwrap();
                n += 1;
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            n
        })
    };
    let m = dir.join("mnt");
    let kernel = std::env::var_os("POWER_CUT_KERNEL").is_some();
    if kernel {
        std::fs::create_dir_all(&m).unwrap();
        run_ok(
            Command::new("mount")
                .args(["-t", "overlay", "overlay", "-o"])
                .arg(format!(
                    "lowerdir={},upperdir={},workdir={}",
                    work.lower.display(),
                    fsdir.join("u").display(),
                    fsdir.join("w").display()
                ))
                .arg(&m),
        );
    } else {
        mount_stratafs(&work.lower, &fsdir, &m, extra).unwrap();
    }
    let log_path = dev.log.clone();
    work.run(&m, &|| common::logwrites::durable_entries(&log_path));
    // Checked on the live mount too: the model admits what was done.
    work.check(&m, usize::MAX).unwrap();
    if kernel {
        umount(&m);
    } else {
        unmount_stratafs(&m);
    }
    stop.store(true, Ordering::Relaxed);
    let ticks = ticker.join().unwrap();
    umount(&fsdir);
    dev.stop();
    eprintln!("{fs:?}: {ticks} commits by the other process during the run");

    // Replay.
    let log = Log::open(&dir.join("log"));
    let barriers = log.barriers();
    let seed = std::env::var("POWER_CUT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_cafe_f00d_u64 ^ barriers.len() as u64);
    eprintln!("{fs:?}: seed {seed} (POWER_CUT_SEED)");
    let mut rng = Rng(seed | 1);
    let step = barriers.len().div_ceil(points).max(1);
    let mut chosen: Vec<usize> = barriers.iter().copied().step_by(step).collect();
    if let Some(last) = barriers.last() {
        if chosen.last() != Some(last) {
            chosen.push(*last);
        }
    }
    let prefix = dir.join("prefix.img");
    run_ok(
        Command::new("cp")
            .arg("--sparse=always")
            .arg(&base)
            .arg(&prefix),
    );
    let prefix_file = File::options().write(true).open(&prefix).unwrap();
    let scratch = dir.join("scratch.img");
    let mut applied = 0;
    let mut out = Outcome {
        entries: log.entries.len(),
        barriers: barriers.len(),
        states: 0,
        failures: Vec::new(),
    };
    for b in chosen {
        while applied <= b {
            log.apply(applied, &prefix_file);
            applied += 1;
        }
        prefix_file.sync_data().unwrap();
        // After the flush: nothing more, then a random part of the writes up to the next one.
        let after: Vec<usize> = (b + 1..log.entries.len())
            .take_while(|&i| !log.entries[i].is_barrier())
            .filter(|&i| log.entries[i].is_write())
            .collect();
        let mut subsets = vec![Vec::new()];
        if !after.is_empty() {
            subsets.push(
                after
                    .iter()
                    .copied()
                    .filter(|_| rng.next() % 2 == 0)
                    .collect(),
            );
        }
        for subset in subsets {
            run_ok(
                Command::new("cp")
                    .arg("--sparse=always")
                    .arg(&prefix)
                    .arg(&scratch),
            );
            {
                let f = File::options().write(true).open(&scratch).unwrap();
                for &i in &subset {
                    log.apply(i, &f);
                }
            }
            out.states += 1;
            if let Err(e) = check_state(fs, &work, &scratch, dir, b + 1) {
                out.failures.push(format!(
                    "cut after entry {b} of {} with {} of the {} writes after it: {e}",
                    log.entries.len(),
                    subset.len(),
                    after.len()
                ));
            }
        }
    }
    eprintln!(
        "{fs:?}: {} entries, {} flushes, {} states checked, {} failed",
        out.entries,
        out.barriers,
        out.states,
        out.failures.len()
    );
    out
}

/// One state after a cut: repaired, mounted, and seen through a new stratafs mount.
fn check_state(
    fs: Fs,
    work: &Workload,
    img: &Path,
    dir: &Path,
    applied: usize,
) -> Result<(), String> {
    fs.repair(img)?;
    let fsdir = dir.join("check-fs");
    std::fs::create_dir_all(&fsdir).unwrap();
    let out = run(Command::new("mount")
        .args(["-o", "loop"])
        .arg(img)
        .arg(&fsdir));
    if !out.status.success() {
        return Err(format!(
            "mount after the cut: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let m = dir.join("check-mnt");
    let seen = match mount_stratafs(&work.lower, &fsdir, &m, &[]) {
        Ok(()) => {
            let r = work.check(&m, applied);
            unmount_stratafs(&m);
            r
        }
        Err(e) => Err(e),
    };
    umount(&fsdir);
    seen?;
    fs.check_after_mount(img)
}

fn assert_whole(o: Outcome) {
    assert!(
        o.barriers >= 20,
        "only {} flushes were recorded",
        o.barriers
    );
    assert!(
        o.failures.is_empty(),
        "{} of {} states after a power cut are broken:\n{}",
        o.failures.len(),
        o.states,
        o.failures.join("\n")
    );
}

#[test]
fn ext4_with_a_journal_keeps_every_copy_up_whole() {
    assert_whole(record_and_replay(Fs::Ext4, &[], usize::MAX));
}

#[test]
fn ext4_without_a_journal_keeps_every_copy_up_whole() {
    assert_whole(record_and_replay(Fs::Ext4NoJournal, &[], usize::MAX));
}

#[test]
fn xfs_keeps_every_copy_up_whole() {
    assert_whole(record_and_replay(Fs::Xfs, &[], usize::MAX));
}

/// The replay has teeth: copy-ups that put nothing on disk before the rename (`fsync=0`)
/// are caught broken (an empty or zero-filled file under a copied-up name) after some cut.
#[test]
fn copy_ups_without_sync_are_caught_broken() {
    let o = record_and_replay(Fs::Ext4, &["fsync=0"], usize::MAX);
    assert!(
        o.failures
            .iter()
            .any(|f| f.contains(": c/") || f.contains(": m/") || f.contains(": r/")),
        "no copied-up file broken among {} states with fsync=0: the replay would not see a \
         missing sync; failures: {:?}",
        o.states,
        o.failures
    );
    for f in &o.failures {
        eprintln!("with fsync=0: {f}");
    }
}
