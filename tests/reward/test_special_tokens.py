"""``add_special_tokens`` on a real Llama-3 tokenizer (a BOS tokenizer): which setting reproduces what.

- ``add_special_tokens=False`` equals TRL 1.16's own built-in reward-model path: a real ``GRPOTrainer`` with
  the checkpoint's path among its ``reward_funcs``, and ``trainer._calculate_rewards`` run on the same
  prompts and completions scores it with TRL's code (``tokenizer(texts, add_special_tokens=False)``, then the
  transformers model's ``logits[:, 0]``), next to two ``RewardFunction`` columns.
- ``add_special_tokens=True`` (the default) equals the model card's usage: ``tokenizer(prompt + completion)``
  (BOS first) and ``AutoModelForSequenceClassification``'s logit.
- The two differ on this checkpoint (the BOS changes every hidden state), so neither check is vacuous.
- Conversational input scores the same either way and equals TRL's conversational path (the Llama-3 chat
  template writes the BOS; it is never doubled).
- Colocated and remote (``rlhf-rewards serve`` + ``RemoteWorker``) give the same rewards for each setting.
"""

from __future__ import annotations

import pytest
import torch

from rlhf_rewards import LLM, AsyncRewardFunction, RewardFunction
from tests.reward.expected import close
from tests.support.real_tokenizers import LLAMA3_BOS, LLAMA3_PAD, real_tokenizer_dir, tokenizer_length

trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

PROMPTS = ["What is 12 + 7?", "Hello, my name is", "Write a haiku about the sea."]
COMPLETIONS = [" The answer is 19.", " Ada, and I like mathematics.", " Waves fold on the shore"]
BOS_ID, PAD_ID, EOT_ID = 128000, 128004, 128009


@pytest.fixture(scope="module")
def llama3_rm(checkpoint_factory):
    """A tiny LlamaForSequenceClassification on Llama-3's real tokenizer (pad: reserved token 128004)."""
    tok_dir = real_tokenizer_dir("llama3", pad_token=LLAMA3_PAD)
    return checkpoint_factory(
        "LlamaForSequenceClassification",
        seed=23,
        tokenizer_dir=str(tok_dir),
        vocab_size=tokenizer_length(tok_dir),
        pad_token_id=PAD_ID,
        bos_token_id=BOS_ID,
        eos_token_id=EOT_ID,
        hidden_size=64,
        num_attention_heads=2,
        num_key_value_heads=1,
    )


@pytest.fixture(scope="module")
def llama3_llm(llama3_rm):
    return LLM(str(llama3_rm), device="cpu")


@pytest.fixture(scope="module")
def trl_rewards(llama3_rm, llama3_llm, policy_path, tmp_path_factory):
    """TRL's own ``_calculate_rewards`` on a real GRPOTrainer, standard and conversational, as columns."""
    args = trl.GRPOConfig(
        output_dir=str(tmp_path_factory.mktemp("grpo")),
        per_device_train_batch_size=3,
        num_generations=3,
        max_completion_length=8,
        use_cpu=True,
        bf16=False,
        report_to="none",
        save_strategy="no",
        seed=0,
    )
    funcs = [
        str(llama3_rm),
        RewardFunction(llama3_llm, name="no_special", add_special_tokens=False),
        RewardFunction(llama3_llm, name="special"),
    ]
    trainer = trl.GRPOTrainer(
        model=str(policy_path),
        reward_funcs=funcs,
        args=args,
        train_dataset=datasets.Dataset.from_dict({"prompt": PROMPTS}),
    )
    out = {}
    conv_prompts = [[{"role": "user", "content": p}] for p in PROMPTS]
    conv_completions = [[{"role": "assistant", "content": c}] for c in COMPLETIONS]
    for fmt, prompts, completions in (
        ("standard", PROMPTS, COMPLETIONS),
        ("conversational", conv_prompts, conv_completions),
    ):
        inputs = [{"prompt": p} for p in prompts]
        rewards = trainer._calculate_rewards(inputs, prompts, completions, [[0]] * len(prompts))
        out[fmt] = {name: rewards[:, j].tolist() for j, name in enumerate(["trl", "no_special", "special"])}
    return out


def model_card_rewards(path, texts):
    """The model card's usage: ``tokenizer(text)`` with special tokens, the classifier's logit."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForSequenceClassification.from_pretrained(str(path), dtype=torch.float32).eval()
    rewards = []
    for text in texts:
        inputs = tok(text, return_tensors="pt")
        assert inputs["input_ids"][0, 0].item() == BOS_ID
        with torch.inference_mode():
            rewards.append(float(model(**inputs).logits[0, 0]))
    return rewards


def test_false_reproduces_trls_built_in_reward_model_path(trl_rewards):
    std = trl_rewards["standard"]
    assert close(std["no_special"], std["trl"], tol=1e-5), std


def test_true_reproduces_the_model_card_and_differs_from_trl(trl_rewards, llama3_rm):
    std = trl_rewards["standard"]
    card = model_card_rewards(llama3_rm, [p + c for p, c in zip(PROMPTS, COMPLETIONS, strict=True)])
    assert close(std["special"], card, tol=1e-5), (std["special"], card)
    assert all(abs(a - b) > 1e-3 for a, b in zip(std["special"], std["trl"], strict=True)), std


def test_conversational_input_matches_trl_with_either_setting(trl_rewards, llama3_rm):
    from transformers import AutoTokenizer

    conv = trl_rewards["conversational"]
    assert close(conv["no_special"], conv["trl"], tol=1e-5), conv
    assert close(conv["special"], conv["trl"], tol=1e-5), conv
    # One BOS, from the template: TRL renders it into the text and tokenizes without special tokens.
    tok = AutoTokenizer.from_pretrained(str(llama3_rm))
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert text.startswith(LLAMA3_BOS) and not text.startswith(LLAMA3_BOS * 2)


def test_colocated_and_remote_agree_for_each_setting(llama3_rm, llama3_llm, trl_rewards):
    from rlhf_rewards.workers.remote import RemoteWorker
    from tests.support.server import InProcessServer

    std = trl_rewards["standard"]
    with InProcessServer(llama3_rm) as server, RemoteWorker(server.url) as worker:
        for flag, want in ((False, std["trl"]), (True, std["special"])):
            remote = RewardFunction(worker, add_special_tokens=flag)(prompts=PROMPTS, completions=COMPLETIONS)
            local = RewardFunction(llama3_llm, add_special_tokens=flag)(
                prompts=PROMPTS, completions=COMPLETIONS
            )
            assert close(remote, local, tol=1e-5) and close(local, want, tol=1e-5), (
                flag,
                remote,
                local,
                want,
            )


def test_async_function_and_the_worker_call(llama3_llm, trl_rewards):
    import asyncio

    std = trl_rewards["standard"]
    rf = AsyncRewardFunction(llama3_llm, add_special_tokens=False)
    assert close(asyncio.run(rf(prompts=PROMPTS, completions=COMPLETIONS)), std["trl"], tol=1e-5)
    # The keyword reaches the worker only when it is False (a worker without it still serves the default).
    from rlhf_rewards.reward.calls import EncodeBatch

    batch = EncodeBatch(["x"], None, "classify", None, None)
    assert "add_special_tokens" not in batch.encode_kwargs()
    batch.add_special_tokens = False
    assert batch.encode_kwargs()["add_special_tokens"] is False
