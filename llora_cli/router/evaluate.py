"""`llora router eval`: a router measured on held-out queries against simple baselines.

Every candidate answers every held-out query (greedy, on the serving engine, scored by the task's checker),
so each way of choosing is scored on the same outcomes:

- the router (argmax of its choice head);
- the oracle (the best candidate of each query; its routing accuracy is 1 by definition);
- each fixed choice (the base alone, each modifier for everything);
- a nearest-centroid router on the same embeddings: the centroid of each domain's scenario queries, a query
  goes to the best fixed choice of its nearest domain (on the scenario set).

Per domain and overall: routing accuracy (of the queries some candidate answers correctly, the fraction where the
chosen one does) and end-to-end accuracy (of all queries, the fraction answered correctly), each with n and a 95%
Wilson interval; and the router's overhead in ms per query at batch 1, encoder included. Queries the scenario set
used are refused: held-out means never seen by collect or fit. The candidates' scored answers are cached per
engine, weights and query (``outcome_cache``): a second router of the same base and modifiers is scored on the
same held-out queries without generating again.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path

from llora_cli import tasks
from llora_cli.router import collect as col
from llora_cli.router.losses import NONE, best_index, rank
from llora_cli.stats import wilson
from llora_store import Store, rules
from llora_store.errors import BadInput

OVERHEAD_QUERIES = 50


def accuracy(k: int, n: int) -> dict:
    """``k`` of ``n`` with its 95% Wilson interval (None when n is 0)."""
    if not n:
        return {"correct": 0, "n": 0, "accuracy": None, "ci95": None}
    lo, hi = wilson(k, n)
    return {"correct": k, "n": n, "accuracy": round(k / n, 4), "ci95": [round(lo, 4), round(hi, 4)]}


def score(choices: list[int], rows: list[dict], candidates: list[str]) -> dict:
    """Routing and end-to-end accuracy of one candidate index per row."""
    e2e = sum(r["candidates"][candidates[c]]["score"] >= 1 for c, r in zip(choices, rows))
    routed = [(c, r) for c, r in zip(choices, rows) if best_index(candidates, r["candidates"]) is not None]
    k = sum(r["candidates"][candidates[c]]["score"] >= 1 for c, r in routed)
    return {"routing": accuracy(k, len(routed)), "end_to_end": accuracy(e2e, len(rows))}


def domain_centroids(encoder, scen_rows: list[dict], candidates: list[str]):
    """``(domains, centroids [D, 384], choice per domain)``: the unit mean embedding of each domain's scenario
    queries and the domain's best fixed choice there (most correct, then fewest tokens, then the base alone)."""
    import numpy as np

    domains = sorted({r["domain"] for r in scen_rows})
    emb = encoder.encode([r["query"] for r in scen_rows])
    cents, picks = [], []
    for d in domains:
        idx = [i for i, r in enumerate(scen_rows) if r["domain"] == d]
        c = emb[idx].mean(axis=0)
        cents.append(c / max(float(np.linalg.norm(c)), 1e-12))
        totals = {cand: {"score": sum(scen_rows[i]["candidates"][cand]["score"] for i in idx),
                         "tokens": sum(scen_rows[i]["candidates"][cand]["tokens"] for i in idx)} for cand in candidates}
        picks.append(rank(candidates, totals)[0])
    return domains, np.stack(cents).astype(np.float32), picks


def outcome_cache(store: Store, engine: str, base, mods: list) -> Path:
    """``$LLORA_HOME/cache/router-eval/<key>.jsonl``: every candidate's scored answer to each held-out query, one
    JSON row per query (as in a scenario set). Greedy answers on one engine are a function of the base's and the
    modifiers' weights (content hashes), the generation length and the query, all in the key or the row's key
    (dataset id, row; datasets are immutable), so evaluating a second router of the same base and modifiers on the
    same queries measures nothing again, and an interrupted evaluation resumes."""
    spec = {"engine": engine, "base_hash": base.content_hash, "modifiers": [[m.id, m.content_hash] for m in mods],
            "max_tokens": {t: col.max_tokens_for(t) for t in sorted(tasks.KINDS)}, "greedy": True}
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    directory = store.home / "cache" / "router-eval"
    directory.mkdir(parents=True, exist_ok=True)
    return directory / f"{key}.jsonl"


def evaluate(store: Store, router_ref: str, data_refs: list[str], *, limit: int | None = None, engine: str = "auto",
             command: str = "", progress: Callable[[int, int], None] | None = None) -> dict:
    import numpy as np

    from llora_cli.engine import Deployment, choose, open_engine
    from llora_cli.router.model import Router
    from llora_cli.router.serving import check_unchanged

    art = store.resolve(router_ref, kinds=("router",))
    if art.state not in ("trained", "deployed", "retired"):
        raise BadInput(f"router '{art.name}' is '{art.state}'; only a trained, deployed or retired router runs")
    check_unchanged(store, art, action="evaluate")
    router = Router.load(store.path_of(art.id), what=f"router '{art.name}'")
    candidates = router.candidates
    base = store.get(art.meta["base"]["id"])
    mods = [store.get(c) for c in candidates if c != NONE]
    gone = [m for m in mods if m.state not in ("trained", "deployed", "retired")]
    if gone:
        raise BadInput(f"router '{art.name}' routes to modifiers that cannot run: "
                       f"{', '.join(f'{m.name} ({m.state})' for m in gone)}")
    for m in mods:
        rules.check_modifier_base(m, base)
    scen = store.get(art.meta["scenarios"])
    scen_rows = col.load_rows(store, scen)
    queries = col.checked_queries(store, data_refs, split="test", limit=limit, command=command)
    used = {r["query"] for r in scen_rows}
    overlap = [q for q in queries if q.text in used]
    if overlap:
        raise BadInput(f"{len(overlap)} of the {len(queries)} queries were used to fit router '{art.name}' "
                       f"(scenario set '{scen.name}'), e.g. {overlap[0].text[:60]!r}; they are not held out",
                       hint="evaluate on datasets (or test splits) the scenario set did not use")
    chosen_engine = choose(store, base, engine)
    cache = outcome_cache(store, chosen_engine, base, mods)
    done = col.read_done(cache)
    todo = [q for q in queries if q.key not in done]
    if progress:
        progress(len(queries) - len(todo), len(queries))
    if todo:
        runtime = open_engine(store, Deployment(base, mods), chosen_engine)
        col.measure_appending(runtime, mods, todo, cache, done, total=len(queries), progress=progress)
    rows = [done[q.key] for q in queries]

    texts = [r["query"] for r in rows]
    picked, probs = router.choose(texts)
    emb = router.encoder.encode(texts)
    domains, cents, domain_pick = domain_centroids(router.encoder, scen_rows, candidates)
    centroid = [domain_pick[i] for i in (emb @ cents.T).argmax(axis=1)]
    oracle = [rank(candidates, r["candidates"])[0] for r in rows]
    names = {m.id: m.name for m in mods}
    label = {c: ("none (base alone)" if c == NONE else f"{names[c]} for all") for c in candidates}
    strategies = {"router": [int(i) for i in picked], "oracle": oracle, "nearest centroid": centroid,
                  **{label[c]: [j] * len(rows) for j, c in enumerate(candidates)}}

    def figures(sub: list[int]) -> dict:
        sub_rows = [rows[i] for i in sub]
        return {"n": len(sub), "choices": {k: score([v[i] for i in sub], sub_rows, candidates)
                                           for k, v in strategies.items()}}

    # overhead: one query at a time, as `run --modifier auto` sees it (the encoder is loaded already)
    router.choose(texts[:1])
    times = []
    for t in texts[:OVERHEAD_QUERIES]:
        start = time.perf_counter()
        router.choose([t])
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    report = {
        "router": {"id": art.id, "name": art.name, "method": art.meta.get("method")},
        "engine": chosen_engine, "datasets": sorted({q.dataset.name for q in queries}), "split": "test",
        "candidates": {c: ("none" if c == NONE else names[c]) for c in candidates},
        "centroid_domains": {d: candidates[p] for d, p in zip(domains, domain_pick)},
        "overall": figures(list(range(len(rows)))),
        "domains": {d: figures([i for i, r in enumerate(rows) if r["domain"] == d])
                    for d in sorted({r["domain"] for r in rows})},
        "overhead_ms": {"median": round(float(np.median(times)), 2) if times else None,
                        "p90": round(times[min(len(times) - 1, int(0.9 * len(times)))], 2) if times else None,
                        "n": len(times), "batch": 1, "encoder_included": True},
        "mean_probability": round(float(probs.max(axis=1).mean()), 4) if len(rows) else None,
    }
    return store_report(store, art, "evaluation", report, command=command)


def store_report(store: Store, art, key: str, report: dict, *, command: str = "") -> dict:
    """Store ``report`` on the router's metadata under ``key`` unless it is deployed (R7: a deployed router's
    metadata is immutable); ``report["stored"]`` says which. Returns ``report``."""
    report["stored"] = art.state != "deployed"
    if report["stored"]:
        store.update_metadata(art.id, {key: report}, command=command)
    return report
