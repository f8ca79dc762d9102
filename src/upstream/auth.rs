//! Registry authentication as clients do it: answer a `WWW-Authenticate` challenge with Basic
//! credentials or a Bearer token from the challenge's realm, and keep tokens per scope until
//! shortly before they expire (a token per pull is how Harbor got rate limited).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::StatusCode;
use serde::Deserialize;

use super::credentials::{CredentialSource, Credentials};
use super::egress::Egress;
use crate::registry::{Cause, ErrorCode, RegistryError};

/// What an upstream asked for in its `WWW-Authenticate` header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

impl Challenge {
    /// Parse `Bearer realm="…",service="…",scope="…"` or `Basic realm="…"`.
    pub fn parse(header: &str) -> Option<Challenge> {
        let (scheme, params) = header.trim().split_once(' ').unwrap_or((header.trim(), ""));
        if scheme.eq_ignore_ascii_case("basic") {
            return Some(Challenge::Basic);
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let params = parse_params(params);
        Some(Challenge::Bearer {
            realm: params.get("realm")?.clone(),
            service: params.get("service").cloned(),
        })
    }
}

/// `k="v", k2=v2` with commas allowed inside quotes (scopes carry them). A quoted value may
/// escape any character with a backslash (RFC 9110's quoted-pair); a bare one ends at the next comma,
/// the blanks before it not included.
fn parse_params(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else {
            break;
        };
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let after = after.trim_start();
        let (value, remaining) = if let Some(q) = after.strip_prefix('"') {
            quoted_string(q)
        } else {
            let (v, r) = after.split_at(after.find(',').unwrap_or(after.len()));
            (v.trim_end().to_owned(), r)
        };
        out.insert(key, value);
        rest = remaining.trim_start().trim_start_matches(',').trim_start();
    }
    out
}

/// The rest of a quoted-string whose opening quote has been read: its unescaped content, and
/// what follows the closing quote (nothing when it is missing).
fn quoted_string(s: &str) -> (String, &str) {
    let mut value = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return (value, &s[i + 1..]),
            '\\' => match chars.next() {
                Some((_, escaped)) => value.push(escaped),
                None => break,
            },
            c => value.push(c),
        }
    }
    (value, "")
}

#[derive(Deserialize)]
struct TokenResponse {
    token: Option<String>,
    access_token: Option<String>,
    expires_in: Option<u64>,
}

/// An upstream's authentication state: the last challenge seen and the tokens per scope.
pub struct Auth {
    /// The registry this is for (labels metrics).
    registry: String,
    credentials: Option<CredentialSource>,
    state: Mutex<AuthState>,
    /// Serializes token requests so that concurrent misses of one scope fetch one token.
    fetching: tokio::sync::Mutex<()>,
    /// Longest a token request may take (it is made holding `fetching`).
    deadline: Duration,
    /// Where the realm may be, and whether it may have the credentials.
    egress: Arc<Egress>,
    /// Realms already reported as getting no credentials (said once each).
    warned: Mutex<std::collections::HashSet<String>>,
}

#[derive(Default)]
struct AuthState {
    challenge: Option<Challenge>,
    tokens: HashMap<String, (String, Instant)>,
}

impl Auth {
    pub fn new(
        registry: &str,
        credentials: Option<CredentialSource>,
        deadline: Duration,
        egress: Arc<Egress>,
    ) -> Self {
        Auth {
            registry: registry.to_owned(),
            credentials,
            state: Mutex::default(),
            fetching: tokio::sync::Mutex::new(()),
            deadline,
            egress,
            warned: Mutex::default(),
        }
    }

    pub fn has_credentials(&self) -> bool {
        self.credentials.is_some()
    }

    /// Remember what the upstream demands (from a 401), and drop what it refused: the token
    /// for `scope` (upstreams revoke tokens before they expire), or, from a Basic upstream
    /// (ECR), the credentials themselves: a helper is asked again.
    pub fn learn(&self, challenge: Challenge, scope: &str) {
        if let (Challenge::Basic, Some(src)) = (&challenge, &self.credentials) {
            src.rejected();
        }
        let mut st = self.state.lock().expect("auth state");
        st.challenge = Some(challenge);
        st.tokens.remove(scope);
    }

    /// Forget what the upstream demanded: the next request goes without, and learns anew.
    pub fn forget_challenge(&self) {
        self.state.lock().expect("auth state").challenge = None;
    }

    fn cached_token(&self, scope: &str) -> Option<String> {
        let st = self.state.lock().expect("auth state");
        st.tokens
            .get(scope)
            .filter(|(_, until)| Instant::now() < *until)
            .map(|(t, _)| t.clone())
    }

    /// The `Authorization` value for a request in `scope`, fetching a token if the upstream
    /// wants one and none is cached. `None` when the upstream has not asked for anything.
    pub async fn header_for(
        &self,
        http: &reqwest::Client,
        scope: &str,
    ) -> Result<Option<String>, RegistryError> {
        let challenge = self.state.lock().expect("auth state").challenge.clone();
        match challenge {
            None => Ok(None),
            Some(Challenge::Basic) => match &self.credentials {
                Some(src) => Ok(Some(src.get().await?.basic_header())),
                None => Ok(None),
            },
            Some(Challenge::Bearer { realm, service }) => {
                if let Some(t) = self.cached_token(scope) {
                    return Ok(Some(format!("Bearer {t}")));
                }
                let _guard = self.fetching.lock().await;
                if let Some(t) = self.cached_token(scope) {
                    return Ok(Some(format!("Bearer {t}")));
                }
                let fetch = self.fetch_token(http, &realm, service.as_deref(), scope);
                let (token, lifetime) =
                    tokio::time::timeout(self.deadline, fetch)
                        .await
                        .map_err(|_| {
                            RegistryError::upstream_timed_out(format!(
                                "no token from the token service at {realm} within {:?} (getting wharf's credentials for it included)",
                                self.deadline
                            ))
                        })??;
                let mut st = self.state.lock().expect("auth state");
                let now = Instant::now();
                st.tokens.retain(|_, (_, until)| *until > now);
                st.tokens
                    .insert(scope.to_owned(), (token.clone(), now + lifetime));
                Ok(Some(format!("Bearer {token}")))
            }
        }
    }

    /// Ask the token service at `realm` for a token in `scope`, and how long to keep it.
    async fn fetch_token(
        &self,
        http: &reqwest::Client,
        realm: &str,
        service: Option<&str>,
        scope: &str,
    ) -> Result<(String, Duration), RegistryError> {
        crate::metrics::METRICS
            .upstream_requests
            .with_label_values(&[&self.registry, "token"])
            .inc();
        let url = token_url(realm, service, scope)?;
        self.egress.may_contact(&url).map_err(|why| {
            RegistryError::upstream_failed(format!("the upstream's token realm is refused: {why}"))
        })?;
        let credentials = self.credentials_for_realm(&url, realm).await?;
        let resp = request_token(http, &url, realm, service, scope, credentials.as_ref()).await?;
        self.read_token(resp, realm).await
    }

    /// The credentials egress lets go to `url`, if any; a realm denied them is warned of once.
    async fn credentials_for_realm(
        &self,
        url: &url::Url,
        realm: &str,
    ) -> Result<Option<Credentials>, RegistryError> {
        Ok(match &self.credentials {
            Some(src) => match self.egress.may_send_credentials(url) {
                Ok(()) => Some(src.get().await?),
                Err(why) => {
                    let first = self.warned.lock().expect("warned").insert(realm.to_owned());
                    if first {
                        tracing::warn!(
                            "asking {} for an anonymous token, without wharf's credentials: {why}",
                            self.registry
                        );
                    }
                    None
                }
            },
            None => None,
        })
    }

    /// The token in the answer and how long to keep it; a 401/403 drops the credentials.
    async fn read_token(
        &self,
        resp: reqwest::Response,
        realm: &str,
    ) -> Result<(String, Duration), RegistryError> {
        let status = resp.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            if let Some(src) = &self.credentials {
                src.rejected();
            }
            return Err(RegistryError::new(
                Cause::UpstreamRefused,
                ErrorCode::Denied,
                format!("the upstream's token service refused wharf's credentials ({status})"),
            ));
        }
        if !status.is_success() {
            return Err(RegistryError::upstream_failed(format!(
                "token request to {realm} answered {status}"
            )));
        }
        let body: TokenResponse = resp.json_limited().await?;
        let token = body.token.or(body.access_token).ok_or_else(|| {
            RegistryError::upstream_failed(format!("token response from {realm} has no token"))
        })?;
        // Hub's default is 60 s when absent; renew a little before the end.
        let secs = body.expires_in.unwrap_or(60).max(1);
        let margin = (secs / 10).clamp(1, 30);
        Ok((
            token,
            Duration::from_secs(secs.saturating_sub(margin).max(1)),
        ))
    }
}

/// The realm's URL with the service and scope asked for in its query.
fn token_url(realm: &str, service: Option<&str>, scope: &str) -> Result<url::Url, RegistryError> {
    let mut url = url::Url::parse(realm).map_err(|e| {
        RegistryError::upstream_failed(format!("upstream token realm {realm:?} is not a URL: {e}"))
    })?;
    {
        let mut q = url.query_pairs_mut();
        if let Some(s) = service {
            q.append_pair("service", s);
        }
        q.append_pair("scope", scope);
    }
    Ok(url)
}

/// The token request itself, the way clients make it for the credentials at hand.
async fn request_token(
    http: &reqwest::Client,
    url: &url::Url,
    realm: &str,
    service: Option<&str>,
    scope: &str,
    credentials: Option<&Credentials>,
) -> Result<reqwest::Response, RegistryError> {
    let post = |grant: &[(&str, &str)]| token_form(http, url, grant, service, scope);
    // An identity (refresh) token goes through the OAuth2 form. Anything else is a GET, with
    // Basic credentials when there are some; a token service that takes no GET (404/405)
    // gets the form's password grant instead.
    Ok(match credentials {
        Some(c) if c.refresh_token().is_some() => {
            let refresh = c.refresh_token().unwrap_or_default();
            send_token_request(
                post(&[("grant_type", "refresh_token"), ("refresh_token", refresh)]),
                realm,
            )
            .await?
        }
        Some(c) => {
            let resp = send_token_request(
                http.get(url.clone())
                    .header(http::header::AUTHORIZATION, c.basic_header()),
                realm,
            )
            .await?;
            if matches!(
                resp.status(),
                StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED
            ) {
                let grant = [
                    ("grant_type", "password"),
                    ("username", c.username.as_str()),
                    ("password", c.password.as_str()),
                ];
                send_token_request(post(&grant), realm).await?
            } else {
                resp
            }
        }
        None => send_token_request(http.get(url.clone()), realm).await?,
    })
}

/// The OAuth2 form, as containerd and docker send it.
fn token_form(
    http: &reqwest::Client,
    url: &url::Url,
    grant: &[(&str, &str)],
    service: Option<&str>,
    scope: &str,
) -> reqwest::RequestBuilder {
    let mut form = url::form_urlencoded::Serializer::new(String::new());
    form.extend_pairs(grant)
        .append_pair("client_id", "wharf")
        .append_pair("scope", scope);
    if let Some(s) = service {
        form.append_pair("service", s);
    }
    let mut to = url.clone();
    to.set_query(None);
    http.post(to)
        .header(
            http::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .body(form.finish())
}

/// Send a token request; a failure to get any answer names the realm.
async fn send_token_request(
    req: reqwest::RequestBuilder,
    realm: &str,
) -> Result<reqwest::Response, RegistryError> {
    req.send().await.map_err(|e| {
        RegistryError::upstream_failed(format!("token request to {realm} failed: {e}"))
    })
}

/// Reading small JSON answers without trusting their size.
trait JsonLimited {
    async fn json_limited<T: serde::de::DeserializeOwned>(self) -> Result<T, RegistryError>;
}

impl JsonLimited for reqwest::Response {
    async fn json_limited<T: serde::de::DeserializeOwned>(self) -> Result<T, RegistryError> {
        let bytes = super::http::read_limited(self, 1 << 20).await?;
        serde_json::from_slice(&bytes)
            .map_err(|e| RegistryError::upstream_failed(format!("bad token response: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_challenges() {
        let c = Challenge::parse(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(
            c,
            Some(Challenge::Bearer {
                realm: "https://auth.example/token".into(),
                service: Some("registry.example".into())
            })
        );
        assert_eq!(
            Challenge::parse(r#"Basic realm="x""#),
            Some(Challenge::Basic)
        );
        assert_eq!(Challenge::parse("Negotiate"), None);
        assert_eq!(Challenge::parse("Bearer service=x"), None);
    }

    /// Found by fuzzing (fuzz/fuzz_targets/www_authenticate.rs): an escaped quote ended the
    /// value, and the escapes were kept. And found writing the property tests
    /// (tests/parsers.rs): a bare value kept the blanks before the next comma.
    #[test]
    fn quoted_pairs_and_blanks() {
        let bearer = |realm: &str, service: Option<&str>| {
            Some(Challenge::Bearer {
                realm: realm.into(),
                service: service.map(Into::into),
            })
        };
        assert_eq!(
            Challenge::parse(r#"Bearer realm="https://a.example/\"t\"",service="s\\x""#),
            bearer(r#"https://a.example/"t""#, Some(r"s\x"))
        );
        assert_eq!(
            Challenge::parse("Bearer realm=https://a.example/t , service=reg ,scope=x"),
            bearer("https://a.example/t", Some("reg"))
        );
        // an unterminated quote or escape takes what there is
        assert_eq!(
            Challenge::parse(r#"Bearer realm="https://a.example/t\"#),
            bearer("https://a.example/t", None)
        );
    }
}
