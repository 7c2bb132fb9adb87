"""BFCL scoring with BFCL's own checker: gold answers in our Tool-N1 format score 100%,
wrong ones score what BFCL's ast_checker says, the `score` command, and a model eval.
CI installs bfcl-eval and sets TOOLCALL_RL_REQUIRE_BFCL=1, so these never skip there."""

import json
import os
import subprocess
import sys

import pytest

if os.environ.get("TOOLCALL_RL_REQUIRE_BFCL") != "1":
    pytest.importorskip("bfcl_eval", reason="bfcl-eval is not installed (README: BFCL)")

from envs.single_turn import gold_answer  # noqa: E402
from rl import bfcl  # noqa: E402

# BFCL rows no completion can pass: their checker turns every item of an `any`-typed
# ArrayList into a string while the answer holds ints/bools (36, 65), and one answer's map
# value is a bare string that the checker iterates character by character (64).
UNPASSABLE = {"simple_java_36", "simple_java_64", "simple_java_65"}


def completion(calls) -> str:
    return f"<think>x</think>\n<tool_call>{json.dumps(calls)}</tool_call>"


@pytest.mark.parametrize("category", ["simple_python", "multiple", "parallel", "parallel_multiple", "irrelevance",
                                      "simple_java", "simple_javascript"])
def test_gold_answers_score_100_percent(category):
    entries = [e for e in bfcl.load_category(category) if e["id"] not in UNPASSABLE]
    predictions = {e["id"]: gold_answer(bfcl.to_task(e)) for e in entries}
    result = bfcl.score(category, predictions, entries)
    assert result["correct"] == result["n"] == len(entries) > 0, result["errors"]


def test_unpassable_java_rows_fail_for_the_documented_reason():
    entries = {e["id"]: e for e in bfcl.load_category("simple_java")}
    for id_ in UNPASSABLE:
        r = bfcl.score_entry(entries[id_], gold_answer(bfcl.to_task(entries[id_])))
        assert not r["valid"] and r["error_type"] in {"value_error:list/tuple", "value_error:dict_value"}


def checker_verdict(entry, calls):
    ast_checker, Language = bfcl.checker()
    decoded = [{c["name"]: c["arguments"]} for c in calls]
    return ast_checker(entry["function"], decoded, entry["possible_answer"], Language.PYTHON, entry["category"],
                       bfcl.MODEL_NAME)


@pytest.mark.parametrize("category", ["simple_python", "multiple", "parallel", "parallel_multiple"])
def test_wrong_answers_score_what_bfcls_checker_says(category):
    entries = bfcl.load_category(category)[:40]
    for n, entry in enumerate(entries):
        calls = bfcl.to_task(entry)["ground_truth"]
        mutation = n % 4
        if mutation == 0:  # a wrong value
            arg = next(iter(calls[0]["arguments"]), None)
            if arg is not None:
                calls[0]["arguments"][arg] = "definitely wrong"
        elif mutation == 1:  # a wrong function name
            calls[0]["name"] += "_x"
        elif mutation == 2:  # a call dropped
            calls = calls[:-1] or calls
        else:  # an unexpected argument
            calls[0]["arguments"]["unexpected_arg"] = 1
        ours = bfcl.score_entry(entry, completion(calls))
        theirs = checker_verdict(entry, calls)
        assert ours["valid"] == theirs["valid"], (entry["id"], calls, theirs)
        if not theirs["valid"]:
            assert ours["error_type"] == theirs["error_type"]


def test_undecodable_and_irrelevance_rules_follow_bfcls_runner():
    simple = bfcl.load_category("simple_python")[0]
    assert bfcl.score_entry(simple, "I think the answer is 50.") == {"valid": False, "error_type": "ast_decoder:decoder_failed"}
    irrelevant = bfcl.load_category("irrelevance")[0]
    assert bfcl.score_entry(irrelevant, "No function fits.")["valid"]  # no decodable call: correct
    assert bfcl.score_entry(irrelevant, completion([]))["valid"]
    call = [{"name": irrelevant["function"][0]["name"], "arguments": {}}]
    assert bfcl.score_entry(irrelevant, completion(call)) == {"valid": False,
                                                             "error_type": "irrelevance_error:decoder_success"}


def test_score_command(tmp_path):
    entries = bfcl.load_category("simple_python")
    preds = tmp_path / "preds.jsonl"
    rows = [{"id": e["id"], "completion": gold_answer(bfcl.to_task(e))} for e in entries[:3]]
    rows.append({"id": entries[3]["id"], "completion": "no idea"})
    preds.write_text("\n".join(json.dumps(r) for r in rows))
    out = tmp_path / "r.json"
    subprocess.run([sys.executable, "-m", "rl.eval", "score", "--category", "simple_python", "--predictions", str(preds),
                    "--out", str(out)], check=True, capture_output=True)
    assert json.loads(out.read_text()) == {"category": "simple_python", "n": len(entries), "correct": 3,
                                           "accuracy": 3 / len(entries)}  # ids not in the file count as wrong


def test_score_command_names_the_bad_line(tmp_path):
    preds = tmp_path / "preds.jsonl"
    preds.write_text('{"id": "simple_python_0", "completion": "x"}\n{"completion": "no id"}\n')
    r = subprocess.run([sys.executable, "-m", "rl.eval", "score", "--category", "simple_python", "--predictions",
                        str(preds), "--out", str(tmp_path / "r.json")], capture_output=True, text=True)
    assert r.returncode != 0 and f"{preds}:2" in r.stderr and "id and completion" in r.stderr


def test_unknown_category_is_a_clear_error():
    with pytest.raises(ValueError, match="simple_python"):
        bfcl.load_category("simple_rust")


def test_model_eval_on_bfcl_categories(tiny):
    from rl.eval import evaluate_bfcl
    from rl.setup import Setup

    s = Setup.build(tiny())
    metrics, generations = evaluate_bfcl(s.engine, s.env, ["simple_python", "irrelevance"], 2, s.sampling, 4)
    assert set(metrics) == {"bfcl/simple_python", "bfcl/irrelevance", "bfcl/mean"}
    assert len(generations) == 4 and all(0.0 <= v <= 1.0 for v in metrics.values())
    assert metrics["bfcl/simple_python"] == sum(g["valid"] for g in generations[:2]) / 2


def _python_call(call: dict) -> str:
    return f"{call['name']}(" + ", ".join(f"{k}={v!r}" for k, v in call["arguments"].items()) + ")"


def native_answers(task: dict) -> dict:
    """The same gold calls in each format `score` reads."""
    calls = task["ground_truth"]
    return {
        "hermes": "".join(f"<tool_call>{json.dumps(c)}</tool_call>" for c in calls),
        "bfcl": "[" + ", ".join(_python_call(c) for c in calls) + "]",
        "result": [{c["name"]: json.dumps(c["arguments"])} for c in calls],  # a BFCL result file of an FC model
    }


@pytest.mark.parametrize("category", ["simple_python", "multiple", "parallel"])
@pytest.mark.parametrize("fmt", ["hermes", "bfcl", "result"])
def test_native_formats_and_bfcl_result_files_score_100_percent(category, fmt):
    entries = bfcl.load_category(category)[:20]
    answers = {e["id"]: native_answers(bfcl.to_task(e))[fmt] for e in entries}
    for mode in ([fmt, "auto"] if fmt != "result" else ["auto"]):
        result = bfcl.score(category, answers, entries, fmt=mode)
        assert result["correct"] == len(entries), (mode, result["errors"])
    if fmt == "bfcl":  # our own parser does not read BFCL's format: the format matters
        assert bfcl.score(category, answers, entries, fmt="tool_n1")["correct"] == 0


def test_score_command_reads_a_bfcl_result_file(tmp_path):
    entries = bfcl.load_category("simple_python")[:5]
    preds = tmp_path / "BFCL_v4_simple_python_result.json"
    preds.write_text("\n".join(json.dumps({"id": e["id"], "result": native_answers(bfcl.to_task(e))["bfcl"]})
                               for e in entries))
    out = tmp_path / "r.json"
    subprocess.run([sys.executable, "-m", "rl.eval", "score", "--category", "simple_python", "--predictions", str(preds),
                    "--out", str(out)], check=True, capture_output=True)
    assert json.loads(out.read_text())["correct"] == 5
