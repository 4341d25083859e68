"""`llora router eval ROUTER --data D --depth`: the router's depth heads measured against static pruning.

Held-out queries (the datasets' test split; refused when the choice or depth scenario set or the distillation of
the layer adapters used them) are
answered greedily by the base on the transformers engine (llama.cpp cannot replace layers) with, per method, a set
of decoder layers replaced by the router's layer adapters (the same adapters for every method), and scored by the
task's checker. The methods, at the same number of replaced layers as the router on each query (``k_q``, the
router's ``round(mu * L)``), so that every method costs the same and only which layers differs:

- ``full depth``: nothing replaced (the reference);
- ``router``: the router's layer head, its ``k_q`` best layers (seed 002);
- ``router, skipping``: the router's sets with the layers skipped (identity), not replaced by adapters;
- ``best static``: the first ``k_q`` layers of one greedy path found on pooled data: seed 002's greedy search
  with the score averaged over the pooled queries (the depth scenario set's training queries, answered afresh
  at full depth), continued without a threshold so that every ``k`` has a set;
- ``static per domain``: the same search on each domain's pooled queries, the query's own domain's path (the
  domain is known here: an upper bound for this baseline, which in serving needs a domain classifier);
- ``last k``: layers ``L - k_q .. L - 1``;
- ``ShortGPT``: the ``k_q`` layers of lowest block influence ``BI_i = 1 - mean cos(x_i, x_{i+1})`` over the pooled
  queries' tokens (Men et al., "ShortGPT: Layers in Large Language Models are More Redundant Than You Expect",
  2024, eq. 1), measured with forward hooks on the decoder blocks;
- ``random``: ``k_q`` layers drawn uniformly (seeded);
- ``per-query search (ceiling)``: the greedy search run on the query itself, on its own full-depth answer, with
  the depth scenario set's threshold and maximum fraction (the best a router could learn; its ``k`` is its own).

Quality: accuracy with n and its 95% Wilson interval, relative to full depth, and the paired bootstrap interval of
each method's difference to full depth and to the router. Cost: decode tokens/s at batch 1 and batch 8 with the
KV cache on, and prefill ms, measured per number of replaced layers ``k`` on this machine (greedy ``generate`` of
``speed_tokens`` forced tokens minus a one-token ``generate``, median of ``repeats`` rounds over every k,
``time_depths``), a method's cost being the
mean over its queries of the cost of their ``k``; the router's own time (encoder and heads, batch 1 or 8) is added
to its decode time. A sweep (``sweep=1``, default) also measures the router with a fixed ``k`` and the static
methods at every ``k`` from 0 to the router's largest, for the Pareto plot (accuracy vs decode speed-up) and for
the question the issue asks: is the router faster than the best static set at the same accuracy.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from llora_cli.router.collect import Query, max_tokens_for
from llora_store import Store
from llora_store.errors import BadInput

FULL, ROUTER, SKIP, STATIC, DOMAIN, LAST, SHORTGPT, RANDOM, CEILING = (
    "full depth", "router", "router, skipping", "best static", "static per domain", "last k", "ShortGPT", "random",
    "per-query search (ceiling)")
SWEPT = (ROUTER, STATIC, LAST, SHORTGPT)
GOAL = {"relative_accuracy": 0.98, "decode_speedup_batch1": 1.25}


@dataclass
class DepthEvalConfig:
    """``pooled``: depth scenario rows answered for the static searches and block influence (first N);
    ``sweep``: 1 to measure the swept methods at fixed k (Pareto plot), 0 not; ``sweep_every``: the sweep's k step
    (0, step, 2 step, ... and the router's largest k); ``speed_tokens``: decode tokens timed per
    k; ``repeats``: timings per k and batch (median); ``seed``: random sets and bootstrap."""

    pooled: int = 32
    sweep: int = 1
    sweep_every: int = 1
    speed_tokens: int = 64
    repeats: int = 5
    seed: int = 0

    @classmethod
    def parse(cls, pairs: list[str]) -> DepthEvalConfig:
        from llora_cli.router.keyvalue import parse_numbers

        cfg = parse_numbers(cls, pairs)
        if min(cfg.pooled, cfg.speed_tokens, cfg.repeats, cfg.sweep_every) < 1 or cfg.sweep not in (0, 1):
            raise BadInput("need pooled, speed_tokens, repeats, sweep_every >= 1 and sweep 0 or 1")
        return cfg


# ---- generation with a layer set per query --------------------------------------------------------------------------

def answer_with_sets(tokenizer, model, queries: list[Query], sets: list[list[int]], adapters) -> list[str]:
    """Greedy answers, query ``i`` generated with the layers ``sets[i]`` replaced by ``adapters`` (None: skipped).
    Queries of one set and one answer length share left-padded ``generate`` calls of up to 8 rows."""
    import torch

    from llora_cli.encoding import prompt_text
    from llora_cli.router.depth.distill import GEN_BATCH
    from llora_cli.router.depth.layers import replaced_layers

    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    groups: dict[tuple, list[int]] = {}
    for i, (q, s) in enumerate(zip(queries, sets)):
        groups.setdefault((tuple(sorted(s)), max_tokens_for(q.task)), []).append(i)
    out: list[str] = [""] * len(queries)
    for (layers, max_new), idx in groups.items():
        for lo in range(0, len(idx), GEN_BATCH):
            chunk = idx[lo:lo + GEN_BATCH]
            prompts = [tokenizer(prompt_text(tokenizer, queries[i].messages), add_special_tokens=False)["input_ids"]
                       for i in chunk]
            enc = tokenizer.pad({"input_ids": prompts}, return_tensors="pt")
            with torch.no_grad(), replaced_layers(model, list(layers), adapters):
                gen = model.generate(**enc, max_new_tokens=max_new, do_sample=False, pad_token_id=tokenizer.pad_token_id)
            for i, row in zip(chunk, gen[:, enc["input_ids"].shape[1]:]):
                out[i] = tokenizer.decode(row, skip_special_tokens=True).strip()
    return out


# ---- static baselines -----------------------------------------------------------------------------------------------

def pooled_greedy_path(model, adapters, sequences: list[tuple[list[int], list[int]]], limit: int) -> list[dict]:
    """Seed 002's greedy search with one set for all queries: at each step the layer whose replacement keeps the
    mean teacher-forced agreement over ``sequences`` (``(prompt ids, full-depth answer ids)``) highest (ties: the
    lower index), ``limit`` steps, no threshold. Returns ``[{"added", "layers", "score"}]`` (the path; its first k
    entries' last ``layers`` is the static set of size k). Cost: one batched pass per sequence and step."""
    from llora_cli.router.depth import search

    usable = [(p, a) for p, a in sequences if a]
    if not usable:
        raise BadInput("no pooled query has a non-empty full-depth answer: nothing to search a static set on")
    with search.mixed_layers(model, adapters) as mixed:
        count = len(mixed)
        refs = [search._answer_argmax(model, mixed, p + a, len(p), [set()], search.DEFAULT_BATCH)[0] for p, a in usable]
        chosen: list[int] = []
        path = []
        for _ in range(min(limit, count - 1)):
            cands = [i for i in range(count) if i not in chosen]
            total = [0.0] * len(cands)
            for (p, a), ref in zip(usable, refs):
                s = search.score_sets(model, mixed, p + a, len(p), [[*chosen, c] for c in cands], ref)
                total = [t + x for t, x in zip(total, s)]
            best = max(range(len(cands)), key=lambda j: (total[j], -cands[j]))
            chosen.append(cands[best])
            path.append({"added": cands[best], "layers": sorted(chosen), "score": round(total[best] / len(usable), 6)})
    return path


def block_influence(model, sequences: list[tuple[list[int], list[int]]]) -> list[float]:
    """ShortGPT's block influence of every decoder layer: ``1 - mean over tokens of cos(input, output)`` of the
    layer's hidden states ``[tokens, hidden]`` on ``sequences`` (prompt + answer, full depth), captured with forward
    hooks on the decoder blocks. Low: the layer changes little (ShortGPT removes the lowest first)."""
    import torch

    from llora_cli.router.depth.layers import decoder_layers

    mods = decoder_layers(model)
    sums = [0.0] * len(mods)
    tokens = [0]

    def hook(i: int):
        def f(module, args, kwargs, output):
            x = args[0] if args else kwargs["hidden_states"]
            y = output[0] if isinstance(output, tuple) else output
            sums[i] += float(torch.nn.functional.cosine_similarity(x.float(), y.float(), dim=-1).sum())
        return f

    handles = [m.register_forward_hook(hook(i), with_kwargs=True) for i, m in enumerate(mods)]
    try:
        with torch.no_grad():
            for p, a in sequences:
                ids = torch.tensor([p + a], dtype=torch.long)
                model(input_ids=ids, use_cache=False)
                tokens[0] += ids.shape[1]
    finally:
        for h in handles:
            h.remove()
    return [round(1 - s / max(tokens[0], 1), 6) for s in sums]


def lowest(scores: list[float], k: int) -> list[int]:
    """The ``k`` indices of lowest score (ties: the lower index), sorted."""
    return sorted(sorted(range(len(scores)), key=lambda i: (scores[i], i))[:k])


# ---- cost -------------------------------------------------------------------------------------------------------------

def time_depths(tokenizer, model, adapters, prompt: list[int], sets: dict[int, list[int]], *, batch: int,
                tokens: int, repeats: int) -> dict[int, dict]:
    """Greedy ``generate`` timed with each of ``sets`` (``{k: layers}``) replaced, ``batch`` copies of ``prompt``
    (token ids), KV cache on: per k, ``prefill_ms`` (a one-token generate) and ``decode_tokens_per_s`` per row
    (``tokens - 1`` forced decode steps: ``(t(tokens) - t(1)) / (tokens - 1)``), each the median of ``repeats``.

    The k are measured in rounds, one of each per round, in an order that alternates between rounds (k ascending,
    then descending): a drift of the machine's speed (frequency, another process) then falls on every k alike,
    not on the k measured last. (Measured all repeats of one k at a time, 32 tokens, 3 repeats, the rates on
    SmolLM2-135M went 13.6, 11.4, 12.8, 15.5, 11.5 tok/s for k = 0..4: differences under ~20% were noise.)"""
    import torch

    from llora_cli.router.depth.layers import replaced_layers

    ids = torch.tensor([prompt] * batch, dtype=torch.long)
    mask = torch.ones_like(ids)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def run(n: int) -> float:
        start = time.perf_counter()
        with torch.no_grad():
            model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                           pad_token_id=pad)
        return time.perf_counter() - start

    order = sorted(sets)
    ones: dict[int, list[float]] = {k: [] for k in order}
    fulls: dict[int, list[float]] = {k: [] for k in order}
    run(2)  # warm-up
    for r in range(repeats):
        for k in (order if r % 2 == 0 else order[::-1]):
            with replaced_layers(model, sets[k], adapters):
                ones[k].append(run(1))
                fulls[k].append(run(tokens))
    out = {}
    for k in order:
        one, full = statistics.median(ones[k]), statistics.median(fulls[k])
        step = max(full - one, 1e-9) / max(tokens - 1, 1)
        out[k] = {"prefill_ms": round(one * 1000, 2), "decode_s_per_step": step,
                  "decode_tokens_per_s": round(batch / step, 2)}
    return out


# ---- the evaluation ---------------------------------------------------------------------------------------------------

def _figures(verdicts: list[bool], full: list[bool], router: list[bool], seed: int) -> dict:
    from llora_cli.router.evaluate import accuracy
    from llora_cli.stats import paired_bootstrap

    acc = accuracy(sum(verdicts), len(verdicts))
    base = sum(full)
    return {**acc, "relative_to_full": round(sum(verdicts) / base, 4) if base else None,
            "vs_full": paired_bootstrap(verdicts, full, seed=seed),
            "vs_router": paired_bootstrap(verdicts, router, seed=seed)}


def _cost(ks: list[int], timing: dict[int, dict], router_ms: dict | None) -> dict:
    """A method's cost over its queries' k: mean s per decode step (router time spread over the answer's steps is
    not assumed: it is added once per request to the prefill and, for the decode rate, to the decode time of
    ``speed_tokens`` steps)."""
    out = {}
    for b in (1, 8):
        step = sum(timing[k][b]["decode_s_per_step"] for k in ks) / len(ks)
        pre = sum(timing[k][b]["prefill_ms"] for k in ks) / len(ks)
        extra = (router_ms or {}).get(b, 0.0) / 1000
        steps = timing["tokens"] - 1
        tps = b * steps / (step * steps + extra)
        full_tps = b / timing[0][b]["decode_s_per_step"]
        out[f"batch{b}"] = {"decode_tokens_per_s": round(tps, 2), "decode_speedup": round(tps / full_tps, 4),
                            "prefill_ms": round(pre + (router_ms or {}).get(b, 0.0), 2)}
    return out


def evaluate_depth(store: Store, router_ref: str, data_refs: list[str], *, limit: int | None = None,
                   config: list[str] | None = None, plot: Path | None = None, command: str = "",
                   check: Callable[[Query, str], bool] | None = None,
                   progress: Callable[[str], None] | None = None) -> dict:
    """Measure the router's depth heads against the baselines (module docstring) on the held-out ``data_refs``.

    Returns the report (``methods`` -> accuracy, interval, relative accuracy, paired bootstrap differences, mean
    layers replaced, decode tokens/s and speed-up at batch 1 and 8, prefill ms; ``sweep`` -> per method and k;
    ``goal``), stored on the router's metadata as ``evaluation_depth`` unless it is deployed (R7). ``plot``: a PNG
    of accuracy vs decode speed-up (batch 1). ``check(query, text)``: the task's checker by default.
    Raises BadInput for a router without depth heads, queries the scenario sets or the distillation used, bad config; Conflict when
    what it was fitted on changed; NotFound for unknown references."""
    import torch

    from llora_cli.loading import load_model
    from llora_cli.router import collect as col
    from llora_cli.router.depth import distill, search
    from llora_cli.router.model import Router
    from llora_cli.router.serving import check_unchanged

    cfg = DepthEvalConfig.parse(config or [])
    say = progress or (lambda s: None)
    check = check or distill.task_check
    art = store.resolve(router_ref, kinds=("router",))
    if art.state not in ("trained", "deployed", "retired"):
        raise BadInput(f"router '{art.name}' is '{art.state}'; only a trained, deployed or retired router runs")
    depth = art.meta.get("depth")
    if not depth:
        raise BadInput(f"router '{art.name}' has no depth heads (it was fitted without --depth): nothing to measure",
                       hint="fit one with: llora router fit SCENARIOS --depth DEPTH_SCENARIOS")
    check_unchanged(store, art, action="evaluate")
    router = Router.load(store.path_of(art.id), what=f"router '{art.name}'")
    base = store.get(art.meta["base"]["id"])
    dscen = store.get(depth["scenarios"])
    drows = col.load_rows(store, dscen)
    used = {r["query"] for r in drows} | {r["query"] for r in col.load_rows(store, store.get(art.meta["scenarios"]))}
    layer_set = store.get(depth["layer_set"])
    distilled = [d["id"] for d in (layer_set.meta or {}).get("datasets") or []]
    if distilled:  # the queries the layer adapters were distilled on
        used |= {q.text for q in col.checked_queries(store, distilled, split="train", limit=layer_set.meta.get("limit"))}
    queries = col.checked_queries(store, data_refs, split="test", limit=limit, command=command)
    overlap = [q for q in queries if q.text in used]
    if overlap:
        raise BadInput(f"{len(overlap)} of the {len(queries)} queries were used to fit router '{art.name}' (its "
                       f"scenario sets or the distillation of its layer adapters), e.g. {overlap[0].text[:60]!r}; they are "
                       "not held out", hint="evaluate on datasets (or test splits) these steps did not use")
    count = int(depth["layers"])
    dmeta = dscen.meta.get("depth") or {}
    threshold = float(dmeta.get("threshold", search.DEFAULT_THRESHOLD))
    max_fraction = float(dmeta.get("max_fraction", search.DEFAULT_MAX_FRACTION))

    say("loading the base and the layer adapters")
    adapters = distill.load(store, depth["layer_set"], base)
    tokenizer, model, _plan = load_model(store.path_of(base.id))
    model.eval()

    # the router's sets and its own time
    texts = [q.text for q in queries]
    embeddings = router.encoder.encode(texts)
    router_sets = router.layer_sets(embeddings)
    ks = [len(s) for s in router_sets]
    router_ms = {}
    for b in (1, 8):
        batch = (texts * 8)[:b]
        router.layer_sets(router.encoder.encode(batch))
        times = []
        for _ in range(10):
            start = time.perf_counter()
            router.layer_sets(router.encoder.encode(batch))
            times.append((time.perf_counter() - start) * 1000)
        router_ms[b] = round(statistics.median(times), 3)

    # pooled data: the depth scenario set's training queries, answered afresh at full depth
    say(f"answering {min(cfg.pooled, len(drows))} pooled queries at full depth")
    from llora_cli.data import load_data

    datasets: dict[str, object] = {}
    pooled_q = []
    for r in drows[:cfg.pooled]:
        if r["dataset"] not in datasets:
            datasets[r["dataset"]] = load_data(store, r["dataset"], command=command)
        d = datasets[r["dataset"]]
        pooled_q.append(Query(d.artifact, d.task, r["row"], d.train[r["row"]]))
    pooled: list[tuple[Query, list[int], list[int]]] = []
    with torch.no_grad():
        distill.answer(tokenizer, model, pooled_q, on_row=lambda q, a: pooled.append((q, a["prompt"], a["answer"])))
    kmax = max([*ks, 0])
    sweep_ks = sorted({*range(0, kmax + 1, cfg.sweep_every), kmax}) if cfg.sweep else []
    need = max([kmax, *sweep_ks])
    say(f"greedy static path on {len(pooled)} pooled queries")
    static = pooled_greedy_path(model, adapters, [(p, a) for _, p, a in pooled], need) if need else []
    by_domain = {}
    for d in sorted({q.task for q in queries}):
        seqs = [(p, a) for q, p, a in pooled if q.task == d]
        if len(seqs) == len(pooled):  # one domain: its search is the pooled one
            by_domain[d] = static[:kmax] or None
        else:
            by_domain[d] = pooled_greedy_path(model, adapters, seqs, kmax) if seqs and kmax else None
    influence = block_influence(model, [(p, a) for _, p, a in pooled])

    def prefix(path: list[dict] | None, k: int) -> list[int]:
        if k == 0:
            return []
        return list((path or static)[k - 1]["layers"])

    rng = random.Random(cfg.seed)
    sets = {
        FULL: [[] for _ in queries],
        ROUTER: router_sets,
        SKIP: router_sets,
        STATIC: [prefix(static, k) for k in ks],
        DOMAIN: [prefix(by_domain.get(q.task), k) for q, k in zip(queries, ks)],
        LAST: [list(range(count - k, count)) for k in ks],
        SHORTGPT: [lowest(influence, k) for k in ks],
        RANDOM: [sorted(rng.sample(range(count), k)) for k in ks],
    }

    # full-depth answers, then the ceiling's per-query search on them
    verdicts: dict[str, list[bool]] = {}
    answers: dict[str, list[str]] = {}
    say(f"answering {len(queries)} held-out queries at full depth")
    full_ids: list[tuple[list[int], list[int]]] = [([], [])] * len(queries)
    full_texts: list[str] = [""] * len(queries)
    index = {q.key: i for i, q in enumerate(queries)}

    def on_full(q: Query, a: dict) -> None:
        full_ids[index[q.key]] = (a["prompt"], a["answer"])
        full_texts[index[q.key]] = a["text"]

    with torch.no_grad():
        distill.answer(tokenizer, model, queries, on_row=on_full)
    sets[CEILING] = [search.greedy_search(model, adapters, p, a, threshold=threshold, max_fraction=max_fraction)["layers"]
                     if a else [] for p, a in full_ids]
    for name, s in sets.items():
        say(f"answering {len(queries)} held-out queries: {name}")
        answers[name] = full_texts if name == FULL else answer_with_sets(  # full depth: answered above already
            tokenizer, model, queries, s, None if name == SKIP else adapters)
        verdicts[name] = [bool(check(q, t)) for q, t in zip(queries, answers[name])]

    sweep: dict[str, dict[int, list[bool]]] = {m: {} for m in SWEPT}
    for k in sweep_ks:
        if k == 0:  # nothing replaced: every method is full depth
            for name in SWEPT:
                sweep[name][0] = verdicts[FULL]
            continue
        fixed = {ROUTER: router.layer_sets(embeddings, k=k), STATIC: [prefix(static, k)] * len(queries),
                 LAST: [list(range(count - k, count))] * len(queries), SHORTGPT: [lowest(influence, k)] * len(queries)}
        for name, s in fixed.items():
            say(f"sweep k={k}: {name}")
            texts_k = answer_with_sets(tokenizer, model, queries, s, adapters)
            sweep[name][k] = [bool(check(q, t)) for q, t in zip(queries, texts_k)]

    # cost per k
    say("timing decode per number of replaced layers")
    speed_prompt = full_ids[0][0] if full_ids and full_ids[0][0] else tokenizer("Hello")["input_ids"]
    timed = sorted({0, *ks, *(len(s) for s in sets[CEILING]), *sweep_ks})
    timing: dict = {"tokens": cfg.speed_tokens}
    timed_sets = {k: prefix(static, k) if k <= len(static) else list(range(count - k, count)) for k in timed}
    per_batch = {b: time_depths(tokenizer, model, adapters, speed_prompt, timed_sets, batch=b, tokens=cfg.speed_tokens,
                                repeats=cfg.repeats) for b in (1, 8)}
    for k in timed:
        timing[k] = {b: per_batch[b][k] for b in (1, 8)}

    methods = {}
    for name, s in sets.items():
        mk = [len(x) for x in s]
        methods[name] = {**_figures(verdicts[name], verdicts[FULL], verdicts[ROUTER], cfg.seed),
                         "layers_replaced_mean": round(sum(mk) / len(mk), 3) if mk else None,
                         "layers_replaced_histogram": {str(k): mk.count(k) for k in sorted(set(mk))},
                         **_cost(mk, timing, router_ms if name in (ROUTER, SKIP) else None)}
    sweep_report = {name: {str(k): {**_figures(v, verdicts[FULL], verdicts[ROUTER], cfg.seed),
                                    **_cost([k] * len(queries), timing, router_ms if name == ROUTER else None)}
                           for k, v in per_k.items()} for name, per_k in sweep.items()}
    r = methods[ROUTER]
    beats = None
    if sweep_report[STATIC]:
        at_least = [v for v in sweep_report[STATIC].values() if v["correct"] >= r["correct"]]
        best = max((v["batch1"]["decode_speedup"] for v in at_least), default=None)
        beats = {"static_speedup_at_router_accuracy": best,
                 "router_faster": best is None or r["batch1"]["decode_speedup"] > best}
    report = {
        "router": {"id": art.id, "name": art.name, "method": art.meta.get("method")},
        "engine": "transformers", "base": {"id": base.id, "name": base.name}, "layers": count,
        "layer_set": depth["layer_set"], "datasets": sorted({q.dataset.name for q in queries}), "split": "test",
        "n": len(queries), "pooled": len(pooled), "threshold": threshold, "max_fraction": max_fraction,
        "router_k": {"mean": round(sum(ks) / len(ks), 3) if ks else None,
                     "histogram": {str(k): ks.count(k) for k in sorted(set(ks))}},
        "router_ms": {f"batch{b}": v for b, v in router_ms.items()},
        "static_path": static, "static_per_domain": by_domain, "block_influence": influence,
        "methods": methods, "sweep": sweep_report,
        "timing": {str(k): {f"batch{b}": {"prefill_ms": v["prefill_ms"], "decode_tokens_per_s": v["decode_tokens_per_s"]}
                            for b, v in t.items()} for k, t in timing.items() if k != "tokens"},
        "speed_tokens": cfg.speed_tokens, "repeats": cfg.repeats,
        "goal": {**GOAL, "router_relative_accuracy": r["relative_to_full"],
                 "router_decode_speedup_batch1": r["batch1"]["decode_speedup"],
                 "met": bool(r["relative_to_full"] is not None and r["relative_to_full"] >= GOAL["relative_accuracy"]
                             and r["batch1"]["decode_speedup"] >= GOAL["decode_speedup_batch1"]
                             and (beats is None or beats["router_faster"])),
                 "vs_best_static": beats},
        "config": {"pooled": cfg.pooled, "sweep": cfg.sweep, "sweep_every": cfg.sweep_every, "seed": cfg.seed},
    }
    if plot is not None:
        write_pareto(report, plot)
        report["plot"] = str(plot)
    from llora_cli.router.evaluate import store_report

    return store_report(store, art, "evaluation_depth", report, command=command)


def write_pareto(report: dict, path: Path) -> None:
    """A PNG: accuracy (y) vs decode speed-up at batch 1 (x) for every method at the router's k, and every swept
    method along its k (lines, labelled with k)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for name, per_k in report["sweep"].items():
        pts = sorted((v["batch1"]["decode_speedup"], v["accuracy"] or 0, k) for k, v in per_k.items())
        if pts:
            line, = ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", alpha=0.6, label=f"{name} (fixed k)")
            for x, y, k in pts:
                ax.annotate(k, (x, y), fontsize=7, color=line.get_color())
    for name, m in report["methods"].items():
        ax.scatter([m["batch1"]["decode_speedup"]], [m["accuracy"] or 0], marker="*" if name == ROUTER else "o",
                   s=90 if name == ROUTER else 30, label=name, zorder=3)
    ax.set_xlabel("decode speed-up vs full depth (batch 1, KV cache, router time included)")
    ax.set_ylabel(f"accuracy (checker, n={report['n']})")
    ax.set_title(f"router '{report['router']['name']}': dynamic depth vs static pruning")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
