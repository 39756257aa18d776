"""Evaluation: the paper's prompt and sampling on the student, per-sample grading, pass@k with intervals.

- `score`: grading generations against gold answers and the metrics (pure apart from math-verify children);
- `report`: metrics.json, report.md, plots and the cross-run table;
- `files`: grading a file of existing generations (`palign grade`);
- `stage`: the streaming evaluation (`palign eval`, the base_eval and eval stages): parts of problems
  generated, graded and committed on the workers; a killed evaluation resumes with the missing problems.
"""
