"""Command-line flag parsing that behaves like kamal-proxy's cobra/pflag.

Kamal drives the proxy as `deploy <svc> --flag="value" ...`, so flag syntax has to match pflag:
Go durations, Go booleans, repeatable comma-separated lists, bools that never take the next
argument, env-derived defaults and one-line errors.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NoReturn

_NANOSECONDS = {
    "ns": 1,
    "us": 10**3,
    "µs": 10**3,
    "μs": 10**3,
    "ms": 10**6,
    "s": 10**9,
    "m": 60 * 10**9,
    "h": 3600 * 10**9,
}
_DURATION_PART = r"([0-9]+\.?[0-9]*|\.[0-9]+)(ns|us|µs|μs|ms|s|m|h)"
_DURATION = re.compile(f"(?:{_DURATION_PART})+")
_PART = re.compile(_DURATION_PART)
_INT = re.compile(r"[+-]?[0-9]+")
_BOOLS = dict.fromkeys(("1", "t", "T", "TRUE", "true", "True"), True) | dict.fromkeys(
    ("0", "f", "F", "FALSE", "false", "False"), False
)


def parse_duration(text: str) -> float:
    """Go `time.ParseDuration` syntax ("1m30s", "500ms", ".5s") in seconds; negatives are rejected."""
    body = text.removeprefix("+")
    if body == "0":
        return 0.0
    if not _DURATION.fullmatch(body):
        raise ValueError(f'invalid duration "{text}"')
    return sum(float(number) * _NANOSECONDS[unit] for number, unit in _PART.findall(body)) / 1e9


def format_duration(seconds: float) -> str:
    """Render seconds like Go's `Duration.String` ("1m30s", "500ms"), matching kamal-proxy's output."""
    ns = round(seconds * 1e9)
    sign, ns = ("-" if ns < 0 else ""), abs(ns)
    if ns < 10**3:
        return f"{sign}{ns}ns" if ns else "0s"
    if ns < 10**6:
        return f"{sign}{_decimal(ns, 3)}µs"
    if ns < 10**9:
        return f"{sign}{_decimal(ns, 6)}ms"
    minutes, ns = divmod(ns, 60 * 10**9)
    hours, minutes = divmod(minutes, 60)
    hours_minutes = f"{hours}h{minutes}m" if hours else f"{minutes}m" if minutes else ""
    return f"{sign}{hours_minutes}{_decimal(ns, 9)}s"


def _decimal(value: int, places: int) -> str:
    """`value / 10**places` without trailing zeros, computed exactly on integers."""
    whole, fraction = divmod(value, 10**places)
    digits = str(fraction).rjust(places, "0").rstrip("0")
    return f"{whole}.{digits}" if digits else str(whole)


def parse_bool(text: str) -> bool:
    """Go `strconv.ParseBool`: exactly 1/t/T/TRUE/true/True and their false counterparts."""
    try:
        return _BOOLS[text]
    except KeyError:
        raise ValueError(f'invalid boolean "{text}"') from None


def parse_int(text: str) -> int:
    """Go `strconv.Atoi`: optional sign and ASCII digits only (Python's int() also takes spaces, "_")."""
    if not _INT.fullmatch(text):
        raise ValueError(f'invalid integer "{text}"')
    return int(text)


def split_list(values: Iterable[str]) -> list[str]:
    """pflag StringSlice: every value is one CSV record (quotes allowed); "" contributes nothing."""
    items: list[str] = []
    for value in values:
        try:
            items += next(csv.reader([value], strict=True), [])
        except csv.Error:
            raise ValueError(f'invalid list "{value}"') from None
    return items


def env_default(name: str, prefixes: tuple[str, ...] = ("PYPROXY_", "KAMAL_PROXY_")) -> str | None:
    """Value of `<prefix><name>` for the first prefix set, else `<name>`, else None (a set-but-empty
    variable still counts). kamal-proxy's own prefix is read too, so its operators' settings carry over."""
    for prefix in prefixes:
        value = os.environ.get(prefix + name)
        if value is not None:
            return value
    return os.environ.get(name)


def default_note(value: object) -> str:
    """pflag-style help suffix such as " (default 30s)"; zero values show nothing, as in pflag.

    Floats are durations in this module, so they are rendered in Go duration syntax."""
    if not value:
        return ""
    match value:
        case bool():
            shown = "true"
        case float():
            shown = format_duration(value)
        case str():
            shown = f'"{value}"'
        case _:
            shown = str(value)
    return f" (default {shown})"


class _Namespace(argparse.Namespace):
    """Namespace that also remembers which dests came from the command line.

    The set lives in a slot so it stays out of `vars(ns)` and namespace equality."""

    __slots__ = ("_explicit",)

    def __init__(self) -> None:
        super().__init__()
        self._explicit: set[str] = set()


class _FlagAction(argparse.Action):
    """Converts the value with `parse`, reports failures pflag-style, and records the flag as given."""

    def __init__(
        self,
        option_strings: Sequence[str],
        dest: str,
        parse: Callable[[str], Any],
        append: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(option_strings, dest, **kwargs)
        self.parse = parse
        self.append = append

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        try:
            value = self.parse(values)
        except ValueError as err:
            parser.error(f"{err} for {option_string}")
        if self.append:
            value = getattr(namespace, self.dest) + value
        setattr(namespace, self.dest, value)
        namespace._explicit.add(self.dest)


class FlagParser(argparse.ArgumentParser):
    """Parser for one command with pflag semantics and one-line errors (`<prog>: <message>`, exit 2).

    Flags must be added with the `add_*` methods and the namespace left to the parser; only then
    does `explicit()` know what was given. `env=` defaults are read when the flag is added, as
    kamal-proxy does.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs, allow_abbrev=False)
        self._bool_flags: set[str] = set()
        self._required: dict[str, str] = {}

    def add_list(self, flag: str, *, required: bool = False, help: str | None = None) -> argparse.Action:
        """Repeatable, comma-separated string list (pflag StringSlice); defaults to []."""
        return self._add(
            flag, lambda value: split_list([value]), [], None, help, "strings", required=required, append=True
        )

    def add_bool(
        self, flag: str, *, default: bool = False, env: str | None = None, help: str | None = None
    ) -> argparse.Action:
        """`--flag` or `--flag=<Go bool>`; a bare flag never consumes the next argument."""
        self._bool_flags.add(flag)
        return self._add(flag, parse_bool, default, env, help, "=bool", nargs="?")

    def add_duration(
        self, flag: str, *, default: float = 0.0, env: str | None = None, help: str | None = None
    ) -> argparse.Action:
        """Go duration (`30s`, `1m30s`) stored as float seconds."""
        return self._add(flag, parse_duration, float(default), env, help, "duration")

    def add_int(
        self, flag: str, *, default: int = 0, env: str | None = None, help: str | None = None
    ) -> argparse.Action:
        """Decimal integer."""
        return self._add(flag, parse_int, default, env, help, "int")

    def add_str(
        self, flag: str, *, default: str = "", env: str | None = None, help: str | None = None
    ) -> argparse.Action:
        """Plain string."""
        return self._add(flag, str, default, env, help, "string")

    def _add(
        self,
        flag: str,
        parse: Callable[[str], Any],
        default: Any,
        env: str | None,
        help: str | None,
        metavar: str,
        *,
        required: bool = False,
        append: bool = False,
        nargs: str | None = None,
    ) -> argparse.Action:
        """Register a `_FlagAction`; a parsable env value replaces the default, a bad one is ignored."""
        if env is not None and (raw := env_default(env)) is not None:
            with contextlib.suppress(ValueError):
                default = parse(raw)
        action = self.add_argument(
            flag,
            action=_FlagAction,
            parse=parse,
            append=append,
            default=default,
            nargs=nargs,
            metavar=metavar,
            help=(help or "") + default_note(default),
        )
        if required:
            self._required[action.dest] = flag
        return action

    def explicit(self, namespace: argparse.Namespace) -> set[str]:
        """Dests of the `add_*` flags given on the command line (e.g. to compute dependent defaults)."""
        return set(namespace._explicit)

    def parse_known_args(
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        """Rewrite bare bool flags to `--flag=true` (before any `--`) so argparse can't feed them a value."""
        argv = sys.argv[1:] if args is None else list(args)
        end = argv.index("--") if "--" in argv else len(argv)
        argv = [f"{arg}=true" if arg in self._bool_flags else arg for arg in argv[:end]] + argv[end:]
        return super().parse_known_args(argv, _Namespace() if namespace is None else namespace)

    def parse_args(
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> argparse.Namespace:
        """Parse, then reject leftovers and missing required flags with pflag-style messages."""
        namespace, extras = self.parse_known_args(args, namespace)
        extras = [extra for extra in extras if extra != "--"]  # argparse may leave the separator behind
        if extras:
            first = extras[0]
            if first.startswith("-"):
                self.error(f"unknown flag: {first.partition('=')[0]}")
            self.error(f"unexpected argument: {first}")
        given = self.explicit(namespace)
        missing = [flag for dest, flag in self._required.items() if dest not in given]
        if missing:
            self.error(f"required flag {missing[0]} not set")
        return namespace

    def error(self, message: str) -> NoReturn:
        """One line on stderr and exit status 2, without argparse's usage dump."""
        self.exit(2, f"{self.prog}: {message}\n")
