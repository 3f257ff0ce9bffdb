"""The one grading module: gold solutions grade as correct; an equivalence table; threads."""
import re
import threading
import time

import pytest

from flowcore import data, grading


@pytest.mark.parametrize("dataset,split", [("gsm8k", "train"), ("gsm8k", "test"), ("math", "train"), ("math", "test500")])
def test_every_gold_solution_grades_correct(dataset, split):
    problems = data.load(dataset, split)
    wrong = [p.id for p in problems if not grading.is_correct(p.solution, p.gold, dataset)]
    rate = 1 - len(wrong) / len(problems)
    print(f"{dataset}/{split}: {len(problems)} solutions, {100 * rate:.2f}% grade correct")
    assert wrong == []


@pytest.mark.parametrize("completion,gold,expected", [
    ("so she makes 9 * 2 = $18. The answer is $18.", "18", True),
    ("Total: \\boxed{1,000}", "1000", True),
    ("The answer is 18.00 dollars", "18", True),
    ("\\boxed{\\$18}", "18", True),
    ("\\boxed{18 \\text{ eggs}}", "18", True),
    ("\\boxed{-3}", "-3", True),
    ("\\boxed{0.5}", "0.5", True),
    ("#### 72", "72", True),
    ("The answer is 17", "18", False),
    ("Step 2: multiply by 18", "18", False),  # no anchored answer in a partial answer
    ("She has 18 eggs", "18", False),  # unanchored number is not an answer
    ("\\boxed{7} at first, then \\boxed{18}", "18", True),  # the last box counts
    ("\\boxed{18} at first, then \\boxed{7}", "18", False),
    ("", "18", False),
    ("The answer is \\boxed{18", "18", False),  # box cut off at a chunk boundary: no answer yet
    # a unit's exponent is not the answer
    ("\\boxed{5 \\text{ cm}^2}", "5", True),
    ("\\boxed{5 \\text{ cm}^2}", "2", False),
    ("\\boxed{5\\text{ cm}^{2}}", "5", True),
    ("\\boxed{12\\,\\text{m}^3}", "12", True),
    ("\\boxed{12 \\mathrm{m^3}}", "12", True),
    ("The answer is 5 cm^2.", "5", True),
    ("The answer is 5 ft^{2} of carpet", "5", True),
    # scientific notation and powers of numbers
    ("\\boxed{1.5\\times10^3}", "1500", True),
    ("\\boxed{1.5\\times10^3}", "3", False),
    ("\\boxed{1.5 \\times 10^{3}}", "1500", True),
    ("The answer is 1.5e3", "1500", True),
    ("\\boxed{2.5 \\cdot 10^{-2}}", "0.025", True),
    ("\\boxed{2^{10}}", "1024", True),
    ("\\boxed{2^{10}}", "10", False),
    ("\\boxed{3^2 \\text{ m}^2}", "9", True),
    # thousands separators written in LaTeX
    ("\\boxed{\\$1{,}500}", "1500", True),
    ("\\boxed{1\\,500}", "1500", True),
    # a negated statement is no answer
    ("The answer is not 7, let us continue", "7", False),
    ("The answer is NOT 7.", "7", False),
    ("The answer: not 7", "7", False),
    ("The answer is 7, let us continue", "7", True),  # control: the same without "not"
    ("The answer is not 7. The answer is 8.", "8", True),  # control: a later plain statement counts
])
def test_gsm8k_table(completion, gold, expected):
    assert grading.is_correct(completion, gold, "gsm8k") is expected


@pytest.mark.parametrize("completion,gold,expected", [
    ("\\boxed{\\frac{1}{2}}", "\\frac12", True),
    ("\\boxed{0.5}", "\\frac{1}{2}", True),  # fraction vs decimal
    ("\\boxed{\\dfrac{3}{4}}", "\\frac{3}{4}", True),
    ("\\boxed{[2,5)}", "[2,5)", True),  # interval
    ("\\boxed{(2,5]}", "[2,5)", False),
    ("\\boxed{\\{1, 2, 3\\}}", "\\{3,2,1\\}", True),  # sets are unordered
    ("\\boxed{2\\sqrt{2}}", "\\sqrt{8}", True),
    ("\\boxed{\\sqrt{3}}", "\\sqrt{2}", False),
    ("\\boxed{10 \\text{ cm}}", "10", True),  # units
    ("\\boxed{50\\%}", "50", True),  # percent
    ("\\boxed{\\text{Monday}}", "\\text{Monday}", True),  # text answers
    ("\\boxed{\\text{(C)}}", "\\text{(C)}", True),
    ("\\boxed{\\text{Tuesday}}", "\\text{Monday}", False),
    ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "\\left( 3, \\frac{\\pi}{2} \\right)", True),
    ("\\boxed{x^2+2x+1}", "(x+1)^2", True),
    ("\\boxed{\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}}", "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", True),
    ("\\boxed{\\begin{pmatrix} 1 \\\\ 3 \\end{pmatrix}}", "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", False),
    ("The final answer is $\\frac{3}{5}$.", "\\frac35", True),
    ("Step 2: we get 2", "2", False),  # "Step 2:" is not an answer
    ("\\boxed{3}", "4", False),
])
def test_math_table(completion, gold, expected):
    assert grading.is_correct(completion, gold, "math") is expected


def test_extraction_is_anchored():
    assert grading.extract_answer("Step 2: add") is None
    assert grading.extract_answer("we get \\boxed{\\frac{a}{b}} so") == "\\frac{a}{b}"
    assert grading.extract_answer("Answer: 12") == "12"
    assert grading.extract_answer("The final answer is $\\boxed{5}$.") == "5"
    assert grading.last_boxed("\\boxed{a{b}c}") == "a{b}c"
    assert grading.last_boxed("\\boxed{unclosed") is None
    assert grading.extract_answer("so the answer is \\boxed{4") is None
    assert grading.extract_answer("The answer is not 7, let us continue") is None
    assert grading.extract_answer("The answer isn't 7, let us check") is None
    assert grading.extract_answer("The answer is not $\\frac{3}{5}$, so we continue") is None
    assert grading.extract_answer("The answer is not 7. So the answer is 8.") == "8"


def test_math_grading_off_the_main_thread():
    # math-verify's signal-based timeout fails outside the main thread; ours must not.
    results = {}

    def work():
        results["eq"] = grading.is_correct("\\boxed{0.5}", "\\frac{1}{2}", "math")
        results["ne"] = grading.is_correct("\\boxed{0.4}", "\\frac{1}{2}", "math")

    t = threading.Thread(target=work)
    t.start()
    t.join(30)
    assert results == {"eq": True, "ne": False}


SLOW = "\\boxed{9^{9^{9}}}"  # sympy works on 9^387420489 for minutes


def test_a_math_check_past_the_time_limit_is_reported_and_frees_its_worker(monkeypatch):
    # Pathological answers hold every worker; checks submitted after them must still be right.
    monkeypatch.setattr(grading, "TIME_LIMIT", 1.0)
    grades = {}

    def grade(key, completion, gold):
        grades[key] = grading.grade(completion, gold, "math")

    start = time.monotonic()
    slow = [threading.Thread(target=grade, args=(i, SLOW, "5")) for i in range(5)]  # more than the workers
    later = [threading.Thread(target=grade, args=("eq", "\\boxed{0.5}", "\\frac{1}{2}")),
             threading.Thread(target=grade, args=("ne", "\\boxed{0.4}", "\\frac{1}{2}"))]
    for t in slow:
        t.start()
    time.sleep(0.5)
    for t in later:
        t.start()
    for t in slow + later:
        t.join(60)
    assert grades["eq"] == grading.Grade("0.5", True) and grades["ne"] == grading.Grade("0.4", False)
    assert all(grades[i] == grading.Grade("9^{9^{9}}", False, timed_out=True) for i in range(len(slow)))
    assert grading.grade(SLOW, "5", "math").timed_out  # the main thread too
    assert grading.is_correct("\\boxed{0.5}", "\\frac{1}{2}", "math")
    assert time.monotonic() - start < 30


def test_unknown_dataset_is_refused():
    with pytest.raises(ValueError):
        grading.is_correct("\\boxed{1}", "1", "aime")


def test_the_dataset_names_are_defined_once():
    """``flowcore.data.DATASETS`` is the one list of dataset names; the grader refuses the others by it."""
    from pathlib import Path

    root = Path(data.__file__).parent
    defined = [str(p.relative_to(root)) for p in sorted(root.rglob("*.py"))
               if re.search(r"^DATASETS\s*=", p.read_text(), re.M)]
    assert defined == ["data.py"]
    with pytest.raises(ValueError, match=r"gsm8k.*math.*'aime'"):
        grading.grade("\\boxed{1}", "1", "aime")
