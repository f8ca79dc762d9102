//! `Route::parse` on arbitrary request lines: the first byte picks the method, the rest is the
//! path, and what follows its first `?` the query.
//!
//! Beyond not panicking: only GET and HEAD get through; what a route names is safe to use as a
//! path (no empty, `.` or `..` component); and a route rebuilt into a request line parses back
//! to itself, so nothing depends on how the client spelled it.

#![no_main]

use http::Method;
use libfuzzer_sys::fuzz_target;
use wharf::registry::{Reference, RepoName, Route};

fuzz_target!(|data: &[u8]| {
    let Some((&m, rest)) = data.split_first() else {
        return;
    };
    let method = match m % 4 {
        0 => Method::GET,
        1 => Method::HEAD,
        2 => Method::PUT,
        _ => Method::DELETE,
    };
    let text = String::from_utf8_lossy(rest);
    let (path, query) = match text.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (&*text, None),
    };
    let Ok(route) = Route::parse(&method, path, query) else {
        return;
    };
    assert!(method == Method::GET || method == Method::HEAD);
    if let Some(name) = route.name() {
        check_name(name);
    }
    let again = |path: String, query: Option<&str>| {
        Route::parse(&method, &path, query).expect("a rebuilt route parses")
    };
    let rebuilt = match &route {
        Route::Base => {
            assert!(path == "/v2" || path == "/v2/", "{path:?}");
            return;
        }
        Route::Manifest { name, reference } => {
            if let Reference::Tag(t) = reference {
                assert!(!t.as_str().contains('/') && !t.as_str().starts_with('.'));
            }
            again(format!("/v2/{name}/manifests/{reference}"), None)
        }
        Route::Blob { name, digest } => again(format!("/v2/{name}/blobs/{digest}"), None),
        Route::TagsList { name, query } => {
            // the sanitized query is a fixed point of sanitizing
            again(format!("/v2/{name}/tags/list"), Some(query))
        }
        Route::Referrers {
            name,
            digest,
            artifact_type,
        } => {
            let mut q = url::form_urlencoded::Serializer::new(String::new());
            if let Some(t) = artifact_type {
                q.append_pair("artifactType", t);
            }
            let q = q.finish();
            again(format!("/v2/{name}/referrers/{digest}"), Some(&q))
        }
    };
    assert_eq!(rebuilt, route, "{path:?} {query:?}");
});

fn check_name(name: &RepoName) {
    let s = name.as_str();
    assert!(!s.is_empty() && s.len() <= 255, "{s:?}");
    for c in s.split('/') {
        assert!(!c.is_empty() && c != "." && c != "..", "{s:?}");
    }
    assert!(s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/".contains(&b)));
}
