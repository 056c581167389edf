//! The results channel: the guest writes the guest-physical address of a
//! record (header + payload) to `abi::RESULTS_PORT`; we read it whole.
//!
//! Everything in the record comes from the guest, so every field is checked
//! and every read goes through vm-memory's bounds-checked accessors: a buggy
//! or hostile guest gets a rejected record, never a VMM crash.
use crate::abi;
use crate::memory::GuestMemory;
use vm_memory::{Bytes, GuestAddress};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    Json,
    Console,
    /// An `abi::PtWalkRequest`, answered on the vCPU's exit (`ptwalk`).
    PtWalk,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    #[error("record header at {0:#x} is outside guest RAM")]
    HeaderOutside(u64),
    #[error(
        "record at {gpa:#x} has magic {found:#x}, expected {:#x}",
        abi::RECORD_MAGIC
    )]
    BadMagic { gpa: u64, found: u32 },
    #[error("record at {gpa:#x} has unknown kind {kind} (valid: 1 json, 2 console, 3 ptwalk)")]
    BadKind { gpa: u64, kind: u32 },
    #[error(
        "record at {gpa:#x} claims {len} bytes; at most {} are accepted",
        abi::RECORD_MAX_LEN
    )]
    TooLong { gpa: u64, len: u32 },
    #[error("record payload at {gpa:#x} ({len} bytes) runs outside guest RAM")]
    PayloadOutside { gpa: u64, len: u32 },
}

pub fn read_record(mem: &GuestMemory, gpa: u64) -> Result<(RecordKind, Vec<u8>), RecordError> {
    let mut hdr = [0u8; abi::RECORD_HEADER_LEN as usize];
    mem.read_slice(&mut hdr, GuestAddress(gpa))
        .map_err(|_| RecordError::HeaderOutside(gpa))?;
    let word = |i: usize| u32::from_le_bytes(hdr[4 * i..4 * i + 4].try_into().expect("4 bytes"));
    let (magic, kind, len) = (word(0), word(1), word(2));
    if magic != abi::RECORD_MAGIC {
        return Err(RecordError::BadMagic { gpa, found: magic });
    }
    let kind = match kind {
        abi::RECORD_JSON => RecordKind::Json,
        abi::RECORD_CONSOLE => RecordKind::Console,
        abi::RECORD_PTWALK => RecordKind::PtWalk,
        kind => return Err(RecordError::BadKind { gpa, kind }),
    };
    if len > abi::RECORD_MAX_LEN {
        return Err(RecordError::TooLong { gpa, len });
    }
    let mut payload = vec![0u8; len as usize];
    let start = gpa
        .checked_add(abi::RECORD_HEADER_LEN as u64)
        .ok_or(RecordError::PayloadOutside { gpa, len })?;
    mem.read_slice(&mut payload, GuestAddress(start))
        .map_err(|_| RecordError::PayloadOutside { gpa, len })?;
    Ok((kind, payload))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::GuestRam;
    use proptest::prelude::*;

    fn put(mem: &GuestMemory, gpa: u64, words: [u32; 4], payload: &[u8]) {
        for (i, w) in words.iter().enumerate() {
            mem.write_obj(*w, GuestAddress(gpa + 4 * i as u64)).unwrap();
        }
        mem.write_slice(payload, GuestAddress(gpa + 16)).unwrap();
    }

    #[test]
    fn good_record_is_read_whole() {
        let ram = GuestRam::new(16 << 20).unwrap();
        let m = ram.memory();
        put(
            m,
            0x1000,
            [abi::RECORD_MAGIC, abi::RECORD_JSON, 7, 0],
            b"{\"a\":1}",
        );
        assert_eq!(
            read_record(m, 0x1000),
            Ok((RecordKind::Json, b"{\"a\":1}".to_vec()))
        );
    }

    #[test]
    fn bad_records_are_rejected() {
        let ram = GuestRam::new(16 << 20).unwrap();
        let m = ram.memory();
        let end = 16u64 << 20;
        put(m, 0x2000, [0x1234, abi::RECORD_JSON, 1, 0], b"x");
        assert_eq!(
            read_record(m, 0x2000),
            Err(RecordError::BadMagic {
                gpa: 0x2000,
                found: 0x1234
            })
        );
        put(m, 0x3000, [abi::RECORD_MAGIC, 9, 1, 0], b"x");
        assert_eq!(
            read_record(m, 0x3000),
            Err(RecordError::BadKind {
                gpa: 0x3000,
                kind: 9
            })
        );
        put(m, 0x4000, [abi::RECORD_MAGIC, 1, u32::MAX, 0], b"x");
        assert!(matches!(
            read_record(m, 0x4000),
            Err(RecordError::TooLong { .. })
        ));
        assert_eq!(
            read_record(m, end - 8),
            Err(RecordError::HeaderOutside(end - 8))
        );
        put(m, end - 32, [abi::RECORD_MAGIC, 1, 1000, 0], b"");
        assert!(matches!(
            read_record(m, end - 32),
            Err(RecordError::PayloadOutside { .. })
        ));
        assert_eq!(
            read_record(m, 0xffff_ffff),
            Err(RecordError::HeaderOutside(0xffff_ffff))
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// Whatever the guest puts in memory and whatever address it names,
        /// reading never panics and never returns more than the cap.
        #[test]
        fn hostile_records_never_panic(gpa in any::<u32>(), words in any::<[u32; 4]>(), magic_ok in any::<bool>()) {
            let ram = GuestRam::new(16 << 20).unwrap();
            let m = ram.memory();
            let at = (gpa as u64) % (16 << 20);
            let mut w = words;
            if magic_ok { w[0] = abi::RECORD_MAGIC; }
            for (i, v) in w.iter().enumerate() {
                let _ = m.write_obj(*v, GuestAddress(at + 4 * i as u64));
            }
            if let Ok((_, p)) = read_record(m, gpa as u64) {
                prop_assert!(p.len() <= abi::RECORD_MAX_LEN as usize);
            }
        }
    }
}
