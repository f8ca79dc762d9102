//! TLS on the registry listener: HTTP/1.1 and HTTP/2 by ALPN, a certificate replaced (on
//! SIGHUP, or when its files change) while the connections made under the old one go on,
//! client certificates that say who is asking, and bad files refused at start by name.

mod common;

use std::path::Path;
use std::time::Duration;

use common::ca::Ca;
use common::{error_code, eventually, header, FakeHub, HubOptions, Wharf};
use sha2::{Digest, Sha256};

/// An HTTPS client trusting only `ca`, with a client certificate if given; HTTP/1.1 only, or
/// HTTP/2 and HTTP/1.1 offered by ALPN.
fn https(ca: &Ca, me: Option<(String, String)>, h1_only: bool) -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut b = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca.pem.as_bytes()).unwrap()])
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(20));
    if let Some((cert, key)) = me {
        b = b.identity(reqwest::Identity::from_pem(format!("{cert}{key}").as_bytes()).unwrap());
    }
    if h1_only {
        b = b.http1_only();
    }
    b.build().unwrap()
}

fn tls_config(cert: &Path, key: &Path, extra: &str) -> String {
    format!(
        "[tls]\ncert = {:?}\nkey = {:?}\nplain_listen = \"{{plain}}\"\n{extra}",
        cert.display().to_string(),
        key.display().to_string()
    )
}

fn at(w: &Wharf, path: &str) -> String {
    format!("https://{}{path}", w.tls.as_ref().expect("a TLS listener"))
}

fn sighup(w: &Wharf) {
    // SAFETY: a signal to the child process this test started.
    assert_eq!(unsafe { libc::kill(w.pid as i32, libc::SIGHUP) }, 0);
}

#[tokio::test]
async fn h1_and_h2_by_alpn_and_a_new_certificate_keeps_the_connections_made() {
    let hub = FakeHub::start().await;
    let image = hub.add_image("library/app", "1", 1, &[300_000, 1000]);
    let dir = tempfile::tempdir().unwrap();
    let first = Ca::new("first");
    let (cert, key) = first.install_server(dir.path());
    let w = Wharf::start(&hub.url(), &tls_config(&cert, &key, "")).await;

    let h1 = https(&first, None, true);
    let h2 = https(&first, None, false);
    for (client, version) in [
        (&h1, reqwest::Version::HTTP_11),
        (&h2, reqwest::Version::HTTP_2),
    ] {
        let r = client
            .get(at(&w, "/v2/library/app/manifests/1"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.version(), version, "chosen by ALPN");
        assert_eq!(header(&r, "docker-content-digest"), image.digest);
        assert_eq!(header(&r, "x-content-type-options"), "nosniff");
        // the blobs, at once on one connection when it is HTTP/2
        let gets = image.blobs.iter().map(|(digest, bytes)| {
            let url = at(&w, &format!("/v2/library/app/blobs/{digest}"));
            async move {
                let r = client.get(url).send().await.unwrap();
                assert_eq!(r.status(), 200);
                assert_eq!(r.version(), version);
                let body = r.bytes().await.unwrap();
                assert_eq!(body.len(), bytes.len());
                assert_eq!(format!("sha256:{:x}", Sha256::digest(&body)), *digest);
            }
        });
        futures_util::future::join_all(gets).await;
    }
    // plain HTTP stays where it was asked for
    let r = common::client()
        .get(w.url("/v2/library/app/manifests/1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // a new certificate from another CA, taken on SIGHUP: new clients get it at once (even
    // files that kept their modification time, as `cp -p` leaves them) ...
    let second = Ca::new("second");
    let then = std::fs::metadata(&cert).unwrap().modified().unwrap();
    second.install_server(dir.path());
    for f in [&cert, &key] {
        std::fs::File::options()
            .write(true)
            .open(f)
            .unwrap()
            .set_modified(then)
            .unwrap();
    }
    sighup(&w);
    let fresh = https(&second, None, false);
    eventually(10, "the new certificate is served", || async {
        fresh.get(at(&w, "/v2/")).send().await.is_ok()
    })
    .await;
    // ... while the connections made under the old one go on (a new connection would fail:
    // these clients trust only the first CA)
    for client in [&h1, &h2] {
        let r = client
            .get(at(&w, "/v2/library/app/manifests/1"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            200,
            "the connection made before the reload is still open"
        );
    }
    assert!(
        https(&first, None, false)
            .get(at(&w, "/v2/"))
            .send()
            .await
            .is_err(),
        "a new connection sees the new certificate"
    );

    // and files that change are taken without a signal
    let third = Ca::new("third");
    third.install_server(dir.path());
    let later = https(&third, None, true);
    eventually(15, "the changed files are served", || async {
        later.get(at(&w, "/v2/")).send().await.is_ok()
    })
    .await;

    // a broken file is not taken: the certificate in use stays, and wharf says why
    std::fs::write(&key, "not a key").unwrap();
    sighup(&w);
    eventually(10, "the broken key is reported", || async {
        w.log().contains("keeping the TLS certificate in use")
    })
    .await;
    let r = https(&third, None, true)
        .get(at(&w, "/v2/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn client_certificates_say_who_is_asking() {
    let hub = FakeHub::start_with(HubOptions {
        user: Some(("alice".into(), "s3cret".into())),
        ..Default::default()
    })
    .await;
    let private = hub.add_image("private/app", "1", 2, &[1000]);
    let dir = tempfile::tempdir().unwrap();
    let (servers, clients, strangers) = (Ca::new("servers"), Ca::new("clients"), Ca::new("other"));
    let (cert, key) = servers.install_server(dir.path());
    let client_ca = dir.path().join("clients.crt");
    std::fs::write(&client_ca, &clients.pem).unwrap();
    let extra = format!(
        "client_ca = {:?}\n\
         [upstreams.\"docker.io\"]\nusername = \"alice\"\npassword = \"s3cret\"\n\
         [[access.rules]]\nwho = [\"cert:builder\"]\nrepositories = [\"docker.io/private/*\"]\n",
        client_ca.display().to_string()
    );
    let w = Wharf::start(&hub.url(), &tls_config(&cert, &key, &extra)).await;
    assert!(
        !w.log().contains("anyone who can reach wharf"),
        "{}",
        w.log()
    );
    let path = "/v2/private/app/manifests/1";

    // no certificate: a challenge, over TLS and over plain HTTP, and nothing fetched
    let r = https(&servers, None, false)
        .get(at(&w, path))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(header(&r, "www-authenticate"), "Basic realm=\"wharf\"");
    assert_eq!(error_code(r).await, "UNAUTHORIZED");
    let r = common::client().get(w.url(path)).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(hub.counters().manifest_gets, 0, "nothing fetched for them");

    // someone the CA vouches for, but not whom the rules let read it
    let intruder = https(&servers, Some(clients.issue("intruder", false)), false);
    let r = intruder.get(at(&w, path)).send().await.unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(error_code(r).await, "DENIED");
    assert_eq!(hub.counters().manifest_gets, 0);

    // a certificate from a CA wharf does not know is refused in the handshake
    let forged = https(&servers, Some(strangers.issue("builder", false)), true);
    assert!(forged.get(at(&w, path)).send().await.is_err());

    // the builder, over HTTP/2 and HTTP/1.1
    for h1_only in [false, true] {
        let builder = https(&servers, Some(clients.issue("builder", false)), h1_only);
        let r = builder.get(at(&w, path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "h1 only: {h1_only}");
        assert_eq!(header(&r, "docker-content-digest"), private.digest);
    }
    common::eventually(5, "the access log says who", || async {
        w.log().contains("user=\"cert:builder\"")
    })
    .await;
}

#[tokio::test]
async fn bad_tls_files_stop_wharf_at_start_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("ca");
    let (cert, key) = ca.install_server(dir.path());
    let (_, other_key) = ca.issue("other", true);
    let mismatched = dir.path().join("other.key");
    std::fs::write(&mismatched, other_key).unwrap();
    let junk = dir.path().join("junk.crt");
    std::fs::write(&junk, "-----BEGIN CERTIFICATE-----\nnot base64\n").unwrap();
    let cases = [
        (dir.path().join("missing.crt"), key.clone(), "missing.crt"),
        (cert.clone(), dir.path().join("missing.key"), "missing.key"),
        (cert.clone(), mismatched, "other.key"),
        (junk, key.clone(), "junk.crt"),
    ];
    for (i, (c, k, named)) in cases.into_iter().enumerate() {
        let conf = dir.path().join(format!("{i}.toml"));
        std::fs::write(
            &conf,
            tls_config(&c, &k, "").replace("{plain}", "127.0.0.1:0"),
        )
        .unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_wharf"))
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--upstream",
                common::NO_UPSTREAM,
            ])
            .arg("--config")
            .arg(&conf)
            .arg("--data")
            .arg(dir.path().join(format!("data{i}")))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{named}: {stderr}");
        assert!(stderr.contains(named), "the error names {named}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

/// A client that opens a connection and never finishes its handshake is a connection like any
/// other: it has `header_timeout`, counts against `max_connections`, and is the one closed
/// when a newcomer needs its place.
#[tokio::test]
async fn an_unfinished_handshake_is_bounded_like_any_connection() {
    use tokio::io::AsyncReadExt;
    let hub = FakeHub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("ca");
    let (cert, key) = ca.install_server(dir.path());
    let extra = "max_connections = 2\nheader_timeout = \"3s\"\n";
    let conf = format!("{extra}{}", tls_config(&cert, &key, ""));
    let w = Wharf::start(&hub.url(), &conf).await;
    let tls_addr = w.tls.clone().unwrap();
    let silent = || async {
        let s = tokio::net::TcpStream::connect(&tls_addr).await.unwrap();
        let started = std::time::Instant::now();
        (s, started)
    };
    let closed_within = |(mut s, started): (tokio::net::TcpStream, std::time::Instant), secs| async move {
        let mut buf = [0u8; 64];
        let r = tokio::time::timeout(Duration::from_secs(secs), s.read(&mut buf)).await;
        assert!(
            matches!(r, Ok(Ok(0)) | Ok(Err(_))),
            "a silent connection is closed within {secs} s"
        );
        started.elapsed()
    };
    // alone, it is closed at header_timeout
    let took = closed_within(silent().await, 10).await;
    assert!(
        took >= Duration::from_secs(2),
        "not before header_timeout: {took:?}"
    );

    // two fill the bound; a client that completes its handshake takes the place of one
    let (a, b) = (silent().await, silent().await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = https(&ca, None, true)
        .get(at(&w, "/v2/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let ((a, ta), (b, tb)) = (a, b);
    let first = tokio::select! {
        t = closed_within((a, ta), 2) => t,
        t = closed_within((b, tb), 2) => t,
    };
    assert!(
        first < Duration::from_secs(2),
        "made room at once: {first:?}"
    );
}

/// An HTTP/2 stream holds what a connection does, so it counts as one: past
/// `max_connections`, a stream gets a 503 to retry rather than a hundred per connection.
#[tokio::test]
async fn http2_streams_count_against_the_connection_bound() {
    let hub = FakeHub::start().await;
    let image = hub.add_image("library/slow", "1", 3, &[1 << 20]);
    hub.set_faults(common::Faults {
        slow_chunk: Some(Duration::from_millis(100)),
        ..Default::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("ca");
    let (cert, key) = ca.install_server(dir.path());
    let conf = format!("max_connections = 4\n{}", tls_config(&cert, &key, ""));
    let w = Wharf::start(&hub.url(), &conf).await;
    let h2 = https(&ca, None, false);
    let (layer, bytes) = &image.blobs[1];
    let url = at(&w, &format!("/v2/library/slow/blobs/{layer}"));
    // one connection, made first: the requests below are its streams
    assert_eq!(h2.get(at(&w, "/v2/")).send().await.unwrap().status(), 200);
    let gets = (0..10).map(|_| async {
        let r = h2.get(&url).send().await.unwrap();
        assert_eq!(r.version(), reqwest::Version::HTTP_2);
        let status = r.status().as_u16();
        let retry = header(&r, "retry-after").to_owned();
        let body = r.bytes().await.unwrap();
        (status, retry, body)
    });
    let answers = futures_util::future::join_all(gets).await;
    let served = answers
        .iter()
        .filter(|(s, _, b)| *s == 200 && b == bytes)
        .count();
    let busy = answers
        .iter()
        .filter(|(s, r, _)| *s == 503 && r == "1")
        .count();
    assert_eq!(
        served + busy,
        10,
        "{:?}",
        answers.iter().map(|a| a.0).collect::<Vec<_>>()
    );
    assert!(
        busy >= 6,
        "one connection's streams are held to the bound: {busy} refused"
    );
    assert!(served >= 1);
}
