"""`llora router distill`: one layer adapter per decoder layer of a base, trained on the base's own correct answers.

Seed 002's phase 1. For every query of the datasets' training split the base answers greedily; the task's checker
keeps the rows it answers correctly. On those rows' token sequences (prompt + generated answer, one teacher-forced
forward, which under causal attention gives every token the hidden states it had during generation), forward hooks
on each decoder block capture the block's real input and output (``output_hidden_states`` is not used: its last
entry comes after the final norm). Layer ``i``'s adapter is trained by MSE between ``adapter(input_i)`` and
``output_i`` over every token of those rows (Adam on random token mini-batches).

Memory is bounded: a forward pass captures only a group of consecutive layers (``memory_mb`` of float32 states,
``tokens x hidden x 4`` bytes each, the input of each layer of the group and the output of its last) and stops
after the group's last layer; layers are trained one after another and each is written to the resume directory.

Resume: ``$LLORA_HOME/tmp/distill-<key>/`` holds ``answers.jsonl`` (one row per answered query) and, per finished
layer, ``layer-<i>.safetensors`` + ``layer-<i>.json`` (written to a temporary name, then renamed); ``key`` hashes
base, datasets, limit and config. The same command run again skips what is there. The artifact, kind
``layer-adapters`` (state ``ready``, lineage ``runs_on`` the base, ``uses`` each dataset), appears only when every
layer is done (R10): ``layer_adapters.safetensors`` (``layers.<i>.down.weight [W, H]``, ``.down.bias [W]``,
``.up.weight [H, W]``, ``.up.bias [H]``, float32) and ``layer_adapters.json`` (format, base hash, layer count,
hidden size, width, per-layer final MSE and the MSE of plain skipping, token and row counts, config).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from llora_cli.router.collect import BASE_KINDS, Query, checked_queries, max_tokens_for
from llora_store import Store, rules
from llora_store.errors import BadInput, Corrupt, NotFound, RuleViolation
from llora_store.models import Artifact

KIND = "layer-adapters"
FORMAT = "llora-layer-adapters"
VERSION = 1
WEIGHTS_FILE = "layer_adapters.safetensors"
SPEC_FILE = "layer_adapters.json"
ANSWERS_FILE = "answers.jsonl"
GEN_BATCH = 8  # queries answered per generate() call (left-padded)


@dataclass
class DistillConfig:
    width: int = 64  # bottleneck width W
    steps: int = 300  # Adam steps per layer
    lr: float = 0.001
    batch_tokens: int = 256  # tokens per mini-batch
    memory_mb: int = 512  # captured float32 states held at once (bounds the group of layers per forward)
    max_len: int = 512  # tokens per row (prompt + answer), longer rows are cut
    seed: int = 0

    @classmethod
    def parse(cls, pairs: list[str]) -> DistillConfig:
        from llora_cli.router.keyvalue import parse_numbers

        cfg = parse_numbers(cls, pairs)
        if min(cfg.width, cfg.steps, cfg.batch_tokens, cfg.memory_mb, cfg.max_len) < 1 or cfg.lr <= 0:
            raise BadInput("need width, steps, batch_tokens, memory_mb, max_len >= 1 and lr > 0")
        return cfg


# ---- the base's answers -------------------------------------------------------------------------------------------

def answer(tokenizer, model, queries: list[Query], *, on_row: Callable[[Query, dict], None]) -> None:
    """The base's greedy answer to each query: ``on_row(query, {"prompt": [ids], "answer": [ids], "text": str})``;
    ``answer`` ends at (and includes) the end-of-sequence token when one was generated."""
    import torch

    from llora_cli.encoding import prompt_text

    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    eos = tokenizer.eos_token_id
    for start in range(0, len(queries), GEN_BATCH):
        chunk = queries[start:start + GEN_BATCH]
        by_len: dict[int, list[Query]] = {}
        for q in chunk:  # one generate() per max_tokens (tasks differ)
            by_len.setdefault(max_tokens_for(q.task), []).append(q)
        for max_new, qs in by_len.items():
            prompts = [tokenizer(prompt_text(tokenizer, q.messages), add_special_tokens=False)["input_ids"] for q in qs]
            enc = tokenizer.pad({"input_ids": prompts}, return_tensors="pt")
            with torch.no_grad():
                out = model.generate(**enc, max_new_tokens=max_new, do_sample=False,
                                     pad_token_id=tokenizer.pad_token_id)
            for q, p, row in zip(qs, prompts, out[:, enc["input_ids"].shape[1]:].tolist()):
                ids = row[:row.index(eos) + 1] if eos in row else row
                on_row(q, {"prompt": p, "answer": ids, "text": tokenizer.decode(ids, skip_special_tokens=True).strip()})


def task_check(query: Query, text: str) -> bool:
    """The task's checker (``llora_cli.tasks.checker``): whether ``text`` answers ``query`` correctly."""
    from llora_cli import tasks

    return bool(tasks.checker(query.task)(query.row, text))


# ---- capture and training -----------------------------------------------------------------------------------------

class _Stop(Exception):
    """Raised by the last hook of a group: the rest of the forward pass is not needed."""


def capture(model, sequences: list[list[int]], first: int, last: int, *, batch: int = 8) -> list:
    """The real input of decoder layers ``first..last`` and the output of ``last`` on every token of ``sequences``.

    Forward hooks on the decoder blocks (``register_forward_pre_hook`` / ``register_forward_hook``); the forward
    stops after layer ``last``. Rows are right-padded in batches; padding positions are dropped. Returns
    ``states`` of ``last - first + 2`` float32 tensors ``[N, hidden]`` (N = total tokens): ``states[j]`` is the
    input of layer ``first + j``, ``states[-1]`` the output of ``last`` (= the input of ``last + 1``).
    """
    import torch

    from llora_cli.router.depth.layers import decoder_layers

    layers = decoder_layers(model)
    chunks: list[list] = [[] for _ in range(last - first + 2)]
    mask_now: list = [None]

    def keep(j: int, h) -> None:
        chunks[j].append(h[mask_now[0]].detach().to(torch.float32).clone())

    def pre(j: int):
        def hook(module, args, kwargs):
            keep(j, args[0] if args else kwargs["hidden_states"])
        return hook

    def post(module, args, kwargs, output):
        keep(last - first + 1, output[0] if isinstance(output, tuple) else output)
        raise _Stop

    hooks = [layers[i].register_forward_pre_hook(pre(i - first), with_kwargs=True) for i in range(first, last + 1)]
    hooks.append(layers[last].register_forward_hook(post, with_kwargs=True))
    try:
        for start in range(0, len(sequences), batch):
            rows = sequences[start:start + batch]
            width = max(len(r) for r in rows)
            ids = torch.zeros(len(rows), width, dtype=torch.long)
            mask = torch.zeros(len(rows), width, dtype=torch.long)
            for k, r in enumerate(rows):
                ids[k, :len(r)] = torch.tensor(r)
                mask[k, :len(r)] = 1
            mask_now[0] = mask.bool()
            try:
                with torch.no_grad():
                    model(input_ids=ids, attention_mask=mask, use_cache=False)
            except _Stop:
                pass
    finally:
        for h in hooks:
            h.remove()
    return [torch.cat(c) for c in chunks]


def _mse(adapter, x, y, *, chunk: int = 4096) -> float:
    import torch

    total = 0.0
    with torch.no_grad():
        for s in range(0, len(x), chunk):
            pred = x[s:s + chunk] if adapter is None else adapter(x[s:s + chunk])
            total += float(((pred - y[s:s + chunk]) ** 2).sum())
    return total / (x.numel() or 1)


def train_adapter(x, y, cfg: DistillConfig, *, seed: int):
    """Fit ``LayerAdapter(H, cfg.width)`` so ``adapter(x) ~ y``; ``x, y: [N, H]`` float32 (a layer's real input
    and output per token). Adam, ``cfg.steps`` steps on random mini-batches of ``cfg.batch_tokens`` tokens.
    Returns (adapter, {"mse": final MSE over all N tokens, "mse_skip": MSE of the identity, "tokens": N})."""
    import torch

    from llora_cli.router.depth.layers import LayerAdapter

    torch.manual_seed(seed)
    adapter = LayerAdapter(x.shape[1], cfg.width)
    opt = torch.optim.Adam(adapter.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(seed)
    n = len(x)
    for _ in range(cfg.steps):
        idx = torch.randint(0, n, (min(cfg.batch_tokens, n),), generator=gen)
        loss = torch.nn.functional.mse_loss(adapter(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    adapter.eval()
    return adapter, {"mse": _mse(adapter, x, y), "mse_skip": _mse(None, x, y), "tokens": n}


def layer_groups(layers: list[int], tokens: int, hidden: int, memory_mb: int) -> list[list[int]]:
    """Runs of consecutive layers whose captured states (one ``[tokens, hidden]`` float32 per layer, plus one)
    fit in ``memory_mb``; at least one layer per group."""
    per_state = max(1, tokens * hidden * 4)
    size = max(1, (memory_mb << 20) // per_state - 1)
    groups: list[list[int]] = []
    for i in layers:
        if groups and len(groups[-1]) < size and groups[-1][-1] == i - 1:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


# ---- resume directory ---------------------------------------------------------------------------------------------

def _resume_dir(store: Store, key: str) -> Path:
    from llora_cli.router.collect import resume_dir

    return resume_dir(store, "distill", key)


def _read_answers(path: Path) -> dict[str, dict]:
    done: dict[str, dict] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # the last line of a killed run may be cut
                continue
            done[row["key"]] = row
    return done


def _save_layer(resume: Path, i: int, adapter, figures: dict) -> None:
    """``layer-<i>.safetensors`` then ``layer-<i>.json``, each renamed into place: the JSON marks the layer done."""
    from safetensors.torch import save_file

    tmp = resume / f".layer-{i}.safetensors.part"
    save_file({k: v.contiguous() for k, v in adapter.state_dict().items()}, str(tmp))
    os.replace(tmp, resume / f"layer-{i}.safetensors")
    tmp = resume / f".layer-{i}.json.part"
    tmp.write_text(json.dumps(figures, sort_keys=True) + "\n")
    os.replace(tmp, resume / f"layer-{i}.json")


def _load_layer(resume: Path, i: int, hidden: int, width: int):
    from safetensors.torch import load_file

    from llora_cli.router.depth.layers import LayerAdapter

    if not (resume / f"layer-{i}.json").exists():
        return None
    adapter = LayerAdapter(hidden, width)
    adapter.load_state_dict(load_file(str(resume / f"layer-{i}.safetensors")))
    return adapter.eval(), json.loads((resume / f"layer-{i}.json").read_text())


# ---- the command --------------------------------------------------------------------------------------------------

@dataclass
class Distilled:
    artifact: Artifact
    layers: int
    rows: dict  # {"answered", "correct", "resumed"}
    mse: list[float]
    mse_skip: list[float]
    resumed_layers: int


def distill(store: Store, base_ref: str, data_refs: list[str], *, limit: int | None = None, name: str | None = None,
            config: list[str] = (), command: str = "", check: Callable[[Query, str], bool] = task_check,
            progress: Callable[[str, int, int], None] | None = None) -> Distilled:
    """Distill one adapter per decoder layer of ``base_ref`` on its correct answers to ``data_refs``' training
    queries and register the ``layer-adapters`` artifact. ``check(query, text)`` decides which answers are
    correct (the task's checker; tests inject another). ``progress(stage, done, total)``."""
    import torch

    from llora_cli.loading import load_model
    from llora_cli.router.depth.layers import decoder_layers
    from llora_store.catalog import new_id, validate_name

    cfg = DistillConfig.parse(list(config))
    base = store.resolve(base_ref, kinds=BASE_KINDS)
    rules.check_runnable(base)
    if base.state not in ("ready", "deployed"):
        raise BadInput(f"{base.kind} '{base.name}' is '{base.state}'; distill on a ready or deployed base")
    queries = checked_queries(store, data_refs, split="train", limit=limit, command=command)
    if name is not None and any(a.name == validate_name(name) for a in store.artifacts()):
        raise BadInput(f"the name '{name}' is already taken", hint="choose another with --name")
    spec = {"base": base.id, "base_hash": base.content_hash, "limit": limit, "config": asdict(cfg),
            "datasets": list(dict.fromkeys(q.dataset.id for q in queries)),
            "max_tokens": {t: max_tokens_for(t) for t in sorted({q.task for q in queries})}}
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    resume = _resume_dir(store, key)
    started = time.perf_counter()

    tokenizer, model, _plan = load_model(store.path_of(base.id))
    model.eval()
    count = len(decoder_layers(model))
    hidden = int(model.config.hidden_size)

    done = _read_answers(resume / ANSWERS_FILE)
    resumed_rows = sum(q.key in done for q in queries)
    todo = [q for q in queries if q.key not in done]
    if progress:
        progress("answering", resumed_rows, len(queries))
    if todo:
        n = [resumed_rows]
        with open(resume / ANSWERS_FILE, "a") as f:
            def on_row(q: Query, ans: dict) -> None:
                row = {"key": q.key, **ans, "correct": bool(check(q, ans["text"]))}
                f.write(json.dumps(row) + "\n")
                f.flush()
                done[q.key] = row
                n[0] += 1
                if progress:
                    progress("answering", n[0], len(queries))

            answer(tokenizer, model, todo, on_row=on_row)
    correct = [done[q.key] for q in queries if done[q.key]["correct"]]
    if not correct:
        raise NotFound(f"{base.kind} '{base.name}' answered none of the {len(queries)} queries correctly: there is "
                       "nothing to distill from (the adapters learn the layers on the base's own correct answers)",
                       hint="use more or easier data (--limit, another --data), or a stronger base")
    sequences = [(r["prompt"] + r["answer"])[:cfg.max_len] for r in correct]
    tokens = sum(len(s) for s in sequences)

    results: dict[int, tuple] = {}
    for i in range(count):
        got = _load_layer(resume, i, hidden, cfg.width)
        if got is not None:
            results[i] = got
    resumed_layers = len(results)
    if progress:
        progress("layers", resumed_layers, count)
    for group in layer_groups([i for i in range(count) if i not in results], tokens, hidden, cfg.memory_mb):
        states = capture(model, sequences, group[0], group[-1])
        for j, i in enumerate(group):
            adapter, figures = train_adapter(states[j], states[j + 1], cfg, seed=cfg.seed + i)
            _save_layer(resume, i, adapter, figures)
            results[i] = (adapter, figures)
            if progress:
                progress("layers", len(results), count)
        del states

    mse = [results[i][1]["mse"] for i in range(count)]
    mse_skip = [results[i][1]["mse_skip"] for i in range(count)]
    rows = {"answered": len(queries), "correct": len(correct), "resumed": resumed_rows}
    file_spec = {"format": FORMAT, "version": VERSION, "base_hash": base.content_hash, "layers": count,
                 "hidden": hidden, "width": cfg.width, "mse": mse, "mse_skip": mse_skip}
    meta = {**file_spec, "base": {"id": base.id, "name": base.name, "kind": base.kind},
            "datasets": [{"id": d.id, "name": d.name, "task": d.meta.get("task"), "split": "train",
                          "rows": sum(q.dataset.id == d.id for q in queries)}
                         for d in {q.dataset.id: q.dataset for q in queries}.values()],
            "limit": limit, "rows": rows, "tokens": tokens, "config": asdict(cfg),
            "seconds": round(time.perf_counter() - started, 2)}
    aid = new_id()
    staging = store.new_staging(aid)
    try:
        from safetensors.torch import save_file

        tensors = {f"layers.{i}.{k}": v.detach().to(torch.float32).contiguous()
                   for i in range(count) for k, v in results[i][0].state_dict().items()}
        save_file(tensors, str(staging / WEIGHTS_FILE), metadata={"format": FORMAT})
        (staging / SPEC_FILE).write_text(json.dumps(file_spec, indent=2, sort_keys=True) + "\n")
        parents = [(base.id, "runs_on")] + [(d["id"], "uses") for d in meta["datasets"]]
        art = store.create(KIND, name or store.unique_name(f"layers-{base.name}"), staging=staging, parents=parents,
                           metadata=meta, base_hash=base.content_hash, command=command, artifact_id=aid,
                           reason=f"{count} layers distilled on {len(correct)} correct answers ({tokens} tokens)")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    shutil.rmtree(resume, ignore_errors=True)
    return Distilled(art, count, rows, mse, mse_skip, resumed_layers)


# ---- use ----------------------------------------------------------------------------------------------------------

def check_base(layer_set: Artifact, base: Artifact) -> None:
    """R6 for layer adapters: a set runs only on the base it was distilled on (content hash)."""
    if not layer_set.base_hash or layer_set.base_hash != base.content_hash:
        raise RuleViolation(
            "R6", f"layer-adapter set '{layer_set.name}' ({layer_set.id}) was distilled on base hash "
                  f"{str(layer_set.base_hash)[:12]}, not on {base.kind} '{base.name}' (hash {str(base.content_hash)[:12]})",
            hint=f"distill a set on this base: llora router distill {base.name} --data D")


def load(store: Store, ref: str, base: Artifact) -> list:
    """The ``LayerAdapter`` of every decoder layer (index = layer) of the set ``ref``, checked against ``base``
    (R6 by content hash; also the hash written in its JSON) and against its own files."""
    from safetensors.torch import load_file

    from llora_cli.router.depth.layers import LayerAdapter

    art = store.resolve(ref, kinds=(KIND,))
    if art.state != "ready":
        raise BadInput(f"layer-adapter set '{art.name}' is '{art.state}'; its weights are gone")
    check_base(art, base)
    d = store.path_of(art.id)
    spec = json.loads((d / SPEC_FILE).read_text())
    if spec.get("format") != FORMAT or spec.get("base_hash") != art.base_hash:
        raise Corrupt(f"{d / SPEC_FILE}: not a layer-adapter set of base hash {str(art.base_hash)[:12]}")
    tensors = load_file(str(d / WEIGHTS_FILE))
    adapters = []
    for i in range(spec["layers"]):
        a = LayerAdapter(spec["hidden"], spec["width"])
        a.load_state_dict({k: tensors[f"layers.{i}.{k}"] for k in ("down.weight", "down.bias", "up.weight", "up.bias")})
        adapters.append(a.eval())
    return adapters
