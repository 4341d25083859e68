"""`llora run` on the llama.cpp engine without the CLI framework and the catalog's ORM (issue 11, item 12).

A `llora run` process spent ~0.75 s importing SQLAlchemy + SQLModel and ~0.1 s importing Typer before it read one
row: more than llama.cpp needs to load SmolLM2 and answer a short prompt. The console entry (cli/entry.py) calls
``main(argv)`` first. When the command line is a plain `llora run` this path handles, it answers with the same code
as the full command, ``engine.run`` on the llama.cpp engine, given ``llora_store.lite``'s catalog view (stdlib
sqlite3) instead of ``Store``: the same deployment resolution and rules, the same tokens, output and request-log
row. Otherwise it returns None and the full CLI runs; so does every case it declines:

- options other than the prompt, ``--modifier NAME|none|auto`` (auto: the deployed router; its serving code
  reads the catalog through the same view), ``--system``, ``--max-tokens``, ``--temperature``,
  ``--top-p``, ``--seed``, ``--engine auto|llamacpp``, ``--json``, ``--calculator``, ``--no-calculator``
  (e.g. ``--base``, ``--depth``, ``--help``,
  the prompt on stdin, a value that does not parse);
- PostgreSQL, no catalog, another schema version (``lite.open_catalog``);
- a deployment the llama.cpp engine would not run (not a GGUF base, llama-cpp-python missing), or a file still
  to be derived (tokenizer files, a modifier's LoRA GGUF: ``NeedsCatalog``);
- any error before the first token is written (a bad value, no deployment, R6): the full command runs and
  reports it in its own words. An error after output has started is reported here, exit code 1.

With ``LLORA_DEBUG=1`` the reason for declining is printed to stderr.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

VALUE_OPTIONS = {"--modifier": "modifier", "--system": "system", "--max-tokens": "max_tokens",
                 "--temperature": "temperature", "--top-p": "top_p", "--seed": "seed", "--engine": "engine"}
CONVERT = {"max_tokens": int, "temperature": float, "top_p": float, "seed": int}


@dataclass
class Request:
    prompt: str
    modifier: str | None = None
    system: str | None = None
    max_tokens: int = 256  # cli/run.py's defaults (tests/cli/test_fastrun.py checks they agree)
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    engine: str = "auto"
    json: bool = False
    calculator: bool | None = None  # None: the modifier's serving default


def parse(args: list[str]) -> Request | None:
    """``args`` (after the program name) as a `llora run` this path handles, else None."""
    if not args or args[0] != "run":
        return None
    values: dict[str, object] = {}
    prompt: list[str] = []
    i, rest = 1, False
    while i < len(args):
        a = args[i]
        if rest or not a.startswith("-") or a == "-":
            prompt.append(a)
        elif a == "--":
            rest = True
        elif a == "--json":
            values["json"] = True
        elif a in ("--calculator", "--no-calculator"):
            values["calculator"] = a == "--calculator"
        else:
            name, eq, value = a.partition("=")
            if name not in VALUE_OPTIONS:
                return None
            if not eq:
                i += 1
                if i >= len(args):
                    return None
                value = args[i]
            key = VALUE_OPTIONS[name]
            try:
                values[key] = CONVERT[key](value) if key in CONVERT else value
            except ValueError:
                return None
        i += 1
    if len(prompt) != 1 or values.get("engine", "auto") not in ("auto", "llamacpp"):
        return None
    return Request(prompt[0], **values)


def summary(reply) -> str:
    """The line `llora run` prints to stderr after the answer (both paths)."""
    m = f" + {reply.modifier.name}" if reply.modifier else ""
    if reply.route:  # --modifier auto: what the router chose, how sure it was, what it cost
        r = reply.route
        m = f" + auto -> {r['modifier'] or 'none'} (p={r['probability']:.2f}, router {r['router_ms']:.0f} ms" + \
            (f"; {r['fallback']})" if r.get("fallback") else ")")
    return (f"{reply.base.name}{m} ({reply.engine}): {reply.tokens_in} tokens in, {reply.tokens_out} out, "
            f"first token {reply.ttft_ms or 0:.0f} ms, {reply.latency_ms:.0f} ms; logged as #{reply.log_id}")


def _decline(why: str) -> None:
    if os.environ.get("LLORA_DEBUG", "") not in ("", "0"):  # cli.options.debug()
        sys.stderr.write(f"llora run: full path ({why})\n")


def main(argv: list[str]) -> int | None:
    """Answer `llora run` here and return its exit code, or None for the full CLI (see the module docstring)."""
    req = parse(argv[1:])
    if req is None:
        return None
    from llora_store import lite

    catalog = lite.open_catalog()
    if catalog is None:
        _decline("not a current SQLite catalog")
        return None
    written = False

    def stream(piece: str) -> None:
        nonlocal written
        written = True
        sys.stdout.write(piece)
        sys.stdout.flush()

    try:
        from llora_cli import engine, tokenizer

        deployment = engine.resolve_deployment(catalog)
        if engine.choose(catalog, deployment.base, req.engine) != "llamacpp":
            _decline("not the llama.cpp engine")
            return None
        if tokenizer.files_dir(catalog.path_of(deployment.base.id)) is None:
            _decline("tokenizer files not derived yet")
            return None
        reply = engine.run(catalog, req.prompt, modifier_ref=req.modifier, system=req.system,
                           max_tokens=req.max_tokens, temperature=req.temperature, top_p=req.top_p, seed=req.seed,
                           on_text=None if req.json else stream, engine="llamacpp", calculator=req.calculator)
    except Exception as e:  # noqa: BLE001 - before any output the full command decides and explains
        if not written:
            _decline(f"{type(e).__name__}: {e}")
            return None
        sys.stdout.write("\n")
        sys.stderr.write(f"error: {e}\n")
        return 1
    finally:
        catalog.close()
    if req.json:
        import json

        sys.stdout.write(json.dumps(reply.to_json(), indent=2 if sys.stdout.isatty() else None, default=str) + "\n")
        return 0
    sys.stdout.write("\n")
    dim = sys.stderr.isatty() and not os.environ.get("NO_COLOR")
    sys.stderr.write(("\x1b[2m" if dim else "") + summary(reply) + ("\x1b[0m" if dim else "") + "\n")
    return 0
