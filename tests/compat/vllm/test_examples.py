"""vLLM 0.33's offline pooling examples, run unchanged but for the imports and the model ids.

The example sources are kept verbatim in :mod:`tests.compat.vllm.vllm_examples` (path and GitHub commit of
each). The only rewrites are string replaces: ``from vllm import`` -> ``from rlhf_rewards import``, vLLM's CLI
helpers (``vllm.utils.argparse_utils`` / ``vllm.utils.print_utils``) -> ``rlhf_rewards.entrypoints.cli_args``,
``vllm.lora.request`` -> ``rlhf_rewards``, the hub download helper ``vllm.transformers_utils.repo_utils`` ->
a local stand-in returning a tiny adapter's folder (no network here), and each hub model id -> a tiny local
checkpoint of the same architecture (``max_position_embeddings`` 2048 so the examples' ``max_model_len=1024``
fits). All examples run in one subprocess (one interpreter start), each as ``__main__`` with an empty
command line; stdout is checked, and stderr must hold no "is ignored" warning (the examples only pass
arguments this engine honours).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from rlhf_rewards import LLM
from tests.compat.vllm.vllm_examples import EXAMPLES
from tests.support.checkpoints import build_checkpoint
from tests.support.lora import build_adapter

REPO_ROOT = Path(__file__).resolve().parents[3]

IMPORTS = {
    "from vllm import ": "from rlhf_rewards import ",
    "from vllm.utils.argparse_utils import ": "from rlhf_rewards.entrypoints.cli_args import ",
    "from vllm.utils.print_utils import ": "from rlhf_rewards.entrypoints.cli_args import ",
    "from vllm.lora.request import ": "from rlhf_rewards import ",
    "from vllm.transformers_utils.repo_utils import ": "from hub_stand_in import ",
}

HUB_STAND_IN = '''"""Stand-in for vllm.transformers_utils.repo_utils.hf_api (no network): snapshot_download returns a local folder."""
import json, os


class _Api:
    def snapshot_download(self, repo_id, **kwargs):
        return json.loads(os.environ["TINY_HUB"])[repo_id]


def hf_api():
    return _Api()
'''

DRIVER = """
import json, runpy, sys, warnings
warnings.simplefilter("default")
for name, path in json.loads(sys.argv[1]):
    print(f"=== {name}", flush=True)
    sys.argv = [path]
    runpy.run_path(path, run_name="__main__")
print("=== done", flush=True)
"""


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("example-models")
    long = {"max_position_embeddings": 2048}
    paths = {
        "Skywork/Skywork-Reward-V2-Qwen3-0.6B": build_checkpoint(
            "Qwen3ForSequenceClassification", root / "skywork", num_labels=1, seed=161, **long
        ),
        "internlm/internlm2-1_8b-reward": build_checkpoint(
            "InternLM2ForRewardModel", root / "internlm2", seed=162, **long
        ),
        "jason9693/Qwen2.5-1.5B-apeach": build_checkpoint(
            "Qwen3ForSequenceClassification", root / "apeach", num_labels=2, seed=163
        ),
        "intfloat/e5-small": build_checkpoint("Qwen3Model", root / "e5", seed=164),
        "BAAI/bge-reranker-v2-m3": build_checkpoint(
            "Qwen3ForSequenceClassification", root / "reranker", num_labels=1, seed=165
        ),
    }
    adapter = build_adapter(
        paths["Skywork/Skywork-Reward-V2-Qwen3-0.6B"],
        root / "reward-lora",
        r=8,
        target_modules=["q_proj", "v_proj"],
        task_type="SEQ_CLS",
        modules_to_save=["score"],
    )
    return {k: str(v) for k, v in paths.items()}, {"AmirMohseni/skywork-qwen3-0.6b-reward-lora": str(adapter)}


def rewrite(source: str, model_paths: dict[str, str]) -> str:
    """The example with the import lines and the model ids replaced (nothing else)."""
    for old, new in {**IMPORTS, **{f'"{k}"': json.dumps(v) for k, v in model_paths.items()}}.items():
        source = source.replace(old, new)
    code = re.sub(r"#.*", "", source.replace("vLLM", ""))
    assert "import vllm" not in code and "from vllm" not in code, "an import was not rewritten"
    return source


@pytest.fixture(scope="module")
def run(models, tmp_path_factory):
    model_paths, hub = models
    folder = tmp_path_factory.mktemp("example-scripts")
    (folder / "hub_stand_in.py").write_text(HUB_STAND_IN)
    scripts = []
    for key, source in EXAMPLES.items():
        path = folder / Path(key.split("@")[0]).name
        path.write_text(rewrite(source, model_paths))
        scripts.append((key.split("@")[0], str(path)))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(folder), str(REPO_ROOT)]),
        "TINY_HUB": json.dumps(hub),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, json.dumps(scripts)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    sections = dict(re.findall(r"=== (\S+)\n(.*?)(?==== )", proc.stdout, flags=re.S))
    return sections, proc.stderr, model_paths


def test_every_example_ran_without_ignored_arguments(run):
    sections, stderr, _ = run
    assert sorted(sections) == sorted(k.split("@")[0] for k in EXAMPLES)
    assert "is ignored" not in stderr
    assert "Traceback" not in stderr


def test_sequence_reward_example_prints_the_engines_rewards(run):
    sections, _, paths = run
    out = sections["examples/pooling/reward/sequence_reward_offline.py"]
    printed = [float(x) for x in re.findall(r"Reward: \[(-?[\d.e-]+)\] \(size=1\)", out)]
    llm = LLM(paths["Skywork/Skywork-Reward-V2-Qwen3-0.6B"], device="cpu")
    prompts = [
        "Hello, my name is",
        "The president of the United States is",
        "The capital of France is",
        "The future of AI is",
    ]
    expected = [o.outputs.data.item() for o in llm.encode(prompts, pooling_task="classify")]
    assert printed == pytest.approx(expected, abs=1e-4)  # the subprocess may run on another device
    assert all(0.0 < x < 1.0 for x in printed)  # vLLM's default: the sigmoid


def test_token_reward_example_prints_one_row_per_token(run):
    out = run[0]["examples/pooling/reward/token_reward_offline.py"]
    sizes = [int(x) for x in re.findall(r"\(size=(\d+)\)", out)]
    assert len(sizes) == 4 and all(s >= 2 for s in sizes)


def test_classify_embed_lora_and_score_examples(run):
    sections = run[0]
    assert sections["examples/basic/offline_inference/classify.py"].count("(size=2)") == 4
    embed = sections["examples/basic/offline_inference/embed.py"]
    assert embed.count("(size=64)") == 4
    probs = re.findall(
        r"Class Probabilities: \[(.*)\]",
        sections["examples/pooling/classify/classification_with_lora_offline.py"],
    )
    assert len(probs) == 1 and 0.0 < float(probs[0]) < 1.0
    scores = [
        float(x)
        for x in re.findall(r"Score: (-?[\d.e-]+)", sections["examples/basic/offline_inference/score.py"])
    ]
    assert len(scores) == 2 and all(0.0 < s < 1.0 for s in scores) and scores[0] != scores[1]
