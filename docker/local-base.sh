#!/usr/bin/env bash
# Builds a bare Debian bookworm image from the Debian registry and imports it into Docker as
# `voxcpm-serve-base:bookworm`, for machines that cannot pull public base images (docker.io is
# unreachable but deb.debian.org is). The Dockerfile installs Python, FFmpeg and curl on top of it:
#   docker/local-base.sh && make image BASE_IMAGE=voxcpm-serve-base:bookworm
# Needs root, debootstrap and a running Docker daemon.
set -euo pipefail
TAG=${1:-voxcpm-serve-base:bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
if docker image inspect "$TAG" >/dev/null 2>&1; then
  echo "$TAG exists; docker rmi it to rebuild"
  exit 0
fi
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase bookworm "$root" "$MIRROR"
# The security and update suites, as Debian's own images list them.
cat >"$root/etc/apt/sources.list" <<SOURCES
deb $MIRROR bookworm main
deb $MIRROR bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
SOURCES
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar -C "$root" -c . | docker import --change 'CMD ["bash"]' --change 'ENV LANG=C.UTF-8' - "$TAG"
docker image ls "$TAG"
