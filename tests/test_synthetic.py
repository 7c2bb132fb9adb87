"""The synthetic generator: seeded, disjoint splits, every category, and gold answers that
the Tool-N1 reward scores 1."""

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
    assert [r["category"] for r in held_out[:4]] == list(synthetic.CATEGORIES)
    assert sum(r["category"] == "irrelevance" for r in held_out) == 25


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
