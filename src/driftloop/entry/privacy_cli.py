"""``driftloop privacy``: forget one person's texts everywhere, retire data versions past retention.

The work is :mod:`driftloop.adapters.privacy`'s; these commands build its parts from the
settings, print what was (or, with ``--dry-run``, would be) removed, and leave the record in the
privacy ledger (docs/security.md, "User text").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table

from driftloop.core.errors import InputError, RunFailed

if TYPE_CHECKING:
    from driftloop.config.settings import Settings

privacy_app = typer.Typer(
    help="User text: forget a person's texts everywhere, retire data versions past retention.",
    no_args_is_help=True,
)
# The main CLI's settings loader and console (entry.cli hands them over in :func:`build`: this
# module does not import it, so the entry package stays acyclic).
_cli: dict[str, Any] = {}


def build(settings_of: Callable[[list[str] | None], Settings], console: Any) -> typer.Typer:
    """The ``privacy`` sub-app, with the main CLI's settings loader and console."""
    _cli.update(settings=settings_of, console=console)
    return privacy_app


_ConfigOpt = typer.Option(None, "--config", "-c", help="Config overlay(s) from configs/ (name or path); repeatable.")


def _remote_deleter(settings: Settings) -> Callable[[str], None] | None:
    """Deletes a data version's object on an S3 DVC remote (None: the remote is a local folder,
    which :meth:`DatasetStore.drop` handles)."""
    from driftloop.adapters.s3 import ObjectStore
    from driftloop.adapters.versioning import DatasetStore

    store = DatasetStore(settings.datasets_dir, settings.storage.dvc_remote, settings.storage.s3_endpoint_url)
    first = store.remote_key("0" * 32)
    if first is None:
        return None
    bucket = first[0]
    objects = ObjectStore(settings.storage.s3_endpoint_url, bucket)

    def delete(md5: str) -> None:
        found = store.remote_key(md5)
        if found is not None:
            objects.delete(found[1])

    return delete


@privacy_app.command("forget")
def forget(
    request_id: list[str] | None = typer.Option(
        None, "--request-id", help="A request id (the X-Request-Id of an answer); repeatable."
    ),
    text_match: str | None = typer.Option(
        None, "--text-match", help="A regular expression (or, if it is not one, a substring) of the texts to forget."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="List what would be removed; change nothing."),
    config: list[str] | None = _ConfigOpt,
) -> None:
    """Remove a person's texts from the logs, the data versions and the reports, and record it."""
    from driftloop.adapters import privacy, wiring

    _settings, console = _cli["settings"], _cli["console"]
    if not request_id and not text_match:
        raise InputError("name what to forget: --request-id ID (repeatable) and/or --text-match REGEX")
    settings = _settings(config)
    parts = wiring.build(settings)
    folders = [settings.reports_dir, parts.retrain_dir]
    if settings.artifact_root is not None:
        folders.append(settings.artifact_root)
    ledger = privacy.Ledger(settings.privacy_dir)
    outcome = privacy.forget(
        privacy.Target.of(request_id or (), text_match),
        log_root=parts.log_root,
        datasets=parts.datasets,
        registry=parts.registry,
        folders=folders,
        scratch=settings.privacy_dir / "scratch",
        ledger=ledger,
        dry_run=dry_run,
        delete_remote=_remote_deleter(settings),
    )
    verb = "would remove" if dry_run else "removed"
    table = Table(title=f"{verb} {outcome.removed} rows or occurrences")
    for col in ("where", "rows", "how"):
        table.add_column(col, overflow="fold")
    for group in (outcome.logs, outcome.datasets, outcome.files):
        for r in group:
            table.add_row(r.where, str(r.rows), r.detail)
    console.print(table)
    for line in outcome.skipped:
        console.print(f"skipped: {line}")
    if not dry_run:
        console.print(f"recorded in {ledger.path} (hashes only)")
    if outcome.skipped and any("lock" in s for s in outcome.skipped):
        raise RunFailed("a log was locked by a compaction: run the same forget again")


@privacy_app.command("retention")
def retention(
    dry_run: bool = typer.Option(False, "--dry-run", help="List what would be retired; change nothing."),
    config: list[str] | None = _ConfigOpt,
) -> None:
    """Retire the data versions that only model versions older than logs.retention_days name."""
    from driftloop.adapters import privacy, wiring

    _settings, console = _cli["settings"], _cli["console"]
    settings = _settings(config)
    parts = wiring.build(settings)
    ledger = privacy.Ledger(settings.privacy_dir)
    retired = privacy.retire_data_versions(
        parts.datasets,
        parts.registry,
        retention_days=settings.logs.retention_days,
        redact=wiring.redactor(settings.privacy),
        scratch=settings.privacy_dir / "scratch",
        ledger=ledger,
        dry_run=dry_run,
        delete_remote=_remote_deleter(settings),
    )
    table = Table(title=f"data versions past {settings.logs.retention_days} days" + (" (dry run)" if dry_run else ""))
    for col in ("md5", "named by", "newest version", "action"):
        table.add_column(col, overflow="fold")
    for r in retired:
        table.add_row(r.md5, ", ".join(r.versions), r.newest, r.action)
    console.print(table)
    if not dry_run:
        console.print(f"recorded in {ledger.path}")
