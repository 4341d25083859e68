"""docs/cli.md is generated from --help and must be current."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_cli_reference_is_current():
    from llora_cli.cli.clidocs import render_markdown

    assert (ROOT / "docs" / "cli.md").read_text() == render_markdown(), (
        "docs/cli.md is stale: run python -m llora_cli.cli.clidocs > docs/cli.md"
    )


def test_cli_reference_covers_every_command():
    text = (ROOT / "docs" / "cli.md").read_text()
    for cmd in ("llora bases add", "llora adapters import", "llora show", "llora lineage", "llora history",
                "llora discard", "llora verify", "llora db upgrade", "llora db status", "llora demo"):
        assert f"## `{cmd}`" in text


def test_architecture_doc_lists_every_transition():
    from llora_store.lifecycle import TRANSITIONS

    text = (ROOT / "docs" / "architecture.md").read_text()
    for kind, table in TRANSITIONS.items():
        for (state, event), new in table.items():
            assert f"| {kind} | {state} | {event} | {new} |" in text, (kind, state, event)
