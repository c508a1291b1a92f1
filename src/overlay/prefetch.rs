//! Prefetch from a trace: on mount, read the files an earlier run of the workload read, in its
//! first-access order, straight from the lower layers on a few background threads. On a
//! CernVM-FS client each open downloads the file, so the downloads run in parallel before the
//! workload asks, instead of one at a time when it does.
//!
//! The threads never take a lock the request path takes (they resolve through the layers, not
//! the inode table), run at the lowest CPU priority, and stop when the mount ends or memory
//! runs short. Files the writable layer holds are skipped: they are local already.

use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::Overlay;
use crate::stack::resolve;
use crate::stack::trace::{Trace, TraceFile};

/// Where a traced file is when the workload first reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Not started yet.
    Pending,
    /// Being read by a prefetch thread.
    Fetching,
    /// Read completely before.
    Fetched,
    /// Not prefetched: gone from the image, in the writable layer, or not readable.
    Skipped,
}

const STATES: [State; 4] = [
    State::Pending,
    State::Fetching,
    State::Fetched,
    State::Skipped,
];

/// What a prefetch did, for the access log.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Summary {
    pub trace: PathBuf,
    pub files: u64,
    pub fetched: u64,
    pub bytes: u64,
    /// When the last traced file was done, from the start of the prefetch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub done_ms: Option<f64>,
    /// Why it stopped early.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped: Option<String>,
}

pub struct Prefetcher {
    trace: PathBuf,
    files: Vec<TraceFile>,
    state: Vec<AtomicU8>,
    by_path: HashMap<String, usize>,
    next: AtomicUsize,
    stop: AtomicBool,
    fetched: AtomicU64,
    bytes: AtomicU64,
    running: AtomicUsize,
    start: Instant,
    done_ms: Mutex<Option<f64>>,
    stopped: Mutex<Option<String>>,
}

/// Read at most this much per call.
const CHUNK: usize = 1 << 20;
/// Give up when less than this share of memory (percent) is available.
const MIN_AVAILABLE_PCT: u64 = 5;

impl Prefetcher {
    /// Start `threads` background readers of `trace` (loaded from `source`) on `ov`.
    pub fn start(ov: Arc<Overlay>, trace: Trace, source: PathBuf, threads: usize) -> Arc<Self> {
        let by_path = trace
            .files
            .iter()
            .enumerate()
            .map(|(i, f)| (f.path.clone(), i))
            .collect();
        let n = trace.files.len();
        let p = Arc::new(Prefetcher {
            trace: source,
            state: (0..n).map(|_| AtomicU8::new(0)).collect(),
            files: trace.files,
            by_path,
            next: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            fetched: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            running: AtomicUsize::new(0),
            start: Instant::now(),
            done_ms: Mutex::new(None),
            stopped: Mutex::new(None),
        });
        let threads = threads.clamp(1, n.max(1));
        tracing::info!(trace = %p.trace.display(), files = n, threads, "prefetch started");
        p.running.store(threads, Ordering::SeqCst);
        for i in 0..threads {
            let (w, ov) = (Arc::clone(&p), Arc::clone(&ov));
            let spawned = std::thread::Builder::new()
                .name(format!("prefetch-{i}"))
                .spawn(move || w.work(&ov));
            if let Err(e) = spawned {
                tracing::warn!("prefetch thread: {e}");
                p.running.fetch_sub(1, Ordering::SeqCst);
            }
        }
        p
    }

    fn set(&self, i: usize, s: State) {
        self.state[i].store(s as u8, Ordering::Release);
    }

    /// The state of a traced path; `None` when the trace does not name it.
    pub fn state_of(&self, path: &str) -> Option<State> {
        let i = *self.by_path.get(path)?;
        Some(STATES[self.state[i].load(Ordering::Acquire) as usize])
    }

    /// Stop after the files being read now; `why` is reported unless it had finished.
    pub fn stop(&self, why: &str) {
        if !self.stop.swap(true, Ordering::SeqCst) && self.running.load(Ordering::SeqCst) > 0 {
            *self.stopped.lock() = Some(why.to_string());
        }
    }

    pub fn summary(&self) -> Summary {
        Summary {
            trace: self.trace.clone(),
            files: self.files.len() as u64,
            fetched: self.fetched.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            done_ms: *self.done_ms.lock(),
            stopped: self.stopped.lock().clone(),
        }
    }

    fn work(&self, ov: &Overlay) {
        lowest_priority();
        let mut buf = vec![0u8; CHUNK];
        loop {
            if self.stop.load(Ordering::Relaxed) {
                break;
            }
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            let Some(f) = self.files.get(i) else { break };
            if i % 32 == 0 && memory_short() {
                self.stop("memory is short");
                break;
            }
            self.set(i, State::Fetching);
            match fetch(ov, f, &mut buf) {
                Ok(Some(n)) => {
                    self.fetched.fetch_add(1, Ordering::Relaxed);
                    self.bytes.fetch_add(n, Ordering::Relaxed);
                    self.set(i, State::Fetched);
                }
                Ok(None) => self.set(i, State::Skipped),
                Err(e) => {
                    tracing::debug!(path = %f.path, "prefetch: {e}");
                    self.set(i, State::Skipped);
                }
            }
        }
        if self.running.fetch_sub(1, Ordering::SeqCst) == 1 {
            let ms = self.start.elapsed().as_secs_f64() * 1000.0;
            if self.stopped.lock().is_none() {
                *self.done_ms.lock() = Some(ms);
            }
            let s = self.summary();
            tracing::info!(
                fetched = s.fetched,
                files = s.files,
                bytes = s.bytes,
                ms = ms as u64,
                "prefetch finished"
            );
        }
    }
}

/// Read a traced file from the lower layer that holds it: as many bytes as the workload read
/// (at least one, which is what makes a CernVM-FS client download a whole unchunked file).
/// `None` when it is not a lower-layer regular file now.
fn fetch(ov: &Overlay, f: &TraceFile, buf: &mut [u8]) -> io::Result<Option<u64>> {
    let rel = f.path.as_bytes();
    let Some((holders, st)) = resolve::path(&ov.layers, rel)? else {
        return Ok(None);
    };
    let top = holders[0];
    if !ov.is_lower(top) || st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Ok(None);
    }
    let fd = ov.layers[top as usize].open_read(rel)?;
    let want = f.bytes.max(1);
    let mut done = 0u64;
    while done < want {
        match rustix::io::pread(&fd, &mut *buf, done) {
            Ok(0) => break,
            Ok(n) => done += n as u64,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Some(done))
}

/// Background work must not take CPU from the workload.
pub(super) fn lowest_priority() {
    // SAFETY: setpriority on this thread's id only changes its nice value.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 19);
    }
}

/// Whether less than MIN_AVAILABLE_PCT of memory is available (page cache the prefetch fills
/// competes with the workload).
pub(super) fn memory_short() -> bool {
    let Ok(text) = std::fs::read_to_string("/proc/meminfo") else {
        return false;
    };
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
    };
    match (field("MemTotal:"), field("MemAvailable:")) {
        (Some(t), Some(a)) if t > 0 => a * 100 / t < MIN_AVAILABLE_PCT,
        _ => false,
    }
}
