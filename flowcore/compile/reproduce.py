"""`python -m flowcore reproduce --preset cpu|paper`: the paper's compile table, end to end, resumably.

Stages (each skips what its output files already hold, so rerunning the same
command continues a killed run):

1. ``flow-dpo``   online Flow-DPO (``python -m flowcore train``) into the preset's
                  run directory; its ``adapters/`` are the trained flow.
2. ``traces``     on one prompt set from the train splits: ground truth, the
                  base model's zero-shot samples, the trained flow's traces
                  (``<out>/traces/<source>.jsonl``, every sample graded).
3. ``select``     the equal-count selection (``traces.SELECTION_RULE``) into
                  ``<out>/sft_data/<source>.jsonl`` and ``selection.json``.
4. ``sft``        one LoRA SFT adapter per source (paper Table 3) into
                  ``<out>/sft/<source>/`` (peft directories: the app and
                  ``eval_tasks/reproduce_table.py`` load these).
5. ``eval``       the base model zero-shot and the three SFT models on the fixed
                  evaluation subsets (``<out>/eval/<row>/<set>.jsonl``).
6. ``table``      ``<out>/table.md``, ``table.json`` (ours with 95% intervals,
                  McNemar tests, the paper's numbers beside), ``chart.html``/``.png``.

``<out>/config.json`` records the command, preset, model, every setting, seed,
date and git commit; a rerun with other settings is refused (use another --out).
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from flowcore.cli import HelpFormatter
from flowcore import adapters, data, models, results
from flowcore.eval import evaluate
from flowcore.compile import traces
from flowcore.compile.sft import CompileConfig, sft
from flowcore.eval.evaluate import EvalSet
from flowcore.flow.engine import FlowConfig, FlowEngine, zero_shot_config

STAGES = ("flow-dpo", "traces", "select", "sft", "eval", "table")


class ReproduceError(ValueError):
    """A stage cannot run (missing input, mismatched settings); the message says what to do."""


@dataclass(frozen=True)
class PromptSet:
    """``n`` prompts sampled (seeded) from a train split, or from a JSONL file."""

    dataset: str
    n: int
    split: str = "train"
    data_file: str | None = None


@dataclass
class ReproduceConfig:
    preset: str
    out: str
    model: str = models.DEFAULT_MODEL
    prompt_sets: list[PromptSet] = field(default_factory=list)
    prompt_seed: int = 1  # (ours) != the DPO run's seed 0, so the compile prompts are not its training stream
    samples: int = 1  # traces per prompt from each model source (self-generated, flow-generated)
    sample_temperature: float = 0.0  # 0: greedy (one sample is then the model's deterministic answer)
    flow: FlowConfig = field(default_factory=FlowConfig)  # budget and decoding of every model in the pipeline
    dpo_run: str = ""  # run directory of stage flow-dpo
    dpo_args: dict = field(default_factory=dict)  # `python -m flowcore train` flags (without --model/--out)
    eval_sets: list[EvalSet] = field(default_factory=list)
    compile: CompileConfig = field(default_factory=CompileConfig)

    def settings(self) -> dict:
        return asdict(self)


def _cpu() -> ReproduceConfig:
    return ReproduceConfig(
        preset="cpu", out="results/cpu",
        prompt_sets=[PromptSet("gsm8k", 128), PromptSet("math", 64)],
        flow=FlowConfig(batch_size=64),  # decoding 64 rows is ~1.8x the tokens/s of 16 on this CPU
        dpo_run="runs/gsm8k-qwen0.5b-400",
        dpo_args={"dataset": "gsm8k", "examples": 400, "lr": 5e-5, "batch_pairs": 16, "group_size": 32,
                  "batch_size": 64, "checkpoint_every": 32},
        eval_sets=[EvalSet("gsm8k", "test", 100), EvalSet("math", "test500", 50)],
        compile=CompileConfig(micro_batch=2),
    )


def _paper() -> ReproduceConfig:
    return ReproduceConfig(
        preset="paper", out="results/paper",
        prompt_sets=[PromptSet("gsm8k", 1000), PromptSet("math", 500)],  # 1,500 prompts, as the paper
        samples=4, sample_temperature=0.7,
        flow=FlowConfig(batch_size=64),
        dpo_run="runs/gsm8k-paper-2000",
        dpo_args={"dataset": "gsm8k", "examples": 2000},  # paper Table 2 hyperparameters (the defaults)
        eval_sets=[EvalSet("gsm8k", "test"), EvalSet("math", "test500")],
    )


PRESETS = {"cpu": _cpu, "paper": _paper}


def train_argv(cfg: ReproduceConfig) -> list[str]:
    argv = ["--model", cfg.model, "--out", cfg.dpo_run]
    for k, v in cfg.dpo_args.items():
        argv += [f"--{k.replace('_', '-')}", str(v)]
    return argv


class Pipeline:
    def __init__(self, cfg: ReproduceConfig, command: str, flow_adapters: str | None = None,
                 eval_rows: tuple[str, ...] = evaluate.MODELS, eval_sets: tuple[str, ...] | None = None,
                 dtype: str = "auto"):
        self.cfg, self.command = cfg, command
        # a run-time choice like the thread count (recorded in each file's ``runtime``, not in the settings):
        # "auto" is bf16 on AVX512-BF16/AMX CPUs and fp32 elsewhere, so pin it to extend a run on another machine
        self.dtype = dtype
        # stage eval's subset: several processes (or machines) can split the evaluation between them
        self.eval_rows = eval_rows
        self.eval_sets = [es for es in cfg.eval_sets if eval_sets is None or es.name in eval_sets]
        self.out = Path(cfg.out)
        self.explicit_flow = flow_adapters is not None
        self.flow_adapters = Path(flow_adapters) if flow_adapters else Path(cfg.dpo_run) / "adapters"

    # ------------------------------------------------------------ shared

    def start(self) -> None:
        """Write (or check) ``config.json``: one settings set per output directory."""
        path = self.out / "config.json"
        settings = {**self.cfg.settings(), "flow_adapters": str(self.flow_adapters)}
        if path.is_file():
            old = json.loads(path.read_text())["settings"]
            if old != settings:
                diff = results.settings_diff(old, settings)
                raise ReproduceError(f"{self.out} was made with other settings {diff} (old, new); "
                                     "use another --out")
            return
        self.out.mkdir(parents=True, exist_ok=True)
        results.write_json_atomic(path, results.provenance(settings, self.command))

    def base(self):
        """(model, tokenizer): the base model, loaded fresh (each stage attaches its own adapters)."""
        return models.load(self.cfg.model, self.dtype)

    def prompts(self) -> list[data.Problem]:
        from flowcore.online.train import example_order, load_problems

        problems = []
        for ps in self.cfg.prompt_sets:
            pool = load_problems(ps.dataset, ps.split, "local", ps.data_file)
            problems += example_order(pool, ps.n, self.cfg.prompt_seed)
        return problems

    def results_file(self, path: Path, **settings) -> results.ResultsFile:
        return results.ResultsFile(path, {"model": self.cfg.model, **settings}, self.command)

    @staticmethod
    def _note_runtime(out: results.ResultsFile, net) -> None:
        try:
            out.note_runtime(net)
        except ValueError as e:  # a file started in another dtype
            raise ReproduceError(str(e)) from e

    # ------------------------------------------------------------ stages

    def dpo_examples_done(self) -> int:
        return len(results.read_jsonl(Path(self.cfg.dpo_run) / "progress.jsonl"))

    def flow_dpo(self) -> None:
        run, done = Path(self.cfg.dpo_run), self.dpo_examples_done()
        if done >= int(self.cfg.dpo_args["examples"]) and (run / "adapters").is_dir():
            print(f"[flow-dpo] {run}: done ({done} examples)")
            return
        from flowcore.online import train

        argv = train_argv(self.cfg) + (["--resume"] if (run / "config.json").is_file() else [])
        print(f"[flow-dpo] python -m flowcore train {' '.join(argv)}")
        if train.main(argv) != 0:
            raise ReproduceError(f"online Flow-DPO failed; see above (run directory {run})")

    def traces(self) -> None:
        problems = self.prompts()
        tdir = self.out / "traces"
        tdir.mkdir(parents=True, exist_ok=True)
        results.write_json_atomic(tdir / "prompts.json", {"prompt_ids": [p.id for p in problems],
                                                           "prompt_sets": [asdict(s) for s in self.cfg.prompt_sets],
                                                           "seed": self.cfg.prompt_seed})
        gt = traces.ground_truth_records(problems)
        results.write_jsonl_atomic(tdir / "ground_truth.jsonl", gt)
        print(f"[traces] ground truth: {sum(r['correct'] for r in gt)}/{len(gt)} grade correct")
        net, tok = self.base()
        decoding = replace(self.cfg.flow, temperature=self.cfg.sample_temperature)
        # the base model's samples need no trained flow: they come first
        self._collect(net, tok, problems, "self_generated", zero_shot_config(decoding), None)
        if not (self.flow_adapters / "answer" / "adapter_config.json").is_file():
            raise ReproduceError(f"no trained flow at {self.flow_adapters}: run stage flow-dpo first "
                                 "(or pass --flow-adapters DIR)")
        done = self.dpo_examples_done()
        if not self.explicit_flow and done < int(self.cfg.dpo_args["examples"]):
            raise ReproduceError(f"the online-DPO run {self.cfg.dpo_run} is not finished "
                                 f"({done}/{self.cfg.dpo_args['examples']} examples): "
                                 "run stage flow-dpo first (or pass --flow-adapters DIR)")
        net = adapters.load(net, self.flow_adapters)
        self._collect(net, tok, problems, "flow_generated", decoding, str(self.flow_adapters))

    def _collect(self, net, tok, problems, source: str, cfg: FlowConfig, flow_adapters: str | None) -> None:
        out = self.results_file(self.out / "traces" / f"{source}.jsonl", source=source, samples=self.cfg.samples,
                                flow=asdict(cfg), flow_adapters=flow_adapters)
        self._note_runtime(out, net)
        records = traces.collect(FlowEngine(net, tok, cfg), problems, self.cfg.samples, out, desc=source)
        n_ok = len(traces.solved_prompts(records))
        out.finish({"samples": len(records), "correct_samples": sum(r["correct"] for r in records),
                    "prompts_with_a_correct_sample": n_ok})
        print(f"[traces] {source}: {n_ok}/{len(problems)} prompts with a correct sample")

    def select(self) -> None:
        problems = {p.id: p for p in self.prompts()}
        tdir, sdir = self.out / "traces", self.out / "sft_data"
        records = {s: results.read_jsonl(tdir / f"{s}.jsonl") for s in traces.SOURCES}
        empty = [s for s, r in records.items() if not r]
        if empty:
            raise ReproduceError(f"no traces for {', '.join(empty)} in {tdir}: run stage traces first")
        try:
            chosen = traces.select(records, list(problems))
        except traces.SelectionError as e:
            raise ReproduceError(str(e)) from e
        sdir.mkdir(parents=True, exist_ok=True)
        for source, rows in chosen.items():
            results.write_jsonl_atomic(sdir / f"{source}.jsonl",
                                       [{**r, "question": problems[r["problem_id"]].question} for r in rows])
        used = [r["problem_id"] for r in chosen[traces.SOURCES[0]]]
        summary = {"rule": traces.SELECTION_RULE, "prompts": len(problems), "used_prompts": len(used),
                   "traces_per_source": len(used),
                   "used_by_dataset": {d: sum(problems[i].dataset == d for i in used) for d in data.DATASETS},
                   "prompts_with_a_correct_trace": {s: len(traces.solved_prompts(records[s]))
                                                    for s in traces.SOURCES}}
        results.write_json_atomic(sdir / "selection.json", summary)
        print(f"[select] {len(used)} prompts with a correct trace from every source: "
              f"{len(used)} traces per source ({summary['used_by_dataset']})")

    def sft(self) -> None:
        sdir = self.out / "sft_data"
        net = tok = None
        for source in traces.SOURCES:
            target = self.out / "sft" / source
            if (target / "adapter_config.json").is_file():
                print(f"[sft] {source}: done ({target})")
                continue
            rows = results.read_jsonl(sdir / f"{source}.jsonl")
            if not rows:
                raise ReproduceError(f"no SFT data {sdir / (source + '.jsonl')}: run stage select first")
            if net is None:
                net, tok = self.base()
            net = sft(net, tok, source, rows, self.cfg.compile, target,
                      settings={"model": self.cfg.model, "data": str(sdir / f"{source}.jsonl")}, command=self.command)
            print(f"[sft] {source}: {len(rows)} traces -> {target}")

    def eval(self) -> None:
        """Each row on each evaluation set (what is already in the files is kept); the base model first."""
        net, tok = self.base()
        for row in (r for r in evaluate.MODELS if r in self.eval_rows):
            role = None if row == evaluate.ZERO_SHOT else row
            if role:
                directory = self.out / "sft" / row
                if not (directory / "adapter_config.json").is_file():
                    raise ReproduceError(f"no SFT adapter {directory}: run stage sft first")
                if hasattr(net, "peft_config"):
                    net.load_adapter(str(directory), adapter_name=row)
                else:
                    from peft import PeftModel

                    net = PeftModel.from_pretrained(net, str(directory), adapter_name=row)
            for es in self.eval_sets:
                out = self.results_file(self.out / "eval" / row / f"{es.name}.jsonl", row=row,
                                        adapter=str(self.out / "sft" / row) if role else None, eval_set=asdict(es),
                                        flow=asdict(evaluate.single_model_config(self.cfg.flow, role)))
                self._note_runtime(out, net)
                recs = evaluate.evaluate(net, tok, role, es.problems(), out, self.cfg.flow, desc=f"{row} {es.name}")
                out.finish(evaluate.cell(recs))
                print(f"[eval] {evaluate.LABELS[row]} on {es.name}: {evaluate.pct(evaluate.cell(recs))}")

    def outcomes(self) -> dict[str, dict[str, list[dict]]]:
        """The finished evaluation files (for stage table without re-evaluating)."""
        outcomes = {}
        for es in self.cfg.eval_sets:
            ids = [p.id for p in es.problems()]
            outcomes[es.name] = {}
            for row in evaluate.MODELS:
                by_id = {r["problem_id"]: r for r in results.read_jsonl(self.out / "eval" / row / f"{es.name}.jsonl")}
                if not all(i in by_id for i in ids):
                    raise ReproduceError(f"{self.out / 'eval' / row / es.name}.jsonl is incomplete: run stage eval")
                outcomes[es.name][row] = [by_id[i] for i in ids]
        return outcomes

    def table(self) -> dict:
        from flowcore.online.plots import write_figure

        tab = evaluate.table(self.outcomes())
        selection = self.out / "sft_data" / "selection.json"
        tab = {**results.provenance(self.cfg.settings(), self.command),
               "eval_sets": [{**asdict(es), "name": es.name} for es in self.cfg.eval_sets],
               "selection": json.loads(selection.read_text()) if selection.is_file() else None, **tab}
        results.write_json_atomic(self.out / "table.json", tab)
        (self.out / "table.md").write_text(
            f"Made by `{self.command}` (preset {self.cfg.preset}, model {self.cfg.model}, {tab['started']}).\n\n"
            f"Evaluation subsets: {', '.join(es.name for es in self.cfg.eval_sets)}.\n\n" + evaluate.markdown(tab))
        write_figure(evaluate.figure(tab, f"Compile table — {self.cfg.model} ({self.cfg.preset} preset)"),
                     self.out, "chart")
        print(evaluate.markdown(tab))
        return tab

    def run(self, stages=STAGES) -> None:
        self.start()
        for stage in STAGES:
            if stage in stages:
                getattr(self, stage.replace("-", "_"))()


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m flowcore reproduce", description=__doc__,
                                formatter_class=HelpFormatter)
    p.add_argument("--preset", choices=list(PRESETS), required=True,
                   help="cpu: sized for a 2-core CPU (hours, in the background); paper: the paper's sizes (a GPU)")
    p.add_argument("--model", default=None, help="override the preset's model (embedded name, local dir, hub id)")
    p.add_argument("--out", default=None, help="override the output directory (default results/<preset>)")
    p.add_argument("--stages", default="all", help=f"comma-separated subset of {','.join(STAGES)} (default: all)")
    p.add_argument("--flow-adapters", default=None,
                   help="use these trained flow adapters (answer/, stop/) instead of the preset's run; "
                        "then stage flow-dpo is skipped")
    p.add_argument("--rows", default=",".join(evaluate.MODELS),
                   help="stage eval: comma-separated subset of the table's rows (default: all); two processes "
                        "with disjoint subsets split the evaluation (at one thread each, on a 2-core CPU)")
    p.add_argument("--eval-sets", default=None,
                   help="stage eval: comma-separated subset of the preset's evaluation sets, by name "
                        "(e.g. gsm8k-test-first100; default: all)")
    p.add_argument("--dtype", choices=list(models.DTYPES), default="auto",
                   help="model dtype (default auto: bf16 where the CPU/GPU has fast bf16, else fp32); recorded in "
                        "each results file's runtime block. Pin it when resuming a run on a different machine")
    args = p.parse_args(argv)
    cfg = PRESETS[args.preset]()
    if args.model:  # another model trains its own flow
        cfg.model, cfg.dpo_run = args.model, f"runs/{args.preset}-{Path(args.model).name}"
    if args.out:
        cfg.out = args.out
    stages = STAGES if args.stages == "all" else tuple(s.strip() for s in args.stages.split(","))
    rows = tuple(r.strip() for r in args.rows.split(","))
    sets = None if args.eval_sets is None else tuple(s.strip() for s in args.eval_sets.split(","))
    for what, given, known in (("stage", stages, STAGES), ("row", rows, evaluate.MODELS),
                               ("evaluation set", sets or (), [es.name for es in cfg.eval_sets])):
        unknown = [x for x in given if x not in known]
        if unknown:
            print(f"error: unknown {what}(s) {unknown}; choose from {', '.join(known)}", file=sys.stderr)
            return 2
    if args.flow_adapters:
        stages = tuple(s for s in stages if s != "flow-dpo")
    try:
        Pipeline(cfg, results.cli_command("reproduce", argv), args.flow_adapters, rows, sets,
                 args.dtype).run(stages)
    except (ReproduceError, data.DataError, models.ModelError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0
