//! Puts that commit together, or not at all.
//!
//! A [`Batch`] stages puts one after another — each validated, admitted under the quota,
//! ingested (its chunks written to packs, claimed and pinned) and scanned, exactly as
//! [`Store::put`] does — and commits them in one group at [`Batch::commit`]. Until then nothing
//! is visible: no file, no version, no usage. Dropping the batch instead commits nothing; the
//! chunks its puts wrote are garbage for the collector, like those of any failed put.
//!
//! The HTTP multipart upload runs a request as one batch, so a request that turns out to be
//! malformed or over a limit after some of its files have streamed (a 101st part, a cut body)
//! stores none of them. [`Store::batch_reserving`] also reserves the request's declared length
//! against the quota before any content is read (see [`crate::quota::Pool`]).

use std::io::Read;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::quota::{Backing, Pool};
use crate::store::{PutOptions, PutReport, Staged, Store};

/// Staged puts waiting for one commit; see the module docs.
pub struct Batch<'s> {
    store: &'s Store,
    /// The reservation the puts draw on (`None`: each reserves its own, or no limit applies).
    pool: Option<Arc<Pool>>,
    items: Vec<Item<'s>>,
}

enum Item<'s> {
    Staged {
        staged: Box<Staged<'s>>,
        /// An image whose variants the media workers must hear about after the commit.
        #[cfg_attr(not(feature = "media"), allow(dead_code))]
        image: bool,
    },
    Failed(Error),
}

impl Store {
    /// An empty batch; each of its puts reserves its own quota.
    pub fn batch(&self) -> Batch<'_> {
        Batch {
            store: self,
            pool: None,
            items: Vec::new(),
        }
    }

    /// A batch for `owner`'s puts that first reserves quota for a request of `declared` bytes,
    /// at most `overhead` of which are not content, before any content is read: the whole
    /// length if it fits, else at least `declared - overhead`, else [`Error::QuotaExceeded`]
    /// at once (the rule is [`crate::quota::Quotas::pool`]'s). The reservation is held until
    /// the batch commits or is dropped; the batch's puts of `owner` draw on it in turn.
    pub fn batch_reserving(
        &self,
        owner: &str,
        declared: Option<u64>,
        overhead: u64,
    ) -> Result<Batch<'_>> {
        crate::validate::check_label("owner", owner)?;
        let pool = self
            .inner
            .quotas
            .pool(&self.inner, owner, declared, overhead)?;
        Ok(Batch {
            store: self,
            pool: pool.map(Arc::new),
            items: Vec::new(),
        })
    }
}

impl<'s> Batch<'s> {
    /// Stages a put of `source` (everything [`Store::put`] does but the commit). Returns
    /// whether it was staged; a failure is kept as that put's result in [`Batch::commit`].
    pub fn put(&mut self, source: impl Read, opts: &PutOptions) -> bool {
        self.stage(source, opts, None)
    }

    pub(crate) fn stage(
        &mut self,
        source: impl Read,
        opts: &PutOptions,
        inspect: Option<&dyn crate::store::Inspect>,
    ) -> bool {
        let backing = match &self.pool {
            Some(pool) => Backing::Pool(pool),
            None => Backing::Own,
        };
        let staged = self.store.stage(source, opts, backing, inspect);
        if let Some(pool) = &self.pool {
            match &staged {
                Ok(s) => pool.draw(s.size),
                Err(_) => pool.settle(&self.store.inner.quotas),
            }
        }
        let ok = staged.is_ok();
        self.items.push(match staged {
            Ok(staged) => Item::Staged {
                staged: Box::new(staged),
                image: inspect.is_some(),
            },
            Err(e) => Item::Failed(e),
        });
        ok
    }

    #[cfg(feature = "media")]
    pub(crate) fn store(&self) -> &'s Store {
        self.store
    }

    /// Puts staged or failed so far.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Bytes of quota reserved up front (0 without a reservation).
    pub fn reserved_up_front(&self) -> u64 {
        self.pool.as_ref().map_or(0, |p| p.floor())
    }

    /// Commits every staged put in one group and returns one result per put, in the order
    /// they were made: the put's failure, or its report once durable. The reservation is
    /// released after the commit.
    pub fn commit(mut self) -> Vec<Result<PutReport>> {
        let items = std::mem::take(&mut self.items);
        let mut staged = Vec::new();
        let mut slots = Vec::with_capacity(items.len());
        for item in items {
            match item {
                Item::Staged { staged: s, image } => {
                    slots.push(Ok(image));
                    staged.push(*s);
                }
                Item::Failed(e) => slots.push(Err(e)),
            }
        }
        let mut committed = self.store.commit_staged(staged).into_iter();
        slots
            .into_iter()
            .map(|slot| match slot {
                Err(e) => Err(e),
                Ok(image) => {
                    let result = committed.next().expect("one result per staged put");
                    #[cfg(feature = "media")]
                    if image && let Ok(report) = &result {
                        self.store
                            .inner
                            .media
                            .notify((report.file.id, report.file.version));
                    }
                    #[cfg(not(feature = "media"))]
                    let _ = image;
                    result
                }
            })
            .collect()
    }
}

impl Drop for Batch<'_> {
    fn drop(&mut self) {
        // Staged puts first (their claims and holds), then the request's reservation: until
        // their commit (if any) returned, their bytes were counted by it.
        for item in self.items.drain(..) {
            if let Item::Staged { staged, .. } = item
                && let Some(signature) = staged.infected()
            {
                // Not kept quarantined (nothing of a dropped batch is): at least on record.
                tracing::warn!(owner = %staged.owner(), %signature, "infected upload dropped with its batch");
            }
        }
        if let Some(pool) = &self.pool {
            pool.release(&self.store.inner.quotas);
        }
    }
}
