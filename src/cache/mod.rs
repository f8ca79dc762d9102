//! The cache: verified content on disk by digest ([`BlobStore`]), the hot part of it in memory
//! ([`MemoryTier`]), what tags point to ([`TagIndex`]), and what is being fetched right now
//! ([`Fills`] for blobs, [`Flights`] for manifests).

pub mod fill;
pub mod flight;
pub mod links;
pub mod memory;
pub mod quota;
pub mod store;
pub mod tags;

pub use fill::{Fill, FillReader, Fills, Joined};
pub use flight::Flights;
pub use links::RepoLinks;
pub use memory::MemoryTier;
pub use quota::DiskQuota;
pub use store::{BlobStore, Kind};
pub use tags::{TagEntry, TagIndex, TagRecord};

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
