//! Resource bounds: however many slow fills, slow or idle clients there are, cached content is
//! served at once, and everything beyond a bound is refused promptly rather than queued.

mod common;

use std::time::{Duration, Instant};

use common::hub::pseudo_random;
use common::liar::{Liar, Lie};
use common::{client, eventually, header, Wharf};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// A client that asks for `path` and then reads nothing: it waits as long as it is kept.
async fn waiting_client(addr: &str, path: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: wharf\r\n\r\n").as_bytes())
        .await
        .unwrap();
    s
}

fn random_digest(i: u64) -> String {
    common::hub::sha256(&pseudo_random(10_000 + i, 16))
}

/// A cached blob from disk (not memory), timed.
async fn timed_hit(w: &Wharf, path: &str, want: &[u8]) -> Duration {
    let started = Instant::now();
    let r = client().get(w.url(path)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-wharf-cache"), "hit-disk");
    assert_eq!(&r.bytes().await.unwrap()[..], want);
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hits_are_served_at_once_behind_hundreds_of_slow_fills() {
    // 600 slow fills take ~1,200 sockets in this process and 8 files each in wharf's budget; a
    // lower hard limit (not root) makes the crowd smaller rather than the test wrong
    let files = common::more_files(8192);
    let crowd = 600.min(files.saturating_sub(200) / 8);
    assert!(
        crowd >= 100,
        "an open-file limit of {files} is too low for this test"
    );
    if crowd < 600 {
        eprintln!("an open-file limit of {files}: {crowd} slow fills, not 600");
    }
    let liar = Liar::start().await;
    // every blob it does not know trickles one byte a second, forever
    *liar.state.unknown_blobs.lock().unwrap() = Some(Lie::Trickle(Duration::from_secs(1)));
    let cached = pseudo_random(1, 3 << 20);
    let d = liar.add_blob(cached.clone(), Lie::Honest);
    let w = Wharf::start(
        &liar.url(),
        "max_fills = 1000\nmax_orphan_fills = 1000\nmemory_object_max = 1024\n\
         [upstreams.\"docker.io\"]\nread_timeout = \"5s\"\n",
    )
    .await;
    let path = format!("/v2/lies/cached/blobs/{d}");
    let r = client().get(w.url(&path)).send().await.unwrap();
    assert_eq!(&r.bytes().await.unwrap()[..], &cached[..]);
    eventually(10, "the blob is on disk", || async {
        w.metric("wharf_fills_in_flight").await == 0.0
    })
    .await;

    let mut slow = Vec::new();
    for i in 0..crowd {
        slow.push(
            waiting_client(
                &w.addr,
                &format!("/v2/lies/slow/blobs/{}", random_digest(i)),
            )
            .await,
        );
    }
    eventually(30, &format!("{crowd} fills in flight"), || async {
        w.metric("wharf_fills_in_flight").await == crowd as f64
    })
    .await;
    // (a debug build on two shared cores: the bounds are loose, a hang is not)
    let mut took = Vec::new();
    for _ in 0..5 {
        took.push(timed_hit(&w, &path, &cached).await);
    }
    took.sort();
    assert!(
        took[2] < Duration::from_millis(500) && took[4] < Duration::from_secs(5),
        "hits behind {crowd} slow fills took {took:?}"
    );
    // every client leaves: the orphans that bring nothing are given up after the read timeout
    drop(slow);
    eventually(30, "the stalled orphans are given up", || async {
        w.metric("wharf_fills_in_flight").await == 0.0
    })
    .await;
    let ab = w.metric("wharf_fills_abandoned_total").await;
    assert!(ab >= crowd as f64, "{ab} given up");
    let took = timed_hit(&w, &path, &cached).await;
    assert!(took < Duration::from_secs(2), "{took:?}");
    eventually(10, "no temp files left", || async {
        std::fs::read_dir(w.data.join("tmp")).unwrap().count() == 0
    })
    .await;
    eventually(10, "no upstream connection left", || async {
        liar.open_connections() == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_fills_a_cold_miss_is_refused_at_once_and_orphans_are_bounded() {
    let liar = Liar::start().await;
    *liar.state.unknown_blobs.lock().unwrap() = Some(Lie::Trickle(Duration::from_secs(1)));
    let w = Wharf::start(
        &liar.url(),
        "max_fills = 4\nmax_orphan_fills = 2\n[upstreams.\"docker.io\"]\nread_timeout = \"60s\"\n",
    )
    .await;
    let mut held = Vec::new();
    for i in 0..4 {
        held.push(
            waiting_client(
                &w.addr,
                &format!("/v2/lies/slow/blobs/{}", random_digest(i)),
            )
            .await,
        );
    }
    eventually(10, "4 fills in flight", || async {
        w.metric("wharf_fills_in_flight").await == 4.0
    })
    .await;
    let started = Instant::now();
    let r = client()
        .get(w.url(&format!("/v2/lies/slow/blobs/{}", random_digest(99))))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(header(&r, "retry-after"), "5");
    assert_eq!(common::error_code(r).await, "UNAVAILABLE");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(w.metric("wharf_fills_refused_total").await, 1.0);
    // joining a fill that runs is no new fill: it is let in
    let r = client()
        .get(w.url(&format!("/v2/lies/slow/blobs/{}", random_digest(0))))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-wharf-cache"), "coalesced");
    drop(r);
    // all clients leave: two orphans may stay, the others are given up at once
    drop(held);
    eventually(10, "orphans beyond the bound are given up", || async {
        w.metric("wharf_fills_in_flight").await == 2.0
    })
    .await;
    assert_eq!(w.metric("wharf_fills_abandoned_total").await, 2.0);
    assert_eq!(w.metric("wharf_orphan_fills").await, 2.0);
}

#[tokio::test]
async fn past_max_manifest_fetches_a_cold_manifest_is_refused_at_once() {
    let liar = Liar::start().await;
    for t in ["a", "b", "c"] {
        liar.add_image("lies/slowtags", t, &[pseudo_random(40, 10)], Lie::Honest);
    }
    // one byte a second: each fetch is held for as long as its request_timeout
    *liar.state.trickle_manifests.lock().unwrap() = Some(Duration::from_secs(1));
    let w = Wharf::start(&liar.url(), "max_manifest_fetches = 2\n").await;
    let mut held = Vec::new();
    for t in ["a", "b"] {
        held.push(waiting_client(&w.addr, &format!("/v2/lies/slowtags/manifests/{t}")).await);
    }
    eventually(10, "two manifest fetches under way", || async {
        liar.requests("manifest") == 2
    })
    .await;
    let started = Instant::now();
    let r = client()
        .get(w.url("/v2/lies/slowtags/manifests/c"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(header(&r, "retry-after"), "1");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(
        liar.requests("manifest"),
        2,
        "nothing more was asked upstream"
    );
}
