"""`pythrust`: run an app behind the accelerator, or serve a directory. Configuration is by
environment only, as thruster.

`pythrust serve DIR` is the static server; any other arguments are the app's command (a program
that is itself named `serve` can be started by its path, e.g. `./serve`).
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Coroutine, Sequence
from typing import Any

from thruster.app import serve, serve_directory
from thruster.config import ConfigError, load


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        print("ERROR: missing upstream command")  # thruster's message, on stdout, exit 1
        return 1
    try:
        config = load()
    except ConfigError as exc:
        print(f"pythrust: {exc}", file=sys.stderr)
        return 2
    if args[0] == "serve":
        if len(args) != 2 or not os.path.isdir(args[1]):
            print("pythrust serve: expected one argument, the directory to serve", file=sys.stderr)
            return 2
        return _run(serve_directory(args[1], config))
    return _run(serve(args, config))


def _run(main: Coroutine[Any, Any, int]) -> int:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)
