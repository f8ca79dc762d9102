//! What an operator watches: Prometheus metrics for requests, cache tiers, bytes saved, upstream
//! traffic (and Docker Hub's remaining pull allowance), fills in flight and verification
//! failures. One process-wide set, recorded where things happen, exposed by the admin listener.

use std::sync::LazyLock;

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
    /// Content an upstream sent that did not match its digest (never cached).
    pub verification_failures: IntCounter,
}

pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

impl Metrics {
    fn new() -> Metrics {
        let registry = Registry::new();
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        Metrics {
            requests: counter_vec(
                "wharf_requests_total",
                "Registry API requests by route and status",
                &["route", "status"],
            ),
            outcomes: counter_vec(
                "wharf_cache_requests_total",
                "Requests by cache outcome: hit-memory, hit-disk, miss, coalesced (shared a fetch), stale, upstream (passed through), local",
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
            ratelimit_remaining: {
                let g = IntGaugeVec::new(
                    Opts::new(
                        "wharf_upstream_ratelimit_remaining",
                        "The last ratelimit-remaining an upstream announced",
                    ),
                    &["registry"],
                )
                .expect("metric");
                registry.register(Box::new(g.clone())).expect("unique metric");
                g
            },
            fills_in_flight: {
                let g = IntGauge::new("wharf_fills_in_flight", "Blob downloads in progress")
                    .expect("metric");
                registry.register(Box::new(g.clone())).expect("unique metric");
                g
            },
            verification_failures: counter(
                "wharf_verification_failures_total",
                "Upstream content that did not match its digest (never cached)",
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
