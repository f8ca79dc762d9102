//! Driving a fill: the upstream's chunks in, the spool written and hashed on [`FillIo`],
//! the length and digest checked, the held-back last byte released, the blob committed. The
//! state it drives ([`Fill`]) is next door; what to fetch and whether there is room for it is
//! the pull policy's (`mirror::blobs`).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::{Fill, FillIo, Fills};
use crate::cache::store::Spool;
use crate::cache::{ContentStore, DiskStore};
use crate::metrics::METRICS;
use crate::registry::RegistryError;

/// What a fill reads: the upstream's chunks and what is known of their length.
pub struct Source {
    pub chunks: BoxStream<'static, Result<Bytes, RegistryError>>,
    /// The length the blob must have, if the upstream or a manifest said it.
    pub total: Option<u64>,
    /// The most it may have otherwise (`max_blob_size`).
    pub limit: u64,
    /// An orphan must bring [`STALL_BYTES`] per this long, or it is given up.
    pub read_timeout: Duration,
}

/// Where a fill writes: a spool on `disk`, then `store`; and the free space it must leave.
pub struct Sink<'a> {
    pub io: &'a FillIo,
    pub disk: &'a Arc<DiskStore>,
    pub store: &'a Arc<dyn ContentStore>,
    pub keep: u64,
}

/// What an orphan fill must bring per read timeout not to count as stalled.
const STALL_BYTES: u64 = 64 << 10;

/// Run `fill` from `source` into `sink` to its end: `Ok(Some(len))` once the blob is verified,
/// released to readers and committed; `Ok(None)` if the commit failed (logged: the readers
/// have their bytes, the store does not). An error says why the blob is not what it must be.
pub async fn drive(
    fill: &Arc<Fill>,
    source: Source,
    sink: Sink<'_>,
) -> Result<Option<u64>, RegistryError> {
    let digest = fill.digest;
    let disk = sink.disk.clone();
    let spool = sink
        .io
        .run(move || disk.spool(&digest))
        .await
        .map_err(|e| RegistryError::local(format!("cannot start a cache file: {e}")))?;
    fill.spools_into(&spool);
    fill.start(source.total);
    let total = source.total;
    // The network is read here, the disk written on FillIo: the two overlap, and the bounded
    // channel keeps what a fill holds in memory to a few chunks.
    let (tx, rx) = mpsc::channel::<Bytes>(8);
    let writing = Fills::write_body(sink.io, fill, rx, spool, sink.keep);
    let (read, written) = tokio::join!(pump(fill, source, tx), writing);
    let spool = written.map_err(|e| {
        RegistryError::local(format!("cannot write blob {digest} to the cache: {e}"))
    })?;
    if let Err(e) = read {
        return discard(sink.io, spool, e).await;
    }
    let (got, len) = (spool.hashed(), spool.len());
    if let Some(t) = total.filter(|&t| t != len) {
        let e = format!("upstream sent {len} of {t} bytes of blob {digest}");
        return discard(sink.io, spool, RegistryError::upstream_failed(e)).await;
    }
    METRICS.bytes_fetched.inc_by(len);
    if got != digest {
        METRICS.verification_failures.inc();
        let e = format!("upstream bytes for blob {digest} hash to {got}; not cached");
        return discard(sink.io, spool, RegistryError::upstream_failed(e)).await;
    }
    fill.verified();
    let (f, store) = (fill.clone(), sink.store.clone());
    match sink.io.run(move || f.commit(&*store, spool)).await {
        Ok(()) => Ok(Some(len)),
        Err(e) => {
            tracing::error!("cannot commit blob {digest} to the cache: {e}");
            Ok(None)
        }
    }
}

/// Give up a spool that is not to be stored: it is removed off the event loop.
async fn discard(
    io: &FillIo,
    spool: Spool,
    e: RegistryError,
) -> Result<Option<u64>, RegistryError> {
    io.run(move || drop(spool)).await;
    Err(e)
}

/// Read `source` into `tx` (the writer) until it ends, breaks, brings too much, or is given
/// up: an orphan that stalls, or one too many (`Fill::release`). Returns the bytes read.
async fn pump(fill: &Fill, source: Source, tx: mpsc::Sender<Bytes>) -> Result<u64, RegistryError> {
    let digest = fill.digest;
    let Source {
        mut chunks,
        total,
        limit,
        read_timeout,
    } = source;
    let limit = total.unwrap_or(limit);
    let mut received = 0u64;
    let mut watch = tokio::time::interval(read_timeout);
    watch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    watch.reset();
    let mut at_last_look = 0u64;
    let abandoned = fill.abandoned();
    tokio::pin!(abandoned);
    loop {
        let chunk = tokio::select! {
            biased;
            c = chunks.next() => c,
            _ = &mut abandoned => {
                METRICS.fills_abandoned.inc();
                return Err(RegistryError::upstream_failed(format!(
                    "gave up blob {digest}: no client waits for it, and too many fills are in that case"
                )));
            }
            _ = watch.tick() => {
                if fill.is_orphaned() && received - at_last_look < STALL_BYTES {
                    METRICS.fills_abandoned.inc();
                    return Err(RegistryError::upstream_timed_out(format!(
                        "gave up blob {digest}: no client waits for it, and the upstream sent {} bytes in {read_timeout:?}",
                        received - at_last_look
                    )));
                }
                at_last_look = received;
                continue;
            }
        };
        let b = match chunk {
            None => return Ok(received),
            Some(Err(e)) => {
                return Err(RegistryError::upstream_failed(format!(
                    "upstream broke off blob {digest} after {received} bytes: {}",
                    e.message
                )))
            }
            Some(Ok(b)) => b,
        };
        received += b.len() as u64;
        if received > limit {
            return Err(RegistryError::upstream_failed(match total {
                Some(t) => format!("upstream sent more than the {t} bytes of blob {digest}"),
                None => format!(
                    "upstream sent more than {limit} bytes for blob {digest} (max_blob_size); not cached"
                ),
            }));
        }
        match tx.try_send(b) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(b)) => {
                // the disk is behind: time spent waiting for it is no stall of the upstream's
                if tx.send(b).await.is_err() {
                    return Ok(received); // the writer failed; its error says why
                }
                watch.reset();
                at_last_look = received;
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return Ok(received),
        }
    }
}
