"""Intent classifier on SmolLM2-135M (issue 15): held-out and hand-written accuracy against two baselines.

Usage::

    .venv/bin/python benchmarks/classify_smollm2.py [--home DIR] [--n 440] [--n-test 110] [--steps 150]

In a fresh home (or ``--home``): registers the embedded SmolLM2-135M (``llora bases add smollm2``), makes the intent
data (``llora data make intent``: 11 labels, the automation task's requests labelled by the tool they call or
``none``; held out by phrasing and family), trains a classifier modifier (``llora train --task classify``) and
scores it with ``llora classify`` on

- the held-out split: wordings (and, for ``none``, whole families of requests) the training rows never used;
- the hand-written set: the 40 requests of ``tests/data/automation_handwritten.jsonl`` (written by hand, never
  trained on), labelled by the tool their expected call names, ``none`` when no tool fits.

Baselines on the same rows:

- zero-shot prompt of the base: the chat template, a system message listing the tools and asking which one the
  request calls (or none), and the label whose tokens have the highest summed log-probability as the answer
  (a constrained choice: no parsing failures count against it);
- logistic regression (scikit-learn, ``C=10``, ``max_iter=2000``) on all-MiniLM-L6-v2 sentence embeddings of the
  training rows (llora_cli.router.encoder).

Also: classify throughput (rows/s at batch 32, the model loaded) over 352 training texts. Accuracy is reported as
k/n with the Wilson 95% interval; macro-F1 over the 11 labels. Results: docs/benchmarks.md, raw JSON in
docs/results/classify_smollm2.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TOOLS = ["weather", "timer", "email", "event", "translate", "music", "todo", "lights", "currency", "search"]


def llora(home: Path, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-c", "from llora_cli.cli.entry import main; main()", *map(str, args),
                          "--json"], env={**os.environ, "LLORA_HOME": str(home)}, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"llora {' '.join(map(str, args))} failed: {out.stderr}")
    return json.loads(out.stdout)


def handwritten_rows() -> list[dict]:
    rows = []
    for line in (REPO / "tests/data/automation_handwritten.jsonl").read_text().splitlines():
        r = json.loads(line)
        text = next(m["content"] for m in r["messages"] if m["role"] == "user")
        rows.append({"text": text, "label": (r["check"].get("call") or {}).get("name") or "none"})
    return rows


def zero_shot(base_dir: Path, rows: list[dict], labels: list[str]) -> list[str]:
    """The label with the highest summed log-probability after a prompt asking which tool the request calls."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    system = (f"Tools: {', '.join(TOOLS)}. Which tool does the user's request call? Answer with the tool's name "
              "only, or none if no tool fits.")
    preds = []
    with torch.inference_mode():
        for r in rows:
            prompt = tok.apply_chat_template([{"role": "system", "content": system}, {"role": "user", "content": r["text"]}],
                                             tokenize=False, add_generation_prompt=True)
            p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
            seqs = [p_ids + tok(x, add_special_tokens=False)["input_ids"] for x in labels]
            width = max(map(len, seqs))
            ids = torch.full((len(seqs), width), tok.pad_token_id or 0)
            mask = torch.zeros((len(seqs), width), dtype=torch.long)
            for i, s in enumerate(seqs):
                ids[i, :len(s)], mask[i, :len(s)] = torch.tensor(s), 1
            logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), -1)
            scores = [sum(float(logp[i, j - 1, s[j]]) for j in range(len(p_ids), len(s))) for i, s in enumerate(seqs)]
            preds.append(labels[max(range(len(labels)), key=scores.__getitem__)])
    return preds


def logistic_regression(train: list[dict], sets: dict[str, list[dict]]) -> dict[str, list[str]]:
    from sklearn.linear_model import LogisticRegression

    from llora_cli.router.encoder import shared

    enc = shared()
    clf = LogisticRegression(C=10.0, max_iter=2000).fit(enc.encode([r["text"] for r in train]), [r["label"] for r in train])
    return {k: list(clf.predict(enc.encode([r["text"] for r in rows]))) for k, rows in sets.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--home", type=Path)
    ap.add_argument("--n", type=int, default=440)
    ap.add_argument("--n-test", type=int, default=110)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--out", type=Path, default=REPO / "docs/results/classify_smollm2.json")
    args = ap.parse_args()
    from llora_cli.classify.run import metrics

    home = args.home or Path(tempfile.mkdtemp(prefix="llora-clf-")) / "home"
    if not (home / "catalog.db").exists() or not any(a["name"] == "smollm2" for a in llora(home, "bases", "list")):
        llora(home, "bases", "add", "smollm2", "--name", "smollm2")
    data_name = f"intent-bench-{args.n}-{args.n_test}"
    if not any(a["name"] == data_name for a in llora(home, "datasets", "list")):
        llora(home, "data", "make", "intent", "--n", args.n, "--n-test", args.n_test, "--name", data_name)
    root = home.parent
    hand = root / "intent_handwritten.jsonl"
    hand.write_text("".join(json.dumps(r) + "\n" for r in handwritten_rows()))
    t0 = time.perf_counter()
    trained = llora(home, "train", "--base", "smollm2", "--data", data_name, "--task", "classify", "--kind", "modifier",
                    "--domain", "intent", f"max_steps={args.steps}")
    train_s = time.perf_counter() - t0
    clf = trained["name"]
    held = llora(home, "classify", clf, "--data", data_name, "--plot", root / "confusion_heldout.png")
    handr = llora(home, "classify", clf, "--data", hand, "--plot", root / "confusion_handwritten.png")

    from llora_cli.data import load_data
    from llora_store import open_store

    store = open_store(home)
    data = load_data(store, data_name)
    labels = held["labels"]
    sets = {"heldout": data.test, "handwritten": handwritten_rows()}
    base_dir = store.path_of(store.resolve("smollm2").id)
    t1 = time.perf_counter()
    zs = {k: zero_shot(base_dir, rows, labels) for k, rows in sets.items()}
    zs_s = time.perf_counter() - t1
    lr = logistic_regression(data.train, sets)
    texts = [r["text"] for r in data.train[:352]]
    tp = llora(home, "classify", clf, *texts, "--batch-size", "32")
    report = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "data": {"name": data_name, "train": len(data.train), "heldout": len(data.test), "handwritten": len(sets["handwritten"]),
                 "labels": labels},
        "training": {k: trained[k] for k in ("steps", "tokens", "seconds", "tokens_per_s", "final_loss", "heldout",
                                              "trainable_parameters")} | {"wall_s": round(train_s, 1)},
        "classifier": {"heldout": {k: v for k, v in held["metrics"].items() if k != "per_label"},
                       "handwritten": {k: v for k, v in handr["metrics"].items() if k != "per_label"}},
        "zero_shot": {k: metrics([r["label"] for r in sets[k]], zs[k], labels) for k in sets} | {"seconds": round(zs_s, 1)},
        "logreg_minilm": {k: metrics([r["label"] for r in sets[k]], lr[k], labels) for k in sets},
        "throughput": {"rows": len(texts), "batch_size": 32, "rows_per_s": tp["rows_per_s"], "load_s": tp["timing"]["load"]},
    }
    for k in ("zero_shot", "logreg_minilm"):
        for s in sets:
            report[k][s].pop("per_label")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    print("\n| method | held-out accuracy (n, 95% CI) | held-out macro-F1 | hand-written accuracy (n, 95% CI) | hand-written macro-F1 |")
    print("|---|---|---|---|---|")
    for name, m in [("LoRA classifier (SmolLM2-135M)", report["classifier"]), ("zero-shot prompt (SmolLM2-135M)", report["zero_shot"]),
                    ("logistic regression on MiniLM", report["logreg_minilm"])]:
        cells = []
        for s in ("heldout", "handwritten"):
            x = m[s]
            cells += [f"{x['correct']}/{x['n']} = {x['accuracy']:.1%} ({x['accuracy_ci95'][0]:.1%}-{x['accuracy_ci95'][1]:.1%})",
                      f"{x['macro_f1']:.3f}"]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
