"""Scale-out of model selection: the same grid scored one candidate at a time in process, and in
parallel on Dask through Prefect's DaskTaskRunner.

    .venv/bin/python bench/scaleout.py            # full BANKING77 training split, 4 candidates
    .venv/bin/python bench/scaleout.py --quick    # 20 intents x 40 rows, same grid

Runs the training flow's `model-selection` subflow three ways against a fresh local Prefect
server, on identical data and seed:

1. sequential: one candidate after another in this process;
2. dask, temporary cluster: what a training run with `selection.runner: dask` does by default,
   a LocalCluster of `--workers` processes on 127.0.0.1, started and stopped inside the run;
3. dask, running scheduler: `selection.dask.address` pointing at a cluster that is already up
   (the production shape, where workers outlive a run), here a warmed loopback LocalCluster.

Prints wall times, the speed-up over sequential, and whether every run chose the same
candidate with the same fold scores. Asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from _support import free_port

ROOT = Path(__file__).resolve().parents[1]
GRID = {"C": [0.25, 1.0], "char_ngrams": [[2, 4], [2, 5]]}


def _warm() -> str:
    """Run on each worker of the long-lived cluster: the imports a first task would pay for."""
    import sklearn.feature_extraction.text
    import sklearn.svm  # noqa: F401

    import driftloop.tasks.selection  # noqa: F401

    return "warm"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="20 intents x 40 rows instead of the full split")
    parser.add_argument("--workers", type=int, default=2, help="Dask worker processes (default 2)")
    parser.add_argument("--folds", type=int, default=3)
    args = parser.parse_args()
    os.chdir(ROOT)
    state = Path(tempfile.mkdtemp(prefix="driftloop-scaleout-"))
    os.environ["DRIFTLOOP__PROJECT__STATE_DIR"] = str(state)
    os.environ["DRIFTLOOP__PREFECT__PORT"] = str(free_port())

    from driftloop.config.settings import load_settings
    from driftloop.data.dataset import read_labelled
    from driftloop.ops import prefect_server

    settings = load_settings(selection={"grid": GRID, "folds": args.folds})
    data = settings.data
    train = read_labelled(data.train_path, data.text_field, data.label_field)
    if args.quick:
        labels = sorted(train["label"].unique())[:20]
        train = train[train["label"].isin(labels)].groupby("label").head(40)
    train_path = state / "train.csv"
    train.to_csv(train_path, index=False)

    server = prefect_server.ensure_server(state / "prefect", settings.prefect.port)
    prefect_server.use_server(server, state / "prefect")  # workers inherit the API URL
    cluster = None
    try:
        # the sequential run starts warm too
        import sklearn.feature_extraction.text
        import sklearn.svm  # noqa: F401
        from distributed import Client, LocalCluster

        from driftloop.flows.selection import select_model

        def run(selection):
            cfg = settings.selection.model_copy(update=selection)
            t = time.perf_counter()
            result = select_model(str(train_path), settings.model, cfg, seed=data.seed)
            return result, time.perf_counter() - t

        runs = {}
        runs["sequential"] = run({"runner": "sequential"})
        dask_cfg = settings.selection.dask.model_copy(update={"n_workers": args.workers})
        runs[f"dask, temporary cluster ({args.workers} workers)"] = run({"runner": "dask", "dask": dask_cfg})
        t = time.perf_counter()
        cluster = LocalCluster(
            host="127.0.0.1",
            n_workers=args.workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address="127.0.0.1:0",
            scheduler_kwargs={"dashboard": False},
        )
        with Client(cluster) as client:
            client.run(_warm)
        start_s = time.perf_counter() - t
        address = cluster.scheduler_address
        runs[f"dask, running scheduler {address}"] = run(
            {"runner": "dask", "dask": dask_cfg.model_copy(update={"address": address})}
        )
    finally:
        if cluster is not None:
            cluster.close()
        prefect_server.stop_server(server)

    base_result, base_s = runs["sequential"]
    print(f"\n== model selection scale-out ({os.cpu_count()} CPUs) ==")
    print(
        f"data: {len(train)} training rows, {train['label'].nunique()} intents"
        f"{' (--quick)' if args.quick else ' (full BANKING77 train split)'}"
    )
    print(
        f"grid: {GRID} -> {len(base_result.scores)} candidates x {args.folds}-fold cross-validation, "
        f"metric {base_result.metric}"
    )
    print("\n-- candidates (sequential run) --")
    for s in base_result.scores:
        mark = "  <- chosen" if s.candidate.index == base_result.chosen.candidate.index else ""
        print(
            f"  {s.candidate.name}  {s.candidate.describe():32s} cv {s.score:.4f}  "
            f"folds {', '.join(f'{f:.4f}' for f in s.fold_scores)}{mark}"
        )
    print("\n-- wall time of the model-selection subflow --")
    for name, (result, sec) in runs.items():
        same = result.chosen.candidate == base_result.chosen.candidate and [s.fold_scores for s in result.scores] == [
            s.fold_scores for s in base_result.scores
        ]
        workers = len({s.worker for s in result.scores})
        print(
            f"  {name:58s} {sec:7.1f} s  speed-up {base_s / sec:4.2f}x  "
            f"chose {result.chosen.candidate.name}, scores identical: {'yes' if same else 'NO'}  "
            f"({workers} worker{'s' if workers != 1 else ''})"
        )
    print(f"  (starting and warming the running cluster beforehand took {start_s:.1f} s, not counted above)")


if __name__ == "__main__":
    main()
