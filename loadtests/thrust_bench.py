"""pythrust against nginx serving the same files: X-Sendfile through pythrust, and `pythrust serve`.

Every row is measured in the same run against nginx serving the file itself (1 worker, sendfile,
keep-alive, access log off), on the same CPU, and reported per CPU-second each server used. The
X-Sendfile rows put an app in front of the file: nginx on the load CPU answering an empty 200 with
`X-Sendfile: <file>` and `Cache-Control: public, max-age=3600`, as an app serving stored files does, so
after the first request pythrust answers from its cache and the app is not asked again.

wrk sends the same request bytes again and again, which pythrust answers from the answer it kept for
them (proxy/http/replay.py), as browsers repeat theirs for an asset. The last rows show the other
case: each request with a cookie of its own, so every one is parsed and looked up.

The pass-through rows measure what pythrust adds to a request it only relays: pythrust in front of an
app (nginx from nginx-upstream.conf on the load CPU) whose 13 B and 16 KiB answers have no
Cache-Control, so the cache does not keep them, and no X-Sendfile, to a client (wrk) that sends no
Accept-Encoding, so nothing is compressed; beside pyproxy deployed to that same app. Both on the
proxy CPU, per CPU-second of the proxy's own process.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import sys
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path

from bench import (
    LOAD_CPU,
    PROXY_CPU,
    BenchError,
    Processes,
    Scenario,
    body_for,
    check_body,
    fmt_ratio,
    fmt_rps,
    format_size,
    free_port,
    group_cpu_seconds,
    interrupt,
    parse_wrk,
    preflight,
    render,
    run_wrk,
    start_nginx,
    start_pyproxy,
    table,
    wait_ready,
)

TARGETS = ("nginx", "pythrust X-Sendfile", "pythrust serve", "thrust X-Sendfile")
# The original pythrust replaces (../shared/anchors/README.md): a baseline row beside pythrust X-Sendfile
# when the binary is there (it has no `serve`), skipped when not.
THRUST = Path(__file__).resolve().parents[2] / "shared" / "anchors" / "thrust"
GOALS = {10240: 1.0, 1048576: 0.7}  # the targets, per core against nginx
DISTINCT = "each request new"  # the rows where every request carries a cookie of its own
# (label, file size, whether each request is new)
SCENARIOS = [(format_size(size), size, False) for size in GOALS] + [(f"10 KiB, {DISTINCT}", 10240, True)]
PASS_THROUGH_SIZES = (13, 16384)
PASS_THROUGH_TARGETS = ("pyproxy", "pythrust")
PASS_THROUGH_GOAL = 0.8  # the target: pythrust per core against pyproxy
PASS_THROUGH_ROWS = [(f"pass-through {format_size(size)}", size, False) for size in PASS_THROUGH_SIZES]
NEW_COOKIE_LUA = """
counter = 0
request = function()
  counter = counter + 1
  return wrk.format(nil, nil, {["Cookie"] = "session=" .. counter})
end
"""


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process (pythrust alone, not the app it runs)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_pythrust(
    procs: Processes, tmp: Path, name: str, command: list[str], app_port: int | None = None
) -> tuple[int, Callable[[], float]]:
    """pythrust on the proxy CPU (its access log to /dev/null), and given `app_port` its app up too;
    returns its port and its CPU clock."""
    port = free_port()
    env = {**os.environ, "HTTP_PORT": str(port), "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    log = tmp / f"{name}.log"
    argv = ["taskset", "-c", PROXY_CPU, sys.executable, "-m", "thruster", *command]
    proc = procs.start(argv, log, env, stdout=Path(os.devnull))
    wait_ready(port, proc, name, log)
    if app_port is not None:
        wait_ready(app_port, proc, f"{name}'s app", log)
    return port, partial(process_cpu_seconds, proc.pid)


def start_thrust(procs: Processes, tmp: Path, command: list[str]) -> tuple[int, Callable[[], float]]:
    """thrust (the Go original) on the proxy CPU in front of the same app, as pythrust is started."""
    port = free_port()
    env = {**os.environ, "HTTP_PORT": str(port)}
    log = tmp / "thrust.log"
    proc = procs.start(["taskset", "-c", PROXY_CPU, str(THRUST), *command], log, env, stdout=Path(os.devnull))
    wait_ready(port, proc, "thrust", log)
    wait_ready(int(env["TARGET_PORT"]), proc, "thrust's app", log)  # thrust answers 502 until it is up
    return port, partial(process_cpu_seconds, proc.pid)


def sendfile_app_command(tmp: Path, name: str = "app") -> list[str]:
    """The app pythrust (or thrust) starts: nginx answering with X-Sendfile, pinned to the load CPU."""
    app_port = free_port()
    temp = tmp / f"{name}-temp"
    temp.mkdir()
    conf = tmp / f"{name}.conf"
    conf.write_text(render("nginx-sendfile-app.conf", dir=tmp, temp=temp, port=app_port))
    os.environ["TARGET_PORT"] = str(app_port)
    return ["taskset", "-c", LOAD_CPU, "nginx", "-p", str(tmp), "-e", str(tmp / "app.log"), "-c", str(conf)]


def pass_through_app_command(tmp: Path) -> tuple[list[str], int]:
    """The app of the pass-through rows and its port: nginx serving the bodies with no Cache-Control
    (nothing pythrust may store) and no X-Sendfile, pinned to the load CPU."""
    app_dir = tmp / "pass-through"
    temp = app_dir / "temp"
    www = app_dir / "www"
    www.mkdir(parents=True)
    temp.mkdir()
    for size in PASS_THROUGH_SIZES:
        (www / str(size)).write_bytes(body_for(size))
    for path in (tmp, app_dir, www, *www.iterdir()):  # nginx's worker reads them as another user
        path.chmod(0o755 if path.is_dir() else 0o644)
    port = free_port()
    conf = app_dir / "app.conf"
    conf.write_text(render("nginx-upstream.conf", dir=app_dir, temp=temp, port=port))
    argv = ["taskset", "-c", LOAD_CPU, "nginx", "-p", str(app_dir), "-e", str(app_dir / "app.log")]
    return [*argv, "-c", str(conf)], port


def start_pass_through(procs: Processes, tmp: Path) -> dict[str, tuple[int, Callable[[], float]]]:
    """pythrust in front of the pass-through app, and pyproxy deployed to the same app."""
    command, app_port = pass_through_app_command(tmp)
    os.environ["TARGET_PORT"] = str(app_port)
    pythrust = start_pythrust(procs, tmp, "pythrust-pass-through", command, app_port)
    _, pyproxy, _, _ = start_pyproxy(procs, tmp, app_port, None)
    return {"pyproxy": (pyproxy.port, partial(group_cpu_seconds, pyproxy.pgid)), "pythrust": pythrust}


def measure_rounds(
    rows: list[tuple[str, int, bool]],
    endpoints: dict[str, tuple[int, Callable[[], float]]],
    args: argparse.Namespace,
    scripts: tuple[Path, Path],
    runs: dict[tuple[str, str], list[tuple[float, float]]],
) -> None:
    """Every row, `args.rounds` times, the endpoints interleaved within each round."""
    lua, new_cookie = scripts
    for label, size, distinct in rows:
        for rnd in range(1, args.rounds + 1):
            for target, (port, cpu_clock) in endpoints.items():
                rps, per_core = measure(port, cpu_clock, size, args, lua, new_cookie if distinct else None)
                runs.setdefault((label, target), []).append((rps, per_core))
                print(
                    f"  {label:<7} round {rnd}  {target:<20} {fmt_rps(rps):>9} req/s  "
                    f"{fmt_rps(per_core):>9} req/CPU-s",
                    file=sys.stderr,
                    flush=True,
                )


def measure(
    port: int,
    cpu_clock: Callable[[], float],
    size: int,
    args: argparse.Namespace,
    lua: Path,
    script: Path | None,
) -> tuple[float, float]:
    """req/s and requests per CPU-second of the server, after a one-second warm-up."""
    scenario = Scenario(size, close=False)
    run_wrk(port, scenario, 1, args.connections, lua, script)
    before = cpu_clock()
    output = run_wrk(port, scenario, args.duration, args.connections, lua, script)
    rps, _, requests, errors = parse_wrk(output)
    cpu = cpu_clock() - before
    if errors:
        raise BenchError(f"{errors} errors or non-2xx responses on port {port}")
    return rps, requests / cpu if cpu else float("nan")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=5, help="seconds per measured wrk run (default 5)")
    ap.add_argument("--connections", type=int, default=64, help="wrk connections (default 64)")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds; medians are reported")
    ap.add_argument("--markdown", action="store_true", help="print GitHub markdown tables")
    ap.add_argument(
        "--only",
        choices=("files", "pass-through"),
        help="only the file rows, or only the pass-through rows",
    )
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, interrupt)
    problem = preflight()
    if problem:
        print(f"thrust_bench.py: {problem}", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="pythrust-bench-"))
    lua = tmp / "none.lua"
    lua.write_text("")
    new_cookie = tmp / "new-cookie.lua"
    new_cookie.write_text(NEW_COOKIE_LUA)
    procs = Processes()
    runs: dict[tuple[str, str], list[tuple[float, float]]] = {}
    try:
        if args.only != "pass-through":
            measure_rounds(SCENARIOS, start_file_servers(procs, tmp), args, (lua, new_cookie), runs)
        if args.only != "files":
            endpoints = start_pass_through(procs, tmp)
            for name, (port, _) in endpoints.items():
                for size in PASS_THROUGH_SIZES:
                    check_body(port, size, name)
            measure_rounds(PASS_THROUGH_ROWS, endpoints, args, (lua, new_cookie), runs)
    except BenchError as exc:
        print(f"thrust_bench.py: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("thrust_bench.py: interrupted; servers stopped", file=sys.stderr)
        return 130
    finally:
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
    if args.only != "pass-through":
        print(report(runs, args.markdown))
    if args.only != "files":
        print(pass_through_report(runs, args.markdown))
    return 0


def start_file_servers(procs: Processes, tmp: Path) -> dict[str, tuple[int, Callable[[], float]]]:
    """nginx serving the files, pythrust X-Sendfile and serve (and thrust, when present) in front of them."""
    www = tmp / "www"
    www.mkdir()
    for size in GOALS:
        (www / str(size)).write_bytes(body_for(size))
    for path in (tmp, www, *www.iterdir()):
        path.chmod(0o755 if path.is_dir() else 0o644)
    nginx, nginx_port = start_nginx(procs, tmp, "static", "nginx-upstream.conf", PROXY_CPU)
    endpoints = {
        "nginx": (nginx_port, partial(group_cpu_seconds, nginx.pid)),  # master and worker
        "pythrust X-Sendfile": start_pythrust(procs, tmp, "pythrust-sendfile", sendfile_app_command(tmp)),
        "pythrust serve": start_pythrust(procs, tmp, "pythrust-serve", ["serve", str(www)]),
    }
    if THRUST.exists():
        endpoints["thrust X-Sendfile"] = start_thrust(procs, tmp, sendfile_app_command(tmp, "thrust-app"))
    else:
        print(f"thrust_bench.py: no thrust at {THRUST}: no thrust rows", file=sys.stderr)
    for name, (port, _) in endpoints.items():
        for size in GOALS:
            check_body(port, size, name)
    return endpoints


def pass_through_report(runs: dict[tuple[str, str], list[tuple[float, float]]], markdown: bool) -> str:
    """One row per size: pyproxy and pythrust req/s and per CPU-second, pythrust's ratio per core."""
    rows = []
    for label, _, _ in PASS_THROUGH_ROWS:
        (py_rps, py_core), (thrust_rps, thrust_core) = (
            (statistics.median(v) for v in zip(*runs[label, target], strict=True))
            for target in PASS_THROUGH_TARGETS
        )
        rows.append(
            [
                label,
                fmt_rps(py_rps),
                fmt_rps(py_core),
                fmt_rps(thrust_rps),
                fmt_rps(thrust_core),
                fmt_ratio(thrust_core / py_core),
                f">= {PASS_THROUGH_GOAL:.1f}x",
            ]
        )
    headers = [
        "scenario",
        "pyproxy req/s",
        "pyproxy req/CPU-s",
        "pythrust req/s",
        "pythrust req/CPU-s",
        "pythrust/pyproxy per core",
        "goal",
    ]
    return table(headers, rows, markdown)


def report(runs: dict[tuple[str, str], list[tuple[float, float]]], markdown: bool) -> str:
    """One row per (scenario, pythrust mode): req/s and per-core ratios to nginx, and the goal."""
    rows = []
    for label, size, distinct in SCENARIOS:
        goal = "-" if distinct else f">= {GOALS[size]:.1f}x"
        ngx_rps, ngx_core = (statistics.median(v) for v in zip(*runs[label, "nginx"], strict=True))
        for target in (t for t in TARGETS[1:] if runs[label, t]):
            rps, core = (statistics.median(v) for v in zip(*runs[label, target], strict=True))
            rows.append(
                [
                    f"{target} {label}",
                    fmt_rps(ngx_rps),
                    fmt_rps(ngx_core),
                    fmt_rps(rps),
                    fmt_rps(core),
                    fmt_ratio(core / ngx_core),
                    "-" if target.startswith("thrust") else goal,  # the baseline has no goal
                ]
            )
    headers = [
        "scenario",
        "nginx req/s",
        "nginx req/CPU-s",
        "req/s",
        "req/CPU-s",
        "per core vs nginx",
        "goal",
    ]
    return table(headers, rows, markdown)


if __name__ == "__main__":
    sys.exit(main())
