"""Client side of the admin socket, used by `pyproxy deploy|remove|list` (and by tests)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import aiohttp

from proxy.paths import program_name, socket_path

# Deploys wait for health checks and draining; the server bounds them, not the client.
_NO_TIMEOUT = aiohttp.ClientTimeout(total=None)


class AdminError(Exception):
    """Something the operator must read: the server's refusal, or why it could not be reached."""


def _session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.UnixConnector(path=str(socket_path())), timeout=_NO_TIMEOUT
    )


async def _request(method: str, path: str, payload: Any = None) -> aiohttp.ClientResponse:
    async with _session() as session:
        try:
            response = await session.request(method, f"http://pyproxy{path}", json=payload)
            await response.read()
        except aiohttp.ClientConnectionError as exc:
            raise AdminError(
                f"cannot reach pyproxy at {socket_path()} (is `{program_name()} run` running?): {exc}"
            ) from None
    await _raise_for_error(response)
    return response


async def _raise_for_error(response: aiohttp.ClientResponse) -> None:
    if response.status >= 400:
        try:
            message = (await response.json())["error"]
        except (aiohttp.ContentTypeError, json.JSONDecodeError, KeyError, TypeError):
            message = f"HTTP {response.status}"
        raise AdminError(message)


async def deploy(
    payload: dict[str, Any], on_progress: Callable[[dict[str, Any]], None], path: str = "/deploy"
) -> None:
    """Send a deploy (or a rollout deploy) and report each progress event until it is done; AdminError if
    it failed."""
    async with _session() as session:
        try:
            async with session.post(f"http://pyproxy{path}", json=payload) as response:
                await _raise_for_error(response)
                finished = False
                async for line in response.content:
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    if "error" in event:
                        raise AdminError(event["error"])
                    on_progress(event)
                    finished = event.get("event") == "done"
        except aiohttp.ClientConnectionError as exc:
            raise AdminError(
                f"cannot reach pyproxy at {socket_path()} (is `{program_name()} run` running?): {exc}"
            ) from None
    if not finished:
        raise AdminError("the deploy ended without a result (did pyproxy stop?)")


async def change(path: str, service: str, **details: Any) -> None:
    """One change to a service: `/remove`, `/pause`, `/stop`, `/resume`, `/rollout/set`, `/rollout/stop`."""
    await _request("POST", path, {"service": service, **details})


async def list_services() -> list[dict[str, Any]]:
    response = await _request("GET", "/services")
    return await response.json()
