"""Loading a model for the flow: resolve a name, choose dtype and device, load, prepare the tokenizer.

``load(model)`` takes an embedded model's name (fetched and converted once by
``flowcore.embedded``), a local directory, or a hub id (which needs a network),
passed to ``from_pretrained`` unchanged.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

from flowcore.cli import HelpFormatter

# the embedded models' names and errors are part of this module's API (``models.REGISTRY``, ...)
from flowcore.embedded import (  # noqa: F401
    DEFAULT_MODEL,
    REGISTRY,
    TEST_MODEL,
    EmbeddedModel,
    ModelError,
    cache_dir,
    converted_dir,
    ensure_model,
    fetch_gguf,
    fix_hint,
)


def resolve(model: str) -> str:
    """Registry name -> converted dir; existing path -> itself; anything else -> hub id."""
    if model in REGISTRY:
        return str(ensure_model(model))
    if Path(model).expanduser().exists():
        return str(Path(model).expanduser())
    return model


# ---------------------------------------------------------------- loading

DTYPE_ENV = "FLOWCORE_DTYPE"


def fast_dtype(device: torch.device | None = None) -> torch.dtype:
    """bf16 where the hardware computes it natively (GPU; CPU with AVX512-BF16 or AMX), else fp32.

    ``device``: where the model will run (None: the GPU if there is one). On a
    CPU without those instructions (e.g. AVX2-only) bf16 matmuls fall back
    to a slow path: measured 1 GFLOP/s vs 178 GFLOP/s for fp32 on a 2-core EPYC.
    ``$FLOWCORE_DTYPE`` (float32, bfloat16, float16) overrides the choice, for
    every command at once (the tests pin float32 so they behave alike on every CPU).
    """
    pinned = os.environ.get(DTYPE_ENV, "auto")
    if pinned != "auto":
        if DTYPES.get(pinned) is None:
            raise ModelError(f"${DTYPE_ENV}={pinned!r}: choose one of {', '.join(DTYPES)}")
        return DTYPES[pinned]
    on_gpu = torch.cuda.is_available() if device is None else device.type == "cuda"
    if on_gpu:
        return torch.bfloat16
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return torch.float32
    return torch.bfloat16 if ("avx512_bf16" in flags or "amx_bf16" in flags) else torch.float32


DTYPES = {"auto": None, "bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}


DEVICES = ("auto", "cpu", "cuda")  # the --device choices (cuda:N is accepted too)
DTYPE_TRADEOFF = ("on AVX512-BF16 CPUs bf16 is ~2x fp32 for batched work, but single-row decoding measured 5.5x "
                  "slower than fp32: pass float32 for one problem at a time")
DTYPE_HELP = ("model dtype (default auto: bf16 on GPUs and AVX512-BF16/AMX CPUs, else fp32). Trade-off: "
              + DTYPE_TRADEOFF)
DEVICE_HELP = "where the model runs: auto (the GPU when torch sees one, else the CPU), cpu or cuda"


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto``/None: the GPU when torch sees one, else the CPU; ``cpu``; ``cuda`` or ``cuda:N``.

    A GPU asked for where torch sees none is a ModelError that says what to do,
    raised before any weights are read (not a crash deep inside torch).
    """
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ModelError(f"unknown device {device!r}: choose auto, cpu or cuda (cuda:N for one GPU)") from e
    if dev.type not in ("cpu", "cuda"):
        raise ModelError(f"device {device!r} is not supported: choose auto, cpu or cuda (cuda:N for one GPU)")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device {str(device)!r} asked for, but torch sees no CUDA device (torch {torch.__version__}, "
                         f"CUDA build: {torch.version.cuda or 'none'}). Fix: pass --device cpu (or auto), or run "
                         "where nvidia-smi lists a GPU with a CUDA build of torch (check CUDA_VISIBLE_DEVICES).")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ModelError(f"device {str(device)!r}: torch sees {torch.cuda.device_count()} CUDA device(s). "
                         "Fix: pass --device cuda (the first) or an index below that count.")
    return dev


def load(model: str = DEFAULT_MODEL, dtype: torch.dtype | str | None = None,
         device: str | torch.device | None = "auto"):
    """Load (model, tokenizer) for generation: left padding, a pad token, eos set.

    ``device``: ``resolve_device`` (auto: the GPU when there is one). ``dtype``
    None/"auto" picks ``fast_dtype`` for that device: bf16 on a GPU or an
    AVX512-BF16/AMX CPU (~2x fp32 for batched work there), else fp32. Trade-off:
    on AVX512-BF16 CPUs single-row decoding measured 5.5x slower in bf16 than
    fp32, so pass "float32" for one problem at a time.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = resolve_device(device)
    if isinstance(dtype, str):
        dtype = DTYPES[dtype]
    dtype = dtype or fast_dtype(device)
    path = resolve(model)
    t0 = time.time()
    try:
        tok = AutoTokenizer.from_pretrained(path)
        net = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except Exception as e:  # OSError, ValueError, SafetensorError, ...: all get the same clear message
        hint = fix_hint(model) if model in REGISTRY else (
            "Pass an embedded model name "
            f"({', '.join(REGISTRY)}), a local model directory, or a hub id with a network."
        )
        raise ModelError(f"could not load model {model!r} from {path}: {e}\n{hint}") from e
    prepare_tokenizer(tok)
    net.generation_config.pad_token_id = tok.pad_token_id
    net.to(device)
    net.eval()
    print(f"[flowcore] loaded {model} ({sum(p.numel() for p in net.parameters())/1e6:.0f}M params, "
          f"{dtype}, {device}) in {time.time() - t0:.1f}s", file=sys.stderr)
    return net, tok


def prepare_tokenizer(tok) -> None:
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token


def main_model_path(argv: list[str]) -> int:
    """`python -m flowcore model-path [NAME]`: print the converted directory (fetching if needed)."""
    p = argparse.ArgumentParser(prog="python -m flowcore model-path", formatter_class=HelpFormatter,
                                description="Fetch, verify and convert an embedded model once; print its "
                                            "directory. A local directory or a hub id is printed as it is.")
    p.add_argument("name", metavar="NAME", nargs="?", default=DEFAULT_MODEL,
                   help=f"embedded model (default: %(default)s), one of: {', '.join(REGISTRY)}")
    args = p.parse_args(argv)
    try:
        print(resolve(args.name))
    except ModelError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0
