"""The sufficiency judge: search state machine (search), prompts and verdicts (prompts), batched rounds (rounds)."""
