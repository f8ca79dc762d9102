//! The pull path: answer a parsed registry request from the cache, or fill the cache from the
//! upstream while answering.
//!
//! Manifests are small: they are fetched whole (one fetch per key however many clients ask),
//! verified against their digest and stored before they are served. Blobs can be huge: they are
//! streamed to every waiting client while one detached [`Fill`] writes and verifies them.
//! Tags are the only thing that can go stale; they are revalidated with a HEAD (which Docker Hub
//! does not count against rate limits) once their TTL has passed.

use std::fs::File;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use http::{header, Method, StatusCode};
use tokio::sync::mpsc;

use crate::cache::fill::read_at;
use crate::cache::{
    BlobStore, Fill, FillReader, Fills, Flights, Joined, Kind, MemoryTier, TagEntry, TagIndex,
};
use crate::registry::media::{self, Accept};
use crate::registry::{Digest, ErrorCode, Reference, RegistryError, RepoName, Route, Tag};
use crate::upstream::{read_limited, transport_error, Upstream};

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

type ManifestResult = Result<Manifest, RegistryError>;

/// Everything the pull path needs, shared by all requests.
pub struct Mirror {
    pub store: BlobStore,
    pub memory: MemoryTier,
    pub tags: TagIndex,
    pub fills: Fills,
    manifest_fetches: Flights<String, ManifestResult>,
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

    // ---------------------------------------------------------------- manifests

    async fn manifest(
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
        let (result, joined) = self
            .manifest_fetches
            .run(key, move || async move {
                me.fetch_manifest(&name2, &d.to_string(), &Accept::default(), Some(d))
                    .await
            })
            .await;
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
        let (result, joined) = self
            .manifest_fetches
            .run(key, move || async move {
                let m = me
                    .fetch_manifest(&name2, tag2.as_str(), &accept2, None)
                    .await?;
                me.put_tag(&name2, &tag2, TagEntry::new(&m.digest, &m.media_type))
                    .await;
                Ok(m)
            })
            .await;
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
        let current = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| Digest::parse(v).ok());
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
        let announced = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let content_type = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
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

    // ---------------------------------------------------------------- blobs

    async fn blob(
        self: &Arc<Self>,
        name: &RepoName,
        digest: Digest,
        head: bool,
        range: Option<&str>,
    ) -> Result<Reply, RegistryError> {
        if let Some(reply) = self.local_blob(&digest, head, range).await? {
            return Ok(reply);
        }
        if head {
            return self.blob_head_upstream(name, &digest).await;
        }
        let joined = self
            .fills
            .join_or_start(&self.store, &digest)
            .map_err(|e| RegistryError::internal(format!("cannot start a cache file: {e}")))?;
        let (fill, outcome) = match joined {
            Joined::Stored => {
                return self
                    .local_blob(&digest, head, range)
                    .await?
                    .ok_or_else(|| RegistryError::internal("blob vanished from the cache"))
            }
            Joined::Existing(f) => (f, Outcome::Coalesced),
            Joined::New(f) => {
                self.spawn_fill(name.clone(), f.clone());
                (f, Outcome::Miss)
            }
        };
        if let Some(range) = range {
            // Ranges are served from complete, verified content only.
            let len = fill.finished().await?;
            return Ok(file_reply(&digest, fill.file(), len, Some(range), outcome));
        }
        let total = fill.ready().await?;
        let mut headers = blob_headers(&digest);
        if let Some(t) = total {
            headers.push((header::CONTENT_LENGTH, t.to_string()));
        }
        headers.push(cache_header(outcome));
        Ok(Reply {
            status: StatusCode::OK,
            headers,
            body: Body::Fill(fill.reader()),
            outcome,
        })
    }

    /// A stored blob, from memory or disk; `None` if it is not stored.
    async fn local_blob(
        &self,
        digest: &Digest,
        head: bool,
        range: Option<&str>,
    ) -> Result<Option<Reply>, RegistryError> {
        if let Some(b) = self.memory.get(Kind::Blob, digest) {
            return Ok(Some(bytes_reply(digest, b, range, Outcome::HitMemory)));
        }
        let (store_path, admits) = (self.store.path(Kind::Blob, digest), &self.memory);
        let opened = tokio::task::spawn_blocking(move || -> std::io::Result<_> {
            let file = match File::open(&store_path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e),
            };
            let len = file.metadata()?.len();
            Ok(Some((file, len)))
        })
        .await
        .map_err(|e| RegistryError::internal(format!("cache task failed: {e}")))?
        .map_err(|e| RegistryError::internal(format!("cannot open cached blob {digest}: {e}")))?;
        let Some((file, len)) = opened else {
            return Ok(None);
        };
        let file = Arc::new(file);
        if !head && admits.admits(len) {
            let bytes = read_at(file, 0, len as usize).await?;
            self.memory.insert(Kind::Blob, *digest, bytes.clone());
            return Ok(Some(bytes_reply(digest, bytes, range, Outcome::HitDisk)));
        }
        Ok(Some(file_reply(digest, file, len, range, Outcome::HitDisk)))
    }

    /// HEAD for a blob wharf does not have: ask the upstream, fetch nothing.
    async fn blob_head_upstream(
        &self,
        name: &RepoName,
        digest: &Digest,
    ) -> Result<Reply, RegistryError> {
        let len = match self.fills.get(digest) {
            Some(fill) => fill.ready().await?,
            None => self
                .upstream
                .send(
                    Method::HEAD,
                    name,
                    &format!("blobs/{digest}"),
                    None,
                    ErrorCode::BlobUnknown,
                )
                .await?
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok()),
        };
        let mut headers = blob_headers(digest);
        if let Some(n) = len {
            headers.push((header::CONTENT_LENGTH, n.to_string()));
        }
        headers.push(cache_header(Outcome::Upstream));
        Ok(Reply {
            status: StatusCode::OK,
            headers,
            body: Body::Empty,
            outcome: Outcome::Upstream,
        })
    }

    /// Run a fill to its end on its own task: it belongs to no client.
    fn spawn_fill(self: &Arc<Self>, name: RepoName, fill: Arc<Fill>) {
        let me = self.clone();
        tokio::spawn(async move {
            let digest = fill.digest;
            let result = AssertUnwindSafe(me.run_fill(&name, &fill))
                .catch_unwind()
                .await
                .unwrap_or_else(|_| Err(RegistryError::internal("blob fill panicked")));
            if let Err(e) = result {
                tracing::warn!("fill of {name}@{digest} failed: {e}");
                tokio::task::block_in_place(|| fill.fail(e));
            }
            me.fills.remove(&digest);
        });
    }

    async fn run_fill(&self, name: &RepoName, fill: &Arc<Fill>) -> Result<(), RegistryError> {
        let digest = fill.digest;
        let resp = self
            .upstream
            .send(
                Method::GET,
                name,
                &format!("blobs/{digest}"),
                None,
                ErrorCode::BlobUnknown,
            )
            .await?;
        let total = resp.content_length();
        fill.start(total);
        // Network reads here, disk writes and hashing on a blocking thread: the two overlap,
        // and the bounded channel keeps the memory a fill holds to a few chunks.
        let (tx, rx) = mpsc::channel::<Bytes>(16);
        let writer = {
            let f = fill.clone();
            tokio::task::spawn_blocking(move || f.write_chunks(rx))
        };
        let mut body = resp.bytes_stream();
        let mut broke = None;
        while let Some(chunk) = body.next().await {
            match chunk {
                Ok(b) => {
                    if tx.send(b).await.is_err() {
                        break; // the writer failed; its error says why
                    }
                }
                Err(e) => {
                    broke = Some(transport_error(&e));
                    break;
                }
            }
        }
        drop(tx);
        let (got, len) = writer
            .await
            .map_err(|e| RegistryError::internal(format!("cache writer failed: {e}")))?
            .map_err(|e| {
                RegistryError::internal(format!("cannot write blob {digest} to the cache: {e}"))
            })?;
        if let Some(e) = broke {
            return Err(RegistryError::bad_gateway(format!(
                "upstream broke off blob {digest} after {len} bytes: {}",
                e.message
            )));
        }
        if let Some(t) = total.filter(|&t| t != len) {
            return Err(RegistryError::bad_gateway(format!(
                "upstream sent {len} of {t} bytes of blob {digest}"
            )));
        }
        if got != digest {
            return Err(RegistryError::bad_gateway(format!(
                "upstream bytes for blob {digest} hash to {got}; not cached"
            )));
        }
        fill.verified();
        if let Err(e) = tokio::task::block_in_place(|| fill.commit(&self.store)) {
            tracing::error!("cannot commit blob {digest} to the cache: {e}");
        }
        Ok(())
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
        let link = resp
            .headers()
            .get(header::LINK)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = read_limited(resp, 16 << 20).await?;
        let mut reply = Reply::json(StatusCode::OK, body, Outcome::Upstream);
        if let Some(l) = link {
            reply.headers.push((header::LINK, l));
        }
        Ok(reply)
    }
}

fn is_unavailable(e: &RegistryError) -> bool {
    e.code == ErrorCode::Unavailable || e.code == ErrorCode::TooManyRequests
}

fn cache_header(outcome: Outcome) -> (header::HeaderName, String) {
    (
        header::HeaderName::from_static("x-wharf-cache"),
        outcome.as_str().to_owned(),
    )
}

fn blob_headers(digest: &Digest) -> Headers {
    vec![
        (header::CONTENT_TYPE, media::BLOB.to_owned()),
        (
            header::HeaderName::from_static("docker-content-digest"),
            digest.to_string(),
        ),
        (header::ETAG, format!("\"{digest}\"")),
        (header::ACCEPT_RANGES, "bytes".to_owned()),
    ]
}

/// A byte range request against a blob of `len` bytes.
#[derive(Debug, PartialEq, Eq)]
enum RangeAnswer {
    /// No usable range: send everything (multi-range requests are answered this way too).
    Full,
    /// Inclusive `start..=end`.
    Part(u64, u64),
    /// 416.
    Unsatisfiable,
}

fn parse_range(header: Option<&str>, len: u64) -> RangeAnswer {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return RangeAnswer::Full;
    };
    if spec.contains(',') {
        return RangeAnswer::Full;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeAnswer::Full;
    };
    let (a, b) = (a.trim(), b.trim());
    let parse = |s: &str| s.parse::<u64>().ok();
    match (a.is_empty(), b.is_empty()) {
        (true, false) => match parse(b) {
            Some(0) => RangeAnswer::Unsatisfiable,
            Some(n) if len > 0 => RangeAnswer::Part(len.saturating_sub(n), len - 1),
            Some(_) => RangeAnswer::Unsatisfiable,
            None => RangeAnswer::Full,
        },
        (false, _) => {
            let Some(start) = parse(a) else {
                return RangeAnswer::Full;
            };
            let end = if b.is_empty() {
                Some(u64::MAX)
            } else {
                parse(b)
            };
            match end {
                None => RangeAnswer::Full,
                Some(end) if end < start => RangeAnswer::Full,
                Some(_) if start >= len => RangeAnswer::Unsatisfiable,
                Some(end) => RangeAnswer::Part(start, end.min(len - 1)),
            }
        }
        (true, true) => RangeAnswer::Full,
    }
}

/// Status, extra headers and the `(offset, len)` to send for a possibly ranged blob reply.
fn ranged(
    digest: &Digest,
    len: u64,
    range: Option<&str>,
    outcome: Outcome,
) -> Result<(StatusCode, Headers, u64, u64), Reply> {
    let mut headers = blob_headers(digest);
    headers.push(cache_header(outcome));
    match parse_range(range, len) {
        RangeAnswer::Full => {
            headers.push((header::CONTENT_LENGTH, len.to_string()));
            Ok((StatusCode::OK, headers, 0, len))
        }
        RangeAnswer::Part(s, e) => {
            headers.push((header::CONTENT_LENGTH, (e - s + 1).to_string()));
            headers.push((header::CONTENT_RANGE, format!("bytes {s}-{e}/{len}")));
            Ok((StatusCode::PARTIAL_CONTENT, headers, s, e - s + 1))
        }
        RangeAnswer::Unsatisfiable => {
            let mut r = Reply::error(RegistryError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                ErrorCode::RangeInvalid,
                format!(
                    "range {} is outside the blob's {len} bytes",
                    range.unwrap_or("")
                ),
            ));
            r.headers
                .push((header::CONTENT_RANGE, format!("bytes */{len}")));
            Err(r)
        }
    }
}

fn bytes_reply(digest: &Digest, bytes: Bytes, range: Option<&str>, outcome: Outcome) -> Reply {
    match ranged(digest, bytes.len() as u64, range, outcome) {
        Ok((status, headers, off, n)) => Reply {
            status,
            headers,
            body: Body::Bytes(bytes.slice(off as usize..(off + n) as usize)),
            outcome,
        },
        Err(r) => r,
    }
}

fn file_reply(
    digest: &Digest,
    file: Arc<File>,
    len: u64,
    range: Option<&str>,
    outcome: Outcome,
) -> Reply {
    match ranged(digest, len, range, outcome) {
        Ok((status, headers, offset, n)) => Reply {
            status,
            headers,
            body: Body::File {
                file,
                offset,
                len: n,
            },
            outcome,
        },
        Err(r) => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        use RangeAnswer::*;
        assert_eq!(parse_range(None, 10), Full);
        assert_eq!(parse_range(Some("bytes=0-4"), 10), Part(0, 4));
        assert_eq!(parse_range(Some("bytes=5-"), 10), Part(5, 9));
        assert_eq!(parse_range(Some("bytes=5-100"), 10), Part(5, 9));
        assert_eq!(parse_range(Some("bytes=-3"), 10), Part(7, 9));
        assert_eq!(parse_range(Some("bytes=-30"), 10), Part(0, 9));
        assert_eq!(parse_range(Some("bytes=10-"), 10), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=-0"), 10), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=0-1,3-4"), 10), Full);
        assert_eq!(parse_range(Some("items=0-1"), 10), Full);
        assert_eq!(parse_range(Some("bytes=4-2"), 10), Full);
        assert_eq!(parse_range(Some("bytes=0-0"), 0), Unsatisfiable);
    }
}
