//! The pull path: answer a parsed registry request from the cache, or fill the cache from the
//! upstream while answering.
//!
//! Manifests are small: they are fetched whole (one fetch per key however many clients ask),
//! verified against their digest and stored before they are served. Blobs can be huge: they are
//! streamed to every waiting client while one detached [`Fill`] writes and verifies them.
//! Tags are the only thing that can go stale; they are revalidated with a HEAD (which Docker Hub
//! does not count against rate limits) once their TTL has passed.
//!
//! The upstream is reached only through [`Upstream`] and the typed [`crate::upstream::Remote`]
//! behind it (no URLs, no HTTP responses here); the cache only through `crate::cache`'s stores.
//! What went wrong is a [`RegistryError`] with a cause; the policy looks at causes (may a stale
//! copy stand in?), never at status codes.

mod blobs;
pub mod freshness;
mod holding;
mod manifests;
mod referrers;
#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, StatusCode};

use crate::cache::{Cache, FillReader, MemoryTier, Object};
use crate::cluster::ClusterRemote;
use crate::config::Config;
use crate::registry::hub;
use crate::registry::media::Accept;
use crate::registry::{Digest, Reference, RegistryError, RepoName, Route};
use crate::upstream::Upstream;

pub use freshness::Freshness;
pub use manifests::Manifest;

/// How a request was answered, for the access log and the `X-Wharf-Cache` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    HitMemory,
    HitDisk,
    /// From the shared store (the bucket behind this instance's disk), which the disk now
    /// fills from.
    HitShared,
    /// This request started the upstream fetch.
    Miss,
    /// This request shared an upstream fetch another request started.
    Coalesced,
    /// Sent to a presigned URL of the shared store (`[store] presigned_for`).
    Presigned,
    /// Served from the cache because the upstream could not confirm a tag.
    Stale,
    /// Passed through to the upstream, not cached (tag lists, blob HEADs).
    Upstream,
    /// Answered without the cache (the base endpoint, errors).
    Local,
}

impl Outcome {
    pub const ALL: [Outcome; 9] = [
        Outcome::HitMemory,
        Outcome::HitDisk,
        Outcome::HitShared,
        Outcome::Presigned,
        Outcome::Miss,
        Outcome::Coalesced,
        Outcome::Stale,
        Outcome::Upstream,
        Outcome::Local,
    ];

    /// Answered from the cache, without the upstream.
    pub fn is_hit(self) -> bool {
        matches!(
            self,
            Outcome::HitMemory
                | Outcome::HitDisk
                | Outcome::HitShared
                | Outcome::Presigned
                | Outcome::Stale
        )
    }

    /// Answered by fetching into the cache.
    pub fn is_miss(self) -> bool {
        matches!(self, Outcome::Miss | Outcome::Coalesced)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::HitMemory => "hit-memory",
            Outcome::HitDisk => "hit-disk",
            Outcome::HitShared => "hit-shared",
            Outcome::Presigned => "presigned",
            Outcome::Miss => "miss",
            Outcome::Coalesced => "coalesced",
            Outcome::Stale => "stale",
            Outcome::Upstream => "upstream",
            Outcome::Local => "local",
        }
    }
}

/// Response headers, in order.
pub type Headers = Vec<(header::HeaderName, HeaderValue)>;

/// A header value from text an upstream wrote (a media type, a link, a retry delay): a value
/// a header cannot carry is sent empty.
fn text_value<T>(s: T) -> HeaderValue
where
    HeaderValue: TryFrom<T>,
{
    HeaderValue::try_from(s).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// `Docker-Content-Digest` and `ETag` (the same text, quoted) for an object.
fn digest_headers(digest: &Digest) -> [(header::HeaderName, HeaderValue); 2] {
    let value = digest.header_value();
    let mut etag = [b'"'; 73];
    etag[1..72].copy_from_slice(value.as_bytes());
    let etag = HeaderValue::from_bytes(&etag).expect("a quoted digest is a header value");
    [(DOCKER_CONTENT_DIGEST, value), (header::ETAG, etag)]
}

const DOCKER_CONTENT_DIGEST: header::HeaderName =
    header::HeaderName::from_static("docker-content-digest");

const JSON: HeaderValue = HeaderValue::from_static("application/json");

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
    /// `len` bytes of a stored object from `offset`.
    Stored {
        object: Object,
        offset: u64,
        len: u64,
    },
    /// A blob still arriving from upstream.
    Fill(FillReader),
}

impl Reply {
    pub fn error(e: RegistryError) -> Reply {
        let status = e.status();
        let body = Bytes::from(e.body());
        let mut headers = vec![
            (header::CONTENT_TYPE, JSON),
            (header::CONTENT_LENGTH, HeaderValue::from(body.len())),
        ];
        if let Some(r) = e.retry_after {
            headers.push((header::RETRY_AFTER, text_value(r)));
        }
        if let Some(c) = e.challenge {
            headers.push((header::WWW_AUTHENTICATE, text_value(c)));
        }
        Reply {
            status,
            headers,
            body: Body::Bytes(body),
            outcome: Outcome::Local,
        }
    }

    /// A short plain-text answer of wharf's own.
    pub fn text(status: StatusCode, body: String) -> Reply {
        let body = Bytes::from(body);
        Reply {
            status,
            headers: vec![
                (header::CONTENT_TYPE, HeaderValue::from_static("text/plain")),
                (header::CONTENT_LENGTH, HeaderValue::from(body.len())),
            ],
            body: Body::Bytes(body),
            outcome: Outcome::Local,
        }
    }

    fn json(status: StatusCode, body: Bytes, outcome: Outcome) -> Reply {
        Reply {
            status,
            headers: vec![
                (header::CONTENT_TYPE, JSON),
                (header::CONTENT_LENGTH, HeaderValue::from(body.len())),
            ],
            body: Body::Bytes(body),
            outcome,
        }
    }
}

/// Everything the pull path needs, shared by all requests.
pub struct Mirror {
    /// The data directory: content, quota, tags, links.
    pub cache: Cache,
    pub memory: MemoryTier,
    /// Upstreams by the registry host they stand for, as clients are answered: in a cluster,
    /// through the owner of what is asked.
    upstreams: HashMap<String, Arc<Upstream>>,
    /// The same registries reached directly, as the members of a cluster are answered.
    direct: HashMap<String, Arc<Upstream>>,
    /// The cluster, if this instance is in one.
    pub members: Option<Arc<crate::cluster::Members>>,
    freshness: Freshness,
    /// What the policy for blobs keeps: fills in flight, their threads, sizes, bounds.
    blobs: blobs::BlobState,
    /// What the policy for manifests keeps: fetches and revalidations in flight, missing tags.
    manifests: manifests::ManifestState,
    /// Referrers answers, kept for their TTL and for stale use.
    referrers: referrers::ReferrersCache,
    /// What the upstream recently said a repository does not hold.
    holding: holding::Unheld,
}

/// What bounds the downloads from upstreams.
#[derive(Clone, Copy, Debug)]
pub struct BlobLimits {
    pub max_blob_size: u64,
    pub min_free_space: u64,
    pub max_fills: usize,
    pub max_orphan_fills: usize,
    pub fill_threads: usize,
    pub max_manifest_fetches: usize,
}

impl BlobLimits {
    pub fn from_config(c: &Config) -> BlobLimits {
        BlobLimits {
            max_blob_size: c.max_blob_size,
            min_free_space: c.min_free_space,
            max_fills: c.max_fills,
            max_orphan_fills: c.max_orphan_fills,
            fill_threads: c.fill_threads,
            max_manifest_fetches: c.max_manifest_fetches,
        }
    }
}

/// Bytes per chunk when streaming to clients: large chunks mean fewer trips through the event
/// loop, but a chunk that no longer fits in a core's L2 cache is copied at memory speed (here:
/// 1 MiB chunks served a warm blob at ~3.3 GB/s, 512 KiB at ~5.5 GB/s, 128 KiB at ~4.7 GB/s).
/// Every transfer holds one, so they shrink when many run at once: together they stay within
/// [`TRANSFER_BUDGET`] (never below 128 KiB).
pub fn chunk_size(transfers: usize) -> usize {
    (TRANSFER_BUDGET / transfers.max(1)).clamp(128 << 10, 512 << 10)
}

#[cfg(test)]
#[test]
fn chunks_shrink_with_concurrency() {
    assert_eq!(chunk_size(0), 512 << 10);
    assert_eq!(chunk_size(32), 512 << 10);
    assert_eq!(chunk_size(64), 256 << 10);
    assert_eq!(chunk_size(10_000), 128 << 10);
}

/// The members of the cluster `c` describes. A member asked waits for its answer as long as
/// the slowest upstream may take to give it, and a little more.
fn cluster_members(
    c: &crate::config::ClusterConfig,
    upstreams: &[crate::upstream::UpstreamSettings],
) -> Result<crate::cluster::Members, String> {
    let slowest = |f: fn(&crate::upstream::UpstreamSettings) -> Duration| {
        upstreams.iter().map(f).max().unwrap_or_default() + Duration::from_secs(5)
    };
    let secret = c.secret()?;
    let peers = crate::upstream::PeerClients::new(
        &secret,
        c.tls.as_ref(),
        c.peer_connect_timeout,
        slowest(|u| u.read_timeout),
        slowest(|u| u.request_timeout),
    )?;
    Ok(crate::cluster::Members::new(
        c.roster()?,
        peers,
        secret,
        c.health_interval,
    ))
}

/// Memory that chunks in flight may take together.
pub const TRANSFER_BUDGET: usize = 16 << 20;

impl Mirror {
    /// Open the data directory and build the upstream clients `config` describes.
    pub fn open(config: &Config) -> Result<Mirror, String> {
        let upstreams = config
            .upstream_settings()?
            .into_iter()
            .map(|s| {
                let host = s.registry.clone();
                let up = Upstream::new(s).map_err(|e| format!("upstream {host}: {e}"))?;
                Ok((host, Arc::new(up)))
            })
            .collect::<Result<HashMap<_, _>, String>>()?;
        let mut mirror = Mirror::open_with(config, upstreams)?;
        if let Some(c) = &config.cluster {
            let members = Arc::new(cluster_members(c, &config.upstream_settings()?)?);
            mirror.upstreams = mirror
                .direct
                .iter()
                .map(|(host, up)| {
                    let remote = ClusterRemote::new(host, members.clone(), up.remote());
                    let routed = Upstream::with_remote(
                        host.clone(),
                        up.tag_ttl,
                        up.offline,
                        Arc::new(remote),
                    );
                    (host.clone(), Arc::new(routed))
                })
                .collect();
            mirror.members = Some(members);
        }
        Ok(mirror)
    }

    /// The upstream a cluster member's request for `up`'s registry is answered through: the
    /// registry itself (a member asked as the owner never asks another).
    pub fn direct(&self, up: &Arc<Upstream>) -> Arc<Upstream> {
        self.direct
            .get(&up.registry)
            .cloned()
            .unwrap_or_else(|| up.clone())
    }

    /// Open the data directory for `upstreams`, by the registry hosts they stand for.
    pub fn open_with(
        config: &Config,
        upstreams: HashMap<String, Arc<Upstream>>,
    ) -> Result<Mirror, String> {
        let cache = Cache::open(&config.data_dir(), config.max_size, config.store.as_ref())?;
        let freshness = Freshness::new(
            config.tag_ttl,
            config.negative_ttl,
            config.tag_ttl_rules.clone(),
        );
        let limits = BlobLimits::from_config(config);
        // what an upstream says it lacks is believed for negative_ttl
        let negative = freshness.negative.max(Duration::from_millis(1));
        Ok(Mirror {
            cache,
            memory: MemoryTier::new(config.memory_bytes, config.memory_object_max),
            direct: upstreams.clone(),
            members: None,
            upstreams,
            freshness,
            blobs: blobs::BlobState::new(
                limits,
                config
                    .store
                    .as_ref()
                    .map(|s| s.presigned_for())
                    .transpose()?
                    .flatten(),
            )?,
            manifests: manifests::ManifestState::new(limits.max_manifest_fetches, negative),
            referrers: referrers::cache(),
            holding: holding::Unheld::new(negative),
        })
    }

    /// Run blocking filesystem work on the blocking pool, off the runtime's threads (which may
    /// each be a single-threaded event loop).
    pub(crate) async fn blocking<T: Send + 'static>(
        self: &Arc<Self>,
        work: impl FnOnce(&Mirror) -> T + Send + 'static,
    ) -> T {
        let me = self.clone();
        match tokio::task::spawn_blocking(move || work(&me)).await {
            Ok(v) => v,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }

    /// Free space the data directory keeps (fills that would take it are refused).
    pub fn min_free_space(&self) -> u64 {
        self.blobs.limits.min_free_space
    }

    /// The registries mirrored, sorted.
    pub fn registries(&self) -> Vec<String> {
        let mut r: Vec<String> = self.upstreams.keys().cloned().collect();
        r.sort();
        r
    }

    /// The upstream for a registry host, if configured.
    pub fn upstream(&self, registry: &str) -> Option<Arc<Upstream>> {
        self.upstreams.get(registry).cloned()
    }

    /// Pick the upstream a request is for: containerd's `?ns=<host>`; else a first path
    /// component naming a configured upstream (`/v2/ghcr.io/…`, what podman and CRI-O send for a
    /// mirror location with a path), which is removed; else Docker Hub (what dockerd sends).
    /// A host that is not configured is refused: nothing is ever fetched from a host a client
    /// names unless the operator configured it.
    pub fn upstream_for<'p>(
        &self,
        ns: Option<&str>,
        path: &'p str,
    ) -> Result<(Arc<Upstream>, Cow<'p, str>), RegistryError> {
        let prefixed = path.strip_prefix("/v2/").and_then(|rest| {
            let (first, more) = rest.split_once('/')?;
            let up = self.upstreams.get(first)?;
            Some((up, Cow::Owned(format!("/v2/{more}"))))
        });
        if let Some(ns) = ns {
            let host = hub::canonical_host(ns);
            let up = self.upstreams.get(host).ok_or_else(|| {
                RegistryError::denied(format!("registry {ns:?} is not mirrored here"))
            })?;
            let path = match prefixed {
                Some((p, stripped)) if p.registry == up.registry => stripped,
                _ => Cow::Borrowed(path),
            };
            return Ok((up.clone(), path));
        }
        if let Some((up, stripped)) = prefixed {
            return Ok((up.clone(), stripped));
        }
        let hub = self
            .upstreams
            .get(hub::DOCKER_HUB)
            .expect("docker.io is always configured");
        Ok((hub.clone(), Cow::Borrowed(path)))
    }

    /// Answer one pull request for upstream `up`. Never fails: errors become OCI error replies.
    ///
    /// Objects in the memory tier are the hot path of a warm mirror: they are answered right
    /// away. Everything else is one boxed future (every wait of the whole pull path, ~11 KB),
    /// allocated only then.
    pub async fn handle(
        self: &Arc<Self>,
        up: &Arc<Upstream>,
        route: Route,
        head: bool,
        accept: &Accept,
        range: Option<&str>,
    ) -> Reply {
        if let Some(reply) = self.memory_hit(up, &route, accept, range) {
            return reply;
        }
        Box::pin(async move {
            let result = match route {
                Route::Base => Ok(Reply::json(
                    StatusCode::OK,
                    Bytes::from_static(b"{}"),
                    Outcome::Local,
                )),
                Route::Manifest { name, reference } => {
                    self.manifest(up, &upstream_name(up, name), &reference, accept)
                        .await
                }
                Route::Blob { name, digest } => {
                    self.blob(up, &upstream_name(up, name), digest, head, range)
                        .await
                }
                Route::TagsList { name, query } => {
                    self.tags_list(up, &upstream_name(up, name), &query).await
                }
                Route::Referrers {
                    name,
                    digest,
                    artifact_type,
                } => {
                    self.referrers(up, &upstream_name(up, name), &digest, artifact_type)
                        .await
                }
            };
            result.unwrap_or_else(Reply::error)
        })
        .await
    }

    /// The reply for an object held in the memory tier: a blob or manifest by digest, or a
    /// manifest by a tag whose mapping is fresh.
    fn memory_hit(
        &self,
        up: &Upstream,
        route: &Route,
        accept: &Accept,
        range: Option<&str>,
    ) -> Option<Reply> {
        let manifest = match route {
            // by digest: only what this repository is known to hold
            Route::Blob { name, digest } => {
                if !self.holds_cached(up, &upstream_name_ref(up, name), digest) {
                    return None;
                }
                return self.memory_blob(digest, range);
            }
            Route::Manifest {
                name,
                reference: Reference::Digest(digest),
            } => {
                if !self.holds_cached(up, &upstream_name_ref(up, name), digest) {
                    return None;
                }
                self.memory_manifest(digest)
            }
            Route::Manifest {
                name,
                reference: Reference::Tag(tag),
            } => self.memory_tag(up, &upstream_name_ref(up, name), tag, accept),
            _ => None,
        };
        manifest.map(|m| manifests::manifest_reply(m, Outcome::HitMemory))
    }

    // ---------------------------------------------------------------- tag lists

    /// The upstream's tag list; the tags wharf knows when the upstream cannot be asked.
    async fn tags_list(
        self: &Arc<Self>,
        up: &Upstream,
        name: &RepoName,
        query: &str,
    ) -> Result<Reply, RegistryError> {
        let listing = match up.tags(name, query).await {
            Ok(l) => l,
            Err(e) if up.offline || is_unavailable(&e) => {
                let (registry, repo) = (up.registry.clone(), name.clone());
                let tags = self
                    .blocking(move |m| m.cache.tags.list(&registry, &repo))
                    .await;
                if tags.is_empty() {
                    return Err(e);
                }
                return Ok(local_tags_list(name, tags, query));
            }
            Err(e) => return Err(e),
        };
        let mut reply = Reply::json(StatusCode::OK, listing.body, Outcome::Upstream);
        if let Some(l) = listing.link {
            reply.headers.push((header::LINK, text_value(l)));
        }
        Ok(reply)
    }
}

/// The repository a client's name stands for at `up` (see [`hub::repository`]).
fn upstream_name(up: &Upstream, name: RepoName) -> RepoName {
    hub::repository(&up.registry, &name).into_owned()
}

fn upstream_name_ref<'n>(up: &Upstream, name: &'n RepoName) -> Cow<'n, RepoName> {
    hub::repository(&up.registry, name)
}

/// The upstream could not answer (down, failing, or rate limiting): cached data may stand in.
fn is_unavailable(e: &RegistryError) -> bool {
    e.cause.upstream_unavailable()
}

/// A tag list from the tag index, paginated by `n` and `last` as the spec says.
fn local_tags_list(name: &RepoName, mut tags: Vec<String>, query: &str) -> Reply {
    let mut n = None;
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        match &*k {
            "last" => tags.retain(|t| t.as_str() > &*v),
            "n" => n = v.parse::<usize>().ok(),
            _ => {}
        }
    }
    if let Some(n) = n {
        tags.truncate(n);
    }
    let body = serde_json::json!({ "name": name.as_str(), "tags": tags }).to_string();
    Reply::json(StatusCode::OK, Bytes::from(body), Outcome::Stale)
}
