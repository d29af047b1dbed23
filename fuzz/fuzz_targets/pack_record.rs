//! Arbitrary bytes through the pack record codec.
//!
//! Contracts checked:
//! - `decode_record`, `decode_payload` and `scan_records` never panic, whatever the bytes.
//! - A record that decodes is canonical: encoding its header fields and stored payload again
//!   gives back exactly the bytes it was decoded from. Without this, two different byte strings
//!   would be "the same record", and a pack could carry bits no checksum or re-encode accounts for.
//! - `scan_records` tiles the buffer: items follow each other with no gap or overlap, damage is
//!   never empty, nothing reaches past the end, and only the last item may be a tail.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera::pack::record::{ScanItem, decode_payload, decode_record, encode_record, scan_records};

fuzz_target!(|data: &[u8]| {
    if let Ok((header, stored)) = decode_record(data) {
        let len = header.record_len() as usize;
        assert!(
            len <= data.len(),
            "record of {len} bytes decoded from {}",
            data.len()
        );
        assert_eq!(stored.len(), header.stored_len as usize);

        let mut out = Vec::new();
        encode_record(
            header.kind,
            header.codec,
            header.raw_len,
            &header.key,
            stored,
            &mut out,
        );
        assert!(
            out == data[..len],
            "re-encoding a decoded record changed it:\n decoded {:02x?}\n encoded {:02x?}",
            &data[..len.min(64)],
            &out[..len.min(64)],
        );

        if let Ok(plain) = decode_payload(&header, stored) {
            assert_eq!(plain.len(), header.raw_len as usize);
        }
    }

    check_scan(data, 0);
    // A scan may also start mid-buffer (after a pack header); the first byte picks where.
    if let Some(&b) = data.first() {
        check_scan(data, b as usize % (data.len() + 1));
    }
});

fn check_scan(data: &[u8], start: usize) {
    let mut pos = start;
    let mut tail_seen = false;
    for item in scan_records(data, start) {
        assert!(!tail_seen, "an item follows a damage marked at_end");
        match item {
            ScanItem::Record {
                offset,
                header,
                stored,
            } => {
                assert_eq!(
                    offset, pos,
                    "record does not start where the previous item ended"
                );
                let end = offset + header.record_len() as usize;
                assert!(end <= data.len(), "record at {offset} runs past the end");
                assert_eq!(stored.len(), header.stored_len as usize);
                pos = end;
            }
            ScanItem::Damage {
                offset,
                len,
                at_end,
                ..
            } => {
                assert_eq!(
                    offset, pos,
                    "damage does not start where the previous item ended"
                );
                assert!(len > 0, "empty damage at {offset}");
                let end = offset + len;
                assert!(end <= data.len(), "damage at {offset} runs past the end");
                if at_end {
                    assert_eq!(
                        end,
                        data.len(),
                        "damage marked at_end stops short of the end"
                    );
                    tail_seen = true;
                } else {
                    assert!(end < data.len(), "damage not marked at_end reaches the end");
                }
                pos = end;
            }
        }
    }
    if start < data.len() {
        assert_eq!(pos, data.len(), "scan from {start} stopped at {pos}");
    }
}
