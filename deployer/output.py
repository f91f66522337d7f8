"""What pydeploy prints: each step on each host with its time, the commands and their output with -v.

In a terminal (and without -v or -q) a live table shows every host's steps as they run and end; elsewhere
(CI, a pipe) each step is one plain line when it ends. Every line goes through `redact`, so a secret never
reaches the screen or a log even if a command echoes it.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from rich.console import Console
from rich.live import Live
from rich.table import Table

from deployer.remote import Completed


@dataclass
class StepTime:
    host: str
    step: str
    seconds: float


@dataclass
class Output:
    redact: Callable[[str], str]
    verbose: bool = False
    quiet: bool = False
    times: list[StepTime] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.console = Console(highlight=False, soft_wrap=True) if sys.stdout.isatty() else None
        self.live: Live | None = None
        self.states: dict[tuple[str, str], str] = {}

    def start_live(self) -> None:
        """The live table, in a terminal only (a pipe or CI gets the plain lines)."""
        if self.console is not None and not self.verbose and not self.quiet:
            self.live = Live(self._table(), console=self.console, refresh_per_second=8, transient=False)
            self.live.start()

    def stop_live(self) -> None:
        if self.live is not None:
            self.live.update(self._table())
            self.live.stop()
            self.live = None

    def _table(self) -> Table:
        table = Table(box=None, show_header=False, pad_edge=False)
        for (host, step), state in self.states.items():
            style = "red" if state.startswith("FAILED") else "green" if state.startswith("done") else "yellow"
            table.add_row(host, step, state, style=style)
        return table

    def _state(self, host: str, step: str, state: str) -> None:
        self.states[host, step] = state
        if self.live is not None:
            self.live.update(self._table())

    def line(self, text: str, style: str = "") -> None:
        text = self.redact(text)
        if self.console is not None:
            self.console.print(text, style=style or None, markup=False)
        else:
            print(text, flush=True)

    def info(self, text: str) -> None:
        if not self.quiet:
            self.line(text)

    def error(self, text: str) -> None:
        text = self.redact(text)
        print(text, file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def step(self, host: str, step: str) -> Iterator[None]:
        """Time a step on a host; one line when it ends, saying how."""
        started = time.monotonic()
        self._state(host, step, "running")
        try:
            yield
        except BaseException:
            failed = f"FAILED after {time.monotonic() - started:.1f}s"
            self._state(host, step, failed)
            if self.live is None:
                self.info(f"  {host:<22} {step:<28} {failed}")
            raise
        seconds = time.monotonic() - started
        self.times.append(StepTime(host, step, seconds))
        self._state(host, step, f"done in {seconds:.1f}s")
        if self.live is None and not self.quiet:
            self.line(f"  {host:<22} {step:<28} done in {seconds:.1f}s", "green")

    def command(self, host: str, command: str, completed: Completed) -> None:
        """With -v: every remote command and what it printed."""
        if self.verbose:
            self.line(f"  {host} $ {command}", "dim")
            # Redacted whole before it is split: a secret may span lines.
            for text in self.redact(completed.output).splitlines():
                self.line(f"  {host}   {text}", "dim")

    def summary(self) -> None:
        """The time each step took (the slowest host's: hosts run in parallel), and the total."""
        if self.quiet or not self.times:
            return
        slowest: dict[str, float] = {}
        for item in self.times:
            slowest[item.step] = max(slowest.get(item.step, 0.0), item.seconds)
        width = max(len(step) for step in slowest)
        self.line("Step times (slowest host):")
        for step, seconds in slowest.items():
            self.line(f"  {step:<{width}}  {seconds:6.1f}s")
