"""The app on the tiny model, launched in-process, for the gradio_client and browser tests."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from conftest import build_tiny_model, build_tiny_tokenizer

COMPARE_CHUNK = 8


def _sft_adapter(tok, directory):
    """A random (non-zero) LoRA saved as a peft dir, standing in for issue 5's SFT output."""
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(build_tiny_model(tok, seed=1), LoraConfig(
        r=4, lora_alpha=32, target_modules="all-linear", init_lora_weights=False, task_type="CAUSAL_LM"))
    peft_model.save_pretrained(directory)


def _fake_run(run):
    """A run's files in the format of flowcore.online.train / baselines (4 examples), for the chart."""
    run.mkdir(parents=True)
    ids = [f"gsm8k/train/{i}" for i in range(4)]
    (run / "config.json").write_text(json.dumps({"example_ids": ids, "settings": {"model": "tiny"}}))
    for name, correct in (("progress.jsonl", [0, 1, 1, 1]), ("baseline_flow.jsonl", [0, 0, 1, 0]),
                          ("baseline_zero_shot.jsonl", [1, 0, 0, 0])):
        (run / name).write_text("".join(json.dumps({"problem_id": i, "correct": bool(c)}) + "\n"
                                        for i, c in zip(ids, correct)))


def _fake_heldout(results, run_dir):
    """A held-out table.json of ``run_dir`` as ``python -m flowcore heldout`` writes it (3 models, 4 problems)."""
    from flowcore.online import heldout

    correct = {"trained_flow": [1, 1, 0, 1], "untrained_flow": [1, 0, 0, 0], "zero_shot": [0, 0, 1, 0]}
    outcomes = {"gsm8k-test": {m: [bool(c) for c in cs] for m, cs in correct.items()}}
    cells = {"gsm8k-test": {m: heldout.cell([{"correct": bool(c), "extracted": "1", "n_tokens": 30 + i}
                                             for i, c in enumerate(cs)], seconds=8.0) for m, cs in correct.items()}}
    results.mkdir(parents=True)
    (results / "table.json").write_text(json.dumps({"command": f"python -m flowcore heldout --run {run_dir}",
                                                    "settings": {"run": str(run_dir), "model": "tiny"},
                                                    **heldout.table(outcomes, cells)}))


def serve_tiny_app(root: Path):
    """Launch the app on a tiny model with files under ``root``; returns (app, url, service).

    ``root`` gets: one SFT adapter (ground truth; the other two missing), a run
    without files and a run with chart files and a held-out table, and a compile results table.
    """
    from demo.services import DemoConfig, DemoService
    from demo.ui import build_app, launch_kwargs

    tok = build_tiny_tokenizer()
    _sft_adapter(tok, root / "results" / "cpu" / "sft" / "ground_truth")
    (root / "runs" / "empty-run").mkdir(parents=True)
    _fake_run(root / "runs" / "tiny-run")
    _fake_heldout(root / "results" / "tiny-run", root / "runs" / "tiny-run")
    (root / "results" / "cpu" / "table.json").write_text(
        json.dumps({"rows": [{"model": "tiny-test-row", "0-shot": 12.5}]}))
    cfg = DemoConfig(model="tiny", results_dir=str(root / "results" / "cpu"), results_root=str(root / "results"),
                     runs_dir=str(root / "runs"), max_question_tokens=64, compare_chunk_size=COMPARE_CHUNK)
    model = build_tiny_model(tok)
    # untie the output layer: the tied random model only ever repeats its last token ("\n")
    model.lm_head.weight = torch.nn.Parameter(torch.randn(model.lm_head.weight.shape,
                                                          generator=torch.Generator().manual_seed(0)) * 0.5)
    service = DemoService(model, tok, cfg, log=lambda msg: None)
    app = build_app(service)
    _, url, _ = app.launch(prevent_thread_lock=True, quiet=True, **launch_kwargs())
    return app, url, service
