//! Arbitrary bytes as manifest and event payloads.
//!
//! Contracts checked: decoding never panics; whatever decodes re-encodes to bytes that decode to
//! an equal value. Recovery rebuilds the index from these payloads, so a value that changed on
//! the way through encode/decode would change a file's metadata on every rebuild.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera::pack::manifest::{FileEvent, Manifest};

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Manifest::decode(data) {
        let again = Manifest::decode(&m.encode())
            .unwrap_or_else(|e| panic!("re-encoded manifest does not decode: {e}\n{m:?}"));
        assert_eq!(again, m, "manifest changed through encode/decode");
    }
    if let Ok(e) = FileEvent::decode(data) {
        let again = FileEvent::decode(&e.encode())
            .unwrap_or_else(|err| panic!("re-encoded event does not decode: {err}\n{e:?}"));
        assert_eq!(again, e, "event changed through encode/decode");
    }
});
