"""Demo: build a tiny reward model locally and score texts with ``LLM.encode``.

Run: ``bash scripts/demo.sh``
"""

from __future__ import annotations

import tempfile

from rlhf_rewards import LLM
from rlhf_rewards.testing.checkpoints import build_checkpoint


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = build_checkpoint("Qwen3ForSequenceClassification", f"{tmp}/rm")
        llm = LLM(str(path), runner="pooling", device="cpu")
        texts = ["What is 2 + 2? 4", "What is 2 + 2? 5", "Hello, my name is"]
        for text, out in zip(texts, llm.encode(texts, pooling_task="classify"), strict=True):
            print(f"{out.outputs.data.item():+.4f}  {text}")


if __name__ == "__main__":
    main()
