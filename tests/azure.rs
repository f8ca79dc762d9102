//! The shared store on Azure Blob Storage: a container on Azurite (Microsoft's emulator, on
//! 127.0.0.1, checking the account's key), as a content store on its own and behind wharf
//! instances. The S3 side of the same promises is in tests/bucket.rs.

mod common;

use std::io::Write;
use std::sync::Arc;

use common::azure::Azure;
use common::hub::pseudo_random;
use common::{blocking, client, eventually, header, FakeHub, Wharf};
use wharf::cache::{BucketStore, ContentStore, Kind};
use wharf::registry::Digest;

const CONTAINER: &str = "wharf";

fn open(azure: &Azure, prefix: &str, journal: &std::path::Path) -> BucketStore {
    BucketStore::open(
        &format!("az://{CONTAINER}/{prefix}"),
        &azure.options(),
        journal,
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_azure_container_is_a_content_store() {
    let azure = Azure::start(CONTAINER).await;
    let dir = tempfile::tempdir().unwrap();
    let store = open(&azure, "conformance", dir.path());
    wharf::cache::store::conformance::check(Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_account_key_is_refused() {
    let azure = Azure::start(CONTAINER).await;
    let dir = tempfile::tempdir().unwrap();
    let mut options = azure.options();
    options.retain(|(k, _)| k != "azure_storage_account_key");
    options.push((
        "azure_storage_account_key".into(),
        "bm90LXRoZS1rZXk=".into(),
    ));
    let url = format!("az://{CONTAINER}/creds");
    let store = BucketStore::open(&url, &options, dir.path()).unwrap();
    let e = blocking(move || {
        store
            .write(Kind::Blob, &Digest::of(b"x"), b"x")
            .unwrap_err()
    })
    .await;
    assert!(e.to_string().contains("403"), "{e}");
}

/// Parts are blocks, committed by one block list only when the bytes hashed right; blocks a
/// killed upload left are never visible.
#[tokio::test(flavor = "multi_thread")]
async fn a_long_object_goes_up_in_blocks_only_whole_and_right() {
    let azure = Azure::start(CONTAINER).await;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open(&azure, "long", dir.path()));
    common::stores::long_objects_go_up_only_whole_and_right(store.clone()).await;
    common::stores::two_uploads_of_one_digest_both_succeed(store.clone()).await;

    let data = pseudo_random(8, common::stores::LONG);
    let digest = Digest::of(&data);
    blocking(move || {
        let mut up = store.begin(Kind::Blob, &digest).unwrap();
        up.write_all(&data[..17 << 20]).unwrap(); // two blocks are in the container
        std::mem::forget(up); // as a killed process leaves it
        assert!(store.stat(Kind::Blob, &digest).unwrap().is_none());
        assert_eq!(store.list().unwrap().len(), 2, "the whole ones only");
    })
    .await;
}

/// Two instances on one container: what one fetched, the other serves without the upstream;
/// a third, with `presigned_for`, sends its client to a SAS URL of the blob.
#[tokio::test(flavor = "multi_thread")]
async fn instances_share_an_azure_container() {
    let azure = Azure::start(CONTAINER).await;
    let hub = FakeHub::start().await;
    let img = hub.add_image("library/azure", "1", 21, &[9 << 20]);
    let (digest, bytes) = img.blobs.last().unwrap().clone();
    let conf = format!(
        "memory_object_max = 1024\n{}",
        azure.store_config(CONTAINER, "cluster")
    );
    let a = Wharf::start(&hub.url(), &conf).await;
    let c = client();
    let path = format!("/v2/library/azure/blobs/{digest}");
    let r = c.get(a.url(&path)).send().await.unwrap();
    assert_eq!(header(&r, "x-wharf-cache"), "miss");
    assert_eq!(r.bytes().await.unwrap(), bytes);
    eventually(20, "the blob in the container", || async {
        a.metric("wharf_bucket_written_bytes_total").await == bytes.len() as f64
    })
    .await;

    let b = Wharf::start(&hub.url(), &conf).await;
    let r = c.get(b.url(&path)).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", b.log());
    assert_eq!(header(&r, "x-wharf-cache"), "hit-shared");
    assert!(r.bytes().await.unwrap() == bytes);
    assert_eq!(hub.cdn_fetches(&digest), 1, "one upstream fetch for both");

    let presigned = conf.replace("[store]\n", "[store]\npresigned_for = \"5m\"\n");
    let p = Wharf::start(&hub.url(), &presigned).await;
    let r = c.get(p.url(&path)).send().await.unwrap();
    assert_eq!(r.status(), 307, "{}", p.log());
    let location = header(&r, "location").to_owned();
    assert!(location.contains("sig="), "a SAS URL: {location}");
    let r = c.get(&location).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.bytes().await.unwrap() == bytes,
        "the SAS URL serves the blob"
    );
    let unsigned = location.split('?').next().unwrap();
    assert_ne!(c.get(unsigned).send().await.unwrap().status(), 200);
    assert_eq!(hub.cdn_fetches(&digest), 1);
}
