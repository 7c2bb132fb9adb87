"""BFCL multi-turn, scored by BFCL's own multi-turn checker (state and execution-result checks
after every turn). The data side (entries as tasks, the API classes as tools) is
envs/bfcl_multi_turn.py.

BFCL's checker runs model calls with `eval` in its own module namespace. Nothing reaches it
that is not a single call of a bare name with literal arguments, whose name is either one of
the entry's BFCL functions or a name BFCL's namespace does not define (which BFCL turns into a
NameError result, as it would anyway): no attribute access, nested calls, builtins (`open`,
`exec`, `__import__`), or BFCL's module globals. An entry with any other call is wrong
("unsafe_call"). The checker runs in a forked child under a time and memory limit (a model may
ask MathAPI for 10 ** 10 ** 9), under a model name of its own, so that BFCL's instance cache
(module globals keyed by model name and entry id) never carries state from one scoring to the
next.

Scoring follows BFCL's eval runner (_evaluate_single_multi_turn_entry): a result that is not a
list is an inference error; a turn count other than the answer's is force-terminated; steps
that decode to nothing are dropped; then multi_turn_checker(decoded, ground truth, entry).
"""

from __future__ import annotations

import builtins
import functools
import json
import uuid

from envs.bfcl_multi_turn import (CLASSES, bfcl_class, func_docs, load_multi_turn, package_dir, parse_call,
                                  render_call)
from rl.bfcl import checker as single_turn_checker
from rl.bfcl import summarize
from tools.registry import Tool
from tools.sandbox import run_call

UNSAFE = "<unsafe call>"  # marks a call that could not be rendered safely; it never parses


def safe_call_string(call: dict) -> str | None:
    """A parsed call {"name", "arguments"} as `name(k=repr(v),...)`, or None unless the name
    is an identifier and every value a Python literal (checked recursively)."""
    return render_call(call)


@functools.lru_cache(maxsize=1)
def _bfcl() -> dict:
    package_dir()
    from bfcl_eval.eval_checker.multi_turn_eval import multi_turn_utils
    from bfcl_eval.eval_checker.multi_turn_eval.multi_turn_checker import multi_turn_checker

    for class_name in CLASSES:  # imported here once, not in every forked checker
        bfcl_class(class_name)
    return {"checker": multi_turn_checker, "utils": multi_turn_utils,
            "empty": multi_turn_utils.is_empty_execute_response}


def accept_call_string(text: str, names=None) -> bool:
    """True for `f(a, k=v)` with literal arguments whose name BFCL's executor either maps to an
    API method (`names`, or any BFCL multi-turn function when None) or cannot resolve at all;
    False for everything else, including names of Python builtins and BFCL's module globals."""
    if not isinstance(text, str):
        return False
    parsed = parse_call(text)
    if parsed is None:
        return False
    name = parsed[0]
    known = names if names is not None else _all_functions()
    return name in known or (name not in vars(_bfcl()["utils"]) and not hasattr(builtins, name))


@functools.lru_cache(maxsize=1)
def _all_functions() -> frozenset[str]:
    return frozenset(d["name"] for c in CLASSES for d in func_docs(c))


def decode_step(step) -> list[str] | None:
    """One step of a result file as call strings: a list of strings as is; a list of
    {"func": {args} | "<JSON args>"} (function-calling models) rendered; a string (prompting
    models, `[f(a=1)]`) by BFCL's own decoder. None when it does not decode (BFCL drops it)."""
    if isinstance(step, str):
        single_turn_checker()  # the stand-in model table before bfcl_eval's handler utils
        from bfcl_eval.model_handler.utils import default_decode_execute_prompting

        try:
            return default_decode_execute_prompting(step)
        except Exception:  # noqa: BLE001  BFCL's decoder raises whatever ast raises
            return None
    if not isinstance(step, list):
        return None
    out = []
    for item in step:
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, dict) and len(item) == 1:
            (name, args), = item.items()
            try:
                args = json.loads(args) if isinstance(args, str) else args
            except ValueError:
                return None
            out.append(render_call({"name": name, "arguments": args}) or UNSAFE)
        else:
            return None
    return out


def _result(entry: dict, valid: bool, error_type: str | None = None, error: str | None = None) -> dict:
    return {"id": entry["id"], "valid": valid, "error_type": None if valid else error_type,
            "error": None if valid else error}


def score_entry_multi_turn(entry: dict, turns, isolated: bool = True, timeout_s: float = 60.0) -> dict:
    """{"id", "valid", "error_type", "error"} for one task row (load_multi_turn's or
    generate_tasks') and the model's turns in BFCL's result format: one list per user turn of
    steps, each step the calls of one model response."""
    truth = entry["ground_truth_turns"]
    if not isinstance(turns, list) or not all(isinstance(t, list) for t in turns):
        return _result(entry, False, "multi_turn:inference_error", "the model's result is not a list of turns")
    if len(turns) != len(truth):
        return _result(entry, False, "multi_turn:force_terminated",
                       f"{len(turns)} turns answered, the task has {len(truth)}")
    empty = _bfcl()["empty"]
    decoded = [[s for s in map(decode_step, turn) if s is not None and not empty(s)] for turn in turns]
    names = {d["name"] for c in entry["involved_classes"] for d in func_docs(c)}
    unsafe = next((s for turn in decoded for step in turn for s in step if not accept_call_string(s, names)), None)
    if unsafe is not None:
        return _result(entry, False, "unsafe_call",
                       f"not a call of a function with literal arguments: {unsafe[:200]!r}")
    test_entry = {"id": entry["id"], "initial_config": entry["initial_config"],
                  "involved_classes": entry["involved_classes"]}
    check = functools.partial(run_checker, decoded, truth, test_entry, entry.get("category", ""))
    if not isolated:
        out = check()
    else:
        ran = run_call(Tool(fn=check, schema=_CHECK_SCHEMA), {}, timeout_s=timeout_s, memory_mb=2048)
        if not ran.ok:
            kind = "multi_turn:checker_timeout" if ran.error == "timeout" else "multi_turn:checker_error"
            return _result(entry, False, kind, ran.content)
        out = json.loads(ran.content)
    return _result(entry, bool(out["valid"]), out.get("error_type"), out.get("error_message"))


_CHECK_SCHEMA = {"type": "function", "function": {"name": "bfcl_multi_turn_checker", "description": "",
                                                  "parameters": {"type": "object", "properties": {}}}}


def run_checker(decoded: list, truth: list, test_entry: dict, category: str) -> dict:
    """BFCL's multi_turn_checker on already-accepted calls, under a fresh model name whose cached
    instances are removed afterwards. {"valid", "error_type", "error_message"}."""
    bfcl = _bfcl()
    model = f"toolcall_rl_{uuid.uuid4().hex}"
    try:
        out = bfcl["checker"](decoded, truth, test_entry, category, model)
    except Exception as e:  # noqa: BLE001  an assertion inside BFCL's checker: the entry cannot pass
        out = {"valid": False, "error_type": "multi_turn:checker_error", "error_message": f"{type(e).__name__}: {e}"}
    finally:
        namespace = vars(bfcl["utils"])
        for key in [k for k in namespace if k.startswith(model)]:
            del namespace[key]
    return {"valid": bool(out["valid"]), "error_type": out.get("error_type"),
            "error_message": str(out.get("error_message", "")) or None}


def score_multi_turn(category: str, predictions: dict, entries: list[dict] | None = None, **kw) -> dict:
    """Accuracy over every entry of the category; ids without a prediction count as wrong."""
    entries = entries if entries is not None else load_multi_turn(category)
    results = [score_entry_multi_turn(e, predictions[e["id"]], **kw) if e["id"] in predictions
               else _result(e, False, "missing_prediction") for e in entries]
    return summarize(category, results)


def episode_to_turns(episode: dict) -> list[list[list[str]]]:
    """The env's episode (common turns with parsed calls and user_turn) in BFCL's result format:
    per user turn, one step per model turn, each the calls as strings. A call that cannot be
    rendered safely becomes UNSAFE (the entry is then wrong); a model turn that did not parse
    (calls None) is an empty step, which BFCL's runner drops like an undecodable response."""
    model_turns = episode.get("turns") or []
    count = max((t.get("user_turn", 0) for t in model_turns), default=-1) + 1
    out: list[list[list[str]]] = [[] for _ in range(count)]
    for t in model_turns:
        out[t.get("user_turn", 0)].append([safe_call_string(c) or UNSAFE for c in t.get("calls") or []])
    return out
