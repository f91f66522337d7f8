#!/usr/bin/env python3
"""Idle keep-alive memory: what each proxy holds per client connection that made one request and waits.

For each proxy (pyproxy, nginx, kamal-proxy when its binary is there) and each protocol (HTTP/1.1, HTTPS/1.1,
HTTP/2 over TLS), a fresh proxy process is started in front of an nginx upstream, warmed up with one batch
of connections (so one-off costs are not charged to the connections), and then N client connections each
make ONE request, read the answer and stay open. The proxy's memory (RSS, and PSS where smaps_rollup
exists, summed over its process group) after, minus before, over N is the figure per idle connection.
The answer is 13 bytes, or `--response-size` bytes (e.g. 1M): what a connection keeps after a large response
(a TLS library's buffers keep their largest size). HTTP/2 clients open their windows as browsers do.

`--breakdown` instead runs pyproxy's server in this process under tracemalloc, opens connections against
it from a thread, and prints what one idle HTTP/1.1 connection holds, by allocation site and by object.
See loadtests/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import linecache
import os
import resource
import shutil
import signal
import socket
import ssl
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Coroutine
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import h2.settings

try:
    import uvloop
except ImportError:
    uvloop = None
from bench import (
    TLS_NAME,
    BenchError,
    Processes,
    TlsFiles,
    free_port,
    interrupt,
    make_tls_files,
    pyproxy_deploy,
    pyproxy_script,
    start_nginx,
    table,
    wait_ready,
)

KAMAL_PROXY = Path(__file__).resolve().parents[2] / "shared" / "anchors" / "kamal-proxy"
PROTOCOLS = ("HTTP/1.1", "HTTPS/1.1", "HTTP/2 TLS")
BODY_SIZE = 13  # the upstream serves /13: 13 bytes (and /<n>: n bytes for --response-size n)
# The windows Chrome opens (per stream, and for the connection): a server may send a large response at once.
H2_STREAM_WINDOW = 6 * 1024 * 1024
H2_CONNECTION_WINDOW = 15 * 1024 * 1024
BATCH = 100  # connections opened at once
WARMUP = BATCH  # connections opened, used and closed before the "before" reading
# After the last answer, before the "after" reading: past the 1 s for which a pyproxy connection between
# requests keeps its parser (proxy/http/client.py REST_SECONDS), so --breakdown sees idle connections.
SETTLE_SECONDS = 2.0
PER_RUN_SECONDS = 120.0  # the most one proxy and protocol may take to open its connections
IDLE_TIMEOUT = "10m"  # the proxies must not close the connections while they are being counted
DEFAULT_CONNECTIONS = 10_000
BREAKDOWN_CONNECTIONS = 2000
TOP_SITES = 25
Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@dataclasses.dataclass(frozen=True)
class Memory:
    """Resident (RSS) and proportional (PSS, None without smaps_rollup) bytes of a process group."""

    rss: int
    pss: int | None


@dataclasses.dataclass(frozen=True)
class Result:
    proxy: str
    protocol: str
    opened: int
    still_open: int
    failed: int
    rss_growth: int
    pss_growth: int | None


@dataclasses.dataclass(frozen=True)
class Proxy:
    """A started proxy: its process group, its plain and TLS ports."""

    pgid: int
    port: int
    tls_port: int


def group_memory(pgid: int) -> Memory:
    """RSS and PSS summed over the live processes of a process group (nginx: master and worker)."""
    rss = pss = 0
    has_pss = True
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
            if int(stat[stat.rindex(")") + 2 :].split()[2]) != pgid:
                continue
            rollup = Path(entry.path, "smaps_rollup")
            if rollup.exists():
                fields = dict(line.split(":", 1) for line in rollup.read_text().splitlines()[1:])
                rss += int(fields["Rss"].split()[0]) * 1024
                pss += int(fields["Pss"].split()[0]) * 1024
            else:
                has_pss = False
                rss += int(Path(entry.path, "statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, KeyError):
            continue  # a process that ended meanwhile
    return Memory(rss, pss if has_pss else None)


def raise_fd_limit(needed: int) -> None:
    """Room for `needed` descriptors here and in the proxies started from here (they inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for limit in (max(hard, needed), hard):
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(limit, needed)), limit))
            break
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < needed:
        raise BenchError(
            f"needs {needed} file descriptors, RLIMIT_NOFILE allows {hard}: use fewer --connections"
        )


# -- clients ----------------------------------------------------------------------------------------


def request_bytes(size: int = BODY_SIZE) -> bytes:
    return f"GET /{size} HTTP/1.1\r\nHost: {TLS_NAME}\r\nUser-Agent: idle_memory\r\n\r\n".encode()


async def read_http1_answer(reader: asyncio.StreamReader) -> None:
    """One HTTP/1.1 response with a Content-Length, read whole; ValueError unless it is a 200."""
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise ValueError(head.split(b"\r\n", 1)[0].decode(errors="replace"))
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    await reader.readexactly(length)


async def http1_client(port: int, tls: ssl.SSLContext | None, size: int) -> Connection:
    """A connection that made one GET (of `size` bytes) and read the answer."""
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=tls, server_hostname=TLS_NAME if tls else None
    )
    writer.write(request_bytes(size))
    await read_http1_answer(reader)
    return reader, writer


async def http2_client(port: int, tls: ssl.SSLContext, size: int) -> Connection:
    """An HTTP/2 connection (ALPN h2) that made one GET (of `size` bytes) on stream 1 and read the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=tls, server_hostname=TLS_NAME)
    if writer.get_extra_info("ssl_object").selected_alpn_protocol() != "h2":
        raise ValueError("the server did not choose h2")
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    conn.initiate_connection()
    conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: H2_STREAM_WINDOW})
    conn.increment_flow_control_window(H2_CONNECTION_WINDOW - conn.inbound_flow_control_window)
    headers = [(":method", "GET"), (":scheme", "https"), (":authority", TLS_NAME), (":path", f"/{size}")]
    conn.send_headers(1, headers, end_stream=True)
    writer.write(conn.data_to_send())
    status = ""
    while True:
        data = await reader.read(65536)
        if not data:
            raise ValueError("closed before the answer")
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived):
                status = dict(event.headers).get(":status", "")
            elif isinstance(event, h2.events.DataReceived):
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                writer.write(conn.data_to_send())
                if status != "200":
                    raise ValueError(f"status {status}")
                return reader, writer
        writer.write(conn.data_to_send())


def client_tls(files: TlsFiles, protocol: str) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(files.ca))
    context.set_alpn_protocols(["h2"] if protocol == "HTTP/2 TLS" else ["http/1.1"])
    return context


async def open_idle(
    proxy: Proxy, protocol: str, tls: TlsFiles, count: int, response_size: int, deadline: float
) -> tuple[list[Connection], int]:
    """Open `count` connections in batches, each after one request for `response_size` bytes; return them
    and the failures."""
    context = None if protocol == "HTTP/1.1" else client_tls(tls, protocol)
    port = proxy.port if context is None else proxy.tls_port

    def one() -> Coroutine[None, None, Connection]:
        if protocol == "HTTP/2 TLS":
            return http2_client(port, context, response_size)
        return http1_client(port, context, response_size)

    writers: list[Connection] = []
    failed = 0
    while len(writers) + failed < count and time.monotonic() < deadline:
        size = min(BATCH, count - len(writers) - failed)
        try:
            async with asyncio.timeout(max(deadline - time.monotonic(), 0.1)):
                done = await asyncio.gather(*(one() for _ in range(size)), return_exceptions=True)
        except TimeoutError:
            break
        for item in done:
            if isinstance(item, BaseException):
                failed += 1
                if failed <= 3:
                    print(f"  connection failed: {item!r}", file=sys.stderr)
            else:
                writers.append(item)
    return writers, failed


def close_all(connections: list[Connection]) -> None:
    for _, writer in connections:
        writer.transport.abort()


def still_open(connections: list[Connection]) -> int:
    """How many the proxy has not closed (an idle timeout would close them before the reading)."""
    return sum(
        1 for reader, writer in connections if not reader.at_eof() and not writer.transport.is_closing()
    )


# -- proxies ----------------------------------------------------------------------------------------


class Proxies:
    """Starts each proxy under test in front of the upstream, fresh for each protocol."""

    def __init__(self, tmp: Path, upstream_port: int, tls: TlsFiles, cpus: str, workers: int) -> None:
        self.tmp, self.upstream_port, self.tls, self.cpus = tmp, upstream_port, tls, cpus
        self.workers = workers  # pyproxy's --workers, nginx's worker_processes, kamal-proxy's GOMAXPROCS
        self.runs = 0

    def workdir(self, name: str) -> Path:
        self.runs += 1
        path = self.tmp / f"{name}-{self.runs}"
        path.mkdir(mode=0o755)
        return path

    def deploy_flags(self, protocol: str) -> list[str]:
        """kamal-proxy's and pyproxy's deploy flags: the upstream, and for TLS a host with a certificate."""
        flags = [f"--target=127.0.0.1:{self.upstream_port}", "--health-check-path=/up"]
        if protocol != "HTTP/1.1":
            flags += [f"--host={TLS_NAME}", "--tls", f"--tls-certificate-path={self.tls.cert}",
                      f"--tls-private-key-path={self.tls.key}", "--tls-redirect=false"]  # fmt: skip
        return flags

    def pyproxy(self, procs: Processes, protocol: str) -> Proxy:
        work = self.workdir("pyproxy")
        env = {**os.environ, "PYPROXY_SOCKET": str(work / "pyproxy.sock"), "XDG_CONFIG_HOME": str(work)}
        port, tls_port = free_port(), free_port()
        cli = pyproxy_script()
        argv = [*cli, "run", "--http-port", str(port), "--https-port", str(tls_port), "--bind", "127.0.0.1",
                f"--idle-timeout={IDLE_TIMEOUT}", f"--workers={self.workers}"]  # fmt: skip
        log = work / "pyproxy.log"
        proc = procs.start(argv, log, env=env, stdout=Path(os.devnull))
        wait_ready(port, proc, "pyproxy", log, extra=(work / "pyproxy.sock").exists)
        pyproxy_deploy(cli, env, ["idle", *self.deploy_flags(protocol)], log)
        return Proxy(proc.pid, port, tls_port)

    def nginx(self, procs: Processes, protocol: str) -> Proxy:
        """nginx-proxy.conf with room for the connections and a keep-alive timeout longer than the run."""
        work = self.workdir("nginx")
        text = Path(__file__).with_name("nginx-proxy.conf").read_text()
        for old, new in (("worker_connections 4096;", "worker_connections 65536;"),
                         ("keepalive_timeout 75s;", f"keepalive_timeout {IDLE_TIMEOUT};"),
                         ("worker_processes 1;", f"worker_processes {self.workers};")):  # fmt: skip
            if old not in text:
                raise BenchError(f"nginx-proxy.conf no longer says {old!r}: update idle_memory.py")
            text = text.replace(old, new)
        template = work / "nginx-idle.conf.in"
        template.write_text(text)
        tls_port = free_port()
        proc, port = start_nginx(
            procs, work, "proxy", str(template), self.cpus, upstream_port=self.upstream_port,
            buffering="", tls_port=tls_port, cert=self.tls.cert, key=self.tls.key,
        )  # fmt: skip
        return Proxy(proc.pid, port, tls_port)

    def kamal_proxy(self, procs: Processes, protocol: str) -> Proxy:
        """kamal-proxy listens on every address (it has no bind flag); the traffic stays on loopback."""
        work = self.workdir("kamal-proxy")
        sock = work / "kamal-proxy.sock"
        env = {**os.environ, "KAMAL_PROXY_SOCKET": str(sock), "HOME": str(work),  # state: ~/.config
               "GOMAXPROCS": str(self.workers)}  # fmt: skip
        port, tls_port = free_port(), free_port()
        argv = [str(KAMAL_PROXY), "run", f"--http-port={port}", f"--https-port={tls_port}"]
        log = work / "kamal-proxy.log"
        proc = procs.start(argv, log, env=env, stdout=Path(os.devnull))
        wait_ready(port, proc, "kamal-proxy", log, extra=sock.exists)
        pyproxy_deploy([str(KAMAL_PROXY)], env, ["idle", *self.deploy_flags(protocol)], log)
        return Proxy(proc.pid, port, tls_port)


async def measure(proxy: Proxy, protocol: str, tls: TlsFiles, count: int, size: int) -> Result:
    """Warm up, read the memory, open the idle connections, read it again, close them."""
    deadline = time.monotonic() + PER_RUN_SECONDS
    warm, _ = await open_idle(proxy, protocol, tls, WARMUP, size, deadline)
    close_all(warm)
    await asyncio.sleep(SETTLE_SECONDS)
    before = group_memory(proxy.pgid)
    connections, failed = await open_idle(proxy, protocol, tls, count, size, deadline)
    await asyncio.sleep(SETTLE_SECONDS)
    after = group_memory(proxy.pgid)
    result = Result(
        "", protocol, len(connections), still_open(connections), failed, after.rss - before.rss,
        None if before.pss is None or after.pss is None else after.pss - before.pss,
    )  # fmt: skip
    close_all(connections)
    return result


async def run_all(args: argparse.Namespace) -> list[Result]:
    """Every selected proxy and protocol, one fresh proxy process each."""
    tmp = Path(tempfile.mkdtemp(prefix="pyproxy-idle-"))
    tmp.chmod(0o755)  # nginx workers may run as another user
    procs = Processes()
    cpus = ",".join(str(c) for c in sorted(os.sched_getaffinity(0)))
    results = []
    try:
        tls = make_tls_files(tmp)
        _, upstream_port = start_upstream(procs, tmp, cpus, args.response_size)
        proxies = Proxies(tmp, upstream_port, tls, cpus, args.workers)
        starters: dict[str, Callable[[Processes, str], Proxy]] = {
            "pyproxy": proxies.pyproxy,
            "nginx": proxies.nginx,
        }
        if KAMAL_PROXY.exists():
            starters["kamal-proxy"] = proxies.kamal_proxy
        else:
            print(f"idle_memory.py: no kamal-proxy at {KAMAL_PROXY}: skipped", file=sys.stderr)
        for name, start in starters.items():
            if name not in args.proxies:
                continue
            for protocol in args.protocols:
                run = Processes()
                try:
                    started = time.monotonic()
                    result = await measure(
                        start(run, protocol), protocol, tls, args.connections, args.response_size
                    )
                finally:
                    run.stop_all()
                result = dataclasses.replace(result, proxy=name)
                results.append(result)
                print(
                    f"  {name:<12} {protocol:<10} {result.opened:>6} opened, {result.still_open} open at the "
                    f"reading, {result.failed} failed, {time.monotonic() - started:5.1f}s: "
                    f"RSS +{result.rss_growth / 1e6:.1f} MB",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
    return results


def start_upstream(procs: Processes, tmp: Path, cpus: str, size: int = BODY_SIZE) -> tuple[object, int]:
    """nginx-upstream.conf serving /13 (13 bytes), /<size> (`size` bytes) and /up, for the proxies and their
    health checks."""
    www = tmp / "www"
    www.mkdir(mode=0o755)
    for length, content in {size: b"x" * size, BODY_SIZE: b"Hello, world\n"}.items():
        body = www / str(length)
        body.write_bytes(content)
        body.chmod(0o644)
    return start_nginx(procs, tmp, "upstream", "nginx-upstream.conf", cpus)


# -- breakdown: pyproxy in this process, under tracemalloc ---------------------------------------------


def open_blocking(port: int, count: int) -> list[socket.socket]:
    """`count` plain sockets, each after one GET whose answer was read (run in a thread: its allocations
    have threading.py in their traceback, and are left out of the breakdown)."""
    request = request_bytes()
    sockets = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data or not data.endswith(b"Hello, world\n"):
            chunk = sock.recv(4096)
            if not chunk:
                raise BenchError(f"pyproxy closed the connection before answering: {data[:80]!r}")
            data += chunk
        if not data.startswith(b"HTTP/1.1 200"):
            raise BenchError(f"pyproxy answered {data[:80]!r}")
        sockets.append(sock)
    return sockets


def process_memory() -> Memory:
    """RSS and PSS of this process alone."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/smaps_rollup").read_text().splitlines()[1:])
    return Memory(int(fields["Rss"].split()[0]) * 1024, int(fields["Pss"].split()[0]) * 1024)


def describe_site(stat: tracemalloc.StatisticDiff) -> str:
    """The allocating line (with its code), and the innermost pyproxy line that led to it when that is
    another one. A site in the loop's run line is C code under it: uvloop's transports and libuv handles."""
    frames = list(stat.traceback)  # oldest first
    inner = frames[-1]
    ours = next((f for f in reversed(frames) if f"{os.sep}proxy{os.sep}" in f.filename), None)
    code = linecache.getline(inner.filename, inner.lineno).strip()[:60]
    text = f"{short(inner.filename)}:{inner.lineno} {code}"
    if ours is not None and ours is not inner:
        text += f" <- {short(ours.filename)}:{ours.lineno}"
    elif ours is None and "run_until_complete" in code:
        text += " (C code under the event loop: uvloop transport, libuv handle)"
    return text


def short(filename: str) -> str:
    for marker in (f"{os.sep}proxy{os.sep}", f"{os.sep}site-packages{os.sep}", f"{os.sep}python3."):
        if marker in filename:
            return filename[filename.index(marker) + 1 :]
    return filename


def object_sizes(count: int) -> list[list[str]]:
    """sys.getsizeof of one idle ClientConnection and of what its slots hold (shared: the same object
    in every connection, so not per connection)."""
    from proxy.http.client import ClientConnection

    connections = [o for o in gc.get_objects() if type(o) is ClientConnection and not o.closed]
    if len(connections) < 2:
        return [["(fewer than 2 open ClientConnection objects found)", "", "", ""]]
    one, other = connections[0], connections[1]
    rows = [["ClientConnection (slots)", "ClientConnection", str(sys.getsizeof(one)), "per connection"]]
    total = sys.getsizeof(one)
    names = [n for cls in type(one).__mro__ for n in getattr(cls, "__slots__", ())]
    for name in sorted(set(names)):
        value = getattr(one, name, None)
        if value is None or isinstance(value, bool | int | float):
            continue  # None, flags, counters, deadlines: small or cached, not worth a row
        shared = value is getattr(other, name, None)
        size = sys.getsizeof(value)
        if isinstance(value, dict):
            size += sum(sys.getsizeof(k) + sys.getsizeof(v) for k, v in value.items())
        rows.append([f".{name}", type(value).__name__, str(size), "shared" if shared else "per connection"])
        total += 0 if shared else size
    transport = one.transport
    if transport is not None:
        for key in ("socket", "sockname", "peername"):
            extra = transport.get_extra_info(key)
            rows.append(
                [
                    f".transport extra {key!r}",
                    type(extra).__name__,
                    str(sys.getsizeof(extra)),
                    "per connection",
                ]
            )
    rows.append(["sum of the per-connection rows", "", str(total), f"{len(connections)} connections found"])
    return rows


async def breakdown(count: int) -> str:
    """pyproxy as `pyproxy run` builds it, in this process: tracemalloc's top sites per idle connection."""
    from proxy.app import RunSettings, _serve  # the server `pyproxy run` starts, without a subprocess
    from proxy.http.server import HttpLimits

    tmp = Path(tempfile.mkdtemp(prefix="pyproxy-idle-breakdown-"))
    tmp.chmod(0o755)
    procs = Processes()
    os.environ.update(PYPROXY_SOCKET=str(tmp / "pyproxy.sock"), XDG_CONFIG_HOME=str(tmp))
    saved_stdout = os.dup(1)
    try:
        _, upstream_port = start_upstream(
            procs, tmp, ",".join(str(c) for c in sorted(os.sched_getaffinity(0)))
        )
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)  # the access log: one JSON line per request on stdout
        os.close(devnull)
        tracemalloc.start(10)
        port = free_port()
        settings = RunSettings(http_port=port, https_port=free_port(), bind="127.0.0.1",
                               limits=HttpLimits(idle_timeout=600.0))  # fmt: skip
        server = asyncio.get_running_loop().create_task(_serve(settings))
        while not (tmp / "pyproxy.sock").exists():
            if server.done():
                raise BenchError(f"pyproxy stopped: {server.result()}")
            await asyncio.sleep(0.05)
        deploy = await asyncio.create_subprocess_exec(
            *pyproxy_script(), "deploy", "idle", f"--target=127.0.0.1:{upstream_port}",
            "--health-check-path=/up", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        output, _ = await asyncio.wait_for(deploy.communicate(), 60)
        if deploy.returncode != 0:
            raise BenchError(f"pyproxy deploy failed: {output.decode(errors='replace')}")
        for sock in await asyncio.to_thread(open_blocking, port, WARMUP):
            sock.close()
        await asyncio.sleep(SETTLE_SECONDS)
        gc.collect()
        rss_before, before = process_memory(), tracemalloc.take_snapshot()
        sockets = await asyncio.to_thread(open_blocking, port, count)
        await asyncio.sleep(SETTLE_SECONDS)
        gc.collect()
        rss_after, after = process_memory(), tracemalloc.take_snapshot()
        sizes = object_sizes(count)
        tracemalloc.stop()
        os.kill(os.getpid(), signal.SIGTERM)  # _serve's own handler: shut down as `pyproxy run` does
        await asyncio.wait_for(server, 30)
        for sock in sockets:
            sock.close()
    finally:
        os.dup2(saved_stdout, 1)
        os.close(saved_stdout)
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
    return breakdown_report(before, after, rss_after.rss - rss_before.rss, sizes, count)


def breakdown_report(
    before: tracemalloc.Snapshot,
    after: tracemalloc.Snapshot,
    rss_growth: int,
    sizes: list[list[str]],
    count: int,
) -> str:
    left_out = [tracemalloc.Filter(False, "*threading.py", all_frames=True),
                tracemalloc.Filter(False, tracemalloc.__file__)]  # fmt: skip
    stats = after.filter_traces(left_out).compare_to(before.filter_traces(left_out), "traceback")
    traced = sum(s.size_diff for s in stats)
    grown = [s for s in stats if s.size_diff >= count]  # at least a byte per connection
    top = sorted(grown, key=lambda s: s.size_diff, reverse=True)[:TOP_SITES]
    rows = [[describe_site(s), f"{s.size_diff / count:,.0f}", f"{s.count_diff / count:.2f}"] for s in top]
    return (
        f"pyproxy in this process, {count} idle HTTP/1.1 keep-alive connections after one request each:\n"
        f"  RSS growth of this process {rss_growth / count:,.0f} B per connection (the client sockets too);\n"
        f"  traced by tracemalloc in pyproxy {traced / count:,.0f} B (the rest: the client side, untraced C\n"
        "  allocations, malloc overhead, partly used pages)\n\n"
        f"Top {TOP_SITES} allocation sites by growth, per connection:\n\n"
        + table(["site (allocating line <- pyproxy line)", "bytes/conn", "blocks/conn"], rows, False)
        + "\n\nOne idle connection's objects (sys.getsizeof, not deep):\n\n"
        + table(["object", "type", "bytes", "note"], sizes, False)
    )


# -- report and main -----------------------------------------------------------------------------------


def report(results: list[Result], markdown: bool) -> str:
    rows = []
    for r in results:
        per = r.still_open or 1
        pss = "-" if r.pss_growth is None else f"{r.pss_growth / 1e6:.1f}"
        pss_per = "-" if r.pss_growth is None else f"{r.pss_growth / per:,.0f}"
        rows.append([r.proxy, r.protocol, str(r.still_open), f"{r.rss_growth / 1e6:.1f}",
                     f"{r.rss_growth / per:,.0f}", pss, pss_per])  # fmt: skip
    headers = [
        "proxy",
        "protocol",
        "connections",
        "RSS growth MB",
        "RSS B/conn",
        "PSS growth MB",
        "PSS B/conn",
    ]
    return table(headers, rows, markdown)


def parse_size(text: str) -> int:
    """A byte count, with an optional K or M suffix (binary)."""
    units = {"K": 1024, "M": 1024 * 1024}
    scale = units.get(text[-1:].upper(), 1)
    try:
        size = int(text[:-1] if scale > 1 else text) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}") from None
    if size < 1:
        raise argparse.ArgumentTypeError("the response size must be positive")
    return size


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--connections",
        type=int,
        help=f"per run (default {DEFAULT_CONNECTIONS}, {BREAKDOWN_CONNECTIONS} with --breakdown)",
    )
    ap.add_argument(
        "--proxies", default="pyproxy,nginx,kamal-proxy", help="comma-separated (default: all three)"
    )
    ap.add_argument(
        "--protocols", default=",".join(PROTOCOLS), help=f"comma-separated (default {','.join(PROTOCOLS)})"
    )
    ap.add_argument(
        "--response-size",
        type=parse_size,
        default=BODY_SIZE,
        help=f"bytes of the one answer each connection gets, e.g. 1M (default {BODY_SIZE})",
    )
    ap.add_argument(
        "--workers",
        type=int,
        default=1,
        help="pyproxy's --workers, nginx's worker_processes and kamal-proxy's GOMAXPROCS (default 1)",
    )
    ap.add_argument("--breakdown", action="store_true", help="pyproxy in this process, under tracemalloc")
    ap.add_argument("--markdown", action="store_true", help="print a GitHub markdown table")
    args = ap.parse_args(argv)
    args.proxies = args.proxies.split(",")
    args.protocols = args.protocols.split(",")
    if unknown := set(args.protocols) - set(PROTOCOLS):
        ap.error(f"unknown protocol(s) {', '.join(sorted(unknown))}; known: {', '.join(PROTOCOLS)}")
    if args.connections is None:
        args.connections = BREAKDOWN_CONNECTIONS if args.breakdown else DEFAULT_CONNECTIONS
    if args.connections < 1:
        ap.error("--connections must be positive")
    if args.workers < 1:
        ap.error("--workers must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, interrupt)
    if shutil.which("nginx") is None:
        print(
            "idle_memory.py: missing nginx (the upstream); install with: apt-get install -y nginx",
            file=sys.stderr,
        )
        return 2
    run = uvloop.run if uvloop is not None else asyncio.run  # the client loop; pyproxy runs on uvloop
    try:
        if args.breakdown:
            raise_fd_limit(args.connections + 1000)
            print(run(breakdown(args.connections)))
            return 0
        raise_fd_limit(args.connections + 1000)  # here and in each proxy (they inherit it)
        results = run(run_all(args))
    except BenchError as exc:
        print(f"idle_memory.py: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("idle_memory.py: interrupted; servers stopped", file=sys.stderr)
        return 130
    print(report(results, args.markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
