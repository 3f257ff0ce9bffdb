"""Rollouts and DPO preference pairs for online Flow-DPO (FLOW-DPO.md section 2, items 1-4).

For a batch of problems, ``explore`` does, in order (``explore_flows`` is
steps 2-4, on flows already run: the app explores the flow it has shown):

1. **The flow** on every problem (``engine.run``, the engine's own decoding:
   greedy by default). Its trace is the example's progressive-validation
   prediction, made before any update on the example.
2. **Answer rollouts** (paper): at every Answer node k (chunk k of the trace),
   ``rollouts`` new flows start from the prefix ``chunks[:k]``; their chunk k is
   *sampled* at ``temperature`` and must differ from the original chunk k
   (``avoid``: the engine resamples a row that reproduces it, up to 4 tries);
   then the flow (both LLMs) continues to a final answer with the engine's
   own decoding. Paper: 1 rollout per node; ``rollouts > 1`` is ours. The
   sampling temperature is ours (the paper does not give one; default 1.0).
3. **Answer pairs** (paper): when the original and a rollout end with
   different correctness, node k gives a pair: prompt = Answer prompt + chunks
   ``[:k]`` (token ids, never re-tokenised), chosen = the chunk on the correct
   side, rejected = the other. Ties give no pair.
4. **Stop pairs** (the paper says both LLMs are trained through rollouts; this
   exact form is ours): at every Stop decision of the original trace (chunk k
   where the Stop LLM was asked), the counterfactual decision is played out:
   - the flow went on after k -> counterfactual "stop here": grade the partial
     answer ``chunks[:k+1]`` as it is;
   - the flow stopped at k -> counterfactual "continue": run the flow on from
     ``chunks[:k+1]`` (skipped when k+1 == max_steps: the flow would end
     with the same answer anyway).
   If the two outcomes differ in correctness, the decision that led to the
   correct one is chosen ("Yes" = stop, "No" = continue; the first token of
   each, as the Stop LLM reads them). Only the original trace's decisions
   make Stop pairs, not the rollouts' own decisions (ours). Where both end
   right, ``stop_ties`` decides (ours): ``"none"`` (default) makes no pair,
   like any tie; ``"yes"`` chooses "Yes" (the same right answer, sooner), so
   the Stop LLM learns to stop once the answer is there, not only where
   writing on would break it (its rejected side is then right too:
   ``rejected_correct`` true). Where both end wrong there is never a pair.
   Where the Answer LLM ended its turn there is a Stop decision only with
   ``FlowConfig.stop_at_eos`` (ours); its counterfactuals are the same: a flow
   that wrote on is graded as it stood at the end of that turn, and a flow
   stopped there is continued by ``engine.branch`` (which drops the end-of-turn
   token). So "Yes" can win where a complete answer is right and writing on
   breaks it, and "No" where it is wrong and writing on fixes it; without the
   option every Stop decision is mid-answer, where stopping is nearly always wrong.

Batching: every rollout and every "continue" counterfactual of every problem
goes through the engine together: the first (sampled) chunk of all rollouts in
one ``engine.step`` (split into ``batch_size`` generate calls), then all
unfinished branches in one ``engine.run`` (continuous batching: a finished
branch frees its slot for the next).

KV cache: reused. Each branch starts from the cache of its original flow,
cut to the shared prefix (``FlowEngine.branch``: a view, no copy), so a
rollout's prompt and prefix are not encoded again; the engine left-pads the
rows' caches into one batch cache for each generate call.
"""
from __future__ import annotations

from dataclasses import dataclass

from flowcore import grading
from flowcore.data import Problem
from flowcore.flow.engine import FlowEngine, FlowState, Trace

STOP_TIES = ("none", "yes")  # what a Stop decision with both sides right makes (OnlineDPOConfig.stop_ties)


@dataclass
class Pair:
    """One DPO preference pair; ``role`` names the adapter it trains."""

    example_id: str
    role: str  # "answer" | "stop"
    node: int  # 0-based chunk index in the original trace
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    chosen_text: str
    rejected_text: str
    chosen_correct: bool
    rejected_correct: bool
    reason: str  # why this pair exists, in words (for people; the fields below are for code)
    # the final answer each side led to (None: no extractable answer). Stop pairs: "Yes" led to the
    # partial answer graded as it stood, "No" to the flow's answer after going on.
    chosen_extracted: str | None = None
    rejected_extracted: str | None = None
    counterfactual: str = ""  # the side played out for this pair: "rollout" | "stop here" | "continue"

    def to_dict(self, with_ids: bool = False) -> dict:
        return {k: v for k, v in vars(self).items() if with_ids or not k.endswith("_ids")}


@dataclass
class Rollout:
    """One Answer rollout: a different chunk at ``node``, then the flow to its end."""

    node: int
    chunk_text: str  # the sampled chunk that replaced the original chunk ``node``
    completion: str  # the whole final answer of the rollout
    extracted: str | None
    correct: bool
    end_reason: str


@dataclass
class Exploration:
    """Everything one training example produced: its trace, rollouts and pairs."""

    trace: Trace
    rollouts: list[Rollout]
    pairs: list[Pair]


def _outcome(extracted: str | None, correct: bool) -> str:
    return f"{extracted if extracted is not None else 'no answer'} ({'correct' if correct else 'wrong'})"


def explore(engine: FlowEngine, problems: list[Problem], rollouts: int = 1,
            temperature: float = 1.0, stop_ties: str = "none") -> list[Exploration]:
    """Flow, rollouts and DPO pairs for each problem (same order as ``problems``)."""
    _check(rollouts, stop_ties)
    originals = [FlowState(p) for p in problems]
    for _ in engine.run(originals):
        pass
    return explore_flows(engine, originals, rollouts, temperature, stop_ties=stop_ties)


def explore_flows(engine: FlowEngine, originals: list[FlowState], rollouts: int = 1, temperature: float = 1.0,
                  traces: list[Trace] | None = None, stop_ties: str = "none") -> list[Exploration]:
    """Steps 2-4 on finished flows: their rollouts and DPO pairs (same order as ``originals``).

    ``traces``: the flows' traces if the caller already has them (else ``engine.trace``).
    The app explores the flow it has just shown with this, so its pairs are the ones training makes.
    """
    _check(rollouts, stop_ties)
    traces = [engine.trace(s) for s in originals] if traces is None else traces

    # Answer rollouts: (flow index, node, branch), the new chunk must differ from the original's.
    answer_branches = [(i, k, engine.branch(s, k)) for i, s in enumerate(originals)
                       for k in range(len(s.chunks)) for _ in range(rollouts)]
    avoid = [originals[i].chunks[k].token_ids for i, k, _ in answer_branches]
    if answer_branches:
        engine.step([b for _, _, b in answer_branches], avoid=avoid, temperature=temperature)

    # "Continue" counterfactuals of flows the Stop LLM ended (room for another chunk left; a branch writes on
    # even after a chunk that ended the Answer LLM's turn, see FlowEngine.branch).
    continue_branches = [(i, len(s.chunks) - 1, engine.branch(s, len(s.chunks))) for i, s in enumerate(originals)
                         if s.end_reason == "stop" and len(s.chunks) < engine.cfg.max_steps]

    for _ in engine.run([b for _, _, b in answer_branches] + [b for _, _, b in continue_branches]):
        pass

    explorations = [Exploration(t, [], []) for t in traces]
    for i, k, b in answer_branches:
        rollout, pair = answer_pair(engine, originals[i], traces[i], k, b)
        explorations[i].rollouts.append(rollout)
        if pair is not None:
            explorations[i].pairs.append(pair)

    continued = {i: b for i, _, b in continue_branches}
    for i, (s, trace) in enumerate(zip(originals, traces)):
        explorations[i].pairs.extend(stop_pairs(engine, s, trace, continued.get(i), stop_ties))
    return explorations


def _check(rollouts: int, stop_ties: str) -> None:
    if rollouts < 0:
        raise ValueError(f"rollouts must be >= 0, not {rollouts}")
    check_stop_ties(stop_ties)


def check_stop_ties(stop_ties: str) -> None:
    if stop_ties not in STOP_TIES:
        raise ValueError(f"stop_ties must be one of {', '.join(STOP_TIES)}, not {stop_ties!r}")


def answer_pair(engine: FlowEngine, original: FlowState, trace: Trace, k: int,
                branch: FlowState) -> tuple[Rollout, Pair | None]:
    """The Rollout of a finished branch that replaced chunk ``k``, and its Answer pair (None on a tie)."""
    problem = original.problem
    completion = engine.completion(branch)
    g = grading.grade(completion, problem.gold, problem.dataset)
    new, old = branch.chunks[k], original.chunks[k]
    rollout = Rollout(k, new.text, completion, g.extracted, g.correct, branch.end_reason)
    if g.correct == trace.correct or new.token_ids == old.token_ids:
        return rollout, None  # a tie (or the sampler could not leave the original chunk): no pair
    chosen, rejected = (old, new) if trace.correct else (new, old)
    return rollout, Pair(
        example_id=problem.id, role="answer", node=k,
        prompt_ids=engine.prompt_ids(problem) + [t for c in original.chunks[:k] for t in c.token_ids],
        chosen_ids=list(chosen.token_ids), rejected_ids=list(rejected.token_ids),
        chosen_text=chosen.text, rejected_text=rejected.text,
        chosen_correct=True, rejected_correct=False,
        reason=f"rollout at node {k} reached {_outcome(g.extracted, g.correct)}, "
               f"original reached {_outcome(trace.extracted, trace.correct)}",
        chosen_extracted=trace.extracted if trace.correct else g.extracted,
        rejected_extracted=g.extracted if trace.correct else trace.extracted, counterfactual="rollout",
    )


def stop_pairs(engine: FlowEngine, state: FlowState, trace: Trace,
               continued: FlowState | None = None, stop_ties: str = "none") -> list[Pair]:
    """Stop pairs of one finished flow; ``continued`` is its "continue" counterfactual if it stopped;
    ``stop_ties`` (``STOP_TIES``) what a decision with both sides right makes."""
    check_stop_ties(stop_ties)
    yes_id, no_id = engine.yes_id, engine.no_id
    problem, pairs = state.problem, []
    for k, chunk in enumerate(state.chunks):
        if chunk.p_yes is None:
            continue  # no Stop decision here (the Answer LLM ended its turn without stop_at_eos, or no Stop LLM)
        last = k == len(state.chunks) - 1
        partial = [t for c in state.chunks[:k + 1] for t in c.token_ids]
        if not last:  # the flow went on; counterfactual: stop here with the partial answer
            g = grading.grade(engine.decode(partial), problem.gold, problem.dataset)
            stop_ok, go_ok = g.correct, trace.correct
            stop_answer, go_answer, played = g.extracted, trace.extracted, "stop here"
            what = (f"stopping at node {k} would give {_outcome(g.extracted, g.correct)}, "
                    f"continuing gave {_outcome(trace.extracted, trace.correct)}")
        elif state.end_reason == "stop" and continued is not None:  # counterfactual: continue
            g = grading.grade(engine.completion(continued), problem.gold, problem.dataset)
            stop_ok, go_ok = trace.correct, g.correct
            stop_answer, go_answer, played = trace.extracted, g.extracted, "continue"
            what = (f"stopping at node {k} gave {_outcome(trace.extracted, trace.correct)}, "
                    f"continuing would give {_outcome(g.extracted, g.correct)}")
        else:
            continue  # the flow had to end here anyway (max_steps): both decisions give one answer
        tie = stop_ok and go_ok and stop_ties == "yes"  # both right: stopping gives the same answer, sooner
        if stop_ok == go_ok and not tie:
            continue
        yes, no = (yes_id, "Yes", stop_answer), (no_id, "No", go_answer)
        chosen, rejected = (yes, no) if stop_ok else (no, yes)
        if tie:
            what += "; both right, stopping is chosen (stop_ties yes)"
        pairs.append(Pair(
            example_id=problem.id, role="stop", node=k,
            prompt_ids=engine.stop_prompt_ids(problem, partial),
            chosen_ids=[chosen[0]], rejected_ids=[rejected[0]],
            chosen_text=chosen[1], rejected_text=rejected[1],
            chosen_correct=True, rejected_correct=tie, reason=what,
            chosen_extracted=chosen[2], rejected_extracted=rejected[2], counterfactual=played,
        ))
    return pairs
