"""`python -m flowcore COMMAND ...`: each command lives in its own module; `COMMAND --help` shows its options
and their defaults."""
from __future__ import annotations

import argparse
import importlib
import sys


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every command's ``--help``: the module docstring as written, and each option's default."""

    def add_argument(self, action: argparse.Action) -> None:
        if action.help is None and action.option_strings and action.nargs != 0 and action.default is not None:
            action.help = "(default: %(default)s)"  # an option without help text still shows its default
        super().add_argument(action)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, argparse.SUPPRESS) or not action.option_strings \
                or action.nargs == 0:  # flags (store_true) have no default worth showing
            return text
        return f"{text} (default: %(default)s)".strip()

# name: (module, function, one-line description), in the order of the paper's stages
COMMANDS = {
    "model-path": ("flowcore.models", "main_model_path",
                   "fetch, verify and convert an embedded model once; print its directory"),
    "generate": ("flowcore.flow.generate", "main",
                 "run the flow (or zero-shot) on a dataset; per-problem results to a .jsonl file"),
    "train": ("flowcore.online.train", "main",
              "online Flow-DPO: rollouts -> pairs -> DPO steps on both adapters, progressive validation"),
    "baselines": ("flowcore.online.baselines", "main",
                  "untrained flow and zero-shot on a training run's examples (same order, same settings)"),
    "plot": ("flowcore.online.plots", "main",
             "a run's progressive-accuracy chart and summary.json (paired intervals, diagnostics)"),
    "heldout": ("flowcore.online.heldout", "main",
                "a run's trained flow vs the untrained flow and zero-shot on test sets: per-problem files, paired tests"),
    "calibration": ("flowcore.online.calibration", "main",
                    "the Stop LLM's P(Yes) against the grade of the partial answer: reliability table, Brier, AUROC"),
    "sweep": ("flowcore.online.sweep", "main", "compare the runs of a tuning sweep on one training stream"),
    "reproduce": ("flowcore.compile.reproduce", "main",
                  "compile: traces from three sources -> SFT -> evaluation -> the paper's table"),
    "lm-eval": ("flowcore.eval.lm_eval_cli", "main",
                "lm-evaluation-harness with the flow_gsm8k/flow_math tasks and the `flow` model"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {desc}" for name, (_, _, desc) in COMMANDS.items()]
    return (f"usage: python -m flowcore COMMAND [options]\n\n{__doc__}\n\ncommands:\n" + "\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        print(f"unknown command {cmd!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module, func, _ = COMMANDS[cmd]
    return getattr(importlib.import_module(module), func)(rest)
