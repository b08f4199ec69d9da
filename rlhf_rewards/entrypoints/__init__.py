"""User-facing entry points: the offline ``LLM``."""

from rlhf_rewards.entrypoints.llm import LLM

__all__ = ["LLM"]
