"""Rewards over a multi-turn episode (rewards/episode.py) on hand-built episode dicts, the
shape envs/multi_turn.py gives rewards as `episodes`; every expected value is worked out by
hand in its comment. No model, no env."""

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from rewards.combine import WeightedReward, resolve
from rewards.episode import (call_sequence, final_answer, final_state, matched_in_order, state_mismatch, tool_errors,
                             turn_cost)

ROOT = Path(__file__).resolve().parents[1]
NAMES = {"final_answer": final_answer, "call_sequence": call_sequence, "final_state": final_state,
         "turn_cost": turn_cost, "tool_errors": tool_errors}


def call(name, **args):
    return {"name": name, "arguments": args}


A, B, C = call("f", x=1), call("g", y=2), call("h", z=3)


def episode(*turn_calls, answer=None, state=None, stop=None, tool_errors=0):
    """An episode whose model turns made `turn_calls` (a list per turn; None: did not parse),
    then gave `answer` as a last turn without calls when it is not None."""
    turns = [{"text": "...", "calls": calls, "results": [], "user_turn": 0} for calls in turn_calls]
    if answer is not None:
        turns.append({"text": answer, "calls": [], "results": [], "user_turn": 0})
    calls = [c for t in turns for c in (t["calls"] or [])]
    unparsed = any(t["calls"] is None for t in turns)
    return {"turns": turns, "calls": calls, "final_answer": answer, "final_state": state if state is not None else {},
            "stop": stop or ("unparsed" if unparsed else "answer" if answer is not None else "max_turns"),
            "num_turns": len(turns), "num_calls": len(calls), "tool_errors": tool_errors, "drift": False}


def one(fn, ep, **columns):
    """(value, reason) of fn on a single episode."""
    out = fn(["completion text"], episodes=[ep], **{k: [v] for k, v in columns.items()})
    return out[0], out.reasons[0]


# --- final_answer ---------------------------------------------------------------------------
@pytest.mark.parametrize("given,expected,match,value,reason", [
    ("The capital is Paris.", "paris", "contains", 1.0, None),  # normalised, whole words
    ("  PARIS!! ", "Paris", "exact", 1.0, None),  # case, spaces and end punctuation trimmed
    ("It is Paris", "paris", "exact", 0.0, "wrong_answer"),  # exact: no extra words
    ("The answer is 14", "4", "contains", 0.0, "wrong_answer"),  # "4" inside "14" is not the word 4
    ("The answer is 4.", "4", "contains", 1.0, None),
    ("Lyon", "Paris", "contains", 0.0, "wrong_answer"),
    ("Total: $1,234.50 today", "1234.5", "number", 1.0, None),  # thousands comma, first number
    ("Total: 1234.5", 1234.5, "number", 1.0, None),  # a numeric answer column
    ("about 1234.501", "1234.5", "number", 1.0, None),  # |diff| / 1234.501 = 8.1e-7 <= 1e-6
    ("about 1234.51", "1234.5", "number", 0.0, "wrong_answer"),  # 8.1e-6 > 1e-6
    ("step 2 gives 7", "7", "number", 0.0, "wrong_answer"),  # the first number is 2
    ("it is -3", "-3", "number", 1.0, None),
    ("no number here", "3", "number", 0.0, "wrong_answer"),
    ("forty", "forty", "number", 0.0, "expected_not_a_number"),
    ("It is Paris, France", ["Lutetia", "paris"], "contains", 1.0, None),  # a list of accepted answers
    ("Lyon", ["Lutetia", "paris"], "contains", 0.0, "wrong_answer"),
    ("7 km", ["seven", "7.0"], "number", 1.0, None),  # "seven" has no number and is left out
])
def test_final_answer_matching(given, expected, match, value, reason):
    assert one(lambda *a, **k: final_answer(*a, match=match, **k), episode([A], answer=given), answer=expected) \
        == (value, reason)


def test_final_answer_without_an_answer_names_the_case():
    assert one(final_answer, episode([A], [B]), answer="paris") == (0.0, "no_final_answer")  # stop: max_turns
    assert one(final_answer, episode([A], answer="   "), answer="paris") == (0.0, "no_final_answer")
    assert one(final_answer, episode([A], answer="Paris"), answer=None) == (0.0, "not_applicable")
    assert one(final_answer, episode([A], answer="Paris"), answer="") == (0.0, "not_applicable")
    assert one(final_answer, None, answer="paris") == (0.0, "no_episode")  # a single-turn rollout
    out = final_answer(["a", "b"])  # no episodes, no answer column
    assert list(out) == [0.0, 0.0] and out.reasons == ["no_episode", "no_episode"]
    out = final_answer(["a"], episodes=[episode(answer="Paris")])  # episodes but no answer column
    assert out.reasons == ["not_applicable"]


def test_final_answer_refuses_an_unknown_match():
    with pytest.raises(ValueError, match=r"final_answer: match='fuzzy'.*contains"):
        final_answer(["a"], episodes=[None], answer=["x"], match="fuzzy")


# --- call_sequence --------------------------------------------------------------------------
GOLD = [A, B, C]
SEQUENCE_CASES = [
    # made                gold  ordered  binary          partial F1 (hand)
    ([[A], [B, C]], GOLD, True, (1.0, None), 1.0),  # the calls of all turns, in order
    ([[B, A, C]], GOLD, True, (0.0, "wrong_order"), 2 * 2 / 6),  # LCS [A, C] or [B, C]: 2 of 3 + 3
    ([[B, A, C]], GOLD, False, (1.0, None), 1.0),  # order-free: the same multiset
    ([[A, B]], GOLD, True, (0.0, "missing_calls"), 2 * 2 / 5),
    ([[A], [B], [C, C]], GOLD, True, (0.0, "extra_calls"), 2 * 3 / 7),
    ([[A, call("g", y=3), C]], GOLD, True, (0.0, "wrong_args"), 2 * 2 / 6),
    ([[A, call("k", y=2), C]], GOLD, True, (0.0, "wrong_name"), 2 * 2 / 6),
    ([[call("f", x=1.0), B, C]], GOLD, True, (0.0, "wrong_args"), 2 * 2 / 6),  # types exact: 1.0 is not 1
    ([[B, A]], GOLD, False, (0.0, "missing_calls"), 2 * 2 / 5),  # multiset: A and B match
    ([[A, A]], [A, B], False, (0.0, "wrong_name"), 2 * 1 / 4),  # one A matches; f,f vs f,g
    ([[C, B, A]], GOLD, True, (0.0, "wrong_order"), 2 * 1 / 6),  # reversed: LCS 1
    ([], [], True, (1.0, None), 1.0),  # nothing to call, nothing called
    ([[A]], [], True, (0.0, "extra_calls"), 0.0),
]


@pytest.mark.parametrize("made,gold,ordered,binary,f1", SEQUENCE_CASES)
def test_call_sequence_cases(made, gold, ordered, binary, f1):
    ep = episode(*made, answer="done")
    assert one(call_sequence, ep, ground_truth=gold, order_free=not ordered) == binary
    value, reason = one(lambda *a, **k: call_sequence(*a, partial=True, **k), ep, ground_truth=gold,
                        order_free=not ordered)
    assert value == pytest.approx(f1) and reason == binary[1]


def test_matched_in_order_is_the_longest_common_subsequence():
    assert matched_in_order(list("abcbdab"), list("bdcaba")) == 4  # the textbook LCS example: "bcba"
    assert matched_in_order([], list("ab")) == 0


def test_an_unparsed_turn_scores_zero_even_with_partial_credit():
    ep = episode([A, B], None)  # the second turn did not parse
    assert one(call_sequence, ep, ground_truth=[A, B]) == (0.0, "unparsed")
    assert one(lambda *a, **k: call_sequence(*a, partial=True, **k), ep, ground_truth=[A, B]) == (0.0, "unparsed")


def test_order_free_per_task_overrides_the_default():
    eps = [episode([B, A], answer="ok")] * 3
    gold = [[A, B]] * 3
    out = call_sequence(["", "", ""], episodes=eps, ground_truth=gold, order_free=[True, None, False])
    assert list(out) == [1.0, 0.0, 0.0] and out.reasons == [None, "wrong_order", "wrong_order"]
    out = call_sequence(["", "", ""], episodes=eps, ground_truth=gold, order_free=[True, None, False],
                        order_free_default=True)  # the row without a value takes the default
    assert list(out) == [1.0, 1.0, 0.0]
    out = call_sequence(["", "", ""], episodes=eps, ground_truth=gold, order_free=True)  # one kwarg for all
    assert list(out) == [1.0, 1.0, 1.0]


def test_call_sequence_without_episode_or_gold_and_with_bad_gold():
    assert one(call_sequence, None, ground_truth=[A]) == (0.0, "no_episode")
    assert one(call_sequence, episode([A]), ground_truth=None) == (0.0, "not_applicable")
    assert one(call_sequence, episode([A], [B]), ground_truth=json.dumps([A, B])) == (1.0, None)  # JSON text gold
    with pytest.raises(ValueError, match="fix the dataset row"):  # bad gold is a data error
        one(call_sequence, episode([A]), ground_truth=[{"fn": "f"}])
    with pytest.raises(ValueError, match=r"call_sequence: partial='yes'"):
        call_sequence([""], episodes=[None], ground_truth=[[A]], partial="yes")


# --- final_state ----------------------------------------------------------------------------
STATE = {"TradingBot": {"orders": {12345: {"status": "filled", "qty": 10}}, "balance": 100.0,
                        "watchlist": ["NVDA", "AAPL"], "history": [{"id": 1, "ok": True}]},
         "FS": {"cwd": "/home", "files": ["a.txt"]}}


@pytest.mark.parametrize("expected,path", [
    ({"TradingBot": {"orders": {"12345": {"status": "filled"}}}}, None),  # subset; "12345" finds int key 12345
    ({"TradingBot": {"orders": {"12345": {"status": "open"}}}}, "TradingBot.orders.12345.status"),
    ({"TradingBot": {"orders": {"999": {}}}}, "TradingBot.orders.999"),  # a missing key
    ({"Calendar": {}}, "Calendar"),
    ({"TradingBot": {"balance": 100.0 + 1e-12}}, None),  # within 1e-9
    ({"TradingBot": {"balance": 100}}, None),  # 100 == 100.0 as numbers
    ({"TradingBot": {"balance": 100.0001}}, "TradingBot.balance"),
    ({"TradingBot": {"watchlist": ["NVDA"]}}, "TradingBot.watchlist"),  # lists compare whole
    ({"TradingBot": {"watchlist": ["AAPL", "NVDA"]}}, "TradingBot.watchlist"),  # ... in order
    ({"TradingBot": {"history": [{"id": 1}]}}, "TradingBot.history"),  # a dict in a list compares whole
    ({"TradingBot": {"history": [{"id": 1, "ok": 1}]}}, "TradingBot.history"),  # True is not 1
    ({"FS": {"cwd": {"path": "/home"}}}, "FS.cwd"),  # a mapping expected, a string found
    ({"FS": {"files": ["a.txt"], "cwd": "/home"}}, None),
    ({}, None),  # nothing expected holds for any state
])
def test_final_state_subset_compare(expected, path):
    assert state_mismatch(expected, STATE) == path
    assert one(final_state, episode([A], state=STATE), expected_state=expected) == \
        ((1.0, None) if path is None else (0.0, "state_mismatch"))


def test_final_state_edges():
    assert one(final_state, None, expected_state={"a": 1}) == (0.0, "no_episode")
    assert one(final_state, episode([A], state={"a": 1}), expected_state=None) == (0.0, "not_applicable")
    assert one(final_state, episode([A], state={"a": 1}), expected_state='{"a": 1}') == (1.0, None)  # JSON text
    no_state = {**episode([A]), "final_state": None}
    assert state_mismatch({"a": 1}, None) == "" and one(final_state, no_state, expected_state={"a": 1}) == \
        (0.0, "state_mismatch")
    with pytest.raises(ValueError, match="expected_state.*fix the dataset row"):
        one(final_state, episode([A]), expected_state=[1, 2])


# --- costs ----------------------------------------------------------------------------------
@pytest.mark.parametrize("turns,kwargs,value,reason", [
    ([[A, B], [C], [A], [B, C]], dict(per_turn=0.1, per_call=0.02), -(0.1 * 3 + 0.02 * 6), "extra_turns"),
    ([[A]], dict(per_turn=0.1), 0.0, None),  # one turn is free
    ([[A, B]], dict(per_turn=0.1, per_call=0.05), -0.1, "calls"),  # one free turn, 2 calls * 0.05
    ([[A], [B], [C]], dict(per_turn=0.1, free_turns=2), -0.1, "extra_turns"),
    ([[A], [B], [C]], dict(per_turn=0.1, free_turns=5), 0.0, None),
    ([[A], [B], [C]], dict(), -0.2, "extra_turns"),  # defaults: 0.1 per turn after the first
])
def test_turn_cost(turns, kwargs, value, reason):
    v, r = one(lambda *a, **k: turn_cost(*a, **kwargs, **k), episode(*turns))
    assert v == pytest.approx(value) and r == reason


def test_costs_are_zero_for_single_turn_rollouts_and_check_their_config():
    assert list(turn_cost(["a", "b"])) == [0.0, 0.0] and turn_cost(["a"], episodes=[None]).reasons == [None]
    without_counts = {k: v for k, v in episode([A], [B]).items() if k not in ("num_turns", "num_calls")}
    assert one(turn_cost, without_counts) == (pytest.approx(-0.1), "extra_turns")  # counted from turns
    with pytest.raises(ValueError, match=r"turn_cost: per_turn=-1"):
        turn_cost(["a"], episodes=[None], per_turn=-1)
    with pytest.raises(ValueError, match=r"tool_errors: per_error='x'"):
        tool_errors(["a"], episodes=[None], per_error="x")


def test_tool_errors():
    assert one(tool_errors, episode([A], tool_errors=3)) == (pytest.approx(-0.3), "tool_errors")
    half = one(lambda *a, **k: tool_errors(*a, per_error=0.5, **k), episode([A], tool_errors=1))
    assert half == (-0.5, "tool_errors")
    assert one(tool_errors, episode([A])) == (0.0, None)
    assert one(tool_errors, None) == (0.0, None)


# --- through rewards.combine, as a config names them ---------------------------------------
@pytest.mark.parametrize("name", sorted(NAMES))
def test_each_reward_resolves_by_name_and_by_target(name):
    assert resolve({"name": name}, columns={"ground_truth", "messages"}) == (name, NAMES[name])
    assert resolve({"_target_": f"rewards.episode.{name}"}) == (name, NAMES[name])


def test_a_kwarg_typo_is_refused_at_start_up():
    with pytest.raises(ValueError, match=r"final_answer.*'mtach'.*did you mean 'match'"):
        WeightedReward([{"name": "final_answer", "kwargs": {"mtach": "exact"}}])


def test_weighted_reward_over_episodes_with_the_multi_turn_config():
    functions = list(OmegaConf.to_container(OmegaConf.load(ROOT / "conf/reward/multi_turn.yaml").functions))
    reward = WeightedReward(functions, columns={"ground_truth", "answer", "expected_state", "messages"})
    gold, state = [A, B], {"Bank": {"balance": 5}}
    episodes = [
        episode([A], [B], answer="Balance is 5", state=state),  # all right, 3 turns
        episode([B, A], answer="5", state=state),  # wrong order, 2 turns
        episode([A], None, state={"Bank": {"balance": 7}}),  # unparsed, wrong state, no answer, 2 turns
        None,  # a single-turn rollout
    ]
    out = reward(["c"] * 4, episodes=episodes, ground_truth=[gold] * 4, answer=["5", "5", "5", None],
                 expected_state=[{"Bank": {"balance": 5}}] * 4, messages=[[]] * 4)
    # call_sequence (w 1) + final_state (w 1) + 0.5 * final_answer + turn_cost (0.02 per turn after the first)
    assert out.total == pytest.approx([1 + 1 + 0.5 - 0.04, 0 + 1 + 0.5 - 0.02, 0 + 0 + 0 - 0.02, 0.0])
    assert out.reasons["call_sequence"] == [None, "wrong_order", "unparsed", "no_episode"]
    assert out.reasons["final_state"] == [None, None, "state_mismatch", "no_episode"]
    assert out.reasons["final_answer"] == [None, None, "no_final_answer", "no_episode"]
    assert out.reasons["turn_cost"] == ["extra_turns", "extra_turns", "extra_turns", None]


def test_reasons_reach_trl_logs():
    metrics = {}
    final_answer(["a", "b"], episodes=[episode(answer="Lyon"), episode(answer="Paris")], answer=["Paris"] * 2,
                 log_metric=metrics.__setitem__)
    assert metrics == {"reason/final_answer/wrong_answer": 0.5}
