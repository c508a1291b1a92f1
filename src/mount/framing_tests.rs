//! Every opcode through the one session in both framings, without root or a mount: each
//! request is framed as `/dev/fuse` delivers it ([`devfuse::answer`]) and as a ring entry
//! holds it ([`frame::answer`]), against a temporary layer stack, and the two replies must be
//! the same bytes.
//!
//! Requests that change nothing go through both framings on one session. Requests that
//! change the upper layer cannot be answered twice on one state, so the same sequence runs
//! on two sessions over the same lower layer, each with its own upper; their replies are
//! compared byte for byte except for what the two uppers' own files make differ (the new
//! entries' inode numbers and times).

use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;

use super::devfuse;
use super::session::{Passthrough, Session};
use super::uring::frame;
use super::wire::{self, IN_HEADER_LEN, op};
use crate::overlay::inode::ROOT_INO;
use crate::overlay::{Config, Overlay};

struct Req {
    opcode: u32,
    nodeid: u64,
    op_in: Vec<u8>,
    data: Vec<u8>,
}

/// Little-endian fields in a row: (value, width in bytes).
fn le(fields: &[(u64, usize)]) -> Vec<u8> {
    fields
        .iter()
        .flat_map(|&(v, n)| v.to_le_bytes()[..n].to_vec())
        .collect()
}

fn names(names: &[&[u8]]) -> Vec<u8> {
    names.iter().flat_map(|n| [*n, b"\0"].concat()).collect()
}

fn req(opcode: u32, nodeid: u64, op_in: Vec<u8>, data: Vec<u8>) -> Req {
    Req {
        opcode,
        nodeid,
        op_in,
        data,
    }
}

fn in_header(r: &Req, len: usize, unique: u64) -> Vec<u8> {
    let me = rustix::process::geteuid().as_raw() as u64;
    le(&[
        (len as u64, 4),
        (r.opcode as u64, 4),
        (unique, 8),
        (r.nodeid, 8),
        (me, 4),
        (rustix::process::getegid().as_raw() as u64, 4),
        (std::process::id() as u64, 4),
        (0, 4),
    ])
}

/// The reply message through `/dev/fuse`'s framing; `None`: no reply.
fn via_dev(s: &Session, unique: u64, r: &Req) -> Option<Vec<u8>> {
    let mut fixed = r.op_in.clone();
    fixed.resize(wire::fixed_len(r.opcode), 0);
    let len = IN_HEADER_LEN + fixed.len() + r.data.len();
    let msg = [in_header(r, len, unique), fixed, r.data.clone()].concat();
    let mut reply = vec![0u8; devfuse::BUF_LEN];
    devfuse::answer(s, &msg, &mut reply).map(|n| reply[..n].to_vec())
}

/// The reply message through a ring entry's framing: its `fuse_out_header` and payload.
fn via_ring(s: &Session, unique: u64, r: &Req) -> Vec<u8> {
    let mut header = vec![0u8; frame::HEADER_LEN];
    header[..IN_HEADER_LEN].copy_from_slice(&in_header(r, 0, unique));
    header[128..128 + r.op_in.len()].copy_from_slice(&r.op_in);
    // fuse_uring_ent_in_out.payload_sz
    header[272..276].copy_from_slice(&(r.data.len() as u32).to_le_bytes());
    let mut payload = vec![0u8; devfuse::BUF_LEN];
    payload[..r.data.len()].copy_from_slice(&r.data);
    frame::answer(s, &mut header, &mut payload);
    let n = frame::payload_len(&header);
    [&header[..wire::OUT_HEADER_LEN], &payload[..n]].concat()
}

fn error_of(reply: &[u8]) -> i32 {
    -(wire::u32_at(reply, 4) as i32)
}

struct Stack {
    _t: tempfile::TempDir,
    session: Session,
}

fn lower(dir: &Path) {
    std::fs::create_dir_all(dir.join("dir/sub")).unwrap();
    std::fs::create_dir_all(dir.join("many")).unwrap();
    std::fs::write(dir.join("dir/file"), "lower content").unwrap();
    std::os::unix::fs::symlink("file", dir.join("dir/link")).unwrap();
    for i in 0..40 {
        std::fs::write(dir.join(format!("many/f{i}")), "x").unwrap();
    }
    rustix::fs::setxattr(
        dir.join("dir/file"),
        "user.note",
        b"hello",
        rustix::fs::XattrFlags::empty(),
    )
    .expect("user xattrs on the temporary directory's filesystem");
}

fn stack(lower: &Path, writable: bool) -> Stack {
    let t = tempfile::tempdir().unwrap();
    let (u, w) = (t.path().join("u"), t.path().join("w"));
    std::fs::create_dir_all(&u).unwrap();
    std::fs::create_dir_all(&w).unwrap();
    let ov = Overlay::with_config(&Config {
        lowerdirs: vec![lower.to_path_buf()],
        upper: writable.then_some((u, w)),
        fsync: false,
        ..Config::default()
    })
    .unwrap();
    // Notifications are not part of a reply: they go nowhere here.
    let dev: OwnedFd = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/null")
        .unwrap()
        .into();
    let session = Session::new(Arc::new(ov), Arc::new(dev), Passthrough::Off);
    Stack { _t: t, session }
}

/// Both framings on one session; the reply.
fn both(s: &Session, unique: u64, r: &Req) -> Vec<u8> {
    let d = via_dev(s, unique, r).expect("a reply");
    let g = via_ring(s, unique, r);
    assert_eq!(
        d, g,
        "opcode {}: /dev/fuse and ring replies differ",
        r.opcode
    );
    assert_eq!(wire::u64_at(&d, 8), unique);
    assert_eq!(wire::u32_at(&d, 0) as usize, d.len(), "length field");
    d
}

fn lookup(parent: u64, name: &[u8]) -> Req {
    req(op::LOOKUP, parent, vec![], names(&[name]))
}

fn read_in(fh: u64, offset: u64, size: u32) -> Vec<u8> {
    le(&[
        (fh, 8),
        (offset, 8),
        (size as u64, 4),
        (0, 4),
        (0, 8),
        (0, 4),
        (0, 4),
    ])
}

/// Over 100 lines because it is one script of requests, each with the bytes it must get:
/// the script reads best whole.
#[test]
fn requests_that_change_nothing_get_the_same_bytes_through_both_framings() {
    let t = tempfile::tempdir().unwrap();
    lower(t.path());
    for writable in [true, false] {
        let st = stack(t.path(), writable);
        let s = &st.session;
        let r = both(s, 1, &lookup(ROOT_INO, b"dir"));
        assert_eq!(error_of(&r), 0);
        let dir = wire::u64_at(&r, 16);
        let file = wire::u64_at(&both(s, 2, &lookup(dir, b"file")), 16);
        let link = wire::u64_at(&both(s, 3, &lookup(dir, b"link")), 16);
        let neg = both(s, 4, &lookup(dir, b"missing"));
        assert_eq!(
            (error_of(&neg), wire::u64_at(&neg, 16)),
            (0, 0),
            "negative entry"
        );
        let many = wire::u64_at(&both(s, 5, &lookup(ROOT_INO, b"many")), 16);
        let getattr = le(&[(0, 4), (0, 4), (0, 8)]);
        both(s, 6, &req(op::GETATTR, file, getattr.clone(), vec![]));
        both(s, 7, &req(op::GETATTR, ROOT_INO, getattr, vec![]));
        assert_eq!(
            &both(s, 8, &req(op::READLINK, link, vec![], vec![]))[16..],
            b"file"
        );
        let read = both(s, 9, &req(op::READ, file, read_in(0, 6, 4096), vec![]));
        assert_eq!(&read[16..], b"content");
        // The free counts may move between the two calls while the disk is written.
        let statfs = req(op::STATFS, ROOT_INO, vec![], vec![]);
        assert!(
            (0..20).any(|u| via_dev(s, 10 + u, &statfs) == Some(via_ring(s, 10 + u, &statfs))),
            "STATFS"
        );
        let xattr = |size| le(&[(size, 4), (0, 4)]);
        let note = names(&[b"user.note"]);
        let get = |size| req(op::GETXATTR, file, xattr(size), note.clone());
        assert_eq!(&both(s, 31, &get(0))[16..20], &5u32.to_le_bytes());
        assert_eq!(&both(s, 32, &get(64))[16..], b"hello");
        assert_eq!(error_of(&both(s, 33, &get(2))), libc::ERANGE);
        let absent = req(op::GETXATTR, file, xattr(64), names(&[b"user.none"]));
        assert_eq!(error_of(&both(s, 34, &absent)), libc::ENODATA);
        both(s, 35, &req(op::LISTXATTR, file, xattr(0), vec![]));
        both(s, 36, &req(op::LISTXATTR, file, xattr(256), vec![]));
        let access = req(
            op::ACCESS,
            file,
            le(&[(libc::R_OK as u64, 4), (0, 4)]),
            vec![],
        );
        assert_eq!(error_of(&both(s, 37, &access)), 0);
        let readdir = |o, n| req(o, n, read_in(0, 0, 4096), vec![]);
        let listing = both(s, 38, &readdir(op::READDIR, dir));
        assert!(listing.windows(4).any(|w| w == b"file"));
        both(s, 39, &readdir(op::READDIRPLUS, dir));
        // Nothing in "many" was looked up: its entries go without attributes.
        let plus = both(s, 40, &readdir(op::READDIRPLUS, many));
        assert!(
            bare_entries(&plus) > 20,
            "{} bare entries",
            bare_entries(&plus)
        );
        let later = req(op::READDIRPLUS, many, read_in(0, 20, 4096), vec![]);
        both(s, 41, &later);
        let fh_in = le(&[(0, 8), (0, 4), (0, 4), (0, 8)]);
        for (i, (o, want)) in [
            (op::FLUSH, libc::ENOSYS),
            (op::OPENDIR, libc::ENOSYS),
            (op::RELEASEDIR, 0),
            (op::FSYNCDIR, 0),
            (op::IOCTL, libc::ENOTTY),
            (46, libc::ENOSYS), // LSEEK
            (
                op::COPY_FILE_RANGE,
                if writable { libc::ENOSYS } else { libc::EROFS },
            ),
        ]
        .into_iter()
        .enumerate()
        {
            let r = both(s, 50 + i as u64, &req(o, file, fh_in.clone(), vec![]));
            assert_eq!(error_of(&r), want, "opcode {o}");
        }
        if !writable {
            let open = req(op::OPEN, file, le(&[(0, 4), (0, 4)]), vec![]);
            assert_eq!(
                error_of(&both(s, 60, &open)),
                libc::ENOSYS,
                "zero-message open"
            );
            let mkdir = req(op::MKDIR, dir, le(&[(0o755, 4), (0, 4)]), names(&[b"m"]));
            assert_eq!(error_of(&both(s, 61, &mkdir)), libc::EROFS);
            let write = req(op::WRITE, file, read_in(1, 0, 1), b"x".to_vec());
            assert_eq!(error_of(&both(s, 62, &write)), libc::EROFS);
        }
        // Through /dev/fuse only (the kernel sends these nowhere else); forgets get no reply.
        let forget = req(op::FORGET, file, le(&[(1, 8)]), vec![]);
        assert_eq!(via_dev(s, 70, &forget), None);
        let batch = req(
            op::BATCH_FORGET,
            0,
            le(&[(1, 4), (0, 4)]),
            le(&[(link, 8), (1, 8)]),
        );
        assert_eq!(via_dev(s, 71, &batch), None);
        // INTERRUPT: ENOSYS, so that the kernel sends no more.
        let interrupt = req(op::INTERRUPT, 0, le(&[(9, 8)]), vec![]);
        let r = via_dev(s, 72, &interrupt).expect("a reply");
        assert_eq!(error_of(&r), libc::ENOSYS);
    }
}

/// How many entries of a READDIRPLUS reply have no attributes (node id 0).
fn bare_entries(reply: &[u8]) -> usize {
    let (mut at, mut n) = (16, 0);
    while at + 152 <= reply.len() {
        n += (wire::u64_at(reply, at) == 0) as usize;
        let namelen = wire::u32_at(reply, at + 128 + 16) as usize;
        at += (152 + namelen).next_multiple_of(8);
    }
    n
}

/// Zero what differs between two uppers in a reply to `opcode`: new entries' node ids,
/// inode numbers and times, listed entries' inode numbers.
fn mask(opcode: u32, reply: &[u8]) -> Vec<u8> {
    let mut r = reply.to_vec();
    let attr = match opcode {
        op::LOOKUP | op::MKDIR | op::MKNOD | op::SYMLINK | op::LINK | op::CREATE => {
            r[16..24].fill(0);
            56
        }
        op::GETATTR | op::SETATTR => 32,
        op::READDIR => {
            let mut at = 16;
            while at + 24 <= r.len() {
                r[at..at + 8].fill(0);
                at += (24 + wire::u32_at(&r, at + 16) as usize).next_multiple_of(8);
            }
            return r;
        }
        _ => return r,
    };
    for (from, to) in [(0, 8), (24, 60)] {
        if let Some(b) = r.get_mut(attr + from..attr + to) {
            b.fill(0);
        }
    }
    r
}

/// Over 100 lines because it is one script of requests, each with the bytes it must get:
/// the script reads best whole.
#[test]
fn requests_that_change_the_upper_layer_get_the_same_bytes_through_both_framings() {
    let t = tempfile::tempdir().unwrap();
    lower(t.path());
    let (a, b) = (stack(t.path(), true), stack(t.path(), true));
    let dir = {
        let r = both(&a.session, 1, &lookup(ROOT_INO, b"dir"));
        assert_eq!(r, via_ring(&b.session, 1, &lookup(ROOT_INO, b"dir")));
        wire::u64_at(&r, 16)
    };
    let mut unique = 1;
    // One step on both sessions, each in its own framing: the two replies. Node ids of new
    // entries differ between the sessions, so a request is made for each (0: /dev/fuse
    // through session a, 1: the ring through session b).
    let mut step = |r: &dyn Fn(usize) -> Req| -> [Vec<u8>; 2] {
        unique += 1;
        let (ra, rb) = (r(0), r(1));
        let d = via_dev(&a.session, unique, &ra).expect("a reply");
        let g = via_ring(&b.session, unique, &rb);
        assert_eq!(
            mask(ra.opcode, &d),
            mask(rb.opcode, &g),
            "opcode {}: /dev/fuse and ring replies differ",
            ra.opcode
        );
        [d, g]
    };
    let err = |r: &[Vec<u8>; 2]| error_of(&r[0]);
    let node = |r: &[Vec<u8>; 2]| [wire::u64_at(&r[0], 16), wire::u64_at(&r[1], 16)];
    let who = |mode: u64, extra: &[(u64, usize)]| [le(&[(mode, 4)]), le(extra)].concat();
    let mkdir = step(&|_| req(op::MKDIR, dir, who(0o755, &[(0o022, 4)]), names(&[b"m"])));
    assert_eq!(err(&mkdir), 0);
    let mknod = |mode: u64, name: &'static [u8]| {
        move |_| {
            req(
                op::MKNOD,
                dir,
                who(mode, &[(0, 4), (0o022, 4), (0, 4)]),
                names(&[name]),
            )
        }
    };
    assert_eq!(err(&step(&mknod(libc::S_IFREG as u64 | 0o644, b"f"))), 0);
    assert_eq!(err(&step(&mknod(libc::S_IFIFO as u64 | 0o600, b"p"))), 0);
    let sym = step(&|_| req(op::SYMLINK, dir, vec![], names(&[b"s", b"target"])));
    assert_eq!(err(&sym), 0);
    let create_in = le(&[
        ((libc::O_WRONLY | libc::O_CREAT) as u64, 4),
        (0o644, 4),
        (0o022, 4),
        (0, 4),
    ]);
    let created = step(&|_| req(op::CREATE, dir, create_in.clone(), names(&[b"c"])));
    assert_eq!(err(&created), 0);
    let (c, fh) = (node(&created), wire::u64_at(&created[0], 16 + 128));
    assert_eq!(
        wire::u32_at(&created[0], 16 + 136),
        wire::FOPEN_DIRECT_IO,
        "write-only creates get direct I/O"
    );
    let w = step(&|i| req(op::WRITE, c[i], read_in(fh, 0, 5), b"hello".to_vec()));
    assert_eq!(wire::u32_at(&w[0], 16), 5);
    step(&|i| req(op::FSYNC, c[i], le(&[(fh, 8), (1, 4), (0, 4)]), vec![]));
    let falloc = le(&[(fh, 8), (0, 8), (100, 8), (0, 4), (0, 4)]);
    assert_eq!(
        err(&step(&|i| req(op::FALLOCATE, c[i], falloc.clone(), vec![]))),
        0
    );
    // SETATTR: mode and size.
    let mut setattr = vec![0u8; 88];
    setattr[0..4].copy_from_slice(&(wire::fattr::MODE | wire::fattr::SIZE).to_le_bytes());
    setattr[16..24].copy_from_slice(&3u64.to_le_bytes());
    setattr[68..72].copy_from_slice(&(libc::S_IFREG | 0o600).to_le_bytes());
    let sa = step(&|i| req(op::SETATTR, c[i], setattr.clone(), vec![]));
    assert_eq!(wire::u64_at(&sa[0], 16 + 16 + 8), 3, "size");
    let release = |fh: u64| le(&[(fh, 8), (0, 4), (0, 4), (0, 8)]);
    step(&|i| req(op::RELEASE, c[i], release(fh), vec![]));
    // A lower file opened for writing: copied up.
    let file = node(&step(&|_| lookup(dir, b"file")));
    let rdwr = le(&[(libc::O_RDWR as u64, 4), (0, 4)]);
    let opened = step(&|i| req(op::OPEN, file[i], rdwr.clone(), vec![]));
    let fh2 = wire::u64_at(&opened[0], 16);
    let read = step(&|i| req(op::READ, file[i], read_in(fh2, 0, 5), vec![]));
    assert_eq!(&read[0][16..], b"lower");
    step(&|i| req(op::RELEASE, file[i], release(fh2), vec![]));
    let link = step(&|i| req(op::LINK, dir, le(&[(c[i], 8)]), names(&[b"c2"])));
    assert_eq!(err(&link), 0);
    let value = [names(&[b"user.a"]), b"v".to_vec()].concat();
    let setx = step(&|i| req(op::SETXATTR, c[i], le(&[(1, 4), (0, 4)]), value.clone()));
    assert_eq!(err(&setx), 0);
    let size = le(&[(16, 4), (0, 4)]);
    let getx = step(&|i| req(op::GETXATTR, c[i], size.clone(), names(&[b"user.a"])));
    assert_eq!(&getx[0][16..], b"v");
    step(&|i| req(op::LISTXATTR, c[i], le(&[(256, 4), (0, 4)]), vec![]));
    let removex = step(&|i| req(op::REMOVEXATTR, c[i], vec![], names(&[b"user.a"])));
    assert_eq!(err(&removex), 0);
    let rename = step(&|_| req(op::RENAME, dir, le(&[(dir, 8)]), names(&[b"c2", b"c3"])));
    assert_eq!(err(&rename), 0);
    let noreplace = le(&[(dir, 8), (libc::RENAME_NOREPLACE as u64, 4), (0, 4)]);
    let r2 = step(&|_| req(op::RENAME2, dir, noreplace.clone(), names(&[b"c3", b"c"])));
    assert_eq!(err(&r2), libc::EEXIST);
    assert_eq!(
        err(&step(&|_| req(op::UNLINK, dir, vec![], names(&[b"c3"])))),
        0
    );
    assert_eq!(
        err(&step(&|_| req(op::RMDIR, dir, vec![], names(&[b"m"])))),
        0
    );
    let gone = step(&|_| req(op::UNLINK, dir, vec![], names(&[b"gone"])));
    assert_eq!(err(&gone), libc::ENOENT);
    let listing = step(&|_| req(op::READDIR, dir, read_in(0, 0, 4096), vec![]));
    assert!(listing[0].windows(4).any(|w| w == b"file"));
    assert_eq!(
        err(&step(&|_| req(op::DESTROY, ROOT_INO, vec![], vec![]))),
        0
    );
}

/// Panics seen by the hook `hostile_requests_never_panic` installs (the session turns a
/// handler's panic into EIO, so the reply alone would not show one).
static PANICS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

mod hostile {
    use super::*;
    use proptest::prelude::*;

    fn opcode() -> impl Strategy<Value = u32> {
        // Every opcode but INIT and DESTROY (they end a session), and anything else.
        prop_oneof![
            8 => (1u32..52).prop_filter("session-ending", |o| *o != op::INIT && *o != op::DESTROY),
            1 => any::<u32>().prop_filter("session-ending", |o| *o != op::INIT && *o != op::DESTROY),
        ]
    }

    fn stacks() -> &'static [(Stack, tempfile::TempDir); 2] {
        static S: std::sync::OnceLock<[(Stack, tempfile::TempDir); 2]> = std::sync::OnceLock::new();
        S.get_or_init(|| {
            let hook = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |i| {
                PANICS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                hook(i)
            }));
            [true, false].map(|w| {
                let t = tempfile::tempdir().unwrap();
                lower(t.path());
                (stack(t.path(), w), t)
            })
        })
    }

    proptest! {
        #![proptest_config(crate::test_cases(3000))]
        /// Any bytes after a header, as /dev/fuse would deliver them: a reply or none,
        /// never a panic, and the reply's length field is its length.
        #[test]
        fn hostile_requests_never_panic(
            opcode in opcode(),
            nodeid in prop_oneof![Just(ROOT_INO), 0u64..64, any::<u64>()],
            body in proptest::collection::vec(any::<u8>(), 0..400),
            writable in any::<bool>(),
            cut in any::<bool>(),
        ) {
            let st = &stacks()[usize::from(!writable)].0;
            let r = Req { opcode, nodeid, op_in: vec![], data: vec![] };
            let mut msg = in_header(&r, IN_HEADER_LEN + body.len(), 7);
            msg.extend_from_slice(&body);
            if cut {
                // A length field that claims more than was read.
                msg[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
            }
            let before = PANICS.load(std::sync::atomic::Ordering::SeqCst);
            let mut reply = vec![0u8; devfuse::BUF_LEN];
            if let Some(n) = devfuse::answer(&st.session, &msg, &mut reply) {
                prop_assert_eq!(wire::u32_at(&reply, 0) as usize, n);
            }
            prop_assert_eq!(PANICS.load(std::sync::atomic::Ordering::SeqCst), before, "a handler panicked");
            // Shorter than a header: ignored.
            prop_assert!(devfuse::answer(&st.session, &msg[..body.len().min(39)], &mut reply).is_none());
        }
    }
}
