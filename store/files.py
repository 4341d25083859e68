"""Artifact files on disk: staging, atomic publication, hashing and sidecars.

Layout under ``$LLORA_HOME``::

    catalog.db                 the SQLite catalog (unless LLORA_DB_URL points elsewhere)
    artifacts/<id>/            payload files of one artifact + llora.json (sidecar)
    tmp/<id>.<random>/         staging; a crash leaves its debris here, never in artifacts/

Files are written into a staging directory, hashed, then moved into
``artifacts/<id>`` with one ``os.rename`` (R10): a directory under
``artifacts/`` is always complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

SIDECAR = "llora.json"
OWNER = ".owner"  # marks a staging dir with the host and pid writing it
INTERNAL = frozenset({SIDECAR, OWNER})
DERIVED = "derived/"  # engine conversions of the payload (e.g. a llama.cpp LoRA): recorded, outside the content hash
_CHUNK = 1 << 20


@dataclass(frozen=True)
class FileRecord:
    path: str  # relative to the artifact directory, with "/" separators
    sha256: str
    bytes: int


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def scan(directory: Path, known: dict[str, FileRecord] | None = None) -> list[FileRecord]:
    """Hash every payload file under ``directory`` (the sidecar excluded), sorted by path.

    ``known``: hashes computed while the writer wrote the file (same bytes); used when the size matches.
    """
    records = []
    for p in sorted(directory.rglob("*")):
        if p.is_file() and not p.is_symlink():
            rel = p.relative_to(directory).as_posix()
            if rel in INTERNAL:
                continue
            size = p.stat().st_size
            k = (known or {}).get(rel)
            records.append(k if k is not None and k.bytes == size else FileRecord(rel, sha256_file(p), size))
    return records


def content_hash(records: list[FileRecord]) -> str:
    """One hash for a set of files: sha256 over sorted ``path\\0sha256\\n`` lines (derived files left out)."""
    h = hashlib.sha256()
    for r in sorted(records, key=lambda r: r.path):
        if r.path.startswith(DERIVED):
            continue
        h.update(f"{r.path}\0{r.sha256}\n".encode())
    return h.hexdigest()


def write_json_atomic(path: Path, data: dict) -> None:
    """Write JSON next to ``path`` and rename it over ``path``: readers see old or new."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # the writer's tag in the name: `llora db gc` removes the file only once its writer is gone
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}@{socket.gethostname()}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True, default=str)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class Layout:
    """Paths of one llora home."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.artifacts = home / "artifacts"
        self.tmp = home / "tmp"

    def ensure(self) -> None:
        self.artifacts.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(parents=True, exist_ok=True)

    def artifact_dir(self, artifact_id: str) -> Path:
        return self.artifacts / artifact_id

    def new_staging(self, artifact_id: str) -> Path:
        """A fresh, empty directory on the same file system as ``artifacts/``."""
        self.ensure()
        return Path(tempfile.mkdtemp(prefix=f"{artifact_id}.", dir=self.tmp))

    def publish(self, staging: Path, artifact_id: str) -> Path:
        """Move a complete staging directory into place with one rename."""
        final = self.artifact_dir(artifact_id)
        os.rename(staging, final)  # atomic on one file system; fails if ``final`` exists
        return final

    def leftovers(self) -> list[Path]:
        """Staging directories left by interrupted commands."""
        return sorted(self.tmp.iterdir()) if self.tmp.exists() else []


def pid_alive(pid) -> bool:
    """Whether a process with this pid exists on this machine."""
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError, TypeError):
        return False
    except PermissionError:
        return True
    return True


def remove_tree(path: Path) -> None:
    """Delete a directory tree, or a single file (a stray file in tmp/ is debris too); missing is fine."""
    if path.is_file() or path.is_symlink():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)
