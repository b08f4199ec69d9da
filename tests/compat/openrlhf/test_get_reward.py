"""OpenRLHF 0.11.2's own reward client and server code against ``rlhf-rewards serve``'s ``/get_reward``.

The client is OpenRLHF's ``SingleTurnAgentExecutor`` (``openrlhf/utils/agent.py``, the path of
``--reward.remote_url``): it tokenizes the prompt, takes the generated ids, decodes the query with
``skip_special_tokens=False`` and posts it through ``_fetch_rewards_via_http``. Only the generation engine is
scripted (it returns fixed response ids). The reference is OpenRLHF's own server class, ``serve_rm``'s
``RewardModelProxy`` (its model loader on CPU, float32; its tokenization gives the token ids), and the
in-process engine (``LLM.encode``) on those ids.
"""

from __future__ import annotations

import httpx
import pytest

from rlhf_rewards import LLM, RewardFunction
from rlhf_rewards.pooling.params import PoolingParams
from tests.compat.openrlhf.conftest import proxy_args, run_single_turn, tokenizer_proxy
from tests.compat.peers import report
from tests.support.server import InProcessServer

pytestmark = pytest.mark.slow

TOL = 1e-5
PROMPT = "<|im_start|>user\nWhat is 12 + 7?<|im_end|>\n<|im_start|>assistant\n"
RESPONSE = "Step one: add the units.\n\nStep two: carry the tens.\n\nThe answer is 19."
SERVE = ("--dtype", "float32", "--device", "cpu")


def _prompt(tokenizer) -> str:
    # A Llama-3-style chat template starts with the BOS text; OpenRLHF tokenizes the prompt without special tokens.
    return (tokenizer.bos_token or "") + PROMPT


def _engine_score(llm: LLM, ids: list[int], task: str) -> float:
    out = llm.encode([{"prompt_token_ids": ids}], PoolingParams(use_activation=False), pooling_task=task)[0]
    return float(out.outputs.data.reshape(-1)[-1])


@pytest.mark.parametrize("name", ["seq_bos", "seq"])
def test_sequence_rm_equals_serve_rm_and_engine(openrlhf, compat_models, name):
    from openrlhf.cli.serve_rm import RewardModelProxy

    path = compat_models[name]
    proxy = RewardModelProxy(proxy_args(path))
    tok = proxy.tokenizer
    with InProcessServer(path, *SERVE) as server:
        out = run_single_turn(f"{server.url}/get_reward", tok, _prompt(tok), RESPONSE)
        llm = server.served.llm
        (ours,) = out["reward"]
        (theirs,) = proxy.get_reward([out["query"]])
        ids = proxy.tokenize_fn([out["query"]], device="cpu")["input_ids"][0].tolist()
        engine = _engine_score(llm, ids, "classify")
        report(f"openrlhf get_reward {name}", vs_serve_rm=abs(ours - theirs), vs_engine=abs(ours - engine))
        assert abs(ours - theirs) <= TOL and abs(ours - engine) <= TOL, (ours, theirs, engine)
        assert out["scores"] == out["reward"]
        if tok.bos_token is not None:
            # The decoded query carries the BOS text once; a second BOS (the old bug) changes the reward.
            assert out["query"].startswith(tok.bos_token) and ids.count(tok.bos_token_id) == 1
            double_bos = abs(_engine_score(llm, [tok.bos_token_id, *ids], "classify") - ours)
            report(f"openrlhf get_reward {name}: the old double-BOS reward's error", double_bos=double_bos)
            assert double_bos > 1e-3
        else:
            assert tok("x")["input_ids"] == tok("x", add_special_tokens=False)["input_ids"]  # no BOS added


def test_token_rm_equals_engine_on_serve_rm_ids(openrlhf, compat_models):
    path = compat_models["token"]
    proxy = tokenizer_proxy(openrlhf, path)  # serve_rm's loader cannot build Qwen2ForRewardModel's MLP head
    tok = proxy.tokenizer
    with InProcessServer(path, *SERVE) as server:
        out = run_single_turn(f"{server.url}/get_reward", tok, _prompt(tok), RESPONSE)
        ids = proxy.tokenize_fn([out["query"]], device="cpu")["input_ids"][0].tolist()
        engine = _engine_score(server.served.llm, ids, "token_classify")
    (ours,) = out["reward"]
    report("openrlhf get_reward token RM", vs_engine=abs(ours - engine))
    assert abs(ours - engine) <= TOL, (ours, engine)


def test_prm_answers_the_aggregated_step_reward(openrlhf, compat_models):
    path = compat_models["prm"]
    tok = tokenizer_proxy(openrlhf, path).tokenizer
    with InProcessServer(path, *SERVE) as server:
        out = run_single_turn(f"{server.url}/get_reward", tok, _prompt(tok), RESPONSE)
        llm = server.served.llm
        prompt = _prompt(tok)
        assert out["query"].startswith(prompt)
        completion = out["query"][len(prompt) :]
        (ours,) = out["reward"]
        rf = RewardFunction(llm)  # step_aggregation="min", RewardFunctionConfig's default
        (expected,), (steps,) = rf.score_with_steps(prompts=[prompt], completions=[completion])
        assert len(steps) == 3
        report("openrlhf get_reward PRM (min)", vs_reward_function=abs(ours - expected))
        assert abs(ours - expected) <= TOL and abs(ours - min(steps)) <= TOL, (ours, expected, steps)
    with InProcessServer(path, *SERVE, "--get-reward-step-aggregation", "mean") as server:
        (mean,) = run_single_turn(f"{server.url}/get_reward", tok, prompt, RESPONSE)["reward"]
    assert abs(mean - sum(steps) / len(steps)) <= TOL


def test_over_long_query_is_truncated_as_serve_rm_max_len(openrlhf, compat_models):
    from openrlhf.cli.serve_rm import RewardModelProxy

    path = compat_models["seq_bos"]
    proxy = RewardModelProxy(proxy_args(path, max_len=12))
    tok = proxy.tokenizer
    with InProcessServer(path, *SERVE, "--get-reward-max-len", "12") as server:
        out = run_single_turn(f"{server.url}/get_reward", tok, _prompt(tok), RESPONSE)
    assert len(out["observation_tokens"]) > 12
    (ours,) = out["reward"]
    assert ours is not None
    (theirs,) = proxy.get_reward([out["query"]])
    report("openrlhf get_reward over max_len", vs_serve_rm=abs(ours - theirs))
    assert abs(ours - theirs) <= TOL, (ours, theirs)
    with InProcessServer(
        path, *SERVE, "--max-model-len", "12"
    ) as server:  # the flag defaults to max_model_len
        (capped,) = run_single_turn(f"{server.url}/get_reward", tok, _prompt(tok), RESPONSE)["reward"]
    assert abs(capped - theirs) <= TOL


def test_keyless_clients_allowed_only_from_listed_networks(openrlhf, compat_models):
    path = compat_models["seq"]
    tok = tokenizer_proxy(openrlhf, path).tokenizer
    body = {"query": ["What is 12 + 7? 19"], "prompts": ["What is 12 + 7?"], "labels": [""]}
    with InProcessServer(
        path, *SERVE, "--api-key", "k3y", "--allow-keyless-from", "127.0.0.1/32,10.0.0.0/8"
    ) as server:
        # OpenRLHF's client sends no Authorization header: let in from loopback.
        out = run_single_turn(f"{server.url}/get_reward", tok, PROMPT, RESPONSE)
        assert out["reward"] is not None and out["reward"][0] is not None
        url = f"{server.url}/get_reward"
        assert httpx.post(url, json=body, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert httpx.post(url, json=body, headers={"Authorization": "Bearer k3y"}).status_code == 200
    with InProcessServer(path, *SERVE, "--api-key", "k3y") as server:
        # Key-less is refused by default: OpenRLHF retries 5 times, then its sample has no reward.
        assert run_single_turn(f"{server.url}/get_reward", tok, PROMPT, RESPONSE)["reward"] is None
