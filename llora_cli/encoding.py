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
