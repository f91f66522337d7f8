"""The admin API: JSON over HTTP on a Unix socket (mode 0600), served inside `pyproxy run`.

`POST /deploy` streams its progress as JSON lines (one object per step) and
ends with `{"event": "done"}` or `{"error": "..."}`, so a client can show what
a long deploy is waiting for. Anything malformed is refused before anything
changes.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from proxy.health import HealthCheckConfig
from proxy.http.request import BufferPolicy
from proxy.manager import DeployError, DeployRequest, ServiceManager, ServiceNotFound
from proxy.service import ServiceOptions, TlsOptions
from proxy.target import parse_target


class BadRequest(ValueError):
    """A request the admin API refuses; its message is shown to the operator."""


# Go's longest time.Duration, about 292 years: a duration past it is no duration kamal-proxy could take.
_MAX_SECONDS = (2**63 - 1) / 1e9


def _field(payload: dict[str, Any], name: str, kind: type | tuple[type, ...], default: Any) -> Any:
    """`payload[name]` if it is a `kind` (floats: seconds, finite, 0 to Go's longest duration; ints and
    floats never a JSON true/false), else BadRequest before anything changes."""
    value = payload.get(name, default)
    if kind in (float, int) and isinstance(value, bool):
        value = None
    elif kind is float and isinstance(value, int):
        value = float(value) if abs(value) <= _MAX_SECONDS else math.inf
    if not isinstance(value, kind) or (kind is float and not 0 <= value <= _MAX_SECONDS):
        raise BadRequest(f'"{name}" has the wrong type or value: {payload.get(name, default)!r}')
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
    targets = _targets(payload, "targets")
    read_targets = _string_list(payload, "read_targets")
    try:
        for target in read_targets:
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
            buffering=_buffering(_field(payload, "buffering", dict, {})),
            log_request_headers=tuple(_string_list(payload, "log_request_headers")),
            log_response_headers=tuple(_string_list(payload, "log_response_headers")),
            error_pages_path=_field(payload, "error_pages", str, ""),
            writer_affinity_timeout=_field(payload, "writer_affinity_timeout", float, 1.0),
            read_targets_accept_websockets=_field(payload, "read_targets_accept_websockets", bool, False),
            exclude_metrics_paths=tuple(_string_list(payload, "exclude_metrics_paths")),
            client_ip_header=_field(payload, "client_ip_header", str, ""),
            scope_cookie_paths=_field(payload, "scope_cookie_paths", bool, False),
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
        read_targets=tuple(read_targets),
    )


def _targets(payload: dict[str, Any], name: str) -> list[str]:
    """At least one well-formed `host[:port]`."""
    targets = _string_list(payload, name)
    if not targets:
        raise BadRequest(f'"{name}" needs at least one target')
    try:
        for target in targets:
            parse_target(target)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    return targets


def _buffering(buffering: dict[str, Any]) -> BufferPolicy:
    defaults = BufferPolicy()
    policy = BufferPolicy(
        requests=_field(buffering, "requests", bool, False),
        responses=_field(buffering, "responses", bool, False),
        memory=_field(buffering, "memory", int, defaults.memory),
        max_request_body=_field(buffering, "max_request_body", int, 0),
        max_response_body=_field(buffering, "max_response_body", int, 0),
    )
    if min(policy.memory, policy.max_request_body, policy.max_response_body) < 0:
        raise BadRequest("buffer sizes must not be negative")
    return policy


async def _json_body(request: web.Request) -> Any:
    try:
        return await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"invalid JSON: {exc}") from None


async def _object(request: web.Request) -> dict[str, Any]:
    payload = await _json_body(request)
    if not isinstance(payload, dict):
        raise BadRequest("expected a JSON object")
    return payload


def _name(payload: dict[str, Any]) -> str:
    name = _field(payload, "service", str, "")
    if not name:
        raise BadRequest('"service" is required')
    return name


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
                web.post("/pause", self.pause),
                web.post("/stop", self.stop_service),
                web.post("/resume", self.resume),
                web.post("/rollout/deploy", self.rollout_deploy),
                web.post("/rollout/set", self.rollout_set),
                web.post("/rollout/stop", self.rollout_stop),
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
        return await self._stream(
            request, deploy.service, lambda progress: self.manager.deploy(deploy, progress)
        )

    async def rollout_deploy(self, request: web.Request) -> web.StreamResponse:
        try:
            payload = await _object(request)
            name = _name(payload)
            targets = _targets(payload, "targets")
            read_targets = _string_list(payload, "read_targets")
            deploy_timeout = _field(payload, "deploy_timeout", float, 30.0)
            drain_timeout = _field(payload, "drain_timeout", float, 30.0)
        except BadRequest as exc:
            return _error(400, str(exc))
        if name not in self.manager.services:
            return _error(404, str(ServiceNotFound(name)))
        return await self._stream(
            request,
            name,
            lambda progress: self.manager.rollout_deploy(
                name, tuple(targets), tuple(read_targets), deploy_timeout, drain_timeout, progress
            ),
        )

    async def _stream(
        self, request: web.Request, service: str, operation: Callable[[Any], Awaitable[None]]
    ) -> web.StreamResponse:
        """Run a long operation, streaming its progress as JSON lines."""
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        events: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

        def progress(event: str, **details: Any) -> None:
            events.put_nowait({"event": event, **details})

        async def run() -> None:
            # Runs to the end even if the client goes away: a deploy is never left half done.
            try:
                await operation(progress)
            except (DeployError, ServiceNotFound) as exc:
                events.put_nowait({"error": str(exc)})
            except Exception as exc:
                self.manager.log.error("Deploy failed", service=service, error=repr(exc))
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
        return await self._change(request, lambda payload, name: self.manager.remove(name))

    async def pause(self, request: web.Request) -> web.Response:
        return await self._change(
            request,
            lambda payload, name: self.manager.pause(
                name,
                _field(payload, "drain_timeout", float, 30.0),
                _field(payload, "max_pause", float, 30.0),
            ),
        )

    async def stop_service(self, request: web.Request) -> web.Response:
        return await self._change(
            request,
            lambda payload, name: self.manager.stop(
                name, _field(payload, "drain_timeout", float, 30.0), _field(payload, "message", str, "")
            ),
        )

    async def resume(self, request: web.Request) -> web.Response:
        return await self._change(request, lambda payload, name: self.manager.resume(name))

    async def rollout_set(self, request: web.Request) -> web.Response:
        def rollout_set(payload: dict[str, Any], name: str) -> Awaitable[None]:
            percentage = _field(payload, "percentage", int, 0)
            if not 0 <= percentage <= 100:
                raise BadRequest("percent must be between 0 and 100")
            return self.manager.rollout_set(name, percentage, _string_list(payload, "allowlist"))

        return await self._change(request, rollout_set)

    async def rollout_stop(self, request: web.Request) -> web.Response:
        return await self._change(request, lambda payload, name: self.manager.rollout_stop(name))

    async def _change(
        self, request: web.Request, operation: Callable[[dict[str, Any], str], Awaitable[None]]
    ) -> web.Response:
        """One change to a named service: 400 for a malformed request, 404 for an unknown service,
        409 for a change the service's state does not allow."""
        try:
            payload = await _object(request)
            name = _name(payload)
            await operation(payload, name)
        except BadRequest as exc:
            return _error(400, str(exc))
        except ServiceNotFound as exc:
            return _error(404, str(exc))
        except DeployError as exc:
            return _error(409, str(exc))
        return web.json_response({"service": name})

    async def services(self, request: web.Request) -> web.Response:
        return web.json_response(await self.manager.describe())
