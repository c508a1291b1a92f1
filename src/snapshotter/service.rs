//! containerd's Snapshots API over the [`Store`]: the gRPC calls, remote layers from the
//! repository, and the mounts containerd hands to mount.fuse3.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use containerd_snapshots::api::types::Mount;
use containerd_snapshots::{Info, Kind as ApiKind, Snapshotter, Usage, tonic};
use parking_lot::Mutex;
use tracing::{debug, info, warn};

use super::Error;
use super::filter::{Fields, Filter};
use super::roots;
use super::store::{Kind, Record, Stack, Store};
use crate::image::digest::Digest;

/// containerd's label naming the committed snapshot a Prepare would produce.
pub const LABEL_TARGET: &str = "containerd.io/snapshot.ref";
/// Labels carrying a layer's compressed digest: CRI (and nerdctl) first, then ctr-remote.
pub const LABELS_DIGEST: &[&str] = &[
    "containerd.io/snapshot/cri.layer-digest",
    "containerd.io/snapshot/remote/stargz.digest",
];

/// The snapshotter: a repository to take layers from, and its own state.
pub struct Service {
    repo: PathBuf,
    store: Mutex<Store>,
    /// `metrics_group=` of the mounts handed out, for the snapshotter's `/metrics`.
    group: String,
    /// Added to every container root's mount options.
    mount_options: Vec<String>,
    /// Whether roots are mounted (tests of the requests alone turn it off).
    mount_roots: bool,
    counts: Counts,
}

/// What the snapshotter counts for its `/metrics`.
#[derive(Default)]
struct Counts {
    remote_found: AtomicU64,
    remote_missed: AtomicU64,
    bind_mounts: AtomicU64,
    roots_mounted: AtomicU64,
}

struct Named<'a>(&'a str, &'a Record);

impl Fields for Named<'_> {
    fn field(&self, path: &[String]) -> Option<String> {
        let rec = self.1;
        match path {
            [f] if f == "name" => Some(self.0.to_string()),
            [f] if f == "parent" => Some(rec.parent.clone()),
            [f] if f == "kind" => Some(kind_name(rec.kind).to_string()),
            [f, rest @ ..] if f == "labels" && !rest.is_empty() => {
                rec.labels.get(&rest.join(".")).cloned()
            }
            _ => None,
        }
    }
}

/// The kind as containerd spells it in filters.
fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Active => "active",
        Kind::View => "view",
        Kind::Committed => "committed",
    }
}

fn info(name: &str, rec: &Record) -> Info {
    Info {
        kind: match rec.kind {
            Kind::Active => ApiKind::Active,
            Kind::View => ApiKind::View,
            Kind::Committed => ApiKind::Committed,
        },
        name: name.to_string(),
        parent: rec.parent.clone(),
        labels: rec.labels.clone(),
        created_at: rec.created,
        updated_at: rec.updated,
    }
}

/// `a:b` with `\:` for a colon in a path, as mount options read lowerdir.
fn lowerdir(paths: &[PathBuf]) -> String {
    crate::stack::lowerdir::join(paths)
}

/// A bind mount of `dir` for containerd.
fn bind(dir: &Path, writable: bool) -> Mount {
    let rw = if writable { "rw" } else { "ro" };
    Mount {
        r#type: "bind".into(),
        source: dir.to_string_lossy().into_owned(),
        target: String::new(),
        options: vec![rw.into(), "rbind".into()],
    }
}

/// The stratafs mount options of a stack with layers below it: whiteouts of every form
/// applied by the daemon.
fn stack_options(stack: &Stack, group: &str) -> Vec<String> {
    let mut options = vec![format!("lowerdir={}", lowerdir(&stack.lowers))];
    match &stack.upper {
        Some((u, w)) => {
            options.push(format!("upperdir={}", u.display()));
            options.push(format!("workdir={}", w.display()));
        }
        None => options.push("ro".into()),
    }
    // What a kernel overlay mount from containerd allows: set-ID programs and devices.
    options.extend(["suid".into(), "dev".into()]);
    options.push(format!("metrics_group={group}"));
    options
}

impl Service {
    /// `group`: the metrics group of the mounts handed out (no comma: it is a mount option).
    pub fn new(repo: PathBuf, store: Store, group: String) -> Service {
        Service {
            repo,
            store: Mutex::new(store),
            group,
            mount_options: Vec::new(),
            mount_roots: true,
            counts: Counts::default(),
        }
    }

    /// Mount options added to every container root's (`{id}`: the snapshot's number).
    pub fn with_mount_options(mut self, options: Vec<String>) -> Service {
        self.mount_options = options;
        self
    }

    /// Hand out roots without mounting them: for tests of the requests alone.
    #[cfg(test)]
    pub(crate) fn without_mounting(mut self) -> Service {
        self.mount_roots = false;
        self
    }

    pub fn group(&self) -> &str {
        &self.group
    }

    /// The mounts of `key`: a bind mount of its own directory when nothing is below it
    /// (containerd's overlayfs does the same), otherwise a bind mount of its root, which is
    /// mounted here if it is not yet ([`roots`]).
    fn mounts_of(&self, store: &Store, key: &str) -> Result<Vec<Mount>, Error> {
        let rec = store.get(key)?;
        let stack = store.stack(key)?;
        let writable = stack.upper.is_some();
        let dir = match store.root_of(rec) {
            Some(mnt) if !stack.lowers.is_empty() => {
                if self.mount_roots {
                    let id = rec.id.to_string();
                    let mut options = stack_options(&stack, &self.group);
                    options.extend(self.mount_options.iter().map(|o| o.replace("{id}", &id)));
                    // A live root is left alone; a dead one is mounted again.
                    if roots::ensure(&mnt, &options)? {
                        self.counts.roots_mounted.fetch_add(1, Ordering::Relaxed);
                    }
                }
                mnt
            }
            _ => store.files(rec),
        };
        self.counts.bind_mounts.fetch_add(1, Ordering::Relaxed);
        Ok(vec![bind(&dir, writable)])
    }

    /// Unmount the root of `key`, if it has one, before its files change hands or go.
    fn release(&self, store: &Store, key: &str) -> Result<(), Error> {
        if let Some(mnt) = store.root_of(store.get(key)?) {
            roots::release(&mnt);
        }
        Ok(())
    }

    /// The snapshotter's own metric families: snapshots by kind, layers found in the
    /// repository or not, mounts handed out by type.
    pub fn metric_families(&self) -> Vec<prometheus::proto::MetricFamily> {
        use crate::exposition::{counter, counters, gauge, gauges, label};
        let mut kinds = [0u64; 3];
        for (_, r) in self.store.lock().all() {
            kinds[r.kind as usize] += 1;
        }
        let c = |a: &AtomicU64| a.load(Ordering::Relaxed);
        vec![
            gauges(
                "stratafs_snapshotter_snapshots",
                "Snapshots the snapshotter holds, by kind.",
                [Kind::Active, Kind::View, Kind::Committed]
                    .into_iter()
                    .map(|k| gauge(vec![label("kind", kind_name(k))], kinds[k as usize] as f64))
                    .collect(),
            ),
            counters(
                "stratafs_snapshotter_remote_layers_total",
                "Layers containerd asked for that the repository held (found) or not (missed).",
                vec![
                    counter(vec![label("result", "found")], c(&self.counts.remote_found)),
                    counter(
                        vec![label("result", "missed")],
                        c(&self.counts.remote_missed),
                    ),
                ],
            ),
            counters(
                "stratafs_snapshotter_mounts_total",
                "Mounts handed to containerd, by type.",
                vec![counter(
                    vec![label("type", "bind")],
                    c(&self.counts.bind_mounts),
                )],
            ),
            counters(
                "stratafs_snapshotter_roots_mounted_total",
                "Container roots the snapshotter mounted with stratafs.",
                vec![counter(vec![], c(&self.counts.roots_mounted))],
            ),
        ]
    }

    /// The repository's unpacked layer a Prepare's labels point at, if it holds it.
    fn remote_layer(&self, labels: &HashMap<String, String>) -> Option<(String, PathBuf)> {
        let target = labels.get(LABEL_TARGET)?;
        let value = LABELS_DIGEST.iter().find_map(|l| labels.get(*l))?;
        let digest = match Digest::parse(value) {
            Ok(d) => d,
            Err(e) => {
                warn!(label = value, "layer digest ignored: {e}");
                return None;
            }
        };
        let dir = crate::stack::layout::layerfs(&self.repo, digest.hex());
        // A symlink here would lead out of the repository: only a real directory counts.
        let found = std::fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir());
        debug!(layer = %digest, found, "repository lookup");
        let c = if found {
            &self.counts.remote_found
        } else {
            &self.counts.remote_missed
        };
        c.fetch_add(1, Ordering::Relaxed);
        found.then(|| (target.clone(), dir))
    }

    fn create(
        &self,
        kind: Kind,
        key: String,
        parent: String,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>, Error> {
        let mut store = self.store.lock();
        if kind == Kind::Active
            && let Some((target, layer)) = self.remote_layer(&labels)
        {
            let exists = store.all().any(|(_, r)| {
                r.kind == Kind::Committed
                    && r.parent == parent
                    && r.labels.get(LABEL_TARGET) == Some(&target)
            });
            if !exists {
                // The name must be unique; the same layer may sit on several parents.
                let name = if store.get(&target).is_ok() {
                    format!("{target}@{parent}")
                } else {
                    target.clone()
                };
                store.add_remote(&name, &parent, labels, layer.clone())?;
                info!(snapshot = %name, layer = %layer.display(), "layer taken from the repository");
            }
            // containerd then finds the committed snapshot by its label and downloads nothing.
            return Err(Error::AlreadyExists(format!("target snapshot {target}")));
        }
        store.create(kind, &key, &parent, labels)?;
        self.mounts_of(&store, &key)
    }
}

#[tonic::async_trait]
impl Snapshotter for Service {
    type Error = Error;

    async fn stat(&self, key: String) -> Result<Info, Error> {
        let store = self.store.lock();
        Ok(info(&key, store.get(&key)?))
    }

    async fn update(&self, i: Info, fieldpaths: Option<Vec<String>>) -> Result<Info, Error> {
        let mut store = self.store.lock();
        let rec = store.update_labels(&i.name, i.labels, &fieldpaths.unwrap_or_default())?;
        Ok(info(&i.name, rec))
    }

    async fn usage(&self, key: String) -> Result<Usage, Error> {
        let (size, inodes) = self.store.lock().usage(&key)?;
        Ok(Usage { size, inodes })
    }

    async fn mounts(&self, key: String) -> Result<Vec<Mount>, Error> {
        let store = self.store.lock();
        self.mounts_of(&store, &key)
    }

    async fn prepare(
        &self,
        key: String,
        parent: String,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>, Error> {
        debug!(%key, %parent, ?labels, "prepare");
        self.create(Kind::Active, key, parent, labels)
    }

    async fn view(
        &self,
        key: String,
        parent: String,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>, Error> {
        debug!(%key, %parent, "view");
        self.create(Kind::View, key, parent, labels)
    }

    async fn commit(
        &self,
        name: String,
        key: String,
        labels: HashMap<String, String>,
    ) -> Result<(), Error> {
        debug!(%name, %key, "commit");
        let mut store = self.store.lock();
        self.release(&store, &key)?;
        store.commit(&name, &key, labels)
    }

    async fn remove(&self, key: String) -> Result<(), Error> {
        debug!(%key, "remove");
        let mut store = self.store.lock();
        self.release(&store, &key)?;
        store.remove(&key)
    }

    async fn clear(&self) -> Result<(), Error> {
        for p in self.store.lock().cleanup()? {
            info!(dir = %p.display(), "cleanup: removed");
        }
        Ok(())
    }

    type InfoStream = tokio_stream::Iter<std::vec::IntoIter<Result<Info, Error>>>;

    async fn list(
        &self,
        _snapshotter: String,
        filters: Vec<String>,
    ) -> Result<Self::InfoStream, Error> {
        let filter = Filter::parse(&filters)?;
        let store = self.store.lock();
        let all: Vec<_> = store
            .all()
            .filter(|(k, r)| filter.matches(&Named(k, r)))
            .map(|(k, r)| Ok(info(k, r)))
            .collect();
        Ok(tokio_stream::iter(all))
    }
}
