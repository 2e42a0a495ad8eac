"""The training run's pure parts (driftloop.rollout.candidate): the version's tags and summary."""

from __future__ import annotations

from driftloop.core.types import DataVersion, EvalReport, ModelRef, PromotionDecision
from driftloop.rollout import candidate

LINEAGE = candidate.Lineage(
    {"data.name": "banking77", "data.key": "k1"}, DataVersion("abc", "/d.csv", 10, 120), 7, 100, "g1", "h1", "run-1"
)
SCORES = EvalReport(accuracy=0.9, macro_f1=0.8, n=50, ece=0.05, eval_md5="e1")


def test_version_tags_carry_lineage_decision_and_cut_free_text():
    tags = candidate.version_tags(
        LINEAGE,
        scores=SCORES,
        decision=PromotionDecision(True, "better"),
        family="tfidf",
        trigger="drift",
        reason="x" * 600,
        report="r",
        reference={"reference.md5": "ref"},
        selection={"selection.candidate": "c1"},
        fit_info={"steps": 12, "history": [1, 2]},
    )
    assert tags["data.md5"] == "abc" and tags["data.rows"] == "120" and tags["training.rows"] == "100"
    assert tags["data.labels"] == "7" and tags["eval.md5"] == "e1" and tags["prefect.flow_run_id"] == "run-1"
    assert tags["decision"] == "promote" and tags["driftloop.kind"] == "train" and len(tags["reason"]) == 500
    assert tags["reference.md5"] == "ref" and tags["selection.candidate"] == "c1" and tags["training.steps"] == "12"
    assert "training.history" not in tags and tags["data.key"] == "k1"


def test_metrics_table_and_summary():
    champ = EvalReport(accuracy=0.8, macro_f1=0.7, n=50, ece=0.1)
    assert candidate.run_metrics(SCORES, champ)["champion.accuracy"] == 0.8
    assert candidate.run_metrics(SCORES, None) == SCORES.metrics()
    rows = candidate.comparison_rows(ModelRef("m", "2"), SCORES, ModelRef("m", "1"), champ)
    assert len(rows) == 2 and rows[0]["model"].startswith("candidate ") and rows[1]["accuracy"] == 0.8
    text = candidate.promotion_markdown(
        ModelRef("m", "2"),
        PromotionDecision(True, "better"),
        staged=True,
        reason="drift",
        training_set=LINEAGE.training_set,
        scores=SCORES,
    )
    assert text.startswith("## Challenger, to be rolled out: ") and "--version 2" in text
    assert candidate.outcome_title(PromotionDecision(False, "worse"), staged=True) == "Not promoted"
    assert candidate.inherited_reference({"reference.md5": "a", "data.md5": "b"}) == {"reference.md5": "a"}
