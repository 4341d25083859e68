"""Shared CLI pieces: option aliases, consoles, JSON output and the error renderer."""

from __future__ import annotations

import json
import os
import sys
from functools import cache
from typing import Annotated, Any, Optional

import typer

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON to stdout.")]
StateOpt = Annotated[Optional[str], typer.Option("--state", "-s", help="Only artifacts in this state.")]
ArtifactRef = Annotated[str, typer.Argument(metavar="ID", help="Artifact id, unique id prefix, or name.")]
NameOpt = Annotated[Optional[str], typer.Option("--name", "-n", help="Name to register it under (default: derived from the source).")]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]
HomeOpt = Annotated[
    Optional[str],
    typer.Option("--home", envvar="LLORA_HOME", help="llora home (catalog + artifacts). Default: the user data dir.", show_envvar=True),
]


@cache
def out():
    """Rich console on stdout: data."""
    from rich.console import Console

    return Console(highlight=False, soft_wrap=False)


@cache
def err():
    """Rich console on stderr: messages and progress."""
    from rich.console import Console

    return Console(stderr=True, highlight=False)


def print_json(data: Any) -> None:
    """JSON to stdout: indented for a terminal, compact for pipes (the C encoder is ~10x faster)."""
    indent = 2 if sys.stdout.isatty() else None
    sys.stdout.write(json.dumps(data, indent=indent, default=str) + "\n")


def open_store():
    from llora_store import open_store as _open

    return _open()


def command_line() -> str:
    """The command as typed, recorded on events."""
    return " ".join(["llora", *sys.argv[1:]])[:256]


def report_error(exc: Exception) -> int:
    """Print a LloraError as a message (no traceback) and return its exit code."""
    from rich.markup import escape

    code = getattr(exc, "exit_code", 1)
    err().print(f"[bold red]error:[/] {escape(getattr(exc, 'message', str(exc)))}")
    hint = getattr(exc, "hint", None)
    if hint:
        err().print(f"[dim]hint:[/] {escape(hint)}")
    return code


def debug() -> bool:
    return os.environ.get("LLORA_DEBUG", "") not in ("", "0")


def progress_printer():
    """A callback that prints library progress messages to stderr."""
    from rich.markup import escape

    return lambda msg: err().print(f"[dim]…[/] {escape(msg)}")


def short(h: str | None, n: int = 12) -> str:
    return h[:n] if h else "-"


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"
