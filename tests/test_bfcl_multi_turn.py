"""BFCL multi-turn: BFCL's entries as tasks, BFCL's API classes as episode tools, synthetic
tasks over them, and scoring with BFCL's own multi-turn checker (gold answers pass, perturbed
ones get the verdict BFCL's checker gives, unsafe call strings never reach its eval).
CI installs bfcl-eval and sets TOOLCALL_RL_REQUIRE_BFCL=1, so these never skip there."""

import copy
import json
import os
import uuid

import pytest

if os.environ.get("TOOLCALL_RL_REQUIRE_BFCL") != "1":
    pytest.importorskip("bfcl_eval", reason="bfcl-eval is not installed (README: BFCL)")

from envs import bfcl_multi_turn as data  # noqa: E402
from rl import bfcl_multi_turn as mt  # noqa: E402
from tools.sandbox import run_call  # noqa: E402


@pytest.fixture(scope="module")
def base():
    return data.load_multi_turn("multi_turn_base")


def bfcl_namespace() -> dict:
    from bfcl_eval.eval_checker.multi_turn_eval import multi_turn_utils

    return vars(multi_turn_utils)


def direct_verdict(entry, turns) -> dict:
    """bfcl-eval's checker called directly, as its runner does (empty steps dropped)."""
    from bfcl_eval.eval_checker.multi_turn_eval.multi_turn_checker import multi_turn_checker

    model = f"direct_{uuid.uuid4().hex}"
    decoded = [[step for step in turn if step] for turn in turns]
    test_entry = {k: entry[k] for k in ("id", "initial_config", "involved_classes")}
    try:
        return multi_turn_checker(decoded, entry["ground_truth_turns"], test_entry, entry["category"], model)
    finally:
        for key in [k for k in bfcl_namespace() if k.startswith(model)]:
            del bfcl_namespace()[key]


def gold_turns(entry) -> list:
    return [[list(turn)] if turn else [] for turn in entry["ground_truth_turns"]]


def test_multi_turn_base_loads_as_tasks_with_tools_and_ground_truth(base):
    assert len(base) >= 100
    for task in base:
        names = [t["name"] for t in task["tools"]]
        assert names and len(names) == len(set(names))
        assert all(t["parameters"]["type"] == "object" for t in task["tools"])
        assert task["messages"][0]["role"] == "user" and task["messages"][0]["content"]
        assert len(task["ground_truth_turns"]) == 1 + len(task["user_turns"])
        assert all(c is not None and c["name"] in names for c in task["ground_truth"])
        assert task["initial_config"] is not None and task["involved_classes"]
    json.dumps(base)  # rows are JSON data


def test_positional_answers_become_keyword_calls(base):
    sort = base[0]["ground_truth"][5]
    assert base[0]["ground_truth_turns"][2] == ["sort('final_report.pdf')"]
    assert sort == {"name": "sort", "arguments": {"file_name": "final_report.pdf"}}


def test_miss_func_holds_functions_back_until_their_turn():
    task = data.load_multi_turn("multi_turn_miss_func", limit=1)[0]
    (turn, added), = task["added_tools"].items()
    assert added and not {t["name"] for t in added} & {t["name"] for t in task["tools"]}
    assert task["user_turns"][int(turn) - 1][0]["content"] == data.backend()["added_prompt"]
    with pytest.raises(ValueError, match="multi_turn_base"):
        data.load_multi_turn("multi_turn_composite")


def test_gold_answers_score_100_percent(base):
    entries = base[:20] + data.load_multi_turn("multi_turn_miss_func", limit=5)
    result = mt.score_multi_turn("multi_turn_base", {e["id"]: gold_turns(e) for e in entries}, entries)
    assert result["correct"] == result["n"] == 25, result["errors"]


def perturb(entry, kind: int) -> list:
    turns = copy.deepcopy(entry["ground_truth_turns"])
    t = next(i for i, turn in enumerate(turns) if turn)
    if kind == 0:  # a step dropped
        turns[t] = turns[t][:-1]
    elif kind == 1:  # an argument changed
        call = data.keyword_call(turns[t][-1], entry["involved_classes"])
        key = next((k for k, v in call["arguments"].items() if isinstance(v, str)), None)
        call["arguments"][key or "unexpected"] = "zz_definitely_wrong"
        turns[t][-1] = mt.safe_call_string(call)
    else:  # a function swapped for another of the same classes
        call = data.keyword_call(turns[t][-1], entry["involved_classes"])
        other = next(s["name"] for s in entry["tools"] if s["name"] != call["name"])
        turns[t][-1] = mt.safe_call_string({"name": other, "arguments": call["arguments"]})
    return [[turn] if turn else [] for turn in turns]


def test_perturbed_answers_get_bfcls_own_verdict(base):
    wrong = 0
    for n, entry in enumerate(base[:15]):
        turns = perturb(entry, n % 3)
        ours = mt.score_entry_multi_turn(entry, turns)
        theirs = direct_verdict(entry, turns)
        assert ours["valid"] == theirs["valid"], (entry["id"], turns, theirs)
        if not theirs["valid"]:
            assert ours["error_type"] == theirs["error_type"]
            wrong += 1
    assert wrong >= 12


UNSAFE = ["__import__('os').system('touch {m}')", "f(a=open('{m}', 'w'))", "os.system('touch {m}')",
          "open('{m}', 'w')", "exec(\"open('{m}', 'w')\")", "eval(\"open('{m}', 'w')\")",
          "cd(folder='x'); open('{m}', 'w')",
          "cd(folder=(lambda: open('{m}', 'w'))())", "cd(**{{'folder': open('{m}', 'w')}})", "ｏｐｅｎ('{m}', 'w')",
          "getattr(__builtins__, 'open')('{m}', 'w')", "copy(x='{m}')"]


@pytest.mark.parametrize("isolated", [True, False])
def test_unsafe_call_strings_are_rejected_without_eval(base, tmp_path, isolated):
    marker = tmp_path / "marker"
    for template in UNSAFE:
        text = template.format(m=marker)
        assert not mt.accept_call_string(text), text
        turns = gold_turns(base[0])
        turns[0][0] = turns[0][0] + [text]
        assert mt.score_entry_multi_turn(base[0], turns, isolated=isolated)["error_type"] == "unsafe_call", text
    assert not marker.exists()
    assert mt.accept_call_string("cd(folder='a')") and mt.accept_call_string("sort('a.txt')")
    assert mt.accept_call_string("no_such_tool(a=[1, {'b': None}])")  # BFCL: a NameError result, harmless


def test_safe_call_string_renders_only_literals():
    assert mt.safe_call_string({"name": "cd", "arguments": {"folder": "x"}}) == "cd(folder='x')"
    nested = {"name": "edit_ticket", "arguments": {"ticket_id": 3, "updates": {"priority": 5, "tags": ["a", None]}}}
    assert data.parse_call(mt.safe_call_string(nested)) == ("edit_ticket", [], nested["arguments"])
    for bad in [{"name": "os.system", "arguments": {}}, {"name": "cd", "arguments": {"folder": object()}},
                {"name": "cd", "arguments": {"x": float("inf")}}, {"name": "cd", "arguments": {"x": {1, 2}}},
                {"name": "cd", "arguments": {"not valid": 1}}, {"name": "class", "arguments": {}},
                {"name": "cd", "arguments": "folder=x"}, {"name": "cd", "arguments": {"x": 10 ** 5000}}]:
        assert mt.safe_call_string(bad) is None, bad


def test_episode_follows_bfcls_execution_turn_by_turn(base):
    from bfcl_eval.eval_checker.multi_turn_eval.multi_turn_utils import execute_multi_turn_func_call

    entry, model = base[0], f"direct_{uuid.uuid4().hex}"
    episode = data.BFCLTools().episode(entry)
    try:
        for turn in entry["ground_truth_turns"]:
            theirs, instances = execute_multi_turn_func_call(turn, entry["initial_config"], entry["involved_classes"],
                                                             model, entry["id"])
            ours = []
            for text in turn:
                call = data.keyword_call(text, entry["involved_classes"])
                result = episode.tools[call["name"]].fn(**call["arguments"])
                ours.append(json.dumps(result) if isinstance(result, dict) else str(result))
            assert ours == theirs
            assert episode.state() == {c: data.instance_state(i) for c, i in instances.items()}
    finally:
        for key in [k for k in bfcl_namespace() if k.startswith(model)]:
            del bfcl_namespace()[key]


def test_episodes_are_fresh_and_do_not_share_state(base):
    entry = base[0]
    config = copy.deepcopy(entry["initial_config"])
    one, two = data.BFCLTools().episode(entry), data.BFCLTools().episode(entry)
    before = two.state()
    assert run_call(one.tools["mkdir"], {"dir_name": "brand_new"}).ok
    assert one.state() != before and two.state() == before
    assert entry["initial_config"] == config
    assert data.BFCLTools().episode(entry).state() == before
    fs = one.tools["mkdir"]
    assert not fs.isolated and fs.serial == id(one.instances["GorillaFileSystem"])
    assert set(one.tools) == {s["name"] for s in entry["tools"]} and data.BFCLTools().specs(entry) == entry["tools"]
    json.dumps(one.state())


def test_stateless_math_runs_in_the_sandbox(base):
    entry = next(e for e in base if "MathAPI" in e["involved_classes"])
    power = data.BFCLTools().episode(entry).tools["power"]
    assert power.isolated
    assert not run_call(power, {"base": 10, "exponent": 10 ** 9}, timeout_s=1).ok  # stopped, not hung


def test_generate_tasks_is_deterministic_and_covers_every_template():
    tasks = data.generate_tasks(2 * len(data.TEMPLATES), seed=7)
    assert tasks == data.generate_tasks(2 * len(data.TEMPLATES), seed=7)
    assert tasks != data.generate_tasks(2 * len(data.TEMPLATES), seed=8)
    assert {t["template"] for t in tasks} == set(data.TEMPLATES)
    assert any(t["user_turns"] for t in tasks)
    json.dumps(tasks)


def test_generated_gold_calls_reach_the_expected_state_and_pass_bfcls_checker():
    for task in data.generate_tasks(2 * len(data.TEMPLATES), seed=11):
        episode = data.BFCLTools().episode(task)
        initial = episode.state()
        for c in task["ground_truth"]:
            result = run_call(episode.tools[c["name"]], c["arguments"])
            assert result.ok and '"error"' not in result.content, (task["id"], c, result)
        assert episode.state() == task["expected_state"]
        acts = not (task["template"] == "car_tires" and len(task["ground_truth"]) == 1)
        assert (task["expected_state"] != initial) == acts, task["id"]
        assert mt.score_entry_multi_turn(task, gold_turns(task), isolated=False)["valid"], task["id"]


def test_generated_tasks_do_not_overlap_bfcl_test_items():
    questions, items = set(), set()
    for category in data.MULTI_TURN:
        for task in data.load_multi_turn(category):
            texts = [m["content"] for turn in [task["messages"]] + task["user_turns"] for m in turn]
            questions |= set(texts)
            items.add(json.dumps(task["initial_config"], sort_keys=True))
    for task in data.generate_tasks(200, seed=0) + data.generate_tasks(200, seed=1):
        texts = [m["content"] for turn in [task["messages"]] + task["user_turns"] for m in turn]
        assert not set(texts) & questions, task["id"]
        assert json.dumps(task["initial_config"], sort_keys=True) not in items, task["id"]


def test_episode_to_turns_and_its_score(base):
    entry = base[1]  # 4 turns: ls(a=True) | cd, mv | cd, grep | tail
    calls = [[data.keyword_call(s, entry["involved_classes"]) for s in turn] for turn in entry["ground_truth_turns"]]
    model_turns = []
    for i, turn in enumerate(calls):
        model_turns += [{"calls": [c], "user_turn": i} for c in turn] + [{"calls": [], "user_turn": i}]
    model_turns.insert(1, {"calls": None, "user_turn": 0})  # an unparsed turn: dropped, as BFCL drops it
    turns = mt.episode_to_turns({"turns": model_turns})
    assert turns[0] == [["ls(a=True)"], [], []] and len(turns) == 4
    assert mt.score_entry_multi_turn(entry, turns)["valid"]
    model_turns[0]["calls"] = [{"name": "ls", "arguments": {"a": object()}}]
    assert mt.score_entry_multi_turn(entry, mt.episode_to_turns({"turns": model_turns}))["error_type"] == "unsafe_call"
    assert mt.episode_to_turns({"turns": []}) == []


def test_result_file_shapes_and_runner_rules(base):
    entry = base[1]
    assert mt.score_entry_multi_turn(entry, "nope")["error_type"] == "multi_turn:inference_error"
    assert mt.score_entry_multi_turn(entry, gold_turns(entry)[:2])["error_type"] == "multi_turn:force_terminated"
    fc = [[[{"ls": {"a": True}}]],  # function-calling models: {name: args or JSON}; prompting ones: text
          [[{"cd": '{"folder": "workspace"}'}, {"mv": {"source": "log.txt", "destination": "archive"}}]],
          ["[cd(folder='archive'), grep(file_name='log.txt', pattern='Error')]"],
          ["[tail(file_name='log.txt', lines=20)]"]]
    assert mt.score_entry_multi_turn(entry, fc)["valid"]
    fc[0] = ["I would list the files."]  # no call decoded in turn 0: BFCL says empty turn
    assert mt.score_entry_multi_turn(entry, fc)["error_type"] == "multi_turn:empty_turn_model_response"


def test_repeated_scoring_leaves_no_cached_instances(base):
    entry = base[2]
    wrong = perturb(entry, 1)
    before = {k for k in bfcl_namespace() if k.endswith("_instance")}
    for _ in range(2):
        assert not mt.score_entry_multi_turn(entry, wrong, isolated=False)["valid"]
        assert mt.score_entry_multi_turn(entry, gold_turns(entry), isolated=False)["valid"]
    assert {k for k in bfcl_namespace() if k.endswith("_instance")} == before


@pytest.fixture(scope="module")
def tok():
    from omegaconf import OmegaConf

    from rl.models import load_tokenizer

    return load_tokenizer(OmegaConf.create({"name_or_path": "smollm2-135m", "tokenizer": None, "trust_remote_code": False}))


def test_gold_episodes_through_the_env_pass_bfcls_checker(base, tok):
    """The whole chain: BFCL's entries as episodes in env=bfcl_multi_turn (the API classes as
    stateful tools, the next user message after each answer), in BFCL's result format, scored
    by BFCL's checker. Gold turns pass; an episode that skips an acting call fails."""
    from envs.tool_env import ToolEnv
    from rl.eval import bfcl_env

    env = bfcl_env(ToolEnv(tok))
    tasks = []
    for entry in base[:4]:
        turn_calls = [[data.keyword_call(s, entry["involved_classes"]) for s in turn] for turn in entry["ground_truth_turns"]]
        tasks.append({**entry, "turn_calls": turn_calls})
    rollouts = env.gold_rollouts(tasks)
    for task, r in zip(tasks, rollouts):
        turns = mt.episode_to_turns(r.episode)
        assert len(turns) == len(task["ground_truth_turns"]) and r.episode["tool_errors"] == 0
        assert mt.score_entry_multi_turn(task, turns)["valid"], (task["id"], turns)
    broken = {**tasks[0], "turn_calls": [calls[:-1] for calls in tasks[0]["turn_calls"]]}
    (r,) = env.gold_rollouts([broken])
    assert not mt.score_entry_multi_turn(broken, mt.episode_to_turns(r.episode))["valid"]


def test_rl_eval_runs_multi_turn_base_with_a_model(tiny):
    from rl.eval import evaluate_bfcl
    from rl.setup import Setup

    s = Setup.build(tiny("algo.sampling.max_new_tokens=8", "env.max_turns=2"))
    metrics, generations = evaluate_bfcl(s.engine, s.env, ["multi_turn_base"], 2, s.sampling, 2)
    assert 0.0 <= metrics["bfcl/multi_turn_base"] <= 1.0 and len(generations) == 2
    assert all(len(g["turns"]) == len(e["ground_truth_turns"]) for g, e in zip(generations, data.load_multi_turn("multi_turn_base", 2)))
