"""A reward model checkpoint written by OpenRLHF 0.11.2's own code loads natively and scores as OpenRLHF's model.

The checkpoint is made as ``openrlhf.cli.train_rm`` makes it: ``get_llm_for_sequence_regression(base,
"reward", init_value_head=True, normalize_reward=True)`` on a tiny Llama (BOS-adding tokenizer), the reward
mean/std put in the config as ``RewardModelTrainer`` does, and ``DeepspeedStrategy.save_model`` (its save
path: ``save_pretrained`` + config + tokenizer). The reference is OpenRLHF's ``RewardModel.forward``.
"""

from __future__ import annotations

import json
import types

import pytest
import torch

from rlhf_rewards import LLM
from rlhf_rewards.pooling.params import PoolingParams
from tests.compat.openrlhf.conftest import proxy_args, run_single_turn
from tests.compat.peers import report
from tests.support.server import ServerProcess, free_port

pytestmark = pytest.mark.slow

TOL = 1e-5
MEAN, STD = 0.75, 2.5
TEXTS = ["<s>Hello, my name is Ada", "<s>What is 12 + 7? The answer is 19.", "<s>ok"]
PROMPT = "<s><|im_start|>user\nWhat is 12 + 7?<|im_end|>\n<|im_start|>assistant\n"
RESPONSE = "The answer is 19."


@pytest.fixture(scope="module")
def openrlhf_checkpoint(openrlhf, compat_models, tmp_path_factory):
    """``(path, OpenRLHF's model reloaded by its own loader)`` for a checkpoint saved by OpenRLHF."""
    import torch.distributed as dist
    from openrlhf.models import get_llm_for_sequence_regression
    from openrlhf.utils import get_tokenizer
    from openrlhf.utils.deepspeed import DeepspeedStrategy

    base = compat_models["llama_base_bos"]
    out = tmp_path_factory.mktemp("openrlhf-rm") / "rm"
    torch.manual_seed(0)
    model = get_llm_for_sequence_regression(
        str(base),
        "reward",
        param_dtype="fp32",
        attn_implementation="eager",
        init_value_head=True,
        normalize_reward=True,
    )
    with torch.no_grad():  # a trained-looking head (init_value_head draws it very small)
        model.score.weight.normal_(0.0, 0.3)
    model.config.mean, model.config.std = MEAN, STD  # as RewardModelTrainer.evaluate stores them
    tokenizer = get_tokenizer(str(base), model, "left", None)
    strategy = DeepspeedStrategy(
        args=types.SimpleNamespace(
            ds=types.SimpleNamespace(param_dtype="fp32", zero_stage=2, tensor_parallel_size=1),
            train=types.SimpleNamespace(),
        )
    )
    # save_model ends with a barrier + torch.cuda.synchronize(): a one-process gloo group, and no CUDA sync on
    # this CPU-only torch (the files are written before it).
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    sync = torch.cuda.synchronize
    torch.cuda.synchronize = lambda *a, **k: None
    try:
        strategy.save_model(model, tokenizer, str(out))
    finally:
        torch.cuda.synchronize = sync
        dist.destroy_process_group()
    return out


def _openrlhf_rewards(path, normalize: bool, texts: list[str]) -> list[float]:
    """OpenRLHF's serve_rm (its loader + RewardModel.forward) on ``texts``."""
    from openrlhf.cli.serve_rm import RewardModelProxy

    proxy = RewardModelProxy(proxy_args(path, normalize=normalize))
    config = proxy.reward_model.config
    # RewardModel.__init__ copies config.mean/std into non-persistent buffers; transformers 5 builds the model
    # on the meta device and leaves those buffers uninitialized after from_pretrained (OpenRLHF 0.11.2's own
    # normalized rewards are garbage on this transformers). Set them as its __init__ means to.
    proxy.reward_model.mean[0], proxy.reward_model.std[0] = config.mean, config.std
    return proxy.get_reward(texts), proxy


def test_saved_by_openrlhf(openrlhf_checkpoint):
    config = json.loads((openrlhf_checkpoint / "config.json").read_text())
    assert config["architectures"] == ["RewardModel"] and config["model_type"] == "llama"
    assert config["normalize_reward"] is True and (config["mean"], config["std"]) == (MEAN, STD)


@pytest.mark.parametrize("normalize", [True, False])
def test_llm_scores_as_openrlhf_model(openrlhf_checkpoint, normalize):
    theirs, proxy = _openrlhf_rewards(openrlhf_checkpoint, normalize, TEXTS)
    # The checkpoint says normalize_reward: true, so that is the default; hf_overrides is the switch.
    kwargs = {} if normalize else {"hf_overrides": {"normalize_reward": False}}
    llm = LLM(str(openrlhf_checkpoint), dtype="float32", device="cpu", **kwargs)
    assert llm.model_info().kind == "outcome"
    ids = [proxy.tokenize_fn([t], device="cpu")["input_ids"][0].tolist() for t in TEXTS]
    outs = llm.encode(
        [{"prompt_token_ids": i} for i in ids], PoolingParams(use_activation=False), pooling_task="classify"
    )
    ours = [float(o.outputs.data.reshape(-1)[-1]) for o in outs]
    diff = max(abs(a - b) for a, b in zip(ours, theirs, strict=True))
    report(f"openrlhf checkpoint LLM normalize={normalize}", vs_openrlhf_model=diff)
    assert diff <= TOL, (ours, theirs)
    raw, _ = _openrlhf_rewards(openrlhf_checkpoint, False, TEXTS)
    if normalize:  # the normalization really applies: (raw - mean) / std
        assert max(abs(a - (r - MEAN) / STD) for a, r in zip(ours, raw, strict=True)) <= TOL
        assert max(abs(a - r) for a, r in zip(ours, raw, strict=True)) > 1e-2


@pytest.mark.parametrize("normalize", [True, False])
def test_serve_scores_as_openrlhf_server(openrlhf_checkpoint, normalize):
    args = ["--dtype", "float32", "--device", "cpu"]
    if not normalize:
        args += ["--hf-overrides", json.dumps({"normalize_reward": False})]
    with ServerProcess(openrlhf_checkpoint, *args) as server:  # `rlhf-rewards serve PATH`, a real process
        _, proxy = _openrlhf_rewards(openrlhf_checkpoint, normalize, TEXTS)
        out = run_single_turn(f"{server.url}/get_reward", proxy.tokenizer, PROMPT, RESPONSE)
    (ours,) = out["reward"]
    (theirs,) = proxy.get_reward([out["query"]])
    report(f"openrlhf checkpoint serve normalize={normalize}", vs_serve_rm=abs(ours - theirs))
    assert abs(ours - theirs) <= TOL, (ours, theirs)
