"""`llora serve`: an OpenAI-compatible HTTP API over the deployment (FastAPI + uvicorn).

The base is loaded once; every deployed modifier is attached once as a PEFT adapter and chosen per request
by the request's ``model`` ("BASE" or "BASE:MODIFIER"); switching costs no reload. Before each request the
deployment is re-read from the catalog, so deploying or retiring a modifier takes effect without a restart.
Concurrent requests are batched into shared forward passes, modifiers mixed per row (batching.py); every
request is logged.
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
            self.deployment = dep
            return dep

    def models(self) -> list[dict]:
        dep = self.sync()
        base = dep.base
        created = int(base.created_at.timestamp()) if base.created_at else 0
        rows = [{"id": base.name, "object": "model", "created": created, "owned_by": "llora",
                 "llora": {"artifact_id": base.id, "kind": base.kind, "engine": self.engine,
                           "modifier": None}}]
        for m in dep.modifiers:
            if m.id in self.runtime.refused:  # deployed, but this engine cannot run it (e.g. DoRA on llama.cpp)
                continue
            rows.append({"id": f"{base.name}:{m.name}", "object": "model", "created": created, "owned_by": "llora",
                         "llora": {"artifact_id": m.id, "kind": "modifier", "domain": m.domain,
                                   "engine": self.engine, "base": base.id}})
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
        for m in dep.modifiers:
            if mod_name in (m.name, m.id, m.domain):
                return m
        raise NotFound(f"modifier '{mod_name}' is not deployed on '{dep.base.name}'")


def _error(status: int, message: str, kind: str, code: str | None = None):
    from fastapi.responses import JSONResponse

    return JSONResponse(status_code=status, content={"error": {"message": message, "type": kind, "param": None,
                                                               "code": code}})


def create_app(served: Served, *, api_key: str | None = None, limits: Limits = Limits()):
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import StreamingResponse
    from pydantic import BaseModel, ConfigDict, Field

    app = FastAPI(title="llora", docs_url=None, redoc_url=None, openapi_url=None)

    class ChatMessage(BaseModel):
        role: str
        content: str

    class Common(BaseModel):
        model_config = ConfigDict(extra="ignore")
        model: str
        max_tokens: int | None = Field(default=None, ge=1)
        max_completion_tokens: int | None = Field(default=None, ge=1)
        temperature: float = Field(default=0.0, ge=0.0, le=2.0)
        top_p: float = Field(default=1.0, gt=0.0, le=1.0)
        seed: int | None = None
        stream: bool = False

    class ChatBody(Common):
        messages: list[ChatMessage] = Field(min_length=1)

    class CompletionBody(Common):
        prompt: str

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

    @app.exception_handler(LloraError)
    async def llora_error(request: Request, exc: LloraError):
        status = 404 if isinstance(exc, NotFound) else 400 if isinstance(exc, (BadInput, RuleViolation)) else 500
        kind = "not_found_error" if status == 404 else "invalid_request_error" if status == 400 else "server_error"
        return _error(status, str(exc), kind, "model_not_found" if status == 404 else None)

    @app.get("/health")
    def health():
        dep = served.sync()
        return {"status": "ok", "base": {"id": dep.base.id, "name": dep.base.name},
                "modifiers": [m.name for m in dep.modifiers if m.id not in served.runtime.refused],
                "engine": served.engine}

    @app.get("/v1/models")
    def models():
        return {"object": "list", "data": served.models()}

    def handle(request: Request, body: Common, *, messages: list[dict] | None, prompt: str, kind: str):
        modifier = served.pick(body.model)
        max_tokens = body.max_completion_tokens or body.max_tokens or 256
        if max_tokens > limits.max_tokens:
            raise BadInput(f"max_tokens {max_tokens} is over this server's limit of {limits.max_tokens}")
        client = request.client.host if request.client else "unknown"
        rid = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        log_prompt = json.dumps(messages) if messages is not None else prompt
        kwargs = dict(modifier=modifier, max_tokens=max_tokens, temperature=body.temperature, top_p=body.top_p,
                      seed=body.seed, messages=messages, raw=kind == "text",
                      max_prompt_tokens=limits.max_prompt_tokens)
        runtime = served.runtime

        def finish(reply) -> str:
            return "length" if reply.tokens_out >= max_tokens else "stop"

        def usage(reply) -> dict:
            return {"prompt_tokens": reply.tokens_in, "completion_tokens": reply.tokens_out,
                    "total_tokens": reply.tokens_in + reply.tokens_out}

        if not body.stream:
            reply = runtime.generate(prompt, **kwargs)
            runtime.log(reply, log_prompt, client=client)
            if kind == "chat":
                choice = {"index": 0, "message": {"role": "assistant", "content": reply.text},
                          "finish_reason": finish(reply)}
                return {"id": rid, "object": "chat.completion", "created": created, "model": body.model,
                        "choices": [choice], "usage": usage(reply)}
            return {"id": rid, "object": "text_completion", "created": created, "model": body.model,
                    "choices": [{"index": 0, "text": reply.text, "finish_reason": finish(reply)}], "usage": usage(reply)}

        pieces: queue.Queue = queue.Queue()
        outcome: dict = {}

        def work() -> None:
            try:
                reply = runtime.generate(prompt, on_text=pieces.put, **kwargs)
                runtime.log(reply, log_prompt, client=client)
                outcome["reply"] = reply
            except BaseException as e:  # reported in the stream
                outcome["error"] = e
            finally:
                pieces.put(None)

        threading.Thread(target=work, daemon=True).start()

        def chunk(delta: dict | None, text: str | None, finish_reason: str | None) -> str:
            if kind == "chat":
                c = {"index": 0, "delta": delta or {}, "finish_reason": finish_reason}
                obj = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": body.model,
                       "choices": [c]}
            else:
                obj = {"id": rid, "object": "text_completion", "created": created, "model": body.model,
                       "choices": [{"index": 0, "text": text or "", "finish_reason": finish_reason}]}
            return f"data: {json.dumps(obj)}\n\n"

        def events():
            if kind == "chat":
                yield chunk({"role": "assistant", "content": ""}, None, None)
            while True:
                piece = pieces.get()
                if piece is None:
                    break
                yield chunk({"content": piece}, piece, None)
            if "error" in outcome:
                yield f"data: {json.dumps({'error': {'message': str(outcome['error']), 'type': 'server_error'}})}\n\n"
            else:
                yield chunk({}, "", finish(outcome["reply"]))
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.post("/v1/chat/completions")
    def chat(request: Request, body: ChatBody):
        messages = [m.model_dump() for m in body.messages]
        last_user = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        return handle(request, body, messages=messages, prompt=last_user, kind="chat")

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
        served.runtime.batcher.drive(stop)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.should_exit = True
        thread.join(timeout=30)
    if not server.started:
        raise BadInput(f"could not listen on {host}:{port} (is the port in use?)", hint="pick another --port")
