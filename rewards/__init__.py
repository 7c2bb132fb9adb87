"""Rule-based rewards for tool calling, each a plain function with TRL's signature."""

from rewards.combine import REWARDS, WeightedReward
from rewards.tool_n1 import format_reward, tool_n1_reward

__all__ = ["REWARDS", "WeightedReward", "format_reward", "tool_n1_reward"]
