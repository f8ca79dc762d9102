//! `wharf ls`, `wharf gc` and `wharf verify`: what the cache holds, shrinking it now, and
//! re-hashing everything in it.

use std::time::SystemTime;

use serde_json::json;

use crate::cache::store::hashes_to;
use crate::cache::{Cache, DiskQuota, Kind, Use};
use crate::registry::image;
use crate::registry::Digest;

pub struct Listed {
    pub image: String,
    pub digest: String,
    pub media_type: String,
    /// Bytes of the manifests and blobs of the image that are cached.
    pub size: u64,
    /// The most recent use of any of its files (hits refresh mtimes at most hourly).
    pub last_use: SystemTime,
}

impl Listed {
    pub fn json(&self) -> serde_json::Value {
        let secs = self
            .last_use
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        json!({"image": self.image, "digest": self.digest, "media_type": self.media_type,
               "size": self.size, "last_use": secs})
    }
}

/// Every cached tag (with a bucket, every tag the cluster shares) with its digest, size and
/// last use. Blocking.
pub fn ls(cache: &Cache) -> Result<Vec<Listed>, String> {
    let store = &cache.store;
    let mut out = Vec::new();
    for (registry, repo, tag, record) in cache.tags.all() {
        let mut listed: Vec<Digest> = Vec::new();
        for entry in record.by_accept.values() {
            let top = entry.digest;
            if listed.contains(&top) {
                continue; // the same digest under another Accept set
            }
            listed.push(top);
            let (mut size, mut last_use) = (0, SystemTime::UNIX_EPOCH);
            let read = |d: &Digest| store.read(Kind::Manifest, d).ok().flatten();
            let reached = image::walk_stored(&[top], read);
            let manifests = reached.manifests.iter().map(|d| (Kind::Manifest, d));
            for (kind, d) in manifests.chain(reached.blobs.iter().map(|d| (Kind::Blob, d))) {
                let Ok(Some(stored)) = store.stat(kind, d) else {
                    continue;
                };
                size += stored.size;
                last_use = last_use.max(stored.modified);
            }
            out.push(Listed {
                image: format!("{registry}/{repo}:{tag}"),
                digest: entry.digest.to_string(),
                media_type: entry.media_type.clone(),
                size,
                last_use,
            });
        }
    }
    Ok(out)
}

/// Evict least recently used objects until the store holds at most `max` bytes. Returns the
/// objects and bytes removed. Blocking.
pub fn gc(cache: &Cache, max: u64) -> Result<(usize, u64), String> {
    let list = |m: &Cache| -> Result<(usize, u64), String> {
        let l = m
            .store
            .list()
            .map_err(|e| format!("cannot list the store: {e}"))?;
        Ok((l.len(), l.iter().map(|o| o.size).sum()))
    };
    let before = list(cache)?;
    let quota = DiskQuota::new(cache.disk.clone(), Some(max));
    quota
        .load()
        .map_err(|e| format!("cannot index the store: {e}"))?;
    quota.flush();
    let after = list(cache)?;
    Ok((before.0 - after.0, before.1.saturating_sub(after.1)))
}

pub struct Verified {
    pub objects: usize,
    pub bytes: u64,
    /// Objects whose content did not match their digest; they were removed (from the store
    /// that held the bad copy only).
    pub bad: Vec<String>,
    /// Objects that could not be read (kept: a read error says nothing of the content).
    pub unreadable: Vec<String>,
}

/// Re-hash every stored object, removing those whose content does not match: on this disk,
/// and in the shared store if there is one, each copy on its own. Blocking.
pub fn verify(cache: &Cache, json: bool) -> Result<Verified, String> {
    let mut stores: Vec<&dyn crate::cache::ContentStore> = vec![&*cache.disk];
    if let Some(shared) = &cache.shared {
        stores.push(&**shared);
    }
    let mut v = Verified {
        objects: 0,
        bytes: 0,
        bad: Vec::new(),
        unreadable: Vec::new(),
    };
    for store in stores {
        let objects = store
            .list()
            .map_err(|e| format!("cannot list the store: {e}"))?;
        let total = objects.iter().map(|o| o.size).sum();
        let bar = super::progress(total, "verifying", json);
        for o in &objects {
            let read = store
                .open(o.kind, &o.digest, Use::Inspect)
                .and_then(|f| match f {
                    Some(f) => hashes_to(&mut bar.wrap_read(f.reader()?), &o.digest).map(Some),
                    None => Ok(None),
                });
            let at = store.location(o.kind, &o.digest);
            match read {
                Ok(None) => {} // removed meanwhile
                Err(e) => v.unreadable.push(format!("{} ({at}): {e}", o.digest)),
                Ok(Some(true)) => {}
                Ok(Some(false)) => {
                    let _ = store.remove(o.kind, &o.digest);
                    v.bad.push(format!("{} ({at})", o.digest));
                }
            }
        }
        bar.finish_and_clear();
        v.objects += objects.len();
        v.bytes += total;
    }
    Ok(v)
}
