//! A soak: 120 clients for `SOAK_SECS` (default 60) against one wharf mirroring two upstreams
//! that fail on purpose — a Hub-like one (tokens, CDN redirects) whose faults switch every
//! second (corrupt and truncated blobs, 500s, 503s, slow bodies), and a liar that answers most
//! blob GETs with a random lie (cut, trickled, too long, silent, redirected) — over a mix of
//! cold and warm blobs, ranges, HEADs and manifests by tag and digest, while new images keep
//! appearing upstream.
//!
//! Every body is checked against its digest. Errors are expected (the upstreams fail); what
//! must never happen is wrong bytes in a complete response, or a request that hangs.
//! Run by tests/run.sh: `cargo test --test soak -- --ignored --nocapture`.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::hub::{pseudo_random, sha256};
use common::liar::{Liar, Lie};
use common::{FakeHub, Faults, Wharf};

/// What the clients may ask for: (registry prefix, repo, tag, manifest digest, blobs).
#[derive(Clone)]
struct Image {
    prefix: &'static str,
    repo: String,
    tag: String,
    manifest: String,
    blobs: Vec<(String, Bytes)>,
}

#[derive(Default)]
struct Tally {
    by_kind: BTreeMap<String, usize>,
    wrong: Vec<String>,
    hangs: Vec<String>,
}

impl Tally {
    fn count(&mut self, what: &str) {
        *self.by_kind.entry(what.to_owned()).or_default() += 1;
    }
}

const CLIENTS: usize = 120;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "a minute long: run by tests/run.sh"]
async fn soak() {
    let secs: u64 = std::env::var("SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let hub = Arc::new(FakeHub::start().await);
    let liar = Arc::new(Liar::start().await);
    let w = Wharf::start(
        &hub.url(),
        &format!(
            "tag_ttl = \"2s\"\nmemory_object_max = 65536\n\
             [upstreams.\"docker.io\"]\nread_timeout = \"3s\"\n\
             [upstreams.\"liar.test\"]\nurl = \"{}\"\nread_timeout = \"3s\"\n",
            liar.url()
        ),
    )
    .await;
    let images: Arc<Mutex<Vec<Image>>> = Arc::default();
    let mut seed = 1u64;
    let mut add = move |hub: &FakeHub, liar: &Liar, images: &Mutex<Vec<Image>>| {
        seed += 1;
        let sizes = [
            (seed as usize * 7919) % (256 << 10) + 1,
            (seed as usize * 104_729) % (3 << 20) + 1000,
        ];
        let img = hub.add_image(
            &format!("soak/hub{}", seed % 7),
            &format!("t{seed}"),
            seed,
            &sizes,
        );
        images.lock().unwrap().push(Image {
            prefix: "",
            repo: img.repo,
            tag: img.tag,
            manifest: img.digest,
            blobs: img.blobs,
        });
        let layers: Vec<Bytes> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| pseudo_random(seed * 31 + i as u64, n))
            .collect();
        let repo = format!("soak/liar{}", seed % 5);
        let (manifest, digests) = liar.add_image(&repo, &format!("t{seed}"), &layers, Lie::Honest);
        images.lock().unwrap().push(Image {
            prefix: "/liar.test",
            repo,
            tag: format!("t{seed}"),
            manifest,
            blobs: digests.into_iter().zip(layers).collect(),
        });
    };
    for _ in 0..20 {
        add(&hub, &liar, &images);
    }
    liar.state.chaos.store(true, Ordering::Relaxed);

    let stop = Arc::new(AtomicBool::new(false));
    // new images keep coming (cold misses), and the hub's faults change every second
    let producer = {
        let (hub, liar, images, stop) = (hub.clone(), liar.clone(), images.clone(), stop.clone());
        tokio::spawn(async move {
            let mut tick = 0u64;
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(250)).await;
                add(&hub, &liar, &images);
                tick += 1;
                if tick.is_multiple_of(4) {
                    hub.set_faults(match (tick / 4) % 8 {
                        0 => Faults {
                            corrupt: true,
                            ..Default::default()
                        },
                        1 => Faults {
                            truncate: Some(50_000),
                            ..Default::default()
                        },
                        2 => Faults {
                            status: Some(500),
                            ..Default::default()
                        },
                        3 => Faults {
                            fail_next: 20,
                            ..Default::default()
                        },
                        4 => Faults {
                            slow_chunk: Some(Duration::from_millis(5)),
                            ..Default::default()
                        },
                        _ => Faults::default(),
                    });
                }
            }
            hub.set_faults(Faults::default());
        })
    };

    let tally = Arc::new(Mutex::new(Tally::default()));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(secs);
    let mut clients = Vec::new();
    for n in 0..CLIENTS {
        let (images, tally, base) = (images.clone(), tally.clone(), w.url("/"));
        clients.push(tokio::spawn(async move {
            let c = reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(40))
                .no_proxy()
                .build()
                .unwrap();
            let mut i = n as u64;
            while Instant::now() < deadline {
                i = i
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let img = {
                    let all = images.lock().unwrap();
                    // mostly the newest (cold), often any (warm)
                    let k = if i.is_multiple_of(3) {
                        (i >> 8) as usize % all.len()
                    } else {
                        all.len() - 1 - (i >> 8) as usize % all.len().min(6)
                    };
                    all[k].clone()
                };
                let outcome = one_request(&c, &base, &img, i).await;
                let mut t = tally.lock().unwrap();
                t.count("requests");
                match outcome {
                    Outcome::Ok(kind) => t.count(&format!("ok {kind}")),
                    Outcome::Refused(status) => t.count(&format!("error {status}")),
                    Outcome::Cut(kind) => t.count(&format!("cut {kind}")),
                    Outcome::Wrong(what) => t.wrong.push(what),
                    Outcome::Hang(what) => t.hangs.push(what),
                }
            }
        }));
    }
    for c in clients {
        c.await.unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    producer.await.unwrap();
    let t = std::mem::take(&mut *tally.lock().unwrap());
    let took = started.elapsed();
    eprintln!(
        "soak: {CLIENTS} clients for {took:.1?}, {} images upstream",
        images.lock().unwrap().len()
    );
    for (k, v) in &t.by_kind {
        eprintln!("soak: {k:<28} {v}");
    }
    eprintln!("soak: wrong bytes               {}", t.wrong.len());
    eprintln!("soak: hangs                     {}", t.hangs.len());
    for wng in t.wrong.iter().chain(&t.hangs).take(10) {
        eprintln!("soak:   {wng}");
    }
    let requests = t.by_kind["requests"];
    let ok: usize = t
        .by_kind
        .iter()
        .filter(|(k, _)| k.starts_with("ok "))
        .map(|(_, v)| v)
        .sum();
    assert!(
        t.wrong.is_empty(),
        "wrong bytes delivered as complete responses"
    );
    if let Some(digest) = t.hangs.first().and_then(|h| h.split("blobs/").nth(1)) {
        let digest = digest.split(':').take(2).collect::<Vec<_>>().join(":");
        for l in w.log().lines().filter(|l| l.contains(&digest)).take(20) {
            eprintln!("soak: wharf: {l}");
        }
        let lies = liar.state.requests.lock().unwrap().clone();
        eprintln!("soak: liar requests {lies:?}");
    }
    assert!(t.hangs.is_empty(), "requests hung");
    assert!(
        requests >= CLIENTS * 10,
        "only {requests} requests in {took:?}"
    );
    assert!(ok * 2 > requests, "only {ok} of {requests} succeeded");
    // wharf itself is still well: nothing stuck, nothing left behind once the fills end
    common::eventually(60, "every fill is over", || async {
        w.metric("wharf_fills_in_flight").await == 0.0
    })
    .await;
    common::eventually(10, "no temp file left", || async {
        std::fs::read_dir(w.data.join("tmp")).unwrap().count() == 0
    })
    .await;
    let r = common::client().get(w.url("/v2/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

enum Outcome {
    Ok(&'static str),
    /// An error status with an OCI error body.
    Refused(u16),
    /// A transfer cut short: the client can tell, and retries.
    Cut(&'static str),
    Wrong(String),
    Hang(String),
}

async fn one_request(c: &reqwest::Client, base: &str, img: &Image, i: u64) -> Outcome {
    let pick = (i >> 16) as usize;
    let (digest, bytes) = &img.blobs[pick % img.blobs.len()];
    let prefix = img.prefix;
    let (kind, url, range) = match (i >> 24) % 10 {
        0..=3 => (
            "blob",
            format!("{base}v2{prefix}/{}/blobs/{digest}", img.repo),
            None,
        ),
        4 | 5 => {
            let len = bytes.len() as u64;
            let start = (i >> 32) % len;
            let end = (start + (i >> 40) % 100_000).min(len - 1);
            (
                "range",
                format!("{base}v2{prefix}/{}/blobs/{digest}", img.repo),
                Some((start, end)),
            )
        }
        6 => (
            "head",
            format!("{base}v2{prefix}/{}/blobs/{digest}", img.repo),
            None,
        ),
        7 | 8 => (
            "tag",
            format!("{base}v2{prefix}/{}/manifests/{}", img.repo, img.tag),
            None,
        ),
        _ => (
            "digest",
            format!("{base}v2{prefix}/{}/manifests/{}", img.repo, img.manifest),
            None,
        ),
    };
    let mut req = if kind == "head" {
        c.head(&url)
    } else {
        c.get(&url)
    };
    if let Some((s, e)) = range {
        req = req.header("Range", format!("bytes={s}-{e}"));
    }
    let r = match req.send().await {
        Ok(r) => r,
        Err(e) if e.is_timeout() => return Outcome::Hang(format!("{kind} {url}: no answer")),
        Err(_) => return Outcome::Refused(0),
    };
    let status = r.status().as_u16();
    let digest_header = common::header(&r, "docker-content-digest").to_owned();
    if status >= 400 {
        let body = match r.bytes().await {
            Ok(b) => b,
            Err(_) => return Outcome::Cut(kind),
        };
        let json: Result<serde_json::Value, _> = serde_json::from_slice(&body);
        if kind != "head" && !json.is_ok_and(|v| v["errors"][0]["code"].is_string()) {
            return Outcome::Wrong(format!("{kind} {url}: {status} without an OCI error body"));
        }
        return Outcome::Refused(status);
    }
    let body = match r.bytes().await {
        Ok(b) => b,
        Err(e) if e.is_timeout() => {
            return Outcome::Hang(format!("{kind} {url}: body never ended"))
        }
        Err(_) => return Outcome::Cut(kind),
    };
    let good = match kind {
        "blob" => status == 200 && sha256(&body) == *digest,
        "range" => {
            let (s, e) = range.unwrap();
            status == 206 && body == bytes.slice(s as usize..=e as usize)
        }
        "head" => status == 200 && body.is_empty() && digest_header == *digest,
        _ => status == 200 && sha256(&body) == img.manifest && digest_header == img.manifest,
    };
    if good {
        Outcome::Ok(kind)
    } else {
        Outcome::Wrong(format!(
            "{kind} {url}: {status}, {} bytes that do not match",
            body.len()
        ))
    }
}
