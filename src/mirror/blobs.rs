//! Blobs: possibly huge, so never held whole. A stored blob streams from disk (small ones from
//! memory); a missing one is streamed to every waiting client while one detached [`Fill`]
//! writes and verifies it. Ranges are answered from complete, verified content only.

use std::fs::File;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use http::{header, HeaderValue, Method, StatusCode};
use tokio::sync::mpsc;

use super::{cache_header, digest_headers, Body, Headers, Mirror, Outcome, Reply};
use crate::cache::quota::TOUCH_AFTER;
use crate::cache::store::read_at;
use crate::cache::{Fill, Joined, Kind};
use crate::metrics::METRICS;
use crate::registry::media;
use crate::registry::{Digest, ErrorCode, RegistryError, RepoName};
use crate::upstream::{header_str, transport_error, Upstream};

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
            return Ok(reply);
        }
        if head || up.offline {
            return self.blob_head_upstream(up, name, &digest).await;
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
                self.spawn_fill(up.clone(), name.clone(), f.clone());
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
            headers.push((header::CONTENT_LENGTH, HeaderValue::from(t)));
        }
        headers.push(cache_header(outcome));
        Ok(Reply {
            status: StatusCode::OK,
            headers,
            body: Body::Fill(fill.reader()),
            outcome,
        })
    }

    /// Make sure a blob is in the store, fetching it (or waiting for the fetch in flight) if it
    /// is not. Returns its length and how it was found.
    pub async fn ensure_blob(
        self: &Arc<Self>,
        up: &Arc<Upstream>,
        name: &RepoName,
        digest: &Digest,
    ) -> Result<(u64, Outcome), RegistryError> {
        let joined = self
            .fills
            .join_or_start(&self.store, digest)
            .map_err(|e| RegistryError::internal(format!("cannot start a cache file: {e}")))?;
        let (fill, outcome) = match joined {
            Joined::Stored => {
                let size = std::fs::metadata(self.store.path(Kind::Blob, digest))
                    .map(|m| m.len())
                    .unwrap_or(0);
                return Ok((size, Outcome::HitDisk));
            }
            Joined::Existing(f) => (f, Outcome::Coalesced),
            Joined::New(f) if up.offline => {
                let e = RegistryError::not_found(
                    ErrorCode::BlobUnknown,
                    format!("{name}@{digest} is not cached, and wharf is offline"),
                );
                f.fail(e.clone());
                self.fills.remove(digest);
                return Err(e);
            }
            Joined::New(f) => {
                self.spawn_fill(up.clone(), name.clone(), f.clone());
                (f, Outcome::Miss)
            }
        };
        Ok((fill.stored().await?, outcome))
    }

    /// The reply for a blob held in the memory tier.
    pub(super) fn memory_blob(&self, digest: &Digest, range: Option<&str>) -> Option<Reply> {
        let b = self.memory.get(Kind::Blob, digest)?.bytes;
        self.quota.touched(Kind::Blob, digest);
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
        let (me, d) = (self.clone(), *digest);
        let opened =
            tokio::task::spawn_blocking(move || me.store.open_object(Kind::Blob, &d, TOUCH_AFTER))
                .await
                .map_err(|e| RegistryError::internal(format!("cache task failed: {e}")))?
                .map_err(|e| {
                    RegistryError::internal(format!("cannot open cached blob {digest}: {e}"))
                })?;
        let Some((file, len)) = opened else {
            return Ok(None);
        };
        self.quota.touched(Kind::Blob, digest);
        let file = Arc::new(file);
        if !head && self.memory.admits(len) {
            let bytes = read_at(file, 0, len as usize).await?;
            self.memory.insert(Kind::Blob, *digest, bytes.clone(), None);
            return Ok(Some(bytes_reply(digest, bytes, range, Outcome::HitDisk)));
        }
        Ok(Some(file_reply(digest, file, len, range, Outcome::HitDisk)))
    }

    /// HEAD for a blob wharf does not have: ask the upstream, fetch nothing.
    async fn blob_head_upstream(
        &self,
        up: &Upstream,
        name: &RepoName,
        digest: &Digest,
    ) -> Result<Reply, RegistryError> {
        let len = match self.fills.get(digest) {
            Some(fill) => fill.ready().await?,
            None => up
                .send(
                    Method::HEAD,
                    name,
                    &format!("blobs/{digest}"),
                    None,
                    ErrorCode::BlobUnknown,
                )
                .await
                .map(|r| header_str(&r, header::CONTENT_LENGTH).and_then(|v| v.parse().ok()))?,
        };
        let mut headers = blob_headers(digest);
        if let Some(n) = len {
            headers.push((header::CONTENT_LENGTH, HeaderValue::from(n)));
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
    fn spawn_fill(self: &Arc<Self>, up: Arc<Upstream>, name: RepoName, fill: Arc<Fill>) {
        let me = self.clone();
        METRICS.fills_in_flight.inc();
        tokio::spawn(async move {
            let digest = fill.digest;
            let result = AssertUnwindSafe(me.run_fill(&up, &name, &fill))
                .catch_unwind()
                .await
                .unwrap_or_else(|_| Err(RegistryError::internal("blob fill panicked")));
            if let Err(e) = result {
                tracing::warn!("fill of {name}@{digest} failed: {e}");
                let f = fill.clone();
                me.blocking(move |_| f.fail(e)).await;
            }
            me.fills.remove(&digest);
            METRICS.fills_in_flight.dec();
        });
    }

    async fn run_fill(
        self: &Arc<Self>,
        up: &Upstream,
        name: &RepoName,
        fill: &Arc<Fill>,
    ) -> Result<(), RegistryError> {
        let digest = fill.digest;
        let resp = up
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
        METRICS.bytes_fetched.inc_by(len);
        if got != digest {
            METRICS.verification_failures.inc();
            return Err(RegistryError::bad_gateway(format!(
                "upstream bytes for blob {digest} hash to {got}; not cached"
            )));
        }
        fill.verified();
        let f = fill.clone();
        match self.blocking(move |me| f.commit(&me.store)).await {
            Ok(()) => self.quota.added(Kind::Blob, digest, len),
            Err(e) => tracing::error!("cannot commit blob {digest} to the cache: {e}"),
        }
        Ok(())
    }
}

fn blob_headers(digest: &Digest) -> Headers {
    let mut headers = Vec::with_capacity(7);
    headers.push((header::CONTENT_TYPE, HeaderValue::from_static(media::BLOB)));
    headers.extend(digest_headers(digest));
    headers.push((header::ACCEPT_RANGES, HeaderValue::from_static("bytes")));
    headers
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
                StatusCode::RANGE_NOT_SATISFIABLE,
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
