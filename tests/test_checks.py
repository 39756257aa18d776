"""Up-front validation: every planned stage's settings are checked before the first stage runs."""

from __future__ import annotations

import pytest

from palign_ray.config import JudgeConfig
from palign_ray.judge.rounds import check_judge_config


def test_isotonic_needs_logprob_verdicts() -> None:
    """judge.isotonic fits p(ENOUGH) scores; generate verdicts have none, so every cut would be discarded."""
    with pytest.raises(ValueError, match=r"judge.isotonic=true needs judge.verdict=logprob"):
        check_judge_config(JudgeConfig(isotonic=True, verdict="generate"))
    check_judge_config(JudgeConfig(isotonic=True, verdict="logprob"))
    check_judge_config(JudgeConfig(isotonic=True, verdict="generate", search="fixed_ratio"))  # no judging at all
