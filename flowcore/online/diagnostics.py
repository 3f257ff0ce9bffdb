"""What a run's files show about *why* the trained flow does (not) beat its baselines.

Counts only, from the committed files (``pairs.jsonl``, ``progress.jsonl``,
``baseline_flow.jsonl``, ``baseline_zero_shot.jsonl``); ``python -m flowcore plot``
puts them in ``summary.json`` under ``diagnostics``:

- ``stop_pairs``: Stop pairs by chosen label, how many chose "No" because
  stopping there gave (or would give) no answer at all, and how many chose "Yes"
  where continuing was right too (``--stop-ties yes``).
- ``end_reasons``: how the flows ended (``eos``: the Answer LLM ended its turn;
  ``stop``: the Stop LLM said Yes; ``max_steps``), trained vs untrained, on the
  examples predicted after the first DPO step; ``stopped_correct``: how many of
  the flows the Stop LLM ended were right (whether it says Yes where it should).
- ``trained_vs_untrained``: on those examples, where the trained flow is right and
  the untrained one wrong (wins) and the reverse (losses), and how many of each
  had the untrained flow stopped by its Stop LLM.
- ``rollout_outcomes``: how often an Answer rollout's answer flipped from right to
  wrong or wrong to right, and at which nodes (rollout diversity).
- ``untrained_flow_vs_zero_shot``: whether the untrained flow's completion is the
  zero-shot one, a strict prefix of it (a Stop LLM can only cut the text short), or
  other text; answers the prefixes lost and gained.
"""
from __future__ import annotations

import re
from collections import Counter

STOPPED = "stop"  # FlowState.end_reason when the Stop LLM ended the flow
# pairs.jsonl written before pairs had structured fields: the Stop pair's reason text (rollouts.stop_pairs) says it
_OLD_STOP_GAVE_NO_ANSWER = re.compile(r"^stopping at node \d+ (?:would give|gave) no answer \(")


def stopping_gave_no_answer(pair: dict) -> bool:
    """Whether the "Yes" (stop) side of a Stop pair ended with no extractable answer."""
    if "counterfactual" not in pair:  # an old record: only its reason text tells
        return bool(_OLD_STOP_GAVE_NO_ANSWER.match(pair["reason"]))
    return (pair["chosen_extracted"] if pair["chosen_text"] == "Yes" else pair["rejected_extracted"]) is None


def stop_pairs(pairs: list[dict]) -> dict:
    stop = [p for p in pairs if p["role"] == "stop"]
    yes = [p for p in stop if p["chosen_text"] == "Yes"]
    no = [p for p in stop if p["chosen_text"] == "No"]
    return {"chosen_yes": len(yes), "chosen_no": len(no),
            "chosen_no_as_stopping_gave_no_answer": sum(stopping_gave_no_answer(p) for p in no),
            "chosen_yes_as_both_right": sum(bool(p.get("rejected_correct")) for p in yes)}


def end_reasons(records: list[dict]) -> dict:
    return dict(sorted(Counter(r["end_reason"] for r in records).items()))


def trained_vs_untrained(progress: list[dict], untrained: dict[str, dict]) -> dict:
    """``progress`` records (trained flow) against the untrained flow's records by problem id."""
    both = [(p, untrained[p["problem_id"]]) for p in progress if p["problem_id"] in untrained]
    wins = [u for p, u in both if p["correct"] and not u["correct"]]
    losses = [u for p, u in both if u["correct"] and not p["correct"]]
    return {"n": len(both), "wins": len(wins), "wins_where_untrained_stopped": sum(u["end_reason"] == STOPPED for u in wins),
            "losses": len(losses),
            "losses_where_untrained_stopped": sum(u["end_reason"] == STOPPED for u in losses)}


def flow_vs_zero_shot(flow: dict[str, dict], zero_shot: dict[str, dict]) -> dict:
    """The flow's completion against the single model's, on the problems both have (greedy decoding makes
    the untrained flow's text the zero-shot text unless its Stop LLM cuts it short)."""
    ids = [i for i in flow if i in zero_shot]
    same = [i for i in ids if flow[i]["completion"] == zero_shot[i]["completion"]]
    prefix = [i for i in ids if i not in same and zero_shot[i]["completion"].startswith(flow[i]["completion"])]
    return {"n": len(ids), "identical": len(same), "strict_prefix": len(prefix),
            "other": len(ids) - len(same) - len(prefix),
            "prefix_lost": sum(zero_shot[i]["correct"] and not flow[i]["correct"] for i in prefix),
            "prefix_gained": sum(flow[i]["correct"] and not zero_shot[i]["correct"] for i in prefix)}


def rollout_outcomes(progress: list[dict], pairs: list[dict]) -> dict:
    """Rollout diversity (the paper's open question): how often an Answer rollout's outcome differs from the
    original flow's. Its chunk always differs (the sampler is told to avoid the original chunk), so what is
    counted is whether the answer's correctness flipped, from right and from wrong originals, and at which
    node the flips (= the Answer pairs) happened."""
    from_right = [p for p in progress if p["correct"]]
    from_wrong = [p for p in progress if not p["correct"]]
    by_node = Counter(p["node"] for p in pairs if p["role"] == "answer")
    return {"rollouts": sum(p["n_rollouts"] for p in progress),
            "from_right": {"rollouts": sum(p["n_rollouts"] for p in from_right),
                           "went_wrong": sum(p["n_rollouts"] - p["rollouts_correct"] for p in from_right)},
            "from_wrong": {"rollouts": sum(p["n_rollouts"] for p in from_wrong),
                           "went_right": sum(p["rollouts_correct"] for p in from_wrong)},
            "answer_pairs_by_node": {str(k): by_node[k] for k in sorted(by_node)}}


def diagnostics(progress: list[dict], pairs: list[dict], flow: list[dict], zero_shot: list[dict],
                after: int) -> dict:
    """All of the above; ``after``: the first progress index predicted by updated adapters."""
    flow_by_id, later = {r["problem_id"]: r for r in flow}, progress[after:]
    later_untrained = [flow_by_id[p["problem_id"]] for p in later if p["problem_id"] in flow_by_id]
    return {"after_example": after, "stop_pairs": stop_pairs(pairs),
            "end_reasons": {"trained flow": end_reasons(later), "untrained flow": end_reasons(later_untrained)},
            "stopped_correct": {name: sum(r["end_reason"] == STOPPED and bool(r["correct"]) for r in recs)
                                for name, recs in (("trained flow", later), ("untrained flow", later_untrained))},
            "trained_vs_untrained": trained_vs_untrained(later, flow_by_id),
            "rollout_outcomes": rollout_outcomes(progress, pairs),
            "untrained_flow_vs_zero_shot": flow_vs_zero_shot(flow_by_id, {r["problem_id"]: r for r in zero_shot})}


def describe(d: dict) -> list[str]:
    s, tu, fz = d["stop_pairs"], d["trained_vs_untrained"], d["untrained_flow_vs_zero_shot"]
    ties = f" ({s['chosen_yes_as_both_right']} where continuing was right too)" if s.get("chosen_yes_as_both_right") else ""
    lines = [f"  Stop pairs: chosen Yes {s['chosen_yes']}{ties}, chosen No {s['chosen_no']} "
             f"({s['chosen_no_as_stopping_gave_no_answer']} as stopping gave no answer)"]
    if tu["n"]:
        right = d.get("stopped_correct", {})  # summaries written before it have no count of right stops
        stopped = {name: f"{d['end_reasons'][name].get(STOPPED, 0)}"
                         + (f" ({right[name]} right)" if name in right else "") for name in d["end_reasons"]}
        lines.append(f"  from example {d['after_example']} on: ended by the Stop LLM: trained "
                     f"{stopped['trained flow']}, untrained {stopped['untrained flow']} of {tu['n']}; trained vs untrained "
                     f"{tu['wins']} wins ({tu['wins_where_untrained_stopped']} where the untrained flow stopped), "
                     f"{tu['losses']} losses ({tu['losses_where_untrained_stopped']})")
    r = d.get("rollout_outcomes")  # summaries written before it have none
    if r and r["rollouts"]:
        flipped = r["from_right"]["went_wrong"] + r["from_wrong"]["went_right"]
        lines.append(f"  rollouts: {r['rollouts']}, outcome flipped in {flipped} ({100 * flipped / r['rollouts']:.1f}%): "
                     f"right -> wrong {r['from_right']['went_wrong']} of {r['from_right']['rollouts']}, "
                     f"wrong -> right {r['from_wrong']['went_right']} of {r['from_wrong']['rollouts']}; "
                     f"Answer pairs by node {r['answer_pairs_by_node']}")
    if fz["n"]:
        lines.append(f"  untrained flow vs zero-shot text on {fz['n']}: identical {fz['identical']}, strict prefix "
                     f"{fz['strict_prefix']} (lost {fz['prefix_lost']}, gained {fz['prefix_gained']}), "
                     f"other {fz['other']}")
    return lines
