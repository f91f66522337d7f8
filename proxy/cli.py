"""`pyproxy`: the server (`run`) and its admin clients (`deploy`, `remove`, `list`, ...).

Flags, defaults and parsing follow kamal-proxy, so a tool that drives
kamal-proxy (Kamal) can drive pyproxy the same way. Only `run` imports the
server; the admin commands load the standard library and small modules, so
they start in milliseconds.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from proxy import admin_client
from proxy.cpus import usable_cpus
from proxy.flags import FlagParser, parse_int
from proxy.letsencrypt import LETS_ENCRYPT_STAGING
from proxy.paths import data_dir, program_name

COMMANDS = {
    "run": "Run the proxy server",
    "deploy": "Deploy a target for a service, with zero downtime",
    "remove": "Remove a service (alias: rm)",
    "list": "List the services (alias: ls)",
    "pause": "Pause a service: hold its requests until it is resumed",
    "stop": "Stop a service: answer its requests with a 503 page (maintenance)",
    "resume": "Resume a paused or stopped service",
    "rollout": "Send some requests of a service to other targets (canary): rollout deploy|set|stop",
}
ALIASES = {"rm": "remove", "ls": "list"}


def _usage() -> str:
    lines = [f"Usage: {program_name()} <command> [flags]", "", "Commands:"]
    lines += [f"  {name:<8} {text}" for name, text in COMMANDS.items()]
    lines += ["", f"Run `{program_name()} <command> --help` for its flags."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    command = ALIASES.get(args[0], args[0])
    if command not in COMMANDS:
        print(f"{program_name()}: unknown command: {args[0]} (try --help)", file=sys.stderr)
        return 2
    handlers = {
        "deploy": _deploy,
        "remove": _remove,
        "list": _list,
        "pause": _pause,
        "stop": _stop,
        "resume": _resume,
        "rollout": _rollout,
    }
    if command == "run":
        return _run(args[1:])
    try:
        return handlers[command](args[1:])
    except KeyboardInterrupt:  # Ctrl-C while a deploy waits: the server goes on; no traceback here
        print(file=sys.stderr)
        return 130


def _parser(command: str, description: str | None = None) -> FlagParser:
    return FlagParser(prog=f"{program_name()} {command}", description=description or COMMANDS[command])


def _run(argv: list[str]) -> int:
    parser = _parser("run")
    parser.add_int("--http-port", default=80, env="HTTP_PORT", help="Port for HTTP traffic")
    parser.add_int(
        "--https-port",
        default=443,
        env="HTTPS_PORT",
        help="Port for HTTPS traffic",
    )
    parser.add_int(
        "--metrics-port",
        default=0,
        env="METRICS_PORT",
        help="Port for Prometheus metrics at /metrics (0 = disabled)",
    )
    parser.add_str("--bind", default="", env="BIND", help="Address to listen on (default: all addresses)")
    parser.add_bool("--debug", env="DEBUG", help="Include debug logs")
    parser.add_bool(
        "--h2c", env="H2C", help="Also accept cleartext HTTP/2 (prior knowledge) on the HTTP port"
    )
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
    parser.add_str(
        "--workers",
        env="WORKERS",
        help="Processes serving traffic (default: the CPUs this process may use)",
    )
    ns = parser.parse_args(argv)
    if ns.header_timeout <= 0 or ns.idle_timeout <= 0:
        parser.error("--header-timeout and --idle-timeout must be positive")
    workers = _workers(parser, ns.workers)
    from proxy.app import RunSettings, run  # here: the admin commands never load the server
    from proxy.http.server import HttpLimits

    settings = RunSettings(
        http_port=ns.http_port,
        https_port=ns.https_port,
        metrics_port=ns.metrics_port,
        bind=ns.bind,
        debug=ns.debug,
        h2c=ns.h2c,
        workers=workers,
        limits=HttpLimits(header_timeout=ns.header_timeout, idle_timeout=ns.idle_timeout),
    )
    return run(settings)


def _workers(parser: FlagParser, given: str) -> int:
    """`--workers` (or WORKERS): a positive number; unset or empty, the CPUs this process may use."""
    if not given:
        return usable_cpus()
    try:
        count = parse_int(given)
    except ValueError:
        parser.error(f'invalid number of workers "{given}" for --workers: expected a positive integer')
    if count < 1:
        parser.error(f"--workers must be at least 1, got {count}")
    return count


def _deploy_parser() -> FlagParser:
    parser = _parser("deploy")
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
        "--forward-headers",
        # The real default depends on --tls (see _deploy); only an explicit value is used.
        help="Trust and extend X-Forwarded-* headers from the client (default true, or false with --tls)",
    )
    parser.add_bool("--force", help="Switch without waiting for the target to become healthy")
    parser.add_bool("--tls", help="Serve this service over HTTPS (needs --host)")
    parser.add_str("--tls-certificate-path", help="PEM certificate (chain) to serve instead of an ACME one")
    parser.add_str("--tls-private-key-path", help="PEM private key for --tls-certificate-path")
    parser.add_bool("--tls-redirect", default=True, help="Redirect HTTP requests to HTTPS when TLS is on")
    parser.add_bool("--tls-staging", help="Use Let's Encrypt's staging CA")
    parser.add_str("--tls-acme-directory", help="ACME directory URL of another CA (default: Let's Encrypt)")
    parser.add_str(
        "--tls-acme-cache-path",
        default=str(data_dir() / "certs"),
        help="Where ACME certificates and the account key are kept",
    )
    parser.add_str("--tls-acme-eab-kid", help="External Account Binding key id (CAs that need one)")
    parser.add_str("--tls-acme-eab-hmac-key", help="External Account Binding HMAC key (base64url)")
    parser.add_str(
        "--tls-on-demand-url",
        help="Issue certificates for any host this URL (or a path of the service) answers 200 for",
    )
    parser.add_str("--canonical-host", help="Redirect every other host of this service to this one")
    parser.add_list("--read-target", help="Read-only target(s): GET and HEAD requests go there")
    parser.add_bool("--read-target-websockets", help="Let read-only targets take WebSocket connections")
    parser.add_duration(
        "--writer-affinity-timeout",
        default=1.0,
        help="After a write, how long the client's reads still go to the writers (0 = never)",
    )
    parser.add_bool("--buffer-requests", help="Read each request body whole before sending it to the target")
    parser.add_bool("--buffer-responses", help="Read each response whole before sending it to the client")
    parser.add_int(
        "--buffer-memory",
        default=1024 * 1024,
        help="Bytes of a buffered body kept in memory; the rest on disk",
    )
    parser.add_int(
        "--max-request-body", help="Largest request body in bytes, 413 above (needs --buffer-requests)"
    )
    parser.add_int(
        "--max-response-body", help="Largest response body in bytes, 500 above (needs --buffer-responses)"
    )
    parser.add_str(
        "--error-pages", help="Directory of <status>.html error pages (Go templates) for this service"
    )
    parser.add_list("--log-request-header", help="Request header(s) to add to the access log as req_<name>")
    parser.add_list(
        "--log-response-header", help="Response header(s) to add to the access log as resp_<name>"
    )
    parser.add_list("--exclude-metrics-path", help="Path(s) (after prefix stripping) not counted in metrics")
    parser.add_str("--client-ip-header", help="Header that carries the real client IP (from a trusted proxy)")
    parser.add_bool("--scope-cookie-paths", help="Move Set-Cookie paths under the stripped path prefix")
    return parser


def _deploy(argv: list[str]) -> int:
    parser = _deploy_parser()
    ns = parser.parse_args(argv)
    if ns.health_check_interval <= 0 or ns.health_check_timeout <= 0:
        parser.error("--health-check-interval and --health-check-timeout must be positive")
    if not 0 <= ns.health_check_port < 65536:
        parser.error(f"invalid port {ns.health_check_port} for --health-check-port")
    if bool(ns.tls_certificate_path) != bool(ns.tls_private_key_path):
        parser.error("--tls-certificate-path and --tls-private-key-path must be given together")
    explicit = parser.explicit(ns)
    # As kamal-proxy: the check is whether the flag was given, not its value (Kamal sends
    # --buffer-requests="false" --max-request-body=N, which kamal-proxy accepts).
    if "max_request_body" in explicit and "buffer_requests" not in explicit:
        parser.error("max-request-body can only be set when request buffering is enabled")
    if "max_response_body" in explicit and "buffer_responses" not in explicit:
        parser.error("max-response-body can only be set when response buffering is enabled")
    if min(ns.buffer_memory, ns.max_request_body, ns.max_response_body) < 0:
        parser.error("--buffer-memory, --max-request-body and --max-response-body must not be negative")
    # As kamal-proxy: when pyproxy terminates TLS it is the edge, and must not trust client headers.
    forward_headers = ns.forward_headers if "forward_headers" in explicit else not ns.tls
    acme_directory = ns.tls_acme_directory or (LETS_ENCRYPT_STAGING if ns.tls_staging else "")
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
        "forward_headers": forward_headers,
        "force": ns.force,
        "tls": {
            "enabled": ns.tls,
            "certificate_path": _absolute(ns.tls_certificate_path),
            "private_key_path": _absolute(ns.tls_private_key_path),
            "redirect": ns.tls_redirect,
            "acme_directory": acme_directory,
            "acme_cache_path": ns.tls_acme_cache_path,
            "acme_eab_kid": ns.tls_acme_eab_kid,
            "acme_eab_hmac_key": ns.tls_acme_eab_hmac_key,
            "on_demand_url": ns.tls_on_demand_url,
        },
        "canonical_host": ns.canonical_host,
        "read_targets": ns.read_target,
        "read_targets_accept_websockets": ns.read_target_websockets,
        "writer_affinity_timeout": ns.writer_affinity_timeout,
        "buffering": {
            "requests": ns.buffer_requests,
            "responses": ns.buffer_responses,
            "memory": ns.buffer_memory,
            "max_request_body": ns.max_request_body,
            "max_response_body": ns.max_response_body,
        },
        "error_pages": _absolute(ns.error_pages),
        "log_request_headers": ns.log_request_header,
        "log_response_headers": ns.log_response_header,
        "exclude_metrics_paths": ns.exclude_metrics_path,
        "client_ip_header": ns.client_ip_header,
        "scope_cookie_paths": ns.scope_cookie_paths,
    }
    return _call(admin_client.deploy, payload, _print_progress)


def _absolute(path: str) -> str:
    """The server may run in another directory: send it absolute paths."""
    return os.path.abspath(path) if path else ""


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
        unconfirmed = event.get("unconfirmed")
        if unconfirmed:
            text += f"; {', '.join(unconfirmed)} did not confirm (replaced)"
    elif kind == "certificate":
        text = f"Certificate for {event['host']}: {event['state']}"
    elif kind == "done":
        text = "Deployed"
    else:
        return
    print(text, flush=True)


def _service_parser(command: str, description: str | None = None) -> FlagParser:
    parser = _parser(command, description)
    parser.add_argument("service", help="Service name")
    return parser


def _remove(argv: list[str]) -> int:
    ns = _service_parser("remove").parse_args(argv)
    return _call(admin_client.change, "/remove", ns.service)


def _add_drain_timeout(parser: FlagParser) -> None:
    parser.add_duration(
        "--drain-timeout",
        default=30.0,
        help="Maximum time to let in-flight requests finish before cutting them",
    )


def _pause(argv: list[str]) -> int:
    parser = _service_parser("pause")
    _add_drain_timeout(parser)
    parser.add_duration("--max-pause", default=30.0, help="How long a request is held before it gets 504")
    ns = parser.parse_args(argv)
    return _call(
        admin_client.change, "/pause", ns.service, drain_timeout=ns.drain_timeout, max_pause=ns.max_pause
    )


def _stop(argv: list[str]) -> int:
    parser = _service_parser("stop")
    _add_drain_timeout(parser)
    parser.add_str("--message", help="Text for the 503 page (the error page's {{ .Message }})")
    ns = parser.parse_args(argv)
    return _call(admin_client.change, "/stop", ns.service, drain_timeout=ns.drain_timeout, message=ns.message)


def _resume(argv: list[str]) -> int:
    ns = _service_parser("resume").parse_args(argv)
    return _call(admin_client.change, "/resume", ns.service)


ROLLOUT_COMMANDS = {
    "deploy": "Deploy targets to the service's rollout slot, health-checked like a deploy",
    "set": "Choose the requests the rollout targets get (--percent of kamal-rollout cookies, or --list)",
    "stop": "Send every request to the active targets again",
}


def _rollout(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        lines = [f"Usage: {program_name()} rollout <deploy|set|stop> <service> [flags]", ""]
        lines += [f"  {name:<7} {text}" for name, text in ROLLOUT_COMMANDS.items()]
        print("\n".join(lines))
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in ROLLOUT_COMMANDS:
        print(f"{program_name()} rollout: unknown command: {command} (try --help)", file=sys.stderr)
        return 2
    parser = _service_parser(f"rollout {command}", ROLLOUT_COMMANDS[command])
    if command == "deploy":
        parser.add_list("--target", required=True, help="Rollout target host:port (repeat for several)")
        parser.add_list("--read-target", help="Read-only rollout target(s)")
        parser.add_duration(
            "--deploy-timeout", default=30.0, help="Maximum time for the targets to be healthy"
        )
        _add_drain_timeout(parser)
        ns = parser.parse_args(rest)
        payload = {
            "service": ns.service,
            "targets": ns.target,
            "read_targets": ns.read_target,
            "deploy_timeout": ns.deploy_timeout,
            "drain_timeout": ns.drain_timeout,
        }
        return _call(admin_client.deploy, payload, _print_progress, path="/rollout/deploy")
    if command == "set":
        parser.add_int("--percent", help="Share (0-100) of kamal-rollout cookie values sent to the rollout")
        parser.add_list("--list", help="kamal-rollout cookie values always sent to the rollout")
        ns = parser.parse_args(rest)
        if not {"percent", "list"} & parser.explicit(ns):
            parser.error("at least one of the flags in the group [percent list] is required")
        if not 0 <= ns.percent <= 100:
            parser.error(f"invalid percent {ns.percent}: must be between 0 and 100")
        return _call(
            admin_client.change, "/rollout/set", ns.service, percentage=ns.percent, allowlist=ns.list
        )
    ns = parser.parse_args(rest)
    return _call(admin_client.change, "/rollout/stop", ns.service)


def _list(argv: list[str]) -> int:
    parser = _parser("list")
    parser.parse_args(argv)
    return _call(lambda: print(format_table(admin_client.list_services())))


def format_table(services: list[dict[str, Any]]) -> str:
    """kamal-proxy's `list` columns, padded with two spaces, then each TLS host's certificate."""
    rows = [["Service", "Host", "Path", "Target", "State", "TLS"]]
    for s in services:
        targets = ", ".join(f"{t['address']} ({t['state']})" for t in s["targets"])
        tls = "yes" if s["tls"] else "no"
        state = f"{s['state']} ({s['held']} held)" if s.get("held") else s["state"]
        rows.append([s["service"], ",".join(s["hosts"]) or "*", ",".join(s["paths"]), targets, state, tls])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    table = "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows
    )
    certificates = [c for s in services for c in s.get("certificates", [])]
    if not certificates:
        return table
    lines = [f"  {c['host']}  {c['issuer']}  expires {c['expires']}" for c in certificates]
    return "\n".join([table, "", "Certificates:", *lines])


def _call(request: Callable[..., object], *args: Any, **kwargs: Any) -> int:
    """Run one admin request: exit 0, or 1 with the reason on stderr."""
    try:
        request(*args, **kwargs)
    except admin_client.AdminError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    return 0
