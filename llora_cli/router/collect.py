"""`llora router collect`: measured answers of a base and of each of its modifiers -> a scenario set.

For every query of the given datasets' training split, each candidate (the base alone, ``"none"``, and every
modifier trained on the base, by id) answers greedily on the engine the user will serve with, and the task's
checker scores the answer 1/0; the tokens generated are counted. The result is a catalogued ``scenarios``
artifact: ``scenarios.jsonl`` (one row per query: ``{query, domain, dataset, row, candidates: {id|"none":
{score, tokens, text}}}``) and ``summary.json``.

Resume: finished rows are appended to ``$LLORA_HOME/tmp/collect-<key>/rows.jsonl``, ``key`` a hash of what is
being built (base, modifiers, datasets, limit, engine, token limits); the same command run again skips them.
The artifact appears only when every row is done (R10); ``llora db gc`` removes a partial collection whose
process is gone.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from llora_cli.router.losses import NONE, best_index
from llora_store import Store, rules
from llora_store.errors import BadInput, NotFound
from llora_store.files import OWNER
from llora_store.models import Artifact

BASE_KINDS = ("base", "merged", "compressed")
CHUNK = 8  # rows measured (all candidates) between two writes of the resume file
ROWS_FILE = "scenarios.jsonl"
SUMMARY_FILE = "summary.json"


@dataclass(frozen=True)
class Query:
    dataset: Artifact
    task: str
    row_index: int
    row: dict

    @property
    def key(self) -> str:
        return f"{self.dataset.id}:{self.row_index}"

    @property
    def messages(self) -> list[dict]:
        msgs = self.row["messages"]
        end = next((i for i, m in enumerate(msgs) if m["role"] == "assistant"), len(msgs))
        return [{"role": m["role"], "content": m["content"]} for m in msgs[:end]]

    @property
    def text(self) -> str:
        """What the router reads: the last user message."""
        return next(m["content"] for m in reversed(self.messages) if m["role"] == "user")


def base_and_modifiers(store: Store, base_ref: str) -> tuple[Artifact, list[Artifact]]:
    """The base and every modifier trained on it that can run (trained or deployed), oldest first."""
    base = store.resolve(base_ref, kinds=BASE_KINDS)
    rules.check_runnable(base)
    if base.state not in ("ready", "deployed"):
        raise BadInput(f"{base.kind} '{base.name}' is '{base.state}'; collect on a ready or deployed base")
    from llora_cli.classify import is_classifier

    with store.reading() as s:
        children = store.children_by_role(s, base.id, "runs_on")
    mods = sorted((m for m in children if m.kind == "modifier" and m.state in ("trained", "deployed")
                   and not is_classifier(m)),  # a classifier answers no chat scenario
                  key=lambda m: (m.created_at, m.id))
    for m in mods:
        rules.check_modifier_base(m, base)  # R6
    if not mods:
        raise NotFound(f"no trained or deployed modifier runs on {base.kind} '{base.name}': nothing to route to",
                       hint=f"train one: llora train --base {base.name} --data D --kind modifier --domain DOMAIN")
    return base, mods


def select_modifiers(store: Store, base: Artifact, runnable: list[Artifact], refs: list[str]) -> list[Artifact]:
    """The modifiers ``refs`` names, in the order of ``runnable`` (every runnable modifier of ``base``)."""
    by_id = {m.id: m for m in runnable}
    chosen: set[str] = set()
    for ref in refs:
        m = store.resolve(ref, kinds=("modifier",))
        if m.id not in by_id:
            raise BadInput(f"modifier '{m.name}' ({m.state}) is not a runnable modifier of {base.kind} '{base.name}'",
                           hint="runnable modifiers: " + ", ".join(x.name for x in runnable))
        if m.id in chosen:
            raise BadInput(f"modifier '{m.name}' is given twice")
        chosen.add(m.id)
    return [m for m in runnable if m.id in chosen]


def checked_queries(store: Store, data_refs: list[str], *, split: str, limit: int | None,
                    command: str = "") -> list[Query]:
    """Queries of each dataset's ``split`` (first ``limit`` per dataset); a dataset without a checker is refused."""
    from llora_cli import tasks
    from llora_cli.data import load_data

    if not data_refs:
        raise BadInput("give at least one dataset: --data D")
    if limit is not None and limit < 1:
        raise BadInput(f"--limit must be at least 1, got {limit}")
    queries: list[Query] = []
    seen: set[str] = set()
    for ref in data_refs:
        data = load_data(store, ref, command=command)
        if data.artifact.id in seen:
            raise BadInput(f"dataset '{data.artifact.name}' is given twice")
        seen.add(data.artifact.id)
        if data.task not in tasks.KINDS:
            raise BadInput(f"dataset '{data.artifact.name}' has no checker (task {data.task!r}): the router learns "
                           "from answers scored 1/0 by a task's checker, and this data cannot score them",
                           hint="use task data with a checker: llora data make code|reasoning|automation, "
                                "or llora data add FILE --task reasoning|code|automation")
        if data.format != "chat":
            raise BadInput(f"dataset '{data.artifact.name}' holds {data.format} rows, not chat rows; nothing to ask")
        rows = data.test if split == "test" else data.train
        if split == "test" and not rows:
            raise BadInput(f"dataset '{data.artifact.name}' has no held-out (test) split")
        rows = rows[:limit] if limit is not None else rows
        queries += [Query(data.artifact, data.task, i, r) for i, r in enumerate(rows)]
    return queries


def max_tokens_for(task: str) -> int:
    from llora_cli.evaluate import MAX_NEW_TOKENS

    return MAX_NEW_TOKENS.get(task, 64)


def measure(engine, candidates: list[Artifact | None], queries: list[Query],
            on_row: Callable[[Query, dict], None]) -> None:
    """Every candidate's greedy answer to every query, scored by the task's checker. ``on_row(query, outcomes)``
    per query, ``outcomes = {id|"none": {"score", "tokens", "text"}}``, in chunks so a batch mixes candidates."""
    from llora_cli import tasks

    for start in range(0, len(queries), CHUNK):
        chunk = queries[start:start + CHUNK]
        jobs = [[engine.submit(q.text, messages=q.messages, modifier=m, max_tokens=max_tokens_for(q.task),
                               temperature=0.0) for m in candidates] for q in chunk]
        for q, row_jobs in zip(chunk, jobs):
            outcomes = {}
            for m, job in zip(candidates, row_jobs):
                reply = engine.reply(job)
                score = int(bool(tasks.checker(q.task)(q.row, reply.text)))
                outcomes[m.id if m else NONE] = {"score": score, "tokens": reply.tokens_out, "text": reply.text}
            on_row(q, outcomes)


def summarize(rows: list[dict], candidates: list[str]) -> dict:
    """Accuracy of each fixed choice and of the oracle, overall and per domain."""
    def figures(sub: list[dict]) -> dict:
        n = len(sub)
        fixed = {c: sum(r["candidates"][c]["score"] for r in sub) for c in candidates}
        oracle = sum(best_index(candidates, r["candidates"]) is not None for r in sub)
        wins = {c: 0 for c in candidates}
        for r in sub:
            b = best_index(candidates, r["candidates"])
            if b is not None:
                wins[candidates[b]] += 1
        return {"n": n, "fixed": {c: {"correct": k, "accuracy": round(k / n, 4) if n else None}
                                  for c, k in fixed.items()},
                "oracle": {"correct": oracle, "accuracy": round(oracle / n, 4) if n else None}, "best": wins}

    domains = sorted({r["domain"] for r in rows})
    return {"overall": figures(rows), "domains": {d: figures([r for r in rows if r["domain"] == d]) for d in domains}}


def resume_dir(store: Store, command: str, key: str) -> Path:
    """``$LLORA_HOME/tmp/<command>-<key>``, marked as owned by this process (``llora db gc`` leaves it alone while
    the process lives): where an interrupted collect or distill resumes from."""
    d = store.layout.tmp / f"{command}-{key}"
    d.mkdir(parents=True, exist_ok=True)
    (d / OWNER).write_text(f"{socket.gethostname()} {os.getpid()}\n")  # gc leaves it alone while we run
    return d


@dataclass
class Resume:
    """Where an interrupted collection resumes from: its directory, its rows file, the rows already measured (by
    query key), how many of the queries they cover and the queries left to measure."""

    dir: Path
    rows: Path
    done: dict[str, dict]
    resumed: int
    todo: list[Query]


def resume_rows(store: Store, command: str, spec: dict, queries: list[Query]) -> Resume:
    """The resume state of ``command`` for what ``spec`` describes (``$LLORA_HOME/tmp/<command>-<hash of spec>``)."""
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    d = resume_dir(store, command, key)
    done = read_done(d / "rows.jsonl")
    return Resume(d, d / "rows.jsonl", done, sum(q.key in done for q in queries),
                  [q for q in queries if q.key not in done])


def read_done(path: Path) -> dict[str, dict]:
    """The rows already measured in a JSONL file written by ``measure_appending``, by query key."""
    done: dict[str, dict] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # the last line of a killed run may be cut
                continue
            done[f"{row['dataset']}:{row['row']}"] = row
    return done


def measure_appending(engine, mods: list[Artifact], todo: list[Query], path: Path, done: dict[str, dict], *,
                      total: int, progress: Callable[[int, int], None] | None = None) -> None:
    """``measure`` the base alone and ``mods`` on ``todo``, appending each query's row to ``path`` (flushed, so a
    killed run keeps what it measured: ``read_done`` reads it back) and to ``done``; ``progress(done, total)``."""
    count = [total - len(todo)]
    with open(path, "a") as f:
        def on_row(q: Query, outcomes: dict) -> None:
            row = {"query": q.text, "domain": q.task, "dataset": q.dataset.id, "row": q.row_index,
                   "candidates": outcomes}
            f.write(json.dumps(row, sort_keys=True) + "\n")
            f.flush()
            done[q.key] = row
            count[0] += 1
            if progress:
                progress(count[0], total)

        measure(engine, [None, *mods], todo, on_row)


@dataclass
class Collected:
    artifact: Artifact
    rows: int
    resumed: int
    summary: dict


def collect(store: Store, base_ref: str, data_refs: list[str], *, limit: int | None = None, name: str | None = None,
            engine: str = "auto", modifiers: list[str] | None = None, command: str = "",
            progress: Callable[[int, int], None] | None = None) -> Collected:
    """Measure every candidate on every training query of ``data_refs`` and register the scenario set.

    The candidates are the base alone and every runnable modifier of the base, or only ``modifiers`` (ids or
    names; BadInput for one that does not run on the base or cannot run)."""
    from llora_cli.data import write_jsonl
    from llora_cli.engine import Deployment, choose, open_engine
    from llora_store.catalog import new_id, validate_name

    base, mods = base_and_modifiers(store, base_ref)
    if modifiers:
        mods = select_modifiers(store, base, mods, modifiers)
    queries = checked_queries(store, data_refs, split="train", limit=limit, command=command)
    if name is not None and any(a.name == validate_name(name) for a in store.artifacts()):
        raise BadInput(f"the name '{name}' is already taken", hint="choose another with --name")
    chosen = choose(store, base, engine)
    candidates = [NONE] + [m.id for m in mods]
    spec = {"base": base.id, "base_hash": base.content_hash, "candidates": candidates,
            "datasets": [d for d in dict.fromkeys(q.dataset.id for q in queries)], "limit": limit,
            "engine": chosen, "max_tokens": {t: max_tokens_for(t) for t in sorted({q.task for q in queries})}}
    state = resume_rows(store, "collect", spec, queries)
    resume, partial, done, resumed, todo = state.dir, state.rows, state.done, state.resumed, state.todo
    if progress:
        progress(resumed, len(queries))
    if todo:
        runtime = open_engine(store, Deployment(base, mods), chosen)
        unrunnable = {mid: why for mid, why in runtime.refused.items()}
        if unrunnable:
            names = {m.id: m.name for m in mods}
            raise BadInput("the " + chosen + " engine cannot run " + "; ".join(
                f"modifier '{names[i]}': {w}" for i, w in unrunnable.items()),
                hint="collect with --engine transformers, or retire/discard those modifiers")
        measure_appending(runtime, mods, todo, partial, done, total=len(queries), progress=progress)
    rows = [done[q.key] for q in queries]
    summary = {"base": {"id": base.id, "name": base.name, "kind": base.kind}, "engine": chosen,
               "candidates": candidates,
               "modifiers": {m.id: {"name": m.name, "domain": m.domain, "content_hash": m.content_hash}
                             for m in mods},
               "datasets": [{"id": d.id, "name": d.name, "task": d.meta.get("task"), "split": "train",
                             "rows": sum(q.dataset.id == d.id for q in queries)}
                            for d in {q.dataset.id: q.dataset for q in queries}.values()],
               "limit": limit, "greedy": True, "max_tokens": spec["max_tokens"], "rows": len(rows),
               "figures": summarize(rows, candidates)}
    aid = new_id()
    staging = store.new_staging(aid)
    try:
        write_jsonl(staging / ROWS_FILE, rows)
        (staging / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
        parents = [(base.id, "runs_on")] + [(m.id, "uses") for m in mods] + \
                  [(d["id"], "uses") for d in summary["datasets"]]
        art = store.create("scenario-set", name or store.unique_name(f"scenarios-{base.name}"), staging=staging,
                           parents=parents, metadata=summary, base_hash=base.content_hash, command=command,
                           artifact_id=aid, reason=f"{len(rows)} queries x {len(candidates)} candidates on {chosen}")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    shutil.rmtree(resume, ignore_errors=True)
    return Collected(art, len(rows), resumed, summary["figures"])


def load_rows(store: Store, scenarios: Artifact) -> list[dict]:
    from llora_cli.data import read_jsonl

    return read_jsonl(store.path_of(scenarios.id) / ROWS_FILE)
