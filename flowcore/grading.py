"""The one place that extracts and judges answers (trainer, evaluator, lm-eval tasks, app).

Extraction is anchored, never "the last number in the text": a partial answer
such as "Step 2: add the eggs" has no answer. In order of priority:
  1. the content of the last ``\\boxed{...}`` (balanced braces; ``\\fbox`` too);
  2. the last "answer is X" / "answer: X" / "#### X" (up to the end of the line).
A completion with neither is ungraded = incorrect; so is one whose box was cut
off mid-way (``answer is \\boxed{4`` at a chunk boundary).

A statement that negates itself ("the answer is not 7", "answer: not 7") is no
anchor; "answer isn't 7" never was one.

Judging:
  * gsm8k: numeric. The last number of the extracted span equals the gold
    number. ``$``, ``%``, thousands separators (``1,500``, ``1{,}500``,
    ``1\\,500``) and units are dropped, and a unit's exponent (``5 \\text{ cm}^2``,
    ``12\\,\\mathrm{m^3}``, ``5 ft^2``) is not a number; scientific notation
    (``1.5\\times10^{3}``, ``1.5 \\cdot 10^3``, ``1.5e3``), powers of numbers (``2^{10}``)
    and fractions (``3/4``, ``\\frac{3}{4}``) are evaluated.
  * math: mathematical equivalence by ``math-verify`` (fractions vs decimals,
    intervals, sets, matrices, ``\\sqrt``, units, percent) after a normalised
    string comparison, which also settles text answers.

Time limit (math): math-verify's own time limit uses ``signal.alarm``, which only
works in the main thread, and a sympy call cannot be stopped from another
thread. So every math-verify check, from any thread, runs in a grading worker:
a subprocess (this file run as a script) spoken to over a pipe, at most
``WORKERS`` of them at once, started on demand and reused. A check that gives
no reply within ``TIME_LIMIT`` seconds gets its worker killed (a fresh one
replaces it on demand) and is reported as ``Grade(correct=False,
timed_out=True)``: "unknown", not "wrong". A check waiting for a free worker
waits at most for the checks ahead of it, each bounded by ``TIME_LIMIT``, and
its own ``TIME_LIMIT`` starts once it has a worker: no grade is ever wrong
because the workers are busy. A worker's start-up (importing sympy) does not
count against ``TIME_LIMIT`` either.
"""
from __future__ import annotations

import atexit
import functools
import json
import os
import re
import select
import subprocess
import sys
import threading
from dataclasses import dataclass

TIME_LIMIT = 5.0  # seconds per math equivalence check (read at each check)
WORKERS = 4  # math checks running at once, one worker subprocess each
START_LIMIT = 120.0  # seconds a new worker may take to import sympy and math-verify

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_ANCHOR = re.compile(
    r"(?:answer\s*(?:is(?![a-z])|:)|####)(?!\s*:?\s*not\b)\s*:?\s*(?P<ans>[^\n]+)",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Grade:
    extracted: str | None  # the answer read from the completion; None = no answer
    correct: bool
    timed_out: bool = False  # the math check ran past TIME_LIMIT (or its worker died): correct=False is unknown, not wrong


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

_SEPARATORS = re.compile(r"\{,\}|\\[,!;: ]|~|,|\\?\$|\\?%")  # 1{,}500  1\,500  \$  \%
_TEXT = re.compile(r"\\(?:text|textrm|textbf|mathrm|mbox|operatorname)\s*\{([^{}]*)\}")
_EXPONENT = r"\^\s*(?:\{\s*[+-]?\d+\s*\}|[+-]?\d+)"
_UNIT_EXPONENT = re.compile(r"(?<![A-Za-z])[A-Za-z]+\s*" + _EXPONENT)  # cm^2, m^{3}
_FRAC = re.compile(r"\\[dt]?frac\{(-?[\d.]+)\}\{(-?[\d.]+)\}")
_NUMBER = re.compile(r"""
    (?P<sign>-?)(?P<num>\d+(?:\.\d+)?)
    (?: /(?P<den>\d+(?:\.\d+)?)                                          # 3/4
      | [eE](?P<e>[+-]?\d+)                                               # 1.5e3
      | \s*(?:\\times|\\cdot|\*|×)\s*10\s*\^\s*\{?\s*(?P<e10>[+-]?\d+)\s*\}?   # 1.5 \times 10^{3}
      | \s*\^\s*\{?\s*(?P<pow>[+-]?\d+)\s*\}?                            # 2^{10}
    )?""", re.VERBOSE)


def _to_number(text: str) -> float | None:
    """Value of the last number in ``text`` (see the module docstring), or None."""
    text = _SEPARATORS.sub("", text)
    text = _TEXT.sub(r" \1 ", text)
    text = _UNIT_EXPONENT.sub(" ", text)
    text = _FRAC.sub(r"\1/\2", text)
    matches = list(_NUMBER.finditer(text))
    if not matches:
        return None
    m = matches[-1]
    try:
        x = float(m["num"])
        if m["den"]:
            x /= float(m["den"])
        elif m["e"] or m["e10"]:
            x *= 10.0 ** int(m["e"] or m["e10"])
        elif m["pow"]:
            x **= int(m["pow"])
    except (ValueError, ZeroDivisionError, OverflowError):
        return None
    return -x if m["sign"] else x


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


class _Worker:
    """A grading subprocess: this file run as a script (see ``_serve``), one JSON line per check."""

    def __init__(self):
        # -P: the script's folder (flowcore/) must not shadow other modules
        self.proc = subprocess.Popen([sys.executable, "-P", os.path.abspath(__file__)], bufsize=0,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        _LIVE.add(self)
        if self._reply(START_LIMIT) != "ready":
            self.kill()
            raise RuntimeError(f"flowcore grading worker did not start (run {sys.executable} -P {__file__} to see why)")

    def _reply(self, timeout: float) -> str | None:
        """The worker's next line, or None if none came within ``timeout`` seconds or it died."""
        poll = select.poll()
        poll.register(self.proc.stdout, select.POLLIN)
        if not poll.poll(timeout * 1000):
            return None
        line = self.proc.stdout.readline()  # unbuffered pipe: reads exactly one line
        return line.decode().strip() if line else None

    def check(self, extracted: str, gold: str, timeout: float) -> bool | None:
        """math-verify's judgement, or None if the worker gave none within ``timeout`` seconds."""
        try:
            self.proc.stdin.write((json.dumps([extracted, gold]) + "\n").encode())
        except OSError:  # died since its last check
            return None
        reply = self._reply(timeout)
        return None if reply is None else reply == "1"

    def kill(self):
        _LIVE.discard(self)
        self.proc.kill()
        self.proc.wait()


_LIVE: set[_Worker] = set()  # every started worker, killed at exit
_IDLE: list[_Worker] = []
_IDLE_LOCK = threading.Lock()
_SLOTS = threading.Semaphore(WORKERS)  # WORKERS is read here, at import
atexit.register(lambda: [w.kill() for w in list(_LIVE)])


def _forget_workers_after_fork():  # a forked child must not talk to its parent's workers
    global _IDLE_LOCK, _SLOTS
    _LIVE.clear()
    _IDLE.clear()
    _IDLE_LOCK, _SLOTS = threading.Lock(), threading.Semaphore(WORKERS)


os.register_at_fork(after_in_child=_forget_workers_after_fork)


def _check_in_worker(extracted: str, gold: str) -> bool | None:
    """math-verify's judgement from a worker, or None if it ran past TIME_LIMIT (its worker is then killed)."""
    with _SLOTS:
        with _IDLE_LOCK:
            worker = _IDLE.pop() if _IDLE else None
        if worker is None or worker.proc.poll() is not None:
            worker = _Worker()
        try:
            result = worker.check(extracted, gold, TIME_LIMIT)
        except BaseException:
            worker.kill()
            raise
        if result is None:
            worker.kill()
        else:
            with _IDLE_LOCK:
                _IDLE.append(worker)
        return result


def _serve():
    """A worker's loop: read ``[extracted, gold]`` lines from stdin, write "1" / "0" lines."""
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # stray prints must not reach the reply pipe
    _math_verify("1", "1", None)  # import sympy and math-verify before saying ready
    print("ready", file=out)
    for line in sys.stdin:
        extracted, gold = json.loads(line)
        try:
            ok = _math_verify(extracted, gold, None)  # no time limit here: the parent kills us
        except Exception:  # sympy failures: an unverifiable answer is not correct
            ok = False
        print("1" if ok else "0", file=out)


def _math_grade(extracted: str, gold: str) -> Grade:
    if _normalise(extracted) == _normalise(gold):
        return Grade(extracted, True)
    result = _check_in_worker(extracted, gold)
    return Grade(extracted, bool(result), timed_out=result is None)


# ---------------------------------------------------------------- public

def grade(completion: str, gold: str, dataset: str) -> Grade:
    # imported here, not at the top: the grading worker runs this file as a script, without flowcore on its path
    from flowcore.data import DATASETS

    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, not {dataset!r}")
    extracted = extract_answer(completion)
    if extracted is None or not gold:
        return Grade(extracted, False)
    if dataset == "gsm8k":
        return Grade(extracted, _gsm8k_equal(extracted, gold))
    return _math_grade(extracted, gold)


def is_correct(completion: str, gold: str, dataset: str) -> bool:
    """True iff the completion's anchored final answer equals ``gold`` ("gsm8k" or "math")."""
    return grade(completion, gold, dataset).correct


if __name__ == "__main__":
    _serve()
