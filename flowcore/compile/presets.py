"""What `python -m flowcore reproduce --preset NAME` runs: the prompt sets, evaluation sets and every
setting of the compile pipeline (``ReproduceConfig``), and the two presets.

The trained flow is its online-DPO run's: where the run exists, the model and the flow settings that define
it (``RUN_FLOW``) are read from its ``config.json`` (``follow_run``), and a pipeline whose settings differ from
them is refused (``run_diff``); a run the pipeline starts itself gets them from the preset (``train_argv``)."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

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


def _full() -> ReproduceConfig:
    """The paper's compile design (FLOW-DPO.md section 3) on the flow of the 2,000-example online run."""
    return ReproduceConfig(
        preset="full", out="results/full",
        # one mixed set of 1,500 prompts, as the paper's 1,500 MetaMath prompts (MetaMath is rewritten GSM8K and
        # MATH train problems); we have the original problems, two GSM8K to one MATH
        prompt_sets=[PromptSet("gsm8k", 1000), PromptSet("math", 500)],
        prompt_order="permutation-v2",  # the current draw (train.ORDER); sample-v1 is kept for results/cpu only
        samples=4, sample_temperature=0.7,
        # until runs/online-dpo-2000 exists: its pre-registered fixed settings (docs/experiments/online-dpo-2000.md);
        # once it does, the run's model and RUN_FLOW settings replace these (follow_run)
        flow=FlowConfig(batch_size=64, chunk_size=64, max_steps=6, stop_at_eos=True),
        dpo_run="runs/online-dpo-2000",
        # used only if the pipeline starts the run itself; runs/online-dpo-2000.sh normally makes it, with these
        dpo_args={"dataset": "gsm8k", "examples": 2000, "dtype": "float32", "rollouts": 1, "group_size": 32,
                  "batch_size": 32, "batch_pairs": 8, "lr": 5e-5, "checkpoint_every": 32},
        eval_sets=[EvalSet("gsm8k", "test"), EvalSet("math", "test500")],  # all 1,319 and all 500
        compile=CompileConfig(micro_batch=8),  # Table 3: global batch 16 = 8 per pass x grad accumulation 2
    )


PRESETS = {"cpu": _cpu, "full": _full}

# The settings that make a trained flow what it is: the compile must run it as its online run trained it.
RUN_FLOW = ("chunk_size", "max_steps", "stop_threshold", "stop_at_eos")


def run_settings(run: str | Path) -> dict | None:
    """``{"model", *RUN_FLOW}`` of the online-DPO run in directory ``run`` (its config.json), or None if none."""
    path = Path(run) / "config.json"
    if not path.is_file():
        return None
    made = json.loads(path.read_text())["settings"]
    default = asdict(FlowConfig())  # runs made before a field existed ran with its default
    return {"model": made["model"], **{k: made["flow"].get(k, default[k]) for k in RUN_FLOW}}


def run_diff(cfg: ReproduceConfig, run: str | Path) -> dict:
    """``{setting: (the run's, cfg's)}`` where ``cfg`` would not run the flow of ``run`` as it was trained."""
    theirs = run_settings(run) or {}
    ours = {"model": cfg.model, **{k: getattr(cfg.flow, k) for k in RUN_FLOW}}
    return {k: (v, ours[k]) for k, v in theirs.items() if v != ours[k]}


def follow_run(cfg: ReproduceConfig, run: str | Path) -> ReproduceConfig:
    """``cfg`` with the model and ``RUN_FLOW`` settings of the online-DPO run in ``run`` (as it is if none)."""
    theirs = run_settings(run)
    if theirs is None:
        return cfg
    model = theirs.pop("model")
    return replace(cfg, model=model, flow=replace(cfg.flow, **theirs))


def train_argv(cfg: ReproduceConfig) -> list[str]:
    """The `python -m flowcore train` arguments of stage flow-dpo: the preset's model and ``RUN_FLOW`` settings,
    then ``dpo_args`` (which may not set those)."""
    clash = [k for k in RUN_FLOW if k in cfg.dpo_args]
    if clash:
        raise ValueError(f"dpo_args sets {clash}: set them in the preset's flow, which the run is made with")
    argv = ["--model", cfg.model, "--out", cfg.dpo_run]
    for k, v in [*((k, getattr(cfg.flow, k)) for k in RUN_FLOW), *cfg.dpo_args.items()]:
        flag = f"--{k.replace('_', '-')}"
        if isinstance(v, bool):  # train's boolean flags are --name / --no-name
            argv.append(flag if v else f"--no-{flag[2:]}")
        else:
            argv += [flag, str(v)]
    return argv
