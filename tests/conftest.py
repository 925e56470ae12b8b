from __future__ import annotations

# ---------------------------------------------------------------------------------------------
# Hermetic environment, set before anything else is imported: no test reads or writes the user's
# home. A local `ray.init()` would otherwise create ~/.ray/auth_token (Ray 2.60 turns token
# authentication on by default), matplotlib and Hugging Face write caches under ~/.cache, and an
# MLFLOW_TRACKING_URI or RAY_ADDRESS from the user's shell would send test runs to their servers.
# Every Ray process the tests start (the shared local instance, `ray start --head`, the job
# client) reads the session's own token through RAY_AUTH_TOKEN_PATH.
# ---------------------------------------------------------------------------------------------
import atexit
import os
import secrets
import shutil
import tempfile
from pathlib import Path

TEST_HOME = Path(tempfile.mkdtemp(prefix="adactrl-test-home-"))
atexit.register(shutil.rmtree, TEST_HOME, ignore_errors=True)
RAY_TOKEN_PATH = TEST_HOME / "ray_auth_token"
RAY_TOKEN_PATH.write_text(secrets.token_hex(32))
for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "RAY_ADDRESS", "RAY_AUTH_TOKEN"):
    os.environ.pop(name, None)
os.environ.update(
    HOME=str(TEST_HOME),
    XDG_CACHE_HOME=str(TEST_HOME / ".cache"),
    XDG_CONFIG_HOME=str(TEST_HOME / ".config"),
    MPLCONFIGDIR=str(TEST_HOME / ".config" / "matplotlib"),
    HF_HOME=str(TEST_HOME / ".cache" / "huggingface"),
    HF_HUB_OFFLINE="1",
    RAY_AUTH_MODE="token",
    RAY_AUTH_TOKEN_PATH=str(RAY_TOKEN_PATH),
)
# --------------------------------------------------------------------------- end environment

# ---------------------------------------------------------------------------------------------
# Model fixtures: a tiny random EmbeddedVLM for mechanics, the shipped model where weights matter.
# ---------------------------------------------------------------------------------------------
import pytest
import torch
from torch import nn

from adactrl.data import VOCABULARY, load_vqa_dataset
from adactrl.models.embedded import EmbeddedConfig, EmbeddedVLM
from adactrl.models.tokenizer import WordTokenizer, build_tokenizer

# The test machine's cores are shared: with more than one intra-op thread, torch's thread pool
# stalls for seconds whenever another process holds a core.
torch.set_num_threads(1)

TINY_IMPORTANCE = (8.0, 1.0, 5.0, 2.0, 7.0, 3.0, 6.0, 4.0)
"""Not monotone in depth, so the blocks a plan keeps are not just the first ones."""


def build_tiny_model(seed: int = 0, stem_self_only: bool = False) -> EmbeddedVLM:
    """8 blocks, 8 experts, top-4: KnobSpace insertion 1..5, top-k 2..4, blocks 6..8."""
    tokenizer = WordTokenizer(build_tokenizer(VOCABULARY))
    config = EmbeddedConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_layers=8,
        num_experts=8,
        top_k=4,
        expert_size=16,
        num_heads=2,
        vision_hidden=32,
        vision_layers=1,
        vision_heads=2,
        stem_self_only=stem_self_only,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = EmbeddedVLM(config, tokenizer, TINY_IMPORTANCE)
        # Unit-scale weights: at the default 0.02 init the router and the logits are nearly flat,
        # so every token routes alike and float-tolerance comparisons would prove nothing.
        for param in model.parameters():
            if param.dim() >= 2:
                nn.init.normal_(param, std=param.shape[-1] ** -0.5)
    with torch.no_grad():
        # EOS gets logit 0 against 52 random logits: it never wins, so every request decodes
        # max_new_tokens tokens and the decode path is always exercised.
        model.lm.lm_head.weight[config.eos_token_id] = 0.0
    return model.eval().requires_grad_(False)


@pytest.fixture(scope="session")
def tiny_model() -> EmbeddedVLM:
    return build_tiny_model()


@pytest.fixture(scope="session")
def stem_model() -> EmbeddedVLM:
    """The tiny model with a per-token block 0 (`EmbeddedConfig.stem_self_only`)."""
    return build_tiny_model(stem_self_only=True)


@pytest.fixture(scope="session")
def shipped_model() -> EmbeddedVLM:
    return EmbeddedVLM.load()


@pytest.fixture(scope="session")
def synthetic_rows() -> list[dict]:
    """Six test questions, one per family (the generator cycles through the families)."""
    return list(load_vqa_dataset("synthetic", "test", 6, seed=0))


# --------------------------------------------------------------------------- end model fixtures


# ---------------------------------------------------------------------------------------------
# Ray: one local instance for the whole session (starting one takes seconds here).
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray instance with 2 CPUs, shared by every Ray test and shut down at the end."""
    ray = pytest.importorskip("ray")
    from adactrl.orchestration.ray_backend import start_ray

    started = not ray.is_initialized()
    if started:
        start_ray(num_cpus=2)  # as `adactrl train` starts it: workers at normal priority, retried
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """The tiny model saved as an embedded-model directory, for code that loads a model by path
    (rollout workers, `adactrl train --model_path`)."""
    path = tmp_path_factory.mktemp("tiny_model")
    build_tiny_model().save(path, dtype=torch.float32)
    return str(path)


# --------------------------------------------------------------------------- end Ray
