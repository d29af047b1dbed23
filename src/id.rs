//! Identifier newtypes: what a chunk, a file and a version are called.

use std::fmt;
use std::str::FromStr;

use crate::error::Error;

/// A chunk's identity: the BLAKE3 hash of its plain (uncompressed) bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    /// Hashes `data` to its chunk id.
    pub fn of(data: &[u8]) -> Self {
        ChunkId(*blake3::hash(data).as_bytes())
    }

    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({})", &self.to_hex()[..16])
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// A file's identity: a ULID, so ids sort by creation time and list pages are stable.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId(pub u128);

impl FileId {
    /// A new id, greater than every id made before it in this process (monotonic ULIDs), so
    /// listing by id is listing by creation order.
    pub fn new() -> Self {
        static GENERATOR: std::sync::Mutex<ulid::Generator> =
            std::sync::Mutex::new(ulid::Generator::new());
        let mut g = GENERATOR.lock().unwrap_or_else(|e| e.into_inner());
        let id = g.generate().unwrap_or_else(|_| ulid::Ulid::generate());
        FileId(id.0)
    }
}

impl Default for FileId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for FileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&ulid::Ulid(self.0), f)
    }
}

impl fmt::Debug for FileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FileId({self})")
    }
}

impl FromStr for FileId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        ulid::Ulid::from_string(s)
            .map(|u| FileId(u.0))
            .map_err(|e| Error::InvalidInput(format!("{s:?} is not a file id: {e}")))
    }
}

impl serde::Serialize for FileId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for FileId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Lower-case hex of a byte string.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_id_round_trips_through_text_and_json() {
        let id = FileId::new();
        assert_eq!(id.to_string().parse::<FileId>().unwrap(), id);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(serde_json::from_str::<FileId>(&json).unwrap(), id);
        assert!("not-a-ulid".parse::<FileId>().is_err());
    }

    #[test]
    fn hex_matches_blake3() {
        let id = ChunkId::of(b"abc");
        assert_eq!(id.to_hex(), blake3::hash(b"abc").to_hex().as_str());
    }
}
