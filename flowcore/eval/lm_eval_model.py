"""The Answer/Stop flow as an lm-eval model, registered as ``flow``.

    python -m flowcore.eval.lm_eval_cli --model flow \\
        --model_args pretrained=qwen2.5-coder-0.5b-instruct,adapters=DIR,chunk_size=160,max_steps=6 \\
        --include_path eval_tasks --tasks flow_gsm8k,flow_math --batch_size 16

model_args (all optional):
  pretrained      embedded model name, local model directory or hub id (default: flowcore's default)
  adapters        directory with ``answer/`` and ``stop/`` peft adapters (default: none = untrained flow)
  mode            ``flow`` (Answer + Stop LLM) or ``zero-shot`` (base model alone, same token budget)
  chunk_size, max_steps, temperature, top_p, stop_threshold, seed: ``flowcore.flow.engine.FlowConfig`` fields
  dtype           auto | float32 | bfloat16 | float16 (auto: bf16 where the hardware has it, else fp32)
  engine          auto | hf | vllm: what runs the flow (``flowcore.flow.engines``; auto: vLLM where it is
                  installed for the device, else hf, the transformers reference; ``$FLOWCORE_ENGINE`` overrides auto)
  device          auto | cpu | cuda | cuda:N (default: lm-eval's ``--device``, else auto); model_args wins
                  over ``--device``. lm-eval's CLI passes ``cuda:0`` when ``--device`` is not given, so on a
                  machine without CUDA ``cuda:0`` runs on the CPU (a warning says so); ``cuda`` there is an error.
The batch size is lm-eval's ``--batch_size`` (flows advanced together; "auto" means FlowConfig's default).

The question: the flow builds its own prompts (Answer and Stop) from the problem,
so it does not use lm-eval's rendered context. For the flowcore tasks
(``flow_gsm8k``, ``flow_math``) each request's doc carries the Problem
(``question``, ``dataset``, ``gold``, ``id``) and that is what the flow solves.
For any other generative task the request's context string is taken as the
question (a warning says so).

Requests are solved task by task, in lm-eval's document order, with one
``solve`` call per task on one engine, opened once: the same batches, order and seed as
``python -m flowcore generate`` on that dataset and engine, so the completions are the same.
The flow's token budget is ``chunk_size * max_steps``; the task's
``max_gen_toks`` is not used (a warning says when they differ); ``until``
strings, if a task has any, cut the completion as lm-eval's hf model does.
Log-likelihood requests are not supported (the flow only generates).
"""
from __future__ import annotations

import logging
from dataclasses import fields, replace

import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from flowcore import models
from flowcore.data import Problem
from flowcore.flow import engines
from flowcore.flow.engine import FlowConfig, zero_shot_config

log = logging.getLogger("flowcore.lm_eval")

MODES = ("flow", "zero-shot")
_FLOW_FIELDS = {"chunk_size", "max_steps", "temperature", "top_p", "stop_threshold", "seed"}


def _as_type(name: str, value, default):
    if isinstance(default, bool):
        if isinstance(value, str):
            return value.lower() in ("1", "true", "yes")
        return bool(value)
    try:
        return type(default)(value)
    except (TypeError, ValueError) as e:
        raise ValueError(f"flow model_args: {name}={value!r} is not a valid {type(default).__name__}") from e


def flow_config(mode: str = "flow", batch_size=None, **kwargs) -> FlowConfig:
    """A FlowConfig from lm-eval model_args (strings or numbers)."""
    if mode not in MODES:
        raise ValueError(f"flow model_args: mode must be one of {', '.join(MODES)}, not {mode!r}")
    defaults = {f.name: f.default for f in fields(FlowConfig)}
    cfg = FlowConfig(**{k: _as_type(k, v, defaults[k]) for k, v in kwargs.items()})
    if batch_size not in (None, "", "auto") and not str(batch_size).startswith("auto"):
        cfg = replace(cfg, batch_size=_as_type("batch_size", batch_size, 1))
        if cfg.batch_size < 1:
            raise ValueError("flow: batch_size must be at least 1")
    return zero_shot_config(cfg) if mode == "zero-shot" else cfg


LM_EVAL_DEFAULT_DEVICE = "cuda:0"  # what lm-eval's CLI passes when --device is not given (EvaluatorConfig)


def model_device(device) -> str:
    """The device to load on: ``auto`` when none was chosen (lm-eval's unchosen default included)."""
    if device in (None, "", "auto"):
        return "auto"
    if str(device) == LM_EVAL_DEFAULT_DEVICE and not torch.cuda.is_available():
        log.warning("flow: device=%s (lm-eval's default when --device is not given) but torch sees no CUDA "
                    "device: running on the CPU; pass --device cpu to say so", device)
        return "cpu"
    return str(device)


@register_model("flow")
class FlowLM(LM):
    """lm-eval ``LM`` whose ``generate_until`` runs flowcore's batched Answer/Stop flow."""

    def __init__(self, pretrained: str = models.DEFAULT_MODEL, adapters: str | None = None, mode: str = "flow",
                 dtype: str = "auto", engine: str = "auto", batch_size=None, max_batch_size=None, device=None,
                 **flow_args):
        super().__init__()
        unknown = set(flow_args) - _FLOW_FIELDS
        if unknown:
            raise ValueError(
                f"flow model_args: unknown {', '.join(sorted(unknown))}; known: pretrained, adapters, mode, dtype, "
                f"engine, device, {', '.join(sorted(_FLOW_FIELDS))} (batch size: lm_eval --batch_size)")
        if dtype not in models.DTYPES:
            raise ValueError(f"flow model_args: dtype must be one of {', '.join(models.DTYPES)}, not {dtype!r}")
        if engine not in engines.ENGINES:
            raise ValueError(f"flow model_args: engine must be one of {', '.join(engines.ENGINES)}, not {engine!r}")
        self.cfg = flow_config(mode, batch_size, **flow_args)
        self.mode = mode
        self.pretrained, self.adapters = pretrained, adapters
        if adapters and mode != "flow":
            log.warning("flow: mode=zero-shot runs the base model; adapters=%s not loaded", adapters)
        self.engine = engines.open_engine(pretrained, self.cfg, engines.role_dirs(adapters if mode == "flow" else None),
                                          dtype, model_device(device), engine, seed=self.cfg.seed)
        self.tok = self.engine.tok
        self._device = getattr(self.engine.model, "device", None)  # a transformers model's (vLLM: none here)
        self.traces = []  # the flowcore Traces of the last generate_until call, in request order

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict, additional_config: dict | None = None) -> "FlowLM":
        """As lm-eval's, except that a key given in model_args (``device``) wins over the CLI's value
        (lm-eval's own passes both and fails with "multiple values for keyword argument")."""
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None and k not in arg_dict}
        return cls(**arg_dict, **extra)

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> "FlowLM":
        from lm_eval.utils import simple_parse_args_string

        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    # ------------------------------------------------------------ lm-eval API

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        from tqdm import tqdm

        by_task: dict[str | None, list[int]] = {}
        for i, req in enumerate(requests):
            by_task.setdefault(req.task_name, []).append(i)
        budget = self.cfg.chunk_size * self.cfg.max_steps
        traces: list = [None] * len(requests)
        bar = tqdm(total=len(requests), disable=disable_tqdm, desc=f"{self.mode} generate_until")
        for task, rows in by_task.items():
            gen_kwargs = requests[rows[0]].args[1] if len(requests[rows[0]].args) > 1 else {}
            wanted = gen_kwargs.get("max_gen_toks")
            if wanted is not None and int(wanted) != budget:
                log.warning("flow: task %s asks for max_gen_toks=%s; the flow's budget is chunk_size*max_steps=%d",
                            task, wanted, budget)
            problems = [replace(self._problem(requests[i]), id=str(i)) for i in rows]
            for trace in self.engine.solve(problems):
                traces[int(trace.problem_id)] = trace
                bar.update(1)
        bar.close()
        self.traces = traces
        out = []
        for req, trace in zip(requests, traces):
            text = trace.completion
            until = req.args[1].get("until") if len(req.args) > 1 and isinstance(req.args[1], dict) else None
            for stop in [until] if isinstance(until, str) else (until or []):
                if stop:
                    text = text.split(stop)[0]
            out.append(text)
            self.cache_hook.add_partial("generate_until", req.args, text)
        return out

    def _problem(self, req) -> Problem:
        doc = req.doc if isinstance(req.doc, dict) else {}
        if isinstance(doc.get("question"), str) and doc.get("dataset") in ("gsm8k", "math"):
            return Problem(str(doc.get("id", "")), doc["dataset"], doc["question"], str(doc.get("gold", "")),
                           str(doc.get("solution", "")))
        if not getattr(self, "_warned_context", False):
            self._warned_context = True
            log.warning("flow: task %s has no flowcore 'question' field; using the request's context text "
                        "as the question", req.task_name)
        return Problem("lm-eval", "gsm8k", req.args[0], "", "")

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError(
            "the flow model only generates text (generate_until); use it with generative tasks such as "
            "flow_gsm8k / flow_math, and --model hf for log-likelihood (multiple-choice) tasks")

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError(
            "the flow model only generates text (generate_until); use --model hf for perplexity tasks")

    def apply_chat_template(self, chat_history: list[dict], add_generation_prompt: bool = True) -> str:
        """Render as the tokenizer does (only logged in lm-eval's samples: the flow builds its own prompts)."""
        return self.tok.apply_chat_template(chat_history, tokenize=False, add_generation_prompt=add_generation_prompt)

    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.tok, "name_or_path", "flow")).replace("/", "__")

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        return getattr(self.tok, "chat_template", None)

    def get_model_info(self) -> dict:
        return {"flow_mode": self.mode, "flow_pretrained": self.pretrained, "flow_adapters": self.adapters,
                "flow_engine": self.engine.engine_name, "flow_config": self.cfg.settings()}
