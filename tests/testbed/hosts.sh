#!/bin/bash
# hosts.sh net|up|reset|fresh-images|down|unnet - the simulated hosts h1..hN.
#
# Each host is a network namespace (eth0 = NET.1i on bridge $BRIDGE, whose root side NET.1 serves the registry)
# plus its own mount and UTS namespaces, where /run, /root, /var/lib/docker, /etc/hosts and /etc/resolv.conf
# are its own and the hostname is h<i>. Inside run a plain dockerd (default /run/docker.sock, so commands over
# SSH need no DOCKER_HOST) and an sshd on <ip>:22 that takes the bed's client key for root.
# From the root namespace a host's daemon is also at unix://$TB/hosts/h<i>/docker.sock.
#   net    create the bridge (the registry binds to its address, so this comes first)
#   up     start the hosts that are not running, then reset them all (unless PYDEPLOY_TESTBED_KEEP_STATE=1)
#   reset  like a fresh machine: no containers, networks, volumes, nothing in /root; pulled images stay
#   fresh-images  drop the hosts' pulled copies of the bed's images that the last build replaced (a host's
#          `docker run` uses the copy it has: without this it would go on running an old pyproxy)
#   down   stop the hosts by PID and delete their namespaces;  unnet  delete the bridge and firewall rule
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"
base=$TB/hosts

net() {
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link add "$BRIDGE" type bridge
    ip addr add "$NET.1/24" dev "$BRIDGE"
    ip link set "$BRIDGE" up
  fi
  # dockerd sets FORWARD's policy to DROP and br_netfilter passes bridged frames through it: let h<i> <-> h<j> pass.
  iptables -C FORWARD -i "$BRIDGE" -o "$BRIDGE" -j ACCEPT 2>/dev/null ||
    iptables -I FORWARD 1 -i "$BRIDGE" -o "$BRIDGE" -j ACCEPT
}

unnet() {
  iptables -D FORWARD -i "$BRIDGE" -o "$BRIDGE" -j ACCEPT 2>/dev/null || true
  ip link del "$BRIDGE" 2>/dev/null || true
}

# sshd_setup DIR IP: a host key (kept across runs, so known_hosts stays valid) and a config.
sshd_setup() {
  local d=$1 ip=$2
  mkdir -p "$d"
  [ -f "$d/host_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C "testbed-$ip" -f "$d/host_ed25519"
  cp "$base/id_ed25519.pub" "$d/authorized_keys"
  cat >"$d/sshd_config" <<EOF
ListenAddress $ip:22
HostKey $d/host_ed25519
PidFile none
AuthorizedKeysFile $d/authorized_keys
# The keys live under /tmp (mode 1777), which StrictModes would refuse.
StrictModes no
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
# Without PAM root logs in by key (its password field is '*', not a locking '!').
UsePAM no
PrintMotd no
# A deployer opens many sessions and channels at once.
MaxStartups 100:30:200
MaxSessions 50
Subsystem sftp /usr/lib/openssh/sftp-server
EOF
  /usr/sbin/sshd -t -f "$d/sshd_config"
}

start_host() {
  local i=$1 ns=$NS_PREFIX$1 ip=$NET.1$1 h=$base/h$1
  mkdir -p "$h/root" "$h/var-lib-docker" "$h/etc" /run/sshd
  chmod 700 "$h/root"
  if [ ! -e "/run/netns/$ns" ]; then
    ip link del "veth-$ns" 2>/dev/null || true   # a namespace deleted a moment ago can leave its veth behind
    ip netns add "$ns"
    ip link add "veth-$ns" type veth peer name eth0 netns "$ns"
    ip link set "veth-$ns" master "$BRIDGE" up
    ip -n "$ns" addr add "$ip/24" dev eth0
    ip -n "$ns" link set lo up
    ip -n "$ns" link set eth0 up
    ip -n "$ns" route add default via "$NET.1"
  fi
  printf '127.0.0.1\tlocalhost\n::1\tlocalhost\n%s\th%s\n' "$ip" "$i" >"$h/etc/hosts"
  # Nothing answers DNS on the bridge: lookups fail at once instead of hanging on the machine's resolver,
  # which is out of reach from the namespace.
  printf 'nameserver %s.1\noptions timeout:1 attempts:1\n' "$NET" >"$h/etc/resolv.conf"
  sshd_setup "$h/ssh" "$ip"
  rm -f "$h/docker.sock"
  cat >"$h/init.sh" <<EOF
set -e
. $HERE/lib.sh
mount --make-rshared /                  # a peer group of its own (unshare made everything private)
mount -t tmpfs -o mode=755 tmpfs /run   # own /run: docker.sock, containerd, sshd's privsep dir
mkdir -p /run/sshd
mount --bind $h/root /root
mount --bind $h/var-lib-docker /var/lib/docker
mount --bind $h/etc/hosts /etc/hosts
mount --bind $h/etc/resolv.conf /etc/resolv.conf
hostname h$i
dockerd -H unix:///run/docker.sock -H unix://$h/docker.sock >$h/dockerd.log 2>&1 &
pid_record \$! $h/dockerd.pid
/usr/sbin/sshd -D -e -f $h/ssh/sshd_config >$h/sshd.log 2>&1 &
pid_record \$! $h/sshd.pid
wait   # returns when both are stopped; the mount namespace goes with this shell
EOF
  # nsenter --net, not `ip netns exec`: the latter remounts /sys and hides the cgroup mounts dockerd needs.
  # setsid: a Ctrl-C of the test run must not reach the daemons; down.sh stops them.
  setsid nsenter --net="/run/netns/$ns" unshare --mount --uts --propagation private bash "$h/init.sh" \
    </dev/null >"$h/init.log" 2>&1 &
  pid_record $! "$h/init.pid"
}

host_ready() {
  docker -H "unix://$base/h$1/docker.sock" version && tcp_open "$NET.1$1" 22
}

up() {
  mkdir -p "$base"
  chmod 700 "$base"
  [ -f "$base/id_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C pydeploy-testbed -f "$base/id_ed25519"
  net
  local i
  for ((i = 1; i <= NHOSTS; i++)); do
    pid_alive "$base/h$i/init.pid" || start_host "$i"
  done
  : >"$base/known_hosts"
  for ((i = 1; i <= NHOSTS; i++)); do
    if ! wait_for 30 host_ready "$i"; then
      log "host h$i did not come up"
      tail -n 20 "$base/h$i/init.log" "$base/h$i/dockerd.log" "$base/h$i/sshd.log" >&2 || true
      return 1
    fi
    printf '%s %s\n' "$NET.1$i" "$(cut -d' ' -f1,2 "$base/h$i/ssh/host_ed25519.pub")" >>"$base/known_hosts"
  done
  [ "${PYDEPLOY_TESTBED_KEEP_STATE:-0}" = 1 ] || reset
}

reset() {
  local i d ids
  for ((i = 1; i <= NHOSTS; i++)); do
    d=(docker -H "unix://$base/h$i/docker.sock")
    # A --restart unless-stopped proxy from an earlier run would hold :80/:443 again after a daemon restart.
    ids=$("${d[@]}" ps -aq)
    if [ -n "$ids" ]; then
      # shellcheck disable=SC2086  # one argument per container id
      "${d[@]}" rm -f $ids >/dev/null
    fi
    "${d[@]}" network prune -f >/dev/null
    "${d[@]}" volume prune -f >/dev/null
    find "$base/h$i/root" -mindepth 1 -delete   # ~/.docker (the registry login), the deployer's files
  done
}

fresh_images() {
  local i image built pulled
  for image in "$APP_IMAGE:v1" "$APP_IMAGE:v2" "$APP_IMAGE:v3" "$PROXY_IMAGE" "$KAMAL_PROXY_IMAGE"; do
    built=$(docker image inspect -f '{{.Id}}' "$image")
    for ((i = 1; i <= NHOSTS; i++)); do
      pulled=$(docker -H "unix://$base/h$i/docker.sock" image inspect -f '{{.Id}}' "$image" 2>/dev/null) || continue
      [ "$pulled" = "$built" ] || docker -H "unix://$base/h$i/docker.sock" rmi -f "$image" >/dev/null
    done
  done
}

init_gone() { ! pid_alive "$1"; }

down() {
  local h ids ns files=()
  # Every host ever started under $base, whatever NHOSTS says now.
  for h in "$base"/h*/; do
    h=${h%/}
    [ -f "$h/init.pid" ] || continue
    # Containers first (SIGKILL, at once): a stopping dockerd would give each its full stop timeout.
    if pid_alive "$h/dockerd.pid"; then
      ids=$(docker -H "unix://$h/docker.sock" ps -aq 2>/dev/null) || true
      if [ -n "$ids" ]; then
        # shellcheck disable=SC2086  # one argument per container id
        docker -H "unix://$h/docker.sock" rm -f $ids >/dev/null 2>&1 || true
      fi
    fi
    files+=("$h/sshd.pid" "$h/dockerd.pid")
  done
  stop_pids "${files[@]}"   # all hosts in parallel
  for h in "$base"/h*/; do
    h=${h%/}
    wait_for 5 init_gone "$h/init.pid" || true   # init.sh returns once its two daemons are gone
    stop_pids "$h/init.pid"
  done
  for ns in /run/netns/"$NS_PREFIX"*; do
    [ -e "$ns" ] && ip netns del "${ns##*/}"   # takes the veth pair with it
  done
  return 0
}

case ${1:-} in
net | up | reset | down | unnet) "$1" ;;
fresh-images) fresh_images ;;
*) echo "usage: $0 net|up|reset|fresh-images|down|unnet" >&2; exit 2 ;;
esac
