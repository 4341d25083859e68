"""Per-domain accuracy on the Q8_0-compressed SmolLM2-135M: base vs a modifier trained with llora's defaults.

Usage::

    .venv/bin/python benchmarks/domain_accuracy.py [--home DIR] [--domains reasoning,automation,code]
        [--rows reasoning=1200,...] [--n-test 60] [--humaneval-limit 164] [--base NAME]
        [--modifier domain=NAME ...] [--calculator] [KEY=VALUE ...]

The pipeline of ``llora demo``: the embedded SmolLM2-135M-Instruct (``llora bases add smollm2``),
compressed to GGUF Q8_0 (``llora compress --method gguf-q8_0``), and one runtime modifier per domain
trained on that compressed base with ``llora train --kind modifier``'s defaults (KEY=VALUE overrides
them, as on the command line). For each domain, base and modifier are scored (greedy, transformers
engine, the task's checker) on the same rows of

- (a) the family-level held-out split of the generated data (families and phrasings training never saw);
- (b) the hand-written set ``tests/data/<domain>_handwritten.jsonl`` (never used for training);
- (c) for code, HumanEval pass@1 (the first ``--humaneval-limit`` problems, all 164 by default);

each as k/n with the 95% Wilson interval, and the pair with the exact McNemar p-value on the
discordant rows. ``--calculator``: reasoning rows (a) and (b) are scored with calculator-assisted decoding
(``llora eval --calculator``) for base and modifier alike; other domains as without it. Training time is the wall
clock of ``llora_cli.train.train`` (load + train + save).

A base's verdicts on a row set are cached in ``$LLORA_HOME/domain_accuracy_cache.json`` (greedy
decoding is deterministic, so the base is scored once per home). ``--modifier domain=NAME``
re-scores an existing modifier instead of training one. Prints one JSON line per result, then the
whole run as JSON and markdown tables.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_ROWS = {"reasoning": 800, "automation": 800, "code": 800}  # 100 default steps x 8 rows: one epoch


def _pairs(text: str | None) -> dict[str, str]:
    return dict(p.split("=", 1) for p in text.split(",")) if text else {}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="training config overrides")
    ap.add_argument("--home", default=None, help="LLORA_HOME (default: a fresh temp dir)")
    ap.add_argument("--domains", default="reasoning,automation,code")
    ap.add_argument("--rows", default=None, help="training rows per domain, e.g. reasoning=1200,code=800")
    ap.add_argument("--n-test", default="60", help="held-out rows per domain: N, or e.g. reasoning=60,automation=40")
    ap.add_argument("--humaneval-limit", type=int, default=164, help="first N HumanEval problems; 0 skips it")
    ap.add_argument("--base", default=None, help="compressed base to use (default: make smollm2 -> gguf-q8_0)")
    ap.add_argument("--modifier", action="append", default=[], metavar="DOMAIN=NAME",
                    help="score this existing modifier instead of training one")
    ap.add_argument("--calculator", action="store_true",
                    help="reasoning rows scored with calculator-assisted decoding (base and modifier)")
    args = ap.parse_args()
    os.environ["LLORA_HOME"] = args.home or tempfile.mkdtemp(prefix="llora-acc-")

    from llora_store import open_store

    store = open_store()
    base = _compressed_base(store, args.base)
    rows_per_domain = {**DEFAULT_ROWS, **{k: int(v) for k, v in _pairs(args.rows).items()}}
    n_test = ({d: int(args.n_test) for d in DEFAULT_ROWS} if "=" not in args.n_test
              else {**{d: 60 for d in DEFAULT_ROWS}, **{k: int(v) for k, v in _pairs(args.n_test).items()}})
    given = dict(m.split("=", 1) for m in args.modifier)
    cache_path = Path(os.environ["LLORA_HOME"]) / "domain_accuracy_cache.json"
    cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    run = {"machine": machine(), "command": " ".join([".venv/bin/python", *sys.argv]), "base": base.name,
           "training": [], "results": []}
    for domain in args.domains.split(","):
        ds = _dataset(store, domain, rows_per_domain[domain], n_test[domain])
        if domain in given:
            mod = store.resolve(given[domain], kinds=("modifier",))
            trained = {"domain": domain, "modifier": mod.name, "reused": True, "config": mod.meta.get("config"),
                       **mod.meta.get("training", {})}
        else:
            trained = _train(store, base, ds, domain, args.overrides)
            mod = store.resolve(trained["modifier"], kinds=("modifier",))
        trained.update(rows=rows_per_domain[domain], dataset=ds.name)
        run["training"].append(trained)
        print(json.dumps(trained), flush=True)
        sets = [("held-out split", ds.id, None), ("hand-written", str(REPO / f"tests/data/{domain}_handwritten.jsonl"), domain)]
        calc = args.calculator and domain == "reasoning"
        for label, data_ref, task in sets:
            key = f"{base.id}:{_data_key(store, data_ref)}" + (":calculator" if calc else "")
            b = cache.get(key) or _score(store, base.id, data_ref, task, calc)
            cache[key] = b
            cache_path.write_text(json.dumps(cache))
            m = _stored(store, mod.id, data_ref, calc) or _score(store, mod.id, data_ref, task, calc)
            run["results"].append(_paired(domain, label + (" (calculator)" if calc else ""), b, m))
            print(json.dumps(run["results"][-1]), flush=True)
        if domain == "code" and args.humaneval_limit:
            key = f"{base.id}:humaneval:{args.humaneval_limit}"
            b = cache.get(key) or _humaneval(store, base.id, args.humaneval_limit)
            cache[key] = b
            cache_path.write_text(json.dumps(cache))
            m = _humaneval(store, mod.id, args.humaneval_limit)
            run["results"].append(_paired(domain, f"HumanEval pass@1 (first {args.humaneval_limit})", b, m))
            print(json.dumps(run["results"][-1]), flush=True)
    print(json.dumps(run, indent=2))
    print(markdown(run))


def machine() -> str:
    return f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def _compressed_base(store, name: str | None):
    from llora_cli.bases import add_base
    from llora_cli.compress import compress

    if name:
        return store.resolve(name, kinds=("compressed",))
    found = [a for a in store.list(kind="compressed") if a.name == "smollm2-q8_0"]
    if found:
        return store.resolve(found[0].id)
    bases = [a for a in store.list(kind="base") if a.name == "smollm2"]
    base_id = bases[0].id if bases else add_base(store, "smollm2", name="smollm2").id
    return compress(store, base_id, "gguf-q8_0", name="smollm2-q8_0", eval_n=0).compressed


def _dataset(store, domain: str, n: int, n_test: int):
    from llora_cli import tasks
    from llora_cli.data import make_dataset

    generator = hashlib.sha256(Path(tasks.KINDS[domain].__file__).read_bytes()).hexdigest()[:8]
    name = f"bench-{domain}-n{n}-t{n_test}-g{generator}"  # a changed generator makes a new dataset
    found = [a for a in store.list(kind="dataset") if a.name == name]
    return store.resolve(found[0].id) if found else make_dataset(store, domain, n, seed=0, n_test=n_test, name=name)


def _train(store, base, ds, domain: str, overrides: list[str]) -> dict:
    from llora_cli.train import train
    from llora_cli.trainconfig import load_config

    start = time.perf_counter()
    res = train(store, base_ref=base.id, data_ref=ds.id, kind="modifier", domain=domain,
                config=load_config(None, overrides), command="benchmarks/domain_accuracy.py")
    o = res.outcome
    return {"domain": domain, "modifier": res.artifact.name, "wall_seconds": round(time.perf_counter() - start, 1),
            "config": res.artifact.meta["config"], **{k: o.get(k) for k in (
                "steps", "tokens", "seconds", "tokens_per_s", "final_loss", "memorisation")}}


def _data_key(store, data_ref: str) -> str:
    path = Path(data_ref)
    if path.exists():
        return "file:" + hashlib.sha256(path.read_bytes()).hexdigest()
    return "dataset:" + store.resolve(data_ref, kinds=("dataset",)).id


def _stored(store, artifact_id: str, data_ref: str, calculator: bool = False) -> dict | None:
    """An evaluation of this (immutable) modifier on these rows already in the catalog, with its verdicts, made
    with calculator-assisted decoding or without it as asked."""
    from sqlmodel import select

    from llora_store.models import Evaluation

    path = Path(data_ref)
    with store.reading() as s:
        evals = s.exec(select(Evaluation).where(Evaluation.artifact_id == artifact_id)).all()
    for e in evals:
        m = e.metrics or {}
        same = (m.get("data", {}).get("sha256") == hashlib.sha256(path.read_bytes()).hexdigest() if path.exists()
                else e.dataset_id == store.resolve(data_ref, kinds=("dataset",)).id and e.split == "test")
        if same and m.get("verdicts") and "comparison" not in m and ("calculator" in m) == calculator:
            return {"verdicts": [c == "1" for c in m["verdicts"]], "seconds": m.get("seconds"), "samples": []}
    return None


def _score(store, ref: str, data_ref: str, task: str | None, calculator: bool = False) -> dict:
    from llora_cli.evaluate import evaluate

    r = evaluate(store, ref, data_ref, task=task, command="benchmarks/domain_accuracy.py", calculator=calculator)
    return {"verdicts": r.verdicts, "seconds": r.seconds, "samples": r.samples}


def _humaneval(store, ref: str, limit: int) -> dict:
    from llora_cli.evaluate import evaluate_benchmark

    r = evaluate_benchmark(store, ref, "humaneval", limit=limit if limit < 164 else None)
    return {"verdicts": r.verdicts, "seconds": r.seconds, "samples": r.samples}


def _paired(domain: str, label: str, base: dict, mod: dict) -> dict:
    from llora_cli.stats import Paired

    p = Paired.of(mod["verdicts"], base["verdicts"])
    return {"domain": domain, "set": label, "n": p.a.n, "base": p.b.to_json(), "modifier": p.a.to_json(),
            "base_text": str(p.b), "modifier_text": str(p.a), "difference": round(p.difference, 4),
            "discordant": {"only_modifier": p.only_a, "only_base": p.only_b}, "mcnemar_p": round(p.p_value, 6),
            "eval_seconds": {"base": base["seconds"], "modifier": mod["seconds"]},
            "samples": {"base": base.get("samples", [])[:2], "modifier": mod.get("samples", [])[:2]}}


def _pct(acc: dict) -> str:
    lo, hi = acc["ci95"]
    return f"{acc['k']}/{acc['n']} = {acc['accuracy']:.1%} ({lo:.1%}-{hi:.1%})"


def markdown(run: dict) -> str:
    lines = ["| domain | rows | steps | lr | r | max_seq_len | train time (wall) | tokens/s | final loss |",
             "|---|---|---|---|---|---|---|---|---|"]
    for t in run["training"]:
        c = t.get("config", {})
        lines.append(f"| {t['domain']} | {t['rows']} | {t.get('steps')} | {c.get('learning_rate')} | {c.get('r')} | "
                     f"{c.get('max_seq_len')} | {t.get('wall_seconds', t.get('seconds'))} s | {t.get('tokens_per_s')} | "
                     f"{(t.get('final_loss') or 0):.4f} |")
    lines += ["", "| domain | set | n | base (95% CI) | modifier (95% CI) | McNemar p |", "|---|---|---|---|---|---|"]
    for r in run["results"]:
        lines.append(f"| {r['domain']} | {r['set']} | {r['n']} | {_pct(r['base'])} | {_pct(r['modifier'])} | "
                     f"{r['mcnemar_p']:.2g} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
