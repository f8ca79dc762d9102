//! What a repository holds. The store keeps one copy of each digest for every repository and
//! registry; what may be served under `registry/repository` is what that repository is known to
//! hold ([`crate::cache::RepoLinks`]): content that came through one of its manifests or its own
//! fetch, or that the upstream confirmed for it — a HEAD with that repository's scope, which
//! costs no download (and no Docker Hub pull). A private layer is thus never served under a
//! public name, another registry or a made-up repository, and a public layer shared by many
//! repositories is still stored once and fetched once.

use std::sync::Arc;

use super::Mirror;
use crate::cache::Kind;
use crate::registry::image;
use crate::registry::media::Accept;
use crate::registry::{Cause, Digest, ErrorCode, RegistryError, RepoName};
use crate::upstream::Upstream;

/// (registry, repository, digest) the upstream recently said the repository does not hold,
/// believed for `negative_ttl`.
pub(super) struct Unheld(moka::sync::Cache<(String, String, Digest), ()>);

impl Unheld {
    pub(super) fn new(negative_ttl: std::time::Duration) -> Unheld {
        Unheld(
            moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(negative_ttl)
                .build(),
        )
    }
}

impl Mirror {
    /// Whether `name` is known to hold `digest`, without touching the disk (`false` also when
    /// its links are not loaded yet).
    pub(super) fn holds_cached(&self, up: &Upstream, name: &RepoName, digest: &Digest) -> bool {
        self.cache.links.cached(&up.registry, name, digest) == Some(true)
    }

    /// Record that `name` holds `digests`: they came through it. A link that cannot be written
    /// costs a HEAD later, nothing worse: it is logged.
    pub(super) async fn link(
        self: &Arc<Self>,
        up: &Upstream,
        name: &RepoName,
        digests: Vec<Digest>,
    ) {
        let (registry, repo) = (up.registry.clone(), name.clone());
        let done = self
            .blocking(move |m| m.cache.links.add(&registry, &repo, &digests))
            .await;
        if let Err(e) = done {
            tracing::warn!("cannot record what {}/{name} holds: {e}", up.registry);
        }
    }

    /// Record that `name` holds a manifest it served, and everything the manifest refers to.
    pub(super) async fn link_manifest(
        self: &Arc<Self>,
        up: &Upstream,
        name: &RepoName,
        digest: Digest,
        media_type: &str,
        bytes: &[u8],
    ) {
        let mut held = vec![digest];
        if let Ok(r) = image::refs(media_type, bytes) {
            held.extend(r.manifests.iter().map(|(d, _)| *d));
            held.extend(r.blobs.iter().map(|(d, _)| *d));
        }
        self.link(up, name, held).await;
    }

    /// Make sure `name` may be served `digest`, which wharf has (or is fetching) for some
    /// repository: it is linked to `name`, or the upstream confirms it now for `name` (then it
    /// is linked). Offline, only a link will do.
    pub(super) async fn vouch(
        self: &Arc<Self>,
        up: &Arc<Upstream>,
        name: &RepoName,
        kind: Kind,
        digest: &Digest,
    ) -> Result<(), RegistryError> {
        if self.holds_cached(up, name, digest) {
            return Ok(());
        }
        let (registry, repo, d) = (up.registry.clone(), name.clone(), *digest);
        if self
            .blocking(move |m| m.cache.links.has(&registry, &repo, &d))
            .await
        {
            return Ok(());
        }
        let code = match kind {
            Kind::Blob => ErrorCode::BlobUnknown,
            Kind::Manifest => ErrorCode::ManifestUnknown,
        };
        let unknown = |why: &str| {
            RegistryError::not_found(
                code,
                format!(
                    "{}/{name} is not known to hold {digest}: {why}",
                    up.registry
                ),
            )
        };
        if up.offline {
            return Err(unknown("wharf is offline"));
        }
        let key = (up.registry.clone(), name.to_string(), *digest);
        if self.holding.0.contains_key(&key) {
            return Err(unknown("the upstream said so moments ago"));
        }
        let asked = match kind {
            Kind::Blob => up.blob_head(name, digest).await,
            Kind::Manifest => {
                let accept = Accept::default().for_upstream();
                up.manifest_head(name, &digest.to_string(), &accept).await
            }
        };
        match asked {
            Ok(_) => {
                self.link(up, name, vec![*digest]).await;
                Ok(())
            }
            Err(e) => {
                if e.cause == Cause::NotFound {
                    self.holding.0.insert(key, ());
                }
                Err(e)
            }
        }
    }
}
