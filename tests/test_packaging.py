"""An installed wheel (not an editable install) finds its migrations from any working directory."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_layout_and_migrations_from_any_cwd(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), str(ROOT)],
        check=True, capture_output=True,
    )
    wheel = next(dist.glob("llora-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.startswith("llora-")}
    assert top == {"llora_cli", "llora_store", "llora_migrations"}  # no bare 'store' or 'migrations'
    assert "llora_migrations/env.py" in names and "llora_migrations/script.py.mako" in names
    packages = sorted(str(p.parent.relative_to(ROOT)) for p in (ROOT / "llora_cli").rglob("__init__.py"))
    missing = [p for p in packages if f"{p}/__init__.py" not in names]
    assert not missing, f"packages left out of the wheel (pyproject.toml [tool.setuptools] packages): {missing}"
    assert any(n.startswith("llora_migrations/versions/0001") for n in names)

    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = (
        "import llora_store, llora_migrations; from llora_store import open_store; "
        f"assert llora_store.__file__.startswith({str(target)!r}), llora_store.__file__; "
        f"assert llora_migrations.__file__.startswith({str(target)!r}); "
        f"s = open_store({str(tmp_path / 'home')!r}); print(s.schema.current)"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, capture_output=True, text=True,
                          env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    from llora_store.db import SCHEMA_HEAD

    assert proc.stdout.strip() == SCHEMA_HEAD
