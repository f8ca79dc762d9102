//! The memory tier: manifests and small blobs kept in RAM in front of the disk, bounded in bytes.
//!
//! Small objects are where per-request cost dominates (a disk read is a blocking-pool hop), so
//! they are answered from here; large blobs stream from disk, where the page cache does this job.

use std::sync::Arc;

use bytes::Bytes;
use moka::sync::Cache;

use super::store::Kind;
use crate::registry::Digest;

/// An object held in memory; a manifest keeps its media type, so a hit needs no parsing.
#[derive(Clone)]
pub struct Cached {
    pub bytes: Bytes,
    pub media_type: Option<Arc<str>>,
}

pub struct MemoryTier {
    cache: Cache<(Kind, Digest), Cached>,
    max_object: u64,
}

impl MemoryTier {
    /// A tier holding at most `capacity` bytes, of objects no larger than `max_object`.
    pub fn new(capacity: u64, max_object: u64) -> Self {
        MemoryTier {
            cache: Cache::builder()
                .max_capacity(capacity)
                .weigher(|_, v: &Cached| v.bytes.len().try_into().unwrap_or(u32::MAX))
                .build(),
            max_object: max_object.min(capacity),
        }
    }

    pub fn get(&self, kind: Kind, digest: &Digest) -> Option<Cached> {
        self.cache.get(&(kind, *digest))
    }

    /// Whether an object of this size belongs in memory.
    pub fn admits(&self, len: u64) -> bool {
        len <= self.max_object
    }

    pub fn insert(&self, kind: Kind, digest: Digest, bytes: Bytes, media_type: Option<Arc<str>>) {
        if self.admits(bytes.len() as u64) {
            self.cache
                .insert((kind, digest), Cached { bytes, media_type });
        }
    }
}
