#!/usr/bin/env bash
# Build the base image the Dockerfiles name (python:3.11-slim-bookworm) from Debian itself, for
# machines that reach Debian's package archive but no image registry. Debian bookworm's python3.11
# is the same Python minor release that the official python:3.11-slim-bookworm image carries; its
# `python` is put on /usr/local/bin as there, so the Dockerfiles work unchanged on either base.
#
# The debootstrap root file system is cached as a tarball under EVENTPOST_BASE_CACHE
# (default /var/tmp/eventpost-base) and reused by later runs: only the first run downloads
# (about 3-5 minutes here), later ones import the tarball (seconds), and when the image is
# already in podman's store nothing is done at all.
#
# usage: containers/base-image.sh [--force]      (root; needs debootstrap and podman)
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$HERE/podman/containers.conf}"
CACHE="${EVENTPOST_BASE_CACHE:-/var/tmp/eventpost-base}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SUITE=bookworm
TAG="${EVENTPOST_BASE_IMAGE:-docker.io/library/python:3.11-slim-bookworm}"
# What python:3.11-slim carries besides Python: CA certificates, netbase, tzdata.
PACKAGES=python3,python3-venv,ca-certificates,netbase,tzdata

if [[ "${1:-}" == "--force" ]]; then
    rm -rf "$CACHE"
    podman rmi -f "$TAG" >/dev/null 2>&1 || true
fi
if podman image exists "$TAG"; then
    echo "base image $TAG is already there"
    exit 0
fi

mkdir -p "$CACHE"
TARBALL="$CACHE/rootfs-$SUITE.tar"
if [[ ! -s "$TARBALL" ]]; then
    ROOTFS="$CACHE/rootfs"
    rm -rf "$ROOTFS"
    echo "debootstrap $SUITE (minbase + $PACKAGES) into $ROOTFS ..."
    debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$ROOTFS" "$MIRROR" \
        >"$CACHE/debootstrap.log" 2>&1 || { tail -20 "$CACHE/debootstrap.log"; exit 1; }
    # Slim as the official image is: no package lists, caches, docs or man pages.
    rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin \
        "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/usr/share/doc/* \
        "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/* "$ROOTFS"/var/log/*.log
    ln -sf /usr/bin/python3.11 "$ROOTFS/usr/local/bin/python3"
    ln -sf /usr/bin/python3.11 "$ROOTFS/usr/local/bin/python"
    tar -C "$ROOTFS" --numeric-owner -cf "$TARBALL.tmp" .
    mv "$TARBALL.tmp" "$TARBALL"
    rm -rf "$ROOTFS"
fi

podman import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    "$TARBALL" "$TAG" >/dev/null
echo "base image $TAG imported from $TARBALL"
