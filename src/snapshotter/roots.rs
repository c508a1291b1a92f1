//! Container roots that the snapshotter mounts itself, as stargz and nydus mount theirs:
//! Prepare and View mount a snapshot's stack with stratafs at `snapshots/N/mnt`, and
//! containerd is handed a bind mount of that directory.
//!
//! containerd mounts a snapshot more than once per container: the container's root, and
//! short-lived looks of its own (it reads `/etc/passwd` and `/etc/group` from a temporary
//! mount). A bind mount costs the kernel a fraction of a millisecond; each FUSE mount used to
//! start a daemon through mount.fuse3 and a shell. The mount lives until the snapshot is
//! committed or removed; its daemon runs in a session of its own, so a snapshotter killed or
//! restarted leaves running containers alone (the unit file says `KillMode=process`), and a
//! root found dead (a reboot, a daemon killed) is mounted again when containerd next asks.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use super::Error;

/// Whether something is mounted at `mnt`, and alive.
#[derive(Debug, PartialEq)]
enum State {
    /// Live, on FUSE connection number `.0`.
    Mounted(u32),
    /// Mounted, but its daemon is gone ("Transport endpoint is not connected").
    Dead,
    NotMounted,
}

fn state(mnt: &Path) -> State {
    let Some(parent) = mnt.parent() else {
        return State::NotMounted;
    };
    match (rustix::fs::stat(mnt), rustix::fs::stat(parent)) {
        (Ok(m), Ok(p)) if m.st_dev != p.st_dev => {
            if answers(mnt) {
                State::Mounted(rustix::fs::minor(m.st_dev))
            } else {
                State::Dead
            }
        }
        (Err(rustix::io::Errno::NOTCONN), _) => State::Dead,
        _ => State::NotMounted,
    }
}

/// Whether the daemon behind the mount at `mnt` answers: a stat the kernel must send (the
/// attributes it caches would hide a dead daemon for as long as they last), on a thread of
/// its own, so that a hung daemon costs the snapshotter a short wait and not its service.
fn answers(mnt: &Path) -> bool {
    let (tx, rx) = std::sync::mpsc::channel();
    let p = mnt.to_path_buf();
    let spawned = std::thread::Builder::new()
        .name("root-probe".into())
        .spawn(move || {
            let r = rustix::fs::statx(
                rustix::fs::CWD,
                &p,
                rustix::fs::AtFlags::STATX_FORCE_SYNC,
                rustix::fs::StatxFlags::BASIC_STATS,
            );
            let _ = tx.send(!matches!(r, Err(rustix::io::Errno::NOTCONN)));
        });
    // No thread, or no answer in time: taken as alive (a slow daemon is not remounted).
    spawned.is_err() || rx.recv_timeout(Duration::from_secs(2)).unwrap_or(true)
}

/// Whether `mnt` is a mount point (live or dead): nothing under it may be deleted.
pub fn is_mounted(mnt: &Path) -> bool {
    state(mnt) != State::NotMounted
}

/// Mount the stack `options` (mount options of stratafs, one per element) at `mnt` unless it
/// is mounted and alive already; whether it mounted it now.
pub fn ensure(mnt: &Path, options: &[String]) -> Result<bool, Error> {
    match state(mnt) {
        State::Mounted(_) => return Ok(false),
        State::Dead => {
            warn!(mountpoint = %mnt.display(), "a container root's daemon is gone: mounting it again");
            detach(mnt);
        }
        State::NotMounted => {}
    }
    std::fs::create_dir_all(mnt).map_err(|e| Error::State {
        path: mnt.to_path_buf(),
        source: e,
    })?;
    // This very program: the mount daemonizes and returns once the mount is live, or fails
    // with one line on stderr. By its path, so that ps shows it as stratafs; /proc/self/exe
    // once the file was replaced (an upgrade: the snapshotter is restarted after it).
    let program = std::env::current_exe()
        .ok()
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("/proc/self/exe"));
    let mut cmd = Command::new(program);
    std::os::unix::process::CommandExt::arg0(&mut cmd, "stratafs");
    for o in options {
        cmd.arg("-o").arg(o);
    }
    let out = cmd
        .arg("stratafs")
        .arg(mnt)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| mount_error(mnt, &e.to_string()))?;
    if !out.status.success() {
        let said = String::from_utf8_lossy(&out.stderr);
        let line = said.lines().last().unwrap_or("").trim();
        let line = line.strip_prefix("stratafs: ").unwrap_or(line);
        return Err(mount_error(mnt, line));
    }
    debug!(mountpoint = %mnt.display(), "container root mounted");
    Ok(true)
}

fn mount_error(mnt: &Path, why: &str) -> Error {
    Error::Mount {
        path: mnt.to_path_buf(),
        reason: why.to_string(),
    }
}

/// Unmount the root at `mnt`, if any, and wait (a few seconds at most) for its daemon to let
/// go of the connection, so that what it wrote is all in the upper directory. A root still in
/// use (a container running) is detached instead: it stays with its users, and nothing below
/// `mnt` is reached through the tree any more.
pub fn release(mnt: &Path) {
    match state(mnt) {
        State::NotMounted => {}
        State::Dead => detach(mnt),
        State::Mounted(conn) => {
            if rustix::mount::unmount(mnt, rustix::mount::UnmountFlags::empty()).is_err() {
                info!(mountpoint = %mnt.display(), "container root still in use: detached");
                detach(mnt);
                return;
            }
            let gone = PathBuf::from(format!("/sys/fs/fuse/connections/{conn}"));
            let deadline = Instant::now() + Duration::from_secs(5);
            while gone.exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }
}

fn detach(mnt: &Path) {
    if let Err(e) = rustix::mount::unmount(mnt, rustix::mount::UnmountFlags::DETACH) {
        warn!(mountpoint = %mnt.display(), "unmount: {e}");
    }
}
