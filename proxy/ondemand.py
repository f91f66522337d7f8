"""On-demand TLS: certificates for hosts no service lists, each approved by the operator's endpoint.

As kamal-proxy (spec 11.3): a host whose certificate is cached is served
without asking, so an outage of the check endpoint never breaks hosts already
issued. Otherwise `GET <url>?host=H` (or, for a path, the same request sent to
one of the service's targets with `Host: H`) must answer exactly 200 within
2 s before a certificate is ordered. The client's handshake waits for the
check and the order, and for nothing else.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable

import aiohttp
import yarl

from proxy.autocert import AutoCertificates
from proxy.log import JsonLog
from proxy.service import Service

CHECK_TIMEOUT = 2.0
LOGGED_BODY_BYTES = 256
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_HOST_NAME = re.compile(rf"(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})+")


class OnDemandCertificates:
    """Readies certificates for new server names of an on-demand TLS service, one order per name."""

    def __init__(
        self, auto: AutoCertificates, session: Callable[[], aiohttp.ClientSession], log: JsonLog
    ) -> None:
        self.auto = auto
        self.session = session
        self.log = log
        self.hosts: set[str] = set()  # names served by an on-demand certificate
        self._pending: dict[str, asyncio.Task[None]] = {}

    def prepare(self, host: str, service: Service) -> Awaitable[None] | None:
        """What a handshake for `host` waits for; concurrent handshakes for one name share it."""
        if not _HOST_NAME.fullmatch(host):
            return None  # not a name a CA would issue for (an IP address, a single label, garbage)
        task = self._pending.get(host)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._obtain(host, service))
            self._pending[host] = task
            task.add_done_callback(lambda _: self._pending.pop(host, None))
        return asyncio.shield(task)

    def forget_all(self) -> None:
        """No on-demand service is left: stop serving and renewing its names (the cache stays)."""
        for host in self.hosts:
            self.auto.forget(host)
        self.hosts.clear()

    async def _obtain(self, host: str, service: Service) -> None:
        tls = service.options.tls
        self.hosts.add(host)  # before the certificate is installed, so that it is published
        if self.auto.serve_cached(host, tls):
            return
        if await self._approved(host, service) and await self.auto.order_now(host, tls):
            return
        self.hosts.discard(host)

    async def _approved(self, host: str, service: Service) -> bool:
        url = service.options.tls.on_demand_url
        headers = {}
        if url.startswith("/"):
            state = service.pause.state
            if state != "running":
                # The check goes through the service, which answers 503 while stopped (kamal-proxy).
                self.log.warn("TLS on-demand check denied", host=host, reason=f"service {state}")
                return False
            target = next(iter(service.balancer.healthy), None)
            if target is None:
                self.log.warn("TLS on-demand check denied", host=host, reason="no healthy target")
                return False
            url = f"http://{target.address}{url}"
            headers["Host"] = host
        check = yarl.URL(url).update_query(host=host)
        try:
            async with self.session().get(
                check,
                headers=headers,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=CHECK_TIMEOUT),
            ) as response:
                if response.status == 200:
                    self.log.info("TLS on-demand check approved", host=host)
                    return True
                body = await response.content.read(LOGGED_BODY_BYTES)
                reason = f"status {response.status}: {body.decode('utf-8', 'replace')}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            reason = str(exc) or exc.__class__.__name__
        self.log.warn("TLS on-demand check denied", host=host, reason=reason)
        return False
