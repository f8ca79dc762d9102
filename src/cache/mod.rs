//! The cache: verified content by digest ([`ContentStore`], on disk: [`DiskStore`]), the hot part of it in memory
//! ([`MemoryTier`]), what tags point to ([`TagIndex`]), which repository holds what
//! ([`RepoLinks`]), and what is being fetched right now ([`Fills`] for blobs, [`Flights`] for
//! manifests). [`Cache`] is the data directory's part of it, opened: what the commands work on.
//! Failures here are `io::Error`s; what they mean to a client is decided by the pull policy.

pub mod fill;
pub mod flight;
pub mod links;
pub mod memory;
pub mod quota;
pub mod store;
pub mod tags;
pub mod uses;

pub use fill::{Fill, FillReader, Fills, Joined};
pub use flight::Flights;
pub use links::RepoLinks;
pub use memory::MemoryTier;
pub use quota::DiskQuota;
pub use store::{BucketStore, ContentStore, DiskStore, Kind, Object, Shelf, Tiers, Use};
pub use tags::{TagEntry, TagIndex, TagRecord};

use std::path::Path;
use std::sync::Arc;

use crate::config::StoreConfig;
use crate::registry::{image, Digest};

/// The data directory, opened: content by digest, its quota, the tag index and the links.
/// The commands work on this alone (no upstream is built for them); the mirror serves from it.
pub struct Cache {
    /// Where content is kept: what is served, listed, exported, verified.
    pub store: Arc<dyn ContentStore>,
    /// This machine's disk, where fills and imports spool their content before it is stored:
    /// the store itself, or the tier in front of the shared one.
    pub disk: Arc<DiskStore>,
    pub quota: DiskQuota,
    pub tags: TagIndex,
    /// Which repository holds which content: nothing is served under a name without a link.
    pub links: RepoLinks,
    /// The bucket behind the disk, if there is one.
    pub shared: Option<Arc<BucketStore>>,
    /// What this instance served, for the bucket's recency (with a bucket only).
    pub uses: Option<Arc<uses::UseLog>>,
    /// The links directory was made just now: a cache from before links gets them from its
    /// tags ([`Cache::link_tagged`]).
    pub links_fresh: bool,
}

impl Cache {
    /// Open (or make) the cache in `data`, its objects at most `max_size` bytes there; with
    /// `shared`, in front of that bucket.
    pub fn open(
        data: &Path,
        max_size: Option<u64>,
        shared: Option<&StoreConfig>,
    ) -> Result<Cache, String> {
        let disk = DiskStore::open(data)
            .map_err(|e| format!("cannot open the data directory {}: {e}", data.display()))?;
        let links_dir = data.join("links");
        let links_fresh = !links_dir.exists();
        let links = RepoLinks::open(&links_dir)
            .map_err(|e| format!("cannot open the links in {}: {e}", data.display()))?;
        let disk = Arc::new(disk);
        let shared = match shared {
            None => None,
            Some(c) => {
                let options: Vec<_> = c.options.clone().into_iter().collect();
                let uploads = data.join("uploads");
                Some(Arc::new(BucketStore::open(&c.url, &options, &uploads)?))
            }
        };
        let tags = TagIndex::open(&data.join("tags"), shared.clone())
            .map_err(|e| format!("cannot open the tag index in {}: {e}", data.display()))?;
        let store: Arc<dyn ContentStore> = match &shared {
            None => disk.clone(),
            Some(bucket) => Arc::new(
                Tiers::new(disk.clone(), bucket.clone(), &data.join("queued"))
                    .map_err(|e| format!("cannot start the uploader: {e}"))?,
            ),
        };
        Ok(Cache {
            quota: DiskQuota::new(disk.clone(), max_size),
            store,
            disk,
            uses: shared.clone().map(|b| Arc::new(uses::UseLog::new(b))),
            shared,
            tags,
            links,
            links_fresh,
        })
    }

    /// An object was served: its recency on this disk and, with a bucket, across the cluster.
    pub fn touched(&self, kind: Kind, digest: &Digest) {
        self.quota.touched(kind, digest);
        if let Some(u) = &self.uses {
            u.note(kind, digest);
        }
    }

    /// Link every image this disk has a tag of to its repository: the tag's manifest and all
    /// it reaches on this disk. For a cache from before links, and after an import. Nothing
    /// is asked of the bucket (a start-up reads nothing from it); what an instance reads from
    /// the bucket later is linked as it is read. Blocking.
    pub fn link_tagged(&self) -> usize {
        let mut n = 0;
        let read = |d: &Digest| self.disk.read(Kind::Manifest, d).ok().flatten();
        for (registry, repo, _, record) in self.tags.on_disk() {
            let top: Vec<Digest> = record.by_accept.values().map(|e| e.digest).collect();
            let held = image::reach(&top, read);
            n += held.len();
            if let Err(e) = self.links.add(&registry, &repo, &held) {
                tracing::warn!("cannot record what {registry}/{repo} holds: {e}");
            }
        }
        n
    }
}

/// The repositories of a tree kept per repository, `<root>/<registry>/<repository…>/<marker>`
/// (tag records under `_tags/`, links in `_links`), as (registry, repository). Blocking.
pub(crate) fn repositories(
    root: &std::path::Path,
    marker: &str,
) -> Vec<(String, crate::registry::RepoName)> {
    fn walk(dir: &std::path::Path, repo: &str, marker: &str, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name == marker {
                out.push(repo.to_owned());
            } else if entry.file_type().is_ok_and(|t| t.is_dir()) {
                let sub = if repo.is_empty() {
                    name
                } else {
                    format!("{repo}/{name}")
                };
                walk(&entry.path(), &sub, marker, out);
            }
        }
    }
    let mut out = Vec::new();
    for reg in std::fs::read_dir(root).into_iter().flatten().flatten() {
        let registry = reg.file_name().to_string_lossy().into_owned();
        let mut repos = Vec::new();
        walk(&reg.path(), "", marker, &mut repos);
        out.extend(
            repos
                .iter()
                .filter_map(|r| crate::registry::RepoName::parse(r).ok())
                .map(|r| (registry.clone(), r)),
        );
    }
    out
}
