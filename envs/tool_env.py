"""Multi-turn env: the model calls tools, the calls run in the sandbox, their results come
back as a tool message, and the model goes on, for up to max_turns turns.

One episode is one Rollout whose completion interleaves the model's turns and the tool
messages:   prompt | turn 1 | tool 1 | turn 2 | tool 2 | ... | turn K
loss_mask is 1 on the model's tokens and 0 on the tool messages (the policy is not trained
to produce what the tools said); rollout_logprobs are 0 there.

What rewards read (Rollout.text) is the episode as one Tool-N1 answer: the first turn's
think and, in one list, every call the episode made. So every single-turn reward scores a
whole episode unchanged: tool_n1 is 1 iff the episode made exactly the gold calls. A first
turn that does not parse is what the rewards see instead (its reason is counted); a later
turn without calls ends the episode normally (the model answered with the results).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from envs.single_turn import SingleTurnEnv
from rewards.parsing import parse
from envs.types import Rollout, SamplingParams
from tools.registry import get_tool
from tools.sandbox import run_named

BUILTIN = ("calculate", "convert_units", "add_days", "days_between")


@dataclass
class Episode:
    task: dict
    prompt: list[int]
    messages: list[dict]
    completion: list[int] = field(default_factory=list)
    loss_mask: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    calls: list[dict] = field(default_factory=list)
    think: str = ""
    first_text: str | None = None
    failed: bool = False
    done: bool = False
    finish_reason: str = "stop"

    @property
    def context(self) -> list[int]:
        return self.prompt + self.completion

    def add(self, tokens: list[int], trained: bool, logprobs: list[float] | None = None) -> None:
        self.completion += tokens
        self.loss_mask += [int(trained)] * len(tokens)
        self.logprobs += logprobs if logprobs is not None else [0.0] * len(tokens)

    def text(self) -> str:
        if self.failed:
            return self.first_text or ""
        return f"<think>{self.think}</think>\n<tool_call>{json.dumps(self.calls, ensure_ascii=False)}</tool_call>"


class ToolEnv:
    def __init__(self, tokenizer, system_prompt: str | None = None, max_turns: int = 3, timeout_s: float = 5.0):
        self.tokenizer = tokenizer
        self.single = SingleTurnEnv(tokenizer, system_prompt)
        self.max_turns = max_turns
        self.timeout_s = timeout_s
        self.tools = {name: get_tool(name) for name in BUILTIN}

    def reset(self, task: dict) -> list[dict]:
        return self.single.reset(task)

    def prompt_ids(self, task: dict) -> list[int]:
        return self.single.prompt_ids(task)

    def rollout(self, engine, tasks: list[dict], n: int, sampling: SamplingParams) -> list[Rollout]:
        episodes = [Episode(t, self.prompt_ids(t), self.reset(t)) for t in tasks for _ in range(n)]  # groups contiguous
        for turn in range(self.max_turns):
            active = [e for e in episodes if not e.done]
            if not active:
                break
            samples = engine.generate([e.context for e in active], 1, sampling)
            for e, s in zip(active, samples):
                self.step(e, s, last_turn=turn == self.max_turns - 1)
        return [Rollout(task=e.task, prompt=e.prompt, completion=e.completion, loss_mask=e.loss_mask,
                        rollout_logprobs=e.logprobs, text=e.text(), finish_reason=e.finish_reason) for e in episodes]

    def step(self, e: Episode, sample, last_turn: bool) -> None:
        """One model turn: record it; if it made calls, run them and append the tool message."""
        e.add(sample.completion, trained=True, logprobs=sample.rollout_logprobs)
        e.finish_reason = sample.finish_reason
        text = self.tokenizer.decode(sample.completion, skip_special_tokens=True)
        parsed = parse(text, "tool_n1")
        first = e.first_text is None
        if first:
            e.first_text, e.think = text, parsed.think or ""
        if parsed.calls is None or not parsed.calls:
            e.failed = first and parsed.calls is None
            e.done = True
            return
        e.calls += parsed.calls
        if last_turn or sample.finish_reason == "length":
            e.done = True
            return
        allowed = {t["name"] for t in e.task["tools"]}
        results = run_named(parsed.calls, {k: v for k, v in self.tools.items() if k in allowed}, self.timeout_s)
        message = json.dumps([{"name": c["name"], "result": r.content} for c, r in zip(parsed.calls, results)],
                             ensure_ascii=False)
        e.add(self.tool_tokens(e, text, message, ended=sample.completion[-1:] == [self.tokenizer.eos_token_id]),
              trained=False)

    def tool_tokens(self, e: Episode, turn_text: str, message: str, ended: bool) -> list[int]:
        """The tokens between the model's turn and its next one: the end of its turn, the tool
        message, the start of the next assistant turn, as the chat template writes them."""
        e.messages = e.messages + [{"role": "assistant", "content": turn_text}]
        before = self.tokenizer.apply_chat_template(e.messages, tokenize=False)
        e.messages = e.messages + [{"role": "tool", "content": message}]
        after = self.tokenizer.apply_chat_template(e.messages, tokenize=False, add_generation_prompt=True)
        turn_end = before[before.rindex(turn_text) + len(turn_text):]  # e.g. "<|im_end|>\n"
        if ended and self.tokenizer.eos_token and turn_end.startswith(self.tokenizer.eos_token):
            turn_end = turn_end[len(self.tokenizer.eos_token):]  # the model already wrote it
        return self.tokenizer.encode(turn_end + after[len(before):], add_special_tokens=False)
