"""``rlhf-rewards score``: formats, ids and line numbers, errors, streaming, and the same scores as
``RewardFunction``."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from rlhf_rewards.cli import score as score_cli
from rlhf_rewards.cli.main import main as cli_main
from rlhf_rewards.reward import RewardFunction

ROWS = [
    {"id": "a", "prompt": "What is 2 + 3?", "completion": " 5"},
    {"prompt": "Hello, my name is", "completion": " Ada"},
    {
        "id": 7,
        "prompt": [{"role": "user", "content": "What is 2 + 3?"}],
        "completion": [{"role": "assistant", "content": "5"}],
    },
    {
        "id": "m",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
        ],
    },
    {"prompt": [{"role": "user", "content": "Hi"}], "completion": "Hello!"},
]


def write_jsonl(path: Path, rows: list, extra_lines: dict[int, str] | None = None) -> Path:
    lines = [json.dumps(r) for r in rows]
    for at, text in sorted((extra_lines or {}).items()):
        lines.insert(at, text)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def reward_fn(qwen3_rm):
    return RewardFunction(str(qwen3_rm), llm_kwargs={"device": "cpu"})


def test_scores_every_format_like_reward_function(tmp_path, qwen3_rm, reward_fn):
    src = write_jsonl(tmp_path / "in.jsonl", ROWS)
    out = tmp_path / "out.jsonl"
    assert (
        cli_main(
            [
                "score",
                str(src),
                "--model",
                str(qwen3_rm),
                "--device",
                "cpu",
                "-o",
                str(out),
                "--batch-size",
                "2",
                "--no-progress",
            ]
        )
        == 0
    )
    results = read_jsonl(out)
    assert [r["line"] for r in results] == [1, 2, 3, 4, 5]
    assert [r.get("id") for r in results] == ["a", None, 7, "m", None]
    expected = reward_fn(["What is 2 + 3?", "Hello, my name is"], [" 5", " Ada"])
    expected += reward_fn(
        [
            [{"role": "user", "content": "What is 2 + 3?"}],
            ROWS[3]["messages"][:2],
            [{"role": "user", "content": "Hi"}],
        ],
        [
            [{"role": "assistant", "content": "5"}],
            ROWS[3]["messages"][2:],
            [{"role": "assistant", "content": "Hello!"}],
        ],
    )
    assert [r["score"] for r in results] == pytest.approx(expected, abs=1e-5)
    assert all("error" not in r for r in results)


def test_bad_line_stops_with_its_line_number(tmp_path, qwen3_rm, capsys):
    src = write_jsonl(tmp_path / "in.jsonl", ROWS[:2], extra_lines={1: "{not json"})
    code = cli_main(
        [
            "score",
            str(src),
            "--model",
            str(qwen3_rm),
            "--device",
            "cpu",
            "-o",
            str(tmp_path / "o.jsonl"),
            "--no-progress",
        ]
    )
    assert code == 1
    assert "line 2: not valid JSON" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ('["a list"]', "expected a JSON object"),
        ('{"prompt": "x"}', "missing keys"),
        ('{"prompt": "x", "completion": 3}', "'completion' must be a string"),
        ('{"messages": []}', "messages must be a non-empty list"),
        ('{"messages": [{"content": "no role"}]}', "messages[0] is not a message"),
    ],
)
def test_parse_errors_name_the_line(bad, message):
    with pytest.raises(score_cli.ScoreInputError) as info:
        score_cli.parse_record(bad, 12)
    assert str(info.value).startswith("line 12: ")
    assert message in str(info.value)


def test_skip_errors_writes_error_fields_and_goes_on(tmp_path, qwen3_rm, reward_fn):
    src = write_jsonl(
        tmp_path / "in.jsonl", ROWS[:2], extra_lines={0: '{"prompt": 1, "completion": 2}', 2: ""}
    )
    out = tmp_path / "out.jsonl"
    assert (
        cli_main(
            [
                "score",
                str(src),
                "--model",
                str(qwen3_rm),
                "--device",
                "cpu",
                "-o",
                str(out),
                "--skip-errors",
                "--no-progress",
            ]
        )
        == 0
    )
    results = read_jsonl(out)
    assert [r["line"] for r in results] == [1, 2, 4]  # the blank line 3 is skipped
    assert results[0]["score"] is None and "prompt must be a non-empty list" in results[0]["error"]
    assert [r["score"] for r in results[1:]] == pytest.approx(
        reward_fn(["What is 2 + 3?", "Hello, my name is"], [" 5", " Ada"]), abs=1e-5
    )


def test_reward_function_input_error_is_traced_to_its_line(reward_fn):
    # A conversation whose completion is not an assistant turn the template can render fails in the model;
    # the batch is retried line by line to name the bad line.
    class Picky:
        kind = "outcome"

        def __call__(self, prompts, completions, **_):
            if any(c == " boom" for c in completions):
                raise ValueError("cannot score ' boom'")
            return [float(len(c)) for c in completions]

    lines = [json.dumps({"prompt": "p", "completion": c}) for c in (" a", " bb", " boom", " c")]
    out = io.StringIO()
    with pytest.raises(score_cli.ScoreInputError, match="line 3: cannot score"):
        score_cli.score_stream(Picky(), lines, out, batch_size=4)
    out = io.StringIO()
    counts = score_cli.score_stream(Picky(), lines, out, batch_size=4, skip_errors=True)
    results = [json.loads(x) for x in out.getvalue().splitlines()]
    assert [r["score"] for r in results] == [2.0, 3.0, None, 2.0]
    assert counts == {"lines": 4, "scored": 3, "errors": 1}


def test_streams_one_batch_at_a_time():
    """Output for a batch is written before the next batch is read: memory holds one batch."""
    consumed = 0
    seen_at_write: list[int] = []

    def lines():
        nonlocal consumed
        for i in range(50):
            consumed += 1
            yield json.dumps({"prompt": "p", "completion": f" {i}"})

    class Out(io.StringIO):
        def write(self, s):
            seen_at_write.append(consumed)
            return super().write(s)

    class Echo:
        kind = "outcome"

        def __call__(self, prompts, completions, **_):
            return [float(c) for c in completions]

    out = Out()
    score_cli.score_stream(Echo(), lines(), out, batch_size=8)
    assert len(seen_at_write) == 50
    # The k-th output line is written once at most one batch beyond it has been read.
    assert all(seen <= (k // 8 + 1) * 8 for k, seen in enumerate(seen_at_write))
    assert [json.loads(x)["score"] for x in out.getvalue().splitlines()] == list(range(50))


def test_count_lines(tmp_path):
    p = tmp_path / "f.jsonl"
    p.write_text("a\nb\nc", encoding="utf-8")
    assert score_cli.count_lines(str(p)) == 3
    p.write_text("a\nb\n", encoding="utf-8")
    assert score_cli.count_lines(str(p)) == 2
    assert score_cli.count_lines("-") is None


def test_console_script_stdin_to_stdout_with_progress_on_stderr(qwen3_rm, reward_fn):
    data = "\n".join(json.dumps(r) for r in ROWS[:2]) + "\n"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "rlhf_rewards.cli.main",
            "score",
            "-",
            "--model",
            str(qwen3_rm),
            "--device",
            "cpu",
        ],
        input=data,
        capture_output=True,
        text=True,
        timeout=300,
        env={"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PATH": "", "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    results = [json.loads(x) for x in proc.stdout.splitlines()]
    assert [r["score"] for r in results] == pytest.approx(
        reward_fn(["What is 2 + 3?", "Hello, my name is"], [" 5", " Ada"]), abs=1e-5
    )
    assert "scoring" in proc.stderr and "scored 2 of 2 line(s)" in proc.stderr


def test_default_model_is_the_shipped_outcome_rm(tmp_path):
    from rlhf_rewards.assets import default_model_path

    src = write_jsonl(
        tmp_path / "in.jsonl",
        [
            {"prompt": "What is 8 + 5?", "completion": " 13"},
            {"prompt": "What is 8 + 5?", "completion": " 14"},
        ],
    )
    out = tmp_path / "out.jsonl"
    assert cli_main(["score", str(src), "-o", str(out), "--device", "cpu", "--no-progress"]) == 0
    scores = [r["score"] for r in read_jsonl(out)]
    expected = RewardFunction(default_model_path("outcome"), llm_kwargs={"device": "cpu"})(
        ["What is 8 + 5?"] * 2, [" 13", " 14"]
    )
    assert scores == pytest.approx(expected, abs=1e-5)


def test_default_process_model_writes_step_scores(tmp_path):
    src = write_jsonl(
        tmp_path / "in.jsonl",
        [
            {"prompt": "Work out 3 + 4 and 7 - 5.", "completion": "3 + 4 = 7\n\n7 - 5 = 3"},
        ],
    )
    out = tmp_path / "out.jsonl"
    assert (
        cli_main(
            ["score", str(src), "--default", "process", "-o", str(out), "--device", "cpu", "--no-progress"]
        )
        == 0
    )
    (result,) = read_jsonl(out)
    assert len(result["steps"]) == 2
    assert result["score"] == pytest.approx(min(result["steps"]))


def test_remote_server(tmp_path, qwen3_rm, reward_fn):
    from tests.support.server import ServerProcess

    src = write_jsonl(tmp_path / "in.jsonl", ROWS)
    out = tmp_path / "out.jsonl"
    with ServerProcess(qwen3_rm) as server:
        assert cli_main(["score", str(src), "--url", server.url, "-o", str(out), "--no-progress"]) == 0
    local = tmp_path / "local.jsonl"
    assert (
        cli_main(
            [
                "score",
                str(src),
                "--model",
                str(qwen3_rm),
                "--device",
                "cpu",
                "-o",
                str(local),
                "--no-progress",
            ]
        )
        == 0
    )
    assert [r["score"] for r in read_jsonl(out)] == pytest.approx(
        [r["score"] for r in read_jsonl(local)], abs=1e-4
    )
