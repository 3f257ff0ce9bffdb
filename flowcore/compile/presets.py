"""What `python -m flowcore reproduce --preset NAME` runs: the prompt sets, evaluation sets and every
setting of the compile pipeline (``ReproduceConfig``), and the two presets."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from flowcore import models
from flowcore.compile.sft import CompileConfig
from flowcore.eval.evaluate import EvalSet
from flowcore.flow.engine import FlowConfig


@dataclass(frozen=True)
class PromptSet:
    """``n`` prompts sampled (seeded) from a train split, or from a JSONL file."""

    dataset: str
    n: int
    split: str = "train"
    data_file: str | None = None


@dataclass
class ReproduceConfig:
    preset: str
    out: str
    model: str = models.DEFAULT_MODEL
    prompt_sets: list[PromptSet] = field(default_factory=list)
    prompt_seed: int = 1  # (ours) != the DPO run's seed 0, so the compile prompts are not its training stream
    # how the prompts are drawn (``train.example_order``); sample-v1 made results/cpu, so a rerun keeps its prompts
    prompt_order: str = "sample-v1"
    samples: int = 1  # traces per prompt from each model source (self-generated, flow-generated)
    sample_temperature: float = 0.0  # 0: greedy (one sample is then the model's deterministic answer)
    flow: FlowConfig = field(default_factory=FlowConfig)  # budget and decoding of every model in the pipeline
    dpo_run: str = ""  # run directory of stage flow-dpo
    dpo_args: dict = field(default_factory=dict)  # `python -m flowcore train` flags (without --model/--out)
    eval_sets: list[EvalSet] = field(default_factory=list)
    compile: CompileConfig = field(default_factory=CompileConfig)

    def settings(self) -> dict:
        return {**asdict(self), "flow": self.flow.settings()}


def _cpu() -> ReproduceConfig:
    return ReproduceConfig(
        preset="cpu", out="results/cpu",
        prompt_sets=[PromptSet("gsm8k", 128), PromptSet("math", 64)],
        flow=FlowConfig(batch_size=64),  # decoding 64 rows is ~1.8x the tokens/s of 16 on this CPU
        dpo_run="runs/gsm8k-qwen0.5b-400",
        dpo_args={"dataset": "gsm8k", "examples": 400, "lr": 5e-5, "batch_pairs": 16, "group_size": 32,
                  "batch_size": 64, "checkpoint_every": 32},
        eval_sets=[EvalSet("gsm8k", "test", 100), EvalSet("math", "test500", 50)],
        compile=CompileConfig(micro_batch=2),
    )


def _paper() -> ReproduceConfig:
    return ReproduceConfig(
        preset="paper", out="results/paper",
        prompt_sets=[PromptSet("gsm8k", 1000), PromptSet("math", 500)],  # 1,500 prompts, as the paper
        samples=4, sample_temperature=0.7,
        flow=FlowConfig(batch_size=64),
        dpo_run="runs/gsm8k-paper-2000",
        dpo_args={"dataset": "gsm8k", "examples": 2000},  # paper Table 2 hyperparameters (the defaults)
        eval_sets=[EvalSet("gsm8k", "test"), EvalSet("math", "test500")],
    )


PRESETS = {"cpu": _cpu, "paper": _paper}


def train_argv(cfg: ReproduceConfig) -> list[str]:
    """The `python -m flowcore train` arguments of stage flow-dpo."""
    argv = ["--model", cfg.model, "--out", cfg.dpo_run]
    for k, v in cfg.dpo_args.items():
        argv += [f"--{k.replace('_', '-')}", str(v)]
    return argv
