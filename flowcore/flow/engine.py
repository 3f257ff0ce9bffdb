"""The Flow: Answer LLM writes a chunk, Stop LLM says Yes/No, repeat (FLOW-DPO.md section 1).

Both roles are the same base model with LoRA adapters ``answer`` and ``stop``
(``flowcore.adapters``); a model without them runs both roles on the base.

Batching: many flows advance in lockstep. Each ``step`` generates one chunk
for every active flow in ONE ``generate`` call (left padding), then asks the
Stop LLM about all of them (forward passes over groups of ``PASS_ROWS`` rows of
similar length to encode, so short inputs are not padded to the longest). ``run`` keeps the batch full:
a finished flow drops out and the next pending problem takes its slot, so a
test set runs at batch throughput. The Answer LLM's input is the prompt's
token ids plus the chunks' own token ids, so continuing a flow never
re-tokenises text (a chunk boundary inside a word changes nothing).

On transformers (``hf_calls.ModelCalls``, the simple reference) every call encodes its whole input;
on vLLM (``vllm_engine``) paged attention and prefix caching reuse what rollouts and Stop prompts
share. The flow's logic here is the same for both.

A flow ends when the Stop LLM's P(Yes) > ``stop_threshold`` (paper: 0.5),
when the Answer LLM emits end-of-turn (ours), or after ``max_steps`` chunks.
With ``stop_at_eos`` (ours) the Stop LLM also judges the chunk that ends the
Answer LLM's turn, and its No there makes the Answer LLM write on.

The single-model zero-shot baseline is the same loop with the Stop LLM
switched off and the base model answering (``zero_shot_config``): it
generates to end-of-turn or ``chunk_size * max_steps`` tokens, the chunking
being only a scheduling detail (greedy output is the same as one
``generate`` call of that length).
"""
from __future__ import annotations

import collections
import time
from dataclasses import replace
from typing import Iterable, Iterator

import torch

from flowcore import grading
from flowcore.data import Problem
from flowcore.flow.hf_calls import ModelCalls
from flowcore.flow.state import Chunk, FlowConfig, FlowState, Trace, zero_shot_config  # noqa: F401 (the flow's API)


class FlowEngine(ModelCalls):
    """Runs flows for many problems at once on one model (with or without adapters)."""


    def step(self, states: list[FlowState], avoid=None, temperature: float | None = None) -> None:
        """Advance every unfinished flow by one chunk and one Stop decision."""
        active = [s for s in states if not s.done]
        if not active:
            return
        t0 = time.perf_counter()
        chunks = self.generate_chunks(active, avoid=avoid, temperature=temperature)
        for s, c in zip(active, chunks):
            s.chunks.append(c)
        self.judge(active)
        self.stats["seconds"] += time.perf_counter() - t0

    def judge(self, states: list[FlowState]) -> None:
        """Set end_reason after the latest chunk: the Stop LLM, eos, then max_steps.

        The Stop LLM is not asked after a chunk where the Answer LLM ended its turn: that ends the flow
        ("eos", ours). With ``stop_at_eos`` (ours) it is asked there too: Yes ends the flow ("stop"),
        No makes the Answer LLM write on (``write_on``) until ``max_steps``.
        """
        ask = [s for s in states if self.cfg.stop_at_eos or not s.chunks[-1].eos] if self.cfg.use_stop else []
        for s, p in zip(ask, self.stop_probs(ask) if ask else []):
            s.chunks[-1].p_yes = p
        for s in states:
            last = s.chunks[-1]
            if last.p_yes is not None and last.p_yes > self.cfg.stop_threshold:
                s.end_reason = "stop"
            elif last.eos and last.p_yes is None:
                s.end_reason = "eos"
            elif len(s.chunks) >= self.cfg.max_steps:
                s.end_reason = "max_steps"
            elif last.eos:
                self.write_on(s)

    def write_on(self, state: FlowState) -> None:
        """Let the Answer LLM write on after the flow's last chunk: an end-of-turn token ending it is dropped.

        The chunk keeps ``eos``, so the model calls do not let the next chunk start with end-of-turn
        (``hf_calls._WriteOn``): greedy decoding would end the turn again at once.
        """
        last = state.chunks[-1] if state.chunks else None
        if last is not None and last.token_ids and last.token_ids[-1] in self.eos_ids:
            last.token_ids = last.token_ids[:-1]

    def run(self, states: Iterable[FlowState]) -> Iterator[FlowState]:
        """Run flows to the end, keeping up to batch_size active; yield each as it finishes."""
        pending = collections.deque(states)
        active: list[FlowState] = []
        while pending or active:
            while pending and len(active) < self.cfg.batch_size:
                s = pending.popleft()
                if s.done:
                    yield s
                else:
                    active.append(s)
            if not active:
                continue
            self.step(active)
            for s in active:
                if s.done:
                    yield s
            active = [s for s in active if not s.done]

    def branch(self, state: FlowState, n_chunks: int) -> FlowState:
        """A new unfinished flow on the same problem from the first ``n_chunks`` chunks.

        It writes on after them, even where the Answer LLM had ended its turn (the "continue"
        counterfactual of a flow its Stop LLM ended there, with ``stop_at_eos``).
        """
        b = replace(state, chunks=[replace(c) for c in state.chunks[:n_chunks]], end_reason=None)
        self.write_on(b)
        return b

    def trace(self, state: FlowState) -> Trace:
        p = state.problem
        completion = self.completion(state)
        g = grading.grade(completion, p.gold, p.dataset)
        return Trace(
            problem_id=p.id,
            dataset=p.dataset,
            gold=p.gold,
            chunks=[{"text": c.text, "n_tokens": len(c.token_ids), "p_yes": c.p_yes} for c in state.chunks],
            end_reason=state.end_reason,
            completion=completion,
            extracted=g.extracted,
            correct=g.correct,
            n_tokens=len(state.answer_ids()),
        )

    def solve(self, problems: Iterable[Problem]) -> Iterator[Trace]:
        """Traces of the problems, in the order the flows finish (seeded once per call)."""
        torch.manual_seed(self.cfg.seed)
        for state in self.run(FlowState(p) for p in problems):
            yield self.trace(state)
