"""diagnostics on hand-made run records (the Stop-pair reasons are checked against rollouts in test_rollouts)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from flowcore.online import diagnostics
from flowcore.results import read_jsonl

ROOT = Path(__file__).resolve().parents[1]


def rec(pid, correct, end="eos", completion=""):
    return {"problem_id": pid, "correct": correct, "end_reason": end, "completion": completion,
            "n_rollouts": 1, "rollouts_correct": int(not correct)}


def test_flow_vs_zero_shot_tells_identical_prefix_and_other_text():
    zero = {"a": rec("a", True, completion="x = 2, so 2."), "b": rec("b", True, completion="x = 2, so 2."),
            "c": rec("c", False, completion="so 5"), "d": rec("d", False, completion="so 5"),
            "e": rec("e", True, completion="7")}
    flow = {"a": rec("a", True, completion="x = 2, so 2."),  # identical
            "b": rec("b", False, "stop", "x = 2,"),  # cut short: a lost answer
            "c": rec("c", True, "stop", "so"),  # a prefix graded right (gold hand-set): a gained one
            "d": rec("d", True, completion="so 4"),  # other text
            "z": rec("z", True)}  # no zero-shot record: not compared
    assert diagnostics.flow_vs_zero_shot(flow, zero) == {"n": 4, "identical": 1, "strict_prefix": 2, "other": 1,
                                                         "prefix_lost": 1, "prefix_gained": 1}


def test_trained_vs_untrained_counts_wins_losses_and_early_stops():
    progress = [rec("a", True), rec("b", True), rec("c", False), rec("d", True), rec("e", False), rec("f", True)]
    untrained = {"a": rec("a", False, "stop"), "b": rec("b", False), "c": rec("c", True), "d": rec("d", True, "stop"),
                 "e": rec("e", True, "stop")}
    assert diagnostics.trained_vs_untrained(progress, untrained) == {
        "n": 5, "wins": 2, "wins_where_untrained_stopped": 1, "losses": 2, "losses_where_untrained_stopped": 1}


def test_diagnostics_count_only_examples_after_the_first_step():
    progress = [rec("a", False, "stop"), rec("b", True), rec("c", True, "max_steps")]
    flow = [rec("a", False, "stop", "x"), rec("b", False, "stop", "y"), rec("c", True, "eos", "z")]
    zero = [rec("a", True, completion="x1"), rec("b", True, completion="y1"), rec("c", True, completion="z")]
    pairs = [{"role": "answer", "node": 0, "chosen_text": "t", "reason": "rollout ..."}]
    d = diagnostics.diagnostics(progress, pairs, flow, zero, after=1)
    assert d["end_reasons"] == {"trained flow": {"eos": 1, "max_steps": 1}, "untrained flow": {"eos": 1, "stop": 1}}
    assert d["stopped_correct"] == {"trained flow": 0, "untrained flow": 0}  # b: stopped, wrong
    later = diagnostics.diagnostics([rec("a", True, "stop"), rec("b", True, "stop")], pairs, flow, zero, after=0)
    assert later["stopped_correct"] == {"trained flow": 2, "untrained flow": 0}
    assert "ended by the Stop LLM: trained 2 (2 right), untrained 2 (0 right) of 2" in diagnostics.describe(later)[1]
    assert (d["trained_vs_untrained"]["wins"], d["trained_vs_untrained"]["wins_where_untrained_stopped"]) == (1, 1)
    assert d["untrained_flow_vs_zero_shot"]["strict_prefix"] == 2  # all of the baseline files, not only `after`
    assert d["stop_pairs"] == {"chosen_yes": 0, "chosen_no": 0, "chosen_no_as_stopping_gave_no_answer": 0,
                               "chosen_yes_as_both_right": 0}
    assert diagnostics.describe(d)[0].startswith("  Stop pairs: chosen Yes 0")
    assert d["rollout_outcomes"]["from_wrong"] == {"rollouts": 1, "went_right": 1}  # all of progress


def test_rollout_outcomes_count_flips_from_right_and_from_wrong():
    progress = [{"correct": True, "n_rollouts": 4, "rollouts_correct": 3},  # one went wrong
                {"correct": False, "n_rollouts": 2, "rollouts_correct": 2},  # both went right
                {"correct": False, "n_rollouts": 0, "rollouts_correct": 0}]
    pairs = [{"role": "answer", "node": 1}, {"role": "answer", "node": 0}, {"role": "answer", "node": 0},
             {"role": "stop", "node": 3}]
    r = diagnostics.rollout_outcomes(progress, pairs)
    assert r == {"rollouts": 6, "from_right": {"rollouts": 4, "went_wrong": 1},
                 "from_wrong": {"rollouts": 2, "went_right": 2}, "answer_pairs_by_node": {"0": 2, "1": 1}}
    d = {"stop_pairs": diagnostics.stop_pairs([]), "rollout_outcomes": r,
         "trained_vs_untrained": {"n": 0}, "untrained_flow_vs_zero_shot": {"n": 0}}
    assert ("  rollouts: 6, outcome flipped in 3 (50.0%): right -> wrong 1 of 4, wrong -> right 2 of 2; "
            "Answer pairs by node {'0': 2, '1': 1}") in diagnostics.describe(d)


@pytest.mark.parametrize("run", sorted(p.parent.name for p in (ROOT / "runs").glob("*/summary.json")))
def test_committed_runs_keep_their_pair_counts(run):
    """The counts a committed summary.json holds come again from its pairs.jsonl (the older files predate the
    structured fields: their reason text gives the Stop counts) and, for the Answer pairs, from progress.jsonl."""
    pairs = read_jsonl(ROOT / "runs" / run / "pairs.jsonl")
    summary = json.loads((ROOT / "runs" / run / "summary.json").read_text())
    assert pairs
    # summaries from before --stop-ties have no count of its pairs: there were none
    assert diagnostics.stop_pairs(pairs) == {"chosen_yes_as_both_right": 0, **summary["diagnostics"]["stop_pairs"]}
    progress = read_jsonl(ROOT / "runs" / run / "progress.jsonl")
    flips = diagnostics.rollout_outcomes(progress, pairs)
    answer_pairs = sum(p["role"] == "answer" for p in pairs)
    assert answer_pairs == sum(p["n_answer_pairs"] for p in progress) == sum(flips["answer_pairs_by_node"].values())
    # a pair exists where a rollout's correctness flipped (unless the sampler could not leave the original chunk)
    assert answer_pairs <= flips["from_right"]["went_wrong"] + flips["from_wrong"]["went_right"]
