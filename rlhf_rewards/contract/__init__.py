"""The contract between the engine, the workers and the server.

Everything a request is made of, defined once: the prompt forms and their validation, the structured
:class:`~rlhf_rewards.errors.RequestError`, the per-prompt broadcasting of ``pooling_params`` and
``lora_request``, the ``PoolingParams`` <-> request-field codec, and :class:`ModelInfo`. It depends only on
``pooling`` (and the leaf ``errors`` module); ``entrypoints``, ``workers`` and ``server`` all depend on it.
"""

from rlhf_rewards.contract.broadcast import per_prompt, slice_per_prompt
from rlhf_rewards.contract.chat import ChatRenderer, Conversations
from rlhf_rewards.contract.codec import (
    PARAM_FIELDS,
    params_from_fields,
    params_key,
    params_to_fields,
    truncation_of,
)
from rlhf_rewards.contract.model_info import ModelInfo
from rlhf_rewards.contract.prompts import (
    Prompts,
    PromptType,
    TextPrompt,
    TokensPrompt,
    check_prompt,
    check_token_ids,
    normalize_prompts,
    prompts_from_input,
    require_prompts,
)
from rlhf_rewards.errors import RequestError

__all__ = [
    "PARAM_FIELDS",
    "ChatRenderer",
    "Conversations",
    "ModelInfo",
    "PromptType",
    "Prompts",
    "RequestError",
    "TextPrompt",
    "TokensPrompt",
    "check_prompt",
    "check_token_ids",
    "normalize_prompts",
    "params_from_fields",
    "params_key",
    "params_to_fields",
    "per_prompt",
    "prompts_from_input",
    "require_prompts",
    "slice_per_prompt",
    "truncation_of",
]
