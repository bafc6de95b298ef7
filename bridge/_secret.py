"""A string that never shows itself (keys, tokens, passwords)."""

from __future__ import annotations

__all__ = ["Secret"]


class Secret:
    """A string that never shows itself: ``repr``/``str`` print asterisks.

    Call :meth:`reveal` at the one place the real value is needed (a URL being
    dialled, an HMAC key). ``bool(secret)`` is False for an empty value.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')" if self._value else "Secret('')"

    def __str__(self) -> str:
        return "********" if self._value else ""

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)
