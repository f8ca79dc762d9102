//! The upstream client: how wharf fetches what it does not have from the registry it mirrors.
//!
//! It speaks the registry's auth (see [`auth`]), follows blob redirects to CDNs without ever
//! carrying `Authorization` to another host (reqwest strips it on cross-host hops), reuses
//! connections, and turns every failure — refused, timed out, 5xx, 429 — into a prompt
//! [`RegistryError`] instead of a hang.

pub mod auth;
pub mod credentials;
pub mod egress;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use http::{header, Method, StatusCode};

pub use auth::{Auth, Challenge};
pub use credentials::{CredentialSource, Credentials};

use crate::metrics::METRICS;
use crate::registry::{Cause, ErrorCode, RegistryError, RepoName};

/// How to reach one upstream registry.
#[derive(Debug)]
pub struct UpstreamSettings {
    /// The registry host this upstream stands for (`docker.io`): names the tag namespace.
    pub registry: String,
    pub url: url::Url,
    pub credentials: Option<CredentialSource>,
    /// Extra CA certificates (PEM) to trust besides the system's.
    pub ca_file: Option<PathBuf>,
    /// Hosts besides the upstream's own that are trusted as it is: its token realm may get
    /// wharf's credentials there over plain HTTP, and be on an internal address.
    pub auth_hosts: Vec<String>,
    pub connect_timeout: Duration,
    /// Longest wait for response headers and between two reads of a body.
    pub read_timeout: Duration,
    /// Longest a whole request may take, retries and token included, but for a blob's body
    /// (which streams for as long as it takes): a trickle must not hold clients forever.
    pub request_timeout: Duration,
    /// This upstream's tag TTL, if it differs from the global one.
    pub tag_ttl: Option<Duration>,
    /// Never contact it: answer from the cache only.
    pub offline: bool,
}

pub struct Upstream {
    pub registry: String,
    pub tag_ttl: Option<Duration>,
    pub offline: bool,
    /// When a request last failed for want of the upstream (down, timing out, 5xx).
    last_failure: std::sync::Mutex<Option<std::time::Instant>>,
    base: String,
    http: reqwest::Client,
    auth: Auth,
    read_timeout: Duration,
    request_timeout: Duration,
}

/// A small answer read whole: a manifest, a tag list, a referrers index.
pub struct Small {
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Small {
    /// A header as text, if present and printable.
    pub fn header(&self, name: impl header::AsHeaderName) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl Upstream {
    pub fn new(s: UpstreamSettings) -> Result<Self, String> {
        let tls = tls_config(s.ca_file.as_deref())?;
        let egress = Arc::new(egress::Egress::new(&s.url, &s.auth_hosts));
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .user_agent(concat!("wharf/", env!("CARGO_PKG_VERSION")))
            .redirect(egress.redirect_policy())
            .dns_resolver(egress.resolver())
            .referer(false)
            .connect_timeout(s.connect_timeout)
            .read_timeout(s.read_timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(64)
            .tcp_nodelay(true)
            .build()
            .map_err(|e| format!("cannot build the upstream HTTP client: {e}"))?;
        let mut base = s.url.to_string();
        if !base.ends_with('/') {
            base.push('/');
        }
        let registry = s.registry;
        Ok(Upstream {
            registry: registry.clone(),
            tag_ttl: s.tag_ttl,
            offline: s.offline,
            last_failure: std::sync::Mutex::new(None),
            base,
            http,
            auth: Auth::new(&registry, s.credentials, s.request_timeout, egress),
            read_timeout: s.read_timeout,
            request_timeout: s.request_timeout,
        })
    }

    /// Send `method` for `/v2/<repo>/<rest>` (rest may carry a query), authenticating as the
    /// upstream demands. Returns a 2xx response, or the error to give the client; a 404 is
    /// reported with `not_found` unless the upstream named a code itself.
    ///
    /// A refused connection or a 5xx is tried again, up to three times after growing pauses
    /// (0.1, 0.2, 0.4 s): upstreams and CDNs fail transiently. Timeouts are not retried (a hung
    /// upstream must still be answered promptly), nor 429 or other client errors. All of it,
    /// the token included, must be over within the upstream's `request_timeout`.
    pub async fn send(
        &self,
        method: Method,
        repo: &RepoName,
        rest: &str,
        accept: Option<&str>,
        not_found: ErrorCode,
    ) -> Result<reqwest::Response, RegistryError> {
        let what = format!("{method} {repo}/{rest}");
        self.within_deadline(
            &what,
            self.send_retrying(method, repo, rest, accept, not_found),
        )
        .await
    }

    /// [`Upstream::send`], and read the body whole (at most `max` bytes), all within the
    /// upstream's `request_timeout`.
    pub async fn fetch(
        &self,
        method: Method,
        repo: &RepoName,
        rest: &str,
        accept: Option<&str>,
        not_found: ErrorCode,
        max: usize,
    ) -> Result<Small, RegistryError> {
        let what = format!("{method} {repo}/{rest}");
        self.within_deadline(&what, async {
            let resp = self
                .send_retrying(method, repo, rest, accept, not_found)
                .await?;
            if resp.status() != StatusCode::OK {
                return Err(RegistryError::upstream_failed(format!(
                    "upstream answered {} for {repo}/{rest}, where a whole answer (200) was due",
                    resp.status()
                )));
            }
            let headers = resp.headers().clone();
            let body = read_limited(resp, max).await?;
            Ok(Small { headers, body })
        })
        .await
    }

    async fn within_deadline<T>(
        &self,
        what: &str,
        work: impl std::future::Future<Output = Result<T, RegistryError>>,
    ) -> Result<T, RegistryError> {
        match tokio::time::timeout(self.request_timeout, work).await {
            Ok(result) => result,
            Err(_) => {
                self.note_failure();
                Err(RegistryError::upstream_timed_out(format!(
                    "upstream {} did not finish {what} within {:?} (request_timeout)",
                    self.registry, self.request_timeout
                )))
            }
        }
    }

    async fn send_retrying(
        &self,
        method: Method,
        repo: &RepoName,
        rest: &str,
        accept: Option<&str>,
        not_found: ErrorCode,
    ) -> Result<reqwest::Response, RegistryError> {
        if self.offline {
            return Err(RegistryError::not_found(
                not_found,
                format!("{repo}: {rest} is not cached, and wharf is offline"),
            ));
        }
        let url = format!("{}v2/{}/{}", self.base, repo, rest);
        let scope = format!("repository:{repo}:pull");
        let mut pause = RETRY_PAUSE;
        for tries_left in (0..ATTEMPTS).rev() {
            match self
                .send_once(&method, &url, &scope, accept, not_found)
                .await
            {
                Err(e) if tries_left > 0 && is_transient(&e) => {
                    tracing::debug!("retrying {method} {url} in {pause:?}: {e}");
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
                result => {
                    let failed = matches!(&result, Err(e) if matches!(e.cause, Cause::UpstreamFailed | Cause::UpstreamTimedOut));
                    *self.last_failure.lock().expect("failure time") =
                        failed.then(std::time::Instant::now);
                    return result;
                }
            }
        }
        unreachable!("the last attempt returns")
    }

    /// Whether wharf has credentials for this upstream.
    pub fn has_credentials(&self) -> bool {
        self.auth.has_credentials()
    }

    /// Longest wait for an answer, or between two reads of a body.
    pub fn read_timeout(&self) -> Duration {
        self.read_timeout
    }

    /// Record that the upstream failed a request made outside `send` (a caller's deadline).
    pub fn note_failure(&self) {
        *self.last_failure.lock().expect("failure time") = Some(std::time::Instant::now());
    }

    /// Whether the upstream just failed (in the last 10 s): optional requests, such as
    /// revalidating a tag wharf can serve stale, are better not made.
    pub fn recently_failed(&self) -> bool {
        self.last_failure
            .lock()
            .expect("failure time")
            .is_some_and(|t| t.elapsed() < RECENT_FAILURE)
    }

    async fn send_once(
        &self,
        method: &Method,
        url: &str,
        scope: &str,
        accept: Option<&str>,
        not_found: ErrorCode,
    ) -> Result<reqwest::Response, RegistryError> {
        let mut resp = self.attempt(method, url, scope, accept).await?;
        // what to authenticate with is learnt from the upstream itself, not from where it
        // redirected wharf (a CDN's 401 names no realm of the upstream's)
        if resp.status() == StatusCode::UNAUTHORIZED && resp.url().as_str().starts_with(&self.base)
        {
            let challenge = header_str(&resp, header::WWW_AUTHENTICATE).and_then(Challenge::parse);
            if let Some(c) = challenge {
                self.auth.learn(c, scope);
                resp = self.attempt(method, url, scope, accept).await?;
            }
        }
        if resp.status().is_success() {
            Ok(resp)
        } else {
            Err(upstream_error(resp, not_found).await)
        }
    }

    async fn attempt(
        &self,
        method: &Method,
        url: &str,
        scope: &str,
        accept: Option<&str>,
    ) -> Result<reqwest::Response, RegistryError> {
        METRICS
            .upstream_requests
            .with_label_values(&[&self.registry, request_kind(method, url)])
            .inc();
        let mut req = self.http.request(method.clone(), url);
        if let Some(a) = accept {
            req = req.header(header::ACCEPT, a);
        }
        match self.auth.header_for(&self.http, scope).await {
            Ok(Some(auth)) => req = req.header(header::AUTHORIZATION, auth),
            Ok(None) => {}
            Err(e) => {
                // a challenge that cannot be answered is not kept: the next request asks the
                // upstream again, so one bad answer does not fail it until a restart
                self.auth.forget_challenge();
                return Err(e);
            }
        }
        match tokio::time::timeout(self.read_timeout, req.send()).await {
            Err(_) => Err(RegistryError::upstream_timed_out(format!(
                "upstream did not answer {method} {url} within {:?}",
                self.read_timeout
            ))),
            Ok(Err(e)) => Err(transport_error(&e)),
            Ok(Ok(resp)) => {
                // Docker Hub: "ratelimit-remaining: 76;w=21600"
                let remaining = header_str(&resp, "ratelimit-remaining")
                    .and_then(|v| v.split(';').next()?.trim().parse::<i64>().ok());
                if let Some(n) = remaining {
                    METRICS
                        .ratelimit_remaining
                        .with_label_values(&[&self.registry])
                        .set(n);
                }
                Ok(resp)
            }
        }
    }
}

/// What a request to `url` is, as metrics label it.
fn request_kind(method: &Method, url: &str) -> &'static str {
    let head = method == Method::HEAD;
    let path = url.split('?').next().unwrap_or(url);
    let kind = path.rsplit('/').nth(1).unwrap_or("");
    match (kind, head) {
        ("manifests", false) => "manifest",
        ("manifests", true) => "manifest-head",
        ("blobs", false) => "blob",
        ("blobs", true) => "blob-head",
        ("referrers", _) => "referrers",
        _ if path.ends_with("/tags/list") => "tags",
        _ => "other",
    }
}

/// How long an upstream that failed is spared optional requests.
const RECENT_FAILURE: Duration = Duration::from_secs(10);

/// Tries per upstream request, and the pause before the first retry (doubled each time).
const ATTEMPTS: usize = 4;
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// Worth another try: the upstream could not be reached or failed (not a timeout, not a 4xx).
fn is_transient(e: &RegistryError) -> bool {
    e.cause == Cause::UpstreamFailed
}

/// A response header as text, if present and printable.
pub fn header_str(resp: &reqwest::Response, name: impl header::AsHeaderName) -> Option<&str> {
    resp.headers().get(name).and_then(|v| v.to_str().ok())
}

/// A transport failure as a client should see it.
pub fn transport_error(e: &reqwest::Error) -> RegistryError {
    let what = error_chain(e);
    if e.is_timeout() {
        RegistryError::upstream_timed_out(format!("upstream timed out: {what}"))
    } else if e.is_connect() {
        RegistryError::upstream_failed(format!("cannot connect to upstream: {what}"))
    } else {
        RegistryError::upstream_failed(format!("upstream request failed: {what}"))
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// Turn an upstream's non-2xx answer into the error wharf gives its client.
async fn upstream_error(resp: reqwest::Response, not_found: ErrorCode) -> RegistryError {
    let status = resp.status();
    let retry_after = header_str(&resp, header::RETRY_AFTER).map(str::to_owned);
    let body = read_limited(resp, 64 << 10).await.unwrap_or_default();
    let (code, message) = first_error(&body).unwrap_or((None, String::new()));
    let detail = |what: &str| {
        if message.is_empty() {
            what.to_owned()
        } else {
            format!("{what}: {message}")
        }
    };
    let mut err = match status {
        StatusCode::NOT_FOUND => {
            RegistryError::not_found(code.unwrap_or(not_found), detail("not found upstream"))
        }
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => RegistryError::new(
            Cause::UpstreamRefused,
            ErrorCode::Denied,
            detail(&format!(
                "the upstream refused access ({status}); check wharf's credentials for it"
            )),
        ),
        StatusCode::TOO_MANY_REQUESTS => RegistryError::new(
            Cause::UpstreamRateLimited,
            ErrorCode::TooManyRequests,
            detail("the upstream is rate limiting wharf"),
        ),
        s if s.is_client_error() => RegistryError::new(
            Cause::UpstreamRejected(s),
            code.unwrap_or(ErrorCode::Unsupported),
            detail(&format!("upstream answered {s}")),
        ),
        s => RegistryError::upstream_failed(detail(&format!("upstream answered {s}"))),
    };
    err.retry_after = retry_after;
    err
}

/// The first `{code, message}` of an OCI error body.
fn first_error(body: &[u8]) -> Option<(Option<ErrorCode>, String)> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let e = v.get("errors")?.get(0)?;
    let code = e
        .get("code")
        .and_then(|c| c.as_str())
        .and_then(ErrorCode::from_upstream);
    let message = e
        .get("message")
        .and_then(|m| m.as_str())
        .unwrap_or("")
        .to_owned();
    Some((code, message))
}

/// Read a whole response body that must not exceed `max` bytes.
pub async fn read_limited(resp: reqwest::Response, max: usize) -> Result<Bytes, RegistryError> {
    if resp.content_length().is_some_and(|n| n > max as u64) {
        return Err(RegistryError::upstream_failed(format!(
            "upstream response larger than {max} bytes"
        )));
    }
    let mut out = BytesMut::new();
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| transport_error(&e))?;
        if out.len() + chunk.len() > max {
            return Err(RegistryError::upstream_failed(format!(
                "upstream response larger than {max} bytes"
            )));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out.freeze())
}

/// rustls with ring (the provider Pingora uses), the system's roots and an optional extra CA.
fn tls_config(ca_file: Option<&std::path::Path>) -> Result<rustls::ClientConfig, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;

    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        let _ = roots.add(cert);
    }
    if let Some(path) = ca_file {
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("cannot read CA file {}: {e}", path.display()))?;
        let mut n = 0;
        for cert in certs {
            let cert = cert.map_err(|e| format!("bad certificate in {}: {e}", path.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("unusable certificate in {}: {e}", path.display()))?;
            n += 1;
        }
        if n == 0 {
            return Err(format!("CA file {} holds no certificate", path.display()));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}
