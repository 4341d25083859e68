"""Fuzzed input files through the CLI (hypothesis): safetensors headers, adapter_config.json, GGUF headers.

Each case runs the real command (`llora bases add`, `llora adapters import`) in-process on a corrupted copy of a
valid file. Whatever the bytes, the command must end with a clear refusal (exit 1 or 2, a message, no traceback,
not "unexpected error") or succeed, and a refusal must leave the catalog without a new artifact and the home
without staging debris. Counts per target: docs/reliability.md. ``LLORA_FUZZ_EXAMPLES=N`` runs more.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

EXAMPLES = int(os.environ.get("LLORA_FUZZ_EXAMPLES", "0")) or None
FUZZ = settings(max_examples=EXAMPLES or 60, deadline=None, derandomize=EXAMPLES is None, database=None,
                suppress_health_check=list(HealthCheck))

JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True)
                    | st.text(max_size=12), lambda kids: st.lists(kids, max_size=4)
                    | st.dictionaries(st.text(max_size=8), kids, max_size=4), max_leaves=12)
HUGE = st.sampled_from([0, -1, 1, 2**31, 2**40, 2**63 - 1, 2**64 + 5, 10**30])


def assert_clean(result, store, kind: str, before: int) -> None:
    """A refusal is a message and exit 1/2, with nothing registered; a success registered exactly one artifact."""
    text = result.output
    assert "Traceback" not in text and "unexpected error" not in text, text[-2000:]
    assert result.exit_code in (0, 1, 2), (result.exit_code, text[-2000:])
    after = len(store.artifacts(kind=kind))
    if result.exit_code == 0:
        assert after == before + 1
    else:
        assert after == before and result.stderr.strip(), text
    assert not list(store.layout.leftovers()), "a refused command left staging debris"


def safetensors_bytes(header, payload: bytes, length: int | None = None) -> bytes:
    raw = json.dumps(header).encode() if not isinstance(header, bytes) else header
    return struct.pack("<Q", len(raw) if length is None else length) + raw + payload


def read_header(path: Path) -> tuple[dict, bytes]:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n]), data[8 + n:]


# --- safetensors: `llora bases add DIR` ----------------------------------------------------------------------------

def _tensor_entry_mutation():
    """(field, value) replacing one field of one tensor's header entry."""
    return st.one_of(
        st.tuples(st.just("dtype"), st.sampled_from(["F32", "F16", "BF16", "I8", "Q4", "", "f32", "F64x"]) | JSON),
        st.tuples(st.just("shape"), st.lists(HUGE, max_size=4) | JSON),
        st.tuples(st.just("data_offsets"), st.lists(HUGE, min_size=0, max_size=3) | JSON),
        st.tuples(st.just("<delete>"), st.sampled_from(["dtype", "shape", "data_offsets"])),
    )


def mutate_entry(data, header: dict) -> dict:
    """``header`` with one field of one tensor's entry replaced or deleted (drawn from ``data``)."""
    name = data.draw(st.sampled_from(sorted(k for k in header if k != "__metadata__")))
    field, value = data.draw(_tensor_entry_mutation())
    if field == "<delete>":
        del header[name][value]
    else:
        header[name][field] = value
    return header


@settings(FUZZ)
@given(data=st.data())
def test_fuzzed_safetensors_headers_are_refused_cleanly(cli, store, tiny_model_dir, tmp_path_factory, data):
    work = tmp_path_factory.mktemp("st")
    model = work / "model"
    shutil.copytree(tiny_model_dir, model)
    header, payload = read_header(model / "model.safetensors")
    how = data.draw(st.sampled_from(["entry", "header", "length", "truncate", "metadata"]))
    if how == "entry":
        blob = safetensors_bytes(mutate_entry(data, header), payload)
    elif how == "header":  # the whole header replaced by arbitrary JSON, or by bytes that are not JSON
        blob = safetensors_bytes(data.draw(JSON | st.binary(max_size=64)), payload)
    elif how == "length":  # a header length that lies
        blob = safetensors_bytes(header, payload, length=data.draw(HUGE.filter(lambda x: 0 <= x < 2**64)))
    elif how == "truncate":
        full = safetensors_bytes(header, payload)
        blob = full[:data.draw(st.integers(0, len(full) - 1))]
    else:
        header["__metadata__"] = data.draw(JSON)
        blob = safetensors_bytes(header, payload)
    (model / "model.safetensors").write_bytes(blob)
    before = len(store.artifacts(kind="base"))
    assert_clean(cli("bases", "add", model, "--name", f"b{before}-{os.urandom(3).hex()}"), store, "base", before)


# --- adapter_config.json and adapter weights: `llora adapters import DIR --base B` -----------------------------------

CONFIG_KEYS = ["r", "lora_alpha", "target_modules", "peft_type", "task_type", "base_model_name_or_path",
               "use_dora", "use_rslora", "modules_to_save", "layers_to_transform", "fan_in_fan_out", "bias",
               "rank_pattern", "alpha_pattern", "lora_dropout"]


@settings(FUZZ)
@given(data=st.data())
def test_fuzzed_adapter_configs_and_weights_are_refused_cleanly(cli, store, tiny_model_dir, tiny_adapter_dir,
                                                                tmp_path_factory, data):
    if not store.artifacts(kind="base"):
        assert cli("bases", "add", tiny_model_dir, "--name", "tiny").exit_code == 0
    work = tmp_path_factory.mktemp("ad")
    adapter = work / "lora"
    shutil.copytree(tiny_adapter_dir, adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    how = data.draw(st.sampled_from(["key", "keys", "whole", "weights"]))
    if how == "key":
        config[data.draw(st.sampled_from(CONFIG_KEYS))] = data.draw(JSON | HUGE)
    elif how == "keys":
        for key in data.draw(st.lists(st.sampled_from(CONFIG_KEYS), min_size=1, max_size=4, unique=True)):
            config.pop(key, None)
    if how == "whole":
        (adapter / "adapter_config.json").write_bytes(data.draw(st.binary(max_size=80) | JSON.map(
            lambda v: json.dumps(v).encode())))
    else:
        (adapter / "adapter_config.json").write_text(json.dumps(config))
    if how == "weights":
        weights = adapter / "adapter_model.safetensors"
        header, payload = read_header(weights)
        weights.write_bytes(safetensors_bytes(mutate_entry(data, header), payload))
    before = len(store.artifacts(kind="adapter"))
    result = cli("adapters", "import", adapter, "--base", "tiny", "--name", f"a{before}-{os.urandom(3).hex()}")
    assert_clean(result, store, "adapter", before)


# --- GGUF headers: `llora bases add FILE.gguf` ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def gguf_prefix() -> bytes:
    """The first 64 KiB of the embedded SmolLM2 GGUF: its header, metadata and tensor infos, no tensor data."""
    from llora_cli.bases import builtin_gguf

    with open(builtin_gguf("smollm2"), "rb") as f:
        return f.read(64 << 10)


@settings(FUZZ)
@given(data=st.data())
def test_fuzzed_gguf_headers_are_refused_before_reading_tensors(cli, store, gguf_prefix, tmp_path_factory, data):
    blob = bytearray(gguf_prefix)
    how = data.draw(st.sampled_from(["counts", "version", "magic", "truncate", "flip"]))
    if how == "counts":  # absurd tensor / metadata counts must be refused from the file size, before allocating
        blob[8:24] = struct.pack("<QQ", data.draw(st.integers(0, 2**64 - 1)), data.draw(st.integers(0, 2**64 - 1)))
    elif how == "version":
        blob[4:8] = struct.pack("<I", data.draw(st.integers(0, 2**32 - 1)))
    elif how == "magic":
        blob[0:4] = data.draw(st.binary(min_size=4, max_size=4))
    elif how == "truncate":
        blob = blob[:data.draw(st.integers(0, 4096))]
    else:
        for _ in range(data.draw(st.integers(1, 8))):
            blob[data.draw(st.integers(0, 4095))] = data.draw(st.integers(0, 255))
    path = tmp_path_factory.mktemp("gguf") / "model.gguf"
    path.write_bytes(bytes(blob))
    before = len(store.artifacts(kind="base"))
    result = cli("bases", "add", path, "--name", f"g{before}-{os.urandom(3).hex()}")
    assert_clean(result, store, "base", before)
    assert result.exit_code != 0  # 64 KiB hold no tensor data: never a base


def test_gguf_with_absurd_counts_names_the_counts(cli, store, gguf_prefix, tmp_path):
    blob = bytearray(gguf_prefix)
    blob[8:24] = struct.pack("<QQ", 2**60, 3)
    (tmp_path / "m.gguf").write_bytes(bytes(blob))
    result = cli("bases", "add", tmp_path / "m.gguf")
    assert result.exit_code == 2
    assert f"claims {2**60} tensors and 3 metadata entries" in result.stderr and "truncated or damaged" in result.stderr
    version = bytearray(gguf_prefix)
    version[4:8] = struct.pack("<I", 1)
    (tmp_path / "v.gguf").write_bytes(bytes(version))
    result = cli("bases", "add", tmp_path / "v.gguf")
    assert result.exit_code == 2 and "GGUF version 1; llora reads versions 2, 3" in result.stderr
