"""Multi-step arithmetic word problems, checked by the final number of the answer."""

from __future__ import annotations

import random
import re

NAMES = ["Tom", "Ana", "Li", "Sara", "Omar", "Ines", "Ravi", "Mia", "Jonas", "Zoe", "Kenji", "Lea"]
ITEMS = ["apples", "books", "marbles", "stickers", "coins", "pencils", "cards", "shells", "stamps", "cookies"]


def generate(rng: random.Random) -> dict:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    start = rng.randint(5, 60)
    bags, per = rng.randint(2, 6), rng.randint(2, 9)
    away = rng.randint(1, start + bags * per - 1)
    total = start + bags * per
    answer = total - away
    prompt = (
        f"{name} has {start} {item}. {name} buys {bags} boxes with {per} {item} each, "
        f"then gives away {away} {item}. How many {item} does {name} have now?"
    )
    solution = (
        f"{name} buys {bags} * {per} = {bags * per} {item}. "
        f"{start} + {bags * per} = {total}. {total} - {away} = {answer}. The answer is {answer}."
    )
    return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": solution}],
            "check": {"answer": answer}}


def final_number(text: str) -> int | None:
    numbers = re.findall(r"-?\d+", text.replace(",", ""))
    return int(numbers[-1]) if numbers else None


def check(row: dict, output: str) -> bool:
    m = re.search(r"answer is\s*(-?\d+)", output)
    value = int(m.group(1)) if m else final_number(output)
    return value == row["check"]["answer"]
