//! Signed, expiring download links: `/d/{payload}.{signature}`.
//!
//! The payload is base64url of `layout u8 (= 2) | key id u32 | file id u128 | version u32 |
//! expires (Unix s) i64 | flags u8 | link epoch u32`, integers little-endian (38 bytes); the
//! signature is base64url of HMAC-SHA256 over `"GET\n/d/" + payload`. Everything the link
//! grants is inside the signed bytes, so altering any of it breaks the signature. The key id
//! names which key signed it, so keys can rotate while old links live out their time. The
//! epoch is the file's link epoch when the link was minted: `/d/` serves only while the file's
//! epoch is still that one, so a revocation (explicit, by a delete, or by going private) ends
//! every earlier link at once.
//!
//! Links of the first layout (33 bytes, no layout byte and no epoch) are refused as
//! `Outdated`: they may have been minted by any reader of a file, before only owners could,
//! and carry no epoch a revocation could end. They lived `links.max_ttl` at most anyway.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

use crate::id::FileId;

type HmacSha256 = Hmac<Sha256>;

const PAYLOAD_LEN: usize = 38;
/// The first byte of a payload: which layout follows.
const LAYOUT: u8 = 2;
/// The length of the first layout's payload, refused as outdated.
const OLD_PAYLOAD_LEN: usize = 33;
/// Flag: serve as an attachment (download) rather than inline.
pub const FLAG_ATTACHMENT: u8 = 1;

/// What a valid link grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    pub file: FileId,
    pub version: u32,
    pub expires_s: i64,
    pub flags: u8,
    /// The file's link epoch when the link was minted (of the original, for an image
    /// variant: variants' links die with their original's).
    pub epoch: u32,
}

#[derive(Debug, PartialEq, Eq)]
pub enum LinkError {
    Malformed,
    BadSignature,
    Expired,
    /// A link of the first payload layout, which is no longer honoured.
    Outdated,
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
        p.push(LAYOUT);
        p.extend_from_slice(&id.to_le_bytes());
        p.extend_from_slice(&g.file.0.to_le_bytes());
        p.extend_from_slice(&g.version.to_le_bytes());
        p.extend_from_slice(&g.expires_s.to_le_bytes());
        p.push(g.flags);
        p.extend_from_slice(&g.epoch.to_le_bytes());
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
        if p.len() == OLD_PAYLOAD_LEN {
            return Err(LinkError::Outdated);
        }
        if p.len() != PAYLOAD_LEN || p[0] != LAYOUT {
            return Err(LinkError::Malformed);
        }
        let p = &p[1..];
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
            epoch: u32::from_le_bytes(p[33..37].try_into().unwrap()),
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
            epoch: 7,
        }
    }

    #[test]
    fn links_of_the_first_layout_are_refused_as_outdated() {
        // A well-formed, correctly signed 33-byte payload as the first layout made it.
        let key = vec![7u8; 32];
        let mut p = Vec::new();
        p.extend_from_slice(&key_id(&key).to_le_bytes());
        p.extend_from_slice(&grant().file.0.to_le_bytes());
        p.extend_from_slice(&1u32.to_le_bytes());
        p.extend_from_slice(&1_000i64.to_le_bytes());
        p.push(0);
        let payload = B64.encode(&p);
        let sig = B64.encode(Signer::mac(&key, &payload).finalize().into_bytes());
        let s = Signer::new(key, vec![]);
        assert_eq!(
            s.verify(&format!("{payload}.{sig}"), 0),
            Err(LinkError::Outdated)
        );
    }

    #[test]
    fn the_epoch_is_signed_with_the_rest() {
        let s = Signer::new(vec![7; 32], vec![]);
        let t = s.sign(&grant());
        let (payload, sig) = t.split_once('.').unwrap();
        let mut p = B64.decode(payload).unwrap();
        p[34] ^= 1; // the epoch's low byte
        let altered = format!("{}.{sig}", B64.encode(&p));
        assert_eq!(s.verify(&altered, 0), Err(LinkError::BadSignature));
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
