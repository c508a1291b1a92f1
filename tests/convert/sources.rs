//! Images from every kind of source (OCI layouts, archives, registries, indexes, compressions) convert like umoci unpacks them, metadata and all.

use super::*;

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
