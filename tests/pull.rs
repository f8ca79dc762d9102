//! The pull path end to end in one process tree: a Hub-like fake upstream (tokens, 401
//! challenges, 307 to a CDN that rejects Authorization) with the real wharf binary in front.

mod common;

use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::hub::{sha256, DOCKER_MANIFEST};
use common::{client, error_code, eventually, header, FakeHub, Faults, HubOptions, Wharf};

#[tokio::test]
async fn manifest_by_tag_and_digest_cold_then_warm() {
    let hub = FakeHub::start().await;
    let img = hub.add_image("library/busybox", "latest", 1, &[1000]);
    let w = Wharf::start(&hub.url(), "").await;
    let c = client();

    let r = c
        .get(w.url("/v2/library/busybox/manifests/latest"))
        .header("Accept", DOCKER_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-wharf-cache"), "miss");
    assert_eq!(header(&r, "content-type"), DOCKER_MANIFEST);
    assert_eq!(header(&r, "docker-content-digest"), img.digest);
    assert_eq!(
        header(&r, "docker-distribution-api-version"),
        "registry/2.0"
    );
    assert_eq!(r.bytes().await.unwrap(), img.manifest);
    assert_eq!(hub.counters().manifest_gets, 1);

    // warm by tag (within TTL: nothing upstream) and by digest
    let r = c
        .get(w.url("/v2/library/busybox/manifests/latest"))
        .header("Accept", DOCKER_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(header(&r, "x-wharf-cache"), "hit-memory");
    assert_eq!(r.bytes().await.unwrap(), img.manifest);
    let r = c
        .get(w.url(&format!("/v2/library/busybox/manifests/{}", img.digest)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-wharf-cache"), "hit-memory");
    assert_eq!(header(&r, "content-type"), DOCKER_MANIFEST);
    assert_eq!(header(&r, "docker-content-digest"), img.digest);
    assert_eq!(header(&r, "etag"), format!("\"{}\"", img.digest));
    assert_eq!(r.bytes().await.unwrap(), img.manifest);
    let n = hub.counters();
    assert_eq!((n.manifest_gets, n.manifest_heads), (1, 0), "{n:?}");

    // HEAD: headers, no body
    let r = c
        .head(w.url("/v2/library/busybox/manifests/latest"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-length"), img.manifest.len().to_string());
    assert_eq!(header(&r, "docker-content-digest"), img.digest);
    assert!(r.bytes().await.unwrap().is_empty());
}

#[tokio::test]
async fn manifest_by_digest_cold_and_from_disk_after_restart() {
    let hub = FakeHub::start().await;
    let img = hub.add_image("me/app", "v1", 2, &[10]);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let c = client();
    let path = format!("/v2/me/app/manifests/{}", img.digest);
    {
        let w = Wharf::start_at(&hub.url(), "", data.clone()).await;
        let r = c.get(w.url(&path)).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "x-wharf-cache"), "miss");
        assert_eq!(r.bytes().await.unwrap(), img.manifest);
        let r = c
            .get(w.url("/v2/me/app/manifests/v1"))
            .send()
            .await
            .unwrap();
        assert_eq!(header(&r, "docker-content-digest"), img.digest);
    }
    let w = Wharf::start_at(&hub.url(), "", data).await;
    let r = c.get(w.url(&path)).send().await.unwrap();
    assert_eq!(header(&r, "x-wharf-cache"), "hit-disk");
    assert_eq!(r.bytes().await.unwrap(), img.manifest);
    // and the tag survived the restart too (its manifest is in memory by now)
    let r = c
        .get(w.url("/v2/me/app/manifests/v1"))
        .send()
        .await
        .unwrap();
    assert_eq!(header(&r, "x-wharf-cache"), "hit-memory");
    assert_eq!(
        hub.counters().manifest_gets,
        2,
        "one GET by digest, one by tag"
    );
}

#[tokio::test]
async fn blobs_cold_warm_head_and_redirect_without_authorization() {
    let hub = FakeHub::start().await;
    // one blob above the memory tier's object limit, one below
    let img = hub.add_image("library/alpine", "3", 3, &[3 << 20, 5000]);
    let w = Wharf::start(&hub.url(), "memory_object_max = 1048576\n").await;
    let c = client();
    for (digest, bytes) in &img.blobs {
        let path = format!("/v2/library/alpine/blobs/{digest}");
        let r = c.get(w.url(&path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{digest}");
        assert_eq!(header(&r, "x-wharf-cache"), "miss");
        assert_eq!(header(&r, "docker-content-digest"), digest);
        assert_eq!(header(&r, "content-length"), bytes.len().to_string());
        assert_eq!(&r.bytes().await.unwrap(), bytes);
        // warm, once the fill has committed
        eventually(10, "blob committed", || async {
            let r = c.get(w.url(&path)).send().await.unwrap();
            header(&r, "x-wharf-cache").starts_with("hit")
        })
        .await;
        let r = c.get(w.url(&path)).send().await.unwrap();
        assert_eq!(&r.bytes().await.unwrap(), bytes);
        let r = c.head(w.url(&path)).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "content-length"), bytes.len().to_string());
        assert!(r.bytes().await.unwrap().is_empty());
        assert_eq!(hub.cdn_fetches(digest), 1);
    }
    let n = hub.counters();
    assert_eq!(
        n.cdn_auth_rejected, 0,
        "Authorization must not reach the CDN"
    );
    // a blob wharf does not have: HEAD asks upstream and fetches nothing
    let extra = hub.add_blob(bytes::Bytes::from_static(b"not pulled"));
    let r = c
        .head(w.url(&format!("/v2/library/alpine/blobs/{extra}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-length"), "10");
    assert_eq!(hub.cdn_fetches(&extra), 0);
}

#[tokio::test]
async fn official_images_map_to_library_and_tokens_are_reused() {
    let hub = FakeHub::start().await;
    let img = hub.add_image("library/redis", "7", 4, &[100, 200, 300]);
    let w = Wharf::start(&hub.url(), "").await;
    let c = client();
    let r = c.get(w.url("/v2/redis/manifests/7")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "docker-content-digest"), img.digest);
    for (d, bytes) in &img.blobs {
        let r = c
            .get(w.url(&format!("/v2/redis/blobs/{d}")))
            .send()
            .await
            .unwrap();
        assert_eq!(&r.bytes().await.unwrap(), bytes);
    }
    let n = hub.counters();
    assert_eq!(n.tokens_issued, 1, "one token for the scope, reused: {n:?}");
    assert_eq!(
        n.unauthorized, 1,
        "only the very first request is challenged: {n:?}"
    );
}

#[tokio::test]
async fn revoked_tokens_are_replaced_and_connections_reused() {
    let hub = FakeHub::start().await;
    let a = hub.add_image("library/a", "1", 17, &[10]);
    let b = hub.add_image("library/b", "1", 18, &[10]);
    let w = Wharf::start(&hub.url(), "").await;
    let c = client();
    let r = c
        .get(w.url("/v2/library/a/manifests/1"))
        .send()
        .await
        .unwrap();
    assert_eq!(header(&r, "docker-content-digest"), a.digest);
    hub.revoke_tokens();
    let r = c
        .get(w.url("/v2/library/a/manifests/2"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        404,
        "a revoked token is replaced, not reported as DENIED"
    );
    for (d, bytes) in a.blobs.iter().chain(&b.blobs) {
        let repo = if a.blobs.iter().any(|(x, _)| x == d) {
            "a"
        } else {
            "b"
        };
        let r = c
            .get(w.url(&format!("/v2/library/{repo}/blobs/{d}")))
            .send()
            .await
            .unwrap();
        assert_eq!(&r.bytes().await.unwrap(), bytes);
    }
    let n = hub.counters();
    assert_eq!(n.tokens_issued, 3, "a, a again after revocation, b: {n:?}");
    assert!(
        n.registry_connections <= 3 && n.registry_requests >= 8,
        "keep-alive: {} connections for {} requests",
        n.registry_connections,
        n.registry_requests
    );
}

#[tokio::test]
async fn range_requests() {
    let hub = FakeHub::start().await;
    let img = hub.add_image("library/r", "1", 5, &[2 << 20]);
    let w = Wharf::start(&hub.url(), "").await;
    let c = client();
    let (d, bytes) = &img.blobs[1];
    let path = format!("/v2/library/r/blobs/{d}");
    // a cold range request fills the blob first, then answers the range
    let r = c
        .get(w.url(&path))
        .header("Range", "bytes=100-199")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(
        header(&r, "content-range"),
        format!("bytes 100-199/{}", bytes.len())
    );
    assert_eq!(r.bytes().await.unwrap(), bytes.slice(100..200));
    let r = c
        .get(w.url(&path))
        .header("Range", "bytes=-10")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.unwrap(), bytes.slice(bytes.len() - 10..));
    let r = c
        .get(w.url(&path))
        .header("Range", format!("bytes={}-", bytes.len()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 416);
    assert_eq!(
        header(&r, "content-range"),
        format!("bytes */{}", bytes.len())
    );
    assert_eq!(error_code(r).await, "RANGE_INVALID");
    // the range fill stored the whole blob, exactly once
    let r = c.get(w.url(&path)).send().await.unwrap();
    assert_eq!(&r.bytes().await.unwrap(), bytes);
    assert_eq!(hub.cdn_fetches(d), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_cold_gets_make_one_upstream_fetch() {
    let hub = FakeHub::start().await;
    let img = hub.add_image("library/big", "1", 6, &[8 << 20]);
    // slow the CDN so that all 50 requests arrive while the fill is running
    hub.set_faults(Faults {
        slow_chunk: Some(Duration::from_millis(2)),
        ..Default::default()
    });
    let w = Wharf::start(&hub.url(), "").await;
    let (d, bytes) = img.blobs[1].clone();
    let url = w.url(&format!("/v2/library/big/blobs/{d}"));
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (c, url) = (client(), url.clone());
        tasks.push(tokio::spawn(async move {
            let r = c.get(&url).send().await.unwrap();
            assert_eq!(r.status(), 200);
            let outcome = header(&r, "x-wharf-cache").to_owned();
            (outcome, sha256(&r.bytes().await.unwrap()))
        }));
    }
    let mut outcomes = Vec::new();
    for t in tasks {
        let (outcome, got) = t.await.unwrap();
        assert_eq!(got, d, "every client gets the right bytes");
        outcomes.push(outcome);
    }
    assert_eq!(hub.cdn_fetches(&d), 1, "outcomes: {outcomes:?}");
    assert_eq!(outcomes.iter().filter(|o| *o == "miss").count(), 1);
    assert_eq!(bytes.len(), 8 << 20);
}

#[tokio::test]
async fn a_fill_outlives_its_client() {
    let hub = FakeHub::start().await;
    let img = hub.add_image("library/slow", "1", 7, &[2 << 20]);
    hub.set_faults(Faults {
        slow_chunk: Some(Duration::from_millis(20)),
        ..Default::default()
    });
    let w = Wharf::start(&hub.url(), "").await;
    let (d, bytes) = img.blobs[1].clone();
    let url = w.url(&format!("/v2/library/slow/blobs/{d}"));
    {
        let mut r = client().get(&url).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let first = r
            .chunk()
            .await
            .unwrap()
            .expect("first bytes arrive before the end");
        assert!(!first.is_empty() && first.len() < bytes.len());
        // dropped here: the client goes away mid-transfer
    }
    let c = client();
    eventually(20, "the abandoned fill is committed", || async {
        let r = c.get(&url).send().await.unwrap();
        header(&r, "x-wharf-cache").starts_with("hit")
    })
    .await;
    let r = c.get(&url).send().await.unwrap();
    assert_eq!(r.bytes().await.unwrap(), bytes);
    assert_eq!(hub.cdn_fetches(&d), 1);
}

async fn assert_cut(c: &reqwest::Client, url: &str) {
    let r = c.get(url).send().await.unwrap();
    common::assert_not_served_whole(r).await;
}

#[tokio::test]
async fn corrupt_or_truncated_upstream_is_cut_and_not_cached() {
    let hub = FakeHub::start().await;
    let img = hub.add_image("library/bad", "1", 8, &[1 << 20, 300_000]);
    let w = Wharf::start(&hub.url(), "").await;
    let c = client();
    let (d1, b1) = img.blobs[1].clone();
    let (d2, b2) = img.blobs[2].clone();
    let url1 = w.url(&format!("/v2/library/bad/blobs/{d1}"));
    let url2 = w.url(&format!("/v2/library/bad/blobs/{d2}"));

    hub.set_faults(Faults {
        corrupt: true,
        ..Default::default()
    });
    assert_cut(&c, &url1).await;
    hub.set_faults(Faults {
        truncate: Some(100_000),
        ..Default::default()
    });
    assert_cut(&c, &url2).await;

    // nothing was cached: with the upstream healthy again both are fetched anew, correctly
    hub.set_faults(Faults::default());
    let r = c.get(&url1).send().await.unwrap();
    assert_eq!(header(&r, "x-wharf-cache"), "miss");
    assert_eq!(r.bytes().await.unwrap(), b1);
    let r = c.get(&url2).send().await.unwrap();
    assert_eq!(header(&r, "x-wharf-cache"), "miss");
    assert_eq!(r.bytes().await.unwrap(), b2);
    assert_eq!(hub.cdn_fetches(&d1), 2);
    assert_eq!(hub.cdn_fetches(&d2), 2);
    // the last two fills are committed (renamed) just after their readers finish
    eventually(10, "failed fills leave no temp files", || async {
        std::fs::read_dir(w.data.join("tmp")).unwrap().count() == 0
    })
    .await;
}

#[tokio::test]
async fn upstream_down_serves_cache_and_fails_cold_misses_fast() {
    let mut hub = FakeHub::start().await;
    let img = hub.add_image("library/down", "1", 9, &[50_000]);
    let other = hub.add_image("library/other", "1", 10, &[50_000]);
    let w = Wharf::start(&hub.url(), "").await;
    let c = client();
    let (d, bytes) = img.blobs[1].clone();
    let blob = w.url(&format!("/v2/library/down/blobs/{d}"));
    let manifest = w.url(&format!("/v2/library/down/manifests/{}", img.digest));
    assert_eq!(
        c.get(&blob).send().await.unwrap().bytes().await.unwrap(),
        bytes
    );
    assert_eq!(c.get(&manifest).send().await.unwrap().status(), 200);
    let tag = w.url("/v2/library/down/manifests/1");
    assert_eq!(c.get(&tag).send().await.unwrap().status(), 200);
    eventually(10, "blob committed", || async {
        let r = c.get(&blob).send().await.unwrap();
        header(&r, "x-wharf-cache").starts_with("hit")
    })
    .await;

    hub.stop();
    let r = c.get(&blob).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), bytes);
    let r = c.get(&manifest).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // within its TTL the tag is served without asking anyone
    let r = c.get(&tag).send().await.unwrap();
    assert_eq!(r.status(), 200);

    let cold = w.url(&format!("/v2/library/other/blobs/{}", other.blobs[1].0));
    let started = std::time::Instant::now();
    let r = c.get(&cold).send().await.unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(header(&r, "content-type"), "application/json");
    assert_eq!(error_code(r).await, "UNAVAILABLE");
    let r = c
        .get(w.url("/v2/library/other/manifests/1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(error_code(r).await, "UNAVAILABLE");
    // "fast" means a refused connection is reported at once, not after the read timeout
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn a_broken_cache_is_reported_as_wharfs_failure_not_the_upstreams() {
    let mut hub = FakeHub::start().await;
    let img = hub.add_image("library/broken", "1", 12, &[10]);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let c = client();
    {
        let w = Wharf::start_at(&hub.url(), "tag_ttl = \"1s\"\n", data.clone()).await;
        let r = c
            .get(w.url("/v2/library/broken/manifests/1"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    // the stored manifest can no longer be read: a directory stands where its file was
    let hex = img.digest.strip_prefix("sha256:").unwrap();
    let stored = data.join("manifests/sha256").join(hex);
    std::fs::remove_file(&stored).unwrap();
    std::fs::create_dir(&stored).unwrap();
    hub.stop();
    let w = Wharf::start_at(&hub.url(), "tag_ttl = \"1s\"\n", data.clone()).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // the tag is past its TTL and the upstream is down: the stale path reads the cache
    for path in [
        "/v2/library/broken/manifests/1".to_owned(),
        format!("/v2/library/broken/manifests/{}", img.digest),
    ] {
        let r = c.get(w.url(&path)).send().await.unwrap();
        assert_eq!(r.status(), 500, "{path}");
        let body = r.text().await.unwrap();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["errors"][0]["code"], "UNKNOWN", "{body}");
        let message = v["errors"][0]["message"].as_str().unwrap();
        assert!(message.contains("cannot read cached manifest"), "{body}");
    }
}

#[tokio::test]
async fn upstream_errors_become_oci_errors() {
    let hub = FakeHub::start().await;
    hub.add_image("library/x", "1", 11, &[10]);
    let w = Wharf::start(&hub.url(), "").await;
    let c = client();
    let r = c
        .get(w.url("/v2/library/x/manifests/nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(r).await, "MANIFEST_UNKNOWN");
    let missing = sha256(b"missing");
    let r = c
        .get(w.url(&format!("/v2/library/x/blobs/{missing}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(r).await, "BLOB_UNKNOWN");
    let r = c
        .head(w.url(&format!("/v2/library/x/blobs/{missing}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    hub.set_faults(Faults {
        status: Some(429),
        ..Default::default()
    });
    let r = c
        .get(w.url("/v2/library/x/manifests/2"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(header(&r, "retry-after"), "7");
    assert_eq!(error_code(r).await, "TOOMANYREQUESTS");
    hub.set_faults(Faults {
        status: Some(500),
        ..Default::default()
    });
    let r = c
        .get(w.url("/v2/library/x/manifests/3"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(error_code(r).await, "UNAVAILABLE");
}

#[tokio::test]
async fn writes_and_bad_input_are_refused_with_oci_errors() {
    let hub = FakeHub::start().await;
    let w = Wharf::start(&hub.url(), "").await;
    let c = client();
    for (method, path) in [
        ("PUT", "/v2/library/x/manifests/latest"),
        ("POST", "/v2/library/x/blobs/uploads/"),
        ("PATCH", "/v2/library/x/blobs/uploads/abc"),
        ("DELETE", "/v2/library/x/manifests/latest"),
    ] {
        let r = c
            .request(method.parse().unwrap(), w.url(path))
            .body("data")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 405, "{method} {path}");
        assert_eq!(error_code(r).await, "UNSUPPORTED");
    }
    for (path, code) in [
        ("/v2/Upper/manifests/latest", "NAME_INVALID"),
        ("/v2/a/blobs/sha256:1234", "DIGEST_INVALID"),
        ("/v2/a/manifests/sha256:zz", "DIGEST_INVALID"),
    ] {
        let r = c.get(w.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 400, "{path}");
        assert_eq!(error_code(r).await, code, "{path}");
    }
    // a reference that is neither a tag nor a digest names no manifest (conformance: 404)
    for path in [
        "/v2/a/manifests/-tag",
        "/v2/a/manifests/.INVALID_MANIFEST_NAME",
    ] {
        let r = c.get(w.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 404, "{path}");
        assert_eq!(error_code(r).await, "MANIFEST_UNKNOWN", "{path}");
        let r = c.head(w.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 404, "HEAD {path}");
    }
    // not even HTTP
    let mut s = tokio::net::TcpStream::connect(&w.addr).await.unwrap();
    s.write_all(b"GARBAGE\r\n\r\n").await.unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    assert!(
        answer
            .ends_with(r#"{"errors":[{"code":"UNSUPPORTED","message":"malformed HTTP request"}]}"#),
        "{answer}"
    );
    assert_eq!(
        hub.counters().registry_requests,
        0,
        "bad input never goes upstream"
    );
}

#[tokio::test]
async fn clients_asking_for_an_expired_tag_at_once_share_one_revalidation() {
    let hub = FakeHub::start().await;
    let v1 = hub.add_image("library/t", "latest", 14, &[10]);
    let w = Wharf::start(&hub.url(), "tag_ttl = \"1s\"\n").await;
    let c = client();
    let get = || async {
        let r = c
            .get(w.url("/v2/library/t/manifests/latest"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        header(&r, "docker-content-digest").to_owned()
    };
    assert_eq!(get().await, v1.digest);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // the upstream takes its time to answer: every client arrives while the HEAD is out
    hub.set_faults(Faults {
        manifest_delay: Some(Duration::from_millis(500)),
        ..Default::default()
    });
    let all = futures_util::future::join_all((0..20).map(|_| get())).await;
    assert!(all.iter().all(|d| *d == v1.digest));
    let n = hub.counters();
    assert_eq!(
        (n.manifest_gets, n.manifest_heads),
        (1, 1),
        "one HEAD for 20 clients: {n:?}"
    );
}

#[tokio::test]
async fn tag_ttl_then_head_revalidation_then_new_digest() {
    let hub = FakeHub::start().await;
    let v1 = hub.add_image("library/t", "latest", 12, &[10]);
    let w = Wharf::start(&hub.url(), "tag_ttl = \"1s\"\n").await;
    let c = client();
    let get = || async {
        let r = c
            .get(w.url("/v2/library/t/manifests/latest"))
            .send()
            .await
            .unwrap();
        header(&r, "docker-content-digest").to_owned()
    };
    assert_eq!(get().await, v1.digest);
    assert_eq!(get().await, v1.digest);
    assert_eq!(
        hub.counters().manifest_heads,
        0,
        "within the TTL nothing goes upstream"
    );
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(get().await, v1.digest);
    let n = hub.counters();
    assert_eq!(
        (n.manifest_gets, n.manifest_heads),
        (1, 1),
        "revalidated by HEAD: {n:?}"
    );

    // the tag moves upstream: after the TTL wharf sees it
    let v2 = hub.add_image("library/t", "latest", 13, &[10]);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(get().await, v2.digest);
    assert_eq!(hub.counters().manifest_gets, 2);
}

#[tokio::test]
async fn accept_star_alone_asks_the_upstream_for_every_manifest_type() {
    let hub = FakeHub::start().await;
    let img = hub.add_image("library/curl", "1", 20, &[10]);
    let w = Wharf::start(&hub.url(), "").await;
    let r = client()
        .get(w.url("/v2/library/curl/manifests/1"))
        .header("Accept", "*/*")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "docker-content-digest"), img.digest);
    let sent = hub.counters().manifest_accepts;
    assert_eq!(sent.len(), 1, "{sent:?}");
    for t in [
        DOCKER_MANIFEST,
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
    ] {
        assert!(sent[0].contains(t), "{t} missing from {sent:?}");
    }
    assert!(!sent[0].contains("*/*"), "{sent:?}");
}

#[tokio::test]
async fn tags_list_passes_through() {
    let hub = FakeHub::start().await;
    hub.add_image("library/l", "a", 14, &[1]);
    hub.add_image("library/l", "b", 15, &[1]);
    let w = Wharf::start(&hub.url(), "").await;
    let r = client()
        .get(w.url("/v2/l/tags/list?n=10"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-wharf-cache"), "upstream");
    let v: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(v["tags"], serde_json::json!(["a", "b"]));
}

#[tokio::test]
async fn every_response_says_how_it_was_answered() {
    let hub = FakeHub::start().await;
    let w = Wharf::start(&hub.url(), "").await;
    let c = client();
    let r = c.get(w.url("/v2/")).send().await.unwrap();
    assert_eq!(
        (r.status().as_u16(), header(&r, "x-wharf-cache")),
        (200, "local")
    );
    let r = c.get(w.url("/v2/x/nonsense")).send().await.unwrap();
    assert_eq!(
        (r.status().as_u16(), header(&r, "x-wharf-cache")),
        (404, "local")
    );
    let r = c.delete(w.url("/v2/x/manifests/1")).send().await.unwrap();
    assert_eq!(header(&r, "x-wharf-cache"), "local");
    let r = c
        .get(w.url("/v2/x/manifests/1?ns=elsewhere.example"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        (r.status().as_u16(), header(&r, "x-wharf-cache")),
        (403, "local")
    );
}

#[tokio::test]
async fn credentials_for_token_and_basic_upstreams() {
    let user = Some(("alice".to_owned(), "s3cret".to_owned()));
    let creds = "[upstreams.\"docker.io\"]\nusername = \"alice\"\npassword = \"s3cret\"\n";
    for basic_only in [false, true] {
        let hub = FakeHub::start_with(HubOptions {
            user: user.clone(),
            basic_only,
            ..Default::default()
        })
        .await;
        let img = hub.add_image("team/app", "1", 16, &[100]);
        let c = client();
        let w = Wharf::start(&hub.url(), creds).await;
        let r = c
            .get(w.url("/v2/team/app/manifests/1"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "basic_only={basic_only}");
        let (d, b) = &img.blobs[1];
        let r = c
            .get(w.url(&format!("/v2/team/app/blobs/{d}")))
            .send()
            .await
            .unwrap();
        assert_eq!(&r.bytes().await.unwrap(), b, "basic_only={basic_only}");
        assert_eq!(hub.counters().cdn_auth_rejected, 0);
        // without credentials the upstream's refusal is reported, not hidden
        let anon = Wharf::start(&hub.url(), "").await;
        let r = c
            .get(anon.url("/v2/team/app/manifests/1"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "basic_only={basic_only}");
        assert_eq!(error_code(r).await, "DENIED");
    }
}

#[tokio::test]
async fn tls_upstream_is_trusted_through_an_extra_ca_file_only() {
    let hub = FakeHub::start_with(HubOptions {
        tls: true,
        ..Default::default()
    })
    .await;
    let img = hub.add_image("library/secure", "1", 19, &[1000]);
    let ca = hub.ca_file.clone().unwrap();
    let c = client();
    let trusting = Wharf::start(
        &hub.url(),
        &format!(
            "[upstreams.\"docker.io\"]\nca_file = {:?}\n",
            ca.display().to_string()
        ),
    )
    .await;
    let r = c
        .get(trusting.url("/v2/library/secure/manifests/1"))
        .send()
        .await
        .unwrap();
    let (status, digest) = (r.status(), header(&r, "docker-content-digest").to_owned());
    let manifest = r.bytes().await.unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&manifest));
    assert_eq!(digest, img.digest);
    let (d, b) = &img.blobs[1];
    let r = c
        .get(trusting.url(&format!("/v2/library/secure/blobs/{d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(&r.bytes().await.unwrap(), b);

    // the system's roots alone do not know the test CA: refused, with the reason
    let plain = Wharf::start(&hub.url(), "").await;
    let r = c
        .get(plain.url("/v2/library/secure/manifests/1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    let body = String::from_utf8(r.bytes().await.unwrap().to_vec()).unwrap();
    assert!(
        body.contains("UNAVAILABLE") && body.to_lowercase().contains("certificate"),
        "{body}"
    );
}
