//! Manifests: small, so fetched whole — one upstream fetch per key however many clients ask —
//! verified against their digest and stored before they are served. Tags are revalidated with a
//! HEAD (free on Docker Hub) once their TTL has passed, and served stale while the upstream
//! cannot be asked.

use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, StatusCode};

use super::{cache_header, Body, Mirror, Outcome, Reply};
use crate::cache::{Kind, TagEntry};
use crate::registry::media::{self, Accept};
use crate::registry::{Digest, ErrorCode, Reference, RegistryError, RepoName, Tag};
use crate::upstream::{header_str, read_limited};

/// A manifest with what a client needs to know about it.
#[derive(Clone, Debug)]
pub struct Manifest {
    pub digest: Digest,
    pub media_type: String,
    pub bytes: Bytes,
}

impl Manifest {
    fn from_bytes(digest: Digest, bytes: Bytes, fallback_type: Option<&str>) -> Manifest {
        let media_type = media::manifest_type(&bytes)
            .or_else(|| fallback_type.map(str::to_owned))
            .unwrap_or_else(|| media::BLOB.to_owned());
        Manifest {
            digest,
            media_type,
            bytes,
        }
    }
}

pub(super) type ManifestResult = Result<Manifest, RegistryError>;

impl Mirror {
    pub(super) async fn manifest(
        self: &Arc<Self>,
        name: &RepoName,
        reference: &Reference,
        accept: &Accept,
    ) -> Result<Reply, RegistryError> {
        let (m, outcome) = match reference {
            Reference::Digest(d) => self.manifest_by_digest(name, d).await?,
            Reference::Tag(t) => self.manifest_by_tag(name, t, accept).await?,
        };
        let mut headers = vec![
            (header::CONTENT_TYPE, m.media_type.clone()),
            (header::CONTENT_LENGTH, m.bytes.len().to_string()),
            (
                header::HeaderName::from_static("docker-content-digest"),
                m.digest.to_string(),
            ),
            (header::ETAG, format!("\"{}\"", m.digest)),
        ];
        headers.push(cache_header(outcome));
        Ok(Reply {
            status: StatusCode::OK,
            headers,
            body: Body::Bytes(m.bytes),
            outcome,
        })
    }

    /// A manifest by digest: memory, disk, or one upstream fetch verified against the digest.
    async fn manifest_by_digest(
        self: &Arc<Self>,
        name: &RepoName,
        digest: &Digest,
    ) -> Result<(Manifest, Outcome), RegistryError> {
        if let Some(m) = self.local_manifest(digest).await? {
            return Ok(m);
        }
        let key = format!("{}@{digest}", name);
        let (me, name2, d) = (self.clone(), name.clone(), *digest);
        self.fetch_once(key, async move {
            me.fetch_manifest(&name2, &d.to_string(), &Accept::default(), Some(d))
                .await
        })
        .await
    }

    /// Run `work` as the one upstream fetch for `key`, or share the one already in flight.
    async fn fetch_once(
        &self,
        key: String,
        work: impl std::future::Future<Output = ManifestResult> + Send + 'static,
    ) -> Result<(Manifest, Outcome), RegistryError> {
        let (result, joined) = self.manifest_fetches.run(key, || work).await;
        let m = result.unwrap_or_else(|| Err(RegistryError::internal("manifest fetch failed")))?;
        Ok((
            m,
            if joined {
                Outcome::Coalesced
            } else {
                Outcome::Miss
            },
        ))
    }

    /// A stored manifest, from memory or disk.
    async fn local_manifest(
        &self,
        digest: &Digest,
    ) -> Result<Option<(Manifest, Outcome)>, RegistryError> {
        if let Some(b) = self.memory.get(Kind::Manifest, digest) {
            return Ok(Some((
                Manifest::from_bytes(*digest, b, None),
                Outcome::HitMemory,
            )));
        }
        let path = self.store.path(Kind::Manifest, digest);
        let bytes = match tokio::fs::read(&path).await {
            Ok(b) => Bytes::from(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(RegistryError::internal(format!(
                    "cannot read cached manifest {digest}: {e}"
                )))
            }
        };
        self.memory.insert(Kind::Manifest, *digest, bytes.clone());
        Ok(Some((
            Manifest::from_bytes(*digest, bytes, None),
            Outcome::HitDisk,
        )))
    }

    /// A manifest by tag: from the tag index while fresh, revalidated with a HEAD after the TTL,
    /// served stale if the upstream cannot be asked, fetched when unknown or not acceptable.
    async fn manifest_by_tag(
        self: &Arc<Self>,
        name: &RepoName,
        tag: &Tag,
        accept: &Accept,
    ) -> Result<(Manifest, Outcome), RegistryError> {
        let registry = &self.upstream.registry;
        let entry = match self.tags.get_cached(registry, name, tag) {
            Some(e) => Some(e),
            None => {
                let (me, r, n, t) = (self.clone(), registry.clone(), name.clone(), tag.clone());
                tokio::task::spawn_blocking(move || me.tags.get(&r, &n, &t))
                    .await
                    .ok()
                    .flatten()
            }
        };
        let known = entry
            .filter(|e| accept.accepts(&e.media_type))
            .and_then(|e| e.digest().map(|d| (e, d)));
        if let Some((entry, digest)) = known {
            if entry.is_fresh(self.tag_ttl) {
                if let Some(found) = self.local_manifest(&digest).await? {
                    return Ok(found);
                }
            } else {
                match self.revalidate(name, tag, accept, &digest).await {
                    Ok(true) => {
                        let fresh = TagEntry::new(&digest, &entry.media_type);
                        self.put_tag(name, tag, fresh).await;
                        if let Some(found) = self.local_manifest(&digest).await? {
                            return Ok(found);
                        }
                    }
                    Ok(false) => {}
                    Err(e) if is_unavailable(&e) => {
                        if let Some((m, _)) = self.local_manifest(&digest).await? {
                            tracing::warn!(
                                "serving stale {name}:{tag} -> {digest}: upstream unavailable ({e})"
                            );
                            return Ok((m, Outcome::Stale));
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        let upstream_accept = accept.for_upstream();
        let key = format!("{}:{}#{}", name, tag, upstream_accept);
        let (me, name2, tag2, accept2) = (self.clone(), name.clone(), tag.clone(), accept.clone());
        self.fetch_once(key, async move {
            let m = me
                .fetch_manifest(&name2, tag2.as_str(), &accept2, None)
                .await?;
            me.put_tag(&name2, &tag2, TagEntry::new(&m.digest, &m.media_type))
                .await;
            Ok(m)
        })
        .await
    }

    /// Ask the upstream (HEAD) whether `tag` still points at `digest`.
    async fn revalidate(
        &self,
        name: &RepoName,
        tag: &Tag,
        accept: &Accept,
        digest: &Digest,
    ) -> Result<bool, RegistryError> {
        let resp = self
            .upstream
            .send(
                Method::HEAD,
                name,
                &format!("manifests/{tag}"),
                Some(&accept.for_upstream()),
                ErrorCode::ManifestUnknown,
            )
            .await?;
        let current =
            header_str(&resp, "docker-content-digest").and_then(|v| Digest::parse(v).ok());
        Ok(current.as_ref() == Some(digest))
    }

    async fn put_tag(&self, name: &RepoName, tag: &Tag, entry: TagEntry) {
        let registry = self.upstream.registry.clone();
        let result = {
            let (tags, n, t) = (&self.tags, name.clone(), tag.clone());
            // a few hundred bytes: the write is quick, but still not on a runtime thread
            tokio::task::block_in_place(|| tags.put(&registry, &n, &t, entry))
        };
        if let Err(e) = result {
            tracing::error!("cannot record tag {name}:{tag}: {e}");
        }
    }

    /// GET a manifest from upstream, check it, store it. `expected` is the digest asked for.
    async fn fetch_manifest(
        &self,
        name: &RepoName,
        reference: &str,
        accept: &Accept,
        expected: Option<Digest>,
    ) -> ManifestResult {
        let resp = self
            .upstream
            .send(
                Method::GET,
                name,
                &format!("manifests/{reference}"),
                Some(&accept.for_upstream()),
                ErrorCode::ManifestUnknown,
            )
            .await?;
        let announced = header_str(&resp, "docker-content-digest").map(str::to_owned);
        let content_type = header_str(&resp, header::CONTENT_TYPE).map(str::to_owned);
        let bytes = read_limited(resp, media::MAX_MANIFEST_BYTES).await?;
        let digest = Digest::of(&bytes);
        let mismatch = |claimed: &str| {
            RegistryError::bad_gateway(format!(
                "upstream manifest {name}:{reference} hashes to {digest}, not {claimed}; not cached"
            ))
        };
        if let Some(want) = expected {
            if want != digest {
                return Err(mismatch(&want.to_string()));
            }
        }
        if let Some(a) = announced.as_deref().filter(|a| a.starts_with("sha256:")) {
            if a != digest.to_string() {
                return Err(mismatch(a));
            }
        }
        let m = Manifest::from_bytes(digest, bytes, content_type.as_deref());
        let stored =
            tokio::task::block_in_place(|| self.store.write(Kind::Manifest, &m.digest, &m.bytes));
        if let Err(e) = stored {
            tracing::error!("cannot store manifest {}: {e}", m.digest);
        }
        self.memory
            .insert(Kind::Manifest, m.digest, m.bytes.clone());
        Ok(m)
    }
}

fn is_unavailable(e: &RegistryError) -> bool {
    e.code == ErrorCode::Unavailable || e.code == ErrorCode::TooManyRequests
}
