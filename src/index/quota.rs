//! The quota tables: per-owner and per-organisation usage counters, the last warning level
//! raised per owner, organisation limits set at run time, and the daily usage history.
//!
//! Usage is derived data: every change to it happens in the write transaction of the commit
//! that changes the versions it counts (`insert_version`, `remove_version`), and `recover`
//! rebuilds it by replaying those commits. Organisation limits are settings, journaled like
//! users (`org_limit` account events), so `recover` replays them. Stores made before these
//! tables existed get the counters on their first read-write open (`Index::ensure_usage`).

use std::collections::{BTreeMap, BTreeSet};

use redb::{ReadableTable, TableDefinition, TableError};

use super::{ReadTx, WriteTx, ix};
use crate::error::Result;

/// Owner → logical bytes of every version the owner stores (soft-deleted files included,
/// until purged; old versions included, until dropped).
pub const OWNER_USAGE: TableDefinition<&str, u64> = TableDefinition::new("owner_usage");
/// Organisation → the sum of its members' `owner_usage`.
pub const ORG_USAGE: TableDefinition<&str, u64> = TableDefinition::new("org_usage");
/// Owner → the last warning level raised (0 none, 1 medium, 2 high, 3 critical), so a
/// restart does not raise a crossing twice.
pub const QUOTA_LEVELS: TableDefinition<&str, u8> = TableDefinition::new("quota_levels");
/// Organisation → limit in bytes set with `tessera quota org set` (overrides the config).
pub const ORG_LIMITS: TableDefinition<&str, u64> = TableDefinition::new("org_limits");
/// (owner, day since the Unix epoch, UTC) → the owner's usage after the last change that day.
pub const USAGE_HISTORY: TableDefinition<(&str, u32), u64> = TableDefinition::new("usage_history");

const DAY_MS: i64 = 86_400_000;

/// The UTC day (days since the Unix epoch) of an instant: the granularity of last-read times
/// and of the usage history.
pub fn day_of(ms: i64) -> u32 {
    ms.div_euclid(DAY_MS).clamp(0, u32::MAX as i64) as u32
}

macro_rules! open_or_empty {
    ($tx:expr, $def:expr, $what:literal, $empty:expr) => {
        match $tx.open_table($def) {
            Ok(t) => t,
            Err(TableError::TableDoesNotExist(_)) => return Ok($empty),
            Err(e) => return Err(ix($what)(e)),
        }
    };
}

macro_rules! quota_lookups {
    () => {
        /// Logical bytes `owner` stores.
        pub fn owner_usage(&self, owner: &str) -> Result<u64> {
            let t = open_or_empty!(self.tx, OWNER_USAGE, "opening owner usage", 0);
            Ok(t.get(owner)
                .map_err(ix("reading owner usage"))?
                .map_or(0, |v| v.value()))
        }

        /// Whether the index has usage counters (older indexes get them on their first
        /// read-write open).
        pub fn has_usage(&self) -> Result<bool> {
            match self.tx.open_table(OWNER_USAGE) {
                Ok(_) => Ok(true),
                Err(TableError::TableDoesNotExist(_)) => Ok(false),
                Err(e) => Err(ix("opening owner usage")(e)),
            }
        }

        /// Every owner's usage, by name.
        pub fn all_owner_usage(&self) -> Result<BTreeMap<String, u64>> {
            let t = open_or_empty!(self.tx, OWNER_USAGE, "opening owner usage", BTreeMap::new());
            let mut out = BTreeMap::new();
            for e in t.iter().map_err(ix("listing owner usage"))? {
                let (k, v) = e.map_err(ix("listing owner usage"))?;
                out.insert(k.value().to_string(), v.value());
            }
            Ok(out)
        }

        pub fn org_usage(&self, org: &str) -> Result<u64> {
            let t = open_or_empty!(self.tx, ORG_USAGE, "opening org usage", 0);
            Ok(t.get(org)
                .map_err(ix("reading org usage"))?
                .map_or(0, |v| v.value()))
        }

        pub fn all_org_usage(&self) -> Result<BTreeMap<String, u64>> {
            let t = open_or_empty!(self.tx, ORG_USAGE, "opening org usage", BTreeMap::new());
            let mut out = BTreeMap::new();
            for e in t.iter().map_err(ix("listing org usage"))? {
                let (k, v) = e.map_err(ix("listing org usage"))?;
                out.insert(k.value().to_string(), v.value());
            }
            Ok(out)
        }

        /// The last warning level raised for `owner` (0 = none).
        pub fn quota_level(&self, owner: &str) -> Result<u8> {
            let t = open_or_empty!(self.tx, QUOTA_LEVELS, "opening quota levels", 0);
            Ok(t.get(owner)
                .map_err(ix("reading a quota level"))?
                .map_or(0, |v| v.value()))
        }

        /// The organisation limit set at run time, if any.
        pub fn org_limit(&self, org: &str) -> Result<Option<u64>> {
            let t = open_or_empty!(self.tx, ORG_LIMITS, "opening org limits", None);
            Ok(t.get(org)
                .map_err(ix("reading an org limit"))?
                .map(|v| v.value()))
        }

        pub fn org_limits(&self) -> Result<BTreeMap<String, u64>> {
            let t = open_or_empty!(self.tx, ORG_LIMITS, "opening org limits", BTreeMap::new());
            let mut out = BTreeMap::new();
            for e in t.iter().map_err(ix("listing org limits"))? {
                let (k, v) = e.map_err(ix("listing org limits"))?;
                out.insert(k.value().to_string(), v.value());
            }
            Ok(out)
        }

        /// `owner`'s history rows with days in `days`, oldest first.
        pub fn usage_history(
            &self,
            owner: &str,
            days: std::ops::RangeInclusive<u32>,
        ) -> Result<Vec<(u32, u64)>> {
            let t = open_or_empty!(self.tx, USAGE_HISTORY, "opening usage history", Vec::new());
            let mut out = Vec::new();
            let range = t
                .range((owner, *days.start())..=(owner, *days.end()))
                .map_err(ix("listing usage history"))?;
            for e in range {
                let (k, v) = e.map_err(ix("listing usage history"))?;
                out.push((k.value().1, v.value()));
            }
            Ok(out)
        }

        /// The last history row of `owner` on or before `day`.
        pub fn usage_before(&self, owner: &str, day: u32) -> Result<Option<(u32, u64)>> {
            let t = open_or_empty!(self.tx, USAGE_HISTORY, "opening usage history", None);
            let mut range = t
                .range((owner, 0)..=(owner, day))
                .map_err(ix("listing usage history"))?;
            match range.next_back() {
                Some(e) => {
                    let (k, v) = e.map_err(ix("listing usage history"))?;
                    Ok(Some((k.value().1, v.value())))
                }
                None => Ok(None),
            }
        }

        /// Usage recounted from the versions (verify, and the first open of an older index):
        /// per owner, and per organisation of the owners that are users.
        pub fn recount_usage(&self) -> Result<(BTreeMap<String, u64>, BTreeMap<String, u64>)> {
            let mut owners: BTreeMap<String, u64> = BTreeMap::new();
            let t = self
                .tx
                .open_table(super::schema::VERSIONS)
                .map_err(ix("opening versions"))?;
            for e in t.iter().map_err(ix("listing versions"))? {
                let (_, v) = e.map_err(ix("listing versions"))?;
                let v: super::VersionRecord = super::decode_json(v.value(), "version record")?;
                *owners.entry(v.meta.owner).or_default() += v.meta.size;
            }
            let mut orgs: BTreeMap<String, u64> = BTreeMap::new();
            for (owner, used) in &owners {
                if let Some(org) = self.user_record(owner)?.and_then(|u| u.org) {
                    *orgs.entry(org).or_default() += used;
                }
            }
            Ok((owners, orgs))
        }
    };
}

impl ReadTx {
    quota_lookups!();

    fn user_record(&self, name: &str) -> Result<Option<super::UserRecord>> {
        self.user(name)
    }
}

impl super::Index {
    /// Indexes made before quotas have no usage counters: counts them once, on the first
    /// read-write open, from the versions (history starts that day).
    pub fn ensure_usage(&self, now_ms: i64) -> Result<()> {
        match self.read()?.tx.open_table(OWNER_USAGE) {
            Ok(_) => return Ok(()),
            Err(TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(ix("opening owner usage")(e)),
        }
        let mut w = self.write()?;
        let (owners, orgs) = w.recount_usage()?;
        {
            let mut t =
                w.tx.open_table(OWNER_USAGE)
                    .map_err(ix("opening owner usage"))?;
            let mut h =
                w.tx.open_table(USAGE_HISTORY)
                    .map_err(ix("opening usage history"))?;
            for (owner, used) in &owners {
                t.insert(owner.as_str(), used)
                    .map_err(ix("writing owner usage"))?;
                h.insert((owner.as_str(), day_of(now_ms)), used)
                    .map_err(ix("writing usage history"))?;
            }
            let mut t =
                w.tx.open_table(ORG_USAGE)
                    .map_err(ix("opening org usage"))?;
            for (org, used) in &orgs {
                t.insert(org.as_str(), used)
                    .map_err(ix("writing org usage"))?;
            }
        }
        w.usage_touched.clear();
        w.commit()
    }
}

impl WriteTx {
    quota_lookups!();

    fn user_record(&self, name: &str) -> Result<Option<super::UserRecord>> {
        let t = open_or_empty!(self.tx, super::schema::USERS, "opening users", None);
        t.get(name)
            .map_err(ix("reading a user"))?
            .map(|v| super::decode_json(v.value(), "user record"))
            .transpose()
    }

    /// The stored user `name`, as this transaction sees it.
    pub fn user(&self, name: &str) -> Result<Option<super::UserRecord>> {
        self.user_record(name)
    }

    fn bump(&mut self, def: TableDefinition<&str, u64>, key: &str, delta: i64) -> Result<u64> {
        let mut t = self
            .tx
            .open_table(def)
            .map_err(ix("opening a usage table"))?;
        let cur = t
            .get(key)
            .map_err(ix("reading usage"))?
            .map_or(0, |v| v.value());
        let next = (cur as i64).saturating_add(delta).max(0) as u64;
        t.insert(key, next).map_err(ix("writing usage"))?;
        Ok(next)
    }

    /// Changes `owner`'s usage by `delta` bytes at `at_ms` (a commit's time, or the replayed
    /// record's), with the owner's organisation and the day's history row.
    pub(super) fn add_usage(&mut self, owner: &str, delta: i64, at_ms: i64) -> Result<()> {
        if delta == 0 {
            return Ok(());
        }
        let used = self.bump(OWNER_USAGE, owner, delta)?;
        if let Some(org) = self.user_record(owner)?.and_then(|u| u.org) {
            self.bump(ORG_USAGE, &org, delta)?;
        }
        {
            let mut h = self
                .tx
                .open_table(USAGE_HISTORY)
                .map_err(ix("opening usage history"))?;
            h.insert((owner, day_of(at_ms)), used)
                .map_err(ix("writing usage history"))?;
        }
        self.usage_touched.insert(owner.to_string());
        Ok(())
    }

    /// A user's organisation changes from `from` to `to`: its usage moves along.
    pub(super) fn move_org_usage(
        &mut self,
        owner: &str,
        from: Option<&str>,
        to: Option<&str>,
    ) -> Result<()> {
        if from == to {
            return Ok(());
        }
        let used = self.owner_usage(owner)? as i64;
        if used == 0 {
            return Ok(());
        }
        if let Some(o) = from {
            self.bump(ORG_USAGE, o, -used)?;
        }
        if let Some(o) = to {
            self.bump(ORG_USAGE, o, used)?;
        }
        Ok(())
    }

    /// Owners whose usage this transaction changed (drained by the caller that settles the
    /// warning levels).
    pub fn take_usage_touched(&mut self) -> BTreeSet<String> {
        std::mem::take(&mut self.usage_touched)
    }

    pub fn set_quota_level(&mut self, owner: &str, level: u8) -> Result<()> {
        let mut t = self
            .tx
            .open_table(QUOTA_LEVELS)
            .map_err(ix("opening quota levels"))?;
        if level == 0 {
            t.remove(owner).map_err(ix("writing a quota level"))?;
        } else {
            t.insert(owner, level)
                .map_err(ix("writing a quota level"))?;
        }
        Ok(())
    }

    /// Sets (or, with `None`, clears) an organisation's run-time limit.
    pub fn set_org_limit(&mut self, org: &str, limit: Option<u64>) -> Result<()> {
        let mut t = self
            .tx
            .open_table(ORG_LIMITS)
            .map_err(ix("opening org limits"))?;
        match limit {
            Some(l) => t.insert(org, l).map(|_| ()),
            None => t.remove(org).map(|_| ()),
        }
        .map_err(ix("writing an org limit"))
    }
}
