//! A real Azure Blob Storage server for the shared-store tests: Azurite (Microsoft's emulator,
//! from npm, which tests/install-deps.sh installs), bound to 127.0.0.1 on a port of its own,
//! with an account of the test's own whose key it checks.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine;

pub const ACCOUNT: &str = "wharftest";
/// The account's key (any base64 does).
pub const KEY: &str = "d2hhcmYtdGVzdC1henVyZS1rZXktd2hpY2gtYXp1cml0ZS1jaGVja3M=";

pub struct Azure {
    /// `http://127.0.0.1:<port>/<account>`: the account's blob endpoint, path-style.
    pub endpoint: String,
    child: Child,
    dir: tempfile::TempDir,
}

/// Where the `azurite-blob` script is: `$AZURITE`, then where install-deps.sh puts it.
fn azurite() -> PathBuf {
    if let Some(a) = std::env::var_os("AZURITE") {
        return a.into();
    }
    let home = std::env::var("HOME").unwrap_or_default();
    let installed =
        PathBuf::from(home).join(".cache/wharf-test/azurite/node_modules/.bin/azurite-blob");
    assert!(
        installed.exists(),
        "no Azurite at {} (set AZURITE, or run tests/install-deps.sh)",
        installed.display()
    );
    installed
}

impl Azure {
    /// Start a server with one container, `container`; returns once it has made it.
    pub async fn start(container: &str) -> Azure {
        let dir = tempfile::tempdir().unwrap();
        let port = super::free_port();
        let log = std::fs::File::create(dir.path().join("azurite.log")).unwrap();
        let child = Command::new(azurite())
            .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
            .arg("--location")
            .arg(dir.path().join("data"))
            .arg("--debug")
            .arg(dir.path().join("debug.log"))
            .arg("--skipApiVersionCheck")
            .arg("--disableTelemetry")
            .env("AZURITE_ACCOUNTS", format!("{ACCOUNT}:{KEY}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("run azurite");
        let mut azure = Azure {
            endpoint: format!("http://127.0.0.1:{port}/{ACCOUNT}"),
            child,
            dir,
        };
        azure.make_container(container).await;
        azure
    }

    /// The configuration of a wharf on this server's `container` (under `prefix`).
    pub fn store_config(&self, container: &str, prefix: &str) -> String {
        let mut conf = format!("[store]\nurl = \"az://{container}/{prefix}\"\n\n[store.options]\n");
        for (k, v) in self.options() {
            conf.push_str(&format!("{k} = \"{v}\"\n"));
        }
        conf
    }

    /// The same, as `object_store` options.
    pub fn options(&self) -> Vec<(String, String)> {
        [
            ("azure_storage_account_name", ACCOUNT),
            ("azure_storage_account_key", KEY),
            ("azure_endpoint", self.endpoint.as_str()),
            ("azure_allow_http", "true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("azurite.log")).unwrap_or_default()
    }

    /// Create the container (object_store creates none), signed with the account's key, as
    /// soon as the server answers.
    async fn make_container(&mut self, container: &str) {
        let url = format!("{}/{container}?restype=container", self.endpoint);
        let deadline = Instant::now() + Duration::from_secs(60);
        let client = super::client();
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("azurite exited ({status}); log:\n{}", self.log());
            }
            let date = httpdate::fmt_http_date(SystemTime::now());
            let version = "2021-08-06";
            let to_sign = format!(
                "PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{version}\n/{ACCOUNT}/{ACCOUNT}/{container}\nrestype:container"
            );
            let key = base64::engine::general_purpose::STANDARD
                .decode(KEY)
                .unwrap();
            let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key);
            let signature = base64::engine::general_purpose::STANDARD
                .encode(ring::hmac::sign(&key, to_sign.as_bytes()).as_ref());
            let sent = client
                .put(&url)
                .header("x-ms-date", &date)
                .header("x-ms-version", version)
                .header("content-length", "0")
                .header("authorization", format!("SharedKey {ACCOUNT}:{signature}"))
                .send()
                .await;
            match sent {
                Ok(r) if r.status() == 201 || r.status() == 409 => return,
                Ok(r) => panic!(
                    "azurite refused the container: {} {}",
                    r.status(),
                    r.text().await.unwrap_or_default()
                ),
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
        panic!("azurite did not answer in 60 s; log:\n{}", self.log());
    }
}

impl Drop for Azure {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
