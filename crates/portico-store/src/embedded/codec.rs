//! Byte layout of the embedded backend's log rows and index values.
//! Must not: touch the database; it only encodes and decodes.

use bytes::Bytes;

use crate::{Error, Result, Revision};

/// What one log row did to its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EntryOp {
    Put = 1,
    Delete = 2,
}

/// One row of the log: a change of one key at one revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LogEntry {
    pub op: EntryOp,
    /// For a put, the revision that created the key (this one for a fresh key). 0 for deletes.
    pub create_revision: Revision,
    /// The mod revision of the version this change replaced; 0 when the key was absent.
    pub prev_mod_revision: Revision,
    pub key: String,
    pub value: Bytes,
}

const HEADER: usize = 1 + 8 + 8 + 4;

pub(crate) fn encode_entry(
    op: EntryOp,
    create_revision: Revision,
    prev_mod_revision: Revision,
    key: &str,
    value: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + key.len() + value.len());
    out.push(op as u8);
    out.extend_from_slice(&create_revision.to_le_bytes());
    out.extend_from_slice(&prev_mod_revision.to_le_bytes());
    // Keys are bounded far below 4 GiB by the API layer; saturate rather than wrap.
    out.extend_from_slice(&u32::try_from(key.len()).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(value);
    out
}

pub(crate) fn decode_entry(bytes: &[u8]) -> Result<LogEntry> {
    let corrupt = || Error::Internal("corrupt log entry".to_string());
    if bytes.len() < HEADER {
        return Err(corrupt());
    }
    let op = match bytes[0] {
        1 => EntryOp::Put,
        2 => EntryOp::Delete,
        _ => return Err(corrupt()),
    };
    let read_i64 = |at: usize| -> Result<i64> {
        let raw: [u8; 8] = bytes[at..at + 8].try_into().map_err(|_| corrupt())?;
        Ok(i64::from_le_bytes(raw))
    };
    let create_revision = read_i64(1)?;
    let prev_mod_revision = read_i64(9)?;
    let raw_len: [u8; 4] = bytes[17..21].try_into().map_err(|_| corrupt())?;
    let key_len = u32::from_le_bytes(raw_len) as usize;
    let key_end = HEADER.checked_add(key_len).ok_or_else(corrupt)?;
    if bytes.len() < key_end {
        return Err(corrupt());
    }
    let key = std::str::from_utf8(&bytes[HEADER..key_end])
        .map_err(|_| corrupt())?
        .to_string();
    Ok(LogEntry {
        op,
        create_revision,
        prev_mod_revision,
        key,
        value: Bytes::copy_from_slice(&bytes[key_end..]),
    })
}

/// History index values pack the row index inside its revision and a delete flag.
const DELETE_FLAG: u64 = 1 << 32;

pub(crate) fn pack_history(index: u32, op: EntryOp) -> u64 {
    let flag = if op == EntryOp::Delete {
        DELETE_FLAG
    } else {
        0
    };
    u64::from(index) | flag
}

pub(crate) fn unpack_history(packed: u64) -> (u32, EntryOp) {
    let op = if packed & DELETE_FLAG != 0 {
        EntryOp::Delete
    } else {
        EntryOp::Put
    };
    ((packed & 0xffff_ffff) as u32, op)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip() {
        let cases = [
            (EntryOp::Put, 3, 0, "/registry/a", &b"value"[..]),
            (EntryOp::Delete, 0, 7, "k", &b""[..]),
            (EntryOp::Put, 9, 8, "", &b"\x00\xff"[..]),
        ];
        for (op, create, prev, key, value) in cases {
            let decoded = decode_entry(&encode_entry(op, create, prev, key, value)).unwrap();
            assert_eq!(decoded.op, op);
            assert_eq!(decoded.create_revision, create);
            assert_eq!(decoded.prev_mod_revision, prev);
            assert_eq!(decoded.key, key);
            assert_eq!(&decoded.value[..], value);
        }
    }

    #[test]
    fn truncated_entries_are_errors_not_panics() {
        let full = encode_entry(EntryOp::Put, 1, 0, "key", b"v");
        for len in 0..full.len() - 1 {
            // Cutting inside the key must fail; cutting the value only shortens it.
            let result = decode_entry(&full[..len]);
            if len < HEADER + 3 {
                assert!(result.is_err(), "len {len}");
            }
        }
        assert!(decode_entry(&[9; 30]).is_err());
    }

    #[test]
    fn history_values_round_trip() {
        for (index, op) in [
            (0, EntryOp::Put),
            (5, EntryOp::Delete),
            (u32::MAX, EntryOp::Put),
        ] {
            assert_eq!(unpack_history(pack_history(index, op)), (index, op));
        }
    }
}
