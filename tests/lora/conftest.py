"""Tiny adapters (random non-zero LoRA weights) and their merged references, built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.lora import build_adapter, build_merged


@pytest.fixture(scope="session")
def adapter_factory(tmp_path_factory: pytest.TempPathFactory):
    """``adapter_factory(base, seed=..., **lora_config) -> Path`` (cached per arguments)."""
    cache: dict[tuple, Path] = {}
    root = tmp_path_factory.mktemp("adapters")

    def make(base: Path, **kw) -> Path:
        key = (str(base), tuple(sorted((k, repr(v)) for k, v in kw.items())))
        if key not in cache:
            cache[key] = build_adapter(base, root / f"adapter-{len(cache)}", **kw)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def merged_factory(tmp_path_factory: pytest.TempPathFactory):
    """``merged_factory(base, adapter) -> Path``: the adapter merged into the base (the reference)."""
    cache: dict[tuple[str, str], Path] = {}
    root = tmp_path_factory.mktemp("merged")

    def make(base: Path, adapter: Path) -> Path:
        key = (str(base), str(adapter))
        if key not in cache:
            cache[key] = build_merged(base, adapter, root / f"merged-{len(cache)}")
        return cache[key]

    return make
