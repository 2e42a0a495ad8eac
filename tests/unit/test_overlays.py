"""Config overlays in flow parameters are names of files in configs/, never paths."""

from __future__ import annotations

import os

import pytest

from driftloop.core.errors import InputError
from driftloop.core.overlays import OverlayRefused, overlay_names, split_for_flow


@pytest.mark.parametrize("name", [["stack"], ["rollout", "transformer"], ["hwu64"], [], None])
def test_names_of_files_in_configs_pass(name):
    assert overlay_names(name) == list(name or [])


@pytest.mark.parametrize(
    "value",
    [
        "/etc/passwd",
        "configs/stack.yaml",
        "stack.yaml",
        "../configs/stack",
        "..",
        "./stack",
        "stack/",
        "Stack",
        "stack\n",
        " stack",
        "-stack",
        "",
        "nonexistent",  # the right shape, but no configs/nonexistent.yaml
        "s3://bucket/x",
        "~/x",
    ],
)
def test_a_path_or_unknown_name_is_refused_with_its_value(value):
    with pytest.raises(OverlayRefused, match="config overlay") as caught:
        overlay_names(["stack", value])
    assert repr(value) in str(caught.value)
    assert isinstance(caught.value, InputError)  # exit status 2 at the command line


def test_a_non_string_is_refused():
    with pytest.raises(OverlayRefused):
        overlay_names([{"path": "/etc/passwd"}])  # type: ignore[list-item]


def test_the_config_dir_is_the_allowlist(tmp_path):
    (tmp_path / "mine.yaml").write_text("{}\n")
    assert overlay_names(["mine"], tmp_path) == ["mine"]
    with pytest.raises(OverlayRefused, match=r"no .*stack\.yaml"):
        overlay_names(["stack"], tmp_path)


def test_the_cli_keeps_a_path_in_its_own_process(tmp_path, monkeypatch):
    """Names go to the flow as they are; a path goes to DRIFTLOOP_CONFIG, in order, and the flow
    gets no parameter at all."""
    monkeypatch.delenv("DRIFTLOOP_CONFIG", raising=False)
    assert split_for_flow(["stack", "rollout"]) == ["stack", "rollout"]
    assert "DRIFTLOOP_CONFIG" not in os.environ
    overlay = tmp_path / "o.yaml"
    monkeypatch.setenv("DRIFTLOOP_CONFIG", "transformer")
    assert split_for_flow(["stack", str(overlay)]) is None
    assert os.environ["DRIFTLOOP_CONFIG"] == f"stack,{overlay},transformer"
    assert split_for_flow(None) is None
