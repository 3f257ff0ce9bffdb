"""The online loop as a command: kill-and-resume, data parallel under accelerate, baselines and the chart."""
from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import tinyflow
from flowcore import data, grading, results, stats
from flowcore.flow.generate import flow_config
from flowcore.online import baselines, checkpoint, heldout, plots, sweep, train
from flowcore.results import read_jsonl

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
       "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
SETTINGS = ["--dataset", "gsm8k", "--examples", "6", "--chunk-size", "6", "--max-steps", "6", "--stop-threshold", "1.0",
            "--group-size", "2", "--batch-pairs", "3", "--checkpoint-every", "2", "--lr", "1e-3", "--rollouts", "1"]
TIMING = ("seconds", "elapsed", "explore_seconds", "cpu_seconds")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("train")
    return tinyflow.taught_dir(), str(tinyflow.write_problems(tmp / "problems.jsonl", 8)), tmp


def flowcore(*args, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "flowcore", *args], cwd=ROOT, env=env or ENV,
                          capture_output=True, text=True, timeout=timeout)


def without_timing(path):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in read_jsonl(path)]


def test_kill_and_resume_gives_the_same_run(setup, capsys):
    model, problems, tmp = setup
    whole, killed = tmp / "whole", tmp / "killed"
    args = ["train", "--model", model, "--data-file", problems, *SETTINGS]
    r = flowcore(*args, "--out", str(whole))
    assert r.returncode == 0, r.stderr[-3000:]

    # SIGKILL after 3 examples: mid-round (rounds of 2), one example after the checkpoint at 2
    r = flowcore(*args, "--out", str(killed), env={**ENV, "FLOWCORE_KILL_AFTER": "3"})
    assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
    assert len(read_jsonl(killed / "progress.jsonl")) == 3
    assert torch.load(killed / "checkpoint.pt", weights_only=True)["position"] == 2

    # refused without --resume, or with other settings; nothing lost (in-process: no model is loaded)
    assert train.main(args[1:] + ["--out", str(killed)]) == 1
    assert "--resume" in capsys.readouterr().err
    assert train.main(args[1:] + ["--out", str(killed), "--resume", "--lr", "1e-2"]) == 1
    assert "other settings" in capsys.readouterr().err
    assert train.main(args[1:] + ["--out", str(killed), "--resume", "--dtype", "bfloat16"]) == 1
    assert "started in torch.float32" in capsys.readouterr().err  # conftest pins float32
    assert len(read_jsonl(killed / "progress.jsonl")) == 3
    moved = tmp / "moved"  # what another machine gets from git: no checkpoint.pt
    shutil.copytree(killed, moved, ignore=shutil.ignore_patterns("checkpoint.pt"))

    r = flowcore(*args, "--out", str(killed), "--resume")
    assert r.returncode == 0, r.stderr[-3000:]
    progress = without_timing(whole / "progress.jsonl")
    assert [p["index"] for p in progress] == list(range(6))
    assert without_timing(killed / "progress.jsonl") == progress
    assert [(x["position"], x["exact"]) for x in read_jsonl(killed / "resumes.jsonl")] == [(2, True)]

    r = flowcore(*args, "--out", str(moved), "--resume")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "differs from an uninterrupted one" in r.stderr
    assert [p["index"] for p in read_jsonl(moved / "progress.jsonl")] == list(range(6))
    assert without_timing(moved / "progress.jsonl")[:2] == progress[:2]
    assert [(x["position"], x["exact"]) for x in read_jsonl(moved / "resumes.jsonl")] == [(2, False)]
    assert read_jsonl(killed / "pairs.jsonl") == read_jsonl(whole / "pairs.jsonl")
    # the run did learn something, so equality is not trivial
    steps = [s for p in progress for s in p["losses"]]
    assert steps and {s["role"] for s in steps} == {"answer", "stop"}
    a = torch.load(whole / "checkpoint.pt", weights_only=True)["trainer"]["weights"]
    b = torch.load(killed / "checkpoint.pt", weights_only=True)["trainer"]["weights"]
    assert all(torch.equal(x, y) for role in a for x, y in zip(a[role], b[role]))
    assert (killed / "adapters" / "answer" / "adapter_config.json").is_file()
    config = json.loads((whole / "config.json").read_text())
    assert config["command"].startswith("python -m flowcore train --model")
    assert len(config["example_ids"]) == 6 and config["settings"]["dpo"]["batch_pairs"] == 3
    assert config["runtime"]["dtype"] == "torch.float32" and config["runtime"]["device"] == "cpu"
    assert config["order"] == "permutation-v2"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_accelerate_two_processes(setup):
    model, problems, tmp = setup
    out = tmp / "ddp"
    # on a machine without CUDA, `--multi_gpu` (torchrun) starts 2 CPU processes in a gloo group;
    # `--cpu --num_processes 2` would start just one in accelerate 1.15
    cmd = [str(VENV_BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
           "-m", "flowcore", "train", "--model", model, "--data-file", problems, *SETTINGS[:3], "4",
           *SETTINGS[4:], "--group-size", "1", "--out", str(out)]
    r = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-4000:]
    assert "2 processes hold identical adapters" in r.stdout + r.stderr
    progress = read_jsonl(out / "progress.jsonl")
    config = json.loads((out / "config.json").read_text())
    # the two processes ran different examples; together each example once, in order
    assert [p["index"] for p in progress] == list(range(4))
    assert [p["problem_id"] for p in progress] == config["example_ids"]
    assert config["settings"]["world_size"] == 2
    assert any(p["losses"] for p in progress)
    # each round's last record times both processes' explore phase (how balanced the split was)
    assert [len(p["explore_seconds"]) for p in progress] == [0, 2, 0, 2]
    assert all(t > 0 for p in progress for t in p["explore_seconds"])


def test_baselines_and_chart(setup, one_thread, monkeypatch, capsys):
    model, problems, tmp = setup
    run = tmp / "chart"
    assert train.main(["--model", model, "--data-file", problems, *SETTINGS[:3], "3", *SETTINGS[4:],
                       "--out", str(run)]) == 0
    before = plots.run_summary(run)  # baselines not run yet: empty curves, nothing to compare
    assert [a["n"] for a in before["accuracy"].values()] == [3, 0, 0]
    assert before["trained_minus_baseline"]["zero-shot"]["all"]["n"] == 0
    assert "not reached yet" in plots.describe(before)
    assert baselines.main(["--run", str(run)]) == 0
    ids = json.loads((run / "config.json").read_text())["example_ids"]
    for name in ("baseline_flow.jsonl", "baseline_zero_shot.jsonl"):
        assert sorted(t["problem_id"] for t in read_jsonl(run / name)) == sorted(ids)
        meta = json.loads((run / name.replace(".jsonl", ".meta.json")).read_text())
        assert meta["runtime"]["dtype"] == "torch.float32"
    # the baselines run in the dtype the run trained in (config.json), not whatever auto picks now ...
    monkeypatch.setenv("FLOWCORE_DTYPE", "bfloat16")
    assert baselines.main(["--run", str(run), "--which", "flow"]) == 0
    # ... and a file started in one dtype is not continued in another
    assert baselines.main(["--run", str(run), "--which", "flow", "--dtype", "bfloat16"]) == 1
    assert "started in torch.float32" in capsys.readouterr().err
    monkeypatch.setenv("FLOWCORE_DTYPE", "float32")
    fig = plots.progressive_figure(run)
    assert len(fig.data) == 6  # three curves, then their 95% bands
    online = [p["correct"] for p in read_jsonl(run / "progress.jsonl")]
    assert list(fig.data[0].y) == pytest.approx([100 * sum(online[:n]) / n for n in range(1, 4)])
    flow = {t["problem_id"]: t["correct"] for t in read_jsonl(run / "baseline_flow.jsonl")}
    assert list(fig.data[1].y) == pytest.approx([100 * sum(flow[i] for i in ids[:n]) / n for n in range(1, 4)])
    lo, hi = zip(*[stats.wilson(sum(online[:n]), n) for n in range(1, 4)])
    assert list(fig.data[3].y) == pytest.approx([100 * h for h in hi] + [100 * x for x in lo[::-1]])
    assert plots.main(["--run", str(run), "--no-png"]) == 0
    assert (run / "chart.html").stat().st_size > 1000
    summary = json.loads((run / "summary.json").read_text())
    progress = read_jsonl(run / "progress.jsonl")
    assert summary["dtype"] == {"Flow-DPO (online)": "torch.float32", "untrained flow": "torch.float32",
                                "zero-shot": "torch.float32"}
    for p in progress:  # the headline accuracy can be graded again from the file
        g = grading.grade(p["completion"], p["gold"], "gsm8k")
        assert (g.extracted, g.correct) == (p["extracted"], p["correct"])
    assert summary["examples"] == 3 and summary["accuracy"]["Flow-DPO (online)"]["correct"] == sum(online)
    pairs = sum(p["n_answer_pairs"] + p["n_stop_pairs"] for p in progress)
    assert summary["pairs"]["per_example"] == pytest.approx(round(pairs / 3, 3))
    assert sum(summary["dpo_steps"].values()) == sum(len(p["losses"]) for p in progress)
    flow_in_order = [flow[i] for i in ids]
    assert [(r["examples"], r["correct"], r["untrained_flow_correct"]) for r in summary["rounds"]] == [
        ([0, 1], sum(online[:2]), sum(flow_in_order[:2])), ([2, 2], online[2], flow_in_order[2])]  # --group-size 2
    assert sum(len(r["steps"]) for r in summary["rounds"]) == sum(summary["dpo_steps"].values())
    assert [len(r["explore_seconds"]) for r in summary["rounds"]] == [1, 1]  # one process: one time per round
    d = summary["diagnostics"]
    assert d["stop_pairs"]["chosen_yes"] + d["stop_pairs"]["chosen_no"] == summary["pairs"]["stop"]
    assert d["untrained_flow_vs_zero_shot"]["n"] == 3
    assert d["after_example"] == (summary["first_step_after_example"] + 1 if any(p["losses"] for p in progress) else 3)
    assert summary["trained_minus_baseline"]["untrained flow"]["all"]["difference"] == pytest.approx(
        (sum(online) - sum(flow_in_order)) / 3)
    assert summary["planned_examples"] == 3 and "unfinished" not in plots.describe(summary)
    assert "unfinished" not in fig.layout.title.text
    # a run that stopped before its last example says so in the summary and on the chart
    cut = tmp / "chart-unfinished"
    shutil.copytree(run, cut)
    (cut / "progress.jsonl").write_text("".join(line + "\n" for line in
                                                (cut / "progress.jsonl").read_text().splitlines()[:2]))
    cut_summary = plots.run_summary(cut)
    assert (cut_summary["examples"], cut_summary["planned_examples"]) == (2, 3)
    assert "2 of 3 examples (unfinished)" in plots.describe(cut_summary)
    assert "2 of 3 examples (unfinished)" in plots.progressive_figure(cut).layout.title.text
    with pytest.raises(FileNotFoundError, match="python -m flowcore train"):
        plots.progressive_figure(tmp / "nothing-here")


@pytest.mark.browser
def test_chart_png(setup):
    pytest.importorskip("kaleido")
    if not shutil.which("chromium") and not shutil.which("google-chrome"):
        pytest.skip("no Chromium for kaleido")
    run = setup[2] / "chart"
    if not (run / "baseline_flow.jsonl").is_file():
        pytest.skip("needs test_baselines_and_chart's run")
    assert plots.main(["--run", str(run)]) == 0
    assert (run / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sweep_table(setup, one_thread, capsys):
    """`sweep` compares runs on one stream: the untrained flow is shared where it cannot differ, never otherwise."""
    model, problems, tmp = setup
    base = ["--model", model, "--data-file", problems, *SETTINGS[:3], "3", *SETTINGS[4:]]
    runs = {name: tmp / "sweep" / name for name in ("lr1e-3", "lr1e-2", "chunk4")}
    assert train.main(base + ["--out", str(runs["lr1e-3"])]) == 0
    assert train.main(base + ["--lr", "1e-2", "--out", str(runs["lr1e-2"])]) == 0
    assert train.main(base + ["--chunk-size", "4", "--out", str(runs["chunk4"])]) == 0
    assert baselines.main(["--run", str(runs["lr1e-3"]), "--which", "flow"]) == 0
    out = tmp / "sweep"
    assert sweep.main(["--runs", *map(str, runs.values()), "--out", str(out)]) == 0
    rows = {Path(r["run"]).name: r for r in json.loads((out / "sweep.json").read_text())["rows"]}
    shared = str(runs["lr1e-3"] / "baseline_flow.jsonl")
    assert rows["lr1e-3"]["baseline"] == rows["lr1e-2"]["baseline"] == shared  # lr does not touch the untrained flow
    assert rows["chunk4"]["baseline"] is None  # another chunk size: another untrained flow
    untrained = {t["problem_id"]: t for t in read_jsonl(runs["lr1e-3"] / "baseline_flow.jsonl")}
    for name in ("lr1e-3", "lr1e-2"):
        progress = read_jsonl(runs[name] / "progress.jsonl")
        row = rows[name]
        assert row["trained"]["correct"] == sum(p["correct"] for p in progress)
        assert row["untrained"]["correct"] == sum(untrained[p["problem_id"]]["correct"] for p in progress)
        after = row["first_step_after_example"] + 1
        changed = [p["extracted"] != untrained[p["problem_id"]]["extracted"] for p in progress]
        assert row["answers_changed_before_first_step"] == [sum(changed[:after]), after]
        assert row["answers_changed_after_first_step"] == [sum(changed[after:]), 3 - after]
        for role in ("answer", "stop"):
            steps = [s for p in progress for s in p["losses"] if s["role"] == role][1:]
            assert row[f"{role}_reward_accuracy_unseen"]["n"] == sum(s["pairs"] for s in steps)
            assert row[f"{role}_reward_accuracy_unseen"]["correct"] == round(sum(s["reward_accuracy"] * s["pairs"]
                                                                                 for s in steps))
        stop = [q for q in read_jsonl(runs[name] / "pairs.jsonl") if q["role"] == "stop"]
        assert row["stop_pairs_yes_chosen"] == [sum(q["chosen_text"] == "Yes" for q in stop), len(stop)]
        answer_pairs = sum(p["n_answer_pairs"] for p in progress)
        other = row["rollouts_other_outcome"]
        assert other[1] == sum(p["n_rollouts"] for p in progress) and answer_pairs <= other[0] <= other[1]
        cpu = sum(p["cpu_seconds"] for p in progress)
        assert cpu > 0 and row["cpu_seconds_per_example"] == round(cpu / 3, 1)
        assert row["pairs_per_cpu_hour"]["stop"] == round(len(stop) / (cpu / 3600), 1)
    progress = {name: read_jsonl(run / "progress.jsonl") for name, run in runs.items()}
    for name, row in rows.items():
        assert row["ended_by_stop"] == [sum(p["end_reason"] == "stop" for p in progress[name]), 3]
        assert row["tokens_per_example"] == round(sum(p["n_tokens"] for p in progress[name]) / 3, 1)
    assert "minus_first_run" not in rows["lr1e-3"]
    for name in ("lr1e-2", "chunk4"):  # the same stream: every example is paired with the first run's
        a, b = ([p["correct"] for p in progress[x]] for x in (name, "lr1e-3"))
        assert rows[name]["minus_first_run"] == {"run": str(runs["lr1e-3"]), **stats.paired_difference(a, b)}
    md = (out / "sweep.md").read_text()
    assert "| lr " in md.replace("chunk_size", "") and "| chunk_size |" in md and "no matching baseline" in md
    assert "minus lr1e-3, points" in md and "n=3)" in md
    assert "sweep.md" in capsys.readouterr().out
    # --examples: every run on its first N only; a run with fewer is refused with its count
    assert sweep.main(["--runs", str(runs["lr1e-2"]), str(runs["lr1e-3"]), "--out", str(out / "two"),
                       "--examples", "2"]) == 0
    two = json.loads((out / "two" / "sweep.json").read_text())["rows"]
    assert [r["examples"] for r in two] == [2, 2]
    assert two[0]["trained"]["correct"] == sum(p["correct"] for p in progress["lr1e-2"][:2])
    assert two[1]["minus_first_run"]["n"] == 2
    assert sweep.main(["--runs", str(runs["lr1e-3"]), "--out", str(out / "four"), "--examples", "4"]) == 1
    assert "has 3 examples, fewer than --examples 4" in capsys.readouterr().err
    # a run on another stream has no example in common with the first
    assert sweep.versus([{**progress["lr1e-2"][0], "problem_id": "elsewhere"}], progress["lr1e-3"])["n"] == 0


class OneProcess:
    """Processes for one process, without accelerate."""

    rank, world = 0, 1

    def gather(self, items):
        return items

    def barrier(self):
        pass


def test_checkpoint_restores_every_generator_the_run_draws_from(tiny, tmp_path, monkeypatch):
    """--resume is exact only if the next draws of every generator repeat: python random, torch CPU and, on a
    GPU machine, every CUDA device's generator (rollout sampling draws from it there). CUDA is faked here."""
    import random

    from flowcore import adapters
    from flowcore.online.dpo import OnlineDPO, OnlineDPOConfig

    model, tok = tiny
    peft = adapters.attach(model, adapters.LoraConfig())
    trainer = OnlineDPO(peft, tok.pad_token_id, OnlineDPOConfig())
    cuda = {"states": [torch.tensor([1, 2], dtype=torch.uint8), torch.tensor([3], dtype=torch.uint8)], "set": None}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [s.clone() for s in cuda["states"]])
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: cuda.update(set=list(states)))
    random.seed(5)
    torch.manual_seed(5)
    checkpoint.save_checkpoint(tmp_path, trainer, peft, 4, {"answer": [], "stop": []}, 1.5, OneProcess())
    expected = (random.random(), torch.rand(3))
    random.seed(6)
    torch.manual_seed(6)
    position, pending, elapsed = checkpoint.load_checkpoint(tmp_path, trainer, OneProcess())
    assert (position, elapsed) == (4, 1.5)
    assert random.random() == expected[0] and torch.equal(torch.rand(3), expected[1])
    assert cuda["set"] is not None and [s.tolist() for s in cuda["set"]] == [[1, 2], [3]]


def test_a_run_written_by_another_process_is_refused(setup, capsys):
    """Two `train` processes never append to one run: the second is refused, naming the first; the lock goes
    with the process that held it, even when that one is killed."""
    model, problems, tmp = setup
    run = tmp / "locked"
    run.mkdir()
    (run / "config.json").write_text("{}")
    holder = subprocess.Popen([sys.executable, "-c", "import sys; from flowcore import results; "
                               "results.lock(sys.argv[1], 'train'); print('held', flush=True); sys.stdin.read()",
                               str(run)], cwd=ROOT, env=ENV, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        argv = ["--model", model, "--data-file", problems, *SETTINGS, "--out", str(run), "--resume"]
        assert train.main(argv) == 1
        err = capsys.readouterr().err
        assert f"is being written by another `train` (pid {holder.pid} on " in err and "run the command again" in err
        assert (run / "config.json").read_text() == "{}"
    finally:
        holder.kill()
        holder.wait()
    assert train.main(argv) == 1  # the lock is free now: refused for the config it cannot use instead
    err = capsys.readouterr().err
    assert "being written" not in err and "config.json is not the config of a `python -m flowcore train` run" in err
    results.lock(run, "train")  # and this process can take it
    results.release(run)


def test_resume_without_checkpoint_continues_from_the_exported_adapters(tiny, tmp_path):
    """On another machine only the committed adapters/ travel: --resume continues from them, with the
    position, pending pairs, step counts and generators of the checkpoint, bf16-rounded weights and fresh
    Adam moments, and records that it was not exact."""
    import random

    from flowcore import adapters
    from flowcore.online.dpo import OnlineDPO, OnlineDPOConfig
    from flowcore.online.rollouts import Pair

    model, tok = tiny
    peft = adapters.attach(model, adapters.LoraConfig())
    trainer = OnlineDPO(peft, tok.pad_token_id, OnlineDPOConfig())
    torch.manual_seed(0)
    with torch.no_grad():
        for role in adapters.ROLES:
            for p in trainer.params[role]:
                p.normal_()
    trainer.steps = {"answer": 3, "stop": 1}
    saved = {role: [p.detach().clone() for p in trainer.params[role]] for role in adapters.ROLES}
    pair = Pair("q1", "stop", 2, [1, 2], [3], [4], "Yes", "No", True, False, "stop here was right", "7", "8",
                "stop here")
    random.seed(5)
    torch.manual_seed(5)
    checkpoint.save_checkpoint(tmp_path, trainer, peft, 4, {"answer": [], "stop": [pair]}, 1.5, OneProcess())
    expected = (random.random(), torch.rand(3))
    (tmp_path / "checkpoint.pt").unlink()
    assert checkpoint.can_resume(tmp_path)

    fresh = OnlineDPO(peft, tok.pad_token_id, OnlineDPOConfig())
    with torch.no_grad():
        for role in adapters.ROLES:
            for p in fresh.params[role]:
                p.zero_()
    random.seed(6)
    torch.manual_seed(6)
    position, pending, elapsed = checkpoint.load_checkpoint(tmp_path, fresh, OneProcess())
    assert (position, elapsed, fresh.steps) == (4, 1.5, {"answer": 3, "stop": 1})
    assert pending == {"answer": [], "stop": [pair]}
    assert random.random() == expected[0] and torch.equal(torch.rand(3), expected[1])
    for role in adapters.ROLES:
        for p, w in zip(fresh.params[role], saved[role]):
            assert torch.equal(p, w.to(torch.bfloat16).float())  # bf16 rounding, nothing else
        assert not fresh.optimizers[role].state
    assert [(r["position"], r["exact"]) for r in read_jsonl(tmp_path / "resumes.jsonl")] == [(4, False)]


def test_device_flag_reaches_the_loader_in_train_and_baselines(setup, tmp_path, monkeypatch, capsys):
    from dataclasses import asdict

    from flowcore import models
    from flowcore.flow.engine import FlowConfig

    model, problems, _ = setup
    calls = []

    def load(model, dtype=None, device="auto"):
        calls.append(str(device))
        raise models.ModelError("loader reached")

    monkeypatch.setattr(models, "load", load)
    args = ["--model", model, "--data-file", problems, "--examples", "2", "--out", str(tmp_path / "run")]
    assert train.main(args + ["--device", "cpu"]) == 1
    assert calls == ["cpu"] and "loader reached" in capsys.readouterr().err
    ids = [q.id for q in data.read_jsonl(problems, "gsm8k", "custom")][:2]
    run = tmp_path / "old-run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"settings": {
        "model": model, "dataset": "gsm8k", "split": "train", "source": "local", "data_file": problems,
        "flow": asdict(FlowConfig())}, "example_ids": ids}))
    assert baselines.main(["--run", str(run), "--device", "cpu"]) == 1
    assert calls == ["cpu", "cpu"] and "loader reached" in capsys.readouterr().err
    # cuda asked for where torch sees none: one clear line, before any model is read
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert train.main(args + ["--device", "cuda"]) == 1
    err = capsys.readouterr().err
    assert "no CUDA device" in err and "--device cpu" in err and calls == ["cpu", "cpu"]


def test_example_order_is_one_permutation_whatever_n():
    pool = [data.Problem(f"p/{i}", "gsm8k", "q", "1", "") for i in range(7000)]  # as GSM8K train
    assert train.example_order(pool, 400, 0) == train.example_order(pool, 2000, 0)[:400]
    assert train.example_order(pool, 400, 0) != train.example_order(pool, 400, 1)
    assert len({q.id for q in train.example_order(pool, 7000, 0)}) == 7000


@pytest.mark.parametrize("config_path", sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("runs/**/config.json")))
def test_committed_runs_keep_the_order_they_were_drawn_in(config_path, tmp_path):
    """Runs from before config.json recorded an "order" were drawn with sample-v1: --resume (and anything that
    derives their examples again) keeps drawing them that way, and gets the example_ids they hold."""
    config = json.loads((ROOT / config_path).read_text())
    order = config.get("order", "sample-v1")
    s = config["settings"]
    pool = train.load_problems(s["dataset"], s["split"], s["source"], s.get("data_file"))
    assert [q.id for q in train.example_order(pool, s["examples"], s["seed"], order)] == config["example_ids"]
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(config))
    assert train.run_order(train.parse(["--examples", "1", "--out", str(run), "--resume"])) == order
    assert train.run_order(train.parse(["--examples", "1", "--out", str(run)])) == "permutation-v2"
    with pytest.raises(checkpoint.CheckpointError, match="example_ids"):
        checkpoint.check_resume(run, config, config["settings"], config["example_ids"][::-1],
                                {"dtype": "torch.float32", "device": "cpu"}, order)


@pytest.mark.parametrize("config_path", sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("runs/**/config.json")))
def test_committed_runs_resume_with_the_settings_this_code_records(config_path):
    """A field added to FlowConfig or OnlineDPOConfig after a run was committed (stop_at_eos, stop_ties) must not
    stop its --resume: the recorded command, parsed by today's code, gives the recorded settings."""
    config = json.loads((ROOT / config_path).read_text())
    args = train.parse(shlex.split(config["command"])[4:])  # after "python -m flowcore train"
    assert flow_config(args).settings() == config["settings"]["flow"]
    assert train.dpo_config(args).settings() == config["settings"]["dpo"]


def test_stop_ties_reaches_the_pairs(setup, one_thread, monkeypatch):
    model, problems, tmp = setup
    seen, real = [], train.explore
    monkeypatch.setattr(train, "explore", lambda *a: seen.append(a[-1]) or real(*a))
    run = tmp / "ties"
    assert train.main(["--model", model, "--data-file", problems, *SETTINGS[:3], "2", *SETTINGS[4:],
                       "--stop-ties", "yes", "--out", str(run)]) == 0
    assert seen == ["yes"]
    assert json.loads((run / "config.json").read_text())["settings"]["dpo"]["stop_ties"] == "yes"


def test_stop_ties_is_a_setting_recorded_only_when_set(capsys):
    """--stop-ties (ours) joins the recorded dpo settings only when it is not the default, and a wrong value is
    refused before anything loads."""
    assert "stop_ties" not in train.dpo_config(train.parse(["--examples", "1", "--out", "r"])).settings()
    assert train.dpo_config(train.parse(["--examples", "1", "--out", "r", "--stop-ties", "yes"])).settings()["stop_ties"] == "yes"
    with pytest.raises(SystemExit):
        train.parse(["--examples", "1", "--out", "r", "--stop-ties", "always"])
    assert "invalid choice" in capsys.readouterr().err
    with pytest.raises(ValueError, match="stop_ties must be one of none, yes"):
        train.OnlineDPOConfig(stop_ties="always").check()


def test_heldout_compares_the_trained_flow_with_both_baselines(setup, one_thread, capsys):
    """`heldout`: three models on a test set, per-problem files, paired tests that match the files; resumable."""
    from safetensors.torch import load_file, save_file

    model, problems, tmp = setup
    run, out = tmp / "heldout-run", tmp / "heldout"
    assert train.main(["--model", model, "--data-file", problems, *SETTINGS[:3], "2", *SETTINGS[4:],
                       "--out", str(run)]) == 0
    # make the Answer adapter strong, so the trained flow must write something else if (and only if) it is used
    weights = run / "adapters" / "answer" / "adapter_model.safetensors"
    save_file({k: v * 0 + 0.5 if "lora_B" in k else v for k, v in load_file(weights).items()}, weights)
    args = ["--run", str(run), "--out", str(out), "--sets", "gsm8k:test", "--limit", "3"]
    assert heldout.main(args) == 0
    files = {m: read_jsonl(out / m / "gsm8k-test-first3.jsonl") for m in heldout.MODELS}
    assert all(len(recs) == 3 for recs in files.values())
    assert [r["completion"] for r in files["trained_flow"]] != [r["completion"] for r in files["untrained_flow"]]
    meta = json.loads((out / "trained_flow" / "gsm8k-test-first3.meta.json").read_text())
    assert meta["settings"]["flow"]["answer_role"] == "answer" and meta["runtime"]["dtype"] == "torch.float32"
    zero = json.loads((out / "zero_shot" / "gsm8k-test-first3.meta.json").read_text())["settings"]["flow"]
    assert zero["use_stop"] is False and zero["answer_role"] is None
    tab = json.loads((out / "table.json").read_text())
    trained = [r["correct"] for r in files["trained_flow"]]
    for c, b in zip(tab["comparisons"], heldout.BASELINES):
        other = [r["correct"] for r in files[b]]
        assert c["a_only_correct"] == sum(a and not o for a, o in zip(trained, other))
        assert c["b_only_correct"] == sum(o and not a for a, o in zip(trained, other))
        assert c["difference"] == pytest.approx((c["a_only_correct"] - c["b_only_correct"]) / 3)
    assert [r["model"] for r in tab["rows"]] == list(heldout.MODELS.values())
    assert "trained flow vs untrained flow" in (out / "table.md").read_text()
    before = {m: (out / m / "gsm8k-test-first3.jsonl").read_text() for m in heldout.MODELS}
    assert heldout.main(args) == 0  # a rerun resumes: nothing to do, nothing rewritten
    assert before == {m: (out / m / "gsm8k-test-first3.jsonl").read_text() for m in heldout.MODELS}
    capsys.readouterr()
    empty = tmp / "no-adapters"
    empty.mkdir()
    (empty / "config.json").write_text((run / "config.json").read_text())
    assert heldout.main(["--run", str(empty), "--out", str(tmp / "x")]) == 1
    assert "has no answer/ and stop/ adapters yet" in capsys.readouterr().err
