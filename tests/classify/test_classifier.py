"""Classifiers (issue 15): `llora train --task classify`, `llora classify`, importing a SEQ_CLS adapter, refusals.

One classifier is trained once per module on a tiny Llama (hidden 32) and its home copied into each test's home.
Its task: the colour of the fruit a sentence ends with (3 labels); the held-out rows use subjects the training rows
never do, so 100% there is learned, not recalled (chance is 1/3).
"""

from __future__ import annotations

import json
import random
import shutil

import pytest

FRUIT = {"apple": "red", "banana": "yellow", "plum": "purple"}
SUBJECTS = ["I", "we", "they", "my friend", "the chef", "our team", "she", "he"]
VERBS = ["want", "like", "ate", "bought", "need", "saw", "hate", "picked"]


def fruit_rows(n: int, subjects: list[str], seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [{"text": f"{rng.choice(subjects)} {rng.choice(VERBS)} the {f}", "label": FRUIT[f]}
            for f in (list(FRUIT)[i % 3] for i in range(n))]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def trained_home(tmp_path_factory, tiny_model_dir):
    from conftest import Cli

    root = tmp_path_factory.mktemp("clf")
    home = root / "home"
    train = write_jsonl(root / "fruit.jsonl", fruit_rows(60, SUBJECTS[:5], seed=0))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LLORA_HOME", str(home))
        mp.delenv("LLORA_DB_URL", raising=False)
        cli = Cli()
        cli.json("bases", "add", tiny_model_dir, "--name", "tiny")
        cli.json("data", "add", train, "--name", "fruit")
        out = cli.json("train", "--base", "tiny", "--data", "fruit", "--task", "classify", "--kind", "modifier",
                       "--domain", "fruit", "--name", "fruit-clf", "max_steps=30", "learning_rate=5e-3")
        cli.json("train", "--base", "tiny", "--data", "fruit", "--task", "classify", "--kind", "adapter",
                 "--name", "fruit-adapter", "max_steps=8", "learning_rate=5e-3")
    return home, out


@pytest.fixture
def trained(trained_home, llora_home, tmp_path):
    home, out = trained_home
    shutil.copytree(home, llora_home)
    write_jsonl(tmp_path / "test.jsonl", fruit_rows(15, SUBJECTS[5:], seed=1))
    return out


def test_a_classifier_trains_learns_and_reports_metrics(trained, cli, store, tmp_path):
    from safetensors import safe_open

    assert trained["state"] == "trained" and trained["final_loss"] < 0.5
    art = store.resolve("fruit-clf")
    assert art.meta["task"] == "classify" and art.meta["labels"] == ["purple", "red", "yellow"]
    d = store.path_of(art.id)
    assert json.loads((d / "classifier.json").read_text())["labels"] == ["purple", "red", "yellow"]
    assert json.loads((d / "adapter_config.json").read_text())["task_type"] == "SEQ_CLS"
    with safe_open(str(d / "adapter_model.safetensors"), "pt") as f:
        assert list(f.get_slice("base_model.model.score.weight").get_shape()) == [3, 32]  # the head, saved whole
    files = {f["path"] for f in cli.json("show", "fruit-clf")["files"]}
    assert files >= {"classifier.json", "adapter_model.safetensors"}  # hashed with the artifact

    r = cli.json("classify", "fruit-clf", "--data", tmp_path / "test.jsonl", "--plot", tmp_path / "cm.png",
                 "--outputs", tmp_path / "pred.jsonl")
    m = r["metrics"]
    assert m["n"] == 15 and sum(map(sum, m["confusion"])) == 15
    assert m["accuracy"] >= 0.8  # learned (chance 1/3) on subjects never trained on
    assert m["correct"] == sum(p["label"] == p["expected"] for p in r["predictions"])
    assert m["accuracy_ci95"][0] < m["accuracy"] <= m["accuracy_ci95"][1]
    from sklearn.metrics import f1_score

    assert m["macro_f1"] == round(f1_score([p["expected"] for p in r["predictions"]],
                                           [p["label"] for p in r["predictions"]], average="macro"), 5)
    for p in r["predictions"]:
        assert abs(sum(p["probabilities"].values()) - 1) < 1e-5
        assert p["label"] == max(p["probabilities"], key=p["probabilities"].get)
    assert (tmp_path / "cm.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len((tmp_path / "pred.jsonl").read_text().splitlines()) == 15
    assert cli.json("show", "fruit-clf")["evaluations"] == []  # a file's rows are not a recorded evaluation

    # the probabilities are plain transformers + PEFT's, softmaxed in float32
    import torch
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    with store.reading() as s:
        base_dir = store.path_of(store.parents_by_role(s, art.id, "runs_on")[0].id)
    tok = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForSequenceClassification.from_pretrained(base_dir, num_labels=3, pad_token_id=tok.pad_token_id)
    model = PeftModel.from_pretrained(model, d).eval()
    text = r["predictions"][4]["text"]
    with torch.no_grad():
        want = torch.softmax(model(**tok(text, return_tensors="pt")).logits.float(), -1)[0].tolist()
    one = cli.json("classify", "fruit-clf", text)["predictions"][0]
    assert [one["probabilities"][x] for x in ["purple", "red", "yellow"]] == pytest.approx(want, abs=2e-6)
    batched = r["predictions"][4]["probabilities"]  # alone or in a padded batch: the same
    assert [one["probabilities"][x] for x in batched] == pytest.approx(list(batched.values()), abs=1e-6)
    odd = cli("classify", "fruit-clf", "press [/] the [red] plum")  # user text is not Rich markup
    assert odd.exit_code == 0 and "press [/] the [red] plum" in odd.stdout


def test_a_registered_dataset_evaluation_is_recorded(trained, cli, store, tmp_path):
    cli.json("data", "add", tmp_path / "test.jsonl", "--name", "fruit-test")
    r = cli.json("classify", "fruit-clf", "--data", "fruit-test", "--split", "train")
    assert r["data"] == {"name": "fruit-test", "split": "train"} and r["metrics"]["n"] == 15
    shown = cli.json("show", "fruit-clf")
    assert any(e["metrics"].get("macro_f1") == r["metrics"]["macro_f1"] for e in shown["evaluations"])


def test_classifier_refusals_name_the_problem_and_change_nothing(trained, cli, store, tmp_path, tiny_adapter_dir):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"text": "I ate the kiwi", "label": "green"},
                                               {"text": "I ate the plum", "label": "purple"}])
    res = cli("classify", "fruit-clf", "--data", bad)
    assert res.exit_code == 2 and "'green' are not in the classifier's label map (purple, red, yellow)" in res.stderr
    mixed = write_jsonl(tmp_path / "mixed.jsonl", [{"text": "I ate the plum", "label": "purple"}, {"text": "x y"}])
    res = cli("classify", "fruit-clf", "--data", mixed)
    assert res.exit_code == 2 and "1 of 2 rows have a label" in res.stderr
    res = cli("classify", "fruit-clf", "  ")
    assert res.exit_code == 2 and "text 1 is empty" in res.stderr
    res = cli("classify", "fruit-clf", "the plum", "--plot", tmp_path / "cm.png")
    assert res.exit_code == 2 and "confusion matrix of labelled rows" in res.stderr
    for args, where in [(["eval", "fruit-clf", "--data", mixed], "llora eval does not take classifiers")]:
        res = cli(*args)
        assert res.exit_code == 2 and "is a classifier (labels purple, red, yellow)" in res.stderr and where in res.stderr
        assert "llora classify fruit-clf" in res.stderr  # the hint: what to use instead
    res = cli("merge", "fruit-clf")  # a classifier modifier is a modifier: never merged (R1)
    assert res.exit_code == 1 and "R1" in res.stderr
    art = store.resolve("fruit-clf")
    assert art.state == "trained" and not store.list(kind="merged")

    # a generative modifier is not a classifier
    cli.json("modifiers", "import", tiny_adapter_dir, "--base", "tiny", "--domain", "chat", "--name", "chat-mod")
    res = cli("classify", "chat-mod", "hello")
    assert res.exit_code == 2 and "'chat-mod' is not a classifier" in res.stderr

    # a label map that disagrees with the saved head: refused before anything is computed
    store.update_metadata(art.id, {"labels": ["purple", "red", "yellow", "green"]})
    res = cli("classify", "fruit-clf", "I ate the plum")
    assert res.exit_code == 2 and "its head has 3 rows but the label map has 4 labels" in res.stderr


def test_train_task_classify_refuses_what_it_cannot_train(cli, store, tiny_model_dir, tmp_path):
    cli.json("bases", "add", tiny_model_dir, "--name", "tiny")
    cli.json("data", "make", "automation", "--n", "24", "--name", "chat")
    write_jsonl(tmp_path / "fruit.jsonl", fruit_rows(12, SUBJECTS, seed=0))
    for args, message in [
        (["--data", "chat", "--task", "classify"], "--task classify needs classification rows"),
        (["--data", tmp_path / "fruit.jsonl", "--task", "sort"], "--task must be one of generate, classify"),
        (["--data", tmp_path / "fruit.jsonl", "--task", "classify", "quantize=nf4"], "drop quantize/dora"),
        (["--data", tmp_path / "fruit.jsonl"], "holds classification rows"),  # no --task: refused, not misread
    ]:
        res = cli("train", "--base", "tiny", *args)
        assert res.exit_code == 2 and message in res.stderr, res.stderr
    assert store.list(kind="adapter") == [] and store.list(kind="modifier") == []
    plan = cli.json("train", "--base", "tiny", "--data", tmp_path / "fruit.jsonl", "--task", "classify", "--dry-run")
    assert plan["task"] == "classify" and plan["labels"] == ["purple", "red", "yellow"]


def test_a_classification_adapter_imports_with_its_label_map(trained, cli, store, tmp_path):
    src = store.path_of(store.resolve("fruit-clf").id)
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors", "classifier.json"):
        shutil.copy(src / name, pkg / name)
    imported = cli.json("modifiers", "import", pkg, "--base", "tiny", "--domain", "fruit", "--name", "fruit-2")
    assert imported["metadata"]["task"] == "classify" and imported["metadata"]["labels"] == ["purple", "red", "yellow"]
    a = cli.json("classify", "fruit-clf", "she saw the banana")["predictions"][0]
    b = cli.json("classify", "fruit-2", "she saw the banana")["predictions"][0]
    assert a["probabilities"] == b["probabilities"]

    (pkg / "classifier.json").write_text(json.dumps({"labels": ["purple", "red", "yellow", "green"]}))
    res = cli("modifiers", "import", pkg, "--base", "tiny", "--domain", "fruit", "--name", "fruit-3")
    assert res.exit_code == 2 and "has 3 rows but the label map has 4 labels" in res.stderr
    (pkg / "classifier.json").unlink()
    res = cli("modifiers", "import", pkg, "--base", "tiny", "--domain", "fruit", "--name", "fruit-3")
    assert res.exit_code == 2 and "without a label map" in res.stderr
    assert [m.name for m in store.list(kind="modifier")] == ["fruit-clf", "fruit-2"]


def test_a_classifier_adapter_merges_verified_and_ships_low_bandwidth_byte_identical(trained, cli, store, tmp_path,
                                                                                     tiny_model_dir):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    adapter = store.resolve("fruit-adapter")
    res = cli("classify", "fruit-adapter", "I ate the plum")
    assert res.exit_code == 1 and "R5" in res.stderr  # a training adapter is not run on texts ...
    before = cli.json("classify", "fruit-adapter", "--data", tmp_path / "test.jsonl")  # ... only evaluated
    m = cli.json("merge", "fruit-adapter", "--keep-adapter")  # a classifier merges to fp32 by default
    assert m["dtype"] == "fp32" and m["full_check"]["level"] == "full" and m["full_check"]["passed"]
    assert m["full_check"]["max_rel_error"] < 1e-5
    merged = store.resolve(m["merged"]["id"])
    assert merged.meta["task"] == "classify" and merged.meta["labels"] == ["purple", "red", "yellow"]
    assert merged.meta["merge"]["tensors_added"] == 1  # score.weight: copied whole, not LoRA-merged
    mdir = store.path_of(merged.id)
    cfg = json.loads((mdir / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForSequenceClassification"] and cfg["id2label"]["2"] == "yellow"

    # plain transformers loads the fused classifier, with the logits of PEFT's unmerged model
    tok = AutoTokenizer.from_pretrained(mdir)
    plain = AutoModelForSequenceClassification.from_pretrained(mdir).eval()
    base = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=3,
                                                              pad_token_id=tok.pad_token_id)
    unmerged = PeftModel.from_pretrained(base, store.path_of(adapter.id)).eval()
    ids = tok(["the chef bought the banana", "I saw the apple"], return_tensors="pt", padding=True)
    with torch.no_grad():
        assert torch.allclose(plain(**ids).logits, unmerged(**ids).logits, atol=1e-5)
    res = cli("deploy", merged.name)  # a fused classifier is not a base to generate with
    assert res.exit_code == 2 and "llora deploy does not take classifiers" in res.stderr
    for args in (["train", "--base", merged.name, "--data", "fruit"], ["compress", merged.name, "--method", "int8"]):
        res = cli(*args)  # nor a base to train or compress
        assert res.exit_code == 2 and "does not take classifiers" in res.stderr, res.stderr
    after = cli.json("classify", merged.name, "--data", tmp_path / "test.jsonl")
    for a, b in zip(before["predictions"], after["predictions"]):
        assert a["label"] == b["label"] and a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-5)

    # the delivery plan: sizes of both paths, the rebuild's memory, a recommendation that follows the free memory
    plan = cli.json("plan", merged.name, "--delivery")
    adir = store.path_of(adapter.id)
    assert plan["fused_bytes"] == sum(f.stat().st_size for f in mdir.iterdir() if f.name != "llora.json")
    assert plan["low_bandwidth_bytes"] == sum((adir / n).stat().st_size
                                              for n in ("adapter_config.json", "adapter_model.safetensors"))
    assert plan["low_bandwidth_bytes"] < plan["fused_bytes"] and plan["recommended"] == "low-bandwidth"
    tight = cli.json("plan", merged.name, "--delivery", "--memory", str(plan["rebuild_peak_bytes"]))
    assert tight["recommended"] == "fused" and "rebuilding needs" in tight["reason"]

    # low-bandwidth: adapter + head only; the receiver rebuilds byte-identical files against its own copy of the base
    shared, other = tmp_path / "shared", tmp_path / "other"
    out = cli.json("export", merged.id, "--to", shared, "--delivery", "auto")["path"]
    shipped = {p.name for p in (shared / merged.id).iterdir()}
    assert shipped == {"export.json", "adapter_config.json", "adapter_model.safetensors"}
    refused = cli("--home", other, "import", out)  # no base with that content hash there: nothing registered
    assert refused.exit_code == 1 and "no base with content hash" in refused.stderr
    assert cli.json("--home", other, "merged", "list") == []
    cli.json("--home", other, "bases", "add", tiny_model_dir, "--name", "tiny")
    got = cli.json("--home", other, "import", out)
    assert got["content_hash"] == merged.content_hash and got["metadata"]["labels"] == ["purple", "red", "yellow"]
    chosen = got["metadata"]["imported"]["delivery"]  # the choice travels with the package and is kept
    assert chosen["requested"] == "auto" and chosen["mode"] == "low-bandwidth" and "ships" in chosen["reason"]
    rebuilt = other / "artifacts" / got["id"]
    for f in mdir.iterdir():
        if f.name != "llora.json":
            assert (rebuilt / f.name).read_bytes() == f.read_bytes(), f.name


def test_a_deployed_classifier_is_served_on_v1_classify(trained, cli, store, tmp_path, tiny_adapter_dir, llora_home):
    import httpx
    from live_server import live_server

    cli.json("modifiers", "import", tiny_adapter_dir, "--base", "tiny", "--domain", "chat", "--name", "chat-mod")
    for name in ("tiny", "chat-mod", "fruit-clf"):
        cli.json("deploy", name)
    res = cli("run", "--modifier", "fruit-clf", "hello")
    assert res.exit_code == 2 and "'fruit-clf' is a classifier" in res.stderr
    texts = ["our team picked the apple", "he hates the banana"]
    local = cli.json("classify", "fruit-clf", *texts)["predictions"]
    with live_server(llora_home, "--engine", "transformers") as url:
        health = httpx.get(f"{url}/health").json()
        assert health["classifiers"] == ["fruit-clf"] and health["modifiers"] == ["chat-mod"]
        models = {m["id"]: m["llora"] for m in httpx.get(f"{url}/v1/models").json()["data"]}
        assert models["tiny:fruit-clf"]["kind"] == "classifier"
        assert models["tiny:fruit-clf"]["labels"] == ["purple", "red", "yellow"]
        r = httpx.post(f"{url}/v1/classify", json={"model": "tiny:fruit-clf", "input": texts}, timeout=300)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["object"] == "list" and body["labels"] == ["purple", "red", "yellow"]
        assert body["usage"]["prompt_tokens"] > 0 and body["usage"]["completion_tokens"] == 0
        for d, want in zip(body["data"], local):  # the served answer is llora classify's
            assert d["label"] == want["label"] and d["num_classes"] == 3
            assert d["probs"] == pytest.approx([want["probabilities"][x] for x in body["labels"]], abs=1e-6)
        one = httpx.post(f"{url}/v1/classify", json={"model": "tiny:fruit", "input": texts[0]}, timeout=300).json()
        assert one["data"][0]["label"] == local[0]["label"]  # by domain too, one text as a string
        for payload, status, message in [
            ({"model": "tiny:chat-mod", "input": "x"}, 400, "generates text"),
            ({"model": "tiny", "input": "x"}, 400, "generates text"),
            ({"model": "tiny:nope", "input": "x"}, 404, "no classifier 'nope'"),
            ({"model": "tiny:fruit-clf", "input": []}, 400, "1 to 256 texts"),
            ({"model": "tiny:fruit-clf", "input": ["a", " "]}, 400, "input[1] is empty"),
            ({"model": "tiny:fruit-clf", "input": "a", "temperature": 0}, 400, "temperature"),
        ]:
            bad = httpx.post(f"{url}/v1/classify", json=payload, timeout=300)
            assert bad.status_code == status and message in bad.json()["error"]["message"], (payload, bad.text)
        chat = httpx.post(f"{url}/v1/chat/completions", timeout=300, json={
            "model": "tiny:fruit-clf", "messages": [{"role": "user", "content": "hi"}]})
        assert chat.status_code == 400 and "is a classifier" in chat.json()["error"]["message"]
        assert httpx.post(f"{url}/v1/chat/completions", timeout=300, json={
            "model": "tiny:chat-mod", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}).status_code == 200
        cli.json("retire", "fruit-clf")  # takes effect without a restart
        gone = httpx.post(f"{url}/v1/classify", json={"model": "tiny:fruit-clf", "input": "x"}, timeout=300)
        assert gone.status_code == 404
    logged = cli.json("logs", "list", "--modifier", "fruit-clf")
    assert len(logged) == 2 and json.loads(logged[-1]["response"]) == [d["label"] for d in body["data"]]


def test_probabilities_are_a_float32_softmax_also_when_the_model_computes_in_bf16(trained, store):
    import dataclasses

    import numpy as np
    import torch

    from llora_cli.classify.model import load_classifier
    from llora_cli.trainjob import collate_labelled

    clf = load_classifier(store, store.resolve("fruit-clf"))
    texts = ["he picked the plum", "we need the apple", "they saw the banana"]
    full = clf.probabilities(texts)
    half_clf = dataclasses.replace(clf, model=clf.model.to(torch.bfloat16), dtype="bf16")
    half = half_clf.probabilities(texts)
    batch = collate_labelled([{"input_ids": clf.tokenizer(t)["input_ids"], "labels": 0} for t in texts],
                             clf.tokenizer.pad_token_id)
    with torch.no_grad():
        logits = half_clf.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert logits.dtype == torch.bfloat16  # the model computes in bf16 ...
    want = torch.softmax(logits.float(), -1).numpy()  # ... and the softmax is float32 over its logits
    assert half.dtype == np.float32 and np.allclose(half, want, atol=1e-7)
    assert np.allclose(half.sum(axis=1), 1.0, atol=1e-6)
    assert (half.argmax(axis=1) == full.argmax(axis=1)).all() and np.abs(half - full).max() < 0.05


def test_no_memorisation_warning_for_a_classifier_that_is_already_perfect():
    from llora_cli.trainjob import memorisation_warning

    losses = [0.01] * 10
    assert memorisation_warning(losses, [{"step": 5, "accuracy": 1.0}, {"step": 10, "accuracy": 1.0}]) is None
    warned = memorisation_warning(losses, [{"step": 5, "accuracy": 0.8}, {"step": 10, "accuracy": 0.8}])
    assert warned and "held-out accuracy is flat: 80.0% at step 5" in warned
