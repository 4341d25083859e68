"""`llora router collect BASE --depth LAYERSET --data D`: seed 002's depth scenarios -> a scenario set.

For every query of the datasets' training split the base answers greedily (transformers engine: llama.cpp cannot
replace layers), the task's checker scores the full-depth answer, and ``search.greedy_search`` finds, with the
layer-adapter set ``LAYERSET``, the path of layer sets that keep the answer (teacher-forced argmax agreement at or
above ``threshold``). The result is a catalogued ``scenario-set`` artifact whose summary has ``"depth"``:
``scenarios.jsonl`` (one row per query: ``{query, domain, dataset, row, answer: {text, tokens, correct}, depth:
{layers, score, steps: [{added, layers, score}], passes, limit}}``) and ``summary.json``; lineage ``runs_on`` the
base, ``uses`` the layer-adapter set and each dataset.

Resume: finished rows are appended to ``$LLORA_HOME/tmp/collect-depth-<key>/rows.jsonl`` (``key`` hashes base,
layer set, datasets, limit, threshold, max_fraction); the same command run again skips them. The artifact appears
only when every row is done (R10); ``llora db gc`` removes a partial collection whose process is gone.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass

from llora_cli.router.collect import BASE_KINDS, ROWS_FILE, SUMMARY_FILE, Query, checked_queries, max_tokens_for, resume_rows
from llora_cli.router.depth import search
from llora_store import Store, rules
from llora_store.errors import BadInput
from llora_store.models import Artifact

ENGINE = "transformers"


@dataclass
class DepthCollected:
    artifact: Artifact
    rows: int
    resumed: int
    summary: dict


def summarize(rows: list[dict], count: int) -> dict:
    """Layers replaced per query (mean, histogram), overall and per domain, and the full-depth accuracy."""
    def figures(sub: list[dict]) -> dict:
        n = len(sub)
        sizes = [len(r["depth"]["layers"]) for r in sub]
        hist = {str(k): sizes.count(k) for k in sorted(set(sizes))}
        return {"n": n, "correct": sum(r["answer"]["correct"] for r in sub),
                "layers_replaced_mean": round(sum(sizes) / n, 3) if n else None,
                "fraction_replaced_mean": round(sum(sizes) / n / count, 4) if n else None,
                "layers_replaced_histogram": hist,
                "steps": sum(len(r["depth"]["steps"]) for r in sub)}

    domains = sorted({r["domain"] for r in rows})
    return {"overall": figures(rows), "domains": {d: figures([r for r in rows if r["domain"] == d]) for d in domains}}


def collect_depth(store: Store, base_ref: str, layer_set_ref: str, data_refs: list[str], *, limit: int | None = None,
                  name: str | None = None, threshold: float = search.DEFAULT_THRESHOLD,
                  max_fraction: float = search.DEFAULT_MAX_FRACTION, command: str = "",
                  check: Callable[[Query, str], bool] | None = None,
                  progress: Callable[[int, int], None] | None = None) -> DepthCollected:
    """Answer every training query of ``data_refs`` with ``base_ref`` at full depth, run the greedy layer search
    with the layer adapters ``layer_set_ref`` on each, and register the depth scenario set.

    ``check(query, text)``: the task's checker by default (tests inject another). Raises BadInput for a threshold
    outside (0, 1], a max_fraction outside [0, 1), a taken name; RuleViolation (R6) for a layer-adapter set of
    another base; NotFound for unknown references."""
    import torch

    from llora_cli.data import write_jsonl
    from llora_cli.loading import load_model
    from llora_cli.router.depth import distill
    from llora_store.catalog import new_id, validate_name

    if not 0 < threshold <= 1:
        raise BadInput(f"--threshold {threshold} must be in (0, 1]")
    if not 0 <= max_fraction < 1:
        raise BadInput(f"--max-fraction {max_fraction} must be in [0, 1): at least one layer is always kept")
    check = check or distill.task_check
    base = store.resolve(base_ref, kinds=BASE_KINDS)
    rules.check_runnable(base)
    if base.state not in ("ready", "deployed"):
        raise BadInput(f"{base.kind} '{base.name}' is '{base.state}'; collect on a ready or deployed base")
    layer_set = store.resolve(layer_set_ref, kinds=(distill.KIND,))
    distill.check_base(layer_set, base)  # R6, before loading anything
    queries = checked_queries(store, data_refs, split="train", limit=limit, command=command)
    if name is not None and any(a.name == validate_name(name) for a in store.artifacts()):
        raise BadInput(f"the name '{name}' is already taken", hint="choose another with --name")
    spec = {"base": base.id, "base_hash": base.content_hash, "layer_set": layer_set.id,
            "layer_set_hash": layer_set.content_hash, "datasets": list(dict.fromkeys(q.dataset.id for q in queries)),
            "limit": limit, "threshold": threshold, "max_fraction": max_fraction,
            "max_tokens": {t: max_tokens_for(t) for t in sorted({q.task for q in queries})}}
    state = resume_rows(store, "collect-depth", spec, queries)
    resume, partial, done, resumed, todo = state.dir, state.rows, state.done, state.resumed, state.todo
    if progress:
        progress(resumed, len(queries))
    started = time.perf_counter()
    count = int(layer_set.meta.get("layers") or 0)
    if todo:
        adapters = distill.load(store, layer_set.id, base)
        tokenizer, model, _plan = load_model(store.path_of(base.id))
        model.eval()
        count = len(adapters)
        n = [resumed]
        with open(partial, "a") as f:
            def on_row(q: Query, ans: dict) -> None:
                found = search.greedy_search(model, adapters, ans["prompt"], ans["answer"], threshold=threshold,
                                             max_fraction=max_fraction) if ans["answer"] else \
                    {"layers": [], "score": 1.0, "steps": [], "passes": 0, "answer_tokens": 0, "limit": 0}
                row = {"query": q.text, "domain": q.task, "dataset": q.dataset.id, "row": q.row_index,
                       "answer": {"text": ans["text"], "tokens": len(ans["answer"]),
                                  "correct": bool(check(q, ans["text"]))},
                       "depth": found}
                f.write(json.dumps(row, sort_keys=True) + "\n")
                f.flush()
                done[q.key] = row
                n[0] += 1
                if progress:
                    progress(n[0], len(queries))

            with torch.no_grad():
                distill.answer(tokenizer, model, todo, on_row=on_row)
    rows = [done[q.key] for q in queries]
    summary = {"base": {"id": base.id, "name": base.name, "kind": base.kind}, "engine": ENGINE,
               "depth": {"layer_set": {"id": layer_set.id, "name": layer_set.name,
                                       "content_hash": layer_set.content_hash},
                         "layers": count, "threshold": threshold, "max_fraction": max_fraction,
                         "score": "teacher-forced argmax agreement with the full-depth answer"},
               "datasets": [{"id": d.id, "name": d.name, "task": d.meta.get("task"), "split": "train",
                             "rows": sum(q.dataset.id == d.id for q in queries)}
                            for d in {q.dataset.id: q.dataset for q in queries}.values()],
               "limit": limit, "greedy": True, "max_tokens": spec["max_tokens"], "rows": len(rows),
               "seconds": round(time.perf_counter() - started, 2), "figures": summarize(rows, count)}
    aid = new_id()
    staging = store.new_staging(aid)
    try:
        write_jsonl(staging / ROWS_FILE, rows)
        (staging / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
        parents = [(base.id, "runs_on"), (layer_set.id, "uses")] + [(d["id"], "uses") for d in summary["datasets"]]
        art = store.create("scenario-set", name or store.unique_name(f"depth-scenarios-{base.name}"), staging=staging,
                           parents=parents, metadata=summary, base_hash=base.content_hash, command=command,
                           artifact_id=aid, reason=f"{len(rows)} queries, greedy layer search with "
                                                   f"'{layer_set.name}' (threshold {threshold})")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    shutil.rmtree(resume, ignore_errors=True)
    return DepthCollected(art, len(rows), resumed, summary["figures"])
