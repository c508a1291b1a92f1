//! `stratafs convert --publish cvmfs:REPO`: the convert runs staged on a private overlay of
//! the published tree ([`stage`]), and what it changed ([`delta`]) goes into the stratum-0
//! REPO by `cvmfs_server ingest`, whole and in one publish, or not at all.
//!
//! The repository directory given with `--repo` must lie in `/cvmfs/REPO[/SUBDIR]`.
//! `cvmfs_server` does the publishing (it needs root; so does the private overlay).

pub mod delta;
pub mod stage;

pub use stage::{STAGED_ENV, Stage};

use std::path::{Path, PathBuf};
use std::process::Command;

use super::error::Error as ImageError;

/// Where stratum-0 repositories are mounted (for writing during a transaction).
const CVMFS_ROOT: &str = "/cvmfs";

/// A parsed `--publish` target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub fqrn: String,
}

impl Target {
    pub fn parse(s: &str) -> Result<Target, ImageError> {
        let bad = |reason: &str| ImageError::Publish {
            target: s.to_string(),
            reason: reason.to_string(),
        };
        let fqrn = s
            .strip_prefix("cvmfs:")
            .ok_or_else(|| bad("expected cvmfs:REPOSITORY (a stratum-0 on this machine)"))?;
        let ok = !fqrn.is_empty()
            && fqrn.contains('.')
            && fqrn
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_');
        if !ok {
            return Err(bad("not a repository name (like unpacked.example.org)"));
        }
        Ok(Target { fqrn: fqrn.into() })
    }

    /// The writable tree of the repository during a transaction.
    pub fn root(&self) -> PathBuf {
        Path::new(CVMFS_ROOT).join(&self.fqrn)
    }

    /// Check that `dir` (the convert's `--repo`) is inside the repository's tree.
    pub fn check_dir(&self, dir: &Path) -> Result<(), ImageError> {
        let abs = std::path::absolute(dir).map_err(|e| ImageError::io(dir, e))?;
        let inside = abs.starts_with(self.root())
            && !abs
                .components()
                .any(|c| c == std::path::Component::ParentDir);
        if inside {
            Ok(())
        } else {
            Err(ImageError::Publish {
                target: format!("cvmfs:{}", self.fqrn),
                reason: format!(
                    "--repo {} is not inside {}",
                    dir.display(),
                    self.root().display()
                ),
            })
        }
    }
}

/// Run `cvmfs_server ARGS… REPO`; its last line of output is the error.
pub(super) fn cvmfs_server(target: &Target, args: &[&str]) -> Result<(), ImageError> {
    let fail = |reason: String| ImageError::Publish {
        target: format!("cvmfs:{}", target.fqrn),
        reason,
    };
    let out = Command::new("cvmfs_server")
        .args(args)
        .arg(&target.fqrn)
        .output()
        .map_err(|e| fail(format!("cannot run cvmfs_server: {e}")))?;
    if out.status.success() {
        return Ok(());
    }
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    // `cvmfs_server` ends a failure with the command it ran: the reason comes before.
    let last = text
        .lines()
        .map(str::trim)
        .rfind(|l| {
            !l.is_empty()
                && !l.starts_with("Executed Command")
                && !l.starts_with("cvmfs_swissknife")
        })
        .unwrap_or("no output")
        .to_string();
    Err(fail(format!(
        "cvmfs_server {} failed: {last}",
        args.join(" ")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let t = Target::parse("cvmfs:unpacked.example.org").unwrap();
        assert_eq!(t.root(), Path::new("/cvmfs/unpacked.example.org"));
        assert!(
            t.check_dir(Path::new("/cvmfs/unpacked.example.org"))
                .is_ok()
        );
        assert!(
            t.check_dir(Path::new("/cvmfs/unpacked.example.org/sub"))
                .is_ok()
        );
        assert!(
            t.check_dir(Path::new("/cvmfs/unpacked.example.org/../x"))
                .is_err()
        );
        assert!(t.check_dir(Path::new("/tmp/repo")).is_err());
        for bad in [
            "unpacked.example.org",
            "cvmfs:",
            "cvmfs:a/b",
            "cvmfs:noDot",
            "s3:x.y",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }
}
