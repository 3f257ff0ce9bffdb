"""`python -m flowcore COMMAND ...` — each command lives in its own module."""
from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__ + "\n\ncommands: " + ", ".join(COMMANDS))
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        print(f"unknown command {cmd!r}; commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module, func = COMMANDS[cmd]
    import importlib

    return getattr(importlib.import_module(module, __package__), func)(rest)


COMMANDS = {
    "model-path": (".models", "main_model_path"),
    "generate": (".generate", "main"),
    "train": (".train", "main"),
    "baselines": (".baselines", "main"),
    "plot": (".plots", "main"),
    "sweep": (".sweep", "main"),
    "reproduce": (".reproduce", "main"),
    "lm-eval": (".lm_eval_cli", "main"),
}
