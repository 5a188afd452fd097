"""The cheap limits every POST route checks before tokenizing: counts and characters."""

from __future__ import annotations

from .errors import TooLarge
from .settings import Settings


def check_inputs(
    texts: list[str], settings: Settings, what: str = "inputs", count: int | None = None
) -> None:
    """max_inputs against `count` inputs (default: one per text; a pair is one input of two
    texts), max_input_chars against every text."""
    count = len(texts) if count is None else count
    if count > settings.max_inputs:
        raise TooLarge(f"{count} {what} exceed max_inputs {settings.max_inputs}")
    check_chars(texts, settings, what if count == len(texts) else "texts")  # pairs: the text


def check_chars(texts: list[str], settings: Settings, what: str) -> None:
    """max_input_chars against every text, named `what[index]`."""
    for index, text in enumerate(texts):
        if len(text) > settings.max_input_chars:
            raise TooLarge(
                f"{what}[{index}] has {len(text)} characters, over max_input_chars "
                f"{settings.max_input_chars}"
            )
