//! Table family `users` and `tokens`: who may use the HTTP service.
//!
//! A token is 32 random bytes shown once to its owner; the index keeps only its SHA-256, so a
//! copy of the index does not let anyone in. A fast hash is enough: the input has 256 bits of
//! entropy, so there is nothing to brute-force. Stores made before these tables existed have
//! none until the first user is added; readers treat that as empty.

use redb::{ReadableTable, ReadableTableMetadata, TableError};
use serde::{Deserialize, Serialize};

use super::schema::{TOKENS, USERS};
use super::{ReadTx, WriteTx, decode_json, ix};
use crate::error::Result;

/// A user as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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

/// What a token hash points at.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub user: String,
    pub created_ms: i64,
}

fn encode<T: Serialize>(r: &T) -> Vec<u8> {
    serde_json::to_vec(r).expect("user rows serialise")
}

impl ReadTx {
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

impl ReadTx {
    /// Every token hash with its record (for `recover`, which carries them over).
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
}

impl WriteTx {
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
}
