"""Datasets: shipped copies load, malformed lines are named by file and line."""
import json

import pytest

from flowcore import data


@pytest.mark.parametrize("dataset,split,n", [("gsm8k", "train", 7000), ("gsm8k", "test", 1319),
                                             ("math", "train", 3000), ("math", "test500", 500)])
def test_shipped_files_load(dataset, split, n):
    problems = data.load(dataset, split)
    assert len(problems) == n
    assert len({p.id for p in problems}) == n  # ids are unique
    assert all(p.question and p.gold and p.solution for p in problems)


@pytest.mark.parametrize("dataset,train,test", [("gsm8k", "train", "test"), ("math", "train", "test500")])
def test_train_and_test_splits_share_no_problem(dataset, train, test):
    """Traces and online DPO use the train split; evaluation the test split (MATH's train ids say test/...:
    PRM800K trains on MATH's own test problems outside MATH500)."""
    a, b = data.load(dataset, train), data.load(dataset, test)
    assert not {p.id for p in a} & {p.id for p in b}
    assert not {p.question for p in a} & {p.question for p in b}


def test_gsm8k_fields():
    p = data.load("gsm8k", "test", limit=1)[0]
    assert p.id == "gsm8k/test/0" and p.gold == "18" and p.dataset == "gsm8k"
    assert "####" in p.solution


def test_math_fields():
    p = data.load("math", "test500", limit=1)[0]
    assert p.gold == "\\left( 3, \\frac{\\pi}{2} \\right)" and p.id.startswith("test/")


def test_gold_with_commas_is_normalised():
    assert data.gsm8k_gold("... #### 1,234") == "1234"


def _write(tmp_path, rows):
    f = tmp_path / "bad.jsonl"
    f.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return f


def test_malformed_line_is_refused_with_file_and_line(tmp_path):
    f = _write(tmp_path, [{"question": "q1", "answer": "x #### 1"}, "{not json", {"question": "q3", "answer": "#### 3"}])
    with pytest.raises(data.DataError, match=r"bad\.jsonl:2"):
        data.read_jsonl(f, "gsm8k")


def test_malformed_lines_can_be_skipped_and_are_reported(tmp_path, capsys):
    f = _write(tmp_path, [{"question": "q1", "answer": "x #### 1"}, {"question": "q2", "answer": "no marker"},
                          {"question": "q3"}, {"question": "q4", "answer": "#### 4"}])
    problems = data.read_jsonl(f, "gsm8k", on_error="skip")
    assert [p.question for p in problems] == ["q1", "q4"]
    err = capsys.readouterr().err
    assert "bad.jsonl:2" in err and "bad.jsonl:3" in err


def test_bad_names_are_refused():
    with pytest.raises(data.DataError, match="splits"):
        data.load("gsm8k", "test500")
    with pytest.raises(data.DataError, match="unknown dataset"):
        data.load("aime", "test")


def test_empty_custom_problem_is_refused():
    with pytest.raises(data.DataError, match="empty"):
        data.custom_problem("   ")


def test_datafiles_readme_sha256_match_the_files():
    """Every ``- <file> <sha256>`` line of flowcore/datafiles/README.md names a shipped file with that hash,
    and every shipped .jsonl has such a line."""
    import hashlib
    import re

    listed = dict(re.findall(r"^- (\S+\.jsonl) ([0-9a-f]{64})$", (data.DATA_DIR / "README.md").read_text(), re.M))
    shipped = {str(p.relative_to(data.DATA_DIR)) for p in data.DATA_DIR.rglob("*.jsonl")}
    assert set(listed) == shipped
    wrong = {f: h for f, h in listed.items() if hashlib.sha256((data.DATA_DIR / f).read_bytes()).hexdigest() != h}
    assert not wrong, f"README sha256 differs from the file: {sorted(wrong)}"
