"""The DVC pipeline's stages (``dvc.yaml``): plain library calls, no orchestration, no server.

``python -m driftloop.entry.pipeline prepare|train|evaluate …`` is what ``dvc repro`` runs; ``driftloop
data prepare`` and ``driftloop pipeline train|evaluate`` call the same functions. A stage's code is
this module and what it imports, which is what ``dvc.yaml`` lists as each stage's deps (a test
checks that every driftloop module a stage loads is one of them, so no code change goes unseen).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from driftloop.config.settings import Settings, load_settings
from driftloop.core.types import EvalReport
from driftloop.data import dataset
from driftloop.data.dataset import PreparedData


def prepare(settings: Settings, out: Path) -> PreparedData:
    """Write the scenario's splits of the configured data set into ``out``."""
    return dataset.prepare(settings.data, out)


def train(settings: Settings, train_set: Path, out: Path, progress: Callable[[str], None] = print) -> Path:
    """Validate a training set and fit the configured family on it; save the model into the
    folder ``out`` (driftloop.models.persist: plain files and their manifest, no pickle)."""
    import shutil

    from driftloop.data import validation
    from driftloop.models import families as modelling, persist

    frame = dataset.read_labelled(train_set)
    validation.require_valid(validation.validate_training_set(frame, source=str(train_set)))
    # A crashed `dvc repro` of a long fine-tune resumes from its checkpoint on the next run.
    model = modelling.get_family(settings.model.family).fit(
        frame,
        dict(settings.model.params),
        seed=settings.data.seed,
        progress=progress,
        checkpoint_root=settings.checkpoints_dir,
    )
    if out.exists():  # the previous run's model (DVC removes an out before its stage anyway)
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    persist.save(model, out)
    return out


def evaluate(model_path: Path, eval_set: Path, out: Path) -> EvalReport:
    """Score a saved model on the held-out set; ``out/eval.json`` for ``dvc metrics show``, plots."""
    from driftloop.models import evaluation, persist

    model = persist.load(model_path)
    report, rows = evaluation.evaluate(model, dataset.read_labelled(eval_set))
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(
        json.dumps(
            {
                "accuracy": round(report.accuracy, 4),
                "macro_f1": round(report.macro_f1, 4),
                "ece": round(report.ece, 4),
                "n": report.n,
            },
            indent=2,
        )
    )
    evaluation.write_eval_artifacts(report, rows, out / "plots")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m driftloop.entry.pipeline", description=__doc__.splitlines()[0])
    steps = parser.add_subparsers(dest="stage", required=True)
    p = steps.add_parser("prepare", help="write the configured data set's splits")
    p.add_argument("-c", "--config", action="append", default=[], help="config overlay (name or path)")
    p.add_argument("--out", type=Path, default=Path("data/prepared"))
    t = steps.add_parser("train", help="validate and fit on a training set, save the model")
    t.add_argument("-c", "--config", action="append", default=[])
    t.add_argument("--train-set", type=Path, default=Path("data/prepared/train.csv"))
    t.add_argument("--out", type=Path, default=Path("models/model"))
    e = steps.add_parser("evaluate", help="score a saved model on the held-out set")
    e.add_argument("--model", type=Path, default=Path("models/model"))
    e.add_argument("--eval", type=Path, default=Path("data/prepared/eval.csv"))
    e.add_argument("--out", type=Path, default=Path("metrics"))
    args = parser.parse_args(argv)
    from driftloop.core.errors import DriftloopError

    try:
        if args.stage == "prepare":
            prepared = prepare(load_settings(args.config), args.out)
            print(f"{prepared.name}: key {prepared.key}, rows {dict(prepared.rows)} in {prepared.dir}")
        elif args.stage == "train":
            print(f"saved {train(load_settings(args.config), args.train_set, args.out)}")
        else:
            report = evaluate(args.model, args.eval, args.out)
            print(f"accuracy {report.accuracy:.4f}  macro-F1 {report.macro_f1:.4f}  ECE {report.ece:.4f}")
    except (DriftloopError, ValueError) as exc:  # settings errors are pydantic ValueErrors
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
