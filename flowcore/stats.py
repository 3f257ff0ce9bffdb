"""Accuracy with 95% intervals, and paired comparisons between two models."""
from __future__ import annotations

import math


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for k successes in n trials."""
    if n == 0:
        return (0.0, 0.0)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def accuracy(correct: list[bool]) -> dict:
    return proportion(sum(bool(c) for c in correct), len(correct))


def proportion(k: int, n: int) -> dict:
    """k of n with its 95% Wilson interval (``accuracy``'s record)."""
    lo, hi = wilson(k, n)
    return {"n": n, "correct": k, "accuracy": k / n if n else 0.0, "ci95": [lo, hi]}


def fmt(acc: dict) -> str:
    lo, hi = acc["ci95"]
    return f"{100 * acc['accuracy']:.1f}% ({acc['correct']}/{acc['n']}, 95% CI {100 * lo:.1f}-{100 * hi:.1f})"


def mcnemar(a: list[bool], b: list[bool]) -> dict:
    """Exact McNemar test on paired outcomes (same problems, two models)."""
    if len(a) != len(b):
        raise ValueError("paired outcomes must have the same length")
    only_a = sum(1 for x, y in zip(a, b) if x and not y)
    only_b = sum(1 for x, y in zip(a, b) if y and not x)
    n = only_a + only_b
    k = min(only_a, only_b)
    p = min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n) if n else 1.0
    return {"only_a": only_a, "only_b": only_b, "p_value": p}


def paired_difference(a: list[bool], b: list[bool], z: float = 1.96) -> dict:
    """Accuracy of a minus accuracy of b on the same problems: the difference, its 95% Wald interval for
    paired proportions (cut to [-1, 1], which it can leave on a few problems), and the exact McNemar p-value."""
    test = mcnemar(a, b)
    n, only_a, only_b = len(a), test["only_a"], test["only_b"]
    if n == 0:
        return {"n": 0, "difference": 0.0, "ci95": [0.0, 0.0], **test}
    d = (only_a - only_b) / n
    half = z * math.sqrt(max(0.0, only_a + only_b - (only_a - only_b) ** 2 / n)) / n
    return {"n": n, "difference": d, "ci95": [max(-1.0, d - half), min(1.0, d + half)], **test}  # within [-1, 1]


def fmt_difference(diff: dict) -> str:
    lo, hi = diff["ci95"]
    return (f"{100 * diff['difference']:+.1f} points (95% CI {100 * lo:+.1f} to {100 * hi:+.1f}; n={diff['n']}, "
            f"{diff['only_a']} vs {diff['only_b']} discordant, McNemar p={diff['p_value']:.3g})")
