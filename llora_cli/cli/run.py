"""`llora run` (one request on the deployment, streamed) and `llora logs list` (the request log)."""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from llora_cli.cli.options import JsonOpt, err, open_store, out, print_json


def run(
    prompt: Annotated[Optional[str], typer.Argument(help="The prompt; read from stdin when not given.")] = None,
    base: Annotated[Optional[str], typer.Option(help="Base, merged or compressed model to run "
                                                     "(default: the single deployed base).")] = None,
    modifier: Annotated[Optional[str], typer.Option(help="Deployed modifier (name, id or domain) or 'none'; "
                                                         "'auto' needs a deployed router.")] = None,
    system: Annotated[Optional[str], typer.Option(help="System message (chat models).")] = None,
    max_tokens: Annotated[int, typer.Option(help="Most tokens to generate.")] = 256,
    temperature: Annotated[float, typer.Option(help="0 = greedy.")] = 0.0,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling mass (with --temperature > 0).")] = 1.0,
    seed: Annotated[Optional[int], typer.Option(help="Sampling seed.")] = None,
    engine: Annotated[str, typer.Option(help="auto (llama.cpp for a GGUF base when installed), llamacpp or "
                                             "transformers.")] = "auto",
    depth: Annotated[Optional[str], typer.Option(
        help="Dynamic depth: full, auto (the deployed router chooses which decoder layers its layer adapters "
             "replace) or K (the router's K best layers). Transformers engine; llama.cpp runs full depth.")] = None,
    calculator: Annotated[Optional[bool], typer.Option(
        "--calculator/--no-calculator", help="Compute the result of each arithmetic step the model writes "
        "('a op b =') instead of generating it (Cobbe et al. 2021); for reasoning modifiers. Needs a tokenizer that "
        "writes one digit per token (SmolLM2's does); llora serve takes the request field \"calculator\". "
        "Default: the modifier's serving default (llora deploy MODIFIER --calculator), else off.")] = None,
    json_: JsonOpt = False,
) -> None:
    """Answer one prompt with the deployed base, or with one of its deployed modifiers.

    Tokens are streamed to stdout as they are generated (with --json, the full
    record is printed at the end). Every request is logged: llora logs list.

    Example: echo "Set a timer for 5 minutes" | llora run --modifier automation
    """
    from llora_cli.engine import run as run_request

    if prompt is None:
        prompt = "" if sys.stdin.isatty() else sys.stdin.read()
    stream = None if json_ else (lambda piece: (sys.stdout.write(piece), sys.stdout.flush()))
    reply = run_request(open_store(), prompt, base_ref=base, modifier_ref=modifier, system=system,
                        max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed, on_text=stream,
                        engine=engine, depth=depth, calculator=calculator)
    if json_:
        print_json(reply.to_json())
        return
    sys.stdout.write("\n")
    from llora_cli.fastrun import summary

    # one plain line: Rich's console costs more to import (~0.1 s) than llama.cpp takes to answer a short prompt
    typer.secho(summary(reply), err=True, dim=True)


logs_app = typer.Typer(help="The request log of run and serve: list.", no_args_is_help=True)


@logs_app.command("list")
def logs_list(
    modifier: Annotated[Optional[str], typer.Option(help="Only requests to this modifier ('none': the base "
                                                         "alone).")] = None,
    base: Annotated[Optional[str], typer.Option(help="Only requests to this base.")] = None,
    limit: Annotated[int, typer.Option(help="Newest N requests.")] = 50,
    json_: JsonOpt = False,
) -> None:
    """List logged requests, newest first: time, base, modifier, tokens, latency, prompt and response.

    Example: llora logs list --modifier automation --json
    """
    from llora_store.errors import BadInput

    if limit < 1:
        raise BadInput("--limit must be at least 1")
    rows = open_store().request_logs(modifier=modifier, base=base, limit=limit)
    if json_:
        print_json(rows)
        return
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"requests ({len(rows)})", title_justify="left")
    for col in ("#", "at", "base", "modifier", "client", "in", "out", "ms", "prompt", "response"):
        table.add_column(col)
    for r in rows:
        route = (r.get("params") or {}).get("route")
        chosen = r["modifier"]["name"] if r["modifier"] else "-"
        if route:  # --modifier auto: the router's choice, its probability and time
            chosen = f"auto -> {chosen} (p={route['probability']:.2f}, {route['router_ms']:.0f} ms" + \
                     (", fallback)" if route.get("fallback") else ")")
        if (r.get("params") or {}).get("calculator"):  # calculator-assisted: how many tokens it changed
            chosen += f" +calc({r['params'].get('calculator_forced', '?')})"
        table.add_row(str(r["id"]), r["at"][:19], r["base"]["name"], chosen,
                      r["client"], str(r["tokens_in"]), str(r["tokens_out"]), f"{r['latency_ms']:.0f}",
                      escape(r["prompt"][:40]), escape(r["response"][:60]))
    out().print(table)


def serve(
    host: Annotated[str, typer.Option(help="Address to bind (loopback by default).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    api_key: Annotated[Optional[str], typer.Option(help="Require 'Authorization: Bearer KEY' on /v1/*.")] = None,
    base: Annotated[Optional[str], typer.Option(help="Base to serve (default: the single deployed base).")] = None,
    max_tokens: Annotated[int, typer.Option(help="Largest max_tokens a request may ask for.")] = 1024,
    max_prompt_tokens: Annotated[int, typer.Option(help="Longest prompt accepted, in tokens.")] = 4096,
    max_batch: Annotated[int, typer.Option(help="Most concurrent requests sharing one forward pass (1: one at a time).")] = 8,
    engine: Annotated[str, typer.Option(help="auto (llama.cpp for a GGUF base when installed), llamacpp or "
                                             "transformers.")] = "auto",
) -> None:
    """Serve the deployment over an OpenAI-compatible API (/v1/models, /v1/chat/completions, /v1/completions).

    The base is loaded once and every deployed modifier is attached once; a request's
    "model" is BASE or BASE:MODIFIER. Deploying or retiring a modifier takes effect
    without a restart. Concurrent requests share forward passes (up to --max-batch),
    modifiers mixed per row. Every request is logged (llora logs list).

    Example: llora serve --port 8000 --api-key secret
    """
    from llora_cli.server import Limits
    from llora_cli.server import serve as run_server
    from llora_store.errors import BadInput

    if not 0 < port < 65536:
        raise BadInput(f"--port must be 1-65535, got {port}")
    if max_tokens < 1 or max_prompt_tokens < 1:
        raise BadInput("--max-tokens and --max-prompt-tokens must be at least 1")
    if not 1 <= max_batch <= 256:
        raise BadInput(f"--max-batch must be 1-256, got {max_batch}")

    def ready(served) -> None:
        dep = served.deployment
        err().print(f"serving {dep.base.kind} '{dep.base.name}' ({served.engine} engine) with "
                    f"{len(dep.modifiers) - len(served.runtime.refused)} modifier(s) on "
                    f"http://{host}:{port}/v1 (models: {', '.join(m['id'] for m in served.models())})")

    run_server(open_store(), host=host, port=port, api_key=api_key, base_ref=base,
               limits=Limits(max_tokens=max_tokens, max_prompt_tokens=max_prompt_tokens), max_batch=max_batch,
               engine=engine, on_ready=ready)
