"""The validation gate in front of training: a failing batch never reaches a model."""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd

from driftloop.core.errors import InputError
from driftloop.core.types import ValidationIssue, ValidationReport
from driftloop.data.dataset import LABEL, TEXT, normalise


class ValidationError(InputError, ValueError):
    def __init__(self, report: ValidationReport):
        super().__init__(report.summary())
        self.report = report


def validate_training_set(
    frame: pd.DataFrame,
    *,
    source: str,
    known_labels: Iterable[str] | None = None,
    eval_texts: Iterable[str] = (),
    min_rows_per_label: int = 1,
    max_text_chars: int | None = None,
) -> ValidationReport:
    """Check schema, empty texts, unknown labels, duplicates and train/eval overlap.

    Row numbers in the report are 0-based positions in ``frame``. Duplicates compare texts
    case- and whitespace-insensitively: the same question typed twice is one example.
    """
    issues: list[ValidationIssue] = []
    missing = [c for c in (TEXT, LABEL) if c not in frame.columns]
    if missing:
        return ValidationReport(source, len(frame), (ValidationIssue("schema", f"missing column(s) {missing}"),))
    if frame.empty:
        return ValidationReport(source, 0, (ValidationIssue("schema", "no rows"),))
    frame = frame.reset_index(drop=True)
    texts = frame[TEXT].fillna("").astype(str)
    labels = frame[LABEL].fillna("").astype(str)

    def rows(mask: pd.Series) -> tuple[int, ...]:
        return tuple(int(i) for i in frame.index[mask])

    empty = texts.str.strip() == ""
    if empty.any():
        issues.append(ValidationIssue("empty_text", "empty or whitespace-only text", rows(empty)))
    no_label = labels.str.strip() == ""
    if no_label.any():
        issues.append(ValidationIssue("empty_label", "missing label", rows(no_label)))
    if max_text_chars:
        long = texts.str.len() > max_text_chars
        if long.any():
            issues.append(ValidationIssue("text_too_long", f"text longer than {max_text_chars} characters", rows(long)))
    if known_labels is not None:
        known = set(known_labels)
        unknown = ~labels.isin(known) & ~no_label
        if unknown.any():
            names = sorted(set(labels[unknown]))[:5]
            issues.append(ValidationIssue("unknown_label", f"label(s) not in the label set: {names}", rows(unknown)))
    normed = normalise(texts)
    dup = normed.duplicated(keep="first") & ~empty
    if dup.any():
        conflicting = normed[dup].isin(set(normed[dup & ~labels.duplicated(keep=False)]))
        kind = "duplicate texts" + (" (some with conflicting labels)" if conflicting.any() else "")
        issues.append(ValidationIssue("duplicate", kind, rows(dup)))
    eval_norm = set(normalise(pd.Series(list(eval_texts), dtype=str)))
    if eval_norm:
        overlap = normed.isin(eval_norm) & ~empty
        if overlap.any():
            issues.append(ValidationIssue("eval_overlap", "text also in the evaluation set (leakage)", rows(overlap)))
    counts = labels[~no_label].value_counts()
    few = counts[counts < min_rows_per_label]
    if len(few):
        issues.append(
            ValidationIssue(
                "too_few_rows",
                f"labels with fewer than {min_rows_per_label} rows: {sorted(few.index)[:5]}",
                rows(labels.isin(set(few.index))),
            )
        )
    return ValidationReport(source, len(frame), tuple(issues))


def require_valid(report: ValidationReport) -> ValidationReport:
    if not report.ok:
        raise ValidationError(report)
    return report
