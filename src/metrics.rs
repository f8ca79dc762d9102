//! What an operator watches: Prometheus metrics for requests, cache tiers, bytes saved, upstream
//! traffic (and Docker Hub's remaining pull allowance), fills in flight and verification
//! failures. One process-wide set, recorded where things happen, exposed by the admin listener.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, SystemTime};

use crate::mirror::Outcome;
use prometheus::{
    Encoder, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    /// Requests by route (base, manifest, blob, tags, referrers, invalid) and status.
    pub requests: IntCounterVec,
    /// Requests by cache outcome (hit-memory, hit-disk, miss, coalesced, stale, upstream, local).
    pub outcomes: IntCounterVec,
    /// Body bytes sent to clients, by cache outcome.
    pub bytes_served: IntCounterVec,
    /// Body bytes received from upstreams (manifests and blobs).
    pub bytes_fetched: IntCounter,
    /// Requests sent upstream, by registry and kind (manifest, manifest-head, blob, blob-head,
    /// tags, referrers, token).
    pub upstream_requests: IntCounterVec,
    /// The last `ratelimit-remaining` an upstream announced (Docker Hub's pull allowance).
    pub ratelimit_remaining: IntGaugeVec,
    pub fills_in_flight: IntGauge,
    /// Client connections open.
    pub connections: IntGauge,
    /// Connections turned away because max_connections were busy.
    pub connections_refused: IntCounter,
    /// Idle connections closed to make room for new ones.
    pub connections_evicted: IntCounter,
    /// Fills no client waits for any more.
    pub orphan_fills: IntGauge,
    /// Cold misses refused because `max_fills` were running.
    pub fills_refused: IntCounter,
    /// Orphan fills given up (too many of them, or stalled).
    pub fills_abandoned: IntCounter,
    /// Content an upstream sent that did not match its digest (never cached).
    pub verification_failures: IntCounter,
    /// Bytes this instance put into the shared store.
    pub bucket_writes: IntCounter,
    /// Bytes this instance read from the shared store (served, or copied onto its disk).
    pub bucket_reads: IntCounter,
    /// Blobs stored by a fill, by where the fill read them: `upstream` (as the owner, or
    /// alone), `member` (the owning member sent them), `bucket`.
    pub fills: IntCounterVec,
    /// Objects the shared store could not take (kept on this disk only).
    pub bucket_failures: IntCounter,
    /// Cluster members that answer (this one included).
    pub cluster_members: IntGauge,
    /// Requests this instance sent to the owner of what was asked, instead of the upstream.
    pub peer_forwarded: IntCounter,
    /// Requests to an owner that failed, and went to the upstream instead.
    pub peer_fallbacks: IntCounter,
    /// Requests this instance answered for other members.
    pub peer_served: IntCounter,
}

pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// How often the status page's history is sampled, and how much of it is kept (an hour).
pub const SAMPLE_EVERY: Duration = Duration::from_secs(10);
const SAMPLES: usize = 360;

/// Counters at one moment, for the status page's history.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sample {
    pub at: u64,
    pub hits: u64,
    pub misses: u64,
    pub bytes_from_cache: u64,
    pub bytes_fetched: u64,
}

/// Requests and bytes per repository (`registry/name`), for "top repositories".
#[derive(Default)]
pub struct RepoUse {
    pub requests: AtomicU64,
    pub bytes: AtomicU64,
}

/// What the status page shows beyond the metrics: history and per-repository use.
pub struct Activity {
    history: Mutex<VecDeque<Sample>>,
    repos: moka::sync::Cache<String, Arc<RepoUse>>,
}

pub static ACTIVITY: LazyLock<Activity> = LazyLock::new(|| Activity {
    history: Mutex::new(VecDeque::with_capacity(SAMPLES)),
    repos: moka::sync::Cache::new(10_000),
});

impl Activity {
    /// Count one request for `repo` that sent `bytes`.
    pub fn used(&self, repo: &str, bytes: u64) {
        let u = self
            .repos
            .get_with_by_ref(repo, || Arc::new(RepoUse::default()));
        u.requests.fetch_add(1, Ordering::Relaxed);
        u.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// The `n` repositories with the most requests: (name, requests, bytes).
    pub fn top(&self, n: usize) -> Vec<(String, u64, u64)> {
        let mut all: Vec<_> = self
            .repos
            .iter()
            .map(|(k, u)| {
                let r = u.requests.load(Ordering::Relaxed);
                ((*k).clone(), r, u.bytes.load(Ordering::Relaxed))
            })
            .collect();
        all.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        all.truncate(n);
        all
    }

    /// Record the counters now (the admin listener calls this every [`SAMPLE_EVERY`]).
    pub fn sample(&self) {
        let m = &*METRICS;
        let hits = by_outcome(&m.outcomes, Outcome::is_hit);
        let misses = by_outcome(&m.outcomes, Outcome::is_miss);
        let bytes_from_cache = by_outcome(&m.bytes_served, Outcome::is_hit);
        let at = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut h = self.history.lock().expect("history");
        if h.len() == SAMPLES {
            h.pop_front();
        }
        h.push_back(Sample {
            at,
            hits,
            misses,
            bytes_from_cache,
            bytes_fetched: m.bytes_fetched.get(),
        });
    }

    pub fn history(&self) -> Vec<Sample> {
        self.history
            .lock()
            .expect("history")
            .iter()
            .copied()
            .collect()
    }
}

impl Metrics {
    fn new() -> Metrics {
        let registry = Registry::new();
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            registered(&registry, IntCounterVec::new(Opts::new(name, help), labels))
        };
        let counter = |name: &str, help: &str| registered(&registry, IntCounter::new(name, help));
        let gauge = |name: &str, help: &str| registered(&registry, IntGauge::new(name, help));
        Metrics {
            requests: counter_vec(
                "wharf_requests_total",
                "Registry API requests by route and status",
                &["route", "status"],
            ),
            outcomes: counter_vec(
                "wharf_cache_requests_total",
                "Requests by cache outcome: hit-memory, hit-disk, hit-shared (from the bucket), presigned (sent to the bucket), miss, coalesced (shared a fetch), stale, upstream (passed through), local",
                &["outcome"],
            ),
            bytes_served: counter_vec(
                "wharf_served_bytes_total",
                "Body bytes sent to clients, by cache outcome",
                &["outcome"],
            ),
            bytes_fetched: counter(
                "wharf_upstream_fetched_bytes_total",
                "Manifest and blob bytes received from upstreams",
            ),
            upstream_requests: counter_vec(
                "wharf_upstream_requests_total",
                "Requests sent to upstreams, by registry and kind",
                &["registry", "kind"],
            ),
            ratelimit_remaining: registered(
                &registry,
                IntGaugeVec::new(
                    Opts::new(
                        "wharf_upstream_ratelimit_remaining",
                        "The last ratelimit-remaining an upstream announced",
                    ),
                    &["registry"],
                ),
            ),
            fills_in_flight: gauge("wharf_fills_in_flight", "Blob downloads in progress"),
            connections: gauge("wharf_connections", "Client connections open"),
            connections_refused: counter(
                "wharf_connections_refused_total",
                "Connections turned away (503) because max_connections were all busy",
            ),
            connections_evicted: counter(
                "wharf_connections_evicted_total",
                "Idle connections closed to make room for new ones at max_connections",
            ),
            orphan_fills: gauge(
                "wharf_orphan_fills",
                "Blob downloads in progress that no client waits for",
            ),
            fills_refused: counter(
                "wharf_fills_refused_total",
                "Cold misses answered 503 because max_fills downloads were running",
            ),
            fills_abandoned: counter(
                "wharf_fills_abandoned_total",
                "Downloads no client waited for, given up (too many, or stalled)",
            ),
            verification_failures: counter(
                "wharf_verification_failures_total",
                "Upstream content that did not match its digest (never cached)",
            ),
            bucket_writes: counter(
                "wharf_bucket_written_bytes_total",
                "Bytes this instance put into the shared store",
            ),
            bucket_reads: counter(
                "wharf_bucket_read_bytes_total",
                "Bytes this instance read from the shared store",
            ),
            fills: counter_vec(
                "wharf_fills_total",
                "Blobs stored by a fill, by its source: upstream, member (the owner sent them), bucket",
                &["source"],
            ),
            bucket_failures: counter(
                "wharf_bucket_write_failures_total",
                "Objects the shared store could not take (kept on this disk only)",
            ),
            cluster_members: gauge(
                "wharf_cluster_members_live",
                "Cluster members that answer, this one included",
            ),
            peer_forwarded: counter(
                "wharf_peer_forwarded_total",
                "Requests sent to the member owning what was asked, instead of the upstream",
            ),
            peer_fallbacks: counter(
                "wharf_peer_fallbacks_total",
                "Requests to an owning member that failed and went to the upstream instead",
            ),
            peer_served: counter(
                "wharf_peer_served_total",
                "Requests answered for other cluster members",
            ),
            registry,
        }
    }

    /// Register a metric owned elsewhere (the store's size and evictions). A second one of the
    /// same name (a second store in one process, as in tests) is left out.
    pub fn register(&self, c: Box<dyn prometheus::core::Collector>) {
        let _ = self.registry.register(c);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding");
        String::from_utf8(out).expect("prometheus text is UTF-8")
    }
}

/// Register one of wharf's own metrics and keep its handle (they are all valid and unique).
fn registered<M>(registry: &Registry, metric: prometheus::Result<M>) -> M
where
    M: prometheus::core::Collector + Clone + 'static,
{
    let m = metric.expect("metric");
    registry
        .register(Box::new(m.clone()))
        .expect("unique metric");
    m
}

/// The sum of an outcome-labelled counter over the outcomes `pick` chooses.
pub fn by_outcome(counters: &IntCounterVec, pick: fn(Outcome) -> bool) -> u64 {
    Outcome::ALL
        .into_iter()
        .filter(|o| pick(*o))
        .map(|o| counters.with_label_values(&[o.as_str()]).get())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_what_was_recorded() {
        METRICS
            .outcomes
            .with_label_values(&["hit-memory"])
            .inc_by(3);
        let text = METRICS.render();
        assert!(
            text.contains("wharf_cache_requests_total{outcome=\"hit-memory\"} 3"),
            "{text}"
        );
        assert!(text.contains("# HELP wharf_fills_in_flight"));
    }
}
