"""What pydeploy prints: one line per step per host with its time, the commands and their output with -v.

In a terminal the lines are coloured with rich; elsewhere (CI, a pipe) they are plain text. Every line
goes through `redact`, so a secret never reaches the screen or a log even if a command echoes it.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from rich.console import Console

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
        try:
            yield
        except BaseException:
            self.info(f"  {host:<22} {step:<28} FAILED after {time.monotonic() - started:.1f}s")
            raise
        seconds = time.monotonic() - started
        self.times.append(StepTime(host, step, seconds))
        if not self.quiet:
            self.line(f"  {host:<22} {step:<28} done in {seconds:.1f}s", "green")

    def command(self, host: str, command: str, completed: Completed) -> None:
        """With -v: every remote command and what it printed."""
        if self.verbose:
            self.line(f"  {host} $ {command}", "dim")
            for text in completed.output.splitlines():
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
