"""`pyproxy`: the server (`run`) and its admin clients (`deploy`, `remove`, `list`).

Flags, defaults and parsing follow kamal-proxy, so a tool that drives
kamal-proxy (Kamal) can drive pyproxy the same way.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from typing import Any

from proxy import admin_client
from proxy.flags import FlagParser

COMMANDS = {
    "run": "Run the proxy server",
    "deploy": "Deploy a target for a service, with zero downtime",
    "remove": "Remove a service (alias: rm)",
    "list": "List the services (alias: ls)",
}
ALIASES = {"rm": "remove", "ls": "list"}


def _usage() -> str:
    lines = ["Usage: pyproxy <command> [flags]", "", "Commands:"]
    lines += [f"  {name:<8} {text}" for name, text in COMMANDS.items()]
    lines += ["", "Run `pyproxy <command> --help` for its flags."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    command = ALIASES.get(args[0], args[0])
    if command not in COMMANDS:
        print(f"pyproxy: unknown command: {args[0]} (try --help)", file=sys.stderr)
        return 2
    handler = {"run": _run, "deploy": _deploy, "remove": _remove, "list": _list}[command]
    return handler(args[1:])


def _run(argv: list[str]) -> int:
    from proxy.app import RunSettings, run
    from proxy.http.server import HttpLimits

    parser = FlagParser(prog="pyproxy run", description=COMMANDS["run"])
    parser.add_int("--http-port", default=80, env="HTTP_PORT", help="Port for HTTP traffic")
    parser.add_int(
        "--https-port",
        default=443,
        env="HTTPS_PORT",
        help="Port for HTTPS traffic (reserved: TLS is not implemented yet)",
    )
    parser.add_int(
        "--metrics-port",
        default=0,
        env="METRICS_PORT",
        help="Port for Prometheus metrics at /metrics (0 = disabled)",
    )
    parser.add_str("--bind", default="", env="BIND", help="Address to listen on (default: all addresses)")
    parser.add_bool("--debug", env="DEBUG", help="Include debug logs")
    parser.add_duration(
        "--header-timeout",
        default=30.0,
        env="HEADER_TIMEOUT",
        help="Time a client has to send its request headers before getting 408",
    )
    parser.add_duration(
        "--idle-timeout",
        default=60.0,
        env="IDLE_TIMEOUT",
        help="Time an idle keep-alive client connection is kept open",
    )
    ns = parser.parse_args(argv)
    if ns.header_timeout <= 0 or ns.idle_timeout <= 0:
        parser.error("--header-timeout and --idle-timeout must be positive")
    settings = RunSettings(
        http_port=ns.http_port,
        https_port=ns.https_port,
        metrics_port=ns.metrics_port,
        bind=ns.bind,
        debug=ns.debug,
        limits=HttpLimits(header_timeout=ns.header_timeout, idle_timeout=ns.idle_timeout),
    )
    return run(settings)


def _deploy_parser() -> FlagParser:
    parser = FlagParser(prog="pyproxy deploy", description=COMMANDS["deploy"])
    parser.add_argument("service", help="Service name")
    parser.add_list("--target", required=True, help="Target host:port (repeat or comma-separate for several)")
    parser.add_list("--host", help="Host(s) to serve this service on (default: any host)")
    parser.add_list("--path-prefix", help="Path prefix(es) to serve this service on (default: /)")
    parser.add_bool("--strip-path-prefix", default=True, help="Remove the path prefix before forwarding")
    parser.add_duration(
        "--deploy-timeout", default=30.0, help="Maximum time to wait for the new target to become healthy"
    )
    parser.add_duration(
        "--drain-timeout",
        default=30.0,
        help="Maximum time to let in-flight requests finish on the old target",
    )
    parser.add_str("--health-check-path", default="/up", help="Path requested by the health check")
    parser.add_duration("--health-check-interval", default=1.0, help="Time between health checks")
    parser.add_duration("--health-check-timeout", default=5.0, help="Time each health check may take")
    parser.add_int(
        "--health-check-port", default=0, help="Port for health checks (default: the target's port)"
    )
    parser.add_str("--health-check-host", default="", help="Host header for health checks")
    parser.add_duration(
        "--target-timeout", default=30.0, help="Maximum time to wait for the target's response headers"
    )
    parser.add_bool(
        "--forward-headers", default=True, help="Trust and extend X-Forwarded-* headers from the client"
    )
    parser.add_bool("--force", help="Switch without waiting for the target to become healthy")
    return parser


def _deploy(argv: list[str]) -> int:
    parser = _deploy_parser()
    ns = parser.parse_args(argv)
    if ns.health_check_interval <= 0 or ns.health_check_timeout <= 0:
        parser.error("--health-check-interval and --health-check-timeout must be positive")
    if not 0 <= ns.health_check_port < 65536:
        parser.error(f"invalid port {ns.health_check_port} for --health-check-port")
    payload = {
        "service": ns.service,
        "targets": ns.target,
        "hosts": ns.host,
        "path_prefixes": ns.path_prefix,
        "strip_path_prefix": ns.strip_path_prefix,
        "deploy_timeout": ns.deploy_timeout,
        "drain_timeout": ns.drain_timeout,
        "health_check": {
            "path": ns.health_check_path,
            "interval": ns.health_check_interval,
            "timeout": ns.health_check_timeout,
            "port": ns.health_check_port,
            "host": ns.health_check_host,
        },
        "target_timeout": ns.target_timeout,
        "forward_headers": ns.forward_headers,
        "force": ns.force,
    }
    return _call(admin_client.deploy(payload, _print_progress))


def _print_progress(event: dict[str, Any]) -> None:
    kind = event.get("event")
    if kind == "waiting":
        text = f"Waiting for {', '.join(event['targets'])} to become healthy (timeout {event['timeout']})"
    elif kind == "healthy":
        text = "Healthy"
    elif kind == "switched":
        text = "Switched traffic to the new target"
    elif kind == "draining":
        requests, timeout = event["requests"], event["timeout"]
        text = f"Draining {requests} in-flight request(s) from the old target (timeout {timeout})"
    elif kind == "drained":
        cut = event.get("cut", 0)
        text = f"Drained; {cut} request(s) cut at the drain timeout" if cut else "Drained"
    elif kind == "done":
        text = "Deployed"
    else:
        return
    print(text, flush=True)


def _remove(argv: list[str]) -> int:
    parser = FlagParser(prog="pyproxy remove", description=COMMANDS["remove"])
    parser.add_argument("service", help="Service name")
    ns = parser.parse_args(argv)
    return _call(admin_client.remove(ns.service))


def _list(argv: list[str]) -> int:
    parser = FlagParser(prog="pyproxy list", description=COMMANDS["list"])
    parser.parse_args(argv)
    services: list[dict[str, Any]] = []

    async def fetch() -> None:
        services.extend(await admin_client.list_services())

    status = _call(fetch())
    if status == 0:
        print(format_table(services))
    return status


def format_table(services: list[dict[str, Any]]) -> str:
    """kamal-proxy's `list` columns, padded with two spaces."""
    rows = [["Service", "Host", "Path", "Target", "State", "TLS"]]
    for s in services:
        targets = ", ".join(f"{t['address']} ({t['state']})" for t in s["targets"])
        rows.append(
            [s["service"], ",".join(s["hosts"]) or "*", ",".join(s["paths"]), targets, "running", "no"]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows
    )


def _call(coroutine: Any) -> int:
    try:
        asyncio.run(coroutine)
    except admin_client.AdminError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    return 0
