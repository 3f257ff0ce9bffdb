"""A tiny model that sometimes answers right: the test bed for rollouts, pairs and online DPO.

A random model never writes a gradable answer, so it makes no pairs. This
teaches the ``tiny`` fixture's random Llama (a few seconds of SGD) to answer
every Answer prompt with ``ANSWER`` ending in ``\\boxed{1}`` or ``\\boxed{2}``,
about half each. With golds "1"/"2", the greedy flow is right on some
problems, and a rollout that samples a different chunk often flips the
outcome: ties and non-ties both happen.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

import torch

from flowcore import prompts

ANSWER = "Step 1: add 3 and 4 to get 7. The final answer is \\boxed{%s}."
QUESTIONS = [f"Janet has {a} eggs and eats {b}. How many are left?" for a in range(3, 9) for b in range(1, 3)]


TAUGHT_LOSS = 0.04  # the floor is ln 2 / 23 = 0.030: the digit is a coin flip, the other 22 tokens are certain


def teach(model, tok, max_steps: int = 300, seed: int = 0):
    """Fit the model to: Answer prompt -> ANSWER % ("1" or "2") + end-of-turn (fp32, Adam).

    It trains to a loss near the floor, not for a fixed number of steps: the path
    there differs between CPUs (AVX2 and AVX512 kernels round differently), and
    40 fixed steps left some machines' model unable to finish the answer.
    """
    torch.manual_seed(seed)
    seqs = []
    for q in QUESTIONS:
        prompt = tok(prompts.answer_prompt(tok, q), add_special_tokens=False).input_ids
        for digit in ("1", "2"):
            seqs.append((prompt, tok(ANSWER % digit, add_special_tokens=False).input_ids + [tok.eos_token_id]))
    width = max(len(p) + len(a) for p, a in seqs)
    ids = torch.full((len(seqs), width), tok.pad_token_id)
    labels = torch.full((len(seqs), width), -100)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, (p, a) in enumerate(seqs):  # right padding here: plain positions
        ids[i, :len(p) + len(a)] = torch.tensor(p + a)
        labels[i, len(p):len(p) + len(a)] = torch.tensor(a)
        mask[i, :len(p) + len(a)] = 1
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(max_steps):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        if loss.item() < TAUGHT_LOSS:
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
    else:
        raise AssertionError(f"the tiny model did not learn the answer in {max_steps} steps (loss {loss.item():.3f})")
    return model.eval()


def write_problems(path: Path, n: int = 12) -> Path:
    """GSM8K-style rows whose gold alternates 1, 2, 1, ..."""
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            gold = 1 + i % 2
            f.write(json.dumps({"question": QUESTIONS[i % len(QUESTIONS)], "answer": f"It is {gold}.\n#### {gold}"}) + "\n")
    return path


@functools.cache
def taught_dir() -> str:
    """A taught tiny model saved once per test session (``--model`` for subprocesses, or ``load``)."""
    import tempfile

    from conftest import build_tiny_model, build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    model = teach(build_tiny_model(tok), tok)
    out = tempfile.mkdtemp(prefix="flowcore-taught-")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def load_taught():
    """A fresh (model, tokenizer) copy of the taught tiny model."""
    from flowcore import models

    return models.load(taught_dir())


def taught_engine(tmp_path: Path, n: int, **flow):
    """(engine, problems): the taught tiny model with fresh answer/stop adapters, a FlowEngine on it with
    chunk 6, max 6 steps, batch 64 (``flow`` overrides), and ``n`` written problems."""
    from flowcore import adapters, data
    from flowcore.flow.engine import FlowConfig, FlowEngine

    model, tok = load_taught()
    problems = data.read_jsonl(write_problems(tmp_path / "p.jsonl", n), "gsm8k", "custom")
    cfg = FlowConfig(**{"chunk_size": 6, "max_steps": 6, "batch_size": 64, **flow})
    return FlowEngine(adapters.attach(model), tok, cfg), problems
