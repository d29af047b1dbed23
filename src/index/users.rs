//! Table family `users` and `tokens`: who may use the HTTP service, and the one function that
//! applies account events (`WriteTx::apply_account`) — shared by live commits and by `recover`.
//!
//! A token is 32 random bytes shown once to its owner; the index keeps only its SHA-256, so a
//! copy of the index does not let anyone in. A fast hash is enough: the input has 256 bits of
//! entropy, so there is nothing to brute-force. Stores made before these tables existed have
//! none until the first user is added; readers treat that as empty.
//!
//! Every row here is also in the journal (`pack::account`), so `recover` rebuilds them. The
//! `meta` entry [`ACCOUNTS_JOURNALED`] says so; an index without it (made before accounts were
//! journaled) gets a snapshot of its accounts journaled on its first read-write open.

use redb::{ReadableTable, ReadableTableMetadata, TableError};
use serde::{Deserialize, Serialize};

use super::schema::{TOKENS, USERS};
use super::{ReadTx, WriteTx, decode_json, ix};
use crate::error::Result;
use crate::pack::Location;
use crate::pack::account::{AccountEvent, TokenEntry};

pub use crate::pack::account::UserRecord;

/// `meta` key, present (value `[1]`) once every account in the index is also in the journal.
pub const ACCOUNTS_JOURNALED: &str = "accounts_journaled";

/// `meta` key: where the latest account snapshot is (pack u32, offset u64, record length u32,
/// little-endian). Account events before it are superseded by it.
pub const ACCOUNTS_SNAPSHOT: &str = "accounts_snapshot";

/// What a token hash points at.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub user: String,
    pub created_ms: i64,
}

fn encode<T: Serialize>(r: &T) -> Vec<u8> {
    serde_json::to_vec(r).expect("user rows serialise")
}

/// Lookups shared by read and write transactions.
macro_rules! account_lookups {
    () => {
        /// Every user, in name order.
        pub fn users(&self) -> Result<Vec<UserRecord>> {
            let t = match self.tx.open_table(USERS) {
                Ok(t) => t,
                Err(TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                Err(e) => return Err(ix("opening users")(e)),
            };
            let mut out = Vec::new();
            for entry in t.iter().map_err(ix("listing users"))? {
                let (_, v) = entry.map_err(ix("listing users"))?;
                out.push(decode_json(v.value(), "user record")?);
            }
            Ok(out)
        }

        /// Every token hash with its record (in hash order).
        pub fn tokens(&self) -> Result<Vec<([u8; 32], TokenRecord)>> {
            let t = match self.tx.open_table(TOKENS) {
                Ok(t) => t,
                Err(TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                Err(e) => return Err(ix("opening tokens")(e)),
            };
            let mut out = Vec::new();
            for entry in t.iter().map_err(ix("listing tokens"))? {
                let (k, v) = entry.map_err(ix("listing tokens"))?;
                out.push((*k.value(), decode_json(v.value(), "token record")?));
            }
            Ok(out)
        }

        /// Where the latest account snapshot is, if there is one (see [`ACCOUNTS_SNAPSHOT`]).
        pub fn latest_account_snapshot(&self) -> Result<Option<Location>> {
            Ok(self.meta(ACCOUNTS_SNAPSHOT)?.and_then(|b| {
                let b: [u8; 16] = b.as_slice().try_into().ok()?;
                Some(Location {
                    pack: u32::from_le_bytes(b[..4].try_into().unwrap()),
                    offset: u64::from_le_bytes(b[4..12].try_into().unwrap()),
                    len: u32::from_le_bytes(b[12..].try_into().unwrap()),
                })
            }))
        }

        /// Whether the journal holds every account of this index (see [`ACCOUNTS_JOURNALED`]).
        pub fn accounts_journaled(&self) -> Result<bool> {
            Ok(self.meta(ACCOUNTS_JOURNALED)?.is_some())
        }

        /// Every account as one snapshot event (see `AccountEvent::Snapshot`).
        pub fn account_snapshot(&self, at_ms: i64) -> Result<AccountEvent> {
            Ok(AccountEvent::Snapshot {
                at_ms,
                users: self.users()?,
                tokens: self
                    .tokens()?
                    .into_iter()
                    .map(|(hash, t)| TokenEntry::new(&t.user, &hash, t.created_ms))
                    .collect(),
                org_limits: self.org_limits()?.into_iter().collect(),
            })
        }
    };
}

impl ReadTx {
    account_lookups!();

    pub fn user(&self, name: &str) -> Result<Option<UserRecord>> {
        let t = match self.tx.open_table(USERS) {
            Ok(t) => t,
            Err(TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(ix("opening users")(e)),
        };
        t.get(name)
            .map_err(ix("reading a user"))?
            .map(|v| decode_json(v.value(), "user record"))
            .transpose()
    }

    pub fn user_count(&self) -> Result<u64> {
        match self.tx.open_table(USERS) {
            Ok(t) => t.len().map_err(ix("counting users")),
            Err(TableError::TableDoesNotExist(_)) => Ok(0),
            Err(e) => Err(ix("opening users")(e)),
        }
    }

    /// The token whose SHA-256 is `hash`.
    pub fn token(&self, hash: &[u8; 32]) -> Result<Option<TokenRecord>> {
        let t = match self.tx.open_table(TOKENS) {
            Ok(t) => t,
            Err(TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(ix("opening tokens")(e)),
        };
        t.get(hash)
            .map_err(ix("reading a token"))?
            .map(|v| decode_json(v.value(), "token record"))
            .transpose()
    }
}

impl WriteTx {
    account_lookups!();

    /// Inserts or replaces a user. A changed organisation takes the user's usage along.
    pub fn put_user(&mut self, r: &UserRecord) -> Result<()> {
        let old_org = self.user(&r.name)?.and_then(|u| u.org);
        self.move_org_usage(&r.name, old_org.as_deref(), r.org.as_deref())?;
        let mut t = self.tx.open_table(USERS).map_err(ix("opening users"))?;
        t.insert(r.name.as_str(), encode(r).as_slice())
            .map_err(ix("writing a user"))?;
        Ok(())
    }

    pub fn user_exists(&self, name: &str) -> Result<bool> {
        let t = self.tx.open_table(USERS).map_err(ix("opening users"))?;
        Ok(t.get(name).map_err(ix("reading a user"))?.is_some())
    }

    pub fn put_token(&mut self, hash: &[u8; 32], r: &TokenRecord) -> Result<()> {
        let mut t = self.tx.open_table(TOKENS).map_err(ix("opening tokens"))?;
        t.insert(hash, encode(r).as_slice())
            .map_err(ix("writing a token"))?;
        Ok(())
    }

    /// How many tokens `user` has.
    pub fn token_count(&self, user: &str) -> Result<usize> {
        Ok(self
            .tokens()?
            .iter()
            .filter(|(_, t)| t.user == user)
            .count())
    }

    /// Removes every token of `user`; returns how many there were.
    pub fn revoke_tokens(&mut self, user: &str) -> Result<usize> {
        let mut t = self.tx.open_table(TOKENS).map_err(ix("opening tokens"))?;
        let mut doomed = Vec::new();
        for entry in t.iter().map_err(ix("listing tokens"))? {
            let (k, v) = entry.map_err(ix("listing tokens"))?;
            let r: TokenRecord = decode_json(v.value(), "token record")?;
            if r.user == user {
                doomed.push(*k.value());
            }
        }
        for k in &doomed {
            t.remove(k).map_err(ix("removing a token"))?;
        }
        Ok(doomed.len())
    }

    /// Marks the index as holding only journaled accounts.
    pub fn set_accounts_journaled(&mut self) -> Result<()> {
        self.set_meta(ACCOUNTS_JOURNALED, &[1])
    }

    /// Records where the latest account snapshot is.
    pub fn set_latest_account_snapshot(&mut self, at: Location) -> Result<()> {
        let mut b = Vec::with_capacity(16);
        b.extend_from_slice(&at.pack.to_le_bytes());
        b.extend_from_slice(&at.offset.to_le_bytes());
        b.extend_from_slice(&at.len.to_le_bytes());
        self.set_meta(ACCOUNTS_SNAPSHOT, &b)
    }

    /// Applies one account event: the same code for a live commit and for replay by
    /// `recover`. The live path has checked the change against this transaction first (the
    /// user exists, the name is free); replay takes the journal as it is, so an event after
    /// damage still applies what it says (a `user_update` of a user whose `user_add` was lost
    /// brings the user back). An event naming a token whose hash is not 64 hex digits is
    /// corrupt and applies nothing at all. Owners whose limits may have changed are marked for
    /// the quota warning levels.
    pub fn apply_account(&mut self, event: &AccountEvent) -> Result<()> {
        // Checked before anything changes: an event applies whole or not at all.
        let tokens: &[TokenEntry] = match event {
            AccountEvent::UserAdd { token, .. } | AccountEvent::TokenAdd { token } => {
                std::slice::from_ref(token)
            }
            AccountEvent::Snapshot { tokens, .. } => tokens,
            _ => &[],
        };
        if let Some(bad) = tokens.iter().find(|t| t.hash().is_none()) {
            return Err(crate::error::Error::corrupt(
                "account event",
                format!("a token of user {:?} has no valid SHA-256", bad.user),
            ));
        }
        match event {
            AccountEvent::UserAdd { user, token } => {
                self.put_user(user)?;
                self.add_token(token)?;
            }
            AccountEvent::UserUpdate { user } => self.put_user(user)?,
            AccountEvent::TokenAdd { token } => self.add_token(token)?,
            AccountEvent::TokensRevoke { user, .. } => {
                self.revoke_tokens(user)?;
            }
            AccountEvent::OrgLimit { org, limit, .. } => self.set_org_limit(org, *limit)?,
            AccountEvent::Snapshot {
                users,
                tokens,
                org_limits,
                ..
            } => {
                // Replaces everything: what the snapshot does not name was removed (revoked
                // tokens, cleared limits) by events that may no longer be in the packs.
                self.clear_accounts()?;
                for u in users {
                    self.put_user(u)?;
                    self.usage_touched.insert(u.name.clone());
                }
                for t in tokens {
                    self.add_token(t)?;
                }
                for (org, limit) in org_limits {
                    self.set_org_limit(org, Some(*limit))?;
                }
            }
        }
        if let Some(name) = event.user() {
            self.usage_touched.insert(name.to_string());
        }
        Ok(())
    }

    /// Adds a token whose hash `apply_account` checked.
    fn add_token(&mut self, t: &TokenEntry) -> Result<()> {
        let hash = t.hash().expect("checked by apply_account");
        self.put_token(
            &hash,
            &TokenRecord {
                user: t.user.clone(),
                created_ms: t.created_ms,
            },
        )
    }

    /// Removes every user (their usage leaves their organisations), token and organisation
    /// limit.
    fn clear_accounts(&mut self) -> Result<()> {
        for u in self.users()? {
            self.move_org_usage(&u.name, u.org.as_deref(), None)?;
            self.usage_touched.insert(u.name.clone());
        }
        self.tx
            .open_table(USERS)
            .map_err(ix("opening users"))?
            .retain(|_, _| false)
            .map_err(ix("clearing users"))?;
        self.tx
            .open_table(TOKENS)
            .map_err(ix("opening tokens"))?
            .retain(|_, _| false)
            .map_err(ix("clearing tokens"))?;
        for (org, _) in self.org_limits()? {
            self.set_org_limit(&org, None)?;
        }
        Ok(())
    }
}
