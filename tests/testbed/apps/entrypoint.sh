#!/bin/sh
# Serve /www with busybox httpd. httpd runs as a child, not as PID 1: PID 1 ignores SIGTERM unless it has a
# handler, and `docker stop` would then wait its whole timeout. READY_DELAY=N starts serving N seconds late,
# to exercise a deployer's wait for health.
trap 'kill "$pid" 2>/dev/null; exit 0' TERM INT
if [ -n "$READY_DELAY" ]; then
  sleep "$READY_DELAY" &
  pid=$!
  wait "$pid"
fi
echo "$VERSION" >/www/version
hostname >/www/hostname
httpd -f -p "${PORT:-80}" -h /www &
pid=$!
wait "$pid"
