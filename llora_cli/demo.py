"""``llora demo``: every lifecycle stage that exists so far, on the embedded SmolLM2 model."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from llora_cli.bases import add_base
from llora_cli.generate import Generation, generate
from llora_store import Store
from llora_store.catalog import ArtifactSummary

DEMO_PROMPT = "What is the capital of France?"


@dataclass
class DemoReport:
    steps: list[str] = field(default_factory=list)
    base: ArtifactSummary | None = None
    generation: Generation | None = None
    catalog: list[ArtifactSummary] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "steps": self.steps,
            "base": self.base.to_json() if self.base else None,
            "generation": self.generation.to_json() if self.generation else None,
            "catalog": [a.to_json() for a in self.catalog],
        }


def run_demo(store: Store, *, progress: Callable[[str], None] | None = None, max_new_tokens: int = 32) -> DemoReport:
    say = progress or (lambda _m: None)
    report = DemoReport()
    existing = [a for a in store.artifacts(kind="base")
                if a.state != "discarded" and a.meta.get("source", {}).get("ref") == "smollm2"]
    if existing:
        base_id = existing[0].id
        report.steps.append(f"the embedded SmolLM2 is already registered as base '{existing[0].name}' ({base_id})")
    else:
        taken = {a.name for a in store.list()}
        name = next(n for n in ("smollm2", *(f"smollm2-{i}" for i in range(2, 1000))) if n not in taken)
        base_id = add_base(store, "smollm2", name=name, command="llora demo", progress=say).id
        report.steps.append(f"registered the embedded SmolLM2-135M-Instruct as base '{name}' ({base_id})")
    report.base = next(a for a in store.list(kind="base") if a.id == base_id)
    say(f"generating an answer to {DEMO_PROMPT!r}")
    report.generation = generate(store.path_of(base_id), DEMO_PROMPT, max_new_tokens=max_new_tokens)
    report.steps.append(f"generated {report.generation.tokens_out} tokens with plain transformers on {report.generation.device}")
    report.catalog = store.list()
    return report
