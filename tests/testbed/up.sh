#!/bin/bash
# up.sh - bring the test bed up, idempotently: what already runs is kept, what is missing is started.
# Prints a timing per step and writes $TB/env (KEY=VALUE lines) for the tests; down.sh stops it all.
#   packages  the Debian packages below, when one is missing
#   dockerd   the machine's daemon, started only when none answers
#   network   bridge $BRIDGE; registry (TLS + basic auth) on its address; hosts h1..hN (hosts.sh)
#   images    base, test app and pyproxy images, pushed to the registry (images.sh); the hosts forget
#             their copies of images that changed
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"
PACKAGES=(docker.io docker-registry openssh-server openssh-client busybox-static mmdebstrap apache2-utils
  iproute2 iptables curl openssl)

packages() {
  dpkg -s "${PACKAGES[@]}" >/dev/null 2>&1 && return 0
  apt-get update -qq
  # These machines have a policy-rc.d that keeps the packages' own services (sshd on :22...) from starting.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${PACKAGES[@]}" >/dev/null
}

dockerd_up() {
  docker info >/dev/null 2>&1 && return 0
  # No daemon answers, so pid files left by a killed one are stale: dockerd would refuse to start, or wait
  # 20 s for a containerd that is gone.
  rm -f /var/run/docker.pid /var/run/docker/containerd/containerd.pid
  # setsid: a Ctrl-C of the test run must not reach the daemon; down.sh stops it.
  setsid dockerd </dev/null >"$TB/dockerd.log" 2>&1 &
  pid_record $! "$TB/dockerd.pid"
  local deadline=$((SECONDS + 30))
  until docker info >/dev/null 2>&1; do
    if ! pid_alive "$TB/dockerd.pid" || [ "$SECONDS" -ge "$deadline" ]; then
      tail -20 "$TB/dockerd.log" >&2
      return 1
    fi
    sleep 0.1
  done
}

write_env() {
  local i hosts=() sockets=()
  for ((i = 1; i <= NHOSTS; i++)); do
    hosts+=("$NET.1$i")
    sockets+=("unix://$TB/hosts/h$i/docker.sock")
  done
  {
    echo "TESTBED_DIR=$TB"
    echo "TESTBED_HOSTS=$(IFS=,; echo "${hosts[*]}")"
    echo "TESTBED_HOST_DOCKER_SOCKETS=$(IFS=,; echo "${sockets[*]}")"
    echo "TESTBED_SSH_USER=root"
    echo "TESTBED_SSH_KEY=$TB/hosts/id_ed25519"
    echo "TESTBED_SSH_KNOWN_HOSTS=$TB/hosts/known_hosts"
    echo "TESTBED_REGISTRY=$REGISTRY"
    echo "TESTBED_REGISTRY_USER=$REGISTRY_USER"
    echo "TESTBED_REGISTRY_PASSWORD=$REGISTRY_PASSWORD"
    echo "TESTBED_REGISTRY_CA=$TB/registry/ca.crt"
    echo "TESTBED_APP_IMAGE=$APP_IMAGE"
    echo "TESTBED_PROXY_IMAGE=$PROXY_IMAGE"
    echo "TESTBED_KAMAL_PROXY_IMAGE=$KAMAL_PROXY_IMAGE"
    echo "TESTBED_BASE_IMAGE=$BASE_IMAGE"
    echo "TESTBED_DOCKER_CONFIG=$DOCKER_CONFIG"
  } >"$TB/env.new"
  mv "$TB/env.new" "$TB/env"
}

mkdir -p "$TB"
rm -f "$TB/env" # only a complete bring-up leaves an env file
start=$EPOCHREALTIME
step packages packages
step dockerd dockerd_up
step network "$HERE/hosts.sh" net
step registry "$HERE/registry.sh" start
step hosts "$HERE/hosts.sh" up
"$HERE/images.sh"
step fresh-images "$HERE/hosts.sh" fresh-images
write_env
log "up in $(since "$start") s; environment in $TB/env"
