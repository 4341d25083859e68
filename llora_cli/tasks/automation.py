"""Natural-language requests -> one JSON tool call from a fixed tool set (or none), checked by exact match.

Every row starts with a system prompt listing tools with their arguments (``?``
marks an optional one), so a model has to read the list: a generated row lists
its own tool among 3 to 10 tools in random order (a short list keeps rows cheap,
~105 SmolLM2 tokens for three tools; the whole list of ten, as in the hand-written
set's ``SYSTEM``, ~190), a no-tool row as many tools none of which fits. An
optional argument is in the expected call only when the request states it; values
are copied from the request (a currency named "yen" is called as ``JPY``). A tool
request whose tool is not in the list expects no tool (``UNLISTED_SHARE`` of them).
Requests no tool can serve expect the fixed answer ``NO_TOOL_ANSWER`` (and no JSON
object). The held-out families (every fifth) are kinds of requests no tool serves,
so every tool is trained and the held-out split asks for each tool in a phrasing
training never showed.
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
TOOLS_PER_PROMPT = 3  # a generated row lists 3..10 tools, its own among them
OPTIONAL_SHARE = 0.3  # chance that a request states a given optional argument (0.5 taught the model to add them)
UNLISTED_SHARE = 0.15  # chance that a tool request's tool is left off the list: the answer is then no tool


def system_prompt(tools: list[str]) -> str:
    """The system prompt listing ``tools`` (names of ``SIGNATURES``) and how to answer."""
    return ("Tools (? = optional):\n" + "\n".join(SIGNATURES[t] for t in tools) + "\n"
            f"Answer with a JSON call, optional arguments only if asked, or: {NO_TOOL_ANSWER}")


SYSTEM = system_prompt(list(SIGNATURES))  # every tool: the hand-written evaluation set uses this one

CITIES = ["Paris", "Tokyo", "Lima", "Oslo", "Cairo", "Denver", "Madrid", "Seoul", "Nairobi", "Berlin", "Quito", "Hanoi",
          "Toronto", "Mumbai", "Sydney", "Lagos", "Vienna", "Dublin", "Athens", "Bogota", "Helsinki", "Manila",
          "Chicago", "Prague", "Santiago", "Accra", "Montreal", "Kyoto", "Glasgow", "Porto", "Tunis", "Perth"]
PEOPLE = ["alice@example.com", "bob@example.com", "carol@example.com", "dan@example.com", "erin@example.com",
          "farid@example.org", "gwen@example.net", "hugo@example.com", "ines@example.org", "jamal@example.net",
          "support@example.com", "team@example.org", "kim.lee@example.com", "office@example.net"]
TOPICS = ["the budget", "lunch", "the report", "the trip", "the meeting", "the release", "the party", "invoices",
          "the new schedule", "holiday plans", "the contract", "Friday's game", "the garden", "a job offer",
          "the broken printer", "rent", "the school play", "weekend hiking"]
BODIES = ["I will be late", "see you soon", "thanks for the help", "the files are ready", "call me back",
          "the door code changed", "I can bring snacks", "please review it today", "I found your keys",
          "we won", "the venue is booked"]
TITLES = ["budget review", "team lunch", "dentist appointment", "yoga class", "project kickoff", "parent meeting",
          "guitar lesson", "job interview", "car service", "book club", "vet visit", "sprint planning",
          "dinner with Sam", "swim practice", "tax consultation"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
ARTISTS = ["Miles Davis", "Adele", "Bach", "Nina Simone", "Daft Punk", "Queen", "Fela Kuti", "Bjork", "Coldplay",
           "Taylor Swift", "Bob Marley", "Mozart", "Radiohead", "Shakira", "Kendrick Lamar", "ABBA", "Norah Jones"]
TASKS = ["buy milk", "call the bank", "water the plants", "pay rent", "fix the bike", "renew my passport",
         "book a haircut", "return the rented skis", "clean the fridge", "send the invoice", "walk the dog",
         "back up my laptop", "order new glasses", "mow the lawn", "reply to Maria"]
QUERIES = ["cheap flights to Rome", "banana bread recipe", "how tides work", "best hiking boots",
           "python list comprehension", "opening hours of the museum", "symptoms of the flu", "used bikes for sale",
           "how to tie a tie", "train times to Leeds", "history of the printing press", "good sci-fi novels",
           "how solar panels work", "cheap hotels in Lisbon"]
PHRASES = ["good morning", "where is the station", "thank you very much", "I am hungry", "see you tomorrow",
           "how much does this cost", "the water is cold", "I lost my wallet", "happy new year",
           "can I have the menu", "my name is Ana", "where is the toilet"]
LANGUAGES = ["French", "Spanish", "German", "Japanese", "Italian", "English", "Portuguese", "Dutch", "Korean",
             "Swahili", "Greek", "Turkish"]
ROOMS = ["kitchen", "bedroom", "living room", "hallway", "office", "bathroom", "garage", "basement", "nursery",
         "porch", "attic", "guest room"]
CURRENCIES = ["USD", "EUR", "JPY", "GBP", "CHF", "CAD", "AUD", "INR"]
CURRENCY_NAMES = {"USD": "US dollars", "EUR": "euros", "JPY": "yen", "GBP": "pounds", "CHF": "Swiss francs",
                  "CAD": "Canadian dollars", "AUD": "Australian dollars", "INR": "rupees"}
LABELS = ["pasta", "laundry", "tea", "break", "oven", "rice", "bread", "parking", "homework", "nap"]
JOKE_TOPICS = ["cats", "computers", "the weather", "music", "trains", "dogs", "coffee", "the ocean", "winter"]
COUNTRIES = ["France", "Peru", "Japan", "Kenya", "Norway", "Chile", "Egypt", "Canada", "India", "Poland"]
DEVICES = ["thermostat", "front door lock", "robot vacuum", "garage door", "TV", "washing machine", "sprinklers"]
NUMBERS = (2, 99)


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
    """On (with an optional brightness) or off (never a brightness)."""
    room = rng.choice(ROOMS)
    if rng.random() < 0.6:
        return {"room": room, "state": "on"}, {"room": room, "on": True}
    return {"room": room, "state": "off", "o_brightness": ""}, {"room": room, "on": False}


def _translate(rng):
    text, to = rng.choice(PHRASES), rng.choice(LANGUAGES)
    return {"text": text, "to": to}, {"text": text, "to": to}


def _currency(rng):
    """Currencies named by code ("EUR") or by name ("euros"); the call always has the code."""
    amount, to = rng.randint(5, 900), rng.choice(CURRENCIES)
    fields = {"amount": amount, "to": to if rng.random() < 0.5 else CURRENCY_NAMES[to]}
    return fields, {"amount": amount, "to": to}


def _currency_from(rng) -> tuple[str, str]:
    code = rng.choice(CURRENCIES)
    return code, code if rng.random() < 0.5 else CURRENCY_NAMES[code]


def _no_tool(**pools):
    def draw(rng):
        return _pick(rng, **pools), {}
    return draw


_NT = dict(topic=JOKE_TOPICS, country=COUNTRIES, city=CITIES, hour=(11, 21), room=ROOMS, day=DAYS, artist=ARTISTS,
           device=DEVICES, a=NUMBERS, b=NUMBERS, person=["my mom", "Dad", "my boss", "Priya", "the plumber"])

# The held-out split takes families 4, 9, 14 whole (tasks.HELD_OUT_FAMILY_EVERY): they are kinds of request no
# tool serves, so every tool is trained (a user trains a tool-calling modifier on the tools it will call) and the
# held-out rows test unseen phrasings of every tool and unseen kinds of requests to refuse.
FAMILIES = [
    Family("weather", _same(city=CITIES), (
        "What's the weather in {city}{o_unit}?",
        "Will it rain in {city} today? Give me the forecast{o_unit}.",
        "Weather forecast for {city}{o_unit}, please.",
        "How warm is it in {city} right now{o_unit}?",
        "Check the weather for me in {city}{o_unit}.",
        "Do I need an umbrella in {city} tomorrow{o_unit}?",
        "Any snow expected in {city} this week{o_unit}?",
        "I'm flying to {city} later. What are conditions like there{o_unit}?",
        "Tell me the temperature in {city}{o_unit}.",
        "I'm heading to {city}. What's it like outside there{o_unit}?"),
        {"unit": (["celsius", "fahrenheit"], (" in {unit}", ", in {unit}", " (in {unit})", " in degrees {unit}"))}),
    Family("timer", _same(minutes=(1, 90)), (
        "Set a timer for {minutes} minutes{o_label}.",
        "Start a {minutes} minute timer{o_label}.",
        "Timer, {minutes} minutes{o_label}.",
        "Count down {minutes} minutes for me{o_label}.",
        "Alert me in {minutes} minutes{o_label}.",
        "Let me know when {minutes} minutes have passed{o_label}.",
        "Buzz me after {minutes} minutes{o_label}.",
        "I'm cooking, give me a {minutes} minute reminder{o_label}.",
        "Can you time {minutes} minutes{o_label}?",
        "Give me a {minutes}-minute countdown{o_label}."),
        {"label": (LABELS, (" for the {label}", " called {label}", " labelled {label}", " and name it {label}"))}),
    Family("email", _same(to=PEOPLE, subject=TOPICS), (
        "Email {to} about {subject}{o_body}.",
        "Send an email to {to} with the subject {subject}{o_body}.",
        "Write to {to} regarding {subject}{o_body}.",
        "Drop {to} a mail about {subject}{o_body}.",
        "Mail {to}, subject: {subject}{o_body}.",
        "Please message {to} by email, the subject is {subject}{o_body}.",
        "Could you get in touch with {to} by email about {subject}{o_body}?",
        "Compose an email for {to} titled {subject}{o_body}.",
        "Can you send {to} an email on {subject}{o_body}?"),
        {"body": (BODIES, (" and say {body}", ", saying {body}", " with the message {body}", "; tell them {body}"))}),
    Family("event", _same(title=TITLES, day=DAYS, hour=(7, 20)), (
        "Schedule {title} on {day} at {hour}:00{o_duration}.",
        "Put {title} in my calendar for {day} at {hour}:00{o_duration}.",
        "Book {title} on {day}, {hour}:00{o_duration}.",
        "Add an event, {title}, {day} at {hour}:00{o_duration}.",
        "On {day} at {hour}:00 I have {title}{o_duration}. Add it to the calendar.",
        "Reserve {day} {hour}:00 in my calendar for {title}{o_duration}.",
        "Make a calendar event called {title} for {day} at {hour}:00{o_duration}.",
        "Create a calendar entry for {title} on {day} at {hour}:00{o_duration}.",
        "I have {title} on {day} at {hour}:00{o_duration}; add it to my calendar."),
        {"duration": ([15, 30, 45, 60, 90, 120], (" for {duration} minutes", ", lasting {duration} minutes",
                                                  " ({duration} minutes)", ", it takes {duration} minutes"))}),
    Family("no_tool_devices", _no_tool(**_NT), (
        "Set the {device} to {a}.",
        "Turn off the {device}.",
        "Is the {device} running?",
        "Start the {device} in the {room}.",
        "Open the {device} please.",
        "Switch on the {device} at {hour}:00.")),
    Family("translate", _translate, (
        "Translate '{text}' into {to}{o_from}.",
        "How do you say '{text}' in {to}{o_from}?",
        "Put '{text}' in {to}{o_from}.",
        "What is '{text}' in {to}{o_from}?",
        "I need '{text}' translated to {to}{o_from}.",
        "Could you convert the phrase '{text}' to {to}{o_from}?",
        "'{text}' in {to}, please{o_from}.",
        "What would '{text}' be in {to}{o_from}?",
        "Give me the {to} for '{text}'{o_from}."),
        {"from": (LANGUAGES, (" from {from}", "; the original is {from}", " (source language: {from})",
                              ", it is written in {from}"))}),
    Family("music", _same(artist=ARTISTS), (
        "Play some {artist}{o_volume}.",
        "I want to listen to {artist}{o_volume}.",
        "Put on music by {artist}{o_volume}.",
        "Play {artist} for me{o_volume}.",
        "Queue up {artist}{o_volume}.",
        "I feel like hearing {artist}{o_volume}.",
        "Start playing songs by {artist}{o_volume}.",
        "Could you start some {artist} songs{o_volume}?",
        "Music time: {artist}{o_volume}."),
        {"volume": (list(range(1, 11)), (" at volume {volume}", ", volume {volume}", " with the volume at {volume}",
                                         ", turn it to {volume}"))}),
    Family("todo", _same(task=TASKS), (
        "Add {task} to my to-do list{o_due}{o_priority}.",
        "Remind me to {task}{o_due}{o_priority}.",
        "Put '{task}' on my list{o_due}{o_priority}.",
        "New task: {task}{o_due}{o_priority}.",
        "I need to {task}{o_due}{o_priority}, add it to my todos.",
        "Don't let me forget to {task}{o_due}{o_priority}.",
        "Track this task: {task}{o_due}{o_priority}.",
        "Make a to-do item to {task}{o_due}{o_priority}.",
        "Note down that I must {task}{o_due}{o_priority}."),
        {"due": (DAYS, (" by {due}", " for {due}", ", due {due}", " before {due}")),
         "priority": (["high", "low"], (" with {priority} priority", ", {priority} priority", " (priority {priority})",
                                        ", mark it {priority} priority"))}),
    Family("lights", _lights, (
        "Turn {state} the lights in the {room}{o_brightness}.",
        "Switch the {room} lights {state}{o_brightness}.",
        "Lights {state} in the {room}{o_brightness}, please.",
        "Can you turn the {room} light {state}{o_brightness}?",
        "Make the {room} lights go {state}{o_brightness}.",
        "Please put the {room} lamp {state}{o_brightness}.",
        "I want the lights {state} in the {room}{o_brightness}."),
        {"brightness": (list(range(10, 101, 10)), (" at {brightness} percent", ", brightness {brightness}",
                                                   " (set to {brightness}%)"))}),
    Family("no_tool_math", _no_tool(**_NT), (
        "What is {a} times {b}?",
        "Is {a} a prime number?",
        "What's {a} plus {b}?",
        "Divide {a} by {b} for me.",
        "How many days are in {a} weeks?",
        "What is {a} percent of {b}?")),
    Family("currency", _currency, (
        "Convert {amount}{o_from} to {to}.",
        "How much is {amount}{o_from} in {to}?",
        "What are {amount}{o_from} worth in {to}?",
        "Change {amount}{o_from} into {to}.",
        "Exchange {amount}{o_from} for {to}, please.",
        "I have {amount}{o_from}. How many {to} is that?",
        "What do {amount}{o_from} come to in {to}?",
        "Calculate {amount}{o_from} in {to}.",
        "{amount}{o_from} to {to}, how much is that?"),
        {"from": (_currency_from, (" {from}", " in {from}", " ({from})"))}),
    Family("search", _same(query=QUERIES), (
        "Search the web for {query}{o_limit}.",
        "Look up {query} online{o_limit}.",
        "Find me information about {query}{o_limit}.",
        "Google {query}{o_limit}.",
        "Search for {query}{o_limit}.",
        "Browse the internet for {query}{o_limit}.",
        "I'd like web results on {query}{o_limit}.",
        "Can you search for {query}{o_limit}?",
        "Do a web search on {query}{o_limit}."),
        {"limit": ([3, 5, 10, 20], (" and show {limit} results", ", top {limit} results", " (just {limit} results)",
                                    ", only {limit} results"))}),
    Family("no_tool_chat", _no_tool(**_NT), (
        "Tell me a joke about {topic}.",
        "How are you doing today?",
        "Write a short poem about {topic}.",
        "Thanks a lot, you've been helpful.",
        "Good night!",
        "Hello there, who are you?",
        "I'm bored, talk to me about {topic}.",
        "Tell me something interesting about {topic}.",
        "Sing me a song about {topic}.",
        "Nothing else, cheers!")),
    Family("no_tool_knowledge", _no_tool(**_NT), (
        "What is the capital of {country}?",
        "Why is the sky blue?",
        "What language do people speak in {country}?",
        "Who invented the telephone?",
        "How far is the moon?",
        "Explain how rainbows form.",
        "What is the population of {city}?",
        "What time is it in {city} now?",
        "Who wrote Hamlet?",
        "What does the word 'serendipity' mean?",
        "How deep is the Pacific Ocean?")),
    Family("no_tool_advice", _no_tool(**_NT), (
        "Which is better for a beginner, guitar or piano?",
        "Suggest a name for my new dog.",
        "What should I cook tonight?",
        "Give me tips for sleeping better.",
        "Recommend a movie about {topic}.",
        "Should I visit {country} or {city} first?")),
    Family("no_tool_errands", _no_tool(**_NT), (
        "Book a flight to {city}.",
        "Order a pizza for {hour}:00.",
        "Take a photo of the {room}.",
        "Cancel my {day} meeting.",
        "Buy two tickets for the {artist} concert.",
        "Get me a table at a restaurant in {city} on {day}.",
        "Rent a car in {city} for {day}.",
        "Pay my electricity bill.",
        "Book me a hotel in {city} from {day}.",
        "Order groceries to be delivered on {day}.",
        "Buy a birthday present for {person} online.")),
    Family("no_tool_calls", _no_tool(**_NT), (
        "Call {person}.",
        "Text {person} that I'm on my way.",
        "Start a video call with {person}.",
        "Send a WhatsApp message to {person}.",
        "Phone {person} at {hour}:00.",
        "Call a taxi to the airport in {city}.",
        "Leave a voicemail for {person}.",
        "Send an SMS to {person} saying I'll be late.")),
]


def generate(rng: random.Random, family: int | None = None, phrasing: int | None = None) -> dict:
    """A request of ``FAMILIES[family]`` worded by its ``phrasing`` (random when not given).

    The system prompt lists the family's tool among ``TOOLS_PER_PROMPT``..10 tools in random order (a
    no-tool row lists as many), so the model learns to read the list, short or long; in ``UNLISTED_SHARE``
    of tool requests the tool is left off the list and the expected answer is no tool, so a model has to
    find the tool in the list rather than name the one the request suggests. Each optional argument is
    stated with probability ``OPTIONAL_SHARE``.
    """
    fam = FAMILIES[rng.randrange(len(FAMILIES)) if family is None else family]
    text = fam.phrasings[rng.randrange(len(fam.phrasings)) if phrasing is None else phrasing]
    fields, args = fam.draw(rng)
    for arg, (values, clauses) in fam.optional.items():
        slot = f"o_{arg}"
        if slot not in fields and rng.random() < OPTIONAL_SHARE:
            if callable(values):  # (value in the call, its wording in the request), e.g. ("JPY", "yen")
                args[arg], surface = values(rng)
            else:
                args[arg] = surface = rng.choice(values)
            fields[slot] = rng.choice(clauses).format(**{arg: surface})
        else:
            fields.setdefault(slot, "")
    call = {"name": fam.tool, "arguments": {p: args[p] for p in TOOLS[fam.tool] if p in args}} if fam.tool else None
    others = [t for t in SIGNATURES if t != fam.tool]
    n_listed = rng.randint(TOOLS_PER_PROMPT, len(SIGNATURES))
    if call is not None and rng.random() < UNLISTED_SHARE:  # the right tool is not offered: answer no tool
        listed, call = rng.sample(others, min(n_listed, len(others))), None
    else:
        listed = ([fam.tool] if fam.tool else []) + rng.sample(others, n_listed - bool(fam.tool))
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
