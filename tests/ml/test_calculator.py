"""Calculator-assisted decoding (llora_cli.calculator): values, what is due, the logits processor, generate, eval."""

from __future__ import annotations

import pytest

from llora_cli.calculator import CalculatorUnsupported, due_digits, value_of

CHARS = list("0123456789 +-*/=.,abcdefghijklmnopqrstuvwxyzST?")


@pytest.mark.parametrize("expression,value", [
    ("48 / 6", 8), ("17 / 4", 4), ("7 * 14", 98), ("35 - 8 - 6", 21), ("3 + 4 * 2", 11), ("12 x 3", 36),
    ("12 × 3", 36), ("2 - 5", None), ("1 + 7 / 2", None), ("5 / 0", None), ("10 / 2 * 3", 15), ("3 / 4", None),
    ("8 / 8", 1),
])
def test_value_of(expression, value):
    assert value_of(expression) == value


@pytest.mark.parametrize("text,due", [
    ("So 48 / 6 = ", ("8", "", True)),
    ("So 48 / 6 = 7", ("8", "7", True)),
    ("The total is 35 - 8 - 6 = 2", ("21", "2", True)),
    ("It is 12 * 3 =", ("36", "", False)),
    ("Each gets 17 / 4 = 4 remainder ", ("1", "", True)),
    ("Each gets 17 / 4 = 4 remainder 1", ("1", "1", True)),
    ("The answer is 7.", None),
    ("12 * 3 = 36. The answer is ", None),
    ("2 - 5 = ", None),  # negative: left to the model
    ("It costs 3.5 * 2 = ", None),  # a decimal operand: not "5 * 2"
    ("That is 1,200 + 5 = ", None),
    ("From 10:30 + 15 = ", None),
    ("The change is -3 + 5 = ", None),
    ("Item x2 + 3 = ", None),
    ("Then 10 - 3 + 5 = ", ("12", "", True)),
    ("(4 + 5 = ", ("9", "", True)),
    ("so 3 / 4 = ", None),  # a fraction, not a quotient of 0
    ("The change is −3 + 5 = ", None),  # a Unicode minus sign
    ("It is due 2024-12-11 = ", None),  # an ISO date, not 2024 - 12 - 11
    ("So 2024 - 12 - 11 = ", ("2001", "", True)),  # the same numbers written as a subtraction
    ("So 1000-20-30 = ", ("950", "", True)),  # no month 20: a subtraction
])
def test_due_digits(text, due):
    assert due_digits(text) == due


def test_a_step_at_the_start_of_a_cut_text_is_not_forced():
    # only the end of a long reply is decoded: its first number may be the tail of a longer one, or terms lost
    assert due_digits("15 + 410 + 310 = ", cut=True) is None
    assert due_digits("so 15 + 410 + 310 = ", cut=True) == ("735", "", True)
    assert due_digits("15 + 410 + 310 = ") == ("735", "", True)


@pytest.fixture(scope="module")
def char_tokenizer():
    """A real transformers tokenizer writing every character as one token (digits one per token)."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(["<pad>", "<eos>", *CHARS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    from tokenizers import decoders

    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")


def logits_preferring(tokenizer, text: str, width: int):
    import torch

    scores = torch.zeros(1, width)
    scores[0, tokenizer.convert_tokens_to_ids(" ")] = 1.0  # the model's second choice
    scores[0, tokenizer.convert_tokens_to_ids(text)] = 5.0
    return scores


def test_processor_forces_the_value_then_ends_the_number(char_tokenizer):
    import torch

    from llora_cli.calculator import CalculatorLogitsProcessor

    tok = char_tokenizer
    prompt = tok("Q?", add_special_tokens=False)["input_ids"]
    proc = CalculatorLogitsProcessor(tok)
    width = len(tok)

    def step(reply: str, preferred: str) -> str:
        ids = torch.tensor([prompt + tok(reply, add_special_tokens=False)["input_ids"]])
        out = proc(ids, logits_preferring(tok, preferred, width))
        return tok.convert_ids_to_tokens(int(out[0].argmax()))

    assert step("so 48 / 6 = ", "7") == "8"  # the slip corrected
    assert step("so 48 / 6 = ", "a") == "8"  # after "= " the digit is forced whatever the model prefers
    assert step("so 48 / 6 =", "7") == " "  # right after "=": only the wrong digits are masked (the space wins)...
    assert step("so 48 / 6 =", "8") == "8"  # ...and the right one stays
    assert step("so 48 / 6 = 8", "0") != "0"  # the number is complete: no further digit
    assert step("so 7 * 14 = 9", "3") == "8"
    assert step("the answer is ", "7") == "7"  # not an arithmetic step: untouched
    assert proc.forced == 5  # 7->8, a->8, 7->space, 0->(not a digit), 3->8


def test_generate_with_a_model_writes_computed_results(char_tokenizer):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from llora_cli.evaluate import generate_texts

    torch.manual_seed(0)
    tok = char_tokenizer
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                                         pad_token_id=0, eos_token_id=1))
    prompts = ["so 12 * 3 = ", "ok 96 / 8 = ", "x 4 + 5 + 6 = "]
    plain = generate_texts(tok, model, prompts, max_new_tokens=4, strip=False)
    calc: dict = {}
    outs = generate_texts(tok, model, prompts, max_new_tokens=4, strip=False, calculator=calc)
    assert [o[:2] for o in outs] == ["36", "12", "15"]
    assert all(not o[2:3].isdigit() for o in outs)  # the number ends with the value
    expected = sum(sum(a != b for a, b in zip(p[:2], v)) for p, v in zip(plain, ["36", "12", "15"]))
    assert calc["forced_tokens"] >= expected > 0  # the random model's own digits differ: the calculator changed them


def test_a_tokenizer_merging_digits_is_refused(tiny_model_dir):
    from transformers import AutoTokenizer

    from llora_cli.calculator import digit_token_ids

    with pytest.raises(CalculatorUnsupported, match="one digit per token"):
        digit_token_ids(AutoTokenizer.from_pretrained(tiny_model_dir))


def test_eval_calculator_refusals(cli, tiny_model_dir, tmp_path):
    cli.json("bases", "add", tiny_model_dir, "--name", "tiny")
    cli.json("data", "make", "reasoning", "--n", "8", "--name", "r")
    merged = cli("eval", "tiny", "--data", "r", "--calculator", "--limit", "2")
    assert merged.exit_code == 2 and "does not write numbers one digit per token" in merged.stderr
    assert "Traceback" not in merged.output
    bench = cli("eval", "tiny", "--benchmark", "humaneval", "--calculator")
    assert bench.exit_code == 2 and "--calculator applies to --data" in bench.stderr
    f = tmp_path / "plain.jsonl"
    f.write_text('{"instruction": "Say hi", "output": "hi"}\n')
    none = cli("eval", "tiny", "--data", f, "--calculator")
    assert none.exit_code == 2 and "no checker" in none.stderr


def test_deploy_records_a_modifiers_calculator_default(cli, store, tiny_model_dir):
    """`llora deploy MODIFIER --calculator/--no-calculator`: checked before anything changes, recorded in the deploy's
    transaction, read by the engine when a request does not say (the positive path on SmolLM2, whose tokenizer
    writes digits one by one: tests/ml/test_smollm2_e2e.py)."""
    from llora_cli.engine.base import serving_default

    cli.json("bases", "add", tiny_model_dir, "--name", "tiny")
    cli.json("data", "make", "reasoning", "--n", "8", "--name", "r")
    cli.json("train", "--base", "tiny", "--data", "r", "--kind", "modifier", "--domain", "reasoning", "--name", "mod",
             "max_steps=1")
    cli.json("deploy", "tiny")
    merges = cli("deploy", "mod", "--calculator")  # the tiny tokenizer merges digits
    assert merges.exit_code == 2 and "one digit per token" in merges.stderr and "Traceback" not in merges.output
    mod = store.resolve("mod")
    assert mod.state == "trained" and "serving" not in mod.meta  # nothing changed
    base = cli("deploy", "tiny", "--calculator")
    assert base.exit_code == 2 and "serving default of a generative modifier; 'tiny' is a base" in base.stderr
    off = cli.json("deploy", "mod", "--no-calculator")
    assert off["state"] == "deployed" and off["serving"] == {"calculator": False}
    assert serving_default(store.resolve("mod"), "calculator") is False and serving_default(None, "calculator") is False
    again = cli("deploy", "mod", "--calculator")
    assert again.exit_code == 2 and "is deployed" in again.stderr and "llora retire mod" in again.stderr
    reply = cli.json("run", "2 + 2 =", "--modifier", "mod", "--max-tokens", "2")
    assert "calculator" not in reply["params"] and "calculator_from" not in reply["params"]
    refused = cli("run", "2 + 2 =", "--modifier", "mod", "--calculator", "--max-tokens", "2")
    assert refused.exit_code == 2 and "one digit per token" in refused.stderr
    # the request log's table shows how many tokens a calculator-assisted request had computed
    tiny = store.resolve("tiny")
    store.log_request(base_id=tiny.id, modifier_id=mod.id, engine="transformers", client="test", prompt="2 * 3 =",
                      response=" 6", tokens_in=4, tokens_out=1, latency_ms=1.0, ttft_ms=None,
                      params={"calculator": True, "calculator_forced": 1})
    assert "mod +calc(1)" in cli("logs", "list", "--limit", "1").stdout


def test_engine_rows_count_the_tokens_their_calculator_changed(char_tokenizer):
    """The engine's batch path (TransformersBatches): each row's ``calculator_forced`` is what the calculator changed
    in that row (read when the row closes), 0 for a row without it in the same batch."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from llora_cli.engine.batching import Job, TransformersBatches
    from llora_cli.evaluate import generate_texts

    torch.manual_seed(0)
    tok = char_tokenizer
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                                         pad_token_id=0, eos_token_id=1)).eval()
    batches = TransformersBatches(lambda: model, tok)
    ids = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    calc, plain = Job(ids("so 12 * 3 = "), None, 2, calculator=True), Job(ids("ok 96 / 8 = "), None, 2)
    batches.run([calc, plain])
    assert calc.text == "36" and plain.calculator_forced == 0
    # the model's own choices at the two forced positions: each differing one is a token the calculator changed
    own = generate_texts(tok, model, ["so 12 * 3 = ", "so 12 * 3 = 3"], max_new_tokens=1, strip=False)
    expected = (own[0][:1] != "3") + (own[1][:1] != "6")
    assert expected > 0  # the random model writes other digits: the count has something to count
    assert calc.calculator_forced == expected
    alone = Job(ids("so 12 * 3 = "), None, 2, calculator=True)
    batches.run([alone])
    assert alone.calculator_forced == expected
