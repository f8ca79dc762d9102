//! The commands around the cache, run as a user would: warm through the upstream, export,
//! import into an empty data directory, serve that offline; ls, gc and verify.

mod common;

use std::path::Path;

use common::hub::sha256;
use common::{client, header, FakeHub, Wharf};

/// Run `wharf ARGS…`; returns (exit code, stdout).
async fn wharf(args: &[&str]) -> (i32, String) {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_wharf"));
    cmd.args(args);
    if !args.contains(&"--upstream") {
        cmd.args(["--upstream", common::NO_UPSTREAM]);
    }
    let out = cmd.output().await.expect("run wharf");
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !stderr.is_empty() {
        eprintln!("wharf {args:?}: {stderr}");
    }
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
    )
}

fn json_lines(out: &str) -> Vec<serde_json::Value> {
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn count(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_export_import_then_serve_offline() {
    let hub = FakeHub::start().await;
    let app = hub.add_image("library/app", "amd64", 1, &[300_000, 5000]);
    let index = hub.add_index_tag("library/app", "1", &app);
    let tool = hub.add_image("team/tool", "2", 2, &[1000]);
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let (a, b) = (a.to_str().unwrap(), b.to_str().unwrap());
    let url = hub.url();

    let (code, out) = wharf(&[
        "warm",
        "--data",
        a,
        "--upstream",
        &url,
        "--json",
        "app:1",
        "team/tool:2",
    ])
    .await;
    assert_eq!(code, 0, "{out}");
    let reports = json_lines(&out);
    assert_eq!(reports[0]["image"], "docker.io/library/app:1");
    assert_eq!(reports[0]["digest"], index);
    assert_eq!(reports[0]["blobs"], 3);
    assert_eq!(reports[1]["digest"], tool.digest);
    for (d, _) in app.blobs.iter().chain(&tool.blobs) {
        assert_eq!(hub.cdn_fetches(d), 1, "{d}");
    }
    // warming again fetches nothing
    let (code, out) = wharf(&["warm", "--data", a, "--upstream", &url, "--json", "app:1"]).await;
    assert_eq!(
        (code, json_lines(&out)[0]["fetched_bytes"].as_u64()),
        (0, Some(0))
    );

    let (code, out) = wharf(&["ls", "--data", a, "--json"]).await;
    assert_eq!(code, 0);
    let listed: serde_json::Value = serde_json::from_str(&out).unwrap();
    let images: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["image"].as_str().unwrap())
        .collect();
    assert_eq!(images, ["docker.io/library/app:1", "docker.io/team/tool:2"]);
    // the commands that need no upstream build none: an upstream whose CA file is gone does
    // not stop them
    let broken = dir.path().join("broken.toml");
    std::fs::write(
        &broken,
        "[upstreams.\"docker.io\"]\nca_file = \"/nonexistent/ca.pem\"\n",
    )
    .unwrap();
    let broken = broken.to_str().unwrap();
    let (code, out) = wharf(&["ls", "--config", broken, "--data", a, "--json"]).await;
    assert_eq!(code, 0, "{out}");
    // (its upstream is the fake hub on loopback: a CA file that loaded would reach nothing else)
    let warm = [
        "warm",
        "--config",
        broken,
        "--data",
        a,
        "--upstream",
        &url,
        "app:1",
    ];
    let (code, _) = wharf(&warm).await;
    assert_ne!(code, 0, "warm builds the upstream, and says why it cannot");

    // export as a directory (everything) and as a tar (one image)
    let all = dir.path().join("all");
    let one = dir.path().join("one.tar");
    let (code, _) = wharf(&["export", "--data", a, "--out", all.to_str().unwrap()]).await;
    assert_eq!(code, 0);
    assert!(all.join("oci-layout").exists());
    let index_json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(all.join("index.json")).unwrap()).unwrap();
    assert_eq!(index_json["manifests"].as_array().unwrap().len(), 2);
    let (code, _) = wharf(&[
        "export",
        "--data",
        a,
        "--out",
        one.to_str().unwrap(),
        "team/tool:2",
    ])
    .await;
    assert_eq!(code, 0);

    // import the directory into an empty data dir and serve it offline
    let (code, out) = wharf(&["import", "--data", b, "--json", all.to_str().unwrap()]).await;
    assert_eq!(code, 0, "{out}");
    let imported: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(imported["tags"].as_array().unwrap().len(), 2);
    let before = hub.counters();
    let w = Wharf::start_at(&url, "offline = true\n", b.into()).await;
    let c = client();
    for (accept, want) in [
        ("application/vnd.oci.image.index.v1+json", &index),
        ("*/*", &index),
    ] {
        let r = c
            .get(w.url("/v2/app/manifests/1"))
            .header("Accept", accept)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "docker-content-digest"), want.as_str());
    }
    let r = c
        .get(w.url(&format!("/v2/app/manifests/{}", app.digest)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the platform manifest came along");
    for (d, bytes) in &app.blobs {
        let r = c
            .get(w.url(&format!("/v2/app/blobs/{d}")))
            .send()
            .await
            .unwrap();
        assert_eq!(&r.bytes().await.unwrap(), bytes);
    }
    let after = hub.counters();
    assert_eq!(before.registry_requests, after.registry_requests, "offline");
    drop(w);

    // a tar import verifies digests: a damaged blob is rejected, the rest goes in
    let damaged = dir.path().join("damaged");
    let c2 = dir.path().join("c");
    let (code, _) = wharf(&[
        "export",
        "--data",
        a,
        "--out",
        damaged.to_str().unwrap(),
        "team/tool:2",
    ])
    .await;
    assert_eq!(code, 0);
    let layer = damaged.join("blobs/sha256").join(&tool.blobs[1].0[7..]);
    std::fs::write(&layer, b"not the layer").unwrap();
    let (code, out) = wharf(&[
        "import",
        "--data",
        c2.to_str().unwrap(),
        "--json",
        damaged.to_str().unwrap(),
    ])
    .await;
    assert_eq!(code, 1, "{out}");
    let imported: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(imported["rejected"].as_array().unwrap().len(), 1);
    assert!(!c2.join("blobs/sha256").join(&tool.blobs[1].0[7..]).exists());
    let (code, out) = wharf(&[
        "import",
        "--data",
        c2.to_str().unwrap(),
        one.to_str().unwrap(),
    ])
    .await;
    assert_eq!(code, 0, "{out}");
    assert!(c2.join("blobs/sha256").join(&tool.blobs[1].0[7..]).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_removes_damaged_objects_and_gc_shrinks() {
    let hub = FakeHub::start().await;
    let img = hub.add_image("library/v", "1", 3, &[100_000, 100_000, 100_000]);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    let d = data.to_str().unwrap();
    let (code, _) = wharf(&["warm", "--data", d, "--upstream", &hub.url(), "v:1"]).await;
    assert_eq!(code, 0);
    let (code, out) = wharf(&["verify", "--data", d, "--json"]).await;
    assert_eq!(code, 0);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["objects"],
        5
    );

    let victim = data.join("blobs/sha256").join(&img.blobs[2].0[7..]);
    let mut bytes = std::fs::read(&victim).unwrap();
    bytes[10] ^= 1;
    std::fs::write(&victim, &bytes).unwrap();
    assert_ne!(sha256(&bytes), img.blobs[2].0);
    let (code, out) = wharf(&["verify", "--data", d, "--json"]).await;
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["bad"].as_array().unwrap().len(), 1);
    assert!(!victim.exists(), "a damaged object is removed");

    assert_eq!(count(&data.join("blobs/sha256")), 3);
    let (code, out) = wharf(&["gc", "--data", d, "--max-size", "150000", "--json"]).await;
    assert_eq!(code, 0, "{out}");
    let g: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(g["removed"].as_u64().unwrap() >= 2, "{g}");
    let left: u64 = std::fs::read_dir(data.join("blobs/sha256"))
        .unwrap()
        .chain(std::fs::read_dir(data.join("manifests/sha256")).unwrap())
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(left <= 150_000, "{left}");
}
