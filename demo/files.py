"""What the app reads from disk besides the model: adapter folders, online-DPO runs, result tables; no Gradio here."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from flowcore import adapters
from flowcore.online.plots import progressive_figure

REPRODUCE_CMD = "python -m flowcore reproduce --preset cpu"
TRAIN_CMD = "python -m flowcore train --model {model} --dataset gsm8k --examples 400 --out runs/NAME"


@dataclass
class Figure:
    figure: object | None  # plotly Figure, or None with a message
    message: str


def find_adapter_dir(directory: Path) -> Path | None:
    """A peft adapter directory: ``directory`` itself, or its only sub-folder with an adapter."""
    if (directory / "adapter_config.json").is_file():
        return directory
    found = sorted(p.parent for p in directory.glob("*/adapter_config.json"))
    return found[0] if len(found) == 1 else None


def run_started(run_dir: Path) -> str:
    """When a run began, as its ``config.json`` records it ("" if it does not).

    Runs are ordered by this, not by file times: a fresh clone gives every
    file the time of the checkout, so "newest by mtime" would be arbitrary.
    """
    try:
        return str(json.loads((run_dir / "config.json").read_text()).get("started", ""))
    except (OSError, ValueError, AttributeError):
        return ""


def run_unfinished(run_dir: Path) -> bool:
    """True if ``progress.jsonl`` holds fewer lines than the examples ``config.json`` lists (a long run whose
    adapters are committed at the end of each session before it is done)."""
    try:
        planned = len(json.loads((run_dir / "config.json").read_text()).get("example_ids", []))
        with open(run_dir / "progress.jsonl") as f:
            return sum(1 for line in f if line.strip()) < planned
    except (OSError, ValueError, AttributeError):
        return False


def newest_flow_adapters(runs_dir: Path) -> Path | None:
    """The ``<runs_dir>/*/adapters`` holding both answer/ and stop/ adapters of the latest-started finished
    run (of the latest-started unfinished one if no run with adapters is finished)."""
    candidates = [
        d for d in runs_dir.glob("*/adapters")
        if all((d / role / "adapter_config.json").is_file() for role in adapters.ROLES)
    ]
    return max(candidates, key=lambda d: (not run_unfinished(d.parent), run_started(d.parent), d.parent.name),
               default=None)


def list_runs(runs_dir: Path, in_use: Path | None = None) -> list[str]:
    """Run folders under ``runs_dir``: first the run holding ``in_use`` (the Flow tab's adapters), then
    latest-started first (an unfinished run without adapters can be the latest); a folder of runs
    (``runs/sweep``) is not a run."""
    if not runs_dir.is_dir():
        return []
    dirs = [d for d in runs_dir.iterdir() if d.is_dir() and not d.name.startswith(".")
            and not any(d.glob("*/config.json"))]
    in_use = in_use.parent.resolve() if in_use else None
    return [d.name for d in sorted(dirs, key=lambda d: (d.resolve() == in_use, run_started(d), d.name), reverse=True)]


def progressive(runs_dir: Path, run: str | None, train_command: str) -> Figure:
    """The progressive-accuracy chart of a run (flowcore.online.plots), or why there is none."""
    if not run:
        return Figure(None, f"No online-DPO runs under `{runs_dir}/`. Make one with `{train_command}`.")
    run_dir = runs_dir / run
    if not run_dir.is_dir():
        return Figure(None, f"`{run_dir}` does not exist. Make a run with `{train_command}`.")
    try:
        return Figure(progressive_figure(run_dir), "")
    except FileNotFoundError as e:  # its message names the command that makes the file
        return Figure(None, str(e))
    except (KeyError, ValueError) as e:
        return Figure(None, f"{run_dir}: the run's files are unreadable ({type(e).__name__}: {e}).")


HELDOUT_CMD = "python -m flowcore heldout --run {run_dir} --out {results_root}/{run}"


def heldout_run(obj: object) -> str | None:
    """The run folder name a ``python -m flowcore heldout`` table.json evaluated (its ``settings.run``); None
    for other tables (a compile table of ``reproduce``)."""
    run = obj.get("settings", {}).get("run") if isinstance(obj, dict) else None
    return Path(run).name if isinstance(run, str) and run else None


def _tables(results_root: Path) -> list[tuple[Path, object]]:
    tables = []
    for path in sorted(results_root.glob("*/table.json")):
        try:
            tables.append((path, json.loads(path.read_text())))
        except (OSError, ValueError) as e:
            tables.append((path, e))
    return tables


def results_tables(results_root: Path) -> list[tuple[Path, object]]:
    """(path, parsed table.json) for every ``<results_root>/*/table.json`` but the held-out tables of runs
    (``heldout_tables``), sorted by path: the compile tables, shown beside the paper's Table 1."""
    return [(path, obj) for path, obj in _tables(results_root) if heldout_run(obj) is None]


def heldout_tables(results_root: Path, run: str | None) -> list[tuple[Path, object]]:
    """(path, parsed table.json) of the held-out evaluations of ``run`` (``python -m flowcore heldout``)."""
    return [(path, obj) for path, obj in _tables(results_root) if run and heldout_run(obj) == run]


PAIR_FIELDS = ("index", "example_id", "role", "node", "chosen_text", "rejected_text", "reason")


def run_pairs(runs_dir: Path, run: str | None) -> tuple[list[dict], list[dict], str]:
    """(pairs, progress lines, notice) of a run: its ``pairs.jsonl`` rows in file order and its
    ``progress.jsonl`` lines; unreadable lines are left out and counted in the notice."""
    if not run:
        return [], [], f"No online-DPO runs under `{runs_dir}/`."
    run_dir = runs_dir / run
    path = run_dir / "pairs.jsonl"
    if not path.is_file():
        return [], [], f"`{path}` does not exist: the run has not written pairs yet."
    pairs, bad = [], 0
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or any(k not in row for k in PAIR_FIELDS):
                raise ValueError("not a pair")
            pairs.append(row)
        except ValueError:
            bad += 1
    progress = []
    if (run_dir / "progress.jsonl").is_file():
        for line in (run_dir / "progress.jsonl").read_text().splitlines():
            try:
                progress.append(json.loads(line))
            except ValueError:
                bad += 1
    return pairs, progress, (f"{bad} unreadable line(s) in `{run_dir}` left out." if bad else "")
