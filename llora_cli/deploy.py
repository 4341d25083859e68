"""`llora deploy`: the catalog transition, preceded by what an engine needs converted before it can serve.

A modifier deployed on a GGUF base gets its llama.cpp LoRA (gguflora.py) converted and recorded as a derived file
first, so a modifier that cannot be served is refused (or noted) before its state changes. A GGUF base gets its
tokenizer files (tokenizer.py), so that the llama.cpp engine starts without transformers. A router whose base,
routed-to modifiers or encoder changed since it was fitted is refused, naming what changed (router/serving.py).

Serving defaults: ``llora deploy MODIFIER --calculator`` records ``{"serving": {"calculator": true}}`` on the
modifier in the deploy's own transaction (a deployed artifact's metadata is fixed, R7): every request it answers
(``llora run``, ``llora serve``, and those the router sends it with ``--modifier auto``) then has its arithmetic
steps computed (``llora_cli.calculator``) unless the request says otherwise (``serving_default``).
"""

from __future__ import annotations

from llora_cli.engine import is_gguf_base
from llora_cli.engine.base import RUNTIME_KINDS, SERVING
from llora_store import Store
from llora_store.errors import BadInput


def runs_on(store: Store, modifier_id: str):
    with store.reading() as s:
        bases = store.parents_by_role(s, modifier_id, "runs_on")
    if not bases:
        raise BadInput("the modifier records no base it runs on")
    return bases[0]


def _serving_patch(store: Store, art, calculator: bool | None) -> dict | None:
    """The metadata to record with the deploy, after checking the option applies (BadInput otherwise)."""
    if calculator is None:
        return None
    from llora_cli.classify import is_classifier

    if art.kind != "modifier" or is_classifier(art):
        raise BadInput(f"--calculator is a serving default of a generative modifier; '{art.name}' is a {art.kind}"
                       + (" classifier" if art.kind == "modifier" else ""),
                       hint="pass calculator per request instead: llora run --calculator, or \"calculator\": true")
    if art.state == "deployed":
        raise BadInput(f"modifier '{art.name}' is deployed; its serving defaults are set when it is deployed (a "
                       "deployed artifact does not change, R7)",
                       hint=f"llora retire {art.name}, then llora deploy {art.name} "
                            f"--{'' if calculator else 'no-'}calculator")
    if calculator:
        from llora_cli.calculator import digit_token_ids
        from llora_cli.loading import load_tokenizer

        digit_token_ids(load_tokenizer(store.path_of(runs_on(store, art.id).id)))  # CalculatorUnsupported
    return {SERVING: {**(art.meta.get(SERVING) or {}), "calculator": bool(calculator)}}


def deploy(store: Store, ref: str, *, command: str = "", calculator: bool | None = None) -> tuple:
    """`llora deploy`: a modifier on a GGUF base gets its llama.cpp LoRA first (converted and recorded); one that
    does not fit its base is refused before anything changes; one llama.cpp cannot run (DoRA, ...) is deployed
    for the transformers engine with a note saying why. ``calculator`` (a modifier; None: unchanged): its serving
    default for calculator-assisted decoding, recorded in the deploy's transaction; BadInput for another kind, a
    modifier already deployed, or a base tokenizer that merges digits. Returns (artifact, note or None)."""
    from llora_cli import gguflora

    art = store.resolve(ref)
    patch = _serving_patch(store, art, calculator)
    from llora_cli.classify import is_classifier, refuse_classifier

    if art.kind == "merged":  # a classifier modifier deploys on its base (POST /v1/classify); a merged one does not
        refuse_classifier(art, "llora deploy", "a merged classifier is used with llora classify; deploy the "
                                               "classifier modifier on its base to serve it (POST /v1/classify)")
    elif is_classifier(art) and art.state in ("trained", "retired") and is_gguf_base(store, runs_on(store, art.id)):
        raise BadInput(f"classifier '{art.name}' runs on a GGUF base; a classifier is served by transformers on a "
                       "safetensors base", hint="train or import it on the safetensors base")
    note = None
    if art.kind in RUNTIME_KINDS and art.state in ("ready", "retired") and is_gguf_base(store, art):
        from llora_cli import tokenizer

        tokenizer.ensure(store, art)
    if art.kind == "router" and art.state in ("trained", "retired"):
        from llora_cli.router.serving import check_unchanged

        check_unchanged(store, art, action="deploy")  # base, modifiers, encoder: as fitted, or refused
    if art.kind == "modifier" and art.state in ("trained", "retired") and not is_classifier(art):
        base = runs_on(store, art.id)
        if is_gguf_base(store, base):
            try:
                gguflora.ensure(store, art, base)
            except gguflora.NotForLlamaCpp as e:
                note = f"{e}; it runs on the transformers engine only"
    return store.deploy(art.id, command=command, metadata=patch), note
