"""`RowStreamer` (both engines' streaming of a row): stop strings end a row before the first one, text that may
start a stop string is held back, the streamed pieces join to the reply text, finish reasons say what happened,
log-probabilities cover the tokens of the text. A fake tokenizer whose tokens are strings, no model."""

from __future__ import annotations

import random

import numpy as np

from llora_cli.engine.batching import Job, RowStreamer, held_back, stop_at

EOS = 0


class PieceTokenizer:
    """Token i > 0 is the string ``pieces[i]``; token 0 is EOS (skipped when decoding)."""

    def __init__(self, pieces: list[str]) -> None:
        self.pieces = pieces

    def decode(self, ids, skip_special_tokens=True):
        return "".join(self.pieces[i] for i in ids if i != EOS)


def stream(pieces: list[str], *, stop=(), max_tokens=100, logprobs=None, steps=None):
    """Run one row through a RowStreamer, one token per step: ``pieces`` are the generated tokens' texts (None:
    EOS). Returns the job and the streamed (text, logprobs) pieces."""
    vocab = ["<eos>"] + [p for p in pieces if p is not None]
    tok = PieceTokenizer(vocab)
    ids = [EOS if p is None else i for i, p in enumerate(pieces, start=1)]
    out: list[tuple[str, list]] = []
    job = Job([5, 6], None, max_tokens, stop=tuple(stop), logprobs=logprobs,
              on_piece=lambda text, entries: out.append((text, entries)))
    streamer = RowStreamer(tok, [job], {EOS})
    streamer.put(np.asarray([5, 6]))  # the prompt
    for step, token in enumerate(ids):
        if not streamer.open[0]:
            break
        if logprobs is not None:
            streamer.step_logprobs = steps[step][None, :] if steps is not None else np.log(
                np.full((1, len(vocab)), 1 / len(vocab)))
        streamer.put(np.asarray([token]))
    streamer.end()
    return job, out


def expected_cut(pieces: list[str], stops: list[str]) -> tuple[str, str]:
    """What the row must say: grow the text token by token; at the first token whose text holds a stop string,
    cut before the earliest one (finish "stop"); at EOS, "stop"; else all of it, "length"."""
    text = ""
    for p in pieces:
        if p is None:
            return text, "stop"
        text += p
        hits = [text.find(s) for s in stops if s in text]
        if hits:
            return text[:min(hits)], "stop"
    return text, "length"


def test_a_stop_string_across_tokens_ends_the_row_before_it():
    job, out = stream(["Hi ", "there <", "EN", "D> and", " more"], stop=["<END>"])
    assert job.text == "Hi there " and job.finish_reason == "stop"
    assert "".join(t for t, _ in out) == "Hi there "
    assert len(job.tokens) == 4  # generation stopped at the token that completed the stop string


def test_text_that_may_start_a_stop_string_is_held_back():
    # without holding back " " (a prefix of " c"), "a b " would have been streamed and then cut to "a b"
    job, out = stream(["a", " b", " ", "c", "d"], stop=[" c"])
    assert [t for t, _ in out] == ["a ", "b"] and job.text == "a b"
    # a held-back prefix that turns out not to be a stop string is sent later, nothing lost
    job, out = stream(["x ", "<E", "ND", " y", " z"], stop=["<END>"], max_tokens=5)
    assert job.text == "x <END y z" and job.finish_reason == "length"
    assert "".join(t for t, _ in out) == "x <END y z"


def test_the_first_stop_string_to_appear_wins_and_eos_and_length_are_told_apart():
    job, _ = stream(["ab", "cd", "ef"], stop=["ef", "bc"])
    assert job.text == "a" and job.finish_reason == "stop"
    job, out = stream(["ab", " cd", None, "zz"])
    assert job.text == "ab cd" and job.finish_reason == "stop" and len(job.tokens) == 3
    assert "".join(t for t, _ in out) == "ab cd"
    job, _ = stream(["ab", " cd", " ef"], max_tokens=2)
    assert job.text == "ab cd" and job.finish_reason == "length"
    job, out = stream(["STOP", "x"], stop=["STOP"])
    assert job.text == "" and job.finish_reason == "stop" and out == []


def test_streamed_text_always_joins_to_the_reply_text_random_rows():
    rng = random.Random(11)
    alphabet = ["a", "b", " ", "\n", "ab", "ba", " a", "b ", "aab", "<", ">", "<a", "b>"]
    for case in range(600):
        pieces = [rng.choice(alphabet) for _ in range(rng.randint(1, 14))]
        if rng.random() < 0.2:
            pieces.insert(rng.randint(0, len(pieces)), None)
        stops = ["".join(rng.choice("ab <>") for _ in range(rng.randint(1, 4))) for _ in range(rng.randint(0, 4))]
        job, out = stream(pieces, stop=stops)
        text, reason = expected_cut(pieces, stops)
        assert (job.text, job.finish_reason) == (text, reason), (case, pieces, stops)
        assert "".join(t for t, _ in out) == job.text, (case, pieces, stops)
        assert not any(s in job.text for s in stops)


def test_log_probabilities_cover_the_tokens_of_the_text():
    rng = np.random.default_rng(0)
    pieces = ["Hi", " there", " ST", "OP", " never"]
    steps = [np.log(p) for p in rng.dirichlet(np.ones(len(pieces) + 1), size=len(pieces))]
    job, out = stream(pieces, stop=["STOP"], logprobs=2, steps=steps)
    assert job.text == "Hi there " and job.text_tokens == 3  # " ST" starts before the cut: its text is in part
    assert len(job.token_logprobs) == 4  # the token completing the stop string was scored too
    for step, (token, logprob, top) in zip(steps, job.token_logprobs):
        assert logprob == float(step[token])
        order = np.argsort(-step)[:2]
        assert [t for t, _ in top] == [int(t) for t in order] and [lp for _, lp in top] == [float(step[t])
                                                                                            for t in order]
    streamed = [e for _, entries in out for e in entries]
    assert streamed == job.token_logprobs[:3]  # every token of the text streamed once, none of the cut
    job, out = stream(["a", " b", None], logprobs=0)
    assert job.text_tokens == 2 and [e for _, es in out for e in es] == job.token_logprobs[:2]
    assert all(top == [] for _, _, top in job.token_logprobs)


def test_stop_helpers():
    assert stop_at("hello world", ("o w", "ld")) == 4 and stop_at("abc", ("x",)) is None
    assert held_back("abc <EN", ("<END>",)) == 3 and held_back("abc", ("<END>",)) == 0
    assert held_back("ab", ("b", "ab!")) == 2  # a whole stop string is not "held back": it ends the row
