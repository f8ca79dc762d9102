//! wharf against an upstream that lies (tests/common/liar.rs): whatever it sends, a client never
//! gets wrong bytes as a complete response, nothing wrong is cached, and nothing hangs.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::hub::pseudo_random;
use common::liar::{Liar, Lie};
use common::{client, error_code, eventually, header, Wharf};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn tmp_files(w: &Wharf) -> usize {
    std::fs::read_dir(w.data.join("tmp")).map_or(0, |d| d.count())
}

/// GET `url`: the status, and the body or `None` if the transfer was cut.
async fn get(url: &str) -> (u16, Option<Bytes>) {
    let r = client().get(url).send().await.unwrap();
    (r.status().as_u16(), r.bytes().await.ok())
}

#[tokio::test]
async fn a_body_cut_short_without_a_length_is_never_a_complete_response() {
    let liar = Liar::start().await;
    let w = Wharf::start(&liar.url(), "").await;
    for (i, lie) in [Lie::ChunkedHalf, Lie::CloseDelimitedHalf]
        .into_iter()
        .enumerate()
    {
        let data = pseudo_random(100 + i as u64, 3 << 20);
        let d = liar.add_blob(data.clone(), lie.clone());
        let url = w.url(&format!("/v2/lies/blob/blobs/{d}"));
        let (status, body) = get(&url).await;
        assert_eq!(
            status, 200,
            "{lie:?}: the header goes out before the end is known"
        );
        assert!(
            body.is_none(),
            "{lie:?}: half a body must reach the client as a cut transfer, not a complete one"
        );
        // nothing was cached: told the truth, wharf fetches it again and gets it right
        liar.set_lie(&d, Lie::Honest);
        let (status, body) = get(&url).await;
        assert_eq!((status, body.as_deref()), (200, Some(&data[..])), "{lie:?}");
    }
    eventually(10, "no temp files left", || async { tmp_files(&w) == 0 }).await;
}

#[tokio::test]
async fn an_empty_body_is_refused_for_any_blob_but_the_empty_one() {
    let liar = Liar::start().await;
    let w = Wharf::start(&liar.url(), "").await;
    // with nothing to hold back, an empty body would be a complete (wrong) answer at once
    let d = liar.add_blob(pseudo_random(120, 1000), Lie::Claims(0));
    let r = client()
        .get(w.url(&format!("/v2/lies/empty/blobs/{d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(error_code(r).await, "UNAVAILABLE");
    // nor is a success without a body (204) a blob
    liar.set_lie(&d, Lie::NoContent);
    let r = client()
        .get(w.url(&format!("/v2/lies/empty/blobs/{d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    // the empty blob is empty
    let e = liar.add_blob(Bytes::new(), Lie::Honest);
    let r = client()
        .get(w.url(&format!("/v2/lies/empty/blobs/{e}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-length"), "0");
    assert!(r.bytes().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_manifest_elsewhere_that_lies_about_a_layer_size_harms_only_its_own_repository() {
    use common::hub::DOCKER_MANIFEST;
    let hub = common::FakeHub::start().await;
    let good = hub.add_image("library/good", "1", 121, &[50_000]);
    let ((config, cbytes), (layer, lbytes)) = (&good.blobs[0], &good.blobs[1]);
    let evil = Bytes::from(format!(
        r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}","config":{{"mediaType":"application/vnd.docker.container.image.v1+json","size":{},"digest":"{config}"}},"layers":[{{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","size":10,"digest":"{layer}"}}]}}"#,
        cbytes.len()
    ));
    hub.add_manifest("evil/x", Some("1"), DOCKER_MANIFEST, evil);
    let w = Wharf::start(&hub.url(), "").await;
    assert_eq!(get(&w.url("/v2/evil/x/manifests/1")).await.0, 200);
    assert_eq!(get(&w.url("/v2/library/good/manifests/1")).await.0, 200);
    // evil's manifest gave the layer 10 bytes: a fill for evil/x is refused...
    let r = client()
        .get(w.url(&format!("/v2/evil/x/blobs/{layer}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    // ...and the honest repository gets its layer
    let (status, body) = get(&w.url(&format!("/v2/library/good/blobs/{layer}"))).await;
    assert_eq!((status, body.as_deref()), (200, Some(&lbytes[..])));
}

#[tokio::test]
async fn a_redirect_is_followed_to_its_lie_and_a_redirect_loop_ends_at_once() {
    let liar = Liar::start().await;
    let w = Wharf::start(&liar.url(), "").await;
    let data = pseudo_random(110, 1 << 20);
    let d = liar.add_blob(data.clone(), Lie::Redirect(Box::new(Lie::ChunkedHalf)));
    let url = w.url(&format!("/v2/lies/moved/blobs/{d}"));
    let (status, body) = get(&url).await;
    assert_eq!(status, 200);
    assert!(
        body.is_none(),
        "half a body behind a redirect is still a cut"
    );
    liar.set_lie(&d, Lie::Redirect(Box::new(Lie::Honest)));
    let (_, body) = get(&url).await;
    assert_eq!(body.as_deref(), Some(&data[..]));
    assert!(liar.requests("cdn") >= 2);

    let d = liar.add_blob(pseudo_random(111, 1000), Lie::RedirectLoop);
    let started = Instant::now();
    let r = client()
        .get(w.url(&format!("/v2/lies/loop/blobs/{d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(error_code(r).await, "UNAVAILABLE");
    assert!(started.elapsed() < Duration::from_secs(5));
    eventually(10, "no temp files left", || async { tmp_files(&w) == 0 }).await;
}

#[tokio::test]
async fn bodies_without_a_length_are_sent_chunked_or_whole_and_cached() {
    let liar = Liar::start().await;
    let w = Wharf::start(&liar.url(), "").await;
    for (i, lie) in [Lie::Chunked, Lie::CloseDelimited].into_iter().enumerate() {
        let data = pseudo_random(200 + i as u64, 2 << 20);
        let d = liar.add_blob(data.clone(), lie.clone());
        let url = w.url(&format!("/v2/lies/blob/blobs/{d}"));
        let r = client().get(&url).send().await.unwrap();
        assert_eq!(r.status(), 200, "{lie:?}");
        assert_eq!(header(&r, "transfer-encoding"), "chunked", "{lie:?}");
        assert_eq!(r.bytes().await.unwrap(), data, "{lie:?}");
        eventually(10, "committed", || async {
            let r = client().get(&url).send().await.unwrap();
            header(&r, "x-wharf-cache").starts_with("hit")
        })
        .await;
    }
    // an HTTP/1.0 client cannot take chunks: it gets the whole verified blob with its length
    let data = pseudo_random(202, 1 << 20);
    let d = liar.add_blob(data.clone(), Lie::Chunked);
    let mut s = tokio::net::TcpStream::connect(&w.addr).await.unwrap();
    s.write_all(format!("GET /v2/lies/old/blobs/{d} HTTP/1.0\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).await.unwrap();
    let split = answer.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&answer[..split]).to_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        head.contains(&format!("content-length: {}", data.len())),
        "{head}"
    );
    assert_eq!(&answer[split + 4..], &data[..]);
}

#[tokio::test]
async fn an_endless_body_is_abandoned_at_the_size_limit_and_nothing_is_kept() {
    let liar = Liar::start().await;
    let w = Wharf::start(&liar.url(), "max_blob_size = 4194304\n").await;
    let d = liar.add_blob(pseudo_random(300, 1 << 20), Lie::Endless);
    let started = Instant::now();
    let (status, body) = get(&w.url(&format!("/v2/lies/endless/blobs/{d}"))).await;
    assert_eq!(status, 200);
    assert!(body.is_none(), "an endless body is cut, never completed");
    assert!(started.elapsed() < Duration::from_secs(15));
    eventually(10, "the temp file is removed", || async {
        tmp_files(&w) == 0
    })
    .await;
    eventually(10, "the upstream connection is dropped", || async {
        liar.open_connections() == 0
    })
    .await;
    // a length over the limit is refused before anything is sent or written: by this mirror's
    // rule, so a 403 no client retries
    let d = liar.add_blob(pseudo_random(301, 10), Lie::Claims(1 << 40));
    let r = client()
        .get(w.url(&format!("/v2/lies/huge/blobs/{d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let body = r.text().await.unwrap();
    assert!(
        body.contains("DENIED") && body.contains("max_blob_size"),
        "{body}"
    );
    assert_eq!(tmp_files(&w), 0);
}

#[tokio::test]
async fn the_manifest_descriptor_gives_the_length_and_bounds_the_body() {
    let liar = Liar::start().await;
    let w = Wharf::start(&liar.url(), "").await;
    let layers = [pseudo_random(400, 1 << 20), pseudo_random(401, 1 << 20)];
    let (_, digests) = liar.add_image("lies/described", "1", &layers, Lie::Chunked);
    assert_eq!(get(&w.url("/v2/lies/described/manifests/1")).await.0, 200);
    // the upstream sends no length, but the manifest said how long the layer is
    let r = client()
        .get(w.url(&format!("/v2/lies/described/blobs/{}", digests[0])))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-length"), (1 << 20).to_string());
    assert_eq!(r.bytes().await.unwrap(), layers[0]);
    // more bytes than the descriptor says: cut, not cached
    liar.set_lie(&digests[1], Lie::Longer(1000));
    let url = w.url(&format!("/v2/lies/described/blobs/{}", digests[1]));
    let (status, body) = get(&url).await;
    assert_eq!(status, 200);
    assert!(body.is_none(), "a body longer than its descriptor is cut");
    liar.set_lie(&digests[1], Lie::Honest);
    let (_, body) = get(&url).await;
    assert_eq!(body.as_deref(), Some(&layers[1][..]));
    // a declared length that contradicts the descriptor is refused before any header
    let layer = pseudo_random(402, 1000);
    let (_, d) = liar.add_image(
        "lies/contradicted",
        "1",
        std::slice::from_ref(&layer),
        Lie::Claims(2000),
    );
    assert_eq!(
        get(&w.url("/v2/lies/contradicted/manifests/1")).await.0,
        200
    );
    let r = client()
        .get(w.url(&format!("/v2/lies/contradicted/blobs/{}", d[0])))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(error_code(r).await, "UNAVAILABLE");
}

#[tokio::test]
async fn manifest_and_token_fetches_have_an_overall_deadline() {
    let liar = Liar::start().await;
    liar.add_image("lies/slow", "1", &[pseudo_random(500, 10)], Lie::Honest);
    let w = Wharf::start(
        &liar.url(),
        "[upstreams.\"docker.io\"]\nrequest_timeout = \"2s\"\n",
    )
    .await;
    // one byte every 300 ms: every read is prompt, the whole never arrives
    *liar.state.trickle_manifests.lock().unwrap() = Some(Duration::from_millis(300));
    let started = Instant::now();
    let r = client()
        .get(w.url("/v2/lies/slow/manifests/1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 504);
    assert_eq!(error_code(r).await, "UNAVAILABLE");
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(6),
        "a trickled manifest held the client {took:?}"
    );

    *liar.state.trickle_manifests.lock().unwrap() = None;
    *liar.state.tokens.lock().unwrap() = Some(Some(Duration::from_millis(300)));
    let started = Instant::now();
    let r = client()
        .get(w.url("/v2/lies/slow/manifests/1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 504);
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(6),
        "a trickled token held the client {took:?}"
    );
    assert!(liar.requests("token") >= 1);
    // the same upstream, honest again: the pull works
    *liar.state.tokens.lock().unwrap() = Some(None);
    let r = client()
        .get(w.url("/v2/lies/slow/manifests/1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}
