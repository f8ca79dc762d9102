#!/usr/bin/env python3
"""Push the benchmark's content to a registry and lay the same files out for nginx.

  bench/big:1     one 256 MiB layer (random: nothing compresses it)
  bench/mid:1     one 64 MiB layer (the memory test pulls it 64 times at once)
  bench/layers:1  8 layers of 16 MiB (a multi-layer cold pull)
  bench/small:1   one 1 KiB layer (small-object throughput)

Files also go under NGINX_ROOT at the URL paths a registry serves them at
(/v2/<repo>/blobs/<digest>, /v2/<repo>/manifests/<digest>), so nginx serves the same bytes at
the same URLs. Prints JSON: repo -> {"manifest": digest, "blobs": [digests]}.
usage: content.py REGISTRY_HOST:PORT NGINX_ROOT [SEED]
"""
import hashlib
import json
import os
import random
import sys
import urllib.request

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def put(url, data, ctype, method="PUT"):
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": ctype})
    with urllib.request.urlopen(req, timeout=600) as r:
        r.read()
        return r.headers


def random_bytes(rng, n):
    """n deterministic random bytes, made 1 MiB at a time."""
    return b"".join(rng.randbytes(min(1 << 20, n - i)) for i in range(0, n, 1 << 20))


def main():
    reg, root = sys.argv[1], sys.argv[2]
    rng = random.Random(int(sys.argv[3]) if len(sys.argv) > 3 else 1)
    base = f"http://{reg}"
    out = {}

    def blob(repo, data):
        d = "sha256:" + hashlib.sha256(data).hexdigest()
        loc = put(f"{base}/v2/{repo}/blobs/uploads/", b"", "application/octet-stream", "POST")["Location"]
        if loc.startswith("/"):
            loc = base + loc
        put(f"{loc}{'&' if '?' in loc else '?'}digest={d}", data, "application/octet-stream")
        path = os.path.join(root, "v2", repo, "blobs", d)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
        return {"digest": d, "size": len(data)}

    for repo, sizes in [("bench/big", [256 << 20]), ("bench/mid", [64 << 20]),
                        ("bench/layers", [16 << 20] * 8), ("bench/small", [1024])]:
        config = json.dumps({"architecture": "amd64", "os": "linux",
                             "rootfs": {"type": "layers", "diff_ids": []}}).encode()
        c = blob(repo, config)
        layers = [blob(repo, random_bytes(rng, n)) for n in sizes]
        m = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                        "config": dict(c, mediaType="application/vnd.oci.image.config.v1+json"),
                        "layers": [dict(l, mediaType="application/vnd.oci.image.layer.v1.tar") for l in layers]},
                       separators=(",", ":")).encode()
        md = "sha256:" + hashlib.sha256(m).hexdigest()
        put(f"{base}/v2/{repo}/manifests/1", m, OCI_MANIFEST)
        path = os.path.join(root, "v2", repo, "manifests", md)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(m)
        out[repo] = {"manifest": md, "blobs": [l["digest"] for l in layers]}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
