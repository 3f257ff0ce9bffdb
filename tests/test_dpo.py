"""The DPO loss and update: hand computation, log-probs, direction of a step, adapter isolation."""
from __future__ import annotations

import math

import pytest
import torch

import tinyflow
from flowcore import adapters
from flowcore.online.dpo import OnlineDPO, OnlineDPOConfig, adapter_params, dpo_loss, sequence_logps
from flowcore.online.rollouts import Pair, explore


pytestmark = pytest.mark.usefixtures("one_thread")


def test_dpo_loss_matches_hand_computation():
    # beta 0.5; chosen log-ratio -1 - (-1.5) = 0.5, rejected -2 - (-1.5) = -0.5 -> margin 0.5 * 1.0 = 0.5
    loss, margin = dpo_loss(torch.tensor([-1.0, -3.0]), torch.tensor([-2.0, -1.0]),
                            torch.tensor([-1.5, -2.0]), torch.tensor([-1.5, -2.0]), beta=0.5)
    assert margin.tolist() == pytest.approx([0.5, 0.5 * ((-3 + 2) - (-1 + 2))])
    assert loss[0].item() == pytest.approx(math.log(1 + math.exp(-0.5)))  # -log sigmoid(0.5) = 0.474077
    assert loss[1].item() == pytest.approx(math.log(1 + math.exp(1.0)))  # margin -1
    assert loss[0].item() == pytest.approx(0.474077, abs=1e-6)


def test_sequence_logps_sums_completion_tokens_only(tiny):
    model, tok = tiny
    prompts = [[5, 6, 7, 8, 9], [10, 11]]
    completions = [[20, 21], [30, 31, 32, 33]]
    batched = sequence_logps(model, prompts, completions, tok.pad_token_id)
    for i, (p, c) in enumerate(zip(prompts, completions)):  # one unpadded row at a time, by hand
        ids = torch.tensor([p + c])
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
        hand = sum(logp[len(p) - 1 + j, t].item() for j, t in enumerate(c))
        assert batched[i].item() == pytest.approx(hand, abs=1e-4)


def _pair(role, prompt, chosen, rejected):
    return Pair("t/0", role, 0, prompt, chosen, rejected, "c", "r", True, False, "test")


def _margins(trainer, pairs, role):
    with torch.no_grad():
        ref_c, ref_r = trainer._logps(None, pairs)
        pol_c, pol_r = trainer._logps(role, pairs)
    return (pol_c - ref_c), (pol_r - ref_r)


def test_a_step_raises_the_chosen_log_ratio(tiny):
    model, tok = tiny
    peft = adapters.attach(model, adapters.LoraConfig(dropout=0.0))
    trainer = OnlineDPO(peft, tok.pad_token_id, OnlineDPOConfig(lr=1e-2, lora_dropout=0.0))
    pairs = [_pair("answer", [5, 6, 7, 8], [40, 41, 42], [50, 51]), _pair("answer", [9, 10], [60], [70, 71])]
    c0, r0 = _margins(trainer, pairs, "answer")
    assert torch.allclose(c0, torch.zeros(2), atol=1e-5)  # fresh LoRA: policy == reference
    first = trainer.update("answer", pairs)
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-4)  # margin 0 -> -log sigmoid(0)
    for _ in range(2):
        trainer.update("answer", pairs)
    c1, r1 = _margins(trainer, pairs, "answer")
    assert (c1 > c0 + 1e-3).all(), (c0, c1)  # chosen log-ratio up
    assert ((c1 - r1) > (c0 - r0) + 1e-3).all()  # and the DPO margin
    assert trainer.update("answer", pairs)["loss"] < first["loss"]


def test_one_online_step_changes_only_the_intended_adapter(tmp_path):
    engine, problems = tinyflow.taught_engine(tmp_path, 4, stop_threshold=1.0)
    peft, tok = engine.model, engine.tok
    torch.manual_seed(0)
    pairs = [p for x in explore(engine, problems) for p in x.pairs]
    by_role = {role: [p for p in pairs if p.role == role] for role in ("answer", "stop")}
    assert by_role["answer"] and by_role["stop"]
    trainer = OnlineDPO(peft, tok.pad_token_id, OnlineDPOConfig(lr=1e-3))

    def snapshot():
        return {n: p.detach().clone() for n, p in peft.named_parameters()}

    answer_names = {n for n, p in peft.named_parameters() if any(p is q for q in adapter_params(peft, "answer"))}
    stop_names = {n for n, p in peft.named_parameters() if any(p is q for q in adapter_params(peft, "stop"))}
    assert answer_names and stop_names and not answer_names & stop_names
    for role, own in (("answer", answer_names), ("stop", stop_names)):
        before = snapshot()
        trainer.update(role, by_role[role])
        after = snapshot()
        changed = {n for n in before if not torch.equal(before[n], after[n])}
        assert changed, f"the {role} step changed nothing"
        assert changed <= own, f"a {role} step changed weights outside its adapter: {sorted(changed - own)[:3]}"
        # LoRA B starts at 0, so A gets no gradient on the first step: at least every B moved
        assert {n for n in own if ".lora_B." in n} <= changed
    with pytest.raises(ValueError, match="pairs of that role only"):
        trainer.update("answer", by_role["stop"])


def test_updates_recompute_activations_and_give_the_same_step(tiny, monkeypatch):
    """The policy pass uses activation checkpointing (each decoder layer runs again in the backward pass, so its
    activations are not kept); the step it takes is the one taken without checkpointing."""
    import copy

    model, tok = tiny
    twin = copy.deepcopy(model)
    pairs = [_pair("answer", [5, 6, 7, 8], [40, 41, 42], [50, 51]), _pair("answer", [9, 10], [60], [70, 71])]
    runs = {}
    for name, net in (("checkpointed", model), ("plain", twin)):
        if name == "plain":
            monkeypatch.setattr(adapters, "enable_activation_checkpointing", lambda m: None)
        torch.manual_seed(0)
        peft = adapters.attach(net, adapters.LoraConfig())  # dropout 0.05: the recompute must replay its masks
        trainer = OnlineDPO(peft, tok.pad_token_id, OnlineDPOConfig(lr=1e-2))
        calls = []
        attn = peft.get_base_model().model.layers[0].self_attn  # inside the checkpointed layer: runs again on recompute
        attn.register_forward_hook(lambda *a: calls.append(1))
        stats = []
        for seed in (1, 2):
            torch.manual_seed(seed)
            stats.append(trainer.update("answer", pairs))
        runs[name] = (stats, [p.detach().clone() for p in trainer.params["answer"]], len(calls))
    (ck_stats, ck_weights, ck_calls), (pl_stats, pl_weights, pl_calls) = runs["checkpointed"], runs["plain"]
    # per update: reference pass + policy pass (+ its recompute when checkpointed)
    assert (ck_calls, pl_calls) == (2 * 3, 2 * 2)
    for a, b in zip(ck_stats, pl_stats):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5) and a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
    assert ck_stats[1]["grad_norm"] > 0
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(ck_weights, pl_weights))


class _Reduced(Exception):
    """Raised by the fake all_reduce once it has seen the loss totals (the stats need real numbers after it)."""


def _meta_trainer(tok, monkeypatch, nll_weight=0.0, rank=0, world=2):
    """A trainer whose model answers on the "meta" device (no CPU can run a model there, so the log-probs are
    faked as meta tensors that carry a gradient), and a fake all_reduce that records what it is given.

    A GPU run needs every tensor update() reduces (under NCCL) or combines with the log-probs on the model's
    device; here the model's device is meta, so any tensor update() builds on the CPU by habit shows up."""
    from conftest import build_tiny_model
    from flowcore.online import dpo

    peft = adapters.attach(build_tiny_model(tok), adapters.LoraConfig(dropout=0.0))
    leaf = torch.zeros((), device="meta", requires_grad=True)

    def fake_logps(model, prompts, completions, pad_id):
        return leaf + torch.zeros(len(prompts), device="meta")

    monkeypatch.setattr(dpo, "sequence_logps", fake_logps)
    seen = []

    def all_reduce(t):
        seen.append(t)
        if t.dtype == torch.float64:  # the loss totals: the last reduce of update()
            raise _Reduced

    trainer = OnlineDPO(peft, tok.pad_token_id, OnlineDPOConfig(micro_batch=1, nll_weight=nll_weight),
                        rank=rank, world=world, all_reduce=all_reduce)
    trainer.device = torch.device("meta")  # as if the model lived there (a CUDA device on a GPU machine)
    return trainer, seen


def test_update_reduces_its_totals_on_the_model_device(tiny_tokenizer, monkeypatch):
    pairs = [_pair("answer", [5, 6, 7], [8, 9], [10]) for _ in range(3)]
    for rank, world in ((0, 2), (3, 4)):  # rank 3 of 4 has no share of 3 pairs: it still joins the sums
        trainer, seen = _meta_trainer(tiny_tokenizer, monkeypatch, rank=rank, world=world)
        with pytest.raises(_Reduced):
            trainer.update("answer", pairs)
        totals = seen[-1]
        assert totals.shape == (4,) and totals.device.type == "meta", totals.device


def test_nll_term_is_built_on_the_log_probs_device(tiny_tokenizer, monkeypatch):
    trainer, seen = _meta_trainer(tiny_tokenizer, monkeypatch, nll_weight=0.5)
    with pytest.raises(_Reduced):  # reaching the reduce means the NLL term was computed on one device
        trainer.update("answer", [_pair("answer", [5, 6, 7], [8, 9], [10]) for _ in range(2)])
    assert seen[-1].device.type == "meta"
