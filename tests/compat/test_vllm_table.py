"""The README shows the differential run's table (tests/compat/vllm_live/compat_table.md) as written."""

from __future__ import annotations

from tests.compat.vllm_live.conftest import COMPAT_TABLE, README, TABLE_BEGIN, TABLE_END


def test_readme_shows_the_table_the_differential_run_wrote() -> None:
    text = README.read_text()
    assert TABLE_BEGIN in text and TABLE_END in text, "README lacks the vLLM differential table markers"
    shown = text.split(TABLE_BEGIN, 1)[1].split(TABLE_END, 1)[0].strip()
    assert shown == COMPAT_TABLE.read_text().strip(), (
        "README's vLLM table differs from tests/compat/vllm_live/compat_table.md: rerun the differential with "
        "VLLM_LIVE_WRITE_TABLE=1 (bash scripts/test.sh -m slow tests/compat/vllm_live)")
