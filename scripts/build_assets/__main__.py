"""``python -m scripts.build_assets``: the same as ``python -m scripts.build_assets.train_reward_models``."""

import sys

from .train_reward_models import main

sys.exit(main())
