"""The README shows the differential run's table (tests/compat/vllm_live/compat_table.md) as written."""

from __future__ import annotations

from tests.compat.vllm_live.conftest import COMPAT_TABLE, README, TABLE_BEGIN, TABLE_END


def test_readme_shows_the_table_the_differential_run_wrote() -> None:
    text = README.read_text()
    assert TABLE_BEGIN in text and TABLE_END in text, "README lacks the vLLM differential table markers"
    shown = text.split(TABLE_BEGIN, 1)[1].split(TABLE_END, 1)[0].strip()
    assert shown == COMPAT_TABLE.read_text().strip(), (
        "README's vLLM table differs from tests/compat/vllm_live/compat_table.md: rerun the differential with "
        "VLLM_LIVE_WRITE_TABLE=1 (bash scripts/test.sh -m slow tests/compat/vllm_live)"
    )


def test_the_table_is_the_records_and_they_hold_no_mismatch(tmp_path) -> None:
    from tests.compat.vllm_live.conftest import RECORDS
    from tests.compat.vllm_live.deliberate import DELIBERATE
    from tests.compat.vllm_live.oracle import CompatRecorder

    recorder = CompatRecorder.from_records(RECORDS)
    assert recorder.comparisons, "no differential records: run the slow suite with VLLM_LIVE_WRITE_TABLE=1"
    rebuilt = tmp_path / "table.md"
    recorder.write(rebuilt, DELIBERATE)
    assert rebuilt.read_text() == COMPAT_TABLE.read_text(), "compat_table.md is not what records/ give"
    assert recorder.counts().get("all.mismatched", 0) == 0
    assert {c.deliberate for c in recorder.comparisons if c.deliberate} <= DELIBERATE.keys()
