"""Shared fixtures: a tiny random model, the embedded SmolLM2, a loopback Ray, real vLLM engines."""

from __future__ import annotations

import os

import pytest

# Keep Ray on loopback (see README "Ray locally"); set before anything imports ray.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")


@pytest.fixture(scope="session")
def shared_data() -> str:
    path = os.path.abspath(SHARED_DATA)
    if not os.path.isdir(path):
        pytest.fail(f"shared data not found at {path} (tests expect ../shared/data beside the repo)")
    return path


@pytest.fixture(scope="session")
def default_model() -> str:
    from palign_ray.models import default_model_path

    return str(default_model_path())


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, default_model) -> str:
    from palign_ray.models import build_tiny_model

    return str(build_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-llama"))


@pytest.fixture(scope="session")
def tokenizer(default_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(default_model)


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole test session (2.5 s start), torn down at the end."""
    from palign_ray.config import RayConfig
    from palign_ray.ray_env import init_ray

    ray = init_ray(RayConfig(num_cpus=4, num_cpus_per_actor=0.5))
    yield ray
    ray.shutdown()


_ENGINES: dict[str, object] = {}


def _engine(path: str):
    """vLLM engines are cached per model for the session: starting one costs seconds and ~2 GiB."""
    from palign_ray.config import EngineConfig
    from palign_ray.engines.vllm_engine import VLLMEngine

    if path not in _ENGINES:
        _ENGINES[path] = VLLMEngine(path, EngineConfig(max_model_len=2048, max_num_seqs=32))
    return _ENGINES[path]


@pytest.fixture(scope="session")
def tiny_engine(tiny_model):
    return _engine(tiny_model)


@pytest.fixture(scope="session")
def smol_engine(default_model):
    return _engine(default_model)
