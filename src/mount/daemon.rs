//! Daemonizing the way mount programs must: the command returns only once the mount is live,
//! exits 0 then, and non-zero with the daemon's one-line reason otherwise.
//!
//! The fork happens before anything is mounted or any thread exists; the child reports over a
//! pipe, so the parent's exit status reflects the real outcome.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;

use crate::mount::Error;

/// The child's end of the readiness pipe.
#[derive(Debug)]
pub struct Ready(Option<std::fs::File>);

impl Ready {
    /// For `-f`: nobody waits.
    pub fn foreground() -> Ready {
        Ready(None)
    }

    /// A server started by a keeper: it reports to the keeper on `fd`.
    pub fn to_keeper(fd: OwnedFd) -> Ready {
        Ready(Some(std::fs::File::from(fd)))
    }

    /// The mount is live: release the waiting parent.
    pub fn ok(&mut self) {
        if let Some(mut f) = self.0.take() {
            let _ = f.write_all(b"ok\n");
        }
    }

    /// Report a failure line to the waiting parent, which prints it and exits 1; the daemon
    /// child then exits too, so the line is printed once. In the foreground this does nothing
    /// and the caller's error is the one printed.
    pub fn fail(&mut self, msg: &str) {
        if let Some(mut f) = self.0.take() {
            let _ = f.write_all(format!("err:{msg}\n").as_bytes());
            drop(f);
            std::process::exit(1);
        }
    }

    pub fn is_daemon(&self) -> bool {
        self.0.is_some()
    }
}

/// Fork. The parent waits for the child's report and exits the process with it; the child
/// returns, detached into its own session.
pub fn fork() -> Result<Ready, Error> {
    let (rd, wr): (OwnedFd, OwnedFd) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| Error::Daemon(format!("pipe: {e}")))?;
    // SAFETY: single-threaded at this point (checked by the caller's design: no thread is
    // spawned before the mount), so the child may run arbitrary code.
    match unsafe { libc::fork() } {
        -1 => Err(Error::Daemon(format!(
            "fork: {}",
            std::io::Error::last_os_error()
        ))),
        0 => {
            drop(rd);
            let _ = rustix::process::setsid();
            Ok(Ready(Some(std::fs::File::from(wr))))
        }
        _child => {
            drop(wr);
            let mut msg = String::new();
            let _ = std::fs::File::from(rd).read_to_string(&mut msg);
            let line = msg.lines().next().unwrap_or("");
            if line == "ok" {
                std::process::exit(0);
            }
            let reason = line
                .strip_prefix("err:")
                .unwrap_or("daemon exited before the mount was live");
            eprintln!("stratafs: {reason}");
            std::process::exit(1);
        }
    }
}

/// Where log lines go: stderr, or syslog (the journal) once a daemon has let go of its
/// terminal, so that what a mount started by podman reports (a layer that fails
/// verification, a server restarted) reaches the operator.
pub struct LogSink(Vec<u8>);

impl LogSink {
    pub fn new() -> LogSink {
        LogSink(Vec::new())
    }
}

impl Default for LogSink {
    fn default() -> Self {
        LogSink::new()
    }
}

impl Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if SYSLOG.get().is_none() {
            return std::io::stderr().write(buf);
        }
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let text = std::mem::take(&mut self.0);
        let Some(path) = SYSLOG.get() else {
            return std::io::stderr().flush();
        };
        // A socket per event, not one kept: a keeper's forked server closes descriptors it
        // does not know, and a kept number could come to name another socket.
        let Ok(sock) = std::os::unix::net::UnixDatagram::unbound() else {
            return Ok(());
        };
        if sock.connect(path).is_err() {
            return Ok(());
        }
        for line in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let level = |w: &[u8]| line.windows(w.len()).take(48).any(|x| x == w);
            // Facility daemon (3 << 3) with the line's severity.
            let prio = 24
                + if level(b"ERROR") {
                    3
                } else if level(b"WARN") {
                    4
                } else {
                    6
                };
            let mut msg = format!("<{prio}>stratafs[{}]: ", std::process::id()).into_bytes();
            msg.extend_from_slice(line);
            let _ = sock.send(&msg);
        }
        Ok(())
    }
}

impl Drop for LogSink {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

/// The syslog socket log lines go to once the daemon let go of its terminal:
/// `STRATAFS_SYSLOG` (tests), else `/dev/log`. Where none listens, lines are dropped, as
/// they would be on /dev/null.
static SYSLOG: std::sync::OnceLock<std::ffi::OsString> = std::sync::OnceLock::new();

/// Point stdin/stdout/stderr at /dev/null so that callers reading our output until EOF
/// (podman, containerd) are not held by the daemon; log lines go to syslog from then on.
pub fn detach_stdio() {
    let _ = SYSLOG.set(std::env::var_os("STRATAFS_SYSLOG").unwrap_or_else(|| "/dev/log".into()));
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        for fd in 0..3 {
            // SAFETY: dup2 onto the standard descriptors, which we own.
            unsafe {
                libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), fd);
            }
        }
    }
}
