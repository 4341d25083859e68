"""The Store: every read and write of the catalog goes through here.

Writes run in one ``BEGIN IMMEDIATE`` transaction each; lifecycle moves go
through ``llora_store.lifecycle.transition`` and the rule checks in
``llora_store.rules``. Library code above this layer gets plain dataclasses.
"""

from __future__ import annotations

import os
import re
import secrets
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import DataError, IntegrityError, OperationalError
from sqlmodel import Session

from llora_store import files as fs
from llora_store import lifecycle, rules
from llora_store.db import SchemaStatus, cannot_open, check_schema, database_url, default_home, make_engine
from llora_store.errors import Ambiguous, BadInput, Conflict, NotFound, RuleViolation, UserError
from llora_store.models import (
    GROUPS,
    KINDS,
    Artifact,
    ArtifactFile,
    Evaluation,
    Event,
    Lineage,
    RequestLog,
    utcnow,
    with_article,
)

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MIN_PREFIX = 4


def validate_name(name: str) -> str:
    if not NAME_RE.match(name) or ".." in name:
        raise BadInput(
            f"invalid name {name!r}: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit, without '/' or '..'",
        )
    return name


def new_id() -> str:
    return secrets.token_hex(6)


@dataclass(frozen=True)
class ArtifactSummary:
    id: str
    kind: str
    name: str
    state: str
    created_at: datetime
    parents: list[dict[str, str]]
    content_hash: str | None = None
    domain: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "name": self.name,
            "state": self.state,
            "parents": self.parents,
            "created_at": self.created_at.isoformat() + "Z",
            "content_hash": self.content_hash,
            "domain": self.domain,
        }


@dataclass(frozen=True)
class FileView:
    path: str
    sha256: str
    bytes: int
    deleted: bool


@dataclass(frozen=True)
class ArtifactDetail:
    summary: ArtifactSummary
    updated_at: datetime
    base_hash: str | None
    quantization: str | None
    metadata: dict[str, Any]
    files: list[FileView]
    children: list[dict[str, str]]
    directory: Path
    evaluations: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        out = self.summary.to_json()
        out.update(
            updated_at=self.updated_at.isoformat() + "Z",
            base_hash=self.base_hash,
            quantization=self.quantization,
            metadata=self.metadata,
            files=[{"path": f.path, "sha256": f.sha256, "bytes": f.bytes, "deleted": f.deleted} for f in self.files],
            children=self.children,
            directory=str(self.directory),
            evaluations=self.evaluations,
        )
        return out


@dataclass
class LineageNode:
    id: str
    kind: str
    name: str
    state: str
    role: str | None = None
    parents: list[LineageNode] = field(default_factory=list)
    children: list[LineageNode] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "name": self.name,
            "state": self.state,
            "role": self.role,
            "parents": [p.to_json() for p in self.parents],
            "children": [c.to_json() for c in self.children],
        }


@dataclass(frozen=True)
class EventView:
    at: datetime
    event: str
    from_state: str | None
    to_state: str
    command: str
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {
            "at": self.at.isoformat() + "Z",
            "event": self.event,
            "from": self.from_state,
            "to": self.to_state,
            "command": self.command,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class VerifyReport:
    id: str
    name: str
    checked: int
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "checked": self.checked, "ok": self.ok, "problems": self.problems}


@dataclass(frozen=True)
class GcReport:
    staging_removed: list[str]
    staging_in_use: list[str]
    orphans_removed: list[str]
    discarded_files_removed: list[str]
    dead_runs_failed: list[str] = field(default_factory=list)
    temp_files_removed: list[str] = field(default_factory=list)
    sidecars_rewritten: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class FileProblem:
    path: str  # relative to the artifact directory ("" for the directory itself)
    kind: str  # missing, size, changed, unrecorded, discarded_present, directory_missing
    text: str


class Store:
    """A llora home: the catalog database plus the artifact directories."""

    def __init__(self, home: Path, *, auto_create: bool = True) -> None:
        self.home = home
        self.layout = fs.Layout(home)
        try:
            self.layout.ensure()
        except OSError as e:
            raise UserError(
                f"cannot create the llora home at {home}: {e.strerror}",
                hint="set LLORA_HOME (or --home) to a writable directory",
            ) from None
        self.engine = make_engine(database_url(home))
        self._write_engine = self.engine.execution_options(llora_write=True)
        try:
            self.schema: SchemaStatus = check_schema(self.engine, auto_create=auto_create)
        except OperationalError as e:
            raise cannot_open(self.engine, e) from None

    # -- sessions ---------------------------------------------------------
    @contextmanager
    def reading(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as s:
            yield s

    @contextmanager
    def writing(self) -> Iterator[Session]:
        """One write transaction, begun IMMEDIATE (PostgreSQL: under the advisory write lock), committed on success.

        A value the database refuses (PostgreSQL enforces VARCHAR lengths, which SQLite ignores, and refuses
        NUL characters in text) is BadInput: the transaction is rolled back, nothing was written.
        """
        try:
            with Session(self._write_engine, expire_on_commit=False) as s:
                with s.begin():
                    yield s
        except DataError as e:
            reason = " ".join(str(getattr(e, "orig", e)).split())
            raise BadInput(f"the catalog refused a value: {reason}; nothing was written",
                           hint="shorten the name, domain or text (see the column sizes in llora_store.models)") from None

    # -- lookups ----------------------------------------------------------
    def resolve(self, ref: str, *, kinds: tuple[str, ...] | None = None, session: Session | None = None) -> Artifact:
        """An artifact by exact id, exact name, or unique id prefix (at least 4 characters)."""
        if session is None:
            with self.reading() as s:
                return self.resolve(ref, kinds=kinds, session=s)
        art = session.get(Artifact, ref) or session.execute(select(Artifact).where(Artifact.name == ref)).scalars().first()
        if art is None and len(ref) >= MIN_PREFIX and re.fullmatch(r"[0-9a-f]+", ref):
            matches = session.execute(select(Artifact).where(Artifact.id.startswith(ref))).scalars().all()
            if len(matches) > 1:
                cands = [f"{m.id} ({m.kind} '{m.name}')" for m in matches]
                raise Ambiguous(
                    f"'{ref}' matches {len(matches)} artifacts: " + ", ".join(cands),
                    candidates=[m.id for m in matches],
                    hint="use a longer prefix or the full id",
                )
            art = matches[0] if matches else None
        if art is None:
            what = " or ".join(kinds) if kinds else "artifact"
            raise NotFound(
                f"no {what} matches '{ref}' (by id, name or id prefix of at least {MIN_PREFIX} characters)",
                hint=f"list them with: llora {GROUPS[kinds[0]] if kinds else 'bases'} list",
            )
        if kinds and art.kind not in kinds:
            raise BadInput(f"'{ref}' is {art.kind} '{art.name}' ({art.id}), not {' or '.join(with_article(k) for k in kinds)}")
        return art

    def get(self, artifact_id: str) -> Artifact:
        with self.reading() as s:
            art = s.get(Artifact, artifact_id)
        if art is None:
            raise NotFound(f"no artifact with id {artifact_id}")
        return art

    def find_by_hash(self, content_hash: str, kind: str | None = None) -> list[Artifact]:
        with self.reading() as s:
            q = select(Artifact).where(Artifact.content_hash == content_hash)
            if kind:
                q = q.where(Artifact.kind == kind)
            return list(s.execute(q).scalars().all())

    def unique_name(self, stem: str) -> str:
        """``stem``, or ``stem-2``, ``stem-3``, ... : the first name not taken (names are never reused)."""
        stem = stem[:58]
        with self.reading() as s:
            taken = set(s.execute(select(Artifact.name).where(Artifact.name.startswith(stem))).scalars())
        return next(n for n in (stem, *(f"{stem}-{i}" for i in range(2, 1_000_000))) if n not in taken)

    def artifacts(self, kind: str | None = None) -> list[Artifact]:
        """Full rows (with metadata), for library code that needs more than a summary."""
        with self.reading() as s:
            q = select(Artifact).order_by(Artifact.created_at)
            if kind:
                q = q.where(Artifact.kind == kind)
            return list(s.execute(q).scalars())

    def list(self, kind: str | None = None, state: str | None = None) -> list[ArtifactSummary]:
        """Summaries, oldest first; two queries whatever the catalog size."""
        if kind is not None and kind not in KINDS:
            raise BadInput(f"unknown kind {kind!r}; kinds are: {', '.join(KINDS)}")
        if state is not None and kind is not None and state not in lifecycle.states(kind):
            raise BadInput(f"{with_article(kind)} is never in state {state!r}; states: {', '.join(lifecycle.states(kind))}")
        a = Artifact.__table__.c
        q = select(a.id, a.kind, a.name, a.state, a.created_at, a.content_hash, a.domain).order_by(a.created_at, a.id)
        if kind:
            q = q.where(a.kind == kind)
        if state:
            q = q.where(a.state == state)
        with self.engine.connect() as conn:
            rows = conn.execute(q).all()
            lq = select(Lineage.__table__.c.child_id, Lineage.__table__.c.parent_id, Lineage.__table__.c.role)
            edges: dict[str, list[dict[str, str]]] = {}
            for child, parent, role in conn.execute(lq):
                edges.setdefault(child, []).append({"id": parent, "role": role})
        return [
            ArtifactSummary(r[0], r[1], r[2], r[3], r[4], edges.get(r[0], []), r[5], r[6]) for r in rows
        ]

    def describe(self, ref: str) -> ArtifactDetail:
        with self.reading() as s:
            art = self.resolve(ref, session=s)
            return self._detail(s, art)

    def _detail(self, s: Session, art: Artifact) -> ArtifactDetail:
        parents = [
            {"id": e.parent_id, "role": e.role}
            for e in s.execute(select(Lineage).where(Lineage.child_id == art.id)).scalars()
        ]
        children = [
            {"id": e.child_id, "role": e.role}
            for e in s.execute(select(Lineage).where(Lineage.parent_id == art.id)).scalars()
        ]
        files = [
            FileView(f.path, f.sha256, f.bytes, f.deleted_at is not None)
            for f in s.execute(select(ArtifactFile).where(ArtifactFile.artifact_id == art.id).order_by(ArtifactFile.path)).scalars()
        ]
        summary = ArtifactSummary(art.id, art.kind, art.name, art.state, art.created_at, parents, art.content_hash, art.domain)
        evals = [
            {"at": e.at.isoformat() + "Z", "dataset": e.dataset_id, "split": e.split, "metrics": e.metrics}
            for e in s.execute(select(Evaluation).where(Evaluation.artifact_id == art.id).order_by(Evaluation.id)).scalars()
        ]
        return ArtifactDetail(
            summary, art.updated_at, art.base_hash, art.quantization, dict(art.meta), files, children,
            self.layout.artifact_dir(art.id), evals,
        )

    def path_of(self, ref: str) -> Path:
        """The directory of an artifact's files (it must not be discarded)."""
        art = self.resolve(ref)
        if art.state == "discarded":
            raise NotFound(f"{art.kind} '{art.name}' ({art.id}) is discarded; its files were deleted")
        return self.layout.artifact_dir(art.id)

    def history(self, ref: str) -> list[EventView]:
        with self.reading() as s:
            art = self.resolve(ref, session=s)
            q = select(Event).where(Event.artifact_id == art.id).order_by(Event.id)
            return [EventView(e.at, e.event, e.from_state, e.to_state, e.command, e.reason) for e in s.execute(q).scalars()]

    def lineage(self, ref: str) -> LineageNode:
        """The artifact with its ancestors (``parents``) and descendants (``children``), recursively."""
        with self.reading() as s:
            art = self.resolve(ref, session=s)
            edges = s.execute(select(Lineage)).scalars().all()
            ids = {e.child_id for e in edges} | {e.parent_id for e in edges} | {art.id}
            arts = {a.id: a for a in s.execute(select(Artifact).where(Artifact.id.in_(ids))).scalars()}
        up: dict[str, list[tuple[str, str]]] = {}
        down: dict[str, list[tuple[str, str]]] = {}
        for e in edges:
            up.setdefault(e.child_id, []).append((e.parent_id, e.role))
            down.setdefault(e.parent_id, []).append((e.child_id, e.role))

        def node(aid: str, role: str | None) -> LineageNode:
            a = arts[aid]
            return LineageNode(a.id, a.kind, a.name, a.state, role)

        def grow(n: LineageNode, graph: dict, attr: str, seen: frozenset[str]) -> LineageNode:
            for other, role in sorted(graph.get(n.id, []), key=lambda t: (arts[t[0]].created_at, t[0])):
                if other not in seen:
                    getattr(n, attr).append(grow(node(other, role), graph, attr, seen | {other}))
            return n

        root = node(art.id, None)
        root.parents = grow(node(art.id, None), up, "parents", frozenset({art.id})).parents
        root.children = grow(node(art.id, None), down, "children", frozenset({art.id})).children
        return root

    def dependents(self, s: Session, artifact_id: str) -> list[Artifact]:
        """Every artifact that needs ``artifact_id`` (transitively, through DEPENDENCY_ROLES)."""
        out: dict[str, Artifact] = {}
        frontier = [artifact_id]
        while frontier:
            q = select(Lineage).where(Lineage.parent_id.in_(frontier), Lineage.role.in_(rules.DEPENDENCY_ROLES))
            child_ids = {e.child_id for e in s.execute(q).scalars()} - set(out) - {artifact_id}
            if not child_ids:
                break
            for a in s.execute(select(Artifact).where(Artifact.id.in_(child_ids))).scalars():
                out[a.id] = a
            frontier = list(child_ids)
        return list(out.values())

    def children_by_role(self, s: Session, artifact_id: str, role: str) -> list[Artifact]:
        q = select(Artifact).join(Lineage, Lineage.child_id == Artifact.id).where(
            Lineage.parent_id == artifact_id, Lineage.role == role
        ).order_by(Artifact.created_at)
        return list(s.execute(q).scalars())

    def parents_by_role(self, s: Session, artifact_id: str, role: str) -> list[Artifact]:
        q = select(Artifact).join(Lineage, Lineage.parent_id == Artifact.id).where(
            Lineage.child_id == artifact_id, Lineage.role == role
        )
        return list(s.execute(q).scalars())

    # -- creation ---------------------------------------------------------
    def create(
        self,
        kind: str,
        name: str,
        *,
        state: str | None = None,
        staging: Path | None = None,
        parents: list[tuple[str, str]] = (),
        metadata: dict[str, Any] | None = None,
        base_hash: str | None = None,
        quantization: str | None = None,
        domain: str | None = None,
        command: str = "",
        reason: str = "",
        artifact_id: str | None = None,
        unique_content: bool = False,
        transitions: list[tuple[str, str]] = (),
        known_hashes: dict[str, fs.FileRecord] | None = None,
    ) -> Artifact:
        """Register an artifact and publish its staged files, atomically (R10).

        ``staging`` (from ``new_staging``) holds the complete payload. It is
        hashed, the rows are inserted, the directory is renamed into place and
        only then is the transaction committed; any failure removes what was
        written, so a usable artifact never has half its files. With
        ``unique_content`` an artifact of the same kind and content hash that is
        not discarded is a Conflict (a base is stored once).
        """
        if kind not in KINDS:
            raise BadInput(f"unknown kind {kind!r}; kinds are: {', '.join(KINDS)}")
        validate_name(name)
        state = state or lifecycle.INITIAL[kind][0]
        if state not in lifecycle.INITIAL[kind]:
            raise BadInput(f"{with_article(kind)} cannot be created in state {state!r}")
        artifact_id = artifact_id or new_id()
        published: Path | None = None
        try:
            records = fs.scan(staging, known_hashes) if staging is not None else []
            chash = fs.content_hash(records) if staging is not None else None
            with self.writing() as s:
                if s.execute(select(Artifact.id).where(Artifact.name == name)).first() is not None:
                    raise Conflict(f"the name '{name}' is already taken", hint="choose another with --name")
                if unique_content and chash is not None:
                    same = s.execute(
                        select(Artifact).where(
                            Artifact.kind == kind, Artifact.content_hash == chash, Artifact.state != "discarded"
                        )
                    ).scalars().first()
                    if same is not None:
                        raise Conflict(
                            f"this content is already registered as {kind} '{same.name}' ({same.id})",
                            hint=f"use the existing one: llora show {same.id}",
                        )
                for pid, _role in parents:
                    if s.get(Artifact, pid) is None:
                        raise NotFound(f"parent artifact {pid} does not exist")
                art = Artifact(
                    id=artifact_id, kind=kind, name=name, state=state, content_hash=chash,
                    base_hash=base_hash, quantization=quantization, domain=domain, meta=metadata or {},
                )
                s.add(art)
                s.flush()
                for pid, role in parents:
                    s.add(Lineage(child_id=artifact_id, parent_id=pid, role=role))
                for r in records:
                    s.add(ArtifactFile(artifact_id=artifact_id, path=r.path, sha256=r.sha256, bytes=r.bytes))
                s.add(Event(artifact_id=artifact_id, event="create", from_state=None, to_state=state,
                            command=command[:256], reason=reason[:1024]))
                for other_id, event in transitions:  # e.g. the adapter's "merge", in the same transaction
                    other = s.get(Artifact, other_id)
                    if other is None:
                        raise NotFound(f"artifact {other_id} does not exist")
                    if event == "merge" and kind == "merged":  # R1-R4 hold in the store, whoever calls it
                        into = [s.get(Artifact, pid) for pid, role in parents if role == "merge_base"]
                        if len(into) != 1:
                            raise BadInput(f"a merged artifact names exactly one merge_base parent, got {len(into)}")
                        rules.check_merge_record(other, into[0], metadata)
                    lifecycle.transition(s, other, event, command=command, reason=f"-> {kind} '{name}' ({artifact_id})")
                s.flush()
                target = staging if staging is not None else self.layout.new_staging(artifact_id)
                (target / fs.OWNER).unlink(missing_ok=True)
                fs.write_json_atomic(target / fs.SIDECAR, self._sidecar(s, art))
                published = self.layout.publish(target, artifact_id)
            for other_id, _ in transitions:
                self._refresh_sidecar(other_id)
            return art
        except BaseException as exc:
            if published is not None:
                fs.remove_tree(published)
            elif staging is not None:
                fs.remove_tree(staging)
            if isinstance(exc, IntegrityError):
                raise Conflict(f"could not register {kind} '{name}': {exc.orig}") from exc
            raise

    def finish(self, ref: str, staging: Path, *, metadata: dict[str, Any] | None = None, command: str = "",
               reason: str = "") -> Artifact:
        """Publish the files of an artifact in ``training`` and move it to ``trained``, atomically (R10).

        Same protocol as ``create``: rows, rename into place, then commit; a
        failure before the commit removes the directory and leaves the
        artifact in ``training``.
        """
        published: Path | None = None
        try:
            records = fs.scan(staging)
            with self.writing() as s:
                art = self.resolve(ref, session=s)
                lifecycle.transition(s, art, "finish", command=command, reason=reason)
                art.content_hash = fs.content_hash(records)
                art.meta = {**art.meta, **(metadata or {})}
                for old in s.execute(select(ArtifactFile).where(ArtifactFile.artifact_id == art.id)).scalars():
                    s.delete(old)
                s.flush()
                for r in records:
                    s.add(ArtifactFile(artifact_id=art.id, path=r.path, sha256=r.sha256, bytes=r.bytes))
                s.flush()
                (staging / fs.OWNER).unlink(missing_ok=True)
                fs.write_json_atomic(staging / fs.SIDECAR, self._sidecar(s, art))
                stale = self.layout.artifact_dir(art.id)
                if stale.exists():  # a sidecar-only dir from an earlier failed attempt
                    fs.remove_tree(stale)
                published = self.layout.publish(staging, art.id)
            return art
        except BaseException:
            if published is not None:
                fs.remove_tree(published)
            else:
                fs.remove_tree(staging)
            raise

    def record_evaluation(self, ref: str, metrics: dict[str, Any], *, dataset_id: str | None = None,
                          split: str = "test") -> None:
        """Store eval metrics; allowed in any state (an observation, not a change: R7 does not apply)."""
        with self.writing() as s:
            art = self.resolve(ref, session=s)
            s.add(Evaluation(artifact_id=art.id, dataset_id=dataset_id, split=split, metrics=metrics))

    def log_request(self, *, base_id: str, modifier_id: str | None, engine: str, client: str, prompt: str,
                    response: str, tokens_in: int, tokens_out: int, latency_ms: float, ttft_ms: float | None,
                    params: dict[str, Any]) -> int:
        """Append one served request to the request log; returns its id."""
        with self.writing() as s:
            row = RequestLog(base_id=base_id, modifier_id=modifier_id, engine=engine, client=client[:64],
                             prompt=prompt, response=response, tokens_in=tokens_in, tokens_out=tokens_out,
                             latency_ms=latency_ms, ttft_ms=ttft_ms, params=params)
            s.add(row)
            s.flush()
            return int(row.id)

    def request_logs(self, *, modifier: str | None = None, base: str | None = None,
                     limit: int = 50) -> list[dict[str, Any]]:
        """The newest ``limit`` requests, newest first; ``modifier`` may be a ref or "none" (base alone)."""
        with self.reading() as s:
            q = select(RequestLog).order_by(RequestLog.id.desc()).limit(limit)
            if modifier == "none":
                q = q.where(RequestLog.modifier_id.is_(None))
            elif modifier is not None:
                q = q.where(RequestLog.modifier_id == self.resolve(modifier, session=s).id)
            if base is not None:
                q = q.where(RequestLog.base_id == self.resolve(base, session=s).id)
            names = {}
            out = []
            for r in s.execute(q).scalars():
                for i in (r.base_id, r.modifier_id):
                    if i and i not in names:
                        names[i] = self.resolve(i, session=s).name
                out.append({"id": r.id, "at": r.at.isoformat(timespec="seconds") + "Z", "base": {"id": r.base_id,
                            "name": names[r.base_id]},
                            "modifier": {"id": r.modifier_id, "name": names[r.modifier_id]} if r.modifier_id else None,
                            "engine": r.engine, "client": r.client, "prompt": r.prompt, "response": r.response,
                            "tokens_in": r.tokens_in, "tokens_out": r.tokens_out, "latency_ms": r.latency_ms,
                            "ttft_ms": r.ttft_ms, "params": r.params})
            return out

    def new_staging(self, artifact_id: str) -> Path:
        """A staging directory for files of a future artifact, marked with this process as owner."""
        path = self.layout.new_staging(artifact_id)
        (path / fs.OWNER).write_text(f"{socket.gethostname()} {os.getpid()}\n")
        return path

    def _sidecar(self, s: Session, art: Artifact) -> dict[str, Any]:
        d = self._detail(s, art)
        out = d.to_json()
        out.pop("directory", None)
        return out

    def _refresh_sidecar(self, artifact_id: str) -> None:
        with self.reading() as s:
            art = s.get(Artifact, artifact_id)
            data = self._sidecar(s, art)
        directory = self.layout.artifact_dir(artifact_id)
        if directory.exists():
            fs.write_json_atomic(directory / fs.SIDECAR, data)

    # -- lifecycle --------------------------------------------------------
    def apply(self, ref: str, event: str, *, command: str = "", reason: str = "",
              metadata: dict[str, Any] | None = None) -> Artifact:
        """Apply a lifecycle event, with the rules that guard it; returns the updated row. ``metadata``: merged into
        the artifact's metadata in the same transaction (the last change allowed before a deploy, R7)."""
        if event == "discard":
            return self.discard(ref, command=command, reason=reason)
        with self.writing() as s:
            art = self.resolve(ref, session=s)
            if event == "deploy":
                self._check_deploy(s, art)
            if event == "retire":
                deps = [d for d in self.dependents(s, art.id) if d.kind not in ("adapter",)]
                rules.check_no_deployed_dependents(art, deps, "retire")
            lifecycle.transition(s, art, event, command=command, reason=reason)
            if metadata:
                art.meta = {**art.meta, **metadata}
                s.add(art)
        self._refresh_sidecar(art.id)
        return art

    def deploy(self, ref: str, *, command: str = "", reason: str = "", metadata: dict[str, Any] | None = None) -> Artifact:
        """Deploy (R5-R8); ``metadata`` merged in the same transaction (e.g. a modifier's serving defaults)."""
        return self.apply(ref, "deploy", command=command, reason=reason, metadata=metadata)

    def retire(self, ref: str, *, command: str = "", reason: str = "") -> Artifact:
        return self.apply(ref, "retire", command=command, reason=reason)

    def _check_deploy(self, s: Session, art: Artifact) -> None:
        rules.check_runnable(art)  # R5
        if art.kind == "modifier":
            bases = self.parents_by_role(s, art.id, "runs_on")
            if not bases:
                raise RuleViolation("R6", f"modifier '{art.name}' ({art.id}) records no base it runs on")
            base = bases[0]
            rules.check_modifier_base(art, base)
            if base.state != "deployed":
                raise RuleViolation(
                    "R6",
                    f"modifier '{art.name}' ({art.id}) runs on {base.kind} '{base.name}', which is '{base.state}'",
                    hint=f"deploy its base first: llora deploy {base.id}",
                )
        elif art.kind == "router":
            bases = self.parents_by_role(s, art.id, "runs_on")
            modifiers = self.parents_by_role(s, art.id, "routes_to")
            rules.check_router_deployable(art, bases[0] if bases else None, modifiers)

    def discard(self, ref: str, *, command: str = "", reason: str = "") -> Artifact:
        """Discard: state and file rows change in one transaction, then the files go (R9).

        The row, its lineage and its history stay. Deleting after the commit
        means a crash can only leave files of a discarded artifact behind
        (``llora db gc`` removes them), never a live artifact without files.
        """
        with self.writing() as s:
            art = self.resolve(ref, session=s)
            rules.check_no_deployed_dependents(art, self.dependents(s, art.id), "discard")
            lifecycle.transition(s, art, "discard", command=command, reason=reason)
            now = utcnow()
            for f in s.execute(select(ArtifactFile).where(ArtifactFile.artifact_id == art.id)).scalars():
                if f.deleted_at is None:
                    f.deleted_at = now
                    s.add(f)
        self._delete_payload(art.id)
        self._refresh_sidecar(art.id)
        return art

    def _delete_payload(self, artifact_id: str) -> None:
        directory = self.layout.artifact_dir(artifact_id)
        if not directory.exists():
            return
        for p in sorted(directory.iterdir()):
            if p.name == fs.SIDECAR:
                continue
            if p.is_dir() and not p.is_symlink():
                fs.remove_tree(p)
            else:
                p.unlink(missing_ok=True)

    def add_derived(self, ref: str, rel_path: str, source: Path, meta: dict[str, Any] | None = None) -> FileView:
        """Move ``source`` into the artifact as ``rel_path`` (under ``derived/``): an engine's conversion of the
        payload, recorded with its sha256 and checked by verify, outside the content hash, allowed in any state
        but discarded (deployed artifacts included: the payload does not change). Replaces an earlier version."""
        if not rel_path.startswith(fs.DERIVED) or ".." in Path(rel_path).parts:
            raise ValueError(f"derived files live under {fs.DERIVED}, got {rel_path!r}")
        sha, size = fs.sha256_file(source), source.stat().st_size
        with self.writing() as s:
            art = self.resolve(ref, session=s)
            if art.state == "discarded":
                raise BadInput(f"{art.kind} '{art.name}' is discarded")
            target = self.layout.artifact_dir(art.id) / rel_path
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(source, target)
            for old in s.execute(select(ArtifactFile).where(ArtifactFile.artifact_id == art.id,
                                                            ArtifactFile.path == rel_path)).scalars():
                s.delete(old)
            s.flush()
            s.add(ArtifactFile(artifact_id=art.id, path=rel_path, sha256=sha, bytes=size))
            if meta is not None:
                art.meta = {**art.meta, **meta}
                s.add(art)
            art_id = art.id
        self._refresh_sidecar(art_id)
        return FileView(rel_path, sha, size, False)

    def update_metadata(self, ref: str, patch: dict[str, Any], *, command: str = "") -> Artifact:
        """Merge ``patch`` into an artifact's metadata; refused on a deployed artifact (R7)."""
        with self.writing() as s:
            art = self.resolve(ref, session=s)
            rules.check_not_deployed(art, "change its metadata")
            art.meta = {**art.meta, **patch}
            art.updated_at = utcnow()
            s.add(art)
        self._refresh_sidecar(art.id)
        return art

    # -- integrity --------------------------------------------------------
    def verify(self, ref: str) -> VerifyReport:
        """Re-hash every recorded file; report missing, changed, resized and unexpected files."""
        detail = self.describe(ref)
        problems = self.file_problems(detail.summary.id, detail=detail)
        checked = sum(not f.deleted for f in detail.files)
        return VerifyReport(detail.summary.id, detail.summary.name, checked, [p.text for p in problems])

    def file_count(self, artifact_id: str) -> int:
        """How many recorded files of the artifact are meant to be on disk (not deleted by discard)."""
        with self.reading() as s:
            q = select(ArtifactFile).where(ArtifactFile.artifact_id == artifact_id, ArtifactFile.deleted_at.is_(None))
            return len(s.execute(q).scalars().all())

    def file_problems(self, artifact_id: str, *, detail: ArtifactDetail | None = None) -> list[FileProblem]:
        """Each difference between the artifact's recorded files and its directory, by kind: ``missing``,
        ``size``, ``changed`` (sha256), ``unrecorded``, ``discarded_present``, ``directory_missing``.

        Raises NotFound for an unknown artifact.
        """
        detail = detail or self.describe(artifact_id)
        directory = detail.directory
        problems: list[FileProblem] = []
        recorded = {f.path for f in detail.files}
        for f in detail.files:
            p = directory / f.path
            if f.deleted:
                if p.exists():
                    problems.append(FileProblem(f.path, "discarded_present", f"{f.path}: discarded but still on disk"))
                continue
            if not p.is_file():
                problems.append(FileProblem(f.path, "missing", f"{f.path}: missing"))
                continue
            size = p.stat().st_size
            if size != f.bytes:
                problems.append(FileProblem(f.path, "size", f"{f.path}: size {size} bytes, recorded {f.bytes}"))
                continue
            if fs.sha256_file(p) != f.sha256:
                problems.append(FileProblem(f.path, "changed",
                                            f"{f.path}: content changed (sha256 differs from the catalog)"))
        if directory.exists():
            for p in sorted(directory.rglob("*")):
                rel = p.relative_to(directory).as_posix()
                if p.is_file() and rel not in fs.INTERNAL and rel not in recorded and not _sidecar_in_flight(rel):
                    problems.append(FileProblem(rel, "unrecorded", f"{rel}: not recorded in the catalog"))
        elif detail.files and any(not f.deleted for f in detail.files):
            problems = [FileProblem("", "directory_missing", f"artifact directory {directory} is missing")]
        return problems

    def gc(self, *, dry_run: bool = False) -> GcReport:
        """Repair the debris of interrupted commands (R10), as ``health.find_debris`` lists it, and nothing else:
        runs whose process died go from their transient state to ``failed`` (with an event row); dead staging
        dirs, artifact dirs without a row, files of discarded artifacts and dead writers' temporary files go;
        sidecars (llora.json) recording another state than the catalog are rewritten from it.

        Raises Conflict, changing nothing, when the catalog has no artifact at all but artifacts/ has published
        directories (with a sidecar): a lost catalog, whose files wait for ``llora db restore``, not orphans.
        """
        from llora_store import health

        with self.writing() as s:  # holds the write lock: no create can be half-way meanwhile
            if self.schema.state == "empty":  # no tables yet (a fresh or lost catalog): only files to look at
                debris = health.files_only_debris(self)
            else:
                debris = health.find_debris(self, s)
            published = [p for p in debris.orphan_dirs if (p / fs.SIDECAR).is_file()]
            if published and (self.schema.state == "empty" or s.execute(select(Artifact.id).limit(1)).first() is None):
                raise Conflict(
                    f"the catalog is empty but {self.layout.artifacts} holds {len(published)} published artifact "
                    "directories (with their llora.json); gc would delete them all, so it changed nothing",
                    hint="restore the catalog first: llora db restore FILE (or move those directories away yourself)")
            if not dry_run:
                for d in debris.dead_runs:
                    art = s.get(Artifact, d.id)
                    lifecycle.transition(s, art, "fail", command="llora db gc", reason=d.reason)
                for p in [*debris.staging_dead, *debris.orphan_dirs, *debris.temp_files]:
                    fs.remove_tree(p)
                for aid in debris.discarded_with_files:
                    self._delete_payload(aid)
        if not dry_run:
            for aid in {d.id for d in debris.dead_runs} | set(debris.stale_sidecars):
                self._refresh_sidecar(aid)  # only where a directory exists (a run publishes at finish)
        return GcReport([p.name for p in debris.staging_dead], [p.name for p in debris.staging_in_use],
                        [p.name for p in debris.orphan_dirs], debris.discarded_with_files,
                        [d.id for d in debris.dead_runs], [f"{p.parent.name}/{p.name}" for p in debris.temp_files],
                        list(debris.stale_sidecars))


def _sidecar_in_flight(rel: str) -> bool:
    """Whether ``rel`` is the temporary file of a sidecar write still in progress (``files.write_json_atomic``, by a
    live process): about to be renamed over llora.json, not an unrecorded file. A dead writer's is debris (doctor)."""
    from llora_store import health

    owner = health.temp_file_owner(rel)
    return owner is not None and health.owner_alive(*owner)


def open_store(home: Path | str | None = None, *, auto_create: bool = True) -> Store:
    """Open (creating and migrating a fresh one) the catalog at ``home`` or ``$LLORA_HOME``."""
    return Store(Path(home).expanduser().resolve() if home is not None else default_home(), auto_create=auto_create)
