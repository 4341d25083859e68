"""`llora router fit`: a head on the frozen sentence embedding, fitted on a scenario set by FBC, DPO or ORPO.

The queries are embedded once; a fraction (``holdout``, chosen by a hash of the query, so the same query is
always on the same side) is kept out of training for the reported held-out accuracy. ``dpo`` and ``orpo`` start
from the FBC fit: DPO's frozen reference is that FBC router and its policy starts there; ORPO needs no reference
but starts there too, so the three methods differ only in what they add. The result is a ``router`` artifact
(state ``trained``) whose lineage ``runs_on`` the base, ``routes_to`` each modifier and ``uses`` the scenario set.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from llora_cli.router import collect as col
from llora_cli.router.losses import NONE, best_index, dpo_loss, fbc_loss, orpo_loss, preference_pairs
from llora_store import Store
from llora_store.errors import BadInput
from llora_store.models import Artifact

METHODS = ("fbc", "dpo", "orpo")
CURVE_POINTS = 60


@dataclass
class FitConfig:
    hidden: int = 0  # 0: a linear head (measured better than 128 hidden units on noisy targets: docs/router.md)
    steps: int = 300  # full-batch Adam steps per stage (FBC, then DPO/ORPO)
    lr: float = 0.01
    weight_decay: float = 0.001
    holdout: float = 0.2  # fraction of the queries kept out for the held-out accuracy
    seed: int = 0
    beta: float = 0.1  # DPO
    lam: float = 0.1  # ORPO: weight of the odds-ratio term

    @classmethod
    def parse(cls, pairs: list[str]) -> FitConfig:
        from llora_cli.router.keyvalue import parse_numbers

        cfg = parse_numbers(cls, pairs)
        if cfg.hidden < 0 or cfg.steps < 1 or cfg.lr <= 0 or cfg.weight_decay < 0 or not 0 <= cfg.holdout < 1:
            raise BadInput("need hidden >= 0, steps >= 1, lr > 0, weight_decay >= 0, 0 <= holdout < 1")
        if cfg.beta <= 0 or cfg.lam < 0:
            raise BadInput("need beta > 0 and lam >= 0")
        return cfg


def is_heldout(query: str, fraction: float) -> bool:
    return int(hashlib.sha256(query.encode()).hexdigest()[:8], 16) % 1000 < round(fraction * 1000)


@dataclass
class Fitted:
    artifact: Artifact
    training: dict


def routing_accuracy(chosen, rows: list[dict], candidates: list[str]) -> dict:
    """Of the queries some candidate answers correctly, the fraction where the chosen one does."""
    with_oracle = [(c, r) for c, r in zip(chosen, rows) if best_index(candidates, r["candidates"]) is not None]
    k = sum(r["candidates"][candidates[c]]["score"] >= 1 for c, r in with_oracle)
    n = len(with_oracle)
    return {"correct": k, "n": n, "accuracy": round(k / n, 4) if n else None}


def adam_stage(params: list, stage: str, loss_at: Callable[[int], object], cfg: FitConfig, curve: list[dict],
               progress: Callable[[str, int, int], None] | None = None) -> None:
    """``cfg.steps`` full-batch Adam steps on ``loss_at(step)`` (step 1..steps), the loss appended to ``curve``
    at ``CURVE_POINTS`` points; ``progress(stage, step, steps)``."""
    import torch

    opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    every = max(1, cfg.steps // CURVE_POINTS)
    for step in range(1, cfg.steps + 1):
        opt.zero_grad()
        loss = loss_at(step)
        loss.backward()
        opt.step()
        if step % every == 0 or step == cfg.steps:
            curve.append({"stage": stage, "step": step, "loss": round(loss.item(), 6)})
        if progress:
            progress(stage, step, cfg.steps)


def train_head(emb, rows: list[dict], candidates: list[str], method: str, cfg: FitConfig,
               progress: Callable[[str, int, int], None] | None = None):
    """Fit the choice head. ``emb [n, 384]`` float32 (numpy) of ``rows``. Returns (head, loss curve)."""
    import torch

    from llora_cli.router.model import make_head

    torch.manual_seed(cfg.seed)
    x = torch.from_numpy(emb)
    best = [best_index(candidates, r["candidates"]) for r in rows]
    best_rows = torch.tensor([i for i, b in enumerate(best) if b is not None], dtype=torch.long)
    best_idx = torch.tensor([b for b in best if b is not None], dtype=torch.long)
    pairs = torch.tensor([(i, w, lo) for i, r in enumerate(rows) for w, lo in preference_pairs(candidates, r["candidates"])],
                         dtype=torch.long).reshape(-1, 3)
    head = make_head(x.shape[1], cfg.hidden, len(candidates))
    curve: list[dict] = []

    def run(stage: str, loss_fn) -> None:
        adam_stage(list(head.parameters()), stage, lambda step: loss_fn(head(x)), cfg, curve, progress)

    head.train()
    run("fbc", lambda logits: fbc_loss(logits[best_rows], best_idx))
    if method == "dpo":
        if len(pairs) == 0:
            raise BadInput("no preference pair (a candidate scoring higher than another on the same query) "
                           "in the training queries: DPO has nothing to learn from")
        with torch.no_grad():
            ref = head(x).detach().clone()
        run("dpo", lambda logits: dpo_loss(logits, ref, pairs, beta=cfg.beta))
    elif method == "orpo":
        run("orpo", lambda logits: orpo_loss(logits, best_rows, best_idx, pairs, lam=cfg.lam))
    return head.eval(), curve


def fit(store: Store, scenarios_ref: str, *, method: str, name: str | None = None, config: list[str] = (),
        depth: str | None = None, command: str = "",
        progress: Callable[[str, int, int], None] | None = None) -> Fitted:
    """Fit a router on a scenario set and register it (kind ``router``, state ``trained``). With ``depth`` (a depth
    scenario set of the same base, ``llora router collect --depth``) the router also gets the layer and ratio heads
    (``depth/fitting.py``), fitted by the same method. BadInput for unusable inputs (each says why)."""
    import numpy as np
    import torch

    from llora_cli.router import encoder as enc
    from llora_cli.router import model as rmodel
    from llora_store.catalog import new_id, validate_name

    if method not in METHODS:
        raise BadInput(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    cfg = FitConfig.parse(list(config))
    scen = store.resolve(scenarios_ref, kinds=("scenario-set",))
    if scen.state != "ready":
        raise BadInput(f"scenario set '{scen.name}' is '{scen.state}'; fit on a ready one")
    if "depth" in scen.meta:
        raise BadInput(f"scenario set '{scen.name}' holds depth scenarios (layer sets), not modifier outcomes",
                       hint=f"fit on a scenario set from `llora router collect BASE --data D` and give this one "
                            f"as --depth {scen.name}")
    candidates = list(scen.meta["candidates"])
    if len(candidates) < 2:
        raise BadInput(f"scenario set '{scen.name}' has one candidate ({candidates[0]}): there is nothing to choose",
                       hint="train a modifier on the base, then collect again (llora router collect)")
    rows = col.load_rows(store, scen)
    if not any(best_index(candidates, r["candidates"]) is not None for r in rows):
        raise BadInput(f"scenario set '{scen.name}': no candidate answered any of its {len(rows)} queries correctly, "
                       "so no query has a winner to learn from",
                       hint="collect on more or easier queries, or train better modifiers")
    base = store.get(scen.meta["base"]["id"])
    if base.state == "discarded" or base.content_hash != scen.base_hash:
        raise BadInput(f"scenario set '{scen.name}' was measured on {base.kind} '{base.name}', which is "
                       f"{'discarded' if base.state == 'discarded' else 'no longer the same content'}",
                       hint="collect again on a current base (llora router collect BASE --data ...)")
    mods = [store.get(c) for c in candidates if c != NONE]
    gone = [m for m in mods if m.state in ("discarded", "failed")]
    if gone:
        raise BadInput(f"scenario set '{scen.name}' measured modifiers that are gone: "
                       f"{', '.join(f'{m.name} ({m.state})' for m in gone)}; a router cannot route to them",
                       hint="collect again on the base's current modifiers")
    recorded = scen.meta.get("modifiers", {})
    changed = [m for m in mods if recorded.get(m.id, {}).get("content_hash") not in (None, m.content_hash)]
    if changed:
        raise BadInput(f"scenario set '{scen.name}' measured other contents of " + ", ".join(
            f"modifier '{m.name}' (content hash {recorded[m.id]['content_hash'][:12]} -> {str(m.content_hash)[:12]})"
            for m in changed), hint="collect again on the base's current modifiers")
    if name is not None and any(a.name == validate_name(name) for a in store.artifacts()):
        raise BadInput(f"the name '{name}' is already taken", hint="choose another with --name")
    dscen, layer_set = _depth_inputs(store, depth, base) if depth is not None else (None, None)
    heldout = np.array([is_heldout(r["query"], cfg.holdout) for r in rows])
    train_rows = [r for r, h in zip(rows, heldout) if not h]
    test_rows = [r for r, h in zip(rows, heldout) if h]
    if not any(best_index(candidates, r["candidates"]) is not None for r in train_rows):
        raise BadInput(f"no training query of '{scen.name}' has a winner once {cfg.holdout:.0%} is held out",
                       hint="lower the held-out fraction (holdout=0) or collect more queries")
    start = time.perf_counter()
    encoder = enc.shared()
    emb = encoder.encode([r["query"] for r in rows])
    head, curve = train_head(emb[~heldout], train_rows, candidates, method, cfg, progress)
    with torch.no_grad():
        chosen = head(torch.from_numpy(emb)).argmax(dim=1).numpy()
    training = {"loss_curve": curve, "rows": {"train": len(train_rows), "heldout": len(test_rows)},
                "train": routing_accuracy(chosen[~heldout], train_rows, candidates),
                "heldout": routing_accuracy(chosen[heldout], test_rows, candidates),
                "seconds": round(time.perf_counter() - start, 2)}
    heads = {}
    if dscen is not None:
        heads, training["depth"] = _fit_depth(store, dscen, layer_set, encoder, method, cfg, progress)
    aid = new_id()
    staging = store.new_staging(aid)
    try:
        extra = {"candidates": candidates, "method": method, "config": asdict(cfg)}
        rmodel.save(staging, {rmodel.CHOICE: (head, extra), **heads}, encoder.identity)
        meta = {"method": method, "config": asdict(cfg), "candidates": candidates,
                # the content hashes it was fitted on: deploy and load refuse the router when they change
                "modifiers": {m.id: {"name": m.name, "domain": m.domain, "content_hash": m.content_hash}
                              for m in mods},
                "base": {"id": base.id, "name": base.name, "kind": base.kind, "content_hash": base.content_hash},
                "scenarios": scen.id,
                **({"depth": {"scenarios": dscen.id, "layer_set": layer_set.id,
                              "layer_set_content_hash": layer_set.content_hash,
                              "layers": dscen.meta["depth"]["layers"]}} if dscen is not None else {}),
                "encoder": {k: v for k, v in encoder.identity.items()}, "training": training}
        parents = [(base.id, "runs_on")] + [(m.id, "routes_to") for m in mods] + [(scen.id, "uses")]
        if dscen is not None:
            parents += [(dscen.id, "uses"), (layer_set.id, "uses")]
        art = store.create("router", name or store.unique_name(f"router-{base.name}-{method}"), state="trained",
                           staging=staging, parents=parents, metadata=meta, base_hash=base.content_hash,
                           command=command, artifact_id=aid,
                           reason=f"{method} on scenario set '{scen.name}' ({len(train_rows)} training queries)")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return Fitted(art, training)


def _depth_inputs(store: Store, ref: str, base: Artifact) -> tuple[Artifact, Artifact]:
    """The depth scenario set ``ref`` and its layer-adapter set, checked to belong to ``base`` and to be usable."""
    dscen = store.resolve(ref, kinds=("scenario-set",))
    if "depth" not in dscen.meta:
        raise BadInput(f"scenario set '{dscen.name}' holds modifier outcomes, not depth scenarios",
                       hint="give --depth a set made by: llora router collect BASE --depth LAYERSET --data D")
    if dscen.state != "ready":
        raise BadInput(f"depth scenario set '{dscen.name}' is '{dscen.state}'; fit on a ready one")
    if dscen.meta["base"]["id"] != base.id or dscen.base_hash != base.content_hash:
        raise BadInput(f"depth scenario set '{dscen.name}' was collected on another base than the scenario set's "
                       f"({base.kind} '{base.name}')", hint="collect both on the same base")
    layer_set = store.get(dscen.meta["depth"]["layer_set"]["id"])
    if layer_set.state != "ready" or layer_set.content_hash != dscen.meta["depth"]["layer_set"]["content_hash"]:
        raise BadInput(f"the layer-adapter set '{layer_set.name}' the depth scenarios were measured with is "
                       f"{'no longer the same content' if layer_set.state == 'ready' else layer_set.state}",
                       hint="distill and collect the depth scenarios again")
    from llora_cli.router.serving import depth_mismatches

    wrong = depth_mismatches(store, dscen.meta["depth"], base)
    if wrong:
        raise BadInput(f"depth scenario set '{dscen.name}' does not fit {base.kind} '{base.name}': {'; '.join(wrong)}",
                       hint=f"distill layer adapters and collect depth scenarios on it: llora router distill {base.name} "
                            "--data D; llora router collect BASE --depth LAYERSET --data D")
    return dscen, layer_set


def _fit_depth(store: Store, dscen: Artifact, layer_set: Artifact, encoder, method: str, cfg: FitConfig,
               progress) -> tuple[dict, dict]:
    """The layer and ratio heads ({name: (module, spec extra)}) and their training figures."""
    import numpy as np
    import torch

    from llora_cli.router.depth import fitting
    from llora_cli.router.depth.heads import LAYERS, RATIO

    count = int(dscen.meta["depth"]["layers"])
    rows = col.load_rows(store, dscen)
    heldout = np.array([is_heldout(r["query"], cfg.holdout) for r in rows])
    train_rows = [r for r, h in zip(rows, heldout) if not h]
    test_rows = [r for r, h in zip(rows, heldout) if h]
    emb = encoder.encode([r["query"] for r in rows])
    layer_head, ratio_head, curve = fitting.train_depth_heads(emb[~heldout], train_rows, count, method, cfg, progress)
    x, held = torch.from_numpy(emb), torch.from_numpy(heldout)
    predicted = fitting.predict(layer_head, ratio_head, x, count)
    figures = {"loss_curve": curve, "rows": {"train": len(train_rows), "heldout": len(test_rows)},
               "train": {**fitting.figures([p for p, h in zip(predicted, heldout) if not h], train_rows),
                         "pairs": fitting.pairs_ordered(layer_head, ratio_head, x[~held], train_rows, count)},
               "heldout": {**fitting.figures([p for p, h in zip(predicted, heldout) if h], test_rows),
                           "pairs": fitting.pairs_ordered(layer_head, ratio_head, x[held], test_rows, count)}}
    warning = fitting.overreach_warning(figures["train"], count)
    if warning:
        figures["warning"] = warning
    extra = {"layers": count, "layer_set": layer_set.id, "scenarios": dscen.id, "method": method}
    return {LAYERS: (layer_head, extra), RATIO: (ratio_head, {**extra, "outputs": ["mu", "log_std"]})}, figures
