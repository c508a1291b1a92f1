//! `podmanStore/`: podman with `additionalimagestores = ["<repo>/podmanStore"]` and stratafs as
//! `mount_program` lists every converted image and runs it, rootful and rootless, without
//! copying a layer into its own storage; a later convert adds images to the store.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::image::busybox_base_tar;
use common::layout::*;
use common::podman::Store;
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

/// Bytes under podman's graphroot (rootless podman keeps it under HOME).
fn graph_bytes(p: &Store) -> u64 {
    let graph = match p.user {
        Some(_) => p.dir.join(".local/share/containers/storage"),
        None => p.dir.join("graph"),
    };
    let out = run_ok(Command::new("du").args(["-sb"]).arg(graph));
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
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

fn check(p: &Store, repo: &Path) {
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
    let used = graph_bytes(p);
    assert!(used < 4 << 20, "podman's graphroot holds {used} bytes");
}

#[test]
fn podman_runs_images_from_the_repository_store() {
    require_root();
    let tmp = shared_tempdir();
    let repo = tmp.path().join("repo");
    let one = image(tmp.path(), "one", "one");
    convert(&repo, &one, "one", "example.org/store/one:1");
    let store = repo.join("podmanStore");
    for m in ["", "overlay", "overlay-images", "overlay-layers"] {
        assert!(store.join(m).join(".cvmfscatalog").is_file(), "{m}");
    }

    let rootful = Store::new(
        &tmp.path().join("rootful"),
        Path::new(BIN),
        None,
        Some(&store),
    );
    check(&rootful, &repo);

    let rootless = Store::new(
        &tmp.path().join("rootless"),
        Path::new(BIN),
        Some("stratafs-test"),
        Some(&store),
    );
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
