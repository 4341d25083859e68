"""Arithmetic word problems (1-3 steps, integer answers) from many families, checked by the final number.

Each family draws its numbers (so that every division is exact) and writes the
worked solution as short steps, one ``<quantity> is a op b = c.`` per step (the
quantity named in the problem's words: a small model learns the setup from the
names, not only a chain of numbers), ending ``The answer is N.``. Its phrasings are different wordings of the same problem;
names, items and numbers are drawn independently of the phrasing.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass

NAMES = ["Tom", "Ana", "Li", "Sara", "Omar", "Ines", "Ravi", "Mia", "Jonas", "Zoe", "Kenji", "Lea", "Amara",
         "Pablo", "Yuki", "Noah", "Fatima", "Ivan", "Chloe", "Tariq", "Elif", "Marco", "Priya", "Sam"]
ITEMS = ["apples", "books", "marbles", "stickers", "coins", "pencils", "cards", "shells", "stamps", "cookies",
         "candies", "buttons", "crayons", "oranges", "beads", "toy cars"]
FOODS = [("pens", "notebooks"), ("apples", "pears"), ("muffins", "juices"), ("tickets", "programs"),
         ("sandwiches", "drinks"), ("roses", "tulips"), ("erasers", "rulers")]
TWO_LEGS = ["chickens", "ducks", "geese", "ostriches"]
FOUR_LEGS = ["cows", "dogs", "goats", "horses", "sheep"]
FRACTIONS = {2: "half", 3: "a third", 4: "a quarter", 5: "a fifth"}


class Work:
    """The worked solution: each operation is done and written as one step, ``<what> is a op b = c.``

    ``what`` names the quantity the step computes, in the problem's words (a template over the problem's
    values, e.g. ``"the {item} each friend gets"``), so a model learns to set up each step from the text,
    not only to chain numbers.
    """

    def __init__(self) -> None:
        self.steps: list[tuple[str, str]] = []  # (what, "a op b = c.")

    def do(self, a: int, op: str, b: int, what: str) -> int:
        value = {"+": a + b, "-": a - b, "*": a * b, "/": a // b}[op]
        assert op != "/" or a % b == 0, (a, b)
        self.steps.append((what, f"{a} {op} {b} = {value}."))
        return value

    def add3(self, a: int, b: int, c: int, what: str) -> int:
        self.steps.append((what, f"{a} + {b} + {c} = {a + b + c}."))
        return a + b + c

    def divmod(self, a: int, b: int, what: str) -> tuple[int, int]:
        q, r = divmod(a, b)
        self.steps.append((what, f"{a} / {b} = {q} remainder {r}."))
        return q, r

    def text(self, values: dict) -> str:
        """The steps with their quantities named from ``values``, one sentence each."""
        out = []
        for what, equation in self.steps:
            what = what.format(**values)
            out.append(f"{what[0].upper()}{what[1:]} is {equation}")
        return " ".join(out)


@dataclass(frozen=True)
class Family:
    id: str
    draw: Callable[[random.Random, Work], dict]  # the problem's values (the key "answer" included)
    phrasings: tuple[str, ...]


def _people(rng: random.Random, n: int) -> dict:
    names = rng.sample(NAMES, n)
    return {"name": names[0], **({"name2": names[1]} if n > 1 else {}), **({"name3": names[2]} if n > 2 else {})}


def _share_equally(rng, w):
    k, each = rng.randint(2, 9), rng.randint(2, 15)
    return {**_people(rng, 1), "item": rng.choice(ITEMS), "k": k, "total": k * each,
            "answer": w.do(k * each, "/", k, "each share")}


def _keep_then_share(rng, w):
    k, each, keep = rng.randint(2, 8), rng.randint(2, 12), rng.randint(1, 20)
    total = keep + k * each
    rest = w.do(total, "-", keep, "what is left to share")
    return {**_people(rng, 1), "item": rng.choice(ITEMS), "k": k, "keep": keep, "total": total,
            "answer": w.do(rest, "/", k, "each share")}


def _speed_distance(rng, w):
    s, h = rng.choice([40, 45, 50, 60, 70, 80, 90, 12, 15, 18]), rng.randint(2, 9)
    return {**_people(rng, 1), "s": s, "h": h, "answer": w.do(s, "*", h, "the distance in {h} hours")}


def _production(rng, w):
    r, h, s = rng.randint(3, 25), rng.randint(2, 8), rng.randint(5, 90)
    made = w.do(r, "*", h, "the number made in {h} hours")
    return {**_people(rng, 1), "item": rng.choice(ITEMS), "r": r, "h": h, "s": s, "answer": w.do(s, "+", made, "the total")}


def _difference(rng, w):
    b = rng.randint(3, 60)
    a = b + rng.randint(1, 40)
    return {**_people(rng, 2), "item": rng.choice(ITEMS), "a": a, "b": b, "answer": w.do(a, "-", b, "the difference")}


def _three_people(rng, w):
    a, m = rng.randint(2, 15), rng.randint(2, 4)
    b = w.do(a, "*", m, "what {name2} has")
    c = rng.randint(1, b - 1)
    cc = w.do(b, "-", c, "what {name3} has")
    return {**_people(rng, 3), "item": rng.choice(ITEMS), "a": a, "m": m, "c": c, "answer": w.add3(a, b, cc, "the total of all three")}


def _buy_change(rng, w):
    n, p = rng.randint(2, 9), rng.randint(1, 9)
    cost = w.do(n, "*", p, "the cost")
    bill = next(b for b in (10, 20, 50, 100) if b > cost)
    return {**_people(rng, 1), "item": rng.choice(ITEMS), "n": n, "p": p, "bill": bill,
            "answer": w.do(bill, "-", cost, "the change")}


def _two_kinds(rng, w):
    item, item2 = rng.choice(FOODS)
    a, p, b, q = rng.randint(2, 9), rng.randint(1, 9), rng.randint(2, 9), rng.randint(1, 9)
    x, y = w.do(a, "*", p, "the cost of the {item}"), w.do(b, "*", q, "the cost of the {item2}")
    return {**_people(rng, 1), "item": item, "item2": item2, "a": a, "p": p, "b": b, "q": q,
            "answer": w.do(x, "+", y, "the total cost")}


def _hours_minutes(rng, w):
    h, m = rng.randint(1, 5), rng.randint(5, 55)
    x = w.do(h, "*", 60, "{h} hours in minutes")
    return {**_people(rng, 1), "h": h, "m": m, "answer": w.do(x, "+", m, "the total in minutes")}


def _metres_cut(rng, w):
    length, cut = rng.randint(2, 9), rng.randint(5, 95)
    x = w.do(length, "*", 100, "{L} metres in centimetres")
    return {**_people(rng, 1), "L": length, "c": cut, "answer": w.do(x, "-", cut, "what is left")}


def _kilograms(rng, w):
    kg, g = rng.randint(1, 9), rng.choice([100, 200, 250, 500])
    x = w.do(kg, "*", 1000, "{K} kg in grams")
    return {**_people(rng, 1), "K": kg, "g": g, "answer": w.do(x, "/", g, "the number of {g} g portions")}


def _leftover(rng, w):
    k = rng.randint(3, 12)
    n = k * rng.randint(2, 12) + rng.randint(1, k - 1)
    _, r = w.divmod(n, k, "{n} in groups of {k}")
    return {**_people(rng, 1), "item": rng.choice(ITEMS), "n": n, "k": k, "answer": r}


def _containers_needed(rng, w):
    k = rng.randint(3, 12)
    n = k * rng.randint(2, 12) + rng.randint(1, k - 1)
    q, _ = w.divmod(n, k, "{n} in groups of {k}")
    return {**_people(rng, 1), "item": rng.choice(ITEMS), "n": n, "k": k, "answer": w.do(q, "+", 1, "the full ones plus one for the rest")}


def _weekly_savings(rng, w):
    a, s, weeks = rng.randint(5, 80), rng.randint(2, 20), rng.randint(2, 12)
    x = w.do(s, "*", weeks, "the savings in {w} weeks")
    return {**_people(rng, 1), "a": a, "s": s, "w": weeks, "answer": w.do(a, "+", x, "the total")}


def _savings_goal(rng, w):
    a, s, weeks = rng.randint(5, 60), rng.randint(3, 15), rng.randint(2, 12)
    goal = a + s * weeks
    x = w.do(goal, "-", a, "the amount still needed")
    return {**_people(rng, 1), "G": goal, "a": a, "s": s, "answer": w.do(x, "/", s, "the number of weeks")}


def _rows_seats(rng, w):
    r, c = rng.randint(3, 15), rng.randint(4, 20)
    x = w.do(r, "*", c, "the number of seats")
    e = rng.randint(1, x - 1)
    return {**_people(rng, 1), "r": r, "c": c, "e": e, "answer": w.do(x, "-", e, "the number taken")}


def _give_then_buy(rng, w):
    s = rng.randint(10, 80)
    g, b = rng.randint(1, s - 1), rng.randint(1, 30)
    x = w.do(s, "-", g, "what is left after giving")
    return {**_people(rng, 2), "item": rng.choice(ITEMS), "s": s, "g": g, "b": b, "answer": w.do(x, "+", b, "the number at the end")}


def _pages_left(rng, w):
    r, d = rng.randint(5, 30), rng.randint(2, 9)
    pages = r * d + rng.randint(10, 200)
    x = w.do(r, "*", d, "the number of pages read in {d} days")
    return {**_people(rng, 1), "P": pages, "r": r, "d": d, "answer": w.do(pages, "-", x, "the number of pages left")}


def _age_future(rng, w):
    a, k, y = rng.randint(4, 40), rng.randint(1, 30), rng.randint(1, 20)
    b = w.do(a, "+", k, "the age of {name2} now")
    return {**_people(rng, 2), "a": a, "k": k, "y": y, "answer": w.do(b, "+", y, "the age of {name2} in {y} years")}


def _fraction_of_group(rng, w):
    d = rng.choice(sorted(FRACTIONS))
    total = d * rng.randint(2, 15)
    part = w.do(total, "/", d, "{frac} of {T}")
    return {**_people(rng, 1), "item": rng.choice(ITEMS), "T": total, "frac": FRACTIONS[d],
            "answer": w.do(total, "-", part, "the rest")}


def _pool_and_share(rng, w):
    each = rng.randint(4, 30)
    a, b = rng.randint(1, each + 10), rng.randint(1, each + 10)
    c = 3 * each - a - b
    if c < 1:
        a, b, c = each, each, each
    t = w.add3(a, b, c, "the total")
    return {**_people(rng, 3), "item": rng.choice(ITEMS), "a": a, "b": b, "c": c, "answer": w.do(t, "/", 3, "each share")}


def _unit_price(rng, w):
    n, p, m = rng.randint(2, 8), rng.randint(2, 12), rng.randint(2, 12)
    unit = w.do(n * p, "/", n, "the price of one")
    return {**_people(rng, 1), "item": rng.choice(ITEMS), "n": n, "T": n * p, "m": m, "answer": w.do(unit, "*", m, "the price of {m}")}


def _temperature(rng, w):
    t, r = rng.randint(0, 25), rng.randint(1, 15)
    x = w.do(t, "+", r, "the temperature after rising")
    f = rng.randint(1, x)
    return {**_people(rng, 1), "t": t, "r": r, "f": f, "answer": w.do(x, "-", f, "the temperature at the end")}


def _legs(rng, w):
    c, d = rng.randint(2, 20), rng.randint(2, 20)
    x, y = w.do(c, "*", 2, "the number of legs of the {two}"), w.do(d, "*", 4, "the number of legs of the {four}")
    return {**_people(rng, 1), "c": c, "d": d, "two": rng.choice(TWO_LEGS), "four": rng.choice(FOUR_LEGS),
            "answer": w.do(x, "+", y, "the total number of legs")}


def _wage(rng, w):
    pay, h, d = rng.randint(8, 25), rng.randint(2, 8), rng.randint(2, 6)
    x = w.do(pay, "*", h, "the pay for one day")
    return {**_people(rng, 1), "w": pay, "h": h, "d": d, "answer": w.do(x, "*", d, "the pay for {d} days")}


def _packs_shared(rng, w):
    p, each = rng.randint(2, 6), rng.randint(2, 10)
    n = rng.choice([d for d in range(2, 9) if p * each % d == 0 and p * each // d >= 2])
    total = w.do(n, "*", p * each // n, "the number of {item}")
    return {**_people(rng, 1), "item": rng.choice(ITEMS), "n": n, "k": p * each // n, "p": p,
            "answer": w.do(total, "/", p, "each share")}


FAMILIES = [
    Family("share_equally", _share_equally, (
        "{name} has {total} {item} and shares them equally among {k} friends. How many {item} does each friend get?",
        "There are {total} {item} to split evenly between {k} children. How many does each child receive?",
        "{k} friends divide {total} {item} so that everyone gets the same number. How many {item} is that per friend?",
        "If {total} {item} are packed equally into {k} bags, how many {item} go in each bag?")),
    Family("keep_then_share", _keep_then_share, (
        "{name} picks {total} {item}, keeps {keep} and shares the rest equally among {k} friends. "
        "How many {item} does each friend get?",
        "Out of {total} {item}, {name} saves {keep} for later. The others are split evenly into {k} piles. "
        "How many {item} are in each pile?",
        "{name} had {total} {item}. After putting {keep} aside, {name} gave the remaining ones equally to {k} "
        "classmates. How many did each classmate get?")),
    Family("speed_distance", _speed_distance, (
        "A train travels at {s} km per hour. How far does it go in {h} hours?",
        "{name} cycles {s} kilometres every hour. How many kilometres does {name} cover in {h} hours?",
        "How many kilometres does a bus drive in {h} hours if it keeps a steady speed of {s} km an hour?")),
    Family("production_rate", _production, (
        "A machine makes {r} {item} per hour. It already made {s} {item} today and runs for {h} more hours. "
        "How many {item} will it have made in total?",
        "{name} already has {s} {item} and makes {r} more every hour for {h} hours. "
        "How many {item} does {name} have at the end?",
        "Starting with {s} {item}, a workshop adds {r} {item} each hour. How many {item} are there after {h} hours?")),
    Family("difference", _difference, (
        "{name} has {a} {item} and {name2} has {b}. How many more {item} does {name} have than {name2}?",
        "{name2} owns {b} {item}, while {name} owns {a}. How many fewer {item} does {name2} own?",
        "{name2} has {b} {item} and {name} has {a}. How many {item} must {name2} get to have as many as {name}?")),
    Family("three_people_total", _three_people, (
        "{name} has {a} {item}. {name2} has {m} times as many as {name}, and {name3} has {c} fewer than {name2}. "
        "How many {item} do the three have altogether?",
        "{name2} collected {m} times as many {item} as {name}, who collected {a}. {name3} collected {c} less than "
        "{name2}. What is the total number of {item} collected by all three?",
        "Three friends count their {item}. {name} has {a}, {name2} has {m} times that many, and {name3} has {c} "
        "fewer than {name2}. How many {item} is that in total?")),
    Family("buy_change", _buy_change, (
        "{name} buys {n} {item} at {p} dollars each and pays with a {bill}-dollar bill. How much change does {name} get?",
        "{name} pays for {n} {item} with {bill} dollars. Each one costs {p} dollars. "
        "How many dollars does {name} get back?",
        "With {bill} dollars, {name} purchases {n} {item} that cost {p} dollars apiece. How much money is left?")),
    Family("two_kinds_cost", _two_kinds, (
        "{name} buys {a} {item} for {p} dollars each and {b} {item2} for {q} dollars each. How much does {name} spend?",
        "At the market, {item} cost {p} dollars each and {item2} cost {q} dollars each. "
        "What do {a} {item} and {b} {item2} cost together?",
        "What is the total bill for {a} {item} at {p} dollars apiece plus {b} {item2} at {q} dollars apiece?")),
    Family("hours_to_minutes", _hours_minutes, (
        "A film lasts {h} hours and {m} minutes. How many minutes long is it?",
        "{name} spent {h} hours and {m} minutes on a hike. How many minutes is that?",
        "How many minutes are in {h} hours and {m} minutes?")),
    Family("metres_cut", _metres_cut, (
        "A ribbon is {L} metres long. {name} cuts off {c} centimetres. How many centimetres of ribbon are left?",
        "{name} has a rope of {L} m and uses {c} cm of it. How many cm remain?",
        "From a {L}-metre roll of tape, {c} centimetres are used. How many centimetres are still on the roll?")),
    Family("kilograms_to_portions", _kilograms, (
        "A bag holds {K} kg of flour. Each cake needs {g} grams. How many cakes can be baked with the whole bag?",
        "{name} splits {K} kilograms of rice into packets of {g} g. How many packets does {name} fill?",
        "How many {g}-gram portions can be made from {K} kg of cheese?")),
    Family("leftover", _leftover, (
        "{name} packs {n} {item} into boxes of {k}. How many {item} are left over after filling as many boxes as "
        "possible?",
        "{n} {item} are handed out {k} at a time until fewer than {k} remain. How many are left?",
        "If {n} {item} are put in rows of {k}, how many {item} are in the last, incomplete row?")),
    Family("containers_needed", _containers_needed, (
        "{n} students go on a trip. Each van carries {k} students. How many vans are needed?",
        "A school must seat {n} people at tables of {k}. What is the smallest number of tables needed?",
        "How many boxes are needed to pack {n} {item} if each box holds at most {k}?")),
    Family("weekly_savings", _weekly_savings, (
        "{name} has {a} dollars and saves {s} dollars every week. How much will {name} have after {w} weeks?",
        "Every week {name} puts {s} dollars in a jar that already holds {a} dollars. "
        "How much is in the jar after {w} weeks?",
        "After {w} weeks of saving {s} dollars a week, how much money does {name} have if {name} started with "
        "{a} dollars?")),
    Family("savings_goal", _savings_goal, (
        "{name} wants a bike that costs {G} dollars. {name} has {a} dollars and saves {s} dollars a week. "
        "How many weeks until {name} can buy it?",
        "A game costs {G} dollars. {name} already saved {a} dollars and adds {s} dollars each week. "
        "How many more weeks of saving does {name} need?",
        "How many weeks does it take to reach {G} dollars, starting from {a} dollars and saving {s} dollars per week?")),
    Family("rows_of_seats", _rows_seats, (
        "A hall has {r} rows of {c} chairs. {e} chairs are empty. How many chairs are taken?",
        "There are {r} rows with {c} seats in each. If {e} seats are still free, how many people are seated?",
        "{name} sets out {r} rows of {c} chairs, but {e} guests do not come, leaving their chairs empty. "
        "How many chairs are used?")),
    Family("give_then_buy", _give_then_buy, (
        "{name} has {s} {item}, gives {g} to {name2}, then buys {b} more. How many {item} does {name} have now?",
        "After giving away {g} of {name}'s {s} {item}, {name} gets {b} new ones. How many {item} does {name} have?",
        "{name} started with {s} {item}. {name} lost {g} and later found {b}. "
        "How many {item} does {name} have at the end?")),
    Family("pages_left", _pages_left, (
        "A book has {P} pages. {name} reads {r} pages a day. How many pages are left after {d} days?",
        "{name} reads {r} pages every evening of a {P}-page novel. After {d} evenings, how many pages remain unread?",
        "How many pages of a {P}-page book are still to read after reading {r} pages on each of {d} days?")),
    Family("age_future", _age_future, (
        "{name} is {a} years old. {name2} is {k} years older than {name}. How old will {name2} be in {y} years?",
        "{name2} is {k} years older than {name}, who is {a}. What will {name2}'s age be {y} years from now?",
        "In {y} years, how old will {name2} be if {name} is {a} now and {name2} is {k} years older than {name}?")),
    Family("fraction_of_group", _fraction_of_group, (
        "There are {T} students in a class and {frac} of them walk to school. How many students do not walk?",
        "{name} has {T} {item} and gives {frac} of them away. How many {item} does {name} keep?",
        "Of {T} {item} in a basket, {frac} are broken. How many are not broken?")),
    Family("pool_and_share", _pool_and_share, (
        "{name} has {a} {item}, {name2} has {b} and {name3} has {c}. They put them together and share them equally. "
        "How many does each get?",
        "Three friends bring {a}, {b} and {c} {item} to a party and split them evenly among themselves. "
        "How many {item} does each friend end up with?",
        "If {a}, {b} and {c} {item} are combined and divided equally among 3 people, how many does each person get?")),
    Family("unit_price", _unit_price, (
        "{n} {item} cost {T} dollars. How much do {m} {item} cost?",
        "{name} paid {T} dollars for {n} {item}. At the same price, what would {m} {item} cost?",
        "If a pack of {n} {item} is {T} dollars, how many dollars are {m} {item} at that price each?")),
    Family("temperature_change", _temperature, (
        "The temperature was {t} degrees in the morning. It rose {r} degrees by noon and fell {f} degrees by night. "
        "What was the temperature at night?",
        "At dawn it is {t} degrees. It warms up by {r} degrees, then cools by {f} degrees. What is the temperature now?",
        "A thermometer reads {t} degrees, goes up {r} degrees and then down {f} degrees. What does it read at the end?")),
    Family("counting_legs", _legs, (
        "A farm has {c} {two} and {d} {four}. How many legs do the animals have in total?",
        "{name} counts {c} {two} and {d} {four} in a field. How many legs is that altogether?",
        "How many legs are there on {c} {two} and {d} {four} together?")),
    Family("wage", _wage, (
        "{name} earns {w} dollars an hour and works {h} hours a day. How much does {name} earn in {d} days?",
        "A job pays {w} dollars per hour. {name} works {h} hours on each of {d} days. What is {name}'s total pay?",
        "How much money is made in {d} days of {h}-hour shifts at {w} dollars per hour?")),
    Family("packs_shared", _packs_shared, (
        "{name} buys {n} packs of {item} with {k} in each pack and shares them equally among {p} friends. "
        "How many {item} does each friend get?",
        "There are {n} bags with {k} {item} in each. The {item} are divided evenly among {p} children. "
        "How many does each child get?",
        "{p} friends share {n} boxes of {item}, each box holding {k}. If they share fairly, how many {item} does "
        "each friend get?")),
]


def generate(rng: random.Random, family: int | None = None, phrasing: int | None = None) -> dict:
    """A problem of ``FAMILIES[family]`` worded by its ``phrasing`` (random when not given)."""
    fam = FAMILIES[rng.randrange(len(FAMILIES)) if family is None else family]
    text = fam.phrasings[rng.randrange(len(fam.phrasings)) if phrasing is None else phrasing]
    work = Work()
    values = fam.draw(rng, work)
    answer = values["answer"]
    solution = work.text(values) + f" The answer is {answer}."
    return {"messages": [{"role": "user", "content": text.format(**values)},
                         {"role": "assistant", "content": solution}],
            "check": {"answer": answer}}


def final_number(text: str) -> int | None:
    numbers = re.findall(r"-?\d+", text.replace(",", ""))
    return int(numbers[-1]) if numbers else None


def check(row: dict, output: str) -> bool:
    m = re.search(r"answer is\s*(-?\d+)", output)
    value = int(m.group(1)) if m else final_number(output)
    return value == row["check"]["answer"]
