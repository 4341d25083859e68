"""Fuzzed training arguments, config files and dataset rows through `llora train --dry-run` (hypothesis).

Whatever the KEY=VALUE pairs, YAML config file or JSONL rows, the command ends with a clear refusal (exit 1 or 2,
a message, no traceback, not "unexpected error") or a dry-run plan (exit 0); either way nothing is trained and
no artifact but the registered data file changes state. ``LLORA_FUZZ_EXAMPLES=N`` runs more.
"""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llora_cli.trainconfig import TrainConfig

EXAMPLES = int(os.environ.get("LLORA_FUZZ_EXAMPLES", "0")) or None
FUZZ = settings(max_examples=EXAMPLES or 60, deadline=None, derandomize=EXAMPLES is None, database=None,
                suppress_health_check=list(HealthCheck))

KEYS = sorted(TrainConfig.model_fields)
SCALAR = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                   st.text(max_size=10))
VALUE_TEXT = st.one_of(SCALAR.map(str), st.text(max_size=20), st.sampled_from(
    ["1e309", "-0", "nan", "inf", "[1, 2", "{a: b}", "!!python/object:os.system", "*x", "&a [*a]", "0x10", "1_000",
     "q_proj,,v_proj", ",", "all-linear", "true", "~", "'", "\x00"]))
JSON = st.recursive(SCALAR, lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=8), kids,
                                                                                       max_size=3), max_leaves=8)


def assert_clean(result, store, before) -> None:
    text = result.output
    assert "Traceback" not in text and "unexpected error" not in text, text[-2000:]
    assert result.exit_code in (0, 1, 2), (result.exit_code, text[-2000:])
    if result.exit_code:
        assert result.stderr.strip(), text
    states = {a.id: a.state for a in store.artifacts() if a.kind != "dataset"}
    assert states == before, "a dry run changed the catalog"
    assert not store.artifacts(kind="adapter") and not store.artifacts(kind="modifier")
    assert not list(store.layout.leftovers())


@pytest.fixture
def planned(cli, store, tiny_model_dir, tmp_path):
    if not store.artifacts(kind="base"):
        assert cli("bases", "add", tiny_model_dir, "--name", "tiny").exit_code == 0
        rows = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
                for i in range(8)]
        (tmp_path / "ok.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path / "ok.jsonl"


@FUZZ
@given(pairs=st.lists(st.tuples(st.sampled_from(KEYS) | st.text(max_size=8), VALUE_TEXT), max_size=4),
       raw=st.lists(st.text(max_size=12), max_size=2))
def test_fuzzed_key_value_overrides(cli, store, planned, pairs, raw):
    args = [f"{k}={v}" for k, v in pairs] + raw
    if any("\x00" in a for a in args):
        return  # a NUL cannot be passed in a process's argv
    before = {a.id: a.state for a in store.artifacts() if a.kind != "dataset"}
    result = cli("train", "--base", "tiny", "--data", planned, "--dry-run", *args)
    assert_clean(result, store, before)


@FUZZ
@given(body=st.one_of(st.binary(max_size=120), JSON.map(lambda v: json.dumps(v).encode()),
                      st.dictionaries(st.sampled_from(KEYS), JSON, max_size=5).map(
                          lambda d: "\n".join(f"{k}: {json.dumps(v)}" for k, v in d.items()).encode())))
def test_fuzzed_yaml_config_files(cli, store, planned, tmp_path_factory, body):
    path = tmp_path_factory.mktemp("cfg") / "config.yaml"
    path.write_bytes(body)
    before = {a.id: a.state for a in store.artifacts() if a.kind != "dataset"}
    result = cli("train", "--base", "tiny", "--data", planned, "--dry-run", "--config", path)
    assert_clean(result, store, before)


ROW = st.one_of(
    JSON,
    st.fixed_dictionaries({"messages": st.lists(st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "assistant", "system", "tool", ""]) | JSON, "content": JSON}), max_size=3)}),
    st.fixed_dictionaries({"instruction": JSON, "output": JSON}, optional={"input": JSON}),
    st.fixed_dictionaries({"text": JSON}),
)


@FUZZ
@given(lines=st.lists(st.one_of(ROW.map(json.dumps), st.text(max_size=30), st.just("")), min_size=0, max_size=6))
def test_fuzzed_dataset_rows(cli, store, planned, tmp_path_factory, lines):
    path = tmp_path_factory.mktemp("rows") / "rows.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8", errors="surrogatepass")
    before = {a.id: a.state for a in store.artifacts() if a.kind != "dataset"}
    result = cli("train", "--base", "tiny", "--data", path, "--dry-run")
    assert_clean(result, store, before)
