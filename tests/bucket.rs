//! The shared store: a bucket on a real S3 server (SeaweedFS on 127.0.0.1, checking
//! credentials), as a content store on its own and behind wharf instances.

mod common;

use std::io::Write;
use std::sync::Arc;

use common::hub::pseudo_random;
use common::s3::S3;
use common::{blocking, client, eventually, header, FakeHub, Wharf};
use wharf::cache::{BucketStore, ContentStore, Kind, Shelf, Use};
use wharf::registry::Digest;

const BUCKET: &str = "wharf";

fn open(s3: &S3, prefix: &str, journal: &std::path::Path) -> BucketStore {
    BucketStore::open(&format!("s3://{BUCKET}/{prefix}"), &s3.options(), journal).unwrap()
}

/// Wait until the bucket's `prefix` holds the shared record `name` of a tag
/// (`<registry>/<repo>/_tags/<tag>`): it goes up after the reply, on its own.
async fn shared_tag_appears(s3: &S3, prefix: &str, name: &str) {
    let journal = tempfile::tempdir().unwrap();
    let bucket = Arc::new(open(s3, prefix, journal.path()));
    eventually(10, "the tag's record in the bucket", || {
        let (bucket, name) = (bucket.clone(), name.to_owned());
        async move { blocking(move || bucket.read_record(Shelf::Tags, &name).unwrap().is_some()).await }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bucket_is_a_content_store() {
    let s3 = S3::start(BUCKET).await;
    let dir = tempfile::tempdir().unwrap();
    let store = open(&s3, "conformance", dir.path());
    wharf::cache::store::conformance::check(Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_credentials_are_refused() {
    let s3 = S3::start(BUCKET).await;
    let dir = tempfile::tempdir().unwrap();
    let mut options = s3.options();
    options.retain(|(k, _)| k != "aws_secret_access_key");
    options.push(("aws_secret_access_key".into(), "not-the-secret".into()));
    let store = BucketStore::open(&format!("s3://{BUCKET}/creds"), &options, dir.path()).unwrap();
    let e = blocking(move || {
        store
            .write(Kind::Blob, &Digest::of(b"x"), b"x")
            .unwrap_err()
    })
    .await;
    assert!(
        e.to_string().contains("403") || e.to_string().contains("Access"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_long_object_goes_up_in_parts_and_only_whole_and_right() {
    let s3 = S3::start(BUCKET).await;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open(&s3, "long", dir.path()));
    common::stores::long_objects_go_up_only_whole_and_right(store.clone()).await;
    common::stores::two_uploads_of_one_digest_both_succeed(store).await;
    // every multipart upload was completed or aborted: none left in the journal
    eventually(10, "journal empty", || async {
        std::fs::read_dir(dir.path()).unwrap().count() == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upload_cut_off_by_a_kill_is_never_visible_and_is_aborted_at_the_next_start() {
    let s3 = S3::start(BUCKET).await;
    let dir = tempfile::tempdir().unwrap();
    let store = open(&s3, "killed", dir.path());
    let data = pseudo_random(8, common::stores::LONG);
    let digest = Digest::of(&data);
    let journal = dir.path().to_owned();
    let store = blocking(move || {
        let mut up = store.begin(Kind::Blob, &digest).unwrap();
        up.write_all(&data[..17 << 20]).unwrap(); // two parts are in the bucket
        std::mem::forget(up); // as a killed process leaves it: neither completed nor aborted
        assert!(store.stat(Kind::Blob, &digest).unwrap().is_none());
        assert!(store.list().unwrap().is_empty());
        store
    })
    .await;
    assert_eq!(std::fs::read_dir(&journal).unwrap().count(), 1);
    drop(store);
    let again = open(&s3, "killed", &journal);
    let aborted = blocking(move || {
        let n = again.abort_leftovers();
        (n, again.abort_leftovers())
    })
    .await;
    assert_eq!(
        aborted,
        (1, 0),
        "the next start aborts what the killed one left"
    );
    assert_eq!(std::fs::read_dir(&journal).unwrap().count(), 0);
}

/// Two instances on one bucket: what one fetched, the other serves without the upstream's
/// blob; each still serves its own disk's hits with the bucket gone.
#[tokio::test(flavor = "multi_thread")]
async fn instances_share_the_bucket_and_their_disks_serve_without_it() {
    let mut s3 = S3::start(BUCKET).await;
    let hub = FakeHub::start().await;
    let img = hub.add_image("library/shared", "1", 9, &[2 << 20]);
    let (digest, bytes) = img.blobs.last().unwrap().clone();
    let conf = format!(
        "memory_object_max = 1024\n{}",
        s3.store_config(BUCKET, "cluster")
    );
    let a = Wharf::start(&hub.url(), &conf).await;
    let b = Wharf::start(&hub.url(), &conf).await;
    let c = client();
    let path = format!("/v2/library/shared/blobs/{digest}");
    let r = c.get(a.url(&path)).send().await.unwrap();
    assert_eq!(header(&r, "x-wharf-cache"), "miss");
    assert_eq!(r.bytes().await.unwrap(), bytes);
    eventually(10, "the blob in the bucket", || async {
        a.metric("wharf_bucket_written_bytes_total").await == bytes.len() as f64
    })
    .await;

    let r = c.get(b.url(&path)).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", b.log());
    assert_eq!(header(&r, "x-wharf-cache"), "hit-shared");
    assert_eq!(r.bytes().await.unwrap(), bytes);
    assert_eq!(hub.cdn_fetches(&digest), 1, "one upstream fetch for both");
    // b's disk now holds it too (read through), and b put nothing into the bucket
    eventually(10, "b's disk holds the blob", || async {
        let r = c.get(b.url(&path)).send().await.unwrap();
        header(&r, "x-wharf-cache") == "hit-disk"
    })
    .await;
    assert_eq!(b.metric("wharf_bucket_written_bytes_total").await, 0.0);
    assert_eq!(
        b.metric("wharf_bucket_read_bytes_total").await,
        bytes.len() as f64
    );
    assert_eq!(b.metric("wharf_fills_total{source=\"bucket\"}").await, 1.0);
    // a manifest a fetched: b reads it from the bucket once, onto its disk
    let r = c
        .get(a.url("/v2/library/shared/manifests/1"))
        .header("accept", common::hub::DOCKER_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    eventually(10, "the manifest in the bucket", || async {
        a.metric("wharf_bucket_written_bytes_total").await > bytes.len() as f64
    })
    .await;
    let manifest = format!("/v2/library/shared/manifests/{}", img.digest);
    let r = c.get(b.url(&manifest)).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", b.log());
    assert_eq!(header(&r, "x-wharf-cache"), "hit-shared");
    assert!(r.bytes().await.unwrap() == img.manifest);
    let hex = img.digest.trim_start_matches("sha256:");
    assert!(
        b.data.join("manifests/sha256").join(hex).exists(),
        "on b's disk now"
    );

    s3.stop();
    for w in [&a, &b] {
        let r = c.get(w.url(&path)).send().await.unwrap();
        assert_eq!(header(&r, "x-wharf-cache"), "hit-disk");
        let got = r.bytes().await.unwrap();
        assert!(got == bytes, "a disk serves without the bucket");
    }
}

/// `wharf gc` on a shared store: least recently used first, by what every instance recorded
/// of its uses (one record per instance per interval), folded so that records do not pile up.
#[tokio::test(flavor = "multi_thread")]
async fn the_bucket_is_collected_by_least_recent_use_across_instances() {
    use wharf::cache::uses::{collect, UseLog};
    let s3 = S3::start(BUCKET).await;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open(&s3, "gc", dir.path()));
    blocking(move || {
        let blob = |i: u8| {
            let data = vec![i; 1024];
            let d = Digest::of(&data);
            store.write(Kind::Blob, &d, &data).unwrap();
            d
        };
        let (a, b, c) = (blob(1), blob(2), blob(3));
        // an instance served a: its use log says so in one record
        let log = UseLog::new(store.clone());
        log.note(Kind::Blob, &a);
        log.note(Kind::Blob, &a);
        assert_eq!(log.flush().unwrap(), 1);
        assert_eq!(log.flush().unwrap(), 0, "nothing new, nothing written");
        assert_eq!(store.records(Shelf::Uses).unwrap().len(), 1);
        // another instance served c later (its record's name carries the time)
        let later = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 100;
        store
            .put_record(
                Shelf::Uses,
                &format!("{later:012}-other"),
                format!("b {}\n", c.hex()).into_bytes(),
            )
            .unwrap();

        // b was never served since its upload: it goes first
        let done = collect(&store, 2048).unwrap();
        assert_eq!((done.removed, done.bytes, done.records), (1, 1024, 2));
        assert!(store.contains(Kind::Blob, &a) && store.contains(Kind::Blob, &c));
        assert!(!store.contains(Kind::Blob, &b));
        let records = store.records(Shelf::Uses).unwrap();
        assert_eq!(
            records.len(),
            1,
            "the records were folded into one: {records:?}"
        );
        assert!(records[0].ends_with("-gc"));

        // the folded record still knows c was used after a
        let done = collect(&store, 1024).unwrap();
        assert_eq!(done.removed, 1);
        assert!(!store.contains(Kind::Blob, &a));
        assert!(store.contains(Kind::Blob, &c));
    })
    .await;
}

/// Tag records are shared through the bucket: an instance with an empty disk takes another's
/// mapping as fresh within its TTL (no upstream request), and `wharf ls` there lists it.
#[tokio::test(flavor = "multi_thread")]
async fn a_tag_mapping_is_shared_through_the_bucket() {
    let s3 = S3::start(BUCKET).await;
    let hub = FakeHub::start().await;
    let img = hub.add_image("library/tagged", "v1", 11, &[4096]);
    let conf = format!("tag_ttl = \"1h\"\n{}", s3.store_config(BUCKET, "tags"));
    let a = Wharf::start(&hub.url(), &conf).await;
    let c = client();
    let get = |w: &Wharf| {
        c.get(w.url("/v2/library/tagged/manifests/v1"))
            .header("accept", common::hub::DOCKER_MANIFEST)
            .send()
    };
    let r = get(&a).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "docker-content-digest"), img.digest);
    eventually(10, "the manifest in the bucket", || async {
        a.metric("wharf_bucket_written_bytes_total").await >= img.manifest.len() as f64
    })
    .await;
    // the mapping goes up on its own, after the reply
    shared_tag_appears(&s3, "tags", "docker.io/library/tagged/_tags/v1").await;
    let asked = hub.counters();

    let b = Wharf::start(&hub.url(), &conf).await;
    let r = get(&b).await.unwrap();
    assert_eq!(r.status(), 200, "{}", b.log());
    assert_eq!(header(&r, "docker-content-digest"), img.digest);
    assert!(r.bytes().await.unwrap() == img.manifest);
    let now = hub.counters();
    assert_eq!(
        (now.manifest_gets, now.manifest_heads),
        (asked.manifest_gets, asked.manifest_heads),
        "b took a's mapping as fresh"
    );

    // a third data directory, no server: ls sees the tag the cluster shares
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("wharf.toml");
    std::fs::write(&config, &conf).unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_wharf"))
        .arg("ls")
        .args(["--upstream", common::NO_UPSTREAM])
        .arg("--config")
        .arg(&config)
        .arg("--data")
        .arg(dir.path().join("data"))
        .arg("--json")
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed = String::from_utf8(out.stdout).unwrap();
    assert!(
        listed.contains("docker.io/library/tagged:v1") && listed.contains(&img.digest),
        "{listed}"
    );
}

/// An instance with an empty disk serves a whole image the bucket holds with the upstream
/// down: the tag's shared record names the manifest, and what the bucket's manifest refers to
/// is held by the repository without the upstream vouching for each blob.
#[tokio::test(flavor = "multi_thread")]
async fn a_fresh_instance_serves_an_image_from_the_bucket_with_the_upstream_down() {
    let s3 = S3::start(BUCKET).await;
    let hub = FakeHub::start().await;
    let img = hub.add_image("library/kept", "v1", 13, &[4096, 3 << 20]);
    let conf = format!("tag_ttl = \"1h\"\n{}", s3.store_config(BUCKET, "kept"));
    let a = Wharf::start(&hub.url(), &conf).await;
    let c = client();
    let get = |w: &Wharf, path: String| {
        c.get(w.url(&path))
            .header("accept", common::hub::DOCKER_MANIFEST)
            .send()
    };
    let tag = "/v2/library/kept/manifests/v1".to_owned();
    assert_eq!(get(&a, tag.clone()).await.unwrap().status(), 200);
    for (d, bytes) in &img.blobs {
        let r = get(&a, format!("/v2/library/kept/blobs/{d}"))
            .await
            .unwrap();
        assert!(r.bytes().await.unwrap() == bytes);
    }
    let total: usize = img.manifest.len() + img.blobs.iter().map(|(_, b)| b.len()).sum::<usize>();
    eventually(10, "the image in the bucket", || async {
        a.metric("wharf_bucket_written_bytes_total").await >= total as f64
    })
    .await;
    shared_tag_appears(&s3, "kept", "docker.io/library/kept/_tags/v1").await;

    hub.set_faults(common::Faults {
        status: Some(503),
        ..Default::default()
    });
    let b = Wharf::start(&hub.url(), &conf).await;
    let r = get(&b, tag).await.unwrap();
    assert_eq!(r.status(), 200, "{}", b.log());
    assert!(r.bytes().await.unwrap() == img.manifest);
    for (d, bytes) in &img.blobs {
        let r = get(&b, format!("/v2/library/kept/blobs/{d}"))
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{d}: {}", b.log());
        assert!(r.bytes().await.unwrap() == bytes);
    }
}

/// A member whose tag's owner fails asks the upstream itself, and then it shares the
/// mapping: what decides is who asked the upstream, not who owns the tag.
#[tokio::test(flavor = "multi_thread")]
async fn a_member_that_asked_the_upstream_for_a_failing_owner_shares_the_tag() {
    let s3 = S3::start(BUCKET).await;
    let hub = FakeHub::start().await;
    let failing = common::fake_member(Some(500)).await;
    let listen = format!("127.0.0.1:{}", common::free_port());
    // a tag the failing member owns
    let repo = wharf::registry::RepoName::parse("library/fallback").unwrap();
    let tag = (0..)
        .map(|n| format!("t{n}"))
        .find(|t| {
            let key = wharf::cluster::tag_key("docker.io", &repo, t);
            wharf::cluster::rendezvous([listen.as_str(), failing.as_str()].into_iter(), &key)
                == Some(failing.as_str())
        })
        .unwrap();
    let img = hub.add_image("library/fallback", &tag, 12, &[2048]);
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "a-cluster-secret-for-tests").unwrap();
    let conf = format!(
        "tag_ttl = \"1h\"\n{}\n[cluster]\nlisten = \"{listen}\"\nmembers = [\"{listen}\", \"{failing}\"]\nsecret_file = \"{}\"\nhealth_interval = \"200ms\"\n",
        s3.store_config(BUCKET, "fallback"),
        secret.display()
    );
    let w = Wharf::start(&hub.url(), &conf).await;
    eventually(10, "two live members", || async {
        w.metric("wharf_cluster_members_live").await == 2.0
    })
    .await;
    let r = client()
        .get(w.url(&format!("/v2/library/fallback/manifests/{tag}")))
        .header("accept", common::hub::DOCKER_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", w.log());
    assert_eq!(header(&r, "docker-content-digest"), img.digest);
    assert_eq!(w.metric("wharf_peer_fallbacks_total").await, 1.0);
    let name = format!("docker.io/library/fallback/_tags/{tag}");
    shared_tag_appears(&s3, "fallback", &name).await;
}

/// Start-up asks the bucket nothing, not even on a fresh data directory: a bucket that
/// would take connections sees none while the instance starts and serves.
#[tokio::test(flavor = "multi_thread")]
async fn a_start_asks_the_bucket_nothing() {
    let s3 = S3::start(BUCKET).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let asked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = asked.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(socket);
        }
    });
    let hub = FakeHub::start().await;
    let conf = s3
        .store_config(BUCKET, "start")
        .replace(&s3.endpoint, &endpoint);
    let w = Wharf::start(&hub.url(), &conf).await;
    eventually(10, "the store indexed", || async {
        w.log().contains("store indexed")
    })
    .await;
    let r = client().get(w.url("/v2/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(
        asked.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "{}",
        w.log()
    );
}

/// A TCP relay to `to` that cuts every connection after `cut` bytes toward the client, as
/// a bucket's load balancer drops long or idle connections; its address.
async fn cutting_relay(to: String, cut: usize) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let to = to.clone();
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(&to).await else {
                    return;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                tokio::spawn(async move { tokio::io::copy(&mut cr, &mut sw).await });
                let mut sent = 0;
                let mut buf = vec![0; 64 << 10];
                while sent < cut {
                    let n = match sr.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n.min(cut - sent),
                    };
                    if cw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    sent += n;
                }
            });
        }
    });
    addr
}

/// A blob read from the bucket whose connection is cut on the way is asked for again from
/// where it stopped: every byte is the object's, and the read does not fail.
#[tokio::test(flavor = "multi_thread")]
async fn a_read_cut_off_on_the_way_goes_on_from_where_it_stopped() {
    let s3 = S3::start(BUCKET).await;
    let dir = tempfile::tempdir().unwrap();
    let data = pseudo_random(5, 40 << 20);
    let digest = Digest::of(&data);
    let writer = open(&s3, "cut", dir.path());
    {
        let data = data.clone();
        blocking(move || writer.write(Kind::Blob, &digest, &data).unwrap()).await;
    }
    let relay = cutting_relay(s3.endpoint.trim_start_matches("http://").into(), 6 << 20).await;
    let options = s3.options_at(&format!("http://{relay}"));
    let store = BucketStore::open(&format!("s3://{BUCKET}/cut"), &options, dir.path()).unwrap();
    let store = Arc::new(store);
    let object = {
        let store = store.clone();
        blocking(move || {
            store
                .open(Kind::Blob, &digest, Use::Serve)
                .unwrap()
                .unwrap()
        })
        .await
    };
    let mut got = Vec::new();
    while got.len() < data.len() {
        let n = (1 << 20).min(data.len() - got.len());
        let bytes = object.read_at(got.len() as u64, n).await;
        got.extend_from_slice(&bytes.expect("a cut body is read on"));
    }
    assert!(got == data, "the object whole and right");
}

/// With `presigned_for`, a blob only the bucket holds is a 307 to a presigned URL of it, which
/// serves it (ranges too) to a client with no credentials; only for a repository that holds
/// it, and a blob the bucket lacks is fetched and streamed as ever.
#[tokio::test(flavor = "multi_thread")]
async fn a_blob_only_the_bucket_holds_can_be_a_presigned_redirect() {
    let s3 = S3::start(BUCKET).await;
    // scoped: the upstream says which repository holds what
    let hub = FakeHub::start_with(common::HubOptions {
        scoped: true,
        ..Default::default()
    })
    .await;
    let img = hub.add_image("library/signed", "1", 13, &[300_000, 5000]);
    let (digest, bytes) = img.blobs[1].clone();
    let (other, other_bytes) = img.blobs[2].clone();
    let conf = s3.store_config(BUCKET, "signed").replacen(
        "[store]\n",
        "[store]\npresigned_for = \"5m\"\n",
        1,
    );
    let conf = format!("memory_object_max = 1024\n{conf}");
    let a = Wharf::start(&hub.url(), &conf).await;
    let b = Wharf::start(&hub.url(), &conf).await;
    let c = client();
    let path = format!("/v2/library/signed/blobs/{digest}");
    let r = c.get(a.url(&path)).send().await.unwrap();
    assert_eq!(header(&r, "x-wharf-cache"), "miss", "a's own fetch streams");
    assert!(r.bytes().await.unwrap() == bytes);
    eventually(10, "the blob in the bucket", || async {
        a.metric("wharf_bucket_written_bytes_total").await >= bytes.len() as f64
    })
    .await;

    let r = c.get(b.url(&path)).send().await.unwrap();
    assert_eq!(r.status(), 307, "{}", b.log());
    assert_eq!(header(&r, "x-wharf-cache"), "presigned");
    assert_eq!(
        header(&r, "content-length"),
        "0",
        "the connection can go on"
    );
    assert_eq!(header(&r, "docker-content-digest"), digest);
    let location = header(&r, "location").to_owned();
    assert!(
        location.starts_with(&s3.endpoint) && location.contains("X-Amz-Signature="),
        "{location}"
    );
    let plain = reqwest::Client::new();
    let got = plain.get(&location).send().await.unwrap();
    assert_eq!(got.status(), 200);
    assert!(
        got.bytes().await.unwrap() == bytes,
        "the presigned URL serves the blob"
    );
    let part = plain
        .get(&location)
        .header("range", "bytes=1000-1999")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), 206);
    assert!(part.bytes().await.unwrap() == bytes[1000..2000]);
    let unsigned = location.split('?').next().unwrap().to_owned();
    let refused = plain.get(&unsigned).send().await.unwrap();
    assert!(
        refused.status().is_client_error(),
        "the bucket itself is not open"
    );

    // under a repository that does not hold it: no URL
    let r = c
        .get(b.url(&format!("/v2/library/elsewhere/blobs/{digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.headers().get("location").is_none());
    // a blob the bucket does not have yet streams through b
    let r = c
        .get(b.url(&format!("/v2/library/signed/blobs/{other}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-wharf-cache"), "miss");
    assert!(r.bytes().await.unwrap() == other_bytes);
}

/// A damaged copy in the bucket (bit rot, a writer that is not wharf) is never served as the
/// blob: the fill from it fails at the end, the copy is found damaged and removed, and the
/// next request fetches the blob from the upstream.
#[tokio::test(flavor = "multi_thread")]
async fn a_damaged_copy_in_the_bucket_is_removed_and_fetched_again() {
    use object_store::ObjectStoreExt;
    let s3 = S3::start(BUCKET).await;
    let hub = FakeHub::start().await;
    let img = hub.add_image("library/rot", "1", 17, &[3 << 20]);
    let (digest, bytes) = img.blobs.last().unwrap().clone();
    let mut rotten = bytes.to_vec();
    rotten[1 << 20] ^= 0x40;
    let mut raw = object_store::aws::AmazonS3Builder::new().with_bucket_name(BUCKET);
    for (k, v) in s3.options() {
        raw = raw.with_config(k.parse().unwrap(), v);
    }
    let raw = raw.build().unwrap();
    let key = format!("rot/blobs/sha256/{}", digest.trim_start_matches("sha256:"));
    raw.put(&key.as_str().into(), rotten.into()).await.unwrap();

    let w = Wharf::start(&hub.url(), &s3.store_config(BUCKET, "rot")).await;
    let path = format!("/v2/library/rot/blobs/{digest}");
    let r = client().get(w.url(&path)).send().await.unwrap();
    assert_eq!(header(&r, "x-wharf-cache"), "hit-shared");
    common::assert_not_served_whole(r).await;
    let journal = tempfile::tempdir().unwrap();
    let bucket = Arc::new(open(&s3, "rot", journal.path()));
    let d = Digest::parse(&digest).unwrap();
    eventually(10, "the damaged copy removed", || {
        let bucket = bucket.clone();
        async move { !blocking(move || bucket.contains(Kind::Blob, &d)).await }
    })
    .await;
    let r = client().get(w.url(&path)).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", w.log());
    assert_eq!(header(&r, "x-wharf-cache"), "miss");
    assert!(r.bytes().await.unwrap() == bytes);
    assert_eq!(hub.cdn_fetches(&digest), 1);
}

/// What waits for the bucket outlives the instance: an object the bucket could not take (here
/// it cannot be reached) stays written down, and goes up when the disk is opened in front of
/// a bucket again.
#[tokio::test(flavor = "multi_thread")]
async fn what_the_bucket_could_not_take_goes_up_at_the_next_start() {
    use wharf::cache::{DiskStore, Tiers};
    let s3 = S3::start(BUCKET).await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_owned();
    let good = s3.options();
    let away = s3.options_at(&format!("http://127.0.0.1:{}", common::free_port()));
    let url = format!("s3://{BUCKET}/queued");
    blocking(move || {
        let bytes = b"a manifest stored while the bucket was away";
        let d = Digest::of(bytes);
        let disk = Arc::new(DiskStore::open(&data).unwrap());
        let queued = data.join("queued");
        let waiting = || std::fs::read_dir(&queued).unwrap().count();
        {
            let bucket = BucketStore::open(&url, &away, &data.join("uploads")).unwrap();
            let tiers = Tiers::new(disk.clone(), Arc::new(bucket), &queued).unwrap();
            tiers.write(Kind::Manifest, &d, bytes).unwrap();
        } // dropped once the uploader tried (and failed)
        assert!(disk.contains(Kind::Manifest, &d));
        assert_eq!(waiting(), 1, "still waiting for the bucket");
        let bucket = Arc::new(BucketStore::open(&url, &good, &data.join("uploads")).unwrap());
        assert!(!bucket.contains(Kind::Manifest, &d));
        drop(Tiers::new(disk, bucket.clone(), &queued).unwrap()); // once its queue is done
        assert_eq!(bucket.read(Kind::Manifest, &d).unwrap().unwrap(), bytes);
        assert_eq!(waiting(), 0);
    })
    .await;
}
