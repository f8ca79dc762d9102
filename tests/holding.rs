//! Content belongs to repositories: wharf stores each digest once, but serves it under a name
//! only when that repository is known to hold it — it came through the repository, or the
//! upstream confirms it (a HEAD, no download). The fake hub here is scoped, as distribution
//! is: a blob asked for under a repository that does not hold it is unknown.

mod common;

use common::hub::pseudo_random;
use common::{client, error_code, FakeHub, HubOptions, Wharf};

async fn scoped_hub(user: Option<(&str, &str)>) -> FakeHub {
    FakeHub::start_with(HubOptions {
        scoped: true,
        user: user.map(|(u, p)| (u.to_owned(), p.to_owned())),
        ..Default::default()
    })
    .await
}

async fn get(w: &Wharf, path: &str) -> (u16, bytes::Bytes) {
    let r = client().get(w.url(path)).send().await.unwrap();
    (r.status().as_u16(), r.bytes().await.unwrap_or_default())
}

#[tokio::test]
async fn a_private_layer_is_never_served_under_another_name() {
    let hub = scoped_hub(Some(("alice", "s3cret"))).await;
    let secret = hub.add_image("private/secret", "1", 1, &[40_000]);
    hub.add_image("library/public", "1", 2, &[1000]);
    let other = FakeHub::start_with(HubOptions {
        scoped: true,
        ..Default::default()
    })
    .await;
    let config = format!(
        "[upstreams.\"docker.io\"]\nusername = \"alice\"\npassword = \"s3cret\"\n\
         [upstreams.\"other.io\"]\nurl = \"{}\"\n",
        other.url()
    );
    let w = Wharf::start(&hub.url(), &config).await;
    let (layer, bytes) = &secret.blobs[1];
    // pulled, with wharf's credentials, as the private repository's own
    assert_eq!(get(&w, "/v2/private/secret/manifests/1").await.0, 200);
    let (status, body) = get(&w, &format!("/v2/private/secret/blobs/{layer}")).await;
    assert_eq!((status, &body), (200, bytes));
    let asked = hub.counters().registry_requests;
    // under a public name, a made-up one, another registry: not theirs
    for path in [
        format!("/v2/library/public/blobs/{layer}"),
        format!("/v2/made/up/blobs/{layer}"),
        format!("/v2/other.io/private/secret/blobs/{layer}"),
        format!("/v2/library/public/manifests/{}", secret.digest),
    ] {
        let r = client().get(w.url(&path)).send().await.unwrap();
        assert_eq!(r.status(), 404, "{path}");
        let code = error_code(r).await;
        assert!(code.ends_with("_UNKNOWN"), "{path}: {code}");
        let r = client().head(w.url(&path)).send().await.unwrap();
        assert_eq!(r.status(), 404, "HEAD {path}");
    }
    assert!(
        hub.counters().registry_requests > asked,
        "the upstream was asked, for the name asked for"
    );
    assert_eq!(hub.cdn_fetches(layer), 1, "and nothing downloaded again");
}

#[tokio::test]
async fn a_shared_public_layer_is_stored_and_fetched_once_and_confirmed_once() {
    let hub = scoped_hub(None).await;
    let shared = pseudo_random(3, 30_000);
    let a = hub.add_image_of("library/a", "1", 3, std::slice::from_ref(&shared));
    let b = hub.add_image_of("library/b", "1", 4, std::slice::from_ref(&shared));
    let (layer, _) = &a.blobs[1];
    assert_eq!(&b.blobs[1].0, layer);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    {
        let w = Wharf::start_at(&hub.url(), "", data.clone()).await;
        let (status, body) = get(&w, &format!("/v2/library/a/blobs/{layer}")).await;
        assert_eq!((status, &body), (200, &shared));
        common::eventually(10, "stored", || async {
            w.metric("wharf_fills_in_flight").await == 0.0
        })
        .await;
        // b has not come through wharf: the upstream confirms it, nothing is downloaded
        let heads = hub.counters().blob_heads;
        let (status, body) = get(&w, &format!("/v2/library/b/blobs/{layer}")).await;
        assert_eq!((status, &body), (200, &shared));
        assert_eq!(hub.counters().blob_heads, heads + 1);
        assert_eq!(hub.cdn_fetches(layer), 1);
        // confirmed once: asked again, nobody is asked
        let (status, _) = get(&w, &format!("/v2/library/b/blobs/{layer}")).await;
        assert_eq!(status, 200);
        assert_eq!(hub.counters().blob_heads, heads + 1);
        // b's manifest links all it names: its config needs no confirmation either
        assert_eq!(get(&w, "/v2/library/b/manifests/1").await.0, 200);
        let (config, _) = &b.blobs[0];
        assert_eq!(
            get(&w, &format!("/v2/library/b/blobs/{config}")).await.0,
            200
        );
        assert_eq!(hub.counters().blob_heads, heads + 1);
    }
    // the links survive a restart
    let heads = hub.counters().blob_heads;
    let w = Wharf::start_at(&hub.url(), "", data).await;
    let (status, body) = get(&w, &format!("/v2/library/b/blobs/{layer}")).await;
    assert_eq!((status, &body), (200, &shared));
    assert_eq!(
        hub.counters().blob_heads,
        heads,
        "a link on disk needs no HEAD"
    );
}

#[tokio::test]
async fn offline_and_after_an_import_only_links_serve() {
    let hub = scoped_hub(None).await;
    let a = hub.add_image("library/keep", "1", 5, &[2000]);
    let e = hub.add_image("library/else", "1", 6, &[2000]);
    let dir = tempfile::tempdir().unwrap();
    let (one, two, tar) = (
        dir.path().join("one"),
        dir.path().join("two"),
        dir.path().join("cache.tar"),
    );
    let (layer, _) = &a.blobs[1];
    {
        let w = Wharf::start_at(&hub.url(), "", one.clone()).await;
        assert_eq!(get(&w, "/v2/library/keep/manifests/1").await.0, 200);
        // by digest only, no tag: the link is all that says where it belongs
        for (d, _) in &a.blobs {
            assert_eq!(get(&w, &format!("/v2/library/keep/blobs/{d}")).await.0, 200);
        }
        // another image pulled by digest only: no tag will say where it belongs, its links must
        assert_eq!(
            get(&w, &format!("/v2/library/else/manifests/{}", e.digest))
                .await
                .0,
            200
        );
        for (d, _) in &e.blobs {
            assert_eq!(get(&w, &format!("/v2/library/else/blobs/{d}")).await.0, 200);
        }
        common::eventually(10, "stored", || async {
            w.metric("wharf_fills_in_flight").await == 0.0
        })
        .await;
    }
    let wharf = env!("CARGO_BIN_EXE_wharf");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(wharf)
            .args(args)
            .args(["--upstream", common::NO_UPSTREAM])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "export",
        "--data",
        one.to_str().unwrap(),
        "--out",
        tar.to_str().unwrap(),
    ]);
    run(&[
        "import",
        "--data",
        two.to_str().unwrap(),
        tar.to_str().unwrap(),
    ]);
    let w = Wharf::start_at(&hub.url(), "offline = true\n", two).await;
    assert_eq!(
        get(&w, &format!("/v2/library/keep/blobs/{layer}")).await.0,
        200
    );
    assert_eq!(
        get(&w, &format!("/v2/library/keep/manifests/{}", a.digest))
            .await
            .0,
        200
    );
    assert_eq!(
        get(&w, &format!("/v2/library/else/manifests/{}", e.digest))
            .await
            .0,
        200,
        "what a repository held came along in the export"
    );
    let r = client()
        .get(w.url(&format!("/v2/library/else/blobs/{layer}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "offline, another name cannot be confirmed");
}

#[tokio::test]
async fn a_cache_from_before_links_gets_them_from_its_tags() {
    let hub = scoped_hub(None).await;
    let a = hub.add_image("library/old", "1", 7, &[3000]);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    {
        let w = Wharf::start_at(&hub.url(), "", data.clone()).await;
        assert_eq!(get(&w, "/v2/library/old/manifests/1").await.0, 200);
        for (d, _) in &a.blobs {
            assert_eq!(get(&w, &format!("/v2/library/old/blobs/{d}")).await.0, 200);
        }
        common::eventually(10, "stored", || async {
            w.metric("wharf_fills_in_flight").await == 0.0
        })
        .await;
    }
    std::fs::remove_dir_all(data.join("links")).unwrap();
    let w = Wharf::start_at(&hub.url(), "offline = true\n", data).await;
    let (layer, bytes) = &a.blobs[1];
    common::eventually(10, "the tags' content is linked again", || async {
        get(&w, &format!("/v2/library/old/blobs/{layer}")).await == (200, bytes.clone())
    })
    .await;
    assert!(
        w.log().contains("links from the tags of an older cache"),
        "{}",
        w.log()
    );
}

/// A manifest says what its repository holds only through the fields its type defines: an
/// image manifest that also lists another repository's manifest and layer under `manifests`
/// (an upstream stores the bytes as pushed) makes its repository hold neither.
#[tokio::test]
async fn a_manifest_cannot_claim_what_its_type_does_not_list() {
    let hub = scoped_hub(None).await;
    let secret = hub.add_image("teamb/secret", "1", 7, &[30_000]);
    let mine = hub.add_image("teama/x", "plain", 8, &[100]);
    let (layer, _) = &secret.blobs[1];
    // team A's own image, with team B's manifest and layer smuggled in
    let mut m: serde_json::Value = serde_json::from_slice(&mine.manifest).unwrap();
    m["manifests"] = serde_json::json!([
        {"mediaType": secret.media_type, "digest": secret.digest, "size": secret.manifest.len()},
        {"mediaType": "application/octet-stream", "digest": layer, "size": 30_000},
    ]);
    let body = bytes::Bytes::from(serde_json::to_vec(&m).unwrap());
    hub.add_manifest("teama/x", Some("smuggled"), &mine.media_type, body);
    let w = Wharf::start(&hub.url(), "").await;
    // team B's content is cached, pulled the way team B pulls it
    assert_eq!(get(&w, "/v2/teamb/secret/manifests/1").await.0, 200);
    assert_eq!(
        get(&w, &format!("/v2/teamb/secret/blobs/{layer}")).await.0,
        200
    );
    assert_eq!(get(&w, "/v2/teama/x/manifests/smuggled").await.0, 200);
    for path in [
        format!("/v2/teama/x/blobs/{layer}"),
        format!("/v2/teama/x/manifests/{}", secret.digest),
    ] {
        assert_eq!(get(&w, &path).await.0, 404, "{path}");
    }
}
