"""`llora run --engine llamacpp` as a process vs plain llama-cpp-python on the same GGUF and prompt token ids
(issue 11, item 12): process seconds, medians over rounds, and their ratio in the same run.

Usage: python benchmarks/run_startup.py [--home DIR] [--rounds 7] [--tokens 8] [--no-breakdown]
Set-up (skipped when --home holds it): register SmolLM2-135M-Instruct, compress it to GGUF Q8_0 (--eval-n 0) and
deploy it (`llora deploy` writes its tokenizer files).

(a) plain: a fresh interpreter imports llama_cpp, loads the GGUF (n_ctx 4096, 2 threads, n_batch 512), generates
    greedily from the prompt token ids llora computes (SmolLM2's chat template; checked equal to transformers'
    apply_chat_template on the GGUF's tokenizer) and stops after --tokens tokens or at EOS;
(b) llora: `llora run --engine llamacpp --max-tokens N "What is the capital of France?"`, exactly as typed.
Each its own process, order alternating per round; the replies are checked to be the same text, and the plain
process reports its steps (import, model load, generate). Medians and minimums of wall time (the minimum is the
least disturbed round on a shared machine), CPU seconds (user + sys) and the load average, so that a figure taken
while other work ran says so. The breakdown (three more processes, medians) times llora's steps in process:
imports, catalog + deployment, llama_cpp import, engine (tokenizer + model load), request, request log, on the
light path (llora_cli/fastrun.py: no Typer, no ORM) that `llora run` takes for this command.
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

PROMPT = "What is the capital of France?"

PLAIN = textwrap.dedent('''
    import json, sys, time
    t0 = time.perf_counter()
    from llama_cpp import Llama
    t1 = time.perf_counter()
    path, ids, n, eos = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    llm = Llama(model_path=path, n_ctx=4096, n_threads=2, n_batch=512, verbose=False)
    t2 = time.perf_counter()
    out = []
    for token in llm.generate(ids, temp=0.0, top_k=0, min_p=0.0, top_p=1.0, repeat_penalty=1.0):
        if token == eos:
            break
        out.append(token)
        if len(out) >= n:
            break
    t3 = time.perf_counter()
    print(json.dumps({"tokens": out, "import llama_cpp": t1 - t0, "model load": t2 - t1, "generate": t3 - t2}))
''')

BREAKDOWN = textwrap.dedent('''
    import json, sys, time
    t = [time.perf_counter()]
    from llora_cli import engine, fastrun, tokenizer  # what the light path of `llora run` imports (fastrun.py)
    from llora_store import lite
    t.append(time.perf_counter())
    catalog = lite.open_catalog(); dep = engine.resolve_deployment(catalog)
    t.append(time.perf_counter())
    import llama_cpp
    t.append(time.perf_counter())
    runtime = engine.open_engine(catalog, dep, "llamacpp")
    t.append(time.perf_counter())
    reply = runtime.generate(sys.argv[1], max_tokens=int(sys.argv[2]))
    t.append(time.perf_counter())
    runtime.log(reply, sys.argv[1], client="cli")
    t.append(time.perf_counter())
    names = ["imports (fastrun, engine, lite catalog)", "open catalog + resolve deployment",
             "import llama_cpp (numpy, ctypes)", "engine (tokenizer + model load)", "request (encode + generate)",
             "request log"]
    out = {n: round(b - a, 3) for n, a, b in zip(names, t, t[1:])}
    a = time.perf_counter(); tokenizer.ChatTokenizer(tokenizer.files_dir(catalog.path_of(dep.base.id)))
    out["of which tokenizer (again, warm)"] = round(time.perf_counter() - a, 3)
    print(json.dumps(out))
''')


def setup(home: Path) -> str:
    """The deployed GGUF Q8_0 base's id (built when missing)."""
    os.environ["LLORA_HOME"] = str(home)
    from llora_store import open_store

    store = open_store()
    found = [a for a in store.list(kind="compressed", state="deployed") if store.get(a.id).quantization == "gguf-q8_0"]
    if found:
        return found[0].id
    from llora_cli.bases import add_base
    from llora_cli.compress import compress
    from llora_cli.deploy import deploy

    base = next((a for a in store.list(kind="base") if a.name == "smollm2"), None) or add_base(
        store, "smollm2", name="smollm2")
    c = compress(store, base.id, "gguf-q8_0", eval_n=0)
    deploy(store, c.compressed.id)
    return c.compressed.id


def prompt_ids(model_dir: Path) -> tuple[list[int], int, object]:
    """llora's prompt token ids, checked against transformers' tokenizer of the GGUF (its apply_chat_template)."""
    from transformers import AutoTokenizer

    from llora_cli import tokenizer

    ours = tokenizer.ChatTokenizer(tokenizer.files_dir(model_dir))
    ids = ours.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True)["input_ids"]
    ref = AutoTokenizer.from_pretrained(model_dir, gguf_file="model.gguf")
    ref_ids = ref.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True,
                                      return_dict=True)["input_ids"]
    assert list(ref_ids) == ids, (ref_ids, ids)
    return ids, ours.eos_token_id, ours


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--home", type=Path, default=None)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--tokens", type=int, default=8)
    ap.add_argument("--no-breakdown", action="store_true")
    args = ap.parse_args()
    home = args.home or Path(tempfile.mkdtemp(prefix="llora-run-startup-")) / "home"
    base_id = setup(home)
    from llora_store import open_store

    model_dir = open_store().path_of(base_id)
    ids, eos, tok = prompt_ids(model_dir)
    env = {**os.environ, "LLORA_HOME": str(home)}
    llora = str(Path(sys.executable).with_name("llora"))
    cmds = {"plain-llama-cpp": [sys.executable, "-c", PLAIN, str(model_dir / "model.gguf"), json.dumps(ids),
                                str(args.tokens), str(eos)],
            "llora-run-llamacpp": [llora, "run", "--engine", "llamacpp", "--max-tokens", str(args.tokens), PROMPT]}
    load_before = os.getloadavg()
    times: dict[str, list[float]] = {k: [] for k in cmds}
    texts: dict[str, set] = {k: set() for k in cmds}
    cpu: dict[str, list[float]] = {k: [] for k in cmds}
    plain_steps: list[dict] = []
    for r in range(args.rounds):
        for name in (list(cmds) if r % 2 == 0 else list(cmds)[::-1]):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t = time.perf_counter()
            out = subprocess.run(cmds[name], env=env, capture_output=True, text=True, check=True).stdout
            times[name].append(time.perf_counter() - t)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu[name].append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
            if name.startswith("plain"):
                rec = json.loads(out)
                text = tok.decode(rec.pop("tokens"), skip_special_tokens=True)
                plain_steps.append(rec)
            else:
                text = out
            texts[name].add(text.strip())
            print(f"round {r}: {name} {times[name][-1]:.3f} s", flush=True)
    med = {k: round(statistics.median(v), 3) for k, v in times.items()}
    low = {k: round(min(v), 3) for k, v in times.items()}
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, no GPU, Python {platform.python_version()}",
        "model": "SmolLM2-135M-Instruct, GGUF Q8_0 (llora compress --method gguf-q8_0)",
        "prompt_tokens": len(ids), "max_tokens": args.tokens, "rounds": args.rounds,
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "process_s_median": med, "process_s_min": low,
        "process_s_all": {k: [round(x, 3) for x in v] for k, v in times.items()},
        "cpu_s_median": {k: round(statistics.median(v), 3) for k, v in cpu.items()},
        "ratio_llora_over_plain": round(med["llora-run-llamacpp"] / med["plain-llama-cpp"], 3),
        "ratio_of_minimums": round(low["llora-run-llamacpp"] / low["plain-llama-cpp"], 3),
        "same_text": texts["plain-llama-cpp"] == texts["llora-run-llamacpp"] and len(texts["plain-llama-cpp"]) == 1,
        "text": sorted(texts["llora-run-llamacpp"]),
    }
    # the command took the light path (fastrun.py; LLORA_DEBUG=1 says when it declines)
    probe = subprocess.run(cmds["llora-run-llamacpp"], env={**env, "LLORA_DEBUG": "1"}, capture_output=True,
                           text=True, check=True)
    result["light_path"] = "full path" not in probe.stderr
    result["plain_steps_s_median"] = {k: round(statistics.median(r[k] for r in plain_steps), 3)
                                      for k in plain_steps[0]}
    if not args.no_breakdown:
        runs = []
        for _ in range(3):
            out = subprocess.run([sys.executable, "-c", BREAKDOWN, PROMPT, str(args.tokens)], env=env,
                                 capture_output=True, text=True, check=True).stdout
            runs.append(json.loads(out.strip().splitlines()[-1]))
        result["llora_steps_s_median_of_3"] = {k: round(statistics.median(r[k] for r in runs), 3) for k in runs[0]}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
