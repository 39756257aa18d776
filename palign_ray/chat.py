"""Chat rendering to token ids through a model's own template (pure apart from the tokenizer object)."""

from __future__ import annotations

from typing import Any


def render_chat(
    tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool = True
) -> str:
    """The template's text for `messages`, with thinking disabled where the template supports it."""
    kwargs: dict[str, Any] = {"tokenize": False, "add_generation_prompt": add_generation_prompt}
    # Qwen3-style templates read `enable_thinking`; others ignore unknown kwargs.
    kwargs["enable_thinking"] = False
    return tokenizer.apply_chat_template(messages, **kwargs)


def chat_ids(
    tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool = True
) -> list[int]:
    """Token ids of a rendered chat; special tokens come from the template text itself."""
    text = render_chat(tokenizer, messages, add_generation_prompt)
    return list(tokenizer.encode(text, add_special_tokens=False))


def user_turn(content: str, system: str = "") -> list[dict[str, str]]:
    msgs = [{"role": "system", "content": system}] if system else []
    return msgs + [{"role": "user", "content": content}]
