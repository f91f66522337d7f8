#!/bin/bash
# registry.sh start|stop - the bed's image registry: Debian's docker-registry (distribution 2.8) on the bridge
# address $REGISTRY, with TLS and htpasswd basic auth, so that it looks like a real private registry to the
# hosts' dockerds (which refuse plain HTTP off loopback) and `docker login` is exercised.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"
dir=$TB/registry
host=${REGISTRY%:*}

# A throwaway CA and a server certificate for the bridge address (made once, kept with the registry data).
make_certs() {
  [ -f "$dir/registry.crt" ] && return 0
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 -subj "/CN=pydeploy test CA" \
    -keyout "$dir/ca.key" -out "$dir/ca.crt" -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$host" \
    -keyout "$dir/registry.key" -out "$dir/registry.csr" 2>/dev/null
  openssl x509 -req -in "$dir/registry.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial \
    -days 825 -out "$dir/registry.crt" 2>/dev/null \
    -extfile <(printf 'subjectAltName=IP:%s\nextendedKeyUsage=serverAuth\n' "$host")
  rm -f "$dir/registry.csr"
}

answers() {
  local code
  code=$(curl -s -o /dev/null -w '%{http_code}' --cacert "$dir/ca.crt" "https://$REGISTRY/v2/") || true
  [ "$code" = 401 ]   # 401 = up, and asking for the password
}

start() {
  mkdir -p "$dir/data"
  make_certs
  # Every dockerd on the machine (the root one and the hosts') reads this at each pull: no restart needed.
  mkdir -p "/etc/docker/certs.d/$REGISTRY"
  cp "$dir/ca.crt" "/etc/docker/certs.d/$REGISTRY/ca.crt"
  if pid_alive "$dir/registry.pid" && answers; then return 0; fi
  stop_pids "$dir/registry.pid"
  htpasswd -Bbn "$REGISTRY_USER" "$REGISTRY_PASSWORD" >"$dir/htpasswd"   # the registry accepts bcrypt only
  cat >"$dir/config.yml" <<EOF
version: 0.1
log: {level: warn, accesslog: {disabled: true}}
storage: {filesystem: {rootdirectory: $dir/data}, delete: {enabled: true}}
http:
  addr: $REGISTRY
  secret: testbed-only
  tls: {certificate: $dir/registry.crt, key: $dir/registry.key}
auth: {htpasswd: {realm: pydeploy-testbed, path: $dir/htpasswd}}
EOF
  # setsid: a Ctrl-C of the test run must not reach it; down.sh stops it.
  setsid docker-registry serve "$dir/config.yml" </dev/null >"$dir/registry.log" 2>&1 &
  pid_record $! "$dir/registry.pid"
  wait_for 10 answers || { tail -20 "$dir/registry.log" >&2; return 1; }
}

case ${1:-} in
start) start ;;
stop) stop_pids "$dir/registry.pid" ;;
*) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
