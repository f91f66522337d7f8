#!/bin/bash
# down.sh - stop everything up.sh started, by the PIDs it recorded, and delete the namespaces, the bridge and
# the firewall rule. Images, registry data and keys stay (under $TB and in /var/lib/docker) for the next run;
# a dockerd that up.sh did not start is left running.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"
start=$EPOCHREALTIME
rm -f "$TB/env"
"$HERE/hosts.sh" down
"$HERE/registry.sh" stop
"$HERE/hosts.sh" unnet
rm -rf "/etc/docker/certs.d/$REGISTRY"
stop_pids "$TB/dockerd.pid"
log "down in $(since "$start") s"
