"""``llora classify``: label probabilities of texts, and accuracy / macro-F1 / confusion matrix on labelled rows.

Metrics come from scikit-learn (``accuracy_score``, ``f1_score(average="macro")``, ``confusion_matrix``); the
accuracy's 95% interval is Wilson's (llora_cli.stats.wilson). The confusion-matrix PNG is drawn by scikit-learn's
``ConfusionMatrixDisplay`` (matplotlib).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from llora_cli.classify import labels_of, refuse_non_classifier
from llora_store import Store
from llora_store.errors import BadInput
from llora_store.rules import check_runnable


@dataclass
class Prediction:
    text: str
    label: str
    probabilities: dict[str, float]  # label -> probability (float32 softmax, rounded to 6 places)
    expected: str | None = None


@dataclass
class ClassifyReport:
    artifact: dict
    labels: list[str]
    predictions: list[Prediction]
    seconds: float
    rows_per_s: float
    data: dict | None = None  # the labelled rows' source: {"name", "split"} or {"path"}
    metrics: dict | None = None  # labelled rows: n, accuracy, accuracy_ci95, macro_f1, confusion
    timing: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)


def read_rows(store: Store, data_ref: str, split: str, command: str = "") -> tuple[list[dict], dict]:
    """Rows ``{"text", "label"?}`` of a JSONL file (``{"text"}`` alone is fine: no metrics then) or of a registered
    classification dataset's ``split`` (test falls back to train when the dataset has no held-out rows).
    BadInput (with FILE:LINE) for a row without text, a file of chat rows, an unknown dataset."""
    import json

    path = Path(data_ref).expanduser()
    if path.is_dir():
        raise BadInput(f"{path} is a directory; --data takes a JSONL file or a dataset name")
    if path.is_file():
        rows = []
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise BadInput(f"{path}: not UTF-8 text (byte {e.start}); save it as UTF-8 JSONL") from None
        for i, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise BadInput(f"{path}:{i}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict) or not isinstance(row.get("text"), str) or not row["text"].strip():
                raise BadInput(f"{path}:{i}: expected an object with a non-empty \"text\" (and an optional \"label\")")
            if "label" in row and (isinstance(row["label"], bool) or not isinstance(row["label"], (str, int))
                                   or not str(row["label"]).strip()):
                raise BadInput(f"{path}:{i}: label {row['label']!r} is not a non-empty string")
            rows.append({"text": row["text"], **({"label": str(row["label"])} if "label" in row else {})})
        if not rows:
            raise BadInput(f"{path}: no rows")
        return rows, {"path": str(path)}
    from llora_cli.data import CLASSIFY, load_data

    data = load_data(store, data_ref, command=command)
    if data.format != CLASSIFY:
        raise BadInput(f"dataset '{data.artifact.name}' holds {data.format} rows, not text + label rows")
    used = "test" if split == "test" and data.test else "train"
    return (data.test if used == "test" else data.train), {"name": data.artifact.name, "split": used}


def classify(store: Store, ref: str, *, texts: list[str] | None = None, data_ref: str | None = None,
             split: str = "test", limit: int | None = None, batch_size: int = 32, plot: Path | None = None,
             record: bool = True, command: str = "") -> ClassifyReport:
    """Classify ``texts`` or the rows of ``data_ref`` with the classifier ``ref``.

    Labelled rows also give metrics: accuracy with its Wilson 95% interval, macro-F1 over the classifier's labels,
    the confusion matrix (rows: true label, columns: predicted, in label-map order), the PNG at ``plot``; recorded
    as an evaluation of the artifact when the rows are a registered dataset's and ``record``.
    BadInput: not a classifier, a label the classifier does not know (nothing is computed), a mix of labelled and
    unlabelled rows, ``plot`` without labels. RuleViolation R5 when a training adapter is asked to classify
    texts (it may only be evaluated on labelled rows, like ``llora eval``)."""
    art = store.resolve(ref)
    refuse_non_classifier(art)
    labels = labels_of(art)
    source = None
    if data_ref is not None:
        rows, source = read_rows(store, data_ref, split, command)
        rows = rows[:limit] if limit is not None else rows
    else:
        rows = [{"text": t} for t in texts or []]
        if not rows:
            raise BadInput("nothing to classify: give a text or --data FILE.jsonl")
        for i, r in enumerate(rows, 1):  # before anything is loaded
            if not r["text"].strip():
                raise BadInput(f"text {i} is empty; a classifier needs some text to read")
    labelled = sum("label" in r for r in rows)
    if labelled not in (0, len(rows)):
        raise BadInput(f"{labelled} of {len(rows)} rows have a label; label all of them (metrics) or none")
    if labelled:
        unknown = sorted({r["label"] for r in rows} - set(labels))
        if unknown:
            raise BadInput(f"labels {', '.join(repr(u) for u in unknown)} are not in the classifier's label map "
                           f"({', '.join(labels)})", hint="use data labelled with the classifier's labels")
    else:
        check_runnable(art)  # R5: a training adapter only evaluates (labelled rows)
        if plot is not None:
            raise BadInput("--plot draws the confusion matrix of labelled rows; these rows have no label")
    from llora_cli.classify.model import load_classifier

    t0 = time.perf_counter()
    clf = load_classifier(store, art)
    t1 = time.perf_counter()
    probs = clf.probabilities([r["text"] for r in rows], batch_size=batch_size)
    t2 = time.perf_counter()
    preds = [Prediction(r["text"], labels[int(p.argmax())], {x: round(float(v), 6) for x, v in zip(labels, p)},
                        r.get("label")) for r, p in zip(rows, probs)]
    report = ClassifyReport(artifact={"id": art.id, "name": art.name, "kind": art.kind}, labels=labels,
                            predictions=preds, seconds=round(t2 - t0, 3),
                            rows_per_s=round(len(rows) / (t2 - t1), 2) if t2 > t1 else 0.0, data=source,
                            timing={"load": round(t1 - t0, 3), "classify": round(t2 - t1, 3)})
    if labelled:
        report.metrics = metrics([p.expected for p in preds], [p.label for p in preds], labels)
        if plot is not None:
            plot_confusion(report.metrics["confusion"], labels, plot, title=f"{art.name} on "
                           f"{source.get('name') or Path(source['path']).name} (n={len(rows)})")
        if record and source and "name" in source:
            from llora_cli.data import load_data

            dataset = load_data(store, data_ref, command=command).artifact
            store.record_evaluation(art.id, {k: v for k, v in report.metrics.items() if k != "confusion"},
                                    dataset_id=dataset.id, split=source["split"])
    return report


def metrics(expected: list[str], predicted: list[str], labels: list[str]) -> dict:
    """``n``, ``correct``, ``accuracy`` and its Wilson 95% ``accuracy_ci95``, ``macro_f1`` (the unweighted mean of
    the per-label F1 over every label of the map, a label never predicted nor present counting 0), ``per_label``
    {label: {precision, recall, f1, support}} and ``confusion`` ([true][predicted] counts, label-map order)."""
    from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

    from llora_cli.stats import wilson

    n = len(expected)
    correct = sum(e == p for e, p in zip(expected, predicted))
    lo, hi = wilson(correct, n)
    p, r, f, s = precision_recall_fscore_support(expected, predicted, labels=labels, zero_division=0)
    return {"n": n, "correct": correct, "accuracy": round(correct / n, 5), "accuracy_ci95": [round(lo, 5), round(hi, 5)],
            "macro_f1": round(float(f1_score(expected, predicted, labels=labels, average="macro", zero_division=0)), 5),
            "per_label": {x: {"precision": round(float(p[i]), 5), "recall": round(float(r[i]), 5),
                              "f1": round(float(f[i]), 5), "support": int(s[i])} for i, x in enumerate(labels)},
            "confusion": confusion_matrix(expected, predicted, labels=labels).tolist()}


def plot_confusion(confusion: list[list[int]], labels: list[str], path: Path, *, title: str) -> Path:
    """The confusion matrix as a PNG (rows: true label, columns: predicted); written whole or not at all."""
    import os

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from sklearn.metrics import ConfusionMatrixDisplay

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise BadInput(f"--plot {path}: the confusion matrix is written as PNG; give a .png path")
    if not path.parent.is_dir():
        raise BadInput(f"--plot {path}: directory {path.parent} does not exist")
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * len(labels), 1.0 + 0.5 * len(labels)))
    ConfusionMatrixDisplay(np.array(confusion), display_labels=labels).plot(ax=ax, colorbar=False,
                                                                             xticks_rotation="vertical")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def write_predictions(path: Path, predictions: list[Prediction]) -> int:
    """One JSON line per row (text, label, probabilities, expected) to ``path``, written whole (temp + rename)."""
    import json
    import os

    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for p in predictions:
            f.write(json.dumps(asdict(p), ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return len(predictions)
