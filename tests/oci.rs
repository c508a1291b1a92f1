//! The OCI form on a real image: podman builds layers that delete files and replace a
//! directory, skopeo exports them, plain tar extracts each layer (whiteouts stay literal
//! `.wh.` files) and stratafs stacks them; the result must equal `umoci unpack`.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::image::*;
use common::*;

const CONTAINERFILE: &str = r#"FROM localhost/strata-base
RUN mkdir -p /data/keep /data/replace /data/deep/a/b && echo one > /data/keep/a && \
    echo two > /data/replace/old && echo three > /data/gone && echo four > /data/deep/a/b/f && \
    ln /data/keep/a /data/keep/hard && touch /data/replace/.hidden
RUN rm /data/gone /bin/ls && rm -rf /data/replace && mkdir /data/replace && \
    echo new > /data/replace/new && chmod 4755 /data/keep/a && rm -rf /data/deep/a/b
RUN echo more > /data/keep/b && ln -s ../keep/a /data/replace/link && mkdir /data/deep/a/b && \
    echo back > /data/deep/a/b/g && mv /data/keep/b /data/keep/c
"#;

#[test]
fn oci_layers_stacked_equal_umoci_unpack() {
    require_root();
    require_tool("umoci");
    let tmp = tempfile::tempdir().unwrap();
    let podman = Podman::new(&tmp.path().join("podman"));
    podman.import_busybox_base();
    podman.build("localhost/strata-oci:test", CONTAINERFILE);
    let layout = tmp.path().join("layout");
    podman.export_oci("localhost/strata-oci:test", &layout, "test");

    let layers = extract_layers(&layout, "test", &tmp.path().join("layers"));
    assert!(
        layers.len() >= 4,
        "expected base + 3 RUN layers, got {}",
        layers.len()
    );
    // The layers really hold OCI whiteouts, literal.
    // The layers really hold OCI whiteouts, literal (containers/storage writes one per
    // removed name, also for a directory removed and made again).
    let literal = ["data/.wh.gone", "data/replace/.wh.old", "bin/.wh.ls"]
        .iter()
        .all(|w| layers.iter().any(|l| l.join(w).is_file()));
    assert!(literal, "podman layers carry no .wh. files?");

    let bundle = tmp.path().join("bundle");
    run_ok(
        Command::new("umoci")
            .args(["unpack", "--image"])
            .arg(format!("{}:test", layout.display()))
            .arg(&bundle),
    );
    let m = StrataMount::new(&layers, &tmp.path().join("mnt"));
    let ours = image_tree(snapshot(&m.path));
    let reference = image_tree(snapshot(&bundle.join("rootfs")));
    assert!(!ours.contains_key(&PathBuf::from("data/gone")));
    assert!(!ours.contains_key(&PathBuf::from("data/replace/old")));
    assert_eq!(
        ours[&PathBuf::from("data/replace/link")].target.as_deref(),
        Some(&b"../keep/a"[..])
    );
    assert_same_tree(&ours, &reference);

    // And the merged tree runs: busybox from the base layer, data from the top.
    let out = run_ok(Command::new("chroot").arg(&m.path).args([
        "/bin/sh",
        "-c",
        "cat /data/keep/c /data/replace/new; ls /data/deep/a/b",
    ]));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "more\nnew\ng\n");
}
