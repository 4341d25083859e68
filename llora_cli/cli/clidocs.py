"""Generates docs/cli.md from the commands' own --help (a test keeps the file current).

Run: python -m llora_cli.cli.clidocs > docs/cli.md
"""

from __future__ import annotations

import sys

HEADER = """# llora command reference

Generated from `--help` by `python -m llora_cli.cli.clidocs > docs/cli.md`;
`tests/test_docs.py` fails when this file is stale.
"""


def _paths(command, prefix=()):
    yield prefix
    for name in sorted(getattr(command, "commands", {}) or {}):
        yield from _paths(command.commands[name], (*prefix, name))


def render_markdown() -> str:
    import typer
    from typer.testing import CliRunner

    from llora_cli.cli.main import app

    runner = CliRunner()
    env = {"COLUMNS": "100", "NO_COLOR": "1", "TERM": "dumb", "LLORA_HOME": "/nonexistent/llora-docs"}
    parts = [HEADER]
    for path in _paths(typer.main.get_command(app)):
        result = runner.invoke(app, [*path, "--help"], env=env, prog_name="llora")
        title = " ".join(("llora", *path))
        text = "\n".join(line.rstrip() for line in result.stdout.strip("\n").splitlines())
        parts.append(f"## `{title}`\n\n```text\n{text}\n```\n")
    return "\n".join(parts)


if __name__ == "__main__":
    sys.stdout.write(render_markdown())
