//! `podmanStore/`: podman with `additionalimagestores = ["<repo>/podmanStore"]` and stratafs as
//! `mount_program` lists every converted image and runs it, rootful and rootless, without
//! copying a layer into its own storage; a later convert adds images to the store.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::image::busybox_base_tar;
use common::layout::*;
use common::*;

fn image(dir: &Path, tag: &str, word: &str) -> PathBuf {
    let base = std::fs::read(busybox_base_tar(&dir.join(format!("base-{tag}")))).unwrap();
    let script = format!("echo {word} from the repository\n");
    let app = tar_bytes(&[
        TarEntry::Dir("proc"),
        TarEntry::Dir("dev"),
        TarEntry::File("hello.sh", script.as_bytes()),
    ]);
    let layout = dir.join(format!("layout-{tag}"));
    make_layout(&layout, tag, &[base, app]);
    layout
}

struct Podman {
    dir: PathBuf,
    user: Option<&'static str>,
}

impl Podman {
    fn new(dir: &Path, store: &Path, user: Option<&'static str>) -> Podman {
        for t in ["podman", "runc", "runuser"] {
            require_tool(t);
        }
        std::fs::create_dir_all(dir.join("xdg")).unwrap();
        std::fs::write(
            dir.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"overlay\"\ngraphroot = \"{0}/graph\"\nrunroot = \"{0}/run\"\n\
                 rootless_storage_path = \"{0}/graph\"\n\
                 [storage.options]\nadditionalimagestores = [\"{1}\"]\n\
                 [storage.options.overlay]\nmount_program = \"{2}\"\n",
                dir.display(),
                store.display(),
                BIN
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
        Podman {
            dir: dir.to_path_buf(),
            user,
        }
    }

    fn podman(&self, args: &[&str]) -> String {
        let mut c = match self.user {
            Some(u) => {
                let mut c = Command::new("runuser");
                c.args(["-u", u, "--", "env"])
                    .arg(format!("HOME={}", self.dir.display()))
                    .arg(format!(
                        "XDG_RUNTIME_DIR={}",
                        self.dir.join("xdg").display()
                    ))
                    .arg("podman");
                c
            }
            None => Command::new("podman"),
        };
        c.env("CONTAINERS_STORAGE_CONF", self.dir.join("storage.conf"))
            .env("CONTAINERS_CONF", self.dir.join("containers.conf"));
        if self.user.is_some() {
            // runuser's env drops nothing we set on the Command, but say it explicitly.
            c.env("HOME", &self.dir);
        }
        String::from_utf8_lossy(&run_ok(c.args(args)).stdout).into_owned()
    }

    fn graph_bytes(&self) -> u64 {
        let out = run_ok(Command::new("du").args(["-sb"]).arg(self.dir.join("graph")));
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    }
}

fn convert(repo: &Path, layout: &Path, tag: &str, name: &str) {
    run_ok(Command::new(BIN).args([
        "convert",
        "--repo",
        repo.to_str().unwrap(),
        &format!("oci:{}:{tag}", layout.display()),
        "--name",
        name,
    ]));
}

fn check(p: &Podman, repo: &Path) {
    let images = p.podman(&["images", "--format", "{{.Repository}}:{{.Tag}}"]);
    assert!(images.contains("example.org/store/one:1"), "{images}");
    let out = p.podman(&[
        "run",
        "--rm",
        "example.org/store/one:1",
        "/bin/sh",
        "/hello.sh",
    ]);
    assert_eq!(out, "one from the repository\n");
    // A change inside the container lands in podman's own upper layer, not in the repo.
    let out = p.podman(&[
        "run",
        "--rm",
        "example.org/store/one:1",
        "/bin/sh",
        "-c",
        "echo changed > /hello.sh && cat /hello.sh",
    ]);
    assert_eq!(out, "changed\n");
    let flat = repo.join("example.org/store/one:1/hello.sh");
    assert_eq!(
        std::fs::read_to_string(flat).unwrap(),
        "echo one from the repository\n"
    );
    // Nothing of the image was copied into podman's storage.
    let used = p.graph_bytes();
    assert!(used < 4 << 20, "podman's graphroot holds {used} bytes");
}

#[test]
fn podman_runs_images_from_the_repository_store() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        tmp.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let repo = tmp.path().join("repo");
    let one = image(tmp.path(), "one", "one");
    convert(&repo, &one, "one", "example.org/store/one:1");
    let store = repo.join("podmanStore");
    for m in ["", "overlay", "overlay-images", "overlay-layers"] {
        assert!(store.join(m).join(".cvmfscatalog").is_file(), "{m}");
    }

    let rootful = Podman::new(&tmp.path().join("rootful"), &store, None);
    check(&rootful, &repo);

    let rootless = Podman::new(&tmp.path().join("rootless"), &store, Some("stratafs-test"));
    check(&rootless, &repo);

    // More images later: the store is rewritten in place and podman sees them.
    let two = image(tmp.path(), "two", "two");
    convert(&repo, &two, "two", "example.org/store/two:2");
    let out = rootful.podman(&[
        "run",
        "--rm",
        "example.org/store/two:2",
        "/bin/sh",
        "/hello.sh",
    ]);
    assert_eq!(out, "two from the repository\n");
    let images = rootless.podman(&["images", "--format", "{{.Repository}}:{{.Tag}}"]);
    assert!(
        images.contains("example.org/store/one:1") && images.contains("example.org/store/two:2"),
        "{images}"
    );
}
