//! Which registry endpoint a request is for.
//!
//! wharf serves the pull side of the distribution API only: the base endpoint, manifests, blobs
//! and tag lists. Every write is refused here, before anything else looks at the request.

use http::Method;

use super::error::{Cause, ErrorCode, RegistryError};
use super::reference::{Digest, Reference, RepoName};

/// A parsed pull request (method already checked to be GET or HEAD).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// `/v2/`: the API version check.
    Base,
    /// `/v2/<name>/manifests/<tag|digest>`
    Manifest {
        name: RepoName,
        reference: Reference,
    },
    /// `/v2/<name>/blobs/<digest>`
    Blob { name: RepoName, digest: Digest },
    /// `/v2/<name>/tags/list`, with the pagination query rebuilt from `n` and `last` only.
    TagsList { name: RepoName, query: String },
    /// `/v2/<name>/referrers/<digest>`, optionally filtered by `artifactType`.
    Referrers {
        name: RepoName,
        digest: Digest,
        artifact_type: Option<String>,
    },
}

impl Route {
    /// Parse a request line. Writes are answered with 405 `UNSUPPORTED`; malformed names, tags
    /// and digests with 400; paths outside the API with 404.
    pub fn parse(method: &Method, path: &str, query: Option<&str>) -> Result<Route, RegistryError> {
        check_method(method)?;
        let not_found = || {
            RegistryError::not_found(
                ErrorCode::NameUnknown,
                format!("no registry endpoint at {path}"),
            )
        };
        let rest = match path {
            "/v2" | "/v2/" => return Ok(Route::Base),
            p => p.strip_prefix("/v2/").ok_or_else(not_found)?,
        };
        if let Some(name) = rest.strip_suffix("/tags/list") {
            return Ok(Route::TagsList {
                name: RepoName::parse(name)?,
                query: tags_query(query.unwrap_or("")),
            });
        }
        let (head, last) = rest.rsplit_once('/').ok_or_else(not_found)?;
        let (name, kind) = head.rsplit_once('/').ok_or_else(not_found)?;
        match kind {
            "manifests" => Ok(Route::Manifest {
                name: RepoName::parse(name)?,
                reference: manifest_reference(last)?,
            }),
            "blobs" => Ok(Route::Blob {
                name: RepoName::parse(name)?,
                digest: Digest::parse(last)?,
            }),
            "referrers" => Ok(Route::Referrers {
                name: RepoName::parse(name)?,
                digest: Digest::parse(last)?,
                artifact_type: artifact_type(query.unwrap_or(""))?,
            }),
            _ => Err(not_found()),
        }
    }
}

impl Route {
    /// The repository asked about, if any.
    pub fn name(&self) -> Option<&RepoName> {
        match self {
            Route::Base => None,
            Route::Manifest { name, .. }
            | Route::Blob { name, .. }
            | Route::TagsList { name, .. }
            | Route::Referrers { name, .. } => Some(name),
        }
    }

    /// The kind of endpoint, as metrics label it.
    pub fn kind(&self) -> &'static str {
        match self {
            Route::Base => "base",
            Route::Manifest { .. } => "manifest",
            Route::Blob { .. } => "blob",
            Route::TagsList { .. } => "tags",
            Route::Referrers { .. } => "referrers",
        }
    }
}

/// A manifest reference: a digest (malformed: 400 `DIGEST_INVALID`) or a tag. Anything else
/// names no manifest there can be, which the distribution spec's conformance tests expect to
/// be a 404 `MANIFEST_UNKNOWN`, as for a tag that does not exist.
fn manifest_reference(s: &str) -> Result<Reference, RegistryError> {
    Reference::parse(s).map_err(|e| match e.code {
        ErrorCode::TagInvalid => RegistryError::not_found(
            ErrorCode::ManifestUnknown,
            format!("no manifest {s:?}: it is neither a tag nor a digest"),
        ),
        _ => e,
    })
}

/// Only pulls are served: GET and HEAD.
pub fn check_method(method: &Method) -> Result<(), RegistryError> {
    if method == Method::GET || method == Method::HEAD {
        Ok(())
    } else {
        Err(RegistryError::unsupported(format!(
            "{method} is not supported: wharf is a read-only pull-through mirror"
        )))
    }
}

/// The `artifactType` filter of a referrers request: a media type, or nothing.
fn artifact_type(query: &str) -> Result<Option<String>, RegistryError> {
    let Some((_, v)) =
        url::form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == "artifactType")
    else {
        return Ok(None);
    };
    let ok = !v.is_empty()
        && v.len() <= 255
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$&^_.+-/".contains(&b));
    if !ok {
        return Err(RegistryError::new(
            Cause::Invalid,
            ErrorCode::Unsupported,
            format!("artifactType {v:?} is not a media type"),
        ));
    }
    Ok(Some(v.into_owned()))
}

/// containerd's `ns` query parameter: the registry a mirror request is for.
pub fn namespace(query: Option<&str>) -> Option<String> {
    url::form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == "ns")
        .map(|(_, v)| v.into_owned())
}

/// Keep only the pagination parameters the spec defines, re-encoded, so that nothing else a
/// client sends ends up in an upstream URL.
fn tags_query(raw: &str) -> String {
    let mut out = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in url::form_urlencoded::parse(raw.as_bytes()) {
        match &*k {
            "n" if v.bytes().all(|b| b.is_ascii_digit()) && !v.is_empty() => {
                out.append_pair("n", &v);
            }
            "last" => {
                out.append_pair("last", &v);
            }
            _ => {}
        }
    }
    out.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(path: &str) -> Result<Route, RegistryError> {
        Route::parse(&Method::GET, path, None)
    }

    #[test]
    fn routes() {
        assert_eq!(get("/v2/").unwrap(), Route::Base);
        assert_eq!(get("/v2").unwrap(), Route::Base);
        let hex = "b".repeat(64);
        match get(&format!("/v2/a/b/blobs/sha256:{hex}")).unwrap() {
            Route::Blob { name, digest } => {
                assert_eq!(name.as_str(), "a/b");
                assert_eq!(digest.hex(), hex);
            }
            r => panic!("{r:?}"),
        }
        match get("/v2/library/busybox/manifests/latest").unwrap() {
            Route::Manifest { name, reference } => {
                assert_eq!(name.as_str(), "library/busybox");
                assert_eq!(reference.to_string(), "latest");
            }
            r => panic!("{r:?}"),
        }
        // a repository may itself be called "manifests" or "blobs"
        assert!(matches!(
            get("/v2/manifests/manifests/x").unwrap(),
            Route::Manifest { .. }
        ));
    }

    #[test]
    fn bad_input() {
        let code = |p: &str| get(p).unwrap_err().code;
        assert_eq!(code("/v2/UPPER/manifests/x"), ErrorCode::NameInvalid);
        // not a tag: no such manifest (404), as the conformance tests expect
        let e = get("/v2/a/manifests/.INVALID_MANIFEST_NAME").unwrap_err();
        assert_eq!(
            (e.status().as_u16(), e.code),
            (404, ErrorCode::ManifestUnknown)
        );
        assert_eq!(code("/v2/a/manifests/-bad"), ErrorCode::ManifestUnknown);
        // a malformed digest stays a bad request
        let e = get("/v2/a/manifests/sha256:abc").unwrap_err();
        assert_eq!(
            (e.status().as_u16(), e.code),
            (400, ErrorCode::DigestInvalid)
        );
        assert_eq!(code("/v2/a/blobs/sha256:xyz"), ErrorCode::DigestInvalid);
        assert_eq!(code("/v2/a/blobs/latest"), ErrorCode::DigestInvalid);
        assert_eq!(code("/v2/../etc/manifests/x"), ErrorCode::NameInvalid);
        assert_eq!(code("/v2/a/other/x"), ErrorCode::NameUnknown);
        assert_eq!(code("/metrics"), ErrorCode::NameUnknown);
        for m in [Method::PUT, Method::POST, Method::PATCH, Method::DELETE] {
            let e = Route::parse(&m, "/v2/a/blobs/uploads/", None).unwrap_err();
            assert_eq!(e.code, ErrorCode::Unsupported);
            assert_eq!(e.status().as_u16(), 405);
        }
    }

    #[test]
    fn referrers() {
        let hex = "c".repeat(64);
        let r = Route::parse(
            &Method::GET,
            &format!("/v2/a/referrers/sha256:{hex}"),
            Some("artifactType=application%2Fvnd.dev.sig"),
        )
        .unwrap();
        match r {
            Route::Referrers { artifact_type, .. } => {
                assert_eq!(artifact_type.as_deref(), Some("application/vnd.dev.sig"))
            }
            r => panic!("{r:?}"),
        }
        let bad = Route::parse(
            &Method::GET,
            &format!("/v2/a/referrers/sha256:{hex}"),
            Some("artifactType=a%26b%3Dc%20d"),
        );
        assert!(bad.is_err());
    }

    #[test]
    fn tags_query_is_sanitized() {
        let r = Route::parse(
            &Method::GET,
            "/v2/a/tags/list",
            Some("n=10&last=v1%202&evil=../../x&n=abc"),
        )
        .unwrap();
        assert_eq!(
            r,
            Route::TagsList {
                name: RepoName::parse("a").unwrap(),
                query: "n=10&last=v1+2".into()
            }
        );
    }
}
