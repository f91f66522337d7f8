#!/bin/bash
# images.sh - build the bed's images on the root dockerd (Docker Hub is out of reach) and push them to the
# registry:
#   $BASE_IMAGE          Debian 12 minbase + python3 by mmdebstrap, stands in for python:3.12-slim (~30 s, once)
#   $APP_IMAGE:v1 v2 v3  the busybox httpd test app from apps/; v3's /up answers 404   (~1 s)
#   $PROXY_IMAGE         the repository's Dockerfile on $BASE_IMAGE                    (pip install: ~20 s cold)
#   $KAMAL_PROXY_IMAGE   the same image, named and tagged as Kamal wants it (.../kamal-proxy:v<version>)
# Docker's layer cache makes a second run cheap, and the registry keeps the layers it already has.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"

# A real Debian (apt, dpkg, useradd) like python:3.12-slim, so that the Dockerfile is tested as it will run
# there. The machine reaches PyPI through a TLS-intercepting proxy whose CA is in
# /usr/local/share/ca-certificates (it may differ per machine): the base image carries that CA, so the
# project's Dockerfile needs no trick. A label records which CAs, and the image is rebuilt when they change.
base_image() {
  local cas mirror
  cas=$(cat /usr/local/share/ca-certificates/*.crt 2>/dev/null | sha256sum | cut -c1-16)
  if [ "$(docker image inspect -f '{{index .Config.Labels "testbed.ca"}}' "$BASE_IMAGE" 2>/dev/null)" = "$cas" ]
  then return 0; fi
  mirror=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)
  # Like the slim images: no docs, man pages or locales, no recommends; `python` and `pip` on PATH, and pip
  # allowed outside a venv (no PEP 668 marker). mmdebstrap streams a tar: no temporary rootfs on disk.
  # shellcheck disable=SC2016  # the hooks' $1 (the new root) is for mmdebstrap's shell, not this one
  mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
    --aptopt='Acquire::Languages "none"' --aptopt='APT::Install-Recommends "false"' \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
    --customize-hook='cp /usr/local/share/ca-certificates/*.crt "$1/usr/local/share/ca-certificates/" || true' \
    --customize-hook='chroot "$1" update-ca-certificates >/dev/null 2>&1' \
    --customize-hook='rm -f "$1"/usr/lib/python3*/EXTERNALLY-MANAGED' \
    --customize-hook='ln -s /usr/bin/python3 "$1/usr/local/bin/python"; ln -s /usr/bin/pip3 "$1/usr/local/bin/pip"' \
    bookworm - "${mirror:-http://deb.debian.org/debian}" |
    docker import -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8' \
      -c 'CMD ["python3"]' -c "LABEL testbed.ca=$cas" - "$BASE_IMAGE" >/dev/null
}

# FROM scratch needs a static busybox in the build context (busybox-static).
app_images() {
  local ctx
  ctx=$(mktemp -d)
  cp -r "$HERE/apps/." "$ctx/"
  cp /bin/busybox "$ctx/busybox"
  quiet_build --build-arg VERSION=v1 -t "$APP_IMAGE:v1" "$ctx"
  quiet_build --build-arg VERSION=v2 -t "$APP_IMAGE:v2" "$ctx"
  quiet_build --build-arg VERSION=v3 --build-arg HEALTHY=no -t "$APP_IMAGE:v3" "$ctx"
  rm -rf "$ctx"
}

proxy_image() {
  quiet_build --build-arg BASE_IMAGE="$BASE_IMAGE" --build-arg VERSION="$PROXY_VERSION" \
    -t "$PROXY_IMAGE" -t "$KAMAL_PROXY_IMAGE" "$REPO"
}

push() {
  local image out
  # (docker login warns that DOCKER_CONFIG holds the password: it is a throwaway one)
  out=$(printf '%s' "$REGISTRY_PASSWORD" | docker login -u "$REGISTRY_USER" --password-stdin "$REGISTRY" 2>&1) ||
    { printf '%s\n' "$out" >&2; return 1; }
  for image in "$APP_IMAGE:v1" "$APP_IMAGE:v2" "$APP_IMAGE:v3" "$PROXY_IMAGE" "$KAMAL_PROXY_IMAGE"; do
    docker push -q "$image" >/dev/null
  done
}

step base-image base_image
step app-images app_images
step proxy-image proxy_image
step push push
