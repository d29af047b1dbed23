//! The pack record codec: pure functions from bytes to records and back. No I/O.
//!
//! Every record is self-describing and checksummed twice — the header on its own, so a reader
//! can trust `stored_len` before touching the payload, and the payload — and carries a BLAKE3
//! `key` of its plain bytes, so decoding proves content, not just transport. The byte layout is
//! in docs/design.md; any change to it is a format version bump.

use crate::id::ChunkId;

/// Bytes before the payload.
pub const HEADER_LEN: usize = 52;
/// Bytes after the payload (its CRC-32C).
pub const TRAILER_LEN: usize = 4;
/// Framing overhead of one record.
pub const OVERHEAD: usize = HEADER_LEN + TRAILER_LEN;
/// Start of every record; lets a scanner resynchronise after a damaged record.
pub const RECORD_MAGIC: [u8; 4] = *b"TREC";
/// Largest payload a record may declare. Bounds what a hostile or damaged length can make a
/// reader allocate; a 5 GiB file's manifest at the smallest chunk size stays well under it.
pub const MAX_PAYLOAD: u32 = 256 << 20;

/// What a record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RecordKind {
    /// One chunk of file content; `key` is its [`ChunkId`].
    Chunk = 1,
    /// One file version: metadata and its ordered chunk list (see `pack::manifest`).
    Manifest = 2,
    /// A change to a file that is not a new version (delete, undelete, purge, ...).
    Event = 3,
    /// A manifest or event that compaction copied out of a pack it rewrote: its original
    /// position (which orders its replay) and the original record's kind and plain payload
    /// (see [`Moved`]).
    Moved = 4,
}

/// The payload of a [`RecordKind::Moved`] record:
/// `orig_pack u32 | orig_offset u64 | kind u8 | plain payload of the original record`, LE.
///
/// Replay orders manifests and events by their position in commit order; a copy appended
/// later would otherwise be replayed out of order (a version after the purge of its file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Moved<'a> {
    pub orig_pack: u32,
    pub orig_offset: u64,
    pub kind: RecordKind,
    pub plain: &'a [u8],
}

impl<'a> Moved<'a> {
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.orig_pack.to_le_bytes());
        out.extend_from_slice(&self.orig_offset.to_le_bytes());
        out.push(self.kind as u8);
        out.extend_from_slice(self.plain);
    }

    pub fn decode(buf: &'a [u8]) -> Result<Self, String> {
        if buf.len() < 13 {
            return Err("moved record shorter than its header".into());
        }
        let kind = match RecordKind::from_u8(buf[12]) {
            Some(k @ (RecordKind::Manifest | RecordKind::Event)) => k,
            _ => return Err(format!("moved record of kind {}", buf[12])),
        };
        Ok(Moved {
            orig_pack: u32::from_le_bytes(buf[0..4].try_into().unwrap()),
            orig_offset: u64::from_le_bytes(buf[4..12].try_into().unwrap()),
            kind,
            plain: &buf[13..],
        })
    }
}

impl RecordKind {
    fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(RecordKind::Chunk),
            2 => Some(RecordKind::Manifest),
            3 => Some(RecordKind::Event),
            4 => Some(RecordKind::Moved),
            _ => None,
        }
    }
}

/// How the payload is encoded on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Codec {
    Raw = 0,
    Zstd = 1,
}

impl Codec {
    fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Codec::Raw),
            1 => Some(Codec::Zstd),
            _ => None,
        }
    }
}

/// A decoded record header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    pub kind: RecordKind,
    pub codec: Codec,
    /// Payload bytes as stored in the pack.
    pub stored_len: u32,
    /// Payload bytes once decoded.
    pub raw_len: u32,
    /// BLAKE3 of the plain payload (for chunks: the chunk id).
    pub key: [u8; 32],
}

impl RecordHeader {
    /// Total bytes the record occupies in the pack.
    pub fn record_len(&self) -> u64 {
        OVERHEAD as u64 + self.stored_len as u64
    }
}

/// Why bytes are not a valid record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("truncated: need {need} bytes, have {have}")]
    Truncated { need: u64, have: u64 },
    #[error("bad record magic")]
    BadMagic,
    #[error("header checksum mismatch")]
    HeaderChecksum,
    #[error("unknown record kind {0}")]
    UnknownKind(u8),
    #[error("unknown codec {0}")]
    UnknownCodec(u8),
    /// Flag bits this build does not know (a future format feature, such as encryption):
    /// refusing is safer than misreading.
    #[error("unsupported record flags {0:#06x}")]
    UnsupportedFlags(u16),
    #[error("declared length {0} exceeds the limit")]
    TooLarge(u32),
    #[error("payload checksum mismatch")]
    PayloadChecksum,
    #[error("payload does not decompress: {0}")]
    Decompress(String),
    #[error("decoded length {actual} differs from declared {declared}")]
    LengthMismatch { declared: u32, actual: u64 },
    #[error("content hash mismatch (stored key {expected}, content hashes to {actual})")]
    HashMismatch { expected: String, actual: String },
}

/// Encodes a record whose payload is already in its stored form. `raw_len` and `key` describe
/// the plain payload.
pub fn encode_record(
    kind: RecordKind,
    codec: Codec,
    raw_len: u32,
    key: &[u8; 32],
    stored: &[u8],
    out: &mut Vec<u8>,
) {
    assert!(
        stored.len() <= MAX_PAYLOAD as usize,
        "record payload over MAX_PAYLOAD"
    );
    let start = out.len();
    out.extend_from_slice(&RECORD_MAGIC);
    out.push(kind as u8);
    out.push(codec as u8);
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&(stored.len() as u32).to_le_bytes());
    out.extend_from_slice(&raw_len.to_le_bytes());
    out.extend_from_slice(key);
    let hcrc = crc32c::crc32c(&out[start..]);
    out.extend_from_slice(&hcrc.to_le_bytes());
    out.extend_from_slice(stored);
    out.extend_from_slice(&crc32c::crc32c(stored).to_le_bytes());
}

/// Compresses `plain` with zstd at `level` and encodes it as a record; the payload is kept raw
/// when compression does not shrink it. `level == 0` means "store raw".
pub fn encode_plain(kind: RecordKind, plain: &[u8], key: &[u8; 32], level: i32, out: &mut Vec<u8>) {
    let raw_len = plain.len() as u32;
    if level > 0 {
        let done = ZSTD.with_borrow_mut(|z| {
            let shrank = z
                .compress(plain, level)
                .is_some_and(|c| c.len() < plain.len());
            if shrank {
                encode_record(kind, Codec::Zstd, raw_len, key, &z.scratch, out);
            }
            shrank
        });
        if done {
            return;
        }
    }
    encode_record(kind, Codec::Raw, raw_len, key, plain, out);
}

/// Per-thread zstd contexts and buffer: creating a context per chunk cost about a tenth of a
/// get's time and a twenty-fifth of a put's.
#[derive(Default)]
struct ZstdContexts {
    compressor: Option<(i32, zstd::bulk::Compressor<'static>)>,
    decompressor: Option<zstd::bulk::Decompressor<'static>>,
    scratch: Vec<u8>,
}

thread_local! {
    static ZSTD: std::cell::RefCell<ZstdContexts> = std::cell::RefCell::default();
}

impl ZstdContexts {
    /// Compresses into `self.scratch`; `None` if zstd fails.
    fn compress(&mut self, plain: &[u8], level: i32) -> Option<&[u8]> {
        let c = match &mut self.compressor {
            Some((l, c)) if *l == level => c,
            slot => {
                *slot = Some((level, zstd::bulk::Compressor::new(level).ok()?));
                &mut slot.as_mut().unwrap().1
            }
        };
        self.scratch.clear();
        self.scratch
            .reserve(zstd::zstd_safe::compress_bound(plain.len()));
        c.compress_to_buffer(plain, &mut self.scratch).ok()?;
        Some(&self.scratch)
    }

    fn decompressor(&mut self) -> Result<&mut zstd::bulk::Decompressor<'static>, RecordError> {
        if self.decompressor.is_none() {
            let d = zstd::bulk::Decompressor::new()
                .map_err(|e| RecordError::Decompress(e.to_string()))?;
            self.decompressor = Some(d);
        }
        Ok(self.decompressor.as_mut().unwrap())
    }
}

/// Decodes and checks a record header from the start of `buf`.
pub fn decode_header(buf: &[u8]) -> Result<RecordHeader, RecordError> {
    if buf.len() < HEADER_LEN {
        return Err(RecordError::Truncated {
            need: HEADER_LEN as u64,
            have: buf.len() as u64,
        });
    }
    if buf[..4] != RECORD_MAGIC {
        return Err(RecordError::BadMagic);
    }
    let stored_crc = u32::from_le_bytes(buf[48..52].try_into().unwrap());
    if crc32c::crc32c(&buf[..48]) != stored_crc {
        return Err(RecordError::HeaderChecksum);
    }
    let kind = RecordKind::from_u8(buf[4]).ok_or(RecordError::UnknownKind(buf[4]))?;
    let codec = Codec::from_u8(buf[5]).ok_or(RecordError::UnknownCodec(buf[5]))?;
    let flags = u16::from_le_bytes(buf[6..8].try_into().unwrap());
    if flags != 0 {
        return Err(RecordError::UnsupportedFlags(flags));
    }
    let stored_len = u32::from_le_bytes(buf[8..12].try_into().unwrap());
    let raw_len = u32::from_le_bytes(buf[12..16].try_into().unwrap());
    for len in [stored_len, raw_len] {
        if len > MAX_PAYLOAD {
            return Err(RecordError::TooLarge(len));
        }
    }
    if codec == Codec::Raw && stored_len != raw_len {
        return Err(RecordError::LengthMismatch {
            declared: raw_len,
            actual: stored_len as u64,
        });
    }
    let key = buf[16..48].try_into().unwrap();
    Ok(RecordHeader {
        kind,
        codec,
        stored_len,
        raw_len,
        key,
    })
}

/// Decodes the record at the start of `buf`, checking both checksums. Returns the header and
/// the stored payload (still compressed); use [`decode_payload`] for the plain bytes.
pub fn decode_record(buf: &[u8]) -> Result<(RecordHeader, &[u8]), RecordError> {
    let header = decode_header(buf)?;
    let need = header.record_len();
    if (buf.len() as u64) < need {
        return Err(RecordError::Truncated {
            need,
            have: buf.len() as u64,
        });
    }
    let end = HEADER_LEN + header.stored_len as usize;
    let stored = &buf[HEADER_LEN..end];
    let crc = u32::from_le_bytes(buf[end..end + TRAILER_LEN].try_into().unwrap());
    if crc32c::crc32c(stored) != crc {
        return Err(RecordError::PayloadChecksum);
    }
    Ok((header, stored))
}

/// Turns a stored payload into plain bytes and proves them against the header's key.
pub fn decode_payload(header: &RecordHeader, stored: &[u8]) -> Result<Vec<u8>, RecordError> {
    let mut plain = Vec::new();
    decode_payload_into(header, stored, &mut plain)?;
    Ok(plain)
}

/// [`decode_payload`] into a caller's buffer (cleared first), so readers can reuse allocations.
pub fn decode_payload_into(
    header: &RecordHeader,
    stored: &[u8],
    plain: &mut Vec<u8>,
) -> Result<(), RecordError> {
    plain.clear();
    match header.codec {
        Codec::Raw => plain.extend_from_slice(stored),
        Codec::Zstd => {
            plain.reserve(header.raw_len as usize);
            // Decompressing into spare capacity: a hostile frame cannot make it allocate, and
            // the length check below catches any frame that does not yield exactly raw_len.
            let n = ZSTD.with_borrow_mut(|z| {
                z.decompressor()?
                    .decompress_to_buffer(stored, plain)
                    .map_err(|e| RecordError::Decompress(e.to_string()))
            })?;
            debug_assert_eq!(n, plain.len());
        }
    }
    if plain.len() as u64 != header.raw_len as u64 {
        return Err(RecordError::LengthMismatch {
            declared: header.raw_len,
            actual: plain.len() as u64,
        });
    }
    let actual = ChunkId::of(plain);
    if actual.0 != header.key {
        return Err(RecordError::HashMismatch {
            expected: ChunkId(header.key).to_hex(),
            actual: actual.to_hex(),
        });
    }
    Ok(())
}

/// One step of [`scan_records`].
#[derive(Debug)]
pub enum ScanItem<'a> {
    /// A record whose header and payload checksums hold (content hash not yet checked).
    Record {
        offset: usize,
        header: RecordHeader,
        stored: &'a [u8],
    },
    /// Bytes that are not a valid record: `len` bytes from `offset` up to the next valid record
    /// or the end of the buffer. `at_end` says nothing valid follows (a torn tail, if it is the
    /// end of the pack).
    Damage {
        offset: usize,
        len: usize,
        error: RecordError,
        at_end: bool,
    },
}

/// Walks the records of a pack body from `start`. After damage it resynchronises on the next
/// offset where a header with a valid checksum begins, so one bad record does not hide the rest.
pub fn scan_records(buf: &[u8], start: usize) -> impl Iterator<Item = ScanItem<'_>> {
    let mut pos = start;
    std::iter::from_fn(move || {
        if pos >= buf.len() {
            return None;
        }
        match decode_record(&buf[pos..]) {
            Ok((header, stored)) => {
                let offset = pos;
                pos += header.record_len() as usize;
                Some(ScanItem::Record {
                    offset,
                    header,
                    stored,
                })
            }
            Err(error) => {
                let offset = pos;
                let next = find_next_header(buf, pos + 1);
                pos = next.unwrap_or(buf.len());
                Some(ScanItem::Damage {
                    offset,
                    len: pos - offset,
                    error,
                    at_end: next.is_none(),
                })
            }
        }
    })
}

fn find_next_header(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while i + HEADER_LEN <= buf.len() {
        let rel = buf[i..].windows(4).position(|w| w == RECORD_MAGIC)?;
        i += rel;
        if decode_header(&buf[i..]).is_ok() {
            return Some(i);
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn encode(kind: RecordKind, plain: &[u8], level: i32) -> Vec<u8> {
        let mut out = Vec::new();
        encode_plain(kind, plain, &ChunkId::of(plain).0, level, &mut out);
        out
    }

    proptest! {
        #[test]
        fn round_trips(plain in prop::collection::vec(any::<u8>(), 0..20_000),
                       repeat in 1usize..4, level in 0i32..5, kind in 1u8..4) {
            let plain = plain.repeat(repeat);
            let kind = RecordKind::from_u8(kind).unwrap();
            let buf = encode(kind, &plain, level);
            let (h, stored) = decode_record(&buf).unwrap();
            prop_assert_eq!(h.kind, kind);
            prop_assert_eq!(h.record_len(), buf.len() as u64);
            prop_assert_eq!(decode_payload(&h, stored).unwrap(), plain);
        }

        #[test]
        fn any_single_byte_flip_is_rejected(plain in prop::collection::vec(any::<u8>(), 1..3000),
                                            pos in any::<prop::sample::Index>(),
                                            bit in 0u8..8) {
            let mut buf = encode(RecordKind::Chunk, &plain, 3);
            let i = pos.index(buf.len());
            buf[i] ^= 1 << bit;
            let ok = decode_record(&buf).and_then(|(h, s)| decode_payload(&h, s));
            prop_assert!(ok.is_err(), "flip at {} accepted", i);
        }

        #[test]
        fn truncation_is_rejected(plain in prop::collection::vec(any::<u8>(), 1..3000),
                                  cut in any::<prop::sample::Index>()) {
            let buf = encode(RecordKind::Chunk, &plain, 3);
            let keep = cut.index(buf.len());
            let is_truncated = matches!(decode_record(&buf[..keep]), Err(RecordError::Truncated { .. }));
            prop_assert!(is_truncated);
        }
    }

    #[test]
    fn compressible_data_is_compressed_and_random_data_kept_raw() {
        let text = b"tessera ".repeat(4096);
        let (h, _) = decode_record(&encode(RecordKind::Chunk, &text, 3))
            .map(|(h, s)| (h, s.len()))
            .unwrap();
        assert_eq!(h.codec, Codec::Zstd);
        assert!(h.stored_len < h.raw_len / 10);

        let mut noise = vec![0u8; 32 * 1024];
        blake3::Hasher::new().finalize_xof().fill(&mut noise);
        let (h, _) = decode_record(&encode(RecordKind::Chunk, &noise, 3)).unwrap();
        assert_eq!(h.codec, Codec::Raw);
    }

    #[test]
    fn scan_skips_a_damaged_record_and_reports_a_torn_tail() {
        let mut buf = Vec::new();
        for i in 0..4u8 {
            let plain = vec![i; 100 + i as usize];
            encode_plain(
                RecordKind::Chunk,
                &plain,
                &ChunkId::of(&plain).0,
                3,
                &mut buf,
            );
        }
        let second = decode_record(&buf).unwrap().0.record_len() as usize;
        buf[second + HEADER_LEN + 2] ^= 0xff; // damage the second record's payload
        buf.truncate(buf.len() - 7); // tear the last one
        let items: Vec<_> = scan_records(&buf, 0).collect();
        let kinds: Vec<&str> = items
            .iter()
            .map(|i| match i {
                ScanItem::Record { .. } => "ok",
                ScanItem::Damage { at_end: false, .. } => "damage",
                ScanItem::Damage { at_end: true, .. } => "tail",
            })
            .collect();
        assert_eq!(kinds, ["ok", "damage", "ok", "tail"]);
    }

    #[test]
    fn unknown_flags_are_refused() {
        let mut buf = encode(RecordKind::Chunk, b"flagged", 0);
        buf[6] = 1; // the reserved flags field (fuzzing found it was silently accepted)
        let crc = crc32c::crc32c(&buf[..48]);
        buf[48..52].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(decode_header(&buf), Err(RecordError::UnsupportedFlags(1)));
    }

    #[test]
    fn oversized_declared_length_is_refused_before_allocation() {
        let mut buf = encode(RecordKind::Chunk, b"x", 0);
        buf[8..12].copy_from_slice(&(MAX_PAYLOAD + 1).to_le_bytes());
        let crc = crc32c::crc32c(&buf[..48]);
        buf[48..52].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            decode_header(&buf),
            Err(RecordError::TooLarge(MAX_PAYLOAD + 1))
        );
    }
}
