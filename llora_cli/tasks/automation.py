"""Natural-language requests -> one JSON tool call from a fixed tool set (or none), checked by exact match.

Every row starts with a system prompt listing tools with their arguments (``?``
marks an optional one), so a model can call a tool it was never trained on by
reading the list: a generated row lists its own tool and two others in random
order (three tools keep a row short: ~105 SmolLM2 tokens; the whole list of ten
would double that), the hand-written set lists all ten (``SYSTEM``). An optional
argument is in the expected call only when the request states it. Requests no
tool can serve expect the fixed answer ``NO_TOOL_ANSWER`` (and no JSON object).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field

NO_TOOL_ANSWER = "No tool fits this request."

SIGNATURES = {  # short names: the whole list is in every row's system prompt
    "weather": "weather(city, unit?)",
    "timer": "timer(minutes: int, label?)",
    "email": "email(to, subject, body?)",
    "event": "event(title, day, hour: int, duration?: int)",
    "translate": "translate(text, to, from?)",
    "music": "music(artist, volume?: int)",
    "todo": "todo(task, due?, priority?)",
    "lights": "lights(room, on: bool, brightness?: int)",
    "currency": "currency(amount: int, to, from?)",
    "search": "search(query, limit?: int)",
}
TOOLS = {name: [p.split(":")[0].rstrip("?").strip() for p in sig[len(name) + 1:-1].split(", ")]
         for name, sig in SIGNATURES.items()}
TOOLS_PER_PROMPT = 3  # a generated row lists its tool and two others (a no-tool row: three others)


def system_prompt(tools: list[str]) -> str:
    """The system prompt listing ``tools`` (names of ``SIGNATURES``) and how to answer."""
    return ("Tools (? = optional):\n" + "\n".join(SIGNATURES[t] for t in tools) + "\n"
            f"Answer with a JSON call, optional arguments only if asked, or: {NO_TOOL_ANSWER}")


SYSTEM = system_prompt(list(SIGNATURES))  # every tool: the hand-written evaluation set uses this one

CITIES = ["Paris", "Tokyo", "Lima", "Oslo", "Cairo", "Denver", "Madrid", "Seoul", "Nairobi", "Berlin", "Quito", "Hanoi"]
PEOPLE = ["alice@example.com", "bob@example.com", "carol@example.com", "dan@example.com", "erin@example.com",
          "farid@example.org", "gwen@example.net"]
TOPICS = ["the budget", "lunch", "the report", "the trip", "the meeting", "the release", "the party", "invoices"]
BODIES = ["I will be late", "see you soon", "thanks for the help", "the files are ready", "call me back"]
TITLES = ["budget review", "team lunch", "dentist appointment", "yoga class", "project kickoff", "parent meeting"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
ARTISTS = ["Miles Davis", "Adele", "Bach", "Nina Simone", "Daft Punk", "Queen", "Fela Kuti", "Bjork"]
TASKS = ["buy milk", "call the bank", "water the plants", "pay rent", "fix the bike", "renew my passport"]
QUERIES = ["cheap flights to Rome", "banana bread recipe", "how tides work", "best hiking boots",
           "python list comprehension", "opening hours of the museum"]
PHRASES = ["good morning", "where is the station", "thank you very much", "I am hungry", "see you tomorrow"]
LANGUAGES = ["French", "Spanish", "German", "Japanese", "Italian", "English", "Portuguese"]
ROOMS = ["kitchen", "bedroom", "living room", "hallway", "office", "bathroom"]
CURRENCIES = ["USD", "EUR", "JPY", "GBP", "CHF", "CAD"]
LABELS = ["pasta", "laundry", "tea", "break", "oven"]
JOKE_TOPICS = ["cats", "computers", "the weather", "music", "trains"]
COUNTRIES = ["France", "Peru", "Japan", "Kenya", "Norway", "Chile"]


@dataclass(frozen=True)
class Family:
    """One tool (or a kind of request no tool serves) with its phrasings.

    ``draw`` returns the text fields and the required arguments; ``optional`` maps
    an argument to (values, clause templates): a phrasing's ``{o_ARG}`` slot gets a
    clause when the argument is drawn, else "". ``draw`` may fill a slot with ""
    itself to rule the argument out (no brightness for lights turned off).
    """

    id: str
    draw: Callable[[random.Random], tuple[dict, dict]]
    phrasings: tuple[str, ...]
    optional: dict = field(default_factory=dict)

    @property
    def tool(self) -> str | None:
        return self.id if self.id in TOOLS else None


def _pick(rng: random.Random, **pools) -> dict:
    return {k: rng.choice(v) if isinstance(v, list) else rng.randint(*v) for k, v in pools.items()}


def _same(**pools):
    def draw(rng):
        values = _pick(rng, **pools)
        return values, dict(values)
    return draw


def _lights(rng):
    room, on = rng.choice(ROOMS), rng.random() < 0.6
    return {"room": room, "state": "on" if on else "off", **({} if on else {"o_brightness": ""})}, \
        {"room": room, "on": on}


def _translate(rng):
    text, to = rng.choice(PHRASES), rng.choice(LANGUAGES)
    return {"text": text, "to": to}, {"text": text, "to": to}


def _no_tool(**pools):
    def draw(rng):
        return _pick(rng, **pools), {}
    return draw


FAMILIES = [
    Family("weather", _same(city=CITIES), (
        "What's the weather in {city}{o_unit}?",
        "Will it rain in {city} today? Give me the forecast{o_unit}.",
        "Weather forecast for {city}{o_unit}, please.",
        "How warm is it in {city} right now{o_unit}?",
        "Check the weather for me in {city}{o_unit}.",
        "I'm heading to {city}. What's it like outside there{o_unit}?"),
        {"unit": (["celsius", "fahrenheit"], (" in {unit}", ", in {unit}", " (in {unit})"))}),
    Family("timer", _same(minutes=(1, 90)), (
        "Set a timer for {minutes} minutes{o_label}.",
        "Start a {minutes} minute timer{o_label}.",
        "Timer, {minutes} minutes{o_label}.",
        "Count down {minutes} minutes for me{o_label}.",
        "Can you time {minutes} minutes{o_label}?",
        "Give me a {minutes}-minute countdown{o_label}."),
        {"label": (LABELS, (" for the {label}", " called {label}", " labelled {label}"))}),
    Family("email", _same(to=PEOPLE, subject=TOPICS), (
        "Email {to} about {subject}{o_body}.",
        "Send an email to {to} with the subject {subject}{o_body}.",
        "Write to {to} regarding {subject}{o_body}.",
        "Drop {to} a mail about {subject}{o_body}.",
        "Mail {to}, subject: {subject}{o_body}.",
        "Can you send {to} an email on {subject}{o_body}?"),
        {"body": (BODIES, (" and say {body}", ", saying {body}", " with the message {body}"))}),
    Family("event", _same(title=TITLES, day=DAYS, hour=(8, 18)), (
        "Schedule {title} on {day} at {hour}:00{o_duration}.",
        "Put {title} in my calendar for {day} at {hour}:00{o_duration}.",
        "Book {title} on {day}, {hour}:00{o_duration}.",
        "Add an event, {title}, {day} at {hour}:00{o_duration}.",
        "Create a calendar entry for {title} on {day} at {hour}:00{o_duration}.",
        "I have {title} on {day} at {hour}:00{o_duration}; add it to my calendar."),
        {"duration": ([15, 30, 45, 60, 90], (" for {duration} minutes", ", lasting {duration} minutes",
                                             " ({duration} minutes)"))}),
    Family("translate", _translate, (
        "Translate '{text}' into {to}{o_from}.",
        "How do you say '{text}' in {to}{o_from}?",
        "Put '{text}' in {to}{o_from}.",
        "What is '{text}' in {to}{o_from}?",
        "I need '{text}' translated to {to}{o_from}.",
        "Give me the {to} for '{text}'{o_from}."),
        {"from": (LANGUAGES, (" from {from}", "; the original is {from}", " (source language: {from})"))}),
    Family("music", _same(artist=ARTISTS), (
        "Play some {artist}{o_volume}.",
        "I want to listen to {artist}{o_volume}.",
        "Put on music by {artist}{o_volume}.",
        "Play {artist} for me{o_volume}.",
        "Could you start some {artist} songs{o_volume}?",
        "Music time: {artist}{o_volume}."),
        {"volume": (list(range(1, 11)), (" at volume {volume}", ", volume {volume}", " with the volume at {volume}"))}),
    Family("todo", _same(task=TASKS), (
        "Add {task} to my to-do list{o_due}{o_priority}.",
        "Remind me to {task}{o_due}{o_priority}.",
        "Put '{task}' on my list{o_due}{o_priority}.",
        "New task: {task}{o_due}{o_priority}.",
        "I need to {task}{o_due}{o_priority}, add it to my todos.",
        "Note down that I must {task}{o_due}{o_priority}."),
        {"due": (DAYS, (" by {due}", " for {due}", ", due {due}")),
         "priority": (["high", "low"], (" with {priority} priority", ", {priority} priority", " (priority {priority})"))}),
    Family("no_tool_chat", _no_tool(topic=JOKE_TOPICS, country=COUNTRIES, city=CITIES), (
        "Tell me a joke about {topic}.",
        "What is the capital of {country}?",
        "How are you doing today?",
        "Write a short poem about {topic}.",
        "Why is the sky blue?",
        "What language do people speak in {country}?")),
    Family("lights", _lights, (
        "Turn {state} the lights in the {room}{o_brightness}.",
        "Switch the {room} lights {state}{o_brightness}.",
        "Lights {state} in the {room}{o_brightness}, please.",
        "Can you turn the {room} light {state}{o_brightness}?",
        "Make the {room} lights go {state}{o_brightness}.",
        "I want the lights {state} in the {room}{o_brightness}."),
        {"brightness": (list(range(10, 101, 10)), (" at {brightness} percent", ", brightness {brightness}",
                                                   " (set to {brightness}%)"))}),
    Family("currency", _same(amount=(5, 500), to=CURRENCIES), (
        "Convert {amount}{o_from} to {to}.",
        "How much is {amount}{o_from} in {to}?",
        "What are {amount}{o_from} worth in {to}?",
        "Change {amount}{o_from} into {to}.",
        "Exchange {amount}{o_from} for {to}, please.",
        "{amount}{o_from} to {to}, how much is that?"),
        {"from": (CURRENCIES, (" {from}", " in {from}", " ({from})"))}),
    Family("search", _same(query=QUERIES), (
        "Search the web for {query}{o_limit}.",
        "Look up {query} online{o_limit}.",
        "Find me information about {query}{o_limit}.",
        "Google {query}{o_limit}.",
        "Can you search for {query}{o_limit}?",
        "Do a web search on {query}{o_limit}."),
        {"limit": ([3, 5, 10, 20], (" and show {limit} results", ", top {limit} results", " (just {limit} results)"))}),
    Family("no_tool_action", _no_tool(city=CITIES, hour=(11, 21), room=ROOMS, day=DAYS, artist=ARTISTS), (
        "Book a flight to {city}.",
        "Order a pizza for {hour}:00.",
        "Take a photo of the {room}.",
        "Cancel my {day} meeting.",
        "Buy two tickets for the {artist} concert.",
        "Call a taxi to the airport in {city}.")),
]


def generate(rng: random.Random, family: int | None = None, phrasing: int | None = None) -> dict:
    """A request of ``FAMILIES[family]`` worded by its ``phrasing`` (random when not given)."""
    fam = FAMILIES[rng.randrange(len(FAMILIES)) if family is None else family]
    text = fam.phrasings[rng.randrange(len(fam.phrasings)) if phrasing is None else phrasing]
    fields, args = fam.draw(rng)
    for arg, (values, clauses) in fam.optional.items():
        slot = f"o_{arg}"
        if slot not in fields and rng.random() < 0.5:
            args[arg] = rng.choice(values)
            fields[slot] = rng.choice(clauses).format(**{arg: args[arg]})
        else:
            fields.setdefault(slot, "")
    call = {"name": fam.tool, "arguments": {p: args[p] for p in TOOLS[fam.tool] if p in args}} if fam.tool else None
    listed = [fam.tool] if fam.tool else []
    listed += rng.sample([t for t in SIGNATURES if t != fam.tool], TOOLS_PER_PROMPT - len(listed))
    rng.shuffle(listed)
    return {
        "messages": [
            {"role": "system", "content": system_prompt(listed)},
            {"role": "user", "content": text.format(**fields)},
            {"role": "assistant", "content": json.dumps(call) if call else NO_TOOL_ANSWER},
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
    """The first JSON object of ``output`` equals the expected call; for no call, the fixed answer and no JSON."""
    expected = row["check"]["call"]
    if expected is None:
        return NO_TOOL_ANSWER.lower() in output.lower() and parse_call(output) is None
    return parse_call(output) == expected
