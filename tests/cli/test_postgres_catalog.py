"""The `llora` command end to end on a PostgreSQL catalog (LLORA_DB_URL, a throwaway server: tests/pg.py),
and the errors for a catalog URL that leads nowhere."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

LLORA = str(Path(sys.executable).parent / "llora")


def llora(*args, env: dict[str, str]) -> subprocess.CompletedProcess:
    """The installed console script in a fresh process, as a user runs it."""
    return subprocess.run([LLORA, *map(str, args)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "200", **env})


def test_catalog_lifecycle_on_postgresql(postgres_url, llora_home, tiny_model_dir):
    env = {"LLORA_DB_URL": postgres_url}

    def ok(*args):
        r = llora(*args, env=env)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout) if "--json" in args else r

    assert "catalog schema: empty -> 0003" in ok("db", "upgrade").stderr
    status = ok("db", "status", "--json")
    assert status["url"] == postgres_url and (status["current"], status["state"]) == ("0003", "current")

    base = ok("bases", "add", tiny_model_dir, "--name", "pg-base", "--json")
    assert (base["kind"], base["state"]) == ("base", "ready")
    data = ok("data", "make", "reasoning", "--n", "20", "--name", "pg-data", "--json")
    assert (data["kind"], data["state"]) == ("dataset", "ready")
    assert [(r["name"], r["state"]) for r in ok("bases", "list", "--json")] == [("pg-base", "ready")]
    shown = ok("show", base["id"][:6], "--json")
    assert shown["id"] == base["id"] and {"config.json", "model.safetensors"} <= {f["path"] for f in shown["files"]}
    assert ok("verify", "pg-base", "--json")["ok"] is True

    assert ok("deploy", "pg-base", "--json")["state"] == "deployed"
    again = llora("deploy", "pg-base", env=env)  # a refused transition: message, exit 1, no traceback
    assert again.returncode == 1 and "state 'deployed'" in again.stderr and "Traceback" not in again.stderr
    assert ok("retire", "pg-base", "--json")["state"] == "retired"
    assert ok("discard", "pg-base", "--yes", "--reason", "pg test", "--json")["state"] == "discarded"
    assert not (llora_home / "artifacts" / base["id"] / "model.safetensors").exists()

    history = ok("history", "pg-base", "--json")
    assert [(e["event"], e["from"], e["to"]) for e in history] == [
        ("create", None, "ready"), ("deploy", "ready", "deployed"), ("retire", "deployed", "retired"),
        ("discard", "retired", "discarded")]
    assert history[-1]["reason"] == "pg test"
    # it all went to PostgreSQL: no SQLite catalog was created in the home
    assert not (llora_home / "catalog.db").exists()


@pytest.mark.parametrize("url,commands,message", [
    ("postgresql+psycopg://nobody@127.0.0.1:1/none", [("bases", "list"), ("db", "status"), ("db", "upgrade")],
     "cannot open the catalog at postgresql+psycopg://nobody@127.0.0.1:1/none: connection failed"),
    ("postgresql+nosuchdriver://u@h/db", [("bases", "list")], "LLORA_DB_URL is not a database URL llora can use"),
    ("not a url", [("db", "status")], "LLORA_DB_URL is not a database URL llora can use"),
    ("postgresql+psycopg2://u:secret@127.0.0.1:1/db", [("db", "upgrade")],
     "the database driver for postgresql+psycopg2://u:***@127.0.0.1:1/db is not installed"),
])
def test_unusable_catalog_url_is_a_clear_error(llora_home, url, commands, message):
    for args in commands:
        r = llora(*args, env={"LLORA_DB_URL": url})
        assert r.returncode == 1, (args, r.stderr)
        text = " ".join(r.stderr.split())  # Rich wraps long messages
        assert message in text and "Traceback" not in text and "unexpected error" not in text
        assert "secret" not in text
