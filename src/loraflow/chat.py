"""Chat turns (OpenAI's ``[{role, content}, ...]``): the one check of their shape, for datasets
and for requests. Only the standard library is imported here."""

from __future__ import annotations

from typing import Any, Literal

from loraflow.errors import InvalidRequestError

ROLES = ("system", "user", "assistant")


def text_problem(value: str, field: str) -> str | None:
    """What makes ``value`` unusable as text (a lone surrogate, which JSON's ``\\ud800``
    escapes can carry and no tokenizer takes), naming where; None if it is fine."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        return (
            f"{field}: character {exc.start + 1} is a lone surrogate "
            f"({value[exc.start]!r}); send valid Unicode text"
        )
    return None


def chat_problem(
    messages: Any,
    field: str = "messages",
    *,
    ends_with: Literal["user", "assistant"],
    max_chars: int | None = None,
) -> str | None:
    """What is wrong with chat ``messages``, naming the turn (``messages[2].role: …``), or None.

    A dataset row ends with the assistant's answer to learn from (``ends_with="assistant"``,
    whose text must not be blank); a request ends with the user's turn. A system turn may
    only come first; ``max_chars`` limits each turn's text.
    """
    if not isinstance(messages, list) or not messages:
        return f"{field}: send a non-empty list of {{role, content}} turns"
    learning = ends_with == "assistant"
    for i, turn in enumerate(messages):
        where = f"{field}[{i}]"
        if not isinstance(turn, dict) or set(turn) - {"role", "content", "name"}:
            return f"{where}: a turn is an object with role and content"
        if turn.get("role") not in ROLES:
            return f"{where}.role: must be one of {', '.join(ROLES)} (got {turn.get('role')!r})"
        content = turn.get("content")
        if not isinstance(content, str) or (learning and not content.strip()):
            return f"{where}.content: must be {'text' if learning else 'a string'}"
        if problem := text_problem(content, f"{where}.content"):
            return problem
        if max_chars is not None and len(content) > max_chars:
            return f"{where}.content: longer than {max_chars:,} characters"
        if turn["role"] == "system" and i > 0:
            return f"{where}.role: a system message can only come first"
    last = f"{field}[{len(messages) - 1}].role"
    if messages[-1]["role"] != ends_with:
        owner = "the assistant's answer to learn from" if learning else "the user's"
        return f"{last}: the last turn must be {owner}"
    if not any(t["role"] == "user" for t in messages):
        return f"{field}: the conversation needs at least one user turn"
    return None


def turns(messages: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Checked chat ``messages`` as bare ``{role, content}`` turns (``name`` dropped)."""
    return [{"role": t["role"], "content": t["content"]} for t in messages]


def prompt_or_chat(
    messages: list[dict[str, str]],
) -> tuple[str | None, list[dict[str, str]] | None]:
    """Turns as a completion's input: one lone user turn as a prompt (chat models template a
    prompt as exactly that turn, and a model without a chat template takes only prompts),
    anything more as chat messages."""
    if len(messages) == 1 and messages[0].get("role") == "user":
        return messages[0]["content"], None
    return None, messages


def from_parts(
    data: str,
    context: str | None = None,
    prompt: str | None = None,
    history: list[dict[str, Any]] | None = None,
) -> tuple[str | None, list[dict[str, str]] | None]:
    """aiXplain's inputs as a completion's (``prompt_or_chat``): ``context`` is the system turn,
    ``history`` the turns before, ``prompt`` goes before ``data`` in the user's turn."""
    if not isinstance(data, str):
        raise InvalidRequestError(f"data: must be text (got {type(data).__name__})")
    text = f"{prompt}\n{data}" if prompt else data
    turns: list[dict[str, str]] = [{"role": "system", "content": context}] if context else []
    for i, turn in enumerate(history or []):
        if not isinstance(turn, dict) or not isinstance(turn.get("content"), str):
            raise InvalidRequestError(
                f"history[{i}]: must be {{'role': ..., 'content': '<text>'}} (got {turn!r:.80})"
            )
        turns.append({"role": str(turn.get("role")), "content": turn["content"]})
    return prompt_or_chat([*turns, {"role": "user", "content": text}])
