//! A real Prometheus scrapes the snapshotter, a mount and the node.

use super::*;

fn http_get(url: &str) -> String {
    ureq::get(url)
        .call()
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .body_mut()
        .read_to_string()
        .unwrap()
}

/// `promtool check metrics` on what `url` serves.
fn promtool_accepts(url: &str) {
    let body = http_get(url);
    assert!(body.contains("# TYPE"), "{url} served no metrics:\n{body}");
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics refused {url}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The value of an instant query's first sample, once Prometheus has one.
fn query(prom: &str, q: &str) -> Option<f64> {
    let url = format!(
        "http://{prom}/api/v1/query?query={}",
        q.bytes()
            .map(|b| if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            })
            .collect::<String>()
    );
    let v: serde_json::Value = serde_json::from_str(
        &ureq::get(&url)
            .call()
            .ok()?
            .body_mut()
            .read_to_string()
            .ok()?,
    )
    .ok()?;
    v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A real Prometheus scrapes the snapshotter (its own metrics and its container's mount), a
/// mount made by hand with -o metrics=, and `stratafs metrics` for the whole node, while a
/// container runs; counters that must have moved are read back from its query API.
#[test]
fn prometheus_scrapes_the_snapshotter_a_mount_and_the_node() {
    for t in ["prometheus", "promtool"] {
        require_tool(t);
    }
    let fx = fixture();
    let (snap_port, mount_port, node_port, prom_port) =
        (free_port(), free_port(), free_port(), free_port());
    let ctrd = Containerd::start_with(
        &fx.dir.join("ctrd"),
        &fx.repo,
        None,
        &["--metrics-address".into(), format!("127.0.0.1:{snap_port}")],
    );
    let app = format!("{}/snap/app:1", fx.reg.host());
    ctrd.rpull(&app);
    // A container that stays while Prometheus scrapes.
    ctrd.ok(
        "ctr",
        &[
            "run",
            "-d",
            "--snapshotter",
            "stratafs",
            &app,
            "c-metrics",
            "sh",
            "-c",
            "cat /greeting; sleep 600",
        ],
    );
    // A mount by hand with its own endpoint, read from.
    let mnt = fx.dir.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    run_ok(
        Command::new(BIN)
            .args(["mount", "--repo"])
            .arg(&fx.repo)
            .arg(&app)
            .arg(&mnt)
            .args(["-o", &format!("metrics=127.0.0.1:{mount_port}")]),
    );
    assert_eq!(
        std::fs::read_to_string(mnt.join("greeting")).unwrap(),
        "hello\n"
    );
    let _node = Killed(
        Command::new(BIN)
            .args(["metrics", "--listen", &format!("127.0.0.1:{node_port}")])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let prom_dir = fx.dir.join("prometheus");
    std::fs::create_dir_all(&prom_dir).unwrap();
    let config = prom_dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n\
             - job_name: snapshotter\n  static_configs: [{{targets: ['127.0.0.1:{snap_port}']}}]\n\
             - job_name: mount\n  static_configs: [{{targets: ['127.0.0.1:{mount_port}']}}]\n\
             - job_name: node\n  static_configs: [{{targets: ['127.0.0.1:{node_port}']}}]\n"
        ),
    )
    .unwrap();
    let prom = format!("127.0.0.1:{prom_port}");
    let _prometheus = Killed(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                prom_dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={prom}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(prom_dir.join("log")).unwrap())
            .spawn()
            .expect("start prometheus"),
    );
    for url in [snap_port, mount_port, node_port].map(|p| format!("http://127.0.0.1:{p}/metrics")) {
        promtool_accepts(&url);
    }
    let group = format!("snapshotter:{}", fx.dir.join("ctrd/snap-state").display());
    let want = [
        // The container's root, reported by the snapshotter: it answered requests.
        "sum(stratafs_fuse_requests_total{job=\"snapshotter\"})".to_string(),
        format!("count(stratafs_mount_info{{job=\"snapshotter\",group=\"{group}\"}})"),
        "stratafs_snapshotter_mounts_total{type=\"bind\"}".to_string(),
        "stratafs_snapshotter_roots_mounted_total".to_string(),
        "stratafs_snapshotter_remote_layers_total{result=\"found\"}".to_string(),
        // The hand mount: the bytes of /greeting, read from the top layer.
        "sum(stratafs_layer_read_bytes_total{job=\"mount\"})".to_string(),
        "sum(stratafs_layer_files_opened_total{job=\"mount\"})".to_string(),
        // The node: both mounts.
        "stratafs_mounts{job=\"node\"} >= 2".to_string(),
    ];
    for q in &want {
        let mut last = None;
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while std::time::Instant::now() < deadline {
            last = query(&prom, q);
            if last.is_some_and(|v| v > 0.0) {
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        assert!(
            last.is_some_and(|v| v > 0.0),
            "Prometheus query {q} gave {last:?}\n--- prometheus log:\n{}",
            std::fs::read_to_string(prom_dir.join("log")).unwrap_or_default()
        );
    }
    run_ok(Command::new("umount").arg(&mnt));
}
