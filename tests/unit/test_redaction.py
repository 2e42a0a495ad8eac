"""Redaction of personal data before a text is written."""

from __future__ import annotations

import pytest

from driftloop.core.redaction import Redactor, iban_ok, luhn_ok

R = Redactor()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("my card 4111 1111 1111 1111 was declined", "my card [CARD] was declined"),
        ("card 4111-1111-1111-1111!", "card [CARD]!"),
        ("pay to GB82 WEST 1234 5698 7654 32 please", "pay to [IBAN] please"),
        ("iban DE89370400440532013000", "iban [IBAN]"),
        ("write to jane.doe+bank@example.co.uk now", "write to [EMAIL] now"),
        ("call me on +44 20 7946 0958", "call me on [PHONE]"),
        ("my number is 0151-234 5678.", "my number is [PHONE]."),
        # not personal data: kept as it is
        ("I was charged 12.50 twice on 03/04", "I was charged 12.50 twice on 03/04"),
        ("order 4111 1111 1111 1112 is late", "order 4111 1111 1111 1112 is late"),  # fails Luhn; 16 digits
        ("where is my card?", "where is my card?"),
        ("the transfer of 2026-12-01 and of 01.12.2026", "the transfer of 2026-12-01 and of 01.12.2026"),
        ("top up 100 EUR", "top up 100 EUR"),
        ("GB00 WEST 1234 5698 7654 32", "GB00 WEST [PHONE]"),  # fails mod-97: not an IBAN
    ],
)
def test_defaults(text, expected):
    assert R(text) == expected


def test_checks():
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    assert iban_ok("GB82 WEST 1234 5698 7654 32") and not iban_ok("GB83 WEST 1234 5698 7654 32")


def test_configured_kinds_and_patterns():
    only_email = Redactor(kinds=["email"], patterns={"customer_id": r"\bCUST-\d{6}\b"})
    text = "CUST-123456 at a@b.io, card 4111 1111 1111 1111"
    assert only_email(text) == "[CUSTOMER_ID] at [EMAIL], card 4111 1111 1111 1111"
    assert only_email.found(text) == ["email", "customer_id"]
    assert Redactor(kinds=[])("a@b.io") == "a@b.io"
    with pytest.raises(ValueError, match="unknown redaction kinds"):
        Redactor(kinds=["ssn"])
    with pytest.raises(ValueError, match="redaction pattern 'bad'"):
        Redactor(patterns={"bad": "("})
