"""BFCL (Berkeley Function Calling Leaderboard), scored by BFCL's own AST checker.

The `bfcl-eval` package (extra `bfcl`) ships the data and the checker. Its checker module
imports a table of model handlers that pulls vendor SDKs; only one name of it is used
(MODEL_CONFIG_MAPPING, to ask whether a model rewrites "." in function names), so a stand-in
module answering "no" is installed before the import. The data side (categories,
entries as tasks) is envs/bfcl.py.

Scoring follows BFCL's eval runner: a completion is decoded to `[{"func": {"arg": value}}]`
(here by our Tool-N1 parser), then
- irrelevance categories: correct iff it holds no call (a completion that does not decode
  counts as no call, as in BFCL);
- all others: `ast_checker(functions, decoded, possible_answer, language, category, model)`;
  a completion that does not decode is wrong.
"""

from __future__ import annotations

import json
import sys
import types
from functools import lru_cache

from envs.bfcl import (DEFAULT_CATEGORIES, INSTALL_HINT, SINGLE_TURN, language, load_category,  # noqa: F401
                       package_dir, to_task)
from rewards.parsing import parse

MODEL_NAME = "toolcall-rl"


@lru_cache(maxsize=1)
def checker():
    """BFCL's ast_checker and Language enum, imported without the model-handler table."""
    package_dir()
    if "bfcl_eval.constants.model_config" not in sys.modules:
        stand_in = types.ModuleType("bfcl_eval.constants.model_config")

        class _NoRewrite(dict):
            def __missing__(self, key):
                return types.SimpleNamespace(underscore_to_dot=False)

        stand_in.MODEL_CONFIG_MAPPING = _NoRewrite()
        sys.modules["bfcl_eval.constants.model_config"] = stand_in
    from bfcl_eval.constants.enums import Language
    from bfcl_eval.eval_checker.ast_eval.ast_checker import ast_checker

    return ast_checker, Language


FORMATS = ("tool_n1", "hermes", "llama3_json", "mistral", "bfcl", "auto")  # what `decode` reads; auto: in that order


def decode(completion, fmt: str = "tool_n1", category: str = "simple_python") -> list[dict] | None:
    """A completion -> BFCL's decoded form [{"func": {"arg": value}}]; None if it does not parse.
    fmt: tool_n1 (our answer format), hermes (<tool_call>{...}</tool_call> per call), the native
    llama3_json and mistral formats (rewards/native.py), bfcl (BFCL's prompting format
    `[f(a=1), g(b="x")]`, decoded by bfcl_eval's own decoder), or auto.
    A list is taken as already decoded, as in BFCL's result files of function-calling models
    ([{"func": {...}}] or [{"func": "<JSON arguments>"}])."""
    if isinstance(completion, list):
        return _decoded_list(completion)
    if not isinstance(completion, str):
        return None
    found = [_decode_bfcl(completion, category) if f == "bfcl" else _decode_ours(completion, f)
             for f in (FORMATS[:-1] if fmt == "auto" else (fmt,))]
    # auto: the first format that finds calls; else the first that reads the text at all (an explicit [])
    return next((d for d in found if d), next((d for d in found if d is not None), None))


def _decode_ours(completion: str, parser: str) -> list[dict] | None:
    parsed = parse(completion, parser, lenient=True)
    return None if parsed.calls is None else [{c["name"]: c["arguments"]} for c in parsed.calls]


def _decode_bfcl(completion: str, category: str) -> list[dict] | None:
    checker()  # the stand-in model table first
    from bfcl_eval.constants.enums import ReturnFormat
    from bfcl_eval.model_handler.utils import default_decode_ast_prompting

    try:
        decoded = default_decode_ast_prompting(completion, ReturnFormat[language(category).upper()])
    except Exception:  # noqa: BLE001  BFCL's decoder raises whatever ast raises: not a call list
        return None
    return _decoded_list(decoded)


def _decoded_list(items: list) -> list[dict] | None:
    out = []
    for item in items:
        if not isinstance(item, dict) or len(item) != 1:
            return None
        (name, args), = item.items()
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except ValueError:
                return None
        if not isinstance(name, str) or not isinstance(args, dict):
            return None
        out.append({name: args})
    return out


def score_entry(entry: dict, completion, fmt: str = "tool_n1") -> dict:
    """{"valid": bool, "error_type": str | None} as BFCL's runner would give it."""
    category = entry["category"]
    decoded = decode(completion, fmt, category)
    if "irrelevance" in category:
        has_call = bool(decoded) and any(decoded)
        return {"valid": not has_call, "error_type": "irrelevance_error:decoder_success" if has_call else None}
    if decoded is None:
        return {"valid": False, "error_type": "ast_decoder:decoder_failed"}
    ast_checker, Language = checker()
    result = ast_checker(entry["function"], decoded, entry["possible_answer"], Language[language(category).upper()],
                         category, MODEL_NAME)
    return {"valid": bool(result["valid"]), "error_type": None if result["valid"] else result.get("error_type")}


def score(category: str, predictions: dict, entries: list[dict] | None = None, fmt: str = "tool_n1") -> dict:
    """Accuracy over every entry of the category; ids without a prediction count as wrong."""
    entries = entries if entries is not None else load_category(category)
    results = [score_entry(e, predictions[e["id"]], fmt) if e["id"] in predictions
               else {"valid": False, "error_type": "missing_prediction"} for e in entries]
    return summarize(category, results)


def summarize(category: str, results: list[dict]) -> dict:
    """{"category", "n", "correct", "accuracy", "errors": {error_type: count}} of per-entry results."""
    correct = sum(r["valid"] for r in results)
    errors: dict[str, int] = {}
    for r in results:
        if r["error_type"]:
            errors[r["error_type"]] = errors.get(r["error_type"], 0) + 1
    return {"category": category, "n": len(results), "correct": correct,
            "accuracy": correct / len(results) if results else float("nan"), "errors": errors}
