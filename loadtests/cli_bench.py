"""How long one admin command takes, start to exit: `pyproxy deploy` beside `python -c pass` and kamal-proxy.

Kamal runs one `kamal-proxy deploy` per role per host per deploy, so the time from starting the command to
its exit is part of every deploy. This starts `pyproxy run` (and, when ../shared/anchors/kamal-proxy is
there, kamal-proxy's own `run`) on loopback with a healthy upstream (`python -m http.server`, /up answers
200), then times N runs of each command, interleaved, wall clock from spawn to exit, and reports the median
and p90 with ratios to `python -c pass` (the interpreter's own start-up) and to kamal-proxy's `deploy`.

Python modules are run from cached bytecode, as a pip-installed pyproxy is (PYTHONPYCACHEPREFIX in the temp
dir, warmed by one untimed run); the `no bytecode cache` row is the same deploy with
PYTHONDONTWRITEBYTECODE=1, as in this repository's dev environment, where every module is compiled again at
each start. Last, the top-level imports of one deploy (`python -X importtime`, cumulative) show where its
start-up goes. Bounded: --max-seconds for the timed runs, 30 s for any one command.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import (
    BenchError,
    Processes,
    fmt_ratio,
    free_port,
    interrupt,
    pyproxy_script,
    table,
    tail,
    wait_ready,
)

ROOT = Path(__file__).resolve().parent.parent
KAMAL_PROXY = ROOT.parent / "shared" / "anchors" / "kamal-proxy"
TARGET_MS = 80.0  # the figure for a deploy to a healthy target, start to exit
COMMAND_TIMEOUT = 30.0
TOP_IMPORTS = 8


def python_env(tmp: Path, cached: bool) -> dict[str, str]:
    """This environment, with bytecode cached in the temp dir (as installed) or compiled at every start."""
    env = {
        k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPROFILEIMPORTTIME")
    }
    if cached:
        env["PYTHONPYCACHEPREFIX"] = str(tmp / "pycache")
    else:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def run_once(argv: list[str], env: dict[str, str]) -> float:
    """Seconds from spawn to exit; BenchError if the command fails."""
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise BenchError(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return elapsed


def start_pyproxy(procs: Processes, tmp: Path, env: dict[str, str]) -> dict[str, str]:
    """`pyproxy run` on loopback; the variables its admin commands need to find it."""
    admin = {"PYPROXY_SOCKET": str(tmp / "pyproxy.sock"), "XDG_CONFIG_HOME": str(tmp / "pyproxy-config")}
    port, log = free_port(), tmp / "pyproxy.log"
    argv = [
        *pyproxy_script(),
        "run",
        f"--http-port={port}",
        f"--https-port={free_port()}",
        "--bind=127.0.0.1",
    ]
    proc = procs.start(argv, log, env=env | admin)
    wait_ready(port, proc, "pyproxy", log, extra=(tmp / "pyproxy.sock").exists)
    return admin


def start_kamal_proxy(procs: Processes, tmp: Path) -> dict[str, str]:
    """kamal-proxy's own `run` (it listens on every address: free ports, loopback traffic only)."""
    sock = tmp / "kamal-proxy.sock"
    home = tmp / "kamal-home"  # its state goes to ~/.config/kamal-proxy/ (XDG_CONFIG_HOME is not read)
    home.mkdir()
    env = {**os.environ, "KAMAL_PROXY_SOCKET": str(sock), "HOME": str(home)}
    port, log = free_port(), tmp / "kamal-proxy.log"
    argv = [str(KAMAL_PROXY), "run", f"--http-port={port}", f"--https-port={free_port()}"]
    proc = procs.start(argv, log, env=env)
    wait_ready(port, proc, "kamal-proxy", log, extra=sock.exists)
    return env


def top_imports(argv: list[str], env: dict[str, str]) -> list[tuple[int, str]]:
    """The top-level modules one run imports, with their cumulative import time in microseconds, largest
    first (`-X importtime` nests a module's own imports under it, one more space of indent each)."""
    done = subprocess.run(
        argv,
        env={**env, "PYTHONPROFILEIMPORTTIME": "1"},
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
    )
    rows = []
    for line in done.stderr.splitlines():
        if not line.startswith("import time:"):
            continue
        _, cumulative, name = line.split("|")
        if cumulative.strip().isdigit() and not name.startswith("  "):
            rows.append((int(cumulative), name.strip()))
    return sorted(rows, reverse=True)[:TOP_IMPORTS]


def p90(values: list[float]) -> float:
    if len(values) < 2:  # quantiles needs two; one run (or --max-seconds cut it short) is its own p90
        return values[0]
    return statistics.quantiles(values, n=10, method="inclusive")[-1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=20, help="timed runs of each command (default 20)")
    ap.add_argument(
        "--max-seconds", type=float, default=120.0, help="stop timing after this long (default 120)"
    )
    ap.add_argument("--markdown", action="store_true", help="print a GitHub markdown table")
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, interrupt)
    tmp = Path(tempfile.mkdtemp(prefix="pyproxy-cli-bench-"))
    procs = Processes()
    try:
        www = tmp / "www"
        www.mkdir()
        (www / "up").write_text("OK\n")
        upstream = free_port()
        up_log = tmp / "upstream.log"
        proc = procs.start(
            [sys.executable, "-m", "http.server", str(upstream), "--bind=127.0.0.1", f"--directory={www}"],
            up_log,
        )
        wait_ready(upstream, proc, "upstream", up_log)
        cached, uncached = python_env(tmp, cached=True), python_env(tmp, cached=False)
        admin = start_pyproxy(procs, tmp, cached)
        cli = pyproxy_script()
        deploy = ["deploy", "web", f"--target=127.0.0.1:{upstream}"]
        commands: dict[str, tuple[list[str], dict[str, str]]] = {
            "python -c pass": ([sys.executable, "-c", "pass"], cached),
            "pyproxy deploy": ([*cli, *deploy], cached | admin),
            "pyproxy deploy, no bytecode cache": ([*cli, *deploy], uncached | admin),
            "pyproxy list": ([*cli, "list"], cached | admin),
        }
        if KAMAL_PROXY.exists():
            kamal_env = start_kamal_proxy(procs, tmp)
            commands["kamal-proxy deploy"] = ([str(KAMAL_PROXY), *deploy], kamal_env)
            commands["kamal-proxy list"] = ([str(KAMAL_PROXY), "list"], kamal_env)
        else:
            print(f"cli_bench.py: {KAMAL_PROXY} not found: no kamal-proxy rows", file=sys.stderr)
        for argv_, env in commands.values():
            run_once(argv_, env)  # untimed: fills the bytecode cache, deploys the service once
        times: dict[str, list[float]] = {name: [] for name in commands}
        deadline = time.monotonic() + args.max_seconds
        for _ in range(args.runs):
            if time.monotonic() > deadline:
                print(f"cli_bench.py: stopped at {args.max_seconds:.0f}s", file=sys.stderr)
                break
            for name, (argv_, env) in commands.items():
                times[name].append(run_once(argv_, env) * 1000)
        imports = top_imports([*cli, *deploy], cached | admin)
    except BenchError as exc:
        print(f"cli_bench.py: {exc}\n{tail(tmp / 'pyproxy.log')}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("cli_bench.py: interrupted; servers stopped", file=sys.stderr)
        return 130
    finally:
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
    print(report(times, args.markdown))
    print(f"\nTop-level imports of one `pyproxy deploy` (-X importtime, cumulative, {' '.join(cli)}):")
    for micros, name in imports:
        print(f"  {micros / 1000:6.1f} ms  {name}")
    return 0


def report(times: dict[str, list[float]], markdown: bool) -> str:
    python = statistics.median(times["python -c pass"])
    kamal = times.get("kamal-proxy deploy")
    kamal_median = statistics.median(kamal) if kamal else None
    rows = []
    for name, values in times.items():
        median = statistics.median(values)
        rows.append(
            [
                name,
                str(len(values)),
                f"{median:.1f} ms",
                f"{p90(values):.1f} ms",
                fmt_ratio(median / python),
                fmt_ratio(median / kamal_median) if kamal_median else "-",
            ]
        )
    headers = ["command", "runs", "median", "p90", "/ python -c pass", "/ kamal-proxy deploy"]
    deploy = statistics.median(times["pyproxy deploy"])
    verdict = f"pyproxy deploy median {deploy:.1f} ms: target {TARGET_MS:.0f} ms "
    verdict += "met" if deploy < TARGET_MS else "MISSED"
    return f"{table(headers, rows, markdown)}\n\n{verdict}"


if __name__ == "__main__":
    sys.exit(main())
