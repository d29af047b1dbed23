//! Quotas: limits per user (tier or override) and per organisation, usage counters, admission
//! of uploads by reservation, warnings at 80/90/95 %, and reports.
//!
//! - **Usage** is the logical bytes an owner stores: every retained version, soft-deleted
//!   files included, until purged or dropped. The counters live in the index (`index/quota.rs`)
//!   and change in the transaction of the commit that changes the versions.
//! - **Admission** happens before data is stored. A put reserves its declared size (or, with
//!   none, grows its reservation as the stream arrives, in steps) in the in-memory
//!   [`Reservations`] table: it fits when usage + every other reservation + its own stays
//!   within the owner's limit and the organisation's. The check and the insertion happen under
//!   one mutex, so concurrent uploads cannot overshoot. A reservation is released after the
//!   commit that turned it into usage (so for a moment it counts twice, never zero times), or
//!   when the put fails. A resumable session holds its reservation while it lives (its
//!   length; a deferred one an estimate, see `upload::SessionLimits`); the table is rebuilt
//!   from the sessions at open.
//! - **Warnings**: each commit that changes an owner's usage compares the owner's level with
//!   the last level raised (kept in the index, in the same transaction) and raises each
//!   threshold crossed upwards once: to subscribers ([`Store::subscribe_quota_events`]) and as
//!   a log line. Dropping below lowers the stored level silently, so the next rise raises again.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};
use crate::index::{ReadTx, UserRecord, WriteTx, day_of};
use crate::store::{Inner, Store};

/// 10^9: the SPEC's tiers are in decimal gigabytes.
const GB: u64 = 1_000_000_000;
/// How much an undeclared stream's reservation grows at a time (fewer trips to the table).
pub(crate) const STEP: u64 = 4 << 20;
/// Events a subscriber may leave unread before further ones are dropped for it.
const SUBSCRIBER_QUEUE: usize = 1024;

/// A limit: bytes, or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit(pub Option<u64>);

impl Serialize for Limit {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self.0 {
            // Bytes, exactly: a rounded "1.2 MB" would not read back as the same limit.
            Some(n) => s.serialize_u64(n),
            None => s.serialize_str("unlimited"),
        }
    }
}

impl<'de> Deserialize<'de> for Limit {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Limit, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(Limit(Some(n))),
            Raw::S(s) if s.eq_ignore_ascii_case("unlimited") => Ok(Limit(None)),
            Raw::S(s) => parse_size(&s)
                .map(|n| Limit(Some(n)))
                .map_err(serde::de::Error::custom),
        }
    }
}

/// Parses a size such as `5MiB`, `1GB` or `1024`.
pub fn parse_size(s: &str) -> std::result::Result<u64, String> {
    s.trim()
        .parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| format!("{s:?} is not a size (e.g. 500MB, 5GiB, unlimited): {e}"))
}

/// What the quota rules are. Default: the SPEC's tiers; users without a tier, owners without a
/// user record and organisations without a limit are unlimited.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QuotaConfig {
    /// Tier name → limit. Default free 1 GB, basic 10 GB, pro 100 GB, enterprise unlimited.
    pub tiers: BTreeMap<String, Limit>,
    /// The tier of users created without one. Default none: unlimited.
    pub default_tier: Option<String>,
    /// Limit of owners that are not users (library and CLI owners). Default unlimited.
    pub unregistered: Limit,
    /// Organisation → limit. `tessera quota org set` overrides these at run time.
    pub orgs: BTreeMap<String, Limit>,
    /// The HTTP service POSTs every warning here as JSON (`http://` only). Default none.
    pub webhook: Option<String>,
    /// How long one webhook POST may take. Default 5 s.
    #[serde(with = "humantime_serde")]
    pub webhook_timeout: std::time::Duration,
}

/// Durations as humantime strings ("5s").
mod humantime_serde {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

impl Default for QuotaConfig {
    fn default() -> Self {
        QuotaConfig {
            tiers: [
                ("free", Some(GB)),
                ("basic", Some(10 * GB)),
                ("pro", Some(100 * GB)),
                ("enterprise", None),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), Limit(v)))
            .collect(),
            default_tier: None,
            unregistered: Limit(None),
            orgs: BTreeMap::new(),
            webhook: None,
            webhook_timeout: std::time::Duration::from_secs(5),
        }
    }
}

impl QuotaConfig {
    /// Checks that the default tier exists and the webhook is a URL the service can call.
    pub fn check(&self) -> std::result::Result<(), String> {
        if let Some(url) = &self.webhook
            && !url.starts_with("http://")
        {
            return Err(format!(
                "quotas.webhook must be an http:// URL (a local relay can forward to https), got {url:?}"
            ));
        }
        if let Some(t) = &self.default_tier
            && !self.tiers.contains_key(t)
        {
            return Err(format!(
                "quotas.default_tier is {t:?}, which is not a tier (known: {})",
                self.tier_names()
            ));
        }
        Ok(())
    }

    pub(crate) fn tier_names(&self) -> String {
        self.tiers.keys().cloned().collect::<Vec<_>>().join(", ")
    }

    /// A user's limit: the override, else the tier's (the default tier when the user has none).
    pub fn user_limit(&self, u: &UserRecord) -> Option<u64> {
        if let Some(q) = u.quota {
            return Some(q);
        }
        let tier = u.tier.as_ref().or(self.default_tier.as_ref())?;
        match self.tiers.get(tier) {
            Some(l) => l.0,
            None => {
                // A tier taken out of the configuration: no limit rather than refusing every
                // upload of its users; the operator sees why.
                tracing::warn!(user = %u.name, %tier, "unknown tier: no quota applies");
                None
            }
        }
    }
}

/// Warning levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    None,
    /// 80 % and more.
    Medium,
    /// 90 % and more.
    High,
    /// 95 % and more.
    Critical,
}

impl Level {
    const ALL: [Level; 4] = [Level::None, Level::Medium, Level::High, Level::Critical];

    /// The level of `used` out of `limit`.
    pub fn of(used: u64, limit: Option<u64>) -> Level {
        let Some(limit) = limit else {
            return Level::None;
        };
        if limit == 0 {
            return if used > 0 {
                Level::Critical
            } else {
                Level::None
            };
        }
        // Integer thresholds: exactly 80 % is medium.
        let u = used as u128 * 100;
        let l = limit as u128;
        if u >= 95 * l {
            Level::Critical
        } else if u >= 90 * l {
            Level::High
        } else if u >= 80 * l {
            Level::Medium
        } else {
            Level::None
        }
    }

    fn code(self) -> u8 {
        self as u8
    }

    fn from_code(c: u8) -> Level {
        Level::ALL[(c as usize).min(3)]
    }

    /// The threshold in percent.
    pub fn threshold(self) -> u32 {
        match self {
            Level::None => 0,
            Level::Medium => 80,
            Level::High => 90,
            Level::Critical => 95,
        }
    }
}

/// A quota warning: `owner` crossed `level`'s threshold upwards.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QuotaEvent {
    pub owner: String,
    pub level: Level,
    /// The threshold crossed, in percent.
    pub threshold: u32,
    pub used: u64,
    pub limit: u64,
    pub percentage: f64,
    pub at_ms: i64,
}

fn percentage(used: u64, limit: Option<u64>) -> Option<f64> {
    limit.map(|l| {
        if l == 0 {
            100.0
        } else {
            (used as f64 / l as f64 * 10_000.0).round() / 100.0
        }
    })
}

/// Which limit refused an upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    User,
    Organisation,
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Scope::User => "user",
            Scope::Organisation => "organisation",
        })
    }
}

/// The figures of a refusal (carried by [`Error::QuotaExceeded`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Exceeded {
    pub scope: Scope,
    /// The user (owner) or organisation whose limit it is.
    pub name: String,
    /// Bytes stored.
    pub used: u64,
    /// Bytes held by other uploads in flight.
    pub reserved: u64,
    pub limit: u64,
    /// Bytes the refused upload needed in all (its declared size, or what it had streamed
    /// so far).
    pub requested: u64,
    /// used / limit, in percent.
    pub percentage: f64,
}

/// Who holds a reservation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Key {
    Put(u64),
    Session(String),
}

#[derive(Debug, Clone)]
struct Entry {
    owner: String,
    org: Option<String>,
    bytes: u64,
}

/// Bytes held by uploads in flight, per owner and organisation.
#[derive(Debug, Default)]
struct Table {
    entries: HashMap<Key, Entry>,
    by_owner: HashMap<String, u64>,
    by_org: HashMap<String, u64>,
}

impl Table {
    fn set(&mut self, key: Key, e: Entry) {
        self.remove(&key);
        *self.by_owner.entry(e.owner.clone()).or_default() += e.bytes;
        if let Some(o) = &e.org {
            *self.by_org.entry(o.clone()).or_default() += e.bytes;
        }
        self.entries.insert(key, e);
    }

    fn remove(&mut self, key: &Key) -> Option<Entry> {
        let e = self.entries.remove(key)?;
        let dec = |m: &mut HashMap<String, u64>, k: &str| {
            if let Some(v) = m.get_mut(k) {
                *v = v.saturating_sub(e.bytes);
                if *v == 0 {
                    m.remove(k);
                }
            }
        };
        dec(&mut self.by_owner, &e.owner);
        if let Some(o) = &e.org {
            dec(&mut self.by_org, o);
        }
        Some(e)
    }
}

/// The limits that apply to an owner, as of one index snapshot.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    pub user: Option<UserRecord>,
    pub limit: Option<u64>,
    pub org: Option<String>,
    pub org_limit: Option<u64>,
}

impl Limits {
    fn unlimited(&self) -> bool {
        self.limit.is_none() && self.org_limit.is_none()
    }
}

/// The store's quota state: configuration, reservations, subscribers.
pub(crate) struct Quotas {
    pub config: QuotaConfig,
    table: Mutex<Table>,
    next: AtomicU64,
    subscribers: Mutex<Vec<Sender<QuotaEvent>>>,
}

macro_rules! limits_fn {
    ($name:ident, $tx:ty) => {
        pub(crate) fn $name(&self, r: &$tx, owner: &str) -> Result<Limits> {
            let user = r.user(owner)?;
            let limit = match &user {
                Some(u) => self.config.user_limit(u),
                None => self.config.unregistered.0,
            };
            let org = user.as_ref().and_then(|u| u.org.clone());
            let org_limit = match &org {
                Some(o) => match r.org_limit(o)? {
                    Some(l) => Some(l),
                    None => self.config.orgs.get(o).and_then(|l| l.0),
                },
                None => None,
            };
            Ok(Limits {
                user,
                limit,
                org,
                org_limit,
            })
        }
    };
}

impl Quotas {
    pub fn new(config: QuotaConfig) -> Self {
        Quotas {
            config,
            table: Mutex::new(Table::default()),
            next: AtomicU64::new(1),
            subscribers: Mutex::new(Vec::new()),
        }
    }

    limits_fn!(limits, ReadTx);
    limits_fn!(limits_w, WriteTx);

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn new_put_key(&self) -> Key {
        Key::Put(self.next.fetch_add(1, Ordering::Relaxed))
    }

    /// Sets `key`'s reservation for `owner` to `bytes` if that fits beside usage and every
    /// other reservation; otherwise leaves it as it was and says which limit refused.
    /// Shrinking always succeeds.
    pub fn reserve(&self, inner: &Inner, key: &Key, owner: &str, bytes: u64) -> Result<()> {
        let mut t = self.table();
        // The snapshot starts under the mutex: a reservation released before we got it was
        // released after its commit, which the snapshot therefore sees.
        let r = inner.index.read()?;
        let lim = self.limits(&r, owner)?;
        let mine = t.entries.get(key).map_or(0, |e| e.bytes);
        if bytes > mine {
            if let Some(limit) = lim.limit {
                let used = r.owner_usage(owner)?;
                let reserved = t
                    .by_owner
                    .get(owner)
                    .copied()
                    .unwrap_or(0)
                    .saturating_sub(mine);
                if used.saturating_add(reserved).saturating_add(bytes) > limit {
                    return Err(exceeded(Scope::User, owner, used, reserved, limit, bytes));
                }
            }
            if let (Some(org), Some(limit)) = (&lim.org, lim.org_limit) {
                let used = r.org_usage(org)?;
                let reserved = t.by_org.get(org).copied().unwrap_or(0).saturating_sub(mine);
                if used.saturating_add(reserved).saturating_add(bytes) > limit {
                    return Err(exceeded(
                        Scope::Organisation,
                        org,
                        used,
                        reserved,
                        limit,
                        bytes,
                    ));
                }
            }
        }
        t.set(
            key.clone(),
            Entry {
                owner: owner.to_string(),
                org: lim.org,
                bytes,
            },
        );
        Ok(())
    }

    /// Sets a reservation without checking (sessions admitted before a restart, or shrinking).
    pub fn force(&self, key: Key, owner: &str, org: Option<String>, bytes: u64) {
        self.table().set(
            key,
            Entry {
                owner: owner.to_string(),
                org,
                bytes,
            },
        );
    }

    /// Sets `key`'s reservation to `bytes` if it holds more (keeps owner and organisation).
    pub fn shrink_to(&self, key: &Key, bytes: u64) {
        let mut t = self.table();
        if let Some(e) = t.entries.get(key)
            && e.bytes > bytes
        {
            let e = Entry { bytes, ..e.clone() };
            t.set(key.clone(), e);
        }
    }

    pub fn release(&self, key: &Key) {
        self.table().remove(key);
    }

    /// Bytes `key` holds.
    pub fn held(&self, key: &Key) -> u64 {
        self.table().entries.get(key).map_or(0, |e| e.bytes)
    }

    /// Bytes reserved for `owner` by uploads in flight.
    pub fn reserved_for(&self, owner: &str) -> u64 {
        self.table().by_owner.get(owner).copied().unwrap_or(0)
    }

    fn snapshot(&self) -> ReservationSnapshot {
        let t = self.table();
        ReservationSnapshot {
            entries: t.entries.len(),
            bytes: t.entries.values().map(|e| e.bytes).sum(),
            by_owner: t.by_owner.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            by_org: t.by_org.iter().map(|(k, v)| (k.clone(), *v)).collect(),
        }
    }

    /// Compares the warning level of every owner whose usage `w` changed with the last level
    /// raised, records the new level in `w`, and returns the crossings to announce once `w`
    /// has committed.
    pub fn settle(&self, w: &mut WriteTx, now_ms: i64) -> Result<Vec<QuotaEvent>> {
        let mut events = Vec::new();
        for owner in w.take_usage_touched() {
            self.settle_owner(w, &owner, now_ms, &mut events)?;
        }
        Ok(events)
    }

    pub fn settle_owner(
        &self,
        w: &mut WriteTx,
        owner: &str,
        now_ms: i64,
        events: &mut Vec<QuotaEvent>,
    ) -> Result<()> {
        let lim = self.limits_w(w, owner)?;
        let used = w.owner_usage(owner)?;
        let level = Level::of(used, lim.limit);
        let last = Level::from_code(w.quota_level(owner)?);
        if level == last {
            return Ok(());
        }
        w.set_quota_level(owner, level.code())?;
        if level > last {
            let limit = lim.limit.expect("a level above none has a limit");
            for l in Level::ALL.into_iter().filter(|l| *l > last && *l <= level) {
                events.push(QuotaEvent {
                    owner: owner.to_string(),
                    level: l,
                    threshold: l.threshold(),
                    used,
                    limit,
                    percentage: percentage(used, Some(limit)).unwrap_or(0.0),
                    at_ms: now_ms,
                });
            }
        }
        Ok(())
    }

    /// Announces committed crossings: a log line each, and every subscriber gets them (one
    /// that stopped listening is dropped; one that fell far behind misses them, logged).
    pub fn publish(&self, events: Vec<QuotaEvent>) {
        if events.is_empty() {
            return;
        }
        let mut subs = self.subscribers.lock().unwrap_or_else(|e| e.into_inner());
        for ev in events {
            tracing::warn!(
                owner = %ev.owner,
                level = ?ev.level,
                used = ev.used,
                limit = ev.limit,
                percentage = ev.percentage,
                "quota warning: {} has used {:.2} % of its quota",
                ev.owner,
                ev.percentage
            );
            subs.retain(|s| match s.try_send(ev.clone()) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) => {
                    tracing::warn!(owner = %ev.owner, "a quota event subscriber is full; event dropped");
                    true
                }
                Err(TrySendError::Disconnected(_)) => false,
            });
        }
    }

    fn subscribe(&self) -> Receiver<QuotaEvent> {
        let (tx, rx) = crossbeam_channel::bounded(SUBSCRIBER_QUEUE);
        self.subscribers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(tx);
        rx
    }
}

fn exceeded(
    scope: Scope,
    name: &str,
    used: u64,
    reserved: u64,
    limit: u64,
    requested: u64,
) -> Error {
    Error::QuotaExceeded(Box::new(Exceeded {
        scope,
        name: name.to_string(),
        used,
        reserved,
        limit,
        requested,
        percentage: percentage(used, Some(limit)).unwrap_or(0.0),
    }))
}

/// The reservation table at one instant (for reports and tests).
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReservationSnapshot {
    /// Reservations held (puts and sessions).
    pub entries: usize,
    pub bytes: u64,
    pub by_owner: BTreeMap<String, u64>,
    pub by_org: BTreeMap<String, u64>,
}

/// A reservation the puts of one request draw on in turn (a multipart upload's declared body,
/// see [`crate::batch`]): reserved before any content is read, kept until the request's batch
/// has committed or been dropped. Each put covers its content past what the puts before it
/// took (`drawn`), growing the reservation only when the request sends more than it reserved.
#[derive(Debug)]
pub(crate) struct Pool {
    key: Key,
    owner: String,
    /// Reserved up front; the pool never shrinks below it before it ends.
    floor: u64,
    /// Content bytes of the puts staged from it so far.
    drawn: AtomicU64,
}

impl Pool {
    /// Counts a staged put's content as taken from the pool.
    pub fn draw(&self, bytes: u64) {
        self.drawn.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Gives back what a failed put grew the pool by: it keeps its floor and what the staged
    /// puts took.
    pub fn settle(&self, quotas: &Quotas) {
        let keep = self.floor.max(self.drawn.load(Ordering::Relaxed));
        quotas.shrink_to(&self.key, keep);
    }

    pub fn release(&self, quotas: &Quotas) {
        quotas.release(&self.key);
    }

    /// Bytes reserved up front.
    pub fn floor(&self) -> u64 {
        self.floor
    }
}

impl Quotas {
    /// Reserves for a request of `owner` whose body is `declared` bytes long, of which at most
    /// `overhead` are not content (multipart framing and form fields), before any of it is
    /// read. `None` when no limit applies (nothing to reserve).
    ///
    /// The rule: the whole `declared` length when it fits — the content can be no longer, so
    /// the request is covered; else at least `declared - overhead` bytes of content are coming,
    /// and when even that does not fit the request is refused now ([`Error::QuotaExceeded`]);
    /// when it does, that lower bound is reserved and the rest is grown into as content
    /// arrives, exactly, like an undeclared stream. Without a declared length nothing is
    /// reserved up front.
    pub fn pool(
        &self,
        inner: &Inner,
        owner: &str,
        declared: Option<u64>,
        overhead: u64,
    ) -> Result<Option<Pool>> {
        if self.limits(&inner.index.read()?, owner)?.unlimited() {
            return Ok(None);
        }
        let key = self.new_put_key();
        let floor = match declared {
            None => 0,
            Some(n) => match self.reserve(inner, &key, owner, n) {
                Ok(()) => n,
                Err(_) => {
                    let lower = n.saturating_sub(overhead);
                    self.reserve(inner, &key, owner, lower)?;
                    lower
                }
            },
        };
        if floor == 0 {
            // An entry of 0 bytes, so growth has a row to grow (and `release` one to drop).
            self.reserve(inner, &key, owner, 0)?;
        }
        Ok(Some(Pool {
            key,
            owner: owner.to_string(),
            floor,
            drawn: AtomicU64::new(0),
        }))
    }
}

/// Where a put's quota comes from besides its own reservation.
#[derive(Clone, Copy)]
pub(crate) enum Backing<'p> {
    /// Nothing: the put reserves what it needs.
    Own,
    /// A resumable session's reservation (its finish).
    Session(&'p str),
    /// A request's pool (see [`Pool`]); a put of another owner reserves its own.
    Pool(&'p std::sync::Arc<Pool>),
}

/// A put's reservation, released when dropped (after the commit, or on failure).
pub(crate) struct Hold<'a> {
    quotas: &'a Quotas,
    key: Key,
}

impl Drop for Hold<'_> {
    fn drop(&mut self) {
        self.quotas.release(&self.key);
    }
}

/// The quota side of one put: the reservation and what the stream may still grow into.
pub(crate) struct Admission<'a> {
    inner: &'a Inner,
    owner: String,
    /// The reservation the put grows: its own, or its request's pool. `None`: no limit
    /// applies, nothing is reserved.
    key: Option<Key>,
    /// Bytes a session already holds for this put (not reserved again).
    base: u64,
    /// Bytes of `key` that earlier puts of the same pool took: this put's content comes after.
    offset: u64,
    _hold: Option<Hold<'a>>,
}

impl<'a> Admission<'a> {
    /// Reserves `declared` bytes for a put by `owner` (beyond what `backing` already holds for
    /// it), before any byte is read.
    pub fn new(
        inner: &'a Inner,
        owner: &str,
        declared: Option<u64>,
        backing: Backing<'_>,
    ) -> Result<Self> {
        let q = &inner.quotas;
        if let Backing::Pool(pool) = backing
            && pool.owner == owner
        {
            let mut a = Admission {
                inner,
                owner: owner.to_string(),
                key: Some(pool.key.clone()),
                base: 0,
                offset: pool.drawn.load(Ordering::Relaxed),
                _hold: None,
            };
            if let Some(d) = declared {
                a.cover_exactly(d)?;
            }
            return Ok(a);
        }
        let lim = q.limits(&inner.index.read()?, owner)?;
        let base = match backing {
            Backing::Session(s) => q.held(&Key::Session(s.to_string())),
            _ => 0,
        };
        if lim.unlimited() {
            return Ok(Admission {
                inner,
                owner: owner.to_string(),
                key: None,
                base,
                offset: 0,
                _hold: None,
            });
        }
        let key = q.new_put_key();
        let hold = Hold {
            quotas: q,
            key: key.clone(),
        };
        let want = declared.unwrap_or(0).saturating_sub(base);
        q.reserve(inner, &key, owner, want)?;
        Ok(Admission {
            inner,
            owner: owner.to_string(),
            key: Some(key),
            base,
            offset: 0,
            _hold: Some(hold),
        })
    }

    /// The bytes of the reservation `total` bytes of this put's content need, when the
    /// reservation holds fewer (`None`: covered already).
    fn shortfall(&self, key: &Key, total: u64) -> Option<u64> {
        let held = self.inner.quotas.held(key) + self.base;
        let end = self.offset + total;
        (end > held).then(|| end - self.base)
    }

    /// Makes room for exactly `total` bytes of content (a declared size).
    fn cover_exactly(&mut self, total: u64) -> Result<()> {
        let Some(key) = &self.key else {
            return Ok(());
        };
        match self.shortfall(key, total) {
            Some(need) => self
                .inner
                .quotas
                .reserve(self.inner, key, &self.owner, need),
            None => Ok(()),
        }
    }

    /// Makes room for `total` bytes of content, growing the reservation when needed (a step
    /// ahead when that fits, so not every buffer takes the table's lock).
    fn cover(&mut self, total: u64) -> Result<()> {
        let Some(key) = &self.key else {
            return Ok(());
        };
        let Some(need) = self.shortfall(key, total) else {
            return Ok(());
        };
        let q = &self.inner.quotas;
        match q.reserve(self.inner, key, &self.owner, need + STEP) {
            Ok(()) => Ok(()),
            Err(_) => q.reserve(self.inner, key, &self.owner, need),
        }
    }
}

/// The reader that enforces the quota while a put streams: past the reservation, it grows it,
/// and fails with [`Error::QuotaExceeded`] (inside the `io::Error`) when it cannot.
pub(crate) struct QuotaGate<'a, R> {
    source: R,
    admission: std::sync::Arc<Mutex<Admission<'a>>>,
    seen: u64,
}

impl<'a, R> QuotaGate<'a, R> {
    pub fn new(source: R, admission: std::sync::Arc<Mutex<Admission<'a>>>) -> Self {
        QuotaGate {
            source,
            admission,
            seen: 0,
        }
    }
}

impl<R: Read> Read for QuotaGate<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.source.read(buf)?;
        self.seen += n as u64;
        if n > 0 {
            let mut a = self.admission.lock().unwrap_or_else(|e| e.into_inner());
            if let Err(e) = a.cover(self.seen) {
                return Err(io::Error::other(e));
            }
        }
        Ok(n)
    }
}

/// One owner's quota.
#[derive(Debug, Clone, Serialize)]
pub struct QuotaStatus {
    pub owner: String,
    /// False for an owner that is not a user (library and CLI owners).
    pub registered: bool,
    pub tier: Option<String>,
    pub org: Option<String>,
    pub used: u64,
    /// Bytes held by uploads in flight.
    pub reserved: u64,
    /// `None`: unlimited.
    pub limit: Option<u64>,
    /// used / limit in percent (`None` when unlimited).
    pub percentage: Option<f64>,
    pub level: Level,
    pub org_used: Option<u64>,
    pub org_limit: Option<u64>,
}

/// One organisation's usage.
#[derive(Debug, Clone, Serialize)]
pub struct OrgStatus {
    pub org: String,
    pub members: u64,
    pub used: u64,
    pub limit: Option<u64>,
    pub percentage: Option<f64>,
}

/// One tier's figures.
#[derive(Debug, Clone, Serialize)]
pub struct TierRow {
    /// The tier, or `"none"` for users without one and `"unregistered"` for owners that are
    /// not users.
    pub tier: String,
    pub owners: u64,
    pub used: u64,
    /// Sum of the members' limits (`None` when any is unlimited).
    pub limit: Option<u64>,
}

/// The administrator's overview.
#[derive(Debug, Clone, Serialize)]
pub struct QuotaReport {
    pub owners: u64,
    pub users: u64,
    /// Logical bytes stored by every owner.
    pub total_used: u64,
    pub total_reserved: u64,
    pub tiers: Vec<TierRow>,
    /// Owners with the most bytes stored, most first.
    pub top: Vec<QuotaStatus>,
    /// Owners at 80 % of their limit or more, fullest first.
    pub near_limit: Vec<QuotaStatus>,
    pub orgs: Vec<OrgStatus>,
}

/// One day of an owner's usage.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct DayUsage {
    /// `YYYY-MM-DD` (UTC) as days since the Unix epoch; see `date`.
    pub day: u32,
    pub date: Date,
    pub used: u64,
}

/// A UTC calendar date, serialised as `YYYY-MM-DD`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Date(pub u32);

impl Serialize for Date {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl std::fmt::Display for Date {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Days to civil date (Howard Hinnant's algorithm).
        let z = self.0 as i64 + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = doy - (153 * mp + 2) / 5 + 1;
        let m = if mp < 10 { mp + 3 } else { mp - 9 };
        let y = yoe + era * 400 + i64::from(m <= 2);
        write!(f, "{y:04}-{m:02}-{d:02}")
    }
}

/// An owner's daily usage, the growth trend and the 30-day projection.
#[derive(Debug, Clone, Serialize)]
pub struct UsageHistory {
    pub owner: String,
    /// One row per day of the window, oldest first (days without a change carry the last
    /// value forward; days before the first upload are 0).
    pub days: Vec<DayUsage>,
    /// Least-squares slope over the window, bytes per day.
    pub trend_bytes_per_day: f64,
    /// Usage expected 30 days from today on that trend (never below 0).
    pub projected_30d: u64,
    pub limit: Option<u64>,
    /// Days until the projection reaches the limit (`None`: not growing, or unlimited).
    pub days_to_limit: Option<f64>,
}

/// Least-squares slope and intercept of `ys` over x = 0, 1, 2...
fn linear_fit(ys: &[f64]) -> (f64, f64) {
    let n = ys.len() as f64;
    if ys.len() < 2 {
        return (0.0, ys.first().copied().unwrap_or(0.0));
    }
    let mx = (n - 1.0) / 2.0;
    let my = ys.iter().sum::<f64>() / n;
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for (i, y) in ys.iter().enumerate() {
        let dx = i as f64 - mx;
        sxy += dx * (y - my);
        sxx += dx * dx;
    }
    let slope = sxy / sxx;
    (slope, my - slope * mx)
}

impl Store {
    /// Receives every quota warning raised from now on (see [`QuotaEvent`]). Events are
    /// raised after the commit that caused them; a receiver that is dropped unsubscribes.
    pub fn subscribe_quota_events(&self) -> Receiver<QuotaEvent> {
        self.inner.quotas.subscribe()
    }

    /// The quota rules this store runs under.
    pub fn quota_config(&self) -> &QuotaConfig {
        &self.inner.quotas.config
    }

    /// The reservations held right now (uploads in flight, resumable sessions).
    pub fn quota_reservations(&self) -> ReservationSnapshot {
        self.inner.quotas.snapshot()
    }

    fn status_of(&self, r: &ReadTx, owner: &str) -> Result<QuotaStatus> {
        let q = &self.inner.quotas;
        let lim = q.limits(r, owner)?;
        let used = r.owner_usage(owner)?;
        let (org_used, org_limit) = match &lim.org {
            Some(o) => (Some(r.org_usage(o)?), lim.org_limit),
            None => (None, None),
        };
        Ok(QuotaStatus {
            owner: owner.to_string(),
            registered: lim.user.is_some(),
            tier: lim
                .user
                .as_ref()
                .and_then(|u| u.tier.clone().or_else(|| q.config.default_tier.clone())),
            org: lim.org.clone(),
            used,
            reserved: q.reserved_for(owner),
            limit: lim.limit,
            percentage: percentage(used, lim.limit),
            level: Level::of(used, lim.limit),
            org_used,
            org_limit,
        })
    }

    /// One owner's quota: usage, limit, level, organisation.
    pub fn quota_status(&self, owner: &str) -> Result<QuotaStatus> {
        let r = self.inner.index.read()?;
        self.status_of(&r, owner)
    }

    /// Every owner that is a user or stores something.
    fn all_statuses(&self, r: &ReadTx) -> Result<Vec<QuotaStatus>> {
        let mut owners: std::collections::BTreeSet<String> =
            r.all_owner_usage()?.into_keys().collect();
        owners.extend(r.users()?.into_iter().map(|u| u.name));
        owners.iter().map(|o| self.status_of(r, o)).collect()
    }

    /// Owners at `threshold` (a fraction, e.g. 0.8) of their limit or more, fullest first.
    pub fn quota_alerts(&self, threshold: f64) -> Result<Vec<QuotaStatus>> {
        if !(0.0..=10.0).contains(&threshold) || threshold.is_nan() {
            return Err(Error::InvalidInput(format!(
                "threshold {threshold} is not a fraction such as 0.8"
            )));
        }
        let r = self.inner.index.read()?;
        let mut out: Vec<QuotaStatus> = self
            .all_statuses(&r)?
            .into_iter()
            .filter(|s| s.percentage.is_some_and(|p| p >= threshold * 100.0))
            .collect();
        out.sort_by(|a, b| b.percentage.partial_cmp(&a.percentage).unwrap());
        Ok(out)
    }

    /// Every organisation with members, a limit or usage.
    pub fn quota_orgs(&self) -> Result<Vec<OrgStatus>> {
        let r = self.inner.index.read()?;
        self.orgs_of(&r)
    }

    fn orgs_of(&self, r: &ReadTx) -> Result<Vec<OrgStatus>> {
        let q = &self.inner.quotas;
        let mut orgs: BTreeMap<String, u64> = BTreeMap::new();
        for u in r.users()? {
            if let Some(o) = u.org {
                *orgs.entry(o).or_default() += 1;
            }
        }
        for o in r.all_org_usage()?.into_keys() {
            orgs.entry(o).or_default();
        }
        for o in r.org_limits()?.into_keys() {
            orgs.entry(o).or_default();
        }
        for o in q.config.orgs.keys() {
            orgs.entry(o.clone()).or_default();
        }
        orgs.into_iter()
            .map(|(org, members)| {
                let used = r.org_usage(&org)?;
                let limit = match r.org_limit(&org)? {
                    Some(l) => Some(l),
                    None => q.config.orgs.get(&org).and_then(|l| l.0),
                };
                Ok(OrgStatus {
                    percentage: percentage(used, limit),
                    org,
                    members,
                    used,
                    limit,
                })
            })
            .collect()
    }

    /// Totals, tier breakdown, the `top` owners by usage, owners near their limit, and
    /// organisations.
    pub fn quota_report(&self, top: usize) -> Result<QuotaReport> {
        let r = self.inner.index.read()?;
        let all = self.all_statuses(&r)?;
        let mut tiers: BTreeMap<String, TierRow> = BTreeMap::new();
        for s in &all {
            let name = match (&s.tier, s.registered) {
                (Some(t), _) => t.clone(),
                (None, true) => "none".into(),
                (None, false) => "unregistered".into(),
            };
            let row = tiers.entry(name.clone()).or_insert(TierRow {
                tier: name,
                owners: 0,
                used: 0,
                limit: Some(0),
            });
            row.owners += 1;
            row.used += s.used;
            row.limit = match (row.limit, s.limit) {
                (Some(a), Some(b)) => Some(a + b),
                _ => None,
            };
        }
        let mut by_use = all.clone();
        by_use.sort_by(|a, b| b.used.cmp(&a.used).then(a.owner.cmp(&b.owner)));
        by_use.truncate(top);
        let mut near: Vec<QuotaStatus> = all
            .iter()
            .filter(|s| s.level >= Level::Medium)
            .cloned()
            .collect();
        near.sort_by(|a, b| b.percentage.partial_cmp(&a.percentage).unwrap());
        Ok(QuotaReport {
            owners: all.len() as u64,
            users: r.user_count()?,
            total_used: all.iter().map(|s| s.used).sum(),
            total_reserved: self.inner.quotas.snapshot().bytes,
            tiers: tiers.into_values().collect(),
            top: by_use,
            near_limit: near,
            orgs: self.orgs_of(&r)?,
        })
    }

    /// `owner`'s usage over the last `days` days (including today), with the trend over that
    /// window and the projection 30 days ahead.
    pub fn quota_history(&self, owner: &str, days: u32) -> Result<UsageHistory> {
        let days = days.clamp(2, 3660);
        let today = day_of(self.inner.config.clock.now_ms());
        let first = today.saturating_sub(days - 1);
        let r = self.inner.index.read()?;
        let rows = r.usage_history(owner, first..=today)?;
        let mut cur = match first.checked_sub(1) {
            Some(d) => r.usage_before(owner, d)?.map_or(0, |(_, v)| v),
            None => 0,
        };
        let mut rows = rows.into_iter().peekable();
        let mut out = Vec::with_capacity(days as usize);
        for day in first..=today {
            while let Some(&(d, v)) = rows.peek() {
                if d > day {
                    break;
                }
                cur = v;
                rows.next();
            }
            out.push(DayUsage {
                day,
                date: Date(day),
                used: cur,
            });
        }
        let ys: Vec<f64> = out.iter().map(|d| d.used as f64).collect();
        let (slope, intercept) = linear_fit(&ys);
        let last_x = (ys.len() - 1) as f64;
        let projected = (intercept + slope * (last_x + 30.0)).max(0.0);
        let limit = self.inner.quotas.limits(&r, owner)?.limit;
        let now = intercept + slope * last_x;
        let days_to_limit = match limit {
            Some(l) if slope > 0.0 => Some(((l as f64 - now) / slope).max(0.0)),
            _ => None,
        };
        Ok(UsageHistory {
            owner: owner.to_string(),
            days: out,
            trend_bytes_per_day: slope,
            projected_30d: projected.round() as u64,
            limit,
            days_to_limit,
        })
    }

    /// Sets (or clears, with `None`) a user's own quota, overriding the tier's. The warning
    /// level follows at once (a lower limit can raise a warning).
    pub fn quota_set(&self, name: &str, quota: Option<u64>) -> Result<QuotaStatus> {
        // Journaled as the user's record after the change (`user_update`).
        self.commit_account(crate::users::AccountChange::Quota {
            user: name.to_string(),
            quota,
        })?;
        self.quota_status(name)
    }

    /// Sets (or clears) an organisation's limit, overriding `quotas.orgs` of the config.
    /// Journaled (`org_limit`), so `recover` keeps it.
    pub fn org_quota_set(&self, org: &str, limit: Option<u64>) -> Result<OrgStatus> {
        crate::validate::check_label("organisation", org)?;
        self.commit_account(crate::users::AccountChange::OrgLimit {
            org: org.to_string(),
            limit,
        })?;
        self.quota_orgs()?
            .into_iter()
            .find(|o| o.org == org)
            .ok_or_else(|| Error::not_found(format!("organisation {org:?}")))
    }
}

/// Rebuilds the session reservations from the sessions table at open: a session with a
/// declared length holds that length, a deferred one its reservation or what it has received,
/// whichever is more.
pub(crate) fn load_sessions(inner: &Inner) -> Result<()> {
    let r = inner.index.read()?;
    for rec in r.uploads()? {
        let s = &rec.session;
        let org = r.user(&s.owner)?.and_then(|u| u.org);
        inner.quotas.force(
            Key::Session(s.id.clone()),
            &s.owner,
            org,
            s.length.unwrap_or(s.offset.max(s.reserved)),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_and_thresholds() {
        assert_eq!(Level::of(79, Some(100)), Level::None);
        assert_eq!(Level::of(80, Some(100)), Level::Medium);
        assert_eq!(Level::of(90, Some(100)), Level::High);
        assert_eq!(Level::of(95, Some(100)), Level::Critical);
        assert_eq!(Level::of(500, None), Level::None);
        assert_eq!(Level::of(1, Some(0)), Level::Critical);
    }

    #[test]
    fn trend_is_the_least_squares_slope() {
        let (s, i) = linear_fit(&[10.0, 20.0, 30.0, 40.0]);
        assert!((s - 10.0).abs() < 1e-9 && (i - 10.0).abs() < 1e-9);
        assert_eq!(linear_fit(&[5.0]), (0.0, 5.0));
    }

    #[test]
    fn dates_are_civil() {
        assert_eq!(Date(0).to_string(), "1970-01-01");
        assert_eq!(Date(20_420).to_string(), "2025-11-28");
    }

    #[test]
    fn limits_parse() {
        let c: QuotaConfig =
            toml::from_str("tiers = { free = \"5MiB\", gold = \"unlimited\" }\n").unwrap();
        assert_eq!(c.tiers["free"], Limit(Some(5 << 20)));
        assert_eq!(c.tiers["gold"], Limit(None));
        assert!(toml::from_str::<QuotaConfig>("unregistered = \"lots\"\n").is_err());
        let d = QuotaConfig::default();
        assert_eq!(d.tiers["free"], Limit(Some(GB)));
        let mut odd = d.clone();
        odd.unregistered = Limit(Some(1_234_567));
        let back: QuotaConfig = toml::from_str(&toml::to_string(&odd).unwrap()).unwrap();
        assert_eq!(back.unregistered, Limit(Some(1_234_567)));
        assert_eq!(back.tiers, d.tiers);
        assert_eq!(d.tiers["enterprise"], Limit(None));
    }

    #[test]
    fn table_counts_per_owner_and_org() {
        let mut t = Table::default();
        let e = |b| Entry {
            owner: "a".into(),
            org: Some("o".into()),
            bytes: b,
        };
        t.set(Key::Put(1), e(10));
        t.set(Key::Session("s".into()), e(5));
        t.set(Key::Put(1), e(20));
        assert_eq!((t.by_owner["a"], t.by_org["o"]), (25, 25));
        t.remove(&Key::Put(1));
        t.remove(&Key::Session("s".into()));
        assert!(t.by_owner.is_empty() && t.by_org.is_empty() && t.entries.is_empty());
    }
}
