"""vLLM's serve flags: ``--chat-template`` (a file or the template itself) and ``--served-model-name`` aliases."""

from __future__ import annotations

import pytest
import requests

from rlhf_rewards.entrypoints.chat_template import load_chat_template
from tests.support.server import InProcessServer

TEMPLATE = "{% for m in messages %}{{ m['role'] }}> {{ m['content'] }}\n{% endfor %}"


def test_chat_template_is_a_file_or_the_template(tmp_path):
    path = tmp_path / "t.jinja"
    path.write_text(TEMPLATE)
    assert load_chat_template(str(path)) == TEMPLATE
    assert load_chat_template(TEMPLATE) == TEMPLATE
    assert load_chat_template(None) is None
    with pytest.raises(ValueError, match="looks like a file path"):
        load_chat_template(str(tmp_path / "missing.jinja"))


def test_served_model_name_aliases_and_the_chat_template_flag(qwen3_rm, tmp_path):
    path = tmp_path / "t.jinja"
    path.write_text(TEMPLATE)
    with InProcessServer(
        qwen3_rm, "--served-model-name", "first", "second", "--chat-template", str(path)
    ) as proc:
        tok = proc.served.llm.get_tokenizer()
        models = requests.get(proc.url + "/v1/models", timeout=10).json()["data"]
        assert [m["id"] for m in models] == ["first", "second"]
        assert all(
            m["root"] == str(qwen3_rm) and m["permission"][0]["object"] == "model_permission" for m in models
        )
        messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
        r = requests.post(
            proc.url + "/tokenize",
            json={"model": "second", "messages": messages, "add_generation_prompt": False},
            timeout=30,
        )
        want = tok(
            tok.apply_chat_template(messages, chat_template=TEMPLATE, tokenize=False),
            add_special_tokens=False,
        )["input_ids"]
        assert r.json()["tokens"] == want  # the flag's template, not the tokenizer's ChatML one
        r = requests.post(proc.url + "/classify", json={"model": "second", "input": "hi"}, timeout=30)
        assert r.status_code == 200 and r.json()["model"] == "first"  # the first name is the one reported
        r = requests.post(proc.url + "/classify", json={"model": "third", "input": "hi"}, timeout=30)
        assert r.status_code == 404 and "first" in r.json()["error"]["message"]


def test_a_vllm_serve_command_line_parses_and_ignored_engine_flags_warn(caplog):
    from rlhf_rewards.cli.main import build_parser
    from rlhf_rewards.cli.vllm_flags import check_vllm_flags

    argv = [
        "serve",
        "some/model",
        "--runner",
        "pooling",
        "--gpu-memory-utilization",
        "0.8",
        "--enable-prefix-caching",
        "--max-num-seqs",
        "4",
        "--enable-lora",
        "--seed",
        "0",
        "--disable-uvicorn-access-log",
        "--uvicorn-log-level",
        "warning",
        "--served-model-name",
        "a",
        "b",
        "--port",
        "1234",
    ]
    args = build_parser().parse_args(argv)
    assert (args.model, args.port, args.served_model_name) == ("some/model", 1234, ["a", "b"])
    assert args.disable_access_log and args.log_level == "warning"
    with caplog.at_level("INFO", logger="rlhf_rewards.server"):
        given = check_vllm_flags(args)
    # --enable-prefix-caching is honoured now (the cross-call prefix cache), so it is not in the ignored list.
    assert given == ["enable_lora", "gpu_memory_utilization", "max_num_seqs", "seed"]
    assert args.enable_prefix_caching is True
    text = caplog.text
    assert "--gpu-memory-utilization is ignored" in text and "--max-num-seqs is ignored" in text
    with pytest.raises(ValueError, match="pooling server"):
        check_vllm_flags(build_parser().parse_args(["serve", "m", "--runner", "generate"]))
    with pytest.raises(SystemExit):  # a flag vLLM does not have either is still argparse's error
        build_parser().parse_args(["serve", "m", "--no-such-vllm-flag", "1"])
