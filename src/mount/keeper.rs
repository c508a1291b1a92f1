//! The keeper: the process that holds a mount's connection so that its server may die.
//!
//! A connection lives while any process holds its `/dev/fuse` file. The keeper makes the
//! mount, then runs the server, handed the descriptor, the [`Journal`], the layer roots
//! (opened before the mount, which may hide one of them) and a pipe to say it is ready
//! ([`ServeEnv`]). The first server is a fork of the keeper (no exec: a short-lived mount,
//! such as the one containerd makes to read `/etc/passwd`, costs little more than without a
//! keeper); when it dies while the mount is live, the keeper starts this program again with
//! the same command line on the same connection; it resumes from the journal and asks the
//! kernel to resend what was in flight. More than [`MAX_RESTARTS`] in
//! [`WINDOW`]: the keeper takes the mount away and exits 1, so nothing ever hangs.
//!
//! One keeper per mount, not one per node: it shares nothing with other mounts, so a bug or
//! a kill hits one mount only, and it is small (a fork of the mount command, which never
//! loads the image: no threads, no caches).

use std::collections::VecDeque;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tracing::{error, info, warn};

use super::daemon::Ready;
use super::journal::Journal;
use super::metrics::page::Page;
use super::wire::init;

/// Restarts allowed within [`WINDOW`] before the keeper gives up.
pub const MAX_RESTARTS: usize = 16;
pub const WINDOW: Duration = Duration::from_secs(60);

const ENV: &str = "STRATAFS_SERVE";

/// What a server is handed by its keeper (in the environment: descriptor numbers).
#[derive(Debug)]
pub struct ServeEnv {
    pub dev: OwnedFd,
    pub journal: OwnedFd,
    /// Where to say "ok" or "err:REASON", once.
    pub ready: OwnedFd,
    /// The layer roots in plan order (lower layers top first, then the upper and work
    /// directories): open them through `/proc/self/fd/N`.
    pub layers: Vec<RawFd>,
    /// Whether this server is a restart (not the first start).
    pub restart: bool,
    /// The mount's metrics page, which the keeper keeps.
    pub page: Option<OwnedFd>,
}

/// Whether this process is a server a keeper started (and must not touch its mountpoint
/// before it serves).
pub fn is_server() -> bool {
    std::env::var_os(ENV).is_some()
}

impl ServeEnv {
    /// The handover, if this process is a server started by a keeper. The variable is
    /// removed, so nothing this process starts takes it for its own.
    pub fn take() -> Option<ServeEnv> {
        let v = std::env::var(ENV).ok()?;
        // SAFETY: single-threaded at this point (the CLI has only parsed its arguments).
        unsafe { std::env::remove_var(ENV) };
        // Started as /proc/self/exe, the process would be called "exe" in ps and pgrep.
        let _ = rustix::thread::set_name(c"stratafs");
        let mut fields = std::collections::HashMap::new();
        for kv in v.split(';') {
            let (k, val) = kv.split_once('=')?;
            fields.insert(k, val);
        }
        let fd = |k: &str| -> Option<OwnedFd> {
            let n: RawFd = fields.get(k)?.parse().ok()?;
            // SAFETY: the keeper passed this descriptor to us, and nobody else owns it here.
            Some(unsafe { OwnedFd::from_raw_fd(n) })
        };
        let layers = fields
            .get("layers")?
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|s| s.parse().ok())
            .collect::<Option<Vec<RawFd>>>()?;
        Some(ServeEnv {
            dev: fd("dev")?,
            journal: fd("journal")?,
            ready: fd("ready")?,
            layers,
            restart: fields.get("restart") == Some(&"1"),
            page: fd("page"),
        })
    }

    /// Where the server opens layer `i` of the plan's order.
    pub fn layer_path(&self, i: usize) -> Option<PathBuf> {
        self.layers
            .get(i)
            .map(|fd| PathBuf::from(format!("/proc/self/fd/{fd}")))
    }
}

pub struct Keeper {
    pub dev: OwnedFd,
    pub journal: Journal,
    pub layers: Vec<OwnedFd>,
    pub mountpoint: PathBuf,
    pub upper: Option<PathBuf>,
    /// The program servers run: this one, as it was when the keeper started.
    pub program: PathBuf,
    /// What the status file says of the layers and the metrics ([`Status`]).
    pub labels: Vec<String>,
    pub group: Option<String>,
    /// `metrics=`: bound before the mount, served once it is live.
    pub metrics: Option<std::net::TcpListener>,
    /// How the first server serves, run in a fork of the keeper; `None`: as `program`.
    pub first: Option<FirstServer>,
}

/// The first server's work, given its handover; returns the exit status.
pub type FirstServer = Box<dyn FnOnce(ServeEnv) -> i32>;

/// A server process, waited for by pid whether it was forked or spawned.
struct ServerPid(libc::pid_t);

impl ServerPid {
    fn id(&self) -> u32 {
        self.0 as u32
    }

    fn wait(&self) -> std::io::Result<std::process::ExitStatus> {
        let mut st = 0;
        loop {
            // SAFETY: waits for a child of this process, into a local.
            let r = unsafe { libc::waitpid(self.0, &mut st, 0) };
            if r == self.0 {
                return Ok(std::process::ExitStatus::from_raw(st));
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

/// Close every descriptor above stderr but `keep`, with close_range(2) over the gaps (no
/// listing of /proc/self/fd: a mount lists no directory it does not serve).
fn close_all_but(keep: &[RawFd]) {
    let mut keep: Vec<u32> = keep.iter().filter_map(|&f| u32::try_from(f).ok()).collect();
    keep.sort_unstable();
    let mut from = 3u32;
    for k in keep.into_iter().filter(|&k| k >= 3) {
        if k > from {
            close_range(from, k - 1);
        }
        from = k + 1;
    }
    close_range(from, u32::MAX);
}

fn close_range(first: u32, last: u32) {
    // SAFETY: closes descriptors nothing in this process uses any more (after the fork).
    unsafe { libc::syscall(libc::SYS_close_range, first, last, 0u32) };
}

/// Whether this process has one thread (a fork of it may then run anything).
fn single_threaded() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .any(|l| l.strip_prefix("Threads:").is_some_and(|n| n.trim() == "1"))
    })
}

impl Keeper {
    /// Open the layer roots the server will need, before the mount may cover one.
    pub fn open_layers(dirs: &[PathBuf]) -> std::io::Result<Vec<OwnedFd>> {
        dirs.iter()
            .map(|d| {
                rustix::fs::open(
                    d,
                    rustix::fs::OFlags::PATH
                        | rustix::fs::OFlags::DIRECTORY
                        | rustix::fs::OFlags::CLOEXEC,
                    rustix::fs::Mode::empty(),
                )
                .map_err(std::io::Error::from)
            })
            .collect()
    }

    /// Start a server: the first in a fork of this process when it was given one
    /// ([`Keeper::first`]), every other as `program`.
    fn spawn(
        &mut self,
        program: &Path,
        restart: bool,
        page: Option<RawFd>,
    ) -> std::io::Result<(ServerPid, std::fs::File)> {
        let (rd, wr) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
        if !restart && single_threaded() {
            if let Some(first) = self.first.take() {
                return self.fork_first(first, rd, wr, page);
            }
        }
        let pass: Vec<RawFd> = [
            self.dev.as_raw_fd(),
            self.journal.fd().as_raw_fd(),
            wr.as_raw_fd(),
        ]
        .into_iter()
        .chain(self.layers.iter().map(|l| l.as_raw_fd()))
        .chain(page)
        .collect();
        let layers: Vec<String> = self
            .layers
            .iter()
            .map(|l| l.as_raw_fd().to_string())
            .collect();
        let mut env = format!(
            "dev={};journal={};ready={};layers={};restart={}",
            pass[0],
            pass[1],
            pass[2],
            layers.join(","),
            u8::from(restart)
        );
        if let Some(p) = page {
            env += &format!(";page={p}");
        }
        let mut cmd = Command::new(program);
        if let Some(arg0) = std::env::args_os().next() {
            cmd.arg0(arg0);
        }
        cmd.args(std::env::args_os().skip(1)).env(ENV, env);
        // SAFETY: only fcntl between fork and exec, on descriptors this process owns.
        unsafe {
            cmd.pre_exec(move || {
                for fd in &pass {
                    if libc::fcntl(*fd, libc::F_SETFD, 0) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        drop(wr);
        // Waited for by pid like a forked one: std's Child does nothing when dropped.
        Ok((
            ServerPid(child.id() as libc::pid_t),
            std::fs::File::from(rd),
        ))
    }

    /// The first server as a fork of the keeper: no exec, no loader relocations (the pages
    /// stay shared with the keeper), no second parse of the options. Only while the keeper
    /// is single-threaded; restarts and upgrades run the program.
    fn fork_first(
        &self,
        first: FirstServer,
        rd: OwnedFd,
        wr: OwnedFd,
        page: Option<RawFd>,
    ) -> std::io::Result<(ServerPid, std::fs::File)> {
        // SAFETY: the keeper has one thread (checked by the caller), so the child may run
        // arbitrary code; it never returns into the keeper's loop (it exits).
        match unsafe { libc::fork() } {
            -1 => Err(std::io::Error::last_os_error()),
            0 => {
                drop(rd);
                let env = (|| -> std::io::Result<ServeEnv> {
                    let page = page
                        .map(|p| {
                            // SAFETY: the keeper's page file, open for the whole of its run.
                            let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(p) };
                            fd.try_clone_to_owned()
                        })
                        .transpose()?;
                    Ok(ServeEnv {
                        dev: self.dev.try_clone()?,
                        journal: self.journal.fd().try_clone_to_owned()?,
                        ready: wr,
                        layers: self.layers.iter().map(|l| l.as_raw_fd()).collect(),
                        restart: false,
                        page,
                    })
                })();
                let code = match env {
                    Ok(env) => {
                        // What an exec would have closed (the keeper's own readiness pipe,
                        // whose reader waits for its end; its metrics listener): all but
                        // the handover and the standard descriptors.
                        let keep: Vec<RawFd> = [env.dev.as_raw_fd(), env.journal.as_raw_fd()]
                            .into_iter()
                            .chain([env.ready.as_raw_fd()])
                            .chain(env.layers.iter().copied())
                            .chain(env.page.as_ref().map(|p| p.as_raw_fd()))
                            .collect();
                        close_all_but(&keep);
                        first(env)
                    }
                    Err(e) => {
                        error!("server: {e}");
                        1
                    }
                };
                std::process::exit(code)
            }
            pid => {
                drop(wr);
                Ok((ServerPid(pid), std::fs::File::from(rd)))
            }
        }
    }

    /// Whether the connection is still live (not unmounted, not aborted).
    fn alive(&self) -> bool {
        let mut p = libc::pollfd {
            fd: self.dev.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd on a descriptor we own, no wait.
        let r = unsafe { libc::poll(&mut p, 1, 0) };
        r >= 0 && p.revents & libc::POLLERR == 0
    }

    /// End the connection for good (every waiting request fails with ENOTCONN) and take the
    /// mount away.
    fn give_up(&self) {
        if let Some(conn) = connection_of(&self.mountpoint) {
            let _ = std::fs::write(format!("/sys/fs/fuse/connections/{conn}/abort"), "1");
        }
        super::kernel::unmount(&self.mountpoint);
    }

    /// Start the server and keep one running until the mount ends. `ready` is released once
    /// the first server serves.
    pub fn run(mut self, mut ready: Ready) -> Result<(), super::Error> {
        let status = Status::path_for(&self.mountpoint);
        if status.is_none() {
            warn!(mountpoint = %self.mountpoint.display(), "not in the mount table: no status file");
        }
        let page = status.as_deref().and_then(|p| self.make_page(p));
        let page_fd = page.as_ref().map(|(_, f)| f.as_raw_fd());
        let mut metrics = self.metrics.take();
        let metrics_addr = metrics.as_ref().and_then(|l| l.local_addr().ok());
        let mut starts = Starts::default();
        let mut restarts = 0u32;
        let mut first = true;
        let mut program = self.program.clone();
        loop {
            if let Some((p, _)) = &page {
                p.set_restarts(restarts.into());
            }
            let (child, mut pipe) = match self.spawn(&program, !first, page_fd) {
                Ok(c) => c,
                Err(e) => {
                    let msg = format!(
                        "{}: cannot start the server: {e}",
                        self.mountpoint.display()
                    );
                    if first {
                        super::kernel::unmount(&self.mountpoint);
                        ready.fail(&msg);
                    }
                    self.give_up();
                    return Err(super::Error::Daemon(msg));
                }
            };
            let mut said = String::new();
            let _ = pipe.read_to_string(&mut said);
            let line = said.lines().next().unwrap_or("").to_string();
            // Only the INIT: the keeper stays small whatever the journal holds.
            let on_rings = self
                .journal
                .saved_init()
                .and_then(|i| i.negotiated())
                .is_some_and(|n| n.has(init::OVER_IO_URING));
            // The status file before the mount command returns: `stratafs status` right
            // after a mount must find it.
            if let (Some(p), true) = (&status, !first || line == "ok") {
                let transport = if on_rings { "io_uring" } else { "dev" };
                self.status(&child, restarts, transport, metrics_addr)
                    .write(p);
            }
            if first {
                if line != "ok" {
                    let _ = child.wait();
                    return Err(self.first_failed(&line, &mut ready));
                }
                let daemon = ready.is_daemon();
                ready.ok();
                if daemon {
                    super::daemon::detach_stdio();
                }
                if let (Some(l), Some(p)) = (metrics.take(), &status) {
                    super::metrics::http::serve(l, mount_metrics(p.clone()));
                }
                first = false;
            }
            let exit = child.wait();
            if exit.as_ref().is_ok_and(|s| s.success()) || !self.alive() {
                if let Some(p) = &status {
                    Status::remove(p);
                }
                return Ok(());
            }
            let how = match exit {
                Ok(s) => match s.signal() {
                    Some(sig) => format!("killed by signal {sig}"),
                    None => format!("exit status {}", s.code().unwrap_or(-1)),
                },
                Err(e) => e.to_string(),
            };
            if let Some(next) = status.as_deref().and_then(take_upgrade) {
                info!(mountpoint = %self.mountpoint.display(), binary = %next.display(), "upgrade: the server is handed over");
                program = next;
                restarts += 1;
                continue;
            }
            if let Some(why) = starts.refuse(on_rings) {
                let msg = format!(
                    "{}: the server died ({how}); {why}: mount ended",
                    self.mountpoint.display()
                );
                error!("{msg}");
                self.give_up();
                if let Some(p) = &status {
                    Status::remove(p);
                }
                return Err(super::Error::Daemon(msg));
            }
            restarts += 1;
            warn!(mountpoint = %self.mountpoint.display(), restarts, "the server died ({how}); starting another on the same connection");
        }
    }

    /// The status of a mount whose server is `child`.
    fn status(
        &self,
        child: &ServerPid,
        restarts: u32,
        transport: &str,
        metrics: Option<std::net::SocketAddr>,
    ) -> Status {
        Status {
            keeper: std::process::id(),
            server: child.id(),
            restarts,
            transport: transport.to_string(),
            upper: self.upper.clone(),
            mountpoint: self.mountpoint.clone(),
            layers: self.labels.clone(),
            group: self.group.clone(),
            metrics,
        }
    }

    /// The first server did not say "ok": nothing is left mounted and the mount command
    /// fails with what the server said.
    fn first_failed(&self, line: &str, ready: &mut Ready) -> super::Error {
        super::kernel::unmount(&self.mountpoint);
        let reason = line
            .strip_prefix("err:")
            .unwrap_or("the server exited before the mount was live")
            .to_string();
        ready.fail(&reason);
        super::Error::Daemon(reason)
    }
}

/// When servers started after a death, over the last [`WINDOW`].
#[derive(Default)]
struct Starts(VecDeque<Instant>);

impl Starts {
    /// Count a start now; why no server may be started again, if none may.
    fn refuse(&mut self, on_rings: bool) -> Option<String> {
        let now = Instant::now();
        self.0.push_back(now);
        while self
            .0
            .front()
            .is_some_and(|t| now.duration_since(*t) > WINDOW)
        {
            self.0.pop_front();
        }
        if on_rings {
            Some("a mount served over io_uring cannot be taken over".to_string())
        } else if self.0.len() > MAX_RESTARTS {
            Some(format!(
                "{} restarts within {} s",
                self.0.len(),
                WINDOW.as_secs()
            ))
        } else {
            None
        }
    }
}

impl Keeper {
    /// The metrics page beside the status file `status`, kept for every server.
    fn make_page(&self, status: &Path) -> Option<(std::sync::Arc<Page>, std::fs::File)> {
        if let Some(d) = status.parent() {
            let _ = std::fs::create_dir_all(d);
        }
        match Page::create(&status.with_extension("metrics"), self.labels.len()) {
            Ok((p, f)) => Some((std::sync::Arc::new(p), f)),
            Err(e) => {
                warn!(mountpoint = %self.mountpoint.display(), "no metrics page: {e}");
                None
            }
        }
    }
}

/// The body of a mount's own `/metrics`: its status file and page, read at each scrape.
pub(crate) fn mount_metrics(status: PathBuf) -> impl Fn() -> String + Send + 'static {
    move || {
        let seen = std::fs::read(&status)
            .ok()
            .and_then(|t| serde_json::from_slice::<Status>(&t).ok())
            .and_then(|st| {
                let page = Page::open(&status.with_extension("metrics")).ok()?;
                Some(super::metrics::Seen { status: st, page })
            });
        super::metrics::encode(super::metrics::mount_families(seen.as_slice()))
    }
}

/// The FUSE connection number of the mount at `p` (its `/sys/fs/fuse/connections` name), read
/// from the mount table: a stat would wait for a server that may be gone.
pub fn connection_of(p: &Path) -> Option<u64> {
    let p = std::path::absolute(p).ok()?;
    let (dev, fstype) = super::run::mountinfo(&p)?;
    if !fstype.starts_with("fuse") {
        return None;
    }
    let (major, minor) = dev.split_once(':')?;
    Some(major.parse::<u64>().ok()? << 20 | minor.parse::<u64>().ok()?)
}

/// What `stratafs status` reports, written by the keeper where it can find it.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Status {
    /// The keeper; the server itself on a mount without one (`failover=off`).
    pub keeper: u32,
    pub server: u32,
    pub restarts: u32,
    pub transport: String,
    pub upper: Option<PathBuf>,
    pub mountpoint: PathBuf,
    /// The layers' names for metrics, in the stack's order (upper first).
    #[serde(default)]
    pub layers: Vec<String>,
    /// `metrics_group=`.
    #[serde(default)]
    pub group: Option<String>,
    /// `metrics=`, as bound.
    #[serde(default)]
    pub metrics: Option<std::net::SocketAddr>,
}

impl Status {
    /// `<runtime dir>/stratafs/<connection>.json`: `/run` for root, `$XDG_RUNTIME_DIR` or
    /// `/tmp/stratafs-UID` for others.
    pub fn path_for(mountpoint: &Path) -> Option<PathBuf> {
        let conn = connection_of(mountpoint)?;
        Some(runtime_dir().join(format!("{conn}.json")))
    }

    /// Remove the status file at `p` and the metrics page beside it.
    pub(crate) fn remove(p: &Path) {
        let _ = std::fs::remove_file(p.with_extension("metrics"));
        let _ = std::fs::remove_file(p);
    }

    pub(crate) fn write(&self, p: &Path) {
        let text = serde_json::to_vec(self).expect("serialisable");
        let tmp = p.with_extension(format!("tmp{}", std::process::id()));
        let r = p
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(&tmp, text))
            .and_then(|()| std::fs::rename(&tmp, p));
        if let Err(e) = r {
            warn!("status file {}: {e}", p.display());
        }
    }
}

pub fn runtime_dir() -> PathBuf {
    let uid = rustix::process::geteuid();
    if uid.is_root() {
        return PathBuf::from("/run/stratafs");
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if Path::new(&d).is_dir() => Path::new(&d).join("stratafs"),
        _ => PathBuf::from(format!("/tmp/stratafs-{}", uid.as_raw())),
    }
}

/// The binary an upgrade asked for (`<status>.binary`), taken once.
fn take_upgrade(status: &Path) -> Option<PathBuf> {
    let f = status.with_extension("binary");
    let p = std::fs::read_to_string(&f).ok()?;
    let _ = std::fs::remove_file(&f);
    Some(PathBuf::from(p.trim()))
}

/// The status of the mount at `mountpoint`, one `key value` per line.
pub fn status(mountpoint: &Path) -> Result<String, super::Error> {
    let st = read_status(mountpoint)?;
    let keeper = if st.keeper == st.server {
        "none (-o failover=off: the server's death ends the mount)".to_string()
    } else {
        st.keeper.to_string()
    };
    let mut out = format!(
        "mountpoint {}\nserver {}\nkeeper {}\nrestarts {}\ntransport {}\n",
        st.mountpoint.display(),
        st.server,
        keeper,
        st.restarts,
        st.transport
    );
    if let Some(u) = &st.upper {
        out += &format!("upper {}\n", u.display());
    }
    if let Some(a) = &st.metrics {
        out += &format!("metrics http://{a}/metrics\n");
    }
    Ok(out)
}

fn read_status(mountpoint: &Path) -> Result<Status, super::Error> {
    let not = |why: &str| super::Error::Daemon(format!("{}: {why}", mountpoint.display()));
    let canon = std::fs::canonicalize(mountpoint).map_err(|e| not(&e.to_string()))?;
    match super::run::mountinfo(&canon) {
        Some((_, t)) if t == "fuse.stratafs" || t == "fuse" => {}
        _ => return Err(not("not a stratafs mount")),
    }
    let conn = connection_of(&canon).ok_or_else(|| not("not a stratafs mount"))?;
    let dirs = [PathBuf::from("/run/stratafs"), runtime_dir()];
    for d in &dirs {
        if let Ok(text) = std::fs::read(d.join(format!("{conn}.json"))) {
            if let Ok(st) = serde_json::from_slice::<Status>(&text) {
                if st.mountpoint == canon {
                    return Ok(st);
                }
            }
        }
    }
    Err(not(
        "no status file (not a stratafs mount, or one of an older version)",
    ))
}

/// Hand the mount at `mountpoint` to `binary`: the keeper starts it in place of the server,
/// which is stopped; requests it had not answered are sent again to the new one.
pub fn upgrade(mountpoint: &Path, binary: &Path) -> Result<String, super::Error> {
    let st = read_status(mountpoint)?;
    let bad = |why: String| super::Error::Daemon(format!("{}: {why}", mountpoint.display()));
    if st.keeper == st.server {
        return Err(bad(
            "mounted with -o failover=off: no keeper to start another server".into(),
        ));
    }
    if st.transport != "dev" {
        return Err(bad(
            "a mount served over io_uring cannot be handed over".into()
        ));
    }
    let binary =
        std::fs::canonicalize(binary).map_err(|e| bad(format!("{}: {e}", binary.display())))?;
    let conn = connection_of(&st.mountpoint).ok_or_else(|| bad("not mounted".into()))?;
    let dir = if std::path::Path::new(&format!("/run/stratafs/{conn}.json")).exists() {
        PathBuf::from("/run/stratafs")
    } else {
        runtime_dir()
    };
    let req = dir.join(format!("{conn}.binary"));
    std::fs::write(&req, binary.as_os_str().as_encoded_bytes())
        .map_err(|e| bad(format!("{}: {e}", req.display())))?;
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(st.server as i32).ok_or_else(|| bad("no server".into()))?,
        rustix::process::Signal::KILL,
    )
    .map_err(|e| bad(format!("server {}: {e}", st.server)))?;
    // The keeper writes the new server's status once it serves.
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(now) = read_status(mountpoint) {
            if now.server != st.server {
                return Ok(format!(
                    "{}: served by {} (pid {}), was pid {}\n",
                    st.mountpoint.display(),
                    binary.display(),
                    now.server,
                    st.server
                ));
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(bad("no new server within 30 s".into()))
}
