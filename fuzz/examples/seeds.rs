//! Writes the seed inputs in `fuzz/seeds/<target>/`: a few small valid inputs per target, so the
//! fuzzer starts past the checksums and the JSON schema instead of having to discover them.
//!
//! `make fuzz-seeds` runs it; rerun it after a format change and commit the result (a few KB).

use std::fs;
use std::path::Path;

use tessera::pack::manifest::{ChunkRef, FileEvent, Manifest, VersionMeta, flags};
use tessera::pack::record::{RecordKind, encode_plain};
use tessera::{ChunkId, FileId};

fn record(kind: RecordKind, plain: &[u8], level: i32) -> Vec<u8> {
    let mut out = Vec::new();
    encode_plain(kind, plain, &ChunkId::of(plain).0, level, &mut out);
    out
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    fs::create_dir_all(dir).unwrap();
    fs::write(dir.join(name), bytes).unwrap();
}

fn main() {
    let root = std::env::args().nth(1).unwrap_or_else(|| "seeds".into());
    let root = Path::new(&root);

    // Fixed ids keep the seeds byte-identical across runs.
    let file_id = FileId(0x0191_2c3d_4e5f_6a7b_8c9d_aebf_c0d1_e2f3);
    let a = b"tessera seed chunk a ".repeat(3);
    let b = b"b".to_vec();
    let manifest = Manifest {
        meta: VersionMeta {
            file_id,
            version: 2,
            owner: "alice".into(),
            key: Some("docs/a.txt".into()),
            display_name: "a.txt".into(),
            original_name: Some("a?.txt".into()),
            category: "documents".into(),
            mime: "text/plain".into(),
            size: (a.len() + b.len()) as u64,
            blake3: "00".into(),
            sha256: "11".into(),
            file_created_ms: 1_700_000_000_000,
            created_ms: 1_700_000_000_001,
            flags: flags::PUBLIC | flags::PROCESSED,
            metadata: serde_json::json!({"k": [1, 2.5, -0.0, 1e300], "s": "\u{e9}", "n": null}),
            restored_from: Some(1),
            scan: None,
        },
        chunks: vec![
            ChunkRef {
                id: ChunkId::of(&a),
                len: a.len() as u32,
            },
            ChunkRef {
                id: ChunkId::of(&b),
                len: b.len() as u32,
            },
        ],
    };
    let events = [
        FileEvent::Delete { file_id, at_ms: 5 },
        FileEvent::Undelete { file_id, at_ms: 6 },
        FileEvent::Revoke {
            pack: 3,
            offset: 4096,
        },
    ];

    let dir = root.join("manifest");
    write(&dir, "manifest", &manifest.encode());
    for (i, e) in events.iter().enumerate() {
        write(&dir, &format!("event-{i}"), &e.encode());
    }

    let dir = root.join("pack_record");
    write(
        &dir,
        "raw",
        &record(RecordKind::Chunk, b"hello, tessera", 0),
    );
    write(
        &dir,
        "zstd",
        &record(RecordKind::Chunk, &b"abcd".repeat(64), 3),
    );
    write(&dir, "empty", &record(RecordKind::Chunk, b"", 0));
    write(
        &dir,
        "manifest",
        &record(RecordKind::Manifest, &manifest.encode(), 1),
    );
    // Several records, the second damaged and the last torn: the scanner's resync paths.
    let mut pack = Vec::new();
    for i in 0..3u8 {
        pack.extend(record(RecordKind::Chunk, &vec![i; 20 + i as usize], 3));
    }
    pack.extend(record(RecordKind::Event, &events[0].encode(), 0));
    let second = record(RecordKind::Chunk, &[0u8; 20], 3).len();
    pack[second + 60] ^= 0x55;
    pack.truncate(pack.len() - 5);
    write(&dir, "pack", &pack);

    // Chunker: 13 bytes of parameters and read sizes (see fuzz_targets/chunker.rs), then data.
    let dir = root.join("chunker");
    let mut text = vec![0x00, 0x00, 0x02, 0x02, 0x03, 1, 7, 13, 200, 2, 255, 64, 9];
    text.extend(b"The quick brown fox jumps over the lazy dog. ".repeat(20));
    write(&dir, "text", &text);
    let mut noise = vec![0xc0, 0x03, 0x06, 0x06, 0x00, 0x81, 1, 1, 3, 0xff, 5, 8, 130];
    let mut x: u32 = 0x9e37_79b9;
    noise.extend((0..1500).map(|_| {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        x as u8
    }));
    write(&dir, "noise", &noise);
}
