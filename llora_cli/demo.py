"""``llora demo``: every lifecycle stage that exists so far, on the embedded SmolLM2 model.

Stages: register the base, generate with it, make task data, train a training
adapter, merge it (streaming, verified), compress the merged checkpoint (GGUF
Q8_0 by default, quality measured), train a runtime modifier on the compressed
base, evaluate every stage on held-out rows, show the lineage and the catalog.
Step counts are options so the whole demo fits in a few minutes on a 2-core CPU.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from llora_cli.bases import add_base
from llora_cli.generate import Generation, generate
from llora_store import Store
from llora_store.catalog import ArtifactSummary

DEMO_PROMPT = "What is the capital of France?"


@dataclass
class DemoOptions:
    adapter_steps: int = 12
    modifier_steps: int = 30
    rows: int = 240
    eval_rows: int = 20
    compress_method: str = "gguf-q8_0"
    compress_eval_rows: int = 8
    train: bool = True


@dataclass
class DemoReport:
    steps: list[str] = field(default_factory=list)
    base: ArtifactSummary | None = None
    generation: Generation | None = None
    evaluations: list[dict] = field(default_factory=list)
    merge: dict | None = None
    compress: dict | None = None
    runtime: dict | None = None
    lineage: object | None = None  # LineageNode of the modifier (compressed <- merged <- base + adapter)
    catalog: list[ArtifactSummary] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "steps": self.steps,
            "base": self.base.to_json() if self.base else None,
            "generation": self.generation.to_json() if self.generation else None,
            "evaluations": self.evaluations,
            "merge": self.merge,
            "compress": self.compress,
            "runtime": self.runtime,
            "lineage": self.lineage.to_json() if self.lineage is not None else None,
            "catalog": [a.to_json() for a in self.catalog],
        }


def run_demo(store: Store, *, progress: Callable[[str], None] | None = None, max_new_tokens: int = 32,
             options: DemoOptions | None = None) -> DemoReport:
    opts = options or DemoOptions()
    say = progress or (lambda _m: None)
    report = DemoReport()
    existing = [a for a in store.artifacts(kind="base")
                if a.state != "discarded" and a.meta.get("source", {}).get("ref") == "smollm2"]
    if existing:
        base_id = existing[0].id
        report.steps.append(f"the embedded SmolLM2 is already registered as base '{existing[0].name}' ({base_id})")
    else:
        name = store.unique_name("smollm2")
        base_id = add_base(store, "smollm2", name=name, command="llora demo", progress=say).id
        report.steps.append(f"registered the embedded SmolLM2-135M-Instruct as base '{name}' ({base_id})")
    report.base = next(a for a in store.list(kind="base") if a.id == base_id)
    say(f"generating an answer to {DEMO_PROMPT!r}")
    report.generation = generate(store.path_of(base_id), DEMO_PROMPT, max_new_tokens=max_new_tokens)
    report.steps.append(f"generated {report.generation.tokens_out} tokens with plain transformers on {report.generation.device}")
    if opts.train:
        _train_stage(store, base_id, opts, report, say)
    report.catalog = store.list()
    return report


def _train_stage(store: Store, base_id: str, opts: DemoOptions, report: DemoReport, say) -> None:
    from llora_cli.data import make_dataset
    from llora_cli.evaluate import evaluate
    from llora_cli.train import train
    from llora_cli.trainconfig import load_config

    datasets = {}
    for task in ("instruct", "automation"):
        existing = [a for a in store.artifacts(kind="dataset") if a.state != "discarded"
                    and a.meta.get("task") == task and a.meta.get("demo") == opts.rows]
        if existing:
            datasets[task] = existing[0]
        else:
            say(f"making {opts.rows} rows of {task} task data")
            ds = make_dataset(store, task, opts.rows, seed=0, n_test=opts.eval_rows,
                              name=store.unique_name(f"demo-data-{task}"), command="llora demo")
            store.update_metadata(ds.id, {"demo": opts.rows})
            datasets[task] = ds
        report.steps.append(f"dataset '{datasets[task].name}': {opts.rows} {task} rows + {opts.eval_rows} held-out")

    say(f"training a training adapter on instruct data ({opts.adapter_steps} steps, fp32)")
    adapter = train(store, base_ref=base_id, data_ref=datasets["instruct"].id, kind="adapter",
                    name=store.unique_name("demo-adapter"), command="llora demo",
                    config=load_config(None, [f"max_steps={opts.adapter_steps}", "learning_rate=5e-4", "batch_size=4"]))
    report.steps.append(f"trained adapter '{adapter.artifact.name}': {adapter.outcome['steps']} steps, "
                        f"{adapter.outcome['tokens_per_s']:.0f} tokens/s, final loss {adapter.outcome['final_loss']:.3f}")

    def evaluate_on(ref: str, data: str) -> None:
        say(f"evaluating {ref} on held-out {data} rows")
        r = evaluate(store, ref, datasets[data].id, command="llora demo")
        report.evaluations.append({"artifact": r.artifact, "task": data, "n": r.n, "loss": r.loss,
                                   "accuracy": r.accuracy})

    evaluate_on(base_id, "instruct")
    evaluate_on(adapter.artifact.id, "instruct")

    from llora_cli.merge import merge

    say(f"merging the training adapter '{adapter.artifact.name}' into its base (streaming, verified)")
    m = merge(store, adapter.artifact.id, dtype="bf16", command="llora demo")
    report.merge = m.to_json()
    report.steps.append(
        f"merged '{adapter.artifact.name}' into '{m.merged.name}' (bf16): tensor check max rel. error "
        f"{m.tensor_check['max_rel_error']:.1e}, logits check {m.full_check.get('max_rel_error', float('nan')):.1e}; "
        f"the adapter is now '{m.adapter_state}' (its weights deleted, row and lineage kept)")
    evaluate_on(m.merged.id, "instruct")

    from llora_cli.compress import compress

    say(f"compressing '{m.merged.name}' with {opts.compress_method} and measuring its quality")
    c = compress(store, m.merged.id, opts.compress_method, eval_n=opts.compress_eval_rows, command="llora demo")
    report.compress = c.to_json()
    ppl = c.quality["perplexity"]
    report.steps.append(
        f"compressed '{m.merged.name}' to '{c.compressed.name}' ({opts.compress_method}): {c.bytes / 2**20:.0f} MiB, "
        f"{c.ratio:.2f} of bf16; perplexity {ppl['source']:.3f} -> {ppl['compressed']:.3f}, "
        f"next-token KL {c.quality['kl_mean']:.4f}")

    say(f"training an automation modifier on the compressed base ({opts.modifier_steps} steps, fp32)")
    modifier = train(store, base_ref=c.compressed.id, data_ref=datasets["automation"].id, kind="modifier",
                     domain="automation", name=store.unique_name("demo-modifier-automation"), command="llora demo",
                     config=load_config(None, [f"max_steps={opts.modifier_steps}", "learning_rate=1e-3", "batch_size=8"]))
    report.steps.append(f"trained modifier '{modifier.artifact.name}' (domain automation) on '{c.compressed.name}', "
                        f"the weights it will run on: {modifier.outcome['steps']} steps, "
                        f"{modifier.outcome['tokens_per_s']:.0f} tokens/s, final loss {modifier.outcome['final_loss']:.3f}")
    evaluate_on(c.compressed.id, "automation")
    evaluate_on(modifier.artifact.id, "automation")
    report.steps.append("evaluated base, adapter, merged, compressed and modifier on held-out rows "
                        "(stored on each artifact)")
    _serve_stage(store, c.compressed, modifier.artifact, datasets["automation"].id, report, say)
    report.lineage = store.lineage(modifier.artifact.id)  # after deploying: the states shown are current


def _serve_stage(store: Store, base, modifier, data_id: str, report: DemoReport, say) -> None:
    """Deploy the compressed base and the modifier, answer one held-out automation request with the modifier and
    with the base alone (the base loaded once, the modifier switched per request), check both, show the log."""
    from llora_cli import tasks
    from llora_cli.data import load_data
    from llora_cli.deploy import deploy
    from llora_cli.engine import open_engine, resolve_deployment

    say(f"deploying '{base.name}' and '{modifier.name}'")
    deploy(store, base.id, command="llora demo")
    _, note = deploy(store, modifier.id, command="llora demo")  # a GGUF base: the modifier as a llama.cpp LoRA too
    row = load_data(store, data_id).test[0]
    prompt = tasks.prompt_of(row)
    system = next((m["content"] for m in row["messages"] if m["role"] == "system"), None)  # the tools' schema
    runtime = open_engine(store, resolve_deployment(store, base.id))  # llama.cpp when installed
    check = tasks.checker("automation")
    answers = []
    for chosen in (modifier, None):
        say(f"answering with {'modifier ' + repr(modifier.name) if chosen else 'the base alone'} "
            f"({runtime.engine} engine)")
        reply = runtime.generate(prompt, modifier=chosen, system=system, max_tokens=64)
        runtime.log(reply, prompt, client="demo")
        answers.append({"modifier": chosen.name if chosen else None, "text": reply.text,
                        "passes_checker": bool(check(row, reply.text)), "tokens_out": reply.tokens_out,
                        "latency_ms": round(reply.latency_ms, 1), "log_id": reply.log_id, "engine": reply.engine})
    report.runtime = {"prompt": prompt, "answers": answers, "log": store.request_logs(limit=2),
                      "engine": runtime.engine, "deploy_note": note}
    verdict = ", ".join(f"{a['modifier'] or 'base alone'}: {'passes' if a['passes_checker'] else 'fails'}"
                        for a in answers)
    report.steps.append(f"deployed '{base.name}' + '{modifier.name}' and answered one held-out automation "
                        f"request each way on one loaded base with the {runtime.engine} engine ({verdict} the "
                        f"checker); both requests logged")
