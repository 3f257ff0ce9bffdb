"""The one grading module: gold solutions grade as correct; an equivalence table; threads."""
import threading

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


def test_unknown_dataset_is_refused():
    with pytest.raises(ValueError):
        grading.is_correct("\\boxed{1}", "1", "aime")
