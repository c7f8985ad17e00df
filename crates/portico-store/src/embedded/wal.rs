//! The embedded backend's write-ahead log (`<database>-wal`, next to the database file).
//!
//! Why: a durable redb commit rewrites B-tree pages all over the file before its fsync, which
//! costs several milliseconds here; appending one record to a log and `fdatasync`ing it costs
//! a fraction of that (etcd does the same with its WAL). So each group commit appends the
//! batch's transactions here and syncs, then commits to redb without a sync. A checkpoint (a
//! durable redb commit) every few seconds or megabytes lets the log start over. On open, the
//! records the database does not have yet are applied again.
//!
//! Record: `len: u32 LE | crc32(payload): u32 LE | payload`. A torn or corrupt tail (a batch
//! that was never acknowledged) ends the log.
//! Must not: decide what a transaction does; it only records the ops of committed ones.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::internal;
use crate::{Error, Op, Result, Revision};

/// One logged change, in commit order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum WalEntry {
    /// A writing transaction that got `revision`, with its ops as submitted.
    Txn { revision: Revision, ops: Vec<Op> },
    /// The logical compaction moved to this revision.
    Compact(Revision),
}

pub(crate) struct Wal {
    file: File,
    len: u64,
}

/// `store.redb` → `store.redb-wal`.
pub(crate) fn wal_path(db_path: &Path) -> PathBuf {
    let mut name = db_path.as_os_str().to_owned();
    name.push("-wal");
    PathBuf::from(name)
}

impl Wal {
    /// Opens (or creates) the log and returns the entries of its valid records.
    pub(crate) fn open(path: &Path) -> Result<(Self, Vec<WalEntry>)> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(internal)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(internal)?;
        let mut entries = Vec::new();
        let mut offset = 0usize;
        while let Some((payload, next)) = next_record(&bytes, offset) {
            match decode_payload(payload) {
                Ok(decoded) => entries.extend(decoded),
                Err(_) => break,
            }
            offset = next;
        }
        let len = offset as u64;
        if len < bytes.len() as u64 {
            // Drop the torn tail so later appends are not followed by stale bytes.
            file.set_len(len).map_err(internal)?;
        }
        Ok((Self { file, len }, entries))
    }

    /// Appends one record whose payload follows the [`RECORD_HEADER`] bytes `record` starts
    /// with (see [`new_record`]); the header is filled in here, so the payload is never copied.
    /// With `sync`, it is on disk when this returns.
    pub(crate) fn append(&mut self, record: &mut [u8], sync: bool) -> Result<()> {
        let payload_len = record.len().saturating_sub(RECORD_HEADER);
        let len = u32::try_from(payload_len)
            .map_err(|_| Error::Internal("write-ahead log record too large".to_string()))?;
        let crc = crc32(&record[RECORD_HEADER..]);
        record[0..4].copy_from_slice(&len.to_le_bytes());
        record[4..8].copy_from_slice(&crc.to_le_bytes());
        self.file.write_all_at(record, self.len).map_err(internal)?;
        if sync {
            self.file.sync_data().map_err(internal)?;
        }
        self.len += record.len() as u64;
        Ok(())
    }

    /// Empties the log once the database holds everything in it (after a durable commit).
    pub(crate) fn reset(&mut self) -> Result<()> {
        self.file.set_len(0).map_err(internal)?;
        // Make the truncation durable so old records can never reappear behind new ones.
        self.file.sync_data().map_err(internal)?;
        self.len = 0;
        Ok(())
    }

    pub(crate) fn len(&self) -> u64 {
        self.len
    }
}

/// Bytes before a record's payload: its length and checksum.
pub(crate) const RECORD_HEADER: usize = 8;

/// A record buffer with room for the header; encoders append the payload after it.
pub(crate) fn new_record() -> Vec<u8> {
    vec![0; RECORD_HEADER]
}

/// The payload at `offset` and the offset after it, if a whole, intact record is there.
fn next_record(bytes: &[u8], offset: usize) -> Option<(&[u8], usize)> {
    let header = bytes.get(offset..offset.checked_add(8)?)?;
    let len = u32::from_le_bytes(header[0..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(header[4..8].try_into().ok()?);
    let start = offset + 8;
    let end = start.checked_add(len)?;
    let payload = bytes.get(start..end)?;
    (len > 0 && crc32(payload) == crc).then_some((payload, end))
}

pub(crate) fn encode_txn(out: &mut Vec<u8>, revision: Revision, ops: &[Op]) {
    out.push(1);
    out.extend_from_slice(&revision.to_le_bytes());
    out.extend_from_slice(&(ops.len() as u32).to_le_bytes());
    for op in ops {
        match op {
            Op::Put(key, value) => {
                out.push(1);
                push_bytes(out, key.as_bytes());
                push_bytes(out, value);
            }
            Op::Delete(key) => {
                out.push(2);
                push_bytes(out, key.as_bytes());
            }
        }
    }
}

pub(crate) fn encode_compact(out: &mut Vec<u8>, revision: Revision) {
    out.push(2);
    out.extend_from_slice(&revision.to_le_bytes());
}

fn push_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .at
            .checked_add(n)
            .filter(|end| *end <= self.bytes.len());
        let end =
            end.ok_or_else(|| Error::Internal("truncated write-ahead log entry".to_string()))?;
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().map_err(internal)?,
        ))
    }
    fn i64(&mut self) -> Result<i64> {
        Ok(i64::from_le_bytes(
            self.take(8)?.try_into().map_err(internal)?,
        ))
    }
    fn bytes(&mut self) -> Result<&'a [u8]> {
        let len = self.u32()? as usize;
        self.take(len)
    }
    fn string(&mut self) -> Result<String> {
        let bytes = self.bytes()?;
        String::from_utf8(bytes.to_vec()).map_err(internal)
    }
}

pub(crate) fn decode_payload(payload: &[u8]) -> Result<Vec<WalEntry>> {
    let mut reader = Reader {
        bytes: payload,
        at: 0,
    };
    let mut entries = Vec::new();
    while reader.at < payload.len() {
        match reader.u8()? {
            1 => {
                let revision = reader.i64()?;
                let count = reader.u32()?;
                let mut ops = Vec::with_capacity(count.min(1024) as usize);
                for _ in 0..count {
                    match reader.u8()? {
                        1 => {
                            let key = reader.string()?;
                            let value = Bytes::copy_from_slice(reader.bytes()?);
                            ops.push(Op::Put(key, value));
                        }
                        2 => ops.push(Op::Delete(reader.string()?)),
                        other => {
                            return Err(Error::Internal(format!("unknown logged op {other}")));
                        }
                    }
                }
                entries.push(WalEntry::Txn { revision, ops });
            }
            2 => entries.push(WalEntry::Compact(reader.i64()?)),
            other => return Err(Error::Internal(format!("unknown log entry {other}"))),
        }
    }
    Ok(entries)
}

/// CRC-32 (IEEE, reflected), as zlib and Go's `hash/crc32` compute it.
fn crc32(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn records_round_trip_and_a_torn_tail_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x-wal");
        let entries = vec![
            WalEntry::Txn {
                revision: 2,
                ops: vec![
                    Op::Put("a".into(), Bytes::from_static(b"1")),
                    Op::Delete("b".into()),
                ],
            },
            WalEntry::Compact(2),
        ];
        {
            let (mut wal, existing) = Wal::open(&path).unwrap();
            assert!(existing.is_empty());
            let mut payload = new_record();
            encode_txn(
                &mut payload,
                2,
                &[
                    Op::Put("a".into(), Bytes::from_static(b"1")),
                    Op::Delete("b".into()),
                ],
            );
            encode_compact(&mut payload, 2);
            wal.append(&mut payload, true).unwrap();
            let mut second = new_record();
            encode_txn(
                &mut second,
                3,
                &[Op::Put("c".into(), Bytes::from_static(b"3"))],
            );
            wal.append(&mut second, true).unwrap();
        }
        // Cut the last record in half: only the first one survives.
        let full = std::fs::read(&path).unwrap();
        std::fs::write(&path, &full[..full.len() - 5]).unwrap();
        let (wal, read) = Wal::open(&path).unwrap();
        assert_eq!(read, entries);
        assert!(wal.len() < full.len() as u64);
        // A flipped byte fails the checksum.
        let mut corrupt = full.clone();
        corrupt[10] ^= 0xff;
        std::fs::write(&path, &corrupt).unwrap();
        assert!(Wal::open(&path).unwrap().1.is_empty());
    }
}
