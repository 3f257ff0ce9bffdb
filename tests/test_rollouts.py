"""Rollouts and preference pairs: hand-made traces (labels, ties) and a real explore on a tiny model."""
from __future__ import annotations

import pytest
import torch

import tinyflow
from flowcore import data
from flowcore.online import diagnostics
from flowcore.flow.engine import Chunk, FlowConfig, FlowEngine, FlowState
from flowcore.online.rollouts import answer_pair, explore, explore_flows, stop_pairs


pytestmark = pytest.mark.usefixtures("one_thread")


PROBLEM = data.Problem("t/0", "gsm8k", "Janet has 3 eggs and eats 1. How many are left?", "2", "")


def make_state(engine, texts, p_yes, end_reason):
    """A finished flow with the given chunk texts and Stop LLM P(Yes) per chunk."""
    chunks = []
    for text, p in zip(texts, p_yes):
        ids = engine.tok(text, add_special_tokens=False).input_ids
        eos = p is None
        chunks.append(Chunk(ids + ([engine.tok.eos_token_id] if eos else []), text, p_yes=p, eos=eos))
    return FlowState(PROBLEM, chunks, end_reason)


@pytest.fixture
def engine(tiny):
    model, tok = tiny
    return FlowEngine(model, tok, FlowConfig(chunk_size=8, max_steps=4))


# ---------------------------------------------------------------- Answer pairs


def test_answer_pair_chosen_is_the_correct_side(engine):
    original = make_state(engine, ["Step 1: 3 - 1.", " The answer is \\boxed{3}."], [0.1, None], "eos")
    trace = engine.trace(original)
    assert not trace.correct
    branch = make_state(engine, ["Step 1: 3 - 1.", " So \\boxed{2}."], [0.1, None], "eos")
    rollout, pair = answer_pair(engine, original, trace, 1, branch)
    assert rollout.correct and rollout.extracted == "2" and rollout.node == 1
    assert pair.role == "answer" and pair.node == 1
    assert pair.chosen_text == " So \\boxed{2}." and pair.rejected_text == " The answer is \\boxed{3}."
    assert pair.chosen_ids == branch.chunks[1].token_ids and pair.rejected_ids == original.chunks[1].token_ids
    # prompt = Answer prompt + the chunks before node k, as token ids
    assert pair.prompt_ids == engine.prompt_ids(PROBLEM) + original.chunks[0].token_ids
    assert "reached 2 (correct)" in pair.reason and "original reached 3 (wrong)" in pair.reason
    assert (pair.chosen_extracted, pair.rejected_extracted, pair.counterfactual) == ("2", "3", "rollout")

    # the mirror case: original right, rollout wrong -> chosen is the original chunk
    _, pair2 = answer_pair(engine, branch, engine.trace(branch), 1, original)
    assert pair2.chosen_text == " So \\boxed{2}." and pair2.rejected_text == " The answer is \\boxed{3}."


def test_ties_give_no_answer_pair(engine):
    wrong1 = make_state(engine, ["So \\boxed{3}."], [None], "eos")
    wrong2 = make_state(engine, ["So \\boxed{5}."], [None], "eos")
    right1 = make_state(engine, ["So \\boxed{2}."], [None], "eos")
    right2 = make_state(engine, ["It is \\boxed{2}."], [None], "eos")
    assert answer_pair(engine, wrong1, engine.trace(wrong1), 0, wrong2)[1] is None
    assert answer_pair(engine, right1, engine.trace(right1), 0, right2)[1] is None
    # both sides graded the same although the texts differ: the Rollout is still recorded
    rollout, _ = answer_pair(engine, right1, engine.trace(right1), 0, right2)
    assert rollout.correct and rollout.chunk_text == "It is \\boxed{2}."


# ---------------------------------------------------------------- Stop pairs


def test_stop_pairs_when_the_flow_continued(engine):
    yes, no = engine.yes_id, engine.no_id
    # node 0: no answer yet (stop would be wrong), the flow went on and ended right -> chosen "No"
    # node 1: the partial already says 2 (stop right), the flow went on and ended wrong -> chosen "Yes"
    # node 2: partial wrong (3), final wrong (4) -> tie, no pair; node 3: eos, no Stop decision
    state = make_state(engine, ["Step 1: 3 - 1.", " So \\boxed{2}.", " Wait, \\boxed{3}.", " \\boxed{4}."],
                       [0.2, 0.3, 0.4, None], "eos")
    trace = engine.trace(state)
    assert not trace.correct
    pairs = stop_pairs(engine, state, trace)
    assert [p.node for p in pairs] == [1]
    (p,) = pairs
    assert (p.role, p.chosen_text, p.rejected_text, p.chosen_ids, p.rejected_ids) == ("stop", "Yes", "No", [yes], [no])

    right = make_state(engine, ["Step 1: 3 - 1.", " So \\boxed{2}."], [0.2, None], "eos")
    (q,) = stop_pairs(engine, right, engine.trace(right))
    assert (q.node, q.chosen_text, q.chosen_ids) == (0, "No", [no])
    # the Stop LLM's prompt about the partial answer chunks[:k+1]
    assert q.prompt_ids == engine.stop_prompt_ids(PROBLEM, right.chunks[0].token_ids)
    assert "stopping at node 0 would give no answer (wrong)" in q.reason


def test_stop_pairs_when_the_flow_stopped(engine):
    # stopped at node 0 with a wrong partial answer; continuing would have reached 2 -> chosen "No"
    stopped = make_state(engine, ["Step 1: 3 - 1 = \\boxed{5}."], [0.9], "stop")
    trace = engine.trace(stopped)
    went_on = make_state(engine, ["Step 1: 3 - 1 = \\boxed{5}.", " No: \\boxed{2}."], [0.9, None], "eos")
    (p,) = stop_pairs(engine, stopped, trace, went_on)
    assert (p.node, p.chosen_text, p.rejected_text) == (0, "No", "Yes")
    # continuing would also be wrong: a tie, no pair
    also_wrong = make_state(engine, ["Step 1: 3 - 1 = \\boxed{5}.", " \\boxed{7}."], [0.9, None], "eos")
    assert stop_pairs(engine, stopped, trace, also_wrong) == []
    # stopped right, continuing goes wrong -> chosen "Yes"
    stopped_right = make_state(engine, ["So \\boxed{2}."], [0.9], "stop")
    (r,) = stop_pairs(engine, stopped_right, engine.trace(stopped_right), also_wrong)
    assert (r.chosen_text, r.rejected_text) == ("Yes", "No")
    # ended by max_steps: stopping or not gives the same answer, no pair at the last node
    capped = make_state(engine, ["a", "b", "c", "So \\boxed{2}."], [0.1, 0.1, 0.1, 0.1], "max_steps")
    assert [p.node for p in stop_pairs(engine, capped, engine.trace(capped))] == [0, 1, 2]


@pytest.mark.parametrize("stop_ties", ["none", "yes"])
def test_stop_ties_decides_where_stopping_and_continuing_both_end_right(engine, stop_ties):
    # the flow went on: node 0 no answer yet (No), node 1 already right and the flow ended right (a tie),
    # node 2 right and right again (a tie); node 3 eos, no decision
    went_on = make_state(engine, ["Step 1: 3 - 1.", " So \\boxed{2}.", " Check: \\boxed{2}.", " Done."],
                         [0.2, 0.3, 0.4, None], "eos")
    pairs = stop_pairs(engine, went_on, engine.trace(went_on), stop_ties=stop_ties)
    ties = [p for p in pairs if p.node > 0]
    assert [(p.node, p.chosen_text) for p in pairs if p.node == 0] == [(0, "No")]
    if stop_ties == "none":
        assert ties == []
    else:
        assert [(p.node, p.chosen_text, p.rejected_text) for p in ties] == [(1, "Yes", "No"), (2, "Yes", "No")]
        assert all(p.chosen_correct and p.rejected_correct and "both right" in p.reason for p in ties)
        assert (ties[0].chosen_extracted, ties[0].rejected_extracted) == ("2", "2")
    # stopped right, continuing right too: a tie the same way; both wrong: never a pair
    stopped_right = make_state(engine, ["So \\boxed{2}."], [0.9], "stop")
    also_right = make_state(engine, ["So \\boxed{2}.", " Yes, \\boxed{2}."], [0.9, None], "eos")
    tie = stop_pairs(engine, stopped_right, engine.trace(stopped_right), also_right, stop_ties)
    assert [(p.chosen_text, p.counterfactual) for p in tie] == ([] if stop_ties == "none" else [("Yes", "continue")])
    stopped_wrong = make_state(engine, ["So \\boxed{5}."], [0.9], "stop")
    also_wrong = make_state(engine, ["So \\boxed{5}.", " \\boxed{7}."], [0.9, None], "eos")
    assert stop_pairs(engine, stopped_wrong, engine.trace(stopped_wrong), also_wrong, stop_ties) == []
    counts = diagnostics.stop_pairs([p.to_dict() for p in pairs + tie])
    assert counts["chosen_yes_as_both_right"] == (0 if stop_ties == "none" else 3)


def test_stop_ties_refuses_an_unknown_value(engine):
    state = make_state(engine, ["So \\boxed{2}."], [0.9], "stop")
    with pytest.raises(ValueError, match="stop_ties must be one of none, yes"):
        stop_pairs(engine, state, engine.trace(state), stop_ties="always")
    with pytest.raises(ValueError, match="stop_ties"):
        explore_flows(engine, [state], stop_ties="always")


# ---------------------------------------------------------------- explore on a model


def test_explore_pairs_match_rollout_outcomes_and_batch_all_rollouts(tmp_path):
    engine, problems = tinyflow.taught_engine(tmp_path, 6, stop_threshold=1.0)
    cfg = engine.cfg
    torch.manual_seed(0)
    found = explore(engine, problems, rollouts=2, temperature=1.0)
    assert len(found) == len(problems)
    n_rollouts = n_answer = n_stop = 0
    for x, q in zip(found, problems):
        t = x.trace
        assert t.problem_id == q.id
        assert [r.node for r in x.rollouts] == [k for k in range(len(t.chunks)) for _ in range(2)]
        for p in x.pairs:
            assert p.example_id == q.id and p.chosen_correct and not p.rejected_correct
            if p.role == "answer":
                n_answer += 1
                assert p.chosen_ids != p.rejected_ids
                original_text = t.chunks[p.node]["text"]
                assert original_text in (p.chosen_text, p.rejected_text)
                # chosen is the original's chunk exactly when the original was right
                assert (p.chosen_text == original_text) == t.correct
                # a pair exists only against a rollout of this node with the other outcome
                assert any(r.node == p.node and r.correct != t.correct for r in x.rollouts)
            else:
                n_stop += 1
                assert p.chosen_text in ("Yes", "No")
        ties = [r for r in x.rollouts if r.correct == t.correct]
        assert sum(p.role == "answer" for p in x.pairs) <= len(x.rollouts) - len(ties)
        n_rollouts += len(x.rollouts)
    # the taught model gives both outcomes, so this case is exercised, not vacuous
    assert n_answer > 0 and n_stop > 0
    assert any(x.trace.correct for x in found) and not all(x.trace.correct for x in found)
    # one batch: the flows take <= max_steps generate calls, the rollouts' first chunks a few
    # (resampling rows that repeat the original), their continuations <= max_steps more
    assert n_rollouts >= 24
    assert engine.stats["answer_calls"] <= 3 * cfg.max_steps + 4


def test_explore_plays_out_continue_counterfactuals(tmp_path):
    engine, problems = tinyflow.taught_engine(tmp_path, 4)
    # a scripted Stop LLM: says Yes after the 3rd chunk ("... The final answer is \\"), before the boxed answer
    engine.stop_probs = lambda states: [0.9 if len(s.chunks) == 3 else 0.1 for s in states]
    torch.manual_seed(0)
    found = explore(engine, problems)
    assert all(x.trace.end_reason == "stop" and len(x.trace.chunks) == 3 and not x.trace.correct for x in found)
    stop = [p for x in found for p in x.pairs if p.role == "stop"]
    # stopping gave a wrong partial; continuing reached the gold on some problems -> chosen "No" there
    assert stop and all(p.node == 2 and p.chosen_text == "No" and "continuing would give" in p.reason for p in stop)


def test_explore_flows_on_finished_flows_is_explore_after_the_flow(tmp_path):
    """One copy of steps 2-4: flows run first (as the app shows them), then explored, give explore's result."""
    engine, problems = tinyflow.taught_engine(tmp_path, 3, stop_threshold=1.0)
    torch.manual_seed(0)
    expected = explore(engine, problems, rollouts=2)
    torch.manual_seed(0)
    states = [FlowState(p) for p in problems]
    for _ in engine.run(states):
        pass
    found = explore_flows(engine, states, rollouts=2)
    assert [x.trace for x in found] == [x.trace for x in expected]
    assert [x.rollouts for x in found] == [x.rollouts for x in expected]
    assert [[p.to_dict() for p in x.pairs] for x in found] == [[p.to_dict() for p in x.pairs] for x in expected]
    traces = [engine.trace(s) for s in states]  # given traces are used as they are
    again = explore_flows(engine, states, rollouts=0, traces=traces)
    assert all(x.trace is t and not x.rollouts for x, t in zip(again, traces))
    with pytest.raises(ValueError, match="rollouts must be >= 0"):
        explore_flows(engine, states, rollouts=-1)


def test_diagnostics_reads_the_stop_pairs_written_here(engine):
    """diagnostics.stop_pairs reads the structured fields stop_pairs writes, and old records (reason text only,
    as in the committed runs' pairs.jsonl) give the same counts."""
    no_answer_yet = make_state(engine, ["Step 1: 3 - 1.", " So \\boxed{2}."], [0.2, None], "eos")
    stopped_wrong = make_state(engine, ["Step 1: 3 - 1 = \\boxed{5}."], [0.9], "stop")
    went_on = make_state(engine, ["Step 1: 3 - 1 = \\boxed{5}.", " No: \\boxed{2}."], [0.9, None], "eos")
    stopped_empty = make_state(engine, ["Step 1: 3 - 1."], [0.9], "stop")
    went_on_empty = make_state(engine, ["Step 1: 3 - 1.", " So \\boxed{2}."], [0.9, None], "eos")
    stopped_right = make_state(engine, ["So \\boxed{2}."], [0.9], "stop")
    also_wrong = make_state(engine, ["Step 1: 3 - 1 = \\boxed{5}.", " \\boxed{7}."], [0.9, None], "eos")
    pairs = (stop_pairs(engine, no_answer_yet, engine.trace(no_answer_yet))  # No: would give no answer
             + stop_pairs(engine, stopped_wrong, engine.trace(stopped_wrong), went_on)  # No: gave 5
             + stop_pairs(engine, stopped_empty, engine.trace(stopped_empty), went_on_empty)  # No: gave no answer
             + stop_pairs(engine, stopped_right, engine.trace(stopped_right), also_wrong))  # Yes
    assert [(p.chosen_text, p.chosen_extracted, p.rejected_extracted, p.counterfactual) for p in pairs] == [
        ("No", "2", None, "stop here"), ("No", "2", "5", "continue"), ("No", "2", None, "continue"),
        ("Yes", "2", "7", "continue")]
    expected = {"chosen_yes": 1, "chosen_no": 3, "chosen_no_as_stopping_gave_no_answer": 2,
                "chosen_yes_as_both_right": 0}
    assert diagnostics.stop_pairs([p.to_dict() for p in pairs]) == expected
    for p in pairs:  # the fields, not the prose, decide: a reworded reason changes nothing
        p.reason = "reworded"
    assert diagnostics.stop_pairs([p.to_dict() for p in pairs]) == expected
    old = [{"role": p.role, "chosen_text": p.chosen_text, "reason": r} for p, r in zip(pairs, [
        "stopping at node 0 would give no answer (wrong), continuing gave 2 (correct)",
        "stopping at node 0 gave 5 (wrong), continuing would give 2 (correct)",
        "stopping at node 0 gave no answer (wrong), continuing would give 2 (correct)",
        "stopping at node 0 gave 2 (correct), continuing would give 7 (wrong)"])]
    assert diagnostics.stop_pairs(old) == expected


# ---------------------------------------------------------------- Stop decisions where the Answer LLM ended its turn


def eos_state(engine, texts, p_yes, end_reason):
    """A flow run with stop_at_eos: every chunk ended the Answer LLM's turn and was judged; the Stop LLM's
    No made it write on (the end-of-turn token dropped), so only the last chunk still holds its token."""
    state = make_state(engine, texts, [None] * len(texts), end_reason)
    for c, p in zip(state.chunks, p_yes):
        c.p_yes = p
    for c in state.chunks[:-1]:
        c.token_ids = c.token_ids[:-1]
    return state


def test_stop_pairs_at_the_end_of_the_answer_llm_s_turn(engine):
    yes, no = engine.yes_id, engine.no_id
    # the complete answer was right (2), the Stop LLM said No and the flow wrote on to 3: chosen "Yes"
    went_on = eos_state(engine, ["So \\boxed{2}.", " Wait, \\boxed{3}."], [0.3, 0.3], "max_steps")
    (p,) = stop_pairs(engine, went_on, engine.trace(went_on))  # node 1: max_steps, both decisions end there
    assert (p.node, p.chosen_ids, p.rejected_ids, p.counterfactual) == (0, [yes], [no], "stop here")
    assert (p.chosen_extracted, p.rejected_extracted) == ("2", "3")
    assert p.prompt_ids == engine.stop_prompt_ids(PROBLEM, went_on.chunks[0].token_ids)
    # the complete answer was wrong (5), the Stop LLM said Yes; writing on would have reached 2: chosen "No"
    stopped = eos_state(engine, ["So \\boxed{5}."], [0.9], "stop")
    continued = engine.branch(stopped, 1)
    assert continued.chunks[0].token_ids == stopped.chunks[0].token_ids[:-1] and continued.chunks[0].eos
    assert stopped.chunks[0].token_ids[-1] == engine.tok.eos_token_id  # the original keeps its token
    continued.chunks.append(make_state(engine, [" No: \\boxed{2}."], [0.1], "stop").chunks[0])
    (q,) = stop_pairs(engine, stopped, engine.trace(stopped), continued)
    assert (q.node, q.chosen_ids, q.rejected_ids, q.counterfactual) == (0, [no], [yes], "continue")
    assert (q.chosen_extracted, q.rejected_extracted) == ("2", "5")


def test_continue_counterfactual_writes_on_after_the_end_of_turn(tmp_path):
    """With stop_at_eos, a flow the Stop LLM ended at the end of the Answer LLM's turn is continued from it
    (the token dropped, the next chunk not ending the turn at once)."""
    engine, problems = tinyflow.taught_engine(tmp_path, 2, stop_at_eos=True)
    engine.stop_probs = lambda states: [0.9 if s.chunks[-1].eos and len(s.chunks) < 5 else 0.1 for s in states]
    originals = [FlowState(p) for p in problems]
    for _ in engine.run(originals):
        pass
    assert all(s.end_reason == "stop" and s.chunks[-1].token_ids[-1] in engine.eos_ids for s in originals)
    branches = [engine.branch(s, len(s.chunks)) for s in originals]
    for _ in engine.run(branches):
        pass
    for s, b in zip(originals, branches):
        chunks, n = [c.token_ids for c in b.chunks], len(s.chunks)
        assert len(chunks) > n and chunks[n - 1] == s.chunks[-1].token_ids[:-1]
        assert chunks[n] and chunks[n][0] not in engine.eos_ids
        assert s.chunks[-1].token_ids[-1] in engine.eos_ids  # the original keeps its end-of-turn token


# ---------------------------------------------------------------- Stop calibration (python -m flowcore calibration)


def test_calibration_table_of_a_hand_made_trace_file(tmp_path):
    import json

    from flowcore.online import calibration

    def trace(pid, gold, chunks, end_reason):
        return {"problem_id": pid, "dataset": "gsm8k", "gold": gold, "end_reason": end_reason,
                "chunks": [{"text": t, "n_tokens": 1, "p_yes": p} for t, p in chunks]}

    path = tmp_path / "traces.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [
        trace("a", "2", [("Step 1: 3 - 1.", 0.2), (" So \\boxed{2}.", None)], "eos"),  # the last: never asked
        trace("b", "2", [("So \\boxed{2}.", 0.95)], "stop"),
        trace("c", "3", [("\\boxed{4}.", 0.65), (" No, \\boxed{3}", 0.05)], "max_steps"),  # k=1 holds 4 and 3: 3
    ]) + "\n")
    assert calibration.main([str(path), "--out", str(tmp_path / "cal")]) == 0
    out = json.loads((tmp_path / "cal.json").read_text())
    assert out["command"].startswith("python -m flowcore calibration") and "git_commit" in out
    every, mid, last = (out["tables"][k] for k in ("all", "mid-answer", "last chunk"))
    assert [(d["problem_id"], d["k"], d["last"], d["correct"]) for d in out["decisions"]] == [
        ("a", 0, False, False), ("a", 1, True, True), ("b", 0, True, True), ("c", 0, False, False),
        ("c", 1, True, True)]
    assert (every["decisions"], every["asked"], every["never_asked"], every["never_asked_correct"]) == (5, 4, 1, 1)
    assert every["brier"] == pytest.approx((0.2 ** 2 + 0.05 ** 2 + 0.65 ** 2 + 0.95 ** 2) / 4)
    assert every["auroc"] == 0.5  # 0.95 ranks above both wrong prefixes, 0.05 above neither
    assert (every["says_yes"], every["says_yes_correct"]) == (2, 1)
    assert [(b["bin"], b["n"], b["correct"]) for b in every["bins"] if b["n"]] == [
        ("0.0-0.1", 1, 1), ("0.2-0.3", 1, 0), ("0.6-0.7", 1, 0), ("0.9-1.0", 1, 1)]
    assert (mid["asked"], mid["correct"], mid["auroc"]) == (2, 0, None)
    assert (last["asked"], last["correct"], last["never_asked"], last["mean_p_yes"]) == (2, 2, 1, pytest.approx(0.5))
    md = (tmp_path / "cal.md").read_text()
    assert "| last chunk | 3 | 2 | 1 (1) |" in md and "| 0.9-1.0 | 1 | 1 | 1.00 | 0.950 |" in md


def test_calibration_asks_the_stop_llm_what_the_flow_asked(tiny):
    """--model: P(Yes) asked about a trace's prefixes is the one the flow recorded, and the end-of-turn chunk
    the flow did not ask about gets one too."""
    from dataclasses import replace

    from flowcore.online import calibration

    model, tok = tiny
    engine = FlowEngine(model, tok, FlowConfig(chunk_size=4, max_steps=3, batch_size=2, stop_threshold=1.0))
    problems = [replace(PROBLEM, id=f"t/{i}", question=PROBLEM.question.replace("3", str(3 + i))) for i in range(3)]
    records = [t.to_dict() for t in engine.solve(problems)]
    asked = calibration.ask_stop(engine, records, {q.id: q for q in problems})
    assert [len(a) for a in asked] == [len(r["chunks"]) for r in records]
    recorded = [(p, c["p_yes"]) for a, r in zip(asked, records) for p, c in zip(a, r["chunks"])]
    flow_asked = [(p, q) for p, q in recorded if q is not None]
    assert len(flow_asked) >= 3 and [p for p, _ in flow_asked] == pytest.approx([q for _, q in flow_asked], abs=1e-5)
