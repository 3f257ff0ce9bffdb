"""Embedded models (join + verify, clear errors), loading (dtype, device), and the real smollm2 path (integration)."""
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from flowcore import embedded, models
from flowcore.data import Problem
from flowcore.flow.engine import FlowConfig, FlowEngine

ROOT = Path(__file__).resolve().parents[1]


def _fake_spec(sha256: str, size: int) -> embedded.EmbeddedModel:
    # "parts" taken from an installed package, the way an installed model package is found
    import tqdm

    inner = "tqdm/__init__.py"
    return embedded.EmbeddedModel("fake", (("tqdm", tqdm.__version__, inner), ("tqdm", tqdm.__version__, inner)),
                                "fake.gguf", size, sha256)


def test_parts_are_joined_in_order_and_verified(tmp_path):
    import tqdm

    part = (Path(tqdm.__file__)).read_bytes()
    joined = part + part
    spec = _fake_spec(hashlib.sha256(joined).hexdigest(), len(joined))
    out = embedded.fetch_gguf(spec, tmp_path)
    assert out.read_bytes() == joined


def test_checksum_mismatch_is_one_clear_error(tmp_path):
    import tqdm

    size = 2 * len(Path(tqdm.__file__).read_bytes())
    with pytest.raises(models.ModelError, match=r"expected .* Fix:"):
        embedded.fetch_gguf(_fake_spec("0" * 64, size), tmp_path)
    assert not (tmp_path / "fake.gguf").exists()  # a bad file is not left behind


def test_unknown_model_name_and_bad_path_are_clear_errors(tmp_path):
    with pytest.raises(models.ModelError, match="unknown embedded model"):
        models.ensure_model("gpt-5")
    bad = tmp_path / "not-a-model"
    bad.mkdir()
    with pytest.raises(models.ModelError, match="could not load model"):
        models.load(str(bad))


def test_models_keeps_the_embedded_names_and_both_modules_stay_short():
    """STYLE.md: one module, one job (~300 lines at most); ``models.X`` still names the embedded registry's X."""
    for name in ("DEFAULT_MODEL", "TEST_MODEL", "REGISTRY", "EmbeddedModel", "ModelError", "ensure_model",
                 "converted_dir", "fetch_gguf"):
        assert getattr(models, name) is getattr(embedded, name)
    for module in (models, embedded):
        assert len(Path(module.__file__).read_text().splitlines()) <= 300, module.__name__


def test_fast_dtype_is_a_float_type(monkeypatch):
    monkeypatch.delenv("FLOWCORE_DTYPE")  # auto: by the hardware
    assert models.fast_dtype() in (torch.float32, torch.bfloat16)


def test_flowcore_dtype_pins_the_choice(monkeypatch):
    monkeypatch.setenv("FLOWCORE_DTYPE", "bfloat16")
    assert models.fast_dtype() == torch.bfloat16
    monkeypatch.setenv("FLOWCORE_DTYPE", "float32")
    assert models.fast_dtype() == torch.float32
    monkeypatch.setenv("FLOWCORE_DTYPE", "fp8")
    with pytest.raises(models.ModelError, match="FLOWCORE_DTYPE='fp8'.*float32"):
        models.fast_dtype()


@pytest.mark.integration
def test_smollm2_fetch_convert_load_and_flow(smol):
    model, tok = smol
    path = models.converted_dir(models.TEST_MODEL)
    meta = json.loads((path / "flowcore_model.json").read_text())
    assert meta["gguf_sha256"] == models.REGISTRY[models.TEST_MODEL].sha256
    assert (path / "model.safetensors").is_file() and tok.eos_token == "<|im_end|>"
    problems = [Problem(f"q{i}", "gsm8k", q, g, "") for i, (q, g) in
                enumerate([("What is 2 + 3?", "5"), ("What is 10 - 4?", "6"), ("What is 3 * 3?", "9")])]
    engine = FlowEngine(model, tok, FlowConfig(chunk_size=24, max_steps=2, batch_size=3))
    traces = list(engine.solve(problems))
    assert sorted(t.problem_id for t in traces) == ["q0", "q1", "q2"]
    for t in traces:
        assert t.n_tokens > 0 and t.completion.strip() and t.end_reason in ("stop", "eos", "max_steps")
        assert all(c["p_yes"] is None or 0 <= c["p_yes"] <= 1 for c in t.chunks)


@pytest.mark.integration
def test_model_path_command_prints_the_converted_dir(smol):
    out = subprocess.run([sys.executable, "-m", "flowcore", "model-path", models.TEST_MODEL],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == str(models.converted_dir(models.TEST_MODEL))


@pytest.mark.integration
def test_corrupt_converted_model_gives_a_fix_hint(smol, tmp_path, monkeypatch):
    import shutil

    real = models.converted_dir(models.TEST_MODEL)
    monkeypatch.setenv("FLOWCORE_CACHE", str(tmp_path))
    damaged = models.converted_dir(models.TEST_MODEL)
    shutil.copytree(real, damaged)
    (damaged / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(models.ModelError, match="Fix:"):
        models.load(models.TEST_MODEL)


# ---------------------------------------------------------------- --device


def test_device_auto_cpu_and_cuda_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert models.resolve_device("auto") == torch.device("cpu") == models.resolve_device("cpu")
    for asked in ("cuda", "cuda:1"):
        with pytest.raises(models.ModelError, match=r"no CUDA device.*Fix: pass --device cpu"):
            models.resolve_device(asked)
    with pytest.raises(models.ModelError, match="auto, cpu or cuda"):
        models.resolve_device("tpu")


def test_load_honours_the_device_and_refuses_cuda_before_reading_weights(monkeypatch):
    import tinyflow

    net, _ = models.load(tinyflow.taught_dir(), "float32", device="cpu")
    assert net.device.type == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(models.ModelError, match="Fix: pass --device cpu"):
        models.load("no-such-model-dir-or-hub-id", device="cuda")  # the device is checked first: no hub attempt


def _capture_load(monkeypatch, module):
    """Replace ``module.models.load`` by one that records its device and loads the tiny taught model."""
    import tinyflow

    calls = []

    def load(model, dtype=None, device="auto"):
        calls.append(device)
        return real_load(tinyflow.taught_dir(), "float32", device="cpu")

    real_load = models.load
    monkeypatch.setattr(module.models, "load", load)
    return calls


def test_lm_eval_flow_model_honours_device(monkeypatch, caplog):
    from flowcore.eval import lm_eval_model
    from flowcore.eval.lm_eval_model import FlowLM

    real_load = models.load
    calls = _capture_load(monkeypatch, lm_eval_model)
    lm = FlowLM(pretrained="tiny", device="cpu")
    assert calls[-1] == "cpu" and lm.device.type == "cpu"
    # lm-eval's CLI passes its own --device (default cuda:0) next to model_args: device in model_args wins
    FlowLM.create_from_arg_string("pretrained=tiny,device=cpu", {"device": "cuda:0", "batch_size": 2})
    assert calls[-1] == "cpu"
    FlowLM.create_from_arg_obj({"pretrained": "tiny"}, {"device": "cpu", "batch_size": None})
    assert calls[-1] == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    # cuda:0 is lm-eval's default when --device is not given: without CUDA it means "not chosen" (CPU, a warning)
    FlowLM(pretrained="tiny", device="cuda:0")
    assert calls[-1] == "cpu" and "cuda:0" in caplog.text
    monkeypatch.setattr(lm_eval_model.models, "load", real_load)
    with pytest.raises(models.ModelError, match="Fix: pass --device cpu"):
        FlowLM(pretrained="tiny", device="cuda")
