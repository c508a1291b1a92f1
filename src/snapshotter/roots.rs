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
        (Ok(m), Ok(p)) if m.st_dev != p.st_dev => State::Mounted(rustix::fs::minor(m.st_dev)),
        (Err(rustix::io::Errno::NOTCONN), _) => State::Dead,
        _ => State::NotMounted,
    }
}

/// Whether `mnt` is a mount point (live or dead): nothing under it may be deleted.
pub fn is_mounted(mnt: &Path) -> bool {
    state(mnt) != State::NotMounted
}

/// Mount the stack `options` (mount options of stratafs, one per element) at `mnt` unless it
/// is mounted and alive already.
pub fn ensure(mnt: &Path, options: &[String]) -> Result<(), Error> {
    match state(mnt) {
        State::Mounted(_) => return Ok(()),
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
    Ok(())
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
