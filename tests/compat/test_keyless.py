"""``--allow-keyless-from``: OpenRLHF's and verl's reward clients send no ``Authorization`` header, so a keyed
server may let key-less requests in from listed client networks (refused by default). Loopback only here;
the frameworks' own clients are run against it in ``tests/compat/openrlhf`` and ``tests/compat/verl``."""

from __future__ import annotations

import httpx
import pytest

from rlhf_rewards.server.auth import parse_networks, peer_in
from tests.support.server import InProcessServer

BODY = {"query": ["What is 12 + 7? 19"], "prompts": ["What is 12 + 7?"], "labels": [""]}
SERVE = ("--dtype", "float32", "--device", "cpu", "--api-key", "k3y")


def _post(url: str, key: str | None = None) -> int:
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    return httpx.post(f"{url}/get_reward", json=BODY, headers=headers).status_code


def test_keyless_only_from_listed_networks(qwen3_rm):
    with InProcessServer(qwen3_rm, *SERVE, "--allow-keyless-from", "127.0.0.1/32,10.0.0.0/8") as server:
        assert _post(server.url) == 200
        assert _post(server.url, "wrong") == 401  # a wrong key is refused even from a listed network
        assert _post(server.url, "k3y") == 200
        assert httpx.post(f"{server.url}/classify", json={"input": "hi"}).status_code == 200  # every route
    with InProcessServer(qwen3_rm, *SERVE, "--allow-keyless-from", "10.0.0.0/8") as server:
        assert _post(server.url) == 401  # loopback is not listed
    with InProcessServer(qwen3_rm, *SERVE) as server:
        assert _post(server.url) == 401  # refused by default
        assert _post(server.url, "k3y") == 200


def test_bad_keyless_network_is_refused_before_loading():
    with pytest.raises(ValueError, match="allow-keyless-from"):
        InProcessServer("/nonexistent-model", "--allow-keyless-from", "127.0.0.1/8")


def test_peer_matching():
    nets = parse_networks("127.0.0.1/32, 10.0.0.0/8,::1/128")
    assert peer_in({"client": ("127.0.0.1", 5)}, nets) and peer_in({"client": ("10.2.3.4", 5)}, nets)
    assert peer_in(
        {"client": ("::ffff:10.0.0.1", 5)}, nets
    )  # IPv4-mapped IPv6 peers match their IPv4 network
    assert peer_in({"client": ("::1", 5)}, nets)
    assert not peer_in({"client": ("192.168.0.1", 5)}, nets) and not peer_in({"client": None}, nets)
    assert not peer_in({"client": ("unix-socket", 0)}, nets) and not peer_in({"client": ("127.0.0.1", 5)}, ())
