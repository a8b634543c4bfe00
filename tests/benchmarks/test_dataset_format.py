"""Adding an on-disk format is one module: a format registered here, in the test, is loaded by
``load_task``, listed and checked by ``bench data check`` and fetched by ``bench data prepare
--download``, with nothing else changed."""

from __future__ import annotations

import io
import tarfile
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from petlbench.benchmarks.datasets import FORMATS, Archive, DatasetFormat, Download, load_task
from petlbench.benchmarks.datasets._files import SplitListing, TaskListing, build_task
from petlbench.benchmarks.suites import TaskSpec
from petlbench.errors import UserError
from petlbench.harness import data_check, data_download

IMAGE_ARGS = {"image_size": 8, "resize": "square", "interpolation": "bilinear"}
SPLITS = {"train": [("cat/1.png", 0), ("dog/1.png", 1)], "test": [("cat/2.png", 0), ("dog/2.png", 1)]}


def _list(task: TaskSpec, data_root: Path) -> TaskListing:
    root = Path(data_root) / "pets"
    splits = {
        name: SplitListing(root / f"{name}.txt", [p for p, _ in rows], [y for _, y in rows])
        for name, rows in SPLITS.items()
    }
    return TaskListing(task.name, task.loader, root, ["cat", "dog"], splits)


def _load(task: TaskSpec, data_root: Path | None) -> object:
    assert data_root is not None  # load_task refuses first: the format needs a data root
    return build_task(_list(task, data_root), IMAGE_ARGS, task.templates)


def _check(args: dict) -> None:
    if set(args) - {"size"}:
        raise UserError(f"unknown args {sorted(set(args) - {'size'})}; the format takes only 'size'")


def _archive(path: Path) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for i, (rel, _) in enumerate(row for rows in SPLITS.values() for row in rows):
            buf = io.BytesIO()  # four different images: no split shares one with another
            Image.fromarray(np.full((4, 4, 3), 40 * i, dtype=np.uint8)).save(buf, format="PNG")
            info = tarfile.TarInfo(f"pets-v1/{rel}")
            info.size = len(buf.getvalue())
            tar.addfile(info, io.BytesIO(buf.getvalue()))
    return path


@pytest.fixture
def fmt(tmp_path):
    """A throwaway format under a unique name, with a public archive behind a file:// address."""
    name = f"pets-{uuid.uuid4().hex[:8]}"
    archive = Archive(_archive(tmp_path / "pets-v1.tar.gz").as_uri(), "pets", "pets-v1")
    FORMATS.register(
        name,
        DatasetFormat(
            _load,
            needs_data_root=True,
            check_args=_check,
            lister=_list,
            download=lambda task: Download((archive,)),
            how_to_get="pets-v1.tar.gz from the test's folder",
        ),
    )
    yield name
    FORMATS.unregister(name)
    assert name not in FORMATS


def test_a_format_registered_in_one_place_is_loaded_checked_and_downloaded(fmt, tmp_path):
    task = TaskSpec(name="pets", loader=fmt, args={})
    root = tmp_path / "data"
    root.mkdir()
    # nothing on disk yet: the data check lists the four files as missing and says where to get them
    check = data_check.check_task(task, root, manifest={})
    assert (check.files, check.present, check.status) == (4, 0, "problems")
    assert [Path(p).name for p, _ in check.missing] == ["1.png", "1.png", "2.png", "2.png"]
    assert data_check.how_to_get(task) == "pets-v1.tar.gz from the test's folder"
    # the download path fetches the format's archive into the layout its lister reads
    assert data_download.can_download(task)
    assert data_download.download_task(task, root) == ["pets-v1.tar.gz -> pets/"]
    manifest: dict = {}
    check = data_check.check_task(task, root, manifest=manifest)
    assert (check.files, check.present, check.status) == (4, 4, "ok")
    assert sorted(manifest) == ["pets/cat/1.png", "pets/cat/2.png", "pets/dog/1.png", "pets/dog/2.png"]
    # and load_task reads it, with the suite's checks (data root, args) applied
    data = load_task(task, root)
    assert data.class_names == ["cat", "dog"] and data.meta["loader"] == fmt
    assert [int(data.split("test")[i][1]) for i in range(2)] == [0, 1]
    assert tuple(data.split("train")[0][0].shape) == (3, 8, 8)
    with pytest.raises(UserError, match=f"loader '{fmt}'\\) reads its dataset from disk"):
        load_task(task, None)
    with pytest.raises(UserError, match="task 'pets': unknown args \\['colour'\\]"):
        load_task(TaskSpec(name="pets", loader=fmt, args={"colour": 1}), root)


def test_a_second_format_under_a_taken_name_is_refused(fmt):
    with pytest.raises(ValueError, match=f"dataset loader '{fmt}' is already registered"):
        FORMATS.register(fmt, DatasetFormat(_load))
