//! Where a request and its reply sit in a ring entry's buffers (`struct
//! fuse_uring_req_header` and the payload buffer), and answering one in place.

use crate::mount::session::{Reply, Session};
use crate::mount::wire::{self, InHeader, op, u32_at, u64_at};

/// `fuse_uring_cmd` commands (the SQE's `cmd_op`).
pub const CMD_REGISTER: u32 = 1;
pub const CMD_COMMIT_AND_FETCH: u32 = 2;

/// `struct fuse_uring_req_header`: `in_out[128]` (the `fuse_in_header`, then the
/// `fuse_out_header` of the reply), `op_in[128]` (the opcode's fixed argument),
/// `struct fuse_uring_ent_in_out` (32 bytes).
pub const HEADER_LEN: usize = 128 + 128 + 32;
const OP_IN: usize = 128;
const ENT_COMMIT_ID: usize = 256 + 8;
const ENT_PAYLOAD_SZ: usize = 256 + 16;

/// The opcode's fixed argument (`op_in`).
pub fn op_in(header: &[u8]) -> &[u8] {
    &header[OP_IN..OP_IN + 128]
}

/// The request's id, to name it in COMMIT_AND_FETCH.
pub fn commit_id(header: &[u8]) -> u64 {
    u64_at(header, ENT_COMMIT_ID)
}

/// How many payload bytes the kernel copied in.
pub fn payload_len(header: &[u8]) -> usize {
    u32_at(header, ENT_PAYLOAD_SZ) as usize
}

/// Write the reply's `fuse_out_header` and payload size into the entry's header buffer.
pub fn set_reply(header: &mut [u8], unique: u64, error: i32, payload: usize) {
    header[..wire::OUT_HEADER_LEN].copy_from_slice(&wire::out_header(unique, error, payload));
    header[ENT_PAYLOAD_SZ..ENT_PAYLOAD_SZ + 4].copy_from_slice(&(payload as u32).to_le_bytes());
}

/// The 24-byte `struct fuse_uring_cmd_req` in the SQE's command area.
pub fn cmd_req(commit_id: u64, qid: u16) -> [u8; 80] {
    let mut c = [0u8; 80];
    c[8..16].copy_from_slice(&commit_id.to_le_bytes());
    c[16..18].copy_from_slice(&qid.to_le_bytes());
    c
}

/// Answer the request in `header`/`payload` and leave the reply there.
pub fn answer(s: &Session, header: &mut [u8], payload: &mut [u8]) {
    let h = InHeader::parse(header);
    let mut fixed = [0u8; 128];
    fixed.copy_from_slice(op_in(header));
    let n = payload_len(header).min(payload.len());
    let r = if h.opcode == op::WRITE {
        // The data is read in place; the 8-byte reply overwrites it afterwards.
        let mut small = [0u8; 16];
        let r = s.serve(&h, &fixed, &payload[..n], &mut small);
        if let Reply::Data(len) = r {
            payload[..len].copy_from_slice(&small[..len]);
        }
        r
    } else {
        // Arguments in the payload (names) are copied out before the reply overwrites it.
        let args: smallvec::SmallVec<[u8; 256]> = smallvec::SmallVec::from_slice(&payload[..n]);
        s.serve(&h, &fixed, &args, payload)
    };
    match r {
        Reply::Data(len) => set_reply(header, h.unique, 0, len),
        Reply::Error(e) => set_reply(header, h.unique, -e, 0),
        // Forgets never come through a ring; an empty reply keeps the entry going.
        Reply::None => set_reply(header, h.unique, 0, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_header_fields() {
        let mut h = vec![0u8; HEADER_LEN];
        h[4..8].copy_from_slice(&op::LOOKUP.to_le_bytes());
        h[8..16].copy_from_slice(&77u64.to_le_bytes());
        h[16..24].copy_from_slice(&1u64.to_le_bytes());
        h[24..28].copy_from_slice(&1000u32.to_le_bytes());
        h[ENT_COMMIT_ID..ENT_COMMIT_ID + 8].copy_from_slice(&77u64.to_le_bytes());
        h[ENT_PAYLOAD_SZ..ENT_PAYLOAD_SZ + 4].copy_from_slice(&4u32.to_le_bytes());
        let r = InHeader::parse(&h);
        assert_eq!(
            (r.opcode, r.unique, r.nodeid, r.uid),
            (op::LOOKUP, 77, 1, 1000)
        );
        assert_eq!((commit_id(&h), payload_len(&h)), (77, 4));
        set_reply(&mut h, 77, -libc::ENOENT, 0);
        assert_eq!(u32_at(&h, 0), 16);
        assert_eq!(u32_at(&h, 4) as i32, -libc::ENOENT);
        assert_eq!(payload_len(&h), 0);
        assert_eq!(&cmd_req(9, 1)[8..18], &[9, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
    }
}
