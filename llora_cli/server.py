"""`llora serve`: an OpenAI-compatible HTTP API over the deployment (FastAPI + uvicorn).

The base is loaded once; every deployed modifier is attached once as a PEFT adapter and chosen per request
by the request's ``model`` ("BASE" or "BASE:MODIFIER"); switching costs no reload. Before each request the
deployment is re-read from the catalog, so deploying or retiring a modifier takes effect without a restart.
Concurrent requests are batched into shared forward passes, modifiers mixed per row (batching.py); every
request is logged.

Request fields follow one policy (docs/runtime.md, "Request fields"): a field this server implements is honoured
(``stop``, ``n``, ``logprobs``/``top_logprobs``, ``stream_options.include_usage``, text content parts, ...); an
OpenAI field that does nothing here is accepted only at its no-op value (``presence_penalty: 0``, ``tools: []``,
``user``, ...); anything else is a 400 naming the field. Nothing is silently ignored.
"""

# No `from __future__ import annotations` here: FastAPI reads the route signatures' annotations at runtime,
# and Request / the body models are local to create_app (fastapi is imported lazily).
import json
import queue
import threading
import time
import uuid
from dataclasses import dataclass

from llora_cli.engine import Deployment, resolve_deployment
from llora_store import Store
from llora_store.errors import BadInput, LloraError, NotFound, RuleViolation


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 1 << 20
    max_prompt_tokens: int = 4096
    max_tokens: int = 1024


class Served:
    """The runtime plus the catalog's current view of what is deployed on its base."""

    def __init__(self, store: Store, base_ref: str | None = None, *, max_batch: int = 8, engine: str = "auto") -> None:
        from llora_cli.engine import open_engine

        self.store = store
        deployment = resolve_deployment(store, base_ref)
        self.runtime = open_engine(store, Deployment(deployment.base, []), engine, max_batch=max_batch)
        self.engine = self.runtime.engine
        self.deployment = deployment
        self.sync_lock = threading.Lock()
        self.classifiers: dict[str, object] = {}  # artifact id -> loaded classify.model.Classifier (on first request)
        self.classifier_lock = threading.Lock()
        self.sync()

    def sync(self) -> Deployment:
        """Attach newly deployed modifiers, detach retired ones (the base stays loaded)."""
        with self.sync_lock:
            dep = resolve_deployment(self.store, self.runtime.deployment.base.id)
            wanted = {m.id: m for m in dep.modifiers}
            for mid in [*self.runtime.adapters, *self.runtime.refused]:
                if mid not in wanted:
                    self.runtime.detach(mid)
            for mid, m in wanted.items():
                if mid not in self.runtime.adapters and mid not in self.runtime.refused:
                    self.runtime.attach(m)
            deployed = {c.id for c in dep.classifiers}
            for cid in [c for c in self.classifiers if c not in deployed]:  # retired: its copy of the model is freed
                self.classifiers.pop(cid, None)
            self.deployment = dep
            return dep

    def classifier(self, model: str):
        """The request's ``model`` (``BASE:CLASSIFIER``) -> its loaded Classifier, loaded on the model thread on first
        use (a copy of the base as a sequence classifier plus the adapter and head: classify/model.py). NotFound when
        no such classifier is deployed here; BadInput when ``model`` names a generative model."""
        dep = self.sync()
        base_name, _, name = model.partition(":")
        if base_name not in (dep.base.name, dep.base.id):
            raise NotFound(f"model '{model}' is not served here; served: {', '.join(r['id'] for r in self.models())}")
        match = next((c for c in dep.classifiers if name in (c.name, c.id, c.domain)), None)
        if match is None:
            if not name or any(name in (m.name, m.id, m.domain) for m in dep.modifiers) or name == "auto":
                raise BadInput(f"model '{model}' generates text; /v1/classify takes a deployed classifier "
                               f"({', '.join(f'{dep.base.name}:{c.name}' for c in dep.classifiers) or 'none deployed'})")
            raise NotFound(f"no classifier '{name}' is deployed on '{dep.base.name}'",
                           hint="train one (llora train --task classify --kind modifier) and deploy it")
        with self.classifier_lock:
            if match.id not in self.classifiers:
                from llora_cli.classify.model import load_classifier

                self.classifiers[match.id] = self.runtime.batcher.call(lambda: load_classifier(self.store, match))
            return self.classifiers[match.id]

    def models(self) -> list[dict]:
        dep = self.sync()
        base = dep.base
        created = int(base.created_at.timestamp()) if base.created_at else 0
        rows = [{"id": base.name, "object": "model", "created": created, "owned_by": "llora",
                 "llora": {"artifact_id": base.id, "kind": base.kind, "engine": self.engine,
                           "modifier": None}}]
        from llora_cli.router.serving import find_deployed

        router = find_deployed(self.store, base)
        if router is not None:  # BASE:auto: the deployed router picks the modifier per request
            rows.append({"id": f"{base.name}:auto", "object": "model", "created": created, "owned_by": "llora",
                         "llora": {"artifact_id": router.id, "kind": "router", "engine": self.engine,
                                   "base": base.id}})
        for m in dep.modifiers:
            if m.id in self.runtime.refused:  # deployed, but this engine cannot run it (e.g. DoRA on llama.cpp)
                continue
            rows.append({"id": f"{base.name}:{m.name}", "object": "model", "created": created, "owned_by": "llora",
                         "llora": {"artifact_id": m.id, "kind": "modifier", "domain": m.domain,
                                   "engine": self.engine, "base": base.id}})
        for c in dep.classifiers:  # POST /v1/classify
            rows.append({"id": f"{base.name}:{c.name}", "object": "model", "created": created, "owned_by": "llora",
                         "llora": {"artifact_id": c.id, "kind": "classifier", "domain": c.domain,
                                   "labels": list((c.meta or {}).get("labels") or []), "base": base.id}})
        return rows

    def pick(self, model: str):
        """The request's ``model`` -> modifier (None for the base alone); unknown or undeployed: NotFound."""
        dep = self.sync()
        base_name, _, mod_name = model.partition(":")
        if base_name not in (dep.base.name, dep.base.id):
            raise NotFound(f"model '{model}' is not served here; served: "
                           f"{', '.join(r['id'] for r in self.models())}")
        if not mod_name:
            return None
        if mod_name == "auto":
            return "auto"  # chosen per request by the deployed router (handle)
        for m in dep.modifiers:
            if mod_name in (m.name, m.id, m.domain):
                return m
        if any(mod_name in (c.name, c.id, c.domain) for c in dep.classifiers):
            raise BadInput(f"'{mod_name}' is a classifier: it labels text, it does not generate it; "
                           "send the text to POST /v1/classify")
        raise NotFound(f"modifier '{mod_name}' is not deployed on '{dep.base.name}'")


MAX_CHOICES = 8
MAX_CLASSIFY_INPUTS = 256  # texts per /v1/classify request


class Unsupported(BadInput):
    """A request field this server does not implement (a 400 naming it)."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


def _any(value) -> bool:
    return True


# OpenAI fields that change nothing here: accepted only at the values that are no-ops (else a 400 with the reason)
NO_TOOLS = "this server has no tool calling"
NOOP_FIELDS: dict[str, tuple] = {
    "user": (_any, ""),  # identifiers and bookkeeping: any value is a no-op
    "metadata": (_any, ""),
    "store": (_any, ""),  # every request is in the request log anyway (llora logs list)
    "prompt_cache_key": (_any, ""),
    "safety_identifier": (_any, ""),
    "service_tier": (lambda v: v in (None, "auto", "default"), "there is one tier; use 'auto', 'default' or null"),
    "frequency_penalty": (lambda v: v in (None, 0), "penalties are not implemented; only 0 or null"),
    "presence_penalty": (lambda v: v in (None, 0), "penalties are not implemented; only 0 or null"),
    "logit_bias": (lambda v: v in (None, {}), "logit bias is not implemented; only {} or null"),
    "tools": (lambda v: not v, f"{NO_TOOLS}; only [] or null"),
    "functions": (lambda v: not v, f"{NO_TOOLS}; only [] or null"),
    "tool_choice": (lambda v: v in (None, "none", "auto"), f"{NO_TOOLS}; only 'none', 'auto' or null"),
    "function_call": (lambda v: v in (None, "none", "auto"), f"{NO_TOOLS}; only 'none', 'auto' or null"),
    "parallel_tool_calls": (_any, ""),  # no tools, so no parallel calls either way
    "response_format": (lambda v: v in (None, {"type": "text"}),
                        "structured output (JSON mode, JSON schema) is not implemented; only {'type': 'text'}"),
    "modalities": (lambda v: v in (None, ["text"]), "text only; only ['text'] or null"),
    "audio": (lambda v: v is None, "text only"),
    "prediction": (lambda v: v is None, "predicted outputs are not implemented"),
    "web_search_options": (lambda v: v is None, "there is no web search"),
    "reasoning_effort": (lambda v: v is None, "not a reasoning model setting this server has"),
    "verbosity": (lambda v: v is None, "not implemented"),
}
NOOP_COMPLETION_FIELDS: dict[str, tuple] = {
    "echo": (lambda v: v in (None, False), "echoing the prompt is not implemented; only false"),
    "best_of": (lambda v: v in (None, 1), "best_of is not implemented; only 1 (use n for several choices)"),
    "suffix": (lambda v: v in (None, ""), "insertion (suffix) is not implemented"),
    "user": (_any, ""),
    "frequency_penalty": NOOP_FIELDS["frequency_penalty"],
    "presence_penalty": NOOP_FIELDS["presence_penalty"],
    "logit_bias": NOOP_FIELDS["logit_bias"],
}
NOOP_MESSAGE_FIELDS: dict[str, tuple] = {
    "tool_calls": (lambda v: not v, f"{NO_TOOLS}; only [] or null"),
    "function_call": (lambda v: v is None, NO_TOOLS),
    "refusal": (lambda v: v is None, "only null"),
    "audio": (lambda v: v is None, "text only"),
}


def check_fields(extra: dict, table: dict[str, tuple], where: str = "") -> None:
    """Refuse (400, naming it) every extra field that is not a known no-op at a no-op value."""
    for name, value in extra.items():
        if name not in table:
            raise Unsupported(f"{where}{name}", f"unsupported field '{where}{name}': this server does not implement it")
        ok, why = table[name]
        if not ok(value):
            shown = json.dumps(value)
            shown = shown if len(shown) <= 80 else shown[:77] + "..."
            raise Unsupported(f"{where}{name}", f"unsupported field '{where}{name}' = {shown}: {why}")


def message_text(message, i: int) -> str:
    """A message's content as one string: a string, text parts joined with no separator (as OpenAI does), or
    null for an assistant message; any other part type is a 400 naming it."""
    check_fields(message.model_extra or {}, NOOP_MESSAGE_FIELDS, f"messages[{i}].")
    content = message.content
    if content is None:
        if message.role != "assistant":
            raise BadInput(f"messages[{i}].content is null; only an assistant message may have no content")
        return ""
    if isinstance(content, str):
        return content
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type")
        if kind != "text":
            raise Unsupported(f"messages[{i}].content[{j}].type",
                              f"unsupported content part type {json.dumps(kind)} in messages[{i}].content[{j}]: "
                              "this server takes text parts only")
        if not isinstance(part.get("text"), str):
            raise BadInput(f"messages[{i}].content[{j}] is a text part without a 'text' string")
        others = sorted(set(part) - {"type", "text"})
        if others:
            raise Unsupported(f"messages[{i}].content[{j}].{others[0]}",
                              f"unsupported field 'messages[{i}].content[{j}].{others[0]}' in a text part")
        texts.append(part["text"])
    return "".join(texts)


def _error(status: int, message: str, kind: str, code: str | None = None, param: str | None = None):
    from fastapi.responses import JSONResponse

    return JSONResponse(status_code=status, content={"error": {"message": message, "type": kind, "param": param,
                                                               "code": code}})


def create_app(served: Served, *, api_key: str | None = None, limits: Limits = Limits()):
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import StreamingResponse
    from pydantic import BaseModel, ConfigDict, Field
    from starlette.exceptions import HTTPException as StarletteHTTPException

    # The OpenAPI schema at /openapi.json (no docs UI): clients can be generated from it, and the fuzz test
    # (tests/ml/test_serve_fuzz.py, schemathesis) draws its requests from it.
    app = FastAPI(title="llora", docs_url=None, redoc_url=None, openapi_url="/openapi.json")

    class ChatMessage(BaseModel):
        model_config = ConfigDict(extra="allow")  # extras: checked against NOOP_MESSAGE_FIELDS
        role: str
        content: str | list[dict] | None = None

    class StreamOptions(BaseModel):
        model_config = ConfigDict(extra="allow")
        include_usage: bool | None = None

    class Common(BaseModel):
        model_config = ConfigDict(extra="allow")  # extras: checked against the no-op tables, else a 400
        model: str
        max_tokens: int | None = Field(default=None, ge=1)
        temperature: float | None = Field(default=None, ge=0.0, le=2.0)
        top_p: float | None = Field(default=None, gt=0.0, le=1.0)
        seed: int | None = None
        stream: bool | None = False
        stream_options: StreamOptions | None = None
        stop: str | list[str] | None = None
        n: int | None = Field(default=None, ge=1)
        # llora's extension: dynamic depth, "full", "auto" (the deployed router's layer set) or a number of layers
        depth: str | int | None = Field(default=None, description="llora: full, auto or K decoder layers replaced "
                                        "by their layer adapters (transformers engine; llama.cpp runs full depth)")
        # llora's extension: calculator-assisted decoding (llora_cli.calculator)
        calculator: bool | None = Field(default=None, description="llora: compute the result of each arithmetic "
                                        "step the model writes ('a op b =') instead of generating it; null: the "
                                        "answering modifier's serving default (llora deploy --calculator)")

    class ChatBody(Common):
        messages: list[ChatMessage] = Field(min_length=1)
        max_completion_tokens: int | None = Field(default=None, ge=1)
        logprobs: bool | None = None
        top_logprobs: int | None = Field(default=None, ge=0, le=20)

    class CompletionBody(Common):
        prompt: str
        logprobs: int | None = None

    class ClassifyBody(BaseModel):  # vLLM's /classify request (also SGLang's): model + one text or a list
        model_config = ConfigDict(extra="forbid")
        model: str = Field(description="BASE:CLASSIFIER, a classifier modifier deployed on the served base")
        input: str | list[str] = Field(description=f"a text, or up to {MAX_CLASSIFY_INPUTS} texts")
        user: str | None = None

    @app.middleware("http")
    async def guard(request: Request, call_next):
        if api_key is not None and request.url.path.startswith("/v1/"):
            if request.headers.get("authorization") != f"Bearer {api_key}":
                return _error(401, "missing or wrong API key (Authorization: Bearer KEY)", "invalid_request_error",
                              "invalid_api_key")
        size = request.headers.get("content-length")
        if size is not None and size.isdigit() and int(size) > limits.max_body_bytes:
            return _error(413, f"request body over {limits.max_body_bytes} bytes", "invalid_request_error")
        return await call_next(request)

    @app.exception_handler(RequestValidationError)
    async def bad_body(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return _error(400, f"invalid request body: {where or 'body'}: {first.get('msg', 'malformed')}",
                      "invalid_request_error")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        # FastAPI's own refusals (a body that is not JSON, an unknown route, a wrong method) in the OpenAI shape too
        detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        if exc.status_code == 400 and "parsing the body" in detail:
            detail = "invalid request body: not valid JSON (send a JSON object with Content-Type: application/json)"
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return _error(exc.status_code, detail, kind)

    @app.exception_handler(LloraError)
    async def llora_error(request: Request, exc: LloraError):
        status = 404 if isinstance(exc, NotFound) else 400 if isinstance(exc, (BadInput, RuleViolation)) else 500
        kind = "not_found_error" if status == 404 else "invalid_request_error" if status == 400 else "server_error"
        code = "model_not_found" if status == 404 else "unsupported_parameter" if isinstance(exc, Unsupported) \
            else None
        return _error(status, str(exc), kind, code, getattr(exc, "param", None))

    @app.exception_handler(Exception)
    async def engine_error(request: Request, exc: Exception):  # an OpenAI-shaped 500, not a plain-text one
        return _error(500, f"{type(exc).__name__}: {exc}", "server_error")

    @app.get("/health")
    def health():
        dep = served.sync()
        return {"status": "ok", "base": {"id": dep.base.id, "name": dep.base.name},
                "modifiers": [m.name for m in dep.modifiers if m.id not in served.runtime.refused],
                "classifiers": [c.name for c in dep.classifiers],
                "engine": served.engine,
                # jobs queued for the model thread, not yet taken: 0 when idle (the load test checks none leak)
                "pending_jobs": len(served.runtime.batcher.pending)}

    @app.get("/v1/models")
    def models():
        return {"object": "list", "data": served.models()}

    def options(body: Common, kind: str) -> dict:
        """The request's generation settings, every field checked (module doc: nothing silently ignored)."""
        check_fields(body.model_extra or {}, NOOP_FIELDS if kind == "chat" else NOOP_COMPLETION_FIELDS)
        n = body.n or 1
        if n > MAX_CHOICES:
            raise Unsupported("n", f"n = {n} is over this server's limit of {MAX_CHOICES} choices")
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        if len(stop) > 4 or not all(stop):
            raise BadInput(f"stop takes up to 4 non-empty strings, got {json.dumps(body.stop)}")
        usage = False
        if body.stream_options is not None:
            if not body.stream:
                raise BadInput("stream_options is only allowed with stream: true")
            check_fields(body.stream_options.model_extra or {},
                         {"include_obfuscation": (lambda v: v in (None, False), "not implemented; only false")},
                         "stream_options.")
            usage = bool(body.stream_options.include_usage)
        logprobs = None
        if kind == "chat":
            if body.top_logprobs is not None and not body.logprobs:
                raise BadInput("top_logprobs needs logprobs: true")
            if body.logprobs:
                logprobs = body.top_logprobs or 0
        elif body.logprobs is not None:
            raise Unsupported("logprobs", "unsupported field 'logprobs' on /v1/completions (the legacy format): "
                                          "use /v1/chat/completions with logprobs: true and top_logprobs")
        max_tokens = (body.max_completion_tokens if kind == "chat" else None) or body.max_tokens \
            or min(256, limits.max_tokens)
        if max_tokens > limits.max_tokens:
            raise BadInput(f"max_tokens {max_tokens} is over this server's limit of {limits.max_tokens}")
        return dict(n=n, stop=stop, usage=usage, logprobs=logprobs, max_tokens=max_tokens,
                    temperature=body.temperature if body.temperature is not None else 0.0,
                    top_p=body.top_p if body.top_p is not None else 1.0)

    def handle(request: Request, body: Common, *, messages: list[dict] | None, prompt: str, kind: str):
        opts = options(body, kind)
        modifier = served.pick(body.model)
        route = None
        if modifier == "auto":  # BASE:auto: the deployed router picks the modifier for this prompt
            route = served.runtime.route(prompt)
            modifier = route.modifier
        n, logprobs = opts["n"], opts["logprobs"]
        client = request.client.host if request.client else "unknown"
        rid = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        log_prompt = json.dumps(messages) if messages is not None else prompt
        kwargs = dict(modifier=modifier, max_tokens=opts["max_tokens"], temperature=opts["temperature"],
                      top_p=opts["top_p"], seed=body.seed, messages=messages, raw=kind == "text",
                      max_prompt_tokens=limits.max_prompt_tokens, stop=opts["stop"], logprobs=logprobs,
                      depth=body.depth, calculator=body.calculator)
        runtime = served.runtime

        def usage(replies) -> dict:
            out = sum(r.tokens_out for r in replies)  # the prompt is counted once, as OpenAI does
            return {"prompt_tokens": replies[0].tokens_in, "completion_tokens": out,
                    "total_tokens": replies[0].tokens_in + out}

        def lp(entries):
            return {"content": entries, "refusal": None} if logprobs is not None else None

        if not body.stream:
            jobs = runtime.submit_choices(prompt, n=n, **kwargs)  # a bad request is a 400 before anything runs
            replies = [runtime.reply(job) for job in jobs]
            for reply in replies:
                reply.route = route.to_json() if route else None
                runtime.log(reply, log_prompt, client=client)
            if kind == "chat":
                choices = [{"index": i, "message": {"role": "assistant", "content": r.text},
                            "logprobs": lp(r.logprobs), "finish_reason": r.finish_reason}
                           for i, r in enumerate(replies)]
                return {"id": rid, "object": "chat.completion", "created": created, "model": body.model,
                        "choices": choices, "usage": usage(replies)}
            choices = [{"index": i, "text": r.text, "logprobs": None, "finish_reason": r.finish_reason}
                       for i, r in enumerate(replies)]
            return {"id": rid, "object": "text_completion", "created": created, "model": body.model,
                    "choices": choices, "usage": usage(replies)}

        pieces: queue.Queue = queue.Queue()
        outcome: dict = {}
        jobs = runtime.submit_choices(prompt, n=n, on_piece=lambda i, text, entries: pieces.put((i, text, entries)),
                                      **kwargs)

        def work() -> None:
            try:
                replies = [runtime.reply(job) for job in jobs]
                for reply in replies:
                    reply.route = route.to_json() if route else None
                    runtime.log(reply, log_prompt, client=client)
                outcome["replies"] = replies
            except BaseException as e:  # reported in the stream
                outcome["error"] = e
            finally:
                pieces.put(None)

        threading.Thread(target=work, daemon=True).start()

        def chunk(i: int, text: str | None, finish_reason: str | None, entries=None, role: bool = False) -> str:
            if kind == "chat":
                delta = {"role": "assistant", "content": ""} if role else {} if text is None else {"content": text}
                c = {"index": i, "delta": delta, "logprobs": lp(entries) if entries else None,
                     "finish_reason": finish_reason}
                obj = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": body.model,
                       "choices": [c]}
            else:
                obj = {"id": rid, "object": "text_completion", "created": created, "model": body.model,
                       "choices": [{"index": i, "text": text or "", "logprobs": None, "finish_reason": finish_reason}]}
            if opts["usage"]:
                obj["usage"] = None  # as OpenAI: null on every chunk but the last
            return f"data: {json.dumps(obj)}\n\n"

        def events():
            if kind == "chat":
                for i in range(n):
                    yield chunk(i, None, None, role=True)
            while True:
                item = pieces.get()
                if item is None:
                    break
                i, text, entries = item
                yield chunk(i, text, None, entries)
            if "error" in outcome:
                yield f"data: {json.dumps({'error': {'message': str(outcome['error']), 'type': 'server_error'}})}\n\n"
            else:
                replies = outcome["replies"]
                for i, reply in enumerate(replies):
                    yield chunk(i, None if kind == "chat" else "", reply.finish_reason)
                if opts["usage"]:
                    last = {"id": rid, "object": "chat.completion.chunk" if kind == "chat" else "text_completion",
                            "created": created, "model": body.model, "choices": [], "usage": usage(replies)}
                    yield f"data: {json.dumps(last)}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.post("/v1/chat/completions")
    def chat(request: Request, body: ChatBody):
        messages = [{"role": m.role, "content": message_text(m, i)} for i, m in enumerate(body.messages)]
        last_user = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        return handle(request, body, messages=messages, prompt=last_user, kind="chat")

    @app.post("/v1/classify")
    def classify(request: Request, body: ClassifyBody):
        """Label probabilities of ``input`` by a deployed classifier, in vLLM's response shape: ``data[i]`` =
        ``{index, label, probs (label-map order), num_classes}``; llora adds ``labels`` (the label map)."""
        texts = [body.input] if isinstance(body.input, str) else list(body.input)
        if not texts or len(texts) > MAX_CLASSIFY_INPUTS:
            raise BadInput(f"input takes 1 to {MAX_CLASSIFY_INPUTS} texts, got {len(texts)}")
        for i, t in enumerate(texts):
            if not t.strip():
                raise BadInput(f"input[{i}] is empty; a classifier needs some text to read")
        start = time.perf_counter()
        clf = served.classifier(body.model)
        counts: list[int] = []  # filled on the model thread: the tokenizer is used from that thread only
        probs = served.runtime.batcher.call(lambda: clf.probabilities(texts, counts=counts))
        data = [{"index": i, "label": clf.labels[int(p.argmax())], "probs": [round(float(x), 7) for x in p],
                 "num_classes": len(clf.labels)} for i, p in enumerate(probs)]
        latency = (time.perf_counter() - start) * 1000
        served.store.log_request(
            base_id=served.deployment.base.id, modifier_id=clf.artifact.id, engine="transformers",
            client=request.client.host if request.client else "unknown", prompt=json.dumps(texts),
            response=json.dumps([d["label"] for d in data]), tokens_in=sum(counts), tokens_out=0,
            latency_ms=latency, ttft_ms=None, params={"endpoint": "classify"})
        return {"id": f"classify-{uuid.uuid4().hex[:24]}", "object": "list", "created": int(time.time()),
                "model": body.model, "data": data, "labels": clf.labels,
                "usage": {"prompt_tokens": sum(counts), "total_tokens": sum(counts), "completion_tokens": 0}}

    @app.post("/v1/completions")
    def completions(request: Request, body: CompletionBody):
        if not body.prompt.strip():
            raise BadInput("the prompt is empty")
        return handle(request, body, messages=None, prompt=body.prompt, kind="text")

    return app


def serve(store: Store, *, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          base_ref: str | None = None, limits: Limits = Limits(), max_batch: int = 8, engine: str = "auto",
          on_ready=None) -> None:
    """Load the deployment, serve HTTP from a background thread and run the model on this (the main) thread:
    all torch work stays on the thread that loaded the model (batching.py says why)."""
    import signal

    import uvicorn

    served = Served(store, base_ref, max_batch=max_batch, engine=engine)
    app = create_app(served, api_key=api_key, limits=limits)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    stop = threading.Event()

    def http() -> None:
        try:
            server.run()
        finally:
            stop.set()

    thread = threading.Thread(target=http, name="llora-http", daemon=True)
    thread.start()
    if on_ready:
        on_ready(served)
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        from llora_cli.engine.heap import Trimmer

        served.runtime.batcher.drive(stop, trimmer=Trimmer())
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.should_exit = True
        thread.join(timeout=30)
    if not server.started:
        raise BadInput(f"could not listen on {host}:{port} (is the port in use?)", hint="pick another --port")
