//! The FUSE protocol's bytes (`include/uapi/linux/fuse.h`), the same over `/dev/fuse` and over
//! io_uring: request headers, each opcode's arguments decoded into [`Args`], and the reply
//! structures written by [`Out`]. All little-endian, as the kernel lays them out. How a
//! transport frames them (one buffer per read, or a ring entry's header and payload) is the
//! transport's business.

mod args;
mod out;

pub use args::{Args, SetattrIn, decode, fixed_len};
pub use out::Out;

/// The protocol version we speak: 7.40 (FUSE_PASSTHROUGH, FUSE_NOTIFY_RESEND).
pub const KERNEL_VERSION: u32 = 7;
pub const KERNEL_MINOR_VERSION: u32 = 40;

/// `struct fuse_in_header` and `struct fuse_out_header`.
pub const IN_HEADER_LEN: usize = 40;
pub const OUT_HEADER_LEN: usize = 16;

/// Opcodes (`enum fuse_opcode`).
pub mod op {
    pub const LOOKUP: u32 = 1;
    pub const FORGET: u32 = 2;
    pub const GETATTR: u32 = 3;
    pub const SETATTR: u32 = 4;
    pub const READLINK: u32 = 5;
    pub const SYMLINK: u32 = 6;
    pub const MKNOD: u32 = 8;
    pub const MKDIR: u32 = 9;
    pub const UNLINK: u32 = 10;
    pub const RMDIR: u32 = 11;
    pub const RENAME: u32 = 12;
    pub const LINK: u32 = 13;
    pub const OPEN: u32 = 14;
    pub const READ: u32 = 15;
    pub const WRITE: u32 = 16;
    pub const STATFS: u32 = 17;
    pub const RELEASE: u32 = 18;
    pub const FSYNC: u32 = 20;
    pub const SETXATTR: u32 = 21;
    pub const GETXATTR: u32 = 22;
    pub const LISTXATTR: u32 = 23;
    pub const REMOVEXATTR: u32 = 24;
    pub const FLUSH: u32 = 25;
    pub const INIT: u32 = 26;
    pub const OPENDIR: u32 = 27;
    pub const READDIR: u32 = 28;
    pub const RELEASEDIR: u32 = 29;
    pub const FSYNCDIR: u32 = 30;
    pub const ACCESS: u32 = 34;
    pub const CREATE: u32 = 35;
    pub const INTERRUPT: u32 = 36;
    pub const DESTROY: u32 = 38;
    pub const IOCTL: u32 = 39;
    pub const BATCH_FORGET: u32 = 42;
    pub const FALLOCATE: u32 = 43;
    pub const READDIRPLUS: u32 = 44;
    pub const RENAME2: u32 = 45;
    pub const COPY_FILE_RANGE: u32 = 47;
    pub const TMPFILE: u32 = 51;
    /// Requests that change something: refused on a read-only mount.
    pub const MUTATING: &[u32] = &[
        SETATTR,
        SYMLINK,
        MKNOD,
        MKDIR,
        UNLINK,
        RMDIR,
        RENAME,
        LINK,
        WRITE,
        SETXATTR,
        REMOVEXATTR,
        CREATE,
        FALLOCATE,
        RENAME2,
        COPY_FILE_RANGE,
        TMPFILE,
    ];
}

/// INIT flags (`fuse_init_in.flags | flags2 << 32`).
pub mod init {
    pub const ASYNC_READ: u64 = 1 << 0;
    pub const ATOMIC_O_TRUNC: u64 = 1 << 3;
    pub const BIG_WRITES: u64 = 1 << 5;
    pub const DONT_MASK: u64 = 1 << 6;
    pub const DO_READDIRPLUS: u64 = 1 << 13;
    pub const READDIRPLUS_AUTO: u64 = 1 << 14;
    pub const WRITEBACK_CACHE: u64 = 1 << 16;
    pub const NO_OPEN_SUPPORT: u64 = 1 << 17;
    pub const PARALLEL_DIROPS: u64 = 1 << 18;
    pub const POSIX_ACL: u64 = 1 << 20;
    pub const MAX_PAGES: u64 = 1 << 22;
    pub const CACHE_SYMLINKS: u64 = 1 << 23;
    pub const NO_OPENDIR_SUPPORT: u64 = 1 << 24;
    pub const HANDLE_KILLPRIV_V2: u64 = 1 << 28;
    pub const INIT_EXT: u64 = 1 << 30;
    pub const PASSTHROUGH: u64 = 1 << 37;
    pub const OVER_IO_URING: u64 = 1 << 41;
}

/// `fuse_setattr_in.valid` bits.
pub mod fattr {
    pub const MODE: u32 = 1 << 0;
    pub const UID: u32 = 1 << 1;
    pub const GID: u32 = 1 << 2;
    pub const SIZE: u32 = 1 << 3;
    pub const ATIME: u32 = 1 << 4;
    pub const MTIME: u32 = 1 << 5;
    pub const FH: u32 = 1 << 6;
    pub const ATIME_NOW: u32 = 1 << 7;
    pub const MTIME_NOW: u32 = 1 << 8;
}

/// Notification codes (`enum fuse_notify_code`), sent in the `error` field with `unique` 0.
pub mod notify {
    pub const INVAL_INODE: i32 = 2;
    pub const INVAL_ENTRY: i32 = 3;
    /// FUSE_NOTIFY_RESEND: requests read but not answered go back to the queue.
    pub const RESEND: i32 = 7;
}

/// `FUSE_WRITE_KILL_SUIDGID` in `fuse_write_in.write_flags`.
pub const WRITE_KILL_SUIDGID: u32 = 1 << 2;
/// `FOPEN_DIRECT_IO` in `fuse_open_out.open_flags`.
pub const FOPEN_DIRECT_IO: u32 = 1 << 0;
/// `FOPEN_KEEP_CACHE` in `fuse_open_out.open_flags`.
pub const FOPEN_KEEP_CACHE: u32 = 1 << 1;
/// `FOPEN_PASSTHROUGH` in `fuse_open_out.open_flags`.
pub const FOPEN_PASSTHROUGH: u32 = 1 << 7;

pub fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().expect("2 bytes"))
}
pub fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
pub fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// `struct fuse_in_header` (the first 40 bytes of every request, in either framing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InHeader {
    pub len: u32,
    pub opcode: u32,
    pub unique: u64,
    pub nodeid: u64,
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
}

impl InHeader {
    pub fn parse(header: &[u8]) -> InHeader {
        InHeader {
            len: u32_at(header, 0),
            opcode: u32_at(header, 4),
            unique: u64_at(header, 8),
            nodeid: u64_at(header, 16),
            uid: u32_at(header, 24),
            gid: u32_at(header, 28),
            pid: u32_at(header, 32),
        }
    }
}

/// A `struct fuse_out_header` for a reply of `payload` bytes (`error` 0 or a negative errno),
/// or a notification (`unique` 0, `error` the code).
pub fn out_header(unique: u64, error: i32, payload: usize) -> [u8; OUT_HEADER_LEN] {
    let mut h = [0u8; OUT_HEADER_LEN];
    h[0..4].copy_from_slice(&((OUT_HEADER_LEN + payload) as u32).to_le_bytes());
    h[4..8].copy_from_slice(&error.to_le_bytes());
    h[8..16].copy_from_slice(&unique.to_le_bytes());
    h
}

/// A name argument: NUL-terminated.
pub fn name(payload: &[u8]) -> &[u8] {
    payload.split(|&b| b == 0).next().unwrap_or(&[])
}

/// Two NUL-terminated names in a row (SYMLINK: name and target; RENAME: old and new).
pub fn two_names(payload: &[u8]) -> (&[u8], &[u8]) {
    let mut it = payload.split(|&b| b == 0);
    (it.next().unwrap_or(&[]), it.next().unwrap_or(&[]))
}
