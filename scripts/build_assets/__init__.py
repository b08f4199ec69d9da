"""Rebuild the models shipped in ``rlhf_rewards/assets/models`` (``python -m scripts.build_assets``).

Not part of the installed package: maintainers run it from a checkout (see :mod:`.train_reward_models`).
"""
