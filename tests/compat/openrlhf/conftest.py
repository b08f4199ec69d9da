"""OpenRLHF 0.11.2's own code, from ``.peers`` (see ``tests/compat/peers.py``), and the tiny models it scores."""

from __future__ import annotations

import asyncio
import types
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.compat.peers import build_bos_tokenizer, ensure_peers, stub_flash_attn, unstub_flash_attn
from tests.support.checkpoints import build_checkpoint

NS = types.SimpleNamespace


@pytest.fixture(scope="session")
def openrlhf() -> types.ModuleType:
    """The released ``openrlhf`` package (flash_attn stubbed while it is imported: see ``stub_flash_attn``)."""
    ensure_peers()
    stub_flash_attn()
    try:  # every OpenRLHF module the tests use, imported while the stub is in place
        import openrlhf
        import openrlhf.cli.serve_rm
        import openrlhf.models
        import openrlhf.utils.agent
        import openrlhf.utils.deepspeed
        import openrlhf.utils.utils as utils
    finally:
        unstub_flash_attn()

    # OpenRLHF's loader only knows "bf16" and "fp16"; the comparisons run in float32, so its dtype table gets
    # that one more entry. Nothing else of OpenRLHF is changed.
    convert = utils.convert_to_torch_dtype
    if not getattr(convert, "_fp32_entry", False):

        def with_fp32(param_dtype: str) -> torch.dtype:
            return torch.float32 if param_dtype == "fp32" else convert(param_dtype)

        with_fp32._fp32_entry = True  # type: ignore[attr-defined]
        utils.convert_to_torch_dtype = with_fp32
    return openrlhf


@pytest.fixture(scope="session")
def compat_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny checkpoints: sequence RMs with and without a BOS-adding tokenizer, a token RM and a PRM."""
    root = tmp_path_factory.mktemp("openrlhf-models")
    bos_tok = build_bos_tokenizer(root / "bos-tokenizer")
    return {
        "seq_bos": build_checkpoint(
            "LlamaForSequenceClassification", root / "seq-bos", tokenizer_dir=str(bos_tok), seed=3
        ),
        "seq": build_checkpoint("Qwen3ForSequenceClassification", root / "seq", seed=4),
        "token": build_checkpoint("Qwen2ForRewardModel", root / "token", seed=5),
        "prm": build_checkpoint("Qwen2ForProcessRewardModel", root / "prm", seed=6),
        "llama_base_bos": build_checkpoint(
            "LlamaForCausalLM", root / "llama-base", tokenizer_dir=str(bos_tok), seed=7
        ),
    }


def proxy_args(path: Path, *, max_len: int = 2048, normalize: bool = False) -> Any:
    """``serve_rm``'s parsed arguments (its ``hierarchize``d namespace) for a float32 CPU load."""
    return NS(
        reward=NS(model_name_or_path=str(path), normalize_enable=normalize),
        ds=NS(
            attn_implementation="eager",
            experts_implementation=None,
            param_dtype="fp32",
            load_in_4bit=False,
            value_head_prefix="score",
            packing_samples=False,
        ),
        data=NS(disable_fast_tokenizer=False, max_len=max_len),
        batch_size=None,
    )


def tokenizer_proxy(openrlhf: types.ModuleType, path: Path, max_len: int = 2048) -> Any:
    """A ``RewardModelProxy`` holding only serve_rm's tokenizer (for models its loader cannot build: token
    RMs and PRMs); its own ``tokenize_fn`` gives the reference token ids."""
    from openrlhf.cli.serve_rm import RewardModelProxy
    from openrlhf.utils import get_tokenizer

    proxy = RewardModelProxy.__new__(RewardModelProxy)
    proxy.tokenizer = get_tokenizer(str(path), None, "left", None, use_fast=True)
    proxy.max_length = max_len
    proxy.batch_size = None
    return proxy


class ScriptedEngine:
    """The ``llm_engine`` OpenRLHF's executor generates with: answers each prompt with fixed response ids."""

    def __init__(self, response_ids: list[int]) -> None:
        self.response_ids = response_ids
        self.prompts: list[list[int]] = []

    async def generate(
        self, prompt_token_ids: list[int], sampling_params: Any, multi_modal_data: Any = None
    ) -> Any:
        self.prompts.append(list(prompt_token_ids))
        return NS(
            outputs=[NS(token_ids=list(self.response_ids), text="", finish_reason="stop", logprobs=None)]
        )


def run_single_turn(url: str, tokenizer: Any, prompt: str, response: str, label: str = "") -> dict[str, Any]:
    """One rollout through OpenRLHF's own ``SingleTurnAgentExecutor`` (``--reward.remote_url URL``): it
    tokenizes the prompt, "generates" ``response`` (+ EOS), decodes the query and posts it to the server."""
    from openrlhf.utils.agent import SingleTurnAgentExecutor

    executor = SingleTurnAgentExecutor(remote_rm_url=url)
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    params = NS(max_tokens=None, logprobs=None)
    out = asyncio.run(executor.execute(prompt, label, params, 512, tokenizer, ScriptedEngine(response_ids)))
    out["query"] = tokenizer.decode(out["observation_tokens"], skip_special_tokens=False)
    return out
