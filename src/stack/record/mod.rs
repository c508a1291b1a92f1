//! A layer's record: what a verifying mount checks the layer directory against. It is made by
//! `convert` while it unpacks a tar whose digests it checked, and written beside the layer
//! (`.layers/<xx>/<hex>/.metadata/record`).
//!
//! It holds every entry of the layer (whiteout and opaque markers included) with its type,
//! mode, owner as stored, xattrs, symlink target or device number, and for a regular file
//! the SHA-256 of its content: of the whole file when it fits in one block, else of each
//! block (a two-level Merkle tree whose leaves the record lists), so that a read of a part
//! of a big file checks, and fetches, only the blocks it touches.
//!
//! The format is built for reading in place (memory-mapped, nothing parsed at mount):
//!
//! ```text
//! header   128 bytes  magic "STRATREC", version, block shift, entry count, offsets,
//!                     the layer's blob digest and diff ID
//! entries  48 bytes each; entry 0 is the root; a directory's children are contiguous
//!                     and sorted by name, so a path resolves by one binary search a level
//! strings  names, symlink targets, xattrs
//! digests  32 bytes each
//! ```

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Mode, OFlags};
use sha2::{Digest as _, Sha256};

use crate::confined;

mod build;
pub use build::{Known, build, by_path};

const MAGIC: &[u8; 8] = b"STRATREC";
const VERSION: u32 = 1;
const HEADER: usize = 128;
const ENTRY: usize = 48;
/// 64 KiB blocks: a read hashes about what it reads (the kernel reads ahead 128 KiB), the
/// block list of a 1 GiB file is 512 KiB, and a block never makes a CernVM-FS client fetch
/// more than the chunk (4 to 16 MiB) a read needs anyway.
pub const BLOCK_SHIFT: u32 = 16;
pub const BLOCK: u64 = 1 << BLOCK_SHIFT;

/// A SHA-256 digest.
pub type Hash = [u8; 32];

/// Why a record cannot be read or made.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: not a layer record ({why})")]
    Malformed { path: PathBuf, why: &'static str },
    #[error("{path}: {what}: {source}")]
    Entry {
        path: PathBuf,
        what: String,
        source: io::Error,
    },
}

/// The content digest of one regular file: the whole content's when it is one block or
/// less, else each block's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileDigest {
    Whole(Hash),
    Blocks(Vec<Hash>),
}

/// Hashes content as it streams (unpacking a tar, or reading a file back).
#[derive(Default)]
pub struct ContentHasher {
    blocks: Vec<Hash>,
    cur: Sha256,
    in_block: u64,
}

impl ContentHasher {
    pub fn update(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let room = (BLOCK - self.in_block) as usize;
            let n = room.min(data.len());
            self.cur.update(&data[..n]);
            self.in_block += n as u64;
            data = &data[n..];
            if self.in_block == BLOCK {
                self.blocks.push(self.cur.finalize_reset().into());
                self.in_block = 0;
            }
        }
    }

    pub fn finish(mut self) -> FileDigest {
        match (self.blocks.len(), self.in_block) {
            (0, _) => FileDigest::Whole(self.cur.finalize().into()),
            (1, 0) => FileDigest::Whole(self.blocks[0]),
            (_, 0) => FileDigest::Blocks(self.blocks),
            _ => {
                self.blocks.push(self.cur.finalize().into());
                FileDigest::Blocks(self.blocks)
            }
        }
    }
}

/// A writer that hashes what passes through it into a file.
pub struct HashingWriter<W> {
    pub inner: W,
    pub hasher: ContentHasher,
}

impl<W: io::Write> io::Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The digest of what `r` yields to its end.
pub fn digest_of(mut r: impl Read) -> io::Result<FileDigest> {
    let mut h = ContentHasher::default();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match r.read(&mut buf) {
            Ok(0) => return Ok(h.finish()),
            Ok(n) => h.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// One entry as the record holds it.
#[derive(Debug, Clone, Copy)]
pub struct Entry<'a> {
    rec: &'a Record,
    /// Its position in the record: stable for the record's life, a key for per-file state.
    pub index: u32,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

impl<'a> Entry<'a> {
    fn raw(&self) -> &'a [u8] {
        let at = HEADER + self.index as usize * ENTRY;
        &self.rec.bytes()[at..at + ENTRY]
    }
    fn field(&self, at: usize) -> u32 {
        u32_at(self.raw(), at)
    }
    pub fn name(&self) -> &'a [u8] {
        self.rec.string(self.field(0), self.field(4))
    }
    /// `st_mode`: type and permission bits.
    pub fn mode(&self) -> u32 {
        self.field(8)
    }
    pub fn kind(&self) -> u32 {
        self.mode() & libc::S_IFMT
    }
    pub fn uid(&self) -> u32 {
        self.field(12)
    }
    pub fn gid(&self) -> u32 {
        self.field(16)
    }
    /// A regular file's size; a device's number.
    pub fn size(&self) -> u64 {
        u64_at(self.raw(), 40)
    }
    /// A directory's entries, sorted by name.
    pub fn children(&self) -> impl Iterator<Item = Entry<'a>> + use<'a> {
        let (first, n) = if self.kind() == libc::S_IFDIR {
            (self.field(20), self.field(24))
        } else {
            (0, 0)
        };
        let rec = self.rec;
        (first..first + n).map(move |index| Entry { rec, index })
    }
    /// The entry `name` of this directory.
    pub fn child(&self, name: &[u8]) -> Option<Entry<'a>> {
        if self.kind() != libc::S_IFDIR {
            return None;
        }
        let (first, n) = (self.field(20), self.field(24));
        let (mut lo, mut hi) = (first, first + n);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let e = Entry {
                rec: self.rec,
                index: mid,
            };
            match e.name().cmp(name) {
                std::cmp::Ordering::Equal => return Some(e),
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
            }
        }
        None
    }
    /// A symlink's target.
    pub fn target(&self) -> &'a [u8] {
        if self.kind() == libc::S_IFLNK {
            self.rec.string(self.field(20), self.field(24))
        } else {
            &[]
        }
    }
    /// A regular file's content digest.
    pub fn digest(&self) -> Option<FileDigest> {
        if self.kind() != libc::S_IFREG {
            return None;
        }
        let (first, n) = (self.field(20), self.field(24));
        Some(if n == 0 {
            FileDigest::Whole(self.rec.hash(first))
        } else {
            FileDigest::Blocks((first..first + n).map(|i| self.rec.hash(i)).collect())
        })
    }
    /// Whether the content is checked by blocks (then [`Entry::block`] gives each).
    pub fn by_blocks(&self) -> bool {
        self.kind() == libc::S_IFREG && self.field(24) != 0
    }
    /// The digest of block `i` of a file checked by blocks; of the whole content otherwise.
    pub fn block(&self, i: u64) -> Option<Hash> {
        let (first, n) = (self.field(20), self.field(24));
        if self.kind() != libc::S_IFREG || (n == 0 && i != 0) || (n != 0 && i >= n as u64) {
            return None;
        }
        Some(self.rec.hash(first + i as u32))
    }
    /// The xattrs, sorted by name.
    pub fn xattrs(&self) -> Vec<(&'a [u8], &'a [u8])> {
        let mut b = self.rec.string(self.field(28), self.field(32));
        let mut out = Vec::new();
        while b.len() >= 6 {
            let nl = u16::from_le_bytes([b[0], b[1]]) as usize;
            let vl = u32_at(b, 2) as usize;
            if b.len() < 6 + nl + vl {
                break;
            }
            out.push((&b[6..6 + nl], &b[6 + nl..6 + nl + vl]));
            b = &b[6 + nl + vl..];
        }
        out
    }
}

enum Bytes {
    Map(memmap2::Mmap),
    Owned(Vec<u8>),
}

/// A layer's record, read in place.
pub struct Record {
    bytes: Bytes,
    /// Where it was read from, for messages.
    pub path: PathBuf,
    entries: u32,
    strings: usize,
    digests: usize,
}

impl std::fmt::Debug for Record {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Record")
            .field("path", &self.path)
            .field("entries", &self.entries)
            .finish()
    }
}

impl Record {
    /// Map the record at `path` and check its frame (every offset inside the file), so that
    /// no later read can go out of it.
    pub fn open(path: &Path) -> Result<Record, RecordError> {
        let io_err = |source| RecordError::Io {
            path: path.into(),
            source,
        };
        let f = File::open(path).map_err(io_err)?;
        // SAFETY: the file is only read; a record is written once under a temporary name and
        // renamed into place, never changed in place. A truncation by someone else makes
        // reads fault, which is why the frame check below is no substitute for the layout.
        let map = unsafe { memmap2::Mmap::map(&f) }.map_err(io_err)?;
        // Lookups jump around the whole record: after the page cache was dropped, a disk
        // read each. Have the kernel read it ahead at once (it is a few MB for 100,000 files).
        let _ = map.advise(memmap2::Advice::WillNeed);
        Record::from_bytes(Bytes::Map(map), path)
    }

    /// A record held in memory (tests, and one just built).
    pub fn from_vec(bytes: Vec<u8>, path: &Path) -> Result<Record, RecordError> {
        Record::from_bytes(Bytes::Owned(bytes), path)
    }

    fn from_bytes(bytes: Bytes, path: &Path) -> Result<Record, RecordError> {
        let bad = |why| RecordError::Malformed {
            path: path.into(),
            why,
        };
        let b: &[u8] = match &bytes {
            Bytes::Map(m) => m,
            Bytes::Owned(v) => v,
        };
        if b.len() < HEADER || &b[..8] != MAGIC {
            return Err(bad("no record header"));
        }
        if u32_at(b, 8) != VERSION {
            return Err(bad("unknown version"));
        }
        if u32_at(b, 12) != BLOCK_SHIFT {
            return Err(bad("unknown block size"));
        }
        let entries = u32_at(b, 16);
        let strings = u64_at(b, 24) as usize;
        let digests = u64_at(b, 32) as usize;
        let total = u64_at(b, 40) as usize;
        if entries == 0
            || total != b.len()
            || HEADER + entries as usize * ENTRY != strings
            || strings > digests
            || digests > total
            || (total - digests) % 32 != 0
        {
            return Err(bad("sections out of place"));
        }
        let rec = Record {
            bytes,
            path: path.into(),
            entries,
            strings,
            digests,
        };
        rec.check_entries().map_err(bad)?;
        Ok(rec)
    }

    /// Every entry's references point inside the record; the entries are laid out breadth
    /// first, each directory's children right after the previous directory's (so every entry
    /// but the root has one parent, and no walk can loop or revisit); a file's block list
    /// matches its size.
    fn check_entries(&self) -> Result<(), &'static str> {
        let nstr = (self.digests - self.strings) as u64;
        let nhash = ((self.bytes().len() - self.digests) / 32) as u64;
        if self.root().kind() != libc::S_IFDIR {
            return Err("a root that is not a directory");
        }
        let mut next = 1u64;
        for index in 0..self.entries {
            let e = Entry { rec: self, index };
            let (f0, f4) = (e.field(0) as u64, e.field(4) as u64);
            let (f20, f24) = (e.field(20) as u64, e.field(24) as u64);
            let (f28, f32) = (e.field(28) as u64, e.field(32) as u64);
            if f0 + f4 > nstr || f28 + f32 > nstr {
                return Err("a name or xattr outside the record");
            }
            match e.kind() {
                libc::S_IFDIR => {
                    if f20 != next || f20 + f24 > self.entries as u64 {
                        return Err("a directory's entries out of place");
                    }
                    next += f24;
                }
                libc::S_IFLNK if f20 + f24 > nstr => {
                    return Err("a link target outside the record");
                }
                libc::S_IFREG => {
                    if f20 + f24.max(1) > nhash {
                        return Err("a digest outside the record");
                    }
                    let size = e.size();
                    let fits = match f24 {
                        0 => size <= BLOCK,
                        n => size > BLOCK && n == size.div_ceil(BLOCK),
                    };
                    if !fits {
                        return Err("a file's blocks do not match its size");
                    }
                }
                _ => {}
            }
        }
        if next != self.entries as u64 {
            return Err("entries no directory holds");
        }
        Ok(())
    }

    fn bytes(&self) -> &[u8] {
        match &self.bytes {
            Bytes::Map(m) => m,
            Bytes::Owned(v) => v,
        }
    }

    fn string(&self, off: u32, len: u32) -> &[u8] {
        let at = self.strings + off as usize;
        &self.bytes()[at..at + len as usize]
    }

    fn hash(&self, i: u32) -> Hash {
        let at = self.digests + i as usize * 32;
        self.bytes()[at..at + 32].try_into().expect("32 bytes")
    }

    /// The layer's blob digest and diff ID, as `convert` checked them.
    pub fn layer(&self) -> (Hash, Hash) {
        let b = self.bytes();
        (
            b[48..80].try_into().expect("32"),
            b[80..112].try_into().expect("32"),
        )
    }

    /// SHA-256 of the whole record: what a signature covers.
    pub fn digest(&self) -> Hash {
        Sha256::digest(self.bytes()).into()
    }

    pub fn root(&self) -> Entry<'_> {
        Entry {
            rec: self,
            index: 0,
        }
    }

    pub fn entry(&self, index: u32) -> Option<Entry<'_>> {
        (index < self.entries).then_some(Entry { rec: self, index })
    }

    pub fn len(&self) -> usize {
        self.entries as usize
    }

    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// Every regular file with its path and digest.
    pub fn files(&self) -> Vec<(Vec<u8>, FileDigest)> {
        let mut out = Vec::new();
        let mut dirs = vec![(Vec::new(), self.root())];
        while let Some((path, d)) = dirs.pop() {
            for c in d.children() {
                let p = crate::stack::join(&path, c.name());
                match c.kind() {
                    libc::S_IFDIR => dirs.push((p, c)),
                    libc::S_IFREG => out.push((p, c.digest().expect("a file's digest"))),
                    _ => {}
                }
            }
        }
        out
    }

    /// The entry at `rel` (`/`-separated, empty for the root).
    pub fn lookup(&self, rel: &[u8]) -> Option<Entry<'_>> {
        let mut e = self.root();
        for c in rel.split(|&b| b == b'/').filter(|c| !c.is_empty()) {
            e = e.child(c)?;
        }
        Some(e)
    }
}

/// Lowercase hex of a digest, for messages.
pub fn hex(h: &Hash) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_is_recorded_and_read_back() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        std::fs::create_dir_all(r.join("a/b")).unwrap();
        std::fs::write(r.join("a/b/small"), b"hello").unwrap();
        let big: Vec<u8> = (0..(BLOCK as usize * 2 + 7))
            .map(|i| (i % 251) as u8)
            .collect();
        std::fs::write(r.join("a/big"), &big).unwrap();
        std::fs::write(r.join(".wh.gone"), b"").unwrap();
        std::os::unix::fs::symlink("../x", r.join("a/link")).unwrap();
        let bytes = build(r, &|_, _| None, ([1; 32], [2; 32])).unwrap();
        let rec = Record::from_vec(bytes, Path::new("rec")).unwrap();
        assert_eq!(rec.layer(), ([1; 32], [2; 32]));
        let names: Vec<_> = rec.root().children().map(|e| e.name().to_vec()).collect();
        assert_eq!(names, vec![b".wh.gone".to_vec(), b"a".to_vec()]);
        let small = rec.lookup(b"a/b/small").unwrap();
        assert_eq!(small.size(), 5);
        assert_eq!(
            small.digest(),
            Some(FileDigest::Whole(Sha256::digest(b"hello").into()))
        );
        let b = rec.lookup(b"a/big").unwrap();
        assert!(b.by_blocks());
        assert_eq!(digest_of(&big[..]).unwrap(), b.digest().unwrap());
        assert_eq!(
            b.block(2),
            Some(Sha256::digest(&big[2 * BLOCK as usize..]).into())
        );
        assert_eq!(rec.lookup(b"a/link").unwrap().target(), b"../x");
        assert!(rec.lookup(b"a/nope").is_none());
        assert!(rec.lookup(b"a/b/small/x").is_none());
    }

    #[test]
    fn a_damaged_record_is_refused() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("f"), b"x").unwrap();
        let bytes = build(d.path(), &|_, _| None, ([0; 32], [0; 32])).unwrap();
        for cut in [0, 10, HEADER, bytes.len() - 1] {
            assert!(Record::from_vec(bytes[..cut].to_vec(), Path::new("r")).is_err());
        }
        let mut bad = bytes.clone();
        // The root's child range pointing past the end.
        bad[HEADER + 24..HEADER + 28].copy_from_slice(&1000u32.to_le_bytes());
        assert!(Record::from_vec(bad, Path::new("r")).is_err());
    }

    /// Records made to hang or crash a reader: children ranges that overlap (a walk would
    /// visit entries again and again), a block list that does not match the file's size (a
    /// read would ask for a block the record lacks).
    #[test]
    fn records_that_would_hang_or_crash_a_reader_are_refused() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("a/b")).unwrap();
        std::fs::write(d.path().join("a/b/f"), vec![1u8; BLOCK as usize * 3]).unwrap();
        let bytes = build(d.path(), &|_, _| None, ([0; 32], [0; 32])).unwrap();
        let rec = Record::from_vec(bytes.clone(), Path::new("r")).unwrap();
        let at = |i: u32| HEADER + i as usize * ENTRY;
        let (a, f) = (
            rec.lookup(b"a").unwrap().index,
            rec.lookup(b"a/b/f").unwrap().index,
        );
        // "a" listing itself and everything after it.
        let mut bad = bytes.clone();
        bad[at(a) + 20..at(a) + 24].copy_from_slice(&a.to_le_bytes());
        assert!(Record::from_vec(bad, Path::new("r")).is_err());
        // Two blocks for a file of three.
        let mut bad = bytes.clone();
        bad[at(f) + 24..at(f) + 28].copy_from_slice(&2u32.to_le_bytes());
        assert!(Record::from_vec(bad, Path::new("r")).is_err());
        // A size far beyond its blocks.
        let mut bad = bytes;
        bad[at(f) + 40..at(f) + 48].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(Record::from_vec(bad, Path::new("r")).is_err());
    }

    #[test]
    fn streamed_and_read_back_digests_agree_at_block_edges() {
        for len in [0, 1, BLOCK - 1, BLOCK, BLOCK + 1, 3 * BLOCK] {
            let data = vec![7u8; len as usize];
            let mut h = ContentHasher::default();
            for chunk in data.chunks(4097) {
                h.update(chunk);
            }
            assert_eq!(h.finish(), digest_of(&data[..]).unwrap(), "length {len}");
        }
    }
}
