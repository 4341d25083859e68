"""Calculator-assisted decoding: the result of an arithmetic step a model writes is computed, not guessed.

Method: Cobbe et al. 2021, "Training Verifiers to Solve Math Word Problems" (GSM8K), section 2 / appendix C: the
solutions carry calculator annotations, and at sampling time "a calculator overrides sampling when the model
chooses to use these annotations". Here the annotation is the worked-solution format llora's reasoning data
teaches (``llora_cli.tasks.reasoning.Work``): ``a op b = c.`` (also ``a + b + c = d.`` and ``a / b = q remainder
r.``). When a reply ends in ``<expression> =`` (``+ - * /``, also ``x`` and ``×`` for times, integers only), the
digits that follow are forced to the expression's value (standard precedence, exact rational arithmetic; a single
``a / b`` gives the quotient ``a // b`` when ``a >= b``, and ``remainder`` the rest; ``a / b`` with ``a < b`` is left
alone: a fraction); once the value is written, further digits are masked so the number ends. Anything else the
model writes, including which numbers and which operation it chooses, is left alone: the calculator fixes arithmetic
slips, not a wrong plan. It fires at every ``=`` that ends an expression, so a chain that rewrites an expression
(``12 * 3 = 10 * 3 + 2 * 3 = ...``) gets the first expression's value after the first ``=``.

Only for tokenizers that write each digit as its own token (SmolLM2's; checked at construction, with any prefix
a tokenizer adds to a text's first token: ``CalculatorUnsupported`` otherwise). Used by ``llora eval --calculator``,
``llora run --calculator`` and the server's ``calculator`` request field, on both engines.
"""

from __future__ import annotations

import ast
import math
import re
from fractions import Fraction

from llora_store.errors import BadInput

# an expression of integers and + - * / (x and × read as *), then "=", then the digits written so far; not when its
# first number continues something else (a decimal "3.5", "1,200", a time "10:30", a sign "-3", a word "x2")
_START = r"(?<![\w.,:\-−])"
_STEP = re.compile(_START + r"((?:\d+\s*[-+*/x×]\s*)+\d+)\s*=(\s*)(\d*)$")
_REMAINDER = re.compile(_START + r"(\d+)\s*/\s*(\d+)\s*=\s*\d+\s+remainder(\s*)(\d*)$")
# an ISO date written without spaces ("2024-12-11 ="; month 1-12, day 1-31), not a subtraction
_DATE = re.compile(r"\d{4}-(?:0?[1-9]|1[0-2])-(?:0?[1-9]|[12]\d|3[01])")
TAIL_TOKENS = 256  # tokens decoded per row and step; a step that starts before them is not forced (``cut``)


class CalculatorUnsupported(BadInput):
    """The tokenizer does not write digits as single tokens, so digits cannot be forced one at a time."""


def value_of(expression: str) -> int | None:
    """The value of ``expression`` (integers and ``+ - * /``, ``x``/``×`` as ``*``), or None when it is not a
    non-negative integer. Standard precedence, exact rational arithmetic; a lone ``a / b`` is the quotient
    ``a // b`` (the ``a / b = q remainder r`` form), any other division must be exact.

    >>> value_of("48 / 6"), value_of("3 + 4 * 2"), value_of("17 / 4"), value_of("2 - 5"), value_of("1 + 7 / 2")
    (8, 11, 4, None, None)
    >>> value_of("3 / 4"), value_of("4 / 4")
    (None, 1)
    """
    text = expression.replace("×", "*").replace("x", "*")
    lone = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if lone:
        a, b = int(lone.group(1)), int(lone.group(2))
        return a // b if b and a >= b else None  # a < b: a fraction (3/4 = 0.75 or 3/4), not a quotient of 0
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        return None

    def ev(node) -> Fraction:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return Fraction(node.value)
        if isinstance(node, ast.BinOp):
            a, b = ev(node.left), ev(node.right)
            if isinstance(node.op, ast.Add):
                return a + b
            if isinstance(node.op, ast.Sub):
                return a - b
            if isinstance(node.op, ast.Mult):
                return a * b
            if isinstance(node.op, ast.Div) and b != 0:
                return a / b
        raise ValueError("not arithmetic")

    try:
        v = ev(tree)
    except (ValueError, RecursionError):
        return None
    return int(v) if v.denominator == 1 and v >= 0 else None


def due_digits(text: str, *, cut: bool = False) -> tuple[str, str, bool] | None:
    """What the calculator says about a reply so far: ``(value, digits written, spaced)`` when ``text`` ends inside
    an arithmetic step's result (``value`` the result's digits, ``spaced`` whether whitespace follows the ``=`` or
    ``remainder``), else None. ``cut``: ``text`` is the end of a longer text, so a step starting at its first
    character may have lost its beginning: None then.

    >>> due_digits("So 48 / 6 = "), due_digits("So 48 / 6 = 7"), due_digits("It is 12 * 3 ="), due_digits("7.")
    (('8', '', True), ('8', '7', True), ('36', '', False), None)
    >>> due_digits("Due 2024-12-11 = "), due_digits("So 2024 - 12 - 11 = ")
    (None, ('2001', '', True))
    """
    m = _REMAINDER.search(text)
    if m and not (cut and m.start() == 0):
        a, b = int(m.group(1)), int(m.group(2))
        return (str(a % b), m.group(4), bool(m.group(3))) if b else None
    m = _STEP.search(text)
    if not m or (cut and m.start() == 0) or _DATE.fullmatch(m.group(1)):
        return None
    v = value_of(m.group(1))
    return (str(v), m.group(3), bool(m.group(2))) if v is not None else None


def digit_token_ids(tokenizer) -> list[int]:
    """The token ids of ``"0"`` .. ``"9"`` as written after other text; ``CalculatorUnsupported`` unless each digit
    is one token and a number is written one digit per token. Each is read after ``"="`` (SentencePiece tokenizers
    add a word-start piece to a text's first token)."""
    def enc(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    head = enc("=")
    ids = []
    for d in "0123456789":
        e = enc("=" + d)
        if e[:len(head)] != head or len(e) != len(head) + 1:
            break
        ids.append(e[-1])
    many = enc("=1234567890")
    if len(ids) != 10 or many != head + [ids[int(c)] for c in "1234567890"]:
        raise CalculatorUnsupported(
            f"the calculator forces a result one digit at a time, and this tokenizer ({type(tokenizer).__name__}) "
            "does not write numbers one digit per token",
            hint="evaluate without --calculator")
    return ids


def constrain(scores, text: str, digits: list[int], *, cut: bool = False) -> bool:
    """Apply the calculator to one row: ``scores`` a 1-d float array of next-token logits (a torch tensor or a numpy
    array, changed in place), ``text`` the row's text so far (its last ``TAIL_TOKENS`` tokens decoded), ``digits``
    the ids of ``"0"``..``"9"``. A due digit gets every other token set to -inf when whitespace already follows the
    ``=`` (or some digits are written); else only the other digits are masked (the model may still write the
    space); a finished result masks all digits. ``cut``: see ``due_digits``. Returns whether the argmax changed."""
    due = due_digits(text, cut=cut)
    if due is None:
        return False
    value, written, spaced = due
    if not value.startswith(written):
        return False  # the model wrote a multi-digit token or another number: leave it
    inf = float("-inf")
    before = int(scores.argmax())
    if written == value:  # the number is complete: no further digit
        scores[digits] = inf
    else:
        want = digits[int(value[len(written)])]
        keep = float(scores[want])
        if spaced or written:
            scores[:] = inf
            scores[want] = keep if math.isfinite(keep) else 0.0
        else:
            scores[digits] = inf
            scores[want] = keep
    return int(scores.argmax()) != before


class CalculatorLogitsProcessor:
    """Calculator-assisted decoding as a logits processor (module docstring; ``constrain``), for both engines.

    transformers' ``LogitsProcessor``: ``input_ids [batch, seq]`` int64 and ``scores [batch, vocab]`` float logits,
    changed in place and returned; ``rows``: which rows of the batch use the calculator (default all).
    llama-cpp-python's ``logits_processor``: ``input_ids`` 1-d (every token so far) and ``scores`` 1-d (the next
    token's logits in token-id order). The text read is the last ``TAIL_TOKENS`` tokens of each row, prompt included
    (a raw prompt ending in ``12 * 3 =`` is completed with ``36``; a chat prompt ends with the assistant's header,
    so only the reply can trigger it). ``forced``: how many tokens the calculator changed (the model's argmax was
    another token), for the report; ``forced_rows``: the same per batch row (row 0 for llama.cpp).
    """

    def __init__(self, tokenizer, rows: list[bool] | None = None) -> None:
        self.tokenizer = tokenizer
        self.rows = rows
        self.digits = digit_token_ids(tokenizer)
        self.forced = 0
        self.forced_rows: dict[int, int] = {}

    def __call__(self, input_ids, scores):
        if scores.ndim == 1:  # llama.cpp: one row
            self._row(0, input_ids, scores)
            return scores
        for i, row in enumerate(input_ids):
            if self.rows is None or self.rows[i]:
                self._row(i, row, scores[i])
        return scores

    def _row(self, i: int, ids, scores) -> None:
        text = self.tokenizer.decode(ids[-TAIL_TOKENS:].tolist(), skip_special_tokens=True)  # numpy or torch
        changed = int(constrain(scores, text, self.digits, cut=len(ids) > TAIL_TOKENS))
        self.forced += changed
        self.forced_rows[i] = self.forced_rows.get(i, 0) + changed
