//! A lying upstream registry, written byte by byte on a raw socket so that it can break HTTP
//! in the ways real upstreams and attackers do: bodies without `Content-Length` (chunked or
//! close-delimited) that end early or never end, lengths that lie, trickles, silence. Manifests
//! and HEADs are honest unless told otherwise, so a pull through wharf gets as far as the lie.
//! With `tokens`, it demands a Bearer token from its own `/token` endpoint (which can trickle).
//! Everything on 127.0.0.1.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use super::hub::{pseudo_random, sha256, DOCKER_MANIFEST};

/// How a blob GET is answered.
#[derive(Clone, Debug, PartialEq)]
pub enum Lie {
    /// `Content-Length` and the right bytes.
    Honest,
    /// The right bytes, chunked, no `Content-Length`.
    Chunked,
    /// Chunked, no `Content-Length`: half the bytes, then the connection closes.
    ChunkedHalf,
    /// No length and no chunking (the end is the close): half the bytes, then close.
    CloseDelimitedHalf,
    /// No length and no chunking: all the bytes, then close.
    CloseDelimited,
    /// Chunked, and it never ends (junk after the real bytes).
    Endless,
    /// The right bytes, chunked, then this many bytes of junk, then a clean end.
    Longer(usize),
    /// Claims this `Content-Length`, then sends junk until wharf gives up.
    Claims(u64),
    /// `Content-Length` right, then 4 KiB per interval.
    Trickle(Duration),
    /// Accepts the request and never answers.
    Silent,
    /// `204 No Content`: a success without a body.
    NoContent,
    /// A 307 to its own `/cdn/` path, which answers with the lie inside (as Hub's CDN would).
    Redirect(Box<Lie>),
    /// A 307 to itself, again and again.
    RedirectLoop,
}

#[derive(Default)]
pub struct LiarState {
    blobs: Mutex<HashMap<String, Bytes>>,
    /// repo:tag or digest -> (media type, body)
    manifests: Mutex<HashMap<String, (String, Bytes)>>,
    lies: Mutex<HashMap<String, Lie>>,
    /// The lie for blobs it does not have (junk bytes): none means 404.
    pub unknown_blobs: Mutex<Option<Lie>>,
    /// Trickle manifest bodies, one byte per interval.
    pub trickle_manifests: Mutex<Option<Duration>>,
    /// Demand a Bearer token; `Some(d)` trickles the token response one byte per `d`.
    pub tokens: Mutex<Option<Option<Duration>>>,
    /// Every blob GET picks a lie at random instead of its own.
    pub chaos: std::sync::atomic::AtomicBool,
    /// The token realm its challenges name (default: its own `/token`).
    pub realm: Mutex<Option<String>>,
    /// Token requests that carried credentials (`Authorization`, or a password in the form).
    pub token_credentials: AtomicUsize,
    /// Requests that carried a `Referer`.
    pub referers: AtomicUsize,
    /// The `Content-Type` to answer manifests with instead of their own.
    pub manifest_type: Mutex<Option<String>>,
    /// Answer manifest GETs with a 307 to this base URL (plus the path).
    pub manifest_redirect: Mutex<Option<String>>,
    /// Answer blob GETs with a 307 to this base URL (plus the path), instead of any lie.
    pub blob_redirect: Mutex<Option<String>>,
    /// Connections open right now.
    pub open: AtomicUsize,
    /// Requests by kind: "blob", "blob-head", "manifest", "token", "other".
    pub requests: Mutex<HashMap<&'static str, usize>>,
}

pub struct Liar {
    pub addr: SocketAddr,
    pub state: Arc<LiarState>,
    task: JoinHandle<()>,
}

impl Drop for Liar {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Liar {
    pub async fn start() -> Liar {
        Self::start_on("127.0.0.1").await
    }

    /// A liar on another loopback address (127.0.0.2 stands for "another host").
    pub async fn start_on(ip: &str) -> Liar {
        // a deep accept queue: tests open hundreds of connections at once (tokio's default
        // of 1024 dropped SYNs here, which costs a second each)
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(format!("{ip}:0").parse().unwrap()).unwrap();
        let listener = socket.listen(4096).unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(LiarState::default());
        let st = state.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    continue;
                };
                let st = st.clone();
                conns.spawn(async move {
                    st.open.fetch_add(1, Ordering::SeqCst);
                    let _ = connection(sock, addr, &st).await;
                    st.open.fetch_sub(1, Ordering::SeqCst);
                });
                while conns.try_join_next().is_some() {}
            }
        });
        Liar { addr, state, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A blob it serves, answered with `lie`.
    pub fn add_blob(&self, data: Bytes, lie: Lie) -> String {
        let d = sha256(&data);
        self.state.blobs.lock().unwrap().insert(d.clone(), data);
        self.state.lies.lock().unwrap().insert(d.clone(), lie);
        d
    }

    pub fn set_lie(&self, digest: &str, lie: Lie) {
        self.state
            .lies
            .lock()
            .unwrap()
            .insert(digest.to_owned(), lie);
    }

    /// A Docker schema2 image `repo:tag` whose layers are `layers` (added with `lie`); returns
    /// (manifest digest, layer digests).
    pub fn add_image(
        &self,
        repo: &str,
        tag: &str,
        layers: &[Bytes],
        lie: Lie,
    ) -> (String, Vec<String>) {
        let config = Bytes::from(format!(r#"{{"os":"linux","repo":"{repo}","tag":"{tag}"}}"#));
        let config_digest = self.add_blob(config.clone(), Lie::Honest);
        let mut descriptors = Vec::new();
        let mut digests = Vec::new();
        for l in layers {
            let d = self.add_blob(l.clone(), lie.clone());
            descriptors.push(format!(
                r#"{{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","size":{},"digest":"{d}"}}"#,
                l.len()
            ));
            digests.push(d);
        }
        let manifest = Bytes::from(format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}","config":{{"mediaType":"application/vnd.docker.container.image.v1+json","size":{},"digest":"{config_digest}"}},"layers":[{}]}}"#,
            config.len(),
            descriptors.join(",")
        ));
        let d = sha256(&manifest);
        let mut m = self.state.manifests.lock().unwrap();
        m.insert(d.clone(), (DOCKER_MANIFEST.to_owned(), manifest.clone()));
        m.insert(
            format!("{repo}:{tag}"),
            (DOCKER_MANIFEST.to_owned(), manifest),
        );
        (d, digests)
    }

    /// A manifest served as is, by digest and as `repo:tag`, with this `Content-Type`.
    pub fn add_manifest(&self, repo: &str, tag: &str, media_type: &str, body: Bytes) -> String {
        let d = sha256(&body);
        let mut m = self.state.manifests.lock().unwrap();
        m.insert(d.clone(), (media_type.to_owned(), body.clone()));
        m.insert(format!("{repo}:{tag}"), (media_type.to_owned(), body));
        d
    }

    pub fn requests(&self, kind: &str) -> usize {
        self.state
            .requests
            .lock()
            .unwrap()
            .get(kind)
            .copied()
            .unwrap_or(0)
    }

    pub fn open_connections(&self) -> usize {
        self.state.open.load(Ordering::SeqCst)
    }
}

/// A lie picked at random, the truth (directly or behind a redirect) a third of the time.
fn random_lie() -> Lie {
    match rand::random::<u32>() % 16 {
        0 => Lie::ChunkedHalf,
        1 => Lie::CloseDelimitedHalf,
        2 => Lie::Longer(1000),
        3 => Lie::Chunked,
        4 => Lie::CloseDelimited,
        5 => Lie::Trickle(Duration::from_millis(5)),
        6 => Lie::Claims(1 << 40),
        7 => Lie::Silent,
        8 => Lie::Redirect(Box::new(Lie::ChunkedHalf)),
        9 => Lie::RedirectLoop,
        _ => Lie::Honest,
    }
}

/// Junk that does not hash to anything asked for.
pub fn junk(len: usize) -> Bytes {
    pseudo_random(0xbad, len)
}

async fn connection(sock: TcpStream, me: SocketAddr, st: &LiarState) -> std::io::Result<()> {
    let mut sock = BufReader::new(sock);
    loop {
        let mut line = String::new();
        if sock.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let mut parts = line.split_whitespace();
        let (method, target) = (
            parts.next().unwrap_or("").to_owned(),
            parts.next().unwrap_or("/").to_owned(),
        );
        let mut authorized = false;
        let mut credentials = false;
        let mut length = 0usize;
        loop {
            let mut h = String::new();
            if sock.read_line(&mut h).await? == 0 {
                return Ok(());
            }
            if h == "\r\n" || h == "\n" {
                break;
            }
            let lower = h.to_ascii_lowercase();
            if lower.starts_with("authorization: bearer liar-token") {
                authorized = true;
            } else if lower.starts_with("authorization:") {
                credentials = true;
            }
            if lower.starts_with("referer:") {
                st.referers.fetch_add(1, Ordering::SeqCst);
            }
            if let Some(n) = lower.strip_prefix("content-length:") {
                length = n.trim().parse().unwrap_or(0);
            }
        }
        if length > 0 {
            // a POSTed token form: a password in it is a credential too
            let mut body = vec![0u8; length.min(1 << 16)];
            tokio::io::AsyncReadExt::read_exact(&mut sock, &mut body).await?;
            if String::from_utf8_lossy(&body).contains("password=") {
                credentials = true;
            }
        }
        if target.starts_with("/token") && credentials {
            st.token_credentials.fetch_add(1, Ordering::SeqCst);
        }
        let path = target.split('?').next().unwrap_or("/").to_owned();
        let keep = answer(sock.get_mut(), me, st, &method, &path, authorized).await?;
        if !keep {
            return Ok(());
        }
    }
}

fn count(st: &LiarState, kind: &'static str) {
    *st.requests.lock().unwrap().entry(kind).or_default() += 1;
}

/// Answer one request; `Ok(true)` if the connection may carry another.
async fn answer(
    sock: &mut TcpStream,
    me: SocketAddr,
    st: &LiarState,
    method: &str,
    path: &str,
    authorized: bool,
) -> std::io::Result<bool> {
    let head = method == "HEAD";
    if path == "/token" {
        count(st, "token");
        let body = br#"{"token":"liar-token","expires_in":300}"#;
        let trickle = st.tokens.lock().unwrap().flatten();
        return match trickle {
            Some(every) => {
                let h = format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", body.len());
                sock.write_all(h.as_bytes()).await?;
                for b in body {
                    sock.write_all(&[*b]).await?;
                    tokio::time::sleep(every).await;
                }
                Ok(false)
            }
            None => {
                simple(sock, 200, "application/json", body, false).await?;
                Ok(true)
            }
        };
    }
    if let Some(rest) = path.strip_prefix("/cdn/") {
        count(st, "cdn");
        let (digest, lie) = rest.split_once('/').unwrap_or((rest, ""));
        if lie == "loop" {
            let h = format!("HTTP/1.1 307 Temporary Redirect\r\nLocation: http://{me}/cdn/{digest}/loop\r\nContent-Length: 0\r\n\r\n");
            sock.write_all(h.as_bytes()).await?;
            return Ok(true);
        }
        let data = st
            .blobs
            .lock()
            .unwrap()
            .get(digest)
            .cloned()
            .unwrap_or_default();
        let inner = match st.lies.lock().unwrap().get(digest) {
            Some(Lie::Redirect(inner)) => (**inner).clone(),
            _ => Lie::Honest,
        };
        return blob(sock, &data, inner).await;
    }
    let needs_token = st.tokens.lock().unwrap().is_some();
    if needs_token && !authorized && path != "/v2/" {
        let realm = st
            .realm
            .lock()
            .unwrap()
            .clone()
            .unwrap_or_else(|| format!("http://{me}/token"));
        let h = format!(
            "HTTP/1.1 401 Unauthorized\r\nWww-Authenticate: Bearer realm=\"{realm}\",service=\"liar\"\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{{}}"
        );
        sock.write_all(h.as_bytes()).await?;
        return Ok(true);
    }
    let Some(rest) = path.strip_prefix("/v2/") else {
        simple(sock, 404, "text/plain", b"no", head).await?;
        return Ok(true);
    };
    if rest.is_empty() {
        simple(sock, 200, "application/json", b"{}", head).await?;
        return Ok(true);
    }
    let (before, reference) = rest.rsplit_once('/').unwrap_or(("", ""));
    let (repo, kind) = before.rsplit_once('/').unwrap_or(("", ""));
    match kind {
        "manifests" => {
            count(st, "manifest");
            let moved = st.manifest_redirect.lock().unwrap().clone();
            if let Some(base) = moved {
                let h = format!("HTTP/1.1 307 Temporary Redirect\r\nLocation: {base}{path}\r\nContent-Length: 0\r\n\r\n");
                sock.write_all(h.as_bytes()).await?;
                return Ok(true);
            }
            let key = if reference.starts_with("sha256:") {
                reference.to_owned()
            } else {
                format!("{repo}:{reference}")
            };
            let found = st.manifests.lock().unwrap().get(&key).cloned();
            let Some((media_type, body)) = found else {
                let e = br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"no"}]}"#;
                simple(sock, 404, "application/json", e, head).await?;
                return Ok(true);
            };
            let media_type = st
                .manifest_type
                .lock()
                .unwrap()
                .clone()
                .unwrap_or(media_type);
            let h = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: {media_type}\r\nDocker-Content-Digest: {}\r\nContent-Length: {}\r\n\r\n",
                sha256(&body),
                body.len()
            );
            sock.write_all(h.as_bytes()).await?;
            if head {
                return Ok(true);
            }
            let trickle = *st.trickle_manifests.lock().unwrap();
            match trickle {
                Some(every) => {
                    for b in body.iter() {
                        sock.write_all(&[*b]).await?;
                        tokio::time::sleep(every).await;
                    }
                    Ok(false)
                }
                None => {
                    sock.write_all(&body).await?;
                    Ok(true)
                }
            }
        }
        "blobs" => {
            count(st, if head { "blob-head" } else { "blob" });
            let known = st.blobs.lock().unwrap().get(reference).cloned();
            let lie = st.lies.lock().unwrap().get(reference).cloned();
            let unknown = st.unknown_blobs.lock().unwrap().clone();
            let lie = if st.chaos.load(Ordering::Relaxed) {
                Some(random_lie())
            } else {
                lie
            };
            let (data, lie) = match (known, lie) {
                (Some(d), Some(l)) => (d, l),
                (Some(d), None) => (d, Lie::Honest),
                (None, _) => match unknown {
                    Some(l) => (junk(1 << 20), l),
                    None => {
                        let e = br#"{"errors":[{"code":"BLOB_UNKNOWN","message":"no"}]}"#;
                        simple(sock, 404, "application/json", e, head).await?;
                        return Ok(true);
                    }
                },
            };
            if head {
                let h = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nDocker-Content-Digest: {reference}\r\n\r\n",
                    data.len()
                );
                sock.write_all(h.as_bytes()).await?;
                return Ok(true);
            }
            let moved = st.blob_redirect.lock().unwrap().clone();
            if let Some(base) = moved {
                let h = format!("HTTP/1.1 307 Temporary Redirect\r\nLocation: {base}{path}\r\nContent-Length: 0\r\n\r\n");
                sock.write_all(h.as_bytes()).await?;
                return Ok(true);
            }
            match lie {
                Lie::Redirect(_) | Lie::RedirectLoop => {
                    let tail = if lie == Lie::RedirectLoop {
                        "/loop"
                    } else {
                        ""
                    };
                    let h = format!("HTTP/1.1 307 Temporary Redirect\r\nLocation: http://{me}/cdn/{reference}{tail}\r\nContent-Length: 0\r\n\r\n");
                    sock.write_all(h.as_bytes()).await?;
                    Ok(true)
                }
                lie => blob(sock, &data, lie).await,
            }
        }
        _ => {
            count(st, "other");
            simple(sock, 404, "text/plain", b"no", head).await?;
            Ok(true)
        }
    }
}

async fn simple(
    sock: &mut TcpStream,
    status: u16,
    content_type: &str,
    body: &[u8],
    head: bool,
) -> std::io::Result<()> {
    let h = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    sock.write_all(h.as_bytes()).await?;
    if !head {
        sock.write_all(body).await?;
    }
    Ok(())
}

async fn chunk(sock: &mut TcpStream, data: &[u8]) -> std::io::Result<()> {
    for part in data.chunks(64 << 10) {
        sock.write_all(format!("{:x}\r\n", part.len()).as_bytes())
            .await?;
        sock.write_all(part).await?;
        sock.write_all(b"\r\n").await?;
    }
    Ok(())
}

const OCTETS: &str = "Content-Type: application/octet-stream\r\n";

async fn blob(sock: &mut TcpStream, data: &Bytes, lie: Lie) -> std::io::Result<bool> {
    let chunked = format!("HTTP/1.1 200 OK\r\n{OCTETS}Transfer-Encoding: chunked\r\n\r\n");
    let close = format!("HTTP/1.1 200 OK\r\n{OCTETS}Connection: close\r\n\r\n");
    match lie {
        Lie::Honest => {
            let h = format!(
                "HTTP/1.1 200 OK\r\n{OCTETS}Content-Length: {}\r\n\r\n",
                data.len()
            );
            sock.write_all(h.as_bytes()).await?;
            sock.write_all(data).await?;
            Ok(true)
        }
        Lie::Chunked => {
            sock.write_all(chunked.as_bytes()).await?;
            chunk(sock, data).await?;
            sock.write_all(b"0\r\n\r\n").await?;
            Ok(true)
        }
        Lie::Longer(extra) => {
            sock.write_all(chunked.as_bytes()).await?;
            chunk(sock, data).await?;
            chunk(sock, &junk(extra)).await?;
            sock.write_all(b"0\r\n\r\n").await?;
            Ok(true)
        }
        Lie::ChunkedHalf => {
            sock.write_all(chunked.as_bytes()).await?;
            chunk(sock, &data[..data.len() / 2]).await?;
            Ok(false)
        }
        Lie::CloseDelimitedHalf => {
            sock.write_all(close.as_bytes()).await?;
            sock.write_all(&data[..data.len() / 2]).await?;
            Ok(false)
        }
        Lie::CloseDelimited => {
            sock.write_all(close.as_bytes()).await?;
            sock.write_all(data).await?;
            Ok(false)
        }
        Lie::Endless => {
            sock.write_all(chunked.as_bytes()).await?;
            chunk(sock, data).await?;
            let more = junk(256 << 10);
            loop {
                chunk(sock, &more).await?;
            }
        }
        Lie::Claims(len) => {
            let h = format!("HTTP/1.1 200 OK\r\n{OCTETS}Content-Length: {len}\r\n\r\n");
            sock.write_all(h.as_bytes()).await?;
            let more = junk(256 << 10);
            loop {
                sock.write_all(&more).await?;
            }
        }
        Lie::Trickle(every) => {
            let h = format!(
                "HTTP/1.1 200 OK\r\n{OCTETS}Content-Length: {}\r\n\r\n",
                data.len()
            );
            sock.write_all(h.as_bytes()).await?;
            for piece in data.chunks(4 << 10) {
                sock.write_all(piece).await?;
                tokio::time::sleep(every).await;
            }
            Ok(false)
        }
        Lie::Silent => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(false)
        }
        Lie::NoContent => {
            sock.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").await?;
            Ok(true)
        }
        Lie::Redirect(_) | Lie::RedirectLoop => unreachable!("answered by the caller"),
    }
}
