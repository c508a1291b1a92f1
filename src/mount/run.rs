//! Serving a mount plan: check the mountpoint, open the overlay, mount ([`super::kernel`]),
//! answer INIT, daemonize once the mount is live, serve until unmounted.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::{debug, info, warn};

use super::Error;
use super::daemon::{self, Ready};
use super::devfuse;
use super::journal::Journal;
use super::keeper::{Keeper, ServeEnv};
use super::metrics::page::Page;
use super::options::{IoUring, MountOptions, Prefetch};
use super::plan::MountPlan;
use super::session::{Passthrough, Session};
use super::stats::Stats;
use crate::overlay::Overlay;
use crate::overlay::prefetch::Prefetcher;
use crate::overlay::readdir::Bare;
use crate::stack::trace::Trace;

/// Whether `path` (canonical) is already a mount point, and of what type.
fn mounted_at(path: &Path) -> Option<String> {
    mountinfo(path).map(|(_, fstype)| fstype)
}

/// The topmost mount at `path` (canonical): its device (`major:minor`) and type, from
/// `/proc/self/mountinfo`, never from the mount itself (whose server may not answer).
pub(crate) fn mountinfo(path: &Path) -> Option<(String, String)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = path.to_string_lossy();
    info.lines().rev().find_map(|l| {
        let fields: Vec<&str> = l.split(' ').collect();
        let mp = unescape_mountinfo(fields.get(4)?);
        let sep = fields.iter().position(|f| *f == "-")?;
        (mp == want).then(|| {
            let dev = fields.get(2).unwrap_or(&"0:0").to_string();
            (dev, fields.get(sep + 1).unwrap_or(&"?").to_string())
        })
    })
}

fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| c.is_ascii_digit()) {
            let v = u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 4]).unwrap_or("0"), 8);
            if let Ok(v) = v {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mountpoint, canonical, if it is a directory nothing is mounted on.
pub fn check_mountpoint(p: &Path) -> Result<PathBuf, Error> {
    let canon = std::fs::canonicalize(p).map_err(|e| Error::Mountpoint {
        path: p.into(),
        source: e,
    })?;
    if !canon.is_dir() {
        return Err(Error::MountpointNotDir { path: p.into() });
    }
    if let Some(fstype) = mounted_at(&canon) {
        return Err(Error::MountpointBusy {
            path: p.into(),
            fstype,
        });
    }
    Ok(canon)
}

/// Raise the soft descriptor limit to the hard one and size the read cache from it.
fn open_file_budget() -> usize {
    let lim = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    let hard = lim.maximum.unwrap_or(1 << 20);
    let _ = rustix::process::setrlimit(
        rustix::process::Resource::Nofile,
        rustix::process::Rlimit {
            current: Some(hard),
            maximum: lim.maximum,
        },
    );
    ((hard / 4) as usize).clamp(64, 4096)
}

/// Prefetch readers: each waits on one download at a time, so more than the CPUs.
const PREFETCH_THREADS: usize = 8;
/// Look-ahead readers of listed directories' subdirectories (disk reads, mostly waiting).
const LOOKAHEAD_THREADS: usize = 4;

/// The plan's trace, read before mounting: a named one (`prefetch=FILE`) that cannot be read
/// fails the mount; one found in a repository only warns.
fn load_trace(plan: &MountPlan) -> Result<Option<(Trace, PathBuf)>, Error> {
    let Some(f) = &plan.trace else {
        return Ok(None);
    };
    match Trace::load(f) {
        Ok(t) => Ok(Some((t, f.clone()))),
        Err(e) if matches!(plan.options.prefetch, Prefetch::File(_)) => Err(Error::BadOption {
            option: "prefetch".into(),
            reason: e.to_string(),
        }),
        Err(e) => {
            warn!("prefetch off: {e}");
            Ok(None)
        }
    }
}

/// A file an option names could not be made after the fork: report it to the waiting parent
/// as the option's error.
fn or_fail<T>(ready: &mut Ready, option: &str, file: &Path, r: io::Result<T>) -> Result<T, Error> {
    r.map_err(|e| {
        let e = Error::BadOption {
            option: option.into(),
            reason: format!("{}: {e}", file.display()),
        };
        ready.fail(&e.to_string());
        e
    })
}

/// The rings for FUSE over io_uring, made before the mount so that a failure only means none.
fn rings(opts: &MountOptions) -> Option<crate::mount::uring::Rings> {
    let passthrough = opts.passthrough == Passthrough::On && opts.upperdir.is_none();
    match opts.io_uring {
        IoUring::Off => return None,
        IoUring::Auto if passthrough => return None,
        IoUring::Auto | IoUring::On => {}
    }
    if !crate::mount::uring::kernel_enabled() {
        let why = "io_uring not used: /sys/module/fuse/parameters/enable_uring is not Y";
        if opts.io_uring == IoUring::On {
            info!("{why}");
        } else {
            debug!("{why}");
        }
        return None;
    }
    let handoff = opts.handoff.unwrap_or(opts.upperdir.is_some());
    crate::mount::uring::Rings::new(handoff)
        .inspect_err(|e| warn!("io_uring not used: {e}"))
        .ok()
}

/// Mount `plan` and serve it. Returns only in the foreground or on error.
pub fn run(plan: &MountPlan) -> Result<(), Error> {
    if let Some(env) = ServeEnv::take() {
        return serve_for_keeper(plan, env);
    }
    let opts = &plan.options;
    for o in &opts.ignored {
        warn!(option = %o, "option does not apply here; ignored");
    }
    let mountpoint = check_mountpoint(&plan.mountpoint)?;
    let trace = load_trace(plan)?;
    if let Some((t, from)) = &trace {
        // Said before the daemon leaves the terminal: once mounted it reads the files ahead.
        info!(trace = %from.display(), files = t.files.len(), "prefetch: the mount reads the trace's files ahead (-o prefetch=off: not)");
    }
    // Layer roots are opened before mounting: the mountpoint may be the last lowerdir.
    let overlay = Arc::new(Overlay::with_config(&plan.overlay_config())?);
    if opts.failover {
        // Checked; the server opens them again from the keeper's descriptors.
        drop(overlay);
        return keep(plan, &mountpoint);
    }
    let metrics = bind_metrics(opts)?;
    let mut ready = if plan.foreground {
        Ready::foreground()
    } else {
        daemon::fork()?
    };
    let acl = super::kernel::acl(plan);
    let dev = match super::kernel::mount(plan, &mountpoint, acl) {
        Ok(dev) => Arc::new(dev),
        Err(e) => return Err(mount_failed(&mut ready, &mountpoint, e)),
    };
    let server = Server {
        overlay,
        dev,
        ready,
        mountpoint,
        trace,
        journal: None,
        page: None,
        own: Some(Own { metrics }),
    };
    server.serve(plan)
}

fn anonymous_page(layers: usize) -> Result<Page, Error> {
    Page::anonymous(layers).map_err(|e| Error::Daemon(format!("metrics page: {e}")))
}

/// `metrics=`: bound before anything is mounted, so a bad address leaves nothing behind.
fn bind_metrics(opts: &MountOptions) -> Result<Option<std::net::TcpListener>, Error> {
    opts.metrics
        .map(|a| super::metrics::http::bind("metrics", a))
        .transpose()
}

/// The layers' names in metrics, in the stack's order: the writable layer, then the lower
/// ones top first by digest or path.
fn layer_labels(plan: &MountPlan) -> Vec<String> {
    let upper = plan.options.upperdir.is_some();
    plan.layer_dirs()
        .iter()
        .enumerate()
        .map(|(i, p)| {
            if upper && i == 0 {
                "upper".to_string()
            } else {
                super::report::label(p)
            }
        })
        .collect()
}

fn mount_failed(ready: &mut Ready, mountpoint: &Path, e: io::Error) -> Error {
    let e = Error::Mount {
        path: mountpoint.to_path_buf(),
        source: e,
    };
    ready.fail(&e.to_string());
    e
}

/// The plan's layer directories in the keeper's order: lower ones top first, then the upper
/// and work directories.
fn keeper_dirs(cfg: &crate::overlay::Config) -> Vec<PathBuf> {
    cfg.lowerdirs
        .iter()
        .cloned()
        .chain(cfg.upper.iter().flat_map(|(u, w)| [u.clone(), w.clone()]))
        .collect()
}

/// Mount with a keeper that holds the connection and runs the server ([`Keeper`]).
fn keep(plan: &MountPlan, mountpoint: &Path) -> Result<(), Error> {
    let cfg = plan.overlay_config();
    let dirs = keeper_dirs(&cfg);
    let layers = Keeper::open_layers(&dirs).map_err(|e| Error::Mount {
        path: mountpoint.to_path_buf(),
        source: e,
    })?;
    let journal = Journal::create().map_err(|e| Error::Daemon(format!("journal: {e}")))?;
    let metrics = bind_metrics(&plan.options)?;
    let mut ready = if plan.foreground {
        Ready::foreground()
    } else {
        daemon::fork()?
    };
    let acl = super::kernel::acl(plan);
    let dev = match super::kernel::mount(plan, mountpoint, acl) {
        Ok(dev) => dev,
        Err(e) => return Err(mount_failed(&mut ready, mountpoint, e)),
    };
    Keeper {
        dev,
        journal,
        layers,
        mountpoint: mountpoint.to_path_buf(),
        upper: cfg.upper.as_ref().map(|(u, _)| u.clone()),
        program: PathBuf::from("/proc/self/exe"),
        labels: layer_labels(plan),
        group: plan.options.metrics_group.clone(),
        metrics,
        first: Some(first_server(plan.clone())),
    }
    .run(ready)
}

/// The keeper's first server, run in its fork; its errors go to the log (the terminal is
/// the keeper's until the mount is live, /dev/null after).
fn first_server(plan: MountPlan) -> super::keeper::FirstServer {
    Box::new(move |env| match serve_for_keeper(&plan, env) {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!("{e}");
            1
        }
    })
}

/// A server started by a keeper: the overlay from the keeper's layer descriptors, the
/// connection it holds; a restart takes up the journal.
fn serve_for_keeper(plan: &MountPlan, env: ServeEnv) -> Result<(), Error> {
    let mut cfg = plan.overlay_config();
    cfg.resume = env.restart;
    let lowers = cfg.lowerdirs.len();
    for (i, l) in cfg.lowerdirs.iter_mut().enumerate() {
        if let Some(p) = env.layer_path(i) {
            *l = p;
        }
    }
    if let Some((u, w)) = &mut cfg.upper {
        if let (Some(pu), Some(pw)) = (env.layer_path(lowers), env.layer_path(lowers + 1)) {
            (*u, *w) = (pu, pw);
        }
    }
    let mut ready = Ready::to_keeper(env.ready);
    let mountpoint = std::path::absolute(&plan.mountpoint).unwrap_or(plan.mountpoint.clone());
    let overlay = match Overlay::with_config(&cfg) {
        Ok(o) => Arc::new(o),
        Err(e) => {
            let e = Error::from(e);
            ready.fail(&e.to_string());
            return Err(e);
        }
    };
    let journal = match Journal::from_fd(env.journal) {
        Ok(j) => Arc::new(j),
        Err(e) => {
            let e = Error::Daemon(format!("journal: {e}"));
            ready.fail(&e.to_string());
            return Err(e);
        }
    };
    // A restart reads nothing ahead: the files were read, or are being read, already.
    let trace = if env.restart { None } else { load_trace(plan)? };
    let server = Server {
        overlay,
        dev: Arc::new(env.dev),
        ready,
        mountpoint,
        trace,
        journal: Some((journal, env.restart)),
        page: env.page,
        own: None,
    };
    server.serve(plan)
}

/// One server of a mounted connection.
struct Server {
    overlay: Arc<Overlay>,
    dev: Arc<std::os::fd::OwnedFd>,
    ready: Ready,
    mountpoint: PathBuf,
    trace: Option<(Trace, PathBuf)>,
    /// The keeper's journal, and whether this server takes over from a dead one.
    journal: Option<(Arc<Journal>, bool)>,
    /// The metrics page the keeper keeps.
    page: Option<std::os::fd::OwnedFd>,
    /// A mount without a keeper publishes its status and page itself.
    own: Option<Own>,
}

/// What a mount without a keeper does a keeper's part of.
struct Own {
    metrics: Option<std::net::TcpListener>,
}

impl Own {
    /// Write the status file and the page beside it, and serve `metrics=`; the page, or an
    /// unshared one when there is no runtime directory to publish it in.
    fn publish(self, plan: &MountPlan, mountpoint: &Path) -> (Page, Option<PathBuf>) {
        let labels = layer_labels(plan);
        let status = super::keeper::Status::path_for(mountpoint);
        let page = status.as_ref().and_then(|p| {
            let _ = p.parent().map(std::fs::create_dir_all);
            Page::create(&p.with_extension("metrics"), labels.len())
                .inspect_err(|e| warn!("no metrics page: {e}"))
                .ok()
        });
        let Some((page, _file)) = page else {
            let anon = Page::anonymous(labels.len()).expect("an anonymous mapping");
            return (anon, None);
        };
        let status = status.expect("a page has a status path");
        let me = std::process::id();
        super::keeper::Status {
            keeper: me,
            server: me,
            restarts: 0,
            transport: "dev".to_string(),
            upper: plan.options.upperdir.clone(),
            mountpoint: mountpoint.to_path_buf(),
            layers: labels,
            group: plan.options.metrics_group.clone(),
            metrics: self.metrics.as_ref().and_then(|l| l.local_addr().ok()),
        }
        .write(&status);
        if let Some(l) = self.metrics {
            super::metrics::http::serve(l, super::keeper::mount_metrics(status.clone()));
        }
        (page, Some(status))
    }
}

/// What a server writes beside serving: the access log, the statistics and, for a mount
/// without a keeper, its status file.
struct Outputs {
    access: Option<Arc<crate::mount::access::AccessLog>>,
    stats: Arc<Stats>,
    status: Option<PathBuf>,
}

impl Outputs {
    /// Open them before the mount is live, so that a file an option names that cannot be made
    /// fails the mount. A restart leaves the earlier server's access log alone; it writes the
    /// statistics at unmount as the first server would have: the page holds every server's
    /// counts.
    fn open(
        plan: &MountPlan,
        mountpoint: &Path,
        ready: &mut Ready,
        restart: bool,
        page: Option<std::os::fd::OwnedFd>,
        own: Option<Own>,
    ) -> Result<Outputs, Error> {
        let opts = &plan.options;
        let access = match &opts.access_log {
            Some(f) if !restart => {
                let layers: Vec<PathBuf> = plan
                    .layer_dirs()
                    .into_iter()
                    .map(|p| std::path::absolute(&p).unwrap_or(p))
                    .collect();
                let log = crate::mount::access::AccessLog::create(f, mountpoint, layers);
                Some(Arc::new(or_fail(ready, "access_log", f, log)?))
            }
            _ => None,
        };
        let layers = plan.layer_dirs().len();
        let (page, status) = match (page, own) {
            (Some(fd), _) => match Page::from_fd(fd) {
                Ok(p) => (p, None),
                Err(e) => {
                    warn!("metrics page: {e}");
                    (anonymous_page(layers)?, None)
                }
            },
            (None, Some(own)) => own.publish(plan, mountpoint),
            (None, None) => (anonymous_page(layers)?, None),
        };
        let file = opts.stats.as_deref();
        let stats = Stats::new(page, file, mountpoint);
        let stats = Arc::new(match file {
            Some(f) => or_fail(ready, "stats", f, stats)?,
            None => stats.map_err(|e| Error::Daemon(format!("statistics: {e}")))?,
        });
        Ok(Outputs {
            access,
            stats,
            status,
        })
    }

    /// A status file of our own says so once the rings serve.
    fn on_rings(&self) {
        let Some(p) = &self.status else { return };
        if let Some(mut st) = std::fs::read(p)
            .ok()
            .and_then(|t| serde_json::from_slice::<super::keeper::Status>(&t).ok())
        {
            st.transport = "io_uring".into();
            st.write(p);
        }
    }

    /// At unmount: write what was asked for, take the status file away.
    fn close(&self, plan: &MountPlan, mountpoint: &Path) {
        if plan.options.stats.is_some() {
            info!(mountpoint = %mountpoint.display(), "{}", self.stats.summary());
            if let Err(e) = self.stats.write() {
                warn!("stats: {e}");
            }
        }
        if let Some(log) = &self.access {
            if let Err(e) = log.write() {
                warn!("access log: {e}");
            }
        }
        if let Some(p) = &self.status {
            super::keeper::Status::remove(p);
        }
    }
}

impl Server {
    fn serve(self, plan: &MountPlan) -> Result<(), Error> {
        let Server {
            overlay,
            dev,
            mut ready,
            mountpoint,
            trace,
            journal,
            page,
            own,
        } = self;
        let opts = &plan.options;
        overlay.set_open_file_limit(open_file_budget());
        let restart = journal.as_ref().is_some_and(|(_, r)| *r);
        let out = Outputs::open(plan, &mountpoint, &mut ready, restart, page, own)?;
        let mut session = Session::new(Arc::clone(&overlay), Arc::clone(&dev), opts.passthrough)
            .with_acl(super::kernel::acl(plan))
            .with_access_log(out.access.clone())
            .with_stats(Some(Arc::clone(&out.stats)))
            .with_writeback(opts.writeback)
            .with_bare_entries(if opts.readdirplus_lazy {
                Bare::Lazy
            } else {
                Bare::Never
            });
        let mut saved = None;
        if let Some((j, restart)) = &journal {
            let mut replay = j.replay();
            saved = replay.init.take();
            session = session.with_journal(Arc::clone(j), restart.then_some(replay));
        }
        let on_rings = match (restart, saved) {
            (true, Some(init)) => {
                resume(&session, &init, &mut ready, &mountpoint)?;
                false
            }
            _ => connect(
                &session,
                &dev,
                opts,
                journal.as_ref(),
                &mut ready,
                &mountpoint,
            )?,
        };
        if on_rings {
            out.on_rings();
        }
        if !restart {
            info!(mountpoint = %mountpoint.display(), layers = plan.lowerdirs.len(), "mounted");
        }
        let daemonized = ready.is_daemon() && !plan.foreground;
        ready.ok();
        if daemonized {
            daemon::detach_stdio();
        }
        // Threads start here, in the process that serves the mount (after the fork).
        if opts.lookahead {
            crate::overlay::lookahead::start(&overlay, LOOKAHEAD_THREADS);
        }
        let prefetch = trace.map(|(t, from)| {
            let p = Prefetcher::start(Arc::clone(&overlay), t, from, PREFETCH_THREADS);
            session.set_prefetch(Arc::clone(&p));
            if let Some(log) = &out.access {
                log.watch_prefetch(Arc::clone(&p));
            }
            p
        });
        let threads = if on_rings {
            1
        } else {
            let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
            opts.threads.unwrap_or((cores * 2).clamp(2, 8))
        };
        let ran = devfuse::serve(dev, session, threads).map_err(|e| {
            // The connection is still there but nobody serves it: take the mount away.
            super::kernel::unmount(&mountpoint);
            Error::Mount {
                path: mountpoint.clone(),
                source: e,
            }
        });
        if let Some(p) = &prefetch {
            p.stop("unmounted");
        }
        out.close(plan, &mountpoint);
        ran?;
        info!(mountpoint = %mountpoint.display(), "unmounted");
        Ok(())
    }
}

/// Take over a connection whose server died: answer as the INIT the journal kept, and ask the
/// kernel to send again what the dead server read and never answered.
fn resume(
    session: &Session,
    init: &super::session::init::SavedInit,
    ready: &mut Ready,
    mountpoint: &Path,
) -> Result<(), Error> {
    let Some(n) = init.negotiated() else {
        let e = Error::Daemon("the journal's INIT cannot be read".into());
        ready.fail(&e.to_string());
        return Err(e);
    };
    session.resume(&n);
    if let Err(e) = session.request_resend() {
        warn!(error = %e, "FUSE_NOTIFY_RESEND not sent: requests in flight wait for ever");
    }
    info!(mountpoint = %mountpoint.display(), "serving again after a server died");
    Ok(())
}

/// Answer a new connection's INIT, keep it in the journal, and start the rings when the kernel
/// took them. Whether requests come over io_uring.
fn connect(
    session: &Session,
    dev: &Arc<std::os::fd::OwnedFd>,
    opts: &MountOptions,
    journal: Option<&(Arc<Journal>, bool)>,
    ready: &mut Ready,
    mountpoint: &Path,
) -> Result<bool, Error> {
    let rings = rings(opts);
    let init = match devfuse::handshake(dev, session, rings.is_some()) {
        Ok(init) => init,
        Err(e) => {
            // Nothing is left mounted when the handshake fails.
            super::kernel::unmount(mountpoint);
            return Err(mount_failed(ready, mountpoint, e));
        }
    };
    if let Some((j, _)) = journal {
        j.init(&init);
    }
    let on_rings = init
        .negotiated()
        .is_some_and(|n| n.has(crate::mount::wire::init::OVER_IO_URING));
    match (on_rings, rings) {
        (true, Some(r)) => {
            r.start(Arc::clone(dev), session.clone());
            Ok(true)
        }
        _ => Ok(false),
    }
}
