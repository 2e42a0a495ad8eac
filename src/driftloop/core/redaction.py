"""Redaction of personal data in user text before anything is written: card numbers, IBANs,
e-mail addresses and phone numbers by default, plus configured patterns.

A match becomes a placeholder naming its kind (``[CARD]``, ``[IBAN]``, ``[EMAIL]``, ``[PHONE]``,
``[<NAME>]`` for a configured pattern), so a redacted text still reads as a sentence for drift
and for training. Card numbers must pass the Luhn check and IBANs the ISO 13616 mod-97 check, so
an order number or an amount is not taken for one; a phone number is 7 to 15 digits, written
with the separators people use, optionally after a ``+``.

Pure: no I/O. :class:`Redactor` is built once from the settings and called per text; a text
with no digit and no ``@`` costs one scan (the common case).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

DEFAULT_KINDS = ("card", "iban", "email", "phone")

_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
# 13-19 digits, in groups separated by single spaces or dashes (as printed on cards).
_CARD = re.compile(r"(?<![\w])\d(?:[ -]?\d){12,18}(?![\w])")
# Country code, check digits, then 11-30 alphanumerics: in upper-case groups of four separated by
# spaces (as printed), or in one run (any case).
_IBAN = re.compile(
    r"(?<![\w])(?:[A-Z]{2}\d{2}(?: [A-Z0-9]{4}){2,7}(?: [A-Z0-9]{1,3})?|(?i:[a-z]{2}\d{2}[a-z0-9]{11,30}))(?![\w])"
)
_PHONE = re.compile(r"(?<![\w+])(?<!\d[ .\-/])(?:\+|00)?\d(?:[ .\-/()]{0,2}\d){6,14}(?![\w]|[ .\-/]\d)")
_TRIGGER = re.compile(r"[0-9@]")


def luhn_ok(digits: str) -> bool:
    """Whether a string of digits passes the Luhn check (payment card numbers do)."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def iban_ok(candidate: str) -> bool:
    """Whether ``candidate`` (spaces allowed) passes the IBAN mod-97 check."""
    compact = candidate.replace(" ", "").upper()
    if not 15 <= len(compact) <= 34 or not compact[:2].isalpha() or not compact[2:4].isdigit():
        return False
    rearranged = compact[4:] + compact[:4]
    number = "".join(str(int(ch, 36)) for ch in rearranged)
    return int(number) % 97 == 1


def _card(match: re.Match[str]) -> str | None:
    digits = re.sub(r"\D", "", match.group())
    return "[CARD]" if 13 <= len(digits) <= 19 and luhn_ok(digits) else None


def _iban(match: re.Match[str]) -> str | None:
    return "[IBAN]" if iban_ok(match.group()) else None


_DATE = re.compile(r"\d{4}[-./]\d{1,2}[-./]\d{1,2}|\d{1,2}[-./]\d{1,2}[-./]\d{2,4}")


def _phone(match: re.Match[str]) -> str | None:
    digits = re.sub(r"\D", "", match.group())
    if _DATE.fullmatch(match.group()):
        return None  # 2026-12-01, 01.12.2026: a date, not a number to call
    return "[PHONE]" if 7 <= len(digits) <= 15 else None


def _always(placeholder: str) -> Callable[[re.Match[str]], str | None]:
    return lambda _m: placeholder


@dataclass(frozen=True)
class _Rule:
    pattern: re.Pattern[str]
    replace: Callable[[re.Match[str]], str | None]
    needs_trigger: bool  # skipped for texts without a digit or an @


_BUILTIN: dict[str, _Rule] = {
    # Order matters: an e-mail before the digits in it; an IBAN before the card and phone rules.
    "email": _Rule(_EMAIL, _always("[EMAIL]"), True),
    "iban": _Rule(_IBAN, _iban, True),
    "card": _Rule(_CARD, _card, True),
    "phone": _Rule(_PHONE, _phone, True),
}


class Redactor:
    """Replaces what the rules find; ``kinds`` picks built-in rules (in their fixed order),
    ``patterns`` adds named regular expressions (replaced by ``[NAME]``, after the built-ins)."""

    def __init__(self, kinds: Iterable[str] = DEFAULT_KINDS, patterns: Mapping[str, str] | None = None):
        chosen = set(kinds)
        unknown = chosen - set(_BUILTIN)
        if unknown:
            raise ValueError(f"unknown redaction kinds {sorted(unknown)} (known: {sorted(_BUILTIN)})")
        self.rules = [rule for name, rule in _BUILTIN.items() if name in chosen]
        for name, pattern in (patterns or {}).items():
            try:
                compiled = re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"redaction pattern {name!r}: {exc}") from None
            self.rules.append(_Rule(compiled, _always(f"[{name.upper()}]"), False))
        self._any_untriggered = any(not r.needs_trigger for r in self.rules)

    def __call__(self, text: str) -> str:
        """``text`` with every match replaced."""
        if not self.rules:
            return text
        triggered = _TRIGGER.search(text) is not None
        if not triggered and not self._any_untriggered:
            return text
        for rule in self.rules:
            if rule.needs_trigger and not triggered:
                continue
            text = rule.pattern.sub(lambda m, r=rule: r.replace(m) or m.group(), text)  # type: ignore[misc]
        return text

    def found(self, text: str) -> list[str]:
        """The kinds of what :meth:`__call__` would replace in ``text`` (for reports and tests)."""
        out = []
        for rule in self.rules:
            for match in rule.pattern.finditer(text):
                placeholder = rule.replace(match)
                if placeholder:
                    out.append(placeholder.strip("[]").lower())
        return out
