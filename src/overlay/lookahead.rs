//! Look-ahead on the cold read path. Lower layers never change while mounted, so when a
//! directory has been listed, its subdirectories are the likely next ones (find, tar, du,
//! `ls -R`, a Python import walking a package): background threads build their merged
//! listings, so the READDIRPLUS that follows finds the work done, and where those listings
//! will carry attributes, stat their entries so the lower filesystem has them cached. And when
//! a file of a directory is read, its small siblings are likely next (tar, an import): their
//! data is asked for with `posix_fadvise(WILLNEED)`, which reads without waiting. Not on
//! CernVM-FS layers, where opening a file downloads it (traces do that job). The kernel sends
//! one request at a time on such walks; the disk need not wait on it.
//!
//! A listing built ahead holds no lock while it reads the layers; it is stored only if no
//! change to the writable layer's namespace happened meanwhile (the count the namespace lock keeps, see `Namespace::change`).
//!
//! Nothing waits for this: jobs are offered to a bounded queue and dropped when it is full,
//! the threads run at the lowest CPU priority, take no lock the request path takes, and stop
//! taking work while memory is short. Only read-only layers are visited.

use std::sync::{Arc, Weak};

use crossbeam_channel::{Receiver, Sender, TrySendError};

use super::Overlay;
use super::inode::Node;
use crate::stack::join;

/// Directories waiting to be read ahead, at most.
const QUEUE: usize = 4096;

pub(crate) enum Job {
    /// Read a layer directory and stat its entries.
    Warm {
        layer: u16,
        rel: Vec<u8>,
        /// Read ahead the data of the directory's small files, not its entries' metadata.
        siblings: bool,
    },
    /// Build the merged listing of a directory the kernel has just seen listed, if it still
    /// lives and has none.
    Listing(Weak<Node>),
}

/// Files up to this size are read ahead with their siblings.
const SMALL: u64 = 1 << 20;

pub struct Lookahead {
    tx: Sender<Job>,
}

impl Lookahead {
    /// Offer a directory of a lower layer; dropped when the queue is full.
    pub(super) fn offer(&self, job: Job) {
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
                    if short {
                        continue;
                    }
                    match job {
                        Job::Warm {
                            layer,
                            rel,
                            siblings,
                        } => warm(&ov, layer, &rel, siblings),
                        Job::Listing(dir) => {
                            if let Some(dir) = dir.upgrade()
                                && let Some((before, listing)) = ov.listing_ahead(&dir)
                            {
                                ov.keep_listing_ahead(&dir, before, listing);
                            }
                        }
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
fn warm(ov: &Overlay, layer: u16, dir: &[u8], siblings: bool) {
    let layer = &ov.layers[layer as usize];
    let Ok(entries) = layer.read_dir(dir) else {
        return;
    };
    for e in entries {
        let rel = join(dir, &e.name);
        let st = layer.stat(&rel);
        if !siblings || e.kind != libc::S_IFREG {
            continue;
        }
        if let Ok(Some(st)) = st {
            if (st.st_size as u64) <= SMALL {
                if let Ok(fd) = layer.open_for_readahead(&rel) {
                    let _ = rustix::fs::fadvise(&fd, 0, None, rustix::fs::Advice::WillNeed);
                }
            }
        }
    }
}
