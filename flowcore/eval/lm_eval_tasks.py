"""What the lm-eval tasks ``flow_gsm8k`` and ``flow_math`` (``eval_tasks/``) are made of.

The YAML files (``eval_tasks/flow_tasks/``: one template, one file per task
naming its dataset) only point here through the folder's one ``utils.py``, so
the data, the prompt and the judging are flowcore's own, never a second copy:

* docs: ``flowcore.data.load`` (the project's files; ``source="hub"`` reads the
  hub instead), one row per ``Problem`` plus the two chat turns of the prompt;
* prompt: ``flowcore.prompts.answer_messages`` -- the system turn is the doc's
  ``system`` field (the YAML's ``description: system``), the user turn is
  ``doc_to_text``. With ``--apply_chat_template`` lm-eval renders
  ``[system, user]`` with the tokenizer's chat template and an open assistant
  turn, which is exactly ``prompts.answer_prompt(tokenizer, question)``;
* scoring: ``flowcore.grading.grade`` -> ``exact_match`` (correct) and
  ``has_answer`` (an anchored final answer was found), both means with stderr.

The ``flow`` lm-eval model (``flowcore.eval.lm_eval_model``) reads the doc's
``question``/``dataset``/``gold`` fields directly and builds the flow's own
prompts from them.
"""
from __future__ import annotations

import os

from flowcore import data, grading, prompts

SOURCE_ENV = "FLOWCORE_DATA_SOURCE"  # "local" (default) or "hub"
TEST_SPLIT = {"gsm8k": "test", "math": "test500"}


def docs(dataset: str, split: str | None = None, source: str | None = None) -> list[dict]:
    """One lm-eval doc per problem: the Problem's fields plus the prompt's two turns."""
    split = split or TEST_SPLIT[dataset]
    source = source or os.environ.get(SOURCE_ENV) or "local"
    rows = []
    for p in data.load(dataset, split, source=source):
        system, user = prompts.answer_messages(p.question)
        rows.append({**p.to_dict(), "system": system["content"], "user": user["content"]})
    return rows


def load_dataset(dataset: str, source: str | None = None, **metadata) -> dict:
    """``custom_dataset`` hook: ``{split: datasets.Dataset}``.

    lm-eval passes the task YAML's ``dataset_kwargs`` (``dataset``) and the
    run's metadata (``--metadata`` JSON and the model_args) as keyword
    arguments; of the metadata only ``source`` ("local" | "hub") is read here,
    the rest (``pretrained``, ``version``, ...) is ignored.
    """
    import datasets

    split = TEST_SPLIT[dataset]
    return {split: datasets.Dataset.from_list(docs(dataset, split, source))}


def doc_to_text(doc: dict) -> str:
    """The user turn of flowcore's answer prompt (the question plus the format line)."""
    return doc["user"]


def process_results(doc: dict, results: list[str]) -> dict[str, float]:
    """Judge the completion with flowcore's one grader."""
    g = grading.grade(results[0], doc["gold"], doc["dataset"])
    return {"exact_match": float(g.correct), "has_answer": float(g.extracted is not None)}


def task_class():
    """The task class named by the YAML's ``class:`` (a ConfigurableTask that explains a missing chat template).

    Built lazily so importing this module does not import lm_eval.
    """
    global _TASK_CLASS
    if _TASK_CLASS is None:
        _TASK_CLASS = _make_task_class()
    return _TASK_CLASS


_TASK_CLASS = None


def _make_task_class():
    import logging

    from lm_eval.api.task import ConfigurableTask

    log = logging.getLogger("flowcore.lm_eval")

    class FlowcoreTask(ConfigurableTask):
        """ConfigurableTask whose prompt without ``--apply_chat_template`` is readable and flagged.

        lm-eval's plain-text rendering would glue the system turn to the question
        with no separator; flowcore never sends that prompt, so we render
        ``system + "\\n\\n" + user`` instead and say once that the score is then
        not comparable with flowcore's.
        """

        _warned = False

        def __init__(self, config: dict | None = None):
            super().__init__(config={k: v for k, v in (config or {}).items() if k != "class"})

        def fewshot_context(self, doc, num_fewshot, system_instruction=None, apply_chat_template=False,
                            fewshot_as_multiturn=False, chat_template=None, gen_prefix=None):
            if apply_chat_template and chat_template:
                return super().fewshot_context(
                    doc, num_fewshot, system_instruction=system_instruction,
                    apply_chat_template=apply_chat_template, fewshot_as_multiturn=fewshot_as_multiturn,
                    chat_template=chat_template, gen_prefix=gen_prefix)
            if not FlowcoreTask._warned:
                FlowcoreTask._warned = True
                log.warning(
                    "%s: run lm_eval with --apply_chat_template; without it the prompt is plain text "
                    "(system + blank line + question), not flowcore's chat prompt, so the score is not "
                    "comparable with `python -m flowcore generate` (the `flow` model is unaffected: it "
                    "builds its own prompts).", self.config.task)
            parts = [system_instruction, doc["system"], doc_to_text(doc)]
            return "\n\n".join(p for p in parts if p)

    return FlowcoreTask
