"""The router's cost (issue 13): overhead per query at batch 1, encoder included, and `llora run --modifier auto`
process time vs `--modifier NAME`.

Usage: python benchmarks/router_overhead.py [overhead] [process] [--per-domain 40] [--compare-st]
                                            [--home DIR] [--rounds 5] [--tokens 8]

overhead (in process): held-out prompts of the three generated tasks (automation, reasoning, code; --per-domain
    each, from the generators' test split) go one at a time through ``Router.choose([prompt])``: llora's encoder
    (tokenizers + a numpy forward of all-MiniLM-L6-v2 on one BLAS thread, mean pooling, L2 norm) and a linear
    choice head over 3 candidates + softmax, as ``llora run --modifier auto`` and ``serve`` route a request. The
    head's weights are random: its cost does not depend on them. Five warm-up queries, then one timed pass; median,
    p90 and n of wall ms, the process's CPU ms per query (what a query costs a core whatever else runs), the time
    split into tokenization, encoder forward and head, and the same with 2 BLAS threads. With --compare-st the
    same prompts go through sentence-transformers' ``encode`` (what the router used before), with 1 and 2 torch
    threads, and the largest difference between its embeddings and llora's is reported.
process: a store (built in --home when missing) with SmolLM2-135M-Instruct compressed to GGUF Q8_0 and deployed,
    two modifiers on it (PEFT LoRA r=8 on q_proj/v_proj with small random weights: what they answer does not matter
    here), a router fitted (orpo) on a synthetic scenario set, all deployed. Then, alternating per round, one
    process each of `llora run --engine llamacpp --max-tokens N --modifier auto PROMPT` and the same with
    `--modifier mod-automation` (the modifier the router picks for this prompt, checked in `--json`), and both again
    through the full command (``app(argv)``: Typer and the ORM, no start-up prefetch and no light path, which
    `--modifier auto` does not take), so that a pair differs only by the router; medians and minimums of wall time
    and CPU seconds, and a breakdown of what auto adds, timed in a fresh interpreter
    (import numpy, encoder identity hash, encoder load, open store, router checks and head, first route; numpy and
    the store are loaded by `llora run` on llama.cpp with or without a router).
The load average is printed before and after: on a shared machine a figure taken under load says so.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

PROMPT = "Turn on the kitchen lights and set them to 40% brightness."


def machine() -> str:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    return f"{cpu}, {os.cpu_count()} cores, no GPU, Python {platform.python_version()}"


def stats(ms: list[float]) -> dict:
    s = sorted(ms)
    return {"median": round(statistics.median(s), 2), "p90": round(s[min(len(s) - 1, int(0.9 * len(s)))], 2),
            "min": round(s[0], 2), "n": len(s)}


def prompts(per_domain: int) -> list[str]:
    from llora_cli import tasks

    out = []
    for kind in ("automation", "reasoning", "code"):
        out += [tasks.prompt_of(r) for r in tasks.make(kind, 20, n_test=per_domain).test[:per_domain]]
    return out


def overhead(per_domain: int, compare_st: bool) -> dict:
    import numpy as np

    from llora_cli.router import encoder as enc
    from llora_cli.router import model as rmodel

    texts = prompts(per_domain)
    load_before = os.getloadavg()
    t = time.perf_counter()
    encoder = enc.Encoder.load()
    load_s = time.perf_counter() - t
    rng = np.random.default_rng(0)
    head = [(rng.normal(0, 0.05, (3, enc.DIM)).astype(np.float32), np.zeros(3, dtype=np.float32))]
    spec = {"heads": {rmodel.CHOICE: {"candidates": ["none", "a", "b"]}}}
    router = rmodel.Router(spec, {rmodel.CHOICE: head}, encoder)

    def timed(fn) -> tuple[list[float], list[float]]:
        for q in texts[:5]:
            fn(q)
        wall, cpu = [], []
        for q in texts:
            a, c = time.perf_counter(), time.process_time()
            fn(q)
            wall.append((time.perf_counter() - a) * 1000)
            cpu.append((time.process_time() - c) * 1000)
        return wall, cpu

    total, cpu = timed(lambda q: router.choose([q]))
    # the same queries again, timed per step (the encoder's own functions, one BLAS thread as in encode)
    tok, fwd, hd = [], [], []
    with enc._blas().limit(limits=enc.BLAS_THREADS, user_api="blas"):
        for q in texts:
            a = time.perf_counter()
            ids, mask = encoder.token_ids([q])
            b = time.perf_counter()
            e = enc.mean_pool_normalized(encoder.hidden_states(ids, mask), mask)
            c = time.perf_counter()
            router.probabilities(e)
            d = time.perf_counter()
            tok.append((b - a) * 1000), fwd.append((c - b) * 1000), hd.append((d - c) * 1000)
    lengths = [int(encoder.token_ids([q])[1].sum()) for q in texts]
    med = statistics.median(lengths)
    result = {
        "machine": machine(), "queries": len(texts), "tokens_per_query": {"median": med, "max": max(lengths)},
        "encoder_load_s": round(load_s, 3), "encoder_backend": encoder.backend,
        "router_ms_per_query": stats(total),
        # CPU time of the process during the call: what the query costs a core, whatever else runs on the machine
        "router_cpu_ms_per_query": stats(cpu),
        # floating-point operations of the BERT forward at the median length (linear layers + attention)
        "encoder_gflop_per_query_at_median_length": round(
            2 * 6 * (med * (4 * 384 * 384 + 2 * 384 * 1536) + 2 * med * med * 384) / 1e9, 3),
        "steps_ms_median": {"tokenize": round(statistics.median(tok), 3),
                            "encoder forward + pooling": round(statistics.median(fwd), 2),
                            "head + softmax": round(statistics.median(hd), 3)},
    }
    # the forward's matrix products alone at the median length, one BLAS thread: the floor of the encoder's cost
    x = {n: rng.normal(size=(int(med), n)).astype(np.float32) for n in (384, 1536)}
    products = [(x[lay[k].shape[0]], lay[k]) for lay in encoder.layers for k in ("qkv_w", "o_w", "i_w", "f_w")]
    flop = 2 * sum(a.shape[0] * w.shape[0] * w.shape[1] for a, w in products)
    with enc._blas().limit(limits=1, user_api="blas"):
        cpu_ms = []
        for _ in range(60):
            c = time.process_time()
            for a, w in products:
                a @ w
            cpu_ms.append((time.process_time() - c) * 1000)
    result["matmuls_only_at_median_length"] = {"gflop": round(flop / 1e9, 3),
                                               "cpu_ms_median_of_60": round(statistics.median(cpu_ms), 2),
                                               "cpu_ms_min": round(min(cpu_ms), 2),
                                               "gflop_per_s_at_min": round(flop / min(cpu_ms) / 1e6, 1)}
    # the numpy forward (the backend without onnxruntime) on one BLAS thread, and on 2 (numpy's default here)
    router_np = rmodel.Router(spec, {rmodel.CHOICE: head}, enc.Encoder.load("numpy"))
    result["router_ms_per_query_numpy_1_thread"] = stats(timed(lambda q: router_np.choose([q]))[0])
    threads, enc.BLAS_THREADS = enc.BLAS_THREADS, os.cpu_count()
    try:
        result[f"router_ms_per_query_numpy_blas_{os.cpu_count()}_threads"] = stats(
            timed(lambda q: router_np.choose([q]))[0])
    finally:
        enc.BLAS_THREADS = threads
    if compare_st:
        import torch
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(str(enc.model_dir()), device="cpu", local_files_only=True)
        ours = encoder.encode(texts)
        ref = st.encode(texts, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
        result["max_abs_difference_vs_sentence_transformers"] = float(np.abs(ours - ref).max())
        default = torch.get_num_threads()
        for n in (1, 2):
            torch.set_num_threads(n)
            wall, cpu = timed(lambda q: router.probabilities(st.encode(
                [q], normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False).astype(np.float32)))
            result[f"sentence_transformers_{n}_torch_thread{'s' if n > 1 else ''}"] = {
                "ms_per_query": stats(wall), "cpu_ms_per_query": stats(cpu)}
        torch.set_num_threads(default)
    result["load_average_before"], result["load_average_after"] = load_before, os.getloadavg()
    return result


def write_adapter(out: Path, tensors_of_base: dict, seed: int) -> Path:
    """A PEFT LoRA (r=8, q_proj and v_proj of every layer) fitting the base's shapes, with small random weights."""
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    out.mkdir(parents=True, exist_ok=True)
    r, tensors = 8, {}
    for name, shape in tensors_of_base.items():
        if not name.endswith(("self_attn.q_proj.weight", "self_attn.v_proj.weight")):
            continue
        stem = "base_model.model." + name[: -len(".weight")]
        rows, cols = shape
        tensors[f"{stem}.lora_A.weight"] = torch.randn(r, cols, generator=g) * 0.02
        tensors[f"{stem}.lora_B.weight"] = torch.randn(rows, r, generator=g) * 0.02
    save_file(tensors, str(out / "adapter_model.safetensors"))
    (out / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": 16, "lora_dropout": 0.0,
        "target_modules": ["q_proj", "v_proj"], "bias": "none", "fan_in_fan_out": False}))
    return out


def setup(home: Path) -> None:
    """SmolLM2 GGUF Q8_0 deployed, two modifiers and an orpo router on it deployed (skipped when already there)."""
    os.environ["LLORA_HOME"] = str(home)
    from llora_store import open_store

    store = open_store()
    if store.list(kind="router", state="deployed"):
        return
    from llora_cli import modelfiles
    from llora_cli.adapters import import_adapter
    from llora_cli.bases import add_base
    from llora_cli.compress import compress
    from llora_cli.data import make_dataset
    from llora_cli.deploy import deploy
    from llora_cli.router import collect as col
    from llora_cli.router.fit import fit

    base = next((a for a in store.list(kind="compressed", state="deployed")
                 if store.get(a.id).quantization == "gguf-q8_0"), None)
    if base is None:
        src = next((a for a in store.list(kind="base") if a.name == "smollm2"), None) or add_base(
            store, "smollm2", name="smollm2")
        base = compress(store, src.id, "gguf-q8_0", eval_n=0).compressed
        deploy(store, base.id)
    shapes = modelfiles.model_tensors(store.path_of(base.id))
    shapes = {k: tuple(v.shape) for k, v in shapes.items()}
    mods = {}
    for seed, domain in enumerate(("automation", "reasoning")):
        d = write_adapter(home.parent / f"adapter-{domain}", shapes, seed)
        mods[domain] = import_adapter(store, d, base.id, kind="modifier", domain=domain, name=f"mod-{domain}")
        deploy(store, mods[domain].id)
    for kind in ("automation", "reasoning"):
        make_dataset(store, kind, n=40, n_test=12, name=kind[:4])
    by_id = {m.id: d for d, m in mods.items()}

    def measure(engine, candidates, queries, on_row):  # synthetic outcomes: each modifier answers its own domain
        for q in queries:
            on_row(q, {(m.id if m else "none"): {"score": int(m is not None and by_id[m.id] == q.task),
                                                  "tokens": 9, "text": "x"} for m in candidates})

    col.measure = measure
    scen = col.collect(store, base.id, ["auto", "reas"], limit=20, name="sc", engine="llamacpp").artifact
    router = fit(store, scen.id, method="orpo", name="r", config=["steps=150"]).artifact
    deploy(store, router.id)


BREAKDOWN = textwrap.dedent('''
    import json, sys, time
    t = [time.perf_counter()]
    import numpy
    t.append(time.perf_counter())
    from llora_cli.router import encoder as enc
    enc.identity()
    t.append(time.perf_counter())
    enc.shared()
    t.append(time.perf_counter())
    from llora_store import open_store
    store = open_store()  # the ORM and the catalog: `llora run` opens them with or without a router
    base = store.get([a for a in store.list(kind="compressed", state="deployed")][0].id)
    t.append(time.perf_counter())
    from llora_cli.router.serving import DeployedRouter
    router = DeployedRouter.for_base(store, base)  # the deployed router, its checks and its head
    t.append(time.perf_counter())
    route = router.route(sys.argv[1], [])
    t.append(time.perf_counter())
    names = ["import numpy", "encoder identity (sha256 of its 91 MB weights)",
             "encoder load (tokenizer, weights)", "open store (also without a router)",
             "find the router, check what it was fitted on, load its head", "first route"]
    out = {n: round(b - a, 3) for n, a, b in zip(names, t, t[1:])}
    out["torch imported"] = "torch" in sys.modules
    print(json.dumps(out))
''')


ST_LOAD = textwrap.dedent('''
    import json, sys, time
    t = [time.perf_counter()]
    import torch
    t.append(time.perf_counter())
    from sentence_transformers import SentenceTransformer
    t.append(time.perf_counter())
    from llora_cli.router import encoder as enc
    SentenceTransformer(str(enc.model_dir()), device="cpu", local_files_only=True).encode(["hi"])
    t.append(time.perf_counter())
    names = ["import torch", "import sentence_transformers (transformers...)", "load + first encode"]
    print(json.dumps({n: round(b - a, 3) for n, a, b in zip(names, t, t[1:])}))
''')


def process(home: Path, rounds: int, tokens: int, compare_st: bool) -> dict:
    setup(home)
    env = {**os.environ, "LLORA_HOME": str(home)}
    llora = str(Path(sys.executable).with_name("llora"))
    common = [llora, "run", "--engine", "llamacpp", "--max-tokens", str(tokens), "--json"]
    # the full command (Typer + ORM, no start-up prefetch) for both, so that they differ only by the router
    full = [sys.executable, "-c", "import sys; from llora_cli.cli.main import app; app(sys.argv[1:])"] + common[1:]
    cmds = {"auto": common + ["--modifier", "auto", PROMPT], "named": common + ["--modifier", "mod-automation", PROMPT],
            "auto, full command": full + ["--modifier", "auto", PROMPT],
            "named, full command": full + ["--modifier", "mod-automation", PROMPT]}
    load_before = os.getloadavg()
    times: dict[str, list[float]] = {k: [] for k in cmds}
    cpu: dict[str, list[float]] = {k: [] for k in cmds}
    routes = []
    for r in range(rounds):
        for name in (list(cmds) if r % 2 == 0 else list(cmds)[::-1]):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t = time.perf_counter()
            out = subprocess.run(cmds[name], env=env, capture_output=True, text=True, check=True).stdout
            times[name].append(time.perf_counter() - t)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu[name].append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
            rec = json.loads(out)
            assert rec["modifier"]["name"] == "mod-automation", rec["modifier"]
            if name.startswith("auto"):
                routes.append(rec["route"]["router_ms"])
            print(f"round {r}: {name} {times[name][-1]:.3f} s", file=sys.stderr, flush=True)
    med = {k: round(statistics.median(v), 3) for k, v in times.items()}
    runs = []
    for _ in range(3):
        out = subprocess.run([sys.executable, "-c", BREAKDOWN, PROMPT], env=env, capture_output=True, text=True,
                             check=True).stdout
        runs.append(json.loads(out.strip().splitlines()[-1]))
    before = {}
    if compare_st:  # what loading the encoder cost before (sentence-transformers), in a fresh interpreter
        st = [json.loads(subprocess.run([sys.executable, "-c", ST_LOAD], capture_output=True, text=True, check=True)
                         .stdout.strip().splitlines()[-1]) for _ in range(3)]
        before = {"sentence_transformers_encoder_s_median_of_3": {k: round(statistics.median(r[k] for r in st), 3)
                                                                  for k in st[0]}}
    return {
        **before,
        "machine": machine(), "model": "SmolLM2-135M-Instruct GGUF Q8_0, llama.cpp engine", "rounds": rounds,
        "max_tokens": tokens, "commands": {k: " ".join(v[1:] if v[0] == llora else v[3:]) for k, v in cmds.items()},
        "process_s_median": med, "process_s_min": {k: round(min(v), 3) for k, v in times.items()},
        "auto_minus_named_s_median": round(med["auto"] - med["named"], 3),
        "auto_minus_named_full_command_s_median": round(med["auto, full command"] - med["named, full command"], 3),
        "cpu_s_median": {k: round(statistics.median(v), 3) for k, v in cpu.items()},
        "router_ms_in_run_json": routes,
        "auto_steps_s_median_of_3": {k: round(statistics.median(r[k] for r in runs), 3) for k in runs[0]
                                     if k != "torch imported"},
        "torch_imported_by_the_router": any(r["torch imported"] for r in runs),
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("parts", nargs="*", default=["overhead", "process"], choices=["overhead", "process"])
    ap.add_argument("--per-domain", type=int, default=40)
    ap.add_argument("--compare-st", action="store_true")
    ap.add_argument("--home", type=Path, default=None)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=8)
    args = ap.parse_args()
    result = {}
    if "overhead" in args.parts:
        result["overhead"] = overhead(args.per_domain, args.compare_st)
        print(json.dumps(result["overhead"], indent=2), flush=True)
    if "process" in args.parts:
        home = args.home or Path(tempfile.mkdtemp(prefix="llora-router-bench-")) / "home"
        result["process"] = process(home, args.rounds, args.tokens, args.compare_st)
        print(json.dumps(result["process"], indent=2), flush=True)


if __name__ == "__main__":
    main()
