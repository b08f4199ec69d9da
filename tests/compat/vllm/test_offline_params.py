"""Port of vLLM's ``tests/entrypoints/pooling/test_offline_params.py`` (GitHub commit
3843961a83cf030ec0098ba8af94e37ea7158504): offline pooling entry points must not modify the caller's
``PoolingParams``.

Kept: both tests' calls and assertions. Changed: vLLM builds a model-less ``PoolingOfflineMixin`` by
monkeypatching its IO processor; here a real tiny one-label classifier runs (this engine has no such
internals to stub), and the ``encode``/``classify``/``embed`` half of the file's claim is checked too.
"""

from __future__ import annotations

import pytest

from rlhf_rewards import LLM, PoolingParams


@pytest.fixture(scope="module")
def llm(reranker_like):
    return LLM(str(reranker_like), device="cpu")


def test_score_leaves_caller_pooling_params_untouched(llm):
    params = PoolingParams()
    llm.score("query", "doc", pooling_params=params)

    assert params.task is None, (
        "LLM.score() wrote the model's own pooling task into the caller's "
        "PoolingParams; reusing that object with another pooling model now "
        "fails with 'You cannot overwrite ...' before any inference runs."
    )
    for method in (llm.classify, llm.embed):
        method("query", pooling_params=params, use_tqdm=False)
        assert params.task is None


def test_score_still_rejects_conflicting_task(llm):
    with pytest.raises(ValueError, match="You cannot overwrite"):
        llm.score("query", "doc", pooling_params=PoolingParams(task="embed"))
