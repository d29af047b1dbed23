//! Users and bearer tokens of the HTTP service, kept in the index.
//!
//! A user name is the `owner` of the files that user uploads. Tokens are `tsr_` followed by 43
//! base64url characters (32 random bytes); [`Store::user_add`] and [`Store::user_new_token`]
//! return one exactly once, and the index keeps only its SHA-256 (see `index::users`).

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::index::{TokenRecord, UserRecord};
use crate::store::Store;
use crate::validate;

/// What a new user gets.
#[derive(Debug, Clone, Default)]
pub struct NewUser {
    pub admin: bool,
    pub tier: Option<String>,
    pub org: Option<String>,
    pub quota: Option<u64>,
}

const TOKEN_PREFIX: &str = "tsr_";
const URL_SAFE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// 32 bytes from the operating system's CSPRNG, spelled as a token.
fn new_token() -> Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| Error::Io {
        context: "drawing random bytes for a token".into(),
        source: std::io::Error::other(e.to_string()),
    })?;
    let mut s = String::with_capacity(TOKEN_PREFIX.len() + 43);
    s.push_str(TOKEN_PREFIX);
    // base64url without padding: 6 bits per character.
    let mut acc = 0u32;
    let mut bits = 0;
    for b in bytes {
        acc = (acc << 8) | b as u32;
        bits += 8;
        while bits >= 6 {
            bits -= 6;
            s.push(URL_SAFE[((acc >> bits) & 63) as usize] as char);
        }
    }
    if bits > 0 {
        s.push(URL_SAFE[((acc << (6 - bits)) & 63) as usize] as char);
    }
    Ok(s)
}

fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Store {
    /// Adds a user and returns it with its first token, which is not stored anywhere: show it
    /// to the user now or never. `AlreadyExists` when the name is taken.
    pub fn user_add(&self, name: &str, new: NewUser) -> Result<(UserRecord, String)> {
        validate::check_label("user name", name)?;
        if let Some(org) = &new.org {
            validate::check_label("organisation", org)?;
        }
        self.check_tier(new.tier.as_deref())?;
        let now = self.inner.config.clock.now_ms();
        let user = UserRecord {
            name: name.to_string(),
            admin: new.admin,
            tier: new.tier,
            org: new.org,
            quota: new.quota,
            created_ms: now,
        };
        let token = new_token()?;
        let mut w = self.inner.index.write()?;
        if w.user_exists(name)? {
            return Err(Error::AlreadyExists {
                what: format!("user {name:?}"),
            });
        }
        w.put_user(&user)?;
        w.put_token(
            &token_hash(&token),
            &TokenRecord {
                user: name.to_string(),
                created_ms: now,
            },
        )?;
        // An owner that stored files before becoming a user starts at the right level.
        let mut events = Vec::new();
        self.inner
            .quotas
            .settle_owner(&mut w, name, now, &mut events)?;
        w.commit()?;
        self.inner.quotas.publish(events);
        Ok((user, token))
    }

    /// Issues another token for an existing user; older tokens stay valid.
    pub fn user_new_token(&self, name: &str) -> Result<String> {
        let token = new_token()?;
        let mut w = self.inner.index.write()?;
        if !w.user_exists(name)? {
            return Err(Error::not_found(format!("user {name:?}")));
        }
        w.put_token(
            &token_hash(&token),
            &TokenRecord {
                user: name.to_string(),
                created_ms: self.inner.config.clock.now_ms(),
            },
        )?;
        w.commit()?;
        Ok(token)
    }

    /// Revokes every token of a user; returns how many there were.
    pub fn user_revoke_tokens(&self, name: &str) -> Result<usize> {
        let mut w = self.inner.index.write()?;
        let n = w.revoke_tokens(name)?;
        w.commit()?;
        Ok(n)
    }

    /// Changes a stored user (tier, organisation, quota, admin flag). A new organisation
    /// takes the user's usage along; the warning level follows the new limit.
    pub fn user_update(&self, user: &UserRecord) -> Result<()> {
        self.check_tier(user.tier.as_deref())?;
        let mut w = self.inner.index.write()?;
        if !w.user_exists(&user.name)? {
            return Err(Error::not_found(format!("user {:?}", user.name)));
        }
        w.put_user(user)?;
        let mut events = Vec::new();
        let now = self.inner.config.clock.now_ms();
        self.inner
            .quotas
            .settle_owner(&mut w, &user.name, now, &mut events)?;
        w.commit()?;
        self.inner.quotas.publish(events);
        Ok(())
    }

    /// A tier must be one the quota configuration knows.
    fn check_tier(&self, tier: Option<&str>) -> Result<()> {
        let c = &self.inner.quotas.config;
        match tier {
            Some(t) if !c.tiers.contains_key(t) => Err(Error::InvalidInput(format!(
                "tier {t:?} is not configured (known: {})",
                c.tier_names()
            ))),
            _ => Ok(()),
        }
    }

    pub fn user(&self, name: &str) -> Result<UserRecord> {
        self.inner
            .index
            .read()?
            .user(name)?
            .ok_or_else(|| Error::not_found(format!("user {name:?}")))
    }

    pub fn users(&self) -> Result<Vec<UserRecord>> {
        self.inner.index.read()?.users()
    }

    pub fn user_count(&self) -> Result<u64> {
        self.inner.index.read()?.user_count()
    }

    /// The user a bearer token belongs to, or `None` for an unknown token.
    pub fn authenticate(&self, token: &str) -> Result<Option<UserRecord>> {
        if !token.starts_with(TOKEN_PREFIX) || token.len() > 128 {
            return Ok(None);
        }
        let r = self.inner.index.read()?;
        match r.token(&token_hash(token))? {
            Some(t) => r.user(&t.user),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_long_random_and_url_safe() {
        let a = new_token().unwrap();
        let b = new_token().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), TOKEN_PREFIX.len() + 43);
        assert!(a[4..].bytes().all(|c| URL_SAFE.contains(&c)), "{a}");
    }
}
