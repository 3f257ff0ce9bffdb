"""Hooks of the lm-eval task flow_gsm8k: everything comes from flowcore (see flowcore/lm_eval_tasks.py).

Works from any current directory: the repository is found from this file's
location and put on sys.path before flowcore is imported.
"""
import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[2]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from flowcore.eval import lm_eval_tasks as _tasks  # noqa: E402

FlowcoreTask = _tasks.task_class()
doc_to_text = _tasks.doc_to_text
process_results = _tasks.process_results


def load_dataset(**metadata):
    """custom_dataset hook; `--metadata '{"source": "hub"}'` or FLOWCORE_DATA_SOURCE=hub reads the hub."""
    return _tasks.load_dataset("gsm8k", **metadata)
