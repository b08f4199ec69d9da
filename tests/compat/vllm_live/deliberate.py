"""The differences from vLLM 0.32 this project keeps on purpose, one key each.

A differential test that finds a difference names its key here; a difference without a key is a mismatch
and fails the test. Each value is ``"<what vLLM does> || <what this project does, and why>"`` (the two
columns of the table the run writes). With strict compatibility (``LLM(..., strict_vllm_compat=True)``,
``rlhf-rewards serve --strict-vllm-compat``) every one of these requests gets vLLM's answer instead; the
differential suite checks that too.
"""

from __future__ import annotations

DELIBERATE: dict[str, str] = {
    "task-not-served": (
        "serves one pooling task per model (`token_classify` on a sequence classifier, `token_embed` on an "
        'embedding model: "Try switching the model\'s pooling_task via `PoolerConfig(task=...)`") || every task '
        "the architecture supports runs in the same engine (a classifier's per-token scores, what a token-level "
        "reward view needs; an embedding model's per-token vectors)"
    ),
    "embedding-api": (
        "`embed`/`token_embed` (with or without `dimensions`) on a classifier or a reward model are refused "
        '("Embedding API is not supported by this model. Try converting the model using `--convert embed`") '
        "|| served from the same backbone (last-token / per-token hidden states, L2-normalized by default as "
        "vLLM's embedding models), so one engine gives rewards and features"
    ),
    "prm-step-tag-from-tokenizer": (
        "a `Qwen2ForProcessRewardModel` without a configured `step_tag_id` is read at id 151651 (`<extra_0>` in "
        "Qwen2.5's vocabulary), whatever the model's tokenizer || the id of `<extra_0>` in the model's own "
        "tokenizer (the same 151651 on Qwen2.5-Math-PRM; on a PRM with another vocabulary vLLM returns no step "
        "at all); strict mode uses 151651"
    ),
    "dimensions-any-model": (
        '`dimensions` on a model without Matryoshka embeddings is refused ("does not support Matryoshka '
        'embeddings; dimensions must be unset") || any `1..hidden` keeps that many leading dimensions '
        "(then normalizes), for any backbone"
    ),
    "supported-tasks": (
        "`LLM.supported_tasks` lists the tasks of the model's pooler (a classifier: `classify`, "
        "`token_classify`) || also the tasks served here beyond vLLM (`embed`, `token_embed`: see "
        "`embedding-api`); strict mode lists vLLM's"
    ),
    "pooling-params-truncate": (
        "`PoolingParams(truncate_prompt_tokens=...)` is a TypeError (the field moved to the request's "
        "`tokenization_kwargs`) || still accepted, deprecated, for code written for earlier vLLM releases "
        "(cut on the call's truncation side, as `tokenization_kwargs`)"
    ),
    # --- online (rlhf-rewards serve); `--strict-vllm-compat` gives vLLM's answer to each of these but the last two
    "classify-route-token-rm": (
        "`POST /classify` on a token reward model (`Qwen2ForRewardModel`, `InternLM2ForRewardModel`) is "
        '`404 {"detail": "Not Found"}` (the route exists only for models with the `classify` task) || '
        "answers the last token's scores (issue 16: verl's reward loop calls `/classify`)"
    ),
    "embeddings-route-reward-models": (
        '`POST /v1/embeddings` on a classifier or a token/process reward model is `404 {"detail": "Not '
        "Found\"}` || answers as SGLang's reward servers do (`embedding` = the raw score vector, a token/process "
        "model's last row), which verl's SGLang reward path reads; a process reward model's prompt without a "
        "step tag is a 400 saying so"
    ),
    "pooling-dimensions": (
        '`dimensions` on `/pooling` is a 400 ("dimensions is currently not supported") || honoured on the '
        "embed tasks (the first n dimensions), as on `/v1/embeddings`"
    ),
    "pooling-normalize": (
        '`normalize` on `/pooling` is a 400 ("Parameter `normalize` was removed; use `use_activation` '
        'instead.") || honoured on the embed tasks (an extension kept from earlier releases)'
    ),
    "pooling-extension-fields": (
        "ignores `return_details`, `step_tag_id`, `returned_token_ids` on `/pooling` (unknown fields) || "
        "honoured: `prompt_token_ids` and `shape` per item, STEP pooling per request"
    ),
    "chat-fields-on-input": (
        "chat-only fields (`add_generation_prompt`, `chat_template`, ...) sent with `input` are ignored (not "
        "fields of its completion form) || a 400 naming them: they cannot apply, and silently dropping them "
        "hides a client's mistake"
    ),
    "input-and-messages": (
        "a body with both `input` and `messages` is served as the chat form (its request union picks it) || a "
        "400: which one was meant is ambiguous"
    ),
    "padding-max-length": (
        '`padding: "max_length"` pads each prompt with pad tokens to max_model_len and scores them as prompt '
        "tokens || a 400: pad tokens would change a causal reward model's last-token and per-token scores "
        "(strict mode pads as vLLM)"
    ),
    "models-owned-by": (
        '`/v1/models` cards are `owned_by: "vllm"` || `"rlhf-rewards"` (the server that serves them; strict '
        "mode too: not a refusal)"
    ),
    "version-route": (
        "`GET /version` answers vLLM's release (`0.32.0`) || this package's version in vLLM's shape (a client "
        "gating on vLLM's version must not take this server for a vLLM release; strict mode too)"
    ),
}
