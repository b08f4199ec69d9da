"""The RL frameworks' released code (``.peers/``, prepared by ``scripts/peers_env.sh``) and the tiny models
the compat tests give them.

``.peers`` holds ``openrlhf==0.11.2`` and ``verl==0.9.1`` exactly as released, installed without their
heavy dependencies. It is appended to ``sys.path`` (after ``.venv``), so it never shadows the project's
packages or .venv's torch/transformers/ray.
"""

from __future__ import annotations

import importlib.machinery
import json
import subprocess
import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PEERS = ROOT / ".peers"

#: The framework releases the compat tests run (pinned in scripts/peers_env.sh).
OPENRLHF_VERSION = "0.11.2"
VERL_VERSION = "0.9.1"


def ensure_peers() -> Path:
    """``.peers`` on ``sys.path``, prepared first by ``scripts/peers_env.sh`` when it is missing."""
    if not (PEERS / ".peers-installed").exists():
        subprocess.run(["bash", str(ROOT / "scripts" / "peers_env.sh")], check=True, cwd=ROOT)
    if str(PEERS) not in sys.path:
        sys.path.append(str(PEERS))
    return PEERS


def _stub(name: str, **attrs: object) -> None:
    module = types.ModuleType(name)
    # A spec, so transformers' importlib.util.find_spec("flash_attn") does not raise on the stub; it still
    # finds no installed distribution, so it never treats flash-attn as available.
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)
    module.__dict__.update(attrs)
    sys.modules[name] = module


FLASH_ATTN_STUBS = (
    "flash_attn",
    "flash_attn.bert_padding",
    "flash_attn.utils",
    "flash_attn.utils.distributed",
)


def stub_flash_attn() -> None:
    """Stub the one heavy package OpenRLHF imports at top level that .venv lacks: ``flash_attn``.

    ``openrlhf.models.ring_attn_utils`` (imported by ``openrlhf.models``, hence by ``serve_rm`` and the model
    loader) does ``from flash_attn.bert_padding import ...`` and ``from flash_attn.utils.distributed import
    all_gather`` at import time. Those functions are only called with ``packing_samples``/ring attention,
    which the tests never enable; flash-attn itself needs CUDA. Nothing else is stubbed. Call
    :func:`unstub_flash_attn` once OpenRLHF's modules are imported, so nothing else sees the stub.
    """
    if "flash_attn" in sys.modules:
        return
    _stub("flash_attn")
    _stub("flash_attn.bert_padding", index_first_axis=None, pad_input=None, rearrange=None, unpad_input=None)
    _stub("flash_attn.utils")
    _stub("flash_attn.utils.distributed", all_gather=None)


def unstub_flash_attn() -> None:
    """Remove the :func:`stub_flash_attn` modules (OpenRLHF's modules keep the names they imported)."""
    for name in FLASH_ATTN_STUBS:
        module = sys.modules.get(name)
        if (
            module is not None
            and getattr(module.__spec__, "origin", "") is None
            and not hasattr(module, "__file__")
        ):
            del sys.modules[name]


def report(case: str, **differences: float) -> None:
    """Print a case's measured differences (``pytest -s`` shows them; the closing note quotes them)."""
    shown = " ".join(f"{k}={v:.3g}" for k, v in differences.items())
    print(f"\nCOMPAT-DIFF {case}: {shown}")


def build_bos_tokenizer(path: Path) -> Path:
    """The tiny BPE tokenizer with a Llama-3-style BOS (``<s>``, id 0) added by ``add_special_tokens=True``."""
    from tokenizers import Tokenizer, processors

    from scripts.build_assets.tokenizer import SPECIAL_TOKENS, build_bpe_tokenizer

    build_bpe_tokenizer(path, special_tokens=["<s>", *SPECIAL_TOKENS])
    tok = Tokenizer.from_file(str(path / "tokenizer.json"))
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    tok.save(str(path / "tokenizer.json"))
    config_file = path / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config.update(bos_token="<s>", add_bos_token=True)
    config_file.write_text(json.dumps(config, indent=2))
    return path


__all__ = [
    "OPENRLHF_VERSION",
    "PEERS",
    "VERL_VERSION",
    "build_bos_tokenizer",
    "ensure_peers",
    "report",
    "stub_flash_attn",
    "unstub_flash_attn",
]
