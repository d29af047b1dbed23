//! Users and bearer tokens of the HTTP service, kept in the index and journaled in the packs.
//!
//! A user name is the `owner` of the files that user uploads. Tokens are `tsr_` followed by 43
//! base64url characters (32 random bytes); [`Store::user_add`] and [`Store::user_new_token`]
//! return one exactly once, and the index keeps only its SHA-256 (see `index::users`).
//!
//! Every change (a user added or updated, a token issued, tokens revoked, a quota override or
//! an organisation limit set) is an [`AccountChange`] committed through the committer: one
//! account event record appended by the commit leader inside the index transaction that
//! applies it, synced before that transaction commits. So no account change commits without
//! its journal record, and `recover` replays them in commit order (a revoked token stays
//! revoked; one issued after the revocation works).

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::index::{UserRecord, WriteTx};
use crate::pack::account::{AccountEvent, TokenEntry};
use crate::store::{Inner, Store};
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

/// A change to the accounts, as callers queue it with the committer. The commit leader checks
/// it against its transaction ([`plan`]), journals the resulting [`AccountEvent`] and applies
/// it with `WriteTx::apply_account`, the code `recover` replays the journal with.
pub(crate) enum AccountChange {
    /// A new user with its first token (by hash). `created_ms` is decided by the leader.
    Add {
        user: UserRecord,
        token: [u8; 32],
    },
    /// Admin flag, tier, organisation, quota override; the name and creation time stay.
    Update(UserRecord),
    /// The quota override set, or cleared with `None`.
    Quota {
        user: String,
        quota: Option<u64>,
    },
    /// Another token (by hash).
    Token {
        user: String,
        token: [u8; 32],
    },
    /// Every token of the user.
    RevokeTokens {
        user: String,
    },
    OrgLimit {
        org: String,
        limit: Option<u64>,
    },
    /// Journal the accounts the index holds, unless it says they are journaled already.
    Snapshot,
}

/// What an account change did.
#[derive(Debug, Default)]
pub(crate) struct AccountDone {
    /// The user as stored after the change (adds and updates).
    pub user: Option<UserRecord>,
    /// Tokens revoked.
    pub revoked: usize,
}

/// What the commit leader does with an account change.
pub(crate) enum AccountPlan {
    /// Journal the event and apply it.
    Apply(AccountEvent, AccountDone),
    /// Journal this snapshot (none when there are no accounts) and mark the index journaled;
    /// the index holds it already.
    Journal(Option<AccountEvent>),
    /// Nothing to journal (no tokens to revoke, accounts journaled already).
    Nothing(AccountDone),
}

/// Checks `change` against the leader's transaction and decides the event. A change that
/// cannot apply fails alone, before anything is written.
pub(crate) fn plan(w: &WriteTx, now: i64, change: AccountChange) -> Result<AccountPlan> {
    let existing = |name: &str| {
        w.user(name)?
            .ok_or_else(|| Error::not_found(format!("user {name:?}")))
    };
    Ok(match change {
        AccountChange::Add { mut user, token } => {
            if w.user_exists(&user.name)? {
                return Err(Error::AlreadyExists {
                    what: format!("user {:?}", user.name),
                });
            }
            user.created_ms = now;
            let token = TokenEntry::new(&user.name, &token, now);
            AccountPlan::Apply(
                AccountEvent::UserAdd {
                    user: user.clone(),
                    token,
                },
                AccountDone {
                    user: Some(user),
                    revoked: 0,
                },
            )
        }
        AccountChange::Update(mut user) => {
            user.created_ms = existing(&user.name)?.created_ms;
            updated(user)
        }
        AccountChange::Quota { user, quota } => {
            let mut u = existing(&user)?;
            u.quota = quota;
            updated(u)
        }
        AccountChange::Token { user, token } => {
            existing(&user)?;
            AccountPlan::Apply(
                AccountEvent::TokenAdd {
                    token: TokenEntry::new(&user, &token, now),
                },
                AccountDone::default(),
            )
        }
        AccountChange::RevokeTokens { user } => match w.token_count(&user)? {
            0 => AccountPlan::Nothing(AccountDone::default()),
            n => AccountPlan::Apply(
                AccountEvent::TokensRevoke { user, at_ms: now },
                AccountDone {
                    user: None,
                    revoked: n,
                },
            ),
        },
        AccountChange::OrgLimit { org, limit } => AccountPlan::Apply(
            AccountEvent::OrgLimit {
                org,
                limit,
                at_ms: now,
            },
            AccountDone::default(),
        ),
        AccountChange::Snapshot => {
            if w.accounts_journaled()? {
                AccountPlan::Nothing(AccountDone::default())
            } else {
                let snapshot = w.account_snapshot(now)?;
                AccountPlan::Journal((!snapshot.is_empty_snapshot()).then_some(snapshot))
            }
        }
    })
}

fn updated(user: UserRecord) -> AccountPlan {
    AccountPlan::Apply(
        AccountEvent::UserUpdate { user: user.clone() },
        AccountDone {
            user: Some(user),
            revoked: 0,
        },
    )
}

/// Journals the accounts of an index made before accounts were journaled, once: on the first
/// read-write open. A crash before the commit leaves the index unmarked (the next open does it
/// again); a snapshot record that became durable without its commit holds exactly what the
/// index held, so replaying it changes nothing. A failure is logged, not fatal: the store
/// works as before and the next open tries again.
pub(crate) fn journal_existing_accounts(inner: &Inner) {
    // Looked up first: an open of a journaled store (nearly every open) commits nothing.
    let done = inner.index.read().and_then(|r| r.accounts_journaled());
    if let Ok(true) = done {
        return;
    }
    if let Err(e) = done.and_then(|_| {
        inner
            .committer
            .commit_account(inner, AccountChange::Snapshot)
    }) {
        tracing::warn!(
            "could not journal the accounts of this store ({e}); `recover` would lose them \
             until a later read-write open journals them"
        );
    }
}

impl Store {
    /// Adds a user and returns it with its first token, which is not stored anywhere: show it
    /// to the user now or never. `AlreadyExists` when the name is taken. Journaled: `recover`
    /// brings the user back.
    pub fn user_add(&self, name: &str, new: NewUser) -> Result<(UserRecord, String)> {
        validate::check_label("user name", name)?;
        if let Some(org) = &new.org {
            validate::check_label("organisation", org)?;
        }
        self.check_tier(new.tier.as_deref())?;
        let user = UserRecord {
            name: name.to_string(),
            admin: new.admin,
            tier: new.tier,
            org: new.org,
            quota: new.quota,
            created_ms: 0,
        };
        let token = new_token()?;
        let done = self.commit_account(AccountChange::Add {
            user,
            token: token_hash(&token),
        })?;
        let user = done.user.expect("an added user is returned");
        Ok((user, token))
    }

    /// Issues another token for an existing user; older tokens stay valid.
    pub fn user_new_token(&self, name: &str) -> Result<String> {
        let token = new_token()?;
        self.commit_account(AccountChange::Token {
            user: name.to_string(),
            token: token_hash(&token),
        })?;
        Ok(token)
    }

    /// Revokes every token of a user; returns how many there were. Tokens issued later work.
    pub fn user_revoke_tokens(&self, name: &str) -> Result<usize> {
        Ok(self
            .commit_account(AccountChange::RevokeTokens {
                user: name.to_string(),
            })?
            .revoked)
    }

    /// Changes a stored user (tier, organisation, quota, admin flag; not its creation time).
    /// A new organisation takes the user's usage along; the warning level follows the new
    /// limit.
    pub fn user_update(&self, user: &UserRecord) -> Result<()> {
        if let Some(org) = &user.org {
            validate::check_label("organisation", org)?;
        }
        self.check_tier(user.tier.as_deref())?;
        self.commit_account(AccountChange::Update(user.clone()))?;
        Ok(())
    }

    pub(crate) fn commit_account(&self, change: AccountChange) -> Result<AccountDone> {
        self.inner.committer.commit_account(&self.inner, change)
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
