//! Mount options in the fuse-overlayfs form: `-o lowerdir=TOP:…:BOTTOM,…`, several `-o` allowed.

use std::path::PathBuf;

use crate::mount::Error;
use crate::mount::session::Passthrough;
use crate::overlay::idmap::{IdMap, Range};
use crate::stack::override_stat::OverrideXattr;

/// Everything a mount needs, parsed from the `-o` strings.
#[derive(Debug, Clone, PartialEq)]
pub struct MountOptions {
    pub lowerdirs: Vec<PathBuf>,
    pub upperdir: Option<PathBuf>,
    pub workdir: Option<PathBuf>,
    pub allow_other: bool,
    pub allow_root: bool,
    /// Kernel mount flags passed through (`dev`, `nosuid`, `ro` …).
    pub flags: Vec<String>,
    pub fsname: Option<String>,
    pub passthrough: Passthrough,
    pub threads: Option<usize>,
    /// fsync copy-ups and fsync(2) (`fsync=0` and `volatile` turn it off).
    pub fsync: bool,
    /// Ownership view: id mappings, squashing, override xattr.
    pub ids: IdMap,
    /// Record the files read, for `stratafs report`.
    pub access_log: Option<PathBuf>,
    /// Prefetch from a trace: found in the image's repository, off, or a named file.
    pub prefetch: Prefetch,
    /// Write request counts by opcode here at unmount.
    pub stats: Option<PathBuf>,
    /// Serve this mount's Prometheus metrics at `http://ADDR/metrics` (`metrics=HOST:PORT`).
    pub metrics: Option<std::net::SocketAddr>,
    /// The `group` label node-wide exporters report this mount under (`metrics_group=NAME`).
    pub metrics_group: Option<String>,
    /// List subdirectories of listed directories and read small siblings of read files ahead
    /// (`lookahead=off` turns it off).
    pub lookahead: bool,
    /// Serve requests through FUSE over io_uring when the kernel allows it.
    pub io_uring: IoUring,
    /// READDIRPLUS over io_uring leaves out attributes nobody looks at (`readdirplus=lazy`,
    /// the default) or sends every entry's (`readdirplus=full`).
    pub readdirplus_lazy: bool,
    /// The kernel's writeback cache on a writable mount (`writeback=on`).
    pub writeback: bool,
    /// Over io_uring, hand the CPU to the caller a reply wakes (`handoff=on|off`; `None`:
    /// on for writable mounts, see [`crate::mount::uring`]).
    pub handoff: Option<bool>,
    /// A keeper holds the connection and restarts a server that dies (`failover=on|off`).
    pub failover: bool,
    /// `noatime`, `relatime`, `strictatime`, `nodiratime`: the writable layer's access times.
    pub atime: crate::overlay::atime::AtimePolicy,
    /// Check every lower layer against its record (`verify=on`).
    pub verify: bool,
    /// The node's table of checked content (`verify_cache=PATH|none`; `None`: the user's
    /// default, see [`crate::stack::verified`]).
    pub verify_cache: Option<PathBuf>,
    /// Public keys a layer's record must be signed by (`verify_trust=FILE`, repeatable;
    /// implies `verify=on`).
    pub verify_trust: Vec<PathBuf>,
    /// Options that do not apply ([`NOT_APPLICABLE`]), accepted with a warning.
    pub ignored: Vec<String>,
}

/// A switch: `name`, `name=on` or `name=off`.
fn on_off(opt: &str, val: Option<&str>) -> Result<bool, Error> {
    choice(opt, val.or(Some("on")), &[("on", true), ("off", false)])
}

/// `metrics=HOST:PORT` (a name is resolved now, to its first address).
pub fn metrics_address(opt: &str, v: &str) -> Result<std::net::SocketAddr, Error> {
    use std::net::ToSocketAddrs;
    let bad = |reason: String| Error::BadOption {
        option: opt.into(),
        reason,
    };
    v.to_socket_addrs()
        .map_err(|e| bad(format!("expected HOST:PORT: {e}")))?
        .next()
        .ok_or_else(|| bad(format!("{v}: no address")))
}

/// `io_uring=`: which transport serves requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoUring {
    /// The rings whenever the kernel offers them (its `enable_uring` switch is root's
    /// decision), unless passthrough was asked for: a passthrough open needs /dev/fuse.
    Auto,
    /// The rings whenever the kernel offers them; a note in the log when it does not.
    On,
    /// /dev/fuse only.
    Off,
}

/// `prefetch=`: where the trace of files to read ahead comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prefetch {
    /// The trace the repository keeps for the image, if the layers are an image's and it has one.
    Auto,
    Off,
    File(PathBuf),
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            lowerdirs: Vec::new(),
            upperdir: None,
            workdir: None,
            allow_other: false,
            allow_root: false,
            flags: Vec::new(),
            fsname: None,
            passthrough: Passthrough::Off,
            threads: None,
            fsync: true,
            ids: IdMap::default(),
            access_log: None,
            prefetch: Prefetch::Auto,
            stats: None,
            metrics: None,
            metrics_group: None,
            lookahead: true,
            io_uring: IoUring::Auto,
            readdirplus_lazy: true,
            writeback: false,
            handoff: None,
            failover: true,
            atime: Default::default(),
            verify: false,
            verify_cache: None,
            verify_trust: Vec::new(),
            ignored: Vec::new(),
        }
    }
}

/// Parse a `uidmapping`/`gidmapping` value: triples separated by `:` (podman writes a leading
/// colon) or `,`.
pub fn parse_mapping(option: &str, v: &str) -> Result<Vec<Range>, Error> {
    let bad = |reason: &str| Error::BadOption {
        option: format!("{option}={v}"),
        reason: reason.into(),
    };
    let nums = v
        .split([':', ','])
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<u32>().map_err(|_| bad("ids must be numbers")))
        .collect::<Result<Vec<u32>, Error>>()?;
    if nums.is_empty() || nums.len() % 3 != 0 {
        return Err(bad("expected CONTAINER:HOST:SIZE triples"));
    }
    nums.chunks(3)
        .map(|c| {
            if c[2] == 0
                || c[0].checked_add(c[2] - 1).is_none()
                || c[1].checked_add(c[2] - 1).is_none()
            {
                Err(bad("a range is empty or overflows"))
            } else {
                Ok(Range {
                    disk: c[0],
                    shown: c[1],
                    size: c[2],
                })
            }
        })
        .collect()
}

/// Split one `-o` string at commas outside double quotes; quotes are removed, `\,` is a comma.
pub fn split_options(s: &str) -> Result<Vec<String>, Error> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => quoted = !quoted,
            '\\' => match chars.next() {
                Some(',') => cur.push(','),
                Some(n) => {
                    cur.push('\\');
                    cur.push(n);
                }
                None => cur.push('\\'),
            },
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    if quoted {
        return Err(Error::BadOption {
            option: s.into(),
            reason: "unterminated quote".into(),
        });
    }
    out.push(cur);
    Ok(out.into_iter().filter(|o| !o.is_empty()).collect())
}

/// Split a lowerdir value at `:` (see [`crate::stack::lowerdir`]).
pub fn split_lowerdir(v: &str) -> Vec<PathBuf> {
    crate::stack::lowerdir::split(v)
}

/// `threads=N`: from 1 to 256.
fn threads(opt: &str, v: &str) -> Result<usize, Error> {
    v.parse()
        .ok()
        .filter(|n| (1..=256).contains(n))
        .ok_or_else(|| Error::BadOption {
            option: opt.into(),
            reason: "expected a number of threads from 1 to 256".into(),
        })
}

/// An option nobody knows, with the known one it is nearest to when it looks like a typo.
fn unknown(opt: &str, key: &str) -> Error {
    let near = KNOWN
        .iter()
        .map(|o| (strsim::levenshtein(key, o), *o))
        .filter(|&(d, o)| d <= 2 && d < o.len())
        .min();
    Error::BadOption {
        option: opt.into(),
        reason: match near {
            Some((_, o)) => format!("unknown option (did you mean {o}?)"),
            None => "unknown option".into(),
        },
    }
}

fn nonempty(key: &str, v: Option<&str>) -> Result<String, Error> {
    match v {
        Some(v) if !v.is_empty() => Ok(v.to_string()),
        _ => Err(Error::BadOption {
            option: key.into(),
            reason: "needs a value".into(),
        }),
    }
}

fn number(opt: &str, v: Option<&str>) -> Result<u32, Error> {
    v.and_then(|v| v.parse().ok())
        .ok_or_else(|| Error::BadOption {
            option: opt.into(),
            reason: "expected a number".into(),
        })
}

impl MountOptions {
    /// Parse every `-o` string given, in order (later values win).
    pub fn parse<S: AsRef<str>>(opts: &[S]) -> Result<MountOptions, Error> {
        let m = MountOptions::parse_extra(opts)?;
        if m.lowerdirs.is_empty() {
            return Err(Error::BadOption {
                option: "lowerdir".into(),
                reason: "missing: give -o lowerdir=TOP:...:BOTTOM".into(),
            });
        }
        Ok(m)
    }

    /// Parse `-o` strings that need not name the layers (`mount --repo` knows them).
    pub fn parse_extra<S: AsRef<str>>(opts: &[S]) -> Result<MountOptions, Error> {
        let mut m = MountOptions::default();
        for s in opts {
            for opt in split_options(s.as_ref())? {
                m.apply(&opt)?;
            }
        }
        Ok(m)
    }

    /// Whether a kernel flag (`ro`, `nodev` …) was given.
    pub fn has_flag(&self, f: &str) -> bool {
        self.flags.iter().any(|x| x == f)
    }

    /// One option of `-o`. A table, one arm per option.
    fn apply(&mut self, opt: &str) -> Result<(), Error> {
        let (key, val) = match opt.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (opt, None),
        };
        if self.apply_ids(opt, key, val)? || self.apply_kernel_flag(key) {
            return Ok(());
        }
        match key {
            "lowerdir" => {
                let dirs = split_lowerdir(&nonempty(key, val)?);
                if dirs.is_empty() {
                    return Err(Error::BadOption {
                        option: opt.into(),
                        reason: "no directory given".into(),
                    });
                }
                self.lowerdirs = dirs;
            }
            "upperdir" => self.upperdir = Some(nonempty(key, val)?.into()),
            "workdir" => self.workdir = Some(nonempty(key, val)?.into()),
            "allow_other" => self.allow_other = true,
            "allow_root" => self.allow_root = true,
            "fsname" => self.fsname = Some(nonempty(key, val)?),
            "passthrough" => {
                self.passthrough = if on_off(opt, val)? {
                    Passthrough::On
                } else {
                    Passthrough::Off
                }
            }
            "access_log" => {
                self.access_log = Some(PathBuf::from(nonempty(key, val)?));
            }
            "stats" => self.stats = Some(PathBuf::from(nonempty(key, val)?)),
            "metrics" => self.metrics = Some(metrics_address(opt, &nonempty(key, val)?)?),
            "metrics_group" => self.metrics_group = Some(nonempty(key, val)?),
            "writeback" => self.writeback = on_off(opt, val)?,
            "handoff" => self.handoff = Some(on_off(opt, val)?),
            // strict: the lossless promise, which only /dev/fuse keeps (a ring mount's dead
            // server strands the requests it held until the connection is aborted).
            "failover" if val == Some("strict") => {
                self.failover = true;
                self.io_uring = IoUring::Off;
            }
            "failover" => self.failover = on_off(opt, val)?,
            "lookahead" => self.lookahead = on_off(opt, val)?,
            "readdirplus" => {
                self.readdirplus_lazy = choice(opt, val, &[("lazy", true), ("full", false)])?
            }
            "io_uring" => {
                self.io_uring = choice(
                    opt,
                    val.or(Some("on")),
                    &[
                        ("auto", IoUring::Auto),
                        ("on", IoUring::On),
                        ("off", IoUring::Off),
                    ],
                )?
            }
            "prefetch" => {
                self.prefetch = match nonempty(key, val)?.as_str() {
                    "off" => Prefetch::Off,
                    "on" | "auto" => Prefetch::Auto,
                    f => Prefetch::File(PathBuf::from(f)),
                }
            }
            "threads" => self.threads = Some(threads(opt, &nonempty(key, val)?)?),
            "fsync" => self.fsync = choice(opt, val.or(Some("1")), &[("0", false), ("1", true)])?,
            "volatile" => self.fsync = false,
            "verify" => self.verify = on_off(opt, val)?,
            "verify_cache" => self.verify_cache = Some(PathBuf::from(nonempty(key, val)?)),
            "verify_trust" => {
                self.verify_trust.push(PathBuf::from(nonempty(key, val)?));
                self.verify = true;
            }
            // Always on: the kernel checks permissions against the merged attributes.
            "default_permissions" => {}
            k if NOT_APPLICABLE.contains(&k) || k.starts_with("x-") => {
                self.ignored.push(opt.to_string())
            }
            k => return Err(unknown(opt, k)),
        }
        Ok(())
    }

    /// The owner options (`uidmapping=`, squashing, the override xattr); false for others.
    fn apply_ids(&mut self, opt: &str, key: &str, val: Option<&str>) -> Result<bool, Error> {
        match key {
            "uidmapping" => self.ids.uids = parse_mapping(key, &nonempty(key, val)?)?,
            "gidmapping" => self.ids.gids = parse_mapping(key, &nonempty(key, val)?)?,
            "squash_to_root" => {
                self.ids.squash_uid = Some(0);
                self.ids.squash_gid = Some(0);
            }
            "squash_to_uid" => self.ids.squash_uid = Some(number(opt, val)?),
            "squash_to_gid" => self.ids.squash_gid = Some(number(opt, val)?),
            "xattr_permissions" => {
                self.ids.override_xattr = choice(
                    opt,
                    val,
                    &[
                        ("0", None),
                        ("1", Some(OverrideXattr::Privileged)),
                        ("2", Some(OverrideXattr::User)),
                    ],
                )?
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Options for the kernel's mount (flags, atime modes, labels); false for others.
    fn apply_kernel_flag(&mut self, key: &str) -> bool {
        match key {
            // SELinux labels are the kernel's business; FUSE mounts get theirs from policy.
            "context" | "fscontext" | "defcontext" | "rootcontext" => {}
            "ro" | "rw" | "dev" | "nodev" | "suid" | "nosuid" | "exec" | "noexec" | "atime"
            | "noatime" | "relatime" | "sync" | "async" | "dirsync" => {
                use crate::overlay::atime::Atime;
                match key {
                    "noatime" => self.atime.mode = Atime::Never,
                    "relatime" | "atime" => self.atime.mode = Atime::Relative,
                    _ => {}
                }
                self.flags.push(key.to_string())
            }
            "strictatime" => self.atime.mode = crate::overlay::atime::Atime::Strict,
            "nostrictatime" => self.atime.mode = crate::overlay::atime::Atime::Relative,
            "nodiratime" => self.atime.nodiratime = true,
            "diratime" => self.atime.nodiratime = false,
            _ => return false,
        }
        true
    }
}

/// `val` as one of `words`, each with what it means; anything else is one line naming `opt`.
fn choice<T: Clone>(opt: &str, val: Option<&str>, words: &[(&str, T)]) -> Result<T, Error> {
    words
        .iter()
        .find(|(w, _)| Some(*w) == val)
        .map(|(_, t)| t.clone())
        .ok_or_else(|| {
            let names: Vec<&str> = words.iter().map(|(w, _)| *w).collect();
            let list = match names.split_last() {
                Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
                _ => names.concat(),
            };
            Error::BadOption {
                option: opt.into(),
                reason: format!("expected {list}, got '{}'", val.unwrap_or("")),
            }
        })
}

/// Every option [`MountOptions::apply`] knows, for suggestions.
const KNOWN: &[&str] = &[
    "lowerdir",
    "upperdir",
    "workdir",
    "allow_other",
    "allow_root",
    "fsname",
    "passthrough",
    "access_log",
    "stats",
    "metrics",
    "metrics_group",
    "writeback",
    "handoff",
    "failover",
    "lookahead",
    "readdirplus",
    "io_uring",
    "prefetch",
    "threads",
    "fsync",
    "volatile",
    "verify",
    "verify_cache",
    "verify_trust",
    "uidmapping",
    "gidmapping",
    "squash_to_root",
    "squash_to_uid",
    "squash_to_gid",
    "xattr_permissions",
    "context",
    "fscontext",
    "defcontext",
    "rootcontext",
    "ro",
    "rw",
    "dev",
    "nodev",
    "suid",
    "nosuid",
    "exec",
    "noexec",
    "atime",
    "noatime",
    "relatime",
    "sync",
    "async",
    "dirsync",
    "strictatime",
    "nostrictatime",
    "diratime",
    "nodiratime",
    "default_permissions",
];

/// Options that podman, mount(8) and mount.fuse3, libfuse programs or fuse-overlayfs users
/// pass and that change nothing here: warned about and ignored (as are mount(8)'s `x-*`).
/// Any other unknown option is an error, so a typo never mounts something else than asked.
pub const NOT_APPLICABLE: &[&str] = &[
    // mount(8), fstab and mount.fuse3
    "defaults",
    "auto",
    "noauto",
    "nofail",
    "_netdev",
    "user",
    "users",
    "nouser",
    "owner",
    "group",
    "comment",
    "lazytime",
    "nolazytime",
    "iversion",
    "noiversion",
    "silent",
    "loud",
    // libfuse's own options (stratafs does not use libfuse)
    "kernel_cache",
    "auto_cache",
    "noauto_cache",
    "entry_timeout",
    "attr_timeout",
    "negative_timeout",
    "ac_attr_timeout",
    "use_ino",
    "readdir_ino",
    "direct_io",
    "max_read",
    "max_write",
    "max_readahead",
    "max_background",
    "congestion_threshold",
    "blksize",
    "subtype",
    "auto_unmount",
    "clone_fd",
    "max_idle_threads",
    "max_threads",
    "hard_remove",
    "intr",
    "intr_signal",
    "large_read",
    "big_writes",
    "async_read",
    "sync_read",
    "atomic_o_trunc",
    "splice_read",
    "splice_write",
    "splice_move",
    "no_splice_read",
    "no_splice_write",
    "no_splice_move",
    "writeback_cache",
    "no_remote_lock",
    "no_remote_posix_lock",
    "no_remote_flock",
    "debug",
    // fuse-overlayfs's tuning, which has no counterpart here
    "noacl",
    "threaded",
    "fast_ino",
    "noxattrs",
    "plugins",
    "static_nlink",
    "timeout",
    "max_inodes",
    // kernel overlayfs's features that stratafs needs no switch for
    "index",
    "metacopy",
    "redirect_dir",
    "xino",
    "userxattr",
    "nfs_export",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapping_forms() {
        let m = parse_mapping("uidmapping", ":0:100000:65536").unwrap();
        assert_eq!(
            m,
            [Range {
                disk: 0,
                shown: 100000,
                size: 65536
            }]
        );
        let m = parse_mapping("uidmapping", ":0:1000:1:1:100000:65535").unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(parse_mapping("u", "0:1000:1,1:2000:5").unwrap().len(), 2);
        for bad in ["", ":0:1", ":a:1:1", ":0:1:0", ":4294967295:0:2"] {
            let e = parse_mapping("uidmapping", bad).unwrap_err().to_string();
            assert!(e.contains("uidmapping"), "{e}");
        }
    }

    #[test]
    fn failover_is_on_unless_said_and_strict_keeps_to_dev_fuse() {
        let parse = |o: &str| MountOptions::parse(&[o]).map(|m| (m.failover, m.io_uring));
        assert_eq!(parse("lowerdir=/a").unwrap(), (true, IoUring::Auto));
        assert_eq!(
            parse("lowerdir=/a,failover=off").unwrap(),
            (false, IoUring::Auto)
        );
        assert_eq!(
            parse("lowerdir=/a,failover=strict").unwrap(),
            (true, IoUring::Off)
        );
        let e = parse("lowerdir=/a,failover=maybe").unwrap_err().to_string();
        assert!(e.contains("failover") && e.contains("on or off"), "{e}");
    }

    #[test]
    fn handoff_follows_the_mount_unless_said() {
        let parse = |o: &str| MountOptions::parse(&[o]).map(|m| m.handoff);
        assert_eq!(parse("lowerdir=/a").unwrap(), None);
        assert_eq!(parse("lowerdir=/a,handoff").unwrap(), Some(true));
        assert_eq!(parse("lowerdir=/a,handoff=off").unwrap(), Some(false));
        let e = parse("lowerdir=/a,handoff=2").unwrap_err().to_string();
        assert!(e.contains("handoff") && e.contains("on or off"), "{e}");
    }

    #[test]
    fn io_uring_is_auto_unless_said() {
        let parse = |o: &str| MountOptions::parse(&[o]).map(|m| m.io_uring);
        assert_eq!(parse("lowerdir=/a").unwrap(), IoUring::Auto);
        assert_eq!(parse("lowerdir=/a,io_uring").unwrap(), IoUring::On);
        assert_eq!(parse("lowerdir=/a,io_uring=off").unwrap(), IoUring::Off);
        assert_eq!(parse("lowerdir=/a,io_uring=auto").unwrap(), IoUring::Auto);
        let e = parse("lowerdir=/a,io_uring=yes").unwrap_err().to_string();
        assert!(e.contains("io_uring") && e.contains("auto"), "{e}");
        let o = MountOptions::parse(&["lowerdir=/a,readdirplus=full"]).unwrap();
        assert!(!o.readdirplus_lazy);
        assert!(
            MountOptions::parse(&["lowerdir=/a"])
                .unwrap()
                .readdirplus_lazy
        );
        assert!(MountOptions::parse(&["lowerdir=/a,readdirplus"]).is_err());
    }

    #[test]
    fn read_ahead_options() {
        let o = MountOptions::parse(&["lowerdir=/a,prefetch=off,lookahead=off,stats=/s"]).unwrap();
        assert_eq!(o.prefetch, Prefetch::Off);
        assert!(!o.lookahead);
        assert_eq!(o.stats.as_deref(), Some(std::path::Path::new("/s")));
        let o = MountOptions::parse(&["lowerdir=/a,prefetch=/t.json"]).unwrap();
        assert_eq!(o.prefetch, Prefetch::File("/t.json".into()));
        assert!(o.lookahead);
        let e = MountOptions::parse(&["lowerdir=/a,lookahead=maybe"]).unwrap_err();
        assert!(e.to_string().contains("lookahead=maybe"), "{e}");
    }

    #[test]
    fn quotes_and_escapes() {
        let v = split_options(r#"lowerdir=/a,context="system_u:object_r:c,s0",fsync=0"#).unwrap();
        assert_eq!(
            v,
            vec!["lowerdir=/a", "context=system_u:object_r:c,s0", "fsync=0"]
        );
        assert_eq!(split_options(r"a\,b,c").unwrap(), vec!["a,b", "c"]);
        assert!(split_options(r#"context="x"#).is_err());
    }

    #[test]
    fn lowerdir_colons() {
        assert_eq!(
            split_lowerdir(r"/top:/with\:colon:/bottom"),
            vec![
                PathBuf::from("/top"),
                PathBuf::from("/with:colon"),
                PathBuf::from("/bottom")
            ]
        );
    }

    #[test]
    fn several_o_later_wins_and_what_does_not_apply_is_ignored() {
        let m =
            MountOptions::parse(&["lowerdir=/a:/b", "lowerdir=/c,noacl,max_inodes=5,ro"]).unwrap();
        assert_eq!(m.lowerdirs, vec![PathBuf::from("/c")]);
        assert_eq!(m.ignored, vec!["noacl", "max_inodes=5"]);
        assert_eq!(m.flags, vec!["ro"]);
        let m = MountOptions::parse(&["lowerdir=/a,nofail,x-systemd.automount,kernel_cache"]);
        assert_eq!(
            m.unwrap().ignored,
            vec!["nofail", "x-systemd.automount", "kernel_cache"]
        );
    }

    #[test]
    fn a_typo_is_an_error_naming_the_option_and_a_suggestion() {
        let e = MountOptions::parse(&["lowerdir=/a,uppperdir=/u"]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "option uppperdir=/u: unknown option (did you mean upperdir?)"
        );
        let e = MountOptions::parse(&["lowerdir=/a,nosiud"]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "option nosiud: unknown option (did you mean nosuid?)"
        );
        let e = MountOptions::parse(&["lowerdir=/a,frobnicate=1"]).unwrap_err();
        assert_eq!(e.to_string(), "option frobnicate=1: unknown option");
    }

    #[test]
    fn every_known_option_is_handled() {
        for k in KNOWN {
            if let Err(e) = MountOptions::parse(&[format!("lowerdir=/a,{k}")]) {
                assert!(!e.to_string().contains("unknown option"), "{k}: {e}");
            }
            assert!(!NOT_APPLICABLE.contains(k), "{k} both known and ignored");
        }
    }

    #[test]
    fn podman_invocation() {
        // What containers-storage passes to its mount_program.
        let m = MountOptions::parse(&[concat!(
            "lowerdir=/s/l/A:/s/l/B,upperdir=/s/o/diff,workdir=/s/o/work,fsync=0,",
            r#"context="system_u:object_r:container_file_t:s0:c1,c2","#,
            "uidmapping=:0:100000:65536,gidmapping=:0:100000:1:1:200000:100,",
            "xattr_permissions=2,volatile"
        )])
        .unwrap();
        assert_eq!(m.lowerdirs.len(), 2);
        assert_eq!(m.upperdir, Some(PathBuf::from("/s/o/diff")));
        assert_eq!(m.workdir, Some(PathBuf::from("/s/o/work")));
        assert!(!m.fsync);
        assert_eq!(m.ids.uids.len(), 1);
        assert_eq!(m.ids.gids.len(), 2);
        assert_eq!(m.ids.override_xattr, Some(OverrideXattr::User));
        assert!(m.ignored.is_empty());
        let m = MountOptions::parse(&["lowerdir=/a,squash_to_uid=7,squash_to_gid=8"]).unwrap();
        assert_eq!((m.ids.squash_uid, m.ids.squash_gid), (Some(7), Some(8)));
        let m = MountOptions::parse(&["lowerdir=/a,squash_to_root"]).unwrap();
        assert_eq!((m.ids.squash_uid, m.ids.squash_gid), (Some(0), Some(0)));
        for bad in [
            "uidmapping=:0:1",
            "squash_to_uid=x",
            "xattr_permissions=9",
            "fsync=2",
        ] {
            let e = MountOptions::parse(&[format!("lowerdir=/a,{bad}")])
                .unwrap_err()
                .to_string();
            assert!(e.contains(bad.split('=').next().unwrap()), "{e}");
        }
    }

    #[test]
    fn errors_name_the_option() {
        let e = MountOptions::parse(&["ro"]).unwrap_err().to_string();
        assert!(e.contains("lowerdir"), "{e}");
        let e = MountOptions::parse(&["lowerdir=/a,threads=0"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("threads=0"), "{e}");
        let e = MountOptions::parse(&["lowerdir="]).unwrap_err().to_string();
        assert!(e.contains("lowerdir"), "{e}");
    }
}
