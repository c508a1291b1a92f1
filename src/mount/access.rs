//! The access log (`-o access_log=FILE`, `stratafs mount --access-log FILE`): every file the
//! daemon reads for the first time, with its layer, the bytes read from it and when, so that
//! `stratafs report` can say how much of an image a workload touched. What the kernel serves
//! from its page cache never reaches the daemon: the log counts what was fetched from the
//! layers, which is what CernVM-FS downloads.
//!
//! Format: JSON lines. The first line describes the mount
//! (`{"mount":…, "layers":[path, …]}`, layers in mount order: upper first if any, then the
//! lower layers top first); then one line per file, in order of first read:
//! `{"path":"usr/bin/python3","layer":1,"bytes":12345,"first_ms":120.5}`. With a prefetch
//! running, each file also says where the prefetch of it stood at that first read
//! (`"prefetch":"fetched"`, `fetching`, `pending` or `skipped`) and the header carries what
//! the prefetch did (`"prefetch":{"trace":…,"files":…,"fetched":…,"bytes":…,"done_ms":…}`).

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use dashmap::DashMap;
use serde::{Deserialize, Serialize};

use crate::overlay::prefetch::{Prefetcher, State, Summary};

#[derive(Debug, Serialize, Deserialize)]
pub struct Header {
    pub mount: PathBuf,
    pub layers: Vec<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefetch: Option<Summary>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Record {
    pub path: String,
    pub layer: u16,
    pub bytes: u64,
    pub first_ms: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefetch: Option<State>,
}

struct Live {
    path: String,
    layer: u16,
    first_ms: f64,
    bytes: AtomicU64,
    prefetch: Option<State>,
}

pub struct AccessLog {
    file: PathBuf,
    header: Header,
    start: Instant,
    files: DashMap<u64, Live>,
    prefetcher: OnceLock<Arc<Prefetcher>>,
}

impl AccessLog {
    /// Checks now that `file` can be written (the error is the mount's, before it starts).
    pub fn create(file: &Path, mount: &Path, layers: Vec<PathBuf>) -> io::Result<AccessLog> {
        let file = std::path::absolute(file)?;
        let log = AccessLog {
            file,
            header: Header {
                mount: mount.to_path_buf(),
                layers,
                prefetch: None,
            },
            start: Instant::now(),
            files: DashMap::new(),
            prefetcher: OnceLock::new(),
        };
        log.write()?;
        Ok(log)
    }

    /// Say, for each file first read from now on, where this prefetch of it stood.
    pub fn watch_prefetch(&self, p: Arc<Prefetcher>) {
        let _ = self.prefetcher.set(p);
    }

    /// `n` bytes were read from inode `ino`; `describe` gives its path and layer the first time.
    pub fn record(&self, ino: u64, n: usize, describe: impl FnOnce() -> Option<(String, u16)>) {
        if let Some(l) = self.files.get(&ino) {
            l.bytes.fetch_add(n as u64, Ordering::Relaxed);
            return;
        }
        let Some((path, layer)) = describe() else {
            return;
        };
        let first_ms = self.start.elapsed().as_secs_f64() * 1000.0;
        let prefetch = self.prefetcher.get().and_then(|p| p.state_of(&path));
        self.files
            .entry(ino)
            .or_insert(Live {
                path,
                layer,
                first_ms,
                bytes: AtomicU64::new(0),
                prefetch,
            })
            .bytes
            .fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Write the whole log (temporary name, then rename).
    pub fn write(&self) -> io::Result<()> {
        let mut recs: Vec<Record> = self
            .files
            .iter()
            .map(|e| Record {
                path: e.path.clone(),
                layer: e.layer,
                bytes: e.bytes.load(Ordering::Relaxed),
                first_ms: e.first_ms,
                prefetch: e.prefetch,
            })
            .collect();
        recs.sort_by(|a, b| a.first_ms.total_cmp(&b.first_ms));
        let tmp = self.file.with_file_name(format!(
            ".{}.tmp",
            self.file.file_name().unwrap_or_default().to_string_lossy()
        ));
        let mut out = io::BufWriter::new(std::fs::File::create(&tmp)?);
        let header = Header {
            mount: self.header.mount.clone(),
            layers: self.header.layers.clone(),
            prefetch: self.prefetcher.get().map(|p| p.summary()),
        };
        serde_json::to_writer(&mut out, &header)?;
        out.write_all(b"\n")?;
        for r in &recs {
            serde_json::to_writer(&mut out, r)?;
            out.write_all(b"\n")?;
        }
        out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        std::fs::rename(&tmp, &self.file)
    }
}
