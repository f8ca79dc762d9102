//! The referrers API (signatures, SBOMs and other artifacts that point at a manifest): passed
//! through to the upstream and cached per subject digest and `artifactType` filter. New
//! referrers can appear at any time, so an answer is fresh for the tag TTL; after that it is
//! asked again, and kept as a stale answer (or, offline, the only one) while the upstream
//! cannot be asked. Answers live in memory only, bounded in bytes.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderValue, StatusCode};

use super::{is_unavailable, Body, Mirror, Outcome, Reply};
use crate::registry::media::OCI_INDEX;
use crate::registry::{Digest, RegistryError, RepoName};
use crate::upstream::Upstream;

/// Registry, repository, subject digest, artifactType.
pub(super) type ReferrersKey = (String, String, Digest, Option<String>);

#[derive(Clone)]
pub(super) struct Referrers {
    body: Bytes,
    filtered: bool,
    fetched: Instant,
}

/// How long an answer is kept at all (for stale and offline use).
pub(super) const KEEP: Duration = Duration::from_secs(7 * 24 * 3600);

/// Referrers answers by (registry, repository, digest, artifact type).
pub(super) type ReferrersCache = moka::sync::Cache<ReferrersKey, Referrers>;

pub(super) fn cache() -> ReferrersCache {
    moka::sync::Cache::builder()
        .max_capacity(64 << 20)
        .weigher(|_, v: &Referrers| v.body.len().try_into().unwrap_or(u32::MAX))
        .time_to_live(KEEP)
        .build()
}

impl Mirror {
    pub(super) async fn referrers(
        &self,
        up: &Upstream,
        name: &RepoName,
        digest: &Digest,
        artifact_type: Option<String>,
    ) -> Result<Reply, RegistryError> {
        let key = (
            up.registry.clone(),
            name.to_string(),
            *digest,
            artifact_type,
        );
        let cached = self.referrers.get(&key);
        let ttl = self
            .freshness
            .tag_ttl(&up.registry, up.tag_ttl, name.as_str(), "");
        if let Some(r) = &cached {
            if up.offline || r.fetched.elapsed() < ttl {
                return Ok(reply(r.clone(), Outcome::HitMemory));
            }
        }
        let fetched = up
            .referrers(name, digest, key.3.as_deref())
            .await
            .map(|r| Referrers {
                body: r.body,
                filtered: r.filtered,
                fetched: Instant::now(),
            });
        match (fetched, cached) {
            (Ok(r), _) => {
                self.referrers.insert(key, r.clone());
                Ok(reply(r, Outcome::Miss))
            }
            (Err(e), Some(old)) if is_unavailable(&e) => Ok(reply(old, Outcome::Stale)),
            (Err(e), _) => Err(e),
        }
    }
}

fn reply(r: Referrers, outcome: Outcome) -> Reply {
    let mut headers = vec![
        (header::CONTENT_TYPE, HeaderValue::from_static(OCI_INDEX)),
        (header::CONTENT_LENGTH, HeaderValue::from(r.body.len())),
    ];
    if r.filtered {
        headers.push((
            header::HeaderName::from_static("oci-filters-applied"),
            HeaderValue::from_static("artifactType"),
        ));
    }
    Reply {
        status: StatusCode::OK,
        headers,
        body: Body::Bytes(r.body),
        outcome,
    }
}
