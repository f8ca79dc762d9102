//! The store over time: a size quota kept by evicting the least recently used objects (never
//! pulling a blob from under a client that is reading it), restarts that rebuild the index, and
//! crashes in the middle of fills.

mod common;

use std::time::Duration;

use common::hub::sha256;
use common::{client, eventually, header, FakeHub, Faults, Wharf};

const MIB: usize = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quota_evicts_least_recently_used_but_never_under_a_reader() {
    let hub = FakeHub::start().await;
    // three 24 MiB layers, a 60 MiB quota: any two fit, three do not
    let img = hub.add_image("library/q", "1", 1, &[24 * MIB, 24 * MIB, 24 * MIB]);
    let w = Wharf::start(&hub.url(), &format!("max_size = {}\n", 60 * MIB)).await;
    let c = client();
    let url = |i: usize| w.url(&format!("/v2/library/q/blobs/{}", img.blobs[i].0));
    let path = |i: usize| w.data.join("blobs/sha256").join(&img.blobs[i].0[7..]);
    for i in [1, 2] {
        let body = c.get(url(i)).send().await.unwrap().bytes().await.unwrap();
        assert_eq!(body, img.blobs[i].1);
    }
    eventually(10, "two blobs stored", || async {
        path(1).exists() && path(2).exists()
    })
    .await;

    // a slow reader of blob 1 (now also its most recent use)...
    let mut reader = c.get(url(1)).send().await.unwrap();
    assert_eq!(header(&reader, "x-wharf-cache"), "hit-disk");
    let mut got = reader.chunk().await.unwrap().unwrap().to_vec();
    // ...while blob 3 arrives: blob 2, least recently used, must go; then blob 1 too
    let body = c.get(url(3)).send().await.unwrap().bytes().await.unwrap();
    assert_eq!(body, img.blobs[3].1);
    eventually(10, "blob 2 evicted", || async { !path(2).exists() }).await;
    assert!(
        path(1).exists(),
        "blob 1 was used more recently than blob 2"
    );
    c.get(url(2)).send().await.unwrap().bytes().await.unwrap(); // back again: 1 goes now
    eventually(10, "blob 1 evicted", || async { !path(1).exists() }).await;
    // the reader of blob 1 still gets every byte
    while let Some(chunk) = reader.chunk().await.unwrap() {
        got.extend_from_slice(&chunk);
    }
    assert_eq!(sha256(&got), img.blobs[1].0);
    assert!(w.metric("wharf_evictions_total").await >= 2.0);
    let used = w.metric("wharf_store_bytes").await;
    assert!(used <= (60 * MIB) as f64, "store holds {used} bytes");
    // what was evicted is fetched again when asked for
    let r = c.get(url(1)).send().await.unwrap();
    assert_eq!(header(&r, "x-wharf-cache"), "miss");
    assert_eq!(sha256(&r.bytes().await.unwrap()), img.blobs[1].0);
}

#[tokio::test]
async fn a_restart_rebuilds_the_index_and_applies_a_smaller_quota() {
    let hub = FakeHub::start().await;
    let img = hub.add_image("library/r", "1", 2, &[MIB, MIB, MIB, MIB]);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let c = client();
    {
        let w = Wharf::start_at(&hub.url(), "", data.clone()).await;
        for (d, _) in &img.blobs {
            let url = w.url(&format!("/v2/library/r/blobs/{d}"));
            c.get(url).send().await.unwrap().bytes().await.unwrap();
        }
        eventually(10, "all stored", || async {
            std::fs::read_dir(data.join("tmp")).unwrap().count() == 0
        })
        .await;
        assert!(w.metric("wharf_store_bytes").await >= (4 * MIB) as f64);
    }
    let w = Wharf::start_at(
        &hub.url(),
        &format!("max_size = {}\n", 2 * MIB + 4096),
        data.clone(),
    )
    .await;
    eventually(10, "indexed and shrunk", || async {
        let used = w.metric("wharf_store_bytes").await;
        used > 0.0 && used <= (2 * MIB + 4096) as f64
    })
    .await;
    let left = std::fs::read_dir(data.join("blobs/sha256"))
        .unwrap()
        .count();
    assert!(left <= 3, "{left} blobs left");
}

#[tokio::test]
async fn kill_9_during_fills_leaves_only_verified_content() {
    let hub = FakeHub::start().await;
    let img = hub.add_image("library/k", "1", 3, &[4 * MIB, 4 * MIB, 4 * MIB]);
    hub.set_faults(Faults {
        slow_chunk: Some(Duration::from_millis(20)),
        ..Default::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let c = client();
    let mut w = Wharf::start_at(&hub.url(), "", data.clone()).await;
    let mut readers = Vec::new();
    for (d, _) in img.blobs.iter().skip(1) {
        let mut r = c
            .get(w.url(&format!("/v2/library/k/blobs/{d}")))
            .send()
            .await
            .unwrap();
        r.chunk().await.unwrap();
        readers.push(r);
    }
    assert!(
        std::fs::read_dir(data.join("tmp")).unwrap().count() >= 3,
        "fills in flight"
    );
    w.kill();
    drop(readers);
    assert_eq!(
        std::fs::read_dir(data.join("blobs/sha256"))
            .unwrap()
            .count(),
        0
    );

    hub.set_faults(Faults::default());
    let w = Wharf::start_at(&hub.url(), "", data.clone()).await;
    assert_eq!(
        std::fs::read_dir(data.join("tmp")).unwrap().count(),
        0,
        "leftover temp files are removed at startup"
    );
    for (d, bytes) in img.blobs.iter().skip(1) {
        let r = c
            .get(w.url(&format!("/v2/library/k/blobs/{d}")))
            .send()
            .await
            .unwrap();
        assert_eq!(header(&r, "x-wharf-cache"), "miss");
        assert_eq!(&r.bytes().await.unwrap(), bytes);
    }
}
