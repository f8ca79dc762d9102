//! The disk quota: what the store holds, how big, and how recently each object was used, so that
//! the least recently used objects are removed once the store outgrows `max_size`.
//!
//! Recency is kept in memory (a hit only bumps it) and on disk as each file's mtime, which hits
//! refresh at most hourly, so the order survives restarts: at startup the index is rebuilt from
//! a scan of the store in the background, so serving starts at once (what the scan finds is
//! older than anything stored or served meanwhile). Files are
//! removed by a thread of their own, never on the request path. A client already reading a
//! removed blob keeps its open file and reads it to the end.
//!
//! The index is sized for millions of objects: one 48-byte slot per object in a vector, chained
//! into an exact LRU list by 32-bit positions, and a hash table of those positions keyed by the
//! digest, about 60 bytes an object in all.

use std::sync::{mpsc, Arc, Mutex};

use hashbrown::HashTable;
use prometheus::{IntCounter, IntGauge};

use super::store::{ContentStore, Kind};
use crate::metrics::METRICS;
use crate::registry::Digest;

enum Job {
    Remove(Kind, Digest, u64),
    /// Acknowledge once everything queued before it is done.
    Flush(mpsc::SyncSender<()>),
}

pub struct DiskQuota {
    index: Arc<Mutex<Index>>,
    /// Bytes in the store (exported as `wharf_store_bytes`).
    used: IntGauge,
    max: Option<u64>,
    jobs: mpsc::Sender<Job>,
    store: Arc<dyn ContentStore>,
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
        let index = Arc::new(Mutex::new(Index::default()));
        let remover = {
            let (store, used, index) = (store.clone(), used.clone(), index.clone());
            move || {
                for job in queue {
                    match job {
                        // stored again since it was evicted (fetched anew): the file is the
                        // new one, and stays
                        Job::Remove(kind, digest, _)
                            if lock(&index).find(kind, &digest).is_some() => {}
                        Job::Remove(kind, digest, size) => match store.remove(kind, &digest) {
                            Ok(true) => {
                                evictions.inc();
                                tracing::info!("evicted {digest} ({size} bytes)");
                            }
                            Ok(false) => {}
                            Err(e) => {
                                // still on the disk: counted again (indexed at a restart)
                                used.add(i64::try_from(size).unwrap_or(i64::MAX));
                                tracing::error!("cannot evict {digest}: {e}");
                            }
                        },
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
        DiskQuota {
            index,
            used,
            max,
            jobs,
            store,
        }
    }

    /// Index what the store holds, least recently used first (evicting down to the quota as it
    /// goes). Blocking: at startup it runs on a thread of its own. Returns the objects found.
    /// What was stored or served while it runs stays more recent than all it finds.
    pub fn load(&self) -> std::io::Result<usize> {
        let mut found = self.store.list()?;
        found.sort_by_key(|o| o.modified);
        let n = found.len();
        self.lock().reserve(n);
        for o in found {
            self.add(o.kind, o.digest, o.size, End::Found);
        }
        Ok(n)
    }

    /// An object was committed to the store.
    pub fn added(&self, kind: Kind, digest: Digest, size: u64) {
        self.add(kind, digest, size, End::Newest);
    }

    fn add(&self, kind: Kind, digest: Digest, size: u64, end: End) {
        if self.max.is_some_and(|max| size > max) {
            // it could never fit: it goes, and nothing else for it (readers keep their file)
            tracing::warn!("{digest} ({size} bytes) is larger than max_size: not kept");
            let _ = self.jobs.send(Job::Remove(kind, digest, size));
            return;
        }
        let mut index = self.lock();
        if !index.insert(kind, digest, size, end) {
            return;
        }
        self.used.add(i64::try_from(size).unwrap_or(i64::MAX));
        let Some(max) = self.max else { return };
        while index.bytes > max {
            let Some((kind, digest, size)) = index.pop_least_recent() else {
                break;
            };
            self.used.sub(i64::try_from(size).unwrap_or(i64::MAX));
            let _ = self.jobs.send(Job::Remove(kind, digest, size));
        }
    }

    /// An object was served: it becomes the most recently used.
    pub fn touched(&self, kind: Kind, digest: &Digest) {
        self.lock().touch(kind, digest);
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
        let (ack, done) = mpsc::sync_channel(1);
        if self.jobs.send(Job::Flush(ack)).is_ok() {
            let _ = done.recv();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Index> {
        lock(&self.index)
    }
}

fn lock(index: &Mutex<Index>) -> std::sync::MutexGuard<'_, Index> {
    index.lock().unwrap_or_else(|p| p.into_inner())
}

/// Where in the recency list an object joins.
#[derive(Clone, Copy, PartialEq, Eq)]
enum End {
    /// Just stored or served: the newest.
    Newest,
    /// Found in the store at startup, oldest first: newer than all found before it, older
    /// than anything this run stored or served.
    Found,
}

/// No slot: the end of the LRU list, or of the free list.
const NONE: u32 = u32::MAX;
/// The top bit of [`Slot::size`] marks a manifest (no object is 2⁶³ bytes).
const MANIFEST: u64 = 1 << 63;

/// One object: 48 bytes.
#[derive(Clone, Copy)]
struct Slot {
    digest: Digest,
    /// Its size in bytes, and [`MANIFEST`] for a manifest.
    size: u64,
    /// Toward the most recently used.
    newer: u32,
    /// Toward the least recently used (in a free slot: the next free one).
    older: u32,
}

impl Slot {
    fn kind(&self) -> Kind {
        if self.size & MANIFEST != 0 {
            Kind::Manifest
        } else {
            Kind::Blob
        }
    }

    fn bytes(&self) -> u64 {
        self.size & !MANIFEST
    }

    fn is(&self, kind: Kind, digest: &Digest) -> bool {
        self.digest == *digest && self.kind() == kind
    }
}

/// Objects in least-recently-used order, found by digest.
struct Index {
    slots: Vec<Slot>,
    /// Positions in `slots`, hashed by digest.
    table: HashTable<u32>,
    newest: u32,
    oldest: u32,
    /// The least recent object this run stored or served: what the startup scan finds goes
    /// just behind it.
    boundary: u32,
    free: u32,
    bytes: u64,
}

impl Default for Index {
    fn default() -> Index {
        Index {
            slots: Vec::new(),
            table: HashTable::new(),
            newest: NONE,
            oldest: NONE,
            boundary: NONE,
            free: NONE,
            bytes: 0,
        }
    }
}

impl Index {
    fn reserve(&mut self, more: usize) {
        self.slots.reserve_exact(more);
        let slots = &self.slots;
        self.table
            .reserve(more, |&i| slots[i as usize].digest.hash64());
    }

    fn find(&self, kind: Kind, digest: &Digest) -> Option<u32> {
        self.table
            .find(digest.hash64(), |&i| {
                self.slots[i as usize].is(kind, digest)
            })
            .copied()
    }

    /// Add a new object at `end`; false if it is indexed already.
    fn insert(&mut self, kind: Kind, digest: Digest, size: u64, end: End) -> bool {
        if self.find(kind, &digest).is_some() {
            return false;
        }
        let slot = Slot {
            digest,
            size: (size & !MANIFEST) | if kind == Kind::Manifest { MANIFEST } else { 0 },
            newer: NONE,
            older: NONE,
        };
        let i = if self.free != NONE {
            let i = self.free;
            self.free = self.slots[i as usize].older;
            self.slots[i as usize] = slot;
            i
        } else {
            let i = u32::try_from(self.slots.len()).expect("fewer than 2³² objects");
            self.slots.push(slot);
            i
        };
        let slots = &self.slots;
        self.table
            .insert_unique(digest.hash64(), i, |&j| slots[j as usize].digest.hash64());
        match (end, self.boundary) {
            (End::Newest, NONE) => {
                self.link_newest(i);
                self.boundary = i;
            }
            (End::Newest, _) | (End::Found, NONE) => self.link_newest(i),
            (End::Found, boundary) => self.link_older_than(boundary, i),
        }
        self.bytes += slot.bytes();
        true
    }

    fn touch(&mut self, kind: Kind, digest: &Digest) {
        let Some(i) = self.find(kind, digest) else {
            return;
        };
        if self.boundary == NONE {
            self.boundary = i;
        } else if i == self.boundary && self.slots[i as usize].newer != NONE {
            self.boundary = self.slots[i as usize].newer;
        }
        if i != self.newest {
            self.unlink(i);
            self.link_newest(i);
        }
    }

    /// Remove the least recently used object.
    fn pop_least_recent(&mut self) -> Option<(Kind, Digest, u64)> {
        let i = self.oldest;
        if i == NONE {
            return None;
        }
        let slot = self.slots[i as usize];
        if i == self.boundary {
            self.boundary = slot.newer;
        }
        self.unlink(i);
        if let Ok(entry) = self.table.find_entry(slot.digest.hash64(), |&j| j == i) {
            entry.remove();
        }
        self.slots[i as usize].older = self.free;
        self.free = i;
        self.bytes -= slot.bytes();
        Some((slot.kind(), slot.digest, slot.bytes()))
    }

    fn link_newest(&mut self, i: u32) {
        self.slots[i as usize].older = self.newest;
        self.slots[i as usize].newer = NONE;
        if self.newest != NONE {
            self.slots[self.newest as usize].newer = i;
        }
        self.newest = i;
        if self.oldest == NONE {
            self.oldest = i;
        }
    }

    /// Link `i` just older than `anchor`.
    fn link_older_than(&mut self, anchor: u32, i: u32) {
        let older = self.slots[anchor as usize].older;
        self.slots[i as usize].newer = anchor;
        self.slots[i as usize].older = older;
        self.slots[anchor as usize].older = i;
        match older {
            NONE => self.oldest = i,
            o => self.slots[o as usize].newer = i,
        }
    }

    fn unlink(&mut self, i: u32) {
        let Slot { newer, older, .. } = self.slots[i as usize];
        match newer {
            NONE => self.newest = older,
            n => self.slots[n as usize].older = older,
        }
        match older {
            NONE => self.oldest = newer,
            o => self.slots[o as usize].newer = newer,
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
        // one that could never fit goes alone: nothing is evicted for it
        let big = vec![9u8; 11 << 10];
        let e = Digest::of(&big);
        store.write(Kind::Blob, &e, &big).unwrap();
        quota.added(Kind::Blob, e, big.len() as u64);
        quota.flush();
        assert!(!store.contains(Kind::Blob, &e));
        for kept in [a, c, d] {
            assert!(store.contains(Kind::Blob, &kept));
        }
        assert_eq!(quota.used(), 9 << 10);

        // a restart rebuilds the index from disk, oldest mtime first, under a smaller quota
        let small = DiskQuota::new(store.clone(), Some(4 << 10));
        assert_eq!(small.load().unwrap(), 3);
        small.flush();
        assert_eq!(store.list().unwrap().len(), 1);
        assert!(small.used() <= 4 << 10);
    }

    /// An object evicted and stored again before the eviction thread gets to it (fetched anew
    /// at once) keeps its new file.
    #[test]
    fn what_is_stored_again_before_its_eviction_runs_stays() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(crate::cache::DiskStore::open(dir.path()).unwrap());
        let quota = DiskQuota::new(store.clone(), Some(10 << 10));
        let put = |data: &[u8]| {
            let d = Digest::of(data);
            store.write(Kind::Blob, &d, data).unwrap();
            quota.added(Kind::Blob, d, data.len() as u64);
            d
        };
        let a = put(&[1; 6 << 10]);
        // hold the eviction thread until a is back
        let (held, release) = mpsc::sync_channel(0);
        quota.jobs.send(Job::Flush(held)).unwrap();
        let b = put(&[2; 6 << 10]); // evicts a
        put(&[1; 6 << 10]); // a again, evicting b
        release.recv().unwrap();
        quota.flush();
        assert!(
            store.contains(Kind::Blob, &a),
            "a was stored again: its file stays"
        );
        assert!(!store.contains(Kind::Blob, &b));
        assert_eq!(quota.used(), 6 << 10);
    }

    #[test]
    fn the_index_keeps_exact_recency_in_48_bytes_an_object() {
        assert_eq!(std::mem::size_of::<Slot>(), 48);
        let d = |i: u32| Digest::of(&i.to_le_bytes());
        let mut index = Index::default();
        for i in 0..1000 {
            assert!(index.insert(Kind::Blob, d(i), 10, End::Newest));
        }
        assert!(
            !index.insert(Kind::Blob, d(7), 10, End::Newest),
            "indexed once"
        );
        // the same digest as a manifest is another object
        assert!(index.insert(Kind::Manifest, d(7), 1, End::Newest));
        for i in (0..1000).step_by(2) {
            index.touch(Kind::Blob, &d(i));
        }
        index.touch(Kind::Manifest, &d(7));
        let order: Vec<_> = std::iter::from_fn(|| index.pop_least_recent()).collect();
        let expect: Vec<_> = (1..1000)
            .step_by(2)
            .chain((0..1000).step_by(2))
            .map(|i| (Kind::Blob, d(i), 10))
            .chain([(Kind::Manifest, d(7), 1)])
            .collect();
        assert!(order == expect, "least recently used first");
        assert_eq!(index.bytes, 0);
        assert!(index.find(Kind::Blob, &d(3)).is_none());

        // freed slots are used again
        let held = index.slots.len();
        for i in 0..1000 {
            assert!(index.insert(Kind::Blob, d(i + 5000), 1, End::Newest));
        }
        assert_eq!(index.slots.len(), held);
        assert!(index.find(Kind::Blob, &d(5999)).is_some());
        assert_eq!(index.bytes, 1000);
    }

    #[test]
    fn what_a_run_stores_before_its_index_is_built_stays_newer_than_what_it_finds() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(crate::cache::DiskStore::open(dir.path()).unwrap());
        let put = |i: u8, age: u64| {
            let data = vec![i; 3 << 10];
            let d = Digest::of(&data);
            store.write(Kind::Blob, &d, &data).unwrap();
            let when = std::time::SystemTime::now() - std::time::Duration::from_secs(age);
            let path = store.location(Kind::Blob, &d);
            let file = std::fs::File::options().write(true).open(path).unwrap();
            file.set_modified(when).unwrap();
            d
        };
        let (old, older, recent) = (put(1, 300), put(2, 600), put(3, 100));
        let quota = DiskQuota::new(store.clone(), Some(10 << 10));
        // fetched while the index is being built
        let fresh = put(4, 0);
        quota.added(Kind::Blob, fresh, 3 << 10);
        assert_eq!(quota.load().unwrap(), 4);
        quota.flush();
        // 12 KiB over 10: the oldest found goes, not what this run fetched
        assert!(!store.contains(Kind::Blob, &older));
        for kept in [fresh, recent, old] {
            assert!(store.contains(Kind::Blob, &kept));
        }
    }
}
