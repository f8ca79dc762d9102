//! The tag index: which digest a tag pointed to when wharf last asked, and when that was.
//!
//! Tags are the only mutable thing a registry serves, so they are the only thing wharf has to
//! revalidate. What a tag resolves to also depends on what the client accepts (a multi-arch tag
//! is an index for clients that take one, a single manifest for those that do not), so a tag
//! keeps one mapping per `Accept` set it was asked with. Each tag is a small JSON file under
//! `tags/<registry>/<repo>/_tags/<tag>` (`_tags` cannot be a repository component, so paths never
//! collide), replaced by rename so a crash leaves either the old or the new file. A memory map
//! in front saves the file reads.
//!
//! With a bucket, the records are shared: the instance that asked the upstream (a cluster's
//! owner of the tag) puts its record on the bucket's `tags` shelf under the same name, and an
//! instance that has no record of a tag reads the bucket's. So a tag whose owner changes, or
//! an instance with an empty disk, keeps the cluster's TTL instead of asking the upstream
//! again; and `ls` and `export` see every tag the cluster knows.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::store::{BucketStore, Shelf};
use crate::registry::{Digest, RepoName, Tag};

/// What a tag resolved to for one `Accept` set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagEntry {
    /// Stored as `sha256:<hex>`.
    pub digest: Digest,
    pub media_type: String,
    /// Unix seconds of the last time the upstream confirmed this mapping.
    pub checked: u64,
}

impl TagEntry {
    pub fn new(digest: &Digest, media_type: &str) -> Self {
        TagEntry {
            digest: *digest,
            media_type: media_type.to_owned(),
            checked: now_secs(),
        }
    }

    /// Whether the upstream confirmed this mapping less than `ttl` ago.
    pub fn is_fresh(&self, ttl: Duration) -> bool {
        now_secs().saturating_sub(self.checked) < ttl.as_secs()
    }
}

/// Everything known about one tag: a mapping per `Accept` key (see `Accept::key`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagRecord {
    pub by_accept: BTreeMap<String, TagEntry>,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub struct TagIndex {
    root: PathBuf,
    /// Records by `registry/repo:tag` (a registry has no `/`, a tag no `:`), shared with readers.
    memory: RwLock<HashMap<String, Arc<TagRecord>>>,
    /// Serializes read-modify-write of tag files.
    writing: Mutex<()>,
    /// The bucket whose `tags` shelf the cluster's records are on.
    shared: Option<Arc<BucketStore>>,
    /// Tags found on neither disk nor bucket lately: not asked of the bucket again for a
    /// while (unknown names, tags the upstream lacks, requests racing a first fetch).
    unshared: moka::sync::Cache<String, ()>,
}

/// How long a tag the bucket did not have is not asked of it again.
const UNSHARED_FOR: Duration = Duration::from_secs(30);

/// Two records of one tag as one: for each `Accept` key, the mapping checked last.
fn merge(mut ours: TagRecord, theirs: TagRecord) -> TagRecord {
    for (accept, entry) in theirs.by_accept {
        let known = ours.by_accept.get(&accept);
        if known.is_none_or(|k| k.checked < entry.checked) {
            ours.by_accept.insert(accept, entry);
        }
    }
    ours
}

/// A tag and its record: (registry, repository, tag, record).
pub type Tagged = (String, RepoName, Tag, Arc<TagRecord>);

fn tagged(records: BTreeMap<(String, String, String), TagRecord>) -> Vec<Tagged> {
    records
        .into_iter()
        .filter_map(|((registry, repo, tag), record)| {
            let (repo, tag) = (RepoName::parse(&repo).ok()?, Tag::parse(&tag).ok()?);
            Some((registry, repo, tag, Arc::new(record)))
        })
        .collect()
}

/// Whether a new mapping goes to the shared records too: it does when this instance had it
/// from the upstream (or an import), not when a cluster peer passed it on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Share {
    Yes,
    No,
}

impl TagIndex {
    pub fn open(root: &Path, shared: Option<Arc<BucketStore>>) -> io::Result<Self> {
        fs::create_dir_all(root)?;
        Ok(TagIndex {
            root: root.to_owned(),
            memory: RwLock::default(),
            writing: Mutex::default(),
            shared,
            unshared: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(UNSHARED_FOR)
                .build(),
        })
    }

    /// A tag's name on the bucket's shelf: its path under the local root.
    fn shared_name(registry: &str, repo: &RepoName, tag: &Tag) -> String {
        format!("{registry}/{}/_tags/{}", repo.as_str(), tag.as_str())
    }

    /// The bucket's record of a tag. Blocking.
    fn read_shared(&self, name: &str) -> Option<TagRecord> {
        let bucket = self.shared.as_ref()?;
        if self.unshared.contains_key(name) {
            return None;
        }
        let found = match bucket.read_record(Shelf::Tags, name) {
            Ok(bytes) => bytes.and_then(|b| serde_json::from_slice(&b).ok()),
            Err(e) => {
                tracing::warn!("cannot read the shared record of {name}: {e}");
                None
            }
        };
        if found.is_none() {
            self.unshared.insert(name.to_owned(), ());
        }
        found
    }

    fn key(registry: &str, repo: &RepoName, tag: &Tag) -> String {
        let (repo, tag) = (repo.as_str(), tag.as_str());
        let mut key = String::with_capacity(registry.len() + repo.len() + tag.len() + 2);
        for part in [registry, "/", repo, ":", tag] {
            key.push_str(part);
        }
        key
    }

    fn dir(&self, registry: &str, repo: &RepoName) -> PathBuf {
        // registry hosts, names and tags were validated: no component can be `..` or empty
        self.root.join(registry).join(repo.as_str()).join("_tags")
    }

    /// The record for a tag if it is in memory. Never blocks.
    pub fn get_cached(&self, registry: &str, repo: &RepoName, tag: &Tag) -> Option<Arc<TagRecord>> {
        let key = Self::key(registry, repo, tag);
        self.memory.read().expect("tag map").get(&key).cloned()
    }

    /// The record for a tag, from memory, disk or the bucket. Blocking on a memory miss (one
    /// small read).
    pub fn get(&self, registry: &str, repo: &RepoName, tag: &Tag) -> Option<Arc<TagRecord>> {
        if let Some(r) = self.get_cached(registry, repo, tag) {
            return Some(r);
        }
        let on_disk = fs::read(self.dir(registry, repo).join(tag.as_str()))
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok());
        let record = on_disk.or_else(|| self.read_shared(&Self::shared_name(registry, repo, tag)));
        let record = Arc::new(record?);
        // a put that ran while this read (a slow bucket) has the newer record: it stays
        let mut memory = self.memory.write().expect("tag map");
        let kept = memory
            .entry(Self::key(registry, repo, tag))
            .or_insert(record);
        Some(kept.clone())
    }

    /// Record what `tag` resolved to for clients with `accept_key`; with [`Share::Yes`] on the
    /// bucket too (a failure there is logged: the disk has it). Blocking.
    pub fn put(
        &self,
        registry: &str,
        repo: &RepoName,
        tag: &Tag,
        accept_key: &str,
        entry: TagEntry,
        share: Share,
    ) -> io::Result<()> {
        let _writing = self.writing.lock().expect("tag writer");
        let mut record = self
            .get(registry, repo, tag)
            .map(|r| TagRecord::clone(&r))
            .unwrap_or_default();
        record.by_accept.insert(accept_key.to_owned(), entry);
        let dir = self.dir(registry, repo);
        fs::create_dir_all(&dir)?;
        let tmp = dir.join(format!(".{}.{:016x}", tag, rand::random::<u64>()));
        fs::write(
            &tmp,
            serde_json::to_vec(&record).expect("tag record serializes"),
        )?;
        if let Err(e) = fs::rename(&tmp, dir.join(tag.as_str())) {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        if let (Some(bucket), Share::Yes) = (&self.shared, share) {
            // merged with what other instances shared (other Accept keys), off the request path
            let name = Self::shared_name(registry, repo, tag);
            self.unshared.invalidate(&name);
            let ours = record.clone();
            bucket.update_record_soon(Shelf::Tags, name, move |theirs| {
                let theirs = theirs.and_then(|b| serde_json::from_slice(&b).ok());
                let merged = merge(ours, theirs.unwrap_or_default());
                serde_json::to_vec(&merged).expect("tag record serializes")
            });
        }
        self.memory
            .write()
            .expect("tag map")
            .insert(Self::key(registry, repo, tag), Arc::new(record));
        Ok(())
    }

    /// Every tag this disk records, sorted: nothing asked of the bucket. Blocking.
    pub fn on_disk(&self) -> Vec<Tagged> {
        tagged(self.disk_records())
    }

    fn disk_records(&self) -> BTreeMap<(String, String, String), TagRecord> {
        let mut all = BTreeMap::new();
        for (registry, repo) in super::repositories(&self.root, "_tags") {
            for t in self.list(&registry, &repo) {
                let Ok(tag) = Tag::parse(&t) else { continue };
                if let Some(record) = self.get(&registry, &repo, &tag) {
                    let key = (registry.clone(), repo.to_string(), t);
                    all.insert(key, TagRecord::clone(&record));
                }
            }
        }
        all
    }

    /// Every tag recorded here and, with a bucket, shared (of two mappings for one `Accept`
    /// key, the one checked last), sorted. A bucket that cannot be listed is logged, and this
    /// disk's tags are listed alone. Blocking.
    pub fn all(&self) -> Vec<Tagged> {
        let mut all = self.disk_records();
        let shared = match self.shared.as_ref().map(|b| b.records(Shelf::Tags)) {
            Some(Ok(names)) => names,
            Some(Err(e)) => {
                tracing::warn!("cannot list the shared tags (listing this disk's only): {e}");
                Vec::new()
            }
            None => Vec::new(),
        };
        for name in shared {
            let Some((path, tag)) = name.rsplit_once("/_tags/") else {
                continue;
            };
            let Some((registry, repo)) = path.split_once('/') else {
                continue;
            };
            let Some(shared) = self.read_shared(&name) else {
                continue;
            };
            let key = (registry.to_owned(), repo.to_owned(), tag.to_owned());
            let record = all.entry(key).or_default();
            *record = merge(std::mem::take(record), shared);
        }
        tagged(all)
    }

    /// The tags recorded for a repository, sorted. Blocking.
    pub fn list(&self, registry: &str, repo: &RepoName) -> Vec<String> {
        let mut tags: Vec<String> = fs::read_dir(self.dir(registry, repo))
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| !n.starts_with('.'))
            .collect();
        tags.sort();
        tags
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn persists_per_accept_key_across_instances() {
        let dir = tempfile::tempdir().unwrap();
        let repo = RepoName::parse("library/busybox").unwrap();
        let tag = Tag::parse("latest").unwrap();
        let (d1, d2) = (Digest::of(b"index"), Digest::of(b"manifest"));
        {
            let idx = TagIndex::open(dir.path(), None).unwrap();
            assert!(idx.get("docker.io", &repo, &tag).is_none());
            idx.put(
                "docker.io",
                &repo,
                &tag,
                "*/*",
                TagEntry::new(&d1, "x/index"),
                Share::Yes,
            )
            .unwrap();
            let entry = TagEntry::new(&d2, "x/m");
            idx.put("docker.io", &repo, &tag, "x/m", entry, Share::No)
                .unwrap();
        }
        let idx = TagIndex::open(dir.path(), None).unwrap();
        let r = idx.get("docker.io", &repo, &tag).unwrap();
        assert_eq!(r.by_accept["*/*"].digest, d1);
        assert_eq!(r.by_accept["x/m"].digest, d2);
        assert!(r.by_accept["x/m"].is_fresh(Duration::from_secs(60)));
        assert!(!r.by_accept["x/m"].is_fresh(Duration::ZERO));
        assert!(idx.get("ghcr.io", &repo, &tag).is_none());
        assert_eq!(idx.list("docker.io", &repo), ["latest"]);
        let all = idx.all();
        assert_eq!(all.len(), 1);
        assert_eq!(
            (all[0].0.as_str(), all[0].1.as_str(), all[0].2.as_str()),
            ("docker.io", "library/busybox", "latest")
        );
        assert!(idx
            .list("docker.io", &RepoName::parse("none").unwrap())
            .is_empty());
    }
}
