//! Real images for the tests: a busybox base imported into a private podman store, extra
//! layers from `podman build`, exported with skopeo as an OCI layout.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::*;

/// A private podman: its own storage (vfs, no mount program needed to build), runc, ulimits
/// this machine allows.
pub struct Podman {
    pub dir: PathBuf,
}

impl Podman {
    pub fn new(dir: &Path) -> Podman {
        for t in ["podman", "runc", "skopeo", "busybox"] {
            require_tool(t);
        }
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(
            dir.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"vfs\"\ngraphroot = \"{0}/graph\"\nrunroot = \"{0}/run\"\n",
                dir.display()
            ),
        )
        .unwrap();
        std::fs::write(
            dir.join("containers.conf"),
            "[containers]\ndefault_ulimits = [\"nofile=4096:4096\", \"nproc=4096:4096\"]\n\
             [engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n",
        )
        .unwrap();
        Podman {
            dir: dir.to_path_buf(),
        }
    }

    pub fn cmd(&self, prog: &str) -> Command {
        let mut c = Command::new(prog);
        c.env("CONTAINERS_STORAGE_CONF", self.dir.join("storage.conf"))
            .env("CONTAINERS_CONF", self.dir.join("containers.conf"));
        c
    }

    pub fn storage_ref(&self, image: &str) -> String {
        format!(
            "containers-storage:[vfs@{0}/graph+{0}/run]{image}",
            self.dir.display()
        )
    }

    /// Import a static busybox root as `localhost/strata-base`.
    pub fn import_busybox_base(&self) {
        let tar = busybox_base_tar(&self.dir);
        run_ok(
            self.cmd("podman")
                .args(["import", "-q"])
                .arg(&tar)
                .arg("localhost/strata-base"),
        );
    }

    /// `podman build` a Containerfile (FROM localhost/strata-base) as `tag`.
    pub fn build(&self, tag: &str, containerfile: &str) {
        let ctx = self
            .dir
            .join(format!("ctx-{}", tag.replace(['/', ':'], "_")));
        std::fs::create_dir_all(&ctx).unwrap();
        std::fs::write(ctx.join("Containerfile"), containerfile).unwrap();
        run_ok(
            self.cmd("podman")
                .args([
                    "build",
                    "-q",
                    "--network=none",
                    "--runtime",
                    "runc",
                    "-t",
                    tag,
                    "-f",
                ])
                .arg(ctx.join("Containerfile"))
                .arg(&ctx),
        );
    }

    /// Export `image` as an OCI layout `dir:tag` with skopeo.
    pub fn export_oci(&self, image: &str, dir: &Path, tag: &str) {
        run_ok(
            self.cmd("skopeo")
                .arg("copy")
                .arg("-q")
                .arg(self.storage_ref(image))
                .arg(format!("oci:{}:{tag}", dir.display())),
        );
    }
}

/// A tar of a minimal root: static busybox with the applets the tests use, /etc/os-release,
/// /tmp. Written as `dir/base.tar` (the root is built in `dir/base-root`).
pub fn busybox_base_tar(dir: &Path) -> PathBuf {
    let root = dir.join("base-root");
    for d in ["bin", "etc", "tmp"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy(which("busybox"), root.join("bin/busybox")).unwrap();
    for applet in [
        "sh", "ls", "cat", "rm", "mkdir", "echo", "ln", "chmod", "touch", "mv", "true", "find",
    ] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    std::fs::write(root.join("etc/os-release"), "NAME=strata-test\n").unwrap();
    let tar = dir.join("base.tar");
    run_ok(
        Command::new("tar")
            .arg("-C")
            .arg(&root)
            .arg("-cf")
            .arg(&tar)
            .arg("."),
    );
    tar
}

/// An OCI layout `dir/layout` (tag `v1`) of two layers: the busybox base and the tree at
/// `root` (owners kept as numbers), as an application image has them.
/// The layout and its layers' digests (bottom first).
pub fn busybox_with_layer(dir: &Path, root: &Path) -> (PathBuf, Vec<String>) {
    let base = std::fs::read(busybox_base_tar(dir)).unwrap();
    let tar = dir.join("app-layer.tar");
    run_ok(
        Command::new("tar")
            .arg("--numeric-owner")
            .arg("-C")
            .arg(root)
            .arg("-cf")
            .arg(&tar)
            .arg("."),
    );
    let layout = dir.join("layout");
    let digests = super::layout::make_layout(&layout, "v1", &[base, std::fs::read(tar).unwrap()]);
    (layout, digests)
}

pub fn which(tool: &str) -> PathBuf {
    std::env::split_paths(&std::env::var_os("PATH").unwrap())
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("required tool '{tool}' is not installed: run scripts/setup.sh"))
}

fn blob(layout: &Path, digest: &str) -> PathBuf {
    let (alg, hex) = digest.split_once(':').unwrap();
    layout.join("blobs").join(alg).join(hex)
}

fn json(p: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

/// Extract every layer of `layout:tag` with plain tar (so `.wh.` files stay literal);
/// returns the layer dirs top first.
pub fn extract_layers(layout: &Path, tag: &str, into: &Path) -> Vec<PathBuf> {
    let index = json(&layout.join("index.json"));
    let desc = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .expect("tag in index.json");
    let manifest = json(&blob(layout, desc["digest"].as_str().unwrap()));
    let mut dirs = Vec::new();
    for (i, l) in manifest["layers"].as_array().unwrap().iter().enumerate() {
        let dir = into.join(format!("layer{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        run_ok(
            Command::new("tar")
                .args([
                    "--numeric-owner",
                    "--same-owner",
                    "-p",
                    "--xattrs",
                    "--xattrs-include=*",
                ])
                .arg("-xf")
                .arg(blob(layout, l["digest"].as_str().unwrap()))
                .arg("-C")
                .arg(&dir),
        );
        dirs.push(dir);
    }
    dirs.reverse();
    dirs
}
