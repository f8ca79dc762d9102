//! The pull path: answer a parsed registry request from the cache, or fill the cache from the
//! upstream while answering.
//!
//! Manifests are small: they are fetched whole (one fetch per key however many clients ask),
//! verified against their digest and stored before they are served. Blobs can be huge: they are
//! streamed to every waiting client while one detached [`Fill`] writes and verifies them.
//! Tags are the only thing that can go stale; they are revalidated with a HEAD (which Docker Hub
//! does not count against rate limits) once their TTL has passed.

mod blobs;
mod manifests;

use std::fs::File;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, StatusCode};

use crate::cache::{BlobStore, FillReader, Fills, Flights, MemoryTier, TagIndex};
use crate::registry::media::Accept;
use crate::registry::{ErrorCode, RegistryError, RepoName, Route};
use crate::upstream::{header_str, read_limited, Upstream};

pub use manifests::Manifest;

/// How a request was answered, for the access log and the `X-Wharf-Cache` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    HitMemory,
    HitDisk,
    /// This request started the upstream fetch.
    Miss,
    /// This request shared an upstream fetch another request started.
    Coalesced,
    /// Served from the cache because the upstream could not confirm a tag.
    Stale,
    /// Passed through to the upstream, not cached (tag lists, blob HEADs).
    Upstream,
    /// Answered without the cache (the base endpoint, errors).
    Local,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::HitMemory => "hit-memory",
            Outcome::HitDisk => "hit-disk",
            Outcome::Miss => "miss",
            Outcome::Coalesced => "coalesced",
            Outcome::Stale => "stale",
            Outcome::Upstream => "upstream",
            Outcome::Local => "local",
        }
    }
}

/// Response headers, in order.
pub type Headers = Vec<(header::HeaderName, String)>;

/// What to send back.
pub struct Reply {
    pub status: StatusCode,
    pub headers: Headers,
    pub body: Body,
    pub outcome: Outcome,
}

pub enum Body {
    Empty,
    Bytes(Bytes),
    /// `len` bytes of a stored file from `offset`.
    File {
        file: Arc<File>,
        offset: u64,
        len: u64,
    },
    /// A blob still arriving from upstream.
    Fill(FillReader),
}

impl Reply {
    pub fn error(e: RegistryError) -> Reply {
        let body = Bytes::from(e.body());
        let mut headers = vec![
            (header::CONTENT_TYPE, "application/json".to_owned()),
            (header::CONTENT_LENGTH, body.len().to_string()),
        ];
        if let Some(r) = e.retry_after {
            headers.push((header::RETRY_AFTER, r));
        }
        Reply {
            status: e.status,
            headers,
            body: Body::Bytes(body),
            outcome: Outcome::Local,
        }
    }

    fn json(status: StatusCode, body: Bytes, outcome: Outcome) -> Reply {
        Reply {
            status,
            headers: vec![
                (header::CONTENT_TYPE, "application/json".to_owned()),
                (header::CONTENT_LENGTH, body.len().to_string()),
            ],
            body: Body::Bytes(body),
            outcome,
        }
    }
}

/// Everything the pull path needs, shared by all requests.
pub struct Mirror {
    pub store: BlobStore,
    pub memory: MemoryTier,
    pub tags: TagIndex,
    pub fills: Fills,
    manifest_fetches: Flights<String, manifests::ManifestResult>,
    pub upstream: Upstream,
    tag_ttl: Duration,
}

/// Bytes per chunk when streaming to clients: large chunks keep big blobs near disk speed.
pub const CHUNK: usize = 1 << 20;

impl Mirror {
    pub fn new(
        store: BlobStore,
        memory: MemoryTier,
        tags: TagIndex,
        upstream: Upstream,
        tag_ttl: Duration,
    ) -> Mirror {
        Mirror {
            store,
            memory,
            tags,
            fills: Fills::default(),
            manifest_fetches: Flights::default(),
            upstream,
            tag_ttl,
        }
    }

    /// Answer one pull request. Never fails: errors become OCI error replies.
    pub async fn handle(
        self: &Arc<Self>,
        route: Route,
        head: bool,
        accept: &Accept,
        range: Option<&str>,
    ) -> Reply {
        let result = match route {
            Route::Base => Ok(Reply::json(
                StatusCode::OK,
                Bytes::from_static(b"{}"),
                Outcome::Local,
            )),
            Route::Manifest { name, reference } => {
                self.manifest(&self.upstream_name(name), &reference, accept)
                    .await
            }
            Route::Blob { name, digest } => {
                self.blob(&self.upstream_name(name), digest, head, range)
                    .await
            }
            Route::TagsList { name, query } => {
                self.tags_list(&self.upstream_name(name), &query).await
            }
        };
        result.unwrap_or_else(Reply::error)
    }

    /// Docker Hub's official images live under `library/`.
    fn upstream_name(&self, name: RepoName) -> RepoName {
        if self.upstream.registry == "docker.io" {
            name.with_library_prefix()
        } else {
            name
        }
    }

    // ---------------------------------------------------------------- tag lists

    async fn tags_list(&self, name: &RepoName, query: &str) -> Result<Reply, RegistryError> {
        let rest = if query.is_empty() {
            "tags/list".to_owned()
        } else {
            format!("tags/list?{query}")
        };
        let resp = self
            .upstream
            .send(Method::GET, name, &rest, None, ErrorCode::NameUnknown)
            .await?;
        let link = header_str(&resp, header::LINK).map(str::to_owned);
        let body = read_limited(resp, 16 << 20).await?;
        let mut reply = Reply::json(StatusCode::OK, body, Outcome::Upstream);
        if let Some(l) = link {
            reply.headers.push((header::LINK, l));
        }
        Ok(reply)
    }
}

fn cache_header(outcome: Outcome) -> (header::HeaderName, String) {
    (
        header::HeaderName::from_static("x-wharf-cache"),
        outcome.as_str().to_owned(),
    )
}
