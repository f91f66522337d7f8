"""`pythrust`: run an app behind the accelerator. Configuration is by environment only, as thruster."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence

from thruster.app import serve
from thruster.config import load


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        print("ERROR: missing upstream command")  # thruster's message, on stdout, exit 1
        return 1
    config = load()
    try:
        import uvloop
    except ImportError:
        return asyncio.run(serve(args, config))
    return uvloop.run(serve(args, config))
