//! The admin listener, apart from the registry port: Prometheus `/metrics`, `/healthz` (the
//! process answers), `/readyz` (it can fill: the data directory takes writes and has room),
//! and at `/` a status page for people: hit ratio over the last hour, bytes saved, the store
//! against its quota, the busiest repositories, fills in flight.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use http::{header, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::cache::store::free_space;
use crate::commands::human_bytes;
use crate::metrics::{by_outcome, Sample, ACTIVITY, METRICS};
use crate::mirror::{Mirror, Outcome};

pub struct Admin {
    /// Where the store writes temp files: ready means a file can be created there.
    pub tmp_dir: PathBuf,
    pub mirror: Arc<Mirror>,
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let text = |status: StatusCode, content_type: &str, body: String| {
            Response::builder()
                .status(status)
                .header(header::CONTENT_TYPE, content_type)
                .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
                .header(header::CONTENT_LENGTH, body.len())
                .body(body.into_bytes())
                .expect("valid response")
        };
        match session.req_header().uri.path() {
            "/metrics" => text(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                METRICS.render(),
            ),
            "/healthz" => text(StatusCode::OK, "text/plain", "ok\n".into()),
            "/readyz" => match self.ready().await {
                Ok(()) => text(StatusCode::OK, "text/plain", "ready\n".into()),
                Err(e) => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!("not ready: {e}\n"),
                ),
            },
            "/" => text(
                StatusCode::OK,
                "text/html; charset=utf-8",
                status_page(&self.mirror),
            ),
            _ => text(
                StatusCode::NOT_FOUND,
                "text/plain",
                "not found: try /, /metrics, /healthz, /readyz\n".into(),
            ),
        }
    }
}

impl Admin {
    /// Ready means a fill could be written now: the data directory takes a write, and it has
    /// more than `min_free_space` free (below it, fills of a known length are refused).
    async fn ready(&self) -> Result<(), String> {
        let tmp = self.tmp_dir.clone();
        let min = self.mirror.min_free_space();
        tokio::task::spawn_blocking(move || {
            let free = free_space(&tmp)
                .map_err(|e| format!("cannot tell the free space of {}: {e}", tmp.display()))?;
            if free < min {
                return Err(format!(
                    "{} has {free} bytes free, less than min_free_space ({min})",
                    tmp.display()
                ));
            }
            let probe = tmp.join(format!(".ready-{:016x}", rand::random::<u64>()));
            std::fs::write(&probe, b"ready")
                .and_then(|_| std::fs::remove_file(&probe))
                .map_err(|e| format!("cannot write in {}: {e}", tmp.display()))
        })
        .await
        .map_err(|e| e.to_string())?
    }
}

/// The hit ratio of each sampled interval that saw traffic, as (unix time, ratio).
fn ratios(history: &[Sample]) -> Vec<(u64, f64)> {
    history
        .windows(2)
        .filter_map(|w| {
            let hits = w[1].hits.saturating_sub(w[0].hits);
            let misses = w[1].misses.saturating_sub(w[0].misses);
            (hits + misses > 0).then(|| (w[1].at, hits as f64 / (hits + misses) as f64))
        })
        .collect()
}

/// A 600x120 SVG line of the hit ratio over the history kept (a minute to an hour).
fn sparkline(points: &[(u64, f64)], since: u64, now: u64) -> String {
    let (w, h) = (600.0, 120.0);
    let span = now.saturating_sub(since).clamp(60, 3600);
    let x = |t: u64| w - (now.saturating_sub(t) as f64 / span as f64 * w).min(w);
    let y = |r: f64| h - r * (h - 10.0) - 5.0;
    let line: Vec<String> = points
        .iter()
        .map(|&(t, r)| format!("{:.1},{:.1}", x(t), y(r)))
        .collect();
    format!(
        r##"<svg width="600" height="120" viewBox="0 0 600 120" role="img" aria-label="hit ratio">
<rect width="600" height="120" fill="#f6f8fa"/>
<line x1="0" x2="600" y1="{y50:.1}" y2="{y50:.1}" stroke="#ddd"/>
<polyline fill="none" stroke="#2da44e" stroke-width="2" points="{pts}"/>
<text x="4" y="14" font-size="11" fill="#666">100%</text><text x="4" y="114" font-size="11" fill="#666">0%</text>
<text x="596" y="114" font-size="11" fill="#666" text-anchor="end">last {minutes} min</text></svg>"##,
        y50 = y(0.5),
        pts = line.join(" "),
        minutes = span.div_ceil(60),
    )
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The cluster's members and their health, with what this instance forwarded and served.
fn members_table(mirror: &Mirror) -> String {
    let Some(members) = &mirror.members else {
        return String::new();
    };
    let mut rows = String::new();
    for m in members.seen() {
        let state = match (m.me, m.live()) {
            (true, _) => "this instance".to_owned(),
            (false, true) if m.misses == 0 => "up".to_owned(),
            (false, true) => format!(
                "up, {} checks missed: {}",
                m.misses,
                m.problem.as_deref().unwrap_or("")
            ),
            (false, false) => format!("down: {}", m.problem.as_deref().unwrap_or("")),
        };
        let _ = write!(
            rows,
            "<tr><td>{}</td><td>{}</td></tr>",
            escape(&m.addr),
            escape(&state)
        );
    }
    format!(
        "<h2>Cluster</h2><p>{} asked of owners ({} of them then of the upstream), {} answered for members</p><table><tr><th>member</th><th>state</th></tr>{rows}</table>",
        METRICS.peer_forwarded.get(),
        METRICS.peer_fallbacks.get(),
        METRICS.peer_served.get(),
    )
}

fn status_page(mirror: &Mirror) -> String {
    let history = ACTIVITY.history();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let hits = by_outcome(&METRICS.outcomes, Outcome::is_hit);
    let misses = by_outcome(&METRICS.outcomes, Outcome::is_miss);
    let ratio = if hits + misses == 0 {
        "no pulls yet".to_owned()
    } else {
        format!("{:.1}%", 100.0 * hits as f64 / (hits + misses) as f64)
    };
    let saved = by_outcome(&METRICS.bytes_served, Outcome::is_hit);
    let used = mirror.cache.quota.used();
    let quota = match mirror.cache.quota.max() {
        Some(max) => format!(
            "{} of {} ({:.0}%)<div class=bar><div style=\"width:{:.1}%\"></div></div>",
            human_bytes(used),
            human_bytes(max),
            100.0 * used as f64 / max.max(1) as f64,
            (100.0 * used as f64 / max.max(1) as f64).min(100.0)
        ),
        None => format!("{} (no max_size)", human_bytes(used)),
    };
    let mut top = String::new();
    for (repo, requests, bytes) in ACTIVITY.top(10) {
        let _ = write!(
            top,
            "<tr><td>{}</td><td>{requests}</td><td>{}</td></tr>",
            escape(&repo),
            human_bytes(bytes)
        );
    }
    if top.is_empty() {
        top = "<tr><td colspan=3>no pulls yet</td></tr>".into();
    }
    let mut limits = String::new();
    for r in mirror.registries() {
        let g = METRICS.ratelimit_remaining.with_label_values(&[&r]).get();
        if g > 0 {
            let _ = write!(limits, "<div>{}: {g} pulls left</div>", escape(&r));
        }
    }
    let cluster = members_table(mirror);
    format!(
        r#"<!doctype html><html><head><meta charset="utf-8"><meta http-equiv="refresh" content="10">
<title>wharf</title><style>
body{{font:14px system-ui,sans-serif;margin:2em;color:#24292f}} h1{{font-size:20px}}
.cards{{display:flex;gap:1em;flex-wrap:wrap}} .card{{border:1px solid #d0d7de;border-radius:6px;padding:.8em 1em;min-width:11em}}
.card b{{display:block;font-size:22px;margin-top:.2em}} table{{border-collapse:collapse;margin-top:.5em}}
td,th{{padding:.25em .8em;border-bottom:1px solid #eee;text-align:left}}
.bar{{height:6px;background:#eee;border-radius:3px;margin-top:.4em}} .bar div{{height:6px;background:#0969da;border-radius:3px}}
</style></head><body>
<h1>wharf {version} &mdash; {registries}</h1>
<div class=cards>
<div class=card>hit ratio<b>{ratio}</b>{hits} hits, {misses} misses</div>
<div class=card>bytes saved<b>{saved}</b>served from cache; {fetched} fetched upstream</div>
<div class=card>store<b>{quota}</b></div>
<div class=card>fills in flight<b>{fills}</b>{limits}</div>
</div>
<h2>Hit ratio over time</h2>{spark}
<h2>Top repositories</h2><table><tr><th>repository</th><th>requests</th><th>sent</th></tr>{top}</table>
{cluster}<p><a href="/metrics">/metrics</a> &middot; <a href="/healthz">/healthz</a> &middot; <a href="/readyz">/readyz</a></p>
</body></html>"#,
        version = env!("CARGO_PKG_VERSION"),
        registries = escape(&mirror.registries().join(", ")),
        saved = human_bytes(saved),
        fetched = human_bytes(METRICS.bytes_fetched.get()),
        fills = METRICS.fills_in_flight.get(),
        spark = sparkline(
            &ratios(&history),
            history.first().map_or(now, |s| s.at),
            now
        ),
    )
}
