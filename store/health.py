"""Consistency of the catalog with itself and with the files on disk: what `llora doctor` reports and, for the
debris of interrupted commands, what `llora db gc` repairs.

Two kinds of findings:

- debris of interrupted commands, which ``find_debris`` lists and ``Store.gc`` removes: runs left in a transient
  state (``training``) by a process that died, staging directories whose owner died, artifact directories with no
  catalog row, files of discarded artifacts, temporary sidecar files of a dead writer;
- damage no command can undo safely (files missing or changed under a usable artifact, lineage or history rows
  pointing at no artifact, a state change without its event row): ``diagnose`` reports it with what to do.

Who owns a transient artifact: every llora command that creates an artifact in ``training`` records its process in
``metadata.run`` (``{"host": ..., "pid": ...}``) in the same transaction, and each staging directory it writes holds
an ``.owner`` file (host and pid). The artifact is alive while either names a live process of this host; an owner on
another host is never judged (not ours to see). It is dead when its recorded process is gone, or when it records no
owner at all and no live staging directory is its own (no llora writer creates one that way, so nothing can finish it).
A pid reused by an unrelated process makes a dead run look alive: a false "alive", never a false "dead".
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import exists, func, select
from sqlmodel import Session

from llora_store import files as fs
from llora_store.models import Artifact, ArtifactFile, Evaluation, Event, Lineage, RequestLog

if TYPE_CHECKING:
    from llora_store.catalog import Store

# States in which an artifact's files must all be there, intact (see DESIGN.md's lifecycle).
USABLE_STATES = frozenset({"ready", "trained", "merged", "deployed", "retired"})
# States a command holds an artifact in while it works on it; a crash leaves it there.
TRANSIENT_STATES = frozenset({"training"})
# Temporary sidecar files written by files.write_json_atomic: ".llora.json.<pid>@<host>.<random>".
TEMP_PREFIX = f".{fs.SIDECAR}."


@dataclass(frozen=True)
class DeadRun:
    """An artifact left in a transient state by a process that is gone."""

    id: str
    name: str
    kind: str
    state: str
    reason: str


@dataclass(frozen=True)
class Debris:
    """What interrupted commands left behind, as found at one moment (paths are absolute)."""

    dead_runs: list[DeadRun] = field(default_factory=list)
    staging_dead: list[Path] = field(default_factory=list)
    staging_in_use: list[Path] = field(default_factory=list)
    orphan_dirs: list[Path] = field(default_factory=list)
    discarded_with_files: list[str] = field(default_factory=list)
    temp_files: list[Path] = field(default_factory=list)
    stale_sidecars: list[str] = field(default_factory=list)  # artifact ids whose llora.json states another state


@dataclass(frozen=True)
class Finding:
    """One inconsistency: which check found it, about what, and the command or action that fixes it."""

    check: str
    message: str
    fix: str
    artifact_id: str | None = None
    path: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"check": self.check, "artifact_id": self.artifact_id, "path": self.path, "message": self.message,
                "fix": self.fix}


@dataclass(frozen=True)
class DoctorReport:
    """Everything ``diagnose`` looked at (``checked``: counts per check) and what it found."""

    home: str
    url: str
    checked: dict[str, int]
    findings: list[Finding]

    @property
    def ok(self) -> bool:
        return not self.findings

    def to_json(self) -> dict[str, Any]:
        return {"home": self.home, "url": self.url, "ok": self.ok, "checked": self.checked,
                "findings": [f.to_json() for f in self.findings]}


# -- owners ------------------------------------------------------------------------------------------------------

def parse_owner(text: str) -> tuple[str, str] | None:
    """``(host, pid)`` from an ``.owner`` file's text ("host pid"), or None if it is not one."""
    parts = text.split()
    return (parts[0], parts[1]) if len(parts) == 2 else None


def owner_alive(host: str | None, pid: Any) -> bool:
    """Whether the process ``pid`` of ``host`` may still run: True for another host (not ours to judge)."""
    if host != socket.gethostname():
        return True
    return fs.pid_alive(pid)


def staging_owner(staging: Path) -> tuple[str, str] | None:
    """The (host, pid) recorded in a staging directory, or None (no readable ``.owner``)."""
    try:
        return parse_owner((staging / fs.OWNER).read_text())
    except OSError:
        return None


def staging_alive(staging: Path) -> bool:
    """Whether a live process owns this staging directory (one without an owner file is nobody's)."""
    owner = staging_owner(staging)
    return owner is not None and owner_alive(*owner)


def _staging_of(artifact_id: str, leftovers: list[Path]) -> list[Path]:
    """Staging dirs written for ``artifact_id`` (``new_staging`` names them ``<id>.<random>``)."""
    return [p for p in leftovers if p.name.startswith(f"{artifact_id}.") or p.name.startswith(f"{artifact_id}-")]


def dead_run_reason(art: Artifact, leftovers: list[Path]) -> str | None:
    """Why the transient ``art`` has no live owner (see the module docstring), or None if it may still be running."""
    if any(staging_alive(p) for p in _staging_of(art.id, leftovers)):
        return None
    run = (art.meta or {}).get("run") or {}
    host, pid = run.get("host"), run.get("pid")
    if host and pid:
        if owner_alive(host, pid):
            return None
        return f"its process {pid} on {host} is gone (killed?)"
    return "no process is recorded as its owner and no live staging directory is its own"


def temp_file_owner(name: str) -> tuple[str, str] | None:
    """``(host, pid)`` from a temporary sidecar file name (``.llora.json.<pid>@<host>.<random>``), or None."""
    if not name.startswith(TEMP_PREFIX):
        return None
    head = name[len(TEMP_PREFIX):].rsplit(".", 1)[0]
    pid, sep, host = head.partition("@")
    return (host, pid) if sep and pid.isdigit() and host else None


def _dead_temp_files(directory: Path) -> list[Path]:
    out = []
    for p in sorted(directory.glob(TEMP_PREFIX + "*")):
        owner = temp_file_owner(p.name)
        if p.is_file() and (owner is None or not owner_alive(*owner)):
            out.append(p)
    return out


# -- debris (shared by doctor and gc) ----------------------------------------------------------------------------

def find_debris(store: Store, session: Session) -> Debris:
    """List what interrupted commands left behind; changes nothing. ``Store.gc`` calls it under the write lock."""
    leftovers = store.layout.leftovers()
    dead = []
    for art in session.execute(select(Artifact).where(Artifact.state.in_(TRANSIENT_STATES))).scalars():
        reason = dead_run_reason(art, leftovers)
        if reason is not None:
            dead.append(DeadRun(art.id, art.name, art.kind, art.state, reason))
    staging_dead, staging_in_use = [], []
    for p in leftovers:
        (staging_in_use if staging_alive(p) else staging_dead).append(p)
    known = dict(session.execute(select(Artifact.id, Artifact.state)).all())
    orphans, discarded, temps, stale = [], [], [], []
    if store.layout.artifacts.exists():
        for p in sorted(store.layout.artifacts.iterdir()):
            if p.name not in known:
                orphans.append(p)
                continue
            if not p.is_dir():
                continue
            temps.extend(_dead_temp_files(p))
            if sidecar_state(p) not in (None, known[p.name]):
                stale.append(p.name)
            if known[p.name] == "discarded" and any(
                    c.name != fs.SIDECAR and not c.name.startswith(TEMP_PREFIX) for c in p.iterdir()):
                discarded.append(p.name)
    return Debris(dead, staging_dead, staging_in_use, orphans, discarded, temps, stale)


def sidecar_state(directory: Path) -> str | None:
    """The state an artifact directory's ``llora.json`` records, or None without a readable one. Every transition
    rewrites the sidecar after its commit, so a process killed in between leaves it naming the old state."""
    import json

    try:
        state = json.loads((directory / fs.SIDECAR).read_text()).get("state")
    except (OSError, ValueError, AttributeError):
        return None
    return state if isinstance(state, str) else None


def files_only_debris(store: Store) -> Debris:
    """The debris of a home whose catalog has no tables yet: dead staging dirs, and every artifact dir is an orphan."""
    leftovers = store.layout.leftovers()
    artifacts = sorted(store.layout.artifacts.iterdir()) if store.layout.artifacts.exists() else []
    return Debris(staging_dead=[p for p in leftovers if not staging_alive(p)],
                  staging_in_use=[p for p in leftovers if staging_alive(p)], orphan_dirs=artifacts)


def _debris_findings(store: Store, debris: Debris, catalog_empty: bool) -> list[Finding]:
    gc = "llora db gc"
    out = [Finding("dead_transient", f"{d.kind} '{d.name}' is '{d.state}' but {d.reason}",
                   f"{gc} (marks it failed; then `llora train --resume {d.id}` or `llora discard {d.id}`)", d.id)
           for d in debris.dead_runs]
    out += [Finding("orphan_staging", f"staging directory {p.name} was left by a process that is gone",
                    f"{gc} (removes it)", path=str(p)) for p in debris.staging_dead]
    for p in debris.orphan_dirs:
        if catalog_empty and (p / fs.SIDECAR).is_file():
            out.append(Finding("orphan_dir", f"artifacts/{p.name} has no catalog row, and the catalog is empty",
                               "restore the catalog: llora db restore FILE (db gc refuses to delete them)", path=str(p)))
        else:
            out.append(Finding("orphan_dir", f"artifacts/{p.name} has no catalog row (a write interrupted before its "
                               "commit)", f"{gc} (removes it)", path=str(p)))
    out += [Finding("discarded_files", f"artifact {aid} is discarded but its files are still on disk",
                    f"{gc} (deletes them; the row and history stay, R9)", aid) for aid in debris.discarded_with_files]
    out += [Finding("orphan_temp_file", f"temporary file {p.name} was left by a writer that is gone",
                    f"{gc} (removes it)", p.parent.name, str(p)) for p in debris.temp_files]
    out += [Finding("stale_sidecar", f"artifacts/{aid}/{fs.SIDECAR} records another state than the catalog (a "
                    "command killed between its commit and the sidecar's rewrite); the catalog is the truth",
                    f"{gc} (rewrites it from the catalog)", aid, str(store.layout.artifact_dir(aid) / fs.SIDECAR))
            for aid in debris.stale_sidecars]
    return out


# -- the checks only doctor makes --------------------------------------------------------------------------------

_REFERENCES = (  # (table, column) pointing at artifact.id
    (Lineage, "child_id"), (Lineage, "parent_id"), (ArtifactFile, "artifact_id"), (Event, "artifact_id"),
    (Evaluation, "artifact_id"), (Evaluation, "dataset_id"), (RequestLog, "base_id"), (RequestLog, "modifier_id"),
)
_RESTORE = "restore the catalog from a backup taken before the damage (llora db restore FILE, into an empty home)"


def dangling_references(session: Session) -> list[Finding]:
    """Rows (lineage, files, events, evaluations, request log) that name an artifact the catalog does not have.

    The foreign keys forbid them; they appear when the catalog was edited with the keys off (SQLite's default
    outside llora) or copied in part.
    """
    a = Artifact.__table__.c
    out = []
    for model, column in _REFERENCES:
        t = model.__table__
        col = t.c[column]
        q = select(t).where(col.is_not(None), ~exists().where(a.id == col))
        for row in session.execute(q).mappings():
            if t.name == "lineage":
                what = f"lineage edge {row['parent_id']} -> {row['child_id']} ({row['role']})"
            elif t.name == "artifact_file":
                what = f"file row {row['path']}"
            elif t.name == "event":
                what = f"event #{row['id']} ({row['event']})"
            else:
                what = f"{t.name.replace('_', ' ')} #{row['id']}"
            out.append(Finding("dangling_reference", f"{what} points at artifact {row[column]}, which does not exist",
                               _RESTORE, row[column]))
    return out


def history_gaps(session: Session) -> list[Finding]:
    """Artifacts whose state is not the end of an unbroken chain of event rows (create, then each transition)."""
    events: dict[str, list[Event]] = {}
    for e in session.execute(select(Event).order_by(Event.artifact_id, Event.id)).scalars():
        events.setdefault(e.artifact_id, []).append(e)
    fix = ("history is append-only and no command rewrites it: " + _RESTORE
           + "; or keep the catalog as it is, knowing this change is unrecorded")
    out = []
    for art in session.execute(select(Artifact).order_by(Artifact.created_at, Artifact.id)).scalars():
        chain = events.get(art.id, [])
        label = f"{art.kind} '{art.name}' ({art.id})"
        if not chain:
            out.append(Finding("missing_event", f"{label} is '{art.state}' but has no event row at all", fix, art.id))
            continue
        previous = None
        for e in chain:
            if e.from_state != previous:
                out.append(Finding("missing_event", f"{label}: event #{e.id} ({e.event}) starts from "
                                   f"'{e.from_state}' but the previous event left it '{previous}': a state change "
                                   "without its event row", fix, art.id))
            previous = e.to_state
        if previous != art.state:
            out.append(Finding("missing_event", f"{label} is '{art.state}' but its last event left it '{previous}': "
                               "a state change without its event row", fix, art.id))
    return out


def file_findings(store: Store, art: Artifact, temp_files: set[Path]) -> list[Finding]:
    """Files of one usable artifact that are missing, changed or unexpected (``Store.verify``'s checks)."""
    out = []
    label = f"{art.kind} '{art.name}' ({art.id}, {art.state})"
    restore = (f"copy the files back into artifacts/{art.id}/ from a copy of the home, or `llora import` an export "
               f"of it into a new home; if it is lost: llora discard {art.id} (refused while something deployed needs it)")
    directory = store.layout.artifact_dir(art.id)
    for p in store.file_problems(art.id):
        if p.kind == "unrecorded":
            if directory / p.path in temp_files:
                continue  # reported as orphan_temp_file
            out.append(Finding("unrecorded_file", f"{label}: {p.text}", f"move {directory / p.path} out of the "
                               "artifact directory (nothing in the catalog refers to it)", art.id, p.path))
        elif p.kind in ("missing", "directory_missing"):
            out.append(Finding("missing_file", f"{label}: {p.text}", restore, art.id, p.path))
        elif p.kind == "discarded_present":
            out.append(Finding("discarded_files", f"{label}: {p.text}", "llora db gc (deletes it)", art.id, p.path))
        else:
            out.append(Finding("corrupt_file", f"{label}: {p.text}", restore, art.id, p.path))
    return out


def diagnose(store: Store) -> DoctorReport:
    """Check the whole home: usable artifacts' files (sha256), transient artifacts' owners, lineage and other
    references, the event history of every state, and debris of interrupted commands. Changes nothing.

    Reads in one transaction (a consistent view of the catalog); files are hashed as they are on disk now.
    An empty catalog (no schema yet) has nothing to check but its artifacts/ and tmp/ directories.
    """
    checked: dict[str, int] = {}
    if store.schema.state == "empty":
        debris = files_only_debris(store)
        checked.update(artifacts=0, staging=len(store.layout.leftovers()))
        findings = _debris_findings(store, debris, catalog_empty=True)
        return DoctorReport(str(store.home), store.schema.url, checked, findings)
    with store.reading() as s:
        arts = list(s.execute(select(Artifact).order_by(Artifact.created_at, Artifact.id)).scalars())
        debris = find_debris(store, s)
        references = dangling_references(s)
        gaps = history_gaps(s)
        checked["events"] = s.execute(select(func.count()).select_from(Event)).scalar_one()
        checked["lineage"] = s.execute(select(func.count()).select_from(Lineage)).scalar_one()
    findings = _debris_findings(store, debris, catalog_empty=not arts)
    temp_files = set(debris.temp_files)
    usable = [a for a in arts if a.state in USABLE_STATES]
    files = 0
    for art in usable:
        found = file_findings(store, art, temp_files)
        findings.extend(found)
        files += store.file_count(art.id)
    findings += references + gaps
    checked.update(artifacts=len(arts), usable=len(usable), files=files,
                   transient=sum(a.state in TRANSIENT_STATES for a in arts),
                   staging=len(debris.staging_dead) + len(debris.staging_in_use))
    return DoctorReport(str(store.home), store.schema.url, checked, findings)

