"""Dataset readers: synthetic files written to tmp_path and read back exactly; real data when available."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import tarfile
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sinkhorn_attacks import data
from sinkhorn_attacks.data import (
    DatasetError,
    DatasetNotFoundError,
    DownloadError,
    cifar,
    idx,
    load_dataset,
    read_idx,
)

RNG = np.random.default_rng(0)


def idx_bytes(a: np.ndarray) -> bytes:
    codes = {np.dtype(np.uint8): 0x08, np.dtype(">i2"): 0x0B, np.dtype(">f4"): 0x0D}
    header = bytes([0, 0, codes[a.dtype], a.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in a.shape)
    return header + a.tobytes()


def write_idx(path: Path, a: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = idx_bytes(a)
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)


def as_uint8(t: torch.Tensor) -> np.ndarray:
    return (t * 255).round().to(torch.uint8).numpy()


# --------------------------------------------------------------------------- IDX / MNIST / Fashion-MNIST


@pytest.mark.parametrize("gz_images, gz_labels", [(True, False), (False, True), (True, True), (False, False)])
def test_mnist_idx_round_trip(tmp_path, gz_images, gz_labels):
    x = RNG.integers(0, 256, (7, 28, 28), dtype=np.uint8)
    y = RNG.integers(0, 10, 7).astype(np.uint8)
    write_idx(tmp_path / "mnist" / ("t10k-images-idx3-ubyte" + ".gz" * gz_images), x)
    write_idx(tmp_path / "mnist" / ("t10k-labels-idx1-ubyte" + ".gz" * gz_labels), y)
    d = load_dataset("mnist", "test", data_dir=tmp_path, download=False)
    assert d.images.shape == (7, 1, 28, 28) and d.images.dtype == torch.float32
    assert d.labels.dtype == torch.int64
    assert np.array_equal(as_uint8(d.images[:, 0]), x)
    assert d.labels.tolist() == y.tolist()
    assert d.classes == [str(i) for i in range(10)] and d.name == "mnist" and d.split == "test"
    part = load_dataset("mnist", "test", data_dir=tmp_path, limit=3, offset=2, download=False)
    assert torch.equal(part.images, d.images[2:5]) and torch.equal(part.labels, d.labels[2:5])


def test_read_idx_other_dtypes_and_layouts(tmp_path):
    a = RNG.integers(-300, 300, (3, 4, 5)).astype(">i2")
    write_idx(tmp_path / "a.idx", a)
    got = read_idx(tmp_path / "a.idx")
    assert got.dtype.byteorder in ("=", "|", "<") and np.array_equal(got, a)
    f = RNG.random((2, 3)).astype(">f4")
    write_idx(tmp_path / "f.idx.gz", f)
    assert np.array_equal(read_idx(tmp_path / "f.idx.gz"), f)
    # torchvision's MNIST/raw layout and the "t10k-images.idx3-ubyte" spelling
    x = RNG.integers(0, 256, (2, 28, 28), dtype=np.uint8)
    write_idx(tmp_path / "MNIST" / "raw" / "train-images.idx3-ubyte", x)
    write_idx(tmp_path / "MNIST" / "raw" / "train-labels.idx1-ubyte", np.array([3, 4], np.uint8))
    d = load_dataset("mnist", "train", data_dir=tmp_path, download=False)
    assert d.labels.tolist() == [3, 4] and np.array_equal(as_uint8(d.images[:, 0]), x)


def test_idx_truncated_and_corrupt(tmp_path):
    x = RNG.integers(0, 256, (4, 28, 28), dtype=np.uint8)
    raw = idx_bytes(x)
    (tmp_path / "cut").write_bytes(raw[:-10])
    with pytest.raises(DatasetError, match="truncated or corrupt") as err:
        read_idx(tmp_path / "cut")
    assert "cut" in str(err.value)
    (tmp_path / "cut.gz").write_bytes(gzip.compress(raw)[:-50])
    with pytest.raises(DatasetError, match="cut.gz"):
        read_idx(tmp_path / "cut.gz")
    (tmp_path / "junk").write_bytes(b"PK\x03\x04 not an idx file")
    with pytest.raises(DatasetError, match="not an IDX file"):
        read_idx(tmp_path / "junk")
    (tmp_path / "junk.gz").write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(DatasetError):
        read_idx(tmp_path / "junk.gz")


def test_fashion_mnist_is_kept_apart_from_mnist(tmp_path):
    x = RNG.integers(0, 256, (3, 28, 28), dtype=np.uint8)
    write_idx(tmp_path / "fashion-mnist" / "t10k-images-idx3-ubyte.gz", x)
    write_idx(tmp_path / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz", np.array([9, 2, 1], np.uint8))
    d = load_dataset("fmnist", "test", data_dir=tmp_path, download=False)
    assert d.name == "fashion-mnist" and d.classes[9] == "Ankle boot"
    assert np.array_equal(as_uint8(d.images[:, 0]), x) and d.labels.tolist() == [9, 2, 1]
    with pytest.raises(DatasetNotFoundError, match="t10k-images-idx3-ubyte"):
        load_dataset("mnist", "test", data_dir=tmp_path, download=False)
    # a folder named like the dataset can be passed directly
    d2 = load_dataset("fashion-mnist", "test", data_dir=tmp_path / "fashion-mnist", download=False)
    assert torch.equal(d2.images, d.images)


def test_npz_round_trip(tmp_path):
    x = RNG.integers(0, 256, (6, 28, 28), dtype=np.uint8)
    y = np.arange(6, dtype=np.uint8)
    np.savez(tmp_path / "mnist_train.npz", x=x, y=y)
    d = load_dataset("mnist", "train", data_dir=tmp_path, download=False)
    assert np.array_equal(as_uint8(d.images[:, 0]), x) and d.labels.tolist() == list(range(6))
    assert d.source.endswith("mnist_train.npz")
    xc = RNG.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    np.savez(tmp_path / "cifar10_test.npz", x=xc, y=np.array([3, 8, 8, 0, 6], np.uint8))
    c = load_dataset("cifar10", "test", data_dir=tmp_path, download=False)
    assert c.images.shape == (5, 3, 32, 32) and c.images.is_contiguous()
    assert np.array_equal(as_uint8(c.images).transpose(0, 2, 3, 1), xc)
    assert c.classes[3] == "cat"
    np.savez(tmp_path / "cifar10_train_20k.npz", x=xc, y=np.zeros(5, np.uint8))
    with pytest.warns(UserWarning, match="20,000"):
        assert len(load_dataset("cifar10", "train", data_dir=tmp_path, download=False)) == 5


def test_npz_corrupt_and_wrong_keys(tmp_path):
    np.savez(tmp_path / "mnist_test.npz", images=np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(DatasetError, match=r"missing key.*'x'"):
        load_dataset("mnist", data_dir=tmp_path, download=False)
    full = io.BytesIO()
    np.savez(full, x=np.zeros((2, 28, 28), np.uint8), y=np.zeros(2, np.uint8))
    (tmp_path / "mnist_test.npz").write_bytes(full.getvalue()[:100])
    with pytest.raises(DatasetError, match="mnist_test.npz"):
        load_dataset("mnist", data_dir=tmp_path, download=False)


# --------------------------------------------------------------------------- CIFAR-10 pickle batches


def write_cifar_batches(folder: Path, n: int = 4) -> dict[str, tuple[np.ndarray, list[int]]]:
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for k, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        x = RNG.integers(0, 256, (n, 3072), dtype=np.uint8)
        y = [(k + j) % 10 for j in range(n)]
        batch = {
            b"batch_label": name.encode(),
            b"labels": y,
            b"data": x,
            b"filenames": [b"f%d.png" % j for j in range(n)],
        }
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
        out[name] = (x, y)
    return out


def test_cifar_batches_round_trip(tmp_path):
    written = write_cifar_batches(tmp_path / "cifar-10-batches-py")
    test = load_dataset("cifar-10", "test", data_dir=tmp_path, download=False)
    x, y = written["test_batch"]
    assert np.array_equal(as_uint8(test.images).reshape(len(y), -1), x) and test.labels.tolist() == y
    train = load_dataset("cifar10", "train", data_dir=tmp_path, download=False)
    xs = np.concatenate([written[f"data_batch_{i}"][0] for i in range(1, 6)])
    assert len(train) == 20 and np.array_equal(as_uint8(train.images).reshape(20, -1), xs)
    assert train.labels.tolist() == sum((written[f"data_batch_{i}"][1] for i in range(1, 6)), [])


def test_cifar_batch_written_by_old_numpy(tmp_path):
    x = RNG.integers(0, 256, (2, 3072), dtype=np.uint8)
    raw = pickle.dumps({b"data": x, b"labels": [4, 5]}, protocol=2)
    (tmp_path / "test_batch").write_bytes(raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    got, labels = data.read_cifar_batch(tmp_path / "test_batch")
    assert np.array_equal(got.reshape(2, -1), x) and labels.tolist() == [4, 5]


def test_cifar_batch_refuses_foreign_pickles(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.getcwd, ())

    with open(tmp_path / "test_batch", "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": []}, f)
    with pytest.raises(DatasetError, match="refusing to load"):
        data.read_cifar_batch(tmp_path / "test_batch")
    (tmp_path / "test_batch").write_bytes(b"\x80\x02}q\x00(")  # truncated pickle
    with pytest.raises(DatasetError, match="test_batch"):
        data.read_cifar_batch(tmp_path / "test_batch")


def test_cifar_download_from_local_archive(tmp_path, monkeypatch):
    src = tmp_path / "src"
    written = write_cifar_batches(src / "cifar-10-batches-py", n=2)
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    monkeypatch.setattr(cifar, "CIFAR10_URL", archive.as_uri())
    monkeypatch.setattr(cifar, "CIFAR10_SHA256", hashlib.sha256(archive.read_bytes()).hexdigest())
    root = tmp_path / "data"
    d = load_dataset("cifar10", "test", data_dir=root)
    assert d.labels.tolist() == written["test_batch"][1]
    assert (root / "cifar-10-batches-py" / "data_batch_5").is_file()
    assert not (root / "cifar-10-python.tar.gz").exists()


# --------------------------------------------------------------------------- image folders, Tiny ImageNet


def png_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def test_image_folder(tmp_path):
    imgs = {}
    for c in ("zebra", "ant"):
        (tmp_path / c).mkdir()
        for j in range(2):
            a = RNG.integers(0, 256, (5, 4, 3), dtype=np.uint8)
            (tmp_path / c / f"{j}.png").write_bytes(png_bytes(a))
            imgs[(c, j)] = a
    (tmp_path / "ant" / "notes.txt").write_text("not an image")
    d = data.load_image_folder(tmp_path)
    assert d.classes == ["ant", "zebra"] and d.labels.tolist() == [0, 0, 1, 1]
    assert d.images.shape == (4, 3, 5, 4)
    expected = np.stack([imgs[("ant", 0)], imgs[("ant", 1)], imgs[("zebra", 0)], imgs[("zebra", 1)]])
    assert np.array_equal(as_uint8(d.images).transpose(0, 2, 3, 1), expected)
    # grayscale folder -> one channel; load_dataset("folder") picks root/<split>/ when present
    g = RNG.integers(0, 256, (6, 6), dtype=np.uint8)
    (tmp_path / "gray" / "test" / "one").mkdir(parents=True)
    (tmp_path / "gray" / "test" / "one" / "a.png").write_bytes(png_bytes(g))
    dg = load_dataset("folder", "test", data_dir=tmp_path / "gray")
    assert dg.images.shape == (1, 1, 6, 6) and np.array_equal(as_uint8(dg.images[0, 0]), g)
    (tmp_path / "ant" / "bad.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(DatasetError, match="bad.png"):
        data.load_image_folder(tmp_path)


def make_tiny_imagenet(root: Path, wnids: list[str], per_class: int = 3, n_val: int = 5):
    """Tiny-ImageNet-style folder; the .JPEG files hold PNG bytes so that decoding is exact."""
    root.mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    train = {}
    for w in wnids:
        (root / "train" / w / "images").mkdir(parents=True)
        for i in range(per_class):
            a = RNG.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            (root / "train" / w / "images" / f"{w}_{i}.JPEG").write_bytes(png_bytes(a))
            train[(w, i)] = a
    (root / "val" / "images").mkdir(parents=True)
    val, lines = [], []
    for k in range(n_val):
        a = RNG.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        w = wnids[k % len(wnids)]
        (root / "val" / "images" / f"val_{k}.JPEG").write_bytes(png_bytes(a))
        lines.append(f"val_{k}.JPEG\t{w}\t0\t0\t7\t7")
        val.append((a, w))
    (root / "val" / "val_annotations.txt").write_text("\n".join(reversed(lines)) + "\n")
    return train, val


def test_tiny_imagenet_folder(tmp_path):
    wnids = ["n09999999", "n01443537", "n05555555"]  # deliberately unsorted in wnids.txt
    train, val = make_tiny_imagenet(tmp_path / "tiny-imagenet-200", wnids, per_class=11)
    classes = sorted(wnids)
    v = load_dataset("tiny-imagenet", "test", data_dir=tmp_path)
    assert v.split == "val" and v.classes == classes and v.images.shape == (5, 3, 8, 8)
    for k, (a, w) in enumerate(val):
        assert np.array_equal(as_uint8(v.images[k]).transpose(1, 2, 0), a)
        assert v.labels[k] == classes.index(w)
    t = load_dataset("tinyimagenet", "train", data_dir=tmp_path, limit=12, offset=10)
    # rows are grouped by sorted wnid, numeric order within a class (10 after 9, not after 1)
    assert t.labels.tolist() == [0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]
    assert np.array_equal(as_uint8(t.images[0]).transpose(1, 2, 0), train[(classes[0], 10)])
    assert np.array_equal(as_uint8(t.images[1]).transpose(1, 2, 0), train[(classes[1], 0)])


def test_tiny_imagenet_npz_with_real_jpeg(tmp_path):
    blobs, decoded = [], []
    for _ in range(4):
        a = RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="JPEG", quality=90)
        blobs.append(buf.getvalue())
        decoded.append(np.asarray(Image.open(io.BytesIO(blobs[-1])).convert("RGB")))
    gray = io.BytesIO()
    Image.fromarray(RNG.integers(0, 256, (64, 64), dtype=np.uint8)).save(gray, format="JPEG")
    blobs.append(gray.getvalue())
    decoded.append(np.asarray(Image.open(io.BytesIO(blobs[-1])).convert("RGB")))
    offsets = np.concatenate([[0], np.cumsum([len(b) for b in blobs])]).astype(np.int64)
    jpeg = np.frombuffer(b"".join(blobs), np.uint8)
    wnids = np.array(["n01", "n02", "n03"])
    np.savez(tmp_path / "tinyimagenet_val.npz", jpeg=jpeg, offsets=offsets, y=np.array([0, 2, 1, 1, 0]), wnids=wnids)
    d = load_dataset("tiny-imagenet", "val", data_dir=tmp_path, offset=1, limit=4)
    assert d.classes == ["n01", "n02", "n03"] and d.labels.tolist() == [2, 1, 1, 0]
    assert np.array_equal(as_uint8(d.images).transpose(0, 2, 3, 1), np.stack(decoded[1:]))
    np.savez(tmp_path / "tinyimagenet_val.npz", jpeg=jpeg, offsets=offsets[:-1], y=np.zeros(5, int), wnids=wnids)
    with pytest.raises(DatasetError, match="offsets"):
        load_dataset("tiny-imagenet", "val", data_dir=tmp_path)


# --------------------------------------------------------------------------- digits, names, errors, downloads


def test_digits():
    te, tr = load_dataset("digits", "test"), load_dataset("digits", "train")
    assert te.images.shape == (450, 1, 8, 8) and len(tr) == 1347
    assert 0.0 <= float(te.images.min()) and float(te.images.max()) <= 1.0
    assert torch.equal(load_dataset("digits", "test").images, te.images)  # deterministic
    every = load_dataset("digits", "all")
    te_idx = data.digits.digits_split_indices(every.labels.numpy())[1]
    assert torch.equal(every.images[te_idx], te.images)
    assert np.bincount(te.labels.numpy()).min() >= 44  # stratified: ~45 per class
    assert (every.images * 16 - (every.images * 16).round()).abs().max() < 1e-6


def test_unknown_name_and_bad_slice(tmp_path):
    with pytest.raises(ValueError, match="known: mnist, fashion-mnist, cifar10"):
        load_dataset("imagenet")
    with pytest.raises(ValueError, match="offset"):
        load_dataset("digits", offset=10_000)
    with pytest.raises(ValueError, match="split"):
        load_dataset("mnist", "validation", data_dir=tmp_path)
    assert "mnist" in data.names()


def test_data_dir_resolution(tmp_path, monkeypatch):
    monkeypatch.setenv("SINKHORN_ATTACKS_DATA", str(tmp_path / "env"))
    assert data.resolve_data_dir() == tmp_path / "env"
    assert data.resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv("SINKHORN_ATTACKS_DATA")
    monkeypatch.setenv("SINKHORN_ATTACKS_CACHE", str(tmp_path / "cache"))
    assert data.resolve_data_dir() == tmp_path / "cache" / "data"


def test_offline_download_failure_says_where_to_put_files(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr("urllib.request.urlopen", offline)
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("mnist", "test", data_dir=tmp_path)
    msg = str(err.value)
    assert "t10k-images-idx3-ubyte" in msg and str(tmp_path / "mnist") in msg and "Name or service" in msg
    assert not any(tmp_path.rglob("*.part"))
    with pytest.raises(DatasetNotFoundError, match="cifar-10-batches-py"):
        load_dataset("cifar10", "test", data_dir=tmp_path)


def test_mnist_download_checked_against_sha256(tmp_path, monkeypatch):
    src = tmp_path / "mirror"
    x = RNG.integers(0, 256, (3, 28, 28), dtype=np.uint8)
    write_idx(src / "t10k-images-idx3-ubyte.gz", x)
    write_idx(src / "t10k-labels-idx1-ubyte.gz", np.array([1, 2, 3], np.uint8))
    sums = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in src.iterdir()}
    monkeypatch.setattr(idx, "MNIST_URLS", ("file:///nonexistent/", src.as_uri() + "/"))
    monkeypatch.setattr(idx, "MNIST_SHA256", sums)
    d = load_dataset("mnist", "test", data_dir=tmp_path / "data")
    assert d.labels.tolist() == [1, 2, 3] and np.array_equal(as_uint8(d.images[:, 0]), x)
    assert (tmp_path / "data" / "mnist" / "t10k-images-idx3-ubyte.gz").is_file()


def test_download_helper_checksum_and_atomicity(tmp_path):
    src = tmp_path / "blob.bin"
    src.write_bytes(b"hello checkpoint")
    good = hashlib.sha256(b"hello checkpoint").hexdigest()
    dest = tmp_path / "out" / "blob.bin"
    assert data.download(src.as_uri(), dest, good) == dest and dest.read_bytes() == b"hello checkpoint"
    assert data.git_blob_sha1(dest) == hashlib.sha1(b"blob 16\0hello checkpoint").hexdigest()
    dest2 = tmp_path / "out" / "other.bin"
    with pytest.raises(DownloadError, match="sha256 mismatch"):
        data.download(src.as_uri(), dest2, "0" * 64)
    assert not dest2.exists() and sorted(p.name for p in dest.parent.iterdir()) == ["blob.bin"]


# --------------------------------------------------------------------------- the real shared files


@pytest.fixture
def real_data_dir() -> Path:
    env = os.environ.get("SINKHORN_ATTACKS_DATA")
    if not env:
        pytest.skip("set SINKHORN_ATTACKS_DATA to the folder with mnist_test.npz etc. (e.g. ../shared/data)")
    return Path(env)


@pytest.mark.data
def test_real_mnist_and_cifar(real_data_dir):
    if not (real_data_dir / "mnist_test.npz").is_file():
        pytest.skip(f"no mnist_test.npz in {real_data_dir}")
    m = load_dataset("mnist", "test", data_dir=real_data_dir, download=False)
    assert m.images.shape == (10000, 1, 28, 28)
    assert m.labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert np.bincount(m.labels.numpy()).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    tr = load_dataset("mnist", "train", data_dir=real_data_dir, limit=10, download=False)
    assert tr.labels.tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    c = load_dataset("cifar10", "test", data_dir=real_data_dir, download=False)
    assert c.images.shape == (10000, 3, 32, 32)
    assert c.labels[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
    assert as_uint8(c.images[0, :, 0, 0]).tolist() == [158, 112, 49]
    assert np.allclose(c.images.mean(dim=(0, 2, 3)).numpy(), [0.4942, 0.4851, 0.4504], atol=1e-4)


@pytest.mark.data
def test_real_tiny_imagenet(real_data_dir):
    if not (real_data_dir / "tinyimagenet_val.npz").is_file():
        pytest.skip(f"no tinyimagenet_val.npz in {real_data_dir}")
    v = load_dataset("tiny-imagenet", "val", data_dir=real_data_dir, limit=50, download=False)
    assert v.images.shape == (50, 3, 64, 64) and len(v.classes) == 200
    assert v.classes == sorted(v.classes) and v.classes[v.labels[0]] == "n03444034"  # val_0.JPEG n03444034
    with pytest.warns(UserWarning, match="100 of the 500"):
        t = load_dataset("tiny-imagenet", "train", data_dir=real_data_dir, offset=100, limit=3, download=False)
    assert t.labels.tolist() == [1, 1, 1]


@pytest.mark.data
def test_real_fashion_mnist_from_debian():
    if not (idx.DEBIAN_FASHION_DIR / "t10k-labels-idx1-ubyte.gz").is_file():
        pytest.skip("apt-get install dataset-fashion-mnist to test the Debian copy")
    d = data.load_fashion_mnist("test", data_dir="/nonexistent", limit=10, download=False)
    assert d.labels.tolist() == [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]
