//! A fleet on CernVM-FS, small: `benches/fleet.sh` builds the real topology (the stratum-0 of
//! the CernVM-FS kit, a stratum-1 made by `cvmfs_server add-replica` with its own apache, Debian's
//! squid, three nodes each with its own CernVM-FS client and cache, containerd and stratafs
//! snapshotter) and starts the same pod on the three nodes at once: cold, then again with the
//! image's published trace, then with the stratum-1 stopping in the middle of the start, then
//! with the proxy killed in the middle. Checked here against the parts' own logs:
//! - every pod ran its command (its log), in every start;
//! - the stratum-1 served each data object of the working set once (collapsed forwarding: three
//!   nodes asking at once, one request upstream), and the stratum-0 none;
//! - no layer blob of the image left the registry (only manifests and configs);
//! - with the stratum-1 stopped, the stratum-0 served what was left (the clients failed over);
//!   with the proxy killed, the clients went to the stratum-1 directly.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::image::busybox_with_layer;
use common::*;

const EXPECT: &str = "fleet job read 12 files";

/// Busybox plus a layer of a job that reads twelve files of 256 KiB (incompressible, so each
/// is a data object of its own) and says so.
fn job_image(dir: &Path) -> (PathBuf, Vec<String>) {
    let root = dir.join("job-root");
    std::fs::create_dir_all(root.join("opt/job")).unwrap();
    for d in ["proc", "dev", "sys", "etc"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for i in 0..12 {
        let mut bytes = Vec::with_capacity(256 << 10);
        while bytes.len() < 256 << 10 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            bytes.extend_from_slice(&seed.to_le_bytes());
        }
        std::fs::write(root.join(format!("opt/job/part{i:02}")), bytes).unwrap();
    }
    std::fs::write(
        root.join("opt/job/run.sh"),
        "n=0; for f in /opt/job/part*; do cat $f > /dev/null && n=$((n + 1)); done\n\
         echo fleet job read $n files\n",
    )
    .unwrap();
    busybox_with_layer(dir, &root)
}

/// The CRI client of benches/cri_pod.rs, as `cargo test --all-targets` built it beside this
/// test (the newest one).
fn cri_pod() -> PathBuf {
    let deps = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    std::fs::read_dir(&deps)
        .unwrap()
        .flatten()
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.starts_with("cri_pod-") && !n.contains('.')
        })
        .max_by_key(|e| e.metadata().unwrap().modified().unwrap())
        .map(|e| e.path())
        .unwrap_or_else(|| {
            panic!(
                "benches/cri_pod.rs is not built in {}: run `cargo test --all-targets`",
                deps.display()
            )
        })
}

/// A row of results.tsv.
struct Start {
    ok: usize,
    stratum1: u64,
    proxy: u64,
    stratum0: u64,
}

fn results(f: &Path) -> BTreeMap<String, Start> {
    std::fs::read_to_string(f.join("results.tsv"))
        .unwrap()
        .lines()
        .map(|l| {
            let c: Vec<&str> = l.split('\t').collect();
            (
                c[0].to_string(),
                Start {
                    ok: c[3].parse().unwrap(),
                    stratum1: c[6].parse().unwrap(),
                    proxy: c[7].parse().unwrap(),
                    stratum0: c[8].parse().unwrap(),
                },
            )
        })
        .collect()
}

/// Data objects requested in an apache log (`%h %t "%r" %>s %B %D "via"`), with how often.
fn data_requests(log: &Path) -> BTreeMap<String, usize> {
    let mut n = BTreeMap::new();
    for l in std::fs::read_to_string(log).unwrap().lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() > 4 && f[4].contains("/data/") {
            *n.entry(f[4].to_string()).or_default() += 1;
        }
    }
    n
}

#[test]
fn three_nodes_start_one_pod_from_one_stratum1_through_a_proxy() {
    require_root();
    for t in [
        "cvmfs_server",
        "squid",
        "apache2",
        "containerd",
        "docker-registry",
    ] {
        require_tool(t);
    }
    let tmp = shared_tempdir();
    let (layout, layers) = job_image(tmp.path());
    let f = tmp.path().join("fleet");
    let out = run(Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/fleet.sh"))
        .env("N", "3")
        .env("OCI", format!("{}:v1", layout.display()))
        .env("JOB", "/bin/sh /opt/job/run.sh")
        .env("EXPECT", EXPECT)
        .env("MODES", "cvmfs cvmfs+trace")
        .env("FAULTS", "s1-stops proxy-stops")
        .env("FLEET_DIR", &f)
        .env("STRATAFS_BIN", BIN)
        .env("CRI_POD", cri_pod())
        .env("STRATAFS_CVMFS_KIT", cvmfs_kit()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "fleet.sh failed:\n{stdout}\n{stderr}");
    eprintln!("{stdout}");
    let last = stdout.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("fleet: 3 of 3 nodes ok, stratum-1 bytes "),
        "{stdout}\n{stderr}"
    );

    let starts = results(&f);
    for label in ["cvmfs-1", "cvmfs+trace-1", "s1-stops-1", "proxy-stops-1"] {
        let s = starts
            .get(label)
            .unwrap_or_else(|| panic!("no start {label}:\n{stdout}"));
        assert_eq!(s.ok, 3, "{label}: nodes ok\n{stdout}\n{stderr}");
        for node in 1..=3 {
            let log = std::fs::read_to_string(f.join(format!("pod-{label}-node-{node}.log")))
                .unwrap_or_default();
            assert!(
                log.contains(EXPECT),
                "{label}, node {node}: the pod's log: {log}"
            );
        }
    }

    // Cold, through the proxy: each data object once out of the stratum-1, none out of the
    // stratum-0, and the proxy served the three nodes more than the stratum-1 served it.
    for label in ["cvmfs-1", "cvmfs+trace-1"] {
        let s1 = data_requests(&f.join(format!("s1-{label}.log")));
        assert!(
            !s1.is_empty(),
            "{label}: the stratum-1 served no data object"
        );
        let twice: Vec<_> = s1.iter().filter(|(_, n)| **n > 1).collect();
        assert!(
            twice.is_empty(),
            "{label}: fetched from the stratum-1 more than once: {twice:?}"
        );
        let s = &starts[label];
        assert_eq!(s.stratum0, 0, "{label}: the stratum-0 served data");
        assert!(
            s.proxy > s.stratum1,
            "{label}: proxy {} stratum-1 {}",
            s.proxy,
            s.stratum1
        );
        // The twelve 256 KiB parts of the job, at least: they are in the working set.
        assert!(
            s.stratum1 >= 12 * 256 * 1024,
            "{label}: stratum-1 bytes {}",
            s.stratum1
        );
    }

    // No layer blob of the image out of the registry, in any start.
    for label in ["cvmfs-1", "cvmfs+trace-1", "s1-stops-1", "proxy-stops-1"] {
        let reg = std::fs::read_to_string(f.join(format!("registry-{label}.log"))).unwrap();
        // The log is there to be read: the pull asked for the manifest.
        assert!(
            reg.contains("/manifests/"),
            "{label}: no manifest request in the registry's log:\n{reg}"
        );
        for l in &layers {
            assert!(
                !reg.contains(l),
                "{label}: the registry served layer {l}:\n{reg}"
            );
        }
    }

    // The stratum-1 stopped: the stratum-0 served the rest.
    let s0 = data_requests(&f.join("s0-s1-stops-1.log"));
    assert!(
        !s0.is_empty(),
        "with the stratum-1 stopped, nothing came from the stratum-0"
    );
    // The proxy killed: requests went to the stratum-1 without a Via header (directly).
    let direct = std::fs::read_to_string(f.join("s1-proxy-stops-1.log"))
        .unwrap()
        .lines()
        .filter(|l| l.contains("/data/") && l.ends_with("\"-\""))
        .count();
    assert!(
        direct > 0,
        "with the proxy killed, no client went to the stratum-1 directly"
    );
}
