//! A Docker-Hub-like fake upstream for tests, all on 127.0.0.1:
//! - a registry that answers 401 with a Bearer challenge until given a token, serves manifests
//!   and tag lists, and answers blob GETs with a 307 to the CDN;
//! - a token endpoint (`/token` on the registry's port), anonymous or Basic-authenticated;
//! - a "CDN" on another port that rejects any request carrying `Authorization` (as S3 does);
//! - counters (per-digest CDN fetches, manifest GETs/HEADs, tokens) and switchable faults
//!   (corrupt or truncated blobs, slow bodies, 5xx, 429, a real outage by closing every socket).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use bytes::Bytes;
use sha2::{Digest as _, Sha256};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

pub fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
pub fn pseudo_random(seed: u64, len: usize) -> Bytes {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    Bytes::from(out)
}

#[derive(Default, Clone, Debug)]
pub struct Counters {
    /// Blob bodies the CDN started sending, by digest.
    pub cdn_fetches: HashMap<String, usize>,
    /// Blob bodies the CDN finished sending, by digest.
    pub cdn_completed: HashMap<String, usize>,
    /// CDN requests refused because they carried Authorization.
    pub cdn_auth_rejected: usize,
    pub manifest_gets: usize,
    pub manifest_heads: usize,
    /// The Accept header of every manifest request, joined with ", ".
    pub manifest_accepts: Vec<String>,
    pub blob_heads: usize,
    pub tokens_issued: usize,
    pub referrers_gets: usize,
    /// TCP connections accepted by the registry port.
    pub registry_connections: usize,
    pub unauthorized: usize,
    pub registry_requests: usize,
}

#[derive(Default, Clone, Debug)]
pub struct Faults {
    /// Flip one byte in the middle of every blob body.
    pub corrupt: bool,
    /// Send only this many bytes of a blob body, then cut the connection.
    pub truncate: Option<usize>,
    /// Pause this long between 64 KiB chunks of a blob body.
    pub slow_chunk: Option<Duration>,
    /// Answer every registry and CDN request with this status.
    pub status: Option<u16>,
    /// Answer the next this many registry requests with 503.
    pub fail_next: usize,
    /// Never answer registry requests (hold them for a minute).
    pub hang: bool,
    /// Take this long to answer each manifest request (GET or HEAD).
    pub manifest_delay: Option<Duration>,
}

pub struct Image {
    pub repo: String,
    pub tag: String,
    pub manifest: Bytes,
    pub digest: String,
    pub media_type: String,
    /// Config and layers, as (digest, bytes).
    pub blobs: Vec<(String, Bytes)>,
}

/// (repo, subject digest) -> (artifactType, descriptor JSON) of its referrers.
type ReferrerMap = HashMap<(String, String), Vec<(String, String)>>;

#[derive(Default)]
pub struct HubState {
    manifests: Mutex<HashMap<String, (String, Bytes)>>,
    tags: Mutex<HashMap<(String, String), String>>,
    blobs: Mutex<HashMap<String, Bytes>>,
    tokens: Mutex<HashSet<String>>,
    pub counters: Mutex<Counters>,
    pub faults: Mutex<Faults>,
    /// Basic credentials the token endpoint (or, with `basic_only`, the registry) demands.
    user: Option<(String, String)>,
    /// Registry answers a Basic challenge instead of Bearer.
    basic_only: bool,
    cdn_base: Mutex<String>,
    /// The registry port speaks TLS (`https` realm in challenges).
    tls: bool,
    /// No authentication at all (a plain registry).
    anonymous: bool,
    /// An identity token the token endpoint accepts in the OAuth2 POST form.
    refresh_token: Option<String>,
    /// The token endpoint takes only the OAuth2 POST form (GET answers 405).
    post_only: bool,
    /// Tags whose answer depends on Accept: (repo, tag) -> single-platform manifest digest,
    /// served to clients that do not accept the tag's index.
    fallbacks: Mutex<HashMap<(String, String), String>>,
    /// (repo, subject digest) -> (artifactType, descriptor JSON) of its referrers.
    referrers: Mutex<ReferrerMap>,
    /// With `scoped`: what each repository holds (blobs and manifests).
    scoped: bool,
    held: Mutex<HashMap<String, HashSet<String>>>,
}

pub struct FakeHub {
    pub registry: SocketAddr,
    pub cdn: SocketAddr,
    pub state: Arc<HubState>,
    /// With `tls`: the PEM file of the CA that signed the registry's certificate.
    pub ca_file: Option<std::path::PathBuf>,
    tasks: Vec<JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

#[derive(Default)]
pub struct HubOptions {
    pub user: Option<(String, String)>,
    pub basic_only: bool,
    /// Serve the registry over TLS with a certificate from a fresh test CA.
    pub tls: bool,
    /// A plain registry: no challenge, no tokens.
    pub anonymous: bool,
    /// Accept this identity token through the OAuth2 POST form at the token endpoint.
    pub refresh_token: Option<String>,
    /// The token endpoint answers GET with 405: only the OAuth2 POST form works.
    pub post_only: bool,
    /// Blobs and manifests exist only in the repositories whose images hold them (as in
    /// distribution): asked under another name they are unknown.
    pub scoped: bool,
}

impl FakeHub {
    pub async fn start() -> FakeHub {
        Self::start_with(HubOptions::default()).await
    }

    pub async fn start_with(opts: HubOptions) -> FakeHub {
        let state = Arc::new(HubState {
            user: opts.user,
            basic_only: opts.basic_only,
            tls: opts.tls,
            anonymous: opts.anonymous,
            refresh_token: opts.refresh_token,
            post_only: opts.post_only,
            scoped: opts.scoped,
            ..Default::default()
        });
        let dir = tempfile::tempdir().unwrap();
        let (acceptor, ca_file) = if opts.tls {
            let (acceptor, ca_pem) = test_tls();
            let path = dir.path().join("ca.pem");
            std::fs::write(&path, ca_pem).unwrap();
            (Some(acceptor), Some(path))
        } else {
            (None, None)
        };
        let reg = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let cdn = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (registry, cdn_addr) = (reg.local_addr().unwrap(), cdn.local_addr().unwrap());
        // with TLS the CDN is HTTPS too, as Docker Hub's is: wharf never moves an HTTPS
        // upstream's blob to plain HTTP
        let cdn_scheme = if opts.tls { "https" } else { "http" };
        *state.cdn_base.lock().unwrap() = format!("{cdn_scheme}://{cdn_addr}");
        let reg_app = Router::new()
            .fallback(registry_handler)
            .with_state(state.clone());
        let cdn_app = Router::new()
            .fallback(cdn_handler)
            .with_state(state.clone());
        let tasks = vec![
            tokio::spawn(serve(reg, reg_app, Some(state.clone()), acceptor.clone())),
            tokio::spawn(serve(cdn, cdn_app, None, acceptor)),
        ];
        FakeHub {
            registry,
            cdn: cdn_addr,
            state,
            ca_file,
            tasks,
            _dir: dir,
        }
    }

    pub fn url(&self) -> String {
        let scheme = if self.state.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.registry)
    }

    /// A real outage: stop listening and close every open connection.
    pub fn stop(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }

    pub fn counters(&self) -> Counters {
        self.state.counters.lock().unwrap().clone()
    }

    pub fn cdn_fetches(&self, digest: &str) -> usize {
        self.counters()
            .cdn_fetches
            .get(digest)
            .copied()
            .unwrap_or(0)
    }

    pub fn set_faults(&self, f: Faults) {
        *self.state.faults.lock().unwrap() = f;
    }

    pub fn add_blob(&self, data: Bytes) -> String {
        let d = sha256(&data);
        self.state.blobs.lock().unwrap().insert(d.clone(), data);
        d
    }

    /// Say that `repo` holds these digests (with `scoped`).
    pub fn hold(&self, repo: &str, digests: &[String]) {
        self.state
            .held
            .lock()
            .unwrap()
            .entry(repo.to_owned())
            .or_default()
            .extend(digests.iter().cloned());
    }

    pub fn add_manifest(
        &self,
        repo: &str,
        tag: Option<&str>,
        media_type: &str,
        body: Bytes,
    ) -> String {
        let d = sha256(&body);
        self.hold(repo, std::slice::from_ref(&d));
        self.state
            .manifests
            .lock()
            .unwrap()
            .insert(d.clone(), (media_type.to_owned(), body));
        if let Some(t) = tag {
            self.state
                .tags
                .lock()
                .unwrap()
                .insert((repo.to_owned(), t.to_owned()), d.clone());
        }
        d
    }

    /// Push a Docker schema2 image with layers of the given sizes (seeded, so distinct).
    pub fn add_image(&self, repo: &str, tag: &str, seed: u64, layer_sizes: &[usize]) -> Image {
        let layers: Vec<Bytes> = layer_sizes
            .iter()
            .enumerate()
            .map(|(i, &size)| pseudo_random(seed * 1000 + i as u64, size))
            .collect();
        self.add_image_of(repo, tag, seed, &layers)
    }

    /// Push a Docker schema2 image with these layers (a config seeded by `seed`).
    pub fn add_image_of(&self, repo: &str, tag: &str, seed: u64, layer_data: &[Bytes]) -> Image {
        let mut blobs = Vec::new();
        let config = Bytes::from(format!(
            r#"{{"architecture":"amd64","os":"linux","config":{{}},"rootfs":{{"type":"layers","diff_ids":[]}},"seed":{seed}}}"#
        ));
        blobs.push((self.add_blob(config.clone()), config.clone()));
        let mut layers = Vec::new();
        for data in layer_data {
            let (data, size) = (data.clone(), data.len());
            let d = self.add_blob(data.clone());
            layers.push(format!(
                r#"{{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","size":{size},"digest":"{d}"}}"#
            ));
            blobs.push((d, data));
        }
        let manifest = Bytes::from(format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}","config":{{"mediaType":"application/vnd.docker.container.image.v1+json","size":{},"digest":"{}"}},"layers":[{}]}}"#,
            config.len(),
            blobs[0].0,
            layers.join(",")
        ));
        let digest = self.add_manifest(repo, Some(tag), DOCKER_MANIFEST, manifest.clone());
        let held: Vec<String> = blobs.iter().map(|(d, _)| d.clone()).collect();
        self.hold(repo, &held);
        Image {
            repo: repo.into(),
            tag: tag.into(),
            manifest,
            digest,
            media_type: DOCKER_MANIFEST.into(),
            blobs,
        }
    }

    /// Make `tag` an index over `image`'s manifest (OCI index), served to clients that accept
    /// one; clients that do not get `image`'s own manifest, as Docker Hub does.
    pub fn add_index_tag(&self, repo: &str, tag: &str, image: &Image) -> String {
        let index = Bytes::from(format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{{"mediaType":"{}","digest":"{}","size":{},"platform":{{"architecture":"amd64","os":"linux"}}}}]}}"#,
            image.media_type,
            image.digest,
            image.manifest.len()
        ));
        let d = self.add_manifest(repo, Some(tag), OCI_INDEX, index);
        self.state
            .fallbacks
            .lock()
            .unwrap()
            .insert((repo.to_owned(), tag.to_owned()), image.digest.clone());
        d
    }

    /// Record an artifact of `artifact_type` referring to `subject`.
    pub fn add_referrer(&self, repo: &str, subject: &str, artifact_type: &str) -> String {
        let body = Bytes::from(format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","artifactType":"{artifact_type}","config":{{"mediaType":"application/vnd.oci.empty.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2}},"layers":[],"subject":{{"mediaType":"{DOCKER_MANIFEST}","digest":"{subject}","size":1}}}}"#
        ));
        let d = self.add_manifest(
            repo,
            None,
            "application/vnd.oci.image.manifest.v1+json",
            body.clone(),
        );
        let descriptor = format!(
            r#"{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{d}","size":{},"artifactType":"{artifact_type}"}}"#,
            body.len()
        );
        self.state
            .referrers
            .lock()
            .unwrap()
            .entry((repo.to_owned(), subject.to_owned()))
            .or_default()
            .push((artifact_type.to_owned(), descriptor));
        d
    }

    /// Revoke every token issued so far (as registries do before `expires_in`).
    pub fn revoke_tokens(&self) {
        self.state.tokens.lock().unwrap().clear();
    }

    /// Point an existing tag at another manifest.
    pub fn retag(&self, repo: &str, tag: &str, digest: &str) {
        self.state
            .tags
            .lock()
            .unwrap()
            .insert((repo.to_owned(), tag.to_owned()), digest.to_owned());
    }
}

impl Drop for FakeHub {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Serve `app` on `listener`; every connection lives in a JoinSet owned by this task, so
/// aborting the task closes them all.
async fn serve(
    listener: TcpListener,
    app: Router,
    count: Option<Arc<HubState>>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto;
    use hyper_util::service::TowerToHyperService;
    let mut conns = JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        if let Some(st) = &count {
            st.counters.lock().unwrap().registry_connections += 1;
        }
        let svc = TowerToHyperService::new(app.clone());
        let tls = tls.clone();
        conns.spawn(async move {
            let builder = auto::Builder::new(TokioExecutor::new());
            match tls {
                None => {
                    let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                }
                Some(acceptor) => {
                    if let Ok(s) = acceptor.accept(stream).await {
                        let _ = builder.serve_connection(TokioIo::new(s), svc).await;
                    }
                }
            }
        });
        while conns.try_join_next().is_some() {}
    }
}

/// A TLS acceptor for 127.0.0.1 with a leaf certificate signed by a fresh CA, and the CA's PEM.
fn test_tls() -> (tokio_rustls::TlsAcceptor, String) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "wharf test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone(), ca.der().clone()], key)
        .unwrap();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    (tokio_rustls::TlsAcceptor::from(Arc::new(cfg)), ca.pem())
}

fn oci_error(status: StatusCode, code: &str, msg: &str) -> Response {
    let body = format!(r#"{{"errors":[{{"code":"{code}","message":"{msg}"}}]}}"#);
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn basic_ok(headers: &HeaderMap, user: &(String, String)) -> bool {
    use base64::Engine as _;
    let want = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", user.0, user.1))
    );
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        == Some(want.as_str())
}

async fn registry_handler(State(st): State<Arc<HubState>>, req: Request) -> Response {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    st.counters.lock().unwrap().registry_requests += 1;
    if path == "/token" {
        if method == Method::POST {
            let body = axum::body::to_bytes(req.into_body(), 1 << 16)
                .await
                .unwrap_or_default();
            return token_post(&st, &body);
        }
        if st.post_only {
            return (StatusCode::METHOD_NOT_ALLOWED, "POST only").into_response();
        }
        return token(&st, req.uri().query().unwrap_or(""), req.headers());
    }
    if st.faults.lock().unwrap().hang {
        tokio::time::sleep(Duration::from_secs(60)).await;
    }
    {
        let mut f = st.faults.lock().unwrap();
        if f.fail_next > 0 {
            f.fail_next -= 1;
            return oci_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "UNAVAILABLE",
                "transient fault",
            );
        }
    }
    if let Some(s) = st.faults.lock().unwrap().status {
        let code = StatusCode::from_u16(s).unwrap();
        let mut r = oci_error(code, "TOOMANYREQUESTS", "fault injected");
        if s == 429 || s == 503 {
            r.headers_mut()
                .insert(header::RETRY_AFTER, "7".parse().unwrap());
        }
        return r;
    }
    // authentication
    let authorized = if st.anonymous {
        true
    } else if st.basic_only {
        st.user.as_ref().is_some_and(|u| basic_ok(req.headers(), u))
    } else {
        req.headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|t| st.tokens.lock().unwrap().contains(t))
    };
    if !authorized {
        st.counters.lock().unwrap().unauthorized += 1;
        let challenge = if st.basic_only {
            r#"Basic realm="fake""#.to_owned()
        } else {
            let host = req
                .headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("127.0.0.1")
                .to_owned();
            let scheme = if st.tls { "https" } else { "http" };
            format!(
                r#"Bearer realm="{scheme}://{host}/token",service="fake.registry",scope="repository:x:pull""#
            )
        };
        let mut r = oci_error(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "authentication required",
        );
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, challenge.parse().unwrap());
        return r;
    }
    if path == "/v2/" {
        return (StatusCode::OK, "{}").into_response();
    }
    let Some(rest) = path.strip_prefix("/v2/") else {
        return oci_error(StatusCode::NOT_FOUND, "NAME_UNKNOWN", "no route");
    };
    if let Some(repo) = rest.strip_suffix("/tags/list") {
        let mut tags: Vec<String> = st
            .tags
            .lock()
            .unwrap()
            .keys()
            .filter(|(r, _)| r == repo)
            .map(|(_, t)| t.clone())
            .collect();
        tags.sort();
        let body = serde_json::json!({"name": repo, "tags": tags}).to_string();
        return (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response();
    }
    let (head, reference) = rest.rsplit_once('/').unwrap_or(("", ""));
    let (repo, kind) = head.rsplit_once('/').unwrap_or(("", ""));
    match kind {
        "manifests" => {
            let accept: Vec<String> = req
                .headers()
                .get_all(header::ACCEPT)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .map(|t| t.split(';').next().unwrap_or("").trim().to_owned())
                .collect();
            let accepts =
                |t: &str| accept.is_empty() || accept.iter().any(|a| a == t || a == "*/*");
            let key = (repo.to_owned(), reference.to_owned());
            let digest = if reference.starts_with("sha256:") {
                Some(reference.to_owned())
            } else {
                let primary = st.tags.lock().unwrap().get(&key).cloned();
                let primary_type = primary
                    .as_ref()
                    .and_then(|d| st.manifests.lock().unwrap().get(d).map(|(t, _)| t.clone()));
                match (primary, primary_type) {
                    (Some(d), Some(t)) if accepts(&t) => Some(d),
                    (p, _) => st.fallbacks.lock().unwrap().get(&key).cloned().or(p),
                }
            };
            let digest = digest.filter(|d| {
                !st.scoped
                    || st
                        .held
                        .lock()
                        .unwrap()
                        .get(repo)
                        .is_some_and(|h| h.contains(d))
            });
            let found = digest.and_then(|d| {
                st.manifests
                    .lock()
                    .unwrap()
                    .get(&d)
                    .map(|(t, b)| (d.clone(), t.clone(), b.clone()))
            });
            let delay = st.faults.lock().unwrap().manifest_delay;
            if let Some(d) = delay {
                tokio::time::sleep(d).await;
            }
            {
                let mut c = st.counters.lock().unwrap();
                c.manifest_accepts.push(accept.join(", "));
                if method == Method::HEAD {
                    c.manifest_heads += 1;
                } else {
                    c.manifest_gets += 1;
                }
            }
            let Some((d, media_type, body)) = found else {
                return oci_error(
                    StatusCode::NOT_FOUND,
                    "MANIFEST_UNKNOWN",
                    "manifest unknown",
                );
            };
            let hdrs = [
                (header::CONTENT_TYPE, media_type),
                (header::HeaderName::from_static("docker-content-digest"), d),
                (header::CONTENT_LENGTH, body.len().to_string()),
                // as Docker Hub announces the pull allowance left
                (
                    header::HeaderName::from_static("ratelimit-remaining"),
                    "42;w=21600".to_owned(),
                ),
            ];
            if method == Method::HEAD {
                (StatusCode::OK, hdrs).into_response()
            } else {
                (StatusCode::OK, hdrs, body).into_response()
            }
        }
        "blobs" => {
            let held = !st.scoped
                || st
                    .held
                    .lock()
                    .unwrap()
                    .get(repo)
                    .is_some_and(|h| h.contains(reference));
            let len = st.blobs.lock().unwrap().get(reference).map(|b| b.len());
            let Some(len) = len.filter(|_| held) else {
                return oci_error(StatusCode::NOT_FOUND, "BLOB_UNKNOWN", "blob unknown");
            };
            if method == Method::HEAD {
                st.counters.lock().unwrap().blob_heads += 1;
                return (
                    StatusCode::OK,
                    [
                        (header::CONTENT_LENGTH, len.to_string()),
                        (
                            header::HeaderName::from_static("docker-content-digest"),
                            reference.to_owned(),
                        ),
                    ],
                )
                    .into_response();
            }
            let location = format!("{}/blobs/{reference}?sig=fake", st.cdn_base.lock().unwrap());
            (
                StatusCode::TEMPORARY_REDIRECT,
                [(header::LOCATION, location)],
            )
                .into_response()
        }
        "referrers" => {
            st.counters.lock().unwrap().referrers_gets += 1;
            let filter = req.uri().query().and_then(|q| {
                url::form_urlencoded::parse(q.as_bytes())
                    .find(|(k, _)| k == "artifactType")
                    .map(|(_, v)| v.into_owned())
            });
            let all = st
                .referrers
                .lock()
                .unwrap()
                .get(&(repo.to_owned(), reference.to_owned()))
                .cloned()
                .unwrap_or_default();
            let picked: Vec<String> = all
                .into_iter()
                .filter(|(t, _)| filter.as_ref().is_none_or(|f| f == t))
                .map(|(_, d)| d)
                .collect();
            let body = format!(
                r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{}]}}"#,
                picked.join(",")
            );
            let mut r = (StatusCode::OK, [(header::CONTENT_TYPE, OCI_INDEX)], body).into_response();
            if filter.is_some() {
                r.headers_mut()
                    .insert("oci-filters-applied", "artifactType".parse().unwrap());
            }
            r
        }
        _ => oci_error(StatusCode::NOT_FOUND, "NAME_UNKNOWN", "no route"),
    }
}

/// The OAuth2 form: `grant_type=refresh_token` with the identity token wharf was given.
fn token_post(st: &HubState, body: &[u8]) -> Response {
    let form: HashMap<String, String> = url::form_urlencoded::parse(body).into_owned().collect();
    let granted = match form.get("grant_type").map(String::as_str) {
        Some("refresh_token") => form.get("refresh_token") == st.refresh_token.as_ref(),
        Some("password") => st.user.as_ref().is_some_and(|(u, p)| {
            form.get("username") == Some(u) && form.get("password") == Some(p)
        }),
        _ => false,
    };
    let ok = granted
        && form
            .get("scope")
            .is_some_and(|s| s.starts_with("repository:"));
    if !ok {
        return oci_error(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "bad refresh token",
        );
    }
    let t = format!("tok{:016x}", rand::random::<u64>());
    st.tokens.lock().unwrap().insert(t.clone());
    st.counters.lock().unwrap().tokens_issued += 1;
    let body = serde_json::json!({"access_token": t, "expires_in": 300}).to_string();
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

fn token(st: &HubState, query: &str, headers: &HeaderMap) -> Response {
    if let Some(u) = &st.user {
        if !basic_ok(headers, u) {
            return oci_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", "bad credentials");
        }
    }
    if !query.contains("scope=repository") {
        return (StatusCode::BAD_REQUEST, "scope missing").into_response();
    }
    let t = format!("tok{:016x}", rand::random::<u64>());
    st.tokens.lock().unwrap().insert(t.clone());
    st.counters.lock().unwrap().tokens_issued += 1;
    let body = serde_json::json!({"token": t, "expires_in": 300}).to_string();
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

async fn cdn_handler(State(st): State<Arc<HubState>>, req: Request) -> Response {
    if req.headers().contains_key(header::AUTHORIZATION) {
        st.counters.lock().unwrap().cdn_auth_rejected += 1;
        return (StatusCode::BAD_REQUEST, "Authorization not allowed here").into_response();
    }
    let faults = st.faults.lock().unwrap().clone();
    if let Some(s) = faults.status {
        return (StatusCode::from_u16(s).unwrap(), "fault injected").into_response();
    }
    let digest = req.uri().path().trim_start_matches("/blobs/").to_owned();
    let Some(data) = st.blobs.lock().unwrap().get(&digest).cloned() else {
        return (StatusCode::NOT_FOUND, "no such blob").into_response();
    };
    *st.counters
        .lock()
        .unwrap()
        .cdn_fetches
        .entry(digest.clone())
        .or_default() += 1;
    let full_len = data.len();
    let mut data = data.to_vec();
    if faults.corrupt && !data.is_empty() {
        let mid = data.len() / 2;
        data[mid] ^= 0xff;
    }
    let cut = faults.truncate.map(|k| k.min(full_len));
    let body_len = cut.unwrap_or(full_len);
    let st2 = st.clone();
    let stream = async_stream(
        data,
        body_len,
        cut.is_some(),
        faults.slow_chunk,
        move || {
            *st2.counters
                .lock()
                .unwrap()
                .cdn_completed
                .entry(digest.clone())
                .or_default() += 1;
        },
    );
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_LENGTH, full_len)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .body(Body::from_stream(stream))
        .unwrap()
}

/// The body in 64 KiB chunks, optionally slowed, optionally ending in an error (a cut).
fn async_stream(
    data: Vec<u8>,
    len: usize,
    cut: bool,
    pause: Option<Duration>,
    done: impl FnOnce() + Send + 'static,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(2);
    tokio::spawn(async move {
        let data = Bytes::from(data);
        let mut pos = 0;
        while pos < len {
            let end = (pos + (64 << 10)).min(len);
            if tx.send(Ok(data.slice(pos..end))).await.is_err() {
                return;
            }
            pos = end;
            if let Some(p) = pause {
                tokio::time::sleep(p).await;
            }
        }
        if cut {
            let _ = tx
                .send(Err(std::io::Error::other("truncated by fault")))
                .await;
        } else {
            done();
        }
    });
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) })
}
