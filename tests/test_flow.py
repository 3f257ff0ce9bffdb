"""The batched Answer/Stop flow on a tiny random model."""
from dataclasses import replace

import pytest
import torch

from flowcore import adapters, prompts
from flowcore.data import Problem
from flowcore.flow.engine import FlowConfig, FlowEngine, FlowState, zero_shot_config


def problems(n):
    return [Problem(f"p{i}", "gsm8k", f"What is {i} plus {i}? " * (1 + i % 3), str(2 * i), "") for i in range(n)]


def test_flow_runs_every_problem_once_with_more_problems_than_batch(tiny):
    model, tok = tiny
    engine = FlowEngine(model, tok, FlowConfig(chunk_size=6, max_steps=3, batch_size=3, stop_threshold=1.0))
    traces = list(engine.solve(problems(7)))
    assert sorted(t.problem_id for t in traces) == [f"p{i}" for i in range(7)]
    for t in traces:
        assert t.end_reason in ("eos", "max_steps")
        assert len(t.chunks) <= 3 and all(c["n_tokens"] <= 6 for c in t.chunks)
        if t.end_reason == "max_steps":
            assert len(t.chunks) == 3 and all(c["p_yes"] is not None for c in t.chunks)
    # 7 flows x up to 3 chunks in batches of <= 3 active flows
    assert engine.stats["answer_calls"] < 7 * 3


def test_decoded_row_tokens_count_the_rows_that_decode_after_their_end(tiny):
    model, tok = tiny
    cfg = FlowConfig(chunk_size=6, max_steps=3, stop_threshold=1.0)
    single = FlowEngine(model, tok, replace(cfg, batch_size=1))
    list(single.solve(problems(5)))
    # one row per call: it decodes exactly its own tokens
    assert single.stats["decoded_row_tokens"] == single.stats["generated_tokens"] > 0
    batched = FlowEngine(model, tok, replace(cfg, batch_size=8))
    list(batched.solve(problems(5)))
    assert batched.stats["generated_tokens"] == single.stats["generated_tokens"]
    calls = batched.stats["answer_calls"]
    assert batched.stats["generated_tokens"] <= batched.stats["decoded_row_tokens"] <= calls * 5 * cfg.chunk_size


def test_stop_threshold_zero_stops_after_one_chunk(tiny):
    model, tok = tiny
    engine = FlowEngine(model, tok, FlowConfig(chunk_size=5, max_steps=4, stop_threshold=0.0))
    for t in engine.solve(problems(3)):
        assert len(t.chunks) == 1 and t.end_reason in ("stop", "eos")


def test_batched_flow_equals_one_at_a_time(tiny):
    model, tok = tiny
    cfg = FlowConfig(chunk_size=5, max_steps=3, stop_threshold=1.0)
    batched = {t.problem_id: t for t in FlowEngine(model, tok, replace(cfg, batch_size=8)).solve(problems(5))}
    single = {t.problem_id: t for t in FlowEngine(model, tok, replace(cfg, batch_size=1)).solve(problems(5))}
    assert {k: v.completion for k, v in batched.items()} == {k: v.completion for k, v in single.items()}


def test_chunked_zero_shot_equals_one_generate_call(tiny):
    model, tok = tiny
    engine = FlowEngine(model, tok, zero_shot_config(FlowConfig(chunk_size=4, max_steps=5, batch_size=1)))
    p = problems(1)[0]
    (state,) = list(engine.run([FlowState(p)]))
    ids = torch.tensor([engine.prompt_ids(p)])
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=20, do_sample=False,
                             eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    direct = out[0, ids.shape[1]:].tolist()
    if tok.eos_token_id in direct:
        direct = direct[: direct.index(tok.eos_token_id) + 1]
    assert state.answer_ids() == direct
    assert all(c.p_yes is None for c in state.chunks)  # no Stop LLM in zero-shot


def test_stop_probability_is_the_yes_no_softmax(tiny):
    model, tok = tiny
    engine = FlowEngine(model, tok, FlowConfig(chunk_size=4))
    state = FlowState(problems(1)[0])
    engine.step([state])
    p = engine.stop_probs([state])[0]
    ids = tok(prompts.stop_prompt(tok, state.problem.question, engine.completion(state)), return_tensors="pt",
              add_special_tokens=False).input_ids
    with torch.no_grad():
        logits = model(ids).logits[0, -1]
    yes, no = prompts.yes_no_ids(tok)
    expected = torch.softmax(logits[[yes, no]].float(), 0)[0].item()
    assert p == pytest.approx(expected, abs=1e-5)


def test_stop_probabilities_grouped_by_length_come_back_in_order(tiny):
    """More rows than one Stop group, with different lengths: each row gets its own P(Yes)."""
    model, tok = tiny
    engine = FlowEngine(model, tok, FlowConfig(chunk_size=3, batch_size=32))
    states = [FlowState(p) for p in problems(11)]
    for i, s in enumerate(states):  # 1..3 chunks: lengths differ, and sorting reorders them
        for _ in range(1 + i % 3):
            engine.step([s])
            s.end_reason = None
    before = engine.stats["stop_calls"]
    batched = engine.stop_probs(states)
    assert engine.stats["stop_calls"] - before == 2  # 11 rows in groups of PASS_ROWS = 8
    one_by_one = [engine.stop_probs([s])[0] for s in states]
    assert batched == pytest.approx(one_by_one, abs=1e-5)


def test_eos_ends_the_flow(tiny):
    model, tok = tiny
    with torch.no_grad():  # make end-of-turn the most likely token everywhere
        model.lm_head.weight[tok.eos_token_id] += 100 * model.lm_head.weight.abs().max()
        model.model.norm.weight.fill_(1.0)
    model.lm_head.bias = None
    engine = FlowEngine(model, tok, FlowConfig(chunk_size=8, max_steps=4, stop_threshold=1.0))
    (t,) = list(engine.solve(problems(1)))
    assert t.end_reason == "eos" and len(t.chunks) == 1


def test_avoid_resamples_a_different_chunk(tiny):
    model, tok = tiny
    engine = FlowEngine(model, tok, FlowConfig(chunk_size=6, temperature=1.0))
    torch.manual_seed(0)
    states = [FlowState(p) for p in problems(4)]
    first = engine.generate_chunks(states)
    again = engine.generate_chunks(states, avoid=[c.token_ids for c in first])
    assert all(a.token_ids != b.token_ids for a, b in zip(first, again))


def test_trace_is_graded(tiny):
    model, tok = tiny
    engine = FlowEngine(model, tok, FlowConfig(chunk_size=4, max_steps=1))
    (t,) = list(engine.solve(problems(1)))
    d = t.to_dict()
    assert d["problem_id"] == "p0" and d["correct"] is False and d["n_tokens"] == sum(c["n_tokens"] for c in d["chunks"])


def test_two_adapters_share_one_base(tiny, tmp_path):
    model, tok = tiny
    base_params = sum(p.numel() for p in model.parameters())
    peft_model = adapters.attach(model).eval()  # eval: no LoRA dropout
    assert set(peft_model.peft_config) == {"answer", "stop"}
    lora = sum(p.numel() for n, p in peft_model.named_parameters() if "lora_" in n)
    assert sum(p.numel() for p in peft_model.parameters()) == base_params + lora  # no second base copy
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        with adapters.reference(peft_model):
            ref = peft_model(ids).logits
        for n, p in peft_model.named_parameters():  # perturb only the answer adapter
            if "lora_B" in n and ".answer." in n:
                p.add_(0.5)
        with adapters.use(peft_model, "answer"):
            ans = peft_model(ids).logits
        with adapters.use(peft_model, "stop"):
            stop = peft_model(ids).logits
        with adapters.reference(peft_model):
            ref_again = peft_model(ids).logits
    assert not torch.allclose(ans, ref) and torch.allclose(stop, ref) and torch.equal(ref, ref_again)

    adapters.save(peft_model, tmp_path / "ad")
    assert (tmp_path / "ad" / "answer" / "adapter_config.json").is_file()
    assert (tmp_path / "ad" / "stop" / "adapter_config.json").is_file()
    card = (tmp_path / "ad" / "README.md").read_text()
    assert "`answer/`, `stop/`" in card and "More Information Needed" not in card
    from conftest import build_tiny_model

    reloaded = adapters.load(build_tiny_model(tok), tmp_path / "ad")
    with torch.no_grad(), adapters.use(reloaded, "answer"):
        assert torch.allclose(reloaded(ids).logits, ans, atol=1e-6)


def test_missing_adapter_dir_is_a_clear_error(tiny, tmp_path):
    model, _ = tiny
    with pytest.raises(FileNotFoundError, match="answer"):
        adapters.load(model, tmp_path)


def test_generate_passes_device_to_the_loader(tmp_path, monkeypatch, capsys):
    from flowcore import models
    from flowcore.flow import generate

    calls, real_load = [], models.load

    def load(model, dtype=None, device="auto"):
        calls.append(device)
        raise models.ModelError("loader reached")

    monkeypatch.setattr(generate.models, "load", load)
    assert generate.main(["--model", "x", "--limit", "1", "--out", str(tmp_path / "t.jsonl"), "--device", "cpu"]) == 1
    assert calls == ["cpu"] and "loader reached" in capsys.readouterr().err
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(generate.models, "load", real_load)
    assert generate.main(["--model", "x", "--limit", "1", "--out", str(tmp_path / "u.jsonl"), "--device", "cuda"]) == 1
    assert "no CUDA device" in capsys.readouterr().err


def _eos_everywhere(model, tok):
    with torch.no_grad():  # make end-of-turn the most likely token everywhere (as in test_eos_ends_the_flow)
        model.lm_head.weight[tok.eos_token_id] += 100 * model.lm_head.weight.abs().max()
        model.model.norm.weight.fill_(1.0)
    return model


def test_stop_at_eos_asks_the_stop_llm_where_the_answer_llm_ended_its_turn(tiny):
    """Off: end-of-turn ends the flow unasked (today's flows). On: Yes there stops; No drops the token and
    the Answer LLM writes on, its next chunk not starting with end-of-turn, up to max_steps."""
    model, tok = tiny
    model = _eos_everywhere(model, tok)
    cfg = FlowConfig(chunk_size=8, max_steps=4, stop_threshold=1.0)
    (off,) = list(FlowEngine(model, tok, cfg).solve(problems(1)))
    assert (off.end_reason, len(off.chunks), off.chunks[0]["p_yes"]) == ("eos", 1, None)

    (yes,) = list(FlowEngine(model, tok, replace(cfg, stop_at_eos=True, stop_threshold=0.0)).solve(problems(1)))
    assert (yes.end_reason, len(yes.chunks)) == ("stop", 1) and yes.chunks[0]["p_yes"] is not None
    assert yes.completion == off.completion

    engine = FlowEngine(model, tok, replace(cfg, stop_at_eos=True))
    states = [FlowState(p) for p in problems(3)]
    for _ in engine.run(states):
        pass
    for s in states:
        assert s.end_reason == "max_steps" and len(s.chunks) == 4
        assert all(c.eos and c.p_yes is not None for c in s.chunks)  # each chunk ended the turn, was asked
        ends_turn = [bool(c.token_ids) and c.token_ids[-1] in engine.eos_ids for c in s.chunks]
        assert ends_turn == [False, False, False, True]  # the token is dropped where the flow wrote on
        assert all(c.token_ids and c.token_ids[0] not in engine.eos_ids for c in s.chunks[1:])
    assert states[0].chunks[0].text == off.chunks[0]["text"]


def test_flow_flags_read_booleans_as_flags():
    """add_flow_args: --stop-at-eos is a flag (argparse's type=bool would read "False" as True)."""
    import argparse

    from flowcore.flow.generate import add_flow_args, flow_config

    p = argparse.ArgumentParser()
    add_flow_args(p)
    assert flow_config(p.parse_args([])) == FlowConfig()
    assert flow_config(p.parse_args(["--stop-at-eos", "--chunk-size", "80"])) == FlowConfig(stop_at_eos=True,
                                                                                              chunk_size=80)
