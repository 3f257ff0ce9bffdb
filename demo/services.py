"""Everything the app does with the model, the data and the result files; no Gradio here.

One flow engine (``flowcore.flow.engines.open_engine``: vLLM or transformers, ``DemoConfig.engine``) is
opened once, on the base model with named adapters:
  * ``answer`` / ``stop``: the Flow's adapters, from an online-DPO run
    (default: the latest-started finished run's ``runs/*/adapters``); without one, the
    untrained flow: the base model in both roles;
  * ``sft_ground_truth`` / ``sft_self_generated`` / ``sft_flow_generated``: the
    compiled (SFT) models of FLOW-DPO.md section 3, from
    ``<results_dir>/sft/<source>/`` when those exist.
The zero-shot column is the base model (no adapter). Compare advances the four
models together, one chunk each per step, each flow naming its own Answer
adapter (``FlowState.answer_role``): on vLLM one generate call of four LoRA
requests per step, on transformers one call per adapter.

The engine is shared by every user, so each model step runs under one lock (the
Gradio queue also runs model events one at a time). Reading runs and result
tables lives in ``files``.
"""
from __future__ import annotations

import dataclasses
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch

from flowcore import adapters, data, models
from flowcore.data import DataError, Problem
from flowcore.eval.evaluate import LABELS, MODELS, ZERO_SHOT
from flowcore.flow import engines
from flowcore.flow.engine import Chunk, FlowConfig, FlowEngine, FlowState, Trace
from flowcore.online.rollouts import Exploration, explore_flows

from . import files
from .files import REPRODUCE_CMD, TRAIN_CMD, Figure, find_adapter_dir, newest_flow_adapters

SFT_SOURCES = {m: LABELS[m] for m in MODELS if m != ZERO_SHOT}  # source -> column label (FLOW-DPO.md Table 1)
COLUMNS = {ZERO_SHOT: "0-shot (base model)", **SFT_SOURCES}

PROBLEM_SETS = {"GSM8K test": ("gsm8k", "test"), "MATH test500": ("math", "test500")}
CUT_MARK = " […] "  # stands for the middle of an over-long problem


class InputError(ValueError):
    """Unusable user input; the message is shown in the UI as it is."""


@dataclass
class DemoConfig:
    """Settings of the app (``app.py`` flags map onto these)."""

    model: str = models.DEFAULT_MODEL  # embedded name, local dir or hub id
    device: str = "auto"  # where the model runs (models.DEVICES): auto is the GPU when torch sees one
    engine: str = "auto"  # what runs it (engines.ENGINES): auto is vLLM where installed for the device, else hf
    results_dir: str = "results/cpu"  # SFT adapters at <results_dir>/sft/<source>/ (issue 5's cpu preset)
    results_root: str = "results"  # result tables at <results_root>/*/table.json
    runs_dir: str = "runs"  # online-DPO runs at <runs_dir>/<name>/ (issue 4)
    flow_adapters: str | None = None  # answer/ + stop/ dir; None: newest <runs_dir>/*/adapters, else untrained
    max_question_tokens: int = 768  # longer problems keep their start and end, the middle cut (with a notice)
    compare_chunk_size: int = 32  # Compare streams in chunks of this many tokens
    compare_max_tokens: int = 320  # default answer length in Compare
    rollout_temperature: float = 1.0  # sampling temperature of rollouts (random rollouts, paper section 2)


# ---------------------------------------------------------------- what the UI shows

@dataclass
class Answer:
    """One Compare column."""

    key: str  # zero_shot | ground_truth | self_generated | flow_generated
    label: str
    status: str = "waiting"  # waiting | running | done | missing
    text: str = ""
    n_tokens: int = 0
    message: str = ""  # why a column is missing
    end_reason: str | None = None
    extracted: str | None = None
    correct: bool | None = None  # None: not graded (no gold answer)
    gold: str = ""


@dataclass
class FlowView:
    """The Flow tab's state while a flow (then its rollouts) runs."""

    problem: Problem
    stop_threshold: float
    chunks: list[Chunk] = field(default_factory=list)
    phase: str = "flow"  # flow | rollouts | done
    trace: Trace | None = None
    exploration: Exploration | None = None
    rollouts: int = 0
    message: str = ""  # e.g. why rollouts were not run
    seconds: float = 0.0  # the flow's own time
    rollout_seconds: float = 0.0


def console_log(msg: str) -> None:
    print(f"[flowcore app] {msg}", file=sys.stderr, flush=True)


PAIR_ROLES = {"both": None, "Answer LLM": "answer", "Stop LLM": "stop"}


@dataclass
class PairView:
    """One DPO pair of a training run's ``pairs.jsonl``, with the example it came from."""

    run: str
    number: int  # 1-based, among the pairs of the chosen role
    total: int
    pair: dict | None = None
    question: str = ""  # "" where the problem cannot be looked up
    original: dict | None = None  # the example's progress line: the flow the pair was explored from
    message: str = ""


# ---------------------------------------------------------------- the service

class DemoService:
    """Owns the engine and its adapters; every model call of the app goes through here.

    ``model``/``tokenizer``: a transformers model already in memory (the tests' tiny one), run on the
    transformers engine; ``load`` (the app) opens ``config.model`` on ``config.engine`` instead.
    """

    def __init__(self, model=None, tokenizer=None, config: DemoConfig | None = None,
                 log: Callable[[str], None] | None = None):
        self.cfg = config or DemoConfig()
        self.log = log or console_log
        self.lock = threading.Lock()
        self._problems: dict[str, list[Problem]] = {}
        self._by_id: dict[tuple[str, str], dict[str, Problem]] = {}  # (dataset, split) -> problems by id
        self.flow_adapters = self._find_flow()
        self.sft_adapters, self.sft_missing, sft_dirs = self._find_sft()
        dirs = {**engines.role_dirs(self.flow_adapters), **sft_dirs}
        if model is None:
            self.log(f"[3/3] loading model {self.cfg.model} (device {self.cfg.device}, engine {self.cfg.engine}) ...")
            t0 = time.time()
            self.engine = engines.open_engine(self.cfg.model, adapters=dirs, device=self.cfg.device,
                                              engine=self.cfg.engine)
            self.log(f"[3/3] {self.engine.engine_name} engine ready in {time.time() - t0:.1f}s")
        else:
            self.engine = FlowEngine(adapters.load_named(model, dirs), tokenizer)
        self.tok = self.engine.tok

    @classmethod
    def load(cls, config: DemoConfig, log: Callable[[str], None] | None = None) -> "DemoService":
        """Open the engine on the model named in ``config`` (once, at start-up) with every adapter found."""
        return cls(config=config, log=log)

    # ------------------------------------------------------------ start-up

    def _find_flow(self) -> Path | None:
        explicit = self.cfg.flow_adapters
        directory = Path(explicit) if explicit else newest_flow_adapters(Path(self.cfg.runs_dir))
        if directory is not None:
            self.log(f"[1/3] flow adapters: {directory}")
            return directory
        self.log(f"[1/3] flow adapters: none under {self.cfg.runs_dir}/*/adapters; the flow is UNTRAINED "
                 f"(the base model in both roles; train with `{self.train_command}`)")
        return None

    def _find_sft(self) -> tuple[dict[str, str], dict[str, Path], dict[str, Path]]:
        """(source -> adapter name, source -> where it is missing, adapter name -> directory)."""
        present, missing, dirs = {}, {}, {}
        for source in SFT_SOURCES:
            directory = Path(self.cfg.results_dir) / "sft" / source
            found = find_adapter_dir(directory) if directory.is_dir() else None
            if found is None:
                missing[source] = directory
                self.log(f"[2/3] SFT {source}: missing ({directory}); make it with `{REPRODUCE_CMD}`")
                continue
            present[source] = f"sft_{source}"
            dirs[present[source]] = found
            self.log(f"[2/3] SFT {source}: {found}")
        return present, missing, dirs

    @property
    def train_command(self) -> str:
        return TRAIN_CMD.format(model=self.cfg.model)

    # ------------------------------------------------------------ problems

    def problems(self, problem_set: str) -> list[Problem]:
        if problem_set not in PROBLEM_SETS:
            raise InputError(f"unknown problem set {problem_set!r}; choose one of {', '.join(PROBLEM_SETS)}")
        if problem_set not in self._problems:
            self._problems[problem_set] = data.load(*PROBLEM_SETS[problem_set])
        return self._problems[problem_set]

    def pick(self, problem_set: str, index) -> Problem:
        problems = self.problems(problem_set)
        try:
            i = int(index)
        except (TypeError, ValueError):
            raise InputError(f"the problem number must be a whole number from 0 to {len(problems) - 1}") from None
        if not 0 <= i < len(problems):
            raise InputError(f"{problem_set} has problems 0 to {len(problems) - 1}; there is no number {i}")
        return problems[i]

    def problem(self, problem_set: str, index, question: str, gold: str) -> tuple[Problem, str]:
        """The problem to run and a notice ('' if none).

        The text box is what runs: if it still holds the picked dataset problem
        (and its gold answer) that problem is used; otherwise the typed text is
        a custom problem, graded against ``gold`` when one is given, with the
        picked set's grader.
        """
        question, gold = (question or "").strip(), (gold or "").strip()
        if not question:
            raise InputError("The problem is empty: pick a problem from the list or type a math question.")
        dataset = PROBLEM_SETS.get(problem_set, ("gsm8k", ""))[0]
        problem = None
        try:
            picked = self.pick(problem_set, index)
            if picked.question == question and picked.gold == gold:
                problem = picked
        except InputError:
            pass
        if problem is None:
            try:
                problem = data.custom_problem(question, gold, dataset)
            except DataError as e:
                raise InputError(str(e)) from e
        return self._truncate(problem)

    def _truncate(self, problem: Problem) -> tuple[Problem, str]:
        """Keep an over-long problem's start and end (the question is usually last); the middle becomes CUT_MARK."""
        ids = self.tok(problem.question, add_special_tokens=False).input_ids
        limit = self.cfg.max_question_tokens
        if len(ids) <= limit:
            return problem, ""
        keep = max(2, limit - len(self.tok(CUT_MARK, add_special_tokens=False).input_ids))
        head, tail = keep // 2, keep - keep // 2
        short = (self.tok.decode(ids[:head], skip_special_tokens=True).rstrip() + CUT_MARK
                 + self.tok.decode(ids[-tail:], skip_special_tokens=True).lstrip())
        notice = (f"The problem is {len(ids)} tokens long, over the limit of {limit}: its first {head} and last "
                  f"{tail} tokens are used and the middle was cut (marked {CUT_MARK.strip()}).")
        return dataclasses.replace(problem, question=short), notice

    # ------------------------------------------------------------ Compare

    def compare(self, problem: Problem, max_tokens: int) -> Iterator[list[Answer]]:
        """The four models answer, greedily, one chunk each per step (one engine step for all of them);
        yields before each step (who is generating) and after it (their new chunks)."""
        chunk, max_tokens = self.cfg.compare_chunk_size, max(1, int(max_tokens))
        steps = -(-max_tokens // chunk)
        last = max_tokens - (steps - 1) * chunk  # the last chunk is shorter: the answer stops at max_tokens
        # the single-model baseline loop (no Stop LLM; chunking is only scheduling), the base model unless a
        # flow names its own Answer adapter
        cfg = FlowConfig(chunk_size=chunk, max_steps=steps, temperature=0.0, use_stop=False, answer_role=None,
                         stop_role=None, batch_size=len(COLUMNS))
        engine = self.engine.configured(cfg)
        last_engine = self.engine.configured(dataclasses.replace(cfg, chunk_size=last))
        answers, runs = [], []
        for key, label in COLUMNS.items():
            answer = Answer(key, label, gold=problem.gold)
            answers.append(answer)
            if key != ZERO_SHOT and key not in self.sft_adapters:
                answer.status = "missing"
                answer.message = (f"No {label} adapter at `{self.sft_missing[key]}`. "
                                  f"Make it with: `{REPRODUCE_CMD}`")
                continue
            runs.append((answer, FlowState(problem, answer_role=self.sft_adapters.get(key))))
        yield answers
        for step in range(steps):
            active = [(answer, state) for answer, state in runs if not state.done]
            if not active:
                break
            for answer, _ in active:
                answer.status = "running"
            yield answers
            with self.lock:
                (last_engine if step == steps - 1 else engine).step([state for _, state in active])
            for answer, state in active:
                answer.text = engine.completion(state)
                answer.n_tokens = len(state.answer_ids())
                if state.done:
                    trace = engine.trace(state)
                    answer.status, answer.end_reason = "done", trace.end_reason
                    answer.extracted = trace.extracted
                    answer.correct = trace.correct if problem.gold else None
            yield answers

    # ------------------------------------------------------------ Flow

    def run_flow(self, problem: Problem, chunk_size: int, max_steps: int, rollouts: int,
                 temperature: float | None = None) -> Iterator[FlowView]:
        """Run the Answer/Stop flow step by step, then the rollouts at each node of that same flow."""
        cfg = FlowConfig(chunk_size=int(chunk_size), max_steps=int(max_steps), temperature=0.0)
        engine = self.engine.configured(cfg)
        state = FlowState(problem)
        view = FlowView(problem, cfg.stop_threshold, chunks=state.chunks, rollouts=int(rollouts))
        t0 = time.perf_counter()
        torch.manual_seed(cfg.seed)
        yield view
        while not state.done:
            with self.lock:
                engine.step([state])
            view.seconds = time.perf_counter() - t0
            yield view
        view.trace = engine.trace(state)
        if view.rollouts <= 0:
            view.phase = "done"
            view.message = "Rollouts per node is 0: no rollouts were run."
            yield view
            return
        view.phase = "rollouts"
        yield view
        temperature = self.cfg.rollout_temperature if temperature is None else float(temperature)
        t1 = time.perf_counter()
        with self.lock:
            torch.manual_seed(cfg.seed)
            # the flow on screen, not a new run: its pairs are the ones training would make from it
            [view.exploration] = explore_flows(engine, [state], view.rollouts, temperature, [view.trace])
        view.rollout_seconds = time.perf_counter() - t1
        view.phase = "done"
        yield view

    # ------------------------------------------------------------ Training

    def runs(self) -> list[str]:
        """Run folders under runs_dir, the one whose adapters the Flow tab uses first (``files.list_runs``)."""
        return files.list_runs(Path(self.cfg.runs_dir), self.flow_adapters)

    def run_choice(self, selected: str | None) -> tuple[list[str], str | None]:
        """The runs now on disk and the one to show: ``selected`` if it is still there, else the first."""
        names = self.runs()
        return names, selected if selected in names else (names[0] if names else None)

    def progressive(self, run: str | None) -> Figure:
        """The progressive-accuracy chart of a run, or why there is none."""
        return files.progressive(Path(self.cfg.runs_dir), run, self.train_command)

    def run_pair(self, run: str | None, role: str, number) -> PairView:
        """Pair ``number`` (1-based) of ``role`` (a ``PAIR_ROLES`` key) in ``run``'s ``pairs.jsonl``."""
        if role not in PAIR_ROLES:
            raise InputError(f"unknown role {role!r}; choose one of {', '.join(PAIR_ROLES)}")
        pairs, progress, message = files.run_pairs(Path(self.cfg.runs_dir), run)
        pairs = [p for p in pairs if PAIR_ROLES[role] in (None, p["role"])]
        view = PairView(run or "", 0, len(pairs), message=message)
        if not pairs:
            view.message = message or f"The run has no {'' if role == 'both' else role + ' '}pairs yet."
            return view
        try:
            number = int(number)
        except (TypeError, ValueError):
            raise InputError(f"the pair number must be a whole number from 1 to {len(pairs)}") from None
        if not 1 <= number <= len(pairs):
            raise InputError(f"there is no pair number {number}: this run has {len(pairs)} (1 to {len(pairs)})")
        view.number, view.pair = number, pairs[number - 1]
        view.original = next((r for r in progress if r.get("index") == view.pair["index"]), None)
        view.question = self.question_of(view.pair["example_id"])
        return view

    def question_of(self, problem_id: str) -> str:
        """The question of a dataset problem id (``gsm8k/train/12``); "" for ids of other files."""
        parts = problem_id.split("/")
        if len(parts) != 3 or parts[1] not in data.SPLITS.get(parts[0], ()):
            return ""
        if (parts[0], parts[1]) not in self._by_id:
            self._by_id[parts[0], parts[1]] = {q.id: q for q in data.load(parts[0], parts[1])}
        found = self._by_id[parts[0], parts[1]].get(problem_id)
        return found.question if found else ""

    def results_tables(self) -> list[tuple[Path, object]]:
        """(path, parsed table.json) of the compile tables under ``<results_root>/``, sorted by path."""
        return files.results_tables(Path(self.cfg.results_root))

    def heldout(self, run: str | None) -> tuple[list[tuple[Path, object]], str]:
        """The held-out tables of ``run`` and the command that makes one."""
        command = files.HELDOUT_CMD.format(run_dir=Path(self.cfg.runs_dir) / (run or "NAME"),
                                           results_root=self.cfg.results_root, run=run or "NAME")
        return files.heldout_tables(Path(self.cfg.results_root), run), command
