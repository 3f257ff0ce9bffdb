"""`python -m flowcore.eval.lm_eval_cli ARGS` (or `python -m flowcore lm-eval ARGS`): lm_eval with the `flow` model.

Registers the ``flow`` model (``flowcore.eval.lm_eval_model``), then runs lm-eval's own
command line with every argument passed through unchanged, e.g.

    python -m flowcore.eval.lm_eval_cli --model flow \\
        --model_args pretrained=smollm2-135m-instruct,adapters=results/cpu/flow,chunk_size=160,max_steps=6 \\
        --include_path eval_tasks --tasks flow_gsm8k,flow_math --batch_size 16 --limit 50

Everything plain ``lm_eval`` does (``--model hf``, ``ls tasks``, ...) works here too.
"""
from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    from flowcore.eval import lm_eval_model  # noqa: F401  (registers "flow")
    from lm_eval.__main__ import cli_evaluate

    old = sys.argv
    sys.argv = ["lm_eval", *argv]  # lm-eval's parser reads sys.argv
    try:
        cli_evaluate()
    except SystemExit as e:  # argparse --help / errors
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = old
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
