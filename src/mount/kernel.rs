//! Making the kernel mount and getting its connection: `mount(2)` with type `fuse.stratafs`
//! and our own `/dev/fuse` descriptor where we may (root, or root in a user namespace), else
//! through the setuid `fusermount3`, which mounts and passes the descriptor back over a
//! socket (`_FUSE_COMMFD`), as libfuse does.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use rustix::mount::MountFlags;
use tracing::debug;

use super::plan::MountPlan;
use super::session::Acl;

/// Who may use the mount: as root it serves containers whose processes run as other users.
pub fn acl(plan: &MountPlan) -> Acl {
    let opts = &plan.options;
    let root = rustix::process::geteuid().is_root();
    if opts.allow_other || (root && !opts.allow_root) {
        Acl::All
    } else if opts.allow_root {
        Acl::RootAndOwner
    } else {
        Acl::Owner
    }
}

/// The mount flags the plan asks for, by their mount(8) names.
fn flags(plan: &MountPlan) -> (MountFlags, Vec<&'static str>) {
    let has = |f: &str| plan.options.has_flag(f);
    let mut flags = MountFlags::empty();
    let mut names = vec![];
    let mut set = |on: bool, f: MountFlags, name: &'static str| {
        if on {
            flags |= f;
            names.push(name);
        }
    };
    set(plan.read_only, MountFlags::RDONLY, "ro");
    set(!has("dev"), MountFlags::NODEV, "nodev");
    set(!has("suid"), MountFlags::NOSUID, "nosuid");
    set(has("noexec"), MountFlags::NOEXEC, "noexec");
    set(has("noatime"), MountFlags::NOATIME, "noatime");
    set(has("sync"), MountFlags::SYNCHRONOUS, "sync");
    set(has("dirsync"), MountFlags::DIRSYNC, "dirsync");
    (flags, names)
}

/// Mount `plan` on `mountpoint`: the connection's `/dev/fuse` descriptor.
pub fn mount(plan: &MountPlan, mountpoint: &Path, acl: Acl) -> io::Result<OwnedFd> {
    let dev: OwnedFd = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")?
        .into();
    let st = rustix::fs::stat(mountpoint)?;
    let uid = rustix::process::getuid().as_raw();
    let gid = rustix::process::getgid().as_raw();
    let mut data = format!(
        "fd={},rootmode={:o},user_id={uid},group_id={gid},default_permissions",
        dev.as_raw_fd(),
        st.st_mode & libc::S_IFMT
    );
    if acl != Acl::Owner {
        data.push_str(",allow_other");
    }
    let fsname = plan.options.fsname.as_deref().unwrap_or(&plan.source);
    let (flags, names) = flags(plan);
    let data = std::ffi::CString::new(data).map_err(io::Error::other)?;
    match rustix::mount::mount(fsname, mountpoint, "fuse.stratafs", flags, data.as_c_str()) {
        Ok(()) => Ok(dev),
        Err(rustix::io::Errno::PERM | rustix::io::Errno::ACCESS) => {
            drop(dev);
            let mut opts = vec![
                format!("fsname={fsname}"),
                "subtype=stratafs".into(),
                "default_permissions".into(),
            ];
            opts.extend(names.iter().map(|s| s.to_string()));
            if acl != Acl::Owner {
                opts.push("allow_other".into());
            }
            fusermount(mountpoint, &opts.join(","))
        }
        Err(e) => Err(e.into()),
    }
}

/// Have `fusermount3` mount and hand us the descriptor.
fn fusermount(mountpoint: &Path, opts: &str) -> io::Result<OwnedFd> {
    let (ours, theirs) = UnixStream::pair()?;
    let fd = theirs.as_raw_fd();
    let mut cmd = Command::new("fusermount3");
    cmd.arg("-o")
        .arg(opts)
        .arg("--")
        .arg(mountpoint)
        .env("_FUSE_COMMFD", fd.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: only fcntl between fork and exec; the descriptor is inherited on purpose.
    unsafe {
        cmd.pre_exec(move || {
            if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| io::Error::new(e.kind(), format!("fusermount3: {e}")))?;
    drop(theirs);
    let received = receive_fd(&ours);
    drop(ours);
    let out = child.wait_with_output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    debug!(status = %out.status, stderr = %stderr.trim(), "fusermount3");
    match received {
        Ok(Some(fd)) => Ok(fd),
        Ok(None) | Err(_) => {
            let why = stderr.trim().lines().last().unwrap_or("").to_string();
            let why = why
                .strip_prefix("fusermount3: ")
                .unwrap_or(&why)
                .to_string();
            Err(io::Error::other(if why.is_empty() {
                format!("fusermount3 failed ({})", out.status)
            } else {
                format!("fusermount3: {why}")
            }))
        }
    }
}

/// The descriptor `fusermount3` sends (SCM_RIGHTS with one byte); `None` if it sent none.
fn receive_fd(sock: &UnixStream) -> io::Result<Option<OwnedFd>> {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
    let mut byte = [0u8; 1];
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut anc = RecvAncillaryBuffer::new(&mut space);
    let mut iov = [io::IoSliceMut::new(&mut byte)];
    loop {
        match rustix::net::recvmsg(sock.as_fd(), &mut iov, &mut anc, RecvFlags::CMSG_CLOEXEC) {
            Ok(_) => break,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    let fd = anc.drain().find_map(|m| match m {
        RecvAncillaryMessage::ScmRights(mut fds) => fds.next(),
        _ => None,
    });
    Ok(fd)
}

/// Take the mount away (lazily: nothing may be waiting on a server that is gone): with
/// `umount2` where we may, else through `fusermount3 -u`, as a mount made through it needs.
pub fn unmount(mountpoint: &Path) {
    use rustix::mount::{UnmountFlags, unmount};
    match unmount(mountpoint, UnmountFlags::DETACH) {
        Ok(()) => {}
        Err(rustix::io::Errno::PERM | rustix::io::Errno::ACCESS) => {
            let r = Command::new("fusermount3")
                .arg("-u")
                .arg("-z")
                .arg("--")
                .arg(mountpoint)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            if !r.is_ok_and(|s| s.success()) {
                tracing::warn!(mountpoint = %mountpoint.display(), "fusermount3 -u failed");
            }
        }
        Err(e) => debug!(mountpoint = %mountpoint.display(), error = %e, "not unmounted"),
    }
}
