"""The engine interface: what every engine shares (deployment resolution, request checks, replies, the request
log), below the choice of engine (``llora_cli.engine``) and above both engines (``transformers.py``,
``llamacpp.py``).

Used by `llora run` (one request) and `llora serve`. Rules: a training adapter is never run (R5); a
modifier runs only on the base it was trained on (R6, content hash) and only when deployed on it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from llora_store import rules
from llora_store.errors import BadInput, NotFound, RuleViolation

if TYPE_CHECKING:  # annotations only: `llora run`'s light path (fastrun.py) runs engines without the ORM
    from llora_store import Store
    from llora_store.models import Artifact

RUNTIME_KINDS = ("base", "merged", "compressed")
MAX_NEW_TOKENS = 4096
ENGINE = "transformers"
SERVING = "serving"  # a modifier's metadata key: its serving defaults ({"calculator": bool}; llora deploy)


def serving_default(modifier, key: str, default=False):
    """A modifier's serving default ``key`` (``llora deploy MODIFIER --calculator``); ``default`` for the base alone
    (``modifier`` None) or a modifier deployed without one. ``modifier``: a catalog Artifact or a lite Row."""
    if modifier is None:
        return default
    return (modifier.meta.get(SERVING) or {}).get(key, default)


@dataclass
class Deployment:
    base: Artifact
    modifiers: list[Artifact] = field(default_factory=list)  # generative modifiers (attached to the engine)
    classifiers: list[Artifact] = field(default_factory=list)  # deployed classifier modifiers (POST /v1/classify)

    def find_modifier(self, ref: str | None) -> Artifact | None:
        """``none``/None: the base alone; ``auto``: the router's choice (no router yet); else id, name or domain."""
        if ref is None or ref == "none":
            return None
        if ref == "auto":
            raise BadInput("--modifier auto needs a deployed router, and no router is deployed "
                           f"on {self.base.kind} '{self.base.name}'",
                           hint="name a modifier (--modifier NAME) or run the base alone (--modifier none)")
        by_id = [m for m in self.modifiers if m.id == ref or (len(ref) >= 4 and m.id.startswith(ref))]
        by_name = [m for m in self.modifiers if m.name == ref]
        by_domain = [m for m in self.modifiers if m.domain == ref]
        clf = next((c for c in self.classifiers if ref in (c.id, c.name, c.domain)), None)
        if clf is not None and not (by_id or by_name or by_domain):
            raise BadInput(f"'{ref}' is a classifier: it labels text, it does not generate it",
                           hint=f'llora classify {clf.name} "text" (or POST /v1/classify on llora serve)')
        for matches in (by_id, by_name, by_domain):
            if len(matches) == 1:
                return matches[0]
            if len(matches) > 1:
                raise BadInput(f"'{ref}' matches {len(matches)} deployed modifiers: "
                               f"{', '.join(m.name for m in matches)}; name one")
        deployed = ", ".join(f"{m.name} ({m.domain})" for m in self.modifiers) or "none"
        raise NotFound(f"no deployed modifier '{ref}' on {self.base.kind} '{self.base.name}'; deployed: {deployed}",
                       hint="deploy it (llora deploy NAME) if it was trained on this base, or pick another")


def resolve_deployment(store: Store, base_ref: str | None = None) -> Deployment:
    """The base to run (``base_ref`` or the single deployed base) and the modifiers deployed on it."""
    if base_ref is not None:
        base = store.resolve(base_ref)
        rules.check_runnable(base)  # R5
        from llora_cli.classify import refuse_classifier

        refuse_classifier(base, "llora run / serve", "they generate text")
        if base.kind not in RUNTIME_KINDS:
            raise BadInput(f"'{base.name}' is {base.kind}; run a base, merged or compressed model "
                           "(a modifier runs on its base: --modifier)")
        if base.state not in ("ready", "deployed"):
            raise BadInput(f"{base.kind} '{base.name}' is '{base.state}'; only ready or deployed models run")
    else:
        deployed = [store.get(a.id) for a in store.list(state="deployed") if a.kind in RUNTIME_KINDS]
        if not deployed:
            raise NotFound("no base is deployed", hint="deploy one (llora deploy NAME) or name it with --base")
        if len(deployed) > 1:
            names = ", ".join(f"{a.name} ({a.kind}, {a.id})" for a in deployed)
            raise BadInput(f"{len(deployed)} bases are deployed: {names}; choose one with --base")
        base = deployed[0]
    from llora_cli.classify import is_classifier

    with store.reading() as s:
        children = store.children_by_role(s, base.id, "runs_on")
    modifiers, classifiers = [], []
    for m in children:
        if m.kind == "modifier" and m.state == "deployed":
            rules.check_modifier_base(m, base)  # R6: deploy checked it; the hash is checked again at load
            (classifiers if is_classifier(m) else modifiers).append(m)
    return Deployment(base, modifiers, classifiers)


@dataclass
class Reply:
    text: str
    tokens_in: int
    tokens_out: int
    latency_ms: float
    ttft_ms: float | None
    base: Artifact
    modifier: Artifact | None
    params: dict
    engine: str = ENGINE
    load: dict = field(default_factory=dict)
    log_id: int | None = None
    finish_reason: str = "stop"  # "stop": EOS or a stop string; "length": max_tokens (or the model's length)
    logprobs: list[dict] | None = None  # per token of the text, in OpenAI's chat format (when asked for)
    route: dict | None = None  # --modifier auto: the router's choice (router/serving.py Route.to_json)

    def to_json(self) -> dict:
        return {"text": self.text, "finish_reason": self.finish_reason, "tokens_in": self.tokens_in,
                "tokens_out": self.tokens_out,
                "latency_ms": round(self.latency_ms, 1),
                "ttft_ms": round(self.ttft_ms, 1) if self.ttft_ms is not None else None,
                "base": {"id": self.base.id, "name": self.base.name, "kind": self.base.kind},
                "modifier": {"id": self.modifier.id, "name": self.modifier.name, "domain": self.modifier.domain}
                if self.modifier else None,
                "engine": self.engine, "params": self.params, "load": self.load, "log_id": self.log_id,
                "route": self.route}


MAX_STOPS = 4
MAX_TOP_LOGPROBS = 20


def check_params(max_tokens: int, temperature: float, top_p: float, stop: tuple[str, ...] = (),
                 logprobs: int | None = None) -> None:
    if not 1 <= max_tokens <= MAX_NEW_TOKENS:
        raise BadInput(f"--max-tokens must be between 1 and {MAX_NEW_TOKENS}, got {max_tokens}")
    if temperature < 0:
        raise BadInput(f"--temperature must be 0 (greedy) or more, got {temperature}")
    if not 0 < top_p <= 1:
        raise BadInput(f"--top-p must be in (0, 1], got {top_p}")
    if len(stop) > MAX_STOPS:
        raise BadInput(f"at most {MAX_STOPS} stop strings, got {len(stop)}")
    if any(not isinstance(s, str) or not s for s in stop):
        raise BadInput("a stop string must be a non-empty string")
    if logprobs is not None and not 0 <= logprobs <= MAX_TOP_LOGPROBS:
        raise BadInput(f"top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}, got {logprobs}")


def _is_byte_level(backend) -> bool:
    """Whether a ``tokenizers.Tokenizer`` decodes with byte-level BPE (GPT-2's byte alphabet)."""
    import json

    return '"ByteLevel"' in json.dumps(json.loads(backend.to_str()).get("decoder"))


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level BPE alphabet: the printable character standing for each byte, inverted."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


class Engine(ABC):
    """What every engine shares: the deployment, the tokenizer (the same chat template and token ids on every
    engine), a ``Batcher`` running all model work on one thread, request checks, replies and the log.
    Subclasses load the model and implement ``_attach``/``_detach`` and a batch runner."""

    engine = "?"

    def __init__(self, store: Store, deployment: Deployment) -> None:
        self.store = store
        self.deployment = deployment
        self.adapters: dict[str, Artifact] = {}
        self.refused: dict[str, str] = {}  # modifier id -> why this engine cannot run it
        self.load_info: dict = {}
        self.batcher = None  # set by the subclass

    def attach(self, modifier: Artifact) -> None:
        """Load one more deployed modifier (the base stays loaded), between batches."""
        self.batcher.call(lambda: self._attach(modifier))

    def detach(self, modifier_id: str) -> None:
        """Drop a retired modifier, between batches."""
        def do() -> None:
            if modifier_id in self.adapters:
                self._detach(modifier_id)
                del self.adapters[modifier_id]
            self.refused.pop(modifier_id, None)

        self.batcher.call(do)

    @abstractmethod
    def _attach(self, modifier: Artifact) -> None:
        """Load ``modifier`` on the model thread (or record in ``refused`` why this engine cannot)."""

    @abstractmethod
    def _detach(self, modifier_id: str) -> None:
        """Unload an attached modifier on the model thread."""

    def encode(self, prompt: str, system: str | None, messages: list[dict] | None = None, raw: bool = False
               ) -> list[int]:
        """Token ids of a chat (``messages``, or ``system`` + ``prompt``) through the chat template, or of
        ``prompt`` as plain text when ``raw`` or the model has no template."""
        tok = self.tokenizer
        if tok.chat_template and not raw:
            if messages is None:
                messages = ([{"role": "system", "content": system}] if system else []) + [
                    {"role": "user", "content": prompt}]
            ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"]
        else:
            ids = tok(prompt)["input_ids"]
        return list(ids)

    def submit(self, prompt: str, *, modifier: Artifact | None = None, system: str | None = None,
               max_tokens: int = 256, temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None,
               on_text: Callable[[str], None] | None = None, messages: list[dict] | None = None,
               raw: bool = False, max_prompt_tokens: int | None = None, stop: tuple[str, ...] | list[str] = (),
               logprobs: int | None = None, on_piece: Callable[[str, list[dict]], None] | None = None,
               depth: str | int | None = None, calculator: bool | None = None):
        """Queue one request (checked first: a bad request never reaches a batch); returns its ``Job``.

        ``depth``: None or "full" (every layer), "auto" (the deployed router's layer set for this prompt) or K (the
        router's K highest-scored layers) replaced by their layer adapters (``depth_layers``); what was used goes
        into the reply's and the log's ``params["depth"]``.

        ``stop``: up to 4 strings; the text ends before the first one generated (finish reason "stop").
        ``logprobs``: None, or k (0-20): each token's log-probability and the k most likely tokens, in the reply.
        ``on_piece(text, logprobs)``: streamed text with the log-probabilities of the tokens it completes
        (instead of ``on_text``).
        ``calculator``: the result of each arithmetic step the model writes is computed (``llora_cli.calculator``,
        Cobbe et al. 2021), recorded as ``params["calculator"]`` (and in the reply ``params["calculator_forced"]``:
        how many tokens it changed); BadInput when the tokenizer merges digits. None:
        the modifier's serving default (``llora deploy MODIFIER --calculator``; off for the base alone), recorded
        with ``params["calculator_from"] = "modifier"`` when it turned the calculator on."""
        from llora_cli.engine.batching import Job

        stop = tuple(stop or ())
        check_params(max_tokens, temperature, top_p, stop, logprobs)
        if not prompt.strip() and not messages:
            raise BadInput("the prompt is empty")
        if modifier is not None and modifier.id in self.refused:
            raise BadInput(f"the {self.engine} engine cannot run modifier '{modifier.name}': "
                           f"{self.refused[modifier.id]}", hint="run it with --engine transformers")
        if modifier is not None and modifier.id not in self.adapters:
            raise RuleViolation("R6", f"modifier '{modifier.name}' is not deployed on '{self.deployment.base.name}'")
        ids = self.encode(prompt, system, messages, raw)
        if max_prompt_tokens is not None and len(ids) > max_prompt_tokens:
            raise BadInput(f"the prompt is {len(ids)} tokens; the limit is {max_prompt_tokens}")
        if not ids:
            raise BadInput("the prompt has no tokens")
        layers, depth_info = self.depth_layers(prompt if prompt.strip() else _last_user(messages), depth)
        from_modifier = False
        if calculator is None:
            calculator = from_modifier = bool(serving_default(modifier, "calculator"))
        if calculator:
            from llora_cli.calculator import digit_token_ids

            digit_token_ids(self.tokenizer)  # CalculatorUnsupported (BadInput) before the request is queued
        params = {"max_tokens": max_tokens, "temperature": temperature, "top_p": top_p, "seed": seed,
                  "system": system, **({"stop": list(stop)} if stop else {}),
                  **({"depth": depth_info} if depth_info else {}), **({"calculator": True} if calculator else {}),
                  **({"calculator_from": "modifier"} if from_modifier else {})}
        piece = None
        if on_piece is not None:
            def piece(text: str, raw_logprobs: list[tuple]) -> None:
                on_piece(text, self.token_logprobs(raw_logprobs))
        job = Job(ids, modifier.id if modifier else None, max_tokens, temperature, top_p, seed, on_text,
                  stop=stop, logprobs=logprobs, on_piece=piece, modifier=modifier, params=params,
                  layers=tuple(layers), calculator=calculator)
        return self.batcher.submit(job)

    supports_depth = False  # can this engine replace decoder layers (transformers: yes; llama.cpp: no)

    def depth_layers(self, prompt: str, depth: str | int | None) -> tuple[list[int], dict | None]:
        """The decoder layers a request replaces, and what to record: ``(layers, {"mode", "layers", ...})``.

        ``None``/"full": none (nothing recorded for None). "auto": the deployed router's choice for ``prompt``
        (``k = round(mu * L)`` top-k of its layer scores); an integer K (or its string): the router's K best layers.
        An engine that cannot replace layers (llama.cpp) runs "auto" at full depth and says so, and refuses K > 0.
        BadInput for another value, a K outside 0..L-1, or no deployed router with depth heads."""
        if depth is None:
            return [], None
        mode = str(depth).strip().lower()
        if mode == "full":
            return [], {"mode": "full", "layers": []}
        if mode != "auto":
            try:
                k = int(mode)
            except ValueError:
                raise BadInput(f"--depth must be full, auto or a number of layers to replace, got {depth!r}") from None
            if k < 0:
                raise BadInput(f"--depth {k}: the number of layers to replace cannot be negative")
            if k == 0:
                return [], {"mode": "0", "layers": []}
        if not self.supports_depth:
            if mode == "auto":
                return [], {"mode": "auto", "layers": [],
                            "note": f"the {self.engine} engine runs every layer (it cannot replace layers)"}
            raise BadInput(f"the {self.engine} engine cannot replace decoder layers (--depth {mode})",
                           hint="run with --engine transformers, or --depth full")
        from llora_cli.router.serving import DeployedRouter

        deployed = DeployedRouter.for_base(self.store, self.deployment.base)
        router = deployed.router
        count = router.depth_layers
        if count is None:
            raise BadInput(f"router '{deployed.art.name}' has no depth heads: it cannot choose layers",
                           hint="fit one with: llora router fit SCENARIOS --depth DEPTHSCENARIOS, then deploy it")
        if mode != "auto" and not 0 <= int(mode) < count:
            raise BadInput(f"--depth {mode}: the base has {count} decoder layers; replace at most {count - 1}")
        self.load_layer_adapters(deployed.art)
        import time

        start = time.perf_counter()
        (layers,) = router.layer_sets(router.encoder.encode([prompt]), k=None if mode == "auto" else int(mode))
        return layers, {"mode": mode, "layers": layers, "router": deployed.art.name,
                        "router_ms": round((time.perf_counter() - start) * 1000, 2)}

    def load_layer_adapters(self, router: Artifact) -> None:
        """Load the layer-adapter set of ``router``'s depth heads (once); engines that replace layers override."""

    def submit_choices(self, prompt: str, *, n: int = 1, seed: int | None = None,
                       on_piece: Callable[[int, str, list[dict]], None] | None = None, **kwargs) -> list:
        """``n`` independent answers to one request: n jobs (each its own row; seeded ``seed``, ``seed + 1``, ...),
        ``on_piece(index, text, logprobs)`` streaming each. The n differ only in the seed, so a request the first
        ``submit`` accepts is accepted n times (a bad one fails before anything is queued)."""
        first = self.submit(prompt, seed=seed, on_piece=(lambda t, lp: on_piece(0, t, lp)) if on_piece else None,
                            **kwargs)
        jobs = [first]
        for i in range(1, n):
            jobs.append(self.submit(prompt, seed=None if seed is None else seed + i,
                                    on_piece=(lambda t, lp, i=i: on_piece(i, t, lp)) if on_piece else None, **kwargs))
        return jobs

    def reply(self, job) -> Reply:
        """Wait for ``job`` (running queued work on this thread when no driver runs) and return its reply."""
        self.batcher.wait(job)
        if job.error is not None:
            raise job.error
        ttft = (job.first_token - job.submitted) * 1000 if job.first_token is not None else None
        logprobs = None
        if job.logprobs is not None:
            logprobs = self.token_logprobs(job.token_logprobs[:job.text_tokens])
        params = {**job.params, "calculator_forced": job.calculator_forced} if job.calculator else job.params
        return Reply(job.text, len(job.input_ids), len(job.tokens), (job.finished - job.submitted) * 1000,
                     ttft, self.deployment.base, job.modifier, params, engine=self.engine,
                     load={**self.load_info, "batch": job.batch_size}, finish_reason=job.finish_reason or "stop",
                     logprobs=logprobs)

    def generate(self, prompt: str, *, modifier: Artifact | None = None, system: str | None = None,
                 max_tokens: int = 256, temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None,
                 on_text: Callable[[str], None] | None = None, messages: list[dict] | None = None,
                 raw: bool = False, max_prompt_tokens: int | None = None, stop: tuple[str, ...] | list[str] = (),
                 logprobs: int | None = None, depth: str | int | None = None, calculator: bool | None = None) -> Reply:
        """One request, batched with whatever else is waiting; blocks until its own row is finished."""
        return self.reply(self.submit(prompt, modifier=modifier, system=system, max_tokens=max_tokens,
                                      temperature=temperature, top_p=top_p, seed=seed, on_text=on_text,
                                      messages=messages, raw=raw, max_prompt_tokens=max_prompt_tokens, stop=stop,
                                      logprobs=logprobs, depth=depth, calculator=calculator))

    def token_logprobs(self, raw: list[tuple]) -> list[dict]:
        """``(id, logprob, [(id, logprob)])`` per token -> OpenAI's ``{token, logprob, bytes, top_logprobs}``."""
        def one(token: int, logprob: float) -> dict:
            text, data = self._token_text(token)
            return {"token": text, "logprob": logprob, "bytes": data}

        return [{**one(t, lp), "top_logprobs": [one(u, ulp) for u, ulp in top]} for t, lp, top in raw]

    def _token_text(self, token: int) -> tuple[str, list[int]]:
        """A token's text and its bytes; with a byte-level BPE tokenizer the bytes come from the token's symbols,
        so a token holding part of a UTF-8 character still has its true bytes."""
        if not hasattr(self, "_token_cache"):
            # the ``tokenizers`` backend: transformers' fast tokenizer or the llama.cpp engine's ChatTokenizer
            backend = getattr(self.tokenizer, "backend_tokenizer", None) or getattr(self.tokenizer, "backend", None)
            self._token_backend = backend
            self._token_cache: dict[int, tuple[str, list[int]]] = {}
            self._bytes_of = _byte_decoder() if backend is not None and _is_byte_level(backend) else None
            self._special = {i for i, t in backend.get_added_tokens_decoder().items() if t.special} \
                if backend is not None else set()
        if token not in self._token_cache:
            text = self.tokenizer.decode([token])
            symbols = self._token_backend.id_to_token(token) if self._token_backend is not None else None
            if self._bytes_of is not None and token not in self._special and symbols and all(
                    c in self._bytes_of for c in symbols):
                data = [self._bytes_of[c] for c in symbols]
            else:
                data = list(text.encode("utf-8"))
            self._token_cache[token] = (text, data)
        return self._token_cache[token]

    def log(self, reply: Reply, prompt: str, *, client: str) -> int:
        reply.log_id = self.store.log_request(
            base_id=reply.base.id, modifier_id=reply.modifier.id if reply.modifier else None, engine=reply.engine,
            client=client, prompt=prompt, response=reply.text, tokens_in=reply.tokens_in, tokens_out=reply.tokens_out,
            latency_ms=reply.latency_ms, ttft_ms=reply.ttft_ms,
            params={**reply.params, "batch": reply.load.get("batch"), **({"route": reply.route} if reply.route else {})})
        return reply.log_id

    def route(self, prompt: str):
        """``--modifier auto``: the deployed router of this engine's base chooses for ``prompt`` among the modifiers
        this engine has loaded (falling back past refused ones); the router is loaded once per process.
        Returns a ``router.serving.Route``; raises ``BadInput`` when no router is deployed on the base."""
        from llora_cli.router.serving import DeployedRouter

        # the catalog is asked which router is deployed on every request (a retired router stops routing at once);
        # its files are loaded once per process (router/serving.py)
        router = DeployedRouter.for_base(self.store, self.deployment.base)
        return router.route(prompt, list(self.adapters.values()), refused=self.refused)


def _last_user(messages: list[dict] | None) -> str:
    """The last user message's text (what a router reads), or ""."""
    for m in reversed(messages or []):
        if m.get("role") == "user" and isinstance(m.get("content"), str):
            return m["content"]
    return ""
