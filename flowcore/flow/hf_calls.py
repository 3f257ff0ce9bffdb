"""The two LLM calls of the flow on a transformers/peft model: Answer chunks and Stop judgements.

``ModelCalls`` is the part of ``FlowEngine`` that touches the model, and the simple reference beside
the vLLM engine (``flowcore.flow.vllm_engine``, the default wherever vLLM is installed). It runs where
vLLM does not (the Space, a GPU machine without vLLM, the tests' tiny models) and the DPO steps'
peft model. Every call encodes its whole input: a flow's prompt and chunks so far (token ids, never
re-tokenised) for the Answer LLM, the Stop prompt for the Stop LLM; nothing is cached between calls.
(Until 2026-11-30 this engine kept each flow's key/value caches between chunks and compacted its
generate calls; vLLM's paged attention and prefix caching do that now, tests/test_vllm.py holds the
two engines to the same flows.)
"""
from __future__ import annotations

import contextlib
import time
from typing import Iterator

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from flowcore import adapters
from flowcore.flow.state import Chunk, FlowConfig, FlowState
from flowcore.flow.text import FlowText

PASS_ROWS = 8  # (ours) rows per Stop LLM pass, grouped by length (little padding inside a group)


def length_groups(seqs: list[list[int]], rows: int) -> Iterator[list[int]]:
    """Indices of ``seqs`` in groups of at most ``rows``, shortest first (little padding inside a group)."""
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    for start in range(0, len(order), rows):
        yield order[start:start + rows]


class _WriteOn(LogitsProcessor):
    """Bans end-of-turn as the first new token of the rows whose flow writes on where the Answer LLM had ended
    its turn (``FlowConfig.stop_at_eos``, ``FlowEngine.write_on``): greedy decoding would end it again at once."""

    def __init__(self, rows: list[bool], width: int, eos_ids: list[int]):
        self.rows, self.width, self.eos = torch.tensor(rows).nonzero()[:, 0], width, torch.tensor(eos_ids)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if input_ids.shape[1] == self.width:
            scores = scores.clone()
            scores[self.rows.to(scores.device)[:, None], self.eos.to(scores.device)] = -float("inf")
        return scores


class ModelCalls(FlowText):
    """Answer chunks and Stop probabilities for many flows at once, on one model (with or without adapters)."""

    engine_name = "hf"

    @property
    def dtype(self):
        return self.model.dtype

    def __init__(self, model, tokenizer, config: FlowConfig | None = None):
        self.model = model
        gen_eos = model.generation_config.eos_token_id
        self._init_flow(tokenizer, config, gen_eos if isinstance(gen_eos, list) else [gen_eos])

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

    def _generate_call(self, seqs: list[list[int]], temperature: float, role: str | None,
                       write_on: list[bool] | None = None) -> list[list[int]]:
        """One left-padded ``generate`` call of at most ``chunk_size`` new tokens from the Answer adapter
        ``role``: each row's tokens, trimmed after the first eos. ``write_on[i]``: row i's first token may
        not be end-of-turn (``_WriteOn``)."""
        t0 = time.perf_counter()
        ids, mask = self._pad_left(seqs)
        width = ids.shape[1]
        kwargs = {}
        if write_on and any(write_on):
            kwargs["logits_processor"] = LogitsProcessorList([_WriteOn(write_on, width, self.eos_ids)])
        sample = temperature > 0
        with self._inference(role):
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
                **kwargs,
            )
        self.stats["answer_calls"] += 1
        self.stats["answer_seconds"] += time.perf_counter() - t0
        self.stats["decoded_row_tokens"] += out.shape[0] * (out.shape[1] - width)
        chunks = []
        for row in out[:, width:].tolist():
            cut = next((j + 1 for j, t in enumerate(row) if t in self.eos_ids), len(row))
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
            made = self._chunks([seqs[i] for i in todo], [states[i] for i in todo], temperature)
            for i, chunk_ids in zip(todo, made):
                new[i] = chunk_ids
            todo = [i for i in todo if avoid and avoid[i] is not None and new[i] == avoid[i]]
            if not todo:
                break
        return [Chunk(ids, self.decode(ids), eos=bool(ids) and ids[-1] in self.eos_ids) for ids in new]

    def _chunks(self, seqs: list[list[int]], states: list[FlowState], temperature: float) -> list[list[int]]:
        """One new chunk per sequence: ``batch_size`` rows of one Answer adapter per call (a flow's own
        ``answer_role``, else the config's) (the part of ``generate_chunks`` an engine on another backend
        replaces)."""
        by_role: dict[str | None, list[int]] = {}
        for i, s in enumerate(states):
            by_role.setdefault(s.answer_role or self.cfg.answer_role, []).append(i)
        made: list = [None] * len(seqs)
        for role, rows in by_role.items():
            for start in range(0, len(rows), self.cfg.batch_size):
                part = rows[start:start + self.cfg.batch_size]
                for i, ids in zip(part, self._generate_call([seqs[i] for i in part], temperature, role,
                                                            [states[i].writes_on for i in part])):
                    made[i] = ids
        return made

    def stop_probs(self, states: list[FlowState]) -> list[float]:
        """P(Yes) normalised over {Yes, No} at the Stop LLM's first answer token, batched: one forward pass
        per group of similar lengths (a prompt pass is compute-bound, so small groups cost nothing, while
        padding every row to the batch's longest would, up to several-fold)."""
        enc = [self.stop_prompt_ids(s.problem, s.answer_ids()) for s in states]
        t0 = time.perf_counter()
        probs = [0.0] * len(enc)
        for group in length_groups(enc, min(self.cfg.batch_size, PASS_ROWS)):
            ids, mask = self._pad_left([enc[i] for i in group])
            positions = (mask.cumsum(-1) - 1).clamp(min=0)  # as generate numbers left-padded rows
            with self._inference(self.cfg.stop_role):
                logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False,
                                    logits_to_keep=1).logits[:, -1, :]
            pair = logits[:, [self.yes_id, self.no_id]].float()
            for i, p in zip(group, torch.softmax(pair, dim=-1)[:, 0].tolist()):
                probs[i] = p
            self.stats["stop_calls"] += 1
        self.stats["stop_tokens"] += sum(map(len, enc))
        self.stats["stop_seconds"] += time.perf_counter() - t0
        return probs
