"""Assemble the Hugging Face Space folder from this repository: `python space/build_space.py [--out DIR]`.

The Space runs the same ``app.py`` as the repository. The folder gets:
  * ``app.py``, ``demo/``, ``flowcore/`` (with its data files), ``LICENSE`` if any;
  * ``README.md`` (the Space's YAML front matter) and ``requirements.txt`` from ``space/``;
  * the result files the app reads, where they exist: ``runs/*/`` (config,
    progress, pairs and baseline JSONL, ``adapters/``) and ``results/*/table.json`` /
    ``table.md``, and the SFT adapters of the app's Compare tab (``<DemoConfig.results_dir>/sft/*/``; other
    results' adapters stay home). Nothing is made up: what is
    missing here is missing there, and the app says which command makes it.
Upload the folder with ``hf upload USER/SPACE_NAME DIR . --repo-type space``.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPACE = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
from demo.services import DemoConfig  # noqa: E402

CODE = ("app.py", "demo", "flowcore", "LICENSE")
# what the Training tab (chart) and the Flow tab (a run's real pairs) read
RUN_FILES = ("config.json", "progress.jsonl", "pairs.jsonl", "baseline_flow.jsonl", "baseline_zero_shot.jsonl",
             "adapters")
RESULT_GLOBS = ("results/*/table.json", "results/*/table.md", f"{DemoConfig.results_dir}/sft/*")
SKIP = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", "checkpoint.pt")


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        shutil.copytree(src, dst, ignore=SKIP, dirs_exist_ok=True)
    else:
        shutil.copy2(src, dst)


def build(out: Path, root: Path = ROOT, with_results: bool = True) -> list[Path]:
    """Write the Space folder to ``out`` (replaced if it exists); returns the top-level paths copied."""
    target, repo = out.resolve(), root.resolve()
    if target in (repo, *repo.parents) or any(target == repo / name or repo / name in target.parents for name in CODE):
        raise ValueError(f"refusing to build into {out}: it would replace the repository's own files")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    copied = []
    for name in CODE:
        if (root / name).exists():
            _copy(root / name, out / name)
            copied.append(out / name)
    for name in ("README.md", "requirements.txt"):
        _copy(SPACE / name, out / name)
        copied.append(out / name)
    if with_results:
        for run in sorted((root / "runs").glob("*/")):
            for name in RUN_FILES:
                if (run / name).exists():
                    _copy(run / name, out / "runs" / run.name / name)
        for pattern in RESULT_GLOBS:
            for path in sorted(root.glob(pattern)):
                _copy(path, out / path.relative_to(root))
    return copied


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(SPACE / "build"), help="folder to write (replaced; default space/build)")
    p.add_argument("--no-results", action="store_true", help="code only: leave out runs/ and results/ files")
    args = p.parse_args(argv)
    out = Path(args.out)
    try:
        build(out, with_results=not args.no_results)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for sub in sorted(out.iterdir()):
        print(f"{_size(sub) / 1e6 if sub.is_dir() else sub.stat().st_size / 1e6:9.2f} MB  {sub.name}")
    print(f"Space folder: {out} ({_size(out) / 1e6:.1f} MB). Upload: hf upload USER/SPACE_NAME {out} . --repo-type space")
    return 0


if __name__ == "__main__":
    sys.exit(main())
