"""Start the flowcore Gradio app: `python app.py [--model NAME] [--device D] [--engine E] [--host H] [--port P]`.

Builds the app from ``demo/`` and launches it; all model work lives in
``demo/services.py``. The engine (vLLM or transformers) opens once, here, before the server starts.
"""
from __future__ import annotations

import argparse
from flowcore.cli import HelpFormatter
import os
import sys

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def parse_args(argv=None) -> argparse.Namespace:
    from flowcore import models
    from flowcore.flow import engines
    from demo.services import DemoConfig

    d = DemoConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--model", default=os.environ.get("FLOWCORE_MODEL", models.DEFAULT_MODEL),
                   help=f"embedded name ({', '.join(models.REGISTRY)}), local dir or hub id "
                        f"(env FLOWCORE_MODEL; default {models.DEFAULT_MODEL})")
    p.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                   help="address to listen on (0.0.0.0 for all; env GRADIO_SERVER_NAME)")
    p.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)),
                   help="port (env GRADIO_SERVER_PORT; default 7860)")
    p.add_argument("--results-dir", default=d.results_dir, help="SFT adapters at DIR/sft/<source>/")
    p.add_argument("--results-root", default=d.results_root, help="result tables at DIR/*/table.json")
    p.add_argument("--runs-dir", default=d.runs_dir, help="online-DPO runs at DIR/<name>/")
    p.add_argument("--flow-adapters", default=None,
                   help="answer/ + stop/ adapter dir (default: newest RUNS_DIR/*/adapters, else untrained)")
    p.add_argument("--max-question-tokens", type=int, default=d.max_question_tokens)
    p.add_argument("--device", choices=models.DEVICES, default=d.device, help=models.DEVICE_HELP)
    p.add_argument("--engine", choices=engines.ENGINES, default=d.engine, help=engines.ENGINE_HELP)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from flowcore.models import ModelError
    from demo.services import DemoConfig, DemoService
    from demo.ui import build_app, launch_kwargs

    config = DemoConfig(model=args.model, results_dir=args.results_dir, results_root=args.results_root,
                        runs_dir=args.runs_dir, flow_adapters=args.flow_adapters,
                        max_question_tokens=args.max_question_tokens, device=args.device, engine=args.engine)
    try:
        service = DemoService.load(config)
    except (ModelError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print("[flowcore app] building the UI ...", file=sys.stderr, flush=True)
    build_app(service).launch(server_name=args.host, server_port=args.port, **launch_kwargs())
    return 0


if __name__ == "__main__":
    sys.exit(main())
