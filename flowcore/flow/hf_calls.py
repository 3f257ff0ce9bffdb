"""The two LLM calls of the flow on a transformers/peft model: Answer chunks and Stop judgements.

``ModelCalls`` is the part of ``FlowEngine`` that touches the model (see ``flowcore.flow.engine``'s
docstring for the batching, KV reuse and compaction it implements); the flow's logic lives in
``FlowEngine``, which inherits these calls.
"""
from __future__ import annotations

import contextlib
import time
from typing import Iterator

import torch
from transformers import DynamicCache, LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from flowcore import adapters
from flowcore.flow.state import Chunk, FlowConfig, FlowState, KVPrefix
from flowcore.flow.text import FlowText

PASS_ROWS = 8  # (ours) rows per prompt-encoding pass (Stop LLM, Answer prefill), grouped by length
# (ours) compaction: a generate call ends once at most this fraction of its rows are still decoding and
# at least COMPACT_MIN_LEFT tokens of the chunk remain; the rest go on in a smaller call from their caches
COMPACT_BELOW = 0.5
COMPACT_MIN_LEFT = 16


def length_groups(seqs: list[list[int]], rows: int) -> Iterator[list[int]]:
    """Indices of ``seqs`` in groups of at most ``rows``, shortest first (little padding inside a group)."""
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    for start in range(0, len(order), rows):
        yield order[start:start + rows]


class _FewRowsLeft(StoppingCriteria):
    """Ends a ``generate`` call for compaction: once at most ``COMPACT_BELOW`` of its rows are still
    decoding (no eos among their new tokens) and at least ``COMPACT_MIN_LEFT`` tokens of the budget remain."""

    def __init__(self, width: int, budget: int, eos_ids: list[int]):
        self.width, self.budget, self.eos = width, budget, torch.tensor(eos_ids)

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        new = input_ids[:, self.width:]
        decoding = int((~torch.isin(new, self.eos.to(new.device)).any(dim=1)).sum())
        stop = (0 < decoding <= COMPACT_BELOW * len(new)) and self.budget - new.shape[1] >= COMPACT_MIN_LEFT
        return torch.full((len(new),), stop, dtype=torch.bool, device=new.device)


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

    def __init__(self, model, tokenizer, config: FlowConfig | None = None, reuse_kv: bool = True):
        self.model = model
        self.reuse_kv = reuse_kv  # keep each flow's Answer KV cache between its chunks (see _generate)
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

    def _prefill(self, seqs: list[list[int]], role: str | None) -> list[KVPrefix]:
        """Answer-LLM caches (``role``) of every sequence but its last token (length-sorted groups, like stop_probs)."""
        caches: list[KVPrefix | None] = [None] * len(seqs)
        for group in length_groups(seqs, PASS_ROWS):
            ids, mask = self._pad_left([seqs[i][:-1] for i in group])
            positions = (mask.cumsum(-1) - 1).clamp(min=0)  # as generate numbers left-padded rows
            with self._inference(role):
                pkv = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                                 logits_to_keep=1).past_key_values
            width = ids.shape[1]
            for j, i in enumerate(group):
                n = len(seqs[i]) - 1
                caches[i] = KVPrefix(n, role, [(layer.keys[j:j + 1, :, width - n:].clone(),
                                                layer.values[j:j + 1, :, width - n:].clone()) for layer in pkv.layers])
        return caches

    def _batch_cache(self, caches: list[KVPrefix | None], c: int):
        """One DynamicCache of ``c`` columns holding each row's cache right-aligned (pads, and rows
        without a cache, are zeros for the attention mask to hide)."""
        some = next(kv for kv in caches if kv is not None)
        data = []
        for layer in range(len(some.layers)):
            k0 = some.layers[layer][0]
            keys = k0.new_zeros((len(caches), k0.shape[1], c, k0.shape[3]))
            values = torch.zeros_like(keys)
            for i, kv in enumerate(caches):
                if kv is not None and kv.n:
                    keys[i, :, c - kv.n:] = kv.layers[layer][0][0]
                    values[i, :, c - kv.n:] = kv.layers[layer][1][0]
            data.append((keys, values))
        return DynamicCache(ddp_cache_data=data, config=self.model.config)

    def _generate(self, seqs: list[list[int]], temperature: float, caches: list[KVPrefix | None] | None,
                  role: str | None,
                  write_on: list[bool] | None = None) -> tuple[list[list[int]], list[KVPrefix | None]]:
        """One chunk for each sequence from the Answer adapter ``role``, trimmed after the first eos; and,
        with ``reuse_kv``, each row's cache after it (all its tokens but the last).

        KV reuse: a flow's earlier chunks are not re-encoded. Every row enters with
        the cache of all its tokens but the last (rows without one get it from one
        prefill pass), so the call encodes one new token per row and then decodes.

        Compaction (with ``reuse_kv``): ``generate`` decodes a row that has ended until
        the call ends, so once at most ``COMPACT_BELOW`` of the rows are still decoding
        the call stops and those rows go on in a new, smaller call from their caches.
        """
        n, seqs = len(seqs), list(seqs)
        caches = list(caches or [None] * n)
        chunks: list[list[int]] = [[] for _ in range(n)]
        todo, budget = list(range(n)), self.cfg.chunk_size
        while todo:
            first = budget == self.cfg.chunk_size
            rows, kvs, used = self._generate_call([seqs[i] for i in todo], temperature,
                                                  [caches[i] for i in todo], budget, role, write_on if first else None)
            budget -= used
            left = []
            for i, row, kv in zip(todo, rows, kvs):
                chunks[i] += row
                caches[i] = kv
                if budget > 0 and not (row and row[-1] in self.eos_ids):
                    seqs[i] = seqs[i] + row
                    left.append(i)
            todo = left
        return chunks, caches

    def _generate_call(self, seqs: list[list[int]], temperature: float, caches: list[KVPrefix | None],
                       budget: int, role: str | None,
                       write_on: list[bool] | None = None) -> tuple[list[list[int]], list[KVPrefix | None], int]:
        """One ``generate`` call of at most ``budget`` new tokens: each row's tokens (trimmed after
        the first eos), its cache (with ``reuse_kv``), and how many positions the call decoded.
        ``write_on[i]``: row i's first token may not be end-of-turn (``_WriteOn``)."""
        t0 = time.perf_counter()
        ids, mask = self._pad_left(seqs)
        width = ids.shape[1]
        kwargs = {}
        if self.reuse_kv:
            caches = list(caches)
            stale = [i for i, c in enumerate(caches) if c is None or c.role != role or c.n != len(seqs[i]) - 1]
            for i, c in zip(stale, self._prefill([seqs[i] for i in stale], role) if stale else []):
                caches[i] = c
            kwargs = {"past_key_values": self._batch_cache(caches, width - 1), "return_dict_in_generate": True}
            if len(seqs) > 1:
                kwargs["stopping_criteria"] = StoppingCriteriaList([_FewRowsLeft(width, budget, self.eos_ids)])
        if write_on and any(write_on):
            kwargs["logits_processor"] = LogitsProcessorList([_WriteOn(write_on, width, self.eos_ids)])
        sample = temperature > 0
        with self._inference(role):
            out = self.model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=budget,
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
        sequences = out.sequences if self.reuse_kv else out
        used = sequences.shape[1] - width
        self.stats["decoded_row_tokens"] += sequences.shape[0] * used
        chunks, new_caches = [], []
        for i, row in enumerate(sequences[:, width:].tolist()):
            cut = next((j + 1 for j, t in enumerate(row) if t in self.eos_ids), len(row))
            chunks.append(row[:cut])
            self.stats["generated_tokens"] += cut
            if self.reuse_kv:  # row i's real positions: [width - len(seq), width + cut - 1)
                start, n = width - len(seqs[i]), len(seqs[i]) + cut - 1
                new_caches.append(KVPrefix(n, role, [
                    (layer.keys[i:i + 1, :, start:start + n].clone(), layer.values[i:i + 1, :, start:start + n].clone())
                    for layer in out.past_key_values.layers]))
            else:
                new_caches.append(None)
        return chunks, new_caches, used

    def generate_chunks(self, states: list[FlowState], avoid: list[list[int] | None] | None = None,
                        temperature: float | None = None, max_tries: int = 4) -> list[Chunk]:
        """Next chunk of each flow. ``avoid[i]``: token ids the new chunk must differ from
        (rollouts); rows that reproduce it are resampled up to ``max_tries`` times."""
        temperature = self.cfg.temperature if temperature is None else temperature
        seqs = [self.prompt_ids(s.problem) + s.answer_ids() for s in states]
        new: list[list[int] | None] = [None] * len(states)
        kvs: list[KVPrefix | None] = [None] * len(states)
        todo = list(range(len(states)))
        for _ in range(max_tries):
            made = self._chunks([seqs[i] for i in todo], [states[i] for i in todo], temperature)
            for i, (chunk_ids, kv) in zip(todo, made):
                new[i], kvs[i] = chunk_ids, kv
            todo = [i for i in todo if avoid and avoid[i] is not None and new[i] == avoid[i]]
            if not todo:
                break
        return [
            Chunk(ids, self.decode(ids), eos=bool(ids) and ids[-1] in self.eos_ids, kv=kv) for ids, kv in zip(new, kvs)
        ]

    def _chunks(self, seqs: list[list[int]], states: list[FlowState],
                temperature: float) -> list[tuple[list[int], KVPrefix | None]]:
        """One new chunk per sequence and its Answer cache after it: ``batch_size`` rows of one Answer adapter
        per call (a flow's own ``answer_role``, else the config's), each from its flow's cache (the part of
        ``generate_chunks`` an engine on another backend replaces)."""
        by_role: dict[str | None, list[int]] = {}
        for i, s in enumerate(states):
            by_role.setdefault(s.answer_role or self.cfg.answer_role, []).append(i)
        made: list = [None] * len(seqs)
        for role, rows in by_role.items():
            for start in range(0, len(rows), self.cfg.batch_size):
                part = rows[start:start + self.cfg.batch_size]
                ids, kvs = self._generate([seqs[i] for i in part], temperature, [states[i].cache for i in part], role,
                                          [states[i].writes_on for i in part])
                for i, row in zip(part, zip(ids, kvs)):
                    made[i] = row
        return made

    def _stop_prefix(self, state: FlowState, ids: list[int]) -> KVPrefix | None:
        """The part of the flow's Stop cache that ``ids`` starts with (at least one token left to encode)."""
        c = state.stop_cache
        if not self.reuse_kv or c is None or c.role != self.cfg.stop_role:
            return None
        n = 0
        limit = min(c.n, len(ids) - 1)
        while n < limit and c.ids[n] == ids[n]:
            n += 1
        return c.truncate(n) if n else None

    def stop_probs(self, states: list[FlowState]) -> list[float]:
        """P(Yes) normalised over {Yes, No} at the Stop LLM's first answer token, batched.

        With ``reuse_kv`` each row encodes only what its Stop cache does not hold, and the
        flow keeps the cache of its whole prompt for the next decision.
        """
        enc = [self.stop_prompt_ids(s.problem, s.answer_ids()) for s in states]
        caches = [self._stop_prefix(s, ids) for s, ids in zip(states, enc)]
        new = [ids[c.n if c else 0:] for ids, c in zip(enc, caches)]
        # one forward per group of similar lengths: a prompt pass is compute-bound, so small groups cost
        # nothing, while padding every row to the batch's longest would (up to several-fold)
        t0 = time.perf_counter()
        probs = [0.0] * len(enc)
        for group in length_groups(new, min(self.cfg.batch_size, PASS_ROWS)):
            logits, kv = self._stop_pass([new[i] for i in group], [caches[i] for i in group])
            pair = logits[:, [self.yes_id, self.no_id]].float()
            for j, (i, p) in enumerate(zip(group, torch.softmax(pair, dim=-1)[:, 0].tolist())):
                probs[i] = p
                if kv is not None:  # the cache of the whole prompt: the old prefix + the new tokens
                    m, old = len(new[i]), caches[i]
                    layers = [(k[j:j + 1, :, k.shape[2] - m:], v[j:j + 1, :, v.shape[2] - m:]) for k, v in kv]
                    if old is not None:
                        layers = [(torch.cat([ok, k], 2), torch.cat([ov, v], 2))
                                  for (ok, ov), (k, v) in zip(old.layers, layers)]
                    else:
                        layers = [(k.clone(), v.clone()) for k, v in layers]
                    states[i].stop_cache = KVPrefix(len(enc[i]), self.cfg.stop_role, layers, enc[i])
            self.stats["stop_calls"] += 1
        self.stats["stop_tokens"] += sum(map(len, enc))
        self.stats["stop_cached_tokens"] += sum(c.n for c in caches if c is not None)
        self.stats["stop_seconds"] += time.perf_counter() - t0
        return probs

    def _stop_pass(self, seqs: list[list[int]], caches: list[KVPrefix | None]):
        """Last-position logits of one Stop LLM pass over rows laid out as [pad, cache, pad, new tokens],
        and (with ``reuse_kv``) the pass's keys/values per layer."""
        c = max((kv.n for kv in caches if kv is not None), default=0)
        ids, new_mask = self._pad_left(seqs)
        n = ids.shape[1]
        mask = torch.zeros((len(seqs), c + n), dtype=torch.long, device=ids.device)
        mask[:, c:] = new_mask
        positions = torch.zeros_like(ids)
        for i, (s, kv) in enumerate(zip(seqs, caches)):
            start = kv.n if kv is not None else 0
            mask[i, c - start:c] = 1
            positions[i, n - len(s):] = torch.arange(start, start + len(s))
        kwargs = {"past_key_values": self._batch_cache(caches, c)} if c else {}
        with self._inference(self.cfg.stop_role):
            out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=self.reuse_kv,
                             logits_to_keep=1, **kwargs)
        kv = [(layer.keys, layer.values) for layer in out.past_key_values.layers] if self.reuse_kv else None
        return out.logits[:, -1, :], kv

    # ------------------------------------------------------------ the flow
