"""Two LoRA adapters on one base model: ``answer`` writes chunks, ``stop`` says Yes/No.

One copy of the base weights lives in memory. The DPO reference model is the
same base with adapters disabled (``reference()``), never a second copy.
Adapters save as a standard peft directory: ``DIR/answer/`` and ``DIR/stop/``.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import torch

ROLES = ("answer", "stop")


@dataclass
class LoraConfig:
    """LoRA shape. Defaults: paper Table 2 (Flow-DPO): r 8, alpha 8, dropout 0.05, all linear layers."""

    r: int = 8
    alpha: int = 8
    dropout: float = 0.05
    target_modules: str | list[str] = "all-linear"

    def peft(self):
        from peft import LoraConfig as PeftLoraConfig

        return PeftLoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=self.target_modules,
            task_type="CAUSAL_LM",
        )


def lora_config(cfg) -> LoraConfig:
    """The LoRA shape of a training config's ``lora_r``, ``lora_alpha``, ``lora_dropout``, ``lora_targets``."""
    return LoraConfig(r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout, target_modules=cfg.lora_targets)


def attach(model, lora: LoraConfig | None = None, roles=ROLES):
    """Wrap a base model with fresh (zero-effect: LoRA B starts at 0) named adapters."""
    from peft import get_peft_model

    cfg = (lora or LoraConfig()).peft()
    peft_model = get_peft_model(model, cfg, adapter_name=roles[0])
    for role in roles[1:]:
        peft_model.add_adapter(role, cfg)
    peft_model.set_adapter(roles[0])
    return peft_model


def enable_activation_checkpointing(model) -> None:
    """Recompute each decoder layer in the backward pass instead of keeping its activations (DPO and SFT).

    Active only in training mode (a DPO policy pass, an SFT step); generation and
    the DPO reference pass run in eval mode and are unchanged. The step is the same
    (tested). Without it, on the 0.5B model, one DPO update on 4 real Answer pairs
    (8 rows of at most 387 tokens) was killed for memory at 19.8 GB RSS on a
    24 GB machine; with it the process peaked at 9.2 GB.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(base, "supports_gradient_checkpointing", False):
        # transformers 5.23 renamed it (the old name stays as a deprecated alias); 5.19, pinned for vLLM, has the old
        enable = getattr(base, "activation_checkpointing_enable", None) or base.gradient_checkpointing_enable
        enable()


def load(model, directory: str | Path, roles=ROLES, trainable: bool = False):
    """Attach saved adapters ``directory/<role>/`` to a base model."""
    directory = Path(directory)
    missing = [r for r in roles if not (directory / r / "adapter_config.json").is_file()]
    if missing:
        raise FileNotFoundError(f"{directory}: no adapter(s) {', '.join(missing)} (expected {directory}/<role>/adapter_config.json)")
    return load_named(model, {role: directory / role for role in roles}, trainable)


def load_named(model, dirs: dict[str, str | Path], trainable: bool = False):
    """Attach saved adapters under the given names (``{"answer": DIR/answer, "sft_x": ...}``)."""
    from peft import PeftModel

    peft_model = model
    for name, path in dirs.items():
        if not (Path(path) / "adapter_config.json").is_file():
            raise FileNotFoundError(f"no {name} adapter at {path} (expected {path}/adapter_config.json)")
        if isinstance(peft_model, PeftModel):
            peft_model.load_adapter(str(path), adapter_name=name, is_trainable=trainable)
        else:
            peft_model = PeftModel.from_pretrained(peft_model, str(path), adapter_name=name, is_trainable=trainable)
    return peft_model


STORAGE_DTYPE = "bfloat16"  # exported adapters: half the size of fp32 (r8 answer+stop on the 0.5B: 17.6 MB, not 35)


def save(peft_model, directory: str | Path, roles=ROLES, dtype: str | None = None) -> None:
    """peft directories ``directory/<role>/``; ``dtype`` (e.g. ``STORAGE_DTYPE``) casts the stored weights.

    Loading casts them back to the model's dtype, so a bf16-stored adapter runs
    in an fp32 model; it differs from the trained weights by bf16 rounding only.
    """
    from safetensors.torch import load_file, save_file

    directory = Path(directory)
    for role in roles:
        # peft saves non-default adapters under a subfolder named after the adapter
        peft_model.save_pretrained(directory, selected_adapters=[role])
        if dtype is not None:
            path = directory / role / "adapter_model.safetensors"
            save_file({k: v.to(getattr(torch, dtype)) for k, v in load_file(path).items()}, path,
                      metadata={"format": "pt"})
    base = getattr(peft_model.peft_config[roles[0]], "base_model_name_or_path", None)
    (directory / "README.md").write_text(card(roles, base, dtype))  # in place of peft's model-card template


def card(roles, base: str | None, dtype: str | None) -> str:
    """The adapters directory's README.md (peft's template is "More Information Needed" throughout)."""
    return (f"# flowcore LoRA adapters: {', '.join(f'`{r}/`' for r in roles)}\n\n"
            f"peft adapters on base model `{base}`, weights stored in {dtype or 'the model dtype'}. "
            "Who made them (command, settings, seed, date) is recorded in the files beside this directory "
            "(`config.json` of a training run).\n\n"
            "    python -m flowcore generate --adapters THIS_DIR ...\n")


def has_adapter(model, role: str) -> bool:
    return role in getattr(model, "peft_config", {})


@contextlib.contextmanager
def use(model, role: str | None):
    """Run the model as ``role``; the base model if role is None or the adapter is absent."""
    if role is not None and has_adapter(model, role):
        model.set_adapter(role)
        yield model
    elif hasattr(model, "disable_adapter"):
        with model.disable_adapter():
            yield model
    else:
        yield model


def reference(model):
    """Context: the base model (adapters disabled) — the DPO reference."""
    return use(model, None)
