"""The Hugging Face Space folder: front matter, requirements, and the build script's copy."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "space"))

import build_space  # noqa: E402


def _front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    block = text.split("---\n")[1]
    return {k.strip(): v.strip().strip('"') for k, v in (line.split(":", 1) for line in block.splitlines() if line)}


def test_front_matter_has_what_a_space_needs():
    meta = _front_matter((ROOT / "space" / "README.md").read_text())
    import gradio

    assert meta["sdk"] == "gradio" and meta["sdk_version"] == gradio.__version__ == "6.31.0"
    assert meta["app_file"] == "app.py" and (ROOT / meta["app_file"]).is_file()
    assert meta["python_version"] == "3.11" and meta["license"] == "apache-2.0"
    assert meta["title"] and meta["emoji"] and meta["colorFrom"] and meta["colorTo"]


def test_space_requirements_pin_the_repository_versions():
    def pins(path):
        return dict(line.split("==") for line in path.read_text().splitlines() if "==" in line and not line.startswith("#"))

    space, repo = pins(ROOT / "space" / "requirements.txt"), pins(ROOT / "requirements.txt")
    assert {"torch", "transformers", "peft", "gguf", "math-verify", "plotly"} <= set(space)
    assert all(repo[name] == version for name, version in space.items() if name in repo)
    assert "gradio" not in space  # the Space installs sdk_version itself


def test_build_copies_code_and_existing_results(tmp_path):
    root = tmp_path / "repo"
    for name in ("app.py", "demo", "flowcore"):
        src = ROOT / name
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            import shutil

            shutil.copytree(src, root / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            (root / name).write_text(src.read_text())
    run = root / "runs" / "r1"
    (run / "adapters" / "answer").mkdir(parents=True)
    (run / "adapters" / "answer" / "adapter_config.json").write_text("{}")
    (run / "progress.jsonl").write_text('{"problem_id": "a", "correct": true}\n')
    (run / "pairs.jsonl").write_text('{"index": 0}\n')
    (run / "checkpoint.pt").write_text("big")
    (root / "results" / "cpu").mkdir(parents=True)
    (root / "results" / "cpu" / "table.json").write_text("[]")
    (root / "results" / "cpu" / "per_problem.jsonl").write_text("{}\n")
    for results in ("cpu", "cpu-gt-line"):  # the app's Compare tab reads results/cpu/sft only (DemoConfig)
        (root / "results" / results / "sft" / "ground_truth").mkdir(parents=True)
        (root / "results" / results / "sft" / "ground_truth" / "adapter_config.json").write_text("{}")

    out = tmp_path / "space"
    build_space.build(out, root=root)
    assert (out / "README.md").read_text() == (ROOT / "space" / "README.md").read_text()
    assert (out / "requirements.txt").is_file() and (out / "app.py").is_file()
    assert (out / "demo" / "services.py").is_file() and (out / "flowcore" / "datafiles" / "gsm8k" / "test.jsonl").is_file()
    assert (out / "runs" / "r1" / "adapters" / "answer" / "adapter_config.json").is_file()
    assert (out / "runs" / "r1" / "progress.jsonl").is_file()
    assert (out / "runs" / "r1" / "pairs.jsonl").is_file()  # the Flow tab's real pairs
    assert not (out / "runs" / "r1" / "checkpoint.pt").exists()  # training state stays home
    assert (out / "results" / "cpu" / "table.json").is_file()
    assert not (out / "results" / "cpu" / "per_problem.jsonl").exists()
    assert (out / "results" / "cpu" / "sft" / "ground_truth" / "adapter_config.json").is_file()
    assert not (out / "results" / "cpu-gt-line").exists()  # adapters the app does not load stay home
    assert not list(out.rglob("__pycache__"))

    with pytest.raises(ValueError, match="refusing"):
        build_space.build(root, root=root)
    with pytest.raises(ValueError, match="refusing"):
        build_space.build(root / "demo", root=root)

    help_text = subprocess.run([sys.executable, str(out / "app.py"), "--help"], capture_output=True, text=True,
                               cwd=out, timeout=120)
    assert help_text.returncode == 0 and "--model" in help_text.stdout and "FLOWCORE_MODEL" in help_text.stdout
