//! The front end: a Pingora HTTP service that answers every request itself.
//!
//! Pingora gives wharf its listeners, HTTP/1.1 parsing and graceful shutdown; wharf runs each
//! connection itself (bounds and deadlines in [`connections`]). Pingora's proxy layer is not
//! used: a registry mirror must follow redirects, do the token dance and outlive its clients'
//! connections (see `upstream` and `cache::fill`), so there is nothing for it to proxy. Each
//! request is parsed into a [`Route`], answered by the [`Mirror`], and written back here,
//! framed so that a cut transfer can never pass for a complete one — with one access-log line
//! per request.

pub mod access;
pub mod admin;
pub mod connections;
pub mod log;
pub mod tls;

use access::{Access, Identity};
use connections::Connections;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use http::{header, HeaderName, HeaderValue, Method};
use pingora::apps::ServerApp;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::protocols::http::ServerSession;
use pingora::protocols::{Stream, ALPN};
use pingora::server::configuration::ServerConf;
use pingora::server::ShutdownWatch;

use crate::config::Config;
use crate::metrics::{ACTIVITY, METRICS, SAMPLE_EVERY};
use crate::mirror::{chunk_size, Body, Mirror, Outcome, Reply};
use crate::registry::hub;
use crate::registry::media::Accept;
use crate::registry::route::{check_method, namespace};
use crate::registry::{Cause, ErrorCode, RegistryError, Route};

/// The registry API service.
pub struct Front {
    mirror: Arc<Mirror>,
    access: Arc<Access>,
    connections: Arc<Connections>,
    timeouts: Timeouts,
    /// TLS on this listener: the handshake is the connection's first step, under its bound
    /// and its `header_timeout` (Pingora's own listener gives it a minute, uncounted).
    tls: Option<Arc<pingora::listeners::tls::Acceptor>>,
    /// This is the internal listener of a cluster member: only members, who prove it with
    /// the cluster's secret, are answered, and always straight from the upstream.
    peers: Option<Arc<crate::cluster::Members>>,
}

/// Whether a request comes from a member of `cluster`: it carries the secret (compared in
/// constant time).
fn from_member(cluster: &crate::cluster::Members, req: &pingora::http::RequestHeader) -> bool {
    let given = req
        .headers
        .get(crate::upstream::PEER_SECRET)
        .map_or(&b""[..], |v| v.as_bytes());
    let want = cluster.secret.as_bytes();
    given.len() == want.len() && given.iter().zip(want).fold(0, |d, (a, b)| d | (a ^ b)) == 0
}

/// Per-request state, for the access log.
struct RequestCtx {
    started: Instant,
    outcome: Outcome,
    /// The registry the request went to.
    registry: String,
    /// The kind of endpoint, for metrics.
    route: &'static str,
    /// `registry/repository`, for the status page's top repositories.
    repo: Option<String>,
    /// Who asked, when clients are told apart.
    who: Option<Identity>,
}

/// Pingora hands each accepted connection here; wharf runs the connection itself: wharf is no
/// proxy in Pingora's sense (it answers everything itself), so it sits below Pingora's proxy
/// layer, whose per-request machinery cost more than the whole answer to a cached manifest,
/// and below its HTTP app loop, which gives an idle keep-alive connection no end, a client
/// trickling its headers a minute per byte, and no bound on connections. Here a connection is
/// admitted against [`Connections`], must send its first request within `header_timeout` and
/// each later one within `idle_timeout`, and requests pipelined behind each other are answered
/// in turn.
#[async_trait]
impl ServerApp for Front {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let Some(conn) = self.connections.open() else {
            if self.tls.is_none() {
                refuse(stream).await;
            } // a TLS client cannot be told anything before a handshake it is not worth
            return None;
        };
        let stream = match &self.tls {
            None => stream,
            Some(tls) => self.tls_handshake(tls, stream, &conn).await?,
        };
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            self.h2(stream, conn, shutdown).await;
            return None;
        }
        self.http1(stream, &conn, shutdown).await
    }
}

impl Front {
    /// A TLS listener's first step, within `header_timeout`; `None` if the connection is over.
    async fn tls_handshake(
        &self,
        tls: &pingora::listeners::tls::Acceptor,
        stream: Stream,
        conn: &connections::Conn,
    ) -> Option<Stream> {
        // the listener is plain TCP: its streams are Pingora's L4 streams
        let Ok(tcp) = stream
            .into_any()
            .downcast::<pingora::protocols::l4::stream::Stream>()
        else {
            return None;
        };
        let waiting = conn.waiting();
        tokio::select! {
            biased;
            done = tokio::time::timeout(self.timeouts.header, tls.tls_handshake(*tcp)) => match done {
                Ok(Ok(s)) => Some(Box::new(s) as Stream),
                Ok(Err(e)) => {
                    tracing::debug!("TLS handshake failed: {e}");
                    None
                }
                Err(_) => None,
            },
            _ = waiting.closed() => None,
        }
    }

    /// An HTTP/1 connection: its requests, pipelined ones included, read and answered in turn.
    async fn http1(
        &self,
        stream: Stream,
        conn: &connections::Conn,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let mut stream = stream;
        let mut pipelined: Option<BytesMut> = None;
        let mut stopping = shutdown.clone();
        // A new connection has header_timeout to send its first request; a kept-alive one
        // idle_timeout for the next, headers included. (One deadline per request, and no peek
        // for its first byte: both cost a tenth of a cached manifest's answer.)
        let mut deadline = self.timeouts.header;
        loop {
            let mut session = ServerSession::new_http1(stream);
            session.set_read_timeout(None); // the deadline bounds the whole read
            session.set_pipelining_enabled(true);
            if let Some(p) = pipelined.take() {
                session.set_pipelined_prefix(p);
            }
            self.next_request(&mut session, conn, &mut stopping, deadline)
                .await?;
            self.request(&mut session, shutdown).await?;
            let (s, rest) = session.finish().await.ok()??.into_parts();
            stream = s;
            pipelined = rest;
            deadline = self.timeouts.idle;
        }
    }

    /// Read the next HTTP/1 request within `deadline`; `None` if the connection is to close.
    async fn next_request(
        &self,
        session: &mut ServerSession,
        conn: &connections::Conn,
        stopping: &mut ShutdownWatch,
        deadline: std::time::Duration,
    ) -> Option<()> {
        let read = {
            let waiting = conn.waiting();
            tokio::select! {
                biased;
                read = tokio::time::timeout(deadline, session.read_request()) => read,
                _ = waiting.closed() => return None,
                _ = stopping.wait_for(|stop| *stop) => return None,
            }
        };
        match read {
            Ok(Ok(true)) => Some(()),
            Ok(Ok(false)) => None,
            Ok(Err(e)) => {
                if e.etype == InvalidHTTPHeader {
                    let bad = RegistryError::new(
                        Cause::Invalid,
                        ErrorCode::Unsupported,
                        "malformed HTTP request",
                    );
                    let _ = send(session, Reply::error(bad), false, self.timeouts.header).await;
                }
                session.shutdown().await;
                None
            }
            Err(_) => {
                tracing::debug!("closing a connection that sent no request within {deadline:?}");
                None
            }
        }
    }
}

impl Front {
    /// An HTTP/2 connection (TLS with ALPN h2): each stream is a request, answered on a task
    /// of its own, and counts against `max_connections` as a connection would (it holds as
    /// much: headers, a chunk in flight), beyond which it gets a 503 to retry. A connection
    /// with no stream open for `idle_timeout` is closed, and is one a newcomer may close at
    /// the connection bound meanwhile.
    async fn h2(
        self: &Arc<Self>,
        stream: Stream,
        conn: connections::Conn,
        shutdown: &ShutdownWatch,
    ) {
        let digest = Arc::new(pingora::protocols::Digest {
            ssl_digest: stream.get_ssl_digest(),
            timing_digest: stream.get_timing_digest(),
            proxy_digest: stream.get_proxy_digest(),
            socket_digest: stream.get_socket_digest(),
        });
        let mut options = pingora::protocols::http::v2::server::default_h2_options();
        options.max_concurrent_streams(H2_STREAMS);
        options.max_header_list_size(H2_HEADERS);
        let handshake = pingora::protocols::http::v2::server::handshake(stream, Some(options));
        let Ok(Ok(mut h2)) = tokio::time::timeout(self.timeouts.header, handshake).await else {
            return;
        };
        let open = Arc::new(AtomicUsize::new(0));
        let mut stopping = shutdown.clone();
        loop {
            let idle = open.load(Ordering::Relaxed) == 0;
            let waiting = idle.then(|| conn.waiting());
            let accepted = tokio::select! {
                biased;
                _ = stopping.wait_for(|stop| *stop) => {
                    h2.graceful_shutdown();
                    return;
                }
                _ = async { waiting.as_ref().expect("guarded").closed().await }, if idle => return,
                _ = tokio::time::sleep(self.timeouts.idle), if idle => return,
                accepted = pingora::protocols::http::v2::server::HttpSession::from_h2_conn(&mut h2, digest.clone()) => accepted,
            };
            use pingora::protocols::http::v2::server::H2Accept;
            let session = match accepted {
                Ok(Some(H2Accept::Session(s))) => s,
                Ok(Some(H2Accept::Rejected)) => continue,
                Ok(None) | Err(_) => return,
            };
            let (me, shutdown, open) = (self.clone(), shutdown.clone(), open.clone());
            open.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let mut session = ServerSession::new_http2(session);
                match me.connections.open() {
                    Some(_slot) => {
                        if me.request(&mut session, &shutdown).await.is_some() {
                            let _ = session.finish().await;
                        }
                    }
                    None => {
                        let _ = send(
                            &mut session,
                            Reply::error(busy()),
                            false,
                            me.timeouts.header,
                        )
                        .await;
                    }
                }
                open.fetch_sub(1, Ordering::Relaxed);
            });
        }
    }
}

/// Streams one HTTP/2 connection may have open at once.
const H2_STREAMS: u32 = 32;
/// Most bytes of (decoded) headers one HTTP/2 request may carry.
const H2_HEADERS: u32 = 64 << 10;

/// The answer to a request over the connection bound.
fn busy() -> RegistryError {
    RegistryError::busy(
        "wharf is serving max_connections clients; try again shortly",
        1,
    )
}

/// Turn away a connection over the bound with a 503 it may retry, once its request is in (an
/// answer before the request confuses clients). At most [`REFUSING`] are turned away at once,
/// each for a second at most; beyond that a connection is simply closed.
async fn refuse(stream: Stream) {
    static NOW: AtomicUsize = AtomicUsize::new(0);
    if NOW.fetch_add(1, Ordering::Relaxed) >= REFUSING {
        NOW.fetch_sub(1, Ordering::Relaxed);
        return;
    }
    let answer = async {
        let mut session = ServerSession::new_http1(stream);
        if !matches!(session.read_request().await, Ok(true)) {
            return;
        }
        session.set_keepalive(None);
        let head = session.req_header().method == Method::HEAD;
        let _ = send(
            &mut session,
            Reply::error(busy()),
            head,
            std::time::Duration::from_secs(1),
        )
        .await;
        session.shutdown().await;
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), answer).await;
    NOW.fetch_sub(1, Ordering::Relaxed);
}

/// Connections turned away with an answer at the same time, at most.
const REFUSING: usize = 64;

/// How long a connection may keep wharf waiting.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// For the next request on a kept-alive connection; also the longest a client may leave
    /// a chunk of a blob untaken.
    pub idle: std::time::Duration,
    /// For the first request on a new connection.
    pub header: std::time::Duration,
}

impl Front {
    /// Answer one request that was read; `None` if the connection cannot carry another.
    async fn request(&self, session: &mut ServerSession, shutdown: &ShutdownWatch) -> Option<()> {
        if *shutdown.borrow() {
            session.set_keepalive(None);
        }
        if has_body(session) {
            // wharf reads no request bodies: rather than drain one, close after answering
            session.set_keepalive(None);
        }
        let mut ctx = RequestCtx {
            started: Instant::now(),
            outcome: Outcome::Local,
            registry: String::new(),
            route: "invalid",
            repo: None,
            who: None,
        };
        let sent = self.answer(session, &mut ctx).await;
        log(session, sent.as_ref().err().map(|e| &**e), &ctx);
        // An error after the header is out: the client must see a cut transfer, not a
        // complete one, so the connection is dropped rather than reused.
        sent.ok()
    }

    /// Route one request, have the mirror answer it, and send the answer.
    async fn answer(&self, session: &mut ServerSession, ctx: &mut RequestCtx) -> Result<()> {
        let req = session.req_header();
        let head = req.method == Method::HEAD;
        if let Some(cluster) = &self.peers {
            if !from_member(cluster, req) {
                let e = RegistryError::new(
                    Cause::Unauthenticated,
                    ErrorCode::Unauthorized,
                    "this is a cluster's internal listener: members only",
                );
                return send(session, Reply::error(e), head, self.timeouts.idle).await;
            }
            if req.uri.path() == crate::upstream::PEER_PING {
                ctx.route = PING_ROUTE;
                let id = Reply::text(http::StatusCode::OK, cluster.id.clone());
                return send(session, id, head, self.timeouts.idle).await;
            }
            METRICS.peer_served.inc();
        }
        let accept = Accept::parse(
            req.headers
                .get_all(header::ACCEPT)
                .iter()
                .filter_map(|v| v.to_str().ok()),
        );
        let range = req
            .headers
            .get(header::RANGE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let routed = check_method(&req.method).and_then(|_| {
            let query = req.uri.query();
            let (up, path) = self
                .mirror
                .upstream_for(namespace(query).as_deref(), req.uri.path())?;
            let up = match self.peers {
                // a member always names the registry first: one this instance lacks is
                // refused (the member then asks the upstream), never taken for Docker Hub
                Some(_) if !names_registry(req.uri.path(), &up.registry) => {
                    return Err(RegistryError::denied(format!(
                        "this member does not mirror the registry {}",
                        req.uri.path().split('/').nth(2).unwrap_or("")
                    )));
                }
                Some(_) => self.mirror.direct(&up),
                None => up,
            };
            Ok((up, Route::parse(&req.method, &path, query)?))
        });
        let who = if self.access.is_on() && self.peers.is_none() {
            let authorization = req
                .headers
                .get(header::AUTHORIZATION)
                .map(|v| v.as_bytes().to_vec());
            let cert = client_cn(session);
            match self
                .access
                .identify(authorization.as_deref(), cert.as_deref())
                .await
            {
                Ok(who) => Some(who),
                Err(e) => return send(session, Reply::error(e), head, self.timeouts.idle).await,
            }
        } else {
            None
        };
        let reply = match routed {
            Ok((up, route)) => {
                ctx.registry.clone_from(&up.registry);
                ctx.route = route.kind();
                ctx.repo = route
                    .name()
                    .map(|n| format!("{}/{}", up.registry, hub::repository(&up.registry, n)));
                if let Some(who) = &who {
                    if !self.access.may_read(who, ctx.repo.as_deref()) {
                        let what = ctx.repo.as_deref().unwrap_or("this mirror");
                        ctx.who = Some(who.clone());
                        let refused = Reply::error(self.access.refusal(who, what));
                        return send(session, refused, head, self.timeouts.idle).await;
                    }
                }
                ctx.who = who;
                let handling = self
                    .mirror
                    .handle(&up, route, head, &accept, range.as_deref());
                tokio::select! {
                    biased;
                    reply = handling => reply,
                    _ = client_gone(session) => {
                        return Error::e_explain(ConnectionClosed, "the client left before the answer");
                    }
                }
            }
            Err(e) => Reply::error(e),
        };
        ctx.outcome = reply.outcome;
        send(session, reply, head, self.timeouts.idle).await
    }
}

/// Whether `path` (`/v2/<registry>/…`, as members ask) names `registry` first.
fn names_registry(path: &str, registry: &str) -> bool {
    path.strip_prefix("/v2/")
        .and_then(|rest| rest.split('/').next())
        .is_some_and(|first| first == registry)
}

/// The route of members' health checks (`GET /_wharf/peer` on the internal listener).
const PING_ROUTE: &str = "member_ping";

/// One access-log line and the request metrics.
fn log(session: &ServerSession, e: Option<&Error>, ctx: &RequestCtx) {
    let req = session.req_header();
    let status = session.response_written().map(|h| h.status);
    let ms = ctx.started.elapsed().as_secs_f64() * 1e3;
    let outcome = ctx.outcome.as_str();
    let bytes = session.body_bytes_sent();
    METRICS
        .requests
        .with_label_values(&[ctx.route, status.as_ref().map_or("0", |s| s.as_str())])
        .inc();
    METRICS.outcomes.with_label_values(&[outcome]).inc();
    if let Some(repo) = &ctx.repo {
        ACTIVITY.used(repo, bytes as u64);
    }
    METRICS
        .bytes_served
        .with_label_values(&[outcome])
        .inc_by(bytes as u64);
    let status = status.map_or(0, |s| s.as_u16());
    let path = req.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let (method, ms) = (req.method.as_str(), (ms * 10.0).round() / 10.0);
    let registry = ctx.registry.as_str();
    let Some(e) = e else {
        if ctx.route == PING_ROUTE && status == 200 {
            return; // a member's health check, every health_interval: counted, not logged
        }
        let user = ctx.who.as_ref().map(|w| w.name());
        return log::write(&log::Line {
            method,
            path,
            status,
            bytes,
            outcome,
            ms,
            registry,
            user: user.as_deref(),
        });
    };
    tracing::warn!(
        target: "wharf::access",
        method, path, status, bytes, outcome, ms, registry,
        user = %ctx.who.as_ref().map_or("-".into(), |w| w.name()), cut = %e
    );
}

/// Bodies being streamed right now, which share the chunk memory budget.
static TRANSFERS: AtomicUsize = AtomicUsize::new(0);

/// One body being streamed, counted while it lives.
struct Transfer;

impl Transfer {
    fn start() -> Transfer {
        TRANSFERS.fetch_add(1, Ordering::Relaxed);
        Transfer
    }

    fn chunk(&self) -> usize {
        chunk_size(TRANSFERS.load(Ordering::Relaxed))
    }
}

impl Drop for Transfer {
    fn drop(&mut self) {
        TRANSFERS.fetch_sub(1, Ordering::Relaxed);
    }
}

const API_VERSION: HeaderName = HeaderName::from_static("docker-distribution-api-version");
/// How the request was answered (an [`Outcome`]), on every response.
const WHARF_CACHE: HeaderName = HeaderName::from_static("x-wharf-cache");

/// The common name of the client's TLS certificate, if it sent one.
fn client_cn(session: &ServerSession) -> Option<String> {
    let ssl = session.digest()?.ssl_digest.as_ref()?;
    ssl.extension.get::<tls::ClientName>().map(|n| n.0.clone())
}

/// Resolves when the client closes its connection while it waits for an answer (pipelined
/// requests that arrive meanwhile are kept for later). A request that carries a body is not
/// watched: its body would be taken for the client's next request.
async fn client_gone(session: &mut ServerSession) {
    if has_body(session) {
        return std::future::pending().await;
    }
    // only ever resolves with an error: the connection closed or broke
    let _ = session.read_body_or_idle(true).await;
}

/// Whether the request announces a body.
fn has_body(session: &ServerSession) -> bool {
    let req = session.req_header();
    req.headers.contains_key(header::TRANSFER_ENCODING)
        || req
            .headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
}

/// Write a reply. An `Err` after the header is out means the transfer must be cut. Every write
/// must be taken by the client within `stall` (a whole small reply, or one chunk of a
/// streamed one): a client that reads nothing would otherwise hold its connection forever.
async fn send(
    session: &mut ServerSession,
    reply: Reply,
    head: bool,
    stall: std::time::Duration,
) -> Result<()> {
    let mut reply = reply;
    if let Body::Fill(reader) = &mut reply.body {
        if !head
            && !reply
                .headers
                .iter()
                .any(|(k, _)| k == header::CONTENT_LENGTH)
        {
            if let Err(e) = frame_unknown_length(session, &mut reply.headers, reader).await {
                reply = Reply::error(e);
            }
        }
    }
    let h = response_header(reply.status, reply.outcome, reply.headers);
    let body = match reply.body {
        Body::Stored { len: 0, .. } => Body::Empty,
        b if head => {
            drop(b);
            Body::Empty
        }
        b => b,
    };
    let small = match body {
        Body::Empty => Some(Bytes::new()),
        Body::Bytes(ref b) => Some(b.clone()),
        _ => None,
    };
    if let Some(b) = small {
        return within(stall, async {
            session.write_response_header(h).await?;
            session.write_response_body(b, true).await
        })
        .await;
    }
    within(stall, session.write_response_header(h)).await?;
    let transfer = Transfer::start();
    match body {
        Body::Empty | Body::Bytes(_) => unreachable!("written above"),
        Body::Stored {
            object,
            offset,
            len,
        } => send_stored(session, &transfer, object, offset, len, stall).await,
        Body::Fill(reader) => send_fill(session, &transfer, reader, stall).await,
    }
}

/// The response header of a reply: its own headers after those wharf puts on every response.
fn response_header(
    status: http::StatusCode,
    outcome: Outcome,
    headers: crate::mirror::Headers,
) -> Box<ResponseHeader> {
    // The header map is filled as `http` types and handed to Pingora whole: its own insert
    // re-parses every name and keeps a second map of their spelling. Names go out as HTTP/2
    // sends them (lower case, bar those Pingora knows); HTTP/1.1 names are case-insensitive.
    let mut parts = http::Response::new(()).into_parts().0;
    parts.status = status;
    parts.headers.reserve(headers.len() + 2);
    parts
        .headers
        .insert(API_VERSION, HeaderValue::from_static("registry/2.0"));
    // no client may take a manifest or blob for anything but its Content-Type says
    parts.headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    parts
        .headers
        .insert(WHARF_CACHE, HeaderValue::from_static(outcome.as_str()));
    for (k, v) in headers {
        parts.headers.insert(k, v);
    }
    Box::new(ResponseHeader::from(parts))
}

/// The body of a stored object, `len` bytes from `offset`, read and written a chunk at a time.
async fn send_stored(
    session: &mut ServerSession,
    transfer: &Transfer,
    object: crate::cache::Object,
    offset: u64,
    len: u64,
    stall: std::time::Duration,
) -> Result<()> {
    let end = offset + len;
    let mut pos = offset;
    while pos < end {
        let n = (end - pos).min(transfer.chunk() as u64) as usize;
        let chunk = object
            .read_at(pos, n)
            .await
            .map_err(|e| Error::explain(InternalError, format!("cannot read cached data: {e}")))?;
        pos += n as u64;
        within(stall, session.write_response_body(chunk, pos == end)).await?;
    }
    Ok(())
}

/// The body of a blob still arriving from upstream, written as the fill hands over chunks.
async fn send_fill(
    session: &mut ServerSession,
    transfer: &Transfer,
    mut reader: crate::cache::FillReader,
    stall: std::time::Duration,
) -> Result<()> {
    loop {
        // A fill can take its time between two chunks: a client that left meanwhile is
        // noticed here, so that the fill knows nobody waits for it any more.
        let next = tokio::select! {
            biased;
            next = reader.next_chunk(transfer.chunk()) => next,
            _ = client_gone(session) => {
                return Error::e_explain(ConnectionClosed, "the client left during the transfer");
            }
        };
        let (chunk, end) = match next {
            Ok(Some(chunk)) => (chunk, false),
            Ok(None) => (Bytes::new(), true),
            Err(e) => return Error::e_explain(InternalError, e.message),
        };
        within(stall, session.write_response_body(chunk, end)).await?;
        if end {
            return Ok(());
        }
    }
}

/// A write the client must take within `stall`.
async fn within(
    stall: std::time::Duration,
    write: impl std::future::Future<Output = Result<()>>,
) -> Result<()> {
    match tokio::time::timeout(stall, write).await {
        Ok(written) => written,
        Err(_) => Error::e_explain(
            WriteTimedout,
            format!("the client took nothing for {stall:?} (idle_timeout)"),
        ),
    }
}

/// A blob whose length nobody announced must still go out so that a cut cannot pass for its
/// end: HTTP/1.1 gets chunks, whose terminator is sent only after the digest matched; HTTP/1.0
/// knows no chunks and gets the whole verified blob with its length. (Pingora would otherwise
/// frame the body by the connection's close, which a cut looks exactly like.) HTTP/2 frames
/// every body itself, and a cut stream is reset.
async fn frame_unknown_length(
    session: &mut ServerSession,
    headers: &mut crate::mirror::Headers,
    reader: &mut crate::cache::FillReader,
) -> std::result::Result<(), RegistryError> {
    if session.is_http2() {
        return Ok(());
    }
    if session.req_header().version >= http::Version::HTTP_11 {
        headers.push((
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        ));
        return Ok(());
    }
    let len = tokio::select! {
        biased;
        len = reader.finished() => len?,
        _ = client_gone(session) => {
            return Err(RegistryError::local("the client left before the blob was verified"));
        }
    };
    headers.push((header::CONTENT_LENGTH, HeaderValue::from(len)));
    Ok(())
}

/// Build the mirror from `config` and serve until a signal stops the process.
pub fn serve(config: &Config) -> std::result::Result<(), String> {
    log::start(config.log_format);
    let open_files = connections::raise_open_files();
    let (max_connections, max_fills) =
        connections::budget(open_files, config.max_connections, config.max_fills);
    let config = &Config {
        max_fills,
        ..config.clone()
    };
    let data = config.data_dir();
    let mirror = Arc::new(Mirror::open(config)?);
    let access = Arc::new(Access::new(
        config.access.as_ref(),
        config.tls.as_ref().is_some_and(|t| t.client_ca.is_some()),
    )?);
    if !access.is_on() {
        warn_of_exposed_credentials(&mirror);
    }
    mirror
        .cache
        .disk
        .sweep_leftovers()
        .map_err(|e| format!("cannot set aside the temp files in {}: {e}", data.display()))?;
    if let (Some(uses), Some(c)) = (&mirror.cache.uses, &config.store) {
        uses.watch(c.use_interval)
            .map_err(|e| format!("cannot start recording uses: {e}"))?;
    }
    if let Some(bucket) = mirror.cache.shared.clone() {
        std::thread::spawn(move || match bucket.abort_leftovers() {
            0 => {}
            n => tracing::info!("aborted {n} uploads to the shared store an earlier run left"),
        });
    }
    let registries = mirror.registries();
    start_store_upkeep(&mirror);

    // Fail with a clear message now rather than inside Pingora's listener setup.
    std::net::TcpListener::bind(&config.listen)
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;

    let mut server = pingora_server(config, &data);
    let connections = Connections::new(max_connections);
    let front = |tls, peers| Front {
        mirror: mirror.clone(),
        access: access.clone(),
        connections: connections.clone(),
        timeouts: Timeouts {
            idle: config.idle_timeout,
            header: config.header_timeout,
        },
        tls,
        peers,
    };
    let (tls, plain) = tls_acceptor(config)?;
    let mut service = pingora::services::listening::Service::new("wharf".into(), front(tls, None));
    service.add_tcp(&config.listen);
    server.add_service(service);
    if let Some(plain) = plain {
        std::net::TcpListener::bind(plain)
            .map_err(|e| format!("cannot listen on {plain} (plain_listen): {e}"))?;
        let mut service =
            pingora::services::listening::Service::new("wharf-plain".into(), front(None, None));
        service.threads = Some(1);
        service.add_tcp(plain);
        server.add_service(service);
    }
    if let (Some(c), Some(members)) = (&config.cluster, &mirror.members) {
        std::net::TcpListener::bind(&c.listen)
            .map_err(|e| format!("cannot listen on {} (cluster listen): {e}", c.listen))?;
        let tls = match &c.tls {
            Some(t) => Some(Arc::new(tls::member_settings(t)?.build())),
            None => None,
        };
        let internal = front(tls, Some(members.clone()));
        let mut service =
            pingora::services::listening::Service::new("wharf-peers".into(), internal);
        service.add_tcp(&c.listen);
        server.add_service(service);
        members
            .watch()
            .map_err(|e| format!("cannot watch the cluster's members: {e}"))?;
        let how = if c.tls.is_some() {
            "mutual TLS"
        } else {
            "plain HTTP"
        };
        tracing::info!("cluster listener on {} (members only, {how})", c.listen);
    }
    if let Some(addr) = &config.admin {
        add_admin(&mut server, addr, &data, &mirror)?;
    }
    announce(config, &data, &registries);
    server.run_forever()
}

/// With no `[access]`, say at start-up which registries' credentials anyone can use.
fn warn_of_exposed_credentials(mirror: &Mirror) {
    let exposed: Vec<String> = mirror
        .registries()
        .into_iter()
        .filter(|r| mirror.upstream(r).is_some_and(|u| u.has_credentials()))
        .collect();
    if !exposed.is_empty() {
        tracing::warn!(
            "no [access] is configured: anyone who can reach wharf can read what its credentials for {} can",
            exposed.join(", ")
        );
    }
}

/// The store's start-up chores, each on a thread of its own so that serving need not wait.
fn start_store_upkeep(mirror: &Arc<Mirror>) {
    if mirror.cache.links_fresh {
        // a cache from before links: its tags say what its repositories hold
        let mirror = mirror.clone();
        std::thread::spawn(move || {
            let n = mirror.cache.link_tagged();
            if n > 0 {
                tracing::info!("recorded {n} links from the tags of an older cache");
            }
        });
    }
    {
        // index the store in the background: hits need no index, eviction waits for it
        let mirror = mirror.clone();
        std::thread::spawn(move || {
            let started = Instant::now();
            match mirror.cache.quota.load() {
                Ok(n) => tracing::info!(
                    "store indexed: {n} objects, {} bytes, in {:?}",
                    mirror.cache.quota.used(),
                    started.elapsed()
                ),
                Err(e) => tracing::error!("cannot index the store: {e}"),
            }
        });
    }
}

/// The Pingora server, bootstrapped, with its pid file and upgrade socket in the data dir.
fn pingora_server(config: &Config, data: &std::path::Path) -> Server {
    let threads = if config.threads == 0 {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    } else {
        config.threads
    };
    let conf = ServerConf {
        threads,
        pid_file: data.join("wharf.pid").display().to_string(),
        upgrade_sock: data.join("wharf-upgrade.sock").display().to_string(),
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(5),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    server
}

/// With `[tls]`: the main listener's acceptor (its certificate watched) and `plain_listen`.
fn tls_acceptor(
    config: &Config,
) -> std::result::Result<(Option<Arc<pingora::listeners::tls::Acceptor>>, Option<&str>), String> {
    Ok(match &config.tls {
        Some(t) => {
            let (settings, cert) = tls::settings(t)?;
            cert.watch()?;
            (Some(Arc::new(settings.build())), t.plain_listen.as_deref())
        }
        None => (None, None),
    })
}

/// The admin listener on `addr`, with the activity sampler that feeds its status page.
fn add_admin(
    server: &mut Server,
    addr: &str,
    data: &std::path::Path,
    mirror: &Arc<Mirror>,
) -> std::result::Result<(), String> {
    std::net::TcpListener::bind(addr)
        .map_err(|e| format!("cannot listen on {addr} (admin): {e}"))?;
    let admin = admin::Admin {
        tmp_dir: data.join("tmp"),
        mirror: mirror.clone(),
    };
    std::thread::spawn(|| loop {
        ACTIVITY.sample();
        std::thread::sleep(SAMPLE_EVERY);
    });
    let mut service = pingora::services::listening::Service::new("admin".into(), admin);
    service.add_tcp(addr);
    server.add_service(service);
    tracing::info!("admin listener on {addr}: /metrics /healthz /readyz");
    Ok(())
}

/// The start-up line: where wharf listens and what it serves.
fn announce(config: &Config, data: &std::path::Path, registries: &[String]) {
    tracing::info!(
        "wharf listening on {}{} (data {}, registries {}{})",
        config.listen,
        match &config.tls {
            Some(t) => match &t.plain_listen {
                Some(p) => format!(" with TLS, and on {p} without"),
                None => " with TLS".into(),
            },
            None => String::new(),
        },
        data.display(),
        registries.join(", "),
        if config.offline { ", offline" } else { "" }
    );
}
