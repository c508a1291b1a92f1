//! A convert staged for publishing: it runs in a private mount namespace where
//! `/cvmfs/REPO` is a kernel overlayfs of the published tree (the stratum-0's read-only
//! mount) and an upper directory of ours, so it reads the repository as clients see it and
//! every path it writes keeps its final name. What it changed is then read from the upper
//! directory ([`super::delta`]) and ingested in one publish. Nothing reaches the repository
//! until then, and a failed convert leaves nothing behind but the stage, which is removed.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::delta::Delta;
use super::{Target, cvmfs_server};
use crate::image::error::Error;

/// Set in the staged convert's environment to the repository it writes (the child of
/// [`Stage::command`] runs the same command line, and must not stage again).
pub const STAGED_ENV: &str = "STRATAFS_PUBLISH_STAGED";

const STAGE_PREFIX: &str = "stratafs-stage.";

pub struct Stage {
    target: Target,
    /// The stratum-0's read-only mount of the published revision.
    rdonly: PathBuf,
    /// `<spool>/stratafs-stage.<pid>`: `upper`, `work`, the tar.
    dir: PathBuf,
    revision: String,
}

impl Stage {
    pub fn begin(target: &Target) -> Result<Stage, Error> {
        let fail = |reason: String| Error::Publish {
            target: format!("cvmfs:{}", target.fqrn),
            reason,
        };
        if !rustix::process::geteuid().is_root() {
            return Err(fail(
                "publishing needs root (the convert runs on a private overlay mount)".into(),
            ));
        }
        let spool = spool_dir(&target.fqrn).map_err(|e| fail(e.to_string()))?;
        if spool.join("in_transaction.lock").exists() {
            return Err(fail(format!(
                "a transaction is open (another publish, or a stale one: cvmfs_server abort -f {})",
                target.fqrn
            )));
        }
        let rdonly = spool.join("rdonly");
        let revision = revision(&rdonly).map_err(|e| fail(e.to_string()))?;
        remove_dead_stages(&spool);
        let dir = spool.join(format!("{STAGE_PREFIX}{}", std::process::id()));
        for d in ["upper", "work"] {
            let p = dir.join(d);
            std::fs::create_dir_all(&p).map_err(|e| Error::io(&p, e))?;
        }
        tracing::info!(repository = %target.fqrn, revision, "converting on a private overlay of the published tree");
        Ok(Stage {
            target: target.clone(),
            rdonly,
            dir,
            revision,
        })
    }

    fn upper(&self) -> PathBuf {
        self.dir.join("upper")
    }

    /// `exe args…` in a new mount namespace with the overlay on `/cvmfs/REPO`.
    pub fn command(&self, exe: &Path) -> Result<Command, Error> {
        let opts = format!(
            "lowerdir={},upperdir={},workdir={},redirect_dir=off,index=off,metacopy=off,xino=off",
            self.rdonly.display(),
            self.upper().display(),
            self.dir.join("work").display()
        );
        let bad = |p: &str| p.contains([',', ':', '\\']);
        if bad(&self.rdonly.to_string_lossy()) || bad(&self.dir.to_string_lossy()) {
            return Err(Error::Publish {
                target: format!("cvmfs:{}", self.target.fqrn),
                reason: format!(
                    "the spool directory {} has a name an overlay mount cannot take",
                    self.dir.display()
                ),
            });
        }
        let c = |s: &[u8]| CString::new(s).expect("no NUL in a path");
        let (root, at, overlay, data) = (
            c(b"/"),
            c(self.target.root().as_os_str().as_bytes()),
            c(b"overlay"),
            c(opts.as_bytes()),
        );
        let mut cmd = Command::new(exe);
        cmd.args(std::env::args_os().skip(1))
            .env(STAGED_ENV, &self.target.fqrn);
        // SAFETY: between fork and exec only system calls run, on strings made before.
        unsafe {
            cmd.pre_exec(move || {
                let check = |r: libc::c_int| {
                    if r == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                };
                check(libc::unshare(libc::CLONE_NEWNS))?;
                check(libc::mount(
                    std::ptr::null(),
                    root.as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ))?;
                check(libc::mount(
                    overlay.as_ptr(),
                    at.as_ptr(),
                    overlay.as_ptr(),
                    0,
                    data.as_ptr().cast(),
                ))
            });
        }
        Ok(cmd)
    }

    /// Publish what the staged convert changed: one `cvmfs_server ingest` (two when a path
    /// changes its type, which `ingest` cannot do in one).
    pub fn publish(self) -> Result<(), Error> {
        let fail = |reason: String| Error::Publish {
            target: format!("cvmfs:{}", self.target.fqrn),
            reason,
        };
        let delta = Delta::between(&self.upper(), &self.rdonly)
            .map_err(|e| fail(format!("reading what the convert changed: {e}")))?;
        if delta.is_empty() {
            tracing::info!(repository = %self.target.fqrn, "nothing changed: nothing to publish");
            return Ok(());
        }
        let now = revision(&self.rdonly).map_err(|e| fail(e.to_string()))?;
        if now != self.revision {
            return Err(fail(format!(
                "the repository was published meanwhile (revision {} -> {now}): nothing published; run the convert again",
                self.revision
            )));
        }
        let deletes = |paths: &[PathBuf]| -> Result<Vec<String>, Error> {
            let mut args = Vec::new();
            for p in paths {
                let s = p.to_str().filter(|s| !s.contains(':')).ok_or_else(|| {
                    fail(format!(
                        "cannot delete '{}' by ingest (cvmfs_server separates paths with ':')",
                        p.display()
                    ))
                })?;
                args.push("-d".to_string());
                args.push(s.to_string());
            }
            Ok(args)
        };
        if !delta.replaced.is_empty() {
            tracing::warn!(paths = ?delta.replaced, "these paths change type: deleted in a publish of their own first");
            let args = deletes(&delta.replaced)?;
            cvmfs_server(&self.target, &[&["ingest"], &str_refs(&args)[..]].concat())?;
        }
        let tar = self.dir.join("delta.tar");
        delta
            .write_tar(&self.upper(), &tar)
            .map_err(|e| Error::io(&tar, e))?;
        let tar_s = tar.to_string_lossy().into_owned();
        let mut args = vec!["ingest", "-t", &tar_s, "-b", "/", "-k"];
        let del = deletes(&delta.deletes)?;
        args.extend(str_refs(&del));
        cvmfs_server(&self.target, &args)?;
        tracing::info!(
            repository = %self.target.fqrn,
            entries = delta.adds.len(),
            deleted = delta.deletes.len() + delta.replaced.len(),
            revision = %revision(&self.rdonly).unwrap_or_default(),
            "published"
        );
        Ok(())
    }
}

impl Drop for Stage {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            tracing::warn!("cannot remove the stage {}: {e}", self.dir.display());
        }
    }
}

fn str_refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Why a stratum-0's state could not be read.
#[derive(Debug, thiserror::Error)]
enum RepoStateError {
    #[error("no stratum-0 repository {fqrn} on this machine ({}: {source})", conf.display())]
    NoRepository {
        fqrn: String,
        conf: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: cannot read its revision: {source}", rdonly.display())]
    Revision {
        rdonly: PathBuf,
        source: rustix::io::Errno,
    },
}

/// The repository's spool directory, from its server configuration.
fn spool_dir(fqrn: &str) -> Result<PathBuf, RepoStateError> {
    let conf = PathBuf::from(format!("/etc/cvmfs/repositories.d/{fqrn}/server.conf"));
    let text = std::fs::read_to_string(&conf).map_err(|source| RepoStateError::NoRepository {
        fqrn: fqrn.to_string(),
        conf: conf.clone(),
        source,
    })?;
    let spool = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("CVMFS_SPOOL_DIR="))
        .next_back()
        .map(|v| PathBuf::from(v.trim_matches('"')))
        .unwrap_or_else(|| PathBuf::from(format!("/var/spool/cvmfs/{fqrn}")));
    Ok(spool)
}

/// The published revision the read-only mount shows.
fn revision(rdonly: &Path) -> Result<String, RepoStateError> {
    let mut buf = [0u8; 32];
    let n = rustix::fs::getxattr(rdonly, "user.revision", &mut buf).map_err(|source| {
        RepoStateError::Revision {
            rdonly: rdonly.to_path_buf(),
            source,
        }
    })?;
    Ok(String::from_utf8_lossy(&buf[..n]).trim().to_string())
}

/// Stages of runs that were killed (their process is gone).
fn remove_dead_stages(spool: &Path) {
    let Ok(rd) = std::fs::read_dir(spool) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(STAGE_PREFIX))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            tracing::info!(
                "removing the stage of a run that was killed: {}",
                e.path().display()
            );
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}
