"""SFT traces from three sources on one prompt set, and the equal-count selection (FLOW-DPO.md section 3).

- ``ground_truth``: the dataset's own solution, ending in the final-answer
  sentence "The final answer is \\boxed{GOLD}." on a line of its own (the form
  the Answer prompt asks for). GSM8K: the ``<<48/2=24>>`` calculator notes are
  stripped and the ``#### N`` line becomes that sentence. MATH: the sentence
  (with the ``answer`` field) is appended to the solution, whose box sits
  inside its prose ("... is $\\boxed{31}$ centimeters."). So every trace
  ends the same way (until 2026-12-01 MATH traces ended in that prose, and the
  model SFT-trained on them often ended its turn after a plain sentence with
  no answer: docs/experiments/compile-cpu-preset.md).
- ``self_generated``: the base model's own zero-shot samples (same prompt and
  token budget as the zero-shot baseline), correct ones kept.
- ``flow_generated``: the trained flow's traces (Answer + Stop adapters of an
  online-DPO run), correct ones kept.

Every sample, right or wrong, is written to ``<source>.jsonl`` (one graded
trace per line, resumable) so the selection can be audited and redone.

Selection rule (``select``): a prompt is used only if EVERY source has at
least one correct trace for it; each source then gives exactly one trace per
used prompt (its first correct sample). So the three SFT sets have the same
number of traces, on the same prompts, and differ only in who wrote them.
"""
from __future__ import annotations

import re
from dataclasses import replace

from flowcore import grading
from flowcore.data import Problem
from flowcore.flow.engine import FlowEngine
from flowcore.flow.generate import solve_into
from flowcore.results import ResultsFile

SOURCES = ("ground_truth", "self_generated", "flow_generated")
SELECTION_RULE = (
    "A prompt is used only if every source (ground truth, self-generated, flow-generated) has at least one "
    "correct trace for it; each source gives exactly one trace per used prompt (its first correct sample, "
    "by sample index). All three SFT sets therefore hold the same number of traces, on the same prompts."
)
SAMPLE_SEP = "#"  # trace key = "<problem id>#<sample index>"


class SelectionError(ValueError):
    """No prompt has a correct trace from every source: nothing to compile."""


def final_answer_sentence(answer: str) -> str:
    """The last line of every ground-truth trace."""
    return f"The final answer is \\boxed{{{answer}}}."


def ground_truth_text(problem: Problem) -> str:
    """The dataset's solution in the answer form the model is asked for: it ends in ``final_answer_sentence``."""
    if problem.dataset == "gsm8k":
        body = problem.solution.rsplit("####", 1)[0]
        body = re.sub(r"<<[^<>]*>>", "", body).strip()
    else:
        body = problem.solution.strip()
    final = final_answer_sentence(problem.gold)
    if body.splitlines()[-1:] == [final]:  # the solution already ends that way
        return body
    return f"{body}\n{final}" if body else final


def ground_truth_records(problems: list[Problem]) -> list[dict]:
    """One graded record per problem, in the same form as a model's trace."""
    records = []
    for p in problems:
        text = ground_truth_text(p)
        g = grading.grade(text, p.gold, p.dataset)
        records.append({"key": f"{p.id}{SAMPLE_SEP}0", "problem_id": p.id, "sample": 0, "dataset": p.dataset,
                        "gold": p.gold, "completion": text, "extracted": g.extracted, "correct": g.correct})
    return records


def sampled(problems: list[Problem], samples: int) -> list[Problem]:
    """``samples`` copies of each problem, ids ``<id>#<k>`` (one trace each)."""
    return [replace(p, id=f"{p.id}{SAMPLE_SEP}{k}") for p in problems for k in range(samples)]


def collect(engine: FlowEngine, problems: list[Problem], samples: int, out: ResultsFile, desc: str) -> list[dict]:
    """Traces of every (problem, sample) not yet in ``out``; returns all of ``out``'s records."""
    solve_into(engine, sampled(problems, samples), out, desc=desc)
    return out.records


def prompt_and_sample(record: dict) -> tuple[str, int]:
    """(prompt id, sample index) of a trace record: ground truth has them as fields, model traces
    in their key ``<problem id>#<k>``."""
    if "sample" in record:
        return record["problem_id"], record["sample"]
    pid, _, k = record["problem_id"].rpartition(SAMPLE_SEP)
    return pid, int(k)


def solved_prompts(records: list[dict]) -> set[str]:
    """Prompt ids with at least one correct trace."""
    return {prompt_and_sample(r)[0] for r in records if r["correct"]}


def select(records: dict[str, list[dict]], prompt_ids: list[str]) -> dict[str, list[dict]]:
    """The equal-count selection (``SELECTION_RULE``), in prompt order.

    ``records[source]``: graded traces keyed ``problem_id`` = ``<id>#<k>`` (model
    sources) or with ``problem_id``/``sample`` fields (ground truth). Returns,
    per source, ``{"problem_id", "dataset", "sample", "completion"}`` rows.
    """
    missing = [s for s in SOURCES if s not in records]
    if missing:
        raise ValueError(f"no traces for source(s) {', '.join(missing)}")
    best: dict[str, dict[str, dict]] = {}
    for source in SOURCES:
        firsts: dict[str, dict] = {}
        for r in records[source]:
            if not r["correct"]:
                continue
            pid, k = prompt_and_sample(r)
            if pid not in firsts or k < firsts[pid]["sample"]:
                firsts[pid] = {"problem_id": pid, "dataset": r["dataset"], "sample": k, "completion": r["completion"]}
        best[source] = firsts
    used = [pid for pid in prompt_ids if all(pid in best[s] for s in SOURCES)]
    if not used:
        counts = ", ".join(f"{s}: {len(best[s])}" for s in SOURCES)
        raise SelectionError(f"no prompt has a correct trace from every source (prompts with one: {counts}); "
                             "use more prompts or more samples per prompt")
    return {s: [best[s][pid] for pid in used] for s in SOURCES}
