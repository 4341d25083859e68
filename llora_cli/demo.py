"""``llora demo``: every lifecycle stage that exists so far, on the embedded SmolLM2 model.

Stages: register the base, generate with it, make task data, train a training
adapter, merge it (streaming, verified), compress the merged checkpoint (GGUF
Q8_0 by default, quality measured), train runtime modifiers for two domains
(automation, reasoning) on the compressed base, evaluate every stage on held-out
rows (families the training rows never used), deploy and answer with and
without a modifier, fit a router (scenarios collected on the serving engine
for the two domains and code, which no modifier serves, ORPO) and answer a
mixed batch of held-out requests with ``--modifier auto``,
show the lineage and the catalog. Step and row counts are options so the whole
demo fits in about ten minutes on a 2-core CPU; each stage's seconds are in the
report (``timings``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field

from llora_cli.bases import add_base
from llora_cli.generate import Generation, generate
from llora_store import Store
from llora_store.catalog import ArtifactSummary

DEMO_PROMPT = "What is the capital of France?"
MODIFIER_DOMAINS = ("automation", "reasoning")
# the router's queries: the modifiers' domains and one without a modifier (code: the base alone solves some of its
# exercises, so the router has a reason to choose "none" there)
ROUTER_DOMAINS = (*MODIFIER_DOMAINS, "code")


@dataclass
class DemoOptions:
    adapter_steps: int = 12
    modifier_steps: int = 24
    modifier_learning_rate: float = 2e-3  # llora train's modifier default is 1e-3 over 100 steps; 24 steps need more
    rows: int = 240
    eval_rows: int = 12
    compress_method: str = "gguf-q8_0"
    compress_eval_rows: int = 0  # perplexity and KL always; task accuracy on a few rows says little, costs ~1 min
    router_rows: int = 10  # training queries per domain the router's scenarios are collected on
    routed_requests: int = 6  # held-out requests answered with --modifier auto (ROUTER_DOMAINS in turn)
    router: bool = True
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
    router: dict | None = None
    timings: dict[str, float] = field(default_factory=dict)  # stage -> seconds
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
            "router": self.router,
            "timings": self.timings,
            "lineage": self.lineage.to_json() if self.lineage is not None else None,
            "catalog": [a.to_json() for a in self.catalog],
        }


@contextmanager
def _timed(report: DemoReport, stage: str):
    t0 = time.perf_counter()
    try:
        yield
    finally:
        report.timings[stage] = round(report.timings.get(stage, 0.0) + time.perf_counter() - t0, 1)


def run_demo(store: Store, *, progress: Callable[[str], None] | None = None, max_new_tokens: int = 32,
             options: DemoOptions | None = None) -> DemoReport:
    opts = options or DemoOptions()
    if opts.train:  # refuse bad steps or learning rates before any work: BadInput naming the key
        from llora_store.errors import BadInput

        for what, make in (("--adapter-steps", _adapter_config), ("--modifier-steps / --modifier-lr", _modifier_config)):
            try:
                make(opts)
            except BadInput as e:
                raise BadInput(f"{what}: {e.message}", hint=e.hint) from None
    from llora_cli.modelfiles import parse_gguf_once

    with parse_gguf_once():  # the GGUF files the stages load (base, compressed base) are each parsed once
        say = progress or (lambda _m: None)
        report = DemoReport()
        with _timed(report, "register base"):
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
        with _timed(report, "generate"):
            say(f"generating an answer to {DEMO_PROMPT!r}")
            report.generation = generate(store.path_of(base_id), DEMO_PROMPT, max_new_tokens=max_new_tokens)
        report.steps.append(f"generated {report.generation.tokens_out} tokens with plain transformers on {report.generation.device}")
        if opts.train:
            _train_stage(store, base_id, opts, report, say)
        report.catalog = store.list()
    return report


def _adapter_config(opts: DemoOptions):
    from llora_cli.trainconfig import load_config

    return load_config(None, [f"max_steps={opts.adapter_steps}", "learning_rate=5e-4", "batch_size=4"])


def _modifier_config(opts: DemoOptions):
    """The modifier defaults (trainconfig.MODIFIER_DEFAULTS) but for the steps, a batch of 4, the learning rate and
    batches of rows of similar length (10-13% fewer padded tokens on the demo's rows): two modifiers in the demo's
    time (docs/benchmarks.md, "The demo's time")."""
    from llora_cli.trainconfig import load_config

    return load_config(None, [f"max_steps={opts.modifier_steps}", "batch_size=4",
                              f"learning_rate={opts.modifier_learning_rate}", "group_by_length=true"])


def _train_stage(store: Store, base_id: str, opts: DemoOptions, report: DemoReport, say) -> None:
    from llora_cli.data import make_dataset
    from llora_cli.evaluate import evaluate
    from llora_cli.train import train

    datasets = {}
    with _timed(report, "make data"):
        for task in ("instruct", *MODIFIER_DOMAINS, *(("code",) if opts.router else ())):
            existing = [a for a in store.artifacts(kind="dataset") if a.state != "discarded"
                        and a.meta.get("task") == task and a.meta.get("demo") == [opts.rows, opts.eval_rows]]
            if existing:
                datasets[task] = existing[0]
            else:
                say(f"making {opts.rows} rows of {task} task data")
                ds = make_dataset(store, task, opts.rows, seed=0, n_test=opts.eval_rows,
                                  name=store.unique_name(f"demo-data-{task}"), command="llora demo")
                store.update_metadata(ds.id, {"demo": [opts.rows, opts.eval_rows]})
                datasets[task] = ds
            report.steps.append(f"dataset '{datasets[task].name}': {opts.rows} {task} rows + {opts.eval_rows} "
                                "held-out (from families the training rows do not use)")

    with _timed(report, "train adapter"):
        say(f"training a training adapter on instruct data ({opts.adapter_steps} steps, fp32)")
        adapter = train(store, base_ref=base_id, data_ref=datasets["instruct"].id, kind="adapter",
                        name=store.unique_name("demo-adapter"), command="llora demo",
                        config=_adapter_config(opts))
    report.steps.append(f"trained adapter '{adapter.artifact.name}': {adapter.outcome['steps']} steps, "
                        f"{adapter.outcome['tokens_per_s']:.0f} tokens/s, final loss {adapter.outcome['final_loss']:.3f}")

    from llora_cli.loading import ModelCache

    models = ModelCache()  # evaluations on the same weights share one load (base + adapter; compressed + modifiers)

    def evaluate_on(ref: str, data: str) -> None:
        with _timed(report, "evaluate"):
            say(f"evaluating {ref} on held-out {data} rows")
            r = evaluate(store, ref, datasets[data].id, command="llora demo", models=models)
        report.evaluations.append({"artifact": r.artifact, "task": data, "n": r.n, "loss": r.loss,
                                   "accuracy": r.accuracy, "seconds": r.seconds, "timing": r.timing})

    evaluate_on(base_id, "instruct")
    evaluate_on(adapter.artifact.id, "instruct")

    from llora_cli.merge import merge

    with _timed(report, "merge"):
        say(f"merging the training adapter '{adapter.artifact.name}' into its base (streaming, verified)")
        m = merge(store, adapter.artifact.id, dtype="bf16", command="llora demo")
    report.merge = m.to_json()
    report.steps.append(
        f"merged '{adapter.artifact.name}' into '{m.merged.name}' (bf16): tensor check max rel. error "
        f"{m.tensor_check['max_rel_error']:.1e}, logits check {m.full_check.get('max_rel_error', float('nan')):.1e}; "
        f"the adapter is now '{m.adapter_state}' (its weights deleted, row and lineage kept)")
    evaluate_on(m.merged.id, "instruct")
    models.clear()  # compressing and training need the memory more

    from llora_cli.loading import reuse_dequantized

    # compress, the two trainings and four evaluations load the compressed base: dequantized once
    with reuse_dequantized():
        c, modifiers = _compressed_stage(store, m, datasets, opts, report, say, evaluate_on)
    models.clear()
    report.steps.append("evaluated base, adapter, merged, compressed and modifiers on held-out rows "
                        "(stored on each artifact)")
    with _timed(report, "deploy and serve"):
        _serve_stage(store, c.compressed, modifiers["automation"], datasets["automation"].id, report, say)
    if opts.router:
        with _timed(report, "router"):
            _router_stage(store, c.compressed, modifiers, datasets, opts, report, say)
    report.lineage = store.lineage(modifiers["automation"].id)  # after deploying: the states shown are current


def _compressed_stage(store: Store, m, datasets: dict, opts: DemoOptions, report: DemoReport, say, evaluate_on):
    """Compress the merged checkpoint, train the modifiers on the compressed base, evaluate both on held-out rows;
    returns (the compress report, modifier artifact per domain)."""
    from llora_cli.compress import compress
    from llora_cli.train import train
    from llora_cli.trainconfig import MODIFIER_DEFAULTS

    with _timed(report, "compress"):
        say(f"compressing '{m.merged.name}' with {opts.compress_method} and measuring its quality")
        c = compress(store, m.merged.id, opts.compress_method, eval_n=opts.compress_eval_rows, command="llora demo")
    report.compress = c.to_json()
    ppl = c.quality["perplexity"]
    report.steps.append(
        f"compressed '{m.merged.name}' to '{c.compressed.name}' ({opts.compress_method}): {c.bytes / 2**20:.0f} MiB, "
        f"{c.ratio:.2f} of bf16; perplexity {ppl['source']:.3f} -> {ppl['compressed']:.3f}, "
        f"next-token KL {c.quality['kl_mean']:.4f}")

    modifiers = {}
    for domain in MODIFIER_DOMAINS:
        with _timed(report, "train modifiers"):
            say(f"training the {domain} modifier on the compressed base ({opts.modifier_steps} steps of 4 rows, "
                f"learning rate {opts.modifier_learning_rate:g}, fp32)")
            mod = train(store, base_ref=c.compressed.id, data_ref=datasets[domain].id, kind="modifier",
                        domain=domain, name=store.unique_name(f"demo-modifier-{domain}"), command="llora demo",
                        config=_modifier_config(opts))
        modifiers[domain] = mod.artifact
        report.steps.append(f"trained modifier '{mod.artifact.name}' (domain {domain}) on '{c.compressed.name}', "
                            f"the weights it will run on: {mod.outcome['steps']} steps of 4 rows at learning rate "
                            f"{opts.modifier_learning_rate:g} (llora train's default: {MODIFIER_DEFAULTS['max_steps']} "
                            f"of {MODIFIER_DEFAULTS['batch_size']} at {MODIFIER_DEFAULTS['learning_rate']:g}; fewer to "
                            f"keep the demo under 10 minutes), {mod.outcome['tokens_per_s']:.0f} tokens/s, "
                            f"final loss {mod.outcome['final_loss']:.3f}")
    for domain in MODIFIER_DOMAINS:
        evaluate_on(c.compressed.id, domain)
        evaluate_on(modifiers[domain].id, domain)
    return c, modifiers


def _system_of(row: dict) -> str | None:
    return next((m["content"] for m in row["messages"] if m["role"] == "system"), None)  # e.g. the tools' schema


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
    system = _system_of(row)
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


def _writes_digits(store: Store, base) -> bool:
    """Whether ``base``'s tokenizer writes numbers one digit per token (what the calculator needs; SmolLM2's does)."""
    from llora_cli.calculator import CalculatorUnsupported, digit_token_ids
    from llora_cli.loading import load_tokenizer

    try:
        digit_token_ids(load_tokenizer(store.path_of(base.id)))
    except CalculatorUnsupported:
        return False
    return True


def _router_stage(store: Store, base, modifiers: dict, datasets: dict, opts: DemoOptions, report: DemoReport,
                  say) -> None:
    """Collect scenarios (every candidate answers ``router_rows`` training queries per domain on the serving
    engine, checked; ROUTER_DOMAINS: the modifiers' domains and code, which no modifier serves), fit an ORPO router,
    deploy it with the modifiers, and answer held-out requests of those domains in turn with ``--modifier auto``: per
    request the router's choice, its probability and the checker's verdict."""
    from llora_cli import tasks
    from llora_cli.data import load_data
    from llora_cli.deploy import deploy
    from llora_cli.engine import open_engine, resolve_deployment
    from llora_cli.router.collect import collect, max_tokens_for
    from llora_cli.router.fit import fit
    from llora_store.errors import BadInput

    calculator = []  # the reasoning modifier serves with calculator-assisted decoding (its arithmetic computed)
    for mod in modifiers.values():
        if store.get(mod.id).state != "deployed":
            on = mod.domain == "reasoning" and _writes_digits(store, base)
            deploy(store, mod.id, command="llora demo", calculator=True if on else None)
            calculator += [mod.name] if on else []
    say(f"collecting router scenarios: base alone and {len(modifiers)} modifiers on {opts.router_rows} training "
        f"queries per domain ({', '.join(ROUTER_DOMAINS)})")
    scen = collect(store, base.id, [datasets[d].id for d in ROUTER_DOMAINS], limit=opts.router_rows,
                   name=store.unique_name("demo-scenarios"), command="llora demo")
    s = scen.summary
    report.router = {"calculator": calculator,
                     "scenarios": {"id": scen.artifact.id, "name": scen.artifact.name, "rows": scen.rows,
                                   "candidates": scen.artifact.meta.get("candidates"),
                                   "engine": scen.artifact.meta.get("engine"), "summary": s}}
    say("fitting a router (ORPO) on the scenarios")
    try:
        fitted = fit(store, scen.artifact.id, method="orpo", name=store.unique_name("demo-router"),
                     command="llora demo")
    except BadInput as e:  # e.g. no candidate answered any query correctly: nothing to learn from
        report.router["skipped"] = e.message
        report.steps.append(f"collected {scen.rows} router scenarios; no router fitted: {e.message}")
        return
    deploy(store, fitted.artifact.id, command="llora demo")
    runtime = open_engine(store, resolve_deployment(store, base.id))
    tests = {d: load_data(store, datasets[d].id).test for d in ROUTER_DOMAINS}
    rows = [tests[ROUTER_DOMAINS[i % len(ROUTER_DOMAINS)]][i // len(ROUTER_DOMAINS)]
            for i in range(opts.routed_requests) if i // len(ROUTER_DOMAINS) < opts.eval_rows]
    answers = []
    for row in rows:
        task = row.get("task") or "automation"
        prompt = tasks.prompt_of(row)
        route = runtime.route(prompt)
        say(f"auto -> {route.modifier.name if route.modifier else 'base alone'} for a held-out {task} request")
        reply = runtime.generate(prompt, modifier=route.modifier, system=_system_of(row),
                                 max_tokens=max_tokens_for(task))
        reply.route = route.to_json()
        runtime.log(reply, prompt, client="demo")
        answers.append({"task": task, "prompt": prompt, "chosen": route.modifier.name if route.modifier else None,
                        "calculator_forced": reply.params.get("calculator_forced"),
                        "chosen_domain": route.modifier.domain if route.modifier else None,
                        "probability": round(route.probability, 3), "router_ms": round(route.router_ms, 1),
                        "text": reply.text, "passes_checker": bool(tasks.checker(task)(row, reply.text)),
                        "log_id": reply.log_id})
    report.router.update({"router": {"id": fitted.artifact.id, "name": fitted.artifact.name,
                                     "training": fitted.training},
                          "engine": runtime.engine, "answers": answers})
    passed = sum(a["passes_checker"] for a in answers)
    served = [a for a in answers if a["task"] in MODIFIER_DOMAINS]  # code: no modifier of its own
    same = sum(a["chosen_domain"] == a["task"] for a in served)
    code = [a for a in answers if a["task"] not in MODIFIER_DOMAINS]
    report.steps.append(f"fitted router '{fitted.artifact.name}' (ORPO) on {scen.rows} scenarios collected with the "
                        f"{report.router['scenarios']['engine']} engine, deployed it, and answered {len(answers)} held-out "
                        f"requests with --modifier auto: {same} of {len(served)} {' and '.join(MODIFIER_DOMAINS)} "
                        f"requests routed to their domain's modifier, {sum(a['chosen'] is None for a in code)} of "
                        f"{len(code)} code requests to the base alone; {passed} pass the checker")
