//! The message redo log: what makes a message-only group commit durable without an `fsync`
//! of SQLite's WAL (docs/design-embedded-message-log.md, "built: the redo-log variant").
//!
//! A group commit that only appends messages writes their rows into SQLite as before, then
//! appends one record per new message to this file with one `pwrite` and one `fdatasync`,
//! and only then COMMITs the SQLite transaction with `synchronous=OFF` (the WAL frames reach
//! the page cache, not the disk). So a message is durable (in this file) before any reader
//! can see it and before its ack, as with `synchronous=FULL` — but the synchronous write is
//! one sequential append shared by the whole commit instead of the ~9 WAL pages the commit
//! dirtied (measured: 2.4 pages per 1:1 message).
//!
//! The file is pre-written with zeros, so an append changes no file metadata and
//! `fdatasync` writes only the appended pages. A record is
//! `len u32 | crc32 u32 | payload` (little endian); a zero `len` or a wrong CRC ends the log.
//! The writer starts again from offset 0 whenever everything written so far is durable in
//! SQLite itself: after a `synchronous=FULL` commit (it fsyncs the WAL) or a checkpoint that
//! copied the whole WAL into the database file (checkpoints run with `synchronous=FULL`,
//! which syncs the database before they count as done). Bytes after the current position may
//! be records of earlier rounds; every one of those is in SQLite already.
//!
//! At start the store replays every valid record from offset 0 with `INSERT OR IGNORE`:
//! a record whose `(chat_id, seq)` row exists is skipped, one that SQLite lost (power loss
//! after the append, before the OS wrote the WAL) is put back. This relies on message rows
//! never being deleted or replaced (true today; a retention or delete feature must log its
//! deletions too).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// The log's file name inside the data directory.
pub const FILE: &str = "messages.log";
/// Bytes pre-written. At 40,000 msg/s of 200-byte records the writer resets about every
/// second (after each checkpoint), using ~8 MiB; a full log falls back to a synchronous
/// SQLite commit, which also resets it.
pub const SIZE: u64 = 32 << 20;
const HEADER: usize = 8;
const VERSION: u8 = 1;
const NONE: u32 = u32::MAX;

/// One message as logged (the `messages` row).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub chat_id: u64,
    pub seq: u64,
    pub sender_id: u64,
    pub created_at: i64,
    pub message_id: String,
    pub content: String,
    pub media_url: Option<String>,
    /// The media JSON as stored in the row.
    pub media: Option<String>,
    pub client_msg_id: Option<String>,
}

/// The same, borrowed (what the writer encodes without copying).
pub struct RecordRef<'a> {
    pub chat_id: u64,
    pub seq: u64,
    pub sender_id: u64,
    pub created_at: i64,
    pub message_id: &'a str,
    pub content: &'a str,
    pub media_url: Option<&'a str>,
    pub media: Option<&'a str>,
    pub client_msg_id: Option<&'a str>,
}

/// Append one framed record to `out`.
pub fn encode(out: &mut Vec<u8>, r: &RecordRef<'_>) {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER]);
    out.push(VERSION);
    for v in [r.chat_id, r.seq, r.sender_id, r.created_at as u64] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    put_str(out, Some(r.message_id));
    put_str(out, Some(r.content));
    put_str(out, r.media_url);
    put_str(out, r.media);
    put_str(out, r.client_msg_id);
    let payload = &out[start + HEADER..];
    let len = payload.len() as u32;
    let crc = crc32fast::hash(payload);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => {
            out.extend_from_slice(&(s.len() as u32).to_le_bytes());
            out.extend_from_slice(s.as_bytes());
        }
        None => out.extend_from_slice(&NONE.to_le_bytes()),
    }
}

/// Every valid record from the start of `bytes`, up to the first zero length, bad CRC or
/// truncated frame (a torn append: its `fdatasync` never returned, so it was never acked).
pub fn decode_all(bytes: &[u8]) -> Vec<Record> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while bytes.len() - at >= HEADER {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().expect("4 bytes"));
        if len == 0 || len > bytes.len() - at - HEADER {
            break;
        }
        let payload = &bytes[at + HEADER..at + HEADER + len];
        if crc32fast::hash(payload) != crc {
            break;
        }
        match decode_payload(payload) {
            Some(r) => out.push(r),
            None => break,
        }
        at += HEADER + len;
    }
    out
}

fn decode_payload(p: &[u8]) -> Option<Record> {
    let mut c = Cursor(p);
    if c.take(1)?[0] != VERSION {
        return None;
    }
    let chat_id = c.u64()?;
    let seq = c.u64()?;
    let sender_id = c.u64()?;
    let created_at = c.u64()? as i64;
    let record = Record {
        chat_id,
        seq,
        sender_id,
        created_at,
        message_id: c.string()??,
        content: c.string()??,
        media_url: c.string()?,
        media: c.string()?,
        client_msg_id: c.string()?,
    };
    c.0.is_empty().then_some(record)
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    /// `None` if malformed; `Some(None)` for an absent optional string.
    fn string(&mut self) -> Option<Option<String>> {
        let len = self.u32()?;
        if len == NONE {
            return Some(None);
        }
        let bytes = self.take(len as usize)?;
        Some(Some(String::from_utf8(bytes.to_vec()).ok()?))
    }
}

/// Read the records a previous run left (none if there is no file).
pub fn read(path: &Path) -> io::Result<Vec<Record>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(decode_all(&bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// Why an append did not make the records durable.
#[derive(Debug)]
pub enum AppendError {
    /// No room before the end of the file; nothing was written.
    Full,
    /// The write or the sync failed; part of it may be in the file at `at`.
    Io { at: u64, cause: io::Error },
}

/// The open log, written from `pos`.
pub struct MessageLog {
    file: File,
    path: PathBuf,
    pos: u64,
    size: u64,
}

impl MessageLog {
    /// Open (creating and pre-writing it if needed) and start from offset 0 with an empty log.
    /// Call only once the records [`read`] returned are durable in SQLite.
    pub fn create(path: &Path) -> io::Result<Self> {
        Self::create_sized(path, SIZE)
    }

    pub fn create_sized(path: &Path, size: u64) -> io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let len = file.metadata()?.len();
        if len < size {
            // Real zeros, not fallocate: an append into an unwritten extent would change
            // extent metadata, and fdatasync would have to journal it.
            let zeros = vec![0u8; 1 << 20];
            let mut at = len;
            while at < size {
                let n = (size - at).min(zeros.len() as u64) as usize;
                file.write_all_at(&zeros[..n], at)?;
                at += n as u64;
            }
        }
        // An empty log: whatever follows offset 0 is durable in SQLite already.
        file.write_all_at(&[0u8; HEADER], 0)?;
        file.sync_all()?;
        if let Some(dir) = path.parent() {
            // The file's directory entry, for a log created just now.
            File::open(dir)?.sync_all()?;
        }
        Ok(MessageLog {
            file,
            path: path.to_path_buf(),
            pos: 0,
            size: len.max(size),
        })
    }

    /// Bytes written since the last reset.
    pub fn used(&self) -> u64 {
        self.pos
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Write `records` (framed by [`encode`]) at the current position and `fdatasync`.
    pub fn append(&mut self, records: &[u8]) -> Result<(), AppendError> {
        let at = self.pos;
        if at + records.len() as u64 > self.size {
            return Err(AppendError::Full);
        }
        let io = |cause| AppendError::Io { at, cause };
        self.file.write_all_at(records, at).map_err(io)?;
        self.file.sync_data().map_err(io)?;
        self.pos += records.len() as u64;
        Ok(())
    }

    /// Undo an append whose SQLite commit failed: zero `len` bytes at `at` (so a restart does
    /// not replay messages that were answered with an error) and write from `at` again.
    pub fn invalidate(&mut self, at: u64, len: u64) -> io::Result<()> {
        let len = len.min(self.size.saturating_sub(at));
        let zeros = vec![0u8; len.min(1 << 20) as usize];
        let mut off = at;
        while off < at + len {
            let n = (at + len - off).min(zeros.len() as u64) as usize;
            self.file.write_all_at(&zeros[..n], off)?;
            off += n as u64;
        }
        self.file.sync_data()?;
        self.pos = self.pos.min(at);
        Ok(())
    }

    /// Everything logged so far is durable in SQLite: write from the start again. A crash
    /// before the next append replays records SQLite has (skipped).
    pub fn reset(&mut self) {
        self.pos = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(chat_id: u64, seq: u64, content: &str, cid: Option<&str>) -> Record {
        Record {
            chat_id,
            seq,
            sender_id: 7,
            created_at: 1_700_000_000_000 + seq as i64,
            message_id: format!("m-{chat_id}-{seq}"),
            content: content.to_string(),
            media_url: None,
            media: seq
                .is_multiple_of(2)
                .then(|| r#"{"kind":"image"}"#.to_string()),
            client_msg_id: cid.map(str::to_string),
        }
    }

    fn enc(out: &mut Vec<u8>, r: &Record) {
        encode(
            out,
            &RecordRef {
                chat_id: r.chat_id,
                seq: r.seq,
                sender_id: r.sender_id,
                created_at: r.created_at,
                message_id: &r.message_id,
                content: &r.content,
                media_url: r.media_url.as_deref(),
                media: r.media.as_deref(),
                client_msg_id: r.client_msg_id.as_deref(),
            },
        );
    }

    #[test]
    fn records_round_trip_and_a_torn_tail_ends_the_log() {
        let recs = vec![
            rec(1, 1, "hello", Some("c1")),
            rec(1, 2, "", None),
            rec(2, 1, "ünïcode ✓ and a \0 byte", Some("")),
        ];
        let mut buf = Vec::new();
        recs.iter().for_each(|r| enc(&mut buf, r));
        assert_eq!(decode_all(&buf), recs);
        // A torn last record (cut anywhere inside it) is not returned; the ones before are.
        let whole = buf.len();
        let mut last = Vec::new();
        enc(&mut last, &recs[2]);
        for cut in (whole - last.len() + 1)..whole {
            assert_eq!(decode_all(&buf[..cut]), recs[..2], "cut at {cut}");
        }
        // A flipped bit in a record ends the log there.
        let mut bad = buf.clone();
        bad[whole - 3] ^= 0x10;
        assert_eq!(decode_all(&bad), recs[..2]);
        // Zeros after the records (the pre-written file) end it too.
        buf.extend_from_slice(&[0; 64]);
        assert_eq!(decode_all(&buf), recs);
    }

    #[test]
    fn appends_reset_invalidate_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        let mut log = MessageLog::create_sized(&path, 4096).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 4096);
        assert!(read(&path).unwrap().is_empty());

        let (a, b, c) = (
            rec(1, 1, "a", None),
            rec(1, 2, "b", None),
            rec(1, 3, "c", None),
        );
        let mut buf = Vec::new();
        enc(&mut buf, &a);
        enc(&mut buf, &b);
        log.append(&buf).unwrap();
        assert_eq!(read(&path).unwrap(), vec![a.clone(), b.clone()]);

        // A failed commit's records are zeroed: a restart does not replay them.
        let at = log.used();
        let mut more = Vec::new();
        enc(&mut more, &c);
        log.append(&more).unwrap();
        assert_eq!(read(&path).unwrap().len(), 3);
        log.invalidate(at, more.len() as u64).unwrap();
        assert_eq!(read(&path).unwrap(), vec![a.clone(), b.clone()]);
        assert_eq!(log.used(), at);

        // After a reset the next append overwrites from the start.
        log.reset();
        let mut one = Vec::new();
        enc(&mut one, &c);
        log.append(&one).unwrap();
        assert_eq!(read(&path).unwrap()[0], c);

        // Full: nothing is written.
        let big = vec![1u8; 5000];
        assert!(matches!(log.append(&big), Err(AppendError::Full)));
        assert_eq!(read(&path).unwrap()[0], c);

        // Reopening starts an empty log (the caller replayed what `read` returned first).
        drop(log);
        let log = MessageLog::create_sized(&path, 4096).unwrap();
        assert_eq!(log.used(), 0);
        assert!(read(&path).unwrap().is_empty());
    }
}
