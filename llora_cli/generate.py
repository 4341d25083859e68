"""Text generation with plain transformers on a stored checkpoint (CPU or GPU)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Generation:
    prompt: str
    text: str
    tokens_in: int
    tokens_out: int
    seconds: float
    device: str

    def to_json(self) -> dict:
        return {
            "prompt": self.prompt,
            "text": self.text,
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
            "seconds": round(self.seconds, 3),
            "device": self.device,
        }


def pick_device() -> str:
    """CUDA, then Apple MPS, then CPU."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def generate(model_dir: Path, prompt: str, *, max_new_tokens: int = 48, system: str | None = None) -> Generation:
    """Greedy generation; the chat template is applied when the tokenizer has one.

    ``model_dir``: a directory with config, tokenizer and safetensors weights.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llora_cli.loading import keep_bnb_4bit_unpacked

    device = pick_device()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32 if device == "cpu" else "auto")
    keep_bnb_4bit_unpacked(model).to(device).eval()
    if tokenizer.chat_template:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        inputs = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
    else:
        inputs = tokenizer(prompt, return_tensors="pt")
    inputs = {k: v.to(device) for k, v in inputs.items()}
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        )
    seconds = time.perf_counter() - start
    n_in = inputs["input_ids"].shape[1]
    new = out[0][n_in:]
    text = tokenizer.decode(new, skip_special_tokens=True).strip()
    return Generation(prompt, text, int(n_in), int(new.shape[0]), seconds, device)
