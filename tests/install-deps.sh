#!/usr/bin/env bash
# Install what wharf's build and tests need on Debian 12 (as root, or through sudo):
# cmake for Pingora's zlib-ng, and for the end-to-end tests a real registry (docker-registry)
# and real clients (skopeo, containerd, dockerd, podman, runc) plus busybox-static for the test
# images, openssl and htpasswd (apache2-utils) for the TLS and access tests, systemd-analyze
# to check the unit in conf/. Idempotent: installs only what is missing. Rust (cargo) must already be installed.
set -euo pipefail
pkgs=(cmake gcc pkg-config curl python3 ca-certificates
      docker-registry skopeo containerd docker.io podman runc busybox-static
      openssl apache2-utils systemd)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if ((${#missing[@]})); then
  SUDO=; ((EUID == 0)) || SUDO=sudo
  echo "installing: ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "cargo not found: install Rust (https://rustup.rs) first" >&2; exit 1; }
