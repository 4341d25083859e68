"""Beginner exercises -> a Python function, checked by hidden test cases run in a sandboxed subprocess.

Families are the kind of exercise found in beginner sets (lists, strings, dicts,
loops, conditions); each has several request phrasings, function and argument
names drawn independently, hidden tests with edge cases (never shown in the
prompt) and a short reference solution, which is what a model learns to write.

The sandbox: a fresh ``python -I`` in an empty temp dir, a CPU-time and memory
limit, a wall-clock timeout, and an audit hook (which code cannot remove) that
refuses sockets, subprocesses and opening files outside the temp dir.
"""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    """One kind of exercise: its names, argument names, request phrasings, reference body and hidden tests."""

    id: str
    names: tuple[str, ...]  # function names to draw from
    args: tuple[tuple[str, ...], ...]  # alternative argument names
    phrasings: tuple[str, ...]  # {sig} is `name(args)`, {a} {b} {c} the arguments, {k} the family's number
    body: str  # the reference solution's body, with the same fields
    cases: Callable[[int], list]  # k -> hidden tests [(args, expected)], edge cases included
    k: tuple[int, int] | None = None


LIST = (("xs",), ("nums",), ("values",))
TEXT = (("s",), ("text",), ("word",))
SENTENCE = (("s",), ("text",), ("sentence",))
NUMBER = (("n",), ("num",), ("x",))
DICT = (("d",), ("data",), ("scores",))

FAMILIES = [
    Family("sum_list", ("total", "sum_list", "add_all"), LIST, (
        "Write a Python function {sig} that returns the sum of the numbers in the list {a} (0 for an empty list).",
        "Define {sig}: add up every number in {a} and return the total; an empty list gives 0.",
        "I need a function {sig} which totals a list of numbers. If the list has no items, return 0."),
        "total = 0\nfor x in {a}:\n    total += x\nreturn total",
        lambda k: [([[1, 2, 3]], 6), ([[]], 0), ([[-4, 4, 10]], 10), ([[7]], 7)]),
    Family("largest", ("largest", "max_value", "biggest"), LIST, (
        "Write a Python function {sig} that returns the largest number in the list {a}, or None if it is empty.",
        "Implement {sig}, which gives back the biggest element of {a}; for an empty list return None.",
        "Create {sig}: find the maximum of a list of numbers without crashing on an empty list (return None)."),
        "if not {a}:\n    return None\nreturn max({a})",
        lambda k: [([[3, 9, 2]], 9), ([[]], None), ([[-5, -2]], -2), ([[4]], 4)]),
    Family("smallest", ("smallest", "min_value", "lowest"), LIST, (
        "Write a Python function {sig} that returns the smallest number in the list {a}, or None if it is empty.",
        "Define {sig} to return the minimum of {a}; an empty list should give None.",
        "Make a function {sig} that finds the lowest value in a list of numbers, returning None when there is none."),
        "if not {a}:\n    return None\nreturn min({a})",
        lambda k: [([[3, 9, 2]], 2), ([[]], None), ([[-5, -2]], -5), ([[0, 0]], 0)]),
    Family("count_even", ("count_even", "count_evens", "num_even"), LIST, (
        "Write a Python function {sig} that returns how many numbers in the list {a} are even.",
        "Implement {sig}: count the even elements of {a} and return that count (0 for an empty list).",
        "I want {sig} to tell me how many values in a list of integers are divisible by 2."),
        "return sum(1 for x in {a} if x % 2 == 0)",
        lambda k: [([[1, 2, 3, 4]], 2), ([[]], 0), ([[1, 3]], 0), ([[0, -2, 5]], 2)]),
    Family("keep_even", ("only_even", "evens", "keep_even"), LIST, (
        "Write a Python function {sig} that returns a new list with only the even numbers of {a}, in order.",
        "Define {sig}: filter the list {a} so that just its even numbers remain, keeping their order.",
        "Create a function {sig} that drops the odd numbers from a list and returns what is left."),
        "return [x for x in {a} if x % 2 == 0]",
        lambda k: [([[1, 2, 3, 4]], [2, 4]), ([[]], []), ([[1, 3]], []), ([[0, -2, 5]], [0, -2])]),
    Family("reverse_text", ("reverse", "reverse_text", "backwards"), TEXT, (
        "Write a Python function {sig} that returns the string {a} reversed.",
        "Implement {sig}, which gives back the characters of {a} in the opposite order.",
        "Make {sig} return a string spelled backwards, e.g. for any text, last character first."),
        "return {a}[::-1]",
        lambda k: [(["abc"], "cba"), ([""], ""), (["a b"], "b a"), (["x"], "x")]),
    Family("palindrome", ("is_palindrome", "palindrome", "reads_same"), TEXT, (
        "Write a Python function {sig} that returns True if the string {a} reads the same backwards, ignoring case.",
        "Define {sig}: decide whether {a} is a palindrome (upper and lower case count as equal); return a bool.",
        "I need {sig} to check if a word is the same forwards and backwards, not caring about capital letters."),
        "t = {a}.lower()\nreturn t == t[::-1]",
        lambda k: [(["Level"], True), (["abc"], False), ([""], True), (["Aa"], True), (["ab"], False)]),
    Family("count_vowels", ("count_vowels", "vowels", "num_vowels"), SENTENCE, (
        "Write a Python function {sig} that returns the number of vowels (a, e, i, o, u, any case) in {a}.",
        "Implement {sig}, counting how many letters of {a} are vowels; upper-case vowels count too.",
        "Create {sig}: return how many of the characters in a string are a, e, i, o or u, ignoring case."),
        "return sum(1 for ch in {a}.lower() if ch in 'aeiou')",
        lambda k: [(["hello"], 2), ([""], 0), (["sky"], 0), (["AEIOU x"], 5)]),
    Family("capitalize_words", ("capitalize_words", "title_words", "cap_words"), SENTENCE, (
        "Write a Python function {sig} that returns {a} with each word capitalized (first letter upper, rest "
        "lower), words joined by single spaces.",
        "Define {sig}: split {a} into words, capitalize each one and join them back with one space.",
        "Make {sig} turn a sentence into one where every word starts with a capital letter and the rest is "
        "lower case, separated by single spaces."),
        "return ' '.join(w.capitalize() for w in {a}.split())",
        lambda k: [(["hello world"], "Hello World"), ([""], ""), (["pYTHON"], "Python"), (["a  b"], "A B")]),
    Family("word_count", ("word_count", "count_words", "num_words"), SENTENCE, (
        "Write a Python function {sig} that returns how many words the string {a} has (words are separated by "
        "whitespace).",
        "Implement {sig}, which counts the whitespace-separated words in {a}; an empty string has 0 words.",
        "I need {sig} to tell me the number of words in a sentence, however many spaces there are between them."),
        "return len({a}.split())",
        lambda k: [(["a b c"], 3), ([""], 0), (["  spaced   out "], 2), (["one"], 1)]),
    Family("char_counts", ("char_counts", "letter_counts", "count_chars"), TEXT, (
        "Write a Python function {sig} that returns a dict mapping each character of {a} to how often it occurs.",
        "Define {sig}: build and return a dictionary of character frequencies for the string {a}.",
        "Create {sig} that counts every character in a string and gives back the counts as a dict."),
        "counts = {{}}\nfor ch in {a}:\n    counts[ch] = counts.get(ch, 0) + 1\nreturn counts",
        lambda k: [(["aab"], {"a": 2, "b": 1}), ([""], {}), (["xyx"], {"x": 2, "y": 1})]),
    Family("word_lengths", ("word_lengths", "lengths", "len_of_words"), SENTENCE, (
        "Write a Python function {sig} that returns a list with the length of each word in {a}.",
        "Implement {sig}: split {a} on whitespace and return the list of the words' lengths, in order.",
        "Make {sig} give back how long each word of a sentence is, as a list of numbers."),
        "return [len(w) for w in {a}.split()]",
        lambda k: [(["hi there"], [2, 5]), ([""], []), (["a bb  ccc"], [1, 2, 3])]),
    Family("invert_dict", ("invert", "invert_dict", "swap_keys_values"), DICT, (
        "Write a Python function {sig} that returns a new dict with the keys and values of {a} swapped.",
        "Define {sig}: every value of the dict {a} becomes a key whose value is the old key.",
        "I want {sig} to flip a dictionary around so values map back to their keys."),
        "return {{val: key for key, val in {a}.items()}}",
        lambda k: [([{"a": "x", "b": "y"}], {"x": "a", "y": "b"}), ([{}], {}), ([{"k": "v"}], {"v": "k"})]),
    Family("sum_values", ("sum_values", "dict_total", "add_values"), DICT, (
        "Write a Python function {sig} that returns the sum of all the values in the dict {a}.",
        "Implement {sig}, which adds up the numbers stored as values in {a}; an empty dict gives 0.",
        "Create {sig}: total the values of a dictionary of numbers."),
        "return sum({a}.values())",
        lambda k: [([{"a": 1, "b": 2}], 3), ([{}], 0), ([{"x": -5, "y": 5, "z": 7}], 7)]),
    Family("key_of_max", ("best_key", "key_of_max", "top_key"), DICT, (
        "Write a Python function {sig} that returns the key of {a} with the largest value (the first one on a "
        "tie), or None if {a} is empty.",
        "Define {sig}: find which key in the dict {a} holds the highest value; return None for an empty dict "
        "and the earliest key when values tie.",
        "Make {sig} return the name of the winner in a dict of scores, None if nobody is in it, the first one "
        "listed if two are equal."),
        "if not {a}:\n    return None\nreturn max({a}, key={a}.get)",
        lambda k: [([{"a": 1, "b": 5, "c": 2}], "b"), ([{}], None), ([{"x": 3, "y": 3}], "x")]),
    Family("factorial", ("factorial", "fact", "product_up_to"), NUMBER, (
        "Write a Python function {sig} that returns the factorial of the non-negative integer {a} (0! is 1).",
        "Implement {sig}: multiply all whole numbers from 1 up to {a} and return the result; for 0 return 1.",
        "Create {sig} computing n factorial with a loop, where the factorial of 0 is 1."),
        "result = 1\nfor i in range(2, {a} + 1):\n    result *= i\nreturn result",
        lambda k: [([0], 1), ([1], 1), ([5], 120), ([6], 720)]),
    Family("fibonacci", ("fib", "fibonacci", "nth_fib"), NUMBER, (
        "Write a Python function {sig} that returns the {a}-th Fibonacci number, where fib(0) is 0 and fib(1) is 1.",
        "Define {sig}: the Fibonacci sequence starts 0, 1, 1, 2, 3; return the element at index {a}.",
        "I need {sig} to give the Fibonacci number at a position, counting from 0 (which gives 0)."),
        "x, y = 0, 1\nfor _ in range({a}):\n    x, y = y, x + y\nreturn x",
        lambda k: [([0], 0), ([1], 1), ([2], 1), ([10], 55)]),
    Family("is_prime", ("is_prime", "prime", "check_prime"), NUMBER, (
        "Write a Python function {sig} that returns True if the integer {a} is a prime number, else False.",
        "Implement {sig}, deciding whether {a} is prime; numbers below 2 are not prime.",
        "Create {sig}: return whether a whole number has no divisors other than 1 and itself (0 and 1 are not prime)."),
        "if {a} < 2:\n    return False\nfor d in range(2, int({a} ** 0.5) + 1):\n    if {a} % d == 0:\n"
        "        return False\nreturn True",
        lambda k: [([0], False), ([1], False), ([2], True), ([9], False), ([13], True), ([25], False)]),
    Family("fizzbuzz", ("fizzbuzz", "fizz_buzz", "say"), NUMBER, (
        "Write a Python function {sig} that returns 'Fizz' if {a} is divisible by 3, 'Buzz' if by 5, "
        "'FizzBuzz' if by both, else {a} as a string.",
        "Define {sig}: for a multiple of both 3 and 5 return 'FizzBuzz', of 3 only 'Fizz', of 5 only 'Buzz', "
        "otherwise str({a}).",
        "Make the classic FizzBuzz rule a function {sig} that returns the word (or the number as text) for one "
        "number."),
        "if {a} % 15 == 0:\n    return 'FizzBuzz'\nif {a} % 3 == 0:\n    return 'Fizz'\nif {a} % 5 == 0:\n"
        "    return 'Buzz'\nreturn str({a})",
        lambda k: [([3], "Fizz"), ([5], "Buzz"), ([15], "FizzBuzz"), ([7], "7"), ([30], "FizzBuzz")]),
    Family("digit_sum", ("digit_sum", "sum_digits", "add_digits"), NUMBER, (
        "Write a Python function {sig} that returns the sum of the digits of the non-negative integer {a}.",
        "Implement {sig}: add together the decimal digits of {a} (for 0 the answer is 0).",
        "I want {sig} to take a whole number and give back the total of its digits."),
        "return sum(int(d) for d in str({a}))",
        lambda k: [([0], 0), ([123], 6), ([9], 9), ([1005], 6)]),
    Family("dedupe", ("dedupe", "unique", "remove_duplicates"), LIST, (
        "Write a Python function {sig} that returns {a} without duplicates, keeping the first occurrence of each "
        "item in order.",
        "Define {sig}: drop repeated elements of {a} while preserving the original order.",
        "Create {sig} which gives a list's distinct items in the order they first appear."),
        "seen = []\nfor x in {a}:\n    if x not in seen:\n        seen.append(x)\nreturn seen",
        lambda k: [([[1, 2, 1, 3, 2]], [1, 2, 3]), ([[]], []), ([[5, 5, 5]], [5]), ([[3, 1]], [3, 1])]),
    Family("flatten", ("flatten", "flat", "join_lists"), (("lists",), ("rows",), ("groups",)), (
        "Write a Python function {sig} that takes a list of lists {a} and returns one list with all their items "
        "in order.",
        "Implement {sig}: concatenate the inner lists of {a} into a single flat list.",
        "Make {sig} turn a list of lists into one list (one level of nesting only)."),
        "return [x for inner in {a} for x in inner]",
        lambda k: [([[[1, 2], [3]]], [1, 2, 3]), ([[]], []), ([[[], [4]]], [4]), ([[[1], [], [2, 3]]], [1, 2, 3])]),
    Family("average", ("average", "mean", "avg"), LIST, (
        "Write a Python function {sig} that returns the average of the numbers in {a}, or 0 for an empty list.",
        "Define {sig}: divide the sum of {a} by its length; when {a} is empty return 0.",
        "I need {sig} to compute the mean of a list of numbers, giving 0 if the list is empty."),
        "if not {a}:\n    return 0\nreturn sum({a}) / len({a})",
        lambda k: [([[2, 4]], 3), ([[]], 0), ([[1, 2]], 1.5), ([[5]], 5)]),
    Family("clamp", ("clamp", "limit", "bound"), (("x", "lo", "hi"), ("value", "low", "high")), (
        "Write a Python function {sig} that returns {a} limited to the range {b}..{c}: {b} if it is below, "
        "{c} if above, else {a}.",
        "Implement {sig}: keep {a} between {b} and {c} inclusive, moving it to the nearest end when outside.",
        "Create {sig} which clamps a number into a closed interval given by a lower and an upper bound."),
        "return max({b}, min({a}, {c}))",
        lambda k: [([5, 0, 10], 5), ([-3, 0, 10], 0), ([12, 0, 10], 10), ([0, 0, 0], 0)]),
    Family("letter_grade", ("grade", "letter_grade", "to_grade"), (("score",), ("points",), ("mark",)), (
        "Write a Python function {sig} that returns 'A' for {a} of 90 or more, 'B' for 80 to 89, 'C' for 70 to 79, "
        "and 'F' below 70.",
        "Define {sig}: turn a test {a} into a letter, A from 90 up, B from 80, C from 70, otherwise F.",
        "Make {sig} map a numeric score to a grade letter: at least 90 is A, at least 80 is B, at least 70 is C, "
        "anything lower is F."),
        "if {a} >= 90:\n    return 'A'\nif {a} >= 80:\n    return 'B'\nif {a} >= 70:\n    return 'C'\nreturn 'F'",
        lambda k: [([95], "A"), ([90], "A"), ([85], "B"), ([70], "C"), ([69], "F"), ([0], "F")]),
    Family("count_char", ("count_char", "occurrences", "how_many"), (("s", "ch"), ("text", "c")), (
        "Write a Python function {sig} that returns how many times the character {b} appears in the string {a}.",
        "Implement {sig}: count the occurrences of {b} in {a}.",
        "I need {sig} to say how often a given letter occurs in some text."),
        "return {a}.count({b})",
        lambda k: [(["banana", "a"], 3), (["", "a"], 0), (["abc", "z"], 0), (["aaa", "a"], 3)]),
    Family("product", ("product", "multiply_all", "prod"), LIST, (
        "Write a Python function {sig} that returns the product of the numbers in {a} (1 for an empty list).",
        "Define {sig}: multiply every element of {a} together; an empty list gives 1.",
        "Create {sig} which multiplies all numbers of a list and returns the result, 1 when the list is empty."),
        "result = 1\nfor x in {a}:\n    result *= x\nreturn result",
        lambda k: [([[2, 3, 4]], 24), ([[]], 1), ([[5]], 5), ([[-1, 0, 7]], 0)]),
    Family("greater_than_k", ("above_{k}", "over_{k}", "bigger_than_{k}"), LIST, (
        "Write a Python function {sig} that returns a list of the numbers in {a} that are greater than {k}.",
        "Implement {sig}: keep only the elements of {a} above {k}, in their original order.",
        "Make {sig} filter a list down to the values strictly bigger than {k}."),
        "return [x for x in {a} if x > {k}]",
        lambda k: [([[k - 1, k, k + 1, k + 10]], [k + 1, k + 10]), ([[]], []), ([[k]], []), ([[k + 2, 0]], [k + 2])],
        (2, 50)),
    Family("find_index", ("find_index", "index_of", "position"), (("xs", "target"), ("items", "x")), (
        "Write a Python function {sig} that returns the index of the first {b} in the list {a}, or -1 if it is "
        "not there.",
        "Define {sig}: search {a} for {b} and give back its first position, -1 when it is missing.",
        "I want {sig} to find where a value first occurs in a list without using .index(), returning -1 if absent."),
        "for i, item in enumerate({a}):\n    if item == {b}:\n        return i\nreturn -1",
        lambda k: [([[4, 2, 4], 4], 0), ([[], 1], -1), ([[1, 2, 3], 3], 2), ([[1], 5], -1)]),
    Family("merge_dicts", ("merge", "merge_dicts", "combine"), (("a", "b"), ("first", "second")), (
        "Write a Python function {sig} that returns a new dict with the items of {a} and {b}; where a key is in "
        "both, {b}'s value wins.",
        "Implement {sig}: combine two dicts into a new one, letting {b} override {a} on shared keys.",
        "Create {sig} that merges a second dictionary over a first one without changing either."),
        "merged = dict({a})\nmerged.update({b})\nreturn merged",
        lambda k: [([{"x": 1}, {"y": 2}], {"x": 1, "y": 2}), ([{}, {}], {}), ([{"x": 1}, {"x": 9}], {"x": 9})]),
    Family("square_all", ("squares", "square_all", "squared"), LIST, (
        "Write a Python function {sig} that returns a list of the squares of the numbers in {a}.",
        "Define {sig}: multiply each element of {a} by itself and return the new list.",
        "Make {sig} which squares every number in a list."),
        "return [x * x for x in {a}]",
        lambda k: [([[1, 2, 3]], [1, 4, 9]), ([[]], []), ([[-3]], [9])]),
    Family("running_total", ("running_total", "cumulative", "prefix_sums"), LIST, (
        "Write a Python function {sig} that returns the running totals of {a}: element i is the sum of the first "
        "i + 1 numbers.",
        "Implement {sig}: build the list of cumulative sums of {a}.",
        "Create {sig} giving, for each position of a list, the sum of everything up to and including it."),
        "out, total = [], 0\nfor x in {a}:\n    total += x\n    out.append(total)\nreturn out",
        lambda k: [([[1, 2, 3]], [1, 3, 6]), ([[]], []), ([[5, -5, 2]], [5, 0, 2])]),
    Family("longest_word", ("longest_word", "longest", "biggest_word"), SENTENCE, (
        "Write a Python function {sig} that returns the longest word in {a} (the first one if several tie), or "
        "'' if there are no words.",
        "Define {sig}: split {a} into words and give back the longest; ties go to the earliest, no words gives ''.",
        "I need {sig} to pick the longest word of a sentence, returning an empty string for an empty sentence."),
        "best = ''\nfor w in {a}.split():\n    if len(w) > len(best):\n        best = w\nreturn best",
        lambda k: [(["a bb ccc dd"], "ccc"), ([""], ""), (["hi yo"], "hi"), (["  one  "], "one")]),
    Family("all_positive", ("all_positive", "positive", "no_negatives"), LIST, (
        "Write a Python function {sig} that returns True if every number in {a} is greater than 0 (True for "
        "an empty list).",
        "Implement {sig}: check whether all elements of {a} are positive.",
        "Make {sig} tell if a list contains only numbers above zero; an empty list counts as True."),
        "return all(x > 0 for x in {a})",
        lambda k: [([[1, 2]], True), ([[]], True), ([[3, 0]], False), ([[-1]], False)]),
    Family("chunks_of_k", ("chunks_{k}", "split_{k}", "groups_of_{k}"), LIST, (
        "Write a Python function {sig} that splits the list {a} into consecutive chunks of {k} items (the last "
        "may be shorter).",
        "Define {sig}: return a list of lists, each holding {k} consecutive elements of {a}, the remainder last.",
        "Create {sig} to cut a list into pieces of size {k}, in order."),
        "return [{a}[i:i + {k}] for i in range(0, len({a}), {k})]",
        lambda k: [([list(range(2 * k + 1))], [list(range(k)), list(range(k, 2 * k)), [2 * k]]), ([[]], []),
                   ([[7]], [[7]])],
        (2, 6)),
    Family("is_sorted", ("is_sorted", "in_order", "sorted_check"), LIST, (
        "Write a Python function {sig} that returns True if {a} is in non-decreasing order (empty lists count).",
        "Implement {sig}: check that each element of {a} is at most the next one.",
        "I want {sig} to tell whether a list of numbers is already sorted from small to large."),
        "for i in range(len({a}) - 1):\n    if {a}[i] > {a}[i + 1]:\n        return False\nreturn True",
        lambda k: [([[1, 2, 2, 5]], True), ([[]], True), ([[3, 1]], False), ([[4]], True)]),
    Family("times_k", ("times_{k}", "scale_{k}", "multiply_by_{k}"), LIST, (
        "Write a Python function {sig} that returns a new list with every number in {a} multiplied by {k}.",
        "Define {sig}: scale each element of {a} by {k}.",
        "Make {sig} which gives back the list with all its values times {k}."),
        "return [x * {k} for x in {a}]",
        lambda k: [([[1, 2]], [k, 2 * k]), ([[]], []), ([[0, -1]], [0, -k])],
        (2, 12)),
]


# The sandbox both program runners share (this one for generated exercises, humaneval.py's for whole programs): an
# audit hook refusing sockets, subprocesses and file access outside the temp dir (reads of the Python installation
# allowed), run in a separate interpreter under CPU and memory rlimits.
SANDBOX_GUARD = textwrap.dedent('''
    import json, os, resource, sys
    tmp = os.getcwd()
    def _guard(event, args):
        if event.startswith(("socket.", "subprocess.", "os.exec", "os.fork", "os.posix_spawn", "os.system", "pty.")):
            raise PermissionError("sandbox: " + event + " is not allowed")
        if event == "open" and isinstance(args[0], (str, bytes)):
            path = os.path.realpath(args[0] if isinstance(args[0], str) else args[0].decode())
            mode = args[1] if len(args) > 1 and isinstance(args[1], str) else "r"
            if not path.startswith(tmp) and any(c in mode for c in "wax+"):
                raise PermissionError("sandbox: writing outside the temp dir is not allowed")
            if not path.startswith(tmp) and not path.startswith(sys.prefix) and not path.startswith(sys.base_prefix):
                raise PermissionError("sandbox: reading outside the temp dir is not allowed")
''')


def sandbox_limits(cpu_seconds: int, memory_bytes: int) -> str:
    """Lines of the runner setting its CPU time (s) and address-space (bytes) limits."""
    return (f"resource.setrlimit(resource.RLIMIT_CPU, ({cpu_seconds}, {cpu_seconds}))\n"
            f"resource.setrlimit(resource.RLIMIT_AS, ({memory_bytes}, {memory_bytes}))\n")


HARNESS = SANDBOX_GUARD + sandbox_limits(5, 512 << 20) + textwrap.dedent('''
    sys.addaudithook(_guard)
    cases = json.loads(sys.argv[1])
    namespace = {}
    exec(compile(open("solution.py").read(), "solution.py", "exec"), namespace)
    fn = namespace[sys.argv[2]]
    ok = all(fn(*args) == expected for args, expected in cases)
    print("PASS" if ok else "FAIL")
''')


STUB_SHARE = 0.4  # share of rows posed as a function stub to complete (the layout of HumanEval's prompts)
STUB_INSTRUCTION = "Complete the following Python function. Reply with the complete function in a Python code block.\n\n"


def generate(rng: random.Random, family: int | None = None, phrasing: int | None = None) -> dict:
    """An exercise of ``FAMILIES[family]`` worded by its ``phrasing`` (random when not given).

    Most rows ask in prose and get the bare function; ``STUB_SHARE`` of them give the request as the
    docstring of a stub in a fenced block (``STUB_INSTRUCTION``, the layout ``llora eval --benchmark
    humaneval`` uses) and get the complete function in a fenced block. The hidden tests are never shown.
    """
    fam = FAMILIES[rng.randrange(len(FAMILIES)) if family is None else family]
    text = fam.phrasings[rng.randrange(len(fam.phrasings)) if phrasing is None else phrasing]
    k = rng.randint(*fam.k) if fam.k else 0
    args = rng.choice(fam.args)
    fields = {"k": k, **dict(zip("abc", args))}
    name = rng.choice(fam.names).format(k=k)
    quoted = {key: f"`{v}`" if key != "k" else v for key, v in fields.items()}
    prompt = text.format(sig=f"`{name}({', '.join(args)})`", **quoted)
    header = f"def {name}({', '.join(args)}):\n"
    solution = header + textwrap.indent(fam.body.format(**fields), "    ")
    if rng.random() < STUB_SHARE:
        prompt = f'{STUB_INSTRUCTION}```python\n{header}    """{prompt}\n    """\n```'
        solution = f"```python\n{solution}\n```"
    return {
        "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": solution}],
        "check": {"function": name, "tests": [[list(a), expected] for a, expected in fam.cases(k)]},
    }


def extract_code(output: str) -> str:
    """The code of a reply: a fenced block if there is one, else the text from the first ``def``."""
    fenced = re.search(r"```(?:python)?\n(.*?)```", output, re.S)
    if fenced:
        return fenced.group(1)
    start = output.find("def ")
    return output[start:] if start >= 0 else output


def run_sandboxed(source: str, function: str, tests: list, *, timeout: float = 10.0) -> bool:
    with tempfile.TemporaryDirectory(prefix="llora-code-") as tmp:
        with open(f"{tmp}/solution.py", "w") as f:
            f.write(source)
        with open(f"{tmp}/harness.py", "w") as f:
            f.write(HARNESS)
        try:
            proc = subprocess.run(
                [sys.executable, "-I", "harness.py", json.dumps(tests), function],
                cwd=tmp, capture_output=True, text=True, timeout=timeout,
                env={"PATH": "/usr/bin:/bin", "HOME": tmp, "TMPDIR": tmp},
            )
        except subprocess.TimeoutExpired:
            return False
        return proc.returncode == 0 and proc.stdout.strip().endswith("PASS")


def check(row: dict, output: str) -> bool:
    return run_sandboxed(extract_code(output), row["check"]["function"], row["check"]["tests"])
