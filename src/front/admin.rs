//! The admin listener, apart from the registry port: Prometheus `/metrics`, `/healthz` (the
//! process answers) and `/readyz` (it can serve: the data directory is writable).

use std::path::PathBuf;

use async_trait::async_trait;
use http::{header, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::metrics::METRICS;

pub struct Admin {
    /// Where the store writes temp files: ready means a file can be created there.
    pub tmp_dir: PathBuf,
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let text = |status: StatusCode, content_type: &str, body: String| {
            Response::builder()
                .status(status)
                .header(header::CONTENT_TYPE, content_type)
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
            "/readyz" => match self.writable().await {
                Ok(()) => text(StatusCode::OK, "text/plain", "ready\n".into()),
                Err(e) => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!("not ready: {e}\n"),
                ),
            },
            _ => text(
                StatusCode::NOT_FOUND,
                "text/plain",
                "not found: try /metrics, /healthz, /readyz\n".into(),
            ),
        }
    }
}

impl Admin {
    async fn writable(&self) -> Result<(), String> {
        let probe = self
            .tmp_dir
            .join(format!(".ready-{:016x}", rand::random::<u64>()));
        tokio::task::spawn_blocking(move || {
            std::fs::write(&probe, b"")
                .and_then(|_| std::fs::remove_file(&probe))
                .map_err(|e| format!("cannot write in {}: {e}", probe.display()))
        })
        .await
        .map_err(|e| e.to_string())?
    }
}
