"""Compile (issue 5): ground-truth traces, the equal-count selection, SFT loss masking and resume,
and the whole `reproduce` pipeline on a tiny model."""
from __future__ import annotations

import json
import re
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import tinyflow
from flowcore.compile import sft as sft_mod
from flowcore import data, grading
from flowcore.eval import evaluate
from flowcore.compile import pipeline, presets, reproduce, traces
from flowcore.compile.sft import CompileConfig
from flowcore.eval.evaluate import EvalSet
from flowcore.flow.engine import FlowConfig


# ---------------------------------------------------------------- ground truth


def test_gsm8k_ground_truth_on_real_rows():
    p = data.load("gsm8k", "train", limit=1)[0]
    assert "<<" in p.solution and "####" in p.solution  # the real row has calculator notes
    text = traces.ground_truth_text(p)
    # Natalia sold 48/2 = <<48/2=24>>24 clips in May. ... #### 72
    assert "<<" not in text and ">>" not in text and "####" not in text
    assert "48/2 = 24 clips in May" in text
    assert text.endswith("The final answer is \\boxed{72}.")
    assert grading.extract_answer(text) == "72" and grading.is_correct(text, "72", "gsm8k")


def test_every_gsm8k_train_ground_truth_grades_correct():
    problems = data.load("gsm8k", "train")
    records = traces.ground_truth_records(problems)
    wrong = [r["problem_id"] for r in records if not r["correct"]]
    assert not wrong, f"{len(wrong)} of {len(records)} ground-truth traces grade wrong: {wrong[:5]}"
    for p, r in zip(problems, records):
        # no calculator notes, no "####" line: the explicit final-answer sentence the Answer prompt asks for
        assert not re.search(r"<<|>>|####", r["completion"]), r["problem_id"]
        assert r["completion"].endswith(f"\nThe final answer is \\boxed{{{p.gold}}}."), r["problem_id"]
        assert r["extracted"] == p.gold


def test_math_ground_truth_is_the_solution_then_the_final_answer_sentence():
    problems = data.load("math", "train", limit=200)
    records = traces.ground_truth_records(problems)
    assert [r["completion"] for r in records] == [
        f"{p.solution.strip()}\nThe final answer is \\boxed{{{p.gold}}}." for p in problems]
    assert all(r["correct"] for r in records)
    # a solution that already ends in the sentence keeps it once
    p = replace(problems[0], solution=records[0]["completion"])
    assert traces.ground_truth_text(p) == records[0]["completion"]


@pytest.mark.parametrize("dataset", data.DATASETS)
def test_every_ground_truth_trace_ends_in_a_graded_final_answer_sentence(dataset):
    """The model SFT-trained on ground truth learns how a trace ends: every trace's last line is the
    final-answer sentence, and flowcore.grading reads the gold from that line alone. MATH traces used to end
    in the solution's prose with the box inside ("... is $\\boxed{31}$ centimeters."), and the cpu preset's
    SFT-ground-truth model then ended 27 of 100 GSM8K answers after a plain sentence, with no answer."""
    problems = data.load(dataset, "train")
    records = traces.ground_truth_records(problems)
    for p, r in zip(problems, records, strict=True):
        last = r["completion"].splitlines()[-1]
        assert last.startswith("The final answer is "), (p.id, last)
        g = grading.grade(last, p.gold, dataset)
        assert g.correct and g.extracted == p.gold, (p.id, last, g)
        assert r["correct"] and r["extracted"] == p.gold, p.id


# ---------------------------------------------------------------- selection


def _rec(pid, k, correct, text=""):
    return {"problem_id": f"{pid}#{k}", "dataset": "gsm8k", "correct": correct, "completion": text or f"{pid}-{k}"}


def test_selection_takes_prompts_every_source_solved_with_equal_counts():
    gt = [{"problem_id": p, "sample": 0, "dataset": "gsm8k", "correct": True, "completion": f"gt-{p}"}
          for p in ("a", "b", "c", "d")]
    self_ = [_rec("a", 0, False), _rec("a", 1, True), _rec("a", 2, True), _rec("b", 0, True),
             _rec("c", 0, False), _rec("d", 0, True)]
    flow = [_rec("a", 0, True), _rec("b", 0, False), _rec("c", 0, True), _rec("d", 1, True), _rec("d", 0, True)]
    chosen = traces.select({"ground_truth": gt, "self_generated": self_, "flow_generated": flow},
                           ["d", "c", "b", "a"])
    # b: flow never right; c: self never right -> only d and a, in prompt order, one trace each
    assert {s: [r["problem_id"] for r in rows] for s, rows in chosen.items()} == {
        s: ["d", "a"] for s in traces.SOURCES}
    assert [r["completion"] for r in chosen["self_generated"]] == ["d-0", "a-1"]  # first correct sample
    assert [r["completion"] for r in chosen["flow_generated"]] == ["d-0", "a-0"]
    assert [r["completion"] for r in chosen["ground_truth"]] == ["gt-d", "gt-a"]


def test_selection_with_no_common_prompt_is_a_clear_error():
    gt = [{"problem_id": "a", "sample": 0, "dataset": "gsm8k", "correct": True, "completion": "x"}]
    with pytest.raises(traces.SelectionError, match="no prompt has a correct trace from every source"):
        traces.select({"ground_truth": gt, "self_generated": [_rec("a", 0, True)],
                       "flow_generated": [_rec("a", 0, False)]}, ["a"])


# ---------------------------------------------------------------- SFT


def test_sft_loss_is_the_answer_tokens_only(tiny):
    model, tok = tiny
    batch = [sft_mod.encode(tok, "Janet has 16 eggs.", "She has 13 left. \\boxed{13}", 100),
             sft_mod.encode(tok, "Add 3 and 4, then more words here.", "7", 100)]
    ours = sft_mod.answer_nll(model, batch, tok.pad_token_id)
    # the same examples through transformers' own loss with the prompt labels masked (-100)
    total = 0.0
    for prompt, answer, _ in batch:
        ids = torch.tensor([prompt + answer])
        labels = torch.tensor([[-100] * len(prompt) + answer])
        total += model(input_ids=ids, labels=labels).loss.item() * len(answer)
    assert ours.item() == pytest.approx(total, rel=1e-4)
    assert batch[1][1] == tok("7", add_special_tokens=False).input_ids + [tok.eos_token_id]


def _rows():
    return [{"question": q, "completion": tinyflow.ANSWER % (1 + i % 2)} for i, q in enumerate(tinyflow.QUESTIONS[:6])]


def _lora_weights(model, name):
    return [p.detach().clone() for p in sft_mod.adapter_params(model, name)]


def test_sft_trains_only_its_adapter_and_writes_a_peft_dir(tiny, tmp_path, one_thread):
    model, tok = tiny
    cfg = CompileConfig(batch_size=4, micro_batch=2, epochs=2, lr=1e-2, lora_r=4, lora_alpha=4)
    model = sft_mod.sft(model, tok, "ground_truth", _rows(), cfg, tmp_path / "sft" / "ground_truth")
    first = _lora_weights(model, "ground_truth")
    model = sft_mod.sft(model, tok, "self_generated", _rows(), cfg, tmp_path / "sft" / "self_generated")
    assert all(torch.equal(a, b) for a, b in zip(first, _lora_weights(model, "ground_truth")))
    out = tmp_path / "sft" / "self_generated"
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    assert not (tmp_path / "sft" / "self_generated.partial").exists()
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4]  # 6 examples, batch 4 -> 2 steps per epoch
    assert log[-1]["loss"] < log[0]["loss"]
    meta = json.loads((out / "sft.json").read_text())
    assert meta["settings"]["examples"] == 6 and meta["settings"]["compile"]["lora_r"] == 4


def test_sft_killed_midway_resumes_to_the_same_adapter(tiny_tokenizer, tmp_path, monkeypatch, one_thread):
    from conftest import build_tiny_model

    tok = tiny_tokenizer
    cfg = CompileConfig(batch_size=2, micro_batch=1, epochs=2, lr=1e-2, lora_r=4, lora_alpha=4)
    full = sft_mod.sft(build_tiny_model(tok), tok, "x", _rows(), cfg, tmp_path / "full")
    expected = _lora_weights(full, "x")

    real_append, calls = sft_mod.results.append_jsonl, {"n": 0}

    def dies_on_third_step(path, records):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed")
        real_append(path, records)

    monkeypatch.setattr(sft_mod.results, "append_jsonl", dies_on_third_step)
    monkeypatch.setattr(sft_mod.results, "git_commit", lambda: "first-commit")
    with pytest.raises(KeyboardInterrupt):
        sft_mod.sft(build_tiny_model(tok), tok, "x", _rows(), cfg, tmp_path / "resumed")
    assert (tmp_path / "resumed.partial" / "checkpoint.pt").is_file()
    # the start is recorded when training starts, not when it ends
    first = json.loads((tmp_path / "resumed.partial" / "sft.json").read_text())
    assert first["git_commit"] == "first-commit" and first["runtime"]["dtype"] == "torch.float32"
    monkeypatch.setattr(sft_mod.results, "append_jsonl", real_append)
    monkeypatch.setattr(sft_mod.results, "git_commit", lambda: "second-commit")
    # the checkpoint's numbers are fp32's: another dtype does not continue them
    with pytest.raises(ValueError, match="started in torch.float32.*--dtype float32"):
        sft_mod.sft(build_tiny_model(tok).to(torch.bfloat16), tok, "x", _rows(), cfg, tmp_path / "resumed")
    resumed = sft_mod.sft(build_tiny_model(tok), tok, "x", _rows(), cfg, tmp_path / "resumed")
    for a, b in zip(expected, _lora_weights(resumed, "x")):
        torch.testing.assert_close(a, b)
    steps = [json.loads(x)["step"] for x in (tmp_path / "resumed" / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
    # sft.json keeps the first start (time and commit); the resume is listed with its own commit
    meta = json.loads((tmp_path / "resumed" / "sft.json").read_text())
    assert (meta["started"], meta["git_commit"]) == (first["started"], "first-commit")
    assert [r["git_commit"] for r in meta["resumes"]] == ["second-commit"]
    assert meta["resumes"][0]["from_step"] == 2 and meta["runtime"]["dtype"] == "torch.float32"
    assert meta["started"] <= meta["resumes"][0]["started"] <= meta["finished"]


# ---------------------------------------------------------------- the pipeline


def test_tiny_pipeline_end_to_end(tmp_path, one_thread, capsys):
    problems = str(tinyflow.write_problems(tmp_path / "problems.jsonl", 12))
    flow = FlowConfig(chunk_size=8, max_steps=4, stop_threshold=1.0, batch_size=4)
    cfg = presets.ReproduceConfig(
        preset="test", out=str(tmp_path / "results"), model=tinyflow.taught_dir(),
        prompt_sets=[presets.PromptSet("gsm8k", 10, data_file=problems)],
        samples=2, sample_temperature=0.7, flow=flow,
        dpo_run=str(tmp_path / "run"),
        # the run gets the model, chunk_size, max_steps, stop_threshold and stop_at_eos from the preset (train_argv)
        dpo_args={"dataset": "gsm8k", "data_file": problems, "examples": 4, "group_size": 2, "batch_pairs": 2,
                  "lr": 1e-3},
        eval_sets=[EvalSet("gsm8k", "custom", 8, data_file=problems), EvalSet("gsm8k", "custom", 4, data_file=problems)],
        compile=CompileConfig(batch_size=4, micro_batch=2, epochs=1, lora_r=4, lora_alpha=4),
    )
    pipe = pipeline.Pipeline(cfg, "python -m flowcore reproduce --preset test", dtype="float32")
    pipe.run(pipeline.STAGES[:-3])
    out = tmp_path / "results"
    # stage sft split by rows: a process trains only its sources' adapters
    pipeline.Pipeline(cfg, "x", rows=("ground_truth",), dtype="float32").sft()
    assert sorted(p.name for p in (out / "sft").iterdir()) == ["ground_truth"]
    pipe.sft()
    # stage eval split between two processes: each writes only its rows and sets; the full run fills in the rest
    pipeline.Pipeline(cfg, "x", rows=("zero_shot", "flow_generated"), eval_sets=("gsm8k-problems-first4",),
                       dtype="float32").eval()
    made = sorted(str(p.relative_to(out / "eval")) for p in (out / "eval").rglob("*.jsonl"))
    assert made == ["flow_generated/gsm8k-problems-first4.jsonl", "zero_shot/gsm8k-problems-first4.jsonl"]
    meta = json.loads((out / "eval" / "zero_shot" / "gsm8k-problems-first4.meta.json").read_text())
    assert meta["runtime"]["dtype"] == "torch.float32" and meta["runtime"]["threads"] == 1
    # made on the transformers engine: no "engine" setting (files from before engines existed resume as they
    # are), and a vLLM pipeline does not continue it
    assert meta["runtime"]["engine"] == "hf" and "engine" not in meta["settings"]
    vllm = pipeline.Pipeline(cfg, "x", dtype="float32", engine="vllm")
    with pytest.raises(pipeline.ReproduceError, match=r"\{'engine': \(None, 'vllm'\)\}"):
        vllm.results_file(out / "eval" / "zero_shot" / "gsm8k-problems-first4.jsonl",
                          **{k: v for k, v in meta["settings"].items() if k != "model"})
    # a file started in one dtype is not continued in another (its records would mix two models' numerics)
    with pytest.raises(pipeline.ReproduceError, match="started in torch.float32.*--dtype float32"):
        pipeline.Pipeline(cfg, "x", rows=("zero_shot",), eval_sets=("gsm8k-problems-first4",),
                           dtype="bfloat16").eval()
    pipe.run(("eval", "table"))
    assert json.loads((out / "traces" / "prompts.json").read_text())["order"] == cfg.prompt_order == "sample-v1"
    selection = json.loads((out / "sft_data" / "selection.json").read_text())
    n = selection["traces_per_source"]
    assert n > 0 and selection["rule"] == traces.SELECTION_RULE
    for source in traces.SOURCES:
        rows = [json.loads(x) for x in (out / "sft_data" / f"{source}.jsonl").read_text().splitlines()]
        assert len(rows) == n
        assert (out / "sft" / source / "adapter_config.json").is_file()
    tab = json.loads((out / "table.json").read_text())
    assert [r["model"] for r in tab["rows"]] == ["0-shot", "SFT ground truth", "SFT self-generated",
                                                  "SFT Flow-generated"]
    assert tab["command"] == "python -m flowcore reproduce --preset test"
    # every model-made file records its dtype, and the table says which it was made of
    made = {f"traces/{s}": out / "traces" / f"{s}.meta.json" for s in ("self_generated", "flow_generated")}
    made |= {f"sft/{s}": out / "sft" / s / "sft.json" for s in traces.SOURCES}
    made |= {f"eval/{r}/{es.name}": out / "eval" / r / f"{es.name}.meta.json" for r in evaluate.MODELS
             for es in cfg.eval_sets}
    assert {k: json.loads(p.read_text())["runtime"]["dtype"] for k, p in made.items()} == tab["dtypes"]
    assert set(tab["dtypes"].values()) == {"torch.float32"} and tab["dtype"] == "torch.float32"
    assert "dtype torch.float32" in (out / "table.md").read_text()
    for name in ("gsm8k-problems-first8", "gsm8k-problems-first4"):
        for row in evaluate.MODELS:
            recs = [json.loads(x) for x in (out / "eval" / row / f"{name}.jsonl").read_text().splitlines()]
            assert len(recs) == int(name[-1])
            acc = tab["cells"][name][row]
            assert acc["correct"] == sum(r["correct"] for r in recs)
    assert len(tab["comparisons"]) == 6
    md = (out / "table.md").read_text()
    assert "SFT Flow-generated" in md and "48.9" in md  # ours and the paper's
    assert (out / "chart.html").is_file()

    # rerunning the same command does nothing new; other settings are refused
    before = {p: p.read_text() for p in (out / "eval").rglob("*.jsonl")}
    pipe.run(("traces", "sft", "eval"))
    assert before == {p: p.read_text() for p in (out / "eval").rglob("*.jsonl")}
    cfg.samples = 3
    with pytest.raises(pipeline.ReproduceError, match="other settings"):
        pipeline.Pipeline(cfg, "x").run()
    # the run the pipeline made holds the preset's flow; the compile may not run it under other settings
    assert presets.run_diff(cfg, tmp_path / "run") == {}
    cfg.flow = replace(flow, stop_at_eos=True)
    with pytest.raises(pipeline.ReproduceError, match=r"trained with other settings \{'stop_at_eos': \(False, True\)"):
        pipeline.Pipeline(cfg, "x").start()


def test_cpu_preset_draws_the_committed_prompts(tmp_path):
    """The training order's default changed (permutation-v2); a rerun of results/cpu must keep its prompts."""
    committed = Path(__file__).resolve().parents[1] / "results" / "cpu"
    cfg = presets.PRESETS["cpu"]()
    assert cfg.prompt_order == "sample-v1"
    pipe = pipeline.Pipeline(cfg, "x")
    assert [p.id for p in pipe.prompts()] == json.loads((committed / "traces" / "prompts.json").read_text())[
        "prompt_ids"]
    # its config.json predates the prompt_order setting: it is read as sample-v1, so the rerun is not refused
    made = json.loads((committed / "config.json").read_text())
    assert "prompt_order" not in made["settings"]
    cfg.out = made["settings"]["out"] = str(tmp_path)  # the same settings, written elsewhere
    (tmp_path / "config.json").write_text(json.dumps(made))
    pipeline.Pipeline(cfg, "x").start()
    cfg.prompt_order = "permutation-v2"
    with pytest.raises(pipeline.ReproduceError, match="prompt_order"):
        pipeline.Pipeline(cfg, "x").start()


def test_cpu_results_made_from_the_old_ground_truth_are_not_rewritten(tmp_path):
    """results/cpu's SFT ground-truth adapter learned the MATH traces without a final-answer sentence: stage
    traces may not replace them under it (its sft_data and adapter would disagree)."""
    committed = Path(__file__).resolve().parents[1] / "results" / "cpu" / "traces" / "ground_truth.jsonl"
    cfg = presets.PRESETS["cpu"]()
    cfg.out = str(tmp_path)
    (tmp_path / "traces").mkdir()
    shutil.copy(committed, tmp_path / "traces" / "ground_truth.jsonl")
    with pytest.raises(pipeline.ReproduceError, match="holds other ground-truth traces"):
        pipeline.Pipeline(cfg, "x").traces()
    assert (tmp_path / "traces" / "ground_truth.jsonl").read_text() == committed.read_text()
    assert not (tmp_path / "traces" / "prompts.json").exists()  # refused before writing anything


# ---------------------------------------------------------------- presets


def test_full_preset_is_the_papers_compile_design():
    assert set(presets.PRESETS) == {"cpu", "full"}
    cfg = presets.PRESETS["full"]()
    assert (cfg.preset, cfg.out, cfg.dpo_run) == ("full", "results/full", "runs/online-dpo-2000")
    # 1,500 training prompts as one mixed set, drawn from the train splits
    problems = pipeline.Pipeline(cfg, "x").prompts()
    assert len({p.id for p in problems}) == len(problems) == 1500
    for ds, n in (("gsm8k", 1000), ("math", 500)):
        ids = {p.id for p in problems if p.dataset == ds}
        assert len(ids) == n and ids <= {p.id for p in data.load(ds, "train")}
    # evaluation on the whole GSM8K test set and the whole of MATH500
    assert [(es.name, len(es.problems())) for es in cfg.eval_sets] == [("gsm8k-test", 1319), ("math-test500", 500)]
    # SFT as the paper's Table 3 (FLOW-DPO.md section 3); micro_batch only splits the step in memory
    c = cfg.compile
    assert (c.lora_r, c.lora_alpha, c.lora_dropout, c.lora_targets) == (16, 16, 0.05, "all-linear")
    assert (c.lr, c.batch_size, c.warmup_ratio, c.epochs) == (2e-4, 16, 0.1, 3)
    assert c.batch_size // c.micro_batch == 2  # gradient accumulation 2
    # the pre-registered fixed flow settings of runs/online-dpo-2000, until its config.json says otherwise
    assert (cfg.flow.max_steps, cfg.flow.stop_at_eos) == (6, True)


def _fake_run(run: Path, model: str, **flow) -> Path:
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"settings": {"model": model, "flow": flow}}))
    return run


def test_the_preset_takes_model_and_flow_settings_from_its_run(tmp_path):
    cfg = presets.PRESETS["full"]()
    run = _fake_run(tmp_path / "run", "qwen2.5-coder-1.5b-instruct", chunk_size=160, max_steps=6,
                    stop_threshold=0.5, stop_at_eos=True, batch_size=16)
    assert presets.run_diff(cfg, tmp_path / "none") == {}  # no run yet: nothing to follow
    assert presets.run_diff(cfg, run) == {"model": ("qwen2.5-coder-1.5b-instruct", cfg.model), "chunk_size": (160, 64)}
    followed = presets.follow_run(cfg, run)
    assert (followed.model, followed.flow.chunk_size, followed.flow.stop_at_eos) == (
        "qwen2.5-coder-1.5b-instruct", 160, True)
    assert followed.flow.batch_size == 64 and presets.run_diff(followed, run) == {}  # speed settings stay ours
    # a run made before stop_at_eos existed ran without it
    old = _fake_run(tmp_path / "old", cfg.model, chunk_size=64, max_steps=6, stop_threshold=0.5)
    assert presets.run_diff(cfg, old) == {"stop_at_eos": (False, True)}


def test_reproduce_runs_the_flow_as_its_run_trained_it(tmp_path, capsys):
    run = _fake_run(tmp_path / "run", "m-of-the-run", chunk_size=160, max_steps=4, stop_threshold=0.5)
    adapters = str(run / "adapters")
    out = tmp_path / "out"
    assert reproduce.main(["--preset", "full", "--model", "other", "--flow-adapters", adapters, "--out",
                           str(out)]) == 2
    assert "--model other, but the flow in" in capsys.readouterr().err and not out.exists()
    # stage table fails (nothing evaluated), after config.json was written with the run's settings
    assert reproduce.main(["--preset", "full", "--stages", "table", "--flow-adapters", adapters,
                           "--out", str(out)]) == 1
    io = capsys.readouterr()
    assert "model m-of-the-run, chunk_size 160, max_steps 4, stop_at_eos False" in io.out and "incomplete" in io.err
    settings = json.loads((out / "config.json").read_text())["settings"]
    assert settings["model"] == "m-of-the-run"
    assert (settings["flow"]["chunk_size"], settings["flow"]["max_steps"]) == (160, 4)
    assert "stop_at_eos" not in settings["flow"]  # False: left out, as FlowConfig.settings() leaves its default


def test_train_argv_makes_the_run_with_the_presets_flow():
    from flowcore.online.train import parse

    cfg = presets.PRESETS["full"]()
    args = parse(presets.train_argv(cfg))
    assert (args.model, args.out, args.examples, args.dataset) == (cfg.model, "runs/online-dpo-2000", 2000, "gsm8k")
    assert (args.chunk_size, args.max_steps, args.stop_threshold, args.stop_at_eos) == (64, 6, 0.5, True)
    assert (args.group_size, args.batch_size, args.batch_pairs, args.lr, args.dtype) == (32, 32, 8, 5e-5, "float32")
    assert parse(presets.train_argv(presets.PRESETS["cpu"]())).stop_at_eos is False
    cfg.dpo_args["chunk_size"] = 64
    with pytest.raises(ValueError, match="set them in the preset's flow"):
        presets.train_argv(cfg)


def test_the_full_preset_makes_the_run_as_its_driver_script_does():
    """runs/online-dpo-2000.sh (the pre-registered command) and the preset's train_argv name the same run."""
    import shlex

    from flowcore.online.train import parse

    script = (Path(__file__).resolve().parents[1] / "runs" / "online-dpo-2000.sh").read_text()
    line = re.search(r"-m flowcore train (.*?)\$resume", script.replace("\\\n", " "), re.S).group(1)
    driver = vars(parse(shlex.split(line.replace('"$RUN"', "runs/online-dpo-2000"))))
    preset = vars(parse(presets.train_argv(presets.PRESETS["full"]())))
    assert driver.pop("engine") == "vllm" and preset.pop("engine") == "auto"  # the pipeline picks what is installed
    assert driver == preset


def test_reproduce_cli_rejects_unknown_stage_row_or_set(capsys):
    assert reproduce.main(["--preset", "cpu", "--stages", "traces,bogus"]) == 2
    assert "bogus" in capsys.readouterr().err
    assert reproduce.main(["--preset", "cpu", "--stages", "eval", "--rows", "zero_shot,sft_bogus"]) == 2
    assert "unknown row(s) ['sft_bogus']" in capsys.readouterr().err
    assert reproduce.main(["--preset", "cpu", "--stages", "eval", "--eval-sets", "gsm8k-test"]) == 2
    assert "gsm8k-test-first100" in capsys.readouterr().err


def test_traces_refuse_an_unfinished_online_dpo_run(tmp_path, one_thread):
    """A run still in progress already exports adapters; its flow must not make the Flow-generated traces."""
    problems = str(tinyflow.write_problems(tmp_path / "problems.jsonl", 4))
    run = tmp_path / "run"
    for role in ("answer", "stop"):
        (run / "adapters" / role).mkdir(parents=True)
        (run / "adapters" / role / "adapter_config.json").write_text("{}")
    (run / "progress.jsonl").write_text(json.dumps({"index": 0}) + "\n")
    cfg = presets.ReproduceConfig(
        preset="test", out=str(tmp_path / "results"), model=tinyflow.taught_dir(),
        prompt_sets=[presets.PromptSet("gsm8k", 4, data_file=problems)],
        flow=FlowConfig(chunk_size=8, max_steps=2, batch_size=4), dpo_run=str(run), dpo_args={"examples": 4})
    with pytest.raises(pipeline.ReproduceError, match=r"not finished \(1/4 examples\)"):
        pipeline.Pipeline(cfg, "x").run(("traces",))
    # the base model's samples come first and are kept
    assert len((tmp_path / "results" / "traces" / "self_generated.jsonl").read_text().splitlines()) == 4


def test_compile_modules_stay_readable_in_one_sitting():
    """STYLE.md: one module, one job; the reproduce CLI, its presets and its stages are separate modules."""
    from pathlib import Path

    sizes = {p.name: len(p.read_text().splitlines()) for p in Path(traces.__file__).parent.glob("*.py")}
    assert {"reproduce.py", "presets.py", "pipeline.py"} <= set(sizes)
    assert max(sizes.values()) <= 300, sizes
