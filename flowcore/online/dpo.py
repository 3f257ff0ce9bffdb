"""The DPO update of online Flow-DPO (FLOW-DPO.md section 2, item 5).

Loss (paper, the sigmoid DPO loss of Rafailov et al.):

    -log sigmoid(beta * ((log p(c) - log p_ref(c)) - (log p(r) - log p_ref(r))))

with log-probs summed over the completion tokens only (the chunk, or the one
"Yes"/"No" token of a Stop pair), never the prompt. The policy is the base
model with the pair's adapter active (``adapters.use(model, role)``); the
reference is the same weights with adapters disabled (``adapters.reference``,
under ``no_grad``): one copy of the base weights in memory.

Answer pairs train only the ``answer`` adapter and Stop pairs only the
``stop`` adapter: each adapter has its own Adam optimizer holding only its
own LoRA weights, and a step on one never touches the other or the base.
Each adapter steps once its own queue holds ``batch_pairs`` pairs (the paper
trains two LLMs with a global batch of 32 pairs; one queue per LLM is ours).

Data parallel (``all_reduce``): every process holds the same batch of pairs,
computes the gradient of its share (``pairs[rank::world]``), gradients are
summed across processes and divided by the batch size, so every process takes
the same step on the same weights.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from flowcore import adapters, results
from flowcore.adapters import ROLES
from flowcore.online.rollouts import Pair, check_stop_ties


@dataclass
class OnlineDPOConfig:
    """Online DPO settings. Defaults are the paper's Table 2 unless marked (ours)."""

    lr: float = 5e-6  # paper Table 2 (a small model may need another: measure, and say so)
    batch_pairs: int = 32  # paper Table 2: global batch 32 pairs; (ours) counted per adapter
    beta: float = 1.0  # paper Table 2
    max_grad_norm: float = 1.0  # paper Table 2 (gradient clipping), per adapter (ours)
    lora_r: int = 8  # paper Table 2
    lora_alpha: int = 8  # paper Table 2
    lora_dropout: float = 0.05  # paper Table 2
    lora_targets: str = "all-linear"  # paper Table 2: all linear layers
    rollouts: int = 1  # paper: 1 random rollout per Answer node; > 1 is ours
    rollout_temperature: float = 1.0  # (ours) sampling temperature of a rollout's new chunk
    nll_weight: float = 0.0  # (ours, optional) + weight * NLL per token of the chosen completion
    group_size: int = 8  # (ours) examples explored together per process (one engine batch)
    micro_batch: int = 4  # (ours) pairs per forward pass (memory only: the step is the same)
    checkpoint_every: int = 50  # (ours) examples between atomic checkpoints
    seed: int = 0  # (ours) example order, LoRA init and sampling
    # (ours) a Stop decision where stopping and continuing both end right: "none" makes no pair (a tie, as for
    # Answer pairs); "yes" makes a pair with "Yes" chosen (stop once the answer is there: the same answer for
    # less compute). rollouts.stop_pairs; docs/method.md
    stop_ties: str = "none"

    def settings(self) -> dict:
        """The fields as results files record them (``results.recorded_settings``, ``ADDED_LATER``)."""
        return results.recorded_settings(self, ADDED_LATER)

    def check(self) -> None:
        for name in ("lr", "batch_pairs", "beta", "group_size", "micro_batch", "checkpoint_every"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, not {getattr(self, name)}")
        if self.rollouts < 1:
            raise ValueError(f"rollouts must be >= 1, not {self.rollouts}")
        if self.rollout_temperature <= 0:
            raise ValueError("rollout_temperature must be > 0 (a rollout samples its new chunk)")
        check_stop_ties(self.stop_ties)


ADDED_LATER = {"stop_ties": "none"}  # OnlineDPOConfig fields added after runs were committed, with their defaults


# ---------------------------------------------------------------- the loss


def sequence_logps(model, prompts: list[list[int]], completions: list[list[int]], pad_id: int) -> torch.Tensor:
    """Sum of log p(completion token | everything before it), one value per row.

    Rows are left-padded (completions end at the right edge) with position ids
    from the attention mask, as ``generate`` numbers them; only the logits
    that predict completion tokens are computed (``logits_to_keep``).
    """
    seqs = [p + c for p, c in zip(prompts, completions)]
    width, cmax = max(len(s) for s in seqs), max(len(c) for c in completions)
    if any(not p for p in prompts) or any(not c for c in completions):
        raise ValueError("every pair needs a non-empty prompt and completion")
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    cmask = torch.zeros((len(seqs), cmax), dtype=torch.float32)
    for i, (s, c) in enumerate(zip(seqs, completions)):
        ids[i, width - len(s):] = torch.tensor(s)
        mask[i, width - len(s):] = 1
        cmask[i, cmax - len(c):] = 1
    device = next(model.parameters()).device
    ids, mask, cmask = ids.to(device), mask.to(device), cmask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions,
                   logits_to_keep=cmax + 1).logits[:, :-1].float()  # predicts the last cmax tokens
    targets = ids[:, -cmax:]
    token_logps = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)
    return (token_logps * cmask).sum(-1)


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pair sigmoid DPO loss and the implicit reward margin beta * (chosen log-ratio - rejected log-ratio)."""
    margin = beta * ((policy_chosen - ref_chosen) - (policy_rejected - ref_rejected))
    return -F.logsigmoid(margin), margin


# ---------------------------------------------------------------- the update


def adapter_params(model, role: str) -> list[torch.nn.Parameter]:
    """The LoRA weights of one adapter (names like ``...q_proj.lora_A.answer.weight``)."""
    pattern = re.compile(rf"\.lora_(A|B|embedding_A|embedding_B)\.{re.escape(role)}\.")
    params = [p for n, p in model.named_parameters() if pattern.search(n)]
    if not params:
        raise ValueError(f"model has no LoRA weights for adapter {role!r}")
    return params


class OnlineDPO:
    """Two adapters, two Adam optimizers, one DPO step per full batch of one adapter's pairs."""

    def __init__(self, model, pad_id: int, config: OnlineDPOConfig,
                 rank: int = 0, world: int = 1, all_reduce: Callable[[torch.Tensor], None] | None = None):
        self.model, self.pad_id, self.cfg = model, pad_id, config
        adapters.enable_activation_checkpointing(model)
        self.rank, self.world, self.all_reduce = rank, world, all_reduce
        # what update() reduces lives here: NCCL (accelerate on GPUs) only reduces tensors on the GPU
        self.device = next(model.parameters()).device
        self.params = {role: adapter_params(model, role) for role in ROLES}
        self.optimizers = self._new_optimizers()
        self.steps = {role: 0 for role in ROLES}

    def _new_optimizers(self) -> dict:
        return {role: torch.optim.Adam(self.params[role], lr=self.cfg.lr) for role in ROLES}

    def _logps(self, role: str | None, pairs: list[Pair]) -> tuple[torch.Tensor, torch.Tensor]:
        prompts = [p.prompt_ids for p in pairs] * 2
        completions = [p.chosen_ids for p in pairs] + [p.rejected_ids for p in pairs]
        with adapters.use(self.model, role):
            logps = sequence_logps(self.model, prompts, completions, self.pad_id)
        return logps[:len(pairs)], logps[len(pairs):]

    def update(self, role: str, pairs: list[Pair]) -> dict:
        """One optimizer step of ``role``'s adapter on ``pairs`` (the same list on every process)."""
        if role not in ROLES or any(p.role != role for p in pairs):
            raise ValueError(f"update({role!r}) needs pairs of that role only")
        if not pairs:
            raise ValueError("update needs at least one pair")
        params, n = self.params[role], len(pairs)
        for p in params:
            p.grad = None
        # loss sum, margin sum, margins > 0, chosen log-ratio sum; summed on the device (no sync per micro-batch)
        totals = torch.zeros(4, dtype=torch.float64, device=self.device)
        mine = pairs[self.rank::self.world]
        for start in range(0, len(mine), self.cfg.micro_batch):
            mb = mine[start:start + self.cfg.micro_batch]
            self.model.eval()
            with torch.no_grad():
                ref_c, ref_r = self._logps(None, mb)
            self.model.train()  # LoRA dropout (paper: 0.05) on the policy pass only
            pol_c, pol_r = self._logps(role, mb)
            losses, margins = dpo_loss(pol_c, pol_r, ref_c, ref_r, self.cfg.beta)
            loss = losses.sum()
            if self.cfg.nll_weight:
                lengths = torch.tensor([len(p.chosen_ids) for p in mb], dtype=pol_c.dtype, device=pol_c.device)
                loss = loss + self.cfg.nll_weight * (-pol_c / lengths).sum()
            (loss / n).backward()
            totals += torch.stack([t.detach().double() for t in (losses.sum(), margins.sum(), (margins > 0).sum(),
                                                                 (pol_c - ref_c).sum())])
        self.model.eval()
        if self.all_reduce is not None and self.world > 1:
            for p in params:
                if p.grad is None:  # a process with no share of this batch still joins the sum
                    p.grad = torch.zeros_like(p)
                self.all_reduce(p.grad)
            self.all_reduce(totals)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.max_grad_norm)
        self.optimizers[role].step()
        self.optimizers[role].zero_grad(set_to_none=True)
        self.steps[role] += 1
        loss, margin, accuracy, logratio = totals.tolist()
        return {"role": role, "step": self.steps[role], "pairs": n, "loss": loss / n, "margin": margin / n,
                "reward_accuracy": accuracy / n, "chosen_logratio": logratio / n, "grad_norm": float(grad_norm)}

    # -------------------------------------------------------- checkpoint state

    def state_dict(self) -> dict:
        return {"weights": {role: [p.detach().clone() for p in self.params[role]] for role in ROLES},
                "optimizers": {role: opt.state_dict() for role, opt in self.optimizers.items()},
                "steps": dict(self.steps)}

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            for role in ROLES:
                saved = state["weights"][role]
                if len(saved) != len(self.params[role]):
                    raise ValueError("checkpoint adapters do not match this model's LoRA shape")
                for p, w in zip(self.params[role], saved):
                    p.copy_(w)
        for role, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][role])
        self.steps = dict(state["steps"])

    def load_adapters(self, directory, steps: dict) -> None:
        """The weights of exported adapters (``directory/<role>/``, cast to the model's dtype) and the step
        counts; the optimizers start afresh (their moments are not exported)."""
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        for role in ROLES:
            result = set_peft_model_state_dict(self.model, load_file(Path(directory) / role / "adapter_model.safetensors"),
                                               adapter_name=role)
            missing = [k for k in result.missing_keys if f".{role}." in k and "lora_" in k]
            if missing:
                raise ValueError(f"{directory}/{role} does not hold this model's LoRA weights (e.g. {missing[0]})")
        self.optimizers = self._new_optimizers()
        self.steps = dict(steps)
