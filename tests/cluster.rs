//! A cluster of wharfs on one machine: three instances in front of one Hub-like upstream,
//! each the owner of a share of the digests and tags, asking each other over their internal
//! listeners.

mod common;

use std::time::Duration;

use common::hub::DOCKER_MANIFEST;
use common::{client, eventually, free_port, header, FakeHub, Faults, Wharf};

const SECRET: &str = "a-cluster-secret-for-tests";

/// The `[cluster]` table of a member listening on `listen` for its peers, who are `members`
/// (a `members` or `members_dns` line); the secret goes in a file in `dir`.
fn member_conf(dir: &std::path::Path, listen: &str, members: &str) -> String {
    let secret = dir.join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    format!(
        "[cluster]\nlisten = \"{listen}\"\n{members}\nsecret_file = \"{}\"\nhealth_interval = \"200ms\"\n",
        secret.display()
    )
}

/// `n` internal listeners on free ports, and the `members = [...]` list of them.
fn roster(n: usize) -> (Vec<String>, String) {
    let listens: Vec<String> = (0..n)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let quoted: Vec<String> = listens.iter().map(|l| format!("\"{l}\"")).collect();
    let members = format!("members = [{}]", quoted.join(", "));
    (listens, members)
}

/// Three members in front of `hub`, each seeing all three live.
async fn cluster(hub: &FakeHub, extra: &str) -> (Vec<Wharf>, Vec<String>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let (listens, members) = roster(3);
    let mut all = Vec::new();
    for listen in &listens {
        let conf = member_conf(dir.path(), listen, &members);
        all.push(Wharf::start(&hub.url(), &format!("{extra}\n{conf}")).await);
    }
    for w in &all {
        eventually(10, "three live members", || async {
            w.metric("wharf_cluster_members_live").await == 3.0
        })
        .await;
    }
    (all, listens, dir)
}

#[tokio::test(flavor = "multi_thread")]
async fn thirty_cold_gets_over_three_members_make_one_upstream_fetch() {
    let hub = FakeHub::start().await;
    let img = hub.add_image("library/big", "1", 11, &[8 << 20]);
    let (digest, bytes) = img.blobs.last().unwrap().clone();
    // slow enough that every request arrives while the blob is being fetched
    hub.set_faults(Faults {
        slow_chunk: Some(Duration::from_millis(5)),
        ..Default::default()
    });
    let (members, _, _dir) = cluster(&hub, "").await;
    let c = client();
    let path = format!("/v2/library/big/blobs/{digest}");
    let gets = (0..30).map(|i| {
        let url = members[i % 3].url(&path);
        let c = c.clone();
        async move {
            let r = c.get(url).send().await.unwrap();
            let status = r.status();
            let body = r.bytes().await.unwrap();
            assert_eq!(
                status,
                200,
                "{}",
                String::from_utf8_lossy(&body[..body.len().min(300)])
            );
            body
        }
    });
    let bodies = futures_util::future::join_all(gets).await;
    for b in &bodies {
        assert!(*b == bytes, "every client gets the blob's bytes");
    }
    assert_eq!(
        hub.cdn_fetches(&digest),
        1,
        "one upstream fetch for the cluster"
    );
    let mut forwarded = 0.0;
    for m in &members {
        forwarded += m.metric("wharf_peer_forwarded_total").await;
    }
    assert!(
        forwarded >= 2.0,
        "the members that do not own it ask the owner"
    );
    // fills by source: the owner's from the upstream, the others' from the owner
    let (mut upstream, mut member) = (0.0, 0.0);
    for m in &members {
        upstream += m.metric("wharf_fills_total{source=\"upstream\"}").await;
        member += m.metric("wharf_fills_total{source=\"member\"}").await;
    }
    assert_eq!((upstream, member), (1.0, 2.0));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tag_is_revalidated_once_per_ttl_for_the_cluster() {
    let hub = FakeHub::start().await;
    let img = hub.add_image("library/app", "v1", 12, &[100]);
    let (members, _, _dir) = cluster(&hub, "tag_ttl = \"1s\"").await;
    let c = client();
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_millis(3500) {
        for m in &members {
            let r = c
                .get(m.url("/v2/library/app/manifests/v1"))
                .header("accept", DOCKER_MANIFEST)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            assert_eq!(header(&r, "docker-content-digest"), img.digest);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let n = hub.counters();
    let asked = n.manifest_gets + n.manifest_heads;
    // 3.5 s at a 1 s TTL: the first GET and a HEAD per second (one more for timing), for the
    // cluster; each member on its own would ask three times as often
    assert!(asked <= 6, "the upstream was asked {asked} times: {n:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_internal_listener_answers_members_only() {
    let hub = FakeHub::start().await;
    let img = hub.add_image("library/app", "v1", 13, &[100]);
    let (members, _, _dir) = cluster(&hub, "").await;
    let log = members[0].log();
    let listen = log
        .lines()
        .find_map(|l| l.split("cluster listener on ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .expect("the cluster listener is announced")
        .to_owned();
    let c = client();
    let url = format!(
        "http://{listen}/v2/docker.io/library/app/manifests/{}",
        img.digest
    );
    for secret in [None, Some("wrong-secret-of-the-same-len!")] {
        let mut req = c.get(&url);
        if let Some(s) = secret {
            req = req.header("x-wharf-peer-secret", s);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 401);
        assert_eq!(common::error_code(r).await, "UNAUTHORIZED");
    }
    let r = c
        .get(&url)
        .header("x-wharf-peer-secret", SECRET)
        .header("accept", DOCKER_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // the status page shows the members
    let page = members[0].admin_page("/").await;
    assert!(page.contains("<h2>Cluster</h2>"), "{page}");
    assert_eq!(page.matches("this instance").count(), 1, "{page}");
    assert_eq!(page.matches("<td>up</td>").count(), 2, "{page}");
    // a member names the registry first; a path that does not is not taken for Docker Hub's
    let r = c
        .get(format!(
            "http://{listen}/v2/library/app/manifests/{}",
            img.digest
        ))
        .header("x-wharf-peer-secret", SECRET)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // a member may not name a registry that is not mirrored
    let r = c
        .get(format!(
            "http://{listen}/v2/evil.example/x/manifests/latest"
        ))
        .header("x-wharf-peer-secret", SECRET)
        .send()
        .await
        .unwrap();
    assert_ne!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_owner_killed_mid_fill_never_leads_to_wrong_bytes_and_a_retry_succeeds() {
    let hub = FakeHub::start().await;
    let img = hub.add_image("library/big", "1", 14, &[4 << 20]);
    let (digest, bytes) = img.blobs.last().unwrap().clone();
    hub.set_faults(Faults {
        slow_chunk: Some(Duration::from_millis(20)),
        ..Default::default()
    });
    let (mut members, listens, _dir) = cluster(&hub, "").await;
    let owner_addr = wharf::cluster::rendezvous(listens.iter().map(|s| s.as_str()), &digest)
        .unwrap()
        .to_owned();
    let owner = listens.iter().position(|l| *l == owner_addr).unwrap();
    let asker = (owner + 1) % 3;
    let c = client();
    let path = format!("/v2/library/big/blobs/{digest}");
    let first = c.get(members[asker].url(&path)).send().await.unwrap();
    assert_eq!(first.status(), 200);
    eventually(10, "the owner fills for the asker", || async {
        members[owner].metric("wharf_fills_in_flight").await == 1.0
    })
    .await;
    members[owner].kill();
    common::assert_not_served_whole(first).await;
    hub.set_faults(Faults::default());
    // the asker finds the owner gone (or its answer cut) and asks the upstream itself
    eventually(10, "a retry gets the whole blob", || async {
        match c.get(members[asker].url(&path)).send().await {
            Ok(r) if r.status() == 200 => r.bytes().await.map(|b| b == bytes).unwrap_or(false),
            _ => false,
        }
    })
    .await;
    assert!(members[asker].metric("wharf_peer_forwarded_total").await >= 1.0);
}

/// Members from a DNS name, resolved again at every check (a headless Service's way): here
/// `localhost`, which names this instance's internal listener (an address of it where
/// nothing listens, such as `::1`, would be shown down).
#[tokio::test(flavor = "multi_thread")]
async fn members_come_from_a_dns_name() {
    let hub = FakeHub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let conf = member_conf(
        dir.path(),
        &listen,
        &format!("members_dns = \"localhost:{port}\""),
    );
    let w = Wharf::start(&hub.url(), &conf).await;
    eventually(10, "this instance found by name", || async {
        let page = w.admin_page("/").await;
        page.contains(&format!("<td>127.0.0.1:{port}</td><td>this instance</td>"))
    })
    .await;
    assert_eq!(w.metric("wharf_cluster_members_live").await, 1.0);
}

/// Two members that disagree on who owns a digest (while the roster changes, say) could each
/// forward to the other, and each member's request join the other's forwarded fill: a wait
/// cycle. A member's request never waits for a fill that is itself asking a member: it gets a
/// 503 at once, and the member that asked goes to the upstream.
#[tokio::test(flavor = "multi_thread")]
async fn a_members_request_never_waits_for_a_fill_that_asks_a_member() {
    let hub = FakeHub::start().await;
    let stuck = common::fake_member(None).await;
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let members = format!("members = [\"{listen}\", \"{stuck}\"]");
    // a blob the stuck member owns
    let (digest, _) = (0..)
        .map(|seed| {
            let img = hub.add_image("library/loop", &format!("t{seed}"), seed, &[1000]);
            img.blobs.last().unwrap().clone()
        })
        .find(|(d, _)| {
            wharf::cluster::rendezvous([listen.as_str(), stuck.as_str()].into_iter(), d)
                == Some(stuck.as_str())
        })
        .unwrap();
    let conf = member_conf(dir.path(), &listen, &members);
    let w = Wharf::start(&hub.url(), &conf).await;
    eventually(10, "two live members", || async {
        w.metric("wharf_cluster_members_live").await == 2.0
    })
    .await;
    // a client's GET: the fill asks the stuck member
    let path = format!("/v2/library/loop/blobs/{digest}");
    let url = w.url(&path);
    let waiting = tokio::spawn(async move { client().get(url).send().await });
    eventually(10, "the fill asking the stuck member", || async {
        w.metric("wharf_fills_in_flight").await == 1.0
    })
    .await;
    // a member asks for the same blob: answered at once, not held
    let asked = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
        .get(format!(
            "http://{listen}/v2/docker.io/library/loop/blobs/{digest}"
        ))
        .header("x-wharf-peer-secret", SECRET)
        .send()
        .await
        .expect("an answer within 5 s");
    assert_eq!(asked.status(), 503);
    assert_eq!(common::error_code(asked).await, "UNAVAILABLE");
    waiting.abort();
}

/// With `[cluster.tls]` the members speak TLS to each other, with certificates from the
/// cluster's own CA that name no host (members are reached by roster addresses): one fetch for
/// the cluster still holds, and the internal listener takes no one without such a certificate,
/// whatever secret they know.
#[tokio::test(flavor = "multi_thread")]
async fn members_speak_mutual_tls_with_certificates_from_the_clusters_ca() {
    use common::ca::Ca;
    let hub = FakeHub::start().await;
    let img = hub.add_image("library/sealed", "1", 23, &[1 << 20]);
    let (digest, bytes) = img.blobs.last().unwrap().clone();
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("the cluster");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    // three members, and at a fourth roster address an impostor that knows the secret and
    // takes the members' certificates, but shows one from another CA
    let (listens, members_line) = roster(4);
    let other = Ca::new("not the cluster");
    let both = dir.path().join("both.pem");
    std::fs::write(&both, format!("{}{}", ca.pem, other.pem)).unwrap();
    let member = |i: usize, issuer: &Ca, trusted: &std::path::Path| {
        let (cert, key) = issuer.issue_member(&format!("member-{i}"));
        let (c, k) = (
            dir.path().join(format!("m{i}.crt")),
            dir.path().join(format!("m{i}.key")),
        );
        std::fs::write(&c, cert).unwrap();
        std::fs::write(&k, key).unwrap();
        format!(
            "{}[cluster.tls]\ncert = \"{}\"\nkey = \"{}\"\nca = \"{}\"\n",
            member_conf(dir.path(), &listens[i], &members_line),
            c.display(),
            k.display(),
            trusted.display()
        )
    };
    let impostor = Wharf::start(&hub.url(), &member(3, &other, &both)).await;
    let mut members = Vec::new();
    for i in 0..3 {
        members.push(Wharf::start(&hub.url(), &member(i, &ca, &ca_file)).await);
    }
    for w in &members {
        eventually(10, "three live members over TLS", || async {
            w.metric("wharf_cluster_members_live").await == 3.0
        })
        .await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await; // five health checks more
    for w in &members {
        let live = w.metric("wharf_cluster_members_live").await;
        assert_eq!(live, 3.0, "the impostor is never taken for a member");
    }
    drop(impostor);
    let path = format!("/v2/library/sealed/blobs/{digest}");
    let gets = (0..9).map(|i| {
        let url = members[i % 3].url(&path);
        async move {
            client()
                .get(url)
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap()
        }
    });
    for got in futures_util::future::join_all(gets).await {
        assert!(got == bytes);
    }
    assert_eq!(hub.cdn_fetches(&digest), 1, "one fetch for the cluster");
    let mut forwarded = 0.0;
    for w in &members {
        forwarded += w.metric("wharf_peer_forwarded_total").await;
    }
    assert!(forwarded >= 1.0, "the members asked each other");

    // the internal listener: only a certificate from the cluster's CA gets in
    let ping = format!("https://{}/_wharf/peer", listens[0]);
    let tls_client = |me: Option<(String, String)>| {
        // the test does not check the member's certificate (it names no host): the listener
        // is the one checking here
        let mut b = reqwest::Client::builder()
            .danger_accept_invalid_certs(true)
            .timeout(Duration::from_secs(5));
        if let Some((cert, key)) = me {
            let pem = format!("{cert}{key}");
            b = b.identity(reqwest::Identity::from_pem(pem.as_bytes()).unwrap());
        }
        b.build().unwrap()
    };
    let plain = client()
        .get(format!("http://{}/_wharf/peer", listens[0]))
        .header("x-wharf-peer-secret", SECRET)
        .send()
        .await;
    assert!(
        plain.is_err() || plain.unwrap().status() != 200,
        "plain HTTP"
    );
    let stranger = Ca::new("not the cluster").issue_member("stranger");
    for (who, me) in [("no certificate", None), ("another CA's", Some(stranger))] {
        let r = tls_client(me)
            .get(&ping)
            .header("x-wharf-peer-secret", SECRET)
            .send()
            .await;
        assert!(r.is_err(), "{who}: {r:?}");
    }
    let r = tls_client(Some(ca.issue_member("a new member")))
        .get(&ping)
        .header("x-wharf-peer-secret", SECRET)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        200,
        "a certificate from the cluster's CA, and the secret"
    );
}
