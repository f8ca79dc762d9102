#!/usr/bin/env python3
"""Build small deterministic test images offline and push them to a registry (stdlib only).

  library/busybox:latest  Docker schema2 image: one layer with Debian's busybox-static, runnable
  library/multi:1         OCI index: linux/amd64 (the busybox image, as OCI) + linux/arm64 (fake)
  library/layers:1        OCI image of several small layers (not runnable)

Prints a JSON object "repo:tag" -> manifest digest. Same inputs give the same digests.
usage: images.py REGISTRY_HOST:PORT
"""
import gzip
import hashlib
import io
import json
import subprocess
import sys
import tarfile
import urllib.request

D_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
D_CONFIG = "application/vnd.docker.container.image.v1+json"
D_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
EPOCH = 946684800


def digest(b):
    return "sha256:" + hashlib.sha256(b).hexdigest()


def layer(files):
    """files: list of (name, bytes|None for dir, mode, symlink target or None) -> (gz, diff_id)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for name, data, mode, link in files:
            ti = tarfile.TarInfo(name)
            ti.mtime, ti.mode, ti.uid, ti.gid = EPOCH, mode, 0, 0
            if link:
                ti.type, ti.linkname = tarfile.SYMTYPE, link
                tf.addfile(ti)
            elif data is None:
                ti.type = tarfile.DIRTYPE
                tf.addfile(ti)
            else:
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
    raw = raw.getvalue()
    gz = gzip.compress(raw, mtime=0)
    return gz, digest(raw)


def busybox_layer():
    bb = open("/bin/busybox", "rb").read()
    applets = subprocess.run(["/bin/busybox", "--list"], capture_output=True, text=True).stdout.split()
    files = [(d, None, 0o755, None) for d in ("bin", "etc", "tmp", "proc", "sys", "dev")]
    files.append(("bin/busybox", bb, 0o755, None))
    files += [("bin/" + a, None, 0o777, "busybox") for a in sorted(set(applets) - {"busybox"})]
    files.append(("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n", 0o644, None))
    return layer(files)


def config(diff_ids, arch="amd64", cmd=("sh",)):
    return json.dumps({
        "architecture": arch, "os": "linux", "created": "2000-01-01T00:00:00Z",
        "config": {"Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"], "Cmd": list(cmd)},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }, sort_keys=True).encode()


class Registry:
    def __init__(self, host):
        self.base = "http://" + host

    def req(self, method, url, data=None, headers=None):
        r = urllib.request.Request(url if url.startswith("http") else self.base + url,
                                   data=data, method=method, headers=headers or {})
        with urllib.request.urlopen(r, timeout=60) as resp:
            resp.read()
            return resp.headers

    def blob(self, repo, data):
        d = digest(data)
        loc = self.req("POST", f"/v2/{repo}/blobs/uploads/", b"")["Location"]
        sep = "&" if "?" in loc else "?"
        self.req("PUT", f"{loc}{sep}digest={d}", data,
                 {"Content-Type": "application/octet-stream", "Content-Length": str(len(data))})
        return {"digest": d, "size": len(data)}

    def manifest(self, repo, ref, mediatype, obj):
        body = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
        self.req("PUT", f"/v2/{repo}/manifests/{ref}", body, {"Content-Type": mediatype})
        return {"mediaType": mediatype, "digest": digest(body), "size": len(body)}


def image(reg, repo, ref, layers, cfg, oci):
    c = reg.blob(repo, cfg)
    ls = [reg.blob(repo, gz) for gz, _ in layers]
    m = {"schemaVersion": 2, "mediaType": OCI_MANIFEST if oci else D_MANIFEST,
         "config": dict(c, mediaType=OCI_CONFIG if oci else D_CONFIG),
         "layers": [dict(l, mediaType=OCI_LAYER if oci else D_LAYER) for l in ls]}
    return reg.manifest(repo, ref, m["mediaType"], m)


def main():
    reg = Registry(sys.argv[1])
    out = {}
    bb = busybox_layer()
    bb_cfg = config([bb[1]])
    out["library/busybox:latest"] = image(reg, "library/busybox", "latest", [bb], bb_cfg, False)["digest"]

    amd = image(reg, "library/multi", "amd64", [bb], bb_cfg, True)
    fake = layer([("etc", None, 0o755, None), ("etc/arch", b"arm64\n", 0o644, None)])
    arm = image(reg, "library/multi", "arm64", [fake], config([fake[1]], "arm64"), True)
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        dict(amd, platform={"architecture": "amd64", "os": "linux"}),
        dict(arm, platform={"architecture": "arm64", "os": "linux", "variant": "v8"})]}
    out["library/multi:1"] = reg.manifest("library/multi", "1", OCI_INDEX, index)["digest"]

    many = [layer([(f"d{i}", None, 0o755, None),
                   (f"d{i}/f", hashlib.sha256(str(i).encode()).digest() * (40 + i), 0o644, None)])
            for i in range(6)]
    out["library/layers:1"] = image(reg, "library/layers", "1", many,
                                    config([l[1] for l in many], cmd=("true",)), True)["digest"]
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
