"""The synthetic generator: seeded, disjoint splits, every category, and gold answers that
the Tool-N1 reward scores 1."""

import pytest

from envs import synthetic
from envs.datasets import TaskStream, check_row
from envs.single_turn import gold_answer
from rewards import tool_n1_reward


def test_same_seed_same_rows_other_seed_other_rows():
    assert synthetic.generate(20, 3) == synthetic.generate(20, 3)
    assert synthetic.generate(20, 3) != synthetic.generate(20, 4)


def test_splits_are_disjoint_and_cover_all_categories():
    train, held_out = synthetic.train_eval_split(500, 100, seed=0)
    assert len(train) == 500 and len(held_out) == 100
    train_tasks = {synthetic.task_key(r) for r in train}
    assert not any(synthetic.task_key(r) in train_tasks for r in held_out)
    assert {r["category"] for r in train} == set(synthetic.CATEGORIES)
    # stratified and interleaved: every prefix is balanced across categories
    assert [r["category"] for r in held_out[:5]] == list(synthetic.CATEGORIES)
    assert sum(r["category"] == "irrelevance" for r in held_out) == 20


def test_rows_are_valid_and_category_shapes_hold():
    for row in synthetic.generate(300, 1):
        check_row(row)
        n = len(row["ground_truth"])
        names = {t["name"] for t in row["tools"]}
        if row["category"] == "simple":
            assert n == 1 and len(names) == 1
        elif row["category"] == "multiple":
            assert n == 1 and len(names) >= 2
        elif row["category"] == "parallel":
            assert n >= 2 and len({c["name"] for c in row["ground_truth"]}) == 1
        elif row["category"] == "parallel_multiple":
            assert n >= 2 and len({c["name"] for c in row["ground_truth"]}) == n
        else:
            assert n == 0


def test_gold_answers_score_one():
    rows = synthetic.generate(200, 2)
    scores = tool_n1_reward([gold_answer(r) for r in rows], [r["ground_truth"] for r in rows])
    assert scores == [1.0] * len(rows)


def test_task_stream_resumes_exactly():
    rows = [{"id": i} for i in range(10)]
    a = TaskStream(rows, 4, seed=0)
    for _ in range(3):  # crosses an epoch boundary
        a.next_batch()
    b = TaskStream(rows, 4, seed=0)
    b.load_state_dict(a.state_dict())
    assert [a.next_batch() for _ in range(4)] == [b.next_batch() for _ in range(4)]
    epoch = TaskStream(rows, 5, seed=0)
    assert sorted(r["id"] for r in epoch.next_batch() + epoch.next_batch()) == list(range(10))


def test_stratified_stream_gives_every_batch_each_category_and_resumes_exactly():
    rows = [{"id": i, "category": c} for i, c in enumerate(["simple"] * 5 + ["multiple"] * 5 + ["parallel"] * 5 + ["irrelevance"] * 3)]
    stream = TaskStream(rows, 4, seed=1, stratify=True)
    batches = [stream.next_batch() for _ in range(3)]
    assert all(len({r["category"] for r in b}) == 4 for b in batches)  # irrelevance has 3 rows: 3 full rounds
    epoch = TaskStream(rows, 18, seed=1, stratify=True).next_batch()
    assert sorted(r["id"] for r in epoch) == list(range(18))
    resumed = TaskStream(rows, 4, seed=1, stratify=True)
    resumed.load_state_dict(stream.state_dict())
    assert [stream.next_batch() for _ in range(6)] == [resumed.next_batch() for _ in range(6)]


def test_stratify_weights_give_each_category_its_share_of_every_batch_and_resume_exactly():
    # 6 irrelevance rows against 20 of each other category: the shares come from the weights, not the counts
    rows = [{"id": i, "category": c} for i, c in enumerate(["simple"] * 20 + ["multiple"] * 20 + ["irrelevance"] * 6)]
    stream = TaskStream(rows, 4, seed=3, stratify=True, shares={"irrelevance": 2})
    batches = [stream.next_batch() for _ in range(10)]
    counts = [sum(r["category"] == "irrelevance" for r in b) for b in batches]
    assert sum(counts) == 20 and set(counts) == {2}  # 2 of 4 every batch: weights 2 / (1 + 1 + 2)
    assert all(sum(r["category"] == "simple" for r in b) == 1 for b in batches)
    ids = [r["id"] for b in batches for r in b if r["category"] == "irrelevance"]
    assert sorted(ids[:6]) == list(range(40, 46)) and ids[6:12] == ids[:6]  # each row once, then the rows again
    again = TaskStream(rows, 4, seed=3, stratify=True, shares={"irrelevance": 2})
    assert [again.next_batch() for _ in range(10)] == batches  # seeded
    resumed = TaskStream(rows, 4, seed=3, stratify=True, shares={"irrelevance": 2})
    resumed.load_state_dict(stream.state_dict())
    assert [stream.next_batch() for _ in range(5)] == [resumed.next_batch() for _ in range(5)]
    zero = TaskStream(rows, 4, seed=3, shares={"multiple": 0})  # weights imply stratify; 0 leaves a category out
    assert {r["category"] for _ in range(5) for r in zero.next_batch()} == {"simple", "irrelevance"}


def test_adaptive_shares_follow_the_failures_by_hand_and_resume_exactly():
    rows = [{"id": i, "category": c} for i, c in enumerate(["simple"] * 8 + ["multiple"] * 8 + ["irrelevance"] * 8)]
    stream = TaskStream(rows, 4, seed=5, shares={"irrelevance": 2}, adaptive_floor=0.5)
    assert stream.adaptive.shares() == pytest.approx({"irrelevance": 0.5, "multiple": 0.25, "simple": 0.25})  # fail 0.5: the weights
    first = [stream.next_batch() for _ in range(4)]  # 16 picks at 8 / 4 / 4, exactly (smooth round-robin)
    assert [sorted(r["category"] for r in b) for b in first] == [["irrelevance", "irrelevance", "multiple", "simple"]] * 4
    ids = [r["id"] for b in first for r in b if r["category"] == "irrelevance"]
    assert sorted(ids) == list(range(16, 24))  # each row once per pass
    # irrelevance all right, simple all wrong, multiple not seen (NaN: the function did not apply)
    stream.observe(["irrelevance"] * 4 + ["simple"] * 4 + ["multiple"], [1.0] * 4 + [0.0] * 4 + [float("nan")])
    # fail: irrelevance 0.5 * 0.5 + 0.5 * 0 = 0.25, simple 0.5 * 0.5 + 0.5 * 1 = 0.75, multiple 0.5
    # weight * (floor + fail): irrelevance 2 * 0.75 = 1.5, multiple 1 * 1.0 = 1.0, simple 1 * 1.25 = 1.25; sum 3.75
    want = {"irrelevance": 1.5 / 3.75, "multiple": 1.0 / 3.75, "simple": 1.25 / 3.75}
    assert stream.adaptive.shares() == pytest.approx(want)
    assert stream.metrics() == pytest.approx({f"data/share/{k}": v for k, v in want.items()})
    resumed = TaskStream(rows, 4, seed=5, shares={"irrelevance": 2}, adaptive_floor=0.5)
    resumed.load_state_dict(stream.state_dict())
    assert [stream.next_batch() for _ in range(5)] == [resumed.next_batch() for _ in range(5)]
    assert resumed.adaptive.shares() == pytest.approx(want)
    # simple keeps failing, the others succeed: simple's weight tends to 1.5, multiple's to 0.5, irrelevance's to 1
    for _ in range(20):
        batch = stream.next_batch()
        stream.observe([r["category"] for r in batch], [float(r["category"] != "simple") for r in batch])
    last = [r["category"] for _ in range(10) for r in stream.next_batch()]
    assert stream.adaptive.shares() == pytest.approx({"irrelevance": 1 / 3, "multiple": 1 / 6, "simple": 1 / 2}, abs=1e-4)
    assert all(abs(last.count(k) - share * 40) < 1 for k, share in (("simple", 1 / 2), ("irrelevance", 1 / 3), ("multiple", 1 / 6)))
    assert TaskStream(rows, 4, seed=5).metrics() == {}  # fixed shares: no data/share metrics


@pytest.mark.parametrize("shares, message", [({"parallel": 2}, "no training row has"),
                                             ({"simple": -1}, "finite and >= 0"),
                                             ({"simple": 0, "multiple": 0, "irrelevance": 0}, "above 0")])
def test_stratify_weights_that_cannot_be_met_fail_naming_the_key(shares, message):
    rows = [{"id": i, "category": c} for i, c in enumerate(["simple", "multiple", "irrelevance"] * 2)]
    with pytest.raises(ValueError, match=message) as e:
        TaskStream(rows, 4, seed=0, shares=shares)
    assert "data.stratify_weights" in str(e.value)


def test_builtin_tool_tasks_run_in_the_sandbox():
    from tools.registry import get_tool
    from tools.sandbox import run_named

    builtin = {"calculate", "convert_units", "add_days", "days_between"}
    rows = [r for r in synthetic.generate(300, 5, builtin_tools=True) if {c["name"] for c in r["ground_truth"]} & builtin]
    assert len(rows) > 20
    for row in rows[:40]:
        check_row(row)
        tools = {t["name"]: get_tool(t["name"]) for t in row["tools"] if t["name"] in builtin}
        results = run_named([c for c in row["ground_truth"] if c["name"] in builtin], tools)
        assert all(r.ok for r in results), (row, results)


def test_typed_tools_cover_bfcl_argument_types_and_gold_validates():
    from envs.datasets import tool_n1_filter

    rows = synthetic.generate(400, 2, builtin_tools=True, typed_tools=True)
    types = set()
    for row in rows:
        tool_n1_filter(check_row(row))  # every gold call validates against its own schema
        for call in row["ground_truth"]:
            types |= {type(v).__name__ for v in call["arguments"].values()}
    assert {"str", "int", "float", "bool", "list", "dict"} <= types
    flights = [c["arguments"] for r in rows for c in r["ground_truth"] if c["name"] == "book_flight"]
    with_optional = [a for a in flights if "refundable" in a]
    assert 0 < len(with_optional) < len(flights)  # the optional argument only when the request says it
    for row in rows:
        for call in row["ground_truth"]:
            if call["name"] == "book_flight" and "refundable" in call["arguments"]:
                assert "refundable" in row["messages"][-1]["content"]
    scores = tool_n1_reward([gold_answer(r) for r in rows], ground_truth=[r["ground_truth"] for r in rows])
    assert scores == [1.0] * len(rows)


def test_parallel_multiple_calls_several_different_tools():
    rows = synthetic.generate(200, 5, categories=["parallel_multiple"], typed_tools=True)
    for row in rows:
        names = [c["name"] for c in row["ground_truth"]]
        assert 2 <= len(names) <= 3 and len(set(names)) == len(names)
        assert set(names) <= {t["name"] for t in row["tools"]}


def test_bfcl_disjoint_names_and_descriptions():
    import os

    import pytest

    if os.environ.get("TOOLCALL_RL_REQUIRE_BFCL") != "1":
        pytest.importorskip("bfcl_eval")
    from rl import bfcl

    names, descriptions = set(), set()
    for category in bfcl.SINGLE_TURN:
        for entry in bfcl.load_category(category):
            names |= {f["name"] for f in entry["function"]}
            descriptions |= {f.get("description") for f in entry["function"]}
    plain = synthetic.catalog(builtin_tools=True, typed_tools=True)
    assert {s.name for s in plain} & names  # the plain names do overlap with BFCL's...
    disjoint = synthetic.catalog(builtin_tools=True, typed_tools=True, bfcl_disjoint=True)
    assert not {s.name for s in disjoint} & names  # ...the switch removes every overlap
    assert not {s.schema["description"] for s in disjoint} & descriptions
    rows = synthetic.generate(100, 0, bfcl_disjoint=True, typed_tools=True)
    assert not {t["name"] for r in rows for t in r["tools"]} & names


def test_near_miss_irrelevance_asks_for_a_tool_that_is_not_offered():
    rows = synthetic.generate(400, 5, categories=["irrelevance"], near_miss=0.5)
    asks = {t.name: t for t in synthetic.TOOLS}
    near = [r for r in rows if r["messages"][-1]["content"] not in synthetic.IRRELEVANT]
    assert 150 <= len(near) <= 250  # about half
    for row in rows:
        check_row(row)
        assert row["ground_truth"] == []
    for row in near:  # the request is one some catalog tool answers, and that tool is not offered
        offered = {t["name"] for t in row["tools"]}
        fits = [name for name, spec in asks.items()
                if any(_matches(template, row["messages"][-1]["content"]) for template in spec.templates)]
        assert fits and not set(fits) & offered, (row["messages"][-1]["content"], offered)
    # 0 keeps the rows exactly as before; the whole split honours the share
    assert synthetic.generate(50, 5) == synthetic.generate(50, 5, near_miss=0.0)
    _, held_out = synthetic.train_eval_split(400, 40, seed=0, near_miss=1.0)
    assert all(r["messages"][-1]["content"] not in synthetic.IRRELEVANT for r in held_out if r["category"] == "irrelevance")


def _matches(template: str, text: str) -> bool:
    import re
    import string

    pattern = "".join(re.escape(lit) + (".+?" if field else "") for lit, field, _, _ in string.Formatter().parse(template))
    return re.fullmatch(pattern, text) is not None
