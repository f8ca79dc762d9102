//! Test harness: a fake Hub-like upstream ([`hub`]) and the real `wharf` binary in front of it,
//! everything on 127.0.0.1.

#![allow(dead_code, unused_imports)]

pub mod azure;
pub mod ca;
pub mod hub;
pub mod liar;
pub mod s3;
pub mod stores;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use hub::{FakeHub, Faults, HubOptions};

/// A running `wharf serve` process with its own data directory.
pub struct Wharf {
    /// The plain-HTTP listener (with TLS configured: its `plain_listen`).
    pub addr: String,
    /// The TLS listener, when the config has a `[tls]` table with `plain_listen = "{plain}"`.
    pub tls: Option<String>,
    /// The process id (to send it signals).
    pub pid: u32,
    /// The admin listener (metrics, health).
    pub admin: String,
    pub data: PathBuf,
    child: Child,
    _dir: Option<tempfile::TempDir>,
    log: PathBuf,
}

impl Wharf {
    /// Start wharf in front of `upstream`, with extra TOML config lines.
    pub async fn start(upstream: &str, extra_config: &str) -> Wharf {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let mut w = Self::start_at(upstream, extra_config, data).await;
        w._dir = Some(dir);
        w
    }

    /// Start wharf with extra environment variables.
    pub async fn start_env(upstream: &str, extra_config: &str, env: &[(&str, &str)]) -> Wharf {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let mut w = Self::launch(upstream, extra_config, data, env).await;
        w._dir = Some(dir);
        w
    }

    /// Start wharf on an existing data directory (to test restarts).
    pub async fn start_at(upstream: &str, extra_config: &str, data: PathBuf) -> Wharf {
        Self::launch(upstream, extra_config, data, &[]).await
    }

    /// Start wharf with its open-file limit set to `soft` (and `hard`).
    pub async fn start_with_files(
        upstream: &str,
        extra_config: &str,
        soft: u64,
        hard: u64,
    ) -> Wharf {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let mut w = Self::launch_with(upstream, extra_config, data, &[], Some((soft, hard))).await;
        w._dir = Some(dir);
        w
    }

    async fn launch(
        upstream: &str,
        extra_config: &str,
        data: PathBuf,
        env: &[(&str, &str)],
    ) -> Wharf {
        Self::launch_with(upstream, extra_config, data, env, None).await
    }

    async fn launch_with(
        upstream: &str,
        extra_config: &str,
        data: PathBuf,
        env: &[(&str, &str)],
        files: Option<(u64, u64)>,
    ) -> Wharf {
        let conf = data.with_extension("toml");
        std::fs::create_dir_all(&data).unwrap();
        let log = data.with_extension("log");
        // A port found free can be taken by another test's connection before wharf binds it:
        // then wharf exits at once saying so, and it is started again on other ports.
        for _ in 0..3 {
            // with TLS, `--listen` is the TLS port and "{plain}" a plain one to reach it by
            let plain = format!("127.0.0.1:{}", free_port());
            std::fs::write(&conf, extra_config.replace("{plain}", &plain)).unwrap();
            let mut w = Self::spawn(upstream, &conf, &data, &log, env, files);
            if extra_config.contains("{plain}") {
                w.tls = Some(std::mem::replace(&mut w.addr, plain));
            }
            if w.wait_ready().await {
                return w;
            }
            if !w.log().contains("cannot listen") {
                panic!("wharf did not start; log:\n{}", w.log());
            }
        }
        panic!("wharf found no free port in three tries");
    }

    fn spawn(
        upstream: &str,
        conf: &PathBuf,
        data: &PathBuf,
        log: &PathBuf,
        env: &[(&str, &str)],
        files: Option<(u64, u64)>,
    ) -> Wharf {
        let addr = format!("127.0.0.1:{}", free_port());
        let admin = format!("127.0.0.1:{}", free_port());
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_wharf"));
        if let Some((soft, hard)) = files {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    let l = libc::rlimit {
                        rlim_cur: soft,
                        rlim_max: hard,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &l) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = cmd
            .args(["serve", "--listen", &addr, "--admin", &admin])
            .args(["--upstream", upstream, "--config"])
            .arg(conf)
            .arg("--data")
            .arg(data)
            .env("WHARF_LOG", "info,pingora=warn")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .expect("run wharf");
        Wharf {
            addr,
            tls: None,
            pid: child.id(),
            admin,
            data: data.clone(),
            child,
            _dir: None,
            log: log.clone(),
        }
    }

    /// Whether wharf answers within 20 s; false as soon as it has exited.
    async fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(20);
        let c = client();
        while Instant::now() < deadline {
            if c.get(self.url("/v2/")).send().await.is_ok() {
                return true;
            }
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The value of one metric sample, e.g. `wharf_cache_requests_total{outcome="miss"}`: 0
    /// when wharf exports the metric but not that sample (a label not seen yet); a metric
    /// wharf does not export at all (renamed, say) fails the test.
    pub async fn metric(&self, sample: &str) -> f64 {
        let text = self.admin_page("/metrics").await;
        let family = sample.split('{').next().unwrap_or(sample);
        assert!(
            text.lines().any(|l| l
                .strip_prefix("# TYPE ")
                .and_then(|t| t.strip_prefix(family))
                .is_some_and(|t| t.starts_with(' '))),
            "wharf exports no metric {family}"
        );
        text.lines()
            .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }

    /// The text the admin listener answers at `path` (`/` is the status page).
    pub async fn admin_page(&self, path: &str) -> String {
        client()
            .get(format!("http://{}{path}", self.admin))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Kill the process (SIGKILL), keeping its data directory.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Wharf {
    fn drop(&mut self) {
        self.kill();
        // a failing test shows what wharf said (the last lines: the failure is at the end)
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- wharf's log, last lines ---");
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Raise this process's open-file limit (and so that of the wharf it starts) to `want`, or as
/// near as it may go; the limit it got. The tests hold many sockets.
pub fn more_files(want: u64) -> u64 {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain rlimit calls on a valid struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut l);
        // raising the hard limit takes root (CI is); otherwise the soft one goes up to it
        if l.rlim_max < want {
            let raised = libc::rlimit {
                rlim_cur: want,
                rlim_max: want,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return want;
            }
        }
        l.rlim_cur = l.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut l);
    }
    l.rlim_cur
}

/// An HTTP client for tests: plain HTTP on loopback, no redirects, a timeout so a hang fails.
pub fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(20))
        .no_proxy()
        .build()
        .unwrap()
}

/// A blob the upstream got wrong reaches the client as anything but a whole answer: a cut
/// body if its headers went out before the fill failed, else the upstream's failure (502).
pub async fn assert_not_served_whole(r: reqwest::Response) {
    match r.status().as_u16() {
        200 => assert!(
            r.bytes().await.is_err(),
            "a bad body must end in a cut connection, not a clean response"
        ),
        502 => assert_eq!(error_code(r).await, "UNAVAILABLE"),
        s => panic!("a bad upstream body answered {s}"),
    }
}

/// Poll `f` until it returns true (or fail after `secs`).
pub async fn eventually<F, Fut>(secs: u64, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for: {what}");
}

pub fn header<'a>(r: &'a reqwest::Response, name: &str) -> &'a str {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// The `code` of the first error in an OCI error body.
pub async fn error_code(r: reqwest::Response) -> String {
    let body = r.bytes().await.expect("error body");
    let v: serde_json::Value = serde_json::from_slice(&body).expect("OCI error JSON body");
    v["errors"][0]["code"].as_str().unwrap_or("").to_owned()
}

/// A cluster member that answers health checks (as a member with another id would) and
/// every other request with `status`, or never (`None`: stuck, or as slow as can be); its
/// address.
pub async fn fake_member(status: Option<u16>) -> String {
    use axum::response::IntoResponse;
    use axum::routing::get;
    let app = axum::Router::new()
        .route("/_wharf/peer", get(|| async { "00000000000000ff" }))
        .fallback(move || async move {
            match status {
                Some(code) => {
                    (axum::http::StatusCode::from_u16(code).unwrap(), "no").into_response()
                }
                None => {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    "never".into_response()
                }
            }
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// Run blocking work (a content store's calls) off the test's runtime threads.
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

/// The upstream every wharf command a test runs gets when it needs none (ls, export, import,
/// verify, gc): a closed port on loopback, so that no command can ever reach Docker Hub, the
/// built-in default, whatever it comes to do.
pub const NO_UPSTREAM: &str = "http://127.0.0.1:9";
