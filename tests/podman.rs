//! stratafs as podman's `mount_program`, rootful and rootless, against fuse-overlayfs in the
//! same role: build with RUN steps that delete and replace files, run a container that
//! changes, deletes and creates files, `podman diff`, `podman commit` and run the result,
//! `podman image mount`.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::image::{busybox_base_tar, which};
use common::*;

const TEST_USER: &str = "stratafs-test";

const CONTAINERFILE: &str = r#"FROM localhost/strata-base
RUN mkdir -p /data/keep /data/replace /data/sub && echo one > /data/keep/a && \
    echo two > /data/replace/old && echo three > /data/gone && echo four > /data/sub/f
RUN rm /data/gone && rm -rf /data/replace && mkdir /data/replace && echo new > /data/replace/new && \
    echo replaced > /data/keep/a
"#;

/// What the container does: change, delete, create.
const CHANGES: &str = "echo changed > /data/keep/a && rm /data/sub/f && echo hi > /data/new && \
                       mkdir /newdir && echo x > /newdir/x && rm -rf /data/replace && \
                       chmod 700 /etc/os-release && mv /data/keep /data/kept";

use common::podman::Store;

impl Store {
    fn import_base(&self) {
        let tar = busybox_base_tar(&self.dir);
        if let Some(u) = self.user {
            run_ok(Command::new("chown").arg(u).arg(&tar));
        }
        self.podman(&[
            "import",
            "-q",
            tar.to_str().unwrap(),
            "localhost/strata-base",
        ]);
    }

    fn build(&self, tag: &str) {
        let ctx = self.dir.join("ctx");
        std::fs::create_dir_all(&ctx).unwrap();
        std::fs::write(ctx.join("Containerfile"), CONTAINERFILE).unwrap();
        if let Some(u) = self.user {
            run_ok(Command::new("chown").arg("-R").arg(u).arg(&ctx));
        }
        self.podman(&[
            "build",
            "-q",
            "--network=none",
            "--runtime",
            "runc",
            "-t",
            tag,
            "-f",
            ctx.join("Containerfile").to_str().unwrap(),
            ctx.to_str().unwrap(),
        ]);
    }
}

fn lines(s: &str) -> BTreeSet<String> {
    s.lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

/// The build's RUN steps deleted and replaced files: the image must show their result.
fn check_built(store: &Store) {
    let out = store.podman(&[
        "run",
        "--rm",
        "localhost/strata-built",
        "sh",
        "-c",
        "cat /data/keep/a /data/replace/new; ls /data/replace; ls /data/gone 2>&1 || true",
    ]);
    let want = "replaced\nnew\nnew\nls: /data/gone: No such file or directory\n";
    if out != want {
        // What would tell a wrong layer from a wrong view of a right one: the names c/storage
        // recorded for the top layer when it was committed (its tar-split, never rewritten),
        // what its diff directory holds, and what mounted it.
        let top = store.podman(&[
            "image",
            "inspect",
            "--format",
            "{{.TopLayer}}",
            "localhost/strata-built",
        ]);
        let top = top.trim();
        let graph = store.dir.join("graph");
        let sh = |c: &str| {
            let o = run(Command::new("sh").arg("-c").arg(c));
            String::from_utf8_lossy(&o.stdout).into_owned()
        };
        let names = sh(&format!(
            "zcat {}/overlay-layers/{top}.tar-split.gz | grep -o '\"name\":\"[^\"]*\"'",
            graph.display()
        ));
        let diff = sh(&format!("find {}/overlay/{top}/diff -ls", graph.display()));
        let mounts = sh("grep -E 'stratafs|overlay' /proc/self/mountinfo");
        panic!(
            "built image content: {out:?}, want {want:?}\nits top layer by podman diff: {}\n\
             tar-split names of layer {top}:\n{names}\ndiff dir:\n{diff}\nmounts:\n{mounts}",
            store.podman(&["diff", "localhost/strata-built"])
        );
    }
}

/// Build, run with changes, diff, commit, run the commit. Returns the diff list.
fn exercise(store: &Store) -> BTreeSet<String> {
    store.import_base();
    store.build("localhost/strata-built");
    store.podman(&[
        "run",
        "--name",
        "changer",
        "localhost/strata-built",
        "sh",
        "-c",
        CHANGES,
    ]);
    // `podman diff NAME` looks NAME up as an image first, and a hex name like the "c1" used
    // before is a prefix of one of this store's image IDs in about one run in a hundred: CI
    // twice got another image's layer that way. Ask for the container, by a name not hex.
    let diff = lines(&store.podman(&["container", "diff", "changer"]));
    let committed = store.podman(&["commit", "-q", "changer", "localhost/strata-committed"]);
    let committed = committed.trim();
    let out = store.podman(&[
        "run",
        "--rm",
        "localhost/strata-committed",
        "sh",
        "-c",
        "cat /data/kept/a /data/new /newdir/x; ls /data; ls -l /etc/os-release | cut -c1-10; \
         ls /data/sub/f 2>&1 || true",
    ]);
    assert_eq!(
        out,
        "changed\nhi\nx\nkept\nnew\nsub\n-rwx------\nls: /data/sub/f: No such file or directory\n",
        "committed image content"
    );
    // The committed layer holds exactly the container's changes.
    let layer = lines(&store.podman(&["image", "diff", committed]));
    assert_eq!(
        layer, diff,
        "podman diff of the committed image vs of the container"
    );
    store.podman(&["rm", "changer"]);
    diff
}

fn expected_diff() -> BTreeSet<String> {
    [
        "C /data",
        "D /data/keep",
        "A /data/kept",
        "A /data/kept/a",
        "A /data/new",
        "D /data/replace",
        "C /data/sub",
        "D /data/sub/f",
        "C /etc",
        "C /etc/os-release",
        "A /newdir",
        "A /newdir/x",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[test]
fn rootful_podman_matches_fuse_overlayfs() {
    require_root();
    require_tool("fuse-overlayfs");
    let tmp = tempfile::tempdir().unwrap();
    let ours = Store::new(&tmp.path().join("strata"), Path::new(BIN), None, None);
    let diff = exercise(&ours);
    // The same image read again after the other steps (and at once after the build: the test below).
    check_built(&ours);
    let theirs = Store::new(&tmp.path().join("fo"), &which("fuse-overlayfs"), None, None);
    let reference = exercise(&theirs);
    assert_eq!(
        diff, reference,
        "podman diff: stratafs (left) vs fuse-overlayfs (right)"
    );
    assert_eq!(diff, expected_diff());
    // The containers really ran on stratafs.
    let mounted = ours.podman(&["image", "mount", "localhost/strata-committed"]);
    let root = PathBuf::from(mounted.trim());
    assert_eq!(
        std::fs::read_to_string(root.join("data/new")).unwrap(),
        "hi\n"
    );
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = info
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(root.to_str().unwrap()))
        .expect("podman image mount is a mount point");
    assert!(
        line.contains("fuse.stratafs"),
        "not a stratafs mount: {line}"
    );
    // Over the transport the suite runs on (io_uring=auto, podman passes no option for it).
    assert_transport(&root);
    ours.podman(&["image", "unmount", "localhost/strata-committed"]);
    ours.podman(&["rmi", "-a", "-f"]);
}

#[test]
fn rootless_podman() {
    require_root(); // to create the test user's private store and switch to it
    let tmp = shared_tempdir();
    let ours = Store::new(
        &tmp.path().join("strata"),
        Path::new(BIN),
        Some(TEST_USER),
        None,
    );
    let diff = exercise(&ours);
    assert_eq!(diff, expected_diff());
    ours.podman(&["rmi", "-a", "-f"]);
    // Rootless storage leaves files owned by sub-ids: remove them from inside the namespace.
    let _ = ours.podman(&[
        "unshare",
        "rm",
        "-rf",
        ours.dir.join("graph").to_str().unwrap(),
    ]);
}

/// Once seen (issue 3): the first `podman run` right after `podman build` in a fresh store
/// showed a file the build's last RUN step had deleted (`/data/replace/old`, hidden by a
/// `.wh.old` in the new layer), and `podman diff` of the image missed its deletion; the same
/// image read a few seconds later was correct. Never reproduced since: 21 of 21 runs on
/// 2026-11-23, 75 of 75 on 2026-12-06 (both transports, CPUs loaded, restartable servers), and
/// on 2026-12-07, after the fix of a stale-attribute race (the kernel was told to drop cached
/// attributes only after the reply, fc59757), 60 of 60 over /dev/fuse, 60 of 60 over
/// io_uring and 5 runs of the whole suite. The cause is not known for sure; the test runs in CI
/// (both transports) so that a return shows. When it fails it prints the top layer's tar-split
/// names, its diff directory and the mounts, which tell a wrong layer from a wrong view of a
/// right one.
#[test]
fn rootful_podman_build_then_run_at_once() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let ours = Store::new(&tmp.path().join("strata"), Path::new(BIN), None, None);
    ours.import_base();
    ours.build("localhost/strata-built");
    check_built(&ours);
}
