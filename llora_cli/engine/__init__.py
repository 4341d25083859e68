"""Engines that answer requests on a deployment, and the choice between them (``--engine auto|llamacpp|transformers``).

Layering: this package's ``__init__`` (the choice, ``run``) sits above the engines (``transformers.py``: PyTorch +
PEFT; ``llamacpp.py``: llama-cpp-python), which sit above the interface they implement (``base.py``) and the
batching machinery (``batching.py``). The engines are imported only when one is opened.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import TYPE_CHECKING

from llora_cli.engine.base import Deployment, Engine, Reply, check_params, resolve_deployment
from llora_store.errors import BadInput

if TYPE_CHECKING:  # annotations only (fastrun.py runs engines without the ORM)
    from llora_store import Store
    from llora_store.models import Artifact

__all__ = ["ENGINES", "Deployment", "Engine", "Reply", "available", "choose", "is_gguf_base", "open_engine",
           "resolve_deployment", "run"]

ENGINES = ("auto", "llamacpp", "transformers")
INSTALL_HINT = "install it with: pip install 'llora[llamacpp]' (builds llama.cpp from source, ~5 minutes)"

def available() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def is_gguf_base(store: Store, base: Artifact) -> bool:
    from llora_cli import modelfiles

    return (store.path_of(base.id) / modelfiles.GGUF_NAME).is_file()


def choose(store: Store, base: Artifact, requested: str = "auto") -> str:
    """The engine for ``base``: ``auto`` takes llama.cpp for a GGUF base when llama-cpp-python is installed."""
    if requested not in ENGINES:
        raise BadInput(f"--engine must be one of {', '.join(ENGINES)}, got {requested!r}")
    if requested == "transformers":
        return requested
    gguf = is_gguf_base(store, base)
    if requested == "llamacpp":
        if not available():
            raise BadInput("the llama.cpp engine is not installed", hint=INSTALL_HINT)
        if not gguf:
            raise BadInput(f"llama.cpp runs GGUF models; {base.kind} '{base.name}' is not one",
                           hint=f"compress it (llora compress {base.name} --method gguf-q8_0), deploy that, "
                                "or use --engine transformers")
        return requested
    return "llamacpp" if gguf and available() else "transformers"


def open_engine(store: Store, deployment: Deployment, engine: str = "auto", *, max_batch: int = 8) -> Engine:
    """The engine ``choose`` picks, loaded with ``deployment``'s base and modifiers."""
    if choose(store, deployment.base, engine) == "llamacpp":
        from llora_cli.engine.llamacpp import LlamaCppEngine

        return LlamaCppEngine(store, deployment)
    from llora_cli.engine.transformers import TransformersEngine

    return TransformersEngine(store, deployment, max_batch=max_batch)




def run(store: Store, prompt: str, *, base_ref: str | None = None, modifier_ref: str | None = None,
        system: str | None = None, max_tokens: int = 256, temperature: float = 0.0, top_p: float = 1.0,
        seed: int | None = None, on_text: Callable[[str], None] | None = None, engine: str = "auto",
        depth: str | None = None, calculator: bool | None = None) -> Reply:
    """`llora run`: one request on the deployment, streamed through ``on_text``, logged with client "cli".
    ``depth``: full, auto or K layers replaced (``Engine.depth_layers``); ``calculator``: arithmetic steps'
    results computed (``llora_cli.calculator``); None: the answering modifier's serving default."""
    check_params(max_tokens, temperature, top_p)
    if not prompt.strip():
        raise BadInput("the prompt is empty", hint='pass it as an argument or on stdin: echo "hi" | llora run')
    deployment = resolve_deployment(store, base_ref)
    choose(store, deployment.base, engine)  # a bad --engine fails before anything loads
    route = None
    if modifier_ref == "auto":
        from llora_cli.router.serving import find_deployed

        if find_deployed(store, deployment.base) is None:
            deployment.find_modifier("auto")  # the refusal, with its hint, before anything loads
        runtime = open_engine(store, deployment, engine)  # every deployed modifier: the router may pick any
        route = runtime.route(prompt)
        modifier = route.modifier
    else:
        modifier = deployment.find_modifier(modifier_ref)
        used = Deployment(deployment.base, [modifier] if modifier else [])  # load only what this request needs
        runtime = open_engine(store, used, engine)
    reply = runtime.generate(prompt, modifier=modifier, system=system, max_tokens=max_tokens,
                             temperature=temperature, top_p=top_p, seed=seed, on_text=on_text, depth=depth,
                             calculator=calculator)
    reply.route = route.to_json() if route else None
    runtime.log(reply, prompt, client="cli")
    return reply
