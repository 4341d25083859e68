"""Turning rows into token ids and labels: chat template applied, loss only on assistant tokens.

Works on any tokenizer object with ``apply_chat_template`` / ``__call__``; no
torch needed. Labels are -100 outside assistant turns (and for plain text,
every token is learned).
"""

from __future__ import annotations

IGNORE = -100
FALLBACK_USER = "### Instruction:\n{content}\n\n### Response:\n"


def _template(tokenizer, messages, *, generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def chat_segments(tokenizer, messages: list[dict]) -> list[tuple[str, bool]]:
    """The rendered conversation as (text, is_assistant) pieces, in order."""
    if not tokenizer.chat_template:
        pieces: list[tuple[str, bool]] = []
        for m in messages:
            if m["role"] == "assistant":
                pieces.append((m["content"] + (tokenizer.eos_token or ""), True))
            else:
                pieces.append((FALLBACK_USER.format(content=m["content"]), False))
        return pieces
    pieces = []
    done = ""
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prompt = _template(tokenizer, messages[:i], generation_prompt=True)
        full = _template(tokenizer, messages[: i + 1], generation_prompt=False)
        if not prompt.startswith(done) or not full.startswith(prompt):
            raise ValueError("the chat template does not render conversations as growing prefixes")
        pieces.append((prompt[len(done):], False))
        pieces.append((full[len(prompt):], True))
        done = full
    rest = _template(tokenizer, messages, generation_prompt=False)[len(done):]
    if rest:
        pieces.append((rest, False))
    return pieces


def prompt_text(tokenizer, messages: list[dict]) -> str:
    """What the model sees before it answers the last user turn (for generation)."""
    if not tokenizer.chat_template:
        return "".join(FALLBACK_USER.format(content=m["content"]) for m in messages if m["role"] != "assistant")
    return _template(tokenizer, messages, generation_prompt=True)


def encode_row(tokenizer, row: dict, max_len: int) -> dict:
    """``{"input_ids": [...], "labels": [...]}`` for a chat or text row, truncated to ``max_len``."""
    if "text" in row:
        ids = tokenizer(row["text"], add_special_tokens=True)["input_ids"][:max_len]
        return {"input_ids": ids, "labels": list(ids)}
    ids: list[int] = []
    labels: list[int] = []
    for text, learn in chat_segments(tokenizer, row["messages"]):
        piece = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids.extend(piece)
        labels.extend(piece if learn else [IGNORE] * len(piece))
    return {"input_ids": ids[:max_len], "labels": labels[:max_len]}


def pad_batch(features: list[dict], pad_id: int):
    """Right-pad a list of encoded rows into tensors (input_ids, attention_mask, labels)."""
    import torch

    width = max(len(f["input_ids"]) for f in features)
    ids = torch.full((len(features), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(features), width), dtype=torch.long)
    labels = torch.full((len(features), width), IGNORE, dtype=torch.long)
    for i, f in enumerate(features):
        n = len(f["input_ids"])
        ids[i, :n] = torch.tensor(f["input_ids"])
        mask[i, :n] = 1
        labels[i, :n] = torch.tensor(f["labels"])
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def learned_positions(labels):
    """``[batch, seq]`` bool: the positions whose next token is learned (``labels[:, 1:] != IGNORE``; the last
    position never), the only logits a causal LM's loss reads. Given to a transformers causal LM as
    ``logits_to_keep``, its output head projects only these (returning ``[n, vocab]`` logits, row-major): a reply is
    a small part of a chat row (automation rows: ~23 of ~140 tokens), and SmolLM2's 49k-word head is 28M of the
    134M multiply-adds per token."""
    import torch

    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE
    return keep


def keeps_learned_logits(model) -> bool:
    """Whether ``model`` (a transformers causal LM, PEFT-wrapped or not) projects only the positions of a boolean
    ``logits_to_keep`` mask: its modeling module slices with transformers' ``slice_logits_to_keep`` (transformers 5;
    older versions and a few architectures take only an int or positions, and then get full logits)."""
    import sys

    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    lm = getattr(lm, "module", lm)  # DistributedDataParallel
    return hasattr(sys.modules.get(type(lm).__module__), "slice_logits_to_keep")


def learned_loss_sum(logits, labels):
    """(summed cross-entropy, count) of ``logits`` computed at ``learned_positions(labels)`` against the next
    tokens: the terms of transformers' causal LM loss (fp32 logits, labels shifted by one)."""
    import torch

    targets = labels[:, 1:][labels[:, 1:] != IGNORE]
    return torch.nn.functional.cross_entropy(logits.float(), targets, reduction="sum"), targets.numel()


def learned_loss(outputs, labels, num_items_in_batch=None):
    """A ``compute_loss_func`` for transformers' Trainer on logits kept at ``learned_positions``: the summed
    cross-entropy over ``num_items_in_batch`` when given (what the model's own loss divides by), else the mean."""
    total, count = learned_loss_sum(outputs.logits, labels)
    return total / (num_items_in_batch if num_items_in_batch is not None else max(count, 1))
