"""Config overlays that arrive as flow parameters: names from an allowlist, never paths.

A flow run's parameters come from whoever can reach the Prefect API, and the drift trigger copies
``config`` from an event's payload (``prefect.yaml``). A path there would let that caller load any
YAML file the worker can read as the run's settings (another tracking URI, another bucket). So a
flow accepts only the *name* of a file that exists in the project's ``configs/`` folder:
``stack`` for ``configs/stack.yaml``. A person at the command line may still pass a path: the CLI
hands it to the flow through ``DRIFTLOOP_CONFIG`` in its own process (see :func:`split_for_flow`),
never as a parameter, so nothing a run records or re-sends holds a path.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

from driftloop.config.settings import DEFAULT_CONFIG_DIR, Settings, load_settings
from driftloop.core.errors import InputError

# A file name stem: lower-case letters, digits, '-' and '_', starting with a letter or digit.
# No '/', '\\', '.', so no path, no parent, no hidden file and no second suffix.
OVERLAY_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
ENV_OVERLAYS = "DRIFTLOOP_CONFIG"


class OverlayRefused(InputError, ValueError):
    """A config overlay in a flow parameter that is not the name of a file in ``configs/``."""


def overlay_names(config: Iterable[str] | None, config_dir: Path | str = DEFAULT_CONFIG_DIR) -> list[str]:
    """``config`` unchanged when every entry names ``<config_dir>/<name>.yaml``; otherwise
    :class:`OverlayRefused` naming the first entry that does not (a path, a suffix, a name with
    no file)."""
    folder = Path(config_dir)
    names = []
    for value in config or []:
        if not isinstance(value, str) or not OVERLAY_NAME.fullmatch(value):
            raise OverlayRefused(
                f"config overlay {value!r} refused: a flow run takes only the name of a file in "
                f"{folder}/ (lower-case letters, digits, '-', '_'; no path, no '.yaml'), e.g. 'stack'"
            )
        if not (folder / f"{value}.yaml").is_file():
            raise OverlayRefused(f"config overlay {value!r} refused: there is no {folder / value}.yaml")
        names.append(value)
    return names


def flow_settings(config: list[str] | None) -> Settings:
    """The settings of a flow run: :func:`load_settings` on overlay *names* only."""
    return load_settings(overlay_names(config))


def split_for_flow(config: list[str] | None) -> list[str] | None:
    """What a CLI command passes as a flow's ``config``: the overlays themselves when all are
    names; else ``None``, after putting them (in order, before any already there) into this
    process's ``DRIFTLOOP_CONFIG``, which a flow run in the same process reads like any overlay.
    A path given at the command line therefore still works in process, and is never sent to a
    deployment or an event."""
    if not config:
        return None
    try:
        return overlay_names(config)
    except OverlayRefused:
        pass
    present = [n for n in os.environ.get(ENV_OVERLAYS, "").split(",") if n.strip()]
    os.environ[ENV_OVERLAYS] = ",".join([*config, *present])
    return None
