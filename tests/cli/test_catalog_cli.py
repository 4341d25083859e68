"""Catalog commands: JSON shapes, id resolution, exit codes and messages."""

from __future__ import annotations

import pytest

from llora_store.models import GROUPS


def seed(store):
    st = store.new_staging("b")
    (st / "model.safetensors").write_bytes(b"w")
    base = store.create("base", "base-one", staging=st)
    ad = store.create("adapter", "ad-one", state="trained", parents=[(base.id, "trained_on")], base_hash=base.content_hash)
    return base, ad


@pytest.mark.parametrize("group", sorted(set(GROUPS.values())))
def test_every_group_lists_as_json(cli, store, group):
    seed(store)
    rows = cli.json(group, "list")
    assert isinstance(rows, list)
    for r in rows:
        assert {"id", "kind", "name", "state", "parents", "created_at"} <= set(r)


def test_list_json_fields_and_state_filter(cli, store):
    base, ad = seed(store)
    rows = cli.json("adapters", "list")
    assert rows == [{**rows[0], "id": ad.id, "kind": "adapter", "name": "ad-one", "state": "trained",
                     "parents": [{"id": base.id, "role": "trained_on"}]}]
    assert cli.json("adapters", "list", "--state", "merged") == []
    bad = cli("adapters", "list", "--state", "ready")
    assert bad.exit_code == 2 and "never in state 'ready'" in bad.stderr


def test_show_json_has_files_and_metadata(cli, store):
    base, _ = seed(store)
    d = cli.json("show", "base-one")
    assert d["id"] == base.id and d["metadata"] == {}
    assert d["files"] == [{"path": "model.safetensors", "sha256": d["files"][0]["sha256"], "bytes": 1, "deleted": False}]
    assert len(d["files"][0]["sha256"]) == 64
    assert cli.json("bases", "show", base.id[:6])["id"] == base.id
    wrong = cli("adapters", "show", "base-one")
    assert wrong.exit_code == 2 and "is a base, not an adapter" in wrong.stderr


def test_unknown_id_exits_1_without_traceback(cli, store):
    result = cli("show", "no-such-thing")
    assert result.exit_code == 1
    assert "no artifact matches 'no-such-thing'" in result.stderr and "Traceback" not in result.output


def test_ambiguous_prefix_lists_candidates(cli, store):
    store.create("base", "one", artifact_id="abcd11111111")
    store.create("base", "two", artifact_id="abcd22222222")
    result = cli("show", "abcd")
    assert result.exit_code == 1
    assert "abcd11111111" in result.stderr and "abcd22222222" in result.stderr
    assert cli.json("show", "abcd2")["name"] == "two"


def test_lineage_and_history(cli, store):
    base, ad = seed(store)
    tree = cli.json("lineage", ad.id)
    assert tree["parents"][0]["id"] == base.id and tree["parents"][0]["role"] == "trained_on"
    assert cli.json("lineage", base.id)["children"][0]["id"] == ad.id
    text = cli("lineage", ad.id)
    assert text.exit_code == 0 and "base-one" in text.stdout and "trained_on" in text.stdout
    assert [e["event"] for e in cli.json("history", ad.id)] == ["create"]


def test_discard_needs_confirmation_without_a_terminal(cli, store):
    _, ad = seed(store)
    refused = cli("discard", ad.id)
    assert refused.exit_code == 2 and "--yes" in refused.stderr
    assert store.get(ad.id).state == "trained"
    done = cli("discard", ad.id, "--yes", "--reason", "superseded", "--json")
    assert done.exit_code == 0
    assert [e["reason"] for e in cli.json("history", ad.id)] == ["", "superseded"]


def test_deploy_refusals_exit_1_with_rule_and_hint(cli, store):
    _, ad = seed(store)
    result = cli("deploy", ad.id)
    assert result.exit_code == 1
    assert "R5" in result.stderr and "llora merge" in result.stderr


def test_verify_reports_tampering(cli, store):
    base, _ = seed(store)
    assert cli("verify", base.id).exit_code == 0
    (store.layout.artifact_dir(base.id) / "model.safetensors").write_bytes(b"x")
    result = cli("verify", base.id)
    assert result.exit_code == 1 and "content changed" in result.stderr


def test_debug_env_shows_the_traceback(cli, store, monkeypatch):
    from llora_store import NotFound

    monkeypatch.setenv("LLORA_DEBUG", "1")
    with pytest.raises(NotFound):
        cli("show", "missing")


def test_usage_error_exits_2(cli):
    result = cli("bases", "list", "--no-such-flag")
    assert result.exit_code == 2


def test_home_option_points_at_another_catalog(cli, tmp_path, monkeypatch):
    other = tmp_path / "elsewhere"
    result = cli("--home", other, "db", "status", "--json")
    assert result.exit_code == 0
    import json

    assert json.loads(result.stdout)["home"] == str(other.resolve())


def test_unwritable_home_is_a_clear_error(cli, tmp_path):
    blocker = tmp_path / "file-not-dir"
    blocker.write_text("x")
    result = cli("--home", blocker / "home", "bases", "list")
    assert result.exit_code == 1 and "Traceback" not in result.output


def test_a_reader_that_goes_away_is_not_reported_as_a_storage_error(store, llora_home):
    """`llora bases list --json | head -0`: the pipe closes before llora writes. Exit 1 (as click does for a broken
    pipe), nothing on stderr; it used to say 'error: Broken pipe; ... free space or fix the permissions'."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    seed(store)
    exe = Path(sys.executable).with_name("llora")
    p = subprocess.Popen([str(exe), "bases", "list", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env={**os.environ, "LLORA_HOME": str(llora_home)})
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(timeout=60) == 1 and err == "", err
