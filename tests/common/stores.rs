//! What a shared store must do with long objects, checked the same on each kind of bucket
//! (S3 in tests/bucket.rs, Azure in tests/azure.rs).

use std::io::Write;
use std::sync::Arc;

use wharf::cache::{ContentStore, Kind, Use};
use wharf::registry::Digest;

use super::hub::pseudo_random;

/// 20 MiB: three parts of a multipart upload.
pub const LONG: usize = 20 << 20;

/// A long object goes up in parts, wrong bytes never become visible, right ones read back
/// whole and from any offset.
pub async fn long_objects_go_up_only_whole_and_right(store: Arc<dyn ContentStore>) {
    let data = pseudo_random(7, LONG);
    let digest = Digest::of(&data);
    let (s, d, body) = (store.clone(), digest, data.clone());
    let object = tokio::task::spawn_blocking(move || {
        // wrong bytes (one flipped at the end), sent in parts: never visible
        let mut wrong = body.to_vec();
        *wrong.last_mut().unwrap() ^= 1;
        let mut up = s.begin(Kind::Blob, &d).unwrap();
        for chunk in wrong.chunks(1 << 20) {
            up.write_all(chunk).unwrap();
        }
        let e = up.commit().unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{e}");
        assert!(s.stat(Kind::Blob, &d).unwrap().is_none());
        assert!(s.list().unwrap().is_empty());

        let mut up = s.begin(Kind::Blob, &d).unwrap();
        for chunk in body.chunks(1 << 20) {
            up.write_all(chunk).unwrap();
        }
        assert_eq!(up.commit().unwrap(), LONG as u64);
        s.open(Kind::Blob, &d, Use::Serve).unwrap().unwrap()
    })
    .await
    .unwrap();
    assert_eq!(object.len, LONG as u64);
    // read in order, as a download does (one GET), then at a jump (a new one)
    let mut got = Vec::new();
    while got.len() < LONG {
        let n = (LONG - got.len()).min(300_000);
        got.extend_from_slice(&object.read_at(got.len() as u64, n).await.unwrap());
    }
    assert!(got == data, "the object reads back as written");
    let at = (9 << 20) + 5;
    assert_eq!(
        object.read_at(at as u64, 10).await.unwrap(),
        data.slice(at..at + 10)
    );
}

/// Two uploads of one long digest at once (two instances storing what both fetched): both
/// succeed, and the object reads back whole. (On Azure the first commit drops the other
/// upload's blocks, so the second commit fails although the object is there.)
pub async fn two_uploads_of_one_digest_both_succeed(store: Arc<dyn ContentStore>) {
    let data = pseudo_random(9, LONG);
    let digest = Digest::of(&data);
    tokio::task::spawn_blocking(move || {
        let mut first = store.begin(Kind::Blob, &digest).unwrap();
        first.write_all(&data[..17 << 20]).unwrap(); // two parts sent
        let mut second = store.begin(Kind::Blob, &digest).unwrap();
        second.write_all(&data).unwrap();
        assert_eq!(second.commit().unwrap(), LONG as u64);
        first.write_all(&data[17 << 20..]).unwrap();
        assert_eq!(
            first.commit().unwrap(),
            LONG as u64,
            "stored by the other: no failure"
        );
        assert_eq!(store.read(Kind::Blob, &digest).unwrap().unwrap(), data);
    })
    .await
    .unwrap();
}
