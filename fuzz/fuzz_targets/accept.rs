//! `Accept::parse` on arbitrary header values (one per line of the input).
//!
//! Beyond not panicking: the parsed types are clean (non-empty, trimmed, no list or parameter
//! syntax left, no duplicates); a client accepts what it listed; the tag-mapping key does not
//! depend on the order of the headers and parses back to what is sent upstream; and an answer
//! fetched for a client's own key may be reused for it exactly when it accepts the type.

#![no_main]

use libfuzzer_sys::fuzz_target;
use wharf::registry::media::{self, Accept};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let values: Vec<&str> = text.split('\n').collect();
    let accept = Accept::parse(values.iter().copied());

    let sent = accept.for_upstream();
    let types: Vec<&str> = sent.split(", ").filter(|t| !t.is_empty()).collect();
    let mut seen = std::collections::HashSet::new();
    for t in &types {
        assert!(!t.contains([',', ';']) && t.trim() == *t, "{t:?}");
        assert!(seen.insert(*t), "{t:?} twice in {sent:?}");
        assert!(accept.accepts(t), "{t:?}");
    }
    // the key is a set: the same whichever header came first
    let key = accept.key();
    assert_eq!(Accept::parse(values.iter().rev().copied()).key(), key);
    let mut from_key: Vec<&str> = key.split(',').collect();
    let mut sorted = types.clone();
    from_key.sort_unstable();
    sorted.sort_unstable();
    assert_eq!(from_key, sorted);

    let candidates = [
        media::OCI_INDEX,
        media::OCI_MANIFEST,
        media::DOCKER_MANIFEST_LIST,
        media::DOCKER_MANIFEST,
        media::DOCKER_MANIFEST_V1_SIGNED,
    ];
    // (a few of the client's own: each check parses the key again)
    for t in candidates.into_iter().chain(types.iter().take(16).copied()) {
        assert_eq!(
            accept.can_reuse(&key, t),
            accept.accepts(t),
            "{t:?} for {key:?}"
        );
    }
});
