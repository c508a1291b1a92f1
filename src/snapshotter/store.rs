//! The snapshotter's durable state: every snapshot containerd knows by key or name, its kind,
//! parent, labels and where its files are. Plain Rust over a state directory, no gRPC, so the
//! rules (containerd's, as its overlayfs snapshotter applies them) are testable without root.
//!
//! Layout of STATE_DIR:
//! ```text
//! metadata.json          every snapshot (written to a temporary name, then renamed)
//! snapshots/<id>/fs      a local snapshot's files (the upper dir while active)
//! snapshots/<id>/work    its overlay work dir
//! ```
//! A crash between creating a directory and saving the metadata leaves an unreferenced
//! directory, which `cleanup` removes; never a record without its directory.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::Error;

/// The three kinds containerd distinguishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    Active,
    View,
    Committed,
}

/// One snapshot.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    /// Number of its directory under `snapshots/` (a remote layer has none).
    pub id: u64,
    pub kind: Kind,
    /// Key or name of the parent; empty for none.
    pub parent: String,
    pub labels: HashMap<String, String>,
    pub created: SystemTime,
    pub updated: SystemTime,
    /// A layer read from the repository instead of a local directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<PathBuf>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    next_id: u64,
    snapshots: BTreeMap<String, Record>,
}

/// The state directory and what it holds.
pub struct Store {
    root: PathBuf,
    state: State,
}

/// What a mount of a snapshot stacks.
#[derive(Debug, PartialEq, Eq)]
pub struct Stack {
    /// Read-only layers, top first.
    pub lowers: Vec<PathBuf>,
    /// Upper and work dir for an active snapshot.
    pub upper: Option<(PathBuf, PathBuf)>,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |source| Error::State {
        path: path.to_path_buf(),
        source,
    }
}

impl Store {
    /// Open (or create) the state in `root`, reading what an earlier run left.
    pub fn open(root: &Path) -> Result<Store, Error> {
        fs::create_dir_all(root.join("snapshots")).map_err(io_err(root))?;
        let meta = root.join("metadata.json");
        let state = match fs::read(&meta) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| Error::State {
                path: meta.clone(),
                source: io::Error::new(io::ErrorKind::InvalidData, e),
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => State::default(),
            Err(e) => return Err(io_err(&meta)(e)),
        };
        // Fail now, not at the first Prepare, when the state dir is not ours to write.
        let probe = root.join(".probe");
        fs::write(&probe, b"").map_err(io_err(root))?;
        let _ = fs::remove_file(&probe);
        Ok(Store {
            root: root.to_path_buf(),
            state,
        })
    }

    fn save(&self) -> Result<(), Error> {
        let path = self.root.join("metadata.json");
        let tmp = self.root.join("metadata.json.tmp");
        let bytes = serde_json::to_vec_pretty(&self.state).expect("state serialises");
        let mut f = fs::File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(&bytes).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
        fs::rename(&tmp, &path).map_err(io_err(&path))
    }

    fn dir(&self, id: u64) -> PathBuf {
        self.root.join("snapshots").join(id.to_string())
    }

    pub fn get(&self, key: &str) -> Result<&Record, Error> {
        self.state
            .snapshots
            .get(key)
            .ok_or_else(|| Error::NotFound(format!("snapshot {key}")))
    }

    pub fn all(&self) -> impl Iterator<Item = (&String, &Record)> {
        self.state.snapshots.iter()
    }

    fn check_new(&self, key: &str, parent: &str) -> Result<(), Error> {
        if key.is_empty() {
            return Err(Error::InvalidArgument("empty snapshot key".into()));
        }
        if self.state.snapshots.contains_key(key) {
            return Err(Error::AlreadyExists(format!("snapshot {key}")));
        }
        if !parent.is_empty() {
            let p = self
                .state
                .snapshots
                .get(parent)
                .ok_or_else(|| Error::NotFound(format!("parent snapshot {parent}")))?;
            if p.kind != Kind::Committed {
                return Err(Error::FailedPrecondition(format!(
                    "parent {parent} is not committed"
                )));
            }
        }
        Ok(())
    }

    /// A new active or view snapshot with its own directories.
    pub fn create(
        &mut self,
        kind: Kind,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
    ) -> Result<&Record, Error> {
        self.check_new(key, parent)?;
        let id = self.state.next_id + 1;
        let dir = self.dir(id);
        for d in [dir.join("fs"), dir.join("work")] {
            fs::create_dir_all(&d).map_err(io_err(&d))?;
        }
        let now = SystemTime::now();
        self.state.next_id = id;
        self.state.snapshots.insert(
            key.to_string(),
            Record {
                id,
                kind,
                parent: parent.to_string(),
                labels,
                created: now,
                updated: now,
                remote: None,
            },
        );
        self.save()?;
        Ok(&self.state.snapshots[key])
    }

    /// A committed snapshot whose files are a layer directory of the repository.
    pub fn add_remote(
        &mut self,
        name: &str,
        parent: &str,
        labels: HashMap<String, String>,
        layer: PathBuf,
    ) -> Result<(), Error> {
        self.check_new(name, parent)?;
        let now = SystemTime::now();
        self.state.snapshots.insert(
            name.to_string(),
            Record {
                id: 0,
                kind: Kind::Committed,
                parent: parent.to_string(),
                labels,
                created: now,
                updated: now,
                remote: Some(layer),
            },
        );
        self.save()
    }

    /// Turn active snapshot `key` into committed snapshot `name` (same files, same parent).
    pub fn commit(
        &mut self,
        name: &str,
        key: &str,
        labels: HashMap<String, String>,
    ) -> Result<(), Error> {
        let rec = self.get(key)?;
        if rec.kind != Kind::Active {
            return Err(Error::FailedPrecondition(format!(
                "snapshot {key} is {:?}, only an active snapshot can be committed",
                rec.kind
            )));
        }
        if self.state.snapshots.contains_key(name) {
            return Err(Error::AlreadyExists(format!("snapshot {name}")));
        }
        let mut rec = self.state.snapshots.remove(key).expect("checked above");
        let now = SystemTime::now();
        rec.kind = Kind::Committed;
        rec.labels = labels;
        rec.created = now;
        rec.updated = now;
        self.state.snapshots.insert(name.to_string(), rec);
        self.save()?;
        // The work dir is of no use to a committed snapshot.
        let _ = fs::remove_dir_all(self.dir(self.state.snapshots[name].id).join("work"));
        Ok(())
    }

    /// Forget a snapshot without children and remove its directory.
    pub fn remove(&mut self, key: &str) -> Result<(), Error> {
        let id = self.get(key)?.id;
        if let Some(child) = self.state.snapshots.iter().find(|(_, r)| r.parent == key) {
            return Err(Error::FailedPrecondition(format!(
                "snapshot {key} has a child, {}",
                child.0
            )));
        }
        self.state.snapshots.remove(key);
        self.save()?;
        // Failing here, or a root still mounted (never deleted through), leaves a directory
        // that cleanup removes later.
        if id != 0 && !super::roots::is_mounted(&self.dir(id).join("mnt")) {
            let _ = fs::remove_dir_all(self.dir(id));
        }
        Ok(())
    }

    /// Replace the labels (`paths` empty or `labels`) or the named ones (`labels.KEY`; an
    /// absent value deletes). Everything else of a snapshot is immutable.
    pub fn update_labels(
        &mut self,
        key: &str,
        labels: HashMap<String, String>,
        paths: &[String],
    ) -> Result<&Record, Error> {
        self.get(key)?;
        for p in paths {
            if p != "labels" && !p.starts_with("labels.") {
                return Err(Error::InvalidArgument(format!(
                    "cannot update {p} of snapshot {key}: only labels are mutable"
                )));
            }
        }
        let rec = self.state.snapshots.get_mut(key).expect("checked above");
        if paths.is_empty() || paths.iter().any(|p| p == "labels") {
            rec.labels = labels;
        } else {
            for p in paths {
                let k = &p["labels.".len()..];
                match labels.get(k) {
                    Some(v) => rec.labels.insert(k.to_string(), v.clone()),
                    None => rec.labels.remove(k),
                };
            }
        }
        rec.updated = SystemTime::now();
        self.save()?;
        Ok(&self.state.snapshots[key])
    }

    /// What a mount of `key` stacks: the parents' files top first, its own as upper when active.
    pub fn stack(&self, key: &str) -> Result<Stack, Error> {
        let rec = self.get(key)?;
        if rec.kind == Kind::Committed {
            return Err(Error::FailedPrecondition(format!(
                "snapshot {key} is committed: only active snapshots and views have mounts"
            )));
        }
        let mut lowers = Vec::new();
        let mut parent = rec.parent.as_str();
        while !parent.is_empty() {
            let p = self.get(parent)?;
            lowers.push(self.files(p));
            parent = p.parent.as_str();
        }
        let dir = self.dir(rec.id);
        let upper = (rec.kind == Kind::Active).then(|| (dir.join("fs"), dir.join("work")));
        Ok(Stack { lowers, upper })
    }

    /// Where a snapshot's files are.
    pub fn files(&self, rec: &Record) -> PathBuf {
        match &rec.remote {
            Some(layer) => layer.clone(),
            None => self.dir(rec.id).join("fs"),
        }
    }

    /// Where the root of an active or view snapshot is mounted ([`super::roots`]).
    pub fn root_of(&self, rec: &Record) -> Option<PathBuf> {
        (rec.remote.is_none() && rec.kind != Kind::Committed).then(|| self.dir(rec.id).join("mnt"))
    }

    /// Remove directories no snapshot refers to (left by a crash or a failed removal).
    pub fn cleanup(&self) -> Result<Vec<PathBuf>, Error> {
        let live: std::collections::HashSet<u64> =
            self.state.snapshots.values().map(|r| r.id).collect();
        let snaps = self.root.join("snapshots");
        let mut removed = Vec::new();
        for e in fs::read_dir(&snaps).map_err(io_err(&snaps))? {
            let e = e.map_err(io_err(&snaps))?;
            let keep = e
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u64>().ok())
                .is_some_and(|id| live.contains(&id));
            if !keep {
                let mnt = e.path().join("mnt");
                super::roots::release(&mnt);
                if super::roots::is_mounted(&mnt) {
                    continue; // never delete through a mount
                }
                fs::remove_dir_all(e.path()).map_err(io_err(&e.path()))?;
                removed.push(e.path());
            }
        }
        Ok(removed)
    }

    /// Disk use of a snapshot's own files (blocks and inodes, hard links once). A remote layer
    /// uses none of this machine's disk.
    pub fn usage(&self, key: &str) -> Result<(i64, i64), Error> {
        let rec = self.get(key)?;
        if rec.remote.is_some() {
            return Ok((0, 0));
        }
        let mut seen = std::collections::HashSet::new();
        let (mut size, mut inodes) = (0i64, 0i64);
        let mut todo = vec![self.files(rec)];
        while let Some(d) = todo.pop() {
            let md = fs::symlink_metadata(&d).map_err(io_err(&d))?;
            use std::os::unix::fs::MetadataExt;
            if seen.insert((md.dev(), md.ino())) {
                inodes += 1;
                size += md.blocks() as i64 * 512;
            }
            if md.is_dir() {
                for e in fs::read_dir(&d).map_err(io_err(&d))? {
                    todo.push(e.map_err(io_err(&d))?.path());
                }
            }
        }
        Ok((size, inodes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let t = tempfile::tempdir().unwrap();
        let s = Store::open(t.path()).unwrap();
        (t, s)
    }

    #[test]
    fn prepare_commit_chain_and_mount_stack() {
        let (t, mut s) = store();
        s.create(Kind::Active, "a", "", HashMap::new()).unwrap();
        s.commit("base", "a", HashMap::new()).unwrap();
        assert!(matches!(s.get("a"), Err(Error::NotFound(_))));
        s.add_remote(
            "l2",
            "base",
            HashMap::new(),
            "/repo/.layers/ab/x/layerfs".into(),
        )
        .unwrap();
        s.create(Kind::Active, "c", "l2", HashMap::new()).unwrap();
        let st = s.stack("c").unwrap();
        let base_fs = t.path().join("snapshots/1/fs");
        assert_eq!(
            st.lowers,
            vec![PathBuf::from("/repo/.layers/ab/x/layerfs"), base_fs]
        );
        assert_eq!(
            st.upper,
            Some((
                t.path().join("snapshots/2/fs"),
                t.path().join("snapshots/2/work")
            ))
        );
        s.create(Kind::View, "v", "l2", HashMap::new()).unwrap();
        assert_eq!(s.stack("v").unwrap().upper, None);
        // A view cannot be committed, a committed snapshot has no mounts.
        assert!(matches!(
            s.commit("x", "v", HashMap::new()),
            Err(Error::FailedPrecondition(_))
        ));
        assert!(matches!(s.stack("base"), Err(Error::FailedPrecondition(_))));
    }

    #[test]
    fn containerds_rules_on_keys_parents_and_children() {
        let (_t, mut s) = store();
        s.create(Kind::Active, "a", "", HashMap::new()).unwrap();
        assert!(matches!(
            s.create(Kind::Active, "a", "", HashMap::new()),
            Err(Error::AlreadyExists(_))
        ));
        assert!(matches!(
            s.create(Kind::Active, "b", "nope", HashMap::new()),
            Err(Error::NotFound(_))
        ));
        assert!(matches!(
            s.create(Kind::Active, "b", "a", HashMap::new()),
            Err(Error::FailedPrecondition(_))
        ));
        s.commit("ca", "a", HashMap::new()).unwrap();
        s.create(Kind::Active, "b", "ca", HashMap::new()).unwrap();
        assert!(matches!(s.remove("ca"), Err(Error::FailedPrecondition(_))));
        s.remove("b").unwrap();
        s.remove("ca").unwrap();
        assert_eq!(s.all().count(), 0);
    }

    #[test]
    fn state_survives_a_restart_and_cleanup_removes_orphans() {
        let (t, mut s) = store();
        s.create(
            Kind::Active,
            "a",
            "",
            HashMap::from([("x".into(), "1".into())]),
        )
        .unwrap();
        fs::create_dir_all(t.path().join("snapshots/77/fs")).unwrap();
        drop(s);
        let mut s = Store::open(t.path()).unwrap();
        assert_eq!(s.get("a").unwrap().labels["x"], "1");
        assert_eq!(s.cleanup().unwrap(), vec![t.path().join("snapshots/77")]);
        assert!(t.path().join("snapshots/1/fs").is_dir());
        // Ids are never reused after a restart.
        s.create(Kind::Active, "b", "", HashMap::new()).unwrap();
        assert_eq!(s.get("b").unwrap().id, 2);
    }

    #[test]
    fn labels_update_whole_or_by_path() {
        let (_t, mut s) = store();
        let l = |kv: &[(&str, &str)]| {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<HashMap<_, _>>()
        };
        s.create(Kind::Active, "a", "", l(&[("x", "1"), ("y", "2")]))
            .unwrap();
        s.update_labels("a", l(&[("y", "3"), ("z", "4")]), &["labels.y".into()])
            .unwrap();
        assert_eq!(s.get("a").unwrap().labels, l(&[("x", "1"), ("y", "3")]));
        s.update_labels("a", l(&[]), &["labels.x".into()]).unwrap();
        assert_eq!(s.get("a").unwrap().labels, l(&[("y", "3")]));
        s.update_labels("a", l(&[("q", "1")]), &[]).unwrap();
        assert_eq!(s.get("a").unwrap().labels, l(&[("q", "1")]));
        assert!(matches!(
            s.update_labels("a", l(&[]), &["parent".into()]),
            Err(Error::InvalidArgument(_))
        ));
    }
}
