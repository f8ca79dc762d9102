//! The disk quota: what the store holds, how big, and how recently each object was used, so that
//! the least recently used objects are removed once the store outgrows `max_size`.
//!
//! Recency is kept in memory (a hit only bumps it) and on disk as each file's mtime, which hits
//! refresh at most hourly, so the order survives restarts: at startup the index is rebuilt from
//! a scan of the store, oldest first, in the background, so serving starts at once. Files are
//! removed by a thread of their own, never on the request path. A client already reading a
//! removed blob keeps its open file and reads it to the end.

use std::sync::mpsc;
use std::sync::Arc;

use moka::notification::RemovalCause;
use moka::policy::EvictionPolicy;
use prometheus::{IntCounter, IntGauge};

use super::store::{ContentStore, Kind};
use crate::metrics::METRICS;
use crate::registry::Digest;

type Key = (Kind, Digest);

enum Job {
    Remove(Key, u64),
    /// Acknowledge once everything queued before it is done.
    Flush(mpsc::SyncSender<()>),
}

pub struct DiskQuota {
    objects: moka::sync::Cache<Key, u64>,
    /// Bytes in the store (exported as `wharf_store_bytes`).
    used: IntGauge,
    max: Option<u64>,
    jobs: mpsc::Sender<Job>,
    store: Arc<dyn ContentStore>,
}

/// Objects are weighed in KiB so that one weight (u32) covers blobs up to 4 TiB.
fn weight(bytes: u64) -> u32 {
    bytes.div_ceil(1024).max(1).try_into().unwrap_or(u32::MAX)
}

impl DiskQuota {
    /// Track `store`, keeping it under `max` bytes if given.
    pub fn new(store: Arc<dyn ContentStore>, max: Option<u64>) -> DiskQuota {
        let used = IntGauge::new("wharf_store_bytes", "Bytes of manifests and blobs stored")
            .expect("metric");
        let limit = IntGauge::new("wharf_store_max_bytes", "The store's max_size (0: none)")
            .expect("metric");
        limit.set(max.and_then(|m| i64::try_from(m).ok()).unwrap_or(0));
        let evictions = IntCounter::new(
            "wharf_evictions_total",
            "Objects removed from the store to stay under max_size",
        )
        .expect("metric");
        METRICS.register(Box::new(used.clone()));
        METRICS.register(Box::new(limit));
        METRICS.register(Box::new(evictions.clone()));

        let (jobs, queue) = mpsc::channel::<Job>();
        let remover = {
            let (used, store) = (used.clone(), store.clone());
            move || {
                for job in queue {
                    match job {
                        Job::Remove((kind, digest), size) => {
                            match store.remove(kind, &digest) {
                                Ok(true) => {
                                    evictions.inc();
                                    tracing::info!("evicted {digest} ({size} bytes)");
                                }
                                Ok(false) => {}
                                Err(e) => {
                                    tracing::error!("cannot evict {digest}: {e}");
                                    continue;
                                }
                            }
                            used.sub(i64::try_from(size).unwrap_or(i64::MAX));
                        }
                        Job::Flush(ack) => {
                            let _ = ack.send(());
                        }
                    }
                }
            }
        };
        std::thread::Builder::new()
            .name("wharf-evict".into())
            .spawn(remover)
            .expect("spawn the eviction thread");
        let to_remove = jobs.clone();
        let objects = moka::sync::Cache::builder()
            .max_capacity(max.map_or(u64::MAX, |m| m.div_ceil(1024)))
            .weigher(|_, size: &u64| weight(*size))
            // plain LRU: a frequency filter would refuse to admit what was just fetched
            .eviction_policy(EvictionPolicy::lru())
            .eviction_listener(move |key: Arc<Key>, size: u64, cause| {
                if matches!(cause, RemovalCause::Size | RemovalCause::Explicit) {
                    let _ = to_remove.send(Job::Remove(*key, size));
                }
            })
            .build();
        DiskQuota {
            objects,
            used,
            max,
            jobs,
            store,
        }
    }

    /// Index what the store holds, least recently used first (evicting down to the quota as it
    /// goes). Blocking: at startup it runs on a thread of its own. Returns the objects found.
    pub fn load(&self) -> std::io::Result<usize> {
        let mut found = self.store.list()?;
        found.sort_by_key(|o| o.modified);
        let n = found.len();
        for o in found {
            self.added(o.kind, o.digest, o.size);
        }
        Ok(n)
    }

    /// An object was committed to the store.
    pub fn added(&self, kind: Kind, digest: Digest, size: u64) {
        if self.objects.contains_key(&(kind, digest)) {
            return;
        }
        self.used.add(i64::try_from(size).unwrap_or(i64::MAX));
        self.objects.insert((kind, digest), size);
        if self.max.is_some() {
            self.objects.run_pending_tasks();
        }
    }

    /// An object was served: it becomes the most recently used.
    pub fn touched(&self, kind: Kind, digest: &Digest) {
        self.objects.get(&(kind, *digest));
    }

    /// Bytes the store holds.
    pub fn used(&self) -> u64 {
        self.used.get().max(0) as u64
    }

    pub fn max(&self) -> Option<u64> {
        self.max
    }

    /// Wait until every removal decided so far is done.
    pub fn flush(&self) {
        self.objects.run_pending_tasks();
        let (ack, done) = mpsc::sync_channel(1);
        if self.jobs.send(Job::Flush(ack)).is_ok() {
            let _ = done.recv();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn least_recently_used_goes_first_and_the_quota_holds() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(crate::cache::DiskStore::open(dir.path()).unwrap());
        let quota = DiskQuota::new(store.clone(), Some(10 << 10)); // 10 KiB
        let blob = |i: u8| {
            let data = vec![i; 3 << 10]; // 3 KiB each
            let d = Digest::of(&data);
            store.write(Kind::Blob, &d, &data).unwrap();
            quota.added(Kind::Blob, d, data.len() as u64);
            d
        };
        let (a, b, c) = (blob(1), blob(2), blob(3));
        quota.touched(Kind::Blob, &a); // a is now more recent than b
        let d = blob(4); // 12 KiB > 10 KiB: b must go
        quota.flush();
        assert!(store.contains(Kind::Blob, &a));
        assert!(
            !store.contains(Kind::Blob, &b),
            "least recently used is evicted"
        );
        assert!(store.contains(Kind::Blob, &c));
        assert!(store.contains(Kind::Blob, &d));
        assert_eq!(quota.used(), 9 << 10);

        // a restart rebuilds the index from disk, oldest mtime first, under a smaller quota
        let small = DiskQuota::new(store.clone(), Some(4 << 10));
        assert_eq!(small.load().unwrap(), 3);
        small.flush();
        assert_eq!(store.list().unwrap().len(), 1);
        assert!(small.used() <= 4 << 10);
    }
}
