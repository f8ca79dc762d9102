//! Many registries through one wharf: routing (containerd's `?ns=`, podman's path prefix, the
//! default), per-registry tags over a shared content store, freshness rules, stale answers while
//! an upstream is down or rate limiting, offline mode, content negotiation, credential sources.

mod common;

use std::time::Duration;

use common::hub::{DOCKER_MANIFEST, OCI_INDEX};
use common::{client, error_code, header, FakeHub, Faults, HubOptions, Wharf};

/// A plain second registry (no auth), configured as `quay.test`.
async fn plain_hub() -> FakeHub {
    FakeHub::start_with(HubOptions {
        anonymous: true,
        ..Default::default()
    })
    .await
}

fn second(hub: &FakeHub) -> String {
    format!("[upstreams.\"quay.test\"]\nurl = \"{}\"\n", hub.url())
}

#[tokio::test]
async fn requests_are_routed_by_ns_by_prefix_or_to_docker_io() {
    let hub = FakeHub::start().await;
    let quay = plain_hub().await;
    let on_hub = hub.add_image("library/app", "1", 1, &[10]);
    let on_quay = quay.add_image("team/app", "1", 2, &[10]);
    let w = Wharf::start(&hub.url(), &second(&quay)).await;
    let c = client();
    let digest = |path: String| {
        let c = c.clone();
        async move {
            let r = c.get(path).send().await.unwrap();
            assert_eq!(r.status(), 200);
            header(&r, "docker-content-digest").to_owned()
        }
    };
    // dockerd: no ns, no prefix -> docker.io (with library/)
    assert_eq!(digest(w.url("/v2/app/manifests/1")).await, on_hub.digest);
    // containerd: ?ns=
    assert_eq!(
        digest(w.url("/v2/library/app/manifests/1?ns=docker.io")).await,
        on_hub.digest
    );
    assert_eq!(
        digest(w.url("/v2/team/app/manifests/1?ns=quay.test")).await,
        on_quay.digest
    );
    // podman / CRI-O: mirror location wharf:5000/quay.test
    assert_eq!(
        digest(w.url("/v2/quay.test/team/app/manifests/1")).await,
        on_quay.digest
    );
    let (d, b) = &on_quay.blobs[1];
    let r = c
        .get(w.url(&format!("/v2/quay.test/team/app/blobs/{d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(&r.bytes().await.unwrap(), b);

    // a registry nobody configured is refused, and nothing is contacted for it
    let before = (hub.counters(), quay.counters());
    for path in [
        "/v2/team/app/manifests/1?ns=evil.example",
        "/v2/team/app/blobs/sha256:0000000000000000000000000000000000000000000000000000000000000000?ns=127.0.0.1:1",
    ] {
        let r = c.get(w.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 403, "{path}");
        assert_eq!(error_code(r).await, "DENIED");
    }
    let after = (hub.counters(), quay.counters());
    assert_eq!(before.0.registry_requests, after.0.registry_requests);
    assert_eq!(before.1.registry_requests, after.1.registry_requests);
    assert_eq!(before.1.registry_connections, after.1.registry_connections);
}

#[tokio::test]
async fn tags_are_per_registry_and_content_is_shared() {
    let hub = FakeHub::start().await;
    let quay = plain_hub().await;
    // the same name and tag on both registries, pointing at different images
    let a = hub.add_image("library/same", "1", 3, &[1000]);
    let b = quay.add_image("library/same", "1", 4, &[1000]);
    // and one blob both registries have
    let shared = bytes::Bytes::from(vec![7u8; 5000]);
    let d = hub.add_blob(shared.clone());
    quay.add_blob(shared.clone());
    let w = Wharf::start(&hub.url(), &second(&quay)).await;
    let c = client();
    let get = |p: &str| c.get(w.url(p)).send();
    let r = get("/v2/library/same/manifests/1?ns=docker.io")
        .await
        .unwrap();
    assert_eq!(header(&r, "docker-content-digest"), a.digest);
    let r = get("/v2/library/same/manifests/1?ns=quay.test")
        .await
        .unwrap();
    assert_eq!(header(&r, "docker-content-digest"), b.digest);
    let r = get(&format!("/v2/library/same/blobs/{d}?ns=docker.io"))
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap(), shared);
    common::eventually(10, "blob committed", || async {
        let r = get(&format!("/v2/library/same/blobs/{d}?ns=quay.test"))
            .await
            .unwrap();
        header(&r, "x-wharf-cache").starts_with("hit")
    })
    .await;
    assert_eq!(hub.cdn_fetches(&d), 1);
    assert_eq!(
        quay.cdn_fetches(&d),
        0,
        "content by digest is shared across registries"
    );
}

#[tokio::test]
async fn ttl_rules_and_negative_ttl() {
    let hub = FakeHub::start().await;
    hub.add_image("library/r", "latest", 5, &[10]);
    hub.add_image("library/r", "v1", 6, &[10]);
    let w = Wharf::start(
        &hub.url(),
        "tag_ttl = \"1h\"\nnegative_ttl = \"1s\"\n[[tag_ttl_rules]]\npattern = \"docker.io/*:latest\"\nttl = \"1s\"\n",
    )
    .await;
    let c = client();
    let get = |tag: &'static str| {
        let c = c.clone();
        let url = w.url(&format!("/v2/library/r/manifests/{tag}"));
        async move { c.get(url).send().await.unwrap().status() }
    };
    assert_eq!(get("latest").await, 200);
    assert_eq!(get("v1").await, 200);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(get("latest").await, 200);
    assert_eq!(get("v1").await, 200);
    assert_eq!(
        hub.counters().manifest_heads,
        1,
        ":latest matched the 1 s rule and was revalidated; v1 has the 1 h TTL"
    );

    // an upstream 404 for a tag is remembered for negative_ttl
    assert_eq!(get("nope").await, 404);
    assert_eq!(get("nope").await, 404);
    assert_eq!(
        hub.counters().manifest_gets,
        3,
        "the second 404 came from wharf"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(get("nope").await, 404);
    assert_eq!(hub.counters().manifest_gets, 4, "and expired");
}

#[tokio::test]
async fn stale_tags_are_served_while_the_upstream_is_down_or_rate_limiting() {
    let mut hub = FakeHub::start().await;
    let img = hub.add_image("library/s", "1", 7, &[10]);
    hub.add_image("library/s", "cold", 8, &[10]);
    let w = Wharf::start(&hub.url(), "tag_ttl = \"1s\"\n").await;
    let c = client();
    let url = w.url("/v2/library/s/manifests/1");
    assert_eq!(c.get(&url).send().await.unwrap().status(), 200);
    tokio::time::sleep(Duration::from_millis(2100)).await;

    // rate limited: stale for what is known, 429 with Retry-After for what is not
    hub.set_faults(Faults {
        status: Some(429),
        ..Default::default()
    });
    let r = c.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-wharf-cache"), "stale");
    assert!(header(&r, "warning").starts_with("110"));
    assert_eq!(header(&r, "docker-content-digest"), img.digest);
    let r = c
        .get(w.url("/v2/library/s/manifests/cold"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(header(&r, "retry-after"), "7");

    // 5xx and then a real outage: still served, however old
    hub.set_faults(Faults {
        status: Some(503),
        ..Default::default()
    });
    let r = c.get(&url).send().await.unwrap();
    assert_eq!(
        (r.status().as_u16(), header(&r, "x-wharf-cache")),
        (200, "stale")
    );
    hub.stop();
    let r = c.get(&url).send().await.unwrap();
    assert_eq!(
        (r.status().as_u16(), header(&r, "x-wharf-cache")),
        (200, "stale")
    );
    let r = c
        .get(w.url("/v2/library/s/manifests/cold"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(error_code(r).await, "UNAVAILABLE");
}

#[tokio::test]
async fn offline_serves_the_cache_and_contacts_nothing() {
    let hub = FakeHub::start().await;
    let img = hub.add_image("library/o", "1", 9, &[2000]);
    hub.add_image("library/o", "2", 10, &[10]);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let c = client();
    {
        let w = Wharf::start_at(&hub.url(), "tag_ttl = \"1s\"\n", data.clone()).await;
        assert_eq!(
            c.get(w.url("/v2/library/o/manifests/1"))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
        for (d, b) in &img.blobs {
            let r = c
                .get(w.url(&format!("/v2/library/o/blobs/{d}")))
                .send()
                .await
                .unwrap();
            assert_eq!(&r.bytes().await.unwrap(), b);
        }
        common::eventually(10, "blobs committed", || async {
            std::fs::read_dir(data.join("tmp")).unwrap().count() == 0
        })
        .await;
    }
    tokio::time::sleep(Duration::from_millis(1100)).await; // past the tag TTL
    let before = hub.counters();
    let w = Wharf::start_at(&hub.url(), "offline = true\ntag_ttl = \"1s\"\n", data).await;
    let r = c
        .get(w.url("/v2/library/o/manifests/1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "docker-content-digest"), img.digest);
    for (d, b) in &img.blobs {
        let r = c
            .get(w.url(&format!("/v2/library/o/blobs/{d}")))
            .send()
            .await
            .unwrap();
        assert_eq!(&r.bytes().await.unwrap(), b);
    }
    let r = c
        .get(w.url("/v2/library/o/tags/list"))
        .send()
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(v["tags"], serde_json::json!(["1"]));
    for path in [
        "/v2/library/o/manifests/2".to_owned(),
        format!(
            "/v2/library/o/blobs/{}",
            common::hub::sha256(b"never pulled")
        ),
    ] {
        let r = c.get(w.url(&path)).send().await.unwrap();
        assert_eq!(r.status(), 404, "{path}");
        let body = String::from_utf8(r.bytes().await.unwrap().to_vec()).unwrap();
        assert!(body.contains("offline"), "{body}");
    }
    let after = hub.counters();
    assert_eq!(
        before.registry_requests, after.registry_requests,
        "offline contacts nothing"
    );
    assert_eq!(before.registry_connections, after.registry_connections);
}

#[tokio::test]
async fn a_client_only_gets_manifest_types_it_accepts() {
    let hub = FakeHub::start().await;
    let img = hub.add_image("library/m", "amd64", 11, &[10]);
    let index = hub.add_index_tag("library/m", "1", &img);
    let w = Wharf::start(&hub.url(), "").await;
    let c = client();
    let get = |accept: &'static str| {
        let c = c.clone();
        let url = w.url("/v2/library/m/manifests/1");
        async move {
            let r = c.get(url).header("Accept", accept).send().await.unwrap();
            (
                r.status().as_u16(),
                header(&r, "content-type").to_owned(),
                header(&r, "docker-content-digest").to_owned(),
                header(&r, "x-wharf-cache").to_owned(),
            )
        }
    };
    let old_docker = get(DOCKER_MANIFEST).await;
    assert_eq!(
        (old_docker.0, &old_docker.1[..], &old_docker.2[..]),
        (200, DOCKER_MANIFEST, &img.digest[..])
    );
    let modern = get("application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json").await;
    assert_eq!(
        (modern.0, &modern.1[..], &modern.2[..]),
        (200, OCI_INDEX, &index[..])
    );
    // both are cached, each for the clients it suits
    assert_eq!(get(DOCKER_MANIFEST).await.3, "hit-memory");
    assert_eq!(
        get(OCI_INDEX).await.2,
        index,
        "an index answers anyone who takes one"
    );
    assert_eq!(hub.counters().manifest_gets, 2);
    let any = get("*/*").await;
    assert_eq!(any.1, OCI_INDEX);
}

/// ECR authenticates with Basic: credentials it refuses send wharf back to the helper, as a
/// token service's refusal does, instead of being reused until the helper's answer expires.
#[tokio::test]
async fn a_basic_upstream_refusing_a_helpers_credentials_asks_the_helper_again() {
    let hub = FakeHub::start_with(HubOptions {
        user: Some(("AWS".into(), "today".into())),
        basic_only: true,
        ..Default::default()
    })
    .await;
    hub.add_image("team/ecr", "1", 16, &[10]);
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "yesterday").unwrap();
    let w = with_helper(&hub, dir.path(), "wharfecr",
        &format!(
            "#!/bin/sh\nread server\nprintf '{{\"Username\":\"AWS\",\"Secret\":\"%s\"}}' \"$(cat {})\"\n",
            secret.display()
        ),
    )
    .await;
    let c = client();
    let r = c
        .get(w.url("/v2/team/ecr/manifests/1"))
        .send()
        .await
        .unwrap();
    assert!(
        r.status().is_client_error(),
        "yesterday's password is refused"
    );
    // the helper has today's now
    std::fs::write(&secret, "today").unwrap();
    let r = c
        .get(w.url("/v2/team/ecr/manifests/1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", w.log());
}

#[tokio::test]
async fn password_file_and_credential_helper_with_an_identity_token() {
    let dir = tempfile::tempdir().unwrap();
    // password_file, re-read on use
    let hub = FakeHub::start_with(HubOptions {
        user: Some(("alice".into(), "from-file".into())),
        ..Default::default()
    })
    .await;
    hub.add_image("team/a", "1", 12, &[10]);
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "from-file\n").unwrap();
    let w = Wharf::start(
        &hub.url(),
        &format!(
            "[upstreams.\"docker.io\"]\nusername = \"alice\"\npassword_file = {:?}\n",
            pw.display().to_string()
        ),
    )
    .await;
    let c = client();
    let r = c.get(w.url("/v2/team/a/manifests/1")).send().await.unwrap();
    assert_eq!(r.status(), 200);

    // a docker-credential helper handing out an identity token, exchanged by OAuth2 POST
    let hub = FakeHub::start_with(HubOptions {
        user: Some(("nobody".into(), "unused".into())),
        refresh_token: Some("rt-123".into()),
        ..Default::default()
    })
    .await;
    hub.add_image("team/b", "1", 13, &[10]);
    let w = with_helper(&hub, dir.path(), "wharftest",
        "#!/bin/sh\nread server\nprintf '{\"ServerURL\":\"%s\",\"Username\":\"<token>\",\"Secret\":\"rt-123\"}' \"$server\"\n",
    )
    .await;
    let r = c.get(w.url("/v2/team/b/manifests/1")).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", w.log());
    assert_eq!(hub.counters().tokens_issued, 1);

    // a token service that only takes the OAuth2 form gets the password grant
    let hub = FakeHub::start_with(HubOptions {
        user: Some(("carol".into(), "pw".into())),
        post_only: true,
        ..Default::default()
    })
    .await;
    hub.add_image("team/c", "1", 15, &[10]);
    let w = Wharf::start(
        &hub.url(),
        "[upstreams.\"docker.io\"]\nusername = \"carol\"\npassword = \"pw\"\n",
    )
    .await;
    let r = c.get(w.url("/v2/team/c/manifests/1")).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", w.log());
}

#[tokio::test]
async fn referrers_are_passed_through_filtered_cached_and_kept_for_outages() {
    let mut hub = FakeHub::start().await;
    let img = hub.add_image("library/signed", "1", 14, &[10]);
    let sig = hub.add_referrer(
        "library/signed",
        &img.digest,
        "application/vnd.dev.cosign.sig",
    );
    let sbom = hub.add_referrer("library/signed", &img.digest, "application/spdx+json");
    let w = Wharf::start(&hub.url(), "tag_ttl = \"1s\"\n").await;
    let c = client();
    let all = w.url(&format!("/v2/signed/referrers/{}", img.digest));
    let sigs = format!("{all}?artifactType=application%2Fvnd.dev.cosign.sig");
    let index = |r: reqwest::Response| async move {
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "content-type"), OCI_INDEX);
        let filtered = !header(&r, "oci-filters-applied").is_empty();
        let v: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
        let digests: Vec<String> = v["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["digest"].as_str().unwrap().to_owned())
            .collect();
        (digests, filtered)
    };
    assert_eq!(
        index(c.get(&all).send().await.unwrap()).await,
        (vec![sig.clone(), sbom], false)
    );
    assert_eq!(
        index(c.get(&sigs).send().await.unwrap()).await,
        (vec![sig.clone()], true)
    );
    let r = c.get(&sigs).send().await.unwrap();
    assert_eq!(header(&r, "x-wharf-cache"), "hit-memory");
    assert_eq!(hub.counters().referrers_gets, 2);
    // past the TTL with the upstream gone: the last answer stands in
    tokio::time::sleep(Duration::from_millis(1100)).await;
    hub.stop();
    let r = c.get(&sigs).send().await.unwrap();
    assert_eq!(header(&r, "x-wharf-cache"), "stale");
    assert_eq!(index(r).await, (vec![sig], true));
}

#[tokio::test]
async fn a_hung_upstream_is_asked_once_then_spared_while_stale_tags_are_served() {
    let hub = FakeHub::start().await;
    hub.add_image("library/h", "1", 16, &[10]);
    hub.add_image("library/h", "2", 17, &[10]);
    let w = Wharf::start(
        &hub.url(),
        "tag_ttl = \"1s\"\n[upstreams.\"docker.io\"]\nread_timeout = \"1s\"\n",
    )
    .await;
    let c = client();
    for t in ["1", "2"] {
        let r = c
            .get(w.url(&format!("/v2/library/h/manifests/{t}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    hub.set_faults(Faults {
        hang: true,
        ..Default::default()
    });
    let before = hub.counters().registry_requests;
    let r = c
        .get(w.url("/v2/library/h/manifests/1"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        header(&r, "x-wharf-cache"),
        "stale",
        "after the read timeout"
    );
    assert_eq!(
        hub.counters().registry_requests,
        before + 1,
        "one HEAD, timed out"
    );
    let r = c
        .get(w.url("/v2/library/h/manifests/2"))
        .send()
        .await
        .unwrap();
    assert_eq!(header(&r, "x-wharf-cache"), "stale");
    assert_eq!(
        hub.counters().registry_requests,
        before + 1,
        "the upstream just failed: no second wait for it"
    );
}

/// A wharf whose docker.io credentials come from `docker-credential-<name>`, a shell script
/// written into `dir` (put first on wharf's PATH).
async fn with_helper(hub: &FakeHub, dir: &std::path::Path, name: &str, script: &str) -> Wharf {
    use std::os::unix::fs::PermissionsExt;
    let helper = dir.join(format!("docker-credential-{name}"));
    std::fs::write(&helper, script).unwrap();
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", dir.display(), std::env::var("PATH").unwrap());
    let config = format!("[upstreams.\"docker.io\"]\ncredential_helper = \"{name}\"\n");
    Wharf::start_env(&hub.url(), &config, &[("PATH", &path)]).await
}
