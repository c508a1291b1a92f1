//! The typed mount plan: what to stack, where, and how, built once and checked once, whatever
//! front end asked (the fuse-overlayfs command line, `mount --repo`, `mount --thin`, the
//! snapshotter). Layer paths are paths here, never an option string to re-parse, so `,` and
//! `:` in them are fine.

use std::path::PathBuf;

use super::Error;
use super::options::{MountOptions, Prefetch};
use crate::overlay::Config as OverlayConfig;

#[derive(Debug, Clone)]
pub struct MountPlan {
    /// Read-only layers, top first.
    pub lowerdirs: Vec<PathBuf>,
    /// The writable layer and its work directory.
    pub upper: Option<(PathBuf, PathBuf)>,
    /// No writes: no upper layer, or `ro` given with one (its content is shown, writes fail
    /// with EROFS, as kernel overlayfs does).
    pub read_only: bool,
    /// Everything else the options said (kernel flags, ids, fsname, threads, access log …).
    pub options: MountOptions,
    /// The mount's source (`fsname` unless given), as mount.fuse3 passes it.
    pub source: String,
    pub mountpoint: PathBuf,
    pub foreground: bool,
    /// The trace to prefetch from, as the front end found it for `prefetch=` (auto: the
    /// image's trace in its repository; only front ends that know repositories find one).
    pub trace: Option<PathBuf>,
}

impl MountPlan {
    /// Check the options and fix the layers: `lowerdirs` wins over the options' `lowerdir=`
    /// when given.
    pub fn new(
        mut options: MountOptions,
        lowerdirs: Option<Vec<PathBuf>>,
        mountpoint: PathBuf,
    ) -> Result<MountPlan, Error> {
        if let Some(l) = lowerdirs {
            options.lowerdirs = l;
        }
        if options.lowerdirs.is_empty() {
            return Err(Error::BadOption {
                option: "lowerdir".into(),
                reason: "missing: give -o lowerdir=TOP:...:BOTTOM".into(),
            });
        }
        let upper = match (&options.upperdir, &options.workdir) {
            (Some(u), Some(w)) => Some((u.clone(), w.clone())),
            (None, None) => None,
            (Some(_), None) => {
                return Err(Error::BadOption {
                    option: "upperdir".into(),
                    reason: "needs workdir= on the same filesystem".into(),
                });
            }
            (None, Some(_)) => {
                return Err(Error::BadOption {
                    option: "workdir".into(),
                    reason: "given without upperdir=".into(),
                });
            }
        };
        if upper.is_none() && options.has_flag("rw") {
            return Err(Error::BadOption {
                option: "rw".into(),
                reason: "a mount without upperdir is read-only".into(),
            });
        }
        // The last of `ro`/`rw` wins, as mount(8) has it.
        let ro_given = options
            .flags
            .iter()
            .rev()
            .find(|f| *f == "ro" || *f == "rw")
            .is_some_and(|f| f == "ro");
        let trace = match &options.prefetch {
            Prefetch::File(f) => Some(f.clone()),
            Prefetch::Auto | Prefetch::Off => None,
        };
        Ok(MountPlan {
            lowerdirs: options.lowerdirs.clone(),
            read_only: upper.is_none() || ro_given,
            upper,
            options,
            source: "stratafs".into(),
            trace,
            mountpoint,
            foreground: false,
        })
    }

    /// The trace a front end found for the image being mounted; kept only when `prefetch=`
    /// is left to find one.
    pub fn with_found_trace(mut self, found: Option<PathBuf>) -> MountPlan {
        if self.options.prefetch == Prefetch::Auto {
            self.trace = found;
        }
        self
    }

    pub fn with_source(mut self, source: impl Into<String>) -> MountPlan {
        self.source = source.into();
        self
    }

    pub fn foreground(mut self, yes: bool) -> MountPlan {
        self.foreground = yes;
        self
    }

    /// What the overlay core opens.
    pub fn overlay_config(&self) -> OverlayConfig {
        OverlayConfig {
            lowerdirs: self.lowerdirs.clone(),
            upper: self.upper.clone(),
            read_only: self.read_only,
            fsync: self.options.fsync,
            ids: self.options.ids.clone(),
            resume: false,
            atime: self.options.atime,
            verify: self.options.verify.then(|| crate::overlay::VerifyConfig {
                cache: match &self.options.verify_cache {
                    Some(p) if p.as_os_str() == "none" => None,
                    Some(p) => Some(p.clone()),
                    None => crate::stack::verified::VerifiedCache::default_path(),
                },
                trust: self.options.verify_trust.clone(),
            }),
        }
    }

    /// Every layer directory, top first (the upper one included), for access logs.
    pub fn layer_dirs(&self) -> Vec<PathBuf> {
        self.upper
            .iter()
            .map(|(u, _)| u.clone())
            .chain(self.lowerdirs.iter().cloned())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(o: &str) -> Result<MountPlan, Error> {
        MountPlan::new(MountOptions::parse_extra(&[o])?, None, "/m".into())
    }

    #[test]
    fn checks_and_modes() {
        assert!(plan("lowerdir=/a").unwrap().read_only);
        let p = plan("lowerdir=/a,upperdir=/u,workdir=/w").unwrap();
        assert!(!p.read_only && p.upper.is_some());
        assert!(
            plan("lowerdir=/a,upperdir=/u,workdir=/w,ro")
                .unwrap()
                .read_only
        );
        assert!(
            !plan("lowerdir=/a,upperdir=/u,workdir=/w,ro,rw")
                .unwrap()
                .read_only
        );
        for bad in [
            "upperdir=/u",
            "lowerdir=/a,upperdir=/u",
            "lowerdir=/a,workdir=/w",
            "lowerdir=/a,rw",
        ] {
            assert!(plan(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn layer_paths_need_no_escaping() {
        let dirs = vec![PathBuf::from("/x,y"), PathBuf::from("/a:b")];
        let p = MountPlan::new(MountOptions::default(), Some(dirs.clone()), "/m".into()).unwrap();
        assert_eq!(p.overlay_config().lowerdirs, dirs);
    }
}
