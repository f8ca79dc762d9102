//! Who may read what: clients say who they are with HTTP Basic against an htpasswd file,
//! rules say which identities read which repositories, and everyone else is challenged (401)
//! or refused (403) before anything is fetched for them.

mod common;

use base64::Engine as _;
use common::{client, error_code, header, FakeHub, HubOptions, Wharf};

fn basic(user: &str, password: &str) -> String {
    let pair = format!("{user}:{password}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

/// A config whose docker.io upstream has credentials, and whose clients are bob and carol.
fn config(dir: &std::path::Path, rules: &str) -> String {
    let file = dir.join("htpasswd");
    let (bob, carol) = (
        bcrypt::hash("bobs-pw", 4).unwrap(),
        bcrypt::hash("carols-pw", 4).unwrap(),
    );
    std::fs::write(&file, format!("bob:{bob}\ncarol:{carol}\n")).unwrap();
    format!(
        "[upstreams.\"docker.io\"]\nusername = \"alice\"\npassword = \"s3cret\"\n\
         [access]\nhtpasswd = {:?}\n{rules}",
        file.display().to_string()
    )
}

async fn ask(w: &Wharf, path: &str, auth: Option<&str>) -> reqwest::Response {
    let mut r = client().get(w.url(path));
    if let Some(a) = auth {
        r = r.header("Authorization", a);
    }
    r.send().await.unwrap()
}

#[tokio::test]
async fn a_private_repository_is_read_only_by_whom_the_rules_let() {
    let hub = FakeHub::start_with(HubOptions {
        user: Some(("alice".into(), "s3cret".into())),
        ..Default::default()
    })
    .await;
    let private = hub.add_image("private/app", "1", 1, &[1000]);
    hub.add_image("library/pub", "1", 2, &[1000]);
    let dir = tempfile::tempdir().unwrap();
    let rules = r#"
        [[access.rules]]
        who = ["anonymous"]
        repositories = ["docker.io/library/*"]
        [[access.rules]]
        who = ["bob"]
        repositories = ["docker.io/private/*"]
    "#;
    let w = Wharf::start(&hub.url(), &config(dir.path(), rules)).await;
    let bob = basic("bob", "bobs-pw");

    // anonymous: the public repository yes, the private one is a challenge, nothing fetched
    assert_eq!(ask(&w, "/v2/", None).await.status(), 200);
    assert_eq!(
        ask(&w, "/v2/library/pub/manifests/1", None).await.status(),
        200
    );
    let before = hub.counters().manifest_gets;
    let r = ask(&w, "/v2/private/app/manifests/1", None).await;
    assert_eq!(r.status(), 401);
    assert_eq!(header(&r, "www-authenticate"), "Basic realm=\"wharf\"");
    assert_eq!(error_code(r).await, "UNAUTHORIZED");
    // bob, once with a wrong password, then right
    let r = ask(
        &w,
        "/v2/private/app/manifests/1",
        Some(&basic("bob", "guess")),
    )
    .await;
    assert_eq!(r.status(), 401, "a wrong password is never accepted");
    assert_eq!(
        hub.counters().manifest_gets,
        before,
        "nothing fetched for them"
    );
    let r = ask(&w, "/v2/private/app/manifests/1", Some(&bob)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "docker-content-digest"), private.digest);
    // carol is someone, but not someone the rules let read it
    let r = ask(
        &w,
        "/v2/private/app/manifests/1",
        Some(&basic("carol", "carols-pw")),
    )
    .await;
    assert_eq!(r.status(), 403);
    assert_eq!(error_code(r).await, "DENIED");
    // by digest too, and blobs: cached now, still not for the anonymous
    let (layer, _) = &private.blobs[1];
    assert_eq!(
        ask(&w, &format!("/v2/private/app/blobs/{layer}"), Some(&bob))
            .await
            .status(),
        200
    );
    for path in [
        format!("/v2/private/app/blobs/{layer}"),
        format!("/v2/private/app/manifests/{}", private.digest),
    ] {
        assert_eq!(ask(&w, &path, None).await.status(), 401, "{path}");
    }
    common::eventually(5, "the access log says who", || async {
        w.log().contains("user=\"bob\"")
    })
    .await;
}

#[tokio::test]
async fn without_rules_the_authenticated_read_and_the_anonymous_are_challenged() {
    let hub = FakeHub::start_with(HubOptions {
        user: Some(("alice".into(), "s3cret".into())),
        ..Default::default()
    })
    .await;
    hub.add_image("private/app", "1", 3, &[10]);
    let dir = tempfile::tempdir().unwrap();
    let w = Wharf::start(&hub.url(), &config(dir.path(), "")).await;
    let r = ask(&w, "/v2/", None).await;
    assert_eq!(r.status(), 401, "the base endpoint asks for credentials");
    assert_eq!(header(&r, "www-authenticate"), "Basic realm=\"wharf\"");
    let carol = basic("carol", "carols-pw");
    assert_eq!(ask(&w, "/v2/", Some(&carol)).await.status(), 200);
    assert_eq!(
        ask(&w, "/v2/private/app/manifests/1", Some(&carol))
            .await
            .status(),
        200
    );
    assert!(!w.log().contains("anyone who can reach wharf"));
}

#[tokio::test]
async fn with_credentials_upstream_and_no_access_wharf_says_so_at_start() {
    let hub = FakeHub::start_with(HubOptions {
        user: Some(("alice".into(), "s3cret".into())),
        ..Default::default()
    })
    .await;
    let creds = "[upstreams.\"docker.io\"]\nusername = \"alice\"\npassword = \"s3cret\"\n";
    let w = Wharf::start(&hub.url(), creds).await;
    let log = w.log();
    let line = log
        .lines()
        .find(|l| l.contains("anyone who can reach wharf"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(line.contains("docker.io"), "{line}");
    let w = Wharf::start(&hub.url(), "").await;
    assert!(!w.log().contains("anyone who can reach wharf"));
}

/// A user taken out of the htpasswd file is out within a second or two, although their
/// credentials were checked moments before; and a line wharf cannot read on a reload is left
/// out (with a warning), not a reason to keep the users the file had before.
#[tokio::test]
async fn a_user_taken_out_of_the_file_is_out_at_once() {
    let hub = FakeHub::start().await;
    hub.add_image("library/pub", "1", 4, &[10]);
    let dir = tempfile::tempdir().unwrap();
    let w = Wharf::start(&hub.url(), &config(dir.path(), "")).await;
    let (bob, carol) = (basic("bob", "bobs-pw"), basic("carol", "carols-pw"));
    let path = "/v2/library/pub/manifests/1";
    assert_eq!(ask(&w, path, Some(&bob)).await.status(), 200);
    assert_eq!(ask(&w, path, Some(&carol)).await.status(), 200);
    // bob is removed, and someone leaves a typo behind
    let file = dir.path().join("htpasswd");
    let text = std::fs::read_to_string(&file).unwrap();
    let carol_line = text.lines().find(|l| l.starts_with("carol:")).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20)); // a new modification time
    std::fs::write(&file, format!("{carol_line}\nthis line is a typo\n")).unwrap();
    common::eventually(5, "bob is refused", || async {
        ask(&w, path, Some(&bob)).await.status() == 401
    })
    .await;
    assert_eq!(ask(&w, path, Some(&carol)).await.status(), 200);
    assert!(w.log().contains("line left out"), "{}", w.log());
}

/// Guessing passwords cannot hold requests without end: verifications wait in a bounded queue,
/// past which a guess gets a 503 to retry at once.
#[tokio::test]
async fn password_guesses_wait_in_a_bounded_queue() {
    let hub = FakeHub::start().await;
    hub.add_image("library/pub", "1", 5, &[10]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("htpasswd");
    std::fs::write(
        &file,
        format!("bob:{}\n", bcrypt::hash("bobs-pw", 10).unwrap()),
    )
    .unwrap();
    let conf = format!("[access]\nhtpasswd = {:?}\n", file.display().to_string());
    let w = Wharf::start(&hub.url(), &conf).await;
    let started = std::time::Instant::now();
    let guesses = (0..120).map(|i| {
        let w = &w;
        async move {
            let r = ask(
                w,
                "/v2/library/pub/manifests/1",
                Some(&basic("bob", &format!("guess{i}"))),
            )
            .await;
            (r.status().as_u16(), header(&r, "retry-after").to_owned())
        }
    });
    let answers = futures_util::future::join_all(guesses).await;
    let busy = answers
        .iter()
        .filter(|(s, r)| *s == 503 && r == "1")
        .count();
    let wrong = answers.iter().filter(|(s, _)| *s == 401).count();
    assert_eq!(busy + wrong, 120, "{answers:?}");
    assert!(busy > 0, "past the queue's bound a guess is turned away");
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
}
