"""One answer per task, scored against the ground-truth calls (the Tool-N1 setting)."""

from __future__ import annotations

import json

from envs.types import Rollout, SamplingParams

# Tool-N1's instruction, shortened: every prompt token costs compute (x G completions) on a CPU.
TOOL_N1_SYSTEM = (
    "You may call these functions:\n<tools>\n{tools}\n</tools>\n"
    "Think briefly inside <think></think>, then give the calls as a JSON list inside <tool_call></tool_call>:\n"
    '<think>...</think>\n<tool_call>[{"name": "function_name", "arguments": {"argument": "value"}}]</tool_call>\n'
    "Give [] if no function fits the request."
)


def tools_block(tools: list[dict]) -> str:
    return "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)


def gold_answer(task: dict, fmt: str = "tool_n1") -> str:
    """The answer to a task in the model's tool format (model.tool_format), for SFT warm-up and
    for tests: Tool-N1's think and JSON list, or the native format's calls (plain text for none)."""
    calls = task["ground_truth"]
    if fmt != "tool_n1":
        from rewards.native import render_native

        return render_native(calls, fmt)  # no calls: its NO_CALL_TEXT, which every parser reads as []
    names = sorted({c["name"] for c in calls})
    if not calls:
        think = "None of the functions can do this."
    elif len(calls) == 1:
        think = f"The request needs {names[0]}."
    else:
        think = f"The request needs {len(calls)} calls of {', '.join(names)}."
    return f"<think>{think}</think>\n<tool_call>{calls_json(calls)}</tool_call>"


def calls_json(calls: list[dict]) -> str:
    """The JSON list of calls with " , " between calls: `[{...}} , {...}}]`. json.dumps's ", "
    would end a call inside a list as `"}` + `},` in SmolLM2's (GPT-2-style) vocabulary, a path
    the model rarely sees, while a lone call ends `"` + `}}` + `]`. Sampled parallel answers then
    wrote `"},` (the token the tools' schemas in the prompt are full of), dropped a brace, and
    were unreadable (reward -3), so RL never kept a parallel answer. With " , " every call ends
    as a lone call does, and the choice between one call and more is one token: `]` or ` ,`."""
    return "[" + " , ".join(json.dumps(c, ensure_ascii=False) for c in calls) + "]"


def template_tools(tools: list[dict]) -> list[dict]:
    """Tools in the shape chat templates expect (transformers' and OpenAI's): {"type": "function", "function": {...}}."""
    return [t if t.get("type") == "function" and "function" in t else {"type": "function", "function": t} for t in tools]


PROBE_TOOL = {"name": "toolcall_rl_probe_tool", "description": "probe", "parameters": {"type": "object", "properties": {}}}


def check_template_renders_tools(tokenizer) -> None:
    """env.use_template_tools needs a chat template that renders `tools=`; one that ignores
    them (SmolLM2's) would give prompts with no tools and no instructions, silently."""
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tools=template_tools([PROBE_TOOL]),
                                             add_generation_prompt=True, tokenize=False)
    if PROBE_TOOL["name"] not in rendered:
        name = getattr(tokenizer, "name_or_path", "this model")
        raise ValueError(f"env.use_template_tools=true, but the chat template of {name} ignores `tools`: its prompts "
                         "would hold no tools and no instructions. Set env.use_template_tools=false (the Tool-N1 "
                         "system prompt lists the tools), or use a model whose template renders tools (Qwen2.5, Llama-3.1, ...)")


class SingleTurnEnv:
    def __init__(self, tokenizer, system_prompt: str | None = None, use_template_tools: bool = False,
                 parser: str = "tool_n1"):
        self.tokenizer = tokenizer
        self.system_prompt = system_prompt or TOOL_N1_SYSTEM
        self.use_template_tools = use_template_tools
        self.parser = parser  # the answer format (model.tool_format): SFT gold answers and BFCL decoding use it
        if use_template_tools:
            check_template_renders_tools(tokenizer)

    @classmethod
    def from_config(cls, cfg, tokenizer, tool_format: str = "tool_n1") -> "SingleTurnEnv":
        from envs.base import prompt_kwargs

        return cls(tokenizer, **prompt_kwargs(cfg, tool_format))

    def reset(self, task: dict) -> list[dict]:
        """The chat up to the assistant turn. With use_template_tools the tokenizer's chat
        template renders the tools (only for templates that support `tools=`)."""
        messages = [m for m in task["messages"] if m["role"] != "system"]
        if self.use_template_tools:
            return messages
        system = self.system_prompt.replace("{tools}", tools_block(task["tools"]))
        return [{"role": "system", "content": system}, *messages]

    def prompt_ids(self, task: dict) -> list[int]:
        kwargs = {"tools": template_tools(task["tools"])} if self.use_template_tools else {}
        ids = self.tokenizer.apply_chat_template(self.reset(task), add_generation_prompt=True, tokenize=True, **kwargs)
        return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)

    def decode(self, tokens: list[int]) -> str:
        """A completion's text as rewards read it: without special tokens, except for formats
        whose markers are special tokens (Mistral's [TOOL_CALLS], Llama's <|python_tag|>),
        which keep them (but not the end-of-turn token)."""
        from rewards.native import KEEP_SPECIAL_TOKENS

        if self.parser not in KEEP_SPECIAL_TOKENS:
            return self.tokenizer.decode(tokens, skip_special_tokens=True)
        eos = self.tokenizer.eos_token_id
        return self.tokenizer.decode(tokens[:-1] if tokens[-1:] == [eos] else tokens, skip_special_tokens=False)

    def rollout(self, engine, tasks: list[dict], n: int, sampling: SamplingParams) -> list[Rollout]:
        prompts = [self.prompt_ids(t) for t in tasks]
        samples = engine.generate(prompts, n, sampling)  # [B*n], groups contiguous
        rollouts = []
        for i, s in enumerate(samples):
            task, prompt = tasks[i // n], prompts[i // n]
            rollouts.append(Rollout(
                task=task, prompt=prompt, completion=s.completion, loss_mask=[1] * len(s.completion),
                rollout_logprobs=s.rollout_logprobs, text=self.decode(s.completion),
                finish_reason=s.finish_reason,
            ))
        return rollouts
