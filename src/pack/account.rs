//! Account events: the journal of users, tokens and organisation limits.
//!
//! Accounts are not file data, but losing them with the index would lock every user out after
//! `recover` (and forget which tokens were revoked). So every change to them is an event record
//! in the packs, like a delete is, appended by the commit leader inside the index transaction
//! that applies it, and replayed by `recover` in commit order. The payload is the JSON of a
//! [`FileEvent::Account`](super::manifest::FileEvent::Account): `{"op": "account", "change":
//! ..., ...}`, so a build that predates accounts in the journal meets an event `op` it does not
//! know — a decode error it reports — and never a record kind it would take for damage.
//!
//! Tokens are journaled as their SHA-256 only, as the index keeps them: a copy of the packs
//! lets nobody in.

use serde::{Deserialize, Serialize};

/// A user as stored: in the index's `users` table and in account events alike (one JSON form;
/// new fields are added with serde defaults, so older records stay readable).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    pub name: String,
    pub admin: bool,
    /// Storage tier name (free, basic, pro, enterprise...); quotas come from it.
    #[serde(default)]
    pub tier: Option<String>,
    #[serde(default)]
    pub org: Option<String>,
    /// A per-user quota in bytes that overrides the tier's.
    #[serde(default)]
    pub quota: Option<u64>,
    pub created_ms: i64,
}

/// A bearer token as journaled: whose it is and the SHA-256 of its text, never the text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenEntry {
    pub user: String,
    /// Lower-case hex of the SHA-256 of the token.
    pub sha256: String,
    pub created_ms: i64,
}

impl TokenEntry {
    pub fn new(user: &str, hash: &[u8; 32], created_ms: i64) -> Self {
        TokenEntry {
            user: user.to_string(),
            sha256: to_hex(hash),
            created_ms,
        }
    }

    /// The hash as bytes; `None` when the text is not 64 hex digits.
    pub fn hash(&self) -> Option<[u8; 32]> {
        from_hex(&self.sha256)
    }
}

/// One change to the accounts, as recorded in a pack. Each is one record, so a change is
/// replayed whole or not at all.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum AccountEvent {
    /// A new user (admin flag, tier, organisation, quota override) with its first token.
    UserAdd { user: UserRecord, token: TokenEntry },
    /// A user's record after a change: admin flag, tier, organisation, or the quota override
    /// (`tessera quota set/clear`). The whole record, so replay needs nothing before it.
    UserUpdate { user: UserRecord },
    /// Another token for a user.
    TokenAdd { token: TokenEntry },
    /// Every token `user` had at that point is revoked (tokens added later are not).
    TokensRevoke { user: String, at_ms: i64 },
    /// An organisation's run-time limit set, or cleared with `None`.
    OrgLimit {
        org: String,
        limit: Option<u64>,
        at_ms: i64,
    },
    /// Every account the index held at this point. Replay replaces whatever it rebuilt so far
    /// with exactly this. Written once when an older store (accounts only in its index) is
    /// first opened read-write, and by compaction instead of copying account events.
    Snapshot {
        at_ms: i64,
        users: Vec<UserRecord>,
        tokens: Vec<TokenEntry>,
        org_limits: Vec<(String, u64)>,
    },
}

impl AccountEvent {
    /// A snapshot of no accounts at all.
    pub fn is_empty_snapshot(&self) -> bool {
        matches!(self, AccountEvent::Snapshot { users, tokens, org_limits, .. }
            if users.is_empty() && tokens.is_empty() && org_limits.is_empty())
    }

    /// The user whose quota limits this change may move, if any.
    pub fn user(&self) -> Option<&str> {
        match self {
            AccountEvent::UserAdd { user, .. } | AccountEvent::UserUpdate { user } => {
                Some(&user.name)
            }
            _ => None,
        }
    }
}

pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

fn from_hex(s: &str) -> Option<[u8; 32]> {
    let s = s.as_bytes();
    if s.len() != 64 {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = [0u8; 32];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pack::manifest::FileEvent;

    fn alice() -> UserRecord {
        UserRecord {
            name: "alice".into(),
            admin: false,
            tier: Some("pro".into()),
            org: Some("acme".into()),
            quota: Some(7 << 30),
            created_ms: 5,
        }
    }

    #[test]
    fn account_events_round_trip_inside_file_events() {
        let hash = [0xab; 32];
        let events = [
            AccountEvent::UserAdd {
                user: alice(),
                token: TokenEntry::new("alice", &hash, 5),
            },
            AccountEvent::UserUpdate { user: alice() },
            AccountEvent::TokenAdd {
                token: TokenEntry::new("alice", &[1; 32], 6),
            },
            AccountEvent::TokensRevoke {
                user: "alice".into(),
                at_ms: 7,
            },
            AccountEvent::OrgLimit {
                org: "acme".into(),
                limit: None,
                at_ms: 8,
            },
            AccountEvent::Snapshot {
                at_ms: 9,
                users: vec![alice()],
                tokens: vec![TokenEntry::new("alice", &hash, 5)],
                org_limits: vec![("acme".into(), 500)],
            },
        ];
        for e in events {
            let ev = FileEvent::Account(e);
            let bytes = ev.encode();
            let text = String::from_utf8(bytes.clone()).unwrap();
            assert!(
                text.starts_with("{\"op\":\"account\",\"change\":"),
                "{text}"
            );
            assert_eq!(FileEvent::decode(&bytes).unwrap(), ev);
        }
        // An unknown change is an error, never some other change.
        assert!(
            FileEvent::decode(br#"{"op":"account","change":"user_delete","user":"a"}"#).is_err()
        );
    }

    #[test]
    fn token_hashes_are_hex_both_ways() {
        let hash: [u8; 32] = std::array::from_fn(|i| i as u8 * 7);
        let t = TokenEntry::new("bob", &hash, 1);
        assert_eq!(t.sha256.len(), 64);
        assert_eq!(t.hash(), Some(hash));
        let bad = TokenEntry {
            sha256: "zz".repeat(32),
            ..t
        };
        assert_eq!(bad.hash(), None);
    }
}
