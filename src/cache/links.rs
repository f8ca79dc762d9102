//! Which repository holds which content. The store keeps one copy of each digest, however many
//! repositories and registries share it; a link says that `registry/repository` holds a digest,
//! because it arrived through one of that repository's manifests, or its own fetch, or the
//! upstream confirmed it for that repository. Content is served under a name only through a
//! link, so a private layer is never served under a public name, another registry's name or a
//! made-up one.
//!
//! On disk, each repository's links are one append-only file of digests,
//! `links/<registry>/<repository>/_links` (a torn last line is skipped on reading). In memory
//! a repository's set is loaded on first use and kept, for [`MAX_LOADED`] repositories at
//! most (clients may ask under any number of made-up names); past that all are dropped and
//! loaded again as they are used.

use std::collections::{HashMap, HashSet};
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use crate::registry::{Digest, RepoName};

type Set = Arc<RwLock<HashSet<Digest>>>;

/// Most repositories whose links are kept in memory at once.
pub const MAX_LOADED: usize = 100_000;

pub struct RepoLinks {
    root: PathBuf,
    /// registry -> repository -> digests, for the repositories loaded so far.
    loaded: RwLock<HashMap<String, HashMap<String, Set>>>,
    /// Serializes appends to the files.
    writing: std::sync::Mutex<()>,
}

impl RepoLinks {
    pub fn open(root: &Path) -> io::Result<RepoLinks> {
        fs::create_dir_all(root)?;
        Ok(RepoLinks {
            root: root.to_owned(),
            loaded: RwLock::default(),
            writing: std::sync::Mutex::default(),
        })
    }

    fn file(&self, registry: &str, repo: &RepoName) -> PathBuf {
        // registry hosts and names were validated: no component can be `..` or empty
        self.root.join(registry).join(repo.as_str()).join("_links")
    }

    /// Whether `repo` holds `digest`, if its links are in memory (`None`: not loaded yet).
    /// Never blocks on the disk.
    pub fn cached(&self, registry: &str, repo: &RepoName, digest: &Digest) -> Option<bool> {
        let loaded = self.loaded.read().expect("links");
        let set = loaded.get(registry)?.get(repo.as_str())?;
        let has = set.read().expect("link set").contains(digest);
        Some(has)
    }

    /// Whether `repo` holds `digest`. Blocking (reads the repository's file once).
    pub fn has(&self, registry: &str, repo: &RepoName, digest: &Digest) -> bool {
        if let Some(has) = self.cached(registry, repo, digest) {
            return has;
        }
        self.set(registry, repo)
            .read()
            .expect("link set")
            .contains(digest)
    }

    /// The repository's set, loaded from disk if it is not in memory. Blocking.
    fn set(&self, registry: &str, repo: &RepoName) -> Set {
        if let Some(s) = self
            .loaded
            .read()
            .expect("links")
            .get(registry)
            .and_then(|r| r.get(repo.as_str()))
        {
            return s.clone();
        }
        let set = read_links(&self.file(registry, repo));
        let mut loaded = self.loaded.write().expect("links");
        if loaded.values().map(HashMap::len).sum::<usize>() >= MAX_LOADED {
            loaded.clear();
        }
        loaded
            .entry(registry.to_owned())
            .or_default()
            .entry(repo.as_str().to_owned())
            .or_insert_with(|| Arc::new(RwLock::new(set)))
            .clone()
    }

    /// Record that `repo` holds `digests`. Blocking (one append for the new ones).
    pub fn add(&self, registry: &str, repo: &RepoName, digests: &[Digest]) -> io::Result<()> {
        let set = self.set(registry, repo);
        let _writing = self.writing.lock().expect("link writer");
        let new: Vec<Digest> = {
            let have = set.read().expect("link set");
            let mut seen = HashSet::new();
            digests
                .iter()
                .filter(|d| !have.contains(d) && seen.insert(**d))
                .copied()
                .collect()
        };
        if new.is_empty() {
            return Ok(());
        }
        let file = self.file(registry, repo);
        fs::create_dir_all(file.parent().expect("a links file has a directory"))?;
        // (a newline first: should the last append have been torn, the new lines stand apart)
        let mut text = String::with_capacity(new.len() * 72 + 1);
        text.push('\n');
        for d in &new {
            text.push_str(&d.to_string());
            text.push('\n');
        }
        let mut f = OpenOptions::new().create(true).append(true).open(&file)?;
        f.write_all(text.as_bytes())?;
        set.write().expect("link set").extend(new);
        Ok(())
    }

    /// Every link on disk, as (registry, repository, digests). Blocking.
    pub fn all(&self) -> Vec<(String, RepoName, Vec<Digest>)> {
        let mut out: Vec<_> = super::repositories(&self.root, "_links")
            .into_iter()
            .map(|(registry, repo)| {
                let digests = read_links(&self.file(&registry, &repo))
                    .into_iter()
                    .collect();
                (registry, repo, digests)
            })
            .collect();
        out.sort_by(|a, b| (&a.0, a.1.as_str()).cmp(&(&b.0, b.1.as_str())));
        out
    }
}

/// The digests of a links file (none if it is missing; a torn line is skipped).
fn read_links(path: &Path) -> HashSet<Digest> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| Digest::parse(l.trim()).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_persist_per_repository_and_registry() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (Digest::of(b"a"), Digest::of(b"b"));
        let busybox = RepoName::parse("library/busybox").unwrap();
        let other = RepoName::parse("me/other").unwrap();
        {
            let links = RepoLinks::open(dir.path()).unwrap();
            assert_eq!(links.cached("docker.io", &busybox, &a), None);
            assert!(!links.has("docker.io", &busybox, &a));
            links.add("docker.io", &busybox, &[a, a]).unwrap();
            assert_eq!(links.cached("docker.io", &busybox, &a), Some(true));
            assert!(!links.has("docker.io", &other, &a));
            assert!(!links.has("ghcr.io", &busybox, &a));
            links.add("docker.io", &busybox, &[a, b]).unwrap();
        }
        // a torn last line (a crash mid-append) is skipped
        let file = dir.path().join("docker.io/library/busybox/_links");
        let mut f = OpenOptions::new().append(true).open(&file).unwrap();
        f.write_all(b"sha256:0123").unwrap();
        let links = RepoLinks::open(dir.path()).unwrap();
        assert!(links.has("docker.io", &busybox, &a));
        assert!(links.has("docker.io", &busybox, &b));
        let c = Digest::of(b"c");
        links.add("docker.io", &busybox, &[c]).unwrap();
        let again = RepoLinks::open(dir.path()).unwrap();
        assert!(
            again.has("docker.io", &busybox, &c),
            "an append after a torn one"
        );
        let all = again.all();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].2.len(), 3);
    }

    #[test]
    fn made_up_names_do_not_fill_memory() {
        let dir = tempfile::tempdir().unwrap();
        let links = RepoLinks::open(dir.path()).unwrap();
        let (a, real) = (Digest::of(b"a"), RepoName::parse("real/one").unwrap());
        links.add("docker.io", &real, &[a]).unwrap();
        for i in 0..=MAX_LOADED {
            let made_up = RepoName::parse(&format!("made/up{i}")).unwrap();
            assert!(!links.has("docker.io", &made_up, &a));
        }
        let kept: usize = links
            .loaded
            .read()
            .unwrap()
            .values()
            .map(HashMap::len)
            .sum();
        assert!(kept <= MAX_LOADED, "{kept} sets in memory");
        assert!(
            links.has("docker.io", &real, &a),
            "read again from its file"
        );
    }
}
