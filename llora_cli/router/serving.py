"""The router at request time: the deployed router of a base, loaded once per process, choosing a modifier.

This is the router side of ``--modifier auto`` (``llora run``) and model ``BASE:auto`` (``llora serve``): the
engines call ``deployed_router(store, deployment)`` once and ``route(prompt, deployment)`` per request, and put
the ``Route`` (chosen modifier, its probability, the router's milliseconds, any fallback) into the reply and the
request log. The choice falls back, in order of probability, to the next candidate this deployment can run
(a routed-to modifier no longer deployed, or refused by the engine), and says so.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from llora_cli.router.losses import NONE
from llora_store import Store
from llora_store.errors import BadInput, Conflict
from llora_store.models import Artifact

_LOADED: dict[tuple[str, str], object] = {}  # (router id, content hash) -> Router, once per process


@dataclass
class Route:
    modifier: Artifact | None
    candidate: str  # "none" or the modifier id finally used
    probability: float  # the router's probability of that candidate
    router_ms: float  # encoder + head, this request
    router: Artifact
    fallback: str | None = None  # why the first choice was not used

    def to_json(self) -> dict:
        return {"router": {"id": self.router.id, "name": self.router.name}, "candidate": self.candidate,
                "modifier": self.modifier.name if self.modifier else None,
                "probability": round(self.probability, 4), "router_ms": round(self.router_ms, 2),
                "fallback": self.fallback}


def find_deployed(store: Store, base: Artifact) -> Artifact | None:
    """The deployed router of ``base`` (None when there is none; more than one is an error)."""
    with store.reading() as s:
        routers = [a for a in store.children_by_role(s, base.id, "runs_on")
                   if a.kind == "router" and a.state == "deployed"]
    if len(routers) > 1:
        raise BadInput(f"{len(routers)} routers are deployed on {base.kind} '{base.name}': "
                       f"{', '.join(r.name for r in routers)}; retire all but one")
    return routers[0] if routers else None


def changes_since_fit(store: Store, art: Artifact) -> list[str]:
    """What differs from what router ``art`` was fitted on, one line each (``[]``: nothing): its base's content
    hash, each routed-to modifier's content hash (recorded at fit; a router fitted before they were recorded is
    checked on its base and encoder only), and the installed encoder's package version and weight hashes.
    Reads only ``get`` (and ``find_deployed``/``load`` only ``reading``, ``children_by_role`` and ``path_of``), so
    ``llora_store.lite``'s catalog view serves too."""
    from llora_cli.router import encoder

    short = lambda h: str(h)[:12]  # noqa: E731
    changes = []
    base = store.get(art.meta["base"]["id"])
    if base.content_hash != art.base_hash:
        changes.append(f"{base.kind} '{base.name}' content hash {short(art.base_hash)} -> {short(base.content_hash)}")
    recorded = art.meta.get("modifiers", {})  # the ids it routes to (fit writes them with the lineage)
    for m in (store.get(mid) for mid in recorded):
        fitted = recorded[m.id].get("content_hash")
        if fitted is not None and fitted != m.content_hash:
            changes.append(f"modifier '{m.name}' content hash {short(fitted)} -> {short(m.content_hash)}")
    return changes + depth_mismatches(store, art.meta.get("depth"), base) + encoder.identity_changes(
        art.meta.get("encoder") or {})


def depth_mismatches(store: Store, depth: dict | None, base: Artifact) -> list[str]:
    """Why depth heads scoring ``depth["layers"]`` decoder layers with layer-adapter set ``depth["layer_set"]`` (an
    id, or ``{"id", "content_hash"}`` as a depth scenario set records it; a router records the hash as
    ``layer_set_content_hash``) cannot run on ``base``, one line each
    (``[]``: they can; ``depth`` None: a router without depth heads). Checked: the base's decoder layer count
    (``num_hidden_layers`` of its recorded architecture), the set's layer count, the set still ready (not discarded)
    and, where recorded, its content hash. Router fit, deploy and load refuse on any of them."""
    if not depth:
        return []
    out = []
    layers = int(depth["layers"])
    model_layers = ((base.meta or {}).get("architecture") or {}).get("num_hidden_layers")
    if model_layers is not None and int(model_layers) != layers:
        out.append(f"its depth heads score {layers} decoder layers; {base.kind} '{base.name}' has {model_layers}")
    ref = depth.get("layer_set")
    ref = ref if isinstance(ref, dict) else {"id": ref, "content_hash": depth.get("layer_set_content_hash")}
    layer_set = store.get(ref["id"])
    if layer_set.state != "ready":
        out.append(f"layer-adapter set '{layer_set.name}' is '{layer_set.state}'")
    elif ref.get("content_hash") and ref["content_hash"] != layer_set.content_hash:
        out.append(f"layer-adapter set '{layer_set.name}' content hash {ref['content_hash'][:12]} -> "
                   f"{str(layer_set.content_hash)[:12]}")
    set_layers = (layer_set.meta or {}).get("layers")
    if set_layers is not None and int(set_layers) != layers:
        out.append(f"layer-adapter set '{layer_set.name}' has {set_layers} layer adapters; the depth heads score "
                   f"{layers} layers")
    return out


def check_unchanged(store: Store, art: Artifact, *, action: str) -> None:
    """Refuse to ``action`` (deploy, load) router ``art`` when its base, a modifier or the encoder changed since it
    was fitted, naming every change: its head chose on other outcomes and embeddings."""
    changes = changes_since_fit(store, art)
    if changes:
        base = art.meta.get("base", {}).get("name", "BASE")
        raise Conflict(f"cannot {action} router '{art.name}': what it was fitted on changed: {'; '.join(changes)}",
                       hint=f"collect and fit a new router on what is there now (llora router collect {base} "
                            f"--data ...; llora router fit SCENARIOS), or restore what changed")


def load(store: Store, art: Artifact):
    """The router's files, loaded once per process; refused if its base, a modifier or the encoder changed."""
    from llora_cli.router.model import Router

    key = (art.id, art.content_hash or "")
    if key not in _LOADED:
        check_unchanged(store, art, action="load")
        _LOADED[key] = Router.load(store.path_of(art.id), what=f"router '{art.name}'")
    return _LOADED[key]


class DeployedRouter:
    """A loaded router and the deployment it serves."""

    def __init__(self, store: Store, art: Artifact) -> None:
        self.art = art
        self.router = load(store, art)

    @classmethod
    def for_base(cls, store: Store, base: Artifact) -> DeployedRouter:
        art = find_deployed(store, base)
        if art is None:
            raise BadInput(f"--modifier auto needs a deployed router, and no router is deployed on {base.kind} "
                           f"'{base.name}'", hint="deploy one (llora deploy ROUTER), name a modifier "
                                                  "(--modifier NAME) or run the base alone (--modifier none)")
        return cls(store, art)

    def route(self, prompt: str, modifiers: list[Artifact], *, refused: dict[str, str] | None = None) -> Route:
        """Choose for ``prompt`` among the candidates ``modifiers`` (the deployment's, loaded by the engine) allow."""
        start = time.perf_counter()
        _, probs = self.router.choose([prompt])
        ms = (time.perf_counter() - start) * 1000
        p = probs[0]
        candidates = self.router.candidates
        runnable = {m.id: m for m in modifiers if not refused or m.id not in refused}
        order = sorted(range(len(candidates)), key=lambda i: -float(p[i]))
        first = candidates[order[0]]
        names = {k: v.get("name", k) for k, v in self.art.meta.get("modifiers", {}).items()}

        def label(c: str) -> str:
            return "the base alone" if c == NONE else f"modifier '{names.get(c, c)}'"

        for i in order:
            c = candidates[i]
            if c == NONE or c in runnable:
                note = None
                if c != first:
                    why = (refused or {}).get(first, "not deployed on this base")
                    note = f"the router chose {label(first)} ({why}); fell back to {label(c)}"
                return Route(runnable.get(c), c, float(p[i]), ms, self.art, note)
        raise AssertionError("'none' is always a candidate")
