"""`latentcot train`: sequence layouts, the latent forward, training, resume, COCONUT decoding."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from latentcot.config import DecodeConfig, GateConfig, LatentConfig, ModelConfig
from latentcot.engine import Engine
from latentcot.errors import InputError
from latentcot.gates import make_gate
from latentcot.latent import make_latent
from latentcot.model import load_model
from latentcot.tasks import load_task
from latentcot.types import LATENT, MARKER, TOKEN
from latentcot.zoo.data import Layout, encode, write_prompt_file
from latentcot.zoo.forward import loss_of, predicting_hidden, soft_inputs
from latentcot.zoo.tiny import tiny_model
from latentcot.zoo.tokenizer import task_tokenizer
from latentcot.zoo.train import CHECKPOINT, LOG, TrainConfig, train
from test_cli import cli

TASK = "addition:n=3,digits=1,reverse=1"  # 2 steps per example
TINY = dict(hidden=32, layers=2, heads=2, batch_size=16, eval_examples=16, test_examples=16)


@pytest.fixture(scope="module")
def task_and_tokenizer(tmp_path_factory):
    prompt = write_prompt_file(tmp_path_factory.mktemp("prompt"))
    task = load_task(TASK, str(prompt))
    return task, task_tokenizer(task, "Answer:")


@pytest.fixture(scope="module")
def cot_model(tmp_path_factory):
    """A tiny cot model trained through the CLI (its skill does not matter, only its files)."""
    out = tmp_path_factory.mktemp("zoo") / "add-cot"
    code = cli(
        "train",
        "--task",
        TASK,
        "--method",
        "cot",
        "--out",
        out,
        "--steps",
        "30",
        "--eval-every",
        "15",
        "--hidden",
        "32",
        "--layers",
        "2",
        "--heads",
        "2",
        "--batch-size",
        "16",
        "--eval-examples",
        "16",
        "--test-examples",
        "16",
    )
    assert code == 0
    return out


def _decode(tokenizer, ids) -> str:
    return tokenizer.decode([int(i) for i in ids])


def test_layouts_mask_prompt_and_markers_and_place_latents(task_and_tokenizer):
    task, tokenizer = task_and_tokenizer
    examples = task.examples("train", 3, 0)
    prompts = [task.prompt(e) for e in examples]
    example = examples[0]
    assert len(example.steps) == 2

    cot = encode(tokenizer, prompts, examples, Layout("cot"))
    assert cot.n_latent == 0 and _decode(tokenizer, cot.prefix_ids[0]) == prompts[0]
    target = _decode(tokenizer, cot.suffix_ids[0][cot.loss_mask[0]])
    assert target == "\n".join(example.steps) + f"\nAnswer: {example.answer}<eos>"

    nocot = encode(tokenizer, prompts, examples, Layout("nocot"))
    assert _decode(tokenizer, nocot.suffix_ids[0][nocot.loss_mask[0]]) == f"Answer: {example.answer}<eos>"

    for stage, kept in ((0, example.steps), (1, example.steps[1:]), (2, ())):
        batch = encode(tokenizer, prompts, examples, Layout("coconut", stage, c=2, max_stage=2))
        assert batch.n_latent == 2 * stage
        assert _decode(tokenizer, batch.prefix_ids[0]) == prompts[0] + "<bot>"
        assert _decode(tokenizer, batch.suffix_ids[0][:1]) == "<eot>" and not batch.loss_mask[0, 0]
        text = _decode(tokenizer, batch.suffix_ids[0][batch.loss_mask[0]])
        assert text == "".join(f"{s}\n" for s in kept) + f"Answer: {example.answer}<eos>"
        # the answer tokens are the last targets, right before <eos>
        answer_ids = tokenizer(example.answer, add_special_tokens=False)["input_ids"]
        last = int(batch.loss_mask[0].nonzero().max())
        assert batch.suffix_ids[0, last - len(answer_ids) : last].tolist() == answer_ids
    assert not (batch.suffix_mask == 0)[batch.loss_mask].any()  # padding is never a target


def test_latent_positions_receive_the_previous_final_hidden_state(task_and_tokenizer):
    task, tokenizer = task_and_tokenizer
    model = tiny_model("llama", tokenizer, seed=3, hidden=32, heads=2, init_std=0.2).double()
    examples = task.examples("train", 2, 0)
    batch = encode(tokenizer, [task.prompt(e) for e in examples], examples, Layout("coconut", 2, c=1, max_stage=2))
    got = predicting_hidden(model, batch)  # (B, S, D)

    # Manual: grow the input embedding sequence one latent at a time, no cache.
    embed = model.get_input_embeddings()
    inputs = embed(batch.prefix_ids)  # (B, P, D)
    for _ in range(batch.n_latent):
        previous = model.base_model(inputs_embeds=inputs).last_hidden_state[:, -1:]
        inputs = torch.cat([inputs, previous], dim=1)
    full = torch.cat([inputs, embed(batch.suffix_ids)], dim=1)
    hidden = model.base_model(inputs_embeds=full).last_hidden_state
    start = batch.prefix_ids.shape[1] + batch.n_latent - 1  # the last latent predicts <eot>
    expected = hidden[:, start : start + batch.suffix_ids.shape[1]]
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)

    loss_of(model, batch).backward()  # gradients reach the embedding rows of the prompt through the latents
    assert model.get_input_embeddings().weight.grad.abs().sum() > 0


def test_soft_inputs_mix_the_predicted_distribution_where_entropy_is_high(task_and_tokenizer):
    task, tokenizer = task_and_tokenizer
    model = tiny_model("llama", tokenizer, seed=5, hidden=32, heads=2, init_std=0.3).double()
    examples = task.examples("train", 4, 0)
    batch = encode(tokenizer, [task.prompt(e) for e in examples], examples, Layout("soft"))
    ids = torch.cat([batch.prefix_ids, batch.suffix_ids], dim=1)
    mask = torch.cat([batch.prefix_mask, batch.suffix_mask], dim=1)
    width = batch.prefix_ids.shape[1]
    # Independently: the plain model's distribution predicting each suffix token, and its entropy.
    logits = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits
    probs = torch.softmax(logits[:, width - 1 : -1], -1)  # (B, S, V)
    entropy = -(probs * probs.log()).sum(-1)  # (B, S)
    table = model.get_input_embeddings().weight
    threshold = float(entropy[batch.loss_mask].median().detach())

    embeds, soft = soft_inputs(model, batch, threshold)
    assert torch.equal(soft, batch.loss_mask & (entropy > threshold)) and 0 < int(soft.sum()) < int(
        batch.loss_mask.sum()
    )
    expected = table[ids].clone()
    expected[:, width:][soft] = (probs @ table)[soft]
    torch.testing.assert_close(embeds, expected, rtol=1e-9, atol=1e-9)

    # Above every entropy nothing is soft and the forward is the plain one; below all of them every target is.
    never = predicting_hidden(model, batch, soft_above=float("inf"))
    torch.testing.assert_close(never, predicting_hidden(model, batch), rtol=1e-9, atol=1e-9)
    assert torch.equal(soft_inputs(model, batch, 0.0)[1], batch.loss_mask)
    loss_of(model, batch, soft_above=threshold).backward()
    assert table.grad.abs().sum() > 0


def test_soft_model_is_decoded_with_the_entropy_gate_it_was_trained_for(cot_model, tmp_path):
    card = train(
        TrainConfig(task=TASK, method="soft", init=str(cot_model), soft_threshold=0.2, steps=4, eval_every=2, **TINY),
        tmp_path / "soft",
        progress=False,
    )
    assert card["decode"] == {"gate": "entropy", "threshold": 0.2, "latent": "soft"}
    assert card["config"]["hidden"] == 32 and card["method"] == "soft"
    log = [json.loads(line) for line in (tmp_path / "soft" / LOG).read_text().splitlines()]
    assert [line["step"] for line in log] == [2, 4] and all(0 <= line["valid_accuracy"] <= 1 for line in log)
    with pytest.raises(InputError, match="soft_threshold"):
        TrainConfig(task=TASK, method="soft", soft_threshold=-1)


def test_training_lowers_loss_and_writes_checkpoint_log_card(cot_model):
    log = [json.loads(line) for line in (cot_model / LOG).read_text().splitlines()]
    assert [line["step"] for line in log] == [15, 30]
    assert log[1]["loss"] < log[0]["loss"] and 0 <= log[1]["valid_accuracy"] <= 1
    assert (cot_model / CHECKPOINT).is_file() and (cot_model / "model.safetensors").is_file()
    card = json.loads((cot_model / "card.json").read_text())
    assert card["task"] == TASK and card["method"] == "cot" and card["arch"] == "llama"
    assert card["test_examples"] == 16 and 0 <= card["test_accuracy"] <= 1 and card["params"] > 0
    assert "--method cot" in card["train_command"] and card["train_seconds"] > 0
    loaded = load_model(ModelConfig(str(cot_model), device="cpu"))  # an ordinary HF directory
    assert loaded.tokenizer.convert_tokens_to_ids("<bot>") != loaded.tokenizer.unk_token_id


def test_resume_gives_the_same_model_as_an_uninterrupted_run(tmp_path):
    cfg = TrainConfig(task=TASK, method="cot", steps=12, eval_every=4, dtype="float64", seed=5, **TINY)
    whole = train(cfg, tmp_path / "whole", progress=False)
    assert train(cfg, tmp_path / "split", until_step=8, progress=False) == {}
    saved = torch.load(tmp_path / "split" / CHECKPOINT, weights_only=False)
    assert saved["step"] == 8 and not (tmp_path / "split" / "card.json").exists()
    resumed = train(cfg, tmp_path / "split", resume=True, progress=False)
    assert resumed["test_accuracy"] == whole["test_accuracy"]
    a = torch.load(tmp_path / "whole" / CHECKPOINT, weights_only=False)["model"]
    b = torch.load(tmp_path / "split" / CHECKPOINT, weights_only=False)["model"]
    assert all(torch.equal(a[name], b[name]) for name in a)

    def strip(path):
        return [
            {k: v for k, v in json.loads(x).items() if k != "seconds"} for x in (path / LOG).read_text().splitlines()
        ]

    assert strip(tmp_path / "whole") == strip(tmp_path / "split")


def test_save_dtype_given_on_resume_is_applied_and_leaves_training_alone(tmp_path):
    from safetensors import safe_open

    cfg = TrainConfig(task=TASK, method="cot", steps=4, eval_every=2, dtype="float64", **TINY)
    train(cfg, tmp_path / "whole", progress=False)
    assert train(cfg, tmp_path / "split", until_step=2, progress=False) == {}
    card = train(dataclasses.replace(cfg, save_dtype="float16"), tmp_path / "split", resume=True, progress=False)
    assert card["config"]["save_dtype"] == "float16"
    with safe_open(tmp_path / "split" / "model.safetensors", "pt") as weights:
        assert {weights.get_tensor(name).dtype for name in weights.keys()} == {torch.float16}
    a = torch.load(tmp_path / "whole" / CHECKPOINT, weights_only=False)["model"]
    b = torch.load(tmp_path / "split" / CHECKPOINT, weights_only=False)["model"]
    assert all(torch.equal(a[name], b[name]) for name in a)  # the checkpoint keeps full precision


def test_coconut_model_decodes_k_latents_between_markers(cot_model, tmp_path):
    out = tmp_path / "add-coconut"
    cfg = TrainConfig(
        task=TASK, method="coconut", init=str(cot_model), c=2, steps=4, eval_every=4, mix_prob=0.5, **TINY
    )
    card = train(cfg, out, progress=False)
    assert card["decode"] == {"gate": "fixed", "k": 4, "latent": "hidden", "markers": ["<bot>", "<eot>"]}
    assert card["config"]["hidden"] == 32 and card["config"]["max_stage"] == 2  # the init's shape, the resolved stage
    assert [json.loads(x)["stage"] for x in (out / LOG).read_text().splitlines()] == [1, 2]
    loaded = load_model(ModelConfig(str(out), device="cpu"))
    task = load_task(TASK, str(out / "prompt.json"))
    decode = card["decode"]
    traces = Engine(loaded.model, loaded.tokenizer).generate(
        [task.prompt(e) for e in task.examples("test", 3, 0)],
        make_gate(GateConfig("fixed", k=decode["k"])),
        make_latent(LatentConfig("hidden")),
        DecodeConfig(max_new_tokens=12, markers=("<bot>", "<eot>")),
    )
    for trace in traces:
        assert trace.mode[:7] == [MARKER, LATENT, LATENT, LATENT, LATENT, MARKER, TOKEN]


def test_bad_input_is_an_input_error(tmp_path, cot_model, capsys):
    with pytest.raises(InputError, match="unknown method"):
        TrainConfig(task=TASK, method="latent")
    with pytest.raises(InputError, match="needs --init"):
        TrainConfig(task=TASK, method="coconut")
    with pytest.raises(InputError, match="not empty"):
        train(TrainConfig(task=TASK, method="cot", **TINY), cot_model, progress=False)
    with pytest.raises(InputError, match="nothing to resume"):
        train(TrainConfig(task=TASK, method="cot", **TINY), tmp_path / "fresh", resume=True, progress=False)
    with pytest.raises(InputError, match="differ"):
        train(TrainConfig(task=TASK, method="cot", lr=1e-3, **TINY), cot_model, resume=True, progress=False)
    with pytest.raises(InputError, match="not a trained zoo model"):
        train(TrainConfig(task=TASK, method="coconut", init=str(tmp_path)), tmp_path / "x", progress=False)
    assert not (tmp_path / "x").exists()  # refused before anything is written
    with pytest.raises(InputError, match="steps must be an integer >= 1"):
        TrainConfig(task=TASK, method="cot", steps=True)
    assert cli("train", "--task", TASK, "--method", "coconut", "--out", tmp_path / "y") == 2
    assert "needs --init" in capsys.readouterr().err


def test_cosine_decay_warms_up_then_falls_to_a_tenth():
    from latentcot.zoo.train import TrainConfig, learning_rate

    cfg = TrainConfig(task="addition", method="cot", lr=1e-3, warmup=10, steps=100, decay="cosine")
    rates = [learning_rate(cfg, i) for i in range(100)]
    assert rates[0] == pytest.approx(1e-4)  # first warm-up step
    assert max(rates) == pytest.approx(rates[9]) and all(a >= b for a, b in zip(rates[9:], rates[10:]))
    assert rates[-1] == pytest.approx(1e-4, rel=0.05)  # 10 % at the end
    constant = TrainConfig(task="addition", method="cot", lr=1e-3, warmup=10, steps=100)
    assert {learning_rate(constant, i) for i in range(10, 100)} == {1e-3}
    with pytest.raises(InputError, match="unknown lr decay"):
        TrainConfig(task="addition", method="cot", decay="linear")


def test_word_tokenizer_round_trips_and_gives_each_made_up_word_one_token(tmp_path):
    from transformers import AutoTokenizer

    prompt = write_prompt_file(tmp_path)
    task = load_task("prosqa:hops=2,dead=0,distract=1,extra=0", str(prompt))
    tokenizer = task_tokenizer(task, "Answer:", kind="word")
    tokenizer.save_pretrained(tmp_path / "tok")
    reloaded = AutoTokenizer.from_pretrained(tmp_path / "tok")
    for example in task.examples("test", 20, 0):
        text = task.prompt(example) + "\n".join(example.steps) + f"\nAnswer: {example.answer}"
        ids = reloaded(text, add_special_tokens=False)["input_ids"]
        assert reloaded.decode(ids) == text and reloaded.unk_token_id not in ids  # test words are known
        for word in example.meta["idx_to_symbol"]:  # one token each, after a space
            assert len(reloaded(f" {word}", add_special_tokens=False)["input_ids"]) == 1
    marked = reloaded("<bot> is<eot>", add_special_tokens=False)["input_ids"]
    assert reloaded.convert_ids_to_tokens(marked) == ["<bot>", " is", "<eot>"]
    assert reloaded("Zq", add_special_tokens=False)["input_ids"] == [reloaded.unk_token_id]  # unseen word


def test_a_coconut_model_inherits_the_word_tokenizer_of_its_init(tmp_path):
    task = "prosqa:hops=1,dead=0,distract=1,extra=0"
    cot = train(
        TrainConfig(task=task, method="cot", tokenizer="word", steps=2, eval_every=2, **TINY),
        tmp_path / "cot",
        progress=False,
    )
    assert cot["config"]["tokenizer"] == "word"
    coconut = train(
        TrainConfig(task=task, method="coconut", init=str(tmp_path / "cot"), steps=2, eval_every=2, **TINY),
        tmp_path / "coconut",
        progress=False,
    )
    assert coconut["config"]["tokenizer"] == "word"
    resumed = train(
        TrainConfig(task=task, method="coconut", init=str(tmp_path / "cot"), steps=3, eval_every=2, **TINY),
        tmp_path / "coconut",
        resume=True,
        progress=False,
    )  # same settings: accepted
    assert resumed["config"]["steps"] == 3
    with pytest.raises(InputError, match="differ from the saved run: max_stage"):  # given, so never ignored
        train(
            TrainConfig(
                task=task, method="coconut", init=str(tmp_path / "cot"), steps=3, eval_every=2, max_stage=5, **TINY
            ),
            tmp_path / "coconut",
            resume=True,
            progress=False,
        )
    with pytest.raises(InputError, match="unknown tokenizer"):
        TrainConfig(task=task, method="cot", tokenizer="bpe")


def test_weights_saved_in_float16_are_the_ones_the_card_measured(cot_model, tmp_path):
    import shutil

    from safetensors import safe_open

    from latentcot.zoo.train import evaluate, resave

    copy = tmp_path / "copy"
    shutil.copytree(cot_model, copy)
    before = (copy / "model.safetensors").stat().st_size
    card = resave(copy, "float16")
    with safe_open(copy / "model.safetensors", "pt") as weights:
        assert {weights.get_tensor(name).dtype for name in weights.keys()} == {torch.float16}
    assert (copy / "model.safetensors").stat().st_size < 0.6 * before
    assert card["config"]["save_dtype"] == "float16" and card["train_command"].endswith("--save-dtype float16")
    loaded = load_model(ModelConfig(str(copy), device="cpu"))  # upcast to float32 on a CPU
    assert loaded.model.dtype == torch.float32
    task = load_task(TASK, str(copy / "prompt.json"))
    test = task.examples("test", card["test_examples"], 0)
    assert evaluate(loaded.model, loaded.tokenizer, task, test, card["decode"]) == card["test_accuracy"]
    with pytest.raises(InputError, match="unknown save dtype"):
        TrainConfig(task=TASK, method="cot", save_dtype="int8")


def test_a_cot_model_continues_from_a_model_of_an_easier_task(cot_model, tmp_path):
    """A curriculum: cot from the 3-number model on 4 numbers keeps its weights, shape and tokenizer;
    a task whose text the init tokenizer cannot write is refused before anything is written."""
    from safetensors.torch import load_file

    harder = "addition:n=4,digits=1,reverse=1"
    cfg = TrainConfig(task=harder, method="cot", init=str(cot_model), steps=1, eval_every=1, lr=1e-9, **TINY)
    train(cfg, tmp_path / "harder", progress=False)
    before, after = load_file(cot_model / "model.safetensors"), load_file(tmp_path / "harder" / "model.safetensors")
    assert before.keys() == after.keys()
    for name in before:  # one step at lr 1e-9 leaves the init's weights (within float16 saving)
        torch.testing.assert_close(after[name].float(), before[name].float(), atol=2e-3, rtol=0)
    assert (tmp_path / "harder" / "tokenizer.json").read_text() == (cot_model / "tokenizer.json").read_text()
    card = json.loads((tmp_path / "harder" / "card.json").read_text())
    assert card["config"]["init"] == str(cot_model) and card["config"]["hidden"] == 32

    with pytest.raises(InputError, match="its tokenizer cannot write 'prosqa"):
        train(TrainConfig(task="prosqa", method="cot", init=str(cot_model), **TINY), tmp_path / "words", progress=False)
    assert not (tmp_path / "words").exists()
