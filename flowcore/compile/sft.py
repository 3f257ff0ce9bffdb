"""Compile: LoRA SFT of one adapter on a set of traces (FLOW-DPO.md section 3, paper Table 3).

The example is exactly what the model sees at inference: the Answer prompt
(``prompts.answer_prompt``, an open assistant turn) followed by the trace's
text and the end-of-turn token. The loss is the mean negative log-likelihood
of the answer tokens only: prompt tokens are never predicted
(``dpo.sequence_logps`` computes logits for the answer positions alone), and
the mean is over every answer token of the optimizer step, so splitting a
step into micro-batches does not change it.

Resumable: ``<out>.partial/checkpoint.pt`` (adapter weights, Adam and
scheduler state, step) is replaced atomically every ``checkpoint_every``
steps; example order and dropout are seeded per epoch and step, so a killed
run continues where it stopped. When training ends the peft adapter is
written and ``<out>.partial`` becomes ``<out>`` (``adapter_config.json``,
``adapter_model.safetensors``, ``sft.json``, ``log.jsonl``).

``sft.json`` is written when training starts: command, settings, start time,
git commit and runtime (dtype, threads, versions) of the first start. A resume
keeps them, is listed under ``resumes`` (time, commit, step), and is refused
with other settings or another dtype (the checkpoint's numbers would mix);
the end adds ``summary`` and ``finished``.
"""
from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from flowcore import adapters, prompts, results
from flowcore.online.dpo import adapter_params, sequence_logps

CHECKPOINT, LOG, META = "checkpoint.pt", "log.jsonl", "sft.json"


@dataclass
class CompileConfig:
    """LoRA SFT settings. Defaults: the paper's Table 3 unless marked (ours)."""

    lora_r: int = 16
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_targets: str = "all-linear"
    lr: float = 2e-4  # Adam
    batch_size: int = 16  # global batch: examples per optimizer step (Table 3: 16, reached with grad accumulation 2)
    micro_batch: int = 4  # (ours) examples per forward pass: memory only, the step is the same
    warmup_ratio: float = 0.1  # linear warmup, then linear decay to 0 (ours: the decay shape)
    epochs: int = 3
    max_grad_norm: float = 1.0  # (ours: the transformers Trainer default)
    max_answer_tokens: int = 1024  # (ours) longer answers are cut (the count is logged)
    checkpoint_every: int = 1  # (ours) optimizer steps between atomic checkpoints
    seed: int = 0  # LoRA init, example order, dropout

    def check(self) -> None:
        for name in ("lr", "batch_size", "micro_batch", "epochs", "max_answer_tokens", "checkpoint_every"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, not {getattr(self, name)}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), not {self.warmup_ratio}")


def encode(tok, question: str, completion: str, max_answer_tokens: int) -> tuple[list[int], list[int], bool]:
    """(prompt ids, answer ids ending in end-of-turn, whether the answer was cut)."""
    prompt = tok(prompts.answer_prompt(tok, question), add_special_tokens=False).input_ids
    answer = tok(completion, add_special_tokens=False).input_ids + [tok.eos_token_id]
    return prompt, answer[:max_answer_tokens], len(answer) > max_answer_tokens


def answer_nll(model, batch: list[tuple[list[int], list[int], bool]], pad_id: int):
    """Summed negative log-likelihood of the answer tokens of ``encode``d examples (prompt tokens: no loss)."""
    return -sequence_logps(model, [p for p, _, _ in batch], [a for _, a, _ in batch], pad_id).sum()


def add_adapter(model, name: str, lora: adapters.LoraConfig):
    """``model`` with a fresh adapter ``name`` (wrapping a plain model in peft first)."""
    if hasattr(model, "peft_config"):
        model.add_adapter(name, lora.peft())
        return model
    return adapters.attach(model, lora, roles=(name,))


def step_batches(n: int, cfg: CompileConfig) -> list[list[int]]:
    """Example indices of every optimizer step: each epoch a seeded permutation, cut into batches."""
    steps = []
    for epoch in range(cfg.epochs):
        order = random.Random(cfg.seed * 1000 + epoch).sample(range(n), n)
        steps += [order[i:i + cfg.batch_size] for i in range(0, n, cfg.batch_size)]
    return steps


def start_meta(path: Path, model, settings: dict, command: str) -> dict:
    """``sft.json`` as this start finds it: the first start's (checked against ``settings`` and the model's
    dtype), or a new one."""
    runtime = results.runtime(model)
    if not path.is_file():
        return {**results.provenance(settings, command), "runtime": runtime}
    meta = json.loads(path.read_text())
    if meta["settings"] != json.loads(json.dumps(settings)):
        raise ValueError(f"{path.parent} was started with other settings "
                         f"{results.settings_diff(meta['settings'], settings)} (old, new); remove it to start over")
    results.check_runtime(path.parent, meta["runtime"], runtime)
    return meta


def sft(model, tok, name: str, rows: list[dict], cfg: CompileConfig, out: str | Path,
        settings: dict | None = None, command: str = ""):
    """Train adapter ``name`` on ``rows`` ({"question", "completion"}) into the peft directory ``out``.

    ``model``: the base model or a peft model. Returns the peft model, which
    keeps the trained adapter attached (``adapters.use(model, name)`` runs it).
    """
    from tqdm import tqdm
    from transformers import get_linear_schedule_with_warmup

    cfg.check()
    if not rows:
        raise ValueError(f"SFT {name}: no training examples")
    out = Path(out)
    work = out.with_name(out.name + ".partial")
    work.mkdir(parents=True, exist_ok=True)
    resumed = (work / META).is_file()
    meta = start_meta(work / META, model, {**(settings or {}), "adapter": name, "compile": asdict(cfg),
                                           "examples": len(rows)}, command)

    torch.manual_seed(cfg.seed)  # the same LoRA init for every source
    model = add_adapter(model, name, adapters.lora_config(cfg))
    adapters.enable_activation_checkpointing(model)
    params = adapter_params(model, name)
    for p in params:
        p.requires_grad_(True)
    encoded = [encode(tok, r["question"], r["completion"], cfg.max_answer_tokens) for r in rows]
    plan = step_batches(len(encoded), cfg)
    opt = torch.optim.Adam(params, lr=cfg.lr)
    sched = get_linear_schedule_with_warmup(opt, math.ceil(cfg.warmup_ratio * len(plan)), len(plan))

    start, elapsed = 0, 0.0
    if (work / CHECKPOINT).is_file():
        blob = torch.load(work / CHECKPOINT, weights_only=True)
        with torch.no_grad():
            for p, w in zip(params, blob["weights"], strict=True):
                p.copy_(w)
        opt.load_state_dict(blob["optimizer"])
        sched.load_state_dict(blob["scheduler"])
        start, elapsed = blob["step"], blob["elapsed"]
    if resumed:
        now = results.provenance({}, command)
        meta.setdefault("resumes", []).append({"started": now["started"], "git_commit": now["git_commit"],
                                               "command": command, "from_step": start})
    results.write_json_atomic(work / META, meta)
    log = work / LOG
    log.touch()
    results.write_jsonl_atomic(log, [r for r in results.read_jsonl(log) if r["step"] <= start])

    bar = tqdm(total=len(plan), initial=start, desc=f"SFT {name}", unit="step")
    t0 = time.time()
    with adapters.use(model, name):
        for step in range(start, len(plan)):
            ts = time.time()
            torch.manual_seed(cfg.seed * 1_000_003 + step)  # dropout, the same on resume
            model.train()
            batch = [encoded[i] for i in plan[step]]
            n_tokens = sum(len(a) for _, a, _ in batch)
            total = 0.0
            for j in range(0, len(batch), cfg.micro_batch):
                loss = answer_nll(model, batch[j:j + cfg.micro_batch], tok.pad_token_id) / n_tokens
                loss.backward()
                total += loss.item()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            model.eval()
            done = step + 1
            results.append_jsonl(log, [{"step": done, "epoch": step * cfg.epochs // len(plan) + 1,
                                        "loss": total, "lr": sched.get_last_lr()[0], "grad_norm": float(grad_norm),
                                        "examples": len(batch), "answer_tokens": n_tokens,
                                        "seconds": round(time.time() - ts, 2)}])
            bar.set_postfix(loss=f"{total:.3f}")
            bar.update(1)
            if done % cfg.checkpoint_every == 0 or done == len(plan):
                results.save_torch_atomic(work / CHECKPOINT, {
                    "step": done, "elapsed": elapsed + time.time() - t0,
                    "weights": [p.detach().clone() for p in params],
                    "optimizer": opt.state_dict(), "scheduler": sched.state_dict()})
    bar.close()

    losses = [r["loss"] for r in results.read_jsonl(log)]
    export = work / "export"
    shutil.rmtree(export, ignore_errors=True)
    adapters.save(model, export, roles=(name,), dtype=adapters.STORAGE_DTYPE)  # peft writes export/<name>/
    for f in (export / name).iterdir():
        os.replace(f, work / f.name)
    shutil.rmtree(export)
    (work / CHECKPOINT).unlink()
    meta["summary"] = {"steps": len(plan), "first_loss": losses[0], "last_loss": losses[-1],
                       "answers_cut": sum(cut for _, _, cut in encoded),
                       "answer_tokens": sum(len(a) for _, a, _ in encoded),
                       "seconds": round(elapsed + time.time() - t0, 1)}
    meta["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    results.write_json_atomic(work / META, meta)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(work, out)
    return model
