"""Health checks: `GET <path>` on a target until it answers 2xx.

Each failure is kept as text, so a deploy that times out can say why the
target never became healthy (refused, timeout, 404, redirect to https...).
What the checks find is a new `LoadBalancer` value, never a change to one:
the manager publishes it in a new routing table (health changes are rare).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aiohttp

from proxy.balancer import LoadBalancer
from proxy.service import HealthCheckConfig
from proxy.target import Target, TargetState

USER_AGENT = "pyproxy"


def probe_url(target: Target, config: HealthCheckConfig) -> str:
    port = config.port or target.port
    return f"http://{target.host}:{port}/{config.path.lstrip('/')}"


async def probe(session: aiohttp.ClientSession, target: Target, config: HealthCheckConfig) -> str | None:
    """One health check: None when healthy, else what went wrong."""
    url = probe_url(target, config)
    headers = {"User-Agent": USER_AGENT}
    if config.host:
        headers["Host"] = config.host
    try:
        async with session.get(
            url, headers=headers, timeout=aiohttp.ClientTimeout(total=config.timeout)
        ) as response:
            await response.read()
            if 200 <= response.status < 300:
                return None
            where = f" (redirected to {response.url})" if response.history else ""
            return f"GET {url} answered {response.status} {response.reason}{where}"
    except TimeoutError:
        return f"GET {url} timed out after {config.timeout:g}s"
    except aiohttp.ClientConnectorError as exc:
        return f"GET {url} failed: {exc.os_error.strerror or exc}"
    except (aiohttp.ClientError, OSError) as exc:
        return f"GET {url} failed: {exc.__class__.__name__}: {exc}"


class HealthWatch:
    """The checks of one deploy's targets and what they found so far: `balancer` is the latest value
    (replaced on each health change), `errors` each target's last failure."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        balancer: LoadBalancer,
        config: HealthCheckConfig,
        report: Callable[[HealthWatch, Target, str | None], bool],
    ) -> None:
        self.balancer = balancer
        self.errors: dict[str, str] = {}
        self.all_healthy = asyncio.Event()  # set by the owner once every target has answered 2xx
        self.checkers = [
            HealthChecker(session, target, config, lambda target, error: report(self, target, error))
            for target in balancer.targets
        ]

    def start(self) -> None:
        for checker in self.checkers:
            checker.start()

    def stop(self) -> None:
        for checker in self.checkers:
            checker.stop()

    def set_state(self, address: str, state: TargetState) -> LoadBalancer | None:
        """Record a health change: the balancer value it replaces, or None when nothing changed."""
        old = self.balancer
        self.balancer = old.with_state(address, state)
        return old if self.balancer is not old else None


class HealthChecker:
    """Probes one target every interval and reports each result."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        target: Target,
        config: HealthCheckConfig,
        report: Callable[[Target, str | None], bool],
    ) -> None:
        self.session = session
        self.target = target
        self.config = config
        self.report = report
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            self.task = None

    async def _run(self) -> None:
        while True:
            error = await probe(self.session, self.target, self.config)
            if not self.report(self.target, error):
                self.task = None
                return
            await asyncio.sleep(self.config.interval)
