"""The episode loop every multi-turn env shares (verifiers' MultiTurnEnv): the model answers,
the env responds (tool results, the next user message), the model goes on, until is_done
says stop, max_turns, the episode's token budget or the model's context window.

    rollout(engine, tasks, n)                       B*n episodes advance together, one turn per
      while some episode is active:                 engine call; an episode that ends frees its
        samples = engine.generate(active contexts)  slot (it is not in the next call)
        turn    = parse(sample)                     calls, or a final answer, or unreadable
        stop    = is_done(episode, turn) | max_turns | length
        replies = env_responses(episodes to go on)  hook: messages to append (tool, user)
        completion += template tokens of replies    loss_mask 0, rollout_logprobs 0

Tokens are the truth. The completion is the engine's own tokens for every model turn plus
the chat template's tokens for what the env says, found by rendering a sentinel as the
model's turn (so templates that trim or rewrite the content cannot misplace the cut). No
decoded text is re-tokenized into the training sequence. At the end of every episode the
assembled ids are compared with a fresh render of the final conversation; a difference is
counted as drift (the template renders history differently from what the model saw, or the
model wrote a non-canonical tokenization) and reported in `episode["drift"]`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace

from envs.single_turn import SingleTurnEnv, calls_json, gold_answer, template_tools
from envs.types import Rollout, Sample, SamplingParams
from rewards.parsing import CALL_OPEN, parse, split_think

SENTINEL = "@@toolcall-rl-model-turn@@"


@dataclass
class Episode:
    task: dict
    prompt: list[int]
    messages: list[dict]  # the conversation as the chat template renders it (system prompt included)
    tools: object = None  # EpisodeTools (tool_env)
    completion: list[int] = field(default_factory=list)
    loss_mask: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    turns: list[dict] = field(default_factory=list)
    user_turn: int = 0  # index of the user message the model is answering
    since_user: int = 0  # model turns since that user message
    stop: str | None = None
    finish_reason: str = "stop"
    drift: bool | None = None

    @property
    def context(self) -> list[int]:
        return self.prompt + self.completion

    def add(self, tokens: list[int], trained: bool, logprobs: list[float] | None = None) -> None:
        self.completion += tokens
        self.loss_mask += [int(trained)] * len(tokens)
        self.logprobs += list(logprobs) if logprobs is not None else [0.0] * len(tokens)

    def as_dict(self, state: dict) -> dict:
        """What rewards read as `episodes` (see rewards/episode.py)."""
        calls = [c for t in self.turns for c in (t["calls"] or [])]
        last = self.turns[-1] if self.turns else None
        return {"turns": self.turns, "calls": calls, "stop": self.stop, "final_state": state,
                "final_answer": last["answer"] if last is not None and last["calls"] == [] else None,
                "num_turns": len(self.turns), "num_calls": len(calls),
                "tool_errors": sum(not r["ok"] for t in self.turns for r in t["results"]), "drift": self.drift}


def final_answer_text(text: str) -> str:
    """A turn without calls read as an answer: the text after the think, without an empty call
    list; the think itself if nothing else is there."""
    split = split_think(text)
    think, rest = split if split else ("", text)
    rest = rest.replace(f"{CALL_OPEN}[]</tool_call>", "").strip()
    return rest or think.strip()


class MultiTurnEnv:
    """Base of multi-turn envs. Subclasses override the hooks: setup, env_responses (or
    env_response), is_done, finish. Prompts are SingleTurnEnv's (Tool-N1 system prompt, or
    the template's tools)."""

    def __init__(self, tokenizer, system_prompt: str | None = None, use_template_tools: bool = False,
                 max_turns: int = 3, max_episode_tokens: int | None = None, max_context: int | None = None,
                 parser: str = "tool_n1", check_drift: bool = True):
        self.tokenizer = tokenizer
        self.single = SingleTurnEnv(tokenizer, system_prompt, use_template_tools, parser)
        self.max_turns, self.parser, self.check_drift = max_turns, parser, check_drift
        self.max_episode_tokens = max_episode_tokens
        self.max_context = max_context or context_window(tokenizer)
        self.drift_count = 0  # episodes whose ids differ from a fresh render, since the env was made

    # ---- hooks ----------------------------------------------------------------------------
    def setup(self, e: Episode) -> None:
        """Per-episode state (tool instances, ...)."""

    def env_responses(self, items: list[tuple[Episode, dict]]) -> list[list[dict]]:
        """The messages the env appends after each (episode, model turn); batched so that
        subclasses can run the work of all episodes at once."""
        return [self.env_response(e, turn) for e, turn in items]

    def env_response(self, e: Episode, turn: dict) -> list[dict]:
        return []

    def is_done(self, e: Episode, turn: dict) -> str | None:
        """The stop reason after this turn, or None to go on."""
        if turn["calls"] is None:
            return "unparsed"
        return "answer" if not turn["calls"] else None

    def finish(self, e: Episode) -> dict:
        """Called once per episode at its end; returns its final state."""
        return {}

    # ---- the loop --------------------------------------------------------------------------
    def reset(self, task: dict) -> list[dict]:
        return self.single.reset(task)

    def prompt_ids(self, task: dict) -> list[int]:
        return self.single.prompt_ids(task)

    def rollout(self, engine, tasks: list[dict], n: int, sampling: SamplingParams) -> list[Rollout]:
        episodes = self.start(tasks, n)  # groups contiguous
        while active := [e for e in episodes if e.stop is None]:
            for params, group in self.by_budget(active, sampling):
                self.advance(group, engine.generate([e.context for e in group], 1, params))
        return [self.end(e) for e in episodes]

    def start(self, tasks: list[dict], n: int) -> list[Episode]:
        prompts = [self.prompt_ids(t) for t in tasks]
        episodes = [Episode(t, p, self.reset(t)) for t, p in zip(tasks, prompts) for _ in range(n)]
        for e in episodes:
            self.setup(e)
        return episodes

    def advance(self, episodes: list[Episode], samples: list, last: list[bool] | None = None) -> None:
        """One model turn of each episode: record it, decide whether it stops, and append the
        env's responses (computed for all of them at once) to those that go on."""
        go_on = []
        for i, (e, s) in enumerate(zip(episodes, samples)):
            turn = self.record(e, s)
            e.stop = self.stop_reason(e, turn, s.finish_reason) or ("answer" if last and last[i] else None)
            if e.stop is None:
                go_on.append((e, turn))
        for (e, turn), messages in zip(go_on, self.env_responses(go_on)):
            self.append(e, messages)

    def end(self, e: Episode) -> Rollout:
        state = self.finish(e)
        self.drift_check(e)
        return Rollout(task=e.task, prompt=e.prompt, completion=e.completion, loss_mask=e.loss_mask,
                       rollout_logprobs=e.logprobs, text=self.answer_text(e), finish_reason=e.finish_reason,
                       episode=e.as_dict(state))

    def gold_rollouts(self, tasks: list[dict]) -> list[Rollout]:
        """SFT targets for multi-turn rows: the gold turns (a row's `gold_turns`, else one gold
        call per turn and then its `answer`) played through the env, so the tool results and
        template tokens are the real ones and masked as in RL. Rows without an `answer` get
        their single-turn gold answer."""
        episodes = self.start(tasks, 1)
        scripts = [gold_turns(e.task, self.parser) for e in episodes]
        max_turns, self.max_turns = self.max_turns, 10**9  # the gold takes the turns it needs
        try:
            for k in range(max(map(len, scripts), default=0)):
                group = [(e, script) for e, script in zip(episodes, scripts) if e.stop is None and k < len(script)]
                ids = [self.tokenizer.encode(script[k], add_special_tokens=False) + [self.tokenizer.eos_token_id]
                       for _, script in group]
                self.advance([e for e, _ in group], [Sample(t, [0.0] * len(t), "stop") for t in ids],
                             last=[k == len(script) - 1 for _, script in group])
        finally:
            self.max_turns = max_turns
        return [self.end(e) for e in episodes]

    def by_budget(self, active: list[Episode], sampling: SamplingParams):
        """Active episodes grouped by how many tokens their next turn may take (the episode's
        token budget and the context window can cut a turn shorter than max_new_tokens)."""
        groups: dict[int, list[Episode]] = {}
        for e in active:
            room = min(sampling.max_new_tokens, self.max_context - len(e.context))
            if self.max_episode_tokens is not None:
                room = min(room, self.max_episode_tokens - len(e.completion))
            if room <= 0:
                e.stop = "context" if len(e.context) >= self.max_context else "max_tokens"
                continue
            groups.setdefault(room, []).append(e)
        for room, group in groups.items():
            params = sampling if room == sampling.max_new_tokens else replace(sampling, max_new_tokens=room)
            yield params, group

    def record(self, e: Episode, sample) -> dict:
        """Add the model's turn to the episode and read it."""
        e.add(sample.completion, trained=True, logprobs=sample.rollout_logprobs)
        e.finish_reason = sample.finish_reason
        e.since_user += 1
        text = self.single.decode(sample.completion)
        parsed = parse(text, self.parser)
        calls = parsed.calls
        if calls is None and CALL_OPEN not in text:
            calls = []  # no call attempted: a final answer in plain text
        turn = {"text": text, "calls": calls, "results": [], "user_turn": e.user_turn, "reason": parsed.reason,
                "think": parsed.think, "answer": final_answer_text(text) if calls == [] else None}
        e.turns.append(turn)
        e.messages = e.messages + [{"role": "assistant", "content": self.history_text(sample.completion)}]
        return turn

    def stop_reason(self, e: Episode, turn: dict, finish_reason: str) -> str | None:
        if finish_reason == "length":
            return "length"  # cut mid-turn: what it says or calls may be cut too
        done = self.is_done(e, turn)
        if done is not None:
            return done
        if e.since_user >= self.max_turns and turn["calls"]:
            return "max_turns"
        return None

    def history_text(self, tokens: list[int]) -> str:
        """The model's turn as message content: its text without the end-of-turn token."""
        eos = self.tokenizer.eos_token_id
        return self.tokenizer.decode(tokens[:-1] if tokens[-1:] == [eos] else tokens, skip_special_tokens=False)

    def append(self, e: Episode, messages: list[dict]) -> None:
        """Append what the env says as template tokens (loss_mask 0); end the episode if they
        do not fit the context window or the token budget."""
        if not messages:
            e.stop = "answer"
            return
        ended = e.completion[-1:] == [self.tokenizer.eos_token_id]
        tokens = self.bridge_tokens(e, messages, ended)
        if tokens is None:
            e.stop = "template_error"
            return
        if len(e.context) + len(tokens) >= self.max_context:
            e.stop = "context"
            return
        if self.max_episode_tokens is not None and len(e.completion) + len(tokens) >= self.max_episode_tokens:
            e.stop = "max_tokens"
            return
        e.add(tokens, trained=False)
        e.messages = e.messages + messages
        if any(m["role"] == "user" for m in messages):
            e.user_turn, e.since_user = e.user_turn + 1, 0

    def bridge_tokens(self, e: Episode, messages: list[dict], ended: bool) -> list[int] | None:
        """The template's tokens from the end of the model's turn to the start of its next one:
        the end-of-turn marker (unless the model wrote it), the env's messages, the next
        assistant header. Found by rendering a sentinel as the model's turn."""
        try:
            text = self.tokenizer.apply_chat_template(
                e.messages[:-1] + [{"role": "assistant", "content": SENTINEL}] + messages, tokenize=False,
                add_generation_prompt=True, **self.prompt_tools(e.task))
        except Exception:  # noqa: BLE001 - a template that refuses the conversation ends the episode
            return None
        tail = text[text.rindex(SENTINEL) + len(SENTINEL):]
        eos = self.tokenizer.eos_token
        if ended and eos and tail.startswith(eos):
            tail = tail[len(eos):]  # the model already wrote it (its last token)
        return self.tokenizer.encode(tail, add_special_tokens=False)

    def drift_check(self, e: Episode) -> None:
        """Compare the assembled ids with a fresh render of the final conversation: equal up to
        the end-of-turn marker the model did not write unless it stopped there."""
        if not self.check_drift:
            return
        try:
            fresh = self.tokenizer.apply_chat_template(e.messages, tokenize=True, **self.prompt_tools(e.task))
            fresh = list(fresh["input_ids"] if hasattr(fresh, "keys") else fresh)
        except Exception:  # noqa: BLE001
            e.drift = True
        else:
            e.drift = fresh[: len(e.context)] != e.context
        self.drift_count += bool(e.drift)

    def prompt_tools(self, task: dict) -> dict:
        return {"tools": template_tools(task["tools"])} if self.single.use_template_tools else {}

    def answer_text(self, e: Episode) -> str:
        """What single-answer rewards read: the episode as one answer in the parser's format
        (Tool-N1: the first turn's think and every call made, in one list; Hermes: a tag per
        call), or the first turn itself if it did not parse, so its reason is counted."""
        if not e.turns:
            return ""  # ended before the model's first turn (a prompt that fills the window)
        first = e.turns[0]
        calls = [c for t in e.turns for c in (t["calls"] or [])]
        if first["calls"] is None or not calls:
            return first["text"]
        if self.parser != "tool_n1":  # every call of the episode as one answer in the model's format
            from rewards.native import RENDER_FORMATS, render_native

            if self.parser not in RENDER_FORMATS:  # a tokenizer's own parser: its turns as they were
                return "\n".join(t["text"] for t in e.turns)
            think = f"<think>{first['think']}</think>\n" if first["think"] is not None else ""
            return think + render_native(calls, self.parser)
        if first["think"] is None:
            return first["text"]
        return f"<think>{first['think']}</think>\n<tool_call>{json.dumps(calls, ensure_ascii=False)}</tool_call>"


def gold_turns(task: dict, fmt: str = "tool_n1") -> list[str]:
    """The turns that solve a multi-turn row, in the model's tool format (Tool-N1 or a native
    one): its `gold_turns`; else, per user turn (`turn_calls`, or all of `ground_truth` for a
    row with an `answer`), each gold call in its own turn and then an answer (the row's
    `answer` at the end); a row with neither is one single-turn gold answer."""
    if task.get("gold_turns"):
        return list(task["gold_turns"])
    per_user = task.get("turn_calls") or ([task["ground_truth"]] if task.get("answer") is not None else None)
    if per_user is None:
        return [gold_answer(task, fmt)]
    turns = []
    for u, calls in enumerate(per_user):
        for k, call in enumerate(calls):
            if fmt != "tool_n1":
                turns.append(gold_answer({"ground_truth": [call]}, fmt))
                continue
            think = f"First I need {call['name']}." if k == 0 else f"With that result, now {call['name']}."
            turns.append(f"<think>{think}</think>\n<tool_call>{calls_json([call])}</tool_call>")
        answer = task["answer"] if u == len(per_user) - 1 and task.get("answer") is not None else "Done."
        turns.append(f"<think>I have the result.</think>\n{answer}" if fmt == "tool_n1" else str(answer))
    return turns


def context_window(tokenizer, default: int = 8192) -> int:
    """The model's window as the tokenizer knows it (model_max_length; transformers sets a huge
    placeholder when unknown, then `default`)."""
    n = getattr(tokenizer, "model_max_length", None)
    return n if isinstance(n, int) and 0 < n < 10**7 else default
