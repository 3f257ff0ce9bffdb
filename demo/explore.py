"""Rollouts and DPO pairs of the flow the user just watched (the Flow tab).

``flowcore.online.rollouts.explore`` takes problems and runs their flows
itself; the Flow tab has already streamed its flow, and a second run would
make pairs from a flow the user never saw. ``explore_flow`` is that
function's steps 2-4 (Answer rollouts, Answer pairs, Stop pairs) on one
finished ``FlowState``, built from the same pieces (``engine.branch``,
``answer_pair``, ``stop_pairs``) so the pairs are the ones training makes.
When ``explore`` accepts finished flows, this module becomes that one call.
"""
from __future__ import annotations

from flowcore.flow.engine import FlowEngine, FlowState, Trace
from flowcore.online.rollouts import Exploration, answer_pair, stop_pairs


def explore_flow(engine: FlowEngine, state: FlowState, trace: Trace, rollouts: int = 1,
                 temperature: float = 1.0) -> Exploration:
    """Rollouts at every node of the finished flow ``state`` (whose trace is ``trace``) and the pairs they give."""
    if rollouts < 0:
        raise ValueError(f"rollouts must be >= 0, not {rollouts}")
    # Answer rollouts: at node k a sampled chunk k that differs from the original one, then the flow to its end
    branches = [(k, engine.branch(state, k)) for k in range(len(state.chunks)) for _ in range(rollouts)]
    if branches:
        engine.step([b for _, b in branches], avoid=[state.chunks[k].token_ids for k, _ in branches],
                    temperature=temperature)
    # the "continue" counterfactual of a flow the Stop LLM ended (room for another chunk left)
    continued = None
    if state.end_reason == "stop" and len(state.chunks) < engine.cfg.max_steps:
        continued = engine.branch(state, len(state.chunks))
    for _ in engine.run([b for _, b in branches] + ([continued] if continued else [])):
        pass
    exploration = Exploration(trace, [], [])
    for k, branch in branches:
        rollout, pair = answer_pair(engine, state, trace, k, branch)
        exploration.rollouts.append(rollout)
        if pair is not None:
            exploration.pairs.append(pair)
    exploration.pairs.extend(stop_pairs(engine, state, trace, continued))
    return exploration
