//! Serving a mount plan: check the mountpoint, open the overlay, mount (`fuse.stratafs`
//! ourselves where we may, else through fusermount3), daemonize once the mount is live, run
//! until unmounted.

use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fuser::{Config, MountOption, SessionACL};
use tracing::{debug, info, warn};

use super::Error;
use super::daemon::{self, Ready};
use super::fuse::{Passthrough, StrataFs};
use super::options::{IoUring, MountOptions, Prefetch};
use super::plan::MountPlan;
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

fn check_mountpoint(p: &Path) -> Result<PathBuf, Error> {
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

fn fuser_config(plan: &MountPlan) -> Config {
    let (opts, source) = (&plan.options, plan.source.as_str());
    let mut mo = vec![
        MountOption::FSName(opts.fsname.clone().unwrap_or_else(|| source.to_string())),
        MountOption::Subtype("stratafs".into()),
        MountOption::DefaultPermissions,
    ];
    if plan.read_only {
        mo.push(MountOption::RO);
    }
    for f in &opts.flags {
        mo.push(match f.as_str() {
            "dev" => MountOption::Dev,
            "nodev" => MountOption::NoDev,
            "suid" => MountOption::Suid,
            "nosuid" => MountOption::NoSuid,
            "exec" => MountOption::Exec,
            "noexec" => MountOption::NoExec,
            "atime" => MountOption::Atime,
            "noatime" => MountOption::NoAtime,
            "dirsync" => MountOption::DirSync,
            "sync" => MountOption::Sync,
            "async" => MountOption::Async,
            // ro is the plan's read_only, relatime is the default.
            _ => continue,
        });
    }
    mo.dedup();
    let root = rustix::process::geteuid().is_root();
    let mut cfg = Config::default();
    cfg.mount_options = mo;
    cfg.acl = if opts.allow_other || (root && !opts.allow_root) {
        // As root the mount serves containers whose processes run as other users.
        SessionACL::All
    } else if opts.allow_root {
        SessionACL::RootAndOwner
    } else {
        SessionACL::Owner
    };
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    cfg.n_threads = Some(opts.threads.unwrap_or((cores * 2).clamp(2, 8)));
    cfg.clone_fd = true;
    cfg
}

/// Mount with type `fuse.stratafs` ourselves where we may (root, or root in a user
/// namespace), since fuser's own mount always says plain `fuse`; elsewhere let fuser go
/// through fusermount3 (which records the subtype itself).
fn open_session(
    fs: StrataFs,
    mountpoint: &Path,
    plan: &MountPlan,
    config: Config,
) -> std::io::Result<fuser::Session<StrataFs>> {
    let (opts, source) = (&plan.options, plan.source.as_str());
    use rustix::mount::MountFlags;
    let dev = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")?;
    let st = rustix::fs::stat(mountpoint)?;
    let uid = rustix::process::getuid().as_raw();
    let gid = rustix::process::getgid().as_raw();
    let mut data = format!(
        "fd={},rootmode={:o},user_id={uid},group_id={gid},default_permissions",
        std::os::fd::AsRawFd::as_raw_fd(&dev),
        st.st_mode & libc::S_IFMT
    );
    if config.acl != SessionACL::Owner {
        data.push_str(",allow_other");
    }
    let has = |f: &str| opts.has_flag(f);
    let mut flags = if plan.read_only {
        MountFlags::RDONLY
    } else {
        MountFlags::empty()
    };
    if !has("dev") {
        flags |= MountFlags::NODEV;
    }
    if !has("suid") {
        flags |= MountFlags::NOSUID;
    }
    if has("noexec") {
        flags |= MountFlags::NOEXEC;
    }
    if has("noatime") {
        flags |= MountFlags::NOATIME;
    }
    if has("sync") {
        flags |= MountFlags::SYNCHRONOUS;
    }
    if has("dirsync") {
        flags |= MountFlags::DIRSYNC;
    }
    let fsname = opts.fsname.as_deref().unwrap_or(source);
    let data = std::ffi::CString::new(data).map_err(std::io::Error::other)?;
    match rustix::mount::mount(fsname, mountpoint, "fuse.stratafs", flags, data.as_c_str()) {
        Ok(()) => {}
        Err(rustix::io::Errno::PERM | rustix::io::Errno::ACCESS) => {
            return fuser::Session::new(fs, mountpoint, &config);
        }
        Err(e) => return Err(e.into()),
    }
    let acl = config.acl;
    fuser::Session::from_fd(fs, dev.into(), acl, config).inspect_err(|_| {
        // Nothing is left mounted when the handshake fails.
        let _ = rustix::mount::unmount(mountpoint, rustix::mount::UnmountFlags::DETACH);
    })
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
        warn!(option = %o, "unknown option ignored");
    }
    let mountpoint = check_mountpoint(&plan.mountpoint)?;
    let trace = load_trace(plan)?;
    // Layer roots are opened before mounting: the mountpoint may be the last lowerdir.
    let overlay = Arc::new(Overlay::with_config(&plan.overlay_config())?);
    overlay.set_open_file_limit(open_file_budget());
    let config = fuser_config(plan);

    let mut ready = if plan.foreground {
        Ready::foreground()
    } else {
        daemon::fork()?
    };
    let notifier = Arc::new(std::sync::OnceLock::new());
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
    let fs = StrataFs::new(
        Arc::clone(&overlay),
        opts.passthrough,
        Arc::clone(&notifier),
    )
    .with_access_log(access.clone())
    .with_stats(stats.clone())
    .with_writeback(opts.writeback)
    .with_bare_entries(if opts.readdirplus_lazy {
        Bare::Lazy
    } else {
        Bare::Never
    })
    .with_io_uring(rings(opts));
    let shared = fs.clone();
    let session = match open_session(fs, &mountpoint, plan, config) {
        Ok(s) => s,
        Err(e) => {
            let e = Error::Mount {
                path: mountpoint,
                source: e,
            };
            ready.fail(&e.to_string());
            return Err(e);
        }
    };
    let _ = notifier.set(session.notifier());
    shared.start_io_uring(session.as_fd());
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
    let ran = session.run().map_err(|e| Error::Mount {
        path: mountpoint.clone(),
        source: e,
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
