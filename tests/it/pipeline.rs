//! The parallel put pipeline and group commit: same results as the sequential path, memory in
//! flight under the cap, each chunk written once under races, many small puts per commit.

use std::io::{self, Read};
use std::sync::Arc;
use std::time::Duration;

use tessera::pack::FsPackStorage;
use tessera::pack::storage::{PackBytes, PackFile, PackStorage};
use tessera::{ChunkParams, Config, PutOptions, Store};

use crate::common::{TempStore, blake3_hex, random_bytes, text_bytes};

fn sequential() -> Config {
    Config {
        threads: 1,
        ..Default::default()
    }
}

fn parallel() -> Config {
    Config {
        threads: 4,
        ..Default::default()
    }
}

/// Real data from this machine: the test binary itself and the crate's sources.
fn real_data() -> Vec<u8> {
    let mut data = std::fs::read(std::env::current_exe().unwrap()).unwrap();
    data.truncate(48 << 20);
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/src")).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            data.extend_from_slice(&std::fs::read(path).unwrap());
        }
    }
    data
}

#[test]
fn pipeline_results_are_byte_identical_to_the_sequential_path() {
    let inputs = [
        random_bytes(1, 24 << 20),
        text_bytes(2, 9 << 20),
        real_data(),
    ];
    let a = TempStore::new();
    let b = TempStore::new();
    let seq = Store::create(a.path(), sequential()).unwrap();
    let par = Store::create(b.path(), parallel()).unwrap();
    for (i, data) in inputs.iter().enumerate() {
        let key = format!("input{i}");
        let rs = seq.put(&data[..], &PutOptions::key(&key)).unwrap();
        let rp = par.put(&data[..], &PutOptions::key(&key)).unwrap();
        assert_eq!(rs.chunks, rp.chunks, "input {i}");
        assert_eq!(
            rs.chunks as usize,
            seq.chunk_params().cut_points(data).len()
        );
        assert_eq!(rs.new_chunks, rp.new_chunks);
        assert_eq!(
            (&rs.file.blake3, &rs.file.sha256),
            (&rp.file.blake3, &rp.file.sha256)
        );
        assert_eq!(rp.file.blake3, blake3_hex(data));
        assert_eq!(
            par.read_all(rp.file.id).unwrap(),
            *data,
            "input {i} read back"
        );
    }
    let (ss, sp) = (seq.stats().unwrap(), par.stats().unwrap());
    assert_eq!(
        (ss.chunks, ss.unique_bytes, ss.logical_bytes),
        (sp.chunks, sp.unique_bytes, sp.logical_bytes)
    );
    assert!(par.verify(&()).unwrap().is_ok());
}

/// A pack storage whose writes are slow, so the pipeline backs up behind the disk.
struct SlowStorage(FsPackStorage);
struct SlowFile(Arc<dyn PackFile>);

impl PackStorage for SlowStorage {
    fn list(&self) -> io::Result<Vec<u32>> {
        self.0.list()
    }
    fn create(&self, id: u32) -> io::Result<Arc<dyn PackFile>> {
        Ok(Arc::new(SlowFile(self.0.create(id)?)))
    }
    fn open(&self, id: u32) -> io::Result<Arc<dyn PackFile>> {
        Ok(Arc::new(SlowFile(self.0.open(id)?)))
    }
    fn map(&self, id: u32) -> io::Result<PackBytes> {
        self.0.map(id)
    }
    fn remove(&self, id: u32) -> io::Result<()> {
        self.0.remove(id)
    }
    fn describe(&self, id: u32) -> String {
        self.0.describe(id)
    }
}

impl PackFile for SlowFile {
    fn size(&self) -> io::Result<u64> {
        self.0.size()
    }
    fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        std::thread::sleep(Duration::from_millis(3));
        self.0.write_at(offset, buf)
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.0.read_at(offset, buf)
    }
    fn sync(&self) -> io::Result<()> {
        self.0.sync()
    }
    fn truncate(&self, len: u64) -> io::Result<()> {
        self.0.truncate(len)
    }
}

/// Hands out its data a little at a time, with pauses.
struct SlowReader {
    data: Vec<u8>,
    pos: usize,
}

impl Read for SlowReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos.is_multiple_of(256 << 10) {
            std::thread::sleep(Duration::from_millis(1));
        }
        let n = buf.len().min(8192).min(self.data.len() - self.pos);
        buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[test]
fn memory_in_flight_stays_under_the_cap() {
    let t = TempStore::new();
    let params = ChunkParams {
        min_size: 4096,
        avg_size: 16384,
        max_size: 65536,
    };
    let cap = 4 * 65536;
    let config = Config {
        chunking: Some(params),
        max_in_flight: cap,
        threads: 2,
        ..Default::default()
    };
    drop(Store::create(t.path(), config.clone()).unwrap());
    let storage = Arc::new(SlowStorage(
        FsPackStorage::new(t.path().join("packs")).unwrap(),
    ));
    let store = Store::open_with_storage(t.path(), config, storage).unwrap();

    let data = random_bytes(5, 12 << 20); // 48 times the cap
    let r = store
        .put(
            SlowReader {
                data: data.clone(),
                pos: 0,
            },
            &PutOptions::key("big"),
        )
        .unwrap();
    let (now, peak) = store.in_flight();
    assert_eq!(now, 0, "every byte is returned when the put ends");
    assert!(peak <= cap, "peak {peak} over the cap {cap}");
    // The disk is the bottleneck, so the pipeline must have filled up to near the cap.
    assert!(
        peak > cap / 2,
        "peak {peak}: the budget never came into play"
    );
    assert_eq!(store.read_all(r.file.id).unwrap(), data);
}

#[test]
fn racing_puts_of_the_same_data_write_each_chunk_once() {
    let t = TempStore::new();
    let store = t.create();
    let mut written = 0;
    // Rounds with staggered starts: some puts commit (and release their claims) while others
    // still deduplicate against index snapshots taken before that commit.
    for round in 0..3u64 {
        let data = random_bytes(9 + round, 16 << 20);
        let reports: Vec<tessera::PutReport> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4u64)
                .map(|i| {
                    let store = store.clone();
                    let data = &data;
                    s.spawn(move || {
                        std::thread::sleep(Duration::from_millis(i * i * 20 * round));
                        let key = format!("copy{round}/{i}");
                        store.put(&data[..], &PutOptions::key(key)).unwrap()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        written += reports.iter().map(|r| r.new_chunks).sum::<u64>();
        assert_eq!(
            written,
            store.stats().unwrap().chunks,
            "round {round}: a chunk was written twice"
        );
        for r in &reports {
            assert_eq!(store.read_all(r.file.id).unwrap(), data);
        }
    }
    assert!(store.verify(&()).unwrap().is_ok());
}

#[test]
fn many_threads_of_small_puts_share_commits_and_stay_durable() {
    let t = TempStore::new();
    let store = t.create();
    std::thread::scope(|s| {
        for th in 0..16u64 {
            let store = store.clone();
            s.spawn(move || {
                for i in 0..40u64 {
                    let data = random_bytes(th * 100 + i, 4096);
                    let r = store
                        .put(&data[..], &PutOptions::key(format!("t{th}/f{}", i % 10)))
                        .unwrap();
                    assert_eq!(r.file.version as u64, i / 10 + 1);
                }
            });
        }
    });
    drop(store);
    let store = t.open();
    let report = store.verify(&()).unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert_eq!((report.files, report.versions), (160, 640));
    let id = store.resolve_key("local", "t3/f7").unwrap();
    assert_eq!(store.read_all(id).unwrap(), random_bytes(337, 4096));
}

#[test]
fn put_many_commits_a_batch_and_fails_items_alone() {
    let t = TempStore::new();
    let store = t.create();
    let items: Vec<(Vec<u8>, PutOptions)> = (0..1000u64)
        .map(|i| {
            let key = if i == 500 {
                String::new()
            } else {
                format!("batch/{i:04}")
            };
            (random_bytes(i, 4096 + i as usize), PutOptions::key(key))
        })
        .collect();
    let results = store.put_many(items.iter().map(|(d, o)| (&d[..], o.clone())));
    assert_eq!(results.len(), 1000);
    for (i, r) in results.iter().enumerate() {
        if i == 500 {
            assert!(matches!(r, Err(tessera::Error::InvalidInput(_))), "{r:?}");
        } else {
            let r = r.as_ref().unwrap();
            assert_eq!(
                r.file.key.as_deref(),
                Some(format!("batch/{i:04}").as_str())
            );
        }
    }
    drop(store);
    let store = t.open();
    let page = store
        .list(&tessera::ListQuery {
            limit: Some(5000),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(page.files.len(), 999);
    let id = store.resolve_key("local", "batch/0777").unwrap();
    assert_eq!(store.read_all(id).unwrap(), random_bytes(777, 4096 + 777));
}

#[test]
fn read_ahead_returns_the_same_bytes_through_odd_reads_seeks_and_early_drops() {
    use std::io::{Seek, SeekFrom};
    let t = TempStore::new();
    let store = t.create();
    let data = text_bytes(31, 6 << 20);
    let id = store
        .put(&data[..], &PutOptions::key("ahead"))
        .unwrap()
        .file
        .id;
    let mut r = store.get(id).unwrap();
    let mut out = Vec::new();
    let mut buf = vec![0u8; 7777];
    let mut step = 1;
    loop {
        let n = r.read(&mut buf[..step]).unwrap();
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        step = (step + 1013) % 7777 + 1;
        if out.len() > 2 << 20 && out.len() < 2 << 20 | 8000 {
            // Jump back and forth: read-ahead restarts at the new position.
            r.seek(SeekFrom::Start(100)).unwrap();
            r.seek(SeekFrom::Start(out.len() as u64)).unwrap();
        }
    }
    assert_eq!(out, data);
    for _ in 0..5 {
        let mut r = store.get(id).unwrap();
        let mut head = vec![0u8; 300_000];
        r.read_exact(&mut head).unwrap();
        assert_eq!(head, data[..300_000]);
        drop(r); // stops its workers mid-file
    }
}
