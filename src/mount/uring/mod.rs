//! FUSE over io_uring (Linux 6.14+, `/sys/module/fuse/parameters/enable_uring`): one queue
//! per CPU, each served by a thread pinned to that CPU, so a request is answered on the CPU
//! that sent it instead of waking a `/dev/fuse` reader elsewhere (benches/RESULTS.md, "The
//! ceiling for FUSE over io_uring").
//!
//! The `/dev/fuse` transport keeps INIT, FORGET and INTERRUPT (which the kernel still sends
//! through `/dev/fuse`); notifications go there too. The kernel blocks requests from INIT
//! until every queue has an entry, so the rings are made before INIT (a failure there means
//! no ring, never a hung mount) and FUSE_OVER_IO_URING is only asked for when each queue's
//! thread is about to register. Each request is answered by the same [`Session`] as over
//! `/dev/fuse`; only the framing ([`frame`]) is the ring's.

pub mod frame;

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::thread;
use std::time::Duration;

use crossbeam_channel::Sender;
use io_uring::{IoUring, cqueue, opcode, squeue, types};
use tracing::{debug, error, info, warn};

use crate::mount::session::Session;
use crate::mount::wire::InHeader;
use crate::overlay::namespace::Stale;

/// Requests in flight per queue at most: enough that a queue's next request is already in
/// its buffer when the thread comes back from the last one.
const DEPTH: usize = 4;

/// Ring entries per mount, over all queues: each holds a payload buffer of up to `max_write`
/// (1 MiB), so a node of many CPUs and many mounts would otherwise reserve 4 per CPU per
/// mount (256 MiB on 64 CPUs). Requests of one caller all go to its CPU's queue, so a
/// queue's depth matters only for callers that issue several requests at once.
const ENTRIES_PER_MOUNT: usize = 16;

/// The depth of each of `queues` queues: [`ENTRIES_PER_MOUNT`] shared out, 1 to [`DEPTH`].
fn depth_for(queues: usize) -> usize {
    (ENTRIES_PER_MOUNT / queues.max(1)).clamp(1, DEPTH)
}

/// Each ring entry holds a payload buffer of the largest write the mount negotiates
/// (allocated lazily by the kernel's zero pages).
const MAX_PAYLOAD: u32 = crate::mount::session::init::MAX_WRITE;

type Ring = IoUring<squeue::Entry128, cqueue::Entry>;

/// The io_uring instances, made before the mount's INIT: one per serving thread, each serving
/// the kernel's queues (one per possible CPU) of a block of CPUs ([`qids_of`]).
pub struct Rings {
    rings: Vec<(Ring, Vec<u16>)>,
    handoff: bool,
}

/// Serving threads per mount at most. The kernel wants every CPU's queue to have an entry,
/// but any ring may register entries of any queue and gets their completions: one thread per
/// CPU on a 64-CPU node would be 64 threads per mount (6,400 for 100 containers), each with
/// its stack and ring; a block of CPUs per thread is enough, since a caller's requests all go
/// to its own CPU's queue.
const RING_THREADS: usize = 8;

/// The queues (CPUs) thread `t` of `threads` serves out of `cpus`: a contiguous block, so a
/// thread's CPUs are neighbours (caches, NUMA nodes).
fn qids_of(t: usize, threads: usize, cpus: usize) -> Vec<u16> {
    (t * cpus / threads..(t + 1) * cpus / threads)
        .map(|q| q as u16)
        .collect()
}

/// Whether the kernel lets FUSE use io_uring at all (root may turn it on at any time).
pub fn kernel_enabled() -> bool {
    fs::read_to_string("/sys/module/fuse/parameters/enable_uring").is_ok_and(|s| s.trim() == "Y")
}

/// The kernel's queue count: its possible CPUs, which must be numbered 0..n.
fn possible_cpus() -> io::Result<usize> {
    let s = fs::read_to_string("/sys/devices/system/cpu/possible")?;
    let s = s.trim();
    let n = match s.split_once('-') {
        Some(("0", hi)) => hi.parse::<usize>().ok().map(|h| h + 1),
        None if s == "0" => Some(1),
        _ => None,
    };
    n.ok_or_else(|| io::Error::other(format!("possible CPUs {s:?} are not 0..n")))
}

impl Rings {
    /// Rings for every possible CPU's queue; `handoff`: see [`Queue::commit`].
    pub fn new(handoff: bool) -> io::Result<Rings> {
        let n = possible_cpus()?;
        let threads = n.min(RING_THREADS);
        let depth = depth_for(n);
        let rings = (0..threads)
            .map(|t| {
                let qids = qids_of(t, threads, n);
                let entries = (qids.len() * depth).next_power_of_two() as u32;
                Ring::builder().build(entries).map(|r| (r, qids))
            })
            .collect::<io::Result<Vec<_>>>()?;
        Ok(Rings { rings, handoff })
    }

    /// Serve every queue from its own thread on `dev` (the connection's `/dev/fuse`), once
    /// FUSE_OVER_IO_URING is in INIT's reply: registration waits for the reply to reach the
    /// kernel. A queue that cannot be served would hang the
    /// mount, so such a failure ends the daemon instead.
    pub fn start(self, dev: std::sync::Arc<OwnedFd>, fs: Session) {
        let stale = fs.start_notifier();
        let handoff = self.handoff && can_leave_idle();
        for (ring, qids) in self.rings {
            let dev = std::sync::Arc::clone(&dev);
            let fs = fs.clone();
            let stale = stale.clone();
            let qid = qids[0];
            let spawned = thread::Builder::new()
                .name(format!("fuse-ring-{qid}"))
                .spawn(move || {
                    let q = Queue::new(ring, &qids, &dev, handoff);
                    if let Err(e) = q.and_then(|q| q.run(&fs, &stale)) {
                        error!(queue = qid, error = %e, "io_uring queue failed; ending the mount");
                        std::process::exit(1);
                    }
                });
            if let Err(e) = spawned {
                error!(queue = qid, error = %e, "io_uring queue thread; ending the mount");
                std::process::exit(1);
            }
        }
        info!("serving through io_uring");
    }
}

/// A ring entry's buffers: the kernel keeps their addresses from REGISTER on.
struct Ent {
    /// The kernel queue (CPU) this entry belongs to.
    qid: u16,
    header: Box<[u8]>,
    payload: Box<[u8]>,
    iov: Box<[libc::iovec; 2]>,
}

struct Queue<'d> {
    ring: Ring,
    /// The first of the queues this thread serves, for logs.
    qid: u16,
    dev: &'d OwnedFd,
    ents: Vec<Ent>,
    handoff: bool,
}

impl<'d> Queue<'d> {
    fn new(ring: Ring, qids: &[u16], dev: &'d OwnedFd, handoff: bool) -> io::Result<Queue<'d>> {
        let mut cpus = rustix::thread::CpuSet::new();
        for q in qids {
            cpus.set(*q as usize);
        }
        // The thread serves the requests of these CPUs; answering them there is the point.
        // An offline CPU's queue still needs entries, pinned or not.
        let qid = qids[0];
        if let Err(e) = rustix::thread::sched_setaffinity(None, &cpus) {
            debug!(queue = qid, error = %e, "not pinned");
        }
        let depth = depth_for(possible_cpus().unwrap_or(1));
        let ents = qids
            .iter()
            .flat_map(|q| std::iter::repeat_n(*q, depth))
            .map(|qid| {
                let mut header = vec![0u8; frame::HEADER_LEN].into_boxed_slice();
                let mut payload = vec![0u8; MAX_PAYLOAD as usize].into_boxed_slice();
                let iov = Box::new([
                    libc::iovec {
                        iov_base: header.as_mut_ptr().cast(),
                        iov_len: header.len(),
                    },
                    libc::iovec {
                        iov_base: payload.as_mut_ptr().cast(),
                        iov_len: payload.len(),
                    },
                ]);
                Ent {
                    qid,
                    header,
                    payload,
                    iov,
                }
            })
            .collect();
        Ok(Queue {
            ring,
            qid,
            dev,
            ents,
            handoff,
        })
    }

    /// Send the replies queued so far. The kernel wakes each caller while this thread is
    /// still running on the caller's CPU, so the scheduler sees that CPU busy and wakes the
    /// caller on another, idle one: a caller that sends its next request at once (tar, rm,
    /// a package manager) then moves between CPUs on almost every request, and waking an
    /// idle CPU is what a round trip costs most on VMs (65,000 migrations for 90,000
    /// requests in an untar). With `handoff` the thread is SCHED_IDLE just while it sends
    /// them, which the scheduler counts as an idle CPU, so the caller stays and runs at
    /// once; the thread takes its policy back before it waits for the next request. Two
    /// system calls (3 us) per wakeup: worth it where requests come in such chains
    /// (writable mounts: untar 3.08 -> 1.68 s), not on cold reads that wait for the disk
    /// (100,000 small files 4.2 -> 4.7 s), hence the default. Only where SCHED_OTHER can be
    /// taken back ([`can_leave_idle`]: not without CAP_SYS_NICE).
    fn commit(&mut self) -> io::Result<()> {
        if !self.handoff {
            return Ok(());
        }
        set_policy(libc::SCHED_IDLE);
        let r = self.ring.submit();
        if !set_policy(libc::SCHED_OTHER) {
            warn!(
                queue = self.qid,
                "cannot leave SCHED_IDLE: no more handoffs"
            );
            self.handoff = false;
        }
        r.map(drop)
    }

    fn push(&mut self, i: usize, cmd: u32, commit_id: u64) -> io::Result<()> {
        let sqe = opcode::UringCmd80::new(types::Fd(self.dev.as_raw_fd()), cmd)
            .cmd(frame::cmd_req(commit_id, self.ents[i].qid))
            .addr(Some(self.ents[i].iov.as_ptr() as u64))
            .build()
            .user_data(i as u64);
        let sqe = with_len(sqe, 2);
        // SAFETY: the iovecs and the buffers they name live in `self.ents` as long as the
        // ring (the kernel drops its references when the ring is closed first: field order).
        unsafe { self.ring.submission().push(&sqe) }
            .map_err(|_| io::Error::other("submission queue full"))
    }

    fn run(mut self, fs: &Session, notify: &Sender<Stale>) -> io::Result<()> {
        for i in 0..self.ents.len() {
            self.push(i, frame::CMD_REGISTER, 0)?;
        }
        let mut live = self.ents.len();
        let mut served = 0u64;
        let mut stale = Stale::default();
        while live > 0 {
            if served > 0 {
                self.commit()?;
            }
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => return Err(e),
            }
            // At most the queue's depth completes at once: no allocation per wakeup.
            let done: smallvec::SmallVec<[(usize, i32); 16]> = self
                .ring
                .completion()
                .map(|c| (c.user_data() as usize, c.result()))
                .collect();
            for (i, res) in done {
                if res == -libc::EAGAIN {
                    // INIT's reply has not reached the kernel yet.
                    thread::sleep(Duration::from_millis(1));
                    self.push(i, frame::CMD_REGISTER, 0)?;
                    continue;
                }
                if res < 0 {
                    // ENOTCONN / ECANCELED: the mount is gone.
                    if res != -libc::ENOTCONN && res != -libc::ECANCELED {
                        warn!(queue = self.qid, error = %io::Error::from_raw_os_error(-res), "ring entry ended");
                    }
                    live -= 1;
                    continue;
                }
                let ent = &mut self.ents[i];
                let commit = frame::commit_id(&ent.header);
                if let Some(st) = fs.stats() {
                    st.ring_request();
                }
                let opcode = InHeader::parse(&ent.header).opcode;
                frame::answer(fs, &mut ent.header, &mut ent.payload);
                if fs.may_stale(opcode) {
                    if let Some(s) = fs.settle_stale() {
                        stale.entries.extend(s.entries);
                    }
                }
                served += 1;
                self.push(i, frame::CMD_COMMIT_AND_FETCH, commit)?;
            }
            if !stale.entries.is_empty() {
                // After the replies are on their way.
                self.ring.submit()?;
                let _ = notify.send(std::mem::take(&mut stale));
            }
        }
        debug!(queue = self.qid, served, "io_uring queue done");
        Ok(())
    }
}

/// Set this thread's scheduling policy (priority 0, the only one these policies take).
fn set_policy(policy: i32) -> bool {
    let p = libc::sched_param { sched_priority: 0 };
    // SAFETY: a plain system call about the calling thread.
    if unsafe { libc::sched_setscheduler(0, policy, &p) } != 0 {
        debug!(error = %io::Error::last_os_error(), policy, "scheduling policy unchanged");
        return false;
    }
    true
}

/// Whether a thread of this process may take SCHED_OTHER back after SCHED_IDLE: that needs
/// CAP_SYS_NICE or an RLIMIT_NICE of 20, which an unprivileged (rootless) daemon lacks, and a
/// ring thread would then stay idle for good. Tried on a scratch thread, the only one that
/// stays idle if not.
fn can_leave_idle() -> bool {
    let ok = thread::Builder::new()
        .name("handoff-probe".into())
        .spawn(|| set_policy(libc::SCHED_IDLE) && set_policy(libc::SCHED_OTHER))
        .ok()
        .and_then(|t| t.join().ok())
        .unwrap_or(false);
    if !ok {
        debug!("no handoff: SCHED_IDLE could not be left again (no CAP_SYS_NICE)");
    }
    ok
}

/// io-uring's URING_CMD builder has no `len`; FUSE wants the iovec count there.
fn with_len(sqe: squeue::Entry128, len: u32) -> squeue::Entry128 {
    // SAFETY: Entry128 is repr(C): a 64-byte io_uring_sqe, then 64 command bytes. `len` is
    // the u32 at byte 24 of io_uring_sqe in the kernel ABI.
    let mut raw: [u8; 128] = unsafe { std::mem::transmute(sqe) };
    raw[24..28].copy_from_slice(&len.to_le_bytes());
    // SAFETY: the same 128 bytes back; any bit pattern is a valid sqe.
    unsafe { std::mem::transmute::<[u8; 128], squeue::Entry128>(raw) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_queue_is_served_once_by_few_threads() {
        for cpus in [1, 2, 3, 8, 9, 64, 255] {
            let threads = cpus.min(RING_THREADS);
            let all: Vec<u16> = (0..threads)
                .flat_map(|t| qids_of(t, threads, cpus))
                .collect();
            assert_eq!(all, (0..cpus as u16).collect::<Vec<_>>(), "{cpus} CPUs");
            assert!((0..threads).all(|t| !qids_of(t, threads, cpus).is_empty()));
        }
        assert_eq!(depth_for(2), 4);
        assert_eq!(depth_for(64), 1);
    }
}
