"""verl 0.9.1's own reward loop worker against ``rlhf-rewards serve``.

``verl.experimental.reward_loop.reward_loop.RewardLoopWorker`` (the class verl's ``RewardLoopManager`` runs
as a Ray actor) is built here as a plain object, from verl's own generated trainer config with the
``reward.reward_model.*`` keys below, and given the server's address as its ``reward_router_address``
(verl passes it the address of the router in front of the reward servers it starts). Its
``compute_score`` -> ``compute_score_disrm`` then renders the conversation with the reward model's chat
template, strips the BOS text and posts ``/classify`` (``rollout.name=vllm``) or ``/v1/embeddings``
(``rollout.name=sglang``). No Ray, no GPU: the worker itself needs neither.

The reference is the in-process engine on the text verl sends, and on OpenRLHF-style ids (the template
text with its BOS, tokenized without special tokens): both must be one BOS, the same reward.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from rlhf_rewards import LLM
from rlhf_rewards.pooling.params import PoolingParams
from scripts.build_assets.tokenizer import CHATML_TEMPLATE
from tests.compat.peers import build_bos_tokenizer, ensure_peers, report
from tests.support.checkpoints import build_checkpoint
from tests.support.server import InProcessServer

pytestmark = pytest.mark.slow

TOL = 1e-5
SERVE = ("--dtype", "float32", "--device", "cpu")
CHAT = [{"role": "user", "content": "What is 12 + 7?"}]
RESPONSE = "The answer is 19."


@pytest.fixture(scope="module", autouse=True)
def _verl_released_code() -> None:
    ensure_peers()  # verl 0.9.1 and its small dependencies on sys.path (scripts/peers_env.sh)


@pytest.fixture(scope="module")
def verl_models(tmp_path_factory) -> dict[str, Path]:
    """A sequence RM with a Llama-3-style BOS chat template, one without BOS, and a token RM."""
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("verl-models")
    bos_tok = build_bos_tokenizer(root / "bos-tokenizer")
    seq_bos = build_checkpoint(
        "LlamaForSequenceClassification", root / "seq-bos", tokenizer_dir=str(bos_tok), seed=11
    )
    tok = AutoTokenizer.from_pretrained(seq_bos)
    tok.chat_template = "{{ bos_token }}" + CHATML_TEMPLATE  # Llama-3 templates start with the BOS text
    tok.save_pretrained(seq_bos)
    return {
        "seq_bos": seq_bos,
        "seq": build_checkpoint("Qwen3ForSequenceClassification", root / "seq", seed=12),
        "token": build_checkpoint("Qwen2ForRewardModel", root / "token", seed=13),
    }


def verl_config(model_path: Path, engine: str):
    """verl's own trainer config (``_generated_ppo_trainer.yaml``) with the keys the README gives."""
    ensure_peers()
    import verl
    from omegaconf import OmegaConf

    config = OmegaConf.load(
        os.path.join(os.path.dirname(verl.__file__), "trainer/config/_generated_ppo_trainer.yaml")
    )
    overrides = OmegaConf.from_dotlist(
        [
            f"actor_rollout_ref.model.path={model_path}",  # the policy; here it shares the RM's tokenizer
            "reward.reward_model.enable=True",
            f"reward.reward_model.model_path={model_path}",
            f"reward.reward_model.rollout.name={engine}",
        ]
    )
    return OmegaConf.merge(config, overrides)


def verl_score(config, address: str, tokenizer, response: str = RESPONSE) -> float:
    """One sample through ``RewardLoopWorker.compute_score`` (verl's DataProto, as its agent loop builds it)."""
    from tensordict import TensorDict
    from verl.experimental.reward_loop.reward_loop import RewardLoopWorker
    from verl.protocol import DataProto

    worker = RewardLoopWorker(config, reward_router_address=address)
    prompt_ids = tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=True)
    if not isinstance(prompt_ids, list):
        prompt_ids = list(prompt_ids["input_ids"])
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    pad = [tokenizer.pad_token_id or 0] * 3  # verl right-pads responses to response_length
    responses = torch.tensor([response_ids + pad])
    mask = torch.tensor([[1] * len(prompt_ids) + [1] * len(response_ids) + [0] * len(pad)])
    data = DataProto(
        batch=TensorDict({"responses": responses, "attention_mask": mask}, batch_size=1),
        non_tensor_batch={"raw_prompt": np.array([CHAT], dtype=object)},
    )
    out = asyncio.run(worker.compute_score(data))
    return float(out["reward_score"])


def _engine(llm: LLM, prompt, task: str) -> float:
    out = llm.encode([prompt], PoolingParams(use_activation=False), pooling_task=task)[0]
    return float(out.outputs.data.reshape(-1)[-1])


@pytest.mark.parametrize("engine", ["vllm", "sglang"])
@pytest.mark.parametrize("name", ["seq_bos", "seq", "token"])
def test_reward_loop_worker_equals_engine(verl_models, name, engine):
    path = verl_models[name]
    config = verl_config(path, engine)
    with InProcessServer(path, *SERVE) as server:
        llm = server.served.llm
        tok = llm.tokenizer
        ours = verl_score(config, server.url.removeprefix("http://"), tok)
        text = tok.apply_chat_template([*CHAT, {"role": "assistant", "content": RESPONSE}], tokenize=False)
        task = "classify" if name.startswith("seq") else "token_classify"
        sent = text[len(tok.bos_token) :] if tok.bos_token and text.startswith(tok.bos_token) else text
        engine_text = _engine(llm, sent, task)  # the server adds the BOS back, as vLLM's /classify does
        engine_ids = _engine(
            llm, {"prompt_token_ids": tok(text, add_special_tokens=False)["input_ids"]}, task
        )
    report(
        f"verl {engine} {name}", vs_engine_text=abs(ours - engine_text), vs_engine_ids=abs(ours - engine_ids)
    )
    assert abs(ours - engine_text) <= TOL and abs(ours - engine_ids) <= TOL, (ours, engine_text, engine_ids)


def test_model_field_is_verls_local_path(verl_models, tmp_path):
    """verl sends its reward model path as ``model``: a server started from another path (or hub id)
    refuses it unless that path is one of the ``--served-model-name`` aliases."""
    import aiohttp

    path = verl_models["seq"]
    verl_path = tmp_path / "models" / "my-rm"
    verl_path.parent.mkdir()
    verl_path.symlink_to(path, target_is_directory=True)  # the same model under verl's own path
    config = verl_config(verl_path, "vllm")
    with InProcessServer(path, *SERVE) as server:
        tok = server.served.llm.tokenizer
        with pytest.raises(aiohttp.ClientResponseError) as err:
            verl_score(config, server.url.removeprefix("http://"), tok)
        assert err.value.status == 404
    with InProcessServer(path, *SERVE, "--served-model-name", "rm", str(verl_path)) as server:
        assert verl_score(config, server.url.removeprefix("http://"), tok) is not None


def test_keyless_verl_client_from_allowed_network(verl_models):
    path = verl_models["seq"]
    config = verl_config(path, "vllm")
    with InProcessServer(path, *SERVE, "--api-key", "k3y", "--allow-keyless-from", "127.0.0.0/8") as server:
        tok = server.served.llm.tokenizer
        assert verl_score(config, server.url.removeprefix("http://"), tok) is not None


def external_manager_class():
    """The README's ``ExternalRewardLoopManager``, as written there."""
    import ray
    from verl.experimental.reward_loop.reward_loop import RewardLoopManager, RewardLoopWorker
    from verl.trainer.ppo.reward import resolve_reward_manager_cls

    class ExternalRewardLoopManager(RewardLoopManager):
        """verl's reward loop on a running `rlhf-rewards serve` (verl 0.9.1 would start its own servers)."""

        def __init__(self, config, address: str):
            self.config = config
            self.reward_model_manager = None  # no reward servers to start, wake up or put to sleep
            self.reward_router_address = address  # "host:port" of rlhf-rewards serve
            self.reward_loop_workers_class = ray.remote(RewardLoopWorker)
            self.reward_manager_cls = resolve_reward_manager_cls(config)
            self._init_reward_loop_workers()

    return ExternalRewardLoopManager


def test_reward_loop_manager_on_ray(verl_models):
    """verl's ``RewardLoopManager.compute_rm_score`` (Ray actors running ``RewardLoopWorker``) on the server."""
    import ray
    from tensordict import TensorDict
    from verl.protocol import DataProto

    from tests.compat.peers import PEERS, ROOT

    path = verl_models["seq"]
    config = verl_config(path, "vllm")
    config.reward.num_workers = 1
    responses = ["The answer is 19.", "Blue."]
    with InProcessServer(path, *SERVE) as server:
        llm = server.served.llm
        tok = llm.tokenizer
        prompt_ids = list(
            tok.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=True, return_dict=False)
        )
        resp = [tok(r, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for r in responses]
        width = max(map(len, resp))
        pad = tok.pad_token_id
        batch = TensorDict(
            {
                "prompts": torch.tensor([prompt_ids] * 2),
                "responses": torch.tensor([r + [pad] * (width - len(r)) for r in resp]),
                "attention_mask": torch.tensor(
                    [[1] * len(prompt_ids) + [1] * len(r) + [0] * (width - len(r)) for r in resp]
                ),
            },
            batch_size=2,
        )
        data = DataProto(batch=batch, non_tensor_batch={"raw_prompt": np.array([CHAT, CHAT], dtype=object)})
        ray.init(
            num_cpus=1,
            include_dashboard=False,
            log_to_driver=False,
            runtime_env={"env_vars": {"PYTHONPATH": f"{ROOT}:{PEERS}", "TOKENIZERS_PARALLELISM": "false"}},
        )
        try:
            manager = external_manager_class()(config, address=server.url.removeprefix("http://"))
            scores = manager.compute_rm_score(data).batch["rm_scores"]
        finally:
            ray.shutdown()
        expected = [
            _engine(
                llm,
                tok.apply_chat_template([*CHAT, {"role": "assistant", "content": r}], tokenize=False),
                "classify",
            )
            for r in responses
        ]
    got = [float(scores[i, len(resp[i]) - 1]) for i in range(2)]
    assert float(scores.abs().sum()) == pytest.approx(
        sum(abs(g) for g in got), abs=1e-6
    )  # one score per row, at its end
    worst = max(abs(a - b) for a, b in zip(got, expected, strict=True))
    report("verl RewardLoopManager (Ray) vllm seq", vs_engine=worst)
    assert worst <= TOL, (got, expected)
