//! Registry errors as clients expect them: an HTTP status plus the OCI error JSON body
//! `{"errors":[{"code":…,"message":…}]}`.
//!
//! Every failure wharf answers — bad input, a missing object, an upstream that is down — is a
//! `RegistryError`, so no client ever sees an HTML page or an empty 500. An error says what
//! went wrong ([`Cause`]) where it happened; the status it is answered with follows from that
//! here, in one place, and so does whether cached data may stand in for the upstream.

use std::fmt;

use http::StatusCode;

/// The error codes of the OCI distribution spec that wharf answers with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    BlobUnknown,
    ManifestUnknown,
    ManifestInvalid,
    NameUnknown,
    NameInvalid,
    TagInvalid,
    DigestInvalid,
    RangeInvalid,
    Unauthorized,
    Denied,
    Unsupported,
    TooManyRequests,
    /// Not a spec code: the upstream failed or could not be reached, or wharf is busy.
    Unavailable,
    /// Not a spec code (distribution's for its own failures): wharf itself failed.
    Unknown,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BlobUnknown => "BLOB_UNKNOWN",
            ErrorCode::ManifestUnknown => "MANIFEST_UNKNOWN",
            ErrorCode::ManifestInvalid => "MANIFEST_INVALID",
            ErrorCode::NameUnknown => "NAME_UNKNOWN",
            ErrorCode::NameInvalid => "NAME_INVALID",
            ErrorCode::TagInvalid => "TAG_INVALID",
            ErrorCode::DigestInvalid => "DIGEST_INVALID",
            ErrorCode::RangeInvalid => "RANGE_INVALID",
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::Denied => "DENIED",
            ErrorCode::Unsupported => "UNSUPPORTED",
            ErrorCode::TooManyRequests => "TOOMANYREQUESTS",
            ErrorCode::Unavailable => "UNAVAILABLE",
            ErrorCode::Unknown => "UNKNOWN",
        }
    }

    /// Map an upstream's error code string back onto ours (unknown ones keep the status' meaning).
    pub fn from_upstream(code: &str) -> Option<Self> {
        Some(match code {
            "BLOB_UNKNOWN" => ErrorCode::BlobUnknown,
            "MANIFEST_UNKNOWN" => ErrorCode::ManifestUnknown,
            "MANIFEST_INVALID" => ErrorCode::ManifestInvalid,
            "NAME_UNKNOWN" => ErrorCode::NameUnknown,
            "NAME_INVALID" => ErrorCode::NameInvalid,
            "TAG_INVALID" => ErrorCode::TagInvalid,
            "DIGEST_INVALID" => ErrorCode::DigestInvalid,
            "UNAUTHORIZED" => ErrorCode::Unauthorized,
            "DENIED" => ErrorCode::Denied,
            "UNSUPPORTED" => ErrorCode::Unsupported,
            "TOOMANYREQUESTS" => ErrorCode::TooManyRequests,
            _ => return None,
        })
    }
}

/// What went wrong, where it happened. The HTTP status a client gets follows from it (and
/// only from it: [`Cause::status`]); so does whether cached data may stand in for the
/// upstream's answer ([`Cause::upstream_unavailable`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    /// The request is malformed: a bad name, tag, digest or query.
    Invalid,
    /// Something a pull-through mirror does not do (a push, a delete).
    Unsupported,
    /// The object is neither cached nor upstream.
    NotFound,
    /// The range asked for is outside the blob.
    RangeUnsatisfiable,
    /// The client has not said who it is, or said it wrong.
    Unauthenticated,
    /// The client may not have this (or the mirror will not fetch it).
    Denied,
    /// wharf is at one of its bounds; the client may retry.
    Busy,
    /// The data directory has no room for what would be written.
    NoRoom,
    /// wharf's own disk, files or tasks failed.
    Local,
    /// The upstream could not be reached, failed, or answered wrong.
    UpstreamFailed,
    /// The upstream did not answer in time.
    UpstreamTimedOut,
    /// The upstream refused wharf's credentials.
    UpstreamRefused,
    /// The upstream is rate limiting wharf.
    UpstreamRateLimited,
    /// The upstream answered this client error, which is passed on.
    UpstreamRejected(StatusCode),
}

impl Cause {
    /// The HTTP status a client is answered with.
    pub fn status(self) -> StatusCode {
        match self {
            Cause::Invalid => StatusCode::BAD_REQUEST,
            Cause::Unsupported => StatusCode::METHOD_NOT_ALLOWED,
            Cause::NotFound => StatusCode::NOT_FOUND,
            Cause::RangeUnsatisfiable => StatusCode::RANGE_NOT_SATISFIABLE,
            Cause::Unauthenticated => StatusCode::UNAUTHORIZED,
            Cause::Denied | Cause::UpstreamRefused => StatusCode::FORBIDDEN,
            Cause::Busy => StatusCode::SERVICE_UNAVAILABLE,
            Cause::NoRoom => StatusCode::INSUFFICIENT_STORAGE,
            Cause::Local => StatusCode::INTERNAL_SERVER_ERROR,
            Cause::UpstreamFailed => StatusCode::BAD_GATEWAY,
            Cause::UpstreamTimedOut => StatusCode::GATEWAY_TIMEOUT,
            Cause::UpstreamRateLimited => StatusCode::TOO_MANY_REQUESTS,
            Cause::UpstreamRejected(s) => s,
        }
    }

    /// The upstream cannot answer now (down, failing, slow, rate limiting) or wharf cannot
    /// ask it now (at a bound): what is cached may stand in. Never a local failure, and never
    /// an answer the upstream did give (a 404, a refusal).
    pub fn upstream_unavailable(self) -> bool {
        matches!(
            self,
            Cause::UpstreamFailed
                | Cause::UpstreamTimedOut
                | Cause::UpstreamRateLimited
                | Cause::Busy
        )
    }
}

/// A failure to answer a registry request, ready to be sent to the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistryError {
    pub cause: Cause,
    pub code: ErrorCode,
    pub message: String,
    /// `Retry-After` to pass on (from an upstream's 429 or 503).
    pub retry_after: Option<String>,
    /// `WWW-Authenticate` to send with a 401: how to say who one is.
    pub challenge: Option<String>,
}

impl RegistryError {
    pub fn new(cause: Cause, code: ErrorCode, message: impl Into<String>) -> Self {
        RegistryError {
            cause,
            code,
            message: message.into(),
            retry_after: None,
            challenge: None,
        }
    }

    /// The HTTP status to answer with.
    pub fn status(&self) -> StatusCode {
        self.cause.status()
    }

    pub fn name_invalid(name: &str) -> Self {
        Self::new(
            Cause::Invalid,
            ErrorCode::NameInvalid,
            format!("invalid repository name {name:?}"),
        )
    }

    pub fn tag_invalid(tag: &str) -> Self {
        Self::new(
            Cause::Invalid,
            ErrorCode::TagInvalid,
            format!("invalid tag {tag:?}"),
        )
    }

    pub fn digest_invalid(digest: &str, why: &str) -> Self {
        Self::new(
            Cause::Invalid,
            ErrorCode::DigestInvalid,
            format!("invalid digest {digest:?}: {why}"),
        )
    }

    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::new(Cause::Unsupported, ErrorCode::Unsupported, message)
    }

    pub fn not_found(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::new(Cause::NotFound, code, message)
    }

    pub fn denied(message: impl Into<String>) -> Self {
        Self::new(Cause::Denied, ErrorCode::Denied, message)
    }

    /// The upstream could not be reached, failed, or answered what cannot be right.
    pub fn upstream_failed(message: impl Into<String>) -> Self {
        Self::new(Cause::UpstreamFailed, ErrorCode::Unavailable, message)
    }

    pub fn upstream_timed_out(message: impl Into<String>) -> Self {
        Self::new(Cause::UpstreamTimedOut, ErrorCode::Unavailable, message)
    }

    /// wharf is at one of its bounds: a 503 the client may retry after `seconds`.
    pub fn busy(message: impl Into<String>, seconds: u32) -> Self {
        let mut e = Self::new(Cause::Busy, ErrorCode::Unavailable, message);
        e.retry_after = Some(seconds.to_string());
        e
    }

    /// wharf's own disk, files or tasks failed: not the upstream's doing, and not something
    /// cached data may paper over.
    pub fn local(message: impl Into<String>) -> Self {
        Self::new(Cause::Local, ErrorCode::Unknown, message)
    }

    /// The OCI error JSON body.
    pub fn body(&self) -> String {
        serde_json::json!({
            "errors": [{ "code": self.code.as_str(), "message": self.message }]
        })
        .to_string()
    }
}

impl fmt::Display for RegistryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status().as_u16(),
            self.code.as_str(),
            self.message
        )
    }
}

impl std::error::Error for RegistryError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_is_oci_error_json() {
        let e = RegistryError::unsupported("wharf is a pull-through mirror");
        let v: serde_json::Value = serde_json::from_str(&e.body()).unwrap();
        assert_eq!(v["errors"][0]["code"], "UNSUPPORTED");
        assert_eq!(v["errors"][0]["message"], "wharf is a pull-through mirror");
        assert_eq!(e.status(), StatusCode::METHOD_NOT_ALLOWED);
    }

    #[test]
    fn a_local_failure_is_no_upstream_outage() {
        let local = RegistryError::local("cannot read cached manifest: I/O error");
        assert!(!local.cause.upstream_unavailable());
        assert_eq!(
            (local.status().as_u16(), local.code.as_str()),
            (500, "UNKNOWN")
        );
        for e in [
            RegistryError::upstream_failed("connection refused"),
            RegistryError::upstream_timed_out("no answer"),
            RegistryError::busy("max_fills", 5),
        ] {
            assert!(e.cause.upstream_unavailable(), "{e}");
        }
        let gone = RegistryError::not_found(ErrorCode::ManifestUnknown, "not upstream");
        assert!(!gone.cause.upstream_unavailable());
    }
}
