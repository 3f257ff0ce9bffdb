"""The flow's data: its settings (``FlowConfig``), a flow in progress (``FlowState`` of ``Chunk``s), and a
finished, graded flow (``Trace``)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from flowcore import results
from flowcore.data import Problem


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
    # (ours) also ask the Stop LLM after the chunk where the Answer LLM ended its turn: Yes ends the flow there,
    # No drops the end-of-turn token and the Answer LLM writes on (its next chunk may not start by ending the
    # turn again). Off: end-of-turn ends the flow unasked, so the Stop LLM only ever judges unfinished answers.
    stop_at_eos: bool = False

    def settings(self) -> dict:
        """The fields as results files record them (``results.recorded_settings``, ``ADDED_LATER``)."""
        return results.recorded_settings(self, ADDED_LATER)


ADDED_LATER = {"stop_at_eos": False}  # FlowConfig fields added after results were committed, with their defaults


def zero_shot_config(cfg: FlowConfig) -> FlowConfig:
    """The single-model zero-shot baseline with the same token budget and decoding."""
    return replace(cfg, use_stop=False, answer_role=None, stop_role=None)


@dataclass
class Chunk:
    token_ids: list[int]
    text: str
    p_yes: float | None = None  # Stop LLM's P(Yes) after this chunk (None: not asked)
    eos: bool = False  # the Answer LLM ended its turn inside this chunk (kept when stop_at_eos drops the token)


@dataclass
class FlowState:
    """One flow in progress; ``chunks`` grows by one per step."""

    problem: Problem
    chunks: list[Chunk] = field(default_factory=list)
    end_reason: str | None = None  # "stop" | "eos" | "max_steps"
    answer_role: str | None = None  # this flow's Answer adapter instead of the config's (the app's Compare)

    @property
    def done(self) -> bool:
        return self.end_reason is not None

    @property
    def writes_on(self) -> bool:
        """The last chunk ended the turn, yet the flow goes on (``stop_at_eos``: the Stop LLM said No): the next
        chunk may not start by ending it again."""
        return bool(self.chunks) and self.chunks[-1].eos

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
