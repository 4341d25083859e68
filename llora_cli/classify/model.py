"""Loading a classifier and computing its label probabilities (``llora classify``).

A classifier modifier or training adapter loads as its base through ``AutoModelForSequenceClassification`` (the
head's shape from the recorded label map) with the PEFT adapter attached: ``PeftModel.from_pretrained`` puts the
saved head (``modules_to_save``) in place of the freshly initialised one. Seed 000's safety points: the whole
model on one device (``loading.plan_for_dir`` picks it; a plan that would split or offload layers is refused:
a residual connection must not cross devices), and the softmax in float32 even when the model computes in bf16.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from llora_cli.classify import labels_of, refuse_non_classifier
from llora_store import Store
from llora_store.errors import BadInput
from llora_store.models import Artifact

BATCH = 32  # rows per forward pass
MAX_TOKENS = 256  # a text's first tokens read by the head (the training default max_seq_len)


@dataclass
class Classifier:
    artifact: Artifact
    labels: list[str]
    tokenizer: object
    model: object  # eval-mode PeftModel (or a plain sequence-classification model)
    device: str
    dtype: str
    max_tokens: int = MAX_TOKENS

    def probabilities(self, texts: list[str], *, batch_size: int = BATCH, counts: list[int] | None = None):
        """Label probabilities of ``texts``: numpy float32 [len(texts), len(labels)], rows summing to 1.

        Each text is tokenized alone (the first ``max_tokens`` tokens), batched right-padded ``batch_size`` at a
        time; the model's logits are cast to float32 before the softmax. ``counts``, when given, receives each
        text's token count (so callers never use the tokenizer from another thread). BadInput for an empty text."""
        import numpy as np
        import torch

        from llora_cli.trainjob import collate_labelled

        for i, t in enumerate(texts, 1):
            if not isinstance(t, str) or not t.strip():
                raise BadInput(f"text {i} is empty; a classifier needs some text to read")
        pad = self.tokenizer.pad_token_id
        out = []
        with torch.inference_mode():
            for i in range(0, len(texts), batch_size):
                feats = [{"input_ids": self.tokenizer(t, truncation=True, max_length=self.max_tokens)["input_ids"],
                          "labels": 0} for t in texts[i: i + batch_size]]
                if counts is not None:
                    counts.extend(len(f["input_ids"]) for f in feats)
                batch = collate_labelled(feats, pad)
                logits = self.model(input_ids=batch["input_ids"].to(self.device),
                                    attention_mask=batch["attention_mask"].to(self.device)).logits
                out.append(torch.softmax(logits.float(), dim=-1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.labels)), dtype=np.float32)


def load_classifier(store: Store, artifact: Artifact, *, device: str | None = None) -> Classifier:
    """The classifier of ``artifact`` (a classifier modifier or training adapter in ``trained``/``deployed``/
    ``retired``, or a merged classifier), loaded for inference.

    BadInput: not a classifier, no finished weights, no recorded base, a label map whose size differs from the
    saved head's rows, or a load plan that cannot keep the whole model on one device."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from llora_cli.loading import load_tokenizer, plan_for_dir
    from llora_cli.quiet import quiet_libraries

    refuse_non_classifier(artifact)
    labels = labels_of(artifact)
    if artifact.state in ("training", "failed", "discarded"):
        raise BadInput(f"{artifact.kind} '{artifact.name}' is '{artifact.state}'; it has no finished weights")
    adapter_dir: Path | None = None
    if artifact.kind in ("adapter", "modifier"):
        role = "runs_on" if artifact.kind == "modifier" else "trained_on"
        with store.reading() as s:
            bases = store.parents_by_role(s, artifact.id, role)
        if not bases:
            raise BadInput(f"{artifact.kind} '{artifact.name}' records no base")
        base_dir, adapter_dir = store.path_of(bases[0].id), store.path_of(artifact.id)
        head_rows = saved_head_rows(adapter_dir / "adapter_model.safetensors")
    else:
        base_dir = store.path_of(artifact.id)
        head_rows = None
    from llora_cli.classify import check_classifier_base

    check_classifier_base(artifact if adapter_dir is None else bases[0], base_dir)
    if head_rows is not None and head_rows != len(labels):
        raise BadInput(f"{artifact.kind} '{artifact.name}': its head has {head_rows} rows but the label map has "
                       f"{len(labels)} labels; the files and the catalog disagree", hint="train it again")
    plan = plan_for_dir(base_dir, adapter_dir, device=device)
    if plan.strategy not in ("full", "full-bf16"):
        raise BadInput(f"'{artifact.name}' does not fit whole on {plan.device} ({plan.reason}); a classifier loads "
                       "on one device (no layer split across devices, seed 000)",
                       hint="free memory, or use a machine with more")
    quiet_libraries()
    tokenizer = load_tokenizer(base_dir)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    dtype = torch.float32 if plan.dtype == "fp32" else torch.bfloat16
    model = AutoModelForSequenceClassification.from_pretrained(
        base_dir, num_labels=len(labels), id2label=dict(enumerate(labels)),
        label2id={x: i for i, x in enumerate(labels)}, dtype=dtype)
    model.config.pad_token_id = tokenizer.pad_token_id
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_dir)
    return Classifier(artifact, labels, tokenizer, model.to(plan.device).eval(), plan.device, plan.dtype,
                      max_tokens=int(artifact.meta.get("max_seq_len") or (artifact.meta.get("config") or {}).get("max_seq_len")
                                     or MAX_TOKENS))


def saved_head_rows(adapter_file: Path) -> int | None:
    """Rows (classes) of the classification head saved in a PEFT adapter file (``*.score.weight`` or
    ``*.classifier.weight``, [num_labels, hidden]), None when the file holds no head."""
    from safetensors import safe_open

    with safe_open(str(adapter_file), "pt") as f:
        for key in f.keys():
            if key.endswith((".score.weight", ".classifier.weight", ".score.modules_to_save.default.weight")):
                return int(f.get_slice(key).get_shape()[0])
    return None
