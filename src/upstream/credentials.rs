//! Where an upstream's credentials come from: the config (inline, or an environment variable read
//! at startup), a file re-read whenever a token is needed (so a rotated secret is picked up), or
//! a Docker credential helper (`docker-credential-<name> get`), which is how ECR's 12-hour tokens
//! and GCR's access tokens are obtained. Helper output is kept for a while and fetched anew
//! before it can expire, and at once after the upstream rejects it.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde::Deserialize;
use tokio::io::AsyncWriteExt;

use crate::registry::RegistryError;

/// Username and password (or, with the username `<token>`, an OAuth2 refresh token).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl Credentials {
    pub fn basic_header(&self) -> String {
        let raw = format!("{}:{}", self.username, self.password);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }

    /// Docker's convention: the username `<token>` marks an identity (refresh) token, which is
    /// exchanged with the OAuth2 POST form rather than sent as Basic credentials.
    pub fn refresh_token(&self) -> Option<&str> {
        (self.username == "<token>").then_some(self.password.as_str())
    }
}

/// How long a credential helper's answer is used before the helper is asked again. GCR access
/// tokens live an hour and ECR's twelve, so this stays well inside both.
const HELPER_REUSE: Duration = Duration::from_secs(600);
const HELPER_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug)]
pub enum CredentialSource {
    Fixed(Credentials),
    File {
        username: String,
        path: PathBuf,
    },
    Helper {
        program: String,
        server: String,
        cached: Mutex<Option<(Credentials, Instant)>>,
    },
}

#[derive(Deserialize)]
struct HelperAnswer {
    #[serde(rename = "Username")]
    username: String,
    #[serde(rename = "Secret")]
    secret: String,
}

impl CredentialSource {
    /// `docker-credential-<name>` for registry `host`.
    pub fn helper(name: &str, host: &str) -> Self {
        // the server name Docker itself hands helpers for Hub
        let server = if host == "docker.io" {
            "https://index.docker.io/v1/".to_owned()
        } else {
            host.to_owned()
        };
        CredentialSource::Helper {
            program: format!("docker-credential-{name}"),
            server,
            cached: Mutex::new(None),
        }
    }

    pub async fn get(&self) -> Result<Credentials, RegistryError> {
        match self {
            CredentialSource::Fixed(c) => Ok(c.clone()),
            CredentialSource::File { username, path } => {
                let secret = tokio::fs::read_to_string(path).await.map_err(|e| {
                    RegistryError::local(format!(
                        "cannot read the password file {}: {e}",
                        path.display()
                    ))
                })?;
                Ok(Credentials {
                    username: username.clone(),
                    password: secret.trim_end_matches(['\r', '\n']).to_owned(),
                })
            }
            CredentialSource::Helper {
                program,
                server,
                cached,
            } => {
                if let Some((c, at)) = cached.lock().expect("helper cache").clone() {
                    if at.elapsed() < HELPER_REUSE {
                        return Ok(c);
                    }
                }
                let c = run_helper(program, server).await?;
                *cached.lock().expect("helper cache") = Some((c.clone(), Instant::now()));
                Ok(c)
            }
        }
    }

    /// The upstream rejected what `get` returned: ask the helper again next time.
    pub fn rejected(&self) {
        if let CredentialSource::Helper { cached, .. } = self {
            *cached.lock().expect("helper cache") = None;
        }
    }
}

async fn run_helper(program: &str, server: &str) -> Result<Credentials, RegistryError> {
    let fail = |why: String| RegistryError::local(format!("credential helper {program}: {why}"));
    let mut child = tokio::process::Command::new(program)
        .arg("get")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| fail(format!("cannot run it: {e}")))?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    stdin
        .write_all(server.as_bytes())
        .await
        .map_err(|e| fail(e.to_string()))?;
    drop(stdin);
    let out = tokio::time::timeout(HELPER_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| fail(format!("no answer within {HELPER_TIMEOUT:?}")))?
        .map_err(|e| fail(e.to_string()))?;
    if !out.status.success() {
        let msg = String::from_utf8_lossy(&out.stdout);
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(fail(format!("{} {}{}", out.status, msg.trim(), err.trim())));
    }
    let a: HelperAnswer =
        serde_json::from_slice(&out.stdout).map_err(|e| fail(format!("bad answer: {e}")))?;
    Ok(Credentials {
        username: a.username,
        password: a.secret,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[tokio::test]
    async fn file_and_helper_sources() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "s3cret\n").unwrap();
        let src = CredentialSource::File {
            username: "u".into(),
            path: file.clone(),
        };
        assert_eq!(src.get().await.unwrap().password, "s3cret");
        std::fs::write(&file, "rotated").unwrap();
        assert_eq!(src.get().await.unwrap().password, "rotated");

        // a helper that counts its runs and echoes the server it was asked about
        let helper = dir.path().join("docker-credential-test");
        let runs = dir.path().join("runs");
        std::fs::write(
            &helper,
            format!(
                "#!/bin/sh\n[ \"$1\" = get ] || exit 1\nread server\necho run >> {}\n\
                 printf '{{\"ServerURL\":\"%s\",\"Username\":\"<token>\",\"Secret\":\"rt-%s\"}}' \"$server\" \"$server\"\n",
                runs.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
        let src = CredentialSource::Helper {
            program: helper.display().to_string(),
            server: "ghcr.io".into(),
            cached: Mutex::new(None),
        };
        let c = src.get().await.unwrap();
        assert_eq!(c.refresh_token(), Some("rt-ghcr.io"));
        src.get().await.unwrap();
        assert_eq!(
            std::fs::read_to_string(&runs).unwrap().lines().count(),
            1,
            "reused"
        );
        src.rejected();
        src.get().await.unwrap();
        assert_eq!(
            std::fs::read_to_string(&runs).unwrap().lines().count(),
            2,
            "asked again"
        );
        assert_eq!(
            CredentialSource::helper("ecr-login", "docker.io").program_for_test(),
            "docker-credential-ecr-login"
        );
    }

    impl CredentialSource {
        fn program_for_test(&self) -> &str {
            match self {
                CredentialSource::Helper { program, .. } => program,
                _ => "",
            }
        }
    }
}
