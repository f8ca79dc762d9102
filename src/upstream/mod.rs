//! The upstream: what wharf asks of the registry it mirrors when the cache cannot answer.
//!
//! [`Remote`] is the seam: what a registry offers a mirror (a manifest by tag or digest, HEADs,
//! a blob as a stream with its length, a tag list, referrers), asked in registry terms and
//! answered with typed values. [`RegistryClient`] is the one over HTTP (URLs, `reqwest`, auth,
//! redirects, retries: [`http`]); nothing outside this module sees a URL or a raw response. A
//! cluster peer is the same client pointed at a member's internal listener ([`PeerClients`]),
//! and `cluster::ClusterRemote` the remote that picks between them. [`Upstream`] is what the
//! pull policy holds for one mirrored registry: its name and settings, a remote, and a memory
//! of its recent failures.

pub mod auth;
pub mod credentials;
pub mod egress;
#[cfg(test)]
pub mod fake;
pub mod http;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::BoxStream;

pub use auth::{Auth, Challenge};
pub use credentials::{CredentialSource, Credentials};
pub use http::{PeerClients, RegistryClient, PEER_PING, PEER_SECRET};

use crate::registry::{Cause, Digest, ErrorCode, RegistryError, RepoName};

/// What a registry offers a pull-through mirror. Every failure is a [`RegistryError`] whose
/// [`Cause`] says whose it was; a 404 is `Cause::NotFound`.
#[async_trait]
pub trait Remote: Send + Sync {
    /// A manifest read whole (`reference` a tag or digest), as the `accept` list asks.
    async fn manifest(
        &self,
        repo: &RepoName,
        reference: &str,
        accept: &str,
    ) -> Result<ManifestBody, RegistryError>;

    /// What the upstream says `reference` is now, without its body.
    async fn manifest_head(
        &self,
        repo: &RepoName,
        reference: &str,
        accept: &str,
    ) -> Result<Head, RegistryError>;

    /// Whether the repository holds a blob, and its length.
    async fn blob_head(&self, repo: &RepoName, digest: &Digest) -> Result<Head, RegistryError>;

    /// A whole blob as it arrives; its length if the upstream said it.
    async fn blob(&self, repo: &RepoName, digest: &Digest) -> Result<BlobBody, RegistryError>;

    /// One page of the repository's tag list (`query`: the client's `n` and `last`).
    async fn tags(&self, repo: &RepoName, query: &str) -> Result<Listing, RegistryError>;

    /// The referrers index of a digest, filtered by artifact type if one is given.
    async fn referrers(
        &self,
        repo: &RepoName,
        digest: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Referrers, RegistryError>;

    /// Longest wait for an answer, or between two pieces of a body.
    fn read_timeout(&self) -> Duration;

    /// Whether wharf authenticates to this remote.
    fn has_credentials(&self) -> bool;
}

/// A manifest as the upstream sent it: bytes, and what its headers claim.
pub struct ManifestBody {
    pub bytes: Bytes,
    /// `Docker-Content-Digest`, as sent (checked by the caller).
    pub digest: Option<String>,
    /// `Content-Type`, as sent.
    pub media_type: Option<String>,
    /// The source shares what a tag resolves to itself (a cluster peer that asked the
    /// upstream): this instance keeps the mapping to itself.
    pub shared_by_source: bool,
}

/// What a HEAD says of an object.
#[derive(Clone, Debug, Default)]
pub struct Head {
    pub digest: Option<Digest>,
    pub len: Option<u64>,
    /// As for [`ManifestBody::shared_by_source`].
    pub shared_by_source: bool,
}

/// A blob's body: chunks as they arrive, and the length announced for them.
pub struct BlobBody {
    pub len: Option<u64>,
    pub chunks: BoxStream<'static, Result<Bytes, RegistryError>>,
    /// The source puts the blob in the shared store itself (a cluster peer): this instance
    /// keeps it on its own disk only.
    pub shared_by_source: bool,
}

/// A page of a tag list, with the `Link` to the next.
pub struct Listing {
    pub body: Bytes,
    pub link: Option<String>,
}

/// A referrers index; `filtered` if the remote applied the artifact type filter.
pub struct Referrers {
    pub body: Bytes,
    pub filtered: bool,
}

/// How to reach one upstream registry.
#[derive(Debug)]
pub struct UpstreamSettings {
    /// The registry host this upstream stands for (`docker.io`): names the tag namespace.
    pub registry: String,
    pub url: url::Url,
    pub credentials: Option<CredentialSource>,
    /// Extra CA certificates (PEM) to trust besides the system's.
    pub ca_file: Option<PathBuf>,
    /// Hosts besides the upstream's own that are trusted as it is: its token realm may get
    /// wharf's credentials there over plain HTTP, and be on an internal address.
    pub auth_hosts: Vec<String>,
    pub connect_timeout: Duration,
    /// Longest wait for response headers and between two reads of a body.
    pub read_timeout: Duration,
    /// Longest a whole request may take, retries and token included, but for a blob's body
    /// (which streams for as long as it takes): a trickle must not hold clients forever.
    pub request_timeout: Duration,
    /// This upstream's tag TTL, if it differs from the global one.
    pub tag_ttl: Option<Duration>,
    /// Never contact it: answer from the cache only.
    pub offline: bool,
}

/// One mirrored registry, as the pull policy sees it.
pub struct Upstream {
    /// The registry host it stands for (`docker.io`).
    pub registry: String,
    pub tag_ttl: Option<Duration>,
    /// Never contact it: answer from the cache only.
    pub offline: bool,
    remote: Arc<dyn Remote>,
    /// When a request last failed for want of the upstream (down, timing out, 5xx).
    last_failure: std::sync::Mutex<Option<Instant>>,
}

/// How long an upstream that failed is spared optional requests.
const RECENT_FAILURE: Duration = Duration::from_secs(10);

impl Upstream {
    /// The upstream `s` describes, over HTTP.
    pub fn new(s: UpstreamSettings) -> Result<Self, String> {
        let (registry, tag_ttl, offline) = (s.registry.clone(), s.tag_ttl, s.offline);
        let client = RegistryClient::new(s)?;
        Ok(Upstream::with_remote(
            registry,
            tag_ttl,
            offline,
            Arc::new(client),
        ))
    }

    /// An upstream for `registry` reached through `remote`.
    pub fn with_remote(
        registry: String,
        tag_ttl: Option<Duration>,
        offline: bool,
        remote: Arc<dyn Remote>,
    ) -> Self {
        Upstream {
            registry,
            tag_ttl,
            offline,
            remote,
            last_failure: std::sync::Mutex::new(None),
        }
    }

    /// The remote this upstream is reached through.
    pub fn remote(&self) -> Arc<dyn Remote> {
        self.remote.clone()
    }

    pub async fn manifest(
        &self,
        repo: &RepoName,
        reference: &str,
        accept: &str,
    ) -> Result<ManifestBody, RegistryError> {
        let not_cached = || format!("{repo}:{reference} is not cached");
        self.ask(
            ErrorCode::ManifestUnknown,
            not_cached,
            self.remote.manifest(repo, reference, accept),
        )
        .await
    }

    pub async fn manifest_head(
        &self,
        repo: &RepoName,
        reference: &str,
        accept: &str,
    ) -> Result<Head, RegistryError> {
        let not_cached = || format!("{repo}:{reference} is not cached");
        self.ask(
            ErrorCode::ManifestUnknown,
            not_cached,
            self.remote.manifest_head(repo, reference, accept),
        )
        .await
    }

    pub async fn blob_head(&self, repo: &RepoName, digest: &Digest) -> Result<Head, RegistryError> {
        let not_cached = || format!("{repo}@{digest} is not cached");
        self.ask(
            ErrorCode::BlobUnknown,
            not_cached,
            self.remote.blob_head(repo, digest),
        )
        .await
    }

    pub async fn blob(&self, repo: &RepoName, digest: &Digest) -> Result<BlobBody, RegistryError> {
        let not_cached = || format!("{repo}@{digest} is not cached");
        self.ask(
            ErrorCode::BlobUnknown,
            not_cached,
            self.remote.blob(repo, digest),
        )
        .await
    }

    pub async fn tags(&self, repo: &RepoName, query: &str) -> Result<Listing, RegistryError> {
        let not_cached = || format!("{repo}: its tag list is not cached");
        self.ask(
            ErrorCode::NameUnknown,
            not_cached,
            self.remote.tags(repo, query),
        )
        .await
    }

    pub async fn referrers(
        &self,
        repo: &RepoName,
        digest: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Referrers, RegistryError> {
        let not_cached = || format!("{repo}: the referrers of {digest} are not cached");
        self.ask(
            ErrorCode::ManifestUnknown,
            not_cached,
            self.remote.referrers(repo, digest, artifact_type),
        )
        .await
    }

    /// Ask the remote unless wharf is offline, and remember whether it failed.
    async fn ask<T>(
        &self,
        code: ErrorCode,
        not_cached: impl FnOnce() -> String,
        asking: impl std::future::Future<Output = Result<T, RegistryError>>,
    ) -> Result<T, RegistryError> {
        if self.offline {
            let what = not_cached();
            return Err(RegistryError::not_found(
                code,
                format!("{what}, and wharf is offline"),
            ));
        }
        let result = asking.await;
        let failed = matches!(&result, Err(e) if matches!(e.cause, Cause::UpstreamFailed | Cause::UpstreamTimedOut));
        *self.last_failure.lock().expect("failure time") = failed.then(Instant::now);
        result
    }

    /// Whether wharf has credentials for this upstream.
    pub fn has_credentials(&self) -> bool {
        self.remote.has_credentials()
    }

    /// Longest wait for an answer, or between two reads of a body.
    pub fn read_timeout(&self) -> Duration {
        self.remote.read_timeout()
    }

    /// Record that the upstream failed a request made outside `ask` (a caller's deadline).
    pub fn note_failure(&self) {
        *self.last_failure.lock().expect("failure time") = Some(Instant::now());
    }

    /// Whether the upstream just failed (in the last 10 s): optional requests, such as
    /// revalidating a tag wharf can serve stale, are better not made.
    pub fn recently_failed(&self) -> bool {
        self.last_failure
            .lock()
            .expect("failure time")
            .is_some_and(|t| t.elapsed() < RECENT_FAILURE)
    }
}
