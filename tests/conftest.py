"""Shared fixtures: a temporary LLORA_HOME for every test, tiny models built once per session,
a throwaway PostgreSQL server for the catalog tests (tests/pg.py)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
# derived files llora caches outside a store (the router encoder's ONNX graph) go to one directory per test session,
# not to the user's cache; subprocesses inherit it
if "LLORA_CACHE_DIR" not in os.environ:
    import atexit
    import shutil
    import tempfile

    os.environ["LLORA_CACHE_DIR"] = tempfile.mkdtemp(prefix="llora-test-cache-")
    atexit.register(shutil.rmtree, os.environ["LLORA_CACHE_DIR"], ignore_errors=True)

import tiny  # noqa: E402
from pg import postgres_catalog_url, postgres_cluster, postgres_url  # noqa: E402, F401  (fixtures)


@pytest.fixture(autouse=True)
def llora_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "llora-home"
    monkeypatch.setenv("LLORA_HOME", str(home))
    monkeypatch.delenv("LLORA_DB_URL", raising=False)
    monkeypatch.delenv("LLORA_DEBUG", raising=False)
    return home


@pytest.fixture
def store(llora_home):
    from llora_store import open_store

    return open_store(llora_home)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return tiny.build_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny-llama")


@pytest.fixture(scope="session")
def other_tiny_model_dir(tmp_path_factory) -> Path:
    """Same architecture as tiny_model_dir, different weights: a look-alike base."""
    return tiny.build_tiny_llama(tmp_path_factory.mktemp("tiny2") / "tiny-llama-2", seed=1)


@pytest.fixture(scope="session")
def tiny_adapter_dir(tiny_model_dir, tmp_path_factory) -> Path:
    return tiny.build_tiny_adapter(tiny_model_dir, tmp_path_factory.mktemp("adapter") / "tiny-lora")


class Cli:
    """Runs llora in-process and returns (exit code, stdout, stderr)."""

    def __call__(self, *args: str, input: str | None = None):
        from typer.testing import CliRunner

        from llora_cli.cli.main import app

        result = CliRunner().invoke(app, [str(a) for a in args], input=input, env={"COLUMNS": "200"})
        if result.exception and not isinstance(result.exception, SystemExit):
            raise result.exception
        return result

    def json(self, *args: str):
        result = self(*args, "--json")
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)


@pytest.fixture
def cli() -> Cli:
    return Cli()


def pytest_collection_modifyitems(config, items):
    if os.environ.get("LLORA_SKIP_SLOW"):
        skip = pytest.mark.skip(reason="LLORA_SKIP_SLOW is set")
        for item in items:
            if "slow" in item.keywords or "faults" in item.keywords:
                item.add_marker(skip)
