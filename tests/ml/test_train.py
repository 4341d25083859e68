"""`llora train`, `llora data`, `llora eval` and `llora runs` on tiny models."""

from __future__ import annotations

import json

import pytest

from llora_store import rules


@pytest.fixture
def setup(cli, tiny_model_dir):
    base = cli.json("bases", "add", tiny_model_dir, "--name", "tiny")
    data = cli.json("data", "make", "automation", "--n", "48", "--name", "auto")
    return base, data


def test_data_make_registers_a_deterministic_dataset(cli, store, tmp_path):
    d = cli.json("data", "make", "reasoning", "--n", "30", "--seed", "2", "--out", tmp_path / "r.jsonl")
    assert d["metadata"]["rows"] == {"train": 30, "test": 20} and d["metadata"]["task"] == "reasoning"
    rows = [json.loads(x) for x in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert len(rows) == 30 and rows[0]["messages"][1]["role"] == "assistant"
    assert (tmp_path / "r.test.jsonl").exists()
    again = cli("data", "make", "reasoning", "--n", "30", "--seed", "2", "--name", "again")
    assert again.exit_code == 1 and "already registered" in again.stderr
    bad = cli("data", "make", "poetry")
    assert bad.exit_code == 2 and "unknown task kind" in bad.stderr


@pytest.mark.parametrize("args,message", [
    (["bogus=1"], "unknown key 'bogus'"),
    (["r=abc"], "'r': Input should be a valid integer"),
    (["r=0"], "'r': Input should be greater than 0"),
    (["dropout=1.5"], "'dropout'"),
    (["lr_scheduler=zigzag"], "'lr_scheduler'"),
    (["target_modules=qkv"], "target_modules ['qkv'] are not linear projections"),
    (["noequals"], "expected key=value"),
])
def test_config_errors_name_the_key_and_create_nothing(cli, store, setup, args, message):
    result = cli("train", "--base", "tiny", "--data", "auto", *args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert store.list(kind="adapter") == [] and store.list(kind="modifier") == []


def test_config_file_is_validated(cli, store, setup, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("r: 8\nlearning_rate: fast\n")
    result = cli("train", "--base", "tiny", "--data", "auto", "--config", cfg)
    assert result.exit_code == 2 and "'learning_rate'" in result.stderr


def test_malformed_user_rows_are_reported_by_line(cli, store, setup, tmp_path):
    f = tmp_path / "mine.jsonl"
    f.write_text('{"instruction": "Say hi", "output": "hi"}\n{"instruction": "x"\n')
    result = cli("train", "--base", "tiny", "--data", f)
    assert result.exit_code == 2 and f"{f}:2: not valid JSON" in result.stderr
    f.write_text('{"instruction": "Say hi", "output": "hi"}\n\n{"messages": [{"role": "user", "content": "q"}]}\n')
    result = cli("train", "--base", "tiny", "--data", f)
    assert result.exit_code == 2 and f"{f}:3: no assistant message" in result.stderr
    assert store.list(kind="dataset") == [d for d in store.list(kind="dataset") if d.name == "auto"]
    assert store.list(kind="adapter") == []


def test_handwritten_rows_without_a_reply_are_scored_but_never_trained(cli, store, setup):
    from pathlib import Path

    hand = Path(__file__).resolve().parents[1] / "data" / "reasoning_handwritten.jsonl"
    r = cli.json("eval", "tiny", "--data", hand, "--task", "reasoning", "--limit", "2")
    assert r["n"] == 2 and r["task"] == "reasoning" and len(r["verdicts"]) == 2 and r["correct"] == 0
    bad = cli("train", "--base", "tiny", "--data", hand)
    assert bad.exit_code == 2 and "row 1 has no assistant message to learn from" in bad.stderr
    assert store.list(kind="adapter") == []


def test_modifier_needs_domain_and_adapter_refuses_one(cli, setup):
    assert "needs --domain" in cli("train", "--base", "tiny", "--data", "auto", "--kind", "modifier").stderr
    assert "--domain is for modifiers" in cli("train", "--base", "tiny", "--data", "auto", "--domain", "x").stderr


def test_dry_run_counts_parameters_and_trains_nothing(cli, store, setup):
    plan = cli.json("train", "--base", "tiny", "--data", "auto", "--dry-run", "r=4", "target_modules=q_proj,v_proj")
    # 2 layers x (q: 4*(32+32) + v: 4*(32+16)) with 2 kv heads of width 8 -> v_proj is 16x32
    assert plan["trainable_parameters"] == 2 * (4 * (32 + 32) + 4 * (32 + 16))
    assert plan["target_modules"] == ["q_proj", "v_proj"] and plan["memory_bytes"]["total"] > 0
    assert store.list(kind="adapter") == []


def test_train_adapter_end_to_end(cli, store, setup, tiny_model_dir):
    base, data = setup
    plan = cli.json("train", "--base", "tiny", "--data", "auto", "--dry-run", "max_steps=6", "dora=true")
    res = cli.json("train", "--base", "tiny", "--data", "auto", "--name", "ad1", "max_steps=6", "dora=true",
                   "rslora=true", "learning_rate=0.01")
    assert res["state"] == "trained" and res["steps"] == 6 and res["tokens"] > 0
    assert res["trainable_parameters"] == plan["trainable_parameters"]
    d = cli.json("show", "ad1")
    assert {p["role"] for p in d["parents"]} == {"trained_on", "data"}
    assert d["base_hash"] == base["content_hash"] and d["quantization"] is None
    assert {"adapter_config.json", "adapter_model.safetensors", "metrics.jsonl"} <= {f["path"] for f in d["files"]}
    cfg = json.loads((store.path_of("ad1") / "adapter_config.json").read_text())
    assert cfg["use_dora"] is True and cfg["use_rslora"] is True and cfg["r"] == 16
    assert sorted(cfg["target_modules"]) == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    # plain PEFT loads it, and it changes the model's outputs
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ids = torch.tensor([[1, 5, 9, 13]])
    before = plain(ids).logits
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), store.path_of("ad1"))
    assert not torch.allclose(before, tuned(ids).logits, atol=1e-4)
    # per-step metrics and the run summary
    run = cli.json("runs", "show", "ad1")
    assert [m["step"] for m in run["metrics"]] == [1, 2, 3, 4, 5, 6]
    assert all(m["loss"] > 0 and m["tokens_per_s"] > 0 for m in run["metrics"])
    text = cli("runs", "show", "ad1")
    assert "steps 1..6" in text.stdout
    assert [e["event"] for e in cli.json("history", "ad1")] == ["create", "finish"]
    assert store.verify("ad1").ok
    # a training adapter is never deployed (R5)
    assert "R5" in cli("deploy", "ad1").stderr


def test_gradient_checkpointing_and_text_data(cli, store, setup, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("The quick brown fox.\n\nJumps over the lazy dog.\n\nAnd runs away.\n")
    res = cli.json("train", "--base", "tiny", "--data", text, "--name", "gc", "max_steps=2",
                   "gradient_checkpointing=true", "batch_size=2")
    assert res["state"] == "trained" and res["steps"] == 2
    ds = cli.json("show", "notes")
    assert ds["metadata"]["format"] == "text" and ds["metadata"]["rows"]["train"] == 3


def test_training_lowers_the_loss(cli, setup):
    res = cli.json("train", "--base", "tiny", "--data", "auto", "--name", "fit", "max_steps=40",
                   "learning_rate=0.01", "batch_size=8")
    run = cli.json("runs", "show", "fit")
    first = sum(m["loss"] for m in run["metrics"][:5]) / 5
    last = sum(m["loss"] for m in run["metrics"][-5:]) / 5
    # a random 2-layer model with LoRA on its projections learns slowly; 0.2 nats is a clear, stable drop
    assert last < first - 0.2 and res["final_loss"] < first - 0.2


def test_eval_stores_results_and_modifier_improves_loss(cli, store, setup):
    cli.json("train", "--base", "tiny", "--data", "auto", "--kind", "modifier", "--domain", "automation",
             "--name", "mod", "max_steps=40", "learning_rate=0.01", "batch_size=8")
    base_eval = cli.json("eval", "tiny", "--data", "auto", "--limit", "8")
    mod_eval = cli.json("eval", "mod", "--data", "auto", "--limit", "8")
    assert base_eval["split"] == "test" and base_eval["n"] == 8 and base_eval["accuracy"] is not None
    assert mod_eval["loss"] < base_eval["loss"]
    assert cli.json("show", "mod")["evaluations"][0]["metrics"]["loss"] == mod_eval["loss"]
    shown = cli("show", "mod")
    assert "evaluations" in shown.stdout and f"{mod_eval['accuracy']:.1%}" in shown.stdout
    d = cli.json("show", "mod")
    assert d["domain"] == "automation"
    assert sorted(p["role"] for p in d["parents"]) == ["data", "runs_on"]


def test_modifier_defaults_heldout_points_and_memorisation_warning(cli, setup, monkeypatch):
    import functools

    from llora_cli import trainjob

    # the real decision on the real losses and held-out points, with thresholds that always fire
    monkeypatch.setattr(trainjob, "memorisation_warning",
                        functools.partial(trainjob.memorisation_warning, near_zero=100.0, flat=100.0))
    result = cli("train", "--base", "tiny", "--data", "auto", "--kind", "modifier", "--domain", "automation",
                 "--name", "memo", "max_steps=8", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["steps"] == 8
    assert [h["step"] for h in out["heldout"]] == [2, 4, 6, 8]  # 1/4, 1/2, 3/4 and the end of the run
    assert all(0 < h["n"] <= 20 and 0 <= h["token_accuracy"] <= 1 and h["loss"] > 0 for h in out["heldout"])
    mid, end = out["heldout"][1], out["heldout"][3]
    assert out["memorisation"].startswith("training loss ")
    assert f"{mid['token_accuracy']:.1%} at step 4 -> {end['token_accuracy']:.1%} at step 8" in out["memorisation"]
    assert "warning: training loss" in result.stderr
    config = cli.json("show", "memo")["metadata"]["config"]
    assert (config["learning_rate"], config["batch_size"], config["lr_scheduler"], config["r"]) == (1e-3, 8, "cosine", 16)
    assert config["max_steps"] == 8  # set on the command line: wins over the default 100


def test_interrupted_run_fails_cleanly_and_resumes(cli, store, setup, monkeypatch):
    from llora_cli import trainjob

    real_run = trainjob.TrainJob.run

    def interrupt_after_checkpoint(self):
        original = self.progress

        def progress(rec):
            if original:
                original(rec)
            if rec["step"] == 3:
                raise KeyboardInterrupt

        self.progress = progress
        return real_run(self)

    monkeypatch.setattr(trainjob.TrainJob, "run", interrupt_after_checkpoint)
    result = cli("train", "--base", "tiny", "--data", "auto", "--name", "cut", "max_steps=6", "save_steps=2")
    assert result.exit_code == 130
    art = store.resolve("cut")
    assert art.state == "failed"
    assert store.history("cut")[-1].reason == "interrupted"
    assert not store.layout.artifact_dir(art.id).exists() or store.describe("cut").files == []
    assert store.layout.leftovers() == []
    monkeypatch.setattr(trainjob.TrainJob, "run", real_run)
    res = cli.json("train", "--resume", "cut")
    assert res["state"] == "trained"
    metrics = cli.json("runs", "show", "cut")["metrics"]
    assert [m["step"] for m in metrics][-3:] == [4, 5, 6]  # resumed after checkpoint-2... up to 6
    assert [e["event"] for e in cli.json("history", "cut")] == ["create", "fail", "resume", "finish"]
    again = cli("train", "--resume", "cut")
    assert again.exit_code == 1 and "only failed or interrupted runs resume" in again.stderr


def test_failed_run_records_reason(cli, store, setup, monkeypatch):
    from llora_cli import trainjob

    def boom(self):
        raise RuntimeError("out of memory (simulated)")

    monkeypatch.setattr(trainjob.TrainJob, "run", boom)
    result = cli("train", "--base", "tiny", "--data", "auto", "--name", "oom", "max_steps=2")
    assert result.exit_code == 1 and "out of memory (simulated)" in result.stderr and "--resume" in result.stderr
    assert store.resolve("oom").state == "failed"
    assert "out of memory" in store.history("oom")[-1].reason


def test_qlora_nf4_training_is_recorded_for_r4(cli, store, setup):
    res = cli.json("train", "--base", "tiny", "--data", "auto", "--name", "q", "--quantize", "nf4", "max_steps=2")
    assert res["state"] == "trained" and "nf4" in res["precision"]
    d = cli.json("show", "q")
    assert d["quantization"] == "nf4" and d["metadata"]["quantized_training"] == {"method": "nf4"}
    with pytest.raises(rules.RuleViolation, match="R4"):
        rules.check_mergeable(store.resolve("q"), store.resolve("tiny"), naive_qlora=True)


def test_two_process_accelerate_run(cli, store, setup):
    res = cli.json("train", "--base", "tiny", "--data", "auto", "--name", "ddp", "--launcher", "accelerate",
                   "--num-processes", "2", "max_steps=3")
    assert res["state"] == "trained" and res["num_processes"] == 2 and res["steps"] == 3
    assert res["world_size"] == 2  # reported by the trainer inside the launched ranks
    d = cli.json("show", "ddp")
    assert d["metadata"]["num_processes"] == 2
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {f["path"] for f in d["files"]}


def test_assistant_only_labels(tiny_model_dir):
    from transformers import AutoTokenizer

    from llora_cli.encoding import IGNORE, encode_row

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    row = {"messages": [{"role": "user", "content": "What is 2 plus 2?"},
                        {"role": "assistant", "content": "2 plus 2 is 4."}]}
    enc = encode_row(tok, row, 512)
    learned = [t for t, lab in zip(enc["input_ids"], enc["labels"]) if lab != IGNORE]
    assert tok.decode(learned).startswith("2 plus 2 is 4.<|im_end|>")
    masked = tok.decode([t for t, lab in zip(enc["input_ids"], enc["labels"]) if lab == IGNORE])
    assert "What is 2 plus 2?" in masked and "2 plus 2 is 4." not in masked


def test_experiment_grid_runs_and_ranks(cli, store, setup, tmp_path):
    spec = tmp_path / "exp.yaml"
    spec.write_text(
        "name: sweep\nbase: tiny\ndata: auto\nkind: adapter\nlimit: 4\nmetric: loss\n"
        "config: {max_steps: 3, batch_size: 4}\ngrid: {r: [2, 4], learning_rate: [0.001, 0.01]}\n"
    )
    res = cli.json("experiment", spec)
    assert res["metric"] == "loss" and len(res["runs"]) == 4
    losses = [r["loss"] for r in res["runs"]]
    assert losses == sorted(losses)
    assert {(r["params"]["r"], r["params"]["learning_rate"]) for r in res["runs"]} == {
        (2, 0.001), (2, 0.01), (4, 0.001), (4, 0.01)}
    run = cli.json("show", res["runs"][0]["run_id"])
    assert run["metadata"]["experiment"]["name"] == "sweep" and run["evaluations"]


def test_experiment_with_a_bad_grid_point_trains_nothing(cli, store, setup, tmp_path):
    spec = tmp_path / "exp.yaml"
    spec.write_text("name: bad\nbase: tiny\ndata: auto\ngrid: {r: [4, -1]}\n")
    result = cli("experiment", spec)
    assert result.exit_code == 2 and "grid point {'r': -1}" in result.stderr
    assert store.list(kind="adapter") == []
    spec.write_text("name: bad\nbase: tiny\ndata: auto\ngrid: {r: [4]}\nfoo: 1\n")
    assert "unknown key 'foo'" in cli("experiment", spec).stderr


def test_runs_show_writes_a_png(cli, setup, tmp_path):
    cli.json("train", "--base", "tiny", "--data", "auto", "--name", "p", "max_steps=3")
    png = tmp_path / "loss.png"
    assert cli("runs", "show", "p", "--plot", png).exit_code == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000


def test_logits_kept_at_learned_positions_give_the_models_own_loss(tiny_model_dir, tiny_adapter_dir):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llora_cli.encoding import encode_row, keeps_learned_logits, learned_loss, learned_positions, pad_batch

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = [{"messages": [{"role": "user", "content": "What is 2 plus 2?"},
                          {"role": "assistant", "content": "2 plus 2 is 4."}]},
            {"messages": [{"role": "system", "content": "Tools: timer(minutes), weather(city)."},
                          {"role": "user", "content": "Set a timer for five minutes, please, right now."},
                          {"role": "assistant", "content": '{"name": "timer", "arguments": {"minutes": 5}}'}]}]
    batch = pad_batch([encode_row(tok, r, 512) for r in rows], tok.pad_token_id or 0)  # two lengths: padding
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tiny_adapter_dir)
    assert keeps_learned_logits(model) and keeps_learned_logits(model.get_base_model())
    keep = learned_positions(batch["labels"])
    assert int(keep.sum()) == int((batch["labels"][:, 1:] != -100).sum()) < keep.numel() / 2
    with torch.no_grad():
        full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
        kept = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=keep)
    assert kept.logits.shape == (int(keep.sum()), full.logits.shape[-1])
    assert torch.allclose(learned_loss(kept, batch["labels"]), full.loss, rtol=1e-5)
    n = int(keep.sum())
    assert torch.allclose(learned_loss(kept, batch["labels"], num_items_in_batch=2 * n), full.loss / 2, rtol=1e-5)


def test_group_by_length_pads_fewer_tokens(cli, setup):
    """group_by_length=true batches rows of similar length (transformers' LengthGroupedSampler): over the same
    epoch of the same rows, fewer padded tokens go through the model than with the random order."""
    runs = {}
    for grouped in ("false", "true"):
        runs[grouped] = cli.json("train", "--base", "tiny", "--data", "auto", "--name", f"g-{grouped}", "epochs=1",
                                 "max_seq_len=1024", "batch_size=2", f"group_by_length={grouped}")
        # 48 rows, batches of 2: every row once either way (the sampler sorts within "megabatches" of
        # min(48 // (2 * 4), 50) = 6 batches)
        assert runs[grouped]["steps"] == 24
    assert runs["true"]["tokens"] < 0.97 * runs["false"]["tokens"]
    assert cli.json("show", "g-true")["metadata"]["config"]["group_by_length"] is True


def test_truncation_warning_counts_dropped_cut_and_harmless_rows():
    from llora_cli.trainjob import learned_span, truncation_warning

    assert learned_span([-100, -100, 5, 6, -100]) == (2, 4) and learned_span([-100]) == (0, 0)
    assert truncation_warning([10, 12], [(4, 10), (4, 12)], 12) is None  # nothing longer than the limit
    # row 0: reply starts after the cut (dropped); row 1: reply cut inside; row 2: only after its reply; row 3 fits
    w = truncation_warning([30, 20, 18, 8], [(17, 30), (10, 20), (5, 9), (2, 8)], 16)
    assert w == ("3 of 4 training rows are longer than max_seq_len=16 tokens: 1 dropped (their reply starts after "
                 "the cut), 1 trained on a reply cut short, 1 cut after their reply (no loss); the longest has 30 "
                 "tokens. To keep every row whole, train with max_seq_len=30")
    # a long row without any learned token is no loss whatever the limit: not counted
    assert truncation_warning([30, 8], [(0, 0), (2, 8)], 16) is None


def test_train_warns_of_rows_cut_by_max_seq_len(cli, store, setup):
    # the tiny tokenizer's automation rows are 234-507 tokens, replies starting at token 211-428
    result = cli("train", "--base", "tiny", "--data", "auto", "--name", "short", "max_steps=1", "max_seq_len=300",
                 "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert "of 48 training rows are longer than max_seq_len=300 tokens: " in out["truncation"]
    assert "dropped (their reply starts after the cut)" in out["truncation"]
    assert "warning: " in result.stderr and "train with max_seq_len=" in result.stderr
    fits = cli.json("train", "--base", "tiny", "--data", "auto", "--name", "long", "max_steps=1", "max_seq_len=4096")
    assert fits["truncation"] is None
    none = cli("train", "--base", "tiny", "--data", "auto", "--name", "tiny-len", "max_steps=1", "max_seq_len=100")
    assert none.exit_code == 2 and "no row of dataset" in none.stderr
    assert "has a token to learn after truncation to max_seq_len=100" in none.stderr
    assert "nothing was created" in none.stderr and "--resume" not in none.stderr and "Traceback" not in none.output
    assert not any(a.name == "tiny-len" for a in store.artifacts())  # refused before the run existed
