"""Quality and cost of the default model family on the full BANKING77 split.

    .venv/bin/python bench/model.py

Trains on all of train.csv (10,003 rows, 77 intents), scores test.csv (3,080 rows) and prints
accuracy, macro-F1, ECE, training time, and the per-text predict cost. Prints figures only.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    os.chdir(ROOT)
    from driftloop.config.settings import load_settings
    from driftloop.data.dataset import read_labelled
    from driftloop.models.evaluation import evaluate
    from driftloop.models.families import get_family

    settings = load_settings()
    cfg = settings.data
    train = read_labelled(cfg.train_path, cfg.text_field, cfg.label_field)
    test = read_labelled(cfg.test_path, cfg.text_field, cfg.label_field)
    family = get_family(settings.model.family)
    t = time.perf_counter()
    model = family.fit(train, dict(settings.model.params), seed=cfg.seed)
    fit_s = time.perf_counter() - t
    report, _ = evaluate(model, test)
    texts = test["text"].tolist()[:1000]
    t = time.perf_counter()
    for text in texts:
        model.predict([text])
    single_ms = (time.perf_counter() - t) / len(texts) * 1000
    t = time.perf_counter()
    model.predict(test["text"].tolist())
    batch_ms = (time.perf_counter() - t) / len(test) * 1000
    print(f"family {settings.model.family} {dict(settings.model.params)}")
    print(f"train rows {len(train)}, test rows {len(test)}, intents {train['label'].nunique()}")
    print(f"test accuracy {report.accuracy:.4f}  macro-F1 {report.macro_f1:.4f}  ECE {report.ece:.4f}")
    print(f"training time {fit_s:.1f} s (includes the temperature fit on a 10% hold-out)")
    print(f"predict: {single_ms:.3f} ms per single-text call, {batch_ms:.3f} ms per text in one batch")
    worst = sorted(report.per_intent_f1.items(), key=lambda kv: kv[1])[:5]
    print("weakest intents (F1): " + ", ".join(f"{k} {v:.2f}" for k, v in worst))


if __name__ == "__main__":
    main()
