"""The Flow: Answer LLM writes a chunk, Stop LLM says Yes/No, repeat (FLOW-DPO.md section 1).

Both roles are the same base model with LoRA adapters ``answer`` and ``stop``
(``flowcore.adapters``); a model without them runs both roles on the base.

Batching: many flows advance in lockstep. Each ``step`` generates one chunk
for every active flow in ONE ``generate`` call (left padding), then asks the
Stop LLM about all of them (forward passes over groups of ``STOP_ROWS`` rows of
similar length, so short prompts are not padded to the longest). ``run`` keeps the batch full:
a finished flow drops out and the next pending problem takes its slot, so a
test set runs at batch throughput. The Answer LLM's input is the prompt's
token ids plus the chunks' own token ids, so continuing a flow never
re-tokenises text (a chunk boundary inside a word changes nothing).

A flow ends when the Stop LLM's P(Yes) > ``stop_threshold`` (paper: 0.5),
when the Answer LLM emits end-of-turn (ours), or after ``max_steps`` chunks.

The single-model zero-shot baseline is the same loop with the Stop LLM
switched off and the base model answering (``zero_shot_config``): it
generates to end-of-turn or ``chunk_size * max_steps`` tokens, the chunking
being only a scheduling detail (greedy output is the same as one
``generate`` call of that length).
"""
from __future__ import annotations

import collections
import contextlib
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Iterable, Iterator

import torch

from . import adapters, grading, prompts
from .data import Problem


STOP_ROWS = 8  # (ours) Stop LLM rows per forward pass, grouped by length (see FlowEngine.stop_probs)


@dataclass
class FlowConfig:
    """Settings of the flow. Paper values: chunk_size 160, max_steps 6, stop at P(Yes) > 0.5."""

    chunk_size: int = 160  # max tokens per Answer chunk (paper: 160; "mere dozens" also work)
    max_steps: int = 6  # max chunks per flow (paper: 6)
    temperature: float = 0.0  # 0 = greedy (ours, for evaluation); rollouts sample with > 0
    top_p: float = 1.0
    stop_threshold: float = 0.5  # stop when P(Yes) over {Yes, No} exceeds this (paper)
    batch_size: int = 16  # flows advanced together in one generate call (ours)
    seed: int = 0
    use_stop: bool = True  # False: no Stop LLM (single-model zero-shot)
    answer_role: str | None = "answer"  # adapter for the Answer LLM (None: base model)
    stop_role: str | None = "stop"  # adapter for the Stop LLM (None: base model)


def zero_shot_config(cfg: FlowConfig) -> FlowConfig:
    """The single-model zero-shot baseline with the same token budget and decoding."""
    return replace(cfg, use_stop=False, answer_role=None, stop_role=None)


@dataclass
class Chunk:
    token_ids: list[int]
    text: str
    p_yes: float | None = None  # Stop LLM's P(Yes) after this chunk (None: not asked)
    eos: bool = False  # the Answer LLM ended its turn inside this chunk


@dataclass
class FlowState:
    """One flow in progress; ``chunks`` grows by one per step."""

    problem: Problem
    chunks: list[Chunk] = field(default_factory=list)
    end_reason: str | None = None  # "stop" | "eos" | "max_steps"

    @property
    def done(self) -> bool:
        return self.end_reason is not None

    def answer_ids(self) -> list[int]:
        return [t for c in self.chunks for t in c.token_ids]


@dataclass
class Trace:
    """A finished flow, graded: what is written to traces.jsonl."""

    problem_id: str
    dataset: str
    gold: str
    chunks: list[dict]  # {"text", "n_tokens", "p_yes"}
    end_reason: str
    completion: str
    extracted: str | None
    correct: bool
    n_tokens: int

    def to_dict(self) -> dict:
        return asdict(self)


class FlowEngine:
    """Runs flows for many problems at once on one model (with or without adapters)."""

    def __init__(self, model, tokenizer, config: FlowConfig | None = None):
        self.model, self.tok = model, tokenizer
        self.cfg = config or FlowConfig()
        self.yes_id, self.no_id = prompts.yes_no_ids(tokenizer)
        gen_eos = model.generation_config.eos_token_id
        gen_eos = gen_eos if isinstance(gen_eos, list) else [gen_eos]
        self.eos_ids = sorted({i for i in [tokenizer.eos_token_id, *gen_eos] if i is not None})
        self._prompt_ids: dict[str, list[int]] = {}
        self.stats = collections.Counter()  # generated_tokens, answer_calls, stop_calls, seconds

    # ------------------------------------------------------------ text

    def prompt_ids(self, problem: Problem) -> list[int]:
        key = problem.question
        if key not in self._prompt_ids:
            text = prompts.answer_prompt(self.tok, problem.question)
            self._prompt_ids[key] = self.tok(text, add_special_tokens=False).input_ids
        return self._prompt_ids[key]

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True)

    def completion(self, state: FlowState) -> str:
        return self.decode(state.answer_ids())

    # ------------------------------------------------------------ model calls

    def _pad_left(self, seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(s) for s in seqs)
        pad = self.tok.pad_token_id
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
            mask[i, width - len(s):] = 1
        device = getattr(self.model, "device", torch.device("cpu"))
        return ids.to(device), mask.to(device)

    @contextlib.contextmanager
    def _inference(self, role: str | None):
        """Eval mode (no LoRA dropout) as ``role``; the caller's train/eval mode is restored."""
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad(), adapters.use(self.model, role):
                yield
        finally:
            self.model.train(was_training)

    def _generate(self, seqs: list[list[int]], temperature: float) -> list[list[int]]:
        """One chunk for each sequence, in one generate call; trimmed after the first eos."""
        ids, mask = self._pad_left(seqs)
        sample = temperature > 0
        with self._inference(self.cfg.answer_role):
            out = self.model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=self.cfg.chunk_size,
                do_sample=sample,
                temperature=temperature if sample else None,
                top_p=self.cfg.top_p if sample else None,
                top_k=None,
                eos_token_id=self.eos_ids,
                pad_token_id=self.tok.pad_token_id,
            )
        self.stats["answer_calls"] += 1
        chunks = []
        for row in out[:, ids.shape[1]:].tolist():
            cut = next((i + 1 for i, t in enumerate(row) if t in self.eos_ids), len(row))
            chunks.append(row[:cut])
            self.stats["generated_tokens"] += cut
        return chunks

    def generate_chunks(self, states: list[FlowState], avoid: list[list[int] | None] | None = None,
                        temperature: float | None = None, max_tries: int = 4) -> list[Chunk]:
        """Next chunk of each flow. ``avoid[i]``: token ids the new chunk must differ from
        (rollouts); rows that reproduce it are resampled up to ``max_tries`` times."""
        temperature = self.cfg.temperature if temperature is None else temperature
        seqs = [self.prompt_ids(s.problem) + s.answer_ids() for s in states]
        new: list[list[int] | None] = [None] * len(states)
        todo = list(range(len(states)))
        for _ in range(max_tries):
            for start in range(0, len(todo), self.cfg.batch_size):
                rows = todo[start:start + self.cfg.batch_size]
                for i, ids in zip(rows, self._generate([seqs[i] for i in rows], temperature)):
                    new[i] = ids
            todo = [i for i in todo if avoid and avoid[i] is not None and new[i] == avoid[i]]
            if not todo:
                break
        return [
            Chunk(ids, self.decode(ids), eos=bool(ids) and ids[-1] in self.eos_ids) for ids in new
        ]

    def stop_probs(self, states: list[FlowState]) -> list[float]:
        """P(Yes) normalised over {Yes, No} at the Stop LLM's first answer token, batched."""
        enc = [self.tok(prompts.stop_prompt(self.tok, s.problem.question, self.completion(s)),
                        add_special_tokens=False).input_ids for s in states]
        # one forward per group of similar lengths: a prompt pass is compute-bound, so small groups cost
        # nothing, while padding every row to the batch's longest would (up to several-fold)
        order = sorted(range(len(enc)), key=lambda i: len(enc[i]))
        probs = [0.0] * len(enc)
        rows = min(self.cfg.batch_size, STOP_ROWS)
        for start in range(0, len(order), rows):
            group = order[start:start + rows]
            ids, mask = self._pad_left([enc[i] for i in group])
            with self._inference(self.cfg.stop_role):
                logits = self.model(input_ids=ids, attention_mask=mask, logits_to_keep=1).logits[:, -1, :]
            pair = logits[:, [self.yes_id, self.no_id]].float()
            for i, p in zip(group, torch.softmax(pair, dim=-1)[:, 0].tolist()):
                probs[i] = p
            self.stats["stop_calls"] += 1
        return probs

    # ------------------------------------------------------------ the flow

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
        """Set end_reason after the latest chunk: eos, then the Stop LLM, then max_steps."""
        ask = [s for s in states if not s.chunks[-1].eos] if self.cfg.use_stop else []
        for s, p in zip(ask, self.stop_probs(ask) if ask else []):
            s.chunks[-1].p_yes = p
        for s in states:
            last = s.chunks[-1]
            if last.eos:
                s.end_reason = "eos"
            elif last.p_yes is not None and last.p_yes > self.cfg.stop_threshold:
                s.end_reason = "stop"
            elif len(s.chunks) >= self.cfg.max_steps:
                s.end_reason = "max_steps"

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
