#!/usr/bin/env python3
"""Load test: wrk against the upstream directly, nginx and pyproxy, in one run, over HTTP and HTTPS.

Every proxy runs with 1 worker pinned to CPU 1; wrk and the upstream nginx share CPU 0. With --workers N
(N > 1) nothing is pinned: each proxy runs N workers (nginx worker_processes, pyproxy --workers,
kamal-proxy GOMAXPROCS), the upstream N workers and wrk N threads, all sharing the machine's cores.
Results are printed as a table with each proxy's req/s and p99 latency and pyproxy's ratio to nginx
measured in the same run. See loadtests/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import http.client
import importlib.util
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import ssl
import statistics
import string
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
LOAD_CPU = "0"  # wrk and the upstream
PROXY_CPU = "1"  # the proxy under test
TOOLS = ("wrk", "nginx", "taskset")  # taskset only for the pinned (1-worker) runs
NGINX_WORKERS_LINE = "worker_processes 1;"  # what both nginx templates say; --workers N replaces it
INSTALL_HINT = "apt-get install -y wrk nginx"
BODY_PATTERN = b"Hello, world\n"  # 13 bytes: the smallest body is exactly this
PYPROXY_CMD_ENV = "BENCH_PYPROXY_CMD"
WARMUP_SECONDS = 1
READY_TIMEOUT = 15.0
DEPLOY_TIMEOUT = 90.0
STOP_TIMEOUT = 15.0
TARGETS = ("direct", "nginx", "nginx-tuned", "pyproxy", "kamal-proxy")
# The original pyproxy replaces, built from its sources (../shared/anchors/README.md): a baseline column when
# the binary is there, skipped (saying where it looked) when not. GOMAXPROCS=1: one core, as the others
# (GOMAXPROCS=N with --workers N).
KAMAL_PROXY = HERE.parent.parent / "shared" / "anchors" / "kamal-proxy"
DEPLOYED = ("pyproxy", "kamal-proxy")  # deployed through their CLI: the buffered POST row has its own service
# The HTTP/2 rows: h2load (Debian package nghttp2-client) with this many connections, each keeping 1, 10
# or 100 streams in flight (the smallest size; 10 at H2_SIZE too, when it is one of the sizes), over TLS
# to the proxies' HTTPS ports. Skipped when h2load is not installed.
H2LOAD_CONNECTIONS = 16
H2LOAD_STREAMS = (1, 10, 100)
H2_SIZE = 16384
# The baseline is nginx as the issue defines it: 1 worker, upstream keep-alive, default proxy buffering.
# "nginx-tuned" streams through one 256 KiB buffer with no spooling to disk, as pyproxy does: with the
# default 8 x 4 KiB buffers nginx proxies 1 MiB bodies at about half that rate per CPU-second.
NGINX_BUFFERING = {
    "nginx": "",
    "nginx-tuned": "proxy_buffering off; proxy_buffer_size 256k; proxy_buffers 4 256k;",
}
LATENCY_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}
# HTTPS: a throwaway CA (trustme) signs a certificate for this name. wrk sends the URL's host as SNI and
# Host, so the TLS rows request https://bench.test:<port>/ and a wrk script resolves that to 127.0.0.1.
TLS_NAME = "bench.test"
TLS_INSTALL_HINT = ".venv/bin/pip install trustme"
# The POST rows: wrk sends bodies of this size to the upstream's `location = /up` (nginx reads and discards
# them and answers "OK"); pyproxy streams them, or buffers them whole first for a second service mounted at
# BUFFERED_PREFIX (`deploy --buffer-requests`, the default 1 MiB in memory: no file for these).
POST_SIZE = 16384
POST_PATH = "/up"
BUFFERED_PREFIX = "/buffered"
WRK_POST_LUA = """-- bench.py: every request a POST with a body of {size} bytes.
wrk.method = "POST"
wrk.body = string.rep("a", {size})
wrk.headers["Content-Type"] = "application/octet-stream"
"""
WRK_RESOLVE_LUA = """-- bench.py: any host in the URL is 127.0.0.1, so that wrk sends that name
-- as SNI and Host without it being in DNS.
function wrk.resolve(host, service)
   wrk.addrs = wrk.lookup("127.0.0.1", service)
end
"""


class BenchError(Exception):
    """A setup step failed; the message says which and why."""


@dataclass(frozen=True)
class Scenario:
    """One row of the table: a response size, keep-alive or a new connection per request, HTTP or HTTPS."""

    size: int
    close: bool
    tls: bool = False
    http2: bool = False  # measured with h2load instead of wrk (implies tls)
    streams: int = 10  # (http2) streams in flight on each connection
    post: bool = False  # POST bodies of `size` bytes to POST_PATH instead of GETs of that size
    buffered: bool = False  # (POST) pyproxy buffers each request body whole before sending it on

    @property
    def label(self) -> str:
        """Human-readable row name."""
        text = format_size(self.size)
        if self.post:
            return f"POST {text}, {'request buffering' if self.buffered else 'streamed'}"
        if self.http2:
            return f"HTTP/2 (h2load, {self.streams} streams x {H2LOAD_CONNECTIONS} conns) {text}"
        if self.close:
            text = f"new connection per request {text}"
        elif self.tls:
            text = f"keep-alive {text}"
        return f"HTTPS {text}" if self.tls else text

    @property
    def targets(self) -> tuple[str, ...]:
        """Who is measured: the upstream speaks plain HTTP only, so it has no HTTPS rows."""
        return tuple(t for t in TARGETS if t != "direct") if self.tls else TARGETS


@dataclass(frozen=True)
class Endpoint:
    """A server under test: its plain HTTP port, its HTTPS port (None: no HTTPS) and its process group."""

    port: int
    tls_port: int | None
    pgid: int


@dataclass(frozen=True)
class TlsFiles:
    """The throwaway CA and the bench.test certificate chain and key, as PEM files in the temp directory."""

    ca: Path
    cert: Path
    key: Path


@dataclass(frozen=True)
class CpuTimes:
    """CPU seconds a server spent in its own code (user) and in the kernel on its behalf (system)."""

    user: float
    system: float

    def __sub__(self, earlier: CpuTimes) -> CpuTimes:
        return CpuTimes(self.user - earlier.user, self.system - earlier.system)


@dataclass(frozen=True)
class Measurement:
    """What one wrk run reported, plus the CPU time the server under test used meanwhile."""

    rps: float
    p99_ms: float
    requests: int
    errors: int
    cpu: CpuTimes

    @property
    def cpu_seconds(self) -> float:
        return self.cpu.user + self.cpu.system

    @property
    def rps_per_core(self) -> float:
        """Requests per CPU-second of the measured server."""
        return self.requests / self.cpu_seconds if self.cpu_seconds > 0 else float("nan")


@dataclass(frozen=True)
class Summary:
    """Median over the rounds of one (scenario, target) cell."""

    rps: float
    p99_ms: float
    cpu_share: float
    rps_per_core: float
    user_us: float  # CPU microseconds per request in the server's own code
    system_us: float  # and in the kernel: sockets, TCP over loopback, epoll
    errors: int


def format_size(size: int) -> str:
    """13 -> '13 B', 16384 -> '16 KiB', 1048576 -> '1 MiB'."""
    for unit, factor in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= factor and size % factor == 0:
            return f"{size // factor} {unit}"
    return f"{size} B"


def body_for(size: int) -> bytes:
    """The response body served for a given size."""
    return (BODY_PATTERN * (size // len(BODY_PATTERN) + 1))[:size]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tail(path: Path, lines: int = 20) -> str:
    """The last lines of a log file, or a note that it is missing."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"({path.name} not found)"


class Processes:
    """Starts servers in their own process groups and ends every one of them by its PID."""

    def __init__(self) -> None:
        """No process started yet."""
        self._procs: list[subprocess.Popen[bytes]] = []

    def start(
        self, argv: list[str], log: Path, env: dict[str, str] | None = None, stdout: Path | None = None
    ) -> subprocess.Popen[bytes]:
        """Start argv; stderr (and stdout unless given) go to the log file."""
        with open(log, "ab") as err, open(stdout or log, "ab") as out:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env, start_new_session=True
            )
        self._procs.append(proc)
        return proc

    def stop_all(self) -> None:
        """SIGTERM each process group (group id = the started PID), then SIGKILL what is left."""
        for proc in reversed(self._procs):
            stop_group(proc)
        self._procs.clear()


def group_alive(pgid: int) -> bool:
    """Whether any process of the group still exists."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """End the process group that proc leads, including children that outlive their parent."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    while time.monotonic() < deadline:
        proc.poll()
        if proc.returncode is not None and not group_alive(proc.pid):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def group_cpu_seconds(pgid: int) -> float:
    """User + system CPU seconds used so far by the live processes of a process group."""
    times = group_cpu_times(pgid)
    return times.user + times.system


def group_cpu_times(pgid: int) -> CpuTimes:
    """User and system CPU seconds used so far by the live processes of a process group."""
    user = system = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # fields[0] is field 3 (state) of proc(5)
        if int(fields[2]) == pgid:
            user += int(fields[11])
            system += int(fields[12])
    tick = os.sysconf("SC_CLK_TCK")
    return CpuTimes(user / tick, system / tick)


def wait_ready(
    port: int, proc: subprocess.Popen[bytes], name: str, log: Path, extra: Callable[[], bool] = lambda: True
) -> None:
    """Poll until the port accepts connections (and extra() holds); fail if the process exits."""
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"{name} exited with status {proc.returncode}:\n{tail(log)}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            if extra():
                return
        time.sleep(0.02)
    raise BenchError(f"{name} not ready on port {port} after {READY_TIMEOUT:.0f}s:\n{tail(log)}")


def check_body(port: int, size: int, name: str, tls: TlsFiles | None = None) -> None:
    """One GET through the target, to be sure it serves the right body before it is measured.

    With tls, the GET goes over HTTPS as wrk sends it (SNI and Host bench.test, to 127.0.0.1), and the
    certificate must verify against the throwaway CA for that name.
    """
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    scheme, headers = "http", {}
    try:
        if tls is not None:
            scheme, headers = "https", {"Host": f"{TLS_NAME}:{port}"}
            context = ssl.create_default_context(cafile=str(tls.ca))
            conn.sock = context.wrap_socket(
                socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname=TLS_NAME
            )
        conn.request("GET", f"/{size}", headers=headers)
        resp = conn.getresponse()
        body = resp.read()
    except OSError as exc:  # ssl.SSLError included
        raise BenchError(f"{name}: GET {scheme} /{size} failed: {exc}") from exc
    finally:
        conn.close()
    if resp.status != 200 or body != body_for(size):
        raise BenchError(
            f"{name}: GET {scheme} /{size} answered {resp.status} with {len(body)} bytes, "
            f"expected 200 with {size}"
        )


def check_post(port: int, path: str, name: str) -> None:
    """One POST of the POST rows' body through the target: it must answer 200 "OK" (the upstream's /up)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        headers = {"Content-Type": "application/octet-stream"}
        conn.request("POST", path, body=b"a" * POST_SIZE, headers=headers)
        resp = conn.getresponse()
        body = resp.read()
    except OSError as exc:
        raise BenchError(f"{name}: POST {path} failed: {exc}") from exc
    finally:
        conn.close()
    if resp.status != 200 or body != b"OK":
        raise BenchError(f"{name}: POST {path} answered {resp.status} with {body[:80]!r}, expected 200 OK")


def make_tls_files(tmp: Path) -> TlsFiles:
    """A throwaway CA and a certificate for bench.test signed by it (trustme's default key type, ECDSA)."""
    import trustme  # only a test dependency of pyproxy: imported here, after preflight() checked it

    directory = tmp / "tls"
    directory.mkdir(mode=0o755)
    ca = trustme.CA()
    leaf = ca.issue_cert(TLS_NAME)
    files = TlsFiles(ca=directory / "ca.pem", cert=directory / "cert.pem", key=directory / "key.pem")
    ca.cert_pem.write_to_path(str(files.ca))
    files.cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(files.key))
    files.key.chmod(0o600)  # nginx's master (which reads it) and pyproxy run as this user
    return files


def render(template: str, **values: object) -> str:
    """Fill a config template from this directory."""
    text = (HERE / template).read_text()
    return string.Template(text).substitute({k: str(v) for k, v in values.items()})


def pinned(cpu: str | None) -> list[str]:
    """The prefix that pins a command to a CPU, or none (cpu None): the --workers N runs pin nothing, so
    that the proxy's workers, wrk's threads and the upstream's workers share every core as on a host."""
    return ["taskset", "-c", cpu] if cpu is not None else []


def mode_cpu(cpu: str, workers: int) -> str | None:
    """The CPU a process is pinned to in the 1-worker runs; None (not pinned) with more workers."""
    return cpu if workers == 1 else None


def nginx_workers(text: str, workers: int, template: str) -> str:
    """A rendered nginx config with `worker_processes N`: the templates say 1, the pinned runs' one core."""
    if workers == 1:
        return text
    if NGINX_WORKERS_LINE not in text:
        raise BenchError(f"{template} no longer says {NGINX_WORKERS_LINE!r}: update bench.py")
    return text.replace(NGINX_WORKERS_LINE, f"worker_processes {workers};")


def start_nginx(
    procs: Processes,
    tmp: Path,
    name: str,
    template: str,
    cpu: str | None,
    *,
    workers: int = 1,
    **values: object,
) -> tuple[subprocess.Popen[bytes], int]:
    """Start an nginx master (daemon off) from a template with `workers` worker processes, pinned to a CPU
    (cpu None: not pinned); return it and its port."""
    port = free_port()
    conf = tmp / f"{name}.conf"
    temp = tmp / f"{name}-temp"
    temp.mkdir(mode=0o755)
    text = render(template, dir=tmp, temp=temp, port=port, **values)
    conf.write_text(nginx_workers(text, workers, template))
    log = tmp / f"{name}-error.log"
    argv = [*pinned(cpu), "nginx", "-p", str(tmp), "-e", str(log), "-c", str(conf)]
    proc = procs.start(argv, log)
    wait_ready(port, proc, name, log)
    return proc, port


def pyproxy_script() -> list[str]:
    """The pyproxy console script next to this interpreter, else `python -m proxy`."""
    script = Path(sys.executable).parent / "pyproxy"
    return [str(script)] if script.exists() else [sys.executable, "-m", "proxy"]


def start_pyproxy(
    procs: Processes, tmp: Path, upstream_port: int, tls: TlsFiles | None, workers: int = 1
) -> tuple[subprocess.Popen[bytes], Endpoint, str, Callable[[], None] | None]:
    """Start pyproxy on CPU 1 and deploy the upstream (or run $BENCH_PYPROXY_CMD); return proc, ports, cmd
    and what deploys the buffered POST row's service (None for $BENCH_PYPROXY_CMD: it has no deploy step).

    `--workers` is always given: pyproxy's default is every CPU it may use, and the pinned per-core figures
    assume one process. With workers > 1 it is not pinned ($BENCH_PYPROXY_CMD may use {workers}).

    With tls, a second service `bench-tls` serves bench.test over HTTPS from the same upstream. Without,
    only the default service is deployed, as before the HTTPS rows existed: a named host makes pyproxy
    match the Host header of every request, plain HTTP ones included.
    """
    port, tls_port = free_port(), free_port()
    log = tmp / "pyproxy.log"
    custom = os.environ.get(PYPROXY_CMD_ENV)
    if custom:
        argv = [
            part.format(
                python=sys.executable,
                port=port,
                upstream=upstream_port,
                tls_port=tls_port,
                cert=tls.cert if tls else "",
                key=tls.key if tls else "",
                workers=workers,
            )
            for part in shlex.split(custom)
        ]
        proc = procs.start([*pinned(mode_cpu(PROXY_CPU, workers)), *argv], log, stdout=Path(os.devnull))
        wait_ready(port, proc, "pyproxy stand-in", log)
        serves_tls = tls is not None and "{tls_port}" in custom
        if serves_tls:
            wait_ready(tls_port, proc, "pyproxy stand-in (HTTPS)", log)
        endpoint = Endpoint(port, tls_port if serves_tls else None, proc.pid)
        return proc, endpoint, f"{PYPROXY_CMD_ENV}: {shlex.join(argv)}", None

    socket_path = tmp / "pyproxy.sock"
    env = {**os.environ, "PYPROXY_SOCKET": str(socket_path), "XDG_CONFIG_HOME": str(tmp / "config")}
    cli = pyproxy_script()
    argv = [*cli, "run", "--http-port", str(port), "--https-port", str(tls_port), "--bind", "127.0.0.1",
            f"--workers={workers}"]  # fmt: skip
    # The access log (JSON lines on stdout) still costs pyproxy its formatting and write(), but no disk.
    proc = procs.start([*pinned(mode_cpu(PROXY_CPU, workers)), *argv], log, env=env, stdout=Path(os.devnull))
    wait_ready(port, proc, "pyproxy", log, extra=socket_path.exists)
    deploy_buffered = deploy_bench_services(cli, env, upstream_port, tls, log)
    return proc, Endpoint(port, tls_port if tls else None, proc.pid), shlex.join(argv), deploy_buffered


def deploy_bench_services(
    cli: list[str], env: dict[str, str], upstream_port: int, tls: TlsFiles | None, log: Path
) -> Callable[[], None]:
    """Deploy `bench` (any host) and with tls `bench-tls` (bench.test over HTTPS) through a kamal-proxy
    style CLI (pyproxy's or kamal-proxy's); return what deploys the buffered POST row's service."""
    deploy = ["bench", f"--target=127.0.0.1:{upstream_port}", "--health-check-path=/up"]
    pyproxy_deploy(cli, env, deploy, log)
    if tls is not None:
        tls_options = [
            f"--host={TLS_NAME}",
            "--tls",
            f"--tls-certificate-path={tls.cert}",
            f"--tls-private-key-path={tls.key}",
            "--tls-redirect=false",
        ]
        pyproxy_deploy(cli, env, ["bench-tls", *deploy[1:], *tls_options], log)

    def deploy_buffered() -> None:
        """The service of the buffered POST row, deployed only before that row is measured, so that
        every other row measures the setup it always had."""
        buffered = ["bench-buffered", *deploy[1:], f"--path-prefix={BUFFERED_PREFIX}", "--buffer-requests"]
        pyproxy_deploy(cli, env, buffered, log)

    return deploy_buffered


def start_kamal_proxy(
    procs: Processes, tmp: Path, upstream_port: int, tls: TlsFiles | None, workers: int = 1
) -> tuple[Endpoint, Callable[[], None]]:
    """kamal-proxy on CPU 1 with GOMAXPROCS=1 (unpinned with GOMAXPROCS=workers when workers > 1: Go's
    equivalent of N worker processes), deployed as pyproxy is (its CLI takes the same flags).

    It has no bind flag and listens on every address; the traffic stays on loopback. Its access log (a
    JSON line per request on stdout, which it cannot be told not to write) goes to /dev/null.
    """
    port, tls_port = free_port(), free_port()
    socket_path = tmp / "kamal-proxy.sock"
    home = tmp / "kamal-home"  # its state goes to ~/.config/kamal-proxy/ (XDG_CONFIG_HOME is not read)
    home.mkdir()
    env = {**os.environ, "KAMAL_PROXY_SOCKET": str(socket_path), "HOME": str(home)}
    env["GOMAXPROCS"] = str(workers)
    log = tmp / "kamal-proxy.log"
    argv = [
        *pinned(mode_cpu(PROXY_CPU, workers)),
        str(KAMAL_PROXY),
        "run",
        f"--http-port={port}",
        f"--https-port={tls_port}",
    ]
    proc = procs.start(argv, log, env=env, stdout=Path(os.devnull))
    wait_ready(port, proc, "kamal-proxy", log, extra=socket_path.exists)
    deploy_buffered = deploy_bench_services([str(KAMAL_PROXY)], env, upstream_port, tls, log)
    return Endpoint(port, tls_port if tls else None, proc.pid), deploy_buffered


def pyproxy_deploy(cli: list[str], env: dict[str, str], args: list[str], log: Path) -> None:
    """`pyproxy deploy ARGS`, which returns once the target is healthy; BenchError if it fails."""
    deploy = [*cli, "deploy", *args]
    try:
        done = subprocess.run(
            deploy, env=env, capture_output=True, text=True, timeout=DEPLOY_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"pyproxy deploy did not finish in {DEPLOY_TIMEOUT:.0f}s:\n{tail(log)}") from exc
    if done.returncode != 0:
        raise BenchError(
            f"{shlex.join(deploy)} failed ({done.returncode}):\n{done.stdout}{done.stderr}\n{tail(log)}"
        )


def parse_wrk(output: str) -> tuple[float, float, int, int]:
    """Requests/sec, p99 in ms, request count and error count from `wrk --latency` output."""
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.M)
    p99 = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s|m)\s*$", output, re.M)
    count = re.search(r"^\s+(\d+) requests in", output, re.M)
    if not (rps and p99 and count):
        raise BenchError(f"could not parse wrk output:\n{output}")
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", output))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors += int(non2xx.group(1)) if non2xx else 0
    p99_ms = float(p99.group(1)) * LATENCY_UNITS_MS[p99.group(2)]
    return float(rps.group(1)), p99_ms, int(count.group(1)), errors


def run_wrk(
    port: int,
    scenario: Scenario,
    seconds: int,
    connections: int,
    resolve_lua: Path,
    script: Path | None = None,
    path: str | None = None,
    threads: int = 1,
    cpu: str | None = LOAD_CPU,
) -> str:
    """One wrk run with `threads` threads on CPU 0 (cpu None: not pinned), bounded in time; returns its
    output.

    HTTPS runs request https://bench.test:PORT/ so that wrk sends bench.test as SNI and Host (it sends the
    URL's host, even an IP address, as SNI); the resolve_lua script points that name at 127.0.0.1. A plain
    run may have a `script` of its own (thrust_bench.py's changing cookie, the POST body) and `path`.
    """
    argv = [
        *pinned(cpu),
        "wrk",
        "-t",
        str(threads),
        "-c",
        str(connections),
        "-d",
        f"{seconds}s",
        "--latency",
    ]
    if scenario.close:
        argv += ["-H", "Connection: close"]
    if scenario.tls:
        argv += ["-s", str(resolve_lua), f"https://{TLS_NAME}:{port}/{scenario.size}"]
    else:
        argv += ["-s", str(script)] if script is not None else []
        argv.append(f"http://127.0.0.1:{port}{path or f'/{scenario.size}'}")
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30, check=False)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"wrk did not finish: {shlex.join(argv)}") from exc
    if done.returncode != 0:
        raise BenchError(f"wrk failed ({done.returncode}): {shlex.join(argv)}\n{done.stdout}{done.stderr}")
    return done.stdout


def measure(
    endpoint: Endpoint, scenario: Scenario, args: argparse.Namespace, resolve_lua: Path, target: str = ""
) -> Measurement:
    """Warm up for a second, then one measured wrk run with the server's CPU time around it.

    The CPU time is summed over the server's process group: every worker (and pyproxy's control process,
    nginx's master), so that req/CPU-s stays a per-core figure with any number of workers.
    """
    port = endpoint.tls_port if scenario.tls else endpoint.port
    if port is None:
        raise BenchError(f"no HTTPS port for {scenario.label}")
    threads, cpu_set = args.workers, mode_cpu(LOAD_CPU, args.workers)
    if scenario.http2:
        run_h2load(port, scenario, WARMUP_SECONDS, threads, cpu_set)
        cpu_before = group_cpu_times(endpoint.pgid)
        rps, requests, errors = parse_h2load(run_h2load(port, scenario, args.duration, threads, cpu_set))
        cpu = group_cpu_times(endpoint.pgid) - cpu_before
        return Measurement(rps, float("nan"), requests, errors, cpu)
    script = path = None
    if scenario.post:
        script = resolve_lua.with_name("wrk-post.lua")
        path = (BUFFERED_PREFIX if scenario.buffered and target in DEPLOYED else "") + POST_PATH
    load = (resolve_lua, script, path, threads, cpu_set)
    run_wrk(port, scenario, WARMUP_SECONDS, args.connections, *load)
    cpu_before = group_cpu_times(endpoint.pgid)
    output = run_wrk(port, scenario, args.duration, args.connections, *load)
    cpu = group_cpu_times(endpoint.pgid) - cpu_before
    rps, p99_ms, requests, errors = parse_wrk(output)
    return Measurement(rps, p99_ms, requests, errors, cpu)


def run_h2load(
    port: int, scenario: Scenario, seconds: int, threads: int = 1, cpu: str | None = LOAD_CPU
) -> str:
    """One h2load run on CPU 0 (cpu None: not pinned) for `seconds`: HTTP/2 over TLS with SNI and
    :authority bench.test. At most one thread per connection: h2load refuses more."""
    argv = [
        *pinned(cpu), "h2load", "-t", str(min(threads, H2LOAD_CONNECTIONS)),
        "-c", str(H2LOAD_CONNECTIONS), "-m", str(scenario.streams), "-D", str(seconds),
        f"--connect-to=127.0.0.1:{port}", f"https://{TLS_NAME}:{port}/{scenario.size}",
    ]  # fmt: skip
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30, check=False)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"h2load did not finish: {shlex.join(argv)}") from exc
    if done.returncode != 0 or "Application protocol: h2" not in done.stdout:
        raise BenchError(f"h2load failed ({done.returncode}): {shlex.join(argv)}\n{done.stdout}{done.stderr}")
    return done.stdout


def parse_h2load(output: str) -> tuple[float, int, int]:
    """Requests/sec, completed requests and failures (failed, errored, 4xx or 5xx) from h2load's summary."""
    rps = re.search(r"^finished in [^,]+, ([\d.]+) req/s", output, re.M)
    counts = re.search(r"^requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                       r"(\d+) errored", output, re.M)  # fmt: skip
    codes = re.search(r"^status codes: \d+ 2xx, \d+ 3xx, (\d+) 4xx, (\d+) 5xx", output, re.M)
    if not (rps and counts and codes):
        raise BenchError(f"could not parse h2load output:\n{output}")
    done, _, failed, errored = (int(n) for n in counts.groups())
    errors = failed + errored + int(codes.group(1)) + int(codes.group(2))
    return float(rps.group(1)), done, errors


def summarise(runs: list[Measurement], duration: int) -> Summary:
    """Medians over rounds; errors are summed."""
    return Summary(
        rps=statistics.median(m.rps for m in runs),
        p99_ms=statistics.median(m.p99_ms for m in runs),
        cpu_share=statistics.median(m.cpu_seconds / duration for m in runs),
        rps_per_core=statistics.median(m.rps_per_core for m in runs),
        user_us=statistics.median(per_request_us(m.cpu.user, m) for m in runs),
        system_us=statistics.median(per_request_us(m.cpu.system, m) for m in runs),
        errors=sum(m.errors for m in runs),
    )


def per_request_us(seconds: float, run: Measurement) -> float:
    """CPU seconds spread over a run's requests, in microseconds."""
    return seconds / run.requests * 1e6 if run.requests else float("nan")


def fmt_rps(value: float) -> str:
    """Requests per second with thousands separators."""
    return f"{value:,.0f}"


def fmt_ms(value: float) -> str:
    """Milliseconds with two decimals; "-" where the tool reports no percentile (h2load)."""
    return "-" if value != value else f"{value:.2f} ms"


def fmt_us(value: float) -> str:
    """Microseconds with one decimal."""
    return f"{value:.1f} us"


def fmt_ratio(value: float) -> str:
    """A ratio like 0.74x."""
    return f"{value:.2f}x"


def table(headers: list[str], rows: list[list[str]], markdown: bool) -> str:
    """A plain-text table aligned on columns, or a GitHub markdown table."""
    if markdown:
        lines = [headers, ["---"] * len(headers), *rows]
        return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]
    lines = [headers, ["-" * w for w in widths], *rows]
    return "\n".join(
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(cells, widths, strict=True))
        )
        for cells in lines
    )


def report(
    results: dict[tuple[Scenario, str], Summary], scenarios: list[Scenario], markdown: bool, workers: int = 1
) -> str:
    """The throughput/latency table and the per-proxy-core table, pyproxy as a ratio to both nginx setups.

    HTTPS rows have no direct column ("-"): the upstream serves plain HTTP only. kamal-proxy's columns are
    there when it was measured. With workers > 1 the req/s of the first table are wall-clock figures of
    servers that share the cores with wrk and the upstream; the per-core table still counts CPU time, summed
    over each proxy's processes.
    """
    main_rows, core_rows, split_rows = [], [], []
    with_kamal = any(target == "kamal-proxy" for _, target in results)
    for sc in scenarios:
        ngx, tuned, pyp = (results[sc, t] for t in ("nginx", "nginx-tuned", "pyproxy"))
        direct = results.get((sc, "direct"))
        kamal = results.get((sc, "kamal-proxy"))
        main_rows.append(
            [
                sc.label,
                fmt_rps(direct.rps) if direct else "-",
                fmt_rps(ngx.rps),
                fmt_ms(ngx.p99_ms),
                fmt_rps(tuned.rps),
                fmt_rps(pyp.rps),
                fmt_ms(pyp.p99_ms),
                fmt_ratio(pyp.rps / ngx.rps),
                fmt_ratio(pyp.rps / tuned.rps),
                *(
                    [fmt_rps(kamal.rps), fmt_ms(kamal.p99_ms), fmt_ratio(pyp.rps / kamal.rps)]
                    if kamal
                    else []
                ),
            ]
        )
        core_rows.append(
            [
                sc.label,
                fmt_rps(ngx.rps_per_core),
                fmt_rps(tuned.rps_per_core),
                f"{pyp.cpu_share:.0%}",
                fmt_rps(pyp.rps_per_core),
                fmt_ratio(pyp.rps_per_core / ngx.rps_per_core),
                fmt_ratio(pyp.rps_per_core / tuned.rps_per_core),
                *(
                    [
                        f"{kamal.cpu_share:.0%}",
                        fmt_rps(kamal.rps_per_core),
                        fmt_ratio(pyp.rps_per_core / kamal.rps_per_core),
                    ]
                    if kamal
                    else []
                ),
            ]
        )
        split_rows.append(
            [
                sc.label,
                fmt_us(ngx.system_us),
                fmt_us(ngx.user_us),
                fmt_us(pyp.system_us),
                fmt_us(pyp.user_us),
                fmt_us(ngx.system_us + ngx.user_us - pyp.system_us),
                *([fmt_us(kamal.system_us), fmt_us(kamal.user_us)] if kamal else []),
            ]
        )
    main = table(
        [
            "scenario",
            "direct req/s",
            "nginx req/s",
            "nginx p99",
            "nginx-tuned req/s",
            "pyproxy req/s",
            "pyproxy p99",
            "pyproxy/nginx",
            "pyproxy/nginx-tuned",
            *(["kamal-proxy req/s", "kamal-proxy p99", "pyproxy/kamal-proxy"] if with_kamal else []),
        ],
        main_rows,
        markdown,
    )
    core = table(
        [
            "scenario",
            "nginx req/CPU-s",
            "nginx-tuned req/CPU-s",
            "pyproxy CPU",
            "pyproxy req/CPU-s",
            "pyproxy/nginx per core",
            "pyproxy/nginx-tuned per core",
            *(
                ["kamal-proxy CPU", "kamal-proxy req/CPU-s", "pyproxy/kamal-proxy per core"]
                if with_kamal
                else []
            ),
        ],
        core_rows,
        markdown,
    )
    split = table(
        [
            "scenario",
            "nginx kernel",
            "nginx user",
            "pyproxy kernel",
            "pyproxy user",
            "pyproxy user at 1.0x per core",
            *(["kamal-proxy kernel", "kamal-proxy user"] if with_kamal else []),
        ],
        split_rows,
        markdown,
    )
    summed = f", summed over its {workers} workers and its parent; CPU 100% = one core" if workers > 1 else ""
    return (
        f"{main}\n\nPer proxy core (requests per CPU-second the proxy used{summed}):\n\n{core}\n\n"
        "CPU per request, in the kernel and in the proxy's own code (last column: what pyproxy's own code\n"
        "may spend to equal nginx per core, given the kernel time pyproxy was measured with):\n\n"
        f"{split}"
    )


def cpu_model() -> str:
    """The 'model name' line of /proc/cpuinfo."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def tool_version(argv: list[str]) -> str:
    """First line a tool prints about its version."""
    done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    lines = (done.stdout + done.stderr).strip().splitlines()
    return lines[0] if lines else "?"


def preflight(pinned_run: bool = True) -> str | None:
    """Why this machine cannot run the benchmark, or None. Only a pinned run needs taskset, CPUs 0 and 1."""
    tools = TOOLS if pinned_run else tuple(t for t in TOOLS if t != "taskset")
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        return f"missing {', '.join(missing)}; install with: {INSTALL_HINT}"
    if importlib.util.find_spec("trustme") is None:
        return f"missing trustme (in the test extra), for the HTTPS setup; install with: {TLS_INSTALL_HINT}"
    if pinned_run and not {int(LOAD_CPU), int(PROXY_CPU)} <= os.sched_getaffinity(0):
        return f"needs CPUs {LOAD_CPU} and {PROXY_CPU} available (have {sorted(os.sched_getaffinity(0))})"
    return None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=8, help="seconds per measured wrk run (default 8)")
    ap.add_argument("--connections", type=int, default=64, help="wrk connections (default 64)")
    ap.add_argument("--rounds", type=int, default=1, help="interleaved rounds; medians are reported")
    ap.add_argument(
        "--sizes",
        default="13,16384,1048576",
        help="response body sizes in bytes, comma-separated (default 13,16384,1048576)",
    )
    ap.add_argument("--markdown", action="store_true", help="print GitHub markdown tables")
    ap.add_argument("--no-tls", dest="tls", action="store_false", help="skip the HTTPS rows")
    ap.add_argument("--no-post", dest="post", action="store_false", help="skip the POST rows")
    ap.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="1 (default): every proxy 1 worker on CPU 1, wrk + upstream on CPU 0; N > 1: nothing pinned, "
        "N proxy workers (pyproxy --workers, nginx worker_processes, kamal-proxy GOMAXPROCS), an upstream "
        "with N workers, wrk and h2load with N threads",
    )
    args = ap.parse_args(argv)
    try:
        args.sizes = [int(s) for s in args.sizes.split(",")]
    except ValueError:
        ap.error("--sizes takes integers, e.g. 13,16384,1048576")
    if min(args.sizes) < 1 or args.duration < 1 or args.connections < 1 or args.rounds < 1:
        ap.error("sizes, duration, connections and rounds must be positive")
    if args.workers < 1:
        ap.error("--workers must be positive")
    if args.connections < args.workers:
        ap.error("--connections must be at least --workers (wrk gives each thread its own connections)")
    return args


@contextlib.contextmanager
def servers(
    tmp: Path, sizes: list[int], tls: bool, workers: int = 1
) -> Iterator[tuple[dict[str, Endpoint], str, Callable[[], None] | None]]:
    """Start upstream, nginx proxies and pyproxy, each with `workers` workers; yield {target: Endpoint},
    pyproxy's command and what deploys the buffered POST row's service on pyproxy (None when it cannot be
    deployed).

    The nginx proxies always listen for HTTPS too (the template has it); pyproxy does only if tls.
    """
    www = tmp / "www"
    www.mkdir()
    for size in sizes:
        (www / str(size)).write_bytes(body_for(size))
    # nginx workers may run as an unprivileged user: they must be able to read the bodies.
    for path in (tmp, www, *www.iterdir()):
        path.chmod(0o755 if path.is_dir() else 0o644)
    tls_files = make_tls_files(tmp)
    procs = Processes()
    try:
        upstream, up_port = start_nginx(
            procs, tmp, "upstream", "nginx-upstream.conf", mode_cpu(LOAD_CPU, workers), workers=workers
        )
        endpoints = {"direct": Endpoint(up_port, None, upstream.pid)}
        for name, buffering in NGINX_BUFFERING.items():
            tls_port = free_port()
            ngx, ngx_port = start_nginx(
                procs,
                tmp,
                name,
                "nginx-proxy.conf",
                mode_cpu(PROXY_CPU, workers),
                workers=workers,
                upstream_port=up_port,
                buffering=buffering,
                tls_port=tls_port,
                cert=tls_files.cert,
                key=tls_files.key,
            )
            endpoints[name] = Endpoint(ngx_port, tls_port if tls else None, ngx.pid)
        _, endpoints["pyproxy"], pyp_cmd, deploy_buffered = start_pyproxy(
            procs, tmp, up_port, tls_files if tls else None, workers
        )
        deploy_kamal_buffered = None
        if KAMAL_PROXY.exists():
            endpoints["kamal-proxy"], deploy_kamal_buffered = start_kamal_proxy(
                procs, tmp, up_port, tls_files if tls else None, workers
            )
        for name, endpoint in endpoints.items():
            for size in sizes:
                check_body(endpoint.port, size, name)
                if endpoint.tls_port is not None:
                    check_body(endpoint.tls_port, size, f"{name} (HTTPS)", tls_files)
            check_post(endpoint.port, POST_PATH, name)

        def buffered_row() -> None:
            deploy_buffered()
            check_post(endpoints["pyproxy"].port, BUFFERED_PREFIX + POST_PATH, "pyproxy (--buffer-requests)")
            if deploy_kamal_buffered is not None:
                deploy_kamal_buffered()
                check_post(
                    endpoints["kamal-proxy"].port, BUFFERED_PREFIX + POST_PATH, "kamal-proxy (buffered)"
                )

        yield endpoints, pyp_cmd, buffered_row if deploy_buffered is not None else None
    finally:
        procs.stop_all()


def mode_line(workers: int) -> str:
    """Which placement ran, for the header: the two modes' figures are not comparable req/s for req/s."""
    if workers == 1:
        return f"mode: 1 worker, pinned: proxies on CPU {PROXY_CPU}, wrk + upstream on CPU {LOAD_CPU}"
    return (
        f"mode: {workers} workers, unpinned: each proxy with {workers} workers (nginx worker_processes "
        f"{workers}, pyproxy --workers={workers}, kamal-proxy GOMAXPROCS={workers}), the upstream with "
        f"{workers} workers, wrk (and h2load) with {workers} threads, all sharing the cores"
    )


def header(args: argparse.Namespace, pyproxy_cmd: str) -> str:
    """The lines above the tables: when, on what, in which mode, with which tools and commands."""
    kamal = (
        f"kamal-proxy: {KAMAL_PROXY} (GOMAXPROCS={args.workers})"
        if KAMAL_PROXY.exists()
        else f"kamal-proxy: not found at {KAMAL_PROXY}: no kamal-proxy columns"
    )
    return "\n".join(
        [
            f"date: {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}",
            f"cpu: {cpu_model()} ({os.cpu_count()} cores)",
            mode_line(args.workers),
            f"wrk -t {args.workers} -c {args.connections} -d {args.duration}s, {args.rounds} round(s), "
            f"medians; {tool_version(['nginx', '-v'])}",
            f"pyproxy: {pyproxy_cmd}",
            f"{kamal}\n",
        ]
    )


def interrupt(signum: int, frame: object) -> None:
    """Turn SIGTERM into KeyboardInterrupt so that the servers are stopped on the way out."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Run every scenario against every target and print the tables."""
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, interrupt)
    problem = preflight(pinned_run=args.workers == 1)
    if problem:
        print(f"bench.py: {problem}", file=sys.stderr)
        return 2
    smallest = min(args.sizes)
    scenarios = [Scenario(size, close=False) for size in args.sizes] + [Scenario(smallest, close=True)]
    tmp = Path(tempfile.mkdtemp(prefix="pyproxy-bench-"))
    resolve_lua = tmp / "wrk-resolve.lua"
    try:
        resolve_lua.write_text(WRK_RESOLVE_LUA)
        resolve_lua.with_name("wrk-post.lua").write_text(WRK_POST_LUA.format(size=POST_SIZE))
        with servers(tmp, args.sizes, args.tls, args.workers) as (endpoints, pyproxy_cmd, deploy_buffered):
            if args.tls and endpoints["pyproxy"].tls_port is None:
                print(f"bench.py: {PYPROXY_CMD_ENV} has no {{tls_port}}: no HTTPS rows", file=sys.stderr)
            elif args.tls:
                scenarios += [Scenario(smallest, close=close, tls=True) for close in (False, True)]
                if shutil.which("h2load"):
                    h2 = [(smallest, streams) for streams in H2LOAD_STREAMS]
                    h2 += [(H2_SIZE, 10)] if H2_SIZE in args.sizes and smallest != H2_SIZE else []
                    scenarios += [Scenario(size, False, True, http2=True, streams=n) for size, n in h2]
                else:
                    print("bench.py: no h2load (apt install nghttp2-client): no HTTP/2 rows", file=sys.stderr)
            if args.post:
                scenarios.append(Scenario(POST_SIZE, close=False, post=True))
                if deploy_buffered is None:
                    print(f"bench.py: {PYPROXY_CMD_ENV}: no request-buffering row", file=sys.stderr)
                else:
                    scenarios.append(Scenario(POST_SIZE, close=False, post=True, buffered=True))
            runs: dict[tuple[Scenario, str], list[Measurement]] = {
                (sc, t): [] for sc in scenarios for t in sc.targets if t in endpoints
            }
            for sc in scenarios:
                if sc.buffered:
                    deploy_buffered()  # last, so that no other row measures a second service
                for rnd in range(1, args.rounds + 1):
                    for target in (t for t in sc.targets if t in endpoints):
                        m = measure(endpoints[target], sc, args, resolve_lua, target)
                        runs[sc, target].append(m)
                        errors = f", {m.errors} ERRORS" if m.errors else ""
                        print(
                            f"  {sc.label:<38} round {rnd}  {target:<11} {fmt_rps(m.rps):>9} req/s  "
                            f"p99 {fmt_ms(m.p99_ms):>10}  cpu {m.cpu_seconds / args.duration:4.0%}{errors}",
                            file=sys.stderr,
                            flush=True,
                        )
    except BenchError as exc:
        print(f"bench.py: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench.py: interrupted; servers stopped", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    results = {key: summarise(ms, args.duration) for key, ms in runs.items()}
    print(header(args, pyproxy_cmd))
    print(report(results, scenarios, args.markdown, args.workers))
    failed = {key: s.errors for key, s in results.items() if s.errors}
    for (sc, target), count in failed.items():
        print(f"WARNING: {target} / {sc.label}: {count} socket errors or non-2xx responses", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
