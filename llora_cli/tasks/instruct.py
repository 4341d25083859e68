"""Generic short instructions with reference answers (for training adapters)."""

from __future__ import annotations

import random

CAPITALS = {"France": "Paris", "Japan": "Tokyo", "Peru": "Lima", "Norway": "Oslo", "Egypt": "Cairo",
            "Spain": "Madrid", "Kenya": "Nairobi", "Germany": "Berlin", "Italy": "Rome", "Canada": "Ottawa",
            "Chile": "Santiago", "Greece": "Athens", "Poland": "Warsaw", "Ireland": "Dublin"}
OPPOSITES = {"hot": "cold", "big": "small", "fast": "slow", "happy": "sad", "early": "late", "open": "closed",
             "light": "dark", "up": "down", "full": "empty", "old": "new", "hard": "soft", "loud": "quiet"}
WORDS = ["river", "planet", "garden", "window", "pencil", "silver", "basket", "tunnel", "candle", "mirror",
         "rocket", "forest", "button", "ladder", "orange", "violin"]


def generate(rng: random.Random) -> dict:
    form = rng.randrange(4)
    if form == 0:
        country = rng.choice(sorted(CAPITALS))
        prompt, ref = f"What is the capital of {country}?", CAPITALS[country]
        answer = f"The capital of {country} is {ref}."
    elif form == 1:
        word = rng.choice(sorted(OPPOSITES))
        prompt, ref = f"Give the opposite of the word '{word}'.", OPPOSITES[word]
        answer = f"The opposite of '{word}' is '{ref}'."
    elif form == 2:
        word = rng.choice(WORDS)
        prompt, ref = f"Spell the word '{word}' backwards.", word[::-1]
        answer = f"'{word}' backwards is '{ref}'."
    else:
        a, b = rng.randint(2, 40), rng.randint(2, 40)
        prompt, ref = f"What is {a} plus {b}?", str(a + b)
        answer = f"{a} plus {b} is {ref}."
    return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}],
            "check": {"reference": ref}}


def check(row: dict, output: str) -> bool:
    return row["check"]["reference"].lower() in output.lower()
