//! `stratafs convert` and `gc` on real images: podman-built and umoci-built images through
//! OCI layouts, oci-archive and docker-archive files made by skopeo, a real registry on
//! loopback; `.flat` against `umoci unpack`, each `layerfs` against plain `tar -x`; hostile and
//! corrupt layers; a convert killed mid-layer; moved tags and gc.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::image::*;
use common::layout::*;
use common::*;

const CONTAINERFILE: &str = r#"FROM localhost/strata-base
RUN mkdir -p /data/keep /data/replace /data/deep/a/b && echo one > /data/keep/a && \
    echo two > /data/replace/old && echo three > /data/gone && echo four > /data/deep/a/b/f && \
    ln /data/keep/a /data/keep/hard && touch /data/replace/.hidden
RUN rm /data/gone /bin/ls && rm -rf /data/replace && mkdir /data/replace && \
    echo new > /data/replace/new && chmod 4755 /data/keep/a && rm -rf /data/deep/a/b
RUN echo more > /data/keep/b && ln -s ../keep/a /data/replace/link && mkdir /data/deep/a/b && \
    echo back > /data/deep/a/b/g && mv /data/keep/b /data/keep/c
ENV GREETING=hello
CMD ["/bin/sh", "-c", "cat /data/keep/c"]
"#;

fn convert(args: &[&str]) -> Output {
    run(Command::new(BIN).arg("convert").args(args))
}

fn convert_ok(args: &[&str]) -> serde_json::Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = convert(&all);
    assert!(
        out.status.success(),
        "convert {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("--json prints JSON")
}

fn convert_err(args: &[&str]) -> String {
    let out = convert(args);
    assert!(!out.status.success(), "convert {args:?} succeeded");
    let e = String::from_utf8_lossy(&out.stderr);
    let last = e.lines().last().unwrap_or("").to_string();
    assert!(last.starts_with("stratafs: "), "{e}");
    last
}

/// Names `convert` adds to `.flat` (apptainer scaffolding, CVMFS marker) when the image has
/// none; they are not part of the image.
const SCAFFOLD: &[&str] = &[
    ".cvmfscatalog",
    ".singularity.d",
    "dev",
    "proc",
    "sys",
    "tmp",
    "var",
    "var/tmp",
    "home",
    "root",
    "etc",
];

/// Hard links compared as groups, link counts left out (`.flat` files are links of the
/// layer's own), the root's time left out (layer tars made by podman carry no root entry);
/// scaffolding names absent from `reference` dropped.
fn normalize(
    mut s: BTreeMap<PathBuf, Entry>,
    reference: Option<&BTreeMap<PathBuf, Entry>>,
) -> BTreeMap<PathBuf, Entry> {
    if let Some(r) = reference {
        s.retain(|p, _| r.contains_key(p) || !SCAFFOLD.iter().any(|x| p.starts_with(x)));
    }
    s.remove(&PathBuf::from(".cvmfscatalog"));
    for e in s.values_mut() {
        e.nlink = 0;
    }
    image_tree(s)
}

fn assert_flat_equals_umoci(flat: &Path, layout_ref: &str, scratch: &Path) {
    let bundle = scratch.join(format!("umoci-{}", layout_ref.len()));
    let _ = std::fs::remove_dir_all(&bundle);
    run_ok(
        Command::new("umoci")
            .args(["unpack", "--image", layout_ref])
            .arg(&bundle),
    );
    let reference = normalize(snapshot(&bundle.join("rootfs")), None);
    let ours = normalize(snapshot(flat), Some(&reference));
    assert_same_tree(&ours, &reference);
}

fn json(p: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

fn manifest_of_layout(layout: &Path, tag: &str) -> (Vec<u8>, serde_json::Value) {
    let index = json(&layout.join("index.json"));
    let d = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let bytes = std::fs::read(blob_path(layout, &d)).unwrap();
    let v = serde_json::from_slice(&bytes).unwrap();
    (bytes, v)
}

fn layer_dir(repo: &Path, digest: &str) -> PathBuf {
    let hex = digest.trim_start_matches("sha256:");
    repo.join(".layers").join(&hex[..2]).join(hex)
}

#[test]
fn oci_layout_and_archives_convert_like_umoci() {
    require_root();
    require_tool("umoci");
    let tmp = tempfile::tempdir().unwrap();
    let podman = Podman::new(&tmp.path().join("podman"));
    podman.import_busybox_base();
    podman.build("localhost/strata-conv:v1", CONTAINERFILE);
    let layout = tmp.path().join("layout");
    podman.export_oci("localhost/strata-conv:v1", &layout, "v1");
    let oci_archive = tmp.path().join("img.oci.tar");
    let docker_archive = tmp.path().join("img.docker.tar");
    for dest in [
        format!("oci-archive:{}:v1", oci_archive.display()),
        format!(
            "docker-archive:{}:localhost/strata-conv:v1",
            docker_archive.display()
        ),
    ] {
        run_ok(
            podman
                .cmd("skopeo")
                .args(["copy", "-q"])
                .arg(podman.storage_ref("localhost/strata-conv:v1"))
                .arg(dest),
        );
    }
    let repo = tmp.path().join("repo");
    let r = repo.to_str().unwrap();
    let s = convert_ok(&[
        "--repo",
        r,
        &format!("oci:{}:v1", layout.display()),
        "--name",
        "example.org/conv/oci:v1",
    ]);
    assert_eq!(s["images"][0]["status"], "converted");
    assert_eq!(s["layers_reused"], 0);
    let (mbytes, manifest) = manifest_of_layout(&layout, "v1");
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(s["layers_fetched"].as_u64().unwrap() as usize, layers.len());

    // The layout of the note: metadata, markers, link, manifest bytes as the source has them.
    let cfg = manifest["config"]["digest"].as_str().unwrap();
    let cfg_hex = cfg.trim_start_matches("sha256:");
    let link = repo.join("example.org/conv/oci:v1");
    assert_eq!(
        std::fs::read_link(&link).unwrap(),
        PathBuf::from(format!("../../.flat/{}/{cfg_hex}", &cfg_hex[..2]))
    );
    assert_eq!(
        std::fs::read(repo.join(".metadata/example.org/conv/oci:v1/manifest.json")).unwrap(),
        mbytes
    );
    for m in [".layers/.cvmfscatalog", ".flat/.cvmfscatalog"] {
        assert!(repo.join(m).is_file(), "{m}");
    }
    assert!(link.join(".cvmfscatalog").is_file());
    for l in layers {
        let d = l["digest"].as_str().unwrap();
        let dir = layer_dir(&repo, d);
        assert!(dir.parent().unwrap().join(".cvmfscatalog").is_file());
        let info = json(&dir.join(".metadata/layers.json"));
        assert_eq!(info[0]["compressed-diff-digest"], d);
        assert!(
            info[0]["diff-digest"]
                .as_str()
                .unwrap()
                .starts_with("sha256:")
        );
        let origin = json(&dir.join(".metadata/origin.json"));
        assert_eq!(origin["origin"][0], cfg);
        // Each layerfs is the layer as plain tar extracts it (whiteouts stay `.wh.` files).
        let plain = tmp.path().join("plain").join(&d[7..19]);
        std::fs::create_dir_all(&plain).unwrap();
        run_ok(
            Command::new("tar")
                .args(["--numeric-owner", "--xattrs", "--xattrs-include=*", "-xpf"])
                .arg(blob_path(&layout, d))
                .arg("-C")
                .arg(&plain),
        );
        let reference = normalize(snapshot(&plain), None);
        assert_same_tree(&normalize(snapshot(&dir.join("layerfs")), None), &reference);
    }
    assert!(
        layers
            .iter()
            .any(|l| layer_dir(&repo, l["digest"].as_str().unwrap())
                .join("layerfs/data/.wh.gone")
                .is_file()),
        "whiteouts are kept literal in layerfs"
    );
    // The flat root is the image as umoci unpacks it, and shares storage with the layers.
    assert_flat_equals_umoci(&link, &format!("{}:v1", layout.display()), tmp.path());
    let busybox_flat = std::fs::metadata(link.join("bin/busybox")).unwrap();
    assert!(
        busybox_flat.nlink() >= 2,
        "flat file not linked to its layer"
    );
    // Apptainer scaffolding from the config.
    let env =
        std::fs::read_to_string(link.join(".singularity.d/env/10-docker2singularity.sh")).unwrap();
    assert!(env.contains("GREETING"), "{env}");
    let runscript = std::fs::read_to_string(link.join(".singularity.d/runscript")).unwrap();
    assert!(runscript.contains("cat /data/keep/c"), "{runscript}");
    // It runs.
    let out = run_ok(Command::new("chroot").arg(&link).args([
        "/bin/sh",
        "-c",
        "cat /data/keep/c /data/replace/new; ls /data/deep/a/b",
    ]));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "more\nnew\ng\n");

    // Again: nothing to do.
    let again = convert_ok(&[
        "--repo",
        r,
        &format!("oci:{}:v1", layout.display()),
        "--name",
        "example.org/conv/oci:v1",
    ]);
    assert_eq!(again["images"][0]["status"], "up to date");
    assert_eq!(again["layers_fetched"], 0);

    // The same image from the two archive forms: the OCI archive shares every layer, the
    // docker archive (uncompressed layers, other digests) shares the flat root.
    let s = convert_ok(&[
        "--repo",
        r,
        &format!("oci-archive:{}:v1", oci_archive.display()),
    ]);
    assert_eq!(s["layers_fetched"], 0);
    assert!(repo.join("localhost/img.oci:v1").exists());
    let s = convert_ok(&[
        "--repo",
        r,
        &format!("docker-archive:{}", docker_archive.display()),
    ]);
    assert_eq!(s["images"][0]["name"], "localhost/strata-conv:v1");
    assert_eq!(s["images"][0]["config"], cfg);
    let flat = repo.join("localhost/strata-conv:v1");
    assert_flat_equals_umoci(&flat, &format!("{}:v1", layout.display()), tmp.path());
    assert!(
        repo.join(".stratafs-tmp")
            .read_dir()
            .unwrap()
            .next()
            .is_none()
    );
}

/// Metadata podman cannot easily make: owners, setuid, xattrs, a device node, a fifo, hard
/// links, nanosecond times; the image is made by umoci from a prepared root.
#[test]
fn every_kind_of_metadata_is_kept_as_root() {
    require_root();
    require_tool("umoci");
    require_tool("setfattr");
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    let bundle = tmp.path().join("bundle");
    run_ok(
        Command::new("umoci")
            .args(["init", "--layout"])
            .arg(&layout),
    );
    let l = layout.display().to_string();
    run_ok(Command::new("umoci").args(["new", "--image", &format!("{l}:rich")]));
    run_ok(
        Command::new("umoci")
            .args(["unpack", "--image", &format!("{l}:rich")])
            .arg(&bundle),
    );
    let root = bundle.join("rootfs");
    run_ok(Command::new("sh").current_dir(&root).arg("-c").arg(
        "set -e; mkdir -p usr/bin srv/own etc && printf 'x' > usr/bin/suid && chmod 4755 usr/bin/suid \
         && printf 'g' > usr/bin/sgid && chmod 2711 usr/bin/sgid \
         && echo data > srv/own/f && chown -R 1234:5678 srv/own && chmod 0750 srv/own \
         && setfattr -n user.note -v hello srv/own/f && setfattr -n trusted.t -v 1 usr/bin/suid \
         && mknod dev-null c 1 3 && mkfifo pipe && ln srv/own/f srv/hard \
         && ln -s /etc/passwd abs-link && touch -d '2001-02-03 04:05:06' srv/own/f \
         && touch -h -d '2002-01-01 00:00:00.5' abs-link",
    ));
    run_ok(
        Command::new("umoci")
            .args(["repack", "--image", &format!("{l}:rich")])
            .arg(&bundle),
    );
    let repo = tmp.path().join("repo");
    convert_ok(&["--repo", repo.to_str().unwrap(), &format!("oci:{l}:rich")]);
    let flat = repo.join("localhost/layout:rich");
    assert_flat_equals_umoci(&flat, &format!("{l}:rich"), tmp.path());
    let f = std::fs::metadata(flat.join("srv/own/f")).unwrap();
    assert_eq!((f.uid(), f.gid()), (1234, 5678));
    assert_eq!(
        std::fs::metadata(flat.join("usr/bin/suid")).unwrap().mode() & 0o7777,
        0o4755
    );
    assert_eq!(
        xattrs_of(&flat.join("srv/own/f")).get(&b"user.note"[..]),
        Some(&b"hello".to_vec())
    );
    let dev = std::fs::symlink_metadata(flat.join("dev-null")).unwrap();
    assert_eq!(dev.rdev(), libc::makedev(1, 3));
}

#[test]
fn registry_tags_digests_wildcards_platforms_and_basic_auth() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let bottom = tar_bytes(&[TarEntry::Dir("etc"), TarEntry::File("etc/os", b"one\n")]);
    let top = tar_bytes(&[
        TarEntry::File("etc/.wh.os", b""),
        TarEntry::File("etc/new", b"new\n"),
    ]);
    let layout = tmp.path().join("layout");
    make_layout(&layout, "v1", &[bottom.clone(), top]);
    let other = tmp.path().join("other");
    make_layout(&other, "v2", &[bottom]);
    let reg = TestRegistry::start(&tmp.path().join("reg"), &[("alice", "s3cret")]);
    let creds = Some("alice:s3cret");
    let src = |d: &Path, t: &str| format!("oci:{}:{t}", d.display());
    for tag in ["v1", "v1.1", "v1-rc"] {
        reg.push(&src(&layout, "v1"), "lab/img", tag, creds, false);
    }
    reg.push(&src(&other, "v2"), "lab/img", "v2", creds, false);
    let host = reg.host();
    // The same image as a Docker schema 2 manifest.
    run_ok(
        Command::new("skopeo")
            .args([
                "copy",
                "-q",
                "--dest-tls-verify=false",
                "--format",
                "v2s2",
                "--dest-creds",
                "alice:s3cret",
            ])
            .arg(src(&layout, "v1"))
            .arg(format!("docker://{host}/lab/img:docker-v2s2")),
    );
    let repo = tmp.path().join("repo");
    let r = repo.to_str().unwrap();

    // Without credentials: one clear line.
    let e = convert_err(&["--repo", r, &format!("http://{host}/lab/img:v1")]);
    assert!(e.contains("HTTP 401") && e.contains("credentials"), "{e}");

    let with_creds = |args: &[&str]| {
        let mut all = vec!["convert", "--json"];
        all.extend_from_slice(args);
        let out = run(Command::new(BIN)
            .args(&all)
            .env("STRATAFS_REGISTRY_USER", "alice")
            .env("STRATAFS_REGISTRY_PASSWORD", "s3cret"));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let s = with_creds(&["--repo", r, &format!("http://{host}/lab/img:v1")]);
    assert_eq!(s["layers_fetched"], 2);
    let flat = repo.join(format!("{host}/lab/img:v1"));
    assert_eq!(
        std::fs::read_to_string(flat.join("etc/new")).unwrap(),
        "new\n"
    );
    assert!(!flat.join("etc/os").exists());
    let s = with_creds(&["--repo", r, &format!("http://{host}/lab/img:docker-v2s2")]);
    let m = std::fs::read(repo.join(format!(
        ".metadata/{host}/lab/img:docker-v2s2/manifest.json"
    )))
    .unwrap();
    assert!(
        String::from_utf8_lossy(&m)
            .contains("application/vnd.docker.distribution.manifest.v2+json"),
        "not a Docker schema 2 manifest"
    );
    assert_eq!(s["images"][0]["status"], "converted");
    let flat2 = repo.join(format!("{host}/lab/img:docker-v2s2"));
    assert_eq!(
        std::fs::read_to_string(flat2.join("etc/new")).unwrap(),
        "new\n"
    );

    // By digest: the link is named by the digest, the layers are reused.
    let (mbytes, _) = manifest_of_layout(&layout, "v1");
    let digest = format!("sha256:{}", sha256_hex(&mbytes));
    let s = with_creds(&["--repo", r, &format!("http://{host}/lab/img@{digest}")]);
    assert_eq!(s["layers_fetched"], 0);
    assert!(repo.join(format!("{host}/lab/img:{digest}")).exists());
    assert!(
        repo.join(format!(".metadata/{host}/lab/img/manifest.json"))
            .is_file()
    );

    // A recipe with a wildcard, against the registry's tag list read through its pages:
    // 1,100 more tags are written into the registry's own storage so that the list needs two
    // pages of 1,000.
    let tags_dir = reg
        .dir
        .join("data/docker/registry/v2/repositories/lab/img/_manifests/tags");
    for i in 0..1100 {
        run_ok(
            Command::new("cp")
                .arg("-r")
                .arg(tags_dir.join("v2"))
                .arg(tags_dir.join(format!("zz{i:04}"))),
        );
    }
    let recipe = tmp.path().join("recipe.yaml");
    std::fs::write(
        &recipe,
        format!(
            "version: 1\nuser: tester\ncvmfs_repo: 'unpacked.example.org'\n\
             output_format: '$(scheme)://$(registry)/$(repository)_thin:$(tag)'\n\
             input:\n  - 'http://{host}/lab/img:v1*'\n  - 'http://{host}/lab/img:zz1099'\n"
        ),
    )
    .unwrap();
    let s = with_creds(&["--repo", r, "--recipe", recipe.to_str().unwrap()]);
    let names: Vec<&str> = s["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    let want: Vec<String> = ["v1", "v1-rc", "v1.1", "zz1099"]
        .iter()
        .map(|t| format!("{host}/lab/img:{t}"))
        .collect();
    assert_eq!(names, want);
    assert_eq!(s["images"][0]["status"], "up to date");
    assert_eq!(
        s["layers_fetched"], 0,
        "every layer was in the repo already"
    );
    // The last page only: a wildcard reaching past the first page.
    let recipe2 = tmp.path().join("recipe2.yaml");
    std::fs::write(
        &recipe2,
        format!("version: 1\ninput:\n  - 'http://{host}/lab/img:zz10*'\n"),
    )
    .unwrap();
    let s = with_creds(&["--repo", r, "--recipe", recipe2.to_str().unwrap()]);
    assert_eq!(s["images"].as_array().unwrap().len(), 100);
}

#[test]
fn image_index_picks_the_platform() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let amd = tmp.path().join("amd");
    make_layout(
        &amd,
        "x",
        &[tar_bytes(&[TarEntry::File("arch", b"amd64\n")])],
    );
    let arm = tmp.path().join("arm");
    make_layout(
        &arm,
        "x",
        &[tar_bytes(&[TarEntry::File("arch", b"arm64\n")])],
    );
    // One layout holding both, under an index with platforms.
    let multi = tmp.path().join("multi");
    std::fs::create_dir_all(multi.join("blobs/sha256")).unwrap();
    let mut manifests = Vec::new();
    for (dir, arch) in [(&amd, "amd64"), (&arm, "arm64")] {
        for b in std::fs::read_dir(dir.join("blobs/sha256")).unwrap() {
            let b = b.unwrap();
            std::fs::copy(b.path(), multi.join("blobs/sha256").join(b.file_name())).unwrap();
        }
        let (bytes, _) = manifest_of_layout(dir, "x");
        // Configs must say their architecture for a registry to accept the index.
        manifests.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{}", sha256_hex(&bytes)),
            "size": bytes.len(),
            "platform": {"architecture": arch, "os": "linux"}
        }));
    }
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": manifests
    }))
    .unwrap();
    let ihex = sha256_hex(&index);
    std::fs::write(multi.join("blobs/sha256").join(&ihex), &index).unwrap();
    std::fs::write(
        multi.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    std::fs::write(
        multi.join("index.json"),
        serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": format!("sha256:{ihex}"), "size": index.len(),
            "annotations": {"org.opencontainers.image.ref.name": "multi"}}]}))
        .unwrap(),
    )
    .unwrap();
    let reg = TestRegistry::start(&tmp.path().join("reg"), &[]);
    reg.push(
        &format!("oci:{}:multi", multi.display()),
        "lab/multi",
        "1",
        None,
        true,
    );
    let host = reg.host();
    let repo = tmp.path().join("repo");
    let r = repo.to_str().unwrap();
    let image = format!("http://{host}/lab/multi:1");
    convert_ok(&["--repo", r, &image]);
    let flat = repo.join(format!("{host}/lab/multi:1"));
    assert_eq!(
        std::fs::read_to_string(flat.join("arch")).unwrap(),
        "amd64\n"
    );
    let arm_repo = tmp.path().join("repo-arm");
    convert_ok(&[
        "--repo",
        arm_repo.to_str().unwrap(),
        "--platform",
        "linux/arm64",
        &image,
    ]);
    let flat = arm_repo.join(format!("{host}/lab/multi:1"));
    assert_eq!(
        std::fs::read_to_string(flat.join("arch")).unwrap(),
        "arm64\n"
    );
    let e = convert_err(&["--repo", r, "--platform", "linux/s390x", &image]);
    assert!(
        e.contains("no manifest for platform linux/s390x") && e.contains("linux/arm64"),
        "{e}"
    );
}

/// Every escape is refused with the image, layer and entry named; nothing is written outside
/// the repository and no layer appears under its final name.
#[test]
fn hostile_layers_are_refused() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret"), "secret").unwrap();
    let o = outside.to_str().unwrap().to_string();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "dotdot",
            tar_bytes(&[TarEntry::File("../../escape", b"x")]),
            "'..'",
        ),
        (
            "symlink-parent",
            tar_bytes(&[
                TarEntry::Symlink("link", &o),
                TarEntry::File("link/pwned", b"x"),
            ]),
            "symlink",
        ),
        (
            "symlink-relative-parent",
            tar_bytes(&[
                TarEntry::Symlink("up", "../../../../../../../.."),
                TarEntry::File("up/tmp/pwned", b"x"),
            ]),
            "symlink",
        ),
        (
            "hardlink-dotdot",
            tar_bytes(&[TarEntry::HardLink("h", "../../../../etc/passwd")]),
            "'..'",
        ),
        (
            "hardlink-absolute",
            tar_bytes(&[TarEntry::HardLink("h", &format!("{o}/secret"))]),
            "neither this layer nor a lower one",
        ),
        (
            "hardlink-through-symlink",
            tar_bytes(&[
                TarEntry::Symlink("l", &o),
                TarEntry::HardLink("h", "l/secret"),
            ]),
            "symlink",
        ),
    ];
    let repo = tmp.path().join("repo");
    for (name, layer, why) in cases {
        let layout = tmp.path().join(name);
        let digests = make_layout(&layout, "t", &[layer]);
        let e = convert_err(&[
            "--repo",
            repo.to_str().unwrap(),
            &format!("oci:{}:t", layout.display()),
        ]);
        assert!(e.contains(&digests[0]), "{name}: layer not named: {e}");
        assert!(e.contains("entry '"), "{name}: entry not named: {e}");
        assert!(e.contains(why), "{name}: expected '{why}' in: {e}");
        assert!(
            !layer_dir(&repo, &digests[0]).exists(),
            "{name}: layer installed"
        );
    }
    let names: Vec<_> = std::fs::read_dir(&outside)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("secret")]);
    assert_eq!(
        std::fs::read_to_string(outside.join("secret")).unwrap(),
        "secret"
    );
    assert!(!tmp.path().join("escape").exists());
    assert!(!Path::new("/tmp/pwned").exists());

    // Absolute names are taken relative to the layer root, as tar does; a symlink pointing
    // anywhere is kept as a symlink and never followed.
    let layout = tmp.path().join("absolute");
    let d = make_layout(
        &layout,
        "t",
        &[tar_bytes(&[
            TarEntry::File("/etc/abs", b"abs\n"),
            TarEntry::Symlink("etc/passwd-link", "/etc/passwd"),
        ])],
    );
    convert_ok(&[
        "--repo",
        repo.to_str().unwrap(),
        &format!("oci:{}:t", layout.display()),
    ]);
    let lfs = layer_dir(&repo, &d[0]).join("layerfs");
    assert_eq!(
        std::fs::read_to_string(lfs.join("etc/abs")).unwrap(),
        "abs\n"
    );
    assert_eq!(
        std::fs::read_link(lfs.join("etc/passwd-link")).unwrap(),
        PathBuf::from("/etc/passwd")
    );
}

/// A hard link whose target a lower layer holds is legitimate: it becomes that file.
#[test]
fn hard_link_to_a_lower_layer_is_materialised() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("l");
    let d = make_layout(
        &layout,
        "t",
        &[
            tar_bytes(&[
                TarEntry::Dir("usr"),
                TarEntry::File("usr/lib.so", b"library\n"),
            ]),
            tar_bytes(&[
                TarEntry::Dir("opt"),
                TarEntry::HardLink("opt/lib.so", "usr/lib.so"),
            ]),
        ],
    );
    let repo = tmp.path().join("repo");
    convert_ok(&[
        "--repo",
        repo.to_str().unwrap(),
        &format!("oci:{}:t", layout.display()),
    ]);
    let top = layer_dir(&repo, &d[1]).join("layerfs/opt/lib.so");
    assert_eq!(std::fs::read_to_string(&top).unwrap(), "library\n");
    let flat = repo.join("localhost/l:t");
    assert_eq!(
        std::fs::read_to_string(flat.join("opt/lib.so")).unwrap(),
        "library\n"
    );

    // The same link where the lower file was whited out in between has nothing to link to.
    let layout = tmp.path().join("w");
    make_layout(
        &layout,
        "t",
        &[
            tar_bytes(&[
                TarEntry::Dir("usr"),
                TarEntry::File("usr/lib.so", b"library\n"),
            ]),
            tar_bytes(&[TarEntry::File("usr/.wh.lib.so", b"")]),
            tar_bytes(&[TarEntry::HardLink("lib.so", "usr/lib.so")]),
        ],
    );
    let e = convert_err(&[
        "--repo",
        repo.to_str().unwrap(),
        &format!("oci:{}:t", layout.display()),
    ]);
    assert!(
        e.contains("entry 'lib.so'") && e.contains("neither this layer nor a lower one"),
        "{e}"
    );
}

#[test]
fn corrupt_blob_is_refused() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("l");
    let d = make_layout(
        &layout,
        "t",
        &[tar_bytes(&[TarEntry::File("f", &[7u8; 10000])])],
    );
    // Same length, other bytes: the compressed stream still decodes until the checksum.
    let p = blob_path(&layout, &d[0]);
    let mut b = std::fs::read(&p).unwrap();
    let n = b.len();
    b[n - 5] ^= 0xff;
    std::fs::write(&p, &b).unwrap();
    let repo = tmp.path().join("repo");
    let e = convert_err(&[
        "--repo",
        repo.to_str().unwrap(),
        &format!("oci:{}:t", layout.display()),
    ]);
    assert!(e.contains(&d[0]), "{e}");
    assert!(!layer_dir(&repo, &d[0]).exists());
    assert!(!repo.join("localhost/l:t").exists());
}

#[test]
fn killed_convert_leaves_no_half_layer_and_the_next_run_finishes() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("big");
    // 300 MB of incompressible data in one layer: slow enough to be killed in the middle.
    let mut data = vec![0u8; 300 << 20];
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for c in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        c.copy_from_slice(&x.to_le_bytes()[..c.len()]);
    }
    let d = make_layout(
        &layout,
        "t",
        &[tar_bytes(&[
            TarEntry::File("small", b"s"),
            TarEntry::File("big", &data),
        ])],
    );
    drop(data);
    let repo = tmp.path().join("repo");
    let img = format!("oci:{}:t", layout.display());
    let mut child = Command::new(BIN)
        .args(["convert", "--repo", repo.to_str().unwrap(), &img])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill as soon as the layer's temporary directory holds part of the big file.
    wait_until("unpacking started", || {
        walk_files(&repo.join(".stratafs-tmp")).iter().any(|p| {
            p.ends_with("big") && std::fs::metadata(p).map(|m| m.len() > 0).unwrap_or(false)
        })
    });
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        !layer_dir(&repo, &d[0]).exists(),
        "half layer under its final name"
    );
    assert!(!repo.join("localhost/big:t").exists());
    let s = convert_ok(&["--repo", repo.to_str().unwrap(), &img]);
    assert_eq!(s["images"][0]["status"], "converted");
    assert_eq!(
        std::fs::metadata(layer_dir(&repo, &d[0]).join("layerfs/big"))
            .unwrap()
            .len(),
        300 << 20
    );
    assert!(
        repo.join(".stratafs-tmp")
            .read_dir()
            .unwrap()
            .next()
            .is_none()
    );
}

fn walk_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// A layer of a few kilobytes that inflates to 3 MiB, against a limit of 1 MiB: refused with
/// one line naming the layer, nothing of it kept in a repository that holds other images.
#[test]
fn a_layer_that_inflates_past_the_limit_is_refused() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    let r = repo.to_str().unwrap();
    let ok = tmp.path().join("ok");
    make_layout(&ok, "t", &[tar_bytes(&[TarEntry::File("small", b"s")])]);
    convert_ok(&["--repo", r, &format!("oci:{}:t", ok.display())]);
    let zeros = vec![0u8; 3 << 20];
    let bomb = tmp.path().join("bomb");
    let d = make_layout(&bomb, "t", &[tar_bytes(&[TarEntry::File("zeros", &zeros)])]);
    let blob = std::fs::metadata(bomb.join("blobs/sha256").join(&d[0][7..]))
        .unwrap()
        .len();
    assert!(blob < 64 << 10, "the blob is small: {blob} bytes");
    let src = format!("oci:{}:t", bomb.display());
    let e = convert_err(&["--repo", r, "--max-layer-size", "1M", &src]);
    assert!(
        e.contains(&d[0])
            && e.ends_with("unpacks to more than 1048576 bytes (convert --max-layer-size)"),
        "{e}"
    );
    assert!(!layer_dir(&repo, &d[0]).exists());
    assert!(walk_files(&repo.join(".stratafs-tmp")).is_empty());
    let out = convert(&["--repo", r, "--max-layer-size", "lots", &src]);
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && e.contains("'lots'"), "{e}");
    // Within the limit it converts.
    convert_ok(&["--repo", r, "--max-layer-size", "4M", &src]);
    assert!(layer_dir(&repo, &d[0]).exists());
}

/// An OCI layout's directory and its layers' digests.
type Layout = (PathBuf, Vec<String>);

/// Layouts `a` and `b` (tag `t`) of two images whose first layer is the same.
fn two_layouts_sharing_a_layer(dir: &Path) -> (Layout, Layout) {
    let shared = tar_bytes(&[TarEntry::File("shared", b"s")]);
    let a = dir.join("a");
    let da = make_layout(
        &a,
        "t",
        &[shared.clone(), tar_bytes(&[TarEntry::File("a", b"a")])],
    );
    let b = dir.join("b");
    let db = make_layout(&b, "t", &[shared, tar_bytes(&[TarEntry::File("b", b"b")])]);
    ((a, da), (b, db))
}

#[test]
fn moved_tag_is_scheduled_and_gc_removes_what_no_image_uses() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let ((a, da), (b, db)) = two_layouts_sharing_a_layer(tmp.path());
    let repo = tmp.path().join("repo");
    let r = repo.to_str().unwrap();
    convert_ok(&[
        "--repo",
        r,
        &format!("oci:{}:t", a.display()),
        "--name",
        "reg.io/x:latest",
    ]);
    let old_flat = std::fs::canonicalize(repo.join("reg.io/x:latest")).unwrap();
    // The tag now names another image.
    let s = convert_ok(&[
        "--repo",
        r,
        &format!("oci:{}:t", b.display()),
        "--name",
        "reg.io/x:latest",
    ]);
    assert_eq!(s["images"][0]["status"], "updated");
    assert_eq!(s["layers_fetched"], 1, "the shared layer is reused");
    assert!(repo.join("reg.io/x:latest/b").exists());
    let sched = json(&repo.join(".metadata/remove-schedule.json"));
    assert_eq!(sched[0]["image"], "reg.io/x:latest");
    assert_eq!(sched[0]["manifest"]["layers"][1]["digest"], da[1].as_str());

    let out = run_ok(Command::new(BIN).args(["gc", "--repo", r, "--dry-run"]));
    let listed = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(listed.contains(&da[1][7..]), "{listed}");
    assert!(
        !listed.contains(&db[1][7..]) && !listed.contains(&da[0][7..]),
        "{listed}"
    );
    assert!(old_flat.exists(), "dry run removed something");
    run_ok(Command::new(BIN).args(["gc", "--repo", r]));
    assert!(!old_flat.exists());
    assert!(!layer_dir(&repo, &da[1]).exists());
    assert!(layer_dir(&repo, &da[0]).exists() && layer_dir(&repo, &db[1]).exists());
    assert!(repo.join("reg.io/x:latest/shared").exists());
    assert!(!repo.join(".metadata/remove-schedule.json").exists());
}

#[test]
fn rmi_removes_the_name_and_gc_the_layers_only_it_used() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let ((a, da), (b, db)) = two_layouts_sharing_a_layer(tmp.path());
    let repo = tmp.path().join("repo");
    let r = repo.to_str().unwrap();
    for (dir, name) in [(&a, "reg.io/x:latest"), (&b, "reg.io/y:1")] {
        convert_ok(&[
            "--repo",
            r,
            &format!("oci:{}:t", dir.display()),
            "--name",
            name,
        ]);
    }
    let store = repo.join("podmanStore/overlay-images/images.json");
    assert!(
        std::fs::read_to_string(&store)
            .unwrap()
            .contains("reg.io/x:latest")
    );

    let out = run_ok(Command::new(BIN).args(["rmi", "--repo", r, "reg.io/x:latest"]));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "removed reg.io/x:latest\n"
    );
    assert!(std::fs::symlink_metadata(repo.join("reg.io/x:latest")).is_err());
    assert!(!repo.join(".metadata/reg.io/x:latest").exists());
    let images = run_ok(Command::new(BIN).args(["images", "--repo", r]));
    let listed = String::from_utf8_lossy(&images.stdout).to_string();
    assert!(
        !listed.contains("reg.io/x") && listed.contains("reg.io/y:1"),
        "{listed}"
    );
    let in_store = std::fs::read_to_string(&store).unwrap();
    assert!(!in_store.contains("reg.io/x") && in_store.contains("reg.io/y:1"));
    // Its layers wait for gc, which takes only what no other image uses.
    assert!(layer_dir(&repo, &da[1]).exists());
    let gone = run_ok(Command::new(BIN).args(["gc", "--repo", r]));
    let gone = String::from_utf8_lossy(&gone.stdout).to_string();
    assert!(
        gone.contains(&da[1][7..]) && gone.starts_with("removed "),
        "{gone}"
    );
    assert!(!layer_dir(&repo, &da[1]).exists());
    assert!(layer_dir(&repo, &da[0]).exists() && layer_dir(&repo, &db[1]).exists());

    let out = run(Command::new(BIN).args(["rmi", "--repo", r, "reg.io/x:latest"]));
    assert_eq!(out.status.code(), Some(1));
    let e = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_eq!(e.lines().count(), 1, "{e}");
    assert!(
        e.ends_with("no image 'reg.io/x:latest' (see stratafs images --repo)"),
        "{e}"
    );
}

/// As an ordinary user: owners and device nodes go into user.containers.override_stat, and a
/// stratafs mount with xattr_permissions=2 shows them.
#[test]
fn unprivileged_convert_records_what_it_cannot_apply() {
    require_root();
    require_tool("runuser");
    let tmp = shared_tempdir();
    let layout = tmp.path().join("l");
    let mut owned = tar::Header::new_gnu();
    owned.set_entry_type(tar::EntryType::Regular);
    let mut layer = tar_bytes(&[TarEntry::Dir("etc"), TarEntry::Char("etc/null", 1, 3)]);
    // A file owned by 1234:5678, mode 04750.
    layer.truncate(layer.len() - 1024);
    owned.set_path("etc/owned").unwrap();
    owned.set_size(2);
    owned.set_mode(0o4750);
    owned.set_uid(1234);
    owned.set_gid(5678);
    owned.set_mtime(1_600_000_000);
    owned.set_cksum();
    layer.extend_from_slice(owned.as_bytes());
    layer.extend_from_slice(b"ok");
    layer.resize(layer.len().div_ceil(512) * 512 + 1024, 0);
    make_layout(&layout, "t", &[layer]);
    run_ok(
        Command::new("chown")
            .arg("-R")
            .arg("stratafs-test")
            .arg(tmp.path()),
    );
    let repo = tmp.path().join("repo");
    let out = run(Command::new("runuser")
        .args(["-u", "stratafs-test", "--"])
        .arg(BIN)
        .args([
            "convert",
            "--repo",
            repo.to_str().unwrap(),
            &format!("oci:{}:t", layout.display()),
        ]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let flat = repo.join("localhost/l:t");
    let x = xattrs_of(&flat.join("etc/owned"));
    assert_eq!(
        x.get(&b"user.containers.override_stat"[..])
            .map(|v| String::from_utf8_lossy(v).into_owned()),
        Some("1234:5678:4750:file".to_string())
    );
    let x = xattrs_of(&flat.join("etc/null"));
    assert_eq!(
        x.get(&b"user.containers.override_stat"[..])
            .map(|v| String::from_utf8_lossy(v).into_owned()),
        Some("0:0:0666:char-1-3".to_string())
    );
    // The mount presents them.
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    run_ok(Command::new("chown").arg("stratafs-test").arg(&mnt));
    let flat_real = std::fs::canonicalize(&flat).unwrap();
    run_ok(
        Command::new("runuser")
            .args(["-u", "stratafs-test", "--"])
            .arg(BIN)
            .arg("-o")
            .arg(format!(
                "lowerdir={},xattr_permissions=2,allow_other",
                flat_real.display()
            ))
            .arg(&mnt),
    );
    let owned = std::fs::symlink_metadata(mnt.join("etc/owned"));
    let null = std::fs::symlink_metadata(mnt.join("etc/null"));
    let _ = Command::new("fusermount3").arg("-u").arg(&mnt).status();
    let owned = owned.unwrap();
    assert_eq!(
        (owned.uid(), owned.gid(), owned.mode() & 0o7777),
        (1234, 5678, 0o4750)
    );
    let null = null.unwrap();
    assert!(std::os::unix::fs::FileTypeExt::is_char_device(
        &null.file_type()
    ));
    assert_eq!(null.rdev(), libc::makedev(1, 3));
}

#[test]
fn bad_input_gets_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let r = tmp.path().join("repo");
    let r = r.to_str().unwrap();
    let e = convert_err(&["--repo", r, "centos:7"]);
    assert!(e.contains("image reference 'centos:7'"), "{e}");
    let e = convert_err(&["--repo", r, "oci:/nonexistent/layout:t"]);
    assert!(e.contains("/nonexistent/layout/index.json"), "{e}");
    let e = convert_err(&["--repo", r, "--platform", "amd64", "oci:/x"]);
    assert!(e.contains("--platform 'amd64'"), "{e}");
    let recipe = tmp.path().join("r.yaml");
    std::fs::write(&recipe, "version: 2\ninput: []\n").unwrap();
    let e = convert_err(&["--repo", r, "--recipe", recipe.to_str().unwrap()]);
    assert!(e.contains("recipe") && e.contains("version 2"), "{e}");
    let e = convert_err(&["--repo", r]);
    assert!(e.contains("nothing to convert"), "{e}");
    // A run that failed on its first input left no repository skeleton behind.
    assert!(!Path::new(r).exists(), "{r} was left behind");
    // A file where the repository should be.
    let file = tmp.path().join("plain-file");
    std::fs::write(&file, "x").unwrap();
    let e = convert_err(&["--repo", file.to_str().unwrap(), "oci:/x"]);
    assert!(
        e.contains("plain-file") && e.ends_with("not a directory"),
        "{e}"
    );
}

/// Bearer tokens, as Docker Hub and most registries hand them out: the registry answers 401
/// with a `Bearer realm=…,service=…,scope=…` challenge, the token service wants credentials.
#[test]
fn registry_with_token_auth() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let tokens = TokenServer::start(&tmp.path().join("token"), "bob", "pw");
    let reg = TestRegistry::start_with(&tmp.path().join("reg"), &[], Some(&tokens));
    let layout = tmp.path().join("layout");
    make_layout(
        &layout,
        "t",
        &[tar_bytes(&[TarEntry::File("hello", b"token\n")])],
    );
    reg.push(
        &format!("oci:{}:t", layout.display()),
        "lab/tok",
        "1",
        Some("bob:pw"),
        false,
    );
    let repo = tmp.path().join("repo");
    let image = format!("http://{}/lab/tok:1", reg.host());
    // Credentials from a containers auth.json, as `podman login` writes it.
    let auth = tmp.path().join("auth.json");
    std::fs::write(
        &auth,
        format!(r#"{{"auths":{{"{}":{{"auth":"Ym9iOnB3"}}}}}}"#, reg.host()),
    )
    .unwrap();
    let before = tokens.requests.load(std::sync::atomic::Ordering::SeqCst);
    let out = run(Command::new(BIN)
        .args(["convert", "--repo", repo.to_str().unwrap(), &image])
        .env("REGISTRY_AUTH_FILE", &auth));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        tokens.requests.load(std::sync::atomic::Ordering::SeqCst) > before,
        "no token fetched"
    );
    let flat = repo.join(format!("{}/lab/tok:1", reg.host()));
    assert_eq!(
        std::fs::read_to_string(flat.join("hello")).unwrap(),
        "token\n"
    );
    // Without credentials the token service refuses: one line naming the token URL.
    let e = convert_err(&[
        "--repo",
        repo.to_str().unwrap(),
        &format!("http://{}/lab/tok:1", reg.host()),
    ]);
    assert!(
        e.contains(&format!("127.0.0.1:{}/token", tokens.port)) && e.contains("401"),
        "{e}"
    );
}

/// Layers compressed with zstd, with gzip in two members, and not at all.
#[test]
fn every_layer_compression() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("l");
    let big: Vec<u8> = (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect();
    make_layout_with(
        &layout,
        "t",
        &[
            (tar_bytes(&[TarEntry::File("zstd", b"z\n")]), Compress::Zstd),
            (
                tar_bytes(&[TarEntry::File("gz2", &big), TarEntry::File("after", b"a\n")]),
                Compress::GzipTwoMembers,
            ),
            (
                tar_bytes(&[TarEntry::File("plain", b"p\n")]),
                Compress::Plain,
            ),
        ],
    );
    let repo = tmp.path().join("repo");
    let s = convert_ok(&[
        "--repo",
        repo.to_str().unwrap(),
        &format!("oci:{}:t", layout.display()),
    ]);
    assert_eq!(s["layers_fetched"], 3);
    let flat = repo.join("localhost/l:t");
    assert_eq!(std::fs::read_to_string(flat.join("zstd")).unwrap(), "z\n");
    assert_eq!(std::fs::read(flat.join("gz2")).unwrap(), big);
    assert_eq!(std::fs::read_to_string(flat.join("after")).unwrap(), "a\n");
    assert_eq!(std::fs::read_to_string(flat.join("plain")).unwrap(), "p\n");
}

/// On a terminal each layer gets a progress bar (run under `script`, which gives a pty).
#[test]
fn progress_bars_on_a_terminal() {
    require_root();
    require_tool("script");
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("l");
    let d = make_layout(
        &layout,
        "t",
        &[tar_bytes(&[TarEntry::File("f", &[1u8; 100_000])])],
    );
    let repo = tmp.path().join("repo");
    let cmd = format!(
        "{BIN} convert --repo {} oci:{}:t",
        repo.display(),
        layout.display()
    );
    let out = run_ok(Command::new("script").args(["-q", "-e", "-c", &cmd, "/dev/null"]));
    let shown = String::from_utf8_lossy(&out.stdout).to_string();
    let bar = format!("{} [", &d[0][7..19]);
    assert!(
        shown.contains(&bar),
        "no progress bar for the layer:\n{shown}"
    );
    assert!(repo.join("localhost/l:t").exists());
}
