# shellcheck shell=bash disable=SC2034  # the settings are used by the scripts that source this file
# Sourced by the test-bed scripts: where the bed keeps its state, how its pieces are named, and helpers.
# Everything the bed starts is recorded in a pid file under $TB, so down.sh stops exactly that and nothing else.

TB=${PYDEPLOY_TESTBED_DIR:-/tmp/pydeploy-testbed}   # state: keys, pid files, logs, registry data, hosts' disks
NHOSTS=${PYDEPLOY_TESTBED_HOSTS:-2}                 # simulated hosts h1..hN (at most 9: addresses NET.11-19)
NET=10.200.0                                        # bridge side NET.1 (registry); host i is NET.1i
BRIDGE=pdtb0                                        # our own names, so another bed on the machine is left alone
NS_PREFIX=pdtb-h
REGISTRY=$NET.1:5443
REGISTRY_USER=testbed
REGISTRY_PASSWORD=testbed-not-secret
BASE_IMAGE=pydeploy-python:3.11                     # stand-in for python:3.12-slim (Docker Hub is unreachable)
APP_IMAGE=$REGISTRY/testapp                         # :v1 :v2 healthy, :v3 fails its /up
PROXY_IMAGE=$REGISTRY/pyproxy:test                  # the top-level Dockerfile built on $BASE_IMAGE
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
# The same image as Kamal wants it: tagged v<version> (>= v0.9.2), and named .../kamal-proxy, as the legacy
# `kamal proxy boot_config set --registry R --repository pyproxy` makes it R/pyproxy/kamal-proxy.
PROXY_VERSION=$(python3 -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' \
  "$REPO/pyproject.toml")
KAMAL_PROXY_IMAGE=$REGISTRY/pyproxy/kamal-proxy:v$PROXY_VERSION
# The root namespace's docker login lives here, not in /root/.docker.
export DOCKER_CONFIG=$TB/docker-config
# No buildx on Debian 12: say so, so the CLI uses the legacy builder without trying BuildKit.
export DOCKER_BUILDKIT=0

log() { printf 'testbed: %s\n' "$*" >&2; }

# Pid files hold "PID START_TIME": a file left by a process that was killed (as on a reused machine) may name
# a pid that now belongs to something else, which must be neither trusted nor killed.
start_time() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }   # drop "pid (comm) ": comm may hold spaces
  # shellcheck disable=SC2086  # split the fields
  set -- $stat
  [ "$1" != Z ] || return 1   # a zombie is gone (PID 1 on these machines reaps late)
  echo "${20}"
}
pid_record() { printf '%s %s\n' "$1" "$(start_time "$1")" >"$2"; }
pid_alive() {
  local pid start
  [ -f "$1" ] && read -r pid start <"$1" || return 1
  [ -n "$start" ] && [ "$(start_time "$pid")" = "$start" ]
}

# stop_pids FILE...: TERM every recorded process, wait for all of them together (dockerd takes ~2.5 s),
# KILL what is left after 20 s, remove the pid files.
stop_pids() {
  local f live=() i
  for f in "$@"; do
    if pid_alive "$f"; then
      kill "$(cut -d' ' -f1 "$f")" 2>/dev/null || true
      live+=("$f")
    fi
  done
  for f in "${live[@]}"; do
    for ((i = 0; i < 200; i++)); do pid_alive "$f" || break; sleep 0.1; done
    if pid_alive "$f"; then log "$f: ignored TERM; killing it"; kill -KILL "$(cut -d' ' -f1 "$f")" || true; fi
  done
  rm -f "$@"
}

# wait_for SECONDS CMD...: poll CMD every 0.1 s until it succeeds.
wait_for() {
  local deadline=$((SECONDS + $1))
  shift
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 0.1
  done
}

# tcp_open ADDR PORT: something accepts connections there.
tcp_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

# step NAME CMD...: run CMD and print how long it took (the timings are what keeps the bed fast).
step() {
  local name=$1 start=$EPOCHREALTIME
  shift
  "$@"
  printf 'testbed: %-14s %6.1fs\n' "$name" "$(since "$start")" >&2
}
since() { awk -v a="$EPOCHREALTIME" -v b="$1" 'BEGIN { printf "%.1f", a - b }'; }

# quiet_build ARGS...: docker build, without the legacy builder's deprecation banner; output only on failure.
quiet_build() {
  local out
  if ! out=$(docker build -q "$@" 2>&1); then
    printf '%s\n' "$out" >&2
    return 1
  fi
}
