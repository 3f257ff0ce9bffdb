"""Hooks of the lm-eval tasks flow_gsm8k and flow_math: all of them are flowcore's (flowcore/eval/lm_eval_tasks.py).

lm-eval finds ``!function utils.X`` next to the YAML, so both tasks' YAMLs sit
in this folder and share this file; each names its dataset in ``dataset_kwargs``,
which lm-eval passes to ``load_dataset``. Works from any current directory: the
repository is found from this file's location and put on sys.path before
flowcore is imported.
"""
import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[2]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from flowcore.eval.lm_eval_tasks import doc_to_text, load_dataset, process_results, task_class  # noqa: E402,F401

FlowcoreTask = task_class()
