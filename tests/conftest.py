"""Shared fixtures: a tiny random model, the embedded SmolLM2, a loopback Ray, real vLLM engines."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Keep Ray on loopback (see README "Ray locally"); set before anything imports ray.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Files that are not in the repo (benchmarks, the authors' released outputs, the KubeRay CRDs, the
# paper's text) come through ONE setting, so a public clone and CI differ only in it:
#   PALIGN_DATA_DIR  the shared data folder; default ../shared/data beside the repo;
#   siblings as in shared/: $PALIGN_DATA_DIR/../kuberay-crds/, $PALIGN_DATA_DIR/../docs/PAPER.md.
# Missing: the tests that need them skip with one reason each (one summary line per reason);
# PALIGN_REQUIRE_DATA=1 (set by .ci/run) turns the skip into a failure: CI cannot pass without them.
REPO = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("PALIGN_DATA_DIR") or REPO.parent / "shared" / "data").resolve()
CRDS_DIR = DATA_DIR.parent / "kuberay-crds"
PAPER_MD = DATA_DIR.parent / "docs" / "PAPER.md"
DATA_FIXTURES = ("shared_data", "kuberay_crds", "paper_md")
_MISSING_REASONS: set[str] = set()


def _external(path: Path, what: str) -> Path:
    if path.exists():
        return path
    reason = f"needs {what}, not found at {path}: set PALIGN_DATA_DIR (see README)"
    if os.environ.get("PALIGN_REQUIRE_DATA") == "1":
        pytest.fail(f"PALIGN_REQUIRE_DATA=1 but this test {reason}", pytrace=False)
    _MISSING_REASONS.add(reason)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def shared_data() -> str:
    return str(_external(DATA_DIR, "the shared data"))


@pytest.fixture(scope="session")
def kuberay_crds() -> Path:
    return _external(CRDS_DIR, "the KubeRay CRDs")


@pytest.fixture(scope="session")
def paper_md() -> Path:
    return _external(PAPER_MD, "the paper's text")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> pytest.TestReport:
    rep: pytest.TestReport = yield
    # pytest reports a fixture's skip at each test's own line, so `-ra` would print one line per
    # test; one location per reason folds them into "SKIPPED [N] tests/conftest.py: needs ...".
    if rep.skipped and isinstance(rep.longrepr, tuple):
        reason = str(rep.longrepr[2]).removeprefix("Skipped: ")
        if reason in _MISSING_REASONS:
            rep.longrepr = (__file__, None, rep.longrepr[2])
    return rep


def pytest_report_header(config: pytest.Config) -> str:
    found = "found" if DATA_DIR.is_dir() else "MISSING: data tests skip"
    return f"PALIGN_DATA_DIR: {DATA_DIR} ({found})"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Marked from the fixtures they use (no list to keep in sync): `-m data` / `-m "not data"`.
    for item in items:
        if any(name in getattr(item, "fixturenames", ()) for name in DATA_FIXTURES):
            item.add_marker(pytest.mark.data)


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
