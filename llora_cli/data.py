"""Datasets: generated task data and user files (alpaca, chat JSONL, plain text), registered in the catalog.

A dataset artifact holds ``train.jsonl`` and, for task data, ``test.jsonl``
(the held-out split), normalized to ``{"messages": [...]}`` or ``{"text": ...}``
rows. User files are read completely and validated before anything is
registered or trained: a malformed row is an error naming its line.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from llora_store import Store
from llora_store.catalog import new_id, validate_name
from llora_store.errors import BadInput
from llora_store.files import sha256_file
from llora_store.models import Artifact

ROLES = {"system", "user", "assistant"}
CLASSIFY = "classify"  # the format of classification rows: {"text", "label"}


@dataclass(frozen=True)
class Data:
    """Rows ready for training and eval, and where they came from."""

    train: list[dict]
    test: list[dict]
    artifact: Artifact | None
    task: str | None  # generated task kind (its checker applies), else None
    format: str  # "chat", "text" or "classify" (text + label rows)


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r, sort_keys=True) + "\n")


def read_jsonl(path: Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def make_dataset(store: Store, kind: str, n: int, *, seed: int = 0, n_test: int | None = None,
                 name: str | None = None, out: Path | None = None, command: str = "",
                 all_families: bool = False) -> Artifact:
    """Generate task data of ``kind`` and register it as a dataset artifact. ``all_families``: training rows from
    every family and phrasing, no held-out split (``tasks.make``); BadInput with a held-out row count or a kind
    without families."""
    from llora_cli import tasks
    from llora_cli.classify import intent

    if kind not in tasks.KINDS and kind != intent.KIND:
        raise BadInput(f"unknown task kind {kind!r}; choose from {', '.join([*tasks.KINDS, intent.KIND])}")
    if n < 1:
        raise BadInput(f"--n must be at least 1, got {n}")
    if n_test is not None and n_test < 0:
        raise BadInput(f"--n-test must be at least 0, got {n_test}")
    if all_families:
        if not hasattr(tasks.KINDS.get(kind), "FAMILIES"):
            raise BadInput(f"--all-families: the {kind} generator has no families; use it with reasoning, code or "
                           "automation")
        if n_test:
            raise BadInput(f"--all-families trains on every family, so there is no held-out split: drop --n-test "
                           f"{n_test}", hint=f"evaluate on rows written apart: llora eval MODIFIER --data FILE --task "
                                             f"{kind}")
    name = validate_name(name if name is not None else f"{kind}-n{n}-s{seed}" + ("-all" if all_families else ""))
    splits = intent.make(n, seed=seed, n_test=n_test) if kind == intent.KIND else tasks.make(
        kind, n, seed=seed, n_test=n_test, all_families=all_families)
    aid = new_id()
    staging = store.new_staging(aid)
    try:
        write_jsonl(staging / "train.jsonl", splits.train)
        write_jsonl(staging / "test.jsonl", splits.test)
        if out is not None:
            out = out.expanduser()
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(staging / "train.jsonl", out)
            shutil.copyfile(staging / "test.jsonl", out.with_name(out.stem + ".test.jsonl"))
        meta = {"task": kind, "seed": seed, "format": "chat", "rows": {"train": len(splits.train), "test": len(splits.test)},
                **({"families": "all"} if all_families else {})}
        if kind == intent.KIND:
            meta.update(format=CLASSIFY, labels=list(intent.LABELS))
        return store.create("dataset", name, staging=staging, metadata=meta, command=command, artifact_id=aid,
                            reason=f"generated {kind} data", unique_content=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def parse_user_file(path: Path) -> tuple[list[dict], str]:
    """Read a user data file completely; returns normalized rows and their format ("chat" or "text")."""
    located, fmt = parse_user_file_located(path)
    return [row for _, row in located], fmt


def parse_user_file_located(path: Path) -> tuple[list[tuple[str, dict]], str]:
    """Like ``parse_user_file``, each row with where it is in the file (``FILE:LINE`` or ``FILE row N``)."""
    if not path.is_file():
        raise BadInput(f"{path} is not a file")
    suffix = path.suffix.lower()
    if suffix == ".txt":
        text = path.read_text()
        chunks = [c.strip() for c in re.split(r"\n\s*\n", text) if c.strip()]
        if not chunks:
            raise BadInput(f"{path} has no text")
        return [(f"{path} paragraph {i}", {"text": c}) for i, c in enumerate(chunks, 1)], "text"
    if suffix == ".json":
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise BadInput(f"{path}:{e.lineno}: not valid JSON: {e.msg}") from None
        if not isinstance(data, list):
            raise BadInput(f"{path}: expected a JSON array of rows")
        numbered = [(i + 1, r) for i, r in enumerate(data)]
        where = "row"
    elif suffix == ".jsonl":
        numbered = []
        with open(path) as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    numbered.append((lineno, json.loads(line)))
                except json.JSONDecodeError as e:
                    raise BadInput(f"{path}:{lineno}: not valid JSON: {e.msg}") from None
        where = "line"
    else:
        raise BadInput(f"{path}: unsupported data file type {suffix!r}; use .jsonl, .json (alpaca) or .txt")
    if not numbered:
        raise BadInput(f"{path} has no rows")
    places = [f"{path}:{n}" if where == "line" else f"{path} row {n}" for n, _ in numbered]
    located = [(place, _normalize(r, place)) for place, (_, r) in zip(places, numbered)]
    formats = {(CLASSIFY if "label" in r else "text" if "text" in r else "chat") for _, r in located}
    if len(formats) > 1:
        raise BadInput(f"{path} mixes {' and '.join(sorted(formats))} rows (chat covers alpaca; classify is "
                       "text + label); use one format per file")
    fmt = formats.pop()
    if fmt == CLASSIFY:
        labels = label_set([r for _, r in located])
        if len(labels) < 2:
            raise BadInput(f"{path}: every row has the label {labels[0]!r}; a classifier needs at least two labels")
    return located, fmt


def label_set(rows: list[dict]) -> list[str]:
    """The sorted distinct labels of classification rows."""
    return sorted({r["label"] for r in rows})


def require_generative(data: Data, action: str) -> None:
    """BadInput when ``data`` holds classification rows (text + label), which ``action`` (train a LoRA for
    generation, evaluate generation) cannot use: they would be read as plain text, their labels ignored."""
    if data.format == CLASSIFY:
        name = data.artifact.name if data.artifact is not None else "this data"
        raise BadInput(f"dataset '{name}' holds classification rows (text + label, labels "
                       f"{', '.join(data.artifact.meta.get('labels') or []) if data.artifact is not None else '?'}); "
                       f"{action} needs chat or plain-text rows",
                       hint="to train a classifier on them: llora train --task classify (then llora classify); "
                            'for generation use chat rows {"messages": [...]} or text rows {"text": ...} without a "label"')


def _keep_eval_fields(row: dict, out: dict) -> dict:
    # What `llora eval --task` checks against (the model never sees it): the expected answer and
    # the task checker's data. Kept through normalization so eval can read them.
    for key in ("answer", "check"):
        if key in row:
            out[key] = row[key]
    return out


def _normalize(row, where: str) -> dict:
    if not isinstance(row, dict):
        raise BadInput(f"{where}: expected a JSON object, got {type(row).__name__}")
    if "messages" in row:
        msgs = row["messages"]
        if not isinstance(msgs, list) or not msgs:
            raise BadInput(f"{where}: 'messages' must be a non-empty list")
        for m in msgs:
            if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
                raise BadInput(f"{where}: each message needs a role ({', '.join(sorted(ROLES))}) and string content")
        if not any(m["role"] == "assistant" for m in msgs) and "answer" not in row and "check" not in row:
            # a row with only an expected answer ("answer"/"check") is an eval row (tests/data/*_handwritten.jsonl);
            # training refuses it (train.plan)
            raise BadInput(f"{where}: no assistant message to learn from")
        return _keep_eval_fields(row, {"messages": [{"role": m["role"], "content": m["content"]} for m in msgs]})
    if "instruction" in row or "output" in row:
        instr, inp, output = row.get("instruction"), row.get("input", ""), row.get("output")
        if not isinstance(instr, str) or not instr.strip():
            raise BadInput(f"{where}: alpaca row needs a non-empty string 'instruction'")
        if not isinstance(output, str):
            raise BadInput(f"{where}: alpaca row needs a string 'output'")
        if not isinstance(inp, str):
            raise BadInput(f"{where}: 'input' must be a string")
        user = instr if not inp.strip() else f"{instr}\n\n{inp}"
        return _keep_eval_fields(row, {"messages": [{"role": "user", "content": user},
                                                    {"role": "assistant", "content": output}]})
    if "label" in row:
        text, label = row.get("text"), row["label"]
        if not isinstance(text, str) or not text.strip():
            raise BadInput(f"{where}: a classification row needs a non-empty string 'text' beside its 'label'")
        if isinstance(label, bool) or not isinstance(label, (str, int)) or not str(label).strip():
            raise BadInput(f"{where}: 'label' must be a non-empty string or an integer, got {label!r}")
        return {"text": text, "label": str(label)}
    if "text" in row:
        if not isinstance(row["text"], str) or not row["text"].strip():
            raise BadInput(f"{where}: 'text' must be a non-empty string")
        return {"text": row["text"]}
    raise BadInput(f"{where}: unknown row format; expected 'messages', 'instruction'/'output' (alpaca), 'text', or "
                   "'text' and 'label' (classification)")


def register_user_file(store: Store, path: Path, *, command: str = "") -> Artifact:
    """Register a user data file as a dataset (once per content), after validating every row."""
    rows, fmt = parse_user_file(path)
    sha = sha256_file(path)
    for art in store.artifacts(kind="dataset"):
        if art.state != "discarded" and art.meta.get("source", {}).get("sha256") == sha:
            return art
    aid = new_id()
    staging = store.new_staging(aid)
    try:
        write_jsonl(staging / "train.jsonl", rows)
        base = re.sub(r"[^A-Za-z0-9._-]+", "-", path.stem).strip("-._")[:40] or "data"
        name = store.unique_name(base)
        meta = {"task": None, "format": fmt, "rows": {"train": len(rows), "test": 0},
                "source": {"path": str(path.resolve()), "sha256": sha},
                **({"labels": label_set(rows)} if fmt == CLASSIFY else {})}
        return store.create("dataset", name, staging=staging, metadata=meta, command=command, artifact_id=aid,
                            reason=f"registered from {path}")
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def add_user_file(store: Store, path: Path, *, task: str | None = None, held_out: bool = False,
                  name: str | None = None, command: str = "") -> Artifact:
    """Register a user data file as a dataset with a task checker and/or as held-out rows (``llora data add``).

    ``task`` is a checker (``llora eval --task``'s names): every row is checked for what the checker needs
    before anything is written (the expected number, call or hidden tests; ``checkers.prepare``), and the
    row keeps it as ``"check"``, so ``llora eval`` and ``llora router collect|eval`` score the rows like
    generated task data. ``held_out`` puts every row in the test split (rows written apart, such as
    ``tests/data/*_handwritten.jsonl``: evaluation only, never trained on); else they are training rows.
    The same file added again the same way returns the dataset registered first.

    Raises BadInput for an unreadable file, a bad row (named ``FILE:LINE``) or an unknown checker.
    """
    from llora_cli import checkers

    located, fmt = parse_user_file_located(path)
    if fmt == CLASSIFY and task:
        raise BadInput(f"{path} holds classification rows (text + label): their label is what they are checked "
                       f"against, not a --task checker ({task})", hint="add it without --task")
    checker = checkers.parse_task(task) if task else None
    rows = [r for _, r in located]
    if checker is not None:
        prepared = checkers.prepare(rows, [p for p, _ in located], checker)
        rows = [{**r, "check": c["check"]} for r, c in zip(rows, prepared)]
    sha = sha256_file(path)
    split = "test" if held_out else "train"
    for art in store.artifacts(kind="dataset"):
        if (art.state != "discarded" and art.meta.get("source", {}).get("sha256") == sha
                and art.meta.get("task") == task and art.meta.get("rows", {}).get(split) == len(rows)
                and art.meta.get("rows", {}).get("train" if held_out else "test", 0) == 0):
            return art
    aid = new_id()
    staging = store.new_staging(aid)
    try:
        write_jsonl(staging / "train.jsonl", [] if held_out else rows)
        if held_out:
            write_jsonl(staging / "test.jsonl", rows)
        stem = re.sub(r"[^A-Za-z0-9._-]+", "-", path.stem).strip("-._")[:40] or "data"
        meta = {"task": task, "format": fmt, "rows": {"train": 0 if held_out else len(rows),
                                                      "test": len(rows) if held_out else 0},
                "source": {"path": str(path.resolve()), "sha256": sha},
                **({"labels": label_set(rows)} if fmt == CLASSIFY else {})}
        return store.create("dataset", name or store.unique_name(stem), staging=staging, metadata=meta,
                            command=command, artifact_id=aid,
                            reason=f"added from {path}" + (" as held-out rows" if held_out else ""))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def load_data(store: Store, ref: str, *, command: str = "") -> Data:
    """A dataset by id/name, or a user file path (registered on first use)."""
    path = Path(ref).expanduser()
    if path.exists():
        art = register_user_file(store, path, command=command)
    else:
        art = store.resolve(ref, kinds=("dataset",))
    directory = store.path_of(art.id)
    train = read_jsonl(directory / "train.jsonl")
    test = read_jsonl(directory / "test.jsonl") if (directory / "test.jsonl").exists() else []
    return Data(train, test, art, art.meta.get("task"), art.meta.get("format", "chat"))
