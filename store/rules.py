"""The design rules R1-R10 as pure checks over catalog rows.

The store calls them before any state change; merge and runtime code (later
layers) call the same functions, so a rule lives in exactly one place.
Each check raises RuleViolation naming the rule, what was refused and what to
do instead.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from llora_store.errors import RuleViolation

if TYPE_CHECKING:  # annotations only: the rules run on ORM rows and on llora_store.lite's rows alike
    from llora_store.models import Artifact

# Lineage roles through which a child needs its parent to keep working:
# a modifier or router runs on a base, a router routes to modifiers and uses
# layer-adapter sets, an adapter needs the exact base it was trained on to merge.
DEPENDENCY_ROLES = frozenset({"runs_on", "routes_to", "uses", "trained_on"})
RUNTIME_KINDS = frozenset({"base", "merged", "compressed"})


def _label(a: Artifact) -> str:
    return f"{a.kind} '{a.name}' ({a.id})"


def check_mergeable(adapter: Artifact, base: Artifact, *, naive_qlora: bool = False) -> None:
    """R1-R4: only a trained training adapter merges, into its own base, never naively from QLoRA."""
    if adapter.kind == "modifier":
        raise RuleViolation(
            "R1",
            f"{_label(adapter)} is a runtime modifier; modifiers are never merged",
            hint=f"serve it on its base instead: llora deploy {adapter.id}",
        )
    if adapter.kind != "adapter":
        raise RuleViolation("R1", f"{_label(adapter)} is not a training adapter; only training adapters merge")
    if adapter.state != "trained":
        raise RuleViolation(
            "R2",
            f"{_label(adapter)} is in state '{adapter.state}'; merge needs an adapter in state 'trained'",
            hint=f"see its history: llora history {adapter.id}",
        )
    if not adapter.base_hash or adapter.base_hash != base.content_hash:
        raise RuleViolation(
            "R3",
            f"{_label(adapter)} was trained on base hash {str(adapter.base_hash)[:12]}, "
            f"but {_label(base)} has hash {str(base.content_hash)[:12]}",
            hint=f"merge into the base it was trained on: llora lineage {adapter.id}",
        )
    if adapter.quantization and adapter.quantization != "none" and naive_qlora:
        raise RuleViolation(
            "R4",
            f"{_label(adapter)} was trained on a {adapter.quantization}-quantized base; "
            "a naive merge into the full-precision weights is refused",
            hint="merge without the naive option: the base is put through the same quantization round trip first",
        )


QLORA_MERGES = frozenset({"round-trip", "dequantized-base"})  # merges that add the delta to the weights training saw


def check_merge_record(adapter: Artifact, base: Artifact, metadata: dict | None) -> None:
    """R1-R4 on the record of a merge about to be committed (``Store.create`` of a ``merged`` artifact with the
    adapter's ``merge`` transition): R1-R3 as ``check_mergeable``; R4: when the adapter was trained on a quantized
    base, ``metadata["merge"]["qlora_merge"]`` must say the delta was added to the weights training saw
    ("round-trip": the quantize-dequantize round trip of the base, as axolotl's QLoRA merge does;
    "dequantized-base": a compressed base dequantized), or be "naive" with its measured error recorded as
    ``metadata["verification"]["naive_qlora_error"]["max_rel_error"]`` (a number). Raises RuleViolation otherwise."""
    check_mergeable(adapter, base)
    if not adapter.quantization or adapter.quantization == "none":
        return
    merge = (metadata or {}).get("merge") or {}
    how = merge.get("qlora_merge") if isinstance(merge, dict) else None
    if how in QLORA_MERGES:
        return
    if how == "naive":
        error = (((metadata or {}).get("verification") or {}).get("naive_qlora_error") or {})
        if isinstance(error, dict) and isinstance(error.get("max_rel_error"), (int, float)):
            return
        raise RuleViolation("R4", f"a naive merge of {_label(adapter)}, trained on a {adapter.quantization}-quantized "
                                  "base, must record its measured error, and this one records none",
                            hint="merge with --verify full (the error is measured against base + adapter)")
    raise RuleViolation("R4", f"{_label(adapter)} was trained on a {adapter.quantization}-quantized base; the merge "
                              f"records no quantization round trip (qlora_merge={how!r}), so it would be naive",
                        hint="merge with llora merge, which reproduces the weights training saw")


def check_runnable(artifact: Artifact) -> None:
    """R5: training adapters are never deployed, run or served."""
    if artifact.kind == "adapter":
        raise RuleViolation(
            "R5",
            f"{_label(artifact)} is a temporary training adapter and is never deployed, run or served",
            hint=f"merge it (llora merge {artifact.id}) or train a modifier (llora train --kind modifier)",
        )


def check_modifier_base(modifier: Artifact, base: Artifact) -> None:
    """R6: a modifier runs only on the base it was trained on (content hash)."""
    if not modifier.base_hash or modifier.base_hash != base.content_hash:
        raise RuleViolation(
            "R6",
            f"{_label(modifier)} was trained on base hash {str(modifier.base_hash)[:12]}, "
            f"not on {_label(base)} (hash {str(base.content_hash)[:12]})",
            hint=f"deploy it with the base it was trained on: llora lineage {modifier.id}",
        )


def check_not_deployed(artifact: Artifact, action: str) -> None:
    """R7: deployed artifacts are immutable."""
    if artifact.state == "deployed":
        raise RuleViolation(
            "R7",
            f"{_label(artifact)} is deployed and immutable; cannot {action}",
            hint=f"retire it first: llora retire {artifact.id}",
        )


def check_no_deployed_dependents(artifact: Artifact, dependents: Iterable[Artifact], action: str) -> None:
    """R7: nothing a deployed artifact depends on can be discarded (or retired under it)."""
    deployed = [d for d in dependents if d.state == "deployed"]
    if deployed:
        names = ", ".join(_label(d) for d in deployed)
        raise RuleViolation(
            "R7",
            f"cannot {action} {_label(artifact)}: deployed artifacts depend on it: {names}",
            hint="retire them first: " + "; ".join(f"llora retire {d.id}" for d in deployed),
        )


def check_router_deployable(router: Artifact, base: Artifact | None, modifiers: list[Artifact]) -> None:
    """R8: a router deploys only if every modifier it routes to is deployed on the same base."""
    if base is None or base.state != "deployed":
        raise RuleViolation(
            "R8",
            f"{_label(router)} runs on a base that is not deployed",
            hint=f"deploy its base first: llora lineage {router.id}",
        )
    for m in modifiers:
        if m.state != "deployed":
            raise RuleViolation(
                "R8",
                f"{_label(router)} routes to {_label(m)}, which is '{m.state}', not deployed",
                hint=f"deploy it first: llora deploy {m.id}",
            )
        if m.base_hash != base.content_hash:
            raise RuleViolation(
                "R8",
                f"{_label(router)} routes to {_label(m)}, which runs on another base than {_label(base)}",
                hint="route only to modifiers trained on the router's base",
            )
