//! The [`Remote`] that is a registry over HTTP: URLs, `reqwest`, the registry's auth, retries
//! and deadlines live here and nowhere else.
//!
//! It follows blob redirects to CDNs without ever carrying `Authorization` to another host
//! (reqwest strips it on cross-host hops; [`super::egress`] decides which hops are allowed),
//! reuses connections, and turns every failure — refused, timed out, 5xx, 429 — into a prompt
//! [`RegistryError`] instead of a hang.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use http::{header, Method, StatusCode};

use super::auth::{Auth, Challenge};
use super::{egress, BlobBody, Head, Listing, ManifestBody, Referrers, Remote, UpstreamSettings};
use crate::metrics::METRICS;
use crate::registry::{Cause, Digest, ErrorCode, RegistryError, RepoName};

/// A registry reached over HTTP(S): an upstream, or a cluster peer standing in for one.
pub struct RegistryClient {
    registry: String,
    base: String,
    /// Put before a repository in request paths: a peer's `<registry>/` (its front picks the
    /// registry by the path's first component, as podman's mirror paths do).
    repo_prefix: String,
    /// Tries per request (a peer gets one: where it fails, the upstream is asked instead).
    attempts: usize,
    http: reqwest::Client,
    auth: Auth,
    read_timeout: Duration,
    request_timeout: Duration,
}

/// What a request is, as metrics label it.
#[derive(Clone, Copy)]
enum Kind {
    Manifest,
    ManifestHead,
    Blob,
    BlobHead,
    Tags,
    Referrers,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Manifest => "manifest",
            Kind::ManifestHead => "manifest-head",
            Kind::Blob => "blob",
            Kind::BlobHead => "blob-head",
            Kind::Tags => "tags",
            Kind::Referrers => "referrers",
        }
    }

    fn method(self) -> Method {
        match self {
            Kind::ManifestHead | Kind::BlobHead => Method::HEAD,
            _ => Method::GET,
        }
    }

    /// The code a 404 gets unless the upstream names one.
    fn not_found(self) -> ErrorCode {
        match self {
            Kind::Blob | Kind::BlobHead => ErrorCode::BlobUnknown,
            Kind::Tags => ErrorCode::NameUnknown,
            _ => ErrorCode::ManifestUnknown,
        }
    }
}

#[async_trait]
impl Remote for RegistryClient {
    async fn manifest(
        &self,
        repo: &RepoName,
        reference: &str,
        accept: &str,
    ) -> Result<ManifestBody, RegistryError> {
        let rest = format!("manifests/{reference}");
        let (headers, bytes) = self
            .fetch(Kind::Manifest, repo, &rest, Some(accept), MAX_SMALL)
            .await?;
        Ok(ManifestBody {
            digest: text(&headers, "docker-content-digest"),
            media_type: text(&headers, header::CONTENT_TYPE),
            bytes,
            shared_by_source: false,
        })
    }

    async fn manifest_head(
        &self,
        repo: &RepoName,
        reference: &str,
        accept: &str,
    ) -> Result<Head, RegistryError> {
        let rest = format!("manifests/{reference}");
        let resp = self
            .send(Kind::ManifestHead, repo, &rest, Some(accept))
            .await?;
        Ok(head(resp.headers()))
    }

    async fn blob_head(&self, repo: &RepoName, digest: &Digest) -> Result<Head, RegistryError> {
        let rest = format!("blobs/{digest}");
        let resp = self.send(Kind::BlobHead, repo, &rest, None).await?;
        Ok(head(resp.headers()))
    }

    async fn blob(&self, repo: &RepoName, digest: &Digest) -> Result<BlobBody, RegistryError> {
        let rest = format!("blobs/{digest}");
        let resp = self.send(Kind::Blob, repo, &rest, None).await?;
        if resp.status() != StatusCode::OK {
            // a 204 or a 206 is no whole blob, whatever its length says
            return Err(RegistryError::upstream_failed(format!(
                "upstream answered {} for blob {digest}, where the whole blob (200) was due",
                resp.status()
            )));
        }
        let len = resp.content_length();
        let chunks = resp
            .bytes_stream()
            .map(|c| c.map_err(|e| transport_error(&e)))
            .boxed();
        Ok(BlobBody {
            len,
            chunks,
            shared_by_source: false,
        })
    }

    async fn tags(&self, repo: &RepoName, query: &str) -> Result<Listing, RegistryError> {
        let rest = if query.is_empty() {
            "tags/list".to_owned()
        } else {
            format!("tags/list?{query}")
        };
        let (headers, body) = self
            .fetch(Kind::Tags, repo, &rest, None, MAX_TAG_LIST)
            .await?;
        Ok(Listing {
            link: text(&headers, header::LINK),
            body,
        })
    }

    async fn referrers(
        &self,
        repo: &RepoName,
        digest: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Referrers, RegistryError> {
        let mut rest = format!("referrers/{digest}");
        if let Some(t) = artifact_type {
            let q: String = url::form_urlencoded::Serializer::new(String::new())
                .append_pair("artifactType", t)
                .finish();
            rest = format!("{rest}?{q}");
        }
        let index = crate::registry::media::OCI_INDEX;
        let (headers, body) = self
            .fetch(Kind::Referrers, repo, &rest, Some(index), MAX_SMALL)
            .await?;
        Ok(Referrers {
            filtered: headers.contains_key("oci-filters-applied"),
            body,
        })
    }

    fn read_timeout(&self) -> Duration {
        self.read_timeout
    }

    fn has_credentials(&self) -> bool {
        self.auth.has_credentials()
    }
}

/// The most a manifest or referrers index may take.
const MAX_SMALL: usize = crate::registry::media::MAX_MANIFEST_BYTES;
/// The most a page of a tag list may take.
const MAX_TAG_LIST: usize = 16 << 20;

/// Tries per upstream request, and the pause before the first retry (doubled each time).
const ATTEMPTS: usize = 4;
const RETRY_PAUSE: Duration = Duration::from_millis(100);

impl RegistryClient {
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
        Ok(RegistryClient {
            auth: Auth::new(&s.registry, s.credentials, s.request_timeout, egress),
            registry: s.registry,
            base,
            repo_prefix: String::new(),
            attempts: ATTEMPTS,
            http,
            read_timeout: s.read_timeout,
            request_timeout: s.request_timeout,
        })
    }

    /// Send a request for `/v2/<repo>/<rest>` (rest may carry a query), authenticating as the
    /// upstream demands. Returns a 2xx response, or the error to give the client.
    ///
    /// A refused connection or a 5xx is tried again, up to three times after growing pauses
    /// (0.1, 0.2, 0.4 s): upstreams and CDNs fail transiently. Timeouts are not retried (a hung
    /// upstream must still be answered promptly), nor 429 or other client errors. All of it,
    /// the token included, must be over within the upstream's `request_timeout`; a blob's
    /// body then streams for as long as it takes.
    async fn send(
        &self,
        kind: Kind,
        repo: &RepoName,
        rest: &str,
        accept: Option<&str>,
    ) -> Result<reqwest::Response, RegistryError> {
        self.within_deadline(
            kind,
            repo,
            rest,
            self.send_retrying(kind, repo, rest, accept),
        )
        .await
    }

    /// [`RegistryClient::send`], and read the body whole (at most `max` bytes), all within
    /// the upstream's `request_timeout`; only a 200 is a whole answer.
    async fn fetch(
        &self,
        kind: Kind,
        repo: &RepoName,
        rest: &str,
        accept: Option<&str>,
        max: usize,
    ) -> Result<(http::HeaderMap, Bytes), RegistryError> {
        self.within_deadline(kind, repo, rest, async {
            let resp = self.send_retrying(kind, repo, rest, accept).await?;
            if resp.status() != StatusCode::OK {
                return Err(RegistryError::upstream_failed(format!(
                    "upstream answered {} for {repo}/{rest}, where a whole answer (200) was due",
                    resp.status()
                )));
            }
            let headers = resp.headers().clone();
            Ok((headers, read_limited(resp, max).await?))
        })
        .await
    }

    async fn within_deadline<T>(
        &self,
        kind: Kind,
        repo: &RepoName,
        rest: &str,
        work: impl std::future::Future<Output = Result<T, RegistryError>>,
    ) -> Result<T, RegistryError> {
        match tokio::time::timeout(self.request_timeout, work).await {
            Ok(result) => result,
            Err(_) => Err(RegistryError::upstream_timed_out(format!(
                "upstream {} did not finish {} {repo}/{rest} within {:?} (request_timeout)",
                self.registry,
                kind.method(),
                self.request_timeout
            ))),
        }
    }

    async fn send_retrying(
        &self,
        kind: Kind,
        repo: &RepoName,
        rest: &str,
        accept: Option<&str>,
    ) -> Result<reqwest::Response, RegistryError> {
        let url = format!("{}v2/{}{}/{}", self.base, self.repo_prefix, repo, rest);
        let scope = format!("repository:{repo}:pull");
        let mut pause = RETRY_PAUSE;
        for tries_left in (0..self.attempts).rev() {
            match self.send_once(kind, &url, &scope, accept).await {
                Err(e) if tries_left > 0 && e.cause == Cause::UpstreamFailed => {
                    tracing::debug!("retrying {} {url} in {pause:?}: {e}", kind.method());
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
                result => return result,
            }
        }
        unreachable!("the last attempt returns")
    }

    async fn send_once(
        &self,
        kind: Kind,
        url: &str,
        scope: &str,
        accept: Option<&str>,
    ) -> Result<reqwest::Response, RegistryError> {
        let mut resp = self.attempt(kind, url, scope, accept).await?;
        // what to authenticate with is learnt from the upstream itself, not from where it
        // redirected wharf (a CDN's 401 names no realm of the upstream's)
        if resp.status() == StatusCode::UNAUTHORIZED && resp.url().as_str().starts_with(&self.base)
        {
            let challenge = header_str(&resp, header::WWW_AUTHENTICATE).and_then(Challenge::parse);
            if let Some(c) = challenge {
                self.auth.learn(c, scope);
                resp = self.attempt(kind, url, scope, accept).await?;
            }
        }
        if resp.status().is_success() {
            Ok(resp)
        } else {
            Err(upstream_error(resp, kind.not_found()).await)
        }
    }

    async fn attempt(
        &self,
        kind: Kind,
        url: &str,
        scope: &str,
        accept: Option<&str>,
    ) -> Result<reqwest::Response, RegistryError> {
        METRICS
            .upstream_requests
            .with_label_values(&[&self.registry, kind.label()])
            .inc();
        let mut req = self.http.request(kind.method(), url);
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
                "upstream did not answer {} {url} within {:?}",
                kind.method(),
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

/// The header a cluster peer proves itself with on the others' internal listeners.
pub const PEER_SECRET: &str = "x-wharf-peer-secret";

/// What a member needs to talk to its peers: one HTTP client for all of them, and the
/// cluster's secret. Peers are addresses the operator listed, so the network guard of
/// upstreams does not apply; they never redirect.
pub struct PeerClients {
    http: reqwest::Client,
    /// `https` with the cluster's TLS, else `http`.
    scheme: &'static str,
    read_timeout: Duration,
    request_timeout: Duration,
}

impl PeerClients {
    /// Clients that wait `read_timeout` for an answer (a peer may be fetching it upstream)
    /// and give a peer `connect_timeout` to take the connection.
    pub fn new(
        secret: &str,
        tls: Option<&crate::config::MemberTls>,
        connect_timeout: Duration,
        read_timeout: Duration,
        request_timeout: Duration,
    ) -> Result<PeerClients, String> {
        let mut headers = http::HeaderMap::new();
        let mut value = http::HeaderValue::from_str(secret)
            .map_err(|_| "the cluster secret must be printable text".to_string())?;
        value.set_sensitive(true);
        headers.insert(PEER_SECRET, value);
        let (scheme, tls) = match tls {
            Some(t) => ("https", member_tls_config(t)?),
            None => ("http", tls_config(None)?),
        };
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .user_agent(concat!("wharf/", env!("CARGO_PKG_VERSION"), " (peer)"))
            .redirect(reqwest::redirect::Policy::none())
            .default_headers(headers)
            .referer(false)
            .connect_timeout(connect_timeout)
            .read_timeout(read_timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .no_proxy()
            .build()
            .map_err(|e| format!("cannot build the peer HTTP client: {e}"))?;
        Ok(PeerClients {
            http,
            scheme,
            read_timeout,
            request_timeout,
        })
    }

    /// The remote that is the member at `addr` (`host:port` of its internal listener),
    /// standing in for `registry`.
    pub fn remote(&self, registry: &str, addr: &str) -> RegistryClient {
        let base = format!("{}://{addr}/", self.scheme);
        let url = url::Url::parse(&base)
            .unwrap_or_else(|_| url::Url::parse("http://invalid/").expect("a URL"));
        let egress = Arc::new(egress::Egress::new(&url, &[]));
        RegistryClient {
            auth: Auth::new(registry, None, self.request_timeout, egress),
            registry: registry.to_owned(),
            base,
            repo_prefix: format!("{registry}/"),
            attempts: 1,
            http: self.http.clone(),
            read_timeout: self.read_timeout,
            request_timeout: self.request_timeout,
        }
    }

    /// Ask the member at `addr` who it is (its instance id), within `timeout`.
    pub async fn ping(&self, addr: &str, timeout: Duration) -> Result<String, String> {
        let url = format!("{}://{addr}{PEER_PING}", self.scheme);
        let asked = tokio::time::timeout(timeout, async {
            let resp = self
                .http
                .get(&url)
                .send()
                .await
                .map_err(|e| error_chain(&e))?;
            if !resp.status().is_success() {
                return Err(format!("answered {}", resp.status()));
            }
            // an instance id is 16 hex digits: anything much longer is no member
            let body = read_limited(resp, 64).await.map_err(|e| e.message)?;
            Ok(String::from_utf8_lossy(&body).into_owned())
        });
        match asked.await {
            Ok(r) => r.map(|id| id.trim().to_owned()),
            Err(_) => Err(format!("no answer within {timeout:?}")),
        }
    }
}

/// Where a member's internal listener says who it is.
pub const PEER_PING: &str = "/_wharf/peer";

/// What a HEAD's headers say of an object.
fn head(headers: &http::HeaderMap) -> Head {
    Head {
        digest: text(headers, "docker-content-digest").and_then(|d| Digest::parse(&d).ok()),
        len: text(headers, header::CONTENT_LENGTH).and_then(|v| v.parse().ok()),
        shared_by_source: false,
    }
}

/// A header as text, if present and printable.
fn text(headers: &http::HeaderMap, name: impl header::AsHeaderName) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// A response header as text, if present and printable.
fn header_str(resp: &reqwest::Response, name: impl header::AsHeaderName) -> Option<&str> {
    resp.headers().get(name).and_then(|v| v.to_str().ok())
}

/// A transport failure as a client should see it.
pub(super) fn transport_error(e: &reqwest::Error) -> RegistryError {
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
pub(super) async fn read_limited(
    resp: reqwest::Response,
    max: usize,
) -> Result<Bytes, RegistryError> {
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

/// The certificates (PEM) in `path`: at least one.
fn pem_certs(
    path: &std::path::Path,
) -> Result<Vec<rustls_pki_types::CertificateDer<'static>>, String> {
    use rustls_pki_types::pem::PemObject;
    let certs: Vec<_> = rustls_pki_types::CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("bad certificate in {}: {e}", path.display()))?;
    match certs.is_empty() {
        true => Err(format!("{} holds no certificate", path.display())),
        false => Ok(certs),
    }
}

/// TLS to the members: their certificate must come from the cluster's CA (whatever name it
/// bears: the roster may name members by bare IPs), and this member shows its own.
fn member_tls_config(tls: &crate::config::MemberTls) -> Result<rustls::ClientConfig, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::PrivateKeyDer;

    let mut roots = rustls::RootCertStore::empty();
    for cert in pem_certs(&tls.ca)? {
        roots
            .add(cert)
            .map_err(|e| format!("unusable certificate in {}: {e}", tls.ca.display()))?;
    }
    let key = PrivateKeyDer::from_pem_file(&tls.key)
        .map_err(|e| format!("cannot read the key {}: {e}", tls.key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| format!("cluster ca {}: {e}", tls.ca.display()))?;
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(FromClusterCa(webpki)))
        .with_client_auth_cert(pem_certs(&tls.cert)?, key)
        .map_err(|e| format!("cluster cert {}: {e}", tls.cert.display()))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// A member's certificate is checked as any server's (chain to the cluster's CA, validity,
/// usage) but for the name it is for.
#[derive(Debug)]
struct FromClusterCa(Arc<rustls::client::WebPkiServerVerifier>);

impl rustls::client::danger::ServerCertVerifier for FromClusterCa {
    fn verify_server_cert(
        &self,
        end_entity: &rustls_pki_types::CertificateDer<'_>,
        intermediates: &[rustls_pki_types::CertificateDer<'_>],
        server_name: &rustls_pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        use rustls::CertificateError::{NotValidForName, NotValidForNameContext};
        let checked =
            self.0
                .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now);
        match checked {
            // the chain, dates and usage were checked before the name
            Err(rustls::Error::InvalidCertificate(
                NotValidForName | NotValidForNameContext { .. },
            )) => Ok(rustls::client::danger::ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// rustls with ring (the provider Pingora uses), the system's roots and an optional extra CA.
fn tls_config(ca_file: Option<&std::path::Path>) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        let _ = roots.add(cert);
    }
    if let Some(path) = ca_file {
        for cert in pem_certs(path)? {
            roots
                .add(cert)
                .map_err(|e| format!("unusable certificate in {}: {e}", path.display()))?;
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
