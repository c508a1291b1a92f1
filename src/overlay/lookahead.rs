//! Look-ahead on the cold read path. Lower layers never change while mounted, so when a
//! directory has been listed, its subdirectories are the likely next ones (find, tar, du,
//! `ls -R`, a Python import walking a package): background threads read their layer
//! directories and stat their entries, so the lower filesystem has them cached when the kernel
//! asks. And when a file of a directory is read, its small siblings are likely next (tar, an
//! import): their data is asked for with `posix_fadvise(WILLNEED)`, which reads without
//! waiting. Not on CernVM-FS layers, where opening a file downloads it (traces do that job).
//! The kernel sends one request at a time on such walks; the disk need not wait on it.
//!
//! Nothing waits for this: jobs are offered to a bounded queue and dropped when it is full,
//! the threads run at the lowest CPU priority, take no lock the request path takes, and stop
//! taking work while memory is short. Only read-only layers are visited.

use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender, TrySendError};

use super::Overlay;
use crate::stack::join;

/// Directories waiting to be read ahead, at most.
const QUEUE: usize = 4096;

pub(crate) struct Job {
    pub layer: u16,
    pub rel: Vec<u8>,
    /// Read ahead the data of the directory's small files, not its entries' metadata.
    pub siblings: bool,
}

/// Files up to this size are read ahead with their siblings.
const SMALL: u64 = 1 << 20;

pub struct Lookahead {
    tx: Sender<Job>,
}

impl Lookahead {
    /// Offer a directory of a lower layer; dropped when the queue is full.
    pub(crate) fn offer(&self, job: Job) {
        match self.tx.try_send(job) {
            Ok(()) | Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

/// Start `threads` readers for `ov`; they end when the overlay goes.
pub fn start(ov: &Arc<Overlay>, threads: usize) {
    let (tx, rx) = crossbeam_channel::bounded(QUEUE);
    if ov.lookahead.set(Lookahead { tx }).is_err() {
        return; // already running
    }
    for i in 0..threads.max(1) {
        let weak = Arc::downgrade(ov);
        let rx: Receiver<Job> = rx.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("lookahead-{i}"))
            .spawn(move || {
                super::prefetch::lowest_priority();
                let (mut n, mut short) = (0u64, false);
                while let Ok(job) = rx.recv() {
                    let Some(ov) = weak.upgrade() else { break };
                    // Memory is looked at every 64 jobs; while short, jobs are dropped.
                    if n % 64 == 0 {
                        short = super::prefetch::memory_short();
                    }
                    n += 1;
                    if !short {
                        warm(&ov, &job);
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::warn!("lookahead thread: {e}");
        }
    }
}

/// Read one layer directory and stat its entries; results are thrown away (what is wanted is
/// the lower filesystem's caches).
fn warm(ov: &Overlay, job: &Job) {
    let layer = &ov.layers[job.layer as usize];
    let Ok(entries) = layer.read_dir(&job.rel) else {
        return;
    };
    for e in entries {
        let rel = join(&job.rel, &e.name);
        let st = layer.stat(&rel);
        if !job.siblings || e.kind != libc::S_IFREG {
            continue;
        }
        if let Ok(Some(st)) = st {
            if (st.st_size as u64) <= SMALL {
                if let Ok(fd) = layer.open_read(&rel) {
                    let _ = rustix::fs::fadvise(&fd, 0, None, rustix::fs::Advice::WillNeed);
                }
            }
        }
    }
}
