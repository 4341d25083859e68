"""``llora doctor``: every inconsistency between the catalog and the files, and what fixes each."""

from __future__ import annotations

import typer

from llora_cli.cli.options import JsonOpt, err, out, print_json


def doctor(json_: JsonOpt = False) -> None:
    """Check the catalog against the files; report every inconsistency and its fix (exit 1 if any).

    Checks: usable artifacts with missing or changed files (sha256), runs stuck in 'training'
    whose process is gone, lineage, file or event rows pointing at no artifact, state changes
    without an event row, and debris of interrupted commands (dead staging dirs, orphan artifact
    dirs, files of discarded artifacts, temporary files). See docs/reliability.md.

    Example: llora doctor --json
    """
    from rich.markup import escape

    from llora_store import open_store
    from llora_store.health import diagnose

    report = diagnose(open_store(auto_create=False))
    if json_:
        print_json(report.to_json())
    else:
        for f in report.findings:
            out().print(f"[bold]{f.check}[/]: {escape(f.message)}")
            out().print(f"  fix: {escape(f.fix)}")
        checked = ", ".join(f"{v} {k}" for k, v in report.checked.items())
        verdict = "ok" if report.ok else f"{len(report.findings)} problem(s)"
        err().print(f"{verdict}: checked {checked} in {report.home}")
    if not report.ok:
        raise typer.Exit(1)
