"""The Gradio app on the tiny model: every endpoint driven through gradio_client, content checked."""
from __future__ import annotations

import json
import re

import pytest

from conftest import build_tiny_model
from tiny_app import COMPARE_CHUNK, serve_tiny_app

from demo import services
from demo.services import DemoConfig, DemoService
from flowcore import adapters, data
from flowcore.flow.engine import FlowConfig, FlowEngine, FlowState

ENDPOINTS = {"/compare_load_problem", "/compare", "/flow_load_problem", "/flow", "/run_pair", "/progressive",
             "/reload_files", "/pair_runs"}
REPRODUCE = "python -m flowcore reproduce --preset cpu"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(client, service, root) of the app on the tiny model, launched in this process."""
    from gradio_client import Client

    root = tmp_path_factory.mktemp("app")
    app, url, service = serve_tiny_app(root)
    client = Client(url, verbose=False)
    yield client, service, root
    client.close()
    app.close()


def _alone_text(service, question, max_tokens, role=None):
    """What one model (``role``: an adapter name; None: the base) writes greedily, alone in its own call: its
    Compare column (where the four models share each step) must show exactly this."""
    cfg = FlowConfig(chunk_size=max_tokens, max_steps=1, use_stop=False, answer_role=role, stop_role=None)
    engine = service.engine.configured(cfg)
    state = FlowState(data.custom_problem(question, "", "gsm8k"))
    with service.lock:
        engine.step([state])
    return engine.completion(state)


def _tokens(column: str) -> int:
    return int(re.search(r"· (\d+) tokens, ", column).group(1))


def test_every_endpoint_is_tested(served):
    client, _, _ = served
    assert set(client.view_api(return_format="dict")["named_endpoints"]) == ENDPOINTS


def test_load_problem_returns_the_dataset_problem(served):
    client, _, _ = served
    math3 = data.load("math", "test500")[3]
    assert client.predict("MATH test500", 3, api_name="/compare_load_problem") == (math3.question, math3.gold)
    gsm = data.load("gsm8k", "test")[7]
    assert client.predict("GSM8K test", 7, api_name="/flow_load_problem") == (gsm.question, gsm.gold)
    with pytest.raises(Exception, match="there is no number 500"):
        client.predict("MATH test500", 500, api_name="/flow_load_problem")


def test_compare_streams_four_columns(served):
    client, service, _ = served
    question = "Janet has 16 eggs and eats 3. How many are left?"
    job = client.submit("GSM8K test", 0, question, "13", 24, api_name="/compare")
    note, zero, gt, self_gen, flow_gen = job.result(timeout=120)
    outputs = job.outputs()
    # streamed: the first update shows columns waiting, later ones generating, the last one graded
    assert len(outputs) >= 1 + 2 * (24 // COMPARE_CHUNK)
    assert "waiting" in outputs[0][1] or "generating" in outputs[0][1]
    assert any("generating" in o[1] for o in outputs)
    assert note == ""
    assert zero.startswith("### 0-shot (base model)")
    assert "gold `13`" in zero and ("✗ **incorrect**" in zero or "✓ **correct**" in zero)
    assert "24 tokens, stopped at the token limit" in zero or _tokens(zero) < 24
    expected = _alone_text(service, question, 24)
    assert expected.strip() and expected in zero
    # the SFT ground-truth adapter exists: it answers (differently from the base: its LoRA is not zero), as it
    # does alone (each flow's own Answer adapter, FlowState.answer_role, in a step shared with the base model)
    assert gt.startswith("### SFT ground truth") and "gold `13`" in gt
    assert gt.split("---", 1)[1] != zero.split("---", 1)[1]
    assert _alone_text(service, question, 24, "sft_ground_truth") in gt
    # the other two are missing: the message names the command that makes them
    for col, label in ((self_gen, "SFT self-generated"), (flow_gen, "SFT Flow-generated")):
        assert f"No {label} adapter" in col and REPRODUCE in col


def test_compare_without_gold_is_not_graded(served):
    client, _, _ = served
    _, zero, *_ = client.predict("GSM8K test", 0, "What is 2 + 2?", "", 8, api_name="/compare")
    assert "**not graded** (no gold answer)" in zero


def test_empty_problem_gives_the_error_message(served):
    client, _, _ = served
    for endpoint, extra in (("/compare", [32]), ("/flow", [8, 2, 0, 1.0])):
        with pytest.raises(Exception, match="The problem is empty"):
            client.predict("GSM8K test", 0, "   ", "13", *extra, api_name=endpoint)


def test_over_long_problem_keeps_its_start_and_end_with_a_notice(served):
    """The question usually comes last: an over-long problem loses its middle, not its end (issue 22, item 16)."""
    client, service, _ = served
    question = "Janet has 16 eggs and eats 3 of them every morning. " * 40 + "How many eggs are left after a week?"
    n = len(service.tok(question.strip(), add_special_tokens=False).input_ids)
    problem, notice = service.problem("GSM8K test", 0, question, "")
    assert problem.question.startswith("Janet has 16 eggs")
    assert problem.question.endswith("How many eggs are left after a week?") and "[…]" in problem.question
    assert len(service.tok(problem.question, add_special_tokens=False).input_ids) <= 64
    assert f"The problem is {n} tokens long" in notice and "the middle was cut" in notice
    note, *_ = client.predict("GSM8K test", 0, question, "", 8, api_name="/compare")
    assert note == "⚠️ " + notice
    status, chunks, _ = client.predict("GSM8K test", 0, question, "", 8, 1, 0, 1.0, api_name="/flow")
    assert notice in status and "chunk 1" in chunks


def test_compare_answers_are_as_long_as_asked(served):
    """A length that is not a multiple of the chunk size is the length used (issue 22, item 13)."""
    client, service, _ = served
    for length in (5, 12):  # below one chunk (8) and between chunks
        problem = data.custom_problem("Janet has 16 eggs and eats 3. How many are left?", "13", "gsm8k")
        *_, answers = service.compare(problem, length)
        for a in answers:
            if a.status == "done":
                assert a.n_tokens == length if a.end_reason == "max_steps" else a.n_tokens < length, (length, a)
        assert answers[0].end_reason == "max_steps"  # the tiny model does not end its answer this early
    _, zero, *_ = client.predict("GSM8K test", 0, "What is 2 + 2?", "", 12, api_name="/compare")
    assert "12 tokens, stopped at the token limit" in zero


def test_empty_problem_is_one_log_line_without_traceback(served, capfd, monkeypatch):
    """A user's mistake is not a server error: one log line, no traceback (issue 22, item 17)."""
    client, service, _ = served
    logged = []
    monkeypatch.setattr(service, "log", logged.append)
    for endpoint, extra in (("/compare", [32]), ("/flow", [8, 2, 0, 1.0])):
        with pytest.raises(Exception, match="The problem is empty"):
            client.predict("GSM8K test", 0, "   ", "13", *extra, api_name=endpoint)
    with pytest.raises(Exception, match="there is no number 500"):
        client.predict("MATH test500", 500, api_name="/flow_load_problem")
    err = capfd.readouterr().err
    assert "Traceback" not in err
    assert len(logged) == 3 and all("\n" not in m and "user error" in m for m in logged), logged


def test_flow_streams_chunks_with_p_yes(served):
    client, service, _ = served
    job = client.submit("GSM8K test", 0, "Janet has 16 eggs and eats 3. How many are left?", "13",
                        8, 3, 0, 1.0, api_name="/flow")
    status, chunks, rollouts = job.result(timeout=120)
    outputs = job.outputs()
    n = chunks.count('class="fc-chunk"')
    assert 1 <= n <= 3
    assert [f"chunk {k}" in chunks for k in range(1, n + 1)] == [True] * n
    assert chunks.count("P(Yes) = <b>") + chunks.count("not asked") == n
    assert "Flow ended:" in chunks and f"after {n} chunk(s)" in status
    assert "gold `13`" in status
    assert "Rollouts per node is 0" in rollouts
    # streamed: one update before any chunk, then one per chunk, then the graded one
    assert len(outputs) >= n + 1 and "Running the flow" in outputs[0][0]


def test_flow_rollouts_and_pairs(served):
    client, _, _ = served
    status, chunks, rollouts = client.predict("GSM8K test", 0, "Janet has 16 eggs and eats 3. How many are left?",
                                              "13", 8, 2, 1, 1.0, api_name="/flow")
    n = chunks.count('class="fc-chunk"')
    assert "rollout(s) over" in rollouts and "DPO pair(s)" in rollouts
    assert all(f"Node {k}" in rollouts for k in range(1, n + 1))
    assert rollouts.count("rollout 1:") == n  # one rollout at every node
    assert "DPO pair for the" in rollouts or "No DPO pairs" in rollouts


def test_flow_rollouts_explore_the_flow_on_screen(served, monkeypatch):
    """The pairs come from the flow the user watched: the flow runs once, not again inside explore (item 14)."""
    _, service, _ = served
    starts = []  # Answer calls that begin a flow from the bare prompt (not a rollout: those pass `avoid`)
    generate_chunks = FlowEngine.generate_chunks

    def spy(self, states, avoid=None, temperature=None):
        starts.extend(1 for s in states if not s.chunks and avoid is None)
        return generate_chunks(self, states, avoid=avoid, temperature=temperature)

    monkeypatch.setattr(FlowEngine, "generate_chunks", spy)
    problem = data.custom_problem("Janet has 16 eggs and eats 3. How many are left?", "13", "gsm8k")
    *_, view = service.run_flow(problem, 8, 2, 1, 1.0)
    assert len(starts) == 1
    assert view.exploration.trace == view.trace
    assert [c["text"] for c in view.exploration.trace.chunks] == [c.text for c in view.chunks]
    assert len(view.exploration.rollouts) == len(view.chunks)


def test_flow_without_gold_is_not_graded(served):
    client, _, _ = served
    status, _, rollouts = client.predict("GSM8K test", 0, "What is 2 + 2?", "", 8, 2, 1, 1.0, api_name="/flow")
    assert "**not graded** (no gold answer)" in status
    assert "not graded" in rollouts and "incorrect" not in rollouts and ">correct<" not in rollouts


def test_reload_files_keeps_the_selected_run(served):
    """Reloading lists new runs but keeps the user's choice (issue 22, item 15); so does the Flow tab's run list
    of real pairs, refreshed when the user opens it."""
    client, service, root = served
    (root / "runs" / "zz-new-run").mkdir()  # sorts first among runs without a start date
    try:
        run, _ = client.predict("empty-run", api_name="/reload_files")
        assert "zz-new-run" in {c[0] for c in run["choices"]} and run["value"] == "empty-run"
        run = client.predict("empty-run", api_name="/pair_runs")
        assert "zz-new-run" in {c[0] for c in run["choices"]} and run["value"] == "empty-run"
        names, value = service.run_choice("deleted-run")  # a run gone from disk: the first one is shown
        assert value == names[0] and "deleted-run" not in names
    finally:
        (root / "runs" / "zz-new-run").rmdir()


def test_flow_tab_shows_real_pairs_of_a_run(served):
    """The Flow tab reads a run's pairs.jsonl: problem, the flow the pair came from, chosen and rejected; a
    malformed line is left out and said; a number out of range is a clear error."""
    client, _, root = served
    run = root / "runs" / "tiny-run"
    answer = {"index": 1, "example_id": "gsm8k/train/1", "role": "answer", "node": 0, "chosen_text": "right chunk",
              "rejected_text": "wrong chunk", "chosen_correct": True, "rejected_correct": False,
              "reason": "rollout at node 0 reached 5 (correct), original reached 4 (wrong)"}
    stop = {**answer, "index": 2, "example_id": "gsm8k/train/2", "role": "stop", "node": 1, "chosen_text": "Yes",
            "rejected_text": "No", "reason": "stopping at node 1 gave 7 (correct), continuing would give 8 (wrong)"}
    (run / "pairs.jsonl").write_text(json.dumps(answer) + "\n{not json\n" + json.dumps(stop) + "\n")
    progress = run / "progress.jsonl"
    kept = progress.read_text()
    lines = [json.loads(x) for x in kept.splitlines()]
    lines[2].update(index=2, completion="So the answer is 7.", extracted="7", gold="7", n_chunks=2, end_reason="stop")
    progress.write_text("".join(json.dumps(x) + "\n" for x in lines))
    try:
        out = client.predict("tiny-run", "Stop LLM", 1, api_name="/run_pair")
        assert "Stop LLM pair 1 of 1" in out and "training example 3" in out and "node 2" in out
        assert data.load("gsm8k", "train")[2].question[:40] in out  # the problem, looked up by its id
        assert "So the answer is 7." in out and "ended by stop" in out
        chosen, rejected = out.split("<b>chosen</b>")[1].split("<b>rejected</b>")
        assert "Yes" in chosen and "No" in rejected and "continuing would give 8" in out
        assert "1 unreadable line(s)" in out
        out = client.predict("tiny-run", "both", 1, api_name="/run_pair")
        assert "Answer LLM pair 1 of 2" in out and "right chunk" in out.split("<b>rejected</b>")[0]
        with pytest.raises(Exception, match="there is no pair number 3: this run has 2"):
            client.predict("tiny-run", "both", 3, api_name="/run_pair")
        assert "has not written pairs yet" in client.predict("empty-run", "both", 1, api_name="/run_pair")
    finally:
        (run / "pairs.jsonl").unlink()
        progress.write_text(kept)


def test_concurrent_users_are_queued(served):
    client, _, _ = served
    jobs = [client.submit("GSM8K test", 0, f"What is {i} + {i}?", str(2 * i), 16, api_name="/compare")
            for i in range(3)]
    results = [j.result(timeout=180) for j in jobs]
    for i, (_, zero, *_rest) in enumerate(results):
        assert f"gold `{2 * i}`" in zero and 0 < _tokens(zero) <= 16


def test_training_tab_messages_and_tables(served):
    client, service, root = served
    fig, message, heldout = client.predict("empty-run", api_name="/progressive")
    assert fig is None
    assert "config.json not found" in message and "python -m flowcore train" in message
    assert "No held-out evaluation of this run yet" in heldout
    assert f"python -m flowcore heldout --run {root / 'runs' / 'empty-run'} --out {root / 'results'}/empty-run" in heldout
    fig, message, heldout = client.predict("tiny-run", api_name="/progressive")
    assert message == ""
    # the run's own held-out table: accuracy rows, paired tests against both baselines, cost per problem
    assert "| trained flow | 75.0 [" in heldout and "| untrained flow | 25.0 [" in heldout
    assert "| gsm8k-test | trained flow vs untrained flow | +50.0 [" in heldout
    assert "| gsm8k-test | zero-shot | 31.5 | 2 |" in heldout
    plot = json.loads(fig["plot"])
    names = [t["name"] for t in plot["data"]]
    assert [n.split(":")[0] for n in names] == ["Flow-DPO (online)", "untrained flow", "zero-shot"] * 2
    assert all(n.endswith("95% interval") for n in names[3:])
    assert plot["data"][0]["y"] == [0.0, 50.0, pytest.approx(200 / 3), 75.0]
    fig, message, heldout = client.predict(None, api_name="/progressive")
    assert fig is None and "No online-DPO runs" in message and "python -m flowcore train" in message
    run, table = client.predict(None, api_name="/reload_files")
    assert {c[0] for c in run["choices"]} == {"empty-run", "tiny-run"} and run["value"] == run["choices"][0][0]
    assert "tiny-test-row" in table and "12.5" in table and "table.json" in table
    assert "trained flow" not in table  # a run's held-out table is shown with its run, not beside the paper's


def test_results_table_missing_names_the_command(tmp_path, tiny):
    model, tok = tiny
    service = DemoService(model, tok, DemoConfig(results_dir=str(tmp_path), results_root=str(tmp_path),
                                                 runs_dir=str(tmp_path)), log=lambda m: None)
    from demo import render

    text = render.results_tables(service.results_tables(), service.cfg.results_root)
    assert "no results yet" in text and REPRODUCE in text
    assert "71.3" in render.paper_table()  # the paper's Table 1 shown beside ours


def test_flow_adapters_load_from_the_newest_run(tmp_path, tiny):
    model, tok = tiny
    saved = adapters.attach(build_tiny_model(tok, seed=2))
    adapters.save(saved, tmp_path / "runs" / "r1" / "adapters")
    logs = []
    service = DemoService(model, tok, DemoConfig(results_dir=str(tmp_path), runs_dir=str(tmp_path / "runs")),
                          log=logs.append)
    assert service.flow_adapters == tmp_path / "runs" / "r1" / "adapters"
    assert {"answer", "stop"} <= set(service.engine.model.peft_config)
    assert any("SFT ground_truth: missing" in m and REPRODUCE in m for m in logs)


def test_runs_are_ordered_by_recorded_start_not_file_times(tmp_path, tiny):
    """A fresh clone gives every file the checkout's time: the app must use config.json's start date."""
    import os

    model, tok = tiny
    runs = tmp_path / "runs"
    for name, started, mtime in (("old", "2026-11-20T10:00:00+0000", 2_000_000_000),
                                 ("new", "2026-11-25T10:00:00+0000", 1_000_000_000)):
        saved = adapters.attach(build_tiny_model(tok, seed=2))
        adapters.save(saved, runs / name / "adapters")
        (runs / name / "config.json").write_text(json.dumps({"started": started}))
        for path in (runs / name, runs / name / "adapters"):
            os.utime(path, (mtime, mtime))  # the older run has the newer file times
    service = DemoService(model, tok, DemoConfig(results_dir=str(tmp_path), runs_dir=str(runs)), log=lambda m: None)
    assert service.runs() == ["new", "old"]
    assert service.flow_adapters == runs / "new" / "adapters"

    # a later run that has not exported adapters (unfinished, its checkpoint lost) is listed after the run in use
    (runs / "unfinished").mkdir()
    (runs / "unfinished" / "config.json").write_text(json.dumps({"started": "2026-11-26T10:00:00+0000"}))
    service = DemoService(model, tok, DemoConfig(results_dir=str(tmp_path), runs_dir=str(runs)), log=lambda m: None)
    assert service.flow_adapters == runs / "new" / "adapters"
    assert service.runs() == ["new", "unfinished", "old"]

    # a later run with adapters committed mid-run (2 of its 4 examples written) does not replace a finished one
    adapters.save(adapters.attach(build_tiny_model(tok, seed=3)), runs / "unfinished" / "adapters")
    (runs / "unfinished" / "config.json").write_text(json.dumps({"started": "2026-11-26T10:00:00+0000",
                                                                 "example_ids": ["a", "b", "c", "d"]}))
    (runs / "unfinished" / "progress.jsonl").write_text('{"index": 0}\n{"index": 1}\n')
    service = DemoService(model, tok, DemoConfig(results_dir=str(tmp_path), runs_dir=str(runs)), log=lambda m: None)
    assert service.flow_adapters == runs / "new" / "adapters"
    (runs / "unfinished" / "progress.jsonl").write_text('{"index": 0}\n{"index": 1}\n{"index": 2}\n{"index": 3}\n')
    service = DemoService(model, tok, DemoConfig(results_dir=str(tmp_path), runs_dir=str(runs)), log=lambda m: None)
    assert service.flow_adapters == runs / "unfinished" / "adapters"  # finished now: the latest


def test_training_tab_lists_train_runs_only(tmp_path, tiny):
    model, tok = tiny
    for name in ("r1", "sweep/lr5e-4"):  # runs/sweep holds a sweep's runs and its table: not a run itself
        (tmp_path / "runs" / name).mkdir(parents=True)
        (tmp_path / "runs" / name / "config.json").write_text("{}")
    (tmp_path / "runs" / "just-started").mkdir()  # listed: the tab says what is missing
    service = DemoService(model, tok, DemoConfig(results_dir=str(tmp_path), runs_dir=str(tmp_path / "runs")),
                          log=lambda m: None)
    assert sorted(service.runs()) == ["just-started", "r1"]


def test_untrained_flow_says_how_to_train(tmp_path, tiny):
    model, tok = tiny
    logs = []
    service = DemoService(model, tok, DemoConfig(results_dir=str(tmp_path), runs_dir=str(tmp_path)), log=logs.append)
    assert service.flow_adapters is None
    assert any("UNTRAINED" in m and "python -m flowcore train" in m for m in logs)
    assert services.find_adapter_dir(tmp_path) is None


def test_rollouts_render_pairs_chosen_and_rejected():
    """The pair display on a hand-made exploration (the tiny model's rollouts all tie: no pairs)."""
    from demo import render
    from demo.services import FlowView
    from flowcore.flow.engine import Chunk, Trace
    from flowcore.online.rollouts import Exploration, Pair, Rollout

    problem = data.custom_problem("What is 6 * 7?", "42", "gsm8k")
    trace = Trace("custom", "gsm8k", "42", [{"text": "6 * 7 = 41.", "n_tokens": 5, "p_yes": 0.9}], "stop",
                  "6 * 7 = 41.", None, False, 5)
    pair = Pair("custom", "answer", 0, [1], [2], [3], "6 * 7 = 42. The answer is 42.", "6 * 7 = 41.", True, False,
                "rollout at node 0 reached 42 (correct), original reached no answer (wrong)")
    ex = Exploration(trace, [Rollout(0, "6 * 7 = 42. The answer is 42.", "6 * 7 = 42. The answer is 42.", "42",
                                     True, "eos")], [pair])
    view = FlowView(problem, 0.5, chunks=[Chunk([1], "6 * 7 = 41.", 0.9)], phase="done", trace=trace,
                    exploration=ex, rollouts=1)
    out = render.rollouts_html(view)
    assert "1 rollout(s) over 1 node(s); 1 DPO pair(s): 1 for the Answer LLM, 0 for the Stop LLM" in out
    assert "Node 1" in out and "rollout 1: ended by eos, answer 42" in out
    chosen, rejected = out.split("<b>chosen</b>")[1].split("<b>rejected</b>")
    assert "The answer is 42." in chosen and "correct" in chosen
    assert "6 * 7 = 41." in rejected and "incorrect" in rejected
    assert "DPO pair for the Answer LLM: rollout at node 0 reached 42 (correct)" in out


def test_app_flags(monkeypatch):
    import app
    from flowcore import models

    monkeypatch.delenv("FLOWCORE_MODEL", raising=False)
    assert app.parse_args([]).model == models.DEFAULT_MODEL
    monkeypatch.setenv("FLOWCORE_MODEL", "smollm2-135m-instruct")
    args = app.parse_args(["--port", "7999", "--host", "0.0.0.0"])
    assert (args.model, args.port, args.host) == ("smollm2-135m-instruct", 7999, "0.0.0.0")
    assert app.parse_args(["--model", "tiny-dir"]).model == "tiny-dir"
    assert app.parse_args([]).device == "auto" and app.parse_args(["--device", "cpu"]).device == "cpu"
    assert app.parse_args([]).engine == "auto" and app.parse_args(["--engine", "vllm"]).engine == "vllm"
    with pytest.raises(SystemExit):
        app.parse_args(["--device", "tpu"])
    with pytest.raises(SystemExit):
        app.parse_args(["--engine", "tpu"])


def test_app_device_reaches_the_model_load(monkeypatch, capsys):
    """`python app.py --device cpu` loads the model on the CPU (models.load gets the flag's value)."""
    import app
    from flowcore import models

    calls = []

    def load(model, dtype=None, device="auto"):
        calls.append((model, device))
        raise models.ModelError("no model in this test")  # app.main stops here, before building the UI

    monkeypatch.setattr(models, "load", load)
    assert app.main(["--model", "tiny-dir", "--device", "cpu"]) == 1
    assert calls == [("tiny-dir", "cpu")] and "no model in this test" in capsys.readouterr().err
    assert app.main(["--model", "tiny-dir"]) == 1
    assert calls[-1] == ("tiny-dir", "auto")


def test_results_table_shows_the_paired_tests_and_what_made_it(tmp_path):
    from demo import render

    tab = {"command": "python -m flowcore reproduce --preset cpu", "started": "2026-11-25T08:18:29+0000",
           "settings": {"model": "m-0.5b"}, "git_commit": "abcdef1234567",
           "rows": [{"model": "0-shot", "set-a": "29.0 [21.0-38.5]"}],
           "comparisons": [{"data": "set-a", "a": "SFT Flow-generated", "b": "0-shot", "a_only_correct": 4,
                            "b_only_correct": 12, "p_value": 0.0768}]}
    text = render.results_tables([(tmp_path / "cpu" / "table.json", tab)], str(tmp_path))
    assert "| 0-shot | 29.0 [21.0-38.5] |" in text
    assert "| set-a | SFT Flow-generated vs 0-shot | 4 | 12 | 0.0768 |" in text
    assert "Made by `python -m flowcore reproduce --preset cpu` on 2026-11-25T08:18:29+0000, model `m-0.5b`" in text
