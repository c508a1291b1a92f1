//! Mounts' pages as Prometheus metric families.

use std::path::{Path, PathBuf};

use prometheus::proto::{Bucket, Histogram, LabelPair, Metric, MetricFamily, MetricType};

use crate::exposition::{counter, counters, family, gauge, gauges, label};

use super::page::{BUCKETS, OpFigures, Page, Scalar};
use crate::mount::keeper::Status;
use crate::mount::stats::NAMES;

/// A mount as an exporter sees it: its status file and its page.
pub struct Seen {
    pub status: Status,
    pub page: Page,
}

fn mount_labels(s: &Seen) -> Vec<LabelPair> {
    vec![label("mountpoint", &s.status.mountpoint.to_string_lossy())]
}

/// The families of `mounts`: every sample labelled with its mountpoint; opcodes only once a
/// request of theirs came (a counter, once there, stays).
pub fn mount_families(mounts: &[Seen]) -> Vec<MetricFamily> {
    let mut samples = Samples::default();
    for s in mounts {
        samples.add(s);
    }
    samples.families(mounts.len())
}

/// The samples of every family, gathered mount by mount.
#[derive(Default)]
struct Samples {
    info: Vec<Metric>,
    started: Vec<Metric>,
    restarts: Vec<Metric>,
    requests: Vec<Metric>,
    errors: Vec<Metric>,
    latency: Vec<Metric>,
    opened: Vec<Metric>,
    read: Vec<Metric>,
    scalars: [Vec<Metric>; 6],
}

/// A histogram of request latencies from the page's buckets (counts per bucket, made
/// cumulative as Prometheus wants them).
fn latency_metric(labels: Vec<LabelPair>, f: &OpFigures) -> Metric {
    let mut h = Histogram::default();
    let mut cum = 0;
    let buckets = BUCKETS
        .iter()
        .zip(&f.buckets)
        .map(|(le, n)| {
            cum += n;
            let mut b = Bucket::default();
            b.set_upper_bound(*le);
            b.set_cumulative_count(cum);
            b
        })
        .collect();
    h.set_bucket(buckets);
    h.set_sample_count(f.count);
    h.set_sample_sum(f.nanos as f64 / 1e9);
    let mut m = Metric::from_label(labels);
    m.set_histogram(h);
    m
}

impl Samples {
    fn add(&mut self, s: &Seen) {
        let ml = mount_labels(s);
        let mut il = ml.clone();
        il.push(label("transport", &s.status.transport));
        il.push(label("group", s.status.group.as_deref().unwrap_or("")));
        self.info.push(gauge(il, 1.0));
        self.started
            .push(gauge(ml.clone(), s.page.started() as f64));
        self.restarts.push(counter(ml.clone(), s.page.restarts()));
        for (i, name) in NAMES.iter().enumerate() {
            let f = s.page.op(i);
            if f.count == 0 {
                continue;
            }
            let mut ol = ml.clone();
            ol.push(label("op", name));
            self.requests.push(counter(ol.clone(), f.count));
            self.errors.push(counter(ol.clone(), f.errors));
            self.latency.push(latency_metric(ol, &f));
        }
        for i in 0..s.page.layers() {
            let mut ll = ml.clone();
            let name = s.status.layers.get(i).cloned();
            ll.push(label(
                "layer",
                &name.unwrap_or_else(|| format!("layer {i}")),
            ));
            let f = s.page.layer(i);
            self.opened.push(counter(ll.clone(), f.files_opened));
            self.read.push(counter(ll, f.bytes_read));
        }
        for (k, sc) in [
            Scalar::CopyUps,
            Scalar::PrefetchHits,
            Scalar::PrefetchMisses,
            Scalar::RingRequests,
            Scalar::VerifyFailures,
            Scalar::VerifiedBytes,
        ]
        .into_iter()
        .enumerate()
        {
            self.scalars[k].push(counter(ml.clone(), s.page.scalar(sc)));
        }
    }

    /// The families, named and described; `mounts`: how many mounts were added.
    fn families(self, mounts: usize) -> Vec<MetricFamily> {
        let Samples {
            info,
            started,
            restarts,
            requests,
            errors,
            latency,
            opened,
            read,
            scalars,
        } = self;
        let [copy_ups, hits, misses, ring, verify_failures, verified] = scalars;
        vec![
            gauges(
                "stratafs_mounts",
                "Mounts alive that this endpoint reports.",
                vec![gauge(vec![], mounts as f64)],
            ),
            gauges(
                "stratafs_mount_info",
                "One per mount: its transport and metrics group.",
                info,
            ),
            gauges(
                "stratafs_mount_start_time_seconds",
                "When the mount was made, in seconds since the epoch.",
                started,
            ),
            counters(
                "stratafs_server_restarts_total",
                "Servers the keeper started again after one died or was upgraded.",
                restarts,
            ),
            counters(
                "stratafs_fuse_requests_total",
                "FUSE requests answered, by opcode.",
                requests,
            ),
            counters(
                "stratafs_fuse_request_errors_total",
                "FUSE requests answered with an error, by opcode.",
                errors,
            ),
            family(
                "stratafs_fuse_request_duration_seconds",
                "Time from a request's arrival to its reply, by opcode.",
                MetricType::HISTOGRAM,
                latency,
            ),
            counters(
                "stratafs_layer_files_opened_total",
                "Files opened for their content, by the layer that holds them.",
                opened,
            ),
            counters(
                "stratafs_layer_read_bytes_total",
                "Bytes the server read for callers, by layer (passthrough reads bypass it).",
                read,
            ),
            counters(
                "stratafs_verify_failures_total",
                "Answers of a layer refused because they differ from its record (verify=on).",
                verify_failures,
            ),
            counters(
                "stratafs_verified_bytes_total",
                "Bytes of layer files hashed to check them against their records (verify=on).",
                verified,
            ),
            counters(
                "stratafs_copy_ups_total",
                "Entries copied up into the writable layer.",
                copy_ups,
            ),
            counters(
                "stratafs_prefetch_hits_total",
                "Files first read after the prefetch had read them.",
                hits,
            ),
            counters(
                "stratafs_prefetch_misses_total",
                "Files first read before the prefetch had read them (or not in its trace).",
                misses,
            ),
            counters(
                "stratafs_io_uring_requests_total",
                "Requests that came through FUSE over io_uring.",
                ring,
            ),
        ]
    }
}

/// Every runtime directory this process may read mounts' pages from: its own, and for root
/// every user's too (rootless podman's mounts).
fn runtime_dirs() -> Vec<PathBuf> {
    let mut dirs = vec![crate::mount::keeper::runtime_dir()];
    if rustix::process::geteuid().is_root() {
        let globs = [("/run/user", "stratafs"), ("/tmp", "")];
        for (base, sub) in globs {
            let Ok(rd) = std::fs::read_dir(base) else {
                continue;
            };
            for e in rd.flatten() {
                let name = e.file_name();
                let name = name.to_string_lossy();
                let d = if sub.is_empty() {
                    if !name.starts_with("stratafs-") {
                        continue;
                    }
                    e.path()
                } else {
                    e.path().join(sub)
                };
                if d.is_dir() && !dirs.contains(&d) {
                    dirs.push(d);
                }
            }
        }
    }
    dirs
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The live mounts on this node whose status `want` accepts, sorted by mountpoint. A status
/// file whose keeper is gone (killed) is stale and skipped.
pub fn node_mounts(want: impl Fn(&Status) -> bool) -> Vec<Seen> {
    let mut seen = Vec::new();
    for dir in runtime_dirs() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.extension().is_none_or(|x| x != "json") {
                continue;
            }
            let Ok(text) = std::fs::read(&p) else {
                continue;
            };
            let Ok(status) = serde_json::from_slice::<Status>(&text) else {
                continue;
            };
            if !alive(status.keeper) || !want(&status) {
                continue;
            }
            if let Ok(page) = Page::open(&p.with_extension("metrics")) {
                seen.push(Seen { status, page });
            }
        }
    }
    seen.sort_by(|a, b| a.status.mountpoint.cmp(&b.status.mountpoint));
    seen
}
