"""Natural-language requests -> one JSON tool call from a fixed tool set, checked by exact match."""

from __future__ import annotations

import json
import random

CITIES = ["Paris", "Tokyo", "Lima", "Oslo", "Cairo", "Denver", "Madrid", "Seoul", "Nairobi", "Berlin"]
PEOPLE = ["alice@example.com", "bob@example.com", "carol@example.com", "dan@example.com", "erin@example.com"]
TOPICS = ["the budget", "lunch", "the report", "the trip", "the meeting", "the release"]
DAYS = ["monday", "tuesday", "wednesday", "thursday", "friday"]
ARTISTS = ["Miles Davis", "Adele", "Bach", "Nina Simone", "Daft Punk", "Queen"]

TOOLS = {
    "get_weather": ["city"],
    "set_timer": ["minutes"],
    "send_email": ["to", "subject"],
    "create_event": ["title", "day", "hour"],
    "play_music": ["artist"],
}


def _call(rng: random.Random) -> tuple[str, dict]:
    tool = rng.choice(sorted(TOOLS))
    if tool == "get_weather":
        city = rng.choice(CITIES)
        text = rng.choice(["What's the weather in {c}?", "Will it rain in {c} today?", "Weather forecast for {c}, please."])
        return text.format(c=city), {"name": tool, "arguments": {"city": city}}
    if tool == "set_timer":
        m = rng.randint(1, 90)
        text = rng.choice(["Set a timer for {m} minutes.", "Remind me in {m} minutes.", "Start a {m} minute timer."])
        return text.format(m=m), {"name": tool, "arguments": {"minutes": m}}
    if tool == "send_email":
        to, topic = rng.choice(PEOPLE), rng.choice(TOPICS)
        text = rng.choice(["Email {to} about {t}.", "Send an email to {to} with the subject {t}.", "Write to {to} regarding {t}."])
        return text.format(to=to, t=topic), {"name": tool, "arguments": {"to": to, "subject": topic}}
    if tool == "create_event":
        topic, day, hour = rng.choice(TOPICS), rng.choice(DAYS), rng.randint(8, 18)
        text = rng.choice(["Schedule {t} on {d} at {h}:00.", "Put {t} in my calendar for {d} at {h}:00.",
                           "Book {t} on {d}, {h}:00."])
        return text.format(t=topic, d=day, h=hour), {"name": tool, "arguments": {"title": topic, "day": day, "hour": hour}}
    artist = rng.choice(ARTISTS)
    text = rng.choice(["Play some {a}.", "I want to listen to {a}.", "Put on music by {a}."])
    return text.format(a=artist), {"name": tool, "arguments": {"artist": artist}}


def generate(rng: random.Random) -> dict:
    prompt, call = _call(rng)
    return {
        "messages": [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": json.dumps(call)},
        ],
        "check": {"call": call},
    }


def parse_call(output: str) -> dict | None:
    """The first JSON object in ``output``, or None."""
    decoder = json.JSONDecoder()
    for i, ch in enumerate(output):
        if ch == "{":
            try:
                obj, _ = decoder.raw_decode(output[i:])
            except json.JSONDecodeError:
                continue
            return obj if isinstance(obj, dict) else None
    return None


def check(row: dict, output: str) -> bool:
    return parse_call(output) == row["check"]["call"]
