//! Client connections: pipelined requests are all answered in order; idle, silent and
//! slowloris connections are closed in time; and no crowd of connections — idle or busy, past
//! the open-file limit — keeps wharf from serving the next client.

mod common;

use std::time::{Duration, Instant};

use common::hub::pseudo_random;
use common::liar::{Liar, Lie};
use common::{client, eventually, header, FakeHub, Wharf};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Split HTTP/1.1 responses with Content-Length bodies: (status, body) each.
fn responses(mut raw: &[u8]) -> Vec<(u16, Vec<u8>)> {
    let mut out = Vec::new();
    while let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&raw[..end]).to_lowercase();
        let status = head[9..12].parse().unwrap();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .map_or(0, |v| v.trim().parse().unwrap());
        out.push((status, raw[end + 4..end + 4 + len].to_vec()));
        raw = &raw[end + 4 + len..];
    }
    out
}

#[tokio::test]
async fn requests_pipelined_in_one_packet_are_all_answered_in_order() {
    let hub = FakeHub::start().await;
    let img = hub.add_image("library/pipe", "1", 30, &[2000]);
    let w = Wharf::start(&hub.url(), "").await;
    let (blob, bytes) = &img.blobs[1];
    // warm both, so that answers are immediate and their order is the only question
    for path in [
        format!("/v2/library/pipe/manifests/{}", img.digest),
        format!("/v2/library/pipe/blobs/{blob}"),
    ] {
        client()
            .get(w.url(&path))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
    }
    let mut s = TcpStream::connect(&w.addr).await.unwrap();
    let reqs = format!(
        "GET /v2/library/pipe/manifests/{} HTTP/1.1\r\nHost: w\r\n\r\n\
         GET /v2/library/pipe/blobs/{blob} HTTP/1.1\r\nHost: w\r\n\r\n\
         HEAD /v2/library/pipe/blobs/{blob} HTTP/1.1\r\nHost: w\r\n\r\n\
         GET /v2/library/pipe/manifests/nope HTTP/1.1\r\nHost: w\r\n\r\n\
         GET /v2/ HTTP/1.1\r\nHost: w\r\nConnection: close\r\n\r\n",
        img.digest
    );
    s.write_all(reqs.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
        .await
        .expect("every answer, then the close")
        .unwrap();
    // the HEAD's answer has a length but no body: take it out before splitting
    let starts: Vec<usize> = raw
        .windows(9)
        .enumerate()
        .filter(|(_, w)| *w == b"HTTP/1.1 ")
        .map(|(i, _)| i)
        .collect();
    assert_eq!(starts.len(), 5, "{}", String::from_utf8_lossy(&raw));
    let head_at = starts[2];
    assert!(raw[head_at..].starts_with(b"HTTP/1.1 200"));
    let head_end = head_at
        + raw[head_at..]
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap()
        + 4;
    let mut without_head = raw[..head_at].to_vec();
    without_head.extend_from_slice(&raw[head_end..]);
    let got = responses(&without_head);
    let statuses: Vec<u16> = got.iter().map(|r| r.0).collect();
    assert_eq!(statuses, [200, 200, 404, 200]);
    assert_eq!(got[0].1, img.manifest);
    assert_eq!(&got[1].1[..], &bytes[..]);
}

/// Whether the server closes `s` within `within` (reading and ignoring what it sends).
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test]
async fn idle_silent_and_slowloris_connections_are_closed() {
    let hub = FakeHub::start().await;
    let w = Wharf::start(
        &hub.url(),
        "idle_timeout = \"1s\"\nheader_timeout = \"1s\"\n",
    )
    .await;
    // kept alive after an answer, then idle
    let mut s = TcpStream::connect(&w.addr).await.unwrap();
    s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: w\r\n\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    assert!(
        closed_within(&mut s, Duration::from_secs(5)).await,
        "an idle keep-alive connection stays open"
    );
    assert!(started.elapsed() >= Duration::from_millis(900));
    // connected, never a byte
    let mut s = TcpStream::connect(&w.addr).await.unwrap();
    assert!(
        closed_within(&mut s, Duration::from_secs(5)).await,
        "a silent connection stays open"
    );
    // headers trickled, a line every 300 ms
    let mut s = TcpStream::connect(&w.addr).await.unwrap();
    let started = Instant::now();
    s.write_all(b"GET /v2/ HTTP/1.1\r\n").await.unwrap();
    let mut cut = false;
    for i in 0..20 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        if s.write_all(format!("X-Slow-{i}: y\r\n").as_bytes())
            .await
            .is_err()
        {
            cut = true;
            break;
        }
        let mut b = [0u8; 1];
        if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_millis(1), s.read(&mut b)).await {
            cut = true;
            break;
        }
    }
    assert!(cut, "a slowloris client was never cut off");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    // a client that is quick is served as ever
    let r = client().get(w.url("/v2/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eleven_hundred_idle_sockets_against_a_limit_of_1024_lock_nobody_out() {
    common::more_files(4096);
    let hub = FakeHub::start().await;
    let img = hub.add_image("library/crowd", "1", 31, &[3 << 20]);
    let w = Wharf::start_with_files(&hub.url(), "", 1024, 1024).await;
    assert!(
        w.log().contains("the open-file limit (1024) is low"),
        "a low limit is reported: {}",
        w.log()
    );
    let (d, bytes) = &img.blobs[1];
    let path = format!("/v2/library/crowd/blobs/{d}");
    let r = client().get(w.url(&path)).send().await.unwrap();
    assert_eq!(&r.bytes().await.unwrap(), bytes);
    let mut idle = Vec::new();
    for _ in 0..1100 {
        idle.push(TcpStream::connect(&w.addr).await.unwrap());
    }
    for _ in 0..3 {
        let started = Instant::now();
        let r = client().get(w.url(&path)).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(&r.bytes().await.unwrap(), bytes);
        let r = client().get(w.url("/v2/")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
    }
    assert!(w.metric("wharf_connections_evicted_total").await > 0.0);
    assert!(!w.log().contains("Too many open files"), "{}", w.log());
}

#[tokio::test]
async fn clients_that_never_read_do_not_keep_their_connections() {
    let hub = FakeHub::start().await;
    let img = hub.add_image("library/pin", "1", 32, &[8_000_000]);
    let w = Wharf::start(
        &hub.url(),
        "memory_object_max = 16777216\nmax_connections = 2\nidle_timeout = \"1s\"\n",
    )
    .await;
    let (blob, bytes) = &img.blobs[1];
    let path = format!("/v2/library/pin/blobs/{blob}");
    // twice: the second read puts it in the memory tier (a reply from memory is one write)
    for _ in 0..2 {
        let r = client().get(w.url(&path)).send().await.unwrap();
        assert_eq!(&r.bytes().await.unwrap(), bytes);
    }
    let mut held = Vec::new();
    for _ in 0..2 {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.set_recv_buffer_size(4096).unwrap();
        let mut s = sock.connect(w.addr.parse().unwrap()).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: w\r\n\r\n").as_bytes())
            .await
            .unwrap();
        held.push(s);
    }
    // they take nothing: after idle_timeout they are cut, and others get in again
    eventually(10, "a new client is served", || async {
        client()
            .get(w.url("/v2/"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    assert!(w.log().contains("took nothing"), "{}", w.log());
}

#[tokio::test]
async fn with_every_connection_busy_a_new_one_is_refused_at_once() {
    let liar = Liar::start().await;
    *liar.state.unknown_blobs.lock().unwrap() = Some(Lie::Trickle(Duration::from_secs(1)));
    let w = Wharf::start(&liar.url(), "max_connections = 4\n").await;
    let mut busy = Vec::new();
    for i in 0..4 {
        let d = common::hub::sha256(&pseudo_random(20_000 + i, 8));
        let mut s = TcpStream::connect(&w.addr).await.unwrap();
        s.write_all(format!("GET /v2/lies/slow/blobs/{d} HTTP/1.1\r\nHost: w\r\n\r\n").as_bytes())
            .await
            .unwrap();
        busy.push(s);
    }
    eventually(10, "4 transfers under way", || async {
        w.metric("wharf_fills_in_flight").await == 4.0
    })
    .await;
    let started = Instant::now();
    let r = client().get(w.url("/v2/")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(header(&r, "retry-after"), "1");
    assert_eq!(common::error_code(r).await, "UNAVAILABLE");
    assert!(started.elapsed() < Duration::from_secs(2));
    // the busy ones were not disturbed: each still receives its (slow) body
    for s in &mut busy {
        let mut b = [0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0);
    }
    // one leaves: there is room again
    drop(busy.pop());
    eventually(10, "room for a new client", || async {
        client()
            .get(w.url("/v2/"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
}
