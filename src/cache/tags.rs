//! The tag index: which digest a tag pointed to when wharf last asked, and when that was.
//!
//! Tags are the only mutable thing a registry serves, so they are the only thing wharf has to
//! revalidate. Each mapping is a small JSON file under `tags/<registry>/<repo>/_tags/<tag>`
//! (`_tags` cannot be a repository component, so paths never collide), written by rename so a
//! crash leaves either the old or the new mapping. A memory map in front saves the file reads.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::registry::{Digest, RepoName, Tag};

/// What a tag resolved to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagEntry {
    /// `sha256:<hex>`
    pub digest: String,
    pub media_type: String,
    /// Unix seconds of the last time the upstream confirmed this mapping.
    pub checked: u64,
}

impl TagEntry {
    pub fn new(digest: &Digest, media_type: &str) -> Self {
        TagEntry {
            digest: digest.to_string(),
            media_type: media_type.to_owned(),
            checked: now_secs(),
        }
    }

    pub fn digest(&self) -> Option<Digest> {
        Digest::parse(&self.digest).ok()
    }

    /// Whether the upstream confirmed this mapping less than `ttl` ago.
    pub fn is_fresh(&self, ttl: Duration) -> bool {
        now_secs().saturating_sub(self.checked) < ttl.as_secs()
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

type Key = (String, String, String);

pub struct TagIndex {
    root: PathBuf,
    memory: RwLock<HashMap<Key, TagEntry>>,
}

impl TagIndex {
    pub fn open(root: &Path) -> io::Result<Self> {
        fs::create_dir_all(root)?;
        Ok(TagIndex {
            root: root.to_owned(),
            memory: RwLock::default(),
        })
    }

    fn key(registry: &str, repo: &RepoName, tag: &Tag) -> Key {
        (
            registry.to_owned(),
            repo.as_str().to_owned(),
            tag.as_str().to_owned(),
        )
    }

    fn path(&self, registry: &str, repo: &RepoName, tag: &Tag) -> PathBuf {
        // registry hosts, names and tags were validated: no component can be `..` or empty
        self.root
            .join(registry)
            .join(repo.as_str())
            .join("_tags")
            .join(tag.as_str())
    }

    /// The mapping for a tag if it is in memory. Never blocks.
    pub fn get_cached(&self, registry: &str, repo: &RepoName, tag: &Tag) -> Option<TagEntry> {
        let key = Self::key(registry, repo, tag);
        self.memory.read().expect("tag map").get(&key).cloned()
    }

    /// The mapping for a tag, from memory or disk. Blocking on a memory miss (one small read).
    pub fn get(&self, registry: &str, repo: &RepoName, tag: &Tag) -> Option<TagEntry> {
        if let Some(e) = self.get_cached(registry, repo, tag) {
            return Some(e);
        }
        let key = Self::key(registry, repo, tag);
        let bytes = fs::read(self.path(registry, repo, tag)).ok()?;
        let entry: TagEntry = serde_json::from_slice(&bytes).ok()?;
        self.memory
            .write()
            .expect("tag map")
            .insert(key, entry.clone());
        Some(entry)
    }

    /// Record a mapping (in memory at once, on disk before returning). Blocking.
    pub fn put(
        &self,
        registry: &str,
        repo: &RepoName,
        tag: &Tag,
        entry: TagEntry,
    ) -> io::Result<()> {
        let path = self.path(registry, repo, tag);
        let dir = path.parent().expect("tag paths have a parent");
        fs::create_dir_all(dir)?;
        let tmp = dir.join(format!(".{}.{:016x}", tag, rand::random::<u64>()));
        fs::write(
            &tmp,
            serde_json::to_vec(&entry).expect("tag entry serializes"),
        )?;
        if let Err(e) = fs::rename(&tmp, &path) {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        self.memory
            .write()
            .expect("tag map")
            .insert(Self::key(registry, repo, tag), entry);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn persists_across_instances() {
        let dir = tempfile::tempdir().unwrap();
        let repo = RepoName::parse("library/busybox").unwrap();
        let tag = Tag::parse("latest").unwrap();
        let d = Digest::of(b"m");
        {
            let idx = TagIndex::open(dir.path()).unwrap();
            assert!(idx.get("docker.io", &repo, &tag).is_none());
            idx.put("docker.io", &repo, &tag, TagEntry::new(&d, "x/y"))
                .unwrap();
        }
        let idx = TagIndex::open(dir.path()).unwrap();
        let e = idx.get("docker.io", &repo, &tag).unwrap();
        assert_eq!(e.digest(), Some(d));
        assert!(e.is_fresh(Duration::from_secs(60)));
        assert!(!e.is_fresh(Duration::ZERO));
        assert!(idx.get("ghcr.io", &repo, &tag).is_none());
    }
}
