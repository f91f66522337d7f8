"""The admin API: JSON over HTTP on a Unix socket (mode 0600), served inside `pyproxy run`.

`POST /deploy` streams its progress as JSON lines (one object per step) and
ends with `{"event": "done"}` or `{"error": "..."}`, so a client can show what
a long deploy is waiting for. Anything malformed is refused before anything
changes.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

from aiohttp import web

from proxy.health import HealthCheckConfig
from proxy.manager import DeployError, DeployRequest, ServiceManager, ServiceNotFound
from proxy.service import ServiceOptions, TlsOptions
from proxy.target import parse_target


class BadRequest(ValueError):
    """A request the admin API refuses; its message is shown to the operator."""


def _field(payload: dict[str, Any], name: str, kind: type | tuple[type, ...], default: Any) -> Any:
    value = payload.get(name, default)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is float and value < 0):
        raise BadRequest(f'"{name}" has the wrong type or value: {value!r}')
    return value


def _string_list(payload: dict[str, Any], name: str) -> list[str]:
    value = payload.get(name, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadRequest(f'"{name}" must be a list of strings')
    return value


def _tls_options(tls: dict[str, Any]) -> TlsOptions:
    return TlsOptions(
        enabled=_field(tls, "enabled", bool, False),
        certificate_path=_field(tls, "certificate_path", str, ""),
        private_key_path=_field(tls, "private_key_path", str, ""),
        redirect=_field(tls, "redirect", bool, True),
        acme_directory=_field(tls, "acme_directory", str, ""),
        acme_cache_path=_field(tls, "acme_cache_path", str, ""),
        acme_eab_kid=_field(tls, "acme_eab_kid", str, ""),
        acme_eab_hmac_key=_field(tls, "acme_eab_hmac_key", str, ""),
        on_demand_url=_field(tls, "on_demand_url", str, ""),
    )


def parse_deploy(payload: Any) -> DeployRequest:
    """Validate a deploy request body; BadRequest names the first problem."""
    if not isinstance(payload, dict):
        raise BadRequest("expected a JSON object")
    service = _field(payload, "service", str, "")
    if not service:
        raise BadRequest('"service" is required')
    targets = _string_list(payload, "targets")
    if not targets:
        raise BadRequest('"targets" needs at least one target')
    try:
        for target in targets:
            parse_target(target)
        hc = _field(payload, "health_check", dict, {})
        defaults = HealthCheckConfig()
        health_check = HealthCheckConfig(
            path=_field(hc, "path", str, defaults.path),
            interval=_field(hc, "interval", float, defaults.interval),
            timeout=_field(hc, "timeout", float, defaults.timeout),
            port=_field(hc, "port", int, 0),
            host=_field(hc, "host", str, ""),
        )
        tls = _tls_options(_field(payload, "tls", dict, {}))
        options = ServiceOptions.create(
            hosts=_string_list(payload, "hosts"),
            path_prefixes=_string_list(payload, "path_prefixes"),
            strip_prefix=_field(payload, "strip_path_prefix", bool, True),
            health_check=health_check,
            target_timeout=_field(payload, "target_timeout", float, 30.0),
            forward_headers=_field(payload, "forward_headers", bool, not tls.enabled),
            tls=tls,
            canonical_host=_field(payload, "canonical_host", str, "").lower(),
        )
    except BadRequest:
        raise
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    if health_check.interval <= 0 or health_check.timeout <= 0:
        raise BadRequest("health check interval and timeout must be positive")
    return DeployRequest(
        service=service,
        targets=tuple(targets),
        options=options,
        deploy_timeout=_field(payload, "deploy_timeout", float, 30.0),
        drain_timeout=_field(payload, "drain_timeout", float, 30.0),
        force=_field(payload, "force", bool, False),
    )


async def _json_body(request: web.Request) -> Any:
    try:
        return await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"invalid JSON: {exc}") from None


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


class AdminApi:
    def __init__(self, manager: ServiceManager) -> None:
        self.manager = manager
        self.app = web.Application()
        self.app.add_routes(
            [
                web.post("/deploy", self.deploy),
                web.post("/remove", self.remove),
                web.get("/services", self.services),
            ]
        )
        self.runner: web.AppRunner | None = None

    async def start(self, path: Path) -> None:
        """Listen on the Unix socket at `path`, replacing a stale socket file."""
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_socket():
            path.unlink()
        self.runner = web.AppRunner(self.app, access_log=None)
        await self.runner.setup()
        old_umask = os.umask(0o177)
        try:
            await web.UnixSite(self.runner, str(path)).start()
        finally:
            os.umask(old_umask)
        os.chmod(path, 0o600)

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def deploy(self, request: web.Request) -> web.StreamResponse:
        try:
            deploy = parse_deploy(await _json_body(request))
        except BadRequest as exc:
            return _error(400, str(exc))
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        events: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

        def progress(event: str, **details: Any) -> None:
            events.put_nowait({"event": event, **details})

        async def run() -> None:
            # Runs to the end even if the client goes away: a deploy is never left half done.
            try:
                await self.manager.deploy(deploy, progress)
            except DeployError as exc:
                events.put_nowait({"error": str(exc)})
            except Exception as exc:
                self.manager.log.error("Deploy failed", service=deploy.service, error=repr(exc))
                events.put_nowait({"error": f"internal error: {exc!r}"})
            finally:
                events.put_nowait(None)

        task = asyncio.get_running_loop().create_task(run())
        while (event := await events.get()) is not None:
            try:
                await response.write(json.dumps(event).encode() + b"\n")
            except ConnectionError:
                await asyncio.shield(task)
                break
        await response.write_eof()
        return response

    async def remove(self, request: web.Request) -> web.Response:
        try:
            payload = await _json_body(request)
            name = _field(payload if isinstance(payload, dict) else {}, "service", str, "")
        except BadRequest as exc:
            return _error(400, str(exc))
        try:
            await self.manager.remove(name)
        except ServiceNotFound as exc:
            return _error(404, str(exc))
        return web.json_response({"removed": name})

    async def services(self, request: web.Request) -> web.Response:
        return web.json_response(self.manager.describe())
