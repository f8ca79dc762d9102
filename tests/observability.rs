//! What an operator sees: the admin listener's health endpoints and metrics that move with
//! what wharf does.

mod common;

use common::{client, header as header_of, FakeHub, Faults, Wharf};

#[tokio::test]
async fn health_and_metrics_follow_the_traffic() {
    let hub = FakeHub::start().await;
    let img = hub.add_image("library/obs", "1", 1, &[4000, 3 << 20]);
    let w = Wharf::start(&hub.url(), "").await;
    let c = client();
    for path in ["/healthz", "/readyz"] {
        let r = c
            .get(format!("http://{}{path}", w.admin))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    let outcome = |o: &str| format!("wharf_cache_requests_total{{outcome=\"{o}\"}}");
    let manifest = w.url("/v2/library/obs/manifests/1");
    c.get(&manifest)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(w.metric(&outcome("miss")).await, 1.0);
    assert_eq!(w.metric(&outcome("hit-memory")).await, 0.0);
    c.get(&manifest)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(w.metric(&outcome("hit-memory")).await, 1.0);
    assert_eq!(
        w.metric("wharf_upstream_ratelimit_remaining{registry=\"docker.io\"}")
            .await,
        42.0
    );
    assert_eq!(
        w.metric("wharf_upstream_requests_total{kind=\"token\",registry=\"docker.io\"}")
            .await,
        1.0
    );

    // a blob: one miss, bytes fetched, then a disk hit whose bytes count as served from cache
    let (d, b) = &img.blobs[2];
    let blob = w.url(&format!("/v2/library/obs/blobs/{d}"));
    assert_eq!(
        &c.get(&blob).send().await.unwrap().bytes().await.unwrap(),
        b
    );
    common::eventually(10, "fill done", || async {
        w.metric("wharf_fills_in_flight").await == 0.0
    })
    .await;
    c.get(&blob).send().await.unwrap().bytes().await.unwrap();
    assert_eq!(w.metric(&outcome("hit-disk")).await, 1.0);
    assert!(w.metric("wharf_upstream_fetched_bytes_total").await >= b.len() as f64);
    assert_eq!(
        w.metric("wharf_served_bytes_total{outcome=\"hit-disk\"}")
            .await,
        b.len() as f64
    );
    assert_eq!(
        w.metric("wharf_requests_total{route=\"blob\",status=\"200\"}")
            .await,
        2.0
    );

    // the status page shows it to a person
    let r = c.get(format!("http://{}/", w.admin)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(header_of(&r, "content-type").starts_with("text/html"));
    let page = r.text().await.unwrap();
    for want in [
        "hit ratio",
        "docker.io/library/obs",
        "fills in flight",
        "<svg",
        "42 pulls left",
    ] {
        assert!(page.contains(want), "status page lacks {want:?}");
    }

    // a corrupt upstream body counts as a verification failure
    hub.set_faults(Faults {
        corrupt: true,
        ..Default::default()
    });
    let (d, _) = &img.blobs[1];
    let r = c
        .get(w.url(&format!("/v2/library/obs/blobs/{d}")))
        .send()
        .await
        .unwrap();
    assert!(r.bytes().await.is_err());
    common::eventually(10, "failure recorded", || async {
        w.metric("wharf_verification_failures_total").await == 1.0
    })
    .await;
}
