"""The stages of `python -m flowcore reproduce` (see ``flowcore.compile.reproduce`` for what each does
and the files it writes): ``Pipeline`` runs them for one ``ReproduceConfig``, each skipping what its output
files already hold.

Every file a model makes records the dtype it ran in (``runtime``): the traces' and evaluations' meta files,
each adapter's ``sft.json``; ``table.json`` lists them (``dtypes``) and says which one it was made of.

The traces and eval stages run the model on the flow engine ``engine`` names (``flowcore.flow.engines``: auto,
hf, vllm), the adapters loaded by name: the flow's ``answer``/``stop``, or each SFT adapter under its row's name.
A file made on vLLM says so in its settings (``"engine": "vllm"``; a file without it was made on hf), so it is
resumed on the same engine only. SFT training runs on transformers/peft whatever the engine.
"""
from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

from flowcore import data, models, results
from flowcore.compile import traces
from flowcore.compile.presets import ReproduceConfig, run_diff, train_argv
from flowcore.compile.sft import sft
from flowcore.eval import evaluate
from flowcore.flow import engines
from flowcore.flow.engine import FlowConfig, FlowEngine, zero_shot_config

STAGES = ("flow-dpo", "traces", "select", "sft", "eval", "table")


class ReproduceError(ValueError):
    """A stage cannot run (missing input, mismatched settings); the message says what to do."""


class Pipeline:
    def __init__(self, cfg: ReproduceConfig, command: str, flow_adapters: str | None = None,
                 rows: tuple[str, ...] = evaluate.MODELS, eval_sets: tuple[str, ...] | None = None,
                 dtype: str = "auto", engine: str = "auto"):
        self.cfg, self.command = cfg, command
        # a run-time choice like the thread count (recorded in each file's ``runtime``, not in the settings):
        # "auto" is bf16 on AVX512-BF16/AMX CPUs and fp32 elsewhere, so pin it to extend a run on another machine
        self.dtype = dtype
        self.engine = engines.choose(engine)  # hf or vllm (recorded in the settings of the files it makes)
        # the table's rows stages sft and eval make (several processes or machines can split the work between
        # them), and stage eval's evaluation sets
        self.rows = rows
        self.eval_sets = [es for es in cfg.eval_sets if eval_sets is None or es.name in eval_sets]
        self.out = Path(cfg.out)
        self.explicit_flow = flow_adapters is not None
        self.flow_adapters = Path(flow_adapters) if flow_adapters else Path(cfg.dpo_run) / "adapters"

    # ------------------------------------------------------------ shared

    def start(self) -> None:
        """Check the trained flow's run, then write (or check) ``config.json``: one settings set per output
        directory."""
        run = self.flow_adapters.parent
        drift = run_diff(self.cfg, run)
        if drift:
            raise ReproduceError(f"the flow in {run} was trained with other settings {drift} (the run's, these): "
                                 "its traces would come from another flow; `python -m flowcore reproduce` takes "
                                 f"the model and flow settings from {run / 'config.json'}")
        path = self.out / "config.json"
        settings = {**self.cfg.settings(), "flow_adapters": str(self.flow_adapters)}
        if path.is_file():
            # directories made before prompt_order was a setting drew their prompts with sample-v1
            old = {"prompt_order": "sample-v1", **json.loads(path.read_text())["settings"]}
            if old != settings:
                diff = results.settings_diff(old, settings)
                raise ReproduceError(f"{self.out} was made with other settings {diff} (old, new); "
                                     "use another --out")
            return
        self.out.mkdir(parents=True, exist_ok=True)
        results.write_json_atomic(path, results.provenance(settings, self.command))

    def base(self):
        """(model, tokenizer): the base model, loaded fresh for SFT training (which attaches its own adapters)."""
        return models.load(self.cfg.model, self.dtype)

    def open_engine(self, adapter_dirs: dict[str, Path]) -> FlowEngine:
        """The flow engine on the base model with the adapters ``{name: peft dir}``."""
        return engines.open_engine(self.cfg.model, adapters=adapter_dirs, dtype=self.dtype, engine=self.engine,
                                   seed=self.cfg.flow.seed)

    def prompts(self) -> list[data.Problem]:
        from flowcore.online.train import example_order, load_problems

        problems = []
        for ps in self.cfg.prompt_sets:
            pool = load_problems(ps.dataset, ps.split, "local", ps.data_file)
            problems += example_order(pool, ps.n, self.cfg.prompt_seed, self.cfg.prompt_order)
        return problems

    def results_file(self, path: Path, **settings) -> results.ResultsFile:
        if self.engine != "hf":
            settings["engine"] = self.engine  # a file made on one engine is not resumed on the other
        try:
            return results.ResultsFile(path, {"model": self.cfg.model, **settings}, self.command)
        except ValueError as e:  # other settings, e.g. another engine
            raise ReproduceError(f"{e} (a file without an 'engine' setting was made with --engine hf)") from e

    @staticmethod
    def _note_runtime(out: results.ResultsFile, engine: FlowEngine) -> None:
        try:
            out.note_runtime(engine)
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
        gt = traces.ground_truth_records(problems)
        if results.read_jsonl(tdir / "ground_truth.jsonl") not in ([], gt):  # the SFT after them learned those
            raise ReproduceError(f"{tdir / 'ground_truth.jsonl'} holds other ground-truth traces (before 2026-12-01 "
                                 "MATH traces had no final-answer sentence): use another --out")
        tdir.mkdir(parents=True, exist_ok=True)
        results.write_json_atomic(tdir / "prompts.json", {"prompt_ids": [p.id for p in problems],
                                                           "prompt_sets": [asdict(s) for s in self.cfg.prompt_sets],
                                                           "seed": self.cfg.prompt_seed,
                                                           "order": self.cfg.prompt_order})
        results.write_jsonl_atomic(tdir / "ground_truth.jsonl", gt)
        print(f"[traces] ground truth: {sum(r['correct'] for r in gt)}/{len(gt)} grade correct")
        decoding = replace(self.cfg.flow, temperature=self.cfg.sample_temperature)
        not_ready = self.flow_not_ready()
        # one engine for both model sources; the base model's samples need no trained flow: they come first
        engine = self.open_engine(engines.role_dirs(None if not_ready else self.flow_adapters))
        self._collect(engine, problems, "self_generated", zero_shot_config(decoding), None)
        if not_ready:
            raise ReproduceError(not_ready)
        self._collect(engine, problems, "flow_generated", decoding, str(self.flow_adapters))

    def flow_not_ready(self) -> str | None:
        """Why the trained flow cannot make traces yet, or None."""
        if not (self.flow_adapters / "answer" / "adapter_config.json").is_file():
            return f"no trained flow at {self.flow_adapters}: run stage flow-dpo first (or pass --flow-adapters DIR)"
        done = self.dpo_examples_done()
        if not self.explicit_flow and done < int(self.cfg.dpo_args["examples"]):
            return (f"the online-DPO run {self.cfg.dpo_run} is not finished "
                    f"({done}/{self.cfg.dpo_args['examples']} examples): "
                    "run stage flow-dpo first (or pass --flow-adapters DIR)")
        return None

    def _collect(self, engine: FlowEngine, problems, source: str, cfg: FlowConfig, flow_adapters: str | None) -> None:
        out = self.results_file(self.out / "traces" / f"{source}.jsonl", source=source, samples=self.cfg.samples,
                                flow=cfg.settings(), flow_adapters=flow_adapters)
        self._note_runtime(out, engine)
        records = traces.collect(engine.configured(cfg), problems, self.cfg.samples, out, desc=source)
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
        for source in (s for s in traces.SOURCES if s in self.rows):
            target = self.out / "sft" / source
            if (target / "adapter_config.json").is_file():
                print(f"[sft] {source}: done ({target})")
                continue
            rows = results.read_jsonl(sdir / f"{source}.jsonl")
            if not rows:
                raise ReproduceError(f"no SFT data {sdir / (source + '.jsonl')}: run stage select first")
            if net is None:
                net, tok = self.base()
            try:
                net = sft(net, tok, source, rows, self.cfg.compile, target,
                          settings={"model": self.cfg.model, "data": str(sdir / f"{source}.jsonl")},
                          command=self.command)
            except ValueError as e:  # e.g. a resume in another dtype or with other settings
                raise ReproduceError(str(e)) from e
            print(f"[sft] {source}: {len(rows)} traces -> {target}")

    def eval(self) -> None:
        """Each row on each evaluation set (what is already in the files is kept); the base model first.

        One engine serves every row: each SFT adapter is loaded under its row's name (``single_model_config``
        makes it the Answer role); a row whose adapter is missing stops the stage when its turn comes."""
        rows = [r for r in evaluate.MODELS if r in self.rows]
        sft_dirs = {row: self.out / "sft" / row for row in rows if row != evaluate.ZERO_SHOT}
        engine = self.open_engine({row: d for row, d in sft_dirs.items() if (d / "adapter_config.json").is_file()})
        for row in rows:
            role = None if row == evaluate.ZERO_SHOT else row
            if role and not (sft_dirs[row] / "adapter_config.json").is_file():
                raise ReproduceError(f"no SFT adapter {sft_dirs[row]}: run stage sft first")
            for es in self.eval_sets:
                out = self.results_file(self.out / "eval" / row / f"{es.name}.jsonl", row=row,
                                        adapter=str(self.out / "sft" / row) if role else None, eval_set=asdict(es),
                                        flow=evaluate.single_model_config(self.cfg.flow, role).settings())
                self._note_runtime(out, engine)
                recs = evaluate.evaluate(engine, role, es.problems(), out, self.cfg.flow, desc=f"{row} {es.name}")
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

    def dtypes(self) -> dict[str, str | None]:
        """The dtype each model-made file behind the table recorded (None: not recorded), by file."""
        files = {f"traces/{s}": self.out / "traces" / f"{s}.meta.json"
                 for s in ("self_generated", "flow_generated")}  # ground truth: no model
        files |= {f"sft/{s}": self.out / "sft" / s / "sft.json" for s in traces.SOURCES}
        files |= {f"eval/{row}/{es.name}": self.out / "eval" / row / f"{es.name}.meta.json"
                  for row in evaluate.MODELS for es in self.cfg.eval_sets}
        return {name: json.loads(path.read_text()).get("runtime", {}).get("dtype") if path.is_file() else None
                for name, path in files.items()}

    def table(self) -> dict:
        from flowcore.online.plots import write_figure

        tab = evaluate.table(self.outcomes())
        selection = self.out / "sft_data" / "selection.json"
        dtypes = self.dtypes()
        found = set(dtypes.values())
        tab = {**results.provenance(self.cfg.settings(), self.command),
               "dtype": found.pop() if len(found) == 1 else "mixed (see dtypes)", "dtypes": dtypes,
               "eval_sets": [{**asdict(es), "name": es.name} for es in self.cfg.eval_sets],
               "selection": json.loads(selection.read_text()) if selection.is_file() else None, **tab}
        results.write_json_atomic(self.out / "table.json", tab)
        (self.out / "table.md").write_text(
            f"Made by `{self.command}` (preset {self.cfg.preset}, model {self.cfg.model}, dtype {tab['dtype']}, "
            f"{tab['started']}).\n\n"
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
