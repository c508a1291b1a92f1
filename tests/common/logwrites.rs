//! Power cuts, recorded and replayed: a block device whose every write, flush and discard is
//! logged, and a replayer of that log.
//!
//! There is no device-mapper here (no dm-log-writes), so the device is built from user-space
//! parts: qemu-storage-daemon's `blklogwrites` driver over a plain image file writes the
//! dm-log-writes format, its FUSE export shows the device as a file, and a loop device over
//! that file is what the filesystem is made on. The loop driver does not claim FUA, so the
//! block layer turns a FUA write into write + flush: flushes are the only barriers in the log.
//!
//! A state after a power cut is the image the log started from, every entry up to a flush
//! (what the flush made durable), and any subset of the writes after it (what the disk's cache
//! may or may not have written before the power went).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::{run_ok, wait_until};

const MAGIC: u64 = 0x006a_7366_7773_6872;
pub const FLUSH: u64 = 1;
pub const FUA: u64 = 2;
pub const DISCARD: u64 = 4;
pub const MARK: u64 = 8;

/// One logged request.
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    /// Where on the device, in the log's sectors.
    pub sector: u64,
    pub sectors: u64,
    pub flags: u64,
    /// Where its data starts in the log, in bytes (writes only).
    data: u64,
}

impl Entry {
    pub fn is_barrier(&self) -> bool {
        self.flags & (FLUSH | FUA) != 0
    }

    /// A write of data (or of zeroes, which the log stores as data).
    pub fn is_write(&self) -> bool {
        self.flags & (DISCARD | MARK) == 0 && self.sectors > 0
    }
}

/// A log in the dm-log-writes format.
pub struct Log {
    file: File,
    sector: u64,
    pub entries: Vec<Entry>,
}

impl Log {
    /// Read the log at `path`: as many entries as its super block counts (it is rewritten at
    /// every flush, so entries after the last flush are not counted).
    pub fn open(path: &Path) -> Log {
        let file = File::open(path).unwrap_or_else(|e| panic!("log {}: {e}", path.display()));
        let mut sb = [0u8; 32];
        file.read_exact_at(&mut sb, 0).unwrap();
        let word = |b: &[u8], i: usize| u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().unwrap());
        assert_eq!(
            word(&sb, 0),
            MAGIC,
            "{}: not a dm-log-writes log",
            path.display()
        );
        assert_eq!(word(&sb, 1), 1, "{}: log version", path.display());
        let count = word(&sb, 2);
        let sector = word(&sb, 3) & 0xffff_ffff;
        assert!(
            sector.is_power_of_two() && sector >= 512,
            "log sector size {sector}"
        );
        let mut entries = Vec::with_capacity(count as usize);
        let mut at = 1u64; // in sectors; the super block is sector 0
        for _ in 0..count {
            let mut h = [0u8; 32];
            file.read_exact_at(&mut h, at * sector).unwrap();
            let e = Entry {
                sector: word(&h, 0),
                sectors: word(&h, 1),
                flags: word(&h, 2),
                data: (at + 1) * sector,
            };
            // A discard carries no data; a mark carries its name in data_len bytes.
            at += 1 + match () {
                _ if e.flags & DISCARD != 0 => 0,
                _ if e.flags & MARK != 0 => word(&h, 3).div_ceil(sector),
                _ => e.sectors,
            };
            entries.push(e);
        }
        Log {
            file,
            sector,
            entries,
        }
    }

    /// Apply entry `i` to the device image `img`: a write writes, a discard zeroes (what the
    /// loop device over a file reads back after a punched hole), the rest changes nothing.
    pub fn apply(&self, i: usize, img: &File) {
        let e = self.entries[i];
        let len = (e.sectors * self.sector) as usize;
        if e.flags & DISCARD != 0 {
            img.write_all_at(&vec![0; len], e.sector * self.sector)
                .unwrap();
        } else if e.is_write() {
            let mut buf = vec![0u8; len];
            self.file.read_exact_at(&mut buf, e.data).unwrap();
            img.write_all_at(&buf, e.sector * self.sector).unwrap();
        }
    }

    /// Indices of the barriers (flushes), in log order.
    pub fn barriers(&self) -> Vec<usize> {
        (0..self.entries.len())
            .filter(|&i| self.entries[i].is_barrier())
            .collect()
    }
}

/// How many entries of the log at `path` are durable for sure: its super block, rewritten
/// (and the log flushed) at every flush of the device, counts them.
pub fn durable_entries(path: &Path) -> usize {
    let mut sb = [0u8; 24];
    File::open(path).unwrap().read_exact_at(&mut sb, 0).unwrap();
    u64::from_le_bytes(sb[16..24].try_into().unwrap()) as usize
}

/// A logged device: the image, its log, the daemon that writes the log and the loop device
/// the filesystem lives on.
pub struct LoggedDevice {
    daemon: Child,
    export: PathBuf,
    pub log: PathBuf,
    pub loopdev: String,
}

impl LoggedDevice {
    /// Start logging every request to `img` into `log` (`log_bytes` long), and attach a loop
    /// device to it.
    pub fn start(img: &Path, log: &Path, log_bytes: u64, dir: &Path) -> LoggedDevice {
        File::create(log).unwrap().set_len(log_bytes).unwrap();
        let export = dir.join("export");
        File::create(&export).unwrap();
        let daemon = Command::new("qemu-storage-daemon")
            .arg("--blockdev")
            .arg(format!(
                "driver=file,filename={},node-name=data",
                img.display()
            ))
            .arg("--blockdev")
            .arg(format!(
                "driver=file,filename={},node-name=log",
                log.display()
            ))
            .arg("--blockdev")
            .arg(
                "driver=blklogwrites,file=data,log=log,log-sector-size=512,log-append=off,\
                 node-name=logged",
            )
            .arg("--export")
            .arg(format!(
                "type=fuse,id=dev,node-name=logged,mountpoint={},writable=on",
                export.display()
            ))
            .stdout(Stdio::null())
            .spawn()
            .expect("start qemu-storage-daemon");
        wait_until("the logged device is exported", || {
            super::mount_type(&export).is_some()
        });
        let out = run_ok(Command::new("losetup").args(["-f", "--show"]).arg(&export));
        let loopdev = String::from_utf8(out.stdout).unwrap().trim().to_string();
        LoggedDevice {
            daemon,
            export,
            log: log.to_path_buf(),
            loopdev,
        }
    }

    /// Detach the loop device and stop logging; the log is complete then.
    pub fn stop(mut self) {
        self.detach();
    }

    fn detach(&mut self) {
        if self.loopdev.is_empty() {
            return;
        }
        let _ = Command::new("losetup")
            .arg("-d")
            .arg(&self.loopdev)
            .status();
        self.loopdev.clear();
        // SIGTERM: the daemon ends its export and closes the log cleanly.
        let _ = Command::new("kill")
            .arg(self.daemon.id().to_string())
            .status();
        let _ = self.daemon.wait();
        if super::is_mountpoint(&self.export) {
            let _ = Command::new("umount").arg("-l").arg(&self.export).status();
        }
    }
}

impl Drop for LoggedDevice {
    fn drop(&mut self) {
        self.detach();
    }
}
