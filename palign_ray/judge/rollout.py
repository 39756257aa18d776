"""The rollout verdict (`judge.verdict=rollout`): a prefix is sufficient when the student's own continuations
from it reach the gold answer.

A variant, not the paper's judge: the paper asks the student in words whether a prefix is enough; a
student too small to answer that (SmolLM2-135M, README "Is the judge valid?") can still be asked what
the align stage checks with Eq. 9 anyway: does its continuation from this prefix solve the problem?
Each probe sends `judge.rollout_samples` continuations with the align stage's prompt, sampling and
grader (the same functions); the verdict is ENOUGH when at least `judge.rollout_min_correct` are
correct, and the probe's score is the share correct. The search around it is the usual one (binary by
default). The continuations of the final cut are kept in the truncate row (`rollout_continuations`),
and the align stage reuses them instead of generating again.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from palign_ray import records as R
from palign_ray.config import Config
from palign_ray.engines.base import GenerationResult, SamplingSpec

ROLLOUT_K = "rollout_k"  # the cut (sentences) whose continuations are kept; -1 when none are
ROLLOUT_CONTINUATIONS = "rollout_continuations"  # those continuations (text, grade, tokens)


def check_rollout_config(cfg: Config) -> None:
    """Rollout verdicts continue as the student: the judge must be align.model, and the counts must fit."""
    j = cfg.judge
    if j.verdict != "rollout":
        return
    if j.model != cfg.align.model:
        raise ValueError(
            f"judge.verdict=rollout continues as the student, but judge.model={j.model!r} is not "
            f"align.model={cfg.align.model!r}; set both to the student"
        )
    if not 1 <= j.rollout_min_correct <= j.rollout_samples:
        raise ValueError(
            f"judge.rollout_min_correct={j.rollout_min_correct} must be in [1, judge.rollout_samples="
            f"{j.rollout_samples}]"
        )


class RolloutProber:
    """Prompts, sampling and verdicts of rollout probes (the align stage's, on the judge's engine)."""

    def __init__(self, cfg: Config, tokenizer: Any):
        from palign_ray.align import continuation_sampling

        self.cfg, self.tokenizer = cfg, tokenizer
        self.sampling: SamplingSpec = continuation_sampling(
            dataclasses.replace(cfg.align, num_samples=cfg.judge.rollout_samples)
        )

    def ids(self, question: str, prefix: str) -> list[int]:
        from palign_ray.align import continuation_prompt
        from palign_ray.chat import chat_ids, user_turn

        return chat_ids(self.tokenizer, user_turn(continuation_prompt(question, prefix)))

    def spec(self, num_prompt_tokens: int, max_model_len: int, seed: int) -> SamplingSpec:
        room = max(1, max_model_len - num_prompt_tokens)
        return dataclasses.replace(
            self.sampling, seed=seed, max_tokens=min(self.sampling.max_tokens, room)
        )

    def outcome(
        self, res: GenerationResult, problem_id: str, question: str, answer: str, prefix: str
    ) -> dict[str, Any]:
        """Grade the continuations (blocking: math-verify children) into a probe outcome."""
        from palign_ray.align import SAMPLE_INDEX, filter_continuations

        texts = [c.text for c in res.completions]
        gen: dict[str, Any] = {
            R.GENERATIONS: texts,
            R.FINISH_REASONS: [c.finish_reason for c in res.completions],
            R.NUM_GENERATED_TOKENS: [len(c.token_ids) for c in res.completions],
        }
        row = {R.PROBLEM_ID: problem_id, R.QUESTION: question, R.ANSWER: answer, R.PREFIX: prefix}
        a = self.cfg.align
        accepted, rejected = filter_continuations(row, gen, a.grade_timeout_s, a.grader)
        reasons = {int(q[SAMPLE_INDEX]): str(q[R.REASON]) for q in rejected}
        votes = [i not in reasons for i in range(len(texts))]
        score = sum(votes) / len(votes) if votes else 0.0
        verdict = sum(votes) >= self.cfg.judge.rollout_min_correct
        continuations = [
            {
                "arm": "search",
                "k": -1,  # set by the caller, which knows the probe's k
                "sample_index": i,
                "correct": votes[i],
                "reason": reasons.get(i, "correct"),
                "tokens": gen[R.NUM_GENERATED_TOKENS][i],
                "finish_reason": str(gen[R.FINISH_REASONS][i]),
                "text": texts[i],
            }
            for i in range(len(texts))
        ]
        return {
            "p_enough": None,
            "logprob_enough": None,
            "logprob_not_enough": None,
            "score": score,
            "anchor": False,
            "raw": "",
            "error": "",
            "verdict": verdict,
            "votes": votes,
            "parseable": True,
            "continuations": continuations,
            "accepted": len(accepted),
        }
