"""The one place that extracts and judges answers (trainer, evaluator, lm-eval tasks, app).

Extraction is anchored, never "the last number in the text": a partial answer
such as "Step 2: add the eggs" has no answer. In order of priority:
  1. the content of the last ``\\boxed{...}`` (balanced braces; ``\\fbox`` too);
  2. the last "answer is X" / "answer: X" / "#### X" (up to the end of the line).
A completion with neither is ungraded = incorrect; so is one whose box was cut
off mid-way (``answer is \\boxed{4`` at a chunk boundary).

Judging:
  * gsm8k: numeric. The last number of the extracted span (``$``, commas,
    units and a trailing ``.`` are dropped) equals the gold number.
  * math: mathematical equivalence by ``math-verify`` (fractions vs decimals,
    intervals, sets, matrices, ``\\sqrt``, units, percent) after a normalised
    string comparison, which also settles text answers.

math-verify's own time limit uses ``signal.alarm``, which only works in the main
thread. Off the main thread (Gradio callbacks, lm-eval workers) we run it
without signals in a worker thread and stop waiting after ``TIME_LIMIT``
seconds, grading the answer as incorrect (the abandoned sympy call finishes
in the background).
"""
from __future__ import annotations

import concurrent.futures
import functools
import re
import threading
from dataclasses import dataclass

TIME_LIMIT = 5  # seconds per equivalence check
DATASETS = ("gsm8k", "math")

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_ANCHOR = re.compile(
    r"(?:answer\s*(?:is|:)|####)\s*:?\s*(?P<ans>[^\n]+)",
    re.IGNORECASE,
)
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:/\d+(?:\.\d+)?)?")


@dataclass(frozen=True)
class Grade:
    extracted: str | None  # the answer read from the completion; None = no answer
    correct: bool


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} with balanced braces, or None."""
    starts = [m.end() for m in _BOXED.finditer(text)]
    for start in reversed(starts):
        depth, i = 1, start
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            return text[start : i - 1].strip()
    return None


def _clean_span(span: str) -> str:
    """Drop surrounding ``$`` and a trailing ``.`` on either side of them ("$18." and "18.$" -> "18")."""
    span = re.sub(r"^\$+|\$+$", "", span.strip().rstrip(".").strip()).strip()
    return span.rstrip(".").strip()


def extract_answer(completion: str) -> str | None:
    """The anchored final answer of a completion, or None if it has none."""
    if not completion:
        return None
    boxed = last_boxed(completion)
    if boxed:
        return boxed
    anchors = list(_ANCHOR.finditer(completion))
    for m in reversed(anchors):
        span = _clean_span(m.group("ans"))
        if _BOXED.search(span):
            span = last_boxed(span)  # None if the box was cut off: an unfinished answer is no answer
        if span:
            return span
    return None


# ---------------------------------------------------------------- gsm8k

def _to_number(text: str) -> float | None:
    text = text.replace(",", "").replace("\\$", "").replace("$", "").replace("\\%", "").replace("%", "")
    text = re.sub(r"\\(?:d?frac)\{(-?[\d.]+)\}\{(-?[\d.]+)\}", r"\1/\2", text)
    nums = _NUMBER.findall(text)
    if not nums:
        return None
    num = nums[-1]
    try:
        if "/" in num:
            a, b = num.split("/")
            return float(a) / float(b)
        return float(num)
    except (ValueError, ZeroDivisionError):
        return None


def _gsm8k_equal(extracted: str, gold: str) -> bool:
    pred, ref = _to_number(extracted), _to_number(gold)
    return pred is not None and ref is not None and abs(pred - ref) <= 1e-6 * max(1.0, abs(ref))


# ---------------------------------------------------------------- math

_STRIP = [r"\left", r"\right", r"\!", r"\,", r"\;", r"\:", r"\displaystyle", "$", " ", "\n", r"\dfrac", r"\tfrac"]


def _normalise(s: str) -> str:
    s = re.sub(r"\\text\{\s*([^{}]*?)\s*\}", r"\1", s)
    s = re.sub(r"\\mbox\{\s*([^{}]*?)\s*\}", r"\1", s)
    for tok in _STRIP:
        s = s.replace(tok, r"\frac" if tok in (r"\dfrac", r"\tfrac") else "")
    s = s.replace("^\\circ", "").replace("^{\\circ}", "")
    return s.rstrip(".").lower()


@functools.lru_cache(maxsize=4096)
def _parse(latex: str, timeout: int | None):
    from math_verify import LatexExtractionConfig, ExprExtractionConfig, parse

    return parse(
        f"$\\boxed{{{latex}}}$",
        extraction_config=[LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()],
        parsing_timeout=timeout,
    )


def _math_verify(extracted: str, gold: str, timeout: int | None) -> bool:
    from math_verify import verify

    ref, pred = _parse(gold, timeout), _parse(extracted, timeout)
    if not ref or not pred:
        return False
    return bool(verify(ref, pred, timeout_seconds=timeout))


_POOL = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="flowcore-grade")


def _math_equal(extracted: str, gold: str) -> bool:
    if _normalise(extracted) == _normalise(gold):
        return True
    try:
        if threading.current_thread() is threading.main_thread():
            return _math_verify(extracted, gold, TIME_LIMIT)
        future = _POOL.submit(_math_verify, extracted, gold, None)
        return future.result(timeout=TIME_LIMIT)
    except Exception:  # timeouts, sympy failures: an unverifiable answer is not correct
        return False


# ---------------------------------------------------------------- public

def grade(completion: str, gold: str, dataset: str) -> Grade:
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, not {dataset!r}")
    extracted = extract_answer(completion)
    if extracted is None or not gold:
        return Grade(extracted, False)
    equal = _gsm8k_equal if dataset == "gsm8k" else _math_equal
    return Grade(extracted, equal(extracted, gold))


def is_correct(completion: str, gold: str, dataset: str) -> bool:
    """True iff the completion's anchored final answer equals ``gold`` ("gsm8k" or "math")."""
    return grade(completion, gold, dataset).correct
