"""Think-call agreement: the reasoning names exactly the functions the answer calls.

    R = 1  if {offered functions named in <think>} == {functions called}, else 0

An empty answer ([]) therefore agrees only with a think that names no offered function ("None of
the functions can do this."), and a call of get_weather only with a think that names get_weather
(and no other offered function). It is checkable without a judge, and it is what the SFT gold
answers do (envs/single_turn.gold_answer).

Why it exists: ToolRL's format term checks only that the tags are there, so RL rewarded
`<think>None of the functions can do this.</think>` followed by a correct call (+4). The think
then stops deciding anything, and the same "None ..." opening was followed by calls on
irrelevance prompts. Adding this term (weight 1 beside toolrl: conf/reward/toolrl_agree.yaml)
makes the reasoning that says "none" and the answer that calls disagree, and pays for agreement.

A name counts as named when it is one of the think's words: its maximal runs of letters, digits,
`_`, `.` and `-`, a trailing `.` or `-` dropped ("needs get_weather." names get_weather, and
get_weather_forecast does not name get_weather). One pass splits the think and set lookups do
the rest, so scoring is linear in the completion's length, however many calls it holds. An
unreadable completion scores 0 with the parser's reason; one with no <think> scores 0 with
reason `no_think`; unreadable tools give `bad_tools`; one that disagrees scores 0 with reason `think_call_mismatch`.
"""

from __future__ import annotations

import re

from rewards.base import Scores, reports_reasons
from rewards.parsing import parse
from rewards.schema import tool_schemas


WORD = re.compile(r"[\w.-]+")


def named_functions(think: str, names) -> set[str]:
    """The names from `names` that are words of `think` (see the module docstring)."""
    words = {w.rstrip(".-") for w in WORD.findall(think)}
    return words & set(names)


def agreement(completion, offered, parser: str = "tool_n1", lenient: bool = False) -> tuple[float, str | None]:
    """(value, reason) for one completion against the tools its prompt offered."""
    parsed = parse(completion, parser, lenient)
    if parsed.calls is None:
        return 0.0, parsed.reason
    if parsed.think is None:
        return 0.0, "no_think"
    try:
        names = set(tool_schemas(offered))
    except (ValueError, TypeError, RecursionError):
        return 0.0, "bad_tools"
    called = {c["name"] for c in parsed.calls}
    if named_functions(parsed.think, names | called) != called:
        return 0.0, "think_call_mismatch"
    return 1.0, None


@reports_reasons
def think_call_agreement(completions: list, tools: list, parser: str = "tool_n1", lenient: bool = False,
                         **kwargs) -> list[float]:
    """1 where the think names exactly the offered functions the answer calls, else 0 (with a reason)."""
    scored = [agreement(c, offered, parser, lenient) for c, offered in zip(completions, tools, strict=True)]
    return Scores([v for v, _ in scored], [r for _, r in scored])
