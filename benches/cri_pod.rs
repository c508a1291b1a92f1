//! One Kubernetes pod start through containerd's CRI socket, timed step by step, as kubelet
//! drives it: PullImage, RunPodSandbox (host network), CreateContainer + StartContainer of a
//! command until it exits, then stop and remove. benches/containerd.sh runs it:
//!
//!     cargo bench -q --bench cri_pod -- SOCKET IMAGE LOG_DIR COMMAND...
//!
//! prints `pull=<s> pod=<s> run=<s> total=<s>` on stdout and the container's log on stderr;
//! `-- pull SOCKET IMAGE` only pulls (a node's sandbox image, before the pods: benches/fleet.sh).
//! Without arguments (as `cargo test --all-targets` runs it) it only says how to use it.

#[path = "../tests/common/cri.rs"]
mod cri;

use std::path::Path;
use std::time::{Duration, Instant};

fn main() {
    // `cargo bench` adds --bench; the rest are ours.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let fail = |e: String| -> ! {
        eprintln!("cri_pod: {e}");
        std::process::exit(1)
    };
    if args.len() == 3 && args[0] == "pull" {
        let mut c = cri::Cri::connect(Path::new(&args[1])).unwrap_or_else(|e| fail(e));
        c.pull(&args[2]).unwrap_or_else(|e| fail(e));
        return;
    }
    if args.len() < 4 {
        eprintln!(
            "usage: cargo bench --bench cri_pod -- SOCKET IMAGE LOG_DIR COMMAND... | pull SOCKET IMAGE"
        );
        return;
    }
    let t0 = Instant::now();
    let mut c = cri::Cri::connect(Path::new(&args[0])).unwrap_or_else(|e| fail(e));
    let image_ref = c.pull(&args[1]).unwrap_or_else(|e| fail(e));
    let t1 = Instant::now();
    let pod = c
        .run_pod("bench-pod", Path::new(&args[2]))
        .unwrap_or_else(|e| fail(e));
    let t2 = Instant::now();
    let command: Vec<&str> = args[3..].iter().map(String::as_str).collect();
    let log = c
        // Long enough for a big image started on many nodes of one small machine at once.
        .run_container(&pod, &image_ref, &command, Duration::from_secs(600))
        .unwrap_or_else(|e| fail(e));
    let t3 = Instant::now();
    c.remove_pod(pod).unwrap_or_else(|e| fail(e));
    for l in log {
        eprintln!("{l}");
    }
    println!(
        "pull={:.3} pod={:.3} run={:.3} total={:.3}",
        (t1 - t0).as_secs_f64(),
        (t2 - t1).as_secs_f64(),
        (t3 - t2).as_secs_f64(),
        (t3 - t0).as_secs_f64()
    );
}
