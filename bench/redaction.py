"""What redaction adds to a prediction-log write: microseconds per line, with and without
``privacy.redact``, on BANKING77's texts (about one in ten has a digit) and on texts that all hold
a card number, an e-mail address or a phone number.

    .venv/bin/python bench/redaction.py [--lines 20000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from driftloop.adapters.predlog import PredictionLog
from driftloop.core.redaction import Redactor
from driftloop.core.types import Prediction
from driftloop.data.dataset import read_labelled

ROOT = Path(__file__).resolve().parents[1]


def per_line_us(texts: list[str], redact: Redactor | None, repeat: int) -> float:
    """The best of ``repeat`` runs: one write per text, as serving writes one request's line."""
    answer = Prediction("card_arrival", 0.91)
    best = []
    for _ in range(repeat):
        with tempfile.TemporaryDirectory() as folder, PredictionLog(Path(folder), redact=redact) as log:
            start = time.perf_counter()
            for i, text in enumerate(texts):
                log.write(f"r{i}", text, answer, "3", 1.234, 12)
            best.append((time.perf_counter() - start) / len(texts) * 1e6)
    return min(best)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    bank = read_labelled(ROOT / "data/raw/banking77/train.csv", "text", "category")["text"].tolist()
    bank = (bank * (args.lines // len(bank) + 1))[: args.lines]
    pii = [
        f"my card 4111 1111 1111 {1111 + i % 7:04d} was charged twice, "
        f"mail me at ada{i}@example.com or +44 20 7946 {i % 10000:04d}"
        for i in range(args.lines)
    ]
    redactor = Redactor()
    digits = sum(any(c.isdigit() or c == "@" for c in t) for t in bank) / len(bank)
    print(f"BANKING77 texts: {len(bank)} lines, {digits:.1%} with a digit or @")
    rows = []
    for name, texts in (("banking77", bank), ("with PII", pii)):
        off = per_line_us(texts, None, args.repeat)
        on = per_line_us(texts, redactor, args.repeat)
        pure = (
            min(
                (lambda s: (sum(1 for _ in map(redactor, texts)), time.perf_counter() - s))(time.perf_counter())[1]
                for _ in range(args.repeat)
            )
            / len(texts)
            * 1e6
        )
        rows.append((name, off, on, pure))
    print(f"{'texts':<10} {'write us/line':>14} {'+redact us/line':>16} {'redact alone us':>16}")
    for name, off, on, pure in rows:
        print(f"{name:<10} {off:>14.2f} {on:>16.2f} {pure:>16.2f}")


if __name__ == "__main__":
    main()
