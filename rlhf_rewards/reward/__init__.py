"""Reward functions for TRL trainers (``RewardFunction``, ``AsyncRewardFunction``)."""
