//! The command line: the fuse-overlayfs compatible mount form. Errors come back as one line.

use std::path::PathBuf;

use clap::Parser;

use crate::mount::Error;
use crate::mount::options::MountOptions;
use crate::mount::plan::MountPlan;

/// Mount a stack of layer directories as one merged tree, lazily; writable with an upper layer.
///
/// Forms accepted (as podman, fuse-overlayfs users and mount.fuse3 pass them):
///   stratafs -o lowerdir=TOP:...:BOTTOM MOUNTPOINT
///   stratafs -o lowerdir=...,upperdir=U,workdir=W MOUNTPOINT
///   stratafs SOURCE MOUNTPOINT -o lowerdir=...
/// and the commands listed at the end: stratafs COMMAND [ARGS]
#[derive(Debug, Parser)]
#[command(name = "stratafs", version, verbatim_doc_comment)]
pub struct Cli {
    /// Mount options, comma-separated; may be given several times (--help lists them).
    ///
    /// lowerdir=TOP:...:BOTTOM
    /// (`\:` is a literal colon), upperdir=U, workdir=W (same filesystem as U), fsync=0,
    /// volatile, uidmapping=:C:H:N[:C:H:N...], gidmapping=..., squash_to_uid=N,
    /// squash_to_gid=N, squash_to_root, xattr_permissions=0|1|2, allow_other, allow_root,
    /// fsname=NAME, passthrough[=on|off] (read-only mounts), threads=N, prefetch=off|FILE
    /// (read ahead the files of a trace; by default the image's own, if its repository has one),
    /// access_log=FILE, stats=FILE (FUSE requests by opcode and the time in each, written at
    /// unmount), metrics=HOST:PORT (serve the mount's Prometheus metrics at
    /// http://HOST:PORT/metrics; `stratafs metrics` serves every mount's),
    /// metrics_group=NAME (the group label node-wide exporters report it under), lookahead=on|off (build the listings of a listed directory's subdirectories
    /// and read small siblings of a read file ahead, on by default), writeback=on|off (the
    /// kernel's writeback cache on a writable mount, off by default), io_uring[=on|off|auto] (serve requests through FUSE
    /// over io_uring, one queue per CPU, when /sys/module/fuse/parameters/enable_uring is Y;
    /// /dev/fuse otherwise; auto, the default, is on unless passthrough was asked for),
    /// readdirplus=lazy|full (over io_uring, listings leave out the attributes of files nobody
    /// has looked up until a lookup in the directory shows they are wanted: lazy, the default;
    /// or carry every entry's: full), handoff=on|off (over io_uring, let the caller a reply
    /// wakes run on the CPU that answered it; on by default for writable mounts),
    /// failover=on|off|strict (a keeper process holds the connection and starts a new server
    /// when the server dies; on by default; strict also serves /dev/fuse, never io_uring, so
    /// that no request is lost; see `stratafs status`), noatime, relatime (the default),
    /// strictatime, nodiratime (access times of the writable layer, as on kernel overlayfs),
    /// verify=on|off (check every lower layer against the record `convert` wrote beside it:
    /// content before it is served, names, types, modes, owners, xattrs, link targets; a
    /// mismatch is EIO and a log line; off by default), verify_cache=PATH|none (the node's
    /// table of files already checked; by default /var/cache/stratafs/verified for root,
    /// ~/.cache/stratafs/verified otherwise), verify_trust=FILE (an Ed25519 public key in PEM,
    /// repeatable: each layer's record must be signed by one; implies verify=on),
    /// context="..." (accepted),
    /// and the kernel flags ro, rw, dev, nodev, suid, nosuid, exec, noexec. Options of mount(8),
    /// libfuse and fuse-overlayfs that do not apply here (nofail, x-*, kernel_cache, noacl …)
    /// are warned about and ignored; any other unknown option is an error.
    #[arg(short = 'o', value_name = "OPTIONS")]
    pub options: Vec<String>,
    /// Stay in the foreground.
    #[arg(short = 'f')]
    pub foreground: bool,
    /// Debug logging to stderr; implies -f.
    #[arg(short = 'd')]
    pub debug: bool,
    /// [SOURCE] MOUNTPOINT
    #[arg(value_name = "MOUNTPOINT", num_args = 1..=2, required = true)]
    pub paths: Vec<PathBuf>,
}

/// Run the mount form. Returns only in the foreground or on error.
pub fn run_mount(cli: &Cli) -> Result<(), Error> {
    let opts = MountOptions::parse(&cli.options)?;
    let mountpoint = cli.paths.last().expect("clap requires one path").clone();
    let source = if cli.paths.len() == 2 {
        cli.paths[0].to_string_lossy().into_owned()
    } else {
        "stratafs".to_string()
    };
    let plan = MountPlan::new(opts, None, mountpoint)?
        .with_source(source)
        .foreground(cli.foreground || cli.debug);
    // podman's store and the snapshotter stack an image's flat root or layers: its trace.
    #[cfg(feature = "image")]
    let plan = {
        let found = (plan.options.prefetch == crate::mount::options::Prefetch::Auto)
            .then(|| crate::image::trace::find(&plan.lowerdirs))
            .flatten();
        plan.with_found_trace(found)
    };
    crate::mount::run::run(&plan)
}
