//! Access times through a writable mount follow the mount's own atime options, as on kernel
//! overlayfs (the oracle): `noatime`, `relatime` (the default), `strictatime`, `nodiratime`.
//! A new file read twice, an executable run, a new directory listed, a lower file read: which
//! of their atimes moved must be the same on both. Over /dev/fuse, and over io_uring in the
//! suite's second pass.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

/// Which atimes moved, one `name=0|1` per access, on the mount `m`.
const PROBE: &str = r#"
m=$1
at() { stat -c %X "$1"; }
echo new > "$m/nf"; printf '#!/bin/sh\ntrue\n' > "$m/ex"; chmod +x "$m/ex"; mkdir "$m/dd"
sleep 1.1; a=$(at "$m/nf"); cat "$m/nf" > /dev/null; b=$(at "$m/nf"); echo "read1=$((a != b))"
sleep 1.1; cat "$m/nf" > /dev/null; c=$(at "$m/nf"); echo "read2=$((b != c))"
a=$(at "$m/ex"); sleep 1.1; "$m/ex"; b=$(at "$m/ex"); echo "exec=$((a != b))"
a=$(at "$m/dd"); sleep 1.1; ls "$m/dd" > /dev/null; b=$(at "$m/dd"); echo "listdir=$((a != b))"
a=$(at "$m/lf"); sleep 1.1; cat "$m/lf" > /dev/null; b=$(at "$m/lf"); echo "lower=$((a != b))"
rm -rf "$m/nf" "$m/ex" "$m/dd"
"#;

fn probe(m: &Path) -> String {
    let out = run_ok(
        Command::new("bash")
            .arg("-c")
            .arg(PROBE)
            .arg("probe")
            .arg(m),
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn atime_options_govern_access_times_as_on_kernel_overlayfs() {
    require_root();
    let tmp = shared_tempdir();
    let l = tmp.path().join("lower");
    std::fs::create_dir_all(&l).unwrap();
    std::fs::write(l.join("lf"), "lower\n").unwrap();
    let mut problems = Vec::new();
    for (i, opt) in [
        "noatime",
        "relatime",
        "strictatime",
        "strictatime,nodiratime",
    ]
    .iter()
    .enumerate()
    {
        let dirs = |kind: &str| {
            let (u, w, m) = (
                tmp.path().join(format!("{kind}{i}-u")),
                tmp.path().join(format!("{kind}{i}-w")),
                tmp.path().join(format!("{kind}{i}-m")),
            );
            for d in [&u, &w, &m] {
                std::fs::create_dir_all(d).unwrap();
            }
            let o = format!(
                "lowerdir={},upperdir={},workdir={},{opt}",
                l.display(),
                u.display(),
                w.display()
            );
            (o, m)
        };
        let (o, km) = dirs("k");
        run_ok(
            Command::new("mount")
                .args(["-t", "overlay", "overlay", "-o", &o])
                .arg(&km),
        );
        let want = probe(&km);
        run_ok(Command::new("umount").arg(&km));
        let (o, sm) = dirs("s");
        let mut cmd = Command::new(BIN);
        cmd.arg("-o").arg(&o);
        for e in transport_opts() {
            cmd.arg("-o").arg(e);
        }
        run_ok(cmd.arg(&sm));
        assert_transport(&sm);
        let got = probe(&sm);
        fuse_unmount(&sm);
        if got != want {
            problems.push(format!(
                "-o {opt}:\n  kernel   {want:?}\n  stratafs {got:?}"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
