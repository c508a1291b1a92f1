//! A mount's counters, in one shared page of 64-bit words: the server adds to them, its
//! keeper keeps the file across server restarts, and any exporter on the node reads them
//! without asking the server (a server that hangs still gets scraped).
//!
//! Layout, in words: a header ([`Header`]), [`Scalar`] counters, then per opcode its count,
//! errors, nanoseconds and one count per latency bucket ([`BUCKETS`], not cumulative), then
//! per layer its files opened and bytes read. Readers check the header's magic, version and
//! sizes before trusting anything after it.

use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use memmap2::{MmapMut, MmapOptions, MmapRaw};

use crate::mount::stats::{NAMES, Op};

const MAGIC: u64 = u64::from_le_bytes(*b"STRATAFS");
const VERSION: u64 = 1;

/// Upper bounds of the latency buckets, in seconds (the last bucket is everything above).
pub const BUCKETS: [f64; 14] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.05,
    0.25, 1.0, 5.0,
];
const NB: usize = BUCKETS.len() + 1;

/// Header words.
#[derive(Clone, Copy)]
enum Header {
    Magic,
    Version,
    Ops,
    Buckets,
    Layers,
    /// Written by the keeper.
    Restarts,
    /// When the mount was made (seconds since the epoch).
    Started,
}
const HEADER_WORDS: usize = 8;

/// Counters that are one number per mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scalar {
    CopyUps,
    PrefetchHits,
    PrefetchMisses,
    RingRequests,
    VerifyFailures,
    VerifiedBytes,
}
const SCALARS: usize = 16;

/// Words per opcode: count, errors, nanoseconds, buckets.
const OP_WORDS: usize = 3 + NB;
/// Words per layer: files opened, bytes read.
const LAYER_WORDS: usize = 2;

fn op_base(op: usize) -> usize {
    HEADER_WORDS + SCALARS + op * OP_WORDS
}

fn words(layers: usize) -> usize {
    op_base(NAMES.len()) + layers * LAYER_WORDS
}

/// One opcode's figures, as read.
#[derive(Debug, Clone, Default)]
pub struct OpFigures {
    pub count: u64,
    pub errors: u64,
    pub nanos: u64,
    /// Per bucket of [`BUCKETS`] and one above, not cumulative.
    pub buckets: Vec<u64>,
}

/// One layer's figures, as read.
#[derive(Debug, Clone, Copy, Default)]
pub struct LayerFigures {
    pub files_opened: u64,
    pub bytes_read: u64,
}

pub struct Page {
    /// Read-write for the server and keeper, read-only for exporters: only atomic loads
    /// touch a read-only one.
    map: MmapRaw,
    layers: usize,
}

impl Page {
    /// A page only this process sees (no runtime directory, or a test).
    pub fn anonymous(layers: usize) -> io::Result<Page> {
        let map = MmapMut::map_anon(words(layers) * 8)?;
        Ok(Page::init(map.into(), layers))
    }

    /// A new page in the file `path` (made under a temporary name, then renamed), and the
    /// file, to hand to a server.
    pub fn create(path: &Path, layers: usize) -> io::Result<(Page, File)> {
        // One per process: two mounts racing for a connection number (one ending while
        // another starts) must not truncate each other's page.
        let tmp = path.with_extension(format!("metrics-tmp{}", std::process::id()));
        let f = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.set_len((words(layers) * 8) as u64)?;
        let map = MmapOptions::new().map_raw(&f)?;
        let page = Page::init(map, layers);
        std::fs::rename(&tmp, path)?;
        Ok((page, f))
    }

    fn init(map: MmapRaw, layers: usize) -> Page {
        let p = Page { map, layers };
        p.set(Header::Version, VERSION);
        p.set(Header::Ops, NAMES.len() as u64);
        p.set(Header::Buckets, NB as u64);
        p.set(Header::Layers, layers as u64);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        p.set(Header::Started, now);
        // Last: a reader that sees the magic sees the sizes.
        p.word(Header::Magic as usize)
            .store(MAGIC, Ordering::Release);
        p
    }

    /// The page a keeper handed over (`writable`), or one an exporter reads: checked before
    /// use.
    fn from_file(f: File, writable: bool) -> io::Result<Page> {
        let len = f.metadata()?.len() as usize;
        if len < HEADER_WORDS * 8 {
            return Err(io::Error::other("metrics page too short"));
        }
        let map = if writable {
            MmapOptions::new().map_raw(&f)?
        } else {
            MmapOptions::new().map_raw_read_only(&f)?
        };
        let mut p = Page { map, layers: 0 };
        let ok = p.word(Header::Magic as usize).load(Ordering::Acquire) == MAGIC
            && p.get(Header::Version) == VERSION
            && p.get(Header::Ops) == NAMES.len() as u64
            && p.get(Header::Buckets) == NB as u64;
        let layers = p.get(Header::Layers) as usize;
        if !ok || len < words(layers) * 8 {
            return Err(io::Error::other(
                "not a metrics page of this version of stratafs",
            ));
        }
        p.layers = layers;
        Ok(p)
    }

    /// The page a keeper handed to its server.
    pub fn from_fd(fd: OwnedFd) -> io::Result<Page> {
        Page::from_file(File::from(fd), true)
    }

    /// A mount's page, to read (an exporter).
    pub fn open(path: &Path) -> io::Result<Page> {
        Page::from_file(File::open(path)?, false)
    }

    fn word(&self, i: usize) -> &AtomicU64 {
        assert!(i < self.map.len() / 8, "metrics word {i} out of the page");
        // SAFETY: in bounds (checked above), 8-byte aligned (the mapping is page aligned),
        // and the mapping lives as long as `self`; other processes use the words only
        // through atomics too. A read-only mapping is only ever loaded from (exporters call
        // no method that writes), which atomics allow on read-only memory.
        unsafe { AtomicU64::from_ptr(self.map.as_mut_ptr().cast::<u64>().add(i)) }
    }

    fn get(&self, h: Header) -> u64 {
        self.word(h as usize).load(Ordering::Relaxed)
    }

    fn set(&self, h: Header, v: u64) {
        self.word(h as usize).store(v, Ordering::Relaxed);
    }

    pub fn layers(&self) -> usize {
        self.layers
    }

    pub fn restarts(&self) -> u64 {
        self.get(Header::Restarts)
    }

    pub fn set_restarts(&self, n: u64) {
        self.set(Header::Restarts, n);
    }

    pub fn started(&self) -> u64 {
        self.get(Header::Started)
    }

    pub fn add(&self, s: Scalar, n: u64) {
        self.word(HEADER_WORDS + s as usize)
            .fetch_add(n, Ordering::Relaxed);
    }

    pub fn scalar(&self, s: Scalar) -> u64 {
        self.word(HEADER_WORDS + s as usize).load(Ordering::Relaxed)
    }

    /// One request of `op` answered in `nanos`.
    pub fn request(&self, op: Op, nanos: u64) {
        let b = op_base(op as usize);
        self.word(b).fetch_add(1, Ordering::Relaxed);
        self.word(b + 2).fetch_add(nanos, Ordering::Relaxed);
        let secs = nanos as f64 / 1e9;
        let bucket = BUCKETS.iter().position(|&le| secs <= le).unwrap_or(NB - 1);
        self.word(b + 3 + bucket).fetch_add(1, Ordering::Relaxed);
    }

    /// `n` requests of `op` that took no measurable time (forgets of a batch): counted, in no
    /// latency bucket but the first.
    pub fn requests(&self, op: Op, n: u64) {
        let b = op_base(op as usize);
        self.word(b).fetch_add(n, Ordering::Relaxed);
        self.word(b + 3).fetch_add(n, Ordering::Relaxed);
    }

    pub fn error(&self, op: Op) {
        self.word(op_base(op as usize) + 1)
            .fetch_add(1, Ordering::Relaxed);
    }

    pub fn op(&self, i: usize) -> OpFigures {
        let b = op_base(i);
        let w = |k| self.word(b + k).load(Ordering::Relaxed);
        OpFigures {
            count: w(0),
            errors: w(1),
            nanos: w(2),
            buckets: (0..NB).map(|k| w(3 + k)).collect(),
        }
    }

    fn layer_word(&self, layer: usize, k: usize) -> Option<&AtomicU64> {
        (layer < self.layers).then(|| self.word(op_base(NAMES.len()) + layer * LAYER_WORDS + k))
    }

    pub fn file_opened(&self, layer: usize) {
        if let Some(w) = self.layer_word(layer, 0) {
            w.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn bytes_read(&self, layer: usize, n: u64) {
        if let Some(w) = self.layer_word(layer, 1) {
            w.fetch_add(n, Ordering::Relaxed);
        }
    }

    pub fn layer(&self, layer: usize) -> LayerFigures {
        let w = |k| {
            self.layer_word(layer, k)
                .map_or(0, |w| w.load(Ordering::Relaxed))
        };
        LayerFigures {
            files_opened: w(0),
            bytes_read: w(1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_written_by_one_mapping_reads_in_another() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("1.metrics");
        let (w, _f) = Page::create(&path, 3).unwrap();
        w.request(Op::Lookup, 20_000); // 20 µs: the 25 µs bucket
        w.request(Op::Lookup, 7_000_000_000); // above every bound
        w.error(Op::Lookup);
        w.requests(Op::Forget, 5);
        w.bytes_read(2, 4096);
        w.bytes_read(9, 1); // no such layer: ignored
        w.file_opened(0);
        w.add(Scalar::CopyUps, 2);
        w.set_restarts(3);
        let r = Page::open(&path).unwrap();
        assert_eq!(r.layers(), 3);
        let l = r.op(Op::Lookup as usize);
        assert_eq!((l.count, l.errors), (2, 1));
        assert_eq!(l.buckets[1], 1);
        assert_eq!(l.buckets[NB - 1], 1);
        assert_eq!(r.op(Op::Forget as usize).count, 5);
        assert_eq!(r.layer(2).bytes_read, 4096);
        assert_eq!(r.layer(0).files_opened, 1);
        assert_eq!(r.scalar(Scalar::CopyUps), 2);
        assert_eq!(r.restarts(), 3);
        assert!(r.started() > 0);
    }

    #[test]
    fn a_file_that_is_not_a_page_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("x");
        std::fs::write(&path, vec![7u8; 4096]).unwrap();
        assert!(Page::open(&path).is_err());
        std::fs::write(&path, b"short").unwrap();
        assert!(Page::open(&path).is_err());
    }
}
