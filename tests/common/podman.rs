//! A private podman (overlay driver, a given `mount_program`, optionally an additional image
//! store), run as root or as the test user (rootless, private XDG_RUNTIME_DIR and HOME).

use std::path::{Path, PathBuf};
use std::process::Command;

use super::*;

pub struct Store {
    pub dir: PathBuf,
    pub user: Option<&'static str>,
}

impl Store {
    pub fn new(
        dir: &Path,
        mount_program: &Path,
        user: Option<&'static str>,
        additional_store: Option<&Path>,
    ) -> Store {
        Store::with_mountopt(dir, mount_program, user, additional_store, &[])
    }

    /// As [`Store::new`], with more options for podman to pass the mount program (`mountopt`).
    pub fn with_mountopt(
        dir: &Path,
        mount_program: &Path,
        user: Option<&'static str>,
        additional_store: Option<&Path>,
        more: &[&str],
    ) -> Store {
        for t in ["podman", "runc", "busybox", "runuser"] {
            require_tool(t);
        }
        std::fs::create_dir_all(dir.join("xdg")).unwrap();
        let extra = additional_store
            .map(|s| {
                format!(
                    "[storage.options]\nadditionalimagestores = [\"{}\"]\n",
                    s.display()
                )
            })
            .unwrap_or_default();
        // Podman passes mountopt to the mount program: ours takes the suites' transport.
        let mut transport: Vec<String> = transport_opts().into_iter().map(String::from).collect();
        transport.extend(more.iter().map(|s| s.to_string()));
        let mountopt = if mount_program == Path::new(BIN) && !transport.is_empty() {
            format!("mountopt = \"{}\"\n", transport.join(","))
        } else {
            String::new()
        };
        std::fs::write(
            dir.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"overlay\"\ngraphroot = \"{0}/graph\"\nrunroot = \"{0}/run\"\n\
                 {extra}\
                 [storage.options.overlay]\nmount_program = \"{1}\"\n{mountopt}",
                dir.display(),
                mount_program.display()
            ),
        )
        .unwrap();
        std::fs::write(
            dir.join("containers.conf"),
            "[containers]\ndefault_ulimits = [\"nofile=4096:4096\", \"nproc=4096:4096\"]\n\
             netns = \"none\"\n\
             [engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n",
        )
        .unwrap();
        if let Some(u) = user {
            run_ok(Command::new("chown").arg("-R").arg(u).arg(dir));
            std::fs::set_permissions(
                dir.join("xdg"),
                std::os::unix::fs::PermissionsExt::from_mode(0o700),
            )
            .unwrap();
        }
        Store {
            dir: dir.to_path_buf(),
            user,
        }
    }

    /// Run podman with `args`, expecting success; its stdout.
    pub fn podman(&self, args: &[&str]) -> String {
        String::from_utf8(run_ok(&mut self.command(args)).stdout).unwrap()
    }

    /// Run podman with `args`, whatever comes of it.
    pub fn try_podman(&self, args: &[&str]) -> std::process::Output {
        run(&mut self.command(args))
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = match self.user {
            Some(u) => {
                let mut c = Command::new("runuser");
                c.args(["-u", u, "--", "env"])
                    .arg(format!("HOME={}", self.dir.display()))
                    .arg(format!(
                        "XDG_RUNTIME_DIR={}",
                        self.dir.join("xdg").display()
                    ))
                    .arg(format!(
                        "CONTAINERS_STORAGE_CONF={}",
                        self.dir.join("storage.conf").display()
                    ))
                    .arg(format!(
                        "CONTAINERS_CONF={}",
                        self.dir.join("containers.conf").display()
                    ))
                    .arg("podman");
                c
            }
            None => {
                let mut c = Command::new("podman");
                c.env("CONTAINERS_STORAGE_CONF", self.dir.join("storage.conf"))
                    .env("CONTAINERS_CONF", self.dir.join("containers.conf"));
                c
            }
        };
        c.current_dir(&self.dir).args(args);
        c
    }
}

/// Rootless podman leaves a pause process holding its user and mount namespaces; it would
/// keep copies of every mount that existed when it started (a CernVM-FS publish then waits on
/// them), so it goes with the store.
impl Drop for Store {
    fn drop(&mut self) {
        if self.user.is_none() {
            return;
        }
        let pid_file = self.dir.join("xdg/libpod/tmp/pause.pid");
        if let Some(pid) = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
        {
            // SAFETY: a plain kill(2) of the pause process this store started.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}
