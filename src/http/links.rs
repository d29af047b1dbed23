//! Signed, expiring download links: `/d/{payload}.{signature}`.
//!
//! The payload is base64url of `key id u32 | file id u128 | version u32 | expires (Unix s)
//! i64 | flags u8`, all little-endian (33 bytes); the signature is base64url of HMAC-SHA256
//! over `"GET\n/d/" + payload`. Everything the link grants is inside the signed bytes, so
//! altering any of it breaks the signature. The key id names which key signed it, so keys can
//! rotate while old links live out their time.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

use crate::id::FileId;

type HmacSha256 = Hmac<Sha256>;

const PAYLOAD_LEN: usize = 33;
/// Flag: serve as an attachment (download) rather than inline.
pub const FLAG_ATTACHMENT: u8 = 1;

/// What a valid link grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    pub file: FileId,
    pub version: u32,
    pub expires_s: i64,
    pub flags: u8,
}

#[derive(Debug, PartialEq, Eq)]
pub enum LinkError {
    Malformed,
    BadSignature,
    Expired,
}

/// The current key and the ones still accepted.
pub struct Signer {
    keys: Vec<(u32, Vec<u8>)>,
}

fn key_id(key: &[u8]) -> u32 {
    let d = Sha256::digest(key);
    u32::from_le_bytes(d[..4].try_into().unwrap())
}

impl Signer {
    /// `current` signs; `previous` still verify. Keys must be at least 32 bytes.
    pub fn new(current: Vec<u8>, previous: Vec<Vec<u8>>) -> Signer {
        let keys = std::iter::once(current)
            .chain(previous)
            .map(|k| (key_id(&k), k))
            .collect();
        Signer { keys }
    }

    fn mac(key: &[u8], payload_b64: &str) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
        mac.update(b"GET\n/d/");
        mac.update(payload_b64.as_bytes());
        mac
    }

    /// The token part of a link (after `/d/`).
    pub fn sign(&self, g: &Grant) -> String {
        let (id, key) = &self.keys[0];
        let mut p = Vec::with_capacity(PAYLOAD_LEN);
        p.extend_from_slice(&id.to_le_bytes());
        p.extend_from_slice(&g.file.0.to_le_bytes());
        p.extend_from_slice(&g.version.to_le_bytes());
        p.extend_from_slice(&g.expires_s.to_le_bytes());
        p.push(g.flags);
        let payload = B64.encode(&p);
        let sig = B64.encode(Self::mac(key, &payload).finalize().into_bytes());
        format!("{payload}.{sig}")
    }

    /// Checks a token at time `now_s`. The signature is checked (in constant time) before the
    /// expiry, so an expired forgery is reported as a forgery.
    pub fn verify(&self, token: &str, now_s: i64) -> Result<Grant, LinkError> {
        let (payload, sig) = token.split_once('.').ok_or(LinkError::Malformed)?;
        let p = B64.decode(payload).map_err(|_| LinkError::Malformed)?;
        let sig = B64.decode(sig).map_err(|_| LinkError::Malformed)?;
        if p.len() != PAYLOAD_LEN {
            return Err(LinkError::Malformed);
        }
        let id = u32::from_le_bytes(p[0..4].try_into().unwrap());
        let (_, key) = self
            .keys
            .iter()
            .find(|(k, _)| *k == id)
            .ok_or(LinkError::BadSignature)?;
        Self::mac(key, payload)
            .verify_slice(&sig)
            .map_err(|_| LinkError::BadSignature)?;
        let g = Grant {
            file: FileId(u128::from_le_bytes(p[4..20].try_into().unwrap())),
            version: u32::from_le_bytes(p[20..24].try_into().unwrap()),
            expires_s: i64::from_le_bytes(p[24..32].try_into().unwrap()),
            flags: p[32],
        };
        if now_s >= g.expires_s {
            return Err(LinkError::Expired);
        }
        Ok(g)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant() -> Grant {
        Grant {
            file: FileId(0x0123_4567_89ab_cdef_0011_2233_4455_6677),
            version: 3,
            expires_s: 1_000,
            flags: FLAG_ATTACHMENT,
        }
    }

    #[test]
    fn links_verify_until_they_expire() {
        let s = Signer::new(vec![7; 32], vec![]);
        let t = s.sign(&grant());
        assert_eq!(s.verify(&t, 999), Ok(grant()));
        assert_eq!(s.verify(&t, 1_000), Err(LinkError::Expired));
    }

    #[test]
    fn any_altered_character_is_refused() {
        let s = Signer::new(vec![7; 32], vec![]);
        let t = s.sign(&grant());
        for i in 0..t.len() {
            let mut b = t.clone().into_bytes();
            b[i] = if b[i] == b'A' { b'B' } else { b'A' };
            let Ok(altered) = String::from_utf8(b) else {
                continue;
            };
            if altered == t {
                continue;
            }
            assert!(s.verify(&altered, 0).is_err(), "accepted {altered}");
        }
    }

    #[test]
    fn rotated_keys_keep_old_links_and_other_keys_fail() {
        let old = Signer::new(vec![1; 32], vec![]);
        let t = old.sign(&grant());
        let rotated = Signer::new(vec![2; 32], vec![vec![1; 32]]);
        assert_eq!(rotated.verify(&t, 0), Ok(grant()));
        let stranger = Signer::new(vec![3; 32], vec![]);
        assert_eq!(stranger.verify(&t, 0), Err(LinkError::BadSignature));
    }
}
