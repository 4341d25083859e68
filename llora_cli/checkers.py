"""Checkers for `llora eval --task T`: score a model's reply to each row against the row's expected answer.

Tasks: ``exact``, ``contains``, ``regex:PATTERN`` (generic, for any user chat/alpaca JSONL) and
``reasoning``, ``code``, ``automation``, ``instruct`` (the task checkers of ``llora_cli.tasks``).

Where the expected answer of a row comes from:

- generic tasks: the row's ``"answer"`` key when it has one (a string; numbers are compared as their
  text), else the reference reply: the final assistant message of a chat row, ``output`` of an alpaca
  row. When any row of a file has ``"answer"``, every row must (a half-annotated file is refused rather
  than silently scored against two kinds of reference). Plain-text rows have no answer: refused.
- task checkers: the row's ``"check"`` (the format ``llora data make`` writes) when present; else
  reasoning takes ``"answer"`` (an integer) or the number the reasoning checker would read from the
  reference reply ("answer is N", else the last number); automation takes ``"answer"`` (a JSON object
  or its text; null for "no tool fits") or the first JSON object of the reference reply (a reply with
  the task's no-tool sentence and no JSON means no call); instruct takes ``"answer"`` or the
  reference reply; code needs ``"check": {"function", "tests"}`` (hidden tests cannot be derived).

The prompt is the row's messages up to (not including) the final assistant message; the model never
sees the expected answer. A row without an expected answer is a usage error naming its line.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass

from llora_store.errors import BadInput

GENERIC = ("exact", "contains", "regex:PATTERN")
TASK_CHECKERS = ("reasoning", "code", "automation", "instruct")
MAX_NEW_TOKENS = {"reasoning": 80, "automation": 64, "code": 64, "instruct": 40,
                  "exact": 64, "contains": 64, "regex": 64}


@dataclass(frozen=True)
class Checker:
    """A parsed ``--task``: its name as given, ``check(row, output) -> bool`` over prepared rows, and
    ``done(row, text) -> bool``, true once more generated text can no longer change the verdict (None: a reply
    runs to its end)."""

    task: str
    kind: str  # exact | contains | regex | reasoning | code | automation | instruct
    check: Callable[[dict, str], bool]
    max_new_tokens: int
    done: Callable[[dict, str], bool] | None = None


def parse_task(spec: str) -> Checker:
    """The checker for a ``--task`` value; an unknown task or a bad regex is a usage error (exit 2)."""
    if spec == "exact":
        return Checker(spec, "exact", lambda row, out: out.strip() == row["check"]["expected"], MAX_NEW_TOKENS["exact"])
    if spec == "contains":
        return Checker(spec, "contains", lambda row, out: row["check"]["expected"] in out, MAX_NEW_TOKENS["contains"],
                       done=lambda row, out: row["check"]["expected"] in out)
    if spec.startswith("regex:"):
        pattern = spec[len("regex:"):]
        if not pattern:
            raise BadInput("--task regex:PATTERN needs a pattern, e.g. 'regex:answer: (\\w+)'")
        try:
            compiled = re.compile(pattern)
        except re.error as e:
            raise BadInput(f"--task regex: the pattern {pattern!r} is not a valid regular expression: {e}") from None
        return Checker(spec, "regex", lambda row, out: regex_check(compiled, row["check"]["expected"], out),
                       MAX_NEW_TOKENS["regex"])
    if spec in TASK_CHECKERS:
        from llora_cli import tasks

        return Checker(spec, spec, tasks.checker(spec), MAX_NEW_TOKENS[spec], done=answer_done(spec))
    raise BadInput(f"unknown --task {spec!r}; choose from {', '.join(TASK_CHECKERS + GENERIC)}")


_ANSWER_IS = re.compile(r"answer is\s*-?\d+\D")
_FENCED = re.compile(r"```(?:python)?\n(.*?)```", re.S)


def answer_done(task: str) -> Callable[[dict, str], bool]:
    """``done(row, text so far)`` for a task checker: true once the text holds what the checker reads, so that
    generating further cannot change the verdict (generation of that row may stop there).

    reasoning: an "answer is N" followed by a non-digit (the checker takes the first such N); automation: the
    object opened at the first "{" is complete (the checker compares the first object that parses, which is
    then this one; with one present, a no-tool row fails whatever follows; an inner object closing first does
    not count); code: a closed fenced block (the checker runs the first one); instruct: the reference already
    appears (the checker looks for it anywhere).
    """
    if task == "reasoning":
        return lambda row, text: _ANSWER_IS.search(text) is not None
    if task == "automation":
        return lambda row, text: _first_object_closed(text)
    if task == "code":
        return lambda row, text: _FENCED.search(text) is not None
    if task == "instruct":
        return lambda row, text: row["check"]["reference"].lower() in text.lower()
    raise ValueError(f"no answer_done for task {task!r}")


def _first_object_closed(text: str) -> bool:
    start = text.find("{")
    if start < 0:
        return False
    try:
        json.JSONDecoder().raw_decode(text[start:])
    except json.JSONDecodeError:
        return False
    return True


def regex_check(pattern: re.Pattern, expected: str, output: str) -> bool:
    """The first match's group 1 (whole match when the pattern has no group), stripped, equals ``expected``."""
    m = pattern.search(output)
    if m is None:
        return False
    value = m.group(1) if pattern.groups else m.group(0)
    return value is not None and value.strip() == expected


def prepare(rows: list[dict], places: list[str], checker: Checker) -> list[dict]:
    """Rows ready for scoring: ``{"messages": prompt turns, "check": what the checker reads}``.

    ``places`` names each row for errors (``FILE:LINE``). Refuses the whole set at the first row
    without an expected answer, before any model is loaded.
    """
    annotated = next((p for p, r in zip(places, rows) if "answer" in r), None)
    prepared = []
    for place, row in zip(places, rows):
        if "messages" not in row:
            raise BadInput(f"{place}: a plain-text row has no prompt or expected answer; --task needs chat or "
                           "alpaca rows")
        msgs = row["messages"]
        prompt = msgs[:-1] if msgs[-1]["role"] == "assistant" else msgs
        if not any(m["role"] == "user" for m in prompt):
            raise BadInput(f"{place}: no user message before the final assistant reply to prompt the model with")
        reference = msgs[-1]["content"] if msgs[-1]["role"] == "assistant" else None
        if annotated and "answer" not in row and not (checker.kind in TASK_CHECKERS and "check" in row):
            raise BadInput(f"{place}: no \"answer\" (other rows have one, e.g. {annotated}); give every row an "
                           "answer or none (then the final assistant reply is the expected answer)")
        check = _expected(row, reference, checker, place)
        prepared.append({"messages": prompt, "check": check})
    return prepared


def _expected(row: dict, reference: str | None, checker: Checker, place: str) -> dict:
    kind = checker.kind
    if kind in TASK_CHECKERS and "check" in row:
        if not isinstance(row["check"], dict):
            raise BadInput(f"{place}: \"check\" must be a JSON object")
        return row["check"]
    if kind == "code":
        raise BadInput(f"{place}: --task code needs \"check\": {{\"function\": NAME, \"tests\": [[ARGS, EXPECTED], ...]}} "
                       "on every row (hidden tests cannot be derived from an answer)")
    answer = row.get("answer", reference)
    source = "\"answer\"" if "answer" in row else "the final assistant reply"
    if kind == "reasoning":
        value = _integer(answer) if "answer" in row else _reasoning_number(answer or "")
        if value is None:
            raise BadInput(f"{place}: --task reasoning needs an integer answer; {source} has none")
        return {"answer": value}
    if kind == "automation":
        from llora_cli.tasks.automation import NO_TOOL_ANSWER

        call = _json_object(answer) if answer is not None else None
        if call is None and ("answer" in row and answer is None
                             or isinstance(answer, str) and NO_TOOL_ANSWER.lower() in answer.lower()):
            return {"call": None}  # the request fits no tool: the checker wants the fixed answer, no JSON
        if call is None:
            raise BadInput(f"{place}: --task automation needs a JSON object tool call (or null / "
                           f"{NO_TOOL_ANSWER!r} when no tool fits); {source} has none")
        return {"call": call}
    if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
        raise BadInput(f"{place}: \"answer\" must be a string or a number, got {type(answer).__name__}")
    expected = str(answer).strip()
    if not expected:
        raise BadInput(f"{place}: the expected answer ({source}) is empty")
    if kind == "instruct":
        return {"reference": expected}
    return {"expected": expected}


def _integer(value) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value.replace(",", "")):
        return int(value.replace(",", ""))
    return None


def _reasoning_number(text: str) -> int | None:
    # The rule the reasoning checker applies to a model's reply, applied to the reference reply.
    m = re.search(r"answer is\s*(-?\d+)", text)
    if m:
        return int(m.group(1))
    numbers = re.findall(r"-?\d+", text.replace(",", ""))
    return int(numbers[-1]) if numbers else None


def _json_object(value) -> dict | None:
    if isinstance(value, dict):
        return value
    if not isinstance(value, str):
        return None
    decoder = json.JSONDecoder()
    for i, ch in enumerate(value):
        if ch == "{":
            try:
                obj, _ = decoder.raw_decode(value[i:])
            except json.JSONDecodeError:
                continue
            return obj if isinstance(obj, dict) else None
    return None
