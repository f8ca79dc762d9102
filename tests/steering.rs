//! The upstream cannot steer wharf: its token realm gets wharf's credentials only where it is
//! safe to send them, its redirects are followed for blobs only and never into another host's
//! internal network, and what it calls a manifest must be one. 127.0.0.2 stands for "another
//! host" throughout.

mod common;

use bytes::Bytes;
use common::hub::{pseudo_random, DOCKER_MANIFEST};
use common::liar::{Liar, Lie};
use common::{client, header, Wharf};

const CREDENTIALS: &str = "[upstreams.\"docker.io\"]\nusername = \"u\"\npassword = \"secret\"\n";

async fn status(w: &Wharf, path: &str) -> u16 {
    client()
        .get(w.url(path))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn credentials_go_only_to_a_realm_on_https_or_the_upstreams_own_host() {
    let upstream = Liar::start().await;
    upstream.add_image("private/app", "1", &[pseudo_random(1, 10)], Lie::Honest);
    *upstream.state.tokens.lock().unwrap() = Some(None);
    // the token service it names is on another host, over plain HTTP
    let elsewhere = Liar::start_on("127.0.0.2").await;
    *upstream.state.realm.lock().unwrap() = Some(format!("{}/token", elsewhere.url()));
    let w = Wharf::start(&upstream.url(), CREDENTIALS).await;
    assert_eq!(
        status(&w, "/v2/private/app/manifests/1").await,
        200,
        "an anonymous token works"
    );
    assert!(elsewhere.requests("token") >= 1);
    assert_eq!(
        elsewhere
            .state
            .token_credentials
            .load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the password went to a plain-HTTP realm on another host"
    );
    assert!(w.log().contains("anonymous token"), "{}", w.log());

    // listed for this upstream in the config: it may have them
    let listed = format!("{CREDENTIALS}auth_hosts = [\"127.0.0.2\"]\n");
    let w = Wharf::start(&upstream.url(), &listed).await;
    assert_eq!(status(&w, "/v2/private/app/manifests/1").await, 200);
    assert!(
        elsewhere
            .state
            .token_credentials
            .load(std::sync::atomic::Ordering::SeqCst)
            >= 1
    );

    // the upstream's own host (another port) is trusted as the upstream is
    let own = Liar::start().await;
    *upstream.state.realm.lock().unwrap() = Some(format!("{}/token", own.url()));
    let w = Wharf::start(&upstream.url(), CREDENTIALS).await;
    assert_eq!(status(&w, "/v2/private/app/manifests/1").await, 200);
    assert!(
        own.state
            .token_credentials
            .load(std::sync::atomic::Ordering::SeqCst)
            >= 1
    );
}

/// What to authenticate with is learnt per request from the upstream: a challenge wharf could
/// not answer (its token service down, say) fails that request, not every later one.
#[tokio::test]
async fn a_challenge_that_cannot_be_answered_is_not_kept() {
    let upstream = Liar::start().await;
    upstream.add_image("private/app", "1", &[pseudo_random(3, 10)], Lie::Honest);
    *upstream.state.tokens.lock().unwrap() = Some(None);
    // the token service it names first is down
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let gone = dead.local_addr().unwrap();
    drop(dead);
    *upstream.state.realm.lock().unwrap() = Some(format!("http://{gone}/token"));
    let w = Wharf::start(&upstream.url(), CREDENTIALS).await;
    assert_eq!(status(&w, "/v2/private/app/manifests/1").await, 502);
    // the upstream names a working one now
    *upstream.state.realm.lock().unwrap() = None;
    assert_eq!(
        status(&w, "/v2/private/app/manifests/1").await,
        200,
        "{}",
        w.log()
    );
}

#[tokio::test]
async fn redirects_are_followed_for_blobs_only_and_never_into_another_hosts_service() {
    let layer = pseudo_random(2, 5000);
    let upstream = Liar::start().await;
    let (manifest, layers) =
        upstream.add_image("lib/moved", "1", std::slice::from_ref(&layer), Lie::Honest);
    // "another host's internal service", holding the same content
    let internal = Liar::start_on("127.0.0.2").await;
    internal.add_image("lib/moved", "1", std::slice::from_ref(&layer), Lie::Honest);
    let w = Wharf::start(&upstream.url(), "").await;

    *upstream.state.manifest_redirect.lock().unwrap() = Some(internal.url());
    assert_eq!(
        status(&w, &format!("/v2/lib/moved/manifests/{manifest}")).await,
        502
    );
    assert_eq!(status(&w, "/v2/lib/moved/manifests/1").await, 502);
    assert_eq!(
        internal.requests("manifest"),
        0,
        "a manifest followed a redirect to another host"
    );
    *upstream.state.manifest_redirect.lock().unwrap() = None;

    *upstream.state.blob_redirect.lock().unwrap() = Some(internal.url());
    let blob = format!("/v2/lib/moved/blobs/{}", layers[0]);
    assert_eq!(status(&w, &blob).await, 502);
    assert_eq!(
        internal.requests("blob"),
        0,
        "a blob followed a redirect into an internal service"
    );

    // the upstream's own host (a CDN on another port) is followed, and told no Referer
    let cdn = Liar::start().await;
    cdn.add_image("lib/moved", "1", std::slice::from_ref(&layer), Lie::Honest);
    *upstream.state.blob_redirect.lock().unwrap() = Some(cdn.url());
    let r = client().get(w.url(&blob)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), layer);
    assert_eq!(cdn.requests("blob"), 1);
    assert_eq!(
        cdn.state.referers.load(std::sync::atomic::Ordering::SeqCst),
        0
    );
}

#[tokio::test]
async fn what_the_upstream_calls_a_manifest_must_be_one() {
    let upstream = Liar::start().await;
    upstream.add_image("lib/typed", "1", &[pseudo_random(3, 10)], Lie::Honest);
    let w = Wharf::start(&upstream.url(), "").await;
    *upstream.state.manifest_type.lock().unwrap() = Some("text/html".into());
    assert_eq!(status(&w, "/v2/lib/typed/manifests/1").await, 502);
    *upstream.state.manifest_type.lock().unwrap() = None;
    // a body that names itself something else
    let html = Bytes::from_static(br#"{"schemaVersion":2,"mediaType":"text/html","x":"<script>"}"#);
    upstream.add_manifest("lib/typed", "2", DOCKER_MANIFEST, html);
    assert_eq!(status(&w, "/v2/lib/typed/manifests/2").await, 502);
    assert_eq!(status(&w, "/v2/lib/typed/manifests/1").await, 200);
}

#[tokio::test]
async fn every_response_says_nosniff() {
    let upstream = Liar::start().await;
    let (manifest, layers) =
        upstream.add_image("lib/sniff", "1", &[pseudo_random(4, 10)], Lie::Honest);
    let w = Wharf::start(&upstream.url(), "").await;
    for path in [
        "/v2/".to_owned(),
        format!("/v2/lib/sniff/manifests/{manifest}"),
        format!("/v2/lib/sniff/blobs/{}", layers[0]),
        "/v2/lib/sniff/manifests/nope".to_owned(),
        "/nothing".to_owned(),
    ] {
        let r = client().get(w.url(&path)).send().await.unwrap();
        assert_eq!(header(&r, "x-content-type-options"), "nosniff", "{path}");
    }
    for path in ["/", "/metrics", "/readyz"] {
        let r = client()
            .get(format!("http://{}{path}", w.admin))
            .send()
            .await
            .unwrap();
        assert_eq!(
            header(&r, "x-content-type-options"),
            "nosniff",
            "admin {path}"
        );
    }
}
