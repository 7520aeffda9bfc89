#!/usr/bin/env bash
# A stand-in for the Dockerfile's base image (python:3.11-slim-bookworm) on a machine that
# reaches no image registry: Debian bookworm's own Python 3.11 with pip, built by
# debootstrap from Debian's archive and committed by buildah. Like the official image it
# lets pip install system-wide (no EXTERNALLY-MANAGED), and it has `python`, `groupadd`
# and `useradd`; unlike it, it trusts this machine's CA bundle (pip reaches PyPI here
# through the machine's own TLS proxy). Prints the image's name; built once, then reused.
set -euo pipefail
image="localhost/public-status-base:python3.11-bookworm"
if buildah inspect --type image "$image" >/dev/null 2>&1; then
    echo "$image"
    exit 0
fi
rootfs=$(mktemp -d)
trap 'rm -rf "$rootfs"' EXIT
debootstrap --variant=minbase --include=python3,python3-pip,python-is-python3 \
    bookworm "$rootfs" http://deb.debian.org/debian >/dev/null
rm -f "$rootfs"/usr/lib/python3.*/EXTERNALLY-MANAGED
cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
container=$(buildah from scratch)
buildah add --quiet "$container" "$rootfs" / >/dev/null
buildah config --env PIP_CERT=/etc/ssl/certs/ca-certificates.crt --cmd python3 \
    --label public-status.stand-in=1 "$container"
buildah commit --quiet --rm "$container" "$image" >/dev/null
echo "$image"
