//! An ordinary user's writes clear set-id bits as kernel overlayfs does.

use super::*;

/// An ordinary user writing to or truncating a set-ID file clears the bits as the VFS does
/// (stratafs takes this over from the kernel with FUSE_HANDLE_KILLPRIV_V2); root keeps them.
#[test]
fn unprivileged_writes_clear_set_id_bits_as_kernel_overlayfs() {
    require_root();
    require_tool("runuser");
    let pair = mount_pair();
    std::fs::set_permissions(&pair.base, std::fs::Permissions::from_mode(0o755)).unwrap();
    let cases = [
        ("append", 0o6777),
        ("trunc", 0o6777),
        ("open-trunc", 0o6777),
        ("sgid-no-gx", 0o2767),
        ("root-append", 0o6777),
    ];
    for m in ["m1", "m2"] {
        let root = pair.base.join(m);
        for (name, mode) in cases {
            std::fs::write(root.join(name), "data\n").unwrap();
            std::fs::set_permissions(root.join(name), std::fs::Permissions::from_mode(mode))
                .unwrap();
        }
        let as_user = |script: String| {
            run_ok(
                Command::new("runuser")
                    .args(["-u", "stratafs-test", "--", "sh", "-c"])
                    .arg(script),
            )
        };
        let r = root.display();
        as_user(format!("echo x >> {r}/append"));
        as_user(format!("truncate -s 1 {r}/trunc"));
        as_user(format!(": > {r}/open-trunc"));
        as_user(format!("echo x >> {r}/sgid-no-gx"));
        run_ok(
            Command::new("sh")
                .arg("-c")
                .arg(format!("echo x >> {r}/root-append")),
        );
    }
    for (name, _) in cases {
        let a = std::fs::metadata(pair.base.join("m1").join(name)).unwrap();
        let b = std::fs::metadata(pair.base.join("m2").join(name)).unwrap();
        assert_eq!(
            (a.mode(), a.len()),
            (b.mode(), b.len()),
            "{name}: stratafs (left) and kernel overlayfs (right) disagree on mode/size"
        );
    }
    let m = |n: &str| {
        std::fs::metadata(pair.base.join("m1").join(n))
            .unwrap()
            .mode()
            & 0o7777
    };
    assert_eq!(m("append"), 0o777);
    assert_eq!(m("root-append"), 0o6777);
}
