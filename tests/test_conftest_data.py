"""conftest's external-data rule: PALIGN_DATA_DIR found → tests run; missing → one folded skip
reason; PALIGN_REQUIRE_DATA=1 → failure (what .ci/run relies on)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

CONFTEST = Path(__file__).with_name("conftest.py")
INNER_TESTS = """
def test_data(shared_data):
    assert open(shared_data + "/x.txt").read() == "x"

def test_data_again(shared_data):
    assert open(shared_data + "/x.txt").read() == "x"

def test_crds(kuberay_crds):
    assert (kuberay_crds / "c.yaml").is_file()

def test_paper(paper_md):
    assert paper_md.read_text() == "p"

def test_plain():
    pass
"""


def _inner_pytest(
    tmp_path: Path, data_dir: Path, *args: str, require: bool = False
) -> subprocess.CompletedProcess[str]:
    proj = tmp_path / "proj"
    (proj / "tests").mkdir(parents=True, exist_ok=True)
    shutil.copy(CONFTEST, proj / "tests" / "conftest.py")
    (proj / "tests" / "test_inner.py").write_text(INNER_TESTS)
    (proj / "pytest.ini").write_text(
        "[pytest]\naddopts = --strict-markers -ra -p no:cacheprovider\nmarkers = data: x\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PALIGN_")}
    env["PALIGN_DATA_DIR"] = str(data_dir)
    if require:
        env["PALIGN_REQUIRE_DATA"] = "1"
    cmd = [sys.executable, "-m", "pytest", *args, "tests"]
    return subprocess.run(cmd, cwd=proj, env=env, capture_output=True, text=True, timeout=120)


def _lay_out_shared(root: Path) -> Path:
    (root / "data").mkdir(parents=True)
    (root / "data" / "x.txt").write_text("x")
    (root / "kuberay-crds").mkdir()
    (root / "kuberay-crds" / "c.yaml").write_text("kind: CustomResourceDefinition\n")
    (root / "docs").mkdir()
    (root / "docs" / "PAPER.md").write_text("p")
    return root / "data"


def test_present_data_runs_every_test(tmp_path: Path) -> None:
    r = _inner_pytest(tmp_path, _lay_out_shared(tmp_path / "shared"), require=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "5 passed in" in r.stdout and "skipped" not in r.stdout
    # The `data` marker comes from the fixtures a test uses.
    r = _inner_pytest(tmp_path, tmp_path / "shared" / "data", "-m", "data")
    assert "4 passed, 1 deselected in" in r.stdout, r.stdout


def test_missing_data_skips_with_one_line_per_reason(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "data"
    r = _inner_pytest(tmp_path, missing)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 passed, 4 skipped in" in r.stdout
    skipped = [line for line in r.stdout.splitlines() if line.startswith("SKIPPED")]
    assert len(skipped) == 3, skipped  # the two shared-data tests fold into one line
    assert any(s.startswith("SKIPPED [2] ") and "the shared data" in s for s in skipped), skipped
    assert all("tests/conftest.py: needs " in s and "set PALIGN_DATA_DIR" in s for s in skipped), (
        skipped
    )
    assert any(str(missing) in s for s in skipped)
    assert any(str(missing.parent / "kuberay-crds") in s for s in skipped)


def test_missing_data_fails_when_required(tmp_path: Path) -> None:
    r = _inner_pytest(tmp_path, tmp_path / "nowhere" / "data", require=True)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "1 passed, 4 errors in" in r.stdout
    assert "PALIGN_REQUIRE_DATA=1 but this test needs the shared data" in r.stdout
