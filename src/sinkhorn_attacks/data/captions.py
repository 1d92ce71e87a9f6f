"""Image-caption datasets for retrieval, read from local files only (nothing is downloaded).

Every adapter returns a :class:`RetrievalData`: a gallery of *unique* images, a list of captions, and
integer labels on both sides that decide what counts as a correct retrieval.

Matching conventions (the ``match`` field):

* ``"image"`` (Flickr8k, COCO, generic captions files without a label column): the label of an image
  is its own index in the split, and a caption's label is the index of the image it describes. A hit
  in text->image retrieval means "the caption's own image"; in image->text retrieval it means "any of
  the image's own captions" (5 for Flickr8k).
* ``"identity"`` (CUHK-PEDES, or a captions file with a ``label``/``id`` column): the label is the
  person id, remapped to ``0 .. C-1`` within the split. A hit means "any image (t2i) or any caption
  (i2t) of the same person", including other camera views of that person.

Images are kept encoded (JPEG bytes or file paths) and decoded on demand by :meth:`RetrievalData.load_images`.
"""

from __future__ import annotations

import csv
import io
import json
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "RetrievalData",
    "ImageStore",
    "ArrayImageStore",
    "BytesImageStore",
    "FileImageStore",
    "load_flickr8k_npz",
    "load_coco_mini_npz",
    "load_flickr8k",
    "load_cuhk_pedes",
    "load_captions_file",
    "seeded_split",
    "make_synthetic",
    "SPLITS",
]

SPLITS = ("train", "val", "test")
_SPLIT_ALIASES = {
    "train": "train",
    "val": "val",
    "dev": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "restval": "train",
}


def _norm_split(split: str) -> str:
    key = str(split).strip().lower()
    if key not in _SPLIT_ALIASES:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS} (or dev/validation)")
    return _SPLIT_ALIASES[key]


def _pil():
    try:
        from PIL import Image
    except ImportError as err:  # pragma: no cover - pillow comes with matplotlib
        raise ImportError("decoding images needs Pillow (`pip install pillow`)") from err
    return Image


# ----------------------------------------------------------------------------------------------------------
# image stores
# ----------------------------------------------------------------------------------------------------------


class ImageStore:
    """A sequence of RGB images; ``store[i]`` is an ``(H, W, 3)`` uint8 array."""

    def __len__(self) -> int:  # pragma: no cover - interface
        raise NotImplementedError

    def get(self, i: int) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def subset(self, idx: Sequence[int]) -> ImageStore:  # pragma: no cover - interface
        raise NotImplementedError

    def __getitem__(self, i: int) -> np.ndarray:
        return self.get(int(i))


class ArrayImageStore(ImageStore):
    """Images already decoded, ``(N, H, W, 3)`` uint8 (used by tests and small synthetic sets)."""

    def __init__(self, array: np.ndarray) -> None:
        arr = np.asarray(array)
        if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
            raise ValueError(f"expected (N, H, W, 3) uint8, got {arr.shape} {arr.dtype}")
        self.array = arr

    def __len__(self) -> int:
        return int(self.array.shape[0])

    def get(self, i: int) -> np.ndarray:
        return self.array[i]

    def subset(self, idx: Sequence[int]) -> ArrayImageStore:
        return ArrayImageStore(self.array[np.asarray(idx, dtype=np.int64)])


class BytesImageStore(ImageStore):
    """Encoded images packed back to back: image ``k`` is ``blob[offsets[k]:offsets[k+1]]``."""

    def __init__(self, blob: np.ndarray, offsets: np.ndarray, index: np.ndarray | None = None) -> None:
        self.blob = blob
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.index = np.arange(len(self.offsets) - 1) if index is None else np.asarray(index, dtype=np.int64)

    def __len__(self) -> int:
        return int(self.index.size)

    def get(self, i: int) -> np.ndarray:
        k = int(self.index[i])
        raw = self.blob[self.offsets[k] : self.offsets[k + 1]].tobytes()
        with _pil().open(io.BytesIO(raw)) as im:
            return np.asarray(im.convert("RGB"))

    def subset(self, idx: Sequence[int]) -> BytesImageStore:
        return BytesImageStore(self.blob, self.offsets, self.index[np.asarray(idx, dtype=np.int64)])


class FileImageStore(ImageStore):
    """Images as files on disk (any format Pillow reads)."""

    def __init__(self, paths: Sequence[str | Path]) -> None:
        self.paths = [Path(p) for p in paths]

    def __len__(self) -> int:
        return len(self.paths)

    def get(self, i: int) -> np.ndarray:
        with _pil().open(self.paths[i]) as im:
            return np.asarray(im.convert("RGB"))

    def subset(self, idx: Sequence[int]) -> FileImageStore:
        return FileImageStore([self.paths[int(i)] for i in idx])


# ----------------------------------------------------------------------------------------------------------
# the container
# ----------------------------------------------------------------------------------------------------------


@dataclass
class RetrievalData:
    """One split of an image-caption dataset.

    Attributes:
        name: dataset name, e.g. ``"flickr8k/test"``.
        images: the unique gallery images (``len(images) == n_images``).
        image_names: an identifier per image (file name or path).
        image_labels: ``(n_images,)`` int64 labels used for matching.
        captions: the ``n_captions`` caption strings.
        caption_labels: ``(n_captions,)`` int64 labels used for matching.
        caption_image: ``(n_captions,)`` int64, index of the image each caption was written for.
        match: ``"image"`` (hit = the same image) or ``"identity"`` (hit = the same person id).
        label_names: the original id of each label (file name or person id), for reporting.
    """

    name: str
    images: ImageStore
    image_names: list[str]
    image_labels: np.ndarray
    captions: list[str]
    caption_labels: np.ndarray
    caption_image: np.ndarray
    match: str = "image"
    label_names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.image_labels = np.asarray(self.image_labels, dtype=np.int64)
        self.caption_labels = np.asarray(self.caption_labels, dtype=np.int64)
        self.caption_image = np.asarray(self.caption_image, dtype=np.int64)
        n, m = len(self.images), len(self.captions)
        if len(self.image_names) != n or self.image_labels.shape != (n,):
            raise ValueError("image_names/image_labels must have one entry per image")
        if self.caption_labels.shape != (m,) or self.caption_image.shape != (m,):
            raise ValueError("caption_labels/caption_image must have one entry per caption")
        if m and (self.caption_image.min() < 0 or self.caption_image.max() >= n):
            raise ValueError("caption_image indexes outside the image gallery")
        if m and not np.array_equal(self.image_labels[self.caption_image], self.caption_labels):
            raise ValueError("a caption's label must equal the label of its own image")
        if self.match not in ("image", "identity"):
            raise ValueError(f"match must be 'image' or 'identity', got {self.match!r}")

    @property
    def n_images(self) -> int:
        return len(self.images)

    @property
    def n_captions(self) -> int:
        return len(self.captions)

    @property
    def n_labels(self) -> int:
        return int(self.image_labels.max()) + 1 if self.n_images else 0

    def load_images(self, idx: Sequence[int] | None = None, size: int | None = None) -> torch.Tensor:
        """Decode images ``idx`` (default all) to a float tensor ``(B, 3, S, S)`` in ``[0, 1]``.

        ``size`` resizes with PIL bicubic interpolation (no crop) when the stored size differs.
        """
        idx = range(self.n_images) if idx is None else idx
        out = []
        for i in idx:
            arr = self.images.get(int(i))
            if size is not None and arr.shape[:2] != (size, size):
                img = _pil().fromarray(arr).resize((size, size), _pil().BICUBIC)
                arr = np.asarray(img)
            out.append(torch.from_numpy(np.array(arr, dtype=np.uint8, copy=True)).permute(2, 0, 1))
        if not out:
            return torch.zeros(0, 3, size or 1, size or 1)
        return torch.stack(out).float().div_(255.0)

    def head(self, n: int | None) -> RetrievalData:
        """The first ``n`` images and their own captions (all of them when ``n`` is None)."""
        return self if n is None else self.subset(range(min(n, self.n_images)))

    def subset(self, image_idx: Sequence[int], relabel: bool = True) -> RetrievalData:
        """Restrict to the images ``image_idx`` and their own captions.

        With ``relabel`` the labels are remapped to ``0 .. C'-1`` in order of first appearance.
        """
        image_idx = np.asarray(image_idx, dtype=np.int64)
        pos = -np.ones(self.n_images, dtype=np.int64)
        pos[image_idx] = np.arange(image_idx.size)
        keep = np.flatnonzero(pos[self.caption_image] >= 0)
        img_labels = self.image_labels[image_idx]
        cap_labels = self.caption_labels[keep]
        names = self.label_names
        if relabel:
            uniq, inv = np.unique(img_labels, return_inverse=True)
            remap = {int(u): k for k, u in enumerate(uniq)}
            img_labels = inv.astype(np.int64)
            cap_labels = np.array([remap[int(v)] for v in cap_labels], dtype=np.int64)
            names = [self.label_names[int(u)] for u in uniq] if self.label_names else []
        return RetrievalData(
            name=self.name,
            images=self.images.subset(image_idx),
            image_names=[self.image_names[int(i)] for i in image_idx],
            image_labels=img_labels,
            captions=[self.captions[int(j)] for j in keep],
            caption_labels=cap_labels,
            caption_image=pos[self.caption_image[keep]],
            match=self.match,
            label_names=names,
        )


def _image_matched(
    name: str, images: ImageStore, names: list[str], per_image: list[list[str]], match: str = "image"
) -> RetrievalData:
    caps, cap_img = [], []
    for i, cs in enumerate(per_image):
        caps.extend(cs)
        cap_img.extend([i] * len(cs))
    labels = np.arange(len(names), dtype=np.int64)
    cap_img_arr = np.asarray(cap_img, dtype=np.int64)
    return RetrievalData(
        name=name,
        images=images,
        image_names=list(names),
        image_labels=labels,
        captions=caps,
        caption_labels=labels[cap_img_arr] if caps else cap_img_arr,
        caption_image=cap_img_arr,
        match=match,
        label_names=list(names),
    )


def _require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    return path


# ----------------------------------------------------------------------------------------------------------
# splits
# ----------------------------------------------------------------------------------------------------------


def seeded_split(n: int, seed: int = 0, n_test: int = 1000, n_val: int = 1000) -> np.ndarray:
    """Seeded random split code per item: 0 train, 1 val, 2 test.

    ``perm = default_rng(seed).permutation(n)``; ``perm[:n_test]`` is test, the next ``n_val`` val, the rest
    train. This is the recipe of ``flickr8k_128.npz`` (seed 0, 1000/1000) and is *not* the official split.
    """
    if n_test + n_val > n:
        raise ValueError(f"cannot take {n_test} test + {n_val} val items out of {n}")
    code = np.zeros(n, dtype=np.uint8)
    perm = np.random.default_rng(seed).permutation(n)
    code[perm[:n_test]] = 2
    code[perm[n_test : n_test + n_val]] = 1
    return code


# ----------------------------------------------------------------------------------------------------------
# npz datasets shipped with the project's shared data
# ----------------------------------------------------------------------------------------------------------


def load_flickr8k_npz(path: str | Path, split: str = "test") -> RetrievalData:
    """Flickr8k from ``flickr8k_128.npz`` (8,091 images at 128 px, 5 captions each).

    Uses the file's own seeded split (``split`` key: 6,091 train / 1,000 val / 1,000 test), which is **not**
    the official Flickr8k split. Matching convention ``"image"``.
    """
    path = _require_file(Path(path), "Flickr8k npz")
    code = {"train": 0, "val": 1, "test": 2}[_norm_split(split)]
    with np.load(path, allow_pickle=False) as d:
        missing = {"jpeg", "offsets", "filenames", "captions", "split"} - set(d.files)
        if missing:
            raise KeyError(f"{path} lacks keys {sorted(missing)}")
        idx = np.flatnonzero(d["split"] == code)
        store = BytesImageStore(d["jpeg"], d["offsets"], idx)
        names = [str(s) for s in d["filenames"][idx]]
        caps = [[str(c) for c in row] for row in d["captions"][idx]]
    return _image_matched(f"flickr8k_npz/{_norm_split(split)}", store, names, caps)


_COCO_SPLITS = {"train": "train2017", "val": "val2017", "test": "val2017"}


def load_coco_mini_npz(path: str | Path, split: str | None = None) -> RetrievalData:
    """The 159-image COCO-MINI set (``coco_mini_captions.npz``, 5 captions per image, 224 px).

    ``split`` filters on the file's ``split`` key (``"val2017"``/``"train2017"``; ``train``, ``val`` and ``test``
    are aliases: train -> train2017, val / test -> val2017); ``None`` keeps all.
    Matching convention ``"image"``.
    """
    path = _require_file(Path(path), "COCO-MINI npz")
    with np.load(path, allow_pickle=False) as d:
        sp = d["split"].astype(str)
        if split is not None and split not in set(sp.tolist()):
            alias = _COCO_SPLITS.get(_SPLIT_ALIASES.get(split.lower(), split.lower()))
            if alias is None or alias not in set(sp.tolist()):
                raise ValueError(
                    f"{path}: no split {split!r}; the file has {sorted(set(sp.tolist()))} (train, val and test "
                    "are accepted as aliases: train -> train2017, val/test -> val2017)"
                )
            split = alias
        idx = np.arange(sp.size) if split is None else np.flatnonzero(sp == split)
        store = BytesImageStore(d["jpeg"], d["offsets"], idx)
        names = [str(int(v)) for v in d["image_ids"][idx]]
        caps = [[str(c) for c in row] for row in d["captions"][idx]]
    return _image_matched(f"coco_mini/{split or 'all'}", store, names, caps)


# ----------------------------------------------------------------------------------------------------------
# Flickr8k from its original files
# ----------------------------------------------------------------------------------------------------------

_FLICKR_CAPTION_FILES = ("Flickr8k.token.txt", "captions.txt", "dataset_flickr8k.json")
_FLICKR_IMAGE_DIRS = ("Flicker8k_Dataset", "Flickr8k_Dataset", "Images", "images")
_FLICKR_SPLIT_FILES = {
    "train": "Flickr_8k.trainImages.txt",
    "val": "Flickr_8k.devImages.txt",
    "test": "Flickr_8k.testImages.txt",
}


def _read_flickr_captions(path: Path) -> tuple[dict[str, list[str]], dict[str, str]]:
    """Return ``{image name: [captions]}`` (file order) and, for Karpathy JSON, ``{image name: split}``."""
    caps: dict[str, list[str]] = {}
    splits: dict[str, str] = {}
    if path.suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        for rec in data["images"]:
            name = rec["filename"]
            caps[name] = [s["raw"].strip() for s in rec.get("sentences", [])]
            if "split" in rec:
                splits[name] = _norm_split(rec["split"])
        return caps, splits
    with path.open(encoding="utf-8", newline="") as fh:
        first = fh.readline()
        fh.seek(0)
        if "\t" in first:  # Flickr8k.token.txt: "<name>.jpg#<k>\t<caption>"
            for line in fh:
                line = line.rstrip("\n")
                if not line.strip():
                    continue
                key, _, cap = line.partition("\t")
                name = key.rsplit("#", 1)[0]
                caps.setdefault(name, []).append(" ".join(cap.split()))
        else:  # Kaggle captions.txt: CSV with header image,caption
            reader = csv.DictReader(fh)
            if not reader.fieldnames or not {"image", "caption"} <= set(reader.fieldnames):
                raise ValueError(f"{path}: expected a tab-separated token file or a CSV with columns image,caption")
            for row in reader:
                caps.setdefault(row["image"], []).append(" ".join(row["caption"].split()))
    return caps, splits


def load_flickr8k(
    root: str | Path,
    split: str = "test",
    *,
    captions_file: str | Path | None = None,
    image_dir: str | Path | None = None,
    split_dir: str | Path | None = None,
    seed: int = 0,
) -> RetrievalData:
    """Flickr8k from its original layout under ``root``.

    * Captions: ``Flickr8k.token.txt`` (``<name>#<k>\\t<caption>``), the Kaggle ``captions.txt`` CSV
      (``image,caption``), or Karpathy's ``dataset_flickr8k.json``; the first one found in ``root``
      unless ``captions_file`` is given.
    * Images: ``Flicker8k_Dataset/`` (the official zip's spelling), ``Flickr8k_Dataset/``, ``Images/`` or
      ``images/`` under ``root``, or ``image_dir``.
    * Split: ``Flickr_8k.{train,dev,test}Images.txt`` in ``split_dir`` (default ``root``); else the JSON's
      ``split`` field; else :func:`seeded_split` over the sorted image names (1000 test / 1000 val) with
      ``seed``, announced by a warning (it is not the official split).

    Captions whose image file is missing are dropped with a warning (the official token file names a
    non-existent ``2258277193_586949ec62.jpg.1``). Matching convention ``"image"``.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"Flickr8k root folder not found: {root}")
    cap_path, img_dir = _flickr_files(root, captions_file, image_dir)
    caps, json_splits = _read_flickr_captions(cap_path)
    present = {p.name for p in img_dir.iterdir() if p.is_file()}
    missing = sorted(n for n in caps if n not in present)
    if missing:
        n_caps = sum(len(caps[n]) for n in missing)
        warnings.warn(
            f"Flickr8k: dropping {n_caps} captions of {len(missing)} images missing from {img_dir} "
            f"(e.g. {missing[0]!r})",
            stacklevel=2,
        )
        for n in missing:
            del caps[n]
    want = _norm_split(split)
    names = _flickr_split_names(caps, json_splits, want, root, split_dir, seed)
    store = FileImageStore([img_dir / n for n in names])
    return _image_matched(f"flickr8k/{want}", store, names, [caps[n] for n in names])


def _flickr_files(root: Path, captions_file: str | Path | None, image_dir: str | Path | None) -> tuple[Path, Path]:
    """The caption file and the image folder: the given ones, else the first known name found under ``root``."""
    if captions_file is None:
        found = [root / f for f in _FLICKR_CAPTION_FILES if (root / f).is_file()]
        if not found:
            raise FileNotFoundError(f"no Flickr8k caption file in {root}; expected one of {_FLICKR_CAPTION_FILES}")
        cap_path = found[0]
    else:
        cap_path = _require_file(Path(captions_file), "Flickr8k caption file")
    if image_dir is None:
        dirs = [root / d for d in _FLICKR_IMAGE_DIRS if (root / d).is_dir()]
        if not dirs:
            raise FileNotFoundError(f"no Flickr8k image folder in {root}; expected one of {_FLICKR_IMAGE_DIRS}")
        return cap_path, dirs[0]
    img_dir = Path(image_dir)
    if not img_dir.is_dir():
        raise FileNotFoundError(f"Flickr8k image folder not found: {img_dir}")
    return cap_path, img_dir


def _flickr_split_names(
    caps: dict[str, list[str]],
    json_splits: dict[str, str],
    want: str,
    root: Path,
    split_dir: str | Path | None,
    seed: int,
) -> list[str]:
    """Image names of split ``want``: the official split file, else the JSON's split, else a seeded split."""
    sdir = Path(split_dir) if split_dir is not None else root
    split_files = {k: sdir / v for k, v in _FLICKR_SPLIT_FILES.items()}
    if split_files[want].is_file():
        listed = [ln.strip() for ln in split_files[want].read_text(encoding="utf-8").splitlines() if ln.strip()]
        absent = [n for n in listed if n not in caps]
        if absent:
            warnings.warn(
                f"Flickr8k: {len(absent)} names of {split_files[want].name} have no image/captions "
                f"(e.g. {absent[0]!r}); skipped",
                stacklevel=3,
            )
        return [n for n in listed if n in caps]
    if json_splits:
        return sorted(n for n in caps if json_splits.get(n) == want)
    if split_dir is not None:
        raise FileNotFoundError(f"split file not found: {split_files[want]}")
    warnings.warn(
        f"Flickr8k: no split files in {sdir}; using a seeded random split (seed {seed}), which is not the official one",
        stacklevel=3,
    )
    allnames = sorted(caps)
    code = seeded_split(
        len(allnames), seed=seed, n_test=min(1000, len(allnames) // 4), n_val=min(1000, len(allnames) // 4)
    )
    target = {"train": 0, "val": 1, "test": 2}[want]
    return [n for n, c in zip(allnames, code) if c == target]


# ----------------------------------------------------------------------------------------------------------
# CUHK-PEDES
# ----------------------------------------------------------------------------------------------------------

_CUHK_FILES = ("reid_raw.json", "caption_all.json")


def load_cuhk_pedes(
    root: str | Path,
    split: str = "test",
    *,
    annotations: str | Path | None = None,
    image_dir: str | Path | None = None,
    n_val_ids: int = 1000,
    n_test_ids: int = 1000,
    check_images: bool = True,
) -> RetrievalData:
    """CUHK-PEDES from ``root/reid_raw.json`` (or ``caption_all.json``) with images in ``root/imgs/``.

    The annotation file is a JSON list of records ``{"split": "train"|"val"|"test", "captions": [...],
    "file_path": "CUHK01/0363004.png", "id": <person id>}``. With ``reid_raw.json`` the ``split`` field is
    used (the standard split by person id: 11,003 / 1,000 / 1,000 ids). ``caption_all.json`` has no split
    field; then the persons are ordered by first appearance and the *last* ``n_test_ids`` are test, the
    ``n_val_ids`` before them val, the rest train (the same id split). Person ids are remapped to
    ``0 .. C-1`` within the split (the class indices CMPC needs); ``label_names`` keeps the originals.
    Records of the same ``file_path`` are merged into one gallery image (the gallery is deduplicated).
    Matching convention ``"identity"``: any image / caption of the same person is a hit.
    """
    root = Path(root)
    if annotations is None:
        cands = [root / f for f in _CUHK_FILES if (root / f).is_file()]
        if not cands:
            raise FileNotFoundError(
                f"no CUHK-PEDES annotation file in {root}; expected one of {_CUHK_FILES} "
                "(CUHK-PEDES is licence-gated: request it from its authors)"
            )
        ann = cands[0]
    else:
        ann = _require_file(Path(annotations), "CUHK-PEDES annotation file")
    img_dir = Path(image_dir) if image_dir is not None else root / "imgs"
    records = json.loads(ann.read_text(encoding="utf-8"))
    if not isinstance(records, list):
        raise ValueError(f"{ann}: expected a JSON list of records")
    want = _norm_split(split)
    keep = _cuhk_split_records(records, want, n_val_ids, n_test_ids, ann)
    if not keep:
        raise ValueError(f"{ann}: no records in split {want!r}")
    paths, img_pid, caps, cap_img = _cuhk_gallery(keep, ann)
    if check_images:
        absent = [p for p in paths if not (img_dir / p).is_file()]
        if absent:
            raise FileNotFoundError(
                f"CUHK-PEDES: {len(absent)} of {len(paths)} images missing under {img_dir} (e.g. {absent[0]})"
            )
    uniq, inv = np.unique(np.asarray(img_pid), return_inverse=True)
    img_labels = inv.astype(np.int64)
    cap_img_arr = np.asarray(cap_img, dtype=np.int64)
    return RetrievalData(
        name=f"cuhk_pedes/{want}",
        images=FileImageStore([img_dir / p for p in paths]),
        image_names=paths,
        image_labels=img_labels,
        captions=caps,
        caption_labels=img_labels[cap_img_arr],
        caption_image=cap_img_arr,
        match="identity",
        label_names=[str(int(u)) for u in uniq],
    )


def _cuhk_split_records(
    records: list[dict[str, Any]], want: str, n_val_ids: int, n_test_ids: int, ann: Path
) -> list[dict[str, Any]]:
    """The records of split ``want``: by their ``split`` field, else by person id in order of appearance."""
    if any("split" in r for r in records):
        return [r for r in records if _norm_split(r.get("split", "train")) == want]
    order: list[int] = []
    seen: set[int] = set()
    for r in records:
        pid = int(r["id"])
        if pid not in seen:
            seen.add(pid)
            order.append(pid)
    if n_val_ids + n_test_ids >= len(order):
        raise ValueError(f"{ann}: {len(order)} persons cannot hold {n_val_ids} val + {n_test_ids} test ids")
    cut_t = len(order) - n_test_ids
    cut_v = cut_t - n_val_ids
    chosen = set({"train": order[:cut_v], "val": order[cut_v:cut_t], "test": order[cut_t:]}[want])
    return [r for r in records if int(r["id"]) in chosen]


def _cuhk_gallery(keep: list[dict[str, Any]], ann: Path) -> tuple[list[str], list[int], list[str], list[int]]:
    """Deduplicated image paths with their person ids, and every caption with the index of its image."""
    paths: list[str] = []
    path_index: dict[str, int] = {}
    img_pid: list[int] = []
    caps: list[str] = []
    cap_img: list[int] = []
    for r in keep:
        fp = str(r["file_path"])
        if fp not in path_index:
            path_index[fp] = len(paths)
            paths.append(fp)
            img_pid.append(int(r["id"]))
        elif img_pid[path_index[fp]] != int(r["id"]):
            raise ValueError(f"{ann}: {fp} appears with two person ids")
        for c in r.get("captions", []):
            caps.append(" ".join(str(c).split()))
            cap_img.append(path_index[fp])
    return paths, img_pid, caps, cap_img


# ----------------------------------------------------------------------------------------------------------
# generic captions file
# ----------------------------------------------------------------------------------------------------------


def _rows_from_file(path: Path) -> list[dict]:
    if path.suffix in (".jsonl", ".json"):
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".json" and text.lstrip().startswith("["):
            return list(json.loads(text))
        return [json.loads(ln) for ln in text.splitlines() if ln.strip()]
    with path.open(encoding="utf-8", newline="") as fh:
        sample = fh.read(4096)
        fh.seek(0)
        delim = "\t" if sample.count("\t") > sample.count(",") else ","
        return list(csv.DictReader(fh, delimiter=delim))


def load_captions_file(
    path: str | Path,
    image_root: str | Path | None = None,
    split: str | None = None,
    *,
    image_key: str = "image",
    caption_key: str = "caption",
    split_key: str = "split",
    label_key: str | None = None,
    check_images: bool = True,
) -> RetrievalData:
    """A generic captions file: CSV/TSV with a header, JSON lines (``.jsonl``) or a JSON list of objects.

    Each row is one (image, caption) pair: ``{image_key: relative/path.jpg, caption_key: "..."}`` and
    optionally a split column (rows are filtered on it when ``split`` is given) and a label column. Rows
    of the same image are grouped; the gallery is the unique images in first-appearance order. Without a
    label column (``label_key=None`` and no ``label``/``id`` column) the convention is ``"image"``; with
    one it is ``"identity"`` (labels remapped to ``0 .. C-1``). Paths are resolved against ``image_root``
    (default: the file's folder).
    """
    path = _require_file(Path(path), "captions file")
    rows = _rows_from_file(path)
    if not rows:
        raise ValueError(f"{path}: no rows")
    cols = set(rows[0])
    for key in (image_key, caption_key):
        if key not in cols:
            raise ValueError(f"{path}: column {key!r} missing (have {sorted(cols)})")
    if label_key is None:
        label_key = next((k for k in ("label", "id", "person_id") if k in cols), None)
    if split is not None:
        if split_key not in cols:
            raise ValueError(f"{path}: split {split!r} requested but there is no {split_key!r} column")
        want = _norm_split(split)
        rows = [r for r in rows if _norm_split(r[split_key]) == want]
        if not rows:
            raise ValueError(f"{path}: no rows in split {want!r}")
    base = Path(image_root) if image_root is not None else path.parent
    names: list[str] = []
    index: dict[str, int] = {}
    raw_label: list[str] = []
    caps: list[str] = []
    cap_img: list[int] = []
    for r in rows:
        name = str(r[image_key])
        if name not in index:
            index[name] = len(names)
            names.append(name)
            raw_label.append(str(r[label_key]) if label_key else name)
        caps.append(" ".join(str(r[caption_key]).split()))
        cap_img.append(index[name])
    if check_images:
        absent = [n for n in names if not (base / n).is_file()]
        if absent:
            raise FileNotFoundError(
                f"{len(absent)} of {len(names)} images of {path} missing under {base} (e.g. {absent[0]})"
            )
    store = FileImageStore([base / n for n in names])
    if label_key is None:
        per_image: list[list[str]] = [[] for _ in names]
        for c, i in zip(caps, cap_img):
            per_image[i].append(c)
        return _image_matched(f"captions/{split or 'all'}", store, names, per_image)
    uniq, inv = np.unique(np.asarray(raw_label), return_inverse=True)
    img_labels = inv.astype(np.int64)
    cap_img_arr = np.asarray(cap_img, dtype=np.int64)
    return RetrievalData(
        name=f"captions/{split or 'all'}",
        images=store,
        image_names=names,
        image_labels=img_labels,
        captions=caps,
        caption_labels=img_labels[cap_img_arr],
        caption_image=cap_img_arr,
        match="identity",
        label_names=[str(u) for u in uniq],
    )


LoaderFn = Callable[..., RetrievalData]


# ----------------------------------------------------------------------------------------------------------
# synthetic
# ----------------------------------------------------------------------------------------------------------

_SYN_COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (50, 80, 220), "yellow": (230, 210, 40)}
_SYN_SHAPES = ("square", "disc", "bar")
_SYN_PLACES = ("left", "right", "top", "bottom")
_SYN_TEMPLATES = (
    "a {c} {s} on the {p}",
    "a picture with a {c} {s} at the {p}",
    "{c} {s} placed {p} on a grey background",
)


def make_synthetic(
    n_images: int = 48, size: int = 16, captions_per_image: int = 3, seed: int = 0, name: str = "synthetic"
) -> RetrievalData:
    """A tiny image-caption set for tests: one coloured shape per image, described by templated captions.

    Each image draws a (colour, shape, place) triple with a little noise; its captions fill the templates
    with that triple. Labels are image indices (``match="image"``), so several images may share a
    description, like near-duplicate photos.
    """
    rng = np.random.default_rng(seed)
    colours = list(_SYN_COLOURS)
    imgs = np.empty((n_images, size, size, 3), np.uint8)
    per_image: list[list[str]] = []
    h = size // 2
    for i in range(n_images):
        c, s, p = colours[rng.integers(4)], _SYN_SHAPES[rng.integers(3)], _SYN_PLACES[rng.integers(4)]
        canvas = np.full((size, size, 3), 128.0) + rng.normal(0, 8, (size, size, 3))
        yy, xx = np.mgrid[:size, :size]
        cy, cx = {"left": (h, h // 2), "right": (h, h + h // 2), "top": (h // 2, h), "bottom": (h + h // 2, h)}[p]
        r = max(2, size // 5)
        if s == "square":
            m = (abs(yy - cy) <= r) & (abs(xx - cx) <= r)
        elif s == "disc":
            m = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        else:
            m = (abs(yy - cy) <= max(1, r // 2)) & (abs(xx - cx) <= r + 1)
        canvas[m] = _SYN_COLOURS[c]
        imgs[i] = np.clip(canvas, 0, 255).astype(np.uint8)
        per_image.append(
            [_SYN_TEMPLATES[k % len(_SYN_TEMPLATES)].format(c=c, s=s, p=p) for k in range(captions_per_image)]
        )
    names = [f"syn_{i:05d}" for i in range(n_images)]
    return _image_matched(name, ArrayImageStore(imgs), names, per_image)
