//! Blobs: possibly huge, so never held whole. A stored blob streams from disk (small ones from
//! memory); a missing one is streamed to every waiting client while one detached [`Fill`]
//! writes and verifies it. Ranges are answered from complete, verified content only.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::FutureExt;
use http::{header, HeaderValue, StatusCode};

use super::{digest_headers, BlobLimits, Body, Headers, Mirror, Outcome, Reply};
use crate::cache::fill::{self, Busy, FillIo, Limits as FillLimits, Sink, Source};
use crate::cache::store::hashes_to;
use crate::cache::{ContentStore, Fill, FillReader, Fills, Joined, Kind, Object, Use};
use crate::metrics::METRICS;
use crate::registry::media;
use crate::registry::range::{parse_range, RangeAnswer};
use crate::registry::{Cause, Digest, ErrorCode, RegistryError, RepoName};
use crate::upstream::{BlobBody, Upstream};

/// What the policy for blobs keeps.
pub(super) struct BlobState {
    pub(super) fills: Fills,
    /// Where fills do their disk work, apart from the threads that serve hits.
    pub(super) fill_io: FillIo,
    /// Blob sizes as the manifests of a repository (`registry/name`) say: the length a fill
    /// for that repository must have.
    pub(super) sizes: moka::sync::Cache<(String, Digest), u64>,
    pub(super) limits: BlobLimits,
    /// How long the presigned URLs that blobs only the bucket holds are sent to are valid;
    /// none: such blobs stream through this instance.
    pub(super) presigned_for: Option<std::time::Duration>,
}

impl BlobState {
    pub(super) fn new(
        limits: BlobLimits,
        presigned_for: Option<std::time::Duration>,
    ) -> Result<BlobState, String> {
        let fill_io = FillIo::new(limits.fill_threads)
            .map_err(|e| format!("cannot start the fill threads: {e}"))?;
        Ok(BlobState {
            fills: Fills::new(FillLimits::new(limits.max_fills, limits.max_orphan_fills)),
            fill_io,
            sizes: moka::sync::Cache::new(200_000),
            limits,
            presigned_for,
        })
    }
}

impl Mirror {
    pub(super) async fn blob(
        self: &Arc<Self>,
        up: &Arc<Upstream>,
        name: &RepoName,
        digest: Digest,
        head: bool,
        range: Option<&str>,
    ) -> Result<Reply, RegistryError> {
        if let Some(reply) = self.local_blob(&digest, head, range).await? {
            self.vouch(up, name, Kind::Blob, &digest).await?;
            return Ok(reply);
        }
        if head || (up.offline && self.cache.shared.is_none()) {
            return self.blob_head_upstream(up, name, &digest).await;
        }
        let mut ask_bucket = true;
        if !self.answers_a_member(up) && self.blobs.fills.get(&digest).is_none() {
            match self.presigned(up, name, &digest).await? {
                Presigned::Redirect(reply) => return Ok(reply),
                Presigned::Asked => ask_bucket = false,
                Presigned::Off => {}
            }
        }
        let joined = self.join_fill(up, name, &digest, ask_bucket).await?;
        let (mut reader, outcome) = match joined {
            Some(joined) => joined,
            None => {
                let reply = self
                    .local_blob(&digest, head, range)
                    .await?
                    .ok_or_else(|| RegistryError::local("blob vanished from the cache"))?;
                self.vouch(up, name, Kind::Blob, &digest).await?;
                return Ok(reply);
            }
        };
        if outcome == Outcome::Coalesced {
            // another repository's fill, perhaps: this one must hold the blob too
            self.vouch(up, name, Kind::Blob, &digest).await?;
        }
        if let Some(range) = range {
            // Ranges are served from complete, verified content only.
            let len = reader.finished().await?;
            let object = Object::file(reader.file(), len);
            return Ok(stored_reply(&digest, object, Some(range), outcome));
        }
        // No length means the upstream sent none and no manifest told it: the front end
        // frames such a body so that a cut cannot pass for its end.
        let total = reader.ready().await?;
        let mut headers = blob_headers(&digest);
        if let Some(t) = total {
            headers.push((header::CONTENT_LENGTH, HeaderValue::from(t)));
        }
        Ok(Reply {
            status: StatusCode::OK,
            headers,
            body: Body::Fill(reader),
            outcome,
        })
    }

    /// Read along the fill for `digest`, starting it if none runs: `None` if the blob is in
    /// the store by now. Past `max_fills` a new fill is refused with a 503 to retry.
    /// `ask_bucket` false: the shared store was just asked, and has no (usable) copy.
    async fn join_fill(
        self: &Arc<Self>,
        up: &Arc<Upstream>,
        name: &RepoName,
        digest: &Digest,
        ask_bucket: bool,
    ) -> Result<Option<(FillReader, Outcome)>, RegistryError> {
        // only this disk counts as stored: what is in the shared store only is filled from it
        let disk: Arc<dyn ContentStore> = self.cache.disk.clone();
        let joined = self
            .blobs
            .fills
            .join_or_start(&disk, digest)
            .await
            .map_err(|Busy(n)| {
                RegistryError::busy(
                    format!("wharf is fetching {n} blobs already (max_fills); try again shortly"),
                    BUSY_RETRY_AFTER,
                )
            })?;
        Ok(match joined {
            Joined::Stored => None,
            Joined::Existing(r) if self.answers_a_member(up) && r.asks_a_member() => {
                // that member may be the one the fill is waiting for: it asks the upstream
                return Err(RegistryError::busy(
                    format!("this member is itself asking another member for {digest}"),
                    1,
                ));
            }
            Joined::Existing(r) => Some((r, Outcome::Coalesced)),
            Joined::New(fill, r) => {
                // the request may go away while the bucket is asked: the fill then starts
                // anyway, so that whoever joined it meanwhile is not left waiting
                let starting = Starting {
                    mirror: self.clone(),
                    up: up.clone(),
                    name: name.clone(),
                    fill: Some(fill),
                };
                let shared = match ask_bucket {
                    true => self.shared_blob(digest).await,
                    false => None,
                };
                let Some(shared) = shared else {
                    if up.offline {
                        let e = offline_error(name, digest);
                        starting.fail(e.clone());
                        return Err(e);
                    }
                    starting.start(None);
                    return Ok(Some((r, Outcome::Miss)));
                };
                // content another instance fetched for some repository: this one must hold it
                // before any of it is copied here
                if let Err(e) = self.vouch(up, name, Kind::Blob, digest).await {
                    starting.fail(e.clone());
                    return Err(e);
                }
                starting.start(Some(shared));
                Some((r, Outcome::HitShared))
            }
        })
    }

    /// With `presigned_for`, a blob this disk lacks and the bucket holds is not copied through
    /// this instance: the client is sent to a presigned URL of it (307), as distribution
    /// does; only once the repository is known to hold it, as for any other answer.
    async fn presigned(
        self: &Arc<Self>,
        up: &Arc<Upstream>,
        name: &RepoName,
        digest: &Digest,
    ) -> Result<Presigned, RegistryError> {
        let (Some(valid_for), Some(shared)) = (self.blobs.presigned_for, self.cache.shared.clone())
        else {
            return Ok(Presigned::Off);
        };
        let d = *digest;
        let signed = self
            .blocking(move |_| match shared.stat(Kind::Blob, &d)? {
                Some(_) => shared.signed_url(Kind::Blob, &d, valid_for).map(Some),
                None => Ok(None),
            })
            .await;
        let url = match signed {
            Ok(Some(url)) => url,
            Ok(None) => return Ok(Presigned::Asked),
            Err(e) => {
                tracing::warn!("cannot presign {d}, fetching it: {e}");
                return Ok(Presigned::Asked);
            }
        };
        let Ok(location) = HeaderValue::from_str(&url) else {
            return Ok(Presigned::Asked);
        };
        self.vouch(up, name, Kind::Blob, digest).await?;
        self.cache.touched(Kind::Blob, digest);
        let mut headers = digest_headers(digest).to_vec();
        headers.push((header::LOCATION, location));
        // an empty body said to be empty: the connection stays open for the next blob
        headers.push((header::CONTENT_LENGTH, HeaderValue::from_static("0")));
        Ok(Presigned::Redirect(Reply {
            status: StatusCode::TEMPORARY_REDIRECT,
            headers,
            body: Body::Empty,
            outcome: Outcome::Presigned,
        }))
    }

    /// Read the shared store's copy of a blob whole, and remove it if it does not hash to its
    /// digest. In the background.
    fn recheck_shared(self: &Arc<Self>, digest: Digest) {
        let Some(shared) = self.cache.shared.clone() else {
            return;
        };
        tokio::task::spawn_blocking(move || {
            let intact = shared
                .open(Kind::Blob, &digest, Use::Inspect)
                .and_then(|o| match o {
                    Some(o) => hashes_to(&mut o.reader()?, &digest).map(Some),
                    None => Ok(None),
                });
            match intact {
                Ok(Some(false)) => match shared.remove(Kind::Blob, &digest) {
                    Ok(_) => tracing::error!(
                        "the shared store's copy of blob {digest} is damaged: removed"
                    ),
                    Err(e) => tracing::error!(
                        "the shared store's copy of blob {digest} is damaged, and cannot be removed: {e}"
                    ),
                },
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!("cannot check the shared store's copy of blob {digest}: {e}")
                }
            }
        });
    }

    /// Whether `up` is how a cluster member's request is answered (the registry directly).
    fn answers_a_member(&self, up: &Upstream) -> bool {
        let direct = self.direct.get(&up.registry);
        self.members.is_some() && direct.is_some_and(|d| std::ptr::eq(&**d, up))
    }

    /// Fail a fill that was never started, and forget it.
    fn end_unstarted(&self, fill: &Fill, e: RegistryError) {
        fill.fail(e);
        self.blobs.fills.remove(&fill.digest);
    }

    /// The blob in the shared store, if there is one, it has the blob, and it can be reached.
    async fn shared_blob(self: &Arc<Self>, digest: &Digest) -> Option<Object> {
        let shared = self.cache.shared.clone()?;
        let d = *digest;
        match self
            .blocking(move |_| shared.open(Kind::Blob, &d, Use::Serve))
            .await
        {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!("cannot look for {d} in the shared store: {e}");
                None
            }
        }
    }

    /// Make sure a blob is in the store, fetching it (or waiting for the fetch in flight) if it
    /// is not. Returns its length and how it was found.
    pub async fn ensure_blob(
        self: &Arc<Self>,
        up: &Arc<Upstream>,
        name: &RepoName,
        digest: &Digest,
    ) -> Result<(u64, Outcome), RegistryError> {
        match self.join_fill(up, name, digest, true).await? {
            Some((mut reader, outcome)) => Ok((reader.stored().await?, outcome)),
            None => {
                let (store, d) = (self.cache.store.clone(), *digest);
                let size = self
                    .blocking(move |_| store.stat(Kind::Blob, &d))
                    .await
                    .ok()
                    .flatten()
                    .map_or(0, |s| s.size);
                Ok((size, Outcome::HitDisk))
            }
        }
    }

    /// The reply for a blob held in the memory tier.
    pub(super) fn memory_blob(&self, digest: &Digest, range: Option<&str>) -> Option<Reply> {
        let b = self.memory.get(Kind::Blob, digest)?.bytes;
        self.cache.touched(Kind::Blob, digest);
        Some(bytes_reply(digest, b, range, Outcome::HitMemory))
    }

    /// A stored blob, from memory or disk; `None` if it is not stored.
    async fn local_blob(
        self: &Arc<Self>,
        digest: &Digest,
        head: bool,
        range: Option<&str>,
    ) -> Result<Option<Reply>, RegistryError> {
        if let Some(reply) = self.memory_blob(digest, range) {
            return Ok(Some(reply));
        }
        // this disk only: what is in the shared store alone is filled from it, but for a HEAD
        let (me, d) = (self.clone(), *digest);
        let opened =
            tokio::task::spawn_blocking(move || me.cache.disk.open(Kind::Blob, &d, Use::Serve))
                .await
                .map_err(|e| RegistryError::local(format!("cache task failed: {e}")))?
                .map_err(|e| {
                    RegistryError::local(format!("cannot open cached blob {digest}: {e}"))
                })?;
        let Some(object) = opened else {
            if !head {
                return Ok(None);
            }
            let shared = self.shared_blob(digest).await;
            return Ok(shared.map(|o| stored_reply(digest, o, range, Outcome::HitShared)));
        };
        self.cache.touched(Kind::Blob, digest);
        if !head && self.memory.admits(object.len) {
            let bytes = object.read_at(0, object.len as usize).await.map_err(|e| {
                RegistryError::local(format!("cannot read cached blob {digest}: {e}"))
            })?;
            self.memory.insert(Kind::Blob, *digest, bytes.clone(), None);
            return Ok(Some(bytes_reply(digest, bytes, range, Outcome::HitDisk)));
        }
        Ok(Some(stored_reply(digest, object, range, Outcome::HitDisk)))
    }

    /// HEAD for a blob wharf does not have: ask the upstream, fetch nothing.
    async fn blob_head_upstream(
        self: &Arc<Self>,
        up: &Upstream,
        name: &RepoName,
        digest: &Digest,
    ) -> Result<Reply, RegistryError> {
        let len = match self.blobs.fills.get(digest) {
            Some(fill) if self.holds_cached(up, name, digest) => fill.ready().await?,
            _ => {
                let len = up.blob_head(name, digest).await?.len;
                // the upstream confirmed it for this repository
                self.link(up, name, vec![*digest]).await;
                len
            }
        };
        let mut headers = blob_headers(digest);
        if let Some(n) = len {
            headers.push((header::CONTENT_LENGTH, HeaderValue::from(n)));
        }
        Ok(Reply {
            status: StatusCode::OK,
            headers,
            body: Body::Empty,
            outcome: Outcome::Upstream,
        })
    }

    /// Run a fill to its end on its own task: it belongs to no client.
    fn spawn_fill(
        self: &Arc<Self>,
        up: Arc<Upstream>,
        name: RepoName,
        fill: Arc<Fill>,
        shared: Option<Object>,
    ) {
        let me = self.clone();
        METRICS.fills_in_flight.inc();
        tokio::spawn(async move {
            let digest = fill.digest;
            let result = AssertUnwindSafe(me.run_fill(&up, &name, &fill, shared))
                .catch_unwind()
                .await
                .unwrap_or_else(|_| Err(RegistryError::local("blob fill panicked")));
            if let Err(e) = result {
                tracing::warn!("fill of {name}@{digest} failed: {e}");
                fill.fail(e); // readers are told; the spool went with the driver
            }
            me.blobs.fills.remove(&digest);
            METRICS.fills_in_flight.dec();
        });
    }

    /// Fetch `fill`'s blob into the store: from the shared store if it is there (`shared`),
    /// else from the upstream (or, in a cluster, the blob's owner).
    async fn run_fill(
        self: &Arc<Self>,
        up: &Upstream,
        name: &RepoName,
        fill: &Arc<Fill>,
        shared: Option<Object>,
    ) -> Result<(), RegistryError> {
        let digest = fill.digest;
        // What the manifest of this repository said of the blob's size, when a pull came
        // through one (another repository's manifest is no word on this one's blob).
        let described = self
            .blobs
            .sizes
            .get(&(format!("{}/{name}", up.registry), digest));
        if let Some(n) = described {
            self.room_for(fill, Some(n)).await?;
        }
        let from_shared = shared.is_some();
        let mut origin = if from_shared { "bucket" } else { "upstream" };
        let body = match shared {
            Some(object) => shared_body(object),
            None => {
                // decided as the cluster's remote decides, just before it asks
                let elsewhere = |m: &Arc<crate::cluster::Members>| {
                    m.owner(&digest.to_string()) != crate::cluster::Owner::Me
                };
                let via_member = self.members.as_ref().is_some_and(elsewhere);
                fill.ask_a_member(via_member && !self.answers_a_member(up));
                let body = up.blob(name, &digest).await;
                let from_member = matches!(&body, Ok(b) if b.shared_by_source);
                fill.ask_a_member(from_member);
                if from_member {
                    origin = "member";
                }
                body?
            }
        };
        let declared = body.len;
        if let (Some(d), Some(n)) = (declared, described) {
            if d != n {
                return Err(RegistryError::upstream_failed(format!(
                    "upstream announces {d} bytes for blob {digest}, but its manifest says {n}"
                )));
            }
        }
        let total = declared.or(described);
        // No last byte to hold back: an empty body would reach the client whole before it is
        // found wrong. Only the empty blob is empty.
        if total == Some(0) && digest != Digest::of(b"") {
            return Err(RegistryError::upstream_failed(format!(
                "upstream announces an empty body for blob {digest}, which is not the empty blob"
            )));
        }
        if described.is_none() {
            self.room_for(fill, total).await?;
        }
        // what a peer sends, the peer stores in the shared store: this disk keeps its own copy
        let store: Arc<dyn ContentStore> = match body.shared_by_source {
            true => self.cache.disk.clone(),
            false => self.cache.store.clone(),
        };
        let source = Source {
            chunks: body.chunks,
            total,
            limit: self.blobs.limits.max_blob_size,
            read_timeout: up.read_timeout(),
        };
        let sink = Sink {
            io: &self.blobs.fill_io,
            disk: &self.cache.disk,
            store: &store,
            keep: self.blobs.limits.min_free_space,
        };
        let filled = fill::drive(fill, source, sink).await;
        if from_shared && matches!(&filled, Err(e) if e.cause == Cause::UpstreamFailed) {
            // the bucket's copy came out wrong (or short): look again, and if it is damaged
            // remove it, so that the next request fetches it from the upstream instead
            self.recheck_shared(digest);
        }
        if let Some(len) = filled? {
            METRICS.fills.with_label_values(&[origin]).inc();
            self.cache.quota.added(Kind::Blob, digest, len);
            self.link(up, name, vec![digest]).await;
        }
        Ok(())
    }

    /// Whether a blob of `size` bytes (if known) may be fetched: not over `max_blob_size`, and
    /// room for it on disk beside what the fills in flight will still write, keeping
    /// `min_free_space` free; the room is then promised to this fill. Refused before any
    /// header goes out to the client.
    async fn room_for(&self, fill: &Fill, size: Option<u64>) -> Result<(), RegistryError> {
        let (digest, max) = (fill.digest, self.blobs.limits.max_blob_size);
        if let Some(n) = size.filter(|&n| n > max) {
            return Err(RegistryError::denied(format!("blob {digest} is {n} bytes, more than this mirror's max_blob_size ({max}); not fetched"),
            ));
        }
        let disk = self.cache.disk.clone();
        let free = match self.blobs.fill_io.run(move || disk.free_space()).await {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!("cannot tell the free space of the data directory: {e}");
                return Ok(());
            }
        };
        let keep = self.blobs.limits.min_free_space;
        self.blobs.fills.reserve(fill, size, free, keep).map_err(|promised| {
            RegistryError::new(
                Cause::NoRoom,
                ErrorCode::Unavailable,
                format!(
                    "no room for blob {digest}{}: {free} bytes free on the data directory, {promised} promised to fills in flight, min_free_space {keep}",
                    size.map(|n| format!(" ({n} bytes)")).unwrap_or_default(),
                ),
            )
        })
    }
}

/// How long a client refused for `max_fills` is told to wait.
const BUSY_RETRY_AFTER: u32 = 5;

fn blob_headers(digest: &Digest) -> Headers {
    let mut headers = Vec::with_capacity(7);
    headers.push((header::CONTENT_TYPE, HeaderValue::from_static(media::BLOB)));
    headers.extend(digest_headers(digest));
    headers.push((header::ACCEPT_RANGES, HeaderValue::from_static("bytes")));
    headers
}

/// Status, extra headers and the `(offset, len)` to send for a possibly ranged blob reply.
fn ranged(
    digest: &Digest,
    len: u64,
    range: Option<&str>,
    outcome: Outcome,
) -> Result<(StatusCode, Headers, u64, u64), Reply> {
    let mut headers = blob_headers(digest);
    match parse_range(range, len) {
        RangeAnswer::Full => {
            headers.push((header::CONTENT_LENGTH, HeaderValue::from(len)));
            Ok((StatusCode::OK, headers, 0, len))
        }
        RangeAnswer::Part(s, e) => {
            headers.push((header::CONTENT_LENGTH, HeaderValue::from(e - s + 1)));
            let range = format!("bytes {s}-{e}/{len}");
            headers.push((header::CONTENT_RANGE, super::text_value(range)));
            Ok((StatusCode::PARTIAL_CONTENT, headers, s, e - s + 1))
        }
        RangeAnswer::Unsatisfiable => {
            let mut r = Reply::error(RegistryError::new(
                Cause::RangeUnsatisfiable,
                ErrorCode::RangeInvalid,
                format!(
                    "range {} is outside the blob's {len} bytes",
                    range.unwrap_or("")
                ),
            ));
            r.headers.push((
                header::CONTENT_RANGE,
                super::text_value(format!("bytes */{len}")),
            ));
            r.outcome = outcome;
            Err(r)
        }
    }
}

fn offline_error(name: &RepoName, digest: &Digest) -> RegistryError {
    RegistryError::not_found(
        ErrorCode::BlobUnknown,
        format!("{name}@{digest} is not cached, and wharf is offline"),
    )
}

/// A fill a request created and has not started yet. Dropped undecided (the request went
/// away), it is started from the upstream, as fills belong to no client.
/// What [`Mirror::presigned`] made of a blob.
enum Presigned {
    Redirect(Reply),
    /// The bucket was asked and has no copy, or could not answer: not to be asked again.
    Asked,
    /// No presigned redirects here.
    Off,
}

struct Starting {
    mirror: Arc<Mirror>,
    up: Arc<Upstream>,
    name: RepoName,
    fill: Option<Arc<Fill>>,
}

impl Starting {
    fn start(mut self, shared: Option<Object>) {
        let fill = self.fill.take().expect("decided once");
        self.mirror
            .spawn_fill(self.up.clone(), self.name.clone(), fill, shared);
    }

    fn fail(mut self, e: RegistryError) {
        let fill = self.fill.take().expect("decided once");
        self.mirror.end_unstarted(&fill, e);
    }
}

impl Drop for Starting {
    fn drop(&mut self) {
        if let Some(fill) = self.fill.take() {
            self.mirror
                .spawn_fill(self.up.clone(), self.name.clone(), fill, None);
        }
    }
}

/// A blob in the shared store as a fill reads it: a chunk at a time, in order.
fn shared_body(object: Object) -> BlobBody {
    const CHUNK: u64 = 1 << 20;
    let len = object.len;
    let chunks = futures_util::stream::try_unfold((object, 0u64), move |(object, at)| async move {
        if at == len {
            return Ok(None);
        }
        let n = (len - at).min(CHUNK);
        let chunk = object
            .read_at(at, n as usize)
            .await
            .map_err(|e| RegistryError::local(format!("cannot read from the shared store: {e}")))?;
        Ok(Some((chunk, (object, at + n))))
    });
    BlobBody {
        len: Some(len),
        chunks: Box::pin(chunks),
        shared_by_source: true,
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

fn stored_reply(digest: &Digest, object: Object, range: Option<&str>, outcome: Outcome) -> Reply {
    match ranged(digest, object.len, range, outcome) {
        Ok((status, headers, offset, n)) => Reply {
            status,
            headers,
            body: Body::Stored {
                object,
                offset,
                len: n,
            },
            outcome,
        },
        Err(r) => r,
    }
}
