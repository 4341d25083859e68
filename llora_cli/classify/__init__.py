"""Classifiers (issue 15, seed 000): a decoder LLM with LoRA and a small classification head.

Data: ``intent`` generates labelled requests (``llora data make intent``); user files of ``{"text": ..., "label":
...}`` rows are registered by ``llora data add`` / ``--data FILE`` with their label set (format ``classify``).
Training: ``llora train --task classify`` (PEFT ``SEQ_CLS`` on ``AutoModelForSequenceClassification``, the head in
``modules_to_save``; llora_cli/trainjob.py). Using it: ``llora classify`` (model.py, metrics.py). docs/classify.md.

A classifier is an adapter or a modifier whose metadata says ``task: classify`` and records ``labels`` (index i is
class i of the head). Commands that generate text refuse it (``refuse_classifier``).
"""

from __future__ import annotations

from pathlib import Path

from llora_store.errors import BadInput

TASK = "classify"


def is_classifier(artifact) -> bool:
    """True when ``artifact`` (catalog Artifact) is a classifier: trained or imported with ``task: classify``."""
    return (artifact.meta or {}).get("task") == TASK


def labels_of(artifact) -> list[str]:
    """The label map of a classifier artifact (index i = class i). BadInput when it has none."""
    labels = (artifact.meta or {}).get("labels") or []
    if len(labels) < 2:
        raise BadInput(f"{artifact.kind} '{artifact.name}' records no label map (labels: {labels!r}); "
                       "a classifier needs at least two labels", hint="train it again with llora train --task classify")
    return list(labels)


def refuse_classifier(artifact, action: str, why: str = "") -> None:
    """BadInput when ``artifact`` is a classifier: ``action`` (e.g. "llora run") generates text, or (``why``) is
    not built for classifiers yet; the message names what to use instead."""
    if artifact is not None and is_classifier(artifact):
        raise BadInput(f"{artifact.kind} '{artifact.name}' is a classifier (labels "
                       f"{', '.join((artifact.meta or {}).get('labels') or [])}); {action} does not take classifiers"
                       f"{': ' + why if why else ''}",
                       hint=f'use llora classify {artifact.name} "text" (or --data FILE.jsonl)')


def check_trainable(data, base, config, base_dir: Path) -> list[str]:
    """The label map for ``llora train --task classify`` on ``data`` (llora_cli.data.Data) and ``base`` (Artifact),
    or BadInput: the data is not classification rows, a held-out label is not in the training labels, the base
    is GGUF or quantized (the head is trained in full precision on a safetensors base), ``quantize``/``dora``
    asked for, or the base's architecture has no sequence-classification class in transformers."""
    from llora_cli.data import CLASSIFY

    name = data.artifact.name if data.artifact is not None else "the data"
    if data.format != CLASSIFY:
        raise BadInput(f"--task classify needs classification rows {{\"text\": ..., \"label\": ...}}; "
                       f"'{name}' holds {data.format} rows",
                       hint="make some with llora data make intent, or add a JSONL of text + label rows")
    labels = sorted({str(r["label"]) for r in data.train})
    if len(labels) < 2:
        raise BadInput(f"'{name}': every training row has the label {labels!r}; a classifier needs at least two labels")
    unknown = sorted({str(r["label"]) for r in data.test} - set(labels))
    if unknown:
        raise BadInput(f"'{name}': held-out labels {', '.join(unknown)} never occur in the training rows; "
                       "the head would have no class for them", hint="add training rows of those labels")
    if config.quantize != "none" or config.dora:
        raise BadInput("--task classify trains plain LoRA (or rsLoRA) in full precision; drop quantize/dora")
    check_classifier_base(base, base_dir)
    return labels


def check_classifier_base(base, base_dir: Path) -> None:
    """BadInput unless ``base`` (Artifact, files in ``base_dir``) can carry a classifier: safetensors weights (not
    GGUF or bitsandbytes-quantized: the head runs in full precision) of a model type that has a
    sequence-classification class in transformers. Used by training, import and loading."""
    import json

    from llora_cli.loading import stored_format

    fmt = stored_format(base_dir)
    if fmt != "safetensors":
        raise BadInput(f"{base.kind} '{base.name}' is stored as {fmt}; a classifier runs on a safetensors base "
                       "(its head is in full precision)", hint="use the uncompressed base")
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES

    try:
        model_type = json.loads((base_dir / "config.json").read_text()).get("model_type")
    except (OSError, ValueError):
        model_type = None
    if model_type not in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES:
        raise BadInput(f"{base.kind} '{base.name}' ({model_type}) has no sequence-classification model in "
                       "transformers")


def refuse_non_classifier(artifact) -> None:
    """BadInput when ``artifact`` is not a classifier (``llora classify`` on a generative model)."""
    if not is_classifier(artifact):
        raise BadInput(f"{artifact.kind} '{artifact.name}' is not a classifier (it generates text)",
                       hint="train one with llora train --task classify, or use llora run for text generation")


HEAD_MODULES = ("score", "classifier")  # the sequence-classification head's module name (Llama & co. / others)
CLASSIFIER_FILE = "classifier.json"  # {"task": "classify", "labels": [...]}: the label map beside the adapter files


def read_head(peft_dir: Path, config: dict, tensors: dict, base_config: dict) -> tuple[list[str], dict, dict]:
    """A PEFT ``SEQ_CLS`` adapter directory's classifier part: (labels, the tensors without the head, the config
    without the head in ``modules_to_save``), so the rest is checked against the base like any LoRA adapter.

    The label map comes from ``classifier.json`` (written by ``llora train --task classify``) or, failing that,
    from ``id2label`` in the adapter config. BadInput: no label map, fewer than two labels, no head tensor, a head
    whose rows differ from the number of labels or whose columns differ from the base's ``hidden_size``."""
    import json

    labels = None
    path = peft_dir / CLASSIFIER_FILE
    source = str(path)
    if path.is_file():
        try:
            labels = json.loads(path.read_text()).get("labels")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            raise BadInput(f"{path} is not a JSON object with \"labels\"") from None
    elif isinstance(config.get("id2label"), dict):
        source = f"{peft_dir / 'adapter_config.json'} id2label"
        try:
            labels = [config["id2label"][k] for k in sorted(config["id2label"], key=int)]
        except (ValueError, TypeError):
            raise BadInput(f"{source}: its keys must be class indices 0..n-1, got {list(config['id2label'])[:5]}") from None
    if not isinstance(labels, list) or not all(isinstance(x, str) and x for x in labels):
        raise BadInput(f"{peft_dir} is a classification adapter (task_type SEQ_CLS) without a label map",
                       hint=f'add {CLASSIFIER_FILE} with {{"labels": ["first", "second", ...]}} (class i = row i of the head)')
    if len(labels) < 2 or len(set(labels)) != len(labels):
        raise BadInput(f"{source}: labels {labels!r}: a classifier needs at least two distinct labels")
    head = {k: v for k, v in tensors.items() if any(f".{m}." in f".{k}" for m in HEAD_MODULES)
            and "lora_" not in k}
    weights = [k for k in head if k.endswith("weight")]
    if not weights:
        raise BadInput(f"{peft_dir}: a SEQ_CLS adapter without its head ({' or '.join(HEAD_MODULES)}.weight)")
    rows, cols = tuple(head[weights[0]].shape)[:2]
    if rows != len(labels):
        raise BadInput(f"{peft_dir}: the head {weights[0]} has {rows} rows but the label map has {len(labels)} labels "
                       f"({', '.join(labels)})", hint="the head and the label map must come from the same training")
    hidden = base_config.get("hidden_size")
    if hidden is not None and cols != hidden:
        raise BadInput(f"{peft_dir}: the head reads {cols} features but the base's hidden size is {hidden}: "
                       "it was trained on another base")
    rest = {k: v for k, v in tensors.items() if k not in head}
    kept = [m for m in config.get("modules_to_save") or [] if m not in HEAD_MODULES]
    return list(labels), rest, {**config, "modules_to_save": kept or None}
