import hashlib
import shutil

import pandas as pd
import pytest

from driftloop.adapters.versioning import DatasetStore


def test_restore_by_md5_and_reuse_of_an_identical_destination(tmp_path):
    store = DatasetStore(tmp_path / "datasets", remote_url=str(tmp_path / "remote"))
    v1 = store.commit(pd.DataFrame({"text": ["a", "b"], "label": ["x", "y"]}), "training")
    store.commit(pd.DataFrame({"text": ["c"], "label": ["z"]}), "training")  # v2 overwrites the file
    shutil.rmtree(tmp_path / "datasets" / ".dvc" / "cache")  # only the remote has v1 now
    dest = store.restore(v1.md5, tmp_path / "out" / "v1.csv")
    assert hashlib.md5(dest.read_bytes(), usedforsecurity=False).hexdigest() == v1.md5
    # with the cache (refilled by that pull) and the remote gone, a destination that already
    # holds v1 is returned as it is ...
    shutil.rmtree(tmp_path / "datasets" / ".dvc" / "cache")
    shutil.rmtree(tmp_path / "remote")
    assert store.restore(v1.md5, dest) == dest
    # ... while a destination with other content must be pulled, and now cannot be
    dest.write_text("text,label\nchanged,x\n")
    with pytest.raises(Exception):  # noqa: B017, PT011  whichever error DVC raises: that it fails is the point
        store.restore(v1.md5, dest)


def test_texts_of_versions_come_back_through_dvc_and_a_lost_version_fails(tmp_path):
    store = DatasetStore(tmp_path / "datasets", remote_url=str(tmp_path / "remote"))
    v1 = store.commit(pd.DataFrame({"text": ["a", "b"], "label": ["x", "y"]}), "training")
    v2 = store.commit(pd.DataFrame({"text": ["c"], "label": [""]}), "reference")
    assert sorted(store.texts([v1.md5, v2.md5, v1.md5], tmp_path / "scratch")) == ["a", "b", "c"]
    assert store.texts([], tmp_path / "scratch") == []
    with pytest.raises(Exception):  # noqa: B017, PT011  whichever error DVC raises: that it fails is the point
        store.texts(["0" * 32], tmp_path / "scratch")
