"""What a killed ``python -m flowcore train`` needs to continue exactly (``--resume``).

``checkpoint.pt`` is replaced atomically every ``checkpoint_every`` examples
and holds the position (the next example), the pending pairs of each adapter,
the trainer (adapters, optimizers, step counts), the seconds so far, and the
state of every random generator each process draws from:

- python ``random``;
- torch's CPU generator (LoRA dropout masks, and rollout sampling on the CPU);
- every CUDA device's generator, when torch sees CUDA: on a GPU the rollouts'
  ``multinomial`` and the dropout masks draw from it, not from the CPU's;
- the flow engine's own sampler state (``engine.sampler_state()``): on vLLM the
  counter its per-request seeds come from.

numpy's generator is not saved: nothing in a run draws from it.

``adapters/`` is the same adapters in peft format (for ``generate --adapters``),
exported at each checkpoint, with ``adapters/resume.json``: everything above
except the optimizers' moments, as JSON. ``--resume`` reloads the checkpoint
and drops the lines of ``progress.jsonl`` and ``pairs.jsonl`` written after it,
so the files come out as in an uninterrupted run.

``checkpoint.pt`` (fp32 weights and two Adam moments per weight: 102-106 MB for
the 0.5B model's two r-8 adapters) is too big to commit, so a run that moves to
another machine carries only ``adapters/`` (17.6 MB in bf16). Without
``checkpoint.pt``, ``--resume`` continues from ``adapters/``: the same position,
pending pairs, step counts and generators, but weights rounded to bf16 and
fresh Adam moments, so from there on the run is not the one an uninterrupted
run would have been. Such a resume says so on stderr and appends a line to
``resumes.jsonl`` (``"exact": false``); an exact one appends ``"exact": true``.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from flowcore import adapters, results
from flowcore.adapters import ROLES
from flowcore.online.rollouts import Pair

CHECKPOINT, ADAPTERS, PORTABLE, RESUMES = "checkpoint.pt", "adapters", "resume.json", "resumes.jsonl"


class CheckpointError(ValueError):
    """A checkpoint that cannot continue in this process; the message says what to do."""


def check_resume(run: Path, config: dict, settings: dict, example_ids: list[str], runtime: dict, order: str) -> None:
    """Refuse to resume ``run`` (its ``config.json``: ``config``) with other settings, examples, dtype or device."""
    missing = [k for k in ("settings", "example_ids") if not isinstance(config, dict) or k not in config]
    if missing:
        raise CheckpointError(f"{run}/config.json is not the config of a `python -m flowcore train` run (no "
                              f"{' or '.join(missing)}); restore it from git, or start the run again in another --out")
    if config["settings"] != settings:
        diff = results.settings_diff(config["settings"], settings)
        raise CheckpointError(f"{run} was started with other settings {diff} (old, new); "
                              "resume with the original arguments or use another --out")
    if example_ids != config["example_ids"]:
        raise CheckpointError(f"the examples drawn now (order {order}) are not {run}/config.json's example_ids")
    # its progress, pairs and adapters would mix two dtypes; sampling would draw from another device's generator
    results.check_runtime(run, config.get("runtime"), runtime, ("dtype", "device"))


def rng_state(engine=None) -> dict:
    """This process's generators (tensors and tuples only: ``torch.load(weights_only=True)`` reads them)."""
    return {"python": random.getstate(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "engine": engine.sampler_state() if engine is not None else {}}


def set_rng_state(state: dict, engine=None) -> None:
    if engine is not None:
        engine.set_sampler_state(state.get("engine") or {})
    random.setstate(_tuples(state["python"]))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")  # absent in checkpoints from before CUDA states were saved
    if cuda is not None:
        if not torch.cuda.is_available():
            raise CheckpointError("the checkpoint was made on a GPU and holds CUDA generator states; this process "
                                  "sees no CUDA device, so rollouts would sample differently: resume on a GPU "
                                  "(--device cuda)")
        torch.cuda.set_rng_state_all(cuda)


def _tuples(x):
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


def rng_json(state: dict) -> dict:
    """``rng_state()`` as JSON (the tensors as lists of bytes)."""
    return {"python": state["python"], "torch": state["torch"].tolist(),
            "cuda": None if state["cuda"] is None else [t.tolist() for t in state["cuda"]], "engine": state["engine"]}


def rng_from_json(state: dict) -> dict:
    def byte(x):
        return torch.tensor(x, dtype=torch.uint8)

    return {"python": state["python"], "torch": byte(state["torch"]),
            "cuda": None if state["cuda"] is None else [byte(t) for t in state["cuda"]], "engine": state["engine"]}


def truncate_jsonl(path: Path, position: int) -> None:
    """Keep only the records of examples before ``position`` (written before the checkpoint)."""
    results.write_jsonl_atomic(path, [r for r in results.read_jsonl(path) if r["index"] < position])


def save_checkpoint(run: Path, trainer, peft_model, position: int, pending: dict, elapsed: float, procs,
                    engine=None) -> None:
    """Every process's generators, gathered; rank 0 writes ``checkpoint.pt`` and ``adapters/``."""
    rng = procs.gather([rng_state(engine)])
    if procs.rank == 0:
        blob = {"position": position, "elapsed": elapsed, "world": procs.world, "rng": rng,
                "pending": {role: [asdict(p) for p in pending[role]] for role in ROLES},
                "trainer": trainer.state_dict()}
        results.save_torch_atomic(run / CHECKPOINT, blob)
        export, old = run / (ADAPTERS + ".tmp"), run / (ADAPTERS + ".old")
        shutil.rmtree(export, ignore_errors=True)
        adapters.save(peft_model, export, dtype=adapters.STORAGE_DTYPE)
        portable = {"position": position, "elapsed": elapsed, "world": procs.world, "steps": dict(trainer.steps),
                    "rng": [rng_json(r) for r in rng], "pending": blob["pending"]}
        (export / PORTABLE).write_text(json.dumps(portable))
        if (run / ADAPTERS).exists():
            os.replace(run / ADAPTERS, old)
        os.replace(export, run / ADAPTERS)
        shutil.rmtree(old, ignore_errors=True)
    procs.barrier()


def can_resume(run: Path) -> bool:
    return (run / CHECKPOINT).is_file() or (run / ADAPTERS / PORTABLE).is_file()


def load_checkpoint(run: Path, trainer, procs, engine=None) -> tuple[int, dict, float]:
    """Restore the trainer and this process's generators; (position, pending pairs, seconds so far).

    From ``checkpoint.pt`` when it is there (exact), else from ``adapters/`` (see the module's docstring)."""
    exact = (run / CHECKPOINT).is_file()
    if exact:
        blob = torch.load(run / CHECKPOINT, weights_only=True, map_location="cpu")  # every rank, whatever GPU saved it
    else:
        blob = json.loads((run / ADAPTERS / PORTABLE).read_text())
        blob["rng"] = [rng_from_json(r) for r in blob["rng"]]
    if blob["world"] != procs.world:
        raise CheckpointError(f"{run} was checkpointed with {blob['world']} process(es); resume with the same number")
    if exact:
        trainer.load_state_dict(blob["trainer"])
    else:
        trainer.load_adapters(run / ADAPTERS, blob["steps"])
    set_rng_state(blob["rng"][procs.rank], engine)
    pending = {role: [Pair(**p) for p in blob["pending"][role]] for role in ROLES}
    if procs.rank == 0:
        if not exact:
            print(f"warning: {run} has no {CHECKPOINT}; resuming at example {blob['position']} from {ADAPTERS}/ "
                  "(weights rounded to bf16, fresh Adam moments): from here on the run differs from an "
                  "uninterrupted one; recorded in " + RESUMES, file=sys.stderr)
        results.append_jsonl(run / RESUMES, [{"position": blob["position"], "exact": exact,
                                               "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                               "git_commit": results.git_commit()}])
    return blob["position"], pending, blob["elapsed"]
