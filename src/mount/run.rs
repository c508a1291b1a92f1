//! Serving a mount plan: check the mountpoint, open the overlay, mount ([`super::kernel`]),
//! answer INIT, daemonize once the mount is live, serve until unmounted.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::{debug, info, warn};

use super::Error;
use super::daemon::{self, Ready};
use super::devfuse;
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
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = path.to_string_lossy();
    info.lines().find_map(|l| {
        let fields: Vec<&str> = l.split(' ').collect();
        let mp = unescape_mountinfo(fields.get(4)?);
        let sep = fields.iter().position(|f| *f == "-")?;
        (mp == want).then(|| fields.get(sep + 1).unwrap_or(&"?").to_string())
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
    overlay.set_open_file_limit(open_file_budget());
    let mut ready = if plan.foreground {
        Ready::foreground()
    } else {
        daemon::fork()?
    };
    let access = match &opts.access_log {
        Some(f) => {
            let layers: Vec<PathBuf> = plan
                .layer_dirs()
                .into_iter()
                .map(|p| std::path::absolute(&p).unwrap_or(p))
                .collect();
            let log = crate::mount::access::AccessLog::create(f, &mountpoint, layers);
            Some(Arc::new(or_fail(&mut ready, "access_log", f, log)?))
        }
        None => None,
    };
    let stats = match &opts.stats {
        Some(f) => {
            let s = Stats::create(f, &mountpoint);
            Some(Arc::new(or_fail(&mut ready, "stats", f, s)?))
        }
        None => None,
    };
    let rings = rings(opts);
    let acl = super::kernel::acl(plan);
    let fail = |ready: &mut Ready, e: io::Error| {
        let e = Error::Mount {
            path: mountpoint.clone(),
            source: e,
        };
        ready.fail(&e.to_string());
        e
    };
    let dev = match super::kernel::mount(plan, &mountpoint, acl) {
        Ok(dev) => Arc::new(dev),
        Err(e) => return Err(fail(&mut ready, e)),
    };
    let session = Session::new(Arc::clone(&overlay), Arc::clone(&dev), opts.passthrough)
        .with_acl(acl)
        .with_access_log(access.clone())
        .with_stats(stats.clone())
        .with_writeback(opts.writeback)
        .with_bare_entries(if opts.readdirplus_lazy {
            Bare::Lazy
        } else {
            Bare::Never
        });
    let init = match devfuse::handshake(&dev, &session, rings.is_some()) {
        Ok(init) => init,
        Err(e) => {
            // Nothing is left mounted when the handshake fails.
            super::kernel::unmount(&mountpoint);
            return Err(fail(&mut ready, e));
        }
    };
    let on_rings = init
        .negotiated()
        .is_some_and(|n| n.has(crate::mount::wire::init::OVER_IO_URING));
    let on_rings = match (on_rings, rings) {
        (true, Some(r)) => {
            r.start(Arc::clone(&dev), session.clone());
            true
        }
        _ => false,
    };
    info!(mountpoint = %mountpoint.display(), layers = plan.lowerdirs.len(), "mounted");
    let daemonized = ready.is_daemon();
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
        if let Some(log) = &access {
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
    if let Some(s) = &stats {
        info!(mountpoint = %mountpoint.display(), "{}", s.summary());
        if let Err(e) = s.write() {
            warn!("stats: {e}");
        }
    }
    if let Some(log) = &access {
        if let Err(e) = log.write() {
            warn!("access log: {e}");
        }
    }
    ran?;
    info!(mountpoint = %mountpoint.display(), "unmounted");
    Ok(())
}
