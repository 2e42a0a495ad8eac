"""Quality and cost of each model family on the full BANKING77 split, next to the published table.

    .venv/bin/python bench/quality.py --families tfidf,frozen,ensemble
    .venv/bin/python bench/quality.py --families finetune --epochs 8 --max-minutes 60

Each family trains in a subprocess of its own on all of train.csv (10,003 rows, 77 intents) and
is scored on test.csv (3,080 rows), so its peak memory is that process's own maximum resident set
(``os.wait4``), not the bench's. Families:

- ``tfidf``: the default family with configs/base.yaml's parameters;
- ``frozen``: ``transformer`` with ``mode: frozen`` (all-MiniLM-L6-v2 mean-pooled + logistic regression);
- ``finetune``: ``transformer`` with ``mode: finetune`` (``--epochs``, ``--max-minutes``; resumes from
  its checkpoint under ``--checkpoint-dir`` when a previous run was interrupted);
- ``ensemble``: the mean of tfidf's and frozen's calibrated probabilities.

Prints figures only; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = ("tfidf", "frozen", "finetune", "ensemble")
# Casanueva et al. 2020, "Efficient Intent Detection with Dual Sentence Encoders", table 2
# (BANKING77, full training data).
PUBLISHED = (
    ("BERT-large, fine-tuned (Casanueva et al. 2020)", 93.66),
    ("USE+ConveRT, frozen encoders + MLP (Casanueva et al. 2020)", 93.36),
)


def model_settings(name: str, args: argparse.Namespace, base_params: dict) -> tuple[str, dict]:
    """(family, params) of one bench row."""
    transformer = {"max_length": args.max_length}
    if name == "tfidf":
        return "tfidf", dict(base_params)
    if name == "frozen":
        return "transformer", {**transformer, "mode": "frozen"}
    if name == "finetune":
        return "transformer", {
            **transformer,
            "mode": "finetune",
            "epochs": args.epochs,
            "max_minutes": args.max_minutes,
            "learning_rate": args.learning_rate,
            "batch_size": args.batch_size,
            "log_every_steps": 20,
        }
    if name == "ensemble":
        return "ensemble", {
            **base_params,
            **transformer,
            "mode": "frozen",
            "ensemble_members": ["tfidf", "transformer"],
        }
    raise SystemExit(f"unknown family {name!r}; known: {', '.join(FAMILIES)}")


def run_one(name: str, args: argparse.Namespace) -> None:
    """In the child: train, score, print one JSON line."""
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    from driftloop.config.settings import load_settings
    from driftloop.data.dataset import read_labelled
    from driftloop.models.evaluation import evaluate
    from driftloop.models.families import get_family

    settings = load_settings()
    cfg = settings.data
    train = read_labelled(cfg.train_path, cfg.text_field, cfg.label_field)
    test = read_labelled(cfg.test_path, cfg.text_field, cfg.label_field)
    if args.train_rows:
        train = train.sample(n=min(args.train_rows, len(train)), random_state=0)
    family, params = model_settings(name, args, dict(settings.model.params))
    started = time.perf_counter()
    model = get_family(family).fit(
        train, params, seed=cfg.seed, progress=None, checkpoint_root=Path(args.checkpoint_dir)
    )
    fit_s = time.perf_counter() - started
    started = time.perf_counter()
    report, _ = evaluate(model, test)
    predict_ms = (time.perf_counter() - started) / len(test) * 1000
    info = getattr(model, "info", {})
    print(
        json.dumps(
            {
                "row": name,
                "family": family,
                "accuracy": report.accuracy,
                "macro_f1": report.macro_f1,
                "ece": report.ece,
                "fit_s": fit_s,
                "predict_ms": predict_ms,
                "train_rows": len(train),
                "note": {k: v for k, v in info.items() if k != "history"},
            }
        ),
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", default="tfidf,frozen,ensemble")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--max-minutes", type=float, default=60.0)
    parser.add_argument("--learning-rate", type=float, default=5e-5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--train-rows", type=int, default=0, help="a random subset (0: all)")
    parser.add_argument("--checkpoint-dir", default=".driftloop/bench-checkpoints")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.chdir(ROOT)
    if args.one:
        run_one(args.one, args)
        return
    names = [n.strip() for n in args.families.split(",") if n.strip()]
    for name in names:
        if name not in FAMILIES:
            raise SystemExit(f"unknown family {name!r}; known: {', '.join(FAMILIES)}")
    rows = []
    for name in names:
        cmd = [sys.executable, __file__, "--one", name] + [a for a in sys.argv[1:] if not a.startswith("--one")]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - started
        if proc.returncode != 0:
            print(f"{name}: failed with exit code {proc.returncode}", file=sys.stderr)
            continue
        row = json.loads(out.strip().splitlines()[-1])
        row["peak_rss_mb"] = usage.ru_maxrss / 1024  # Linux reports kilobytes
        row["wall_s"] = wall
        rows.append(row)
        print(f"{name}: accuracy {row['accuracy']:.4f} in {row['fit_s']:.0f}s; {row['note']}", file=sys.stderr)
    print()
    device = "a CUDA GPU" if _cuda() else "no GPU"
    print(
        f"BANKING77 test set (3,080 texts, 77 intents); trained on {rows[0]['train_rows'] if rows else '?'} rows; "
        f"{os.cpu_count()} CPU cores, {device}"
    )
    print(
        f"{'model':58s} {'accuracy':>9s} {'macro-F1':>9s} {'ECE':>6s} {'train s':>8s} {'ms/text':>8s} {'peak MB':>8s}"
    )
    for row in rows:
        print(
            f"{_label(row):58s} {row['accuracy'] * 100:8.2f}% {row['macro_f1'] * 100:8.2f}% {row['ece']:6.3f} "
            f"{row['fit_s']:8.0f} {row['predict_ms']:8.2f} {row['peak_rss_mb']:8.0f}"
        )
    for label, accuracy in PUBLISHED:
        print(f"{label:58s} {accuracy:8.2f}% {'':>9s} {'':>6s} {'':>8s} {'':>8s} {'':>8s}")


def _label(row: dict) -> str:
    return {
        "tfidf": "TF-IDF word 1-2 + char 2-5, linear SVM",
        "frozen": "all-MiniLM-L6-v2 frozen, mean pooled + LR",
        "finetune": f"all-MiniLM-L6-v2 fine-tuned ({row['note'].get('steps', '?')} steps, "
        f"{row['note'].get('stop', '')[:18]})",
        "ensemble": "ensemble: TF-IDF + frozen MiniLM (mean of probabilities)",
    }[row["row"]]


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


if __name__ == "__main__":
    main()
