//! Images straight from a repository: `stratafs images`, `stratafs mount --repo` by name or
//! digest (its layers stacked lazily must equal the image's `.flat` root), writable with
//! --upper/--work, DUCC's manifests, and the unprivileged HPC path: an ordinary user mounts an
//! image by name and runs its command with bwrap, and runs bwrap on `.flat` directly.

mod common;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::image::busybox_base_tar;
use common::layout::*;
use common::*;

/// A runnable two-layer image: busybox, then a layer that whites out a file, makes a
/// directory opaque and adds a script.
fn runnable_image(dir: &Path) -> PathBuf {
    let base = std::fs::read(busybox_base_tar(dir)).unwrap();
    let app = tar_bytes(&[
        // Mount points a runtime needs (a real image has them; the base here does not).
        TarEntry::Dir("proc"),
        TarEntry::Dir("dev"),
        TarEntry::Dir("etc"),
        TarEntry::File("etc/.wh.os-release", b""),
        TarEntry::Dir("tmp"),
        TarEntry::File("tmp/.wh..wh..opq", b""),
        TarEntry::File("tmp/fresh", b"fresh\n"),
        TarEntry::File("hello.sh", b"echo hello from $(cat /tmp/fresh)\n"),
    ]);
    let layout = dir.join("layout");
    make_layout(&layout, "v1", &[base, app]);
    layout
}

fn convert(repo: &Path, layout: &Path, name: &str) {
    run_ok(Command::new(BIN).args([
        "convert",
        "--repo",
        repo.to_str().unwrap(),
        &format!("oci:{}:v1", layout.display()),
        "--name",
        name,
    ]));
}

/// The runnable image converted as `example.org/hpc/app:v1` into `<tmp>/repo`, and an empty
/// `<tmp>/mnt`.
fn converted_app() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let layout = runnable_image(tmp.path());
    let repo = tmp.path().join("repo");
    convert(&repo, &layout, "example.org/hpc/app:v1");
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    (tmp, repo, mnt)
}

/// `stratafs mount --repo REPO EXTRA... IMAGE MNT`; unmounted when the guard goes.
fn mount_image(repo: &Path, extra: &[&OsStr], image: &str, mnt: &Path) -> Unmount {
    run_ok(
        Command::new(BIN)
            .arg("mount")
            .arg("--repo")
            .arg(repo)
            .args(extra)
            .arg(image)
            .arg(mnt),
    );
    Unmount(mnt.to_path_buf())
}

struct Unmount(PathBuf);
impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("fusermount3").arg("-u").arg(&self.0).status();
    }
}

/// What the mount and `.flat` must share: `.flat` adds apptainer scaffolding and the catalog
/// marker publishing needs (which a mount never shows).
fn without_scaffold(mut s: BTreeMap<PathBuf, Entry>) -> BTreeMap<PathBuf, Entry> {
    s.retain(|p, _| {
        ![
            ".singularity.d",
            ".cvmfscatalog",
            "dev",
            "proc",
            "sys",
            "var",
            "home",
            "root",
        ]
        .iter()
        .any(|x| p.starts_with(x))
    });
    for e in s.values_mut() {
        e.nlink = 0;
        e.ino = None;
        if e.kind == "dir" {
            e.size = 0;
            e.mtime = (0, 0);
        }
    }
    s
}

#[test]
fn mount_by_name_equals_the_flat_root() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let layout = runnable_image(tmp.path());
    let repo = tmp.path().join("repo");
    convert(&repo, &layout, "example.org/hpc/app:v1");
    let out = run_ok(Command::new(BIN).args(["images", "--repo", repo.to_str().unwrap()]));
    let listing = String::from_utf8_lossy(&out.stdout).to_string();
    let line = listing
        .lines()
        .find(|l| l.starts_with("example.org/hpc/app:v1"))
        .unwrap_or_else(|| panic!("not listed:\n{listing}"));
    assert_eq!(line.split_whitespace().nth(2), Some("2"), "{line}");

    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let guard = mount_image(&repo, &[], "example.org/hpc/app:v1", &mnt);
    assert_eq!(mount_type(&mnt).as_deref(), Some("fuse.stratafs"));
    let flat = repo.join("example.org/hpc/app:v1");
    let mut ours = without_scaffold(snapshot(&mnt));
    let mut theirs = without_scaffold(snapshot(&flat));
    // The root directory of a stack has no single layer's time.
    ours.remove(&PathBuf::new());
    theirs.remove(&PathBuf::new());
    assert_same_tree(&ours, &theirs);
    let out = run_ok(
        Command::new("chroot")
            .arg(&mnt)
            .args(["/bin/sh", "/hello.sh"]),
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello from fresh\n");
    drop(guard);

    // By a digest prefix of its config, writable.
    let cfg = std::fs::read_link(&flat).unwrap();
    let prefix = cfg.file_name().unwrap().to_string_lossy()[..10].to_string();
    let (upper, work) = (tmp.path().join("upper"), tmp.path().join("work"));
    std::fs::create_dir_all(&upper).unwrap();
    std::fs::create_dir_all(&work).unwrap();
    let guard = mount_image(
        &repo,
        &[
            OsStr::new("--upper"),
            upper.as_os_str(),
            OsStr::new("--work"),
            work.as_os_str(),
        ],
        &format!("sha256:{prefix}"),
        &mnt,
    );
    std::fs::write(mnt.join("tmp/new"), "written").unwrap();
    drop(guard);
    wait_until("unmount", || !is_mountpoint(&mnt));
    assert_eq!(
        std::fs::read_to_string(upper.join("tmp/new")).unwrap(),
        "written"
    );

    // Unknown names: one line, non-zero.
    let out = run(Command::new(BIN)
        .args(["mount", "--repo", repo.to_str().unwrap(), "nope:1"])
        .arg(&mnt));
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.trim()
            .ends_with("no image 'nope:1' (see stratafs images --repo)"),
        "{e}"
    );

    // A missing mountpoint: its one line, and no log line before it.
    let out = run(Command::new(BIN)
        .args([
            "mount",
            "--repo",
            repo.to_str().unwrap(),
            "example.org/hpc/app:v1",
        ])
        .arg(tmp.path().join("no-such-dir")));
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_eq!(e.lines().count(), 1, "{e}");
    assert!(
        e.starts_with("stratafs: mountpoint ") && e.contains("no-such-dir"),
        "{e}"
    );
}

/// DUCC writes its own manifest serialisation with capitalised keys; reading must accept it.
#[test]
fn reads_manifests_written_by_ducc() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let layout = runnable_image(tmp.path());
    let repo = tmp.path().join("repo");
    convert(&repo, &layout, "reg.io/ducc/img:1");
    let mpath = repo.join(".metadata/reg.io/ducc/img:1/manifest.json");
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(&mpath).unwrap()).unwrap();
    let d = |v: &serde_json::Value| serde_json::json!({"MediaType": v["mediaType"], "Size": v["size"], "Digest": v["digest"]});
    let ducc = serde_json::json!({
        "SchemaVersion": 2, "MediaType": m["mediaType"], "Config": d(&m["config"]),
        "Layers": m["layers"].as_array().unwrap().iter().map(d).collect::<Vec<_>>()
    });
    std::fs::write(&mpath, serde_json::to_vec(&ducc).unwrap()).unwrap();
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let _g = mount_image(&repo, &[], "reg.io/ducc/img:1", &mnt);
    assert_eq!(
        std::fs::read_to_string(mnt.join("tmp/fresh")).unwrap(),
        "fresh\n"
    );
    let out = run_ok(Command::new(BIN).args(["images", "--repo", repo.to_str().unwrap()]));
    assert!(String::from_utf8_lossy(&out.stdout).contains("reg.io/ducc/img:1"));
    // Converting the same image again finds it done, though DUCC wrote the manifest.
    let out = run_ok(Command::new(BIN).args([
        "convert",
        "--json",
        "--repo",
        repo.to_str().unwrap(),
        &format!("oci:{}:v1", layout.display()),
        "--name",
        "reg.io/ducc/img:1",
    ]));
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["images"][0]["status"], "up to date");
    assert!(!repo.join(".metadata/remove-schedule.json").exists());
}

/// The HPC node: no root anywhere. An ordinary user converts, mounts the image by name with
/// fusermount3 and runs its command in it with bwrap (the stand-in for `apptainer exec`), and
/// runs bwrap on the `.flat` root directly; the results agree.
#[test]
fn unprivileged_user_runs_an_image_from_the_repository() {
    require_root();
    for t in ["runuser", "bwrap", "fusermount3"] {
        require_tool(t);
    }
    let tmp = shared_tempdir();
    let layout = runnable_image(tmp.path());
    run_ok(
        Command::new("chown")
            .arg("-R")
            .arg("stratafs-test")
            .arg(tmp.path()),
    );
    let repo = tmp.path().join("repo");
    let mnt = tmp.path().join("mnt");
    let as_user = |script: &str| {
        run(Command::new("runuser")
            .args(["-u", "stratafs-test", "--", "sh", "-c", script])
            .env("BIN", BIN)
            .env("REPO", &repo)
            .env("MNT", &mnt)
            .env("LAYOUT", &layout))
    };
    let out = as_user(
        "set -e; $BIN convert --repo $REPO oci:$LAYOUT:v1 --name example.org/hpc/app:v1 2>/dev/null; \
         mkdir $MNT; $BIN mount --repo $REPO example.org/hpc/app:v1 $MNT 2>/dev/null; \
         bwrap --ro-bind $MNT / --proc /proc --dev /dev --unshare-all /bin/sh /hello.sh; \
         fusermount3 -u $MNT; \
         bwrap --ro-bind $REPO/example.org/hpc/app:v1 / --proc /proc --dev /dev --unshare-all /bin/sh /hello.sh",
    );
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello from fresh\nhello from fresh\n"
    );
}

/// `--access-log`: the files a workload read, per layer, and `stratafs report` against the
/// image's totals.
#[test]
fn access_log_and_report() {
    require_root();
    let (tmp, repo, mnt) = converted_app();
    let log = tmp.path().join("access.log");
    let guard = mount_image(
        &repo,
        &[OsStr::new("--access-log"), log.as_os_str()],
        "example.org/hpc/app:v1",
        &mnt,
    );
    let header = run_and_log(&mnt, guard, &log);
    let text = std::fs::read_to_string(&log).unwrap();
    let lines = text.lines().skip(1);
    assert_eq!(header["layers"].as_array().unwrap().len(), 2);
    let recs: BTreeMap<String, serde_json::Value> = lines
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|v| (v["path"].as_str().unwrap().to_string(), v))
        .collect();
    let paths: Vec<&str> = recs.keys().map(|s| s.as_str()).collect();
    assert_eq!(paths, vec!["bin/busybox", "hello.sh", "tmp/fresh"]);
    // Top layer first: the script and tmp/fresh come from layer 0, busybox from layer 1.
    assert_eq!(recs["hello.sh"]["layer"], 0);
    assert_eq!(recs["bin/busybox"]["layer"], 1);
    assert_eq!(recs["tmp/fresh"]["bytes"], 6);
    let out = run_ok(Command::new(BIN).arg("report").arg(&log));
    let report = String::from_utf8_lossy(&out.stdout).to_string();
    let image = report
        .lines()
        .find(|l| l.starts_with("image"))
        .unwrap_or_else(|| panic!("{report}"));
    assert!(image.contains("3 / "), "{report}");
    assert_eq!(
        report.lines().filter(|l| l.starts_with("sha256:")).count(),
        2,
        "{report}"
    );
}

/// Run the image's script on `mnt`, unmount, and return the access log `log`'s header once the
/// daemon has written it whole.
fn run_and_log(mnt: &Path, guard: Unmount, log: &Path) -> serde_json::Value {
    let out = run_ok(
        Command::new("chroot")
            .arg(mnt)
            .args(["/bin/sh", "/hello.sh"]),
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello from fresh\n");
    drop(guard);
    wait_until("access log written", || {
        std::fs::read_to_string(log).is_ok_and(|t| t.lines().count() > 1) && !is_mountpoint(mnt)
    });
    let text = std::fs::read_to_string(log).unwrap();
    serde_json::from_str(text.lines().next().unwrap()).unwrap()
}

/// A trace saved from an access log is found by every way of stacking the image: by name, its
/// layers as lowerdirs (the snapshotter's mounts), its flat root through podman's store.
/// `-o prefetch=off` and `--no-prefetch` turn it off; a named trace that is not there fails
/// the mount with one line.
#[test]
fn traces_are_found_by_every_mount_path() {
    require_root();
    let (tmp, repo, mnt) = converted_app();
    let log = |n: &str| tmp.path().join(format!("{n}.log"));
    let by_name = |extra: &[&OsStr]| mount_image(&repo, extra, "example.org/hpc/app:v1", &mnt);

    let rec = log("record");
    let header = run_and_log(
        &mnt,
        by_name(&[OsStr::new("--access-log"), rec.as_os_str()]),
        &rec,
    );
    assert!(header.get("prefetch").is_none(), "no trace yet: {header}");
    let layers: Vec<PathBuf> = header["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| PathBuf::from(v.as_str().unwrap()))
        .collect();
    run_ok(
        Command::new(BIN)
            .args(["trace", "--repo"])
            .arg(&repo)
            .arg(&rec),
    );
    let traces: Vec<PathBuf> = std::fs::read_dir(repo.join(".traces"))
        .unwrap()
        .flat_map(|xx| std::fs::read_dir(xx.unwrap().path()).unwrap())
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(traces.len(), 1, "{traces:?}");
    let trace = &traces[0];
    let saved = std::fs::read_to_string(trace).unwrap();
    assert!(
        saved.contains("\"hello.sh\"") && saved.contains("\"tmp/fresh\""),
        "{saved}"
    );

    let flat_link: PathBuf = std::fs::read_dir(repo.join("podmanStore/overlay"))
        .unwrap()
        .map(|e| e.unwrap().path().join("diff"))
        .find(|p| p.exists())
        .unwrap();
    let mount_form = |lower: String, log: &Path| {
        run_ok(
            Command::new(BIN)
                .arg("-o")
                .arg(format!("{lower},access_log={}", log.display()))
                .arg(&mnt),
        );
        Unmount(mnt.clone())
    };
    type Way<'a> = Box<dyn Fn(&Path) -> Unmount + 'a>;
    let ways: Vec<(&str, Way)> = vec![
        (
            "by name",
            Box::new(|l: &Path| by_name(&[OsStr::new("--access-log"), l.as_os_str()])),
        ),
        (
            "its layers",
            Box::new(|l: &Path| mount_form(lowerdir_opt(&layers), l)),
        ),
        (
            "podman's store",
            Box::new(|l: &Path| mount_form(format!("lowerdir={}", flat_link.display()), l)),
        ),
    ];
    for (what, mount) in &ways {
        let l = log(&what.replace(' ', "-"));
        let header = run_and_log(&mnt, mount(&l), &l);
        let p = &header["prefetch"];
        assert_eq!(p["trace"].as_str(), trace.to_str(), "{what}: {header}");
        // The trace's three files; how many were read ahead before the unmount is a race.
        assert_eq!(p["files"], 3, "{what}: {header}");
    }
    // The mount says, before it returns, that it will read the trace ahead.
    let said = log("said");
    let out = run_ok(
        Command::new(BIN)
            .args(["mount", "--repo"])
            .arg(&repo)
            .args([
                "--access-log",
                said.to_str().unwrap(),
                "example.org/hpc/app:v1",
            ])
            .arg(&mnt),
    );
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    run_and_log(&mnt, Unmount(mnt.clone()), &said);
    assert!(
        stderr.contains("prefetch: the mount reads the trace's files ahead")
            && stderr.contains(trace.to_str().unwrap())
            && stderr.contains("files=3"),
        "{stderr}"
    );

    let off = log("off");
    let header = run_and_log(
        &mnt,
        by_name(&[
            OsStr::new("--no-prefetch"),
            OsStr::new("--access-log"),
            off.as_os_str(),
        ]),
        &off,
    );
    assert!(header.get("prefetch").is_none(), "--no-prefetch: {header}");
    let header = run_and_log(
        &mnt,
        mount_form(
            format!("lowerdir={},prefetch=off", flat_link.display()),
            &off,
        ),
        &off,
    );
    assert!(header.get("prefetch").is_none(), "prefetch=off: {header}");

    let out = run(Command::new(BIN)
        .arg("-o")
        .arg(format!(
            "lowerdir={},prefetch=/nonexistent/trace.json",
            flat_link.display()
        ))
        .arg(&mnt));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && !is_mountpoint(&mnt));
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("prefetch") && err.contains("/nonexistent/trace.json"),
        "{err}"
    );
}

/// Thin images: `convert --thin` writes a docker archive whose only file is thin.json, podman
/// loads it, and `stratafs mount --thin` mounts what it points to under a CVMFS root.
#[test]
fn thin_image_round_trip() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let layout = runnable_image(tmp.path());
    let repo = tmp.path().join("repo");
    let thin_dir = tmp.path().join("thin");
    run_ok(Command::new(BIN).args([
        "convert",
        "--repo",
        repo.to_str().unwrap(),
        "--thin",
        thin_dir.to_str().unwrap(),
        "--cvmfs-repo",
        "unpacked.example.org",
        &format!("oci:{}:v1", layout.display()),
        "--name",
        "example.org/hpc/app:v1",
    ]));
    let archive = thin_dir.join("example.org_hpc_app_thin_v1.tar");
    assert!(
        archive.is_file(),
        "{:?}",
        std::fs::read_dir(&thin_dir).map(|d| d.count())
    );
    // podman loads it under the thin name.
    let podman = common::image::Podman::new(&tmp.path().join("podman"));
    run_ok(
        podman
            .cmd("podman")
            .args(["load", "-q", "-i"])
            .arg(&archive),
    );
    let out = run_ok(
        podman
            .cmd("podman")
            .args(["images", "--format", "{{.Repository}}:{{.Tag}}"]),
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("example.org/hpc/app_thin:v1"));
    // Its one layer holds only thin.json.
    let mut outer = tar::Archive::new(std::fs::File::open(&archive).unwrap());
    let mut thin_json = None;
    for e in outer.entries().unwrap() {
        let mut e = e.unwrap();
        if e.path().unwrap().ends_with("layer.tar") {
            let mut inner = tar::Archive::new(&mut e);
            let files: Vec<_> = inner
                .entries()
                .unwrap()
                .map(|f| {
                    let mut f = f.unwrap();
                    let mut s = String::new();
                    std::io::Read::read_to_string(&mut f, &mut s).unwrap();
                    (f.path().unwrap().to_string_lossy().into_owned(), s)
                })
                .collect();
            assert_eq!(files.len(), 1);
            assert_eq!(files[0].0, "thin.json");
            thin_json = Some(files[0].1.clone());
        }
    }
    let thin_json = thin_json.expect("a layer");
    let v: serde_json::Value = serde_json::from_str(&thin_json).unwrap();
    assert_eq!(v["version"], "1.0");
    assert!(
        v["layers"][0]["url"]
            .as_str()
            .unwrap()
            .starts_with("cvmfs://unpacked.example.org/.layers/")
    );
    let thin_file = tmp.path().join("thin.json");
    std::fs::write(&thin_file, &thin_json).unwrap();
    let root = tmp.path().join("cvmfs");
    std::fs::create_dir(&root).unwrap();
    std::os::unix::fs::symlink(&repo, root.join("unpacked.example.org")).unwrap();
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    run_ok(
        Command::new(BIN)
            .args(["mount", "--thin"])
            .arg(&thin_file)
            .arg("--cvmfs-root")
            .arg(&root)
            .arg(&mnt),
    );
    let guard = Unmount(mnt.clone());
    let out = run_ok(
        Command::new("chroot")
            .arg(&mnt)
            .args(["/bin/sh", "/hello.sh"]),
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello from fresh\n");
    drop(guard);
    // A URL that climbs out of the CVMFS root is refused.
    let evil = thin_json.replacen(
        "cvmfs://unpacked.example.org/",
        "cvmfs://unpacked.example.org/../../",
        1,
    );
    std::fs::write(&thin_file, evil).unwrap();
    let out = run(Command::new(BIN)
        .args(["mount", "--thin"])
        .arg(&thin_file)
        .arg(&mnt));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a plain path"));
}
