"""Shared machinery of the on-disk loaders (coop, vtab1k, fgvc, imagefolder).

A disk loader works in two steps:

1. ``list`` the task: read the layout and the split files into a :class:`TaskListing` (for each split
   the image paths, relative to the dataset folder, and integer labels, in split-file order). This
   checks the structure (split files present and well formed, every label known, no empty class)
   but opens no image, so ``bench data check`` can list a task and then report *every* missing or
   corrupt image instead of stopping at the first.
2. ``build`` the :class:`~petlbench.benchmarks.data.TaskData`: every listed image must exist, and
   the splits become :class:`FileImageDataset` objects that decode lazily.

Images are decoded with PIL, converted to RGB and resized by the task's preprocessing (recorded in
the task's meta with every result): ``center_crop`` (shorter side to ``image_size``, then a centre
crop: CoOp's test transform), ``square`` (straight to ``image_size`` x ``image_size``: VPT's VTAB
transform) or ``resize_crop`` (shorter side to ``image_size * 256 / 224``, then a centre crop: VPT's
FGVC eval transform). The ``interpolation`` is PIL's ``bicubic`` or ``bilinear`` (PIL filters are
antialiased when downsampling; torchvision's ``Resize`` on a PIL image is exactly PIL's resize), or
``tf_bilinear``: TensorFlow's legacy bilinear resize (:func:`tf_bilinear_resize`), the one VPT's
VTAB pipeline calls. A few-shot training subset keeps its decoded uint8 tensors in memory, shared
by every run of the process that uses the same images.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import Dataset

from petlbench.errors import UserError

from ..data import TaskData
from .registry import DatasetFormat

if TYPE_CHECKING:
    from ..suites import TaskSpec
    from .registry import ArgsCheck, Download, Lister

RESIZE_MODES = ("center_crop", "square", "resize_crop")
INTERPOLATIONS = ("bicubic", "bilinear", "tf_bilinear")
IMAGE_ARGS: dict[str, tuple[type | tuple[type, ...], Any]] = {
    "image_size": (int, 224),
    "resize": (str, "center_crop"),
    "interpolation": (str, "bicubic"),
}
MAX_LISTED = 5  # how many offending entries an error message names


def _examples(items: Sequence[Any]) -> str:
    shown = ", ".join(str(x) for x in items[:MAX_LISTED])
    return shown + (f" (and {len(items) - MAX_LISTED} more)" if len(items) > MAX_LISTED else "")


# ----- listings -----------------------------------------------------------------------------------


@dataclass
class SplitListing:
    """One split as its split file lists it: ``relpaths`` relative to the listing's root."""

    source: Path
    relpaths: list[str]
    labels: list[int]

    def sha256(self) -> str:
        h = hashlib.sha256()
        for p, y in zip(self.relpaths, self.labels, strict=True):
            h.update(f"{p}\t{y}\n".encode())
        return h.hexdigest()


@dataclass
class TaskListing:
    """A task read from disk, no image opened. ``label_map`` (base-to-new) maps the labels kept to
    new contiguous labels; items of other labels are left out of every split (after few-shot
    sampling, as CoOp does)."""

    task: str
    loader: str
    root: Path
    class_names: list[str]
    splits: dict[str, SplitListing]
    layout: list[Path] = field(default_factory=list)  # files and folders the layout needs
    label_map: dict[int, int] | None = None
    test_label_map: dict[int, int] | None = None  # base-to-new: test on other classes than trained
    meta: dict[str, Any] = field(default_factory=dict)
    few_shot_selection: str | None = None  # "coop": val is few-shot with min(K, 4) per class
    index_dir: Path | None = None  # where the portable few-shot JSON index goes
    class_coverage_split: str = "train"  # the split in which every class must have an image


def require_dir(path: Path, what: str, hint: str) -> Path:
    if not path.is_dir():
        raise UserError(
            f"{what}: expected a folder at {path}, found {'a file' if path.exists() else 'nothing'}; {hint}"
        )
    return path


def require_file(path: Path, what: str, hint: str) -> Path:
    if not path.is_file():
        raise UserError(
            f"{what}: expected the file {path}, found {'a folder' if path.exists() else 'nothing'}; {hint}"
        )
    return path


def read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{what}: cannot read {path} ({err})") from None
    except json.JSONDecodeError as err:
        raise UserError(f"{what}: {path} is not valid JSON (line {err.lineno}: {err.msg})") from None


def read_lines(path: Path, what: str) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{what}: cannot read {path} ({err})") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def check_labels(listing: TaskListing) -> None:
    """Every label names a class, and every class has training images."""
    n = len(listing.class_names)
    where = f"task {listing.task!r}"
    for name, split in listing.splits.items():
        if not split.relpaths:
            raise UserError(f"{where}: split {name!r} in {split.source} lists no images")
        bad = sorted({y for y in split.labels if y < 0 or y >= n})
        if bad:
            raise UserError(
                f"{where}: {split.source} has unknown label(s) {_examples(bad)}; "
                f"there are {n} classes (labels 0..{n - 1})"
            )
    train = listing.splits.get(listing.class_coverage_split)
    if train is not None:
        counts = np.bincount(np.asarray(train.labels, dtype=np.int64), minlength=n)
        empty = [f"{listing.class_names[i]!r} (label {i})" for i in range(n) if counts[i] == 0]
        if empty:
            raise UserError(
                f"{where}: class(es) {_examples(empty)} have no training images in {train.source}; "
                "every class needs at least one (is the split file complete?)"
            )


def missing_files(listing: TaskListing) -> dict[str, list[str]]:
    """Split name -> listed relpaths that do not exist (each file is checked once)."""
    seen: dict[str, bool] = {}
    out: dict[str, list[str]] = {}
    for name, split in listing.splits.items():
        for rel in split.relpaths:
            if rel not in seen:
                seen[rel] = (listing.root / rel).is_file()
            if not seen[rel]:
                out.setdefault(name, []).append(rel)
    return out


# ----- decoding -----------------------------------------------------------------------------------


def decode_image(
    path: Path, image_size: int, resize: str = "center_crop", interpolation: str = "bicubic", where: str = ""
) -> torch.Tensor:
    """Decode ``path`` to a uint8 (3, image_size, image_size) tensor; a clear UserError if the file is
    missing, truncated or not an image."""
    from PIL import Image, UnidentifiedImageError

    prefix = f"{where}: " if where else ""
    try:
        with Image.open(path) as im:
            im.load()
            rgb = im.convert("RGB")
    except FileNotFoundError:
        raise UserError(f"{prefix}image {path} does not exist") from None
    except UnidentifiedImageError:
        raise UserError(f"{prefix}image {path} is not a readable image (unknown or corrupt format)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise UserError(
            f"{prefix}image {path} is corrupt or truncated ({err}); re-extract or re-download it"
        ) from None
    return _resize(rgb, image_size, resize, interpolation)


def _tf_axis(in_size: int, out_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source indices (lower, upper) and weights of the upper one along one axis, TF's legacy way."""
    f32 = torch.float32
    scale = torch.tensor(float(in_size), dtype=f32) / torch.tensor(float(out_size), dtype=f32)  # TF: float
    src = torch.arange(out_size, dtype=torch.float32) * scale  # no half-pixel offset
    floor = torch.floor(src)
    lower = floor.long().clamp(min=0)
    upper = torch.ceil(src).long().clamp(max=in_size - 1)
    return lower, upper, src - floor


def tf_bilinear_resize(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bilinear resize of a (C, H, W) image to float32 (C, height, width), as VPT's VTAB pipeline does.

    VPT calls ``tf.image.resize(image, [224, 224])`` with ``import tensorflow.compat.v1 as tf``
    (KMnP/vpt src/data/datasets/tf_dataset.py:5, 148-150; ChengHan111/E2VPT the same file, 5 and
    217). Under ``compat.v1`` that name is the legacy ``resize_images`` (tensorflow/tensorflow
    tensorflow/python/ops/image_ops_impl.py, ``@tf_export(v1=['image.resize_images',
    'image.resize'])``), which calls the ``ResizeBilinear`` kernel with ``align_corners=False`` and
    the op's default ``half_pixel_centers=False`` (tensorflow/core/ops/image_ops.cc): the source
    coordinate of output pixel ``i`` is ``i * in / out`` (``LegacyScaler``,
    tensorflow/core/util/image_resizer_state.h), no antialiasing, edge indices clamped, lerp along
    the width and then the height in float32 (``compute_lerp`` in
    tensorflow/core/kernels/image/resize_bilinear_op.cc). This is not TF2's ``tf.image.resize``
    (half-pixel centres, i.e. ``torch.nn.functional.interpolate(mode="bilinear",
    align_corners=False, antialias=False)``): the legacy grid is shifted by up to half an input pixel.
    The same arithmetic is done here in float32, so the result equals TF's up to float rounding.
    """
    x = image.to(torch.float32)
    y_lo, y_hi, y_w = _tf_axis(x.shape[-2], height)
    x_lo, x_hi, x_w = _tf_axis(x.shape[-1], width)
    rows_lo, rows_hi = x[..., y_lo, :], x[..., y_hi, :]
    x_w = x_w.view(1, 1, -1)
    top = rows_lo[..., x_lo] + (rows_lo[..., x_hi] - rows_lo[..., x_lo]) * x_w
    bottom = rows_hi[..., x_lo] + (rows_hi[..., x_hi] - rows_hi[..., x_lo]) * x_w
    return top + (bottom - top) * y_w.view(1, -1, 1)


def _to_uint8(im: Any) -> torch.Tensor:
    arr = np.asarray(im, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def _resize(im: Any, size: int, resize: str, interpolation: str) -> torch.Tensor:
    """A PIL RGB image -> uint8 (3, size, size) by ``resize`` (see the module docstring).

    ``tf_bilinear`` rounds TF's float result to uint8 (the reference keeps the float32 values: at
    most 0.5/255 apart per pixel) and crops, if the mode crops, after resizing, as the PIL modes do.
    """
    from PIL import Image

    tf = interpolation == "tf_bilinear"
    method = Image.Resampling.BICUBIC if interpolation == "bicubic" else Image.Resampling.BILINEAR
    w, h = im.size
    if resize == "square":
        nw, nh = size, size
    else:
        short = size if resize == "center_crop" else int(size * 256 / 224)
        if w <= h:
            nw, nh = short, int(short * h / w)
        else:
            nw, nh = int(short * w / h), short
    if tf:
        out = tf_bilinear_resize(_to_uint8(im), nh, nw).round_().clamp_(0, 255).to(torch.uint8)
    else:
        if resize == "square" or (nw, nh) != (w, h):
            im = im.resize((nw, nh), method)
        out = _to_uint8(im)
    if resize != "square":
        left = int(round((nw - size) / 2.0))
        top = int(round((nh - size) / 2.0))
        out = out[:, top : top + size, left : left + size].contiguous()
    return out


class FileImageDataset(Dataset):
    """Images on disk, decoded on access. ``labels`` is known without decoding (few-shot sampling and
    label checks read it). A view (few-shot subset, base/new classes) shares its parent's listing and
    decode cache."""

    def __init__(
        self,
        listing: TaskListing,
        split: str,
        image_args: dict[str, Any],
        view: list[int] | None = None,
        cache: dict[int, torch.Tensor] | None = None,
        keep_decoded: bool = False,
    ) -> None:
        self.listing = listing
        self.split_name = split
        self.split = listing.splits[split]
        self.image_args = dict(image_args)
        label_map = listing.label_map
        if split == "test" and listing.test_label_map is not None:
            label_map = listing.test_label_map
        self.label_map = label_map
        if view is None:
            view = list(range(len(self.split.relpaths)))
            if label_map is not None:
                view = [i for i in view if self.split.labels[i] in label_map]
        self.view = view
        self._cache: dict[int, torch.Tensor] = cache if cache is not None else {}
        self.keep_decoded = keep_decoded
        raw = [self.split.labels[i] for i in view]
        mapped = [label_map[y] for y in raw] if label_map is not None else raw
        self.labels = torch.tensor(mapped, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.view)

    @property
    def relpaths(self) -> list[str]:
        return [self.split.relpaths[i] for i in self.view]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        item = self.view[index]
        image = self._cache.get(item)
        if image is None:
            image = decode_image(
                self.listing.root / self.split.relpaths[item],
                self.image_args["image_size"],
                self.image_args["resize"],
                self.image_args["interpolation"],
                where=f"task {self.listing.task!r} ({self.split.source.name})",
            )
            if self.keep_decoded:
                self._cache[item] = image
        return image, int(self.labels[index])

    def few_shot_view(self, picks: list[int]) -> FileImageDataset:
        """A subset given as positions in the *full* split (reference order), filtered to the kept
        classes; its decoded images are cached (a few-shot set is decoded once per process)."""
        keep = self.label_map
        view = [i for i in picks if keep is None or self.split.labels[i] in keep]
        return FileImageDataset(
            self.listing, self.split_name, self.image_args, view=view, cache=self._cache, keep_decoded=True
        )


# ----- building -----------------------------------------------------------------------------------


def build_task(listing: TaskListing, image_args: dict[str, Any], templates: Sequence[str]) -> TaskData:
    """Check the listing (labels, empty classes, every image present) and wrap it as TaskData."""
    check_labels(listing)
    missing = missing_files(listing)
    if missing:
        split, rels = next(iter(missing.items()))
        total = sum(len(v) for v in missing.values())
        raise UserError(
            f"task {listing.task!r}: {total} image(s) listed in {listing.splits[split].source} "
            f"(and the other split files) do not exist under {listing.root}: {_examples(rels)}; "
            f"run `bench data check` to list them all"
        )
    splits = {name: FileImageDataset(listing, name, image_args) for name in listing.splits}
    for name, ds in splits.items():
        if len(ds) == 0:
            raise UserError(f"task {listing.task!r}: split {name!r} has no images of the kept classes")
    class_names = _mapped_names(listing.class_names, listing.label_map)
    meta: dict[str, Any] = {
        "loader": listing.loader,
        "root": str(listing.root),
        "preprocess": dict(image_args),
        "split_files": {k: str(v.source) for k, v in listing.splits.items()},
        "split_sha256": {k: v.sha256() for k, v in listing.splits.items()},
        **listing.meta,
    }
    if listing.test_label_map is not None:
        # the harness tests with a head for these classes (CLIP text heads only)
        meta["eval_class_names"] = _mapped_names(listing.class_names, listing.test_label_map)
    if listing.few_shot_selection:
        meta["few_shot_selection"] = listing.few_shot_selection
    if listing.class_coverage_split != "train":
        meta["class_coverage_split"] = listing.class_coverage_split
    if listing.index_dir is not None:
        meta["few_shot_index_dir"] = str(listing.index_dir)
    return TaskData(
        name=listing.task,
        class_names=class_names,
        templates=list(templates),
        splits=splits,
        image_size=int(image_args["image_size"]),
        meta=meta,
    )


def _mapped_names(names: list[str], label_map: dict[int, int] | None) -> list[str]:
    if label_map is None:
        return list(names)
    inverse = {new: old for old, new in label_map.items()}
    return [names[inverse[i]] for i in range(len(inverse))]


def disk_format(
    loader: str,
    lister: Lister,
    schema: dict[str, tuple[Any, Any]],
    check_args: ArgsCheck,
    how_to_get: str | Callable[[TaskSpec], str],
    download: Callable[[TaskSpec], Download | None] | None = None,
) -> DatasetFormat:
    """A format read from disk: its loader is the task as ``lister`` lists it, every image present,
    decoded lazily with the image args (``schema`` reads them from the task's args)."""
    from ._args import read_args

    def load(task_spec: TaskSpec, data_root: Path | None) -> TaskData:
        a = read_args(loader, task_spec.args, schema)
        if data_root is None:  # pragma: no cover - load_task refuses first
            raise UserError(f"the {loader} loader needs --data-root")
        return build_task(lister(task_spec, data_root), image_args_of(a), task_spec.templates)

    return DatasetFormat(
        load,
        needs_data_root=True,
        check_args=check_args,
        lister=lister,
        download=download,
        how_to_get=how_to_get,
    )


def check_image_args(loader: str, a: dict[str, Any]) -> None:
    from ._args import check_choice, check_range

    check_range(loader, "image_size", a["image_size"], 8, 4096)
    check_choice(loader, "resize", a["resize"], RESIZE_MODES)
    check_choice(loader, "interpolation", a["interpolation"], INTERPOLATIONS)


def image_args_of(a: dict[str, Any]) -> dict[str, Any]:
    return {k: a[k] for k in IMAGE_ARGS}


def safe_relpath(rel: str, source: Path, what: str) -> str:
    """A split-file path, normalised to forward slashes; refuse absolute paths and '..' escapes."""
    norm = str(rel).replace("\\", "/").strip()
    parts = [p for p in norm.split("/") if p not in ("", ".")]
    if not parts or norm.startswith("/") or ".." in parts:
        raise UserError(
            f"{what}: {source} lists the path {rel!r}; paths must be relative to the dataset folder"
        )
    return "/".join(parts)
