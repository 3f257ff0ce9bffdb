"""GSM8K and MATH as one ``Problem`` type, from the project's own copy or the hub.

Local copies live in ``flowcore/datafiles/`` (MIT, see its README and LICENSE):
GSM8K train (first 7,000 of 7,473) and test (1,319); MATH train (3,000, PRM800K
train split) and test500 (MATH500). ``source="hub"`` reads ``openai/gsm8k`` /
``EleutherAI/hendrycks_math`` / ``HuggingFaceH4/MATH-500`` instead (needs a network).

A malformed line is never silently mangled: with ``on_error="raise"`` (the
default) loading stops with ``file:line`` and the reason; with ``"skip"`` the
line is left out and reported on stderr.
"""
from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

DATA_DIR = Path(__file__).parent / "datafiles"
DATASETS = ("gsm8k", "math")
SPLITS = {"gsm8k": ("train", "test"), "math": ("train", "test500")}


class DataError(ValueError):
    """A dataset file or line is unusable; the message names file and line."""


@dataclass(frozen=True)
class Problem:
    id: str  # stable: "<dataset>/<split>/<index>" (MATH: its unique_id)
    dataset: str  # "gsm8k" | "math"
    question: str
    gold: str  # the final answer graded against
    solution: str  # the dataset's reference solution (for ground-truth SFT)

    def to_dict(self) -> dict:
        return asdict(self)


def gsm8k_gold(answer_field: str) -> str:
    if "####" not in answer_field:
        raise ValueError("answer has no '#### <number>' line")
    gold = answer_field.rsplit("####", 1)[1].strip().replace(",", "")
    if not gold:
        raise ValueError("empty answer after '####'")
    return gold


def _gsm8k_row(row: dict, split: str, index: int) -> Problem:
    question, answer = row["question"], row["answer"]
    if not isinstance(question, str) or not question.strip():
        raise ValueError("empty 'question'")
    return Problem(f"gsm8k/{split}/{index}", "gsm8k", question.strip(), gsm8k_gold(answer), answer)


def _math_row(row: dict, split: str, index: int) -> Problem:
    problem, solution = row["problem"], row["solution"]
    answer = row.get("answer")
    if answer is None:  # hub MATH has no answer field: it is the last \boxed{} of the solution
        from flowcore.grading import last_boxed

        answer = last_boxed(solution)
    if not isinstance(problem, str) or not problem.strip():
        raise ValueError("empty 'problem'")
    if not answer or not str(answer).strip():
        raise ValueError("no gold answer ('answer' field or \\boxed{} in the solution)")
    pid = row.get("unique_id") or f"math/{split}/{index}"
    return Problem(pid, "math", problem.strip(), str(answer).strip(), solution)


_PARSERS = {"gsm8k": _gsm8k_row, "math": _math_row}


def local_path(dataset: str, split: str) -> Path:
    _check(dataset, split)
    return DATA_DIR / dataset / f"{split}.jsonl"


def _check(dataset: str, split: str) -> None:
    if dataset not in SPLITS:
        raise DataError(f"unknown dataset {dataset!r}; choose from {', '.join(DATASETS)}")
    if split not in SPLITS[dataset]:
        raise DataError(f"{dataset} has splits {', '.join(SPLITS[dataset])}, not {split!r}")


def read_jsonl(path: str | Path, dataset: str, split: str = "custom", on_error: str = "raise") -> list[Problem]:
    """Parse a JSONL file of GSM8K-style or MATH-style rows into Problems."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    parse = _PARSERS[dataset]
    problems: list[Problem] = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                if not isinstance(row, dict):
                    raise ValueError("line is not a JSON object")
                problems.append(parse(row, split, lineno - 1))
            except (json.JSONDecodeError, KeyError, ValueError, TypeError) as e:
                reason = f"missing field {e}" if isinstance(e, KeyError) else str(e)
                msg = f"{path}:{lineno}: bad {dataset} row: {reason}"
                if on_error == "raise":
                    raise DataError(msg + " (pass on_error='skip' / --skip-bad-lines to leave it out)") from e
                print(f"[flowcore] skipped {msg}", file=sys.stderr)
    return problems


def _hub_rows(dataset: str, split: str):
    import datasets

    if dataset == "gsm8k":
        return datasets.load_dataset("openai/gsm8k", "main", split=split)
    if split == "test500":
        return datasets.load_dataset("HuggingFaceH4/MATH-500", split="test")
    subjects = ["algebra", "counting_and_probability", "geometry", "intermediate_algebra",
                "number_theory", "prealgebra", "precalculus"]
    return datasets.concatenate_datasets(
        [datasets.load_dataset("EleutherAI/hendrycks_math", s, split="train") for s in subjects]
    )


def load(dataset: str, split: str, limit: int | None = None, source: str = "local",
         on_error: str = "raise") -> list[Problem]:
    """Problems of ``dataset``/``split`` in file order; ``limit`` keeps the first N."""
    _check(dataset, split)
    if source == "local":
        problems = read_jsonl(local_path(dataset, split), dataset, split, on_error)
    elif source == "hub":
        parse = _PARSERS[dataset]
        problems = []
        for i, row in enumerate(_hub_rows(dataset, split)):
            try:
                problems.append(parse(dict(row), split, i))
            except (KeyError, ValueError) as e:
                if on_error == "raise":
                    raise DataError(f"hub {dataset}/{split} row {i}: {e}") from e
                print(f"[flowcore] skipped hub {dataset}/{split} row {i}: {e}", file=sys.stderr)
    else:
        raise DataError(f"source must be 'local' or 'hub', not {source!r}")
    return problems[:limit] if limit else problems


def custom_problem(question: str, gold: str = "", dataset: str = "gsm8k") -> Problem:
    """A typed-in problem (e.g. from the app); gold may be empty (then it is not graded)."""
    if not question or not question.strip():
        raise DataError("the problem is empty: type a math question")
    return Problem("custom", dataset, question.strip(), gold.strip(), "")
