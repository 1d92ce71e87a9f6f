"""Model zoo: architectures, checkpoint layouts, checksums, resolution order, downloads, CLI; real checkpoints
when ``SINKHORN_ATTACKS_MODELS`` is set."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch

from sinkhorn_attacks import zoo
from sinkhorn_attacks.cli import zoo as cli_zoo
from sinkhorn_attacks.data import ChecksumError
from sinkhorn_attacks.zoo import registry

# read before the autouse fixture below clears them for the synthetic tests
REAL_MODELS = os.environ.get("SINKHORN_ATTACKS_MODELS")
REAL_DATA = os.environ.get("SINKHORN_ATTACKS_DATA")
REAL_URLOPEN = urllib.request.urlopen  # file:// URLs need no network

REFERENCE_ACC = {  # baselines.md section 5, full 10k test set
    "wong2019-mnist-vanilla": 98.89,
    "wong2019-mnist-adv": 97.28,
    "wong2019-mnist-binarize": 98.86,  # raw input; 98.73 binarized (as zoo.load gives it)
    "wong2019-mnist-robust": 98.20,
}


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """No test reads the user's cache or environment, and none touches the network."""
    monkeypatch.setenv("SINKHORN_ATTACKS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("SINKHORN_ATTACKS_MODELS", raising=False)
    monkeypatch.delenv("SINKHORN_ATTACKS_DATA", raising=False)

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known (tests run offline)")

    monkeypatch.setattr("urllib.request.urlopen", offline)


def random_mnist_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return zoo.mnist_cnn().state_dict()


def fake_entry(monkeypatch, file: Path, name: str = "wong2019-mnist-vanilla", **changes) -> registry.ZooEntry:
    """Replace registry entry ``name`` by one pinned to ``file``'s content."""
    data = file.read_bytes()
    entry = dataclasses.replace(
        registry.REGISTRY[name],
        sha256=hashlib.sha256(data).hexdigest(),
        git_sha1=hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest(),
        size=len(data),
        **changes,
    )
    monkeypatch.setitem(registry.REGISTRY, name, entry)
    return entry


# --------------------------------------------------------------------------- architectures and transforms


def test_mnist_cnn_layout():
    net = zoo.mnist_cnn()
    assert [k for k in net.state_dict()] == [f"{i}.{p}" for i in (0, 2, 5, 7) for p in ("weight", "bias")]
    assert net(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def test_resnet_layouts():
    net = zoo.resnet18_cifar()
    sd = net.state_dict()
    assert sum(p.numel() for p in net.parameters()) == 11_173_962  # kuangliu/pytorch-cifar ResNet18
    assert tuple(sd["conv1.weight"].shape) == (64, 3, 3, 3) and tuple(sd["linear.weight"].shape) == (10, 512)
    assert "layer2.0.shortcut.0.weight" in sd and "layer2.0.shortcut.1.running_var" in sd
    assert not any(k.startswith("layer1.0.shortcut") for k in sd)
    assert net.eval()(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    tiny = zoo.resnet18_tiny().eval()
    assert tiny(torch.rand(2, 3, 64, 64)).shape == (2, 200)
    assert zoo.small_cnn(1, 10, 8)(torch.rand(3, 1, 8, 8)).shape == (3, 10)
    with pytest.raises(ValueError, match="known: mnist_cnn"):
        zoo.build("vgg16")


def test_binarize_straight_through():
    x = torch.tensor([0.2, 0.5, 0.7, 0.49], requires_grad=True)
    y = zoo.Binarize()(x)
    assert y.tolist() == [0.0, 1.0, 1.0, 0.0]
    (y * torch.tensor([1.0, 2.0, 3.0, 4.0])).sum().backward()
    assert x.grad.tolist() == [1.0, 2.0, 3.0, 4.0]  # identity backward
    x2 = x.detach().clone().requires_grad_(True)
    out = zoo.Binarize(straight_through=False)(x2)
    assert not out.requires_grad  # the true gradient is zero: nothing flows


def test_normalize_and_preprocessed():
    norm = zoo.Normalize((0.5, 0.25, 0.0), (0.5, 0.25, 2.0))
    x = torch.rand(2, 3, 4, 4)
    expected = (x - torch.tensor([0.5, 0.25, 0.0]).view(1, 3, 1, 1)) / torch.tensor([0.5, 0.25, 2.0]).view(1, 3, 1, 1)
    assert torch.allclose(norm(x), expected)
    assert norm.state_dict() == {}
    model = zoo.Preprocessed(norm, zoo.resnet18_cifar())
    assert all(k.startswith("net.") for k in model.state_dict())
    with pytest.raises(ValueError):
        zoo.Normalize((0.5,), (0.0,))


# --------------------------------------------------------------------------- checkpoint layouts and errors


def layouts(sd):
    return {
        "plain": sd,
        "state_dict_list": {"state_dict": [sd], "err": torch.tensor(0.0111), "epoch": 19, "sampler_indices": []},
        "state_dict": {"state_dict": sd, "epoch": 3},
        "net_module": {"net": {"module." + k: v for k, v in sd.items()}, "acc": 81.78, "eps": 1.8423, "epoch": 16},
        "model_state_dict": {"model_state_dict": sd},
    }


@pytest.mark.parametrize("layout", ["plain", "state_dict_list", "state_dict", "net_module", "model_state_dict"])
def test_layouts_round_trip(tmp_path, layout):
    sd = random_mnist_state()
    file = tmp_path / f"{layout}.pth"
    torch.save(layouts(sd)[layout], file)
    got = zoo.load_state_dict_any(file)
    assert list(got) == list(sd) and all(torch.equal(got[k], sd[k]) for k in sd)
    assert zoo.load_state_dict_any(layouts(sd)[layout]).keys() == sd.keys()  # an already loaded object
    model = zoo.load(file)  # architecture inferred from the keys
    ref = zoo.mnist_cnn()
    ref.load_state_dict(sd)
    x = torch.rand(3, 1, 28, 28)
    assert not model.training and torch.equal(model(x), ref.eval()(x))
    assert torch.equal(zoo.load(file, arch="mnist_cnn", binarize=True)(x), ref((x >= 0.5).float()))


def test_infer_arch_and_resnet_checkpoint(tmp_path):
    net = zoo.resnet18_tiny(num_classes=7, width=16)
    torch.save({"net": {"module." + k: v for k, v in net.state_dict().items()}}, tmp_path / "t.pth")
    m = zoo.load(tmp_path / "t.pth", mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    assert isinstance(m, zoo.Preprocessed) and m(torch.rand(1, 3, 16, 16)).shape == (1, 7)
    small = zoo.small_cnn(3, 4, 8)
    torch.save(small.state_dict(), tmp_path / "s.pth")
    assert zoo.infer_arch(small.state_dict()) == ("small_cnn", {"in_ch": 3, "n_classes": 4, "size": 8})
    assert zoo.load(tmp_path / "s.pth")(torch.rand(2, 3, 8, 8)).shape == (2, 4)


def test_truncated_file_is_a_clear_error(tmp_path):
    good = tmp_path / "good.pth"
    torch.save({"state_dict": [random_mnist_state()]}, good)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"cut\.pth.*truncated or corrupt"):
        zoo.load_state_dict_any(cut)
    (tmp_path / "page.pth").write_bytes(b"<!DOCTYPE html><html>GitHub</html>")
    with pytest.raises(ValueError, match="HTML page"):
        zoo.load_state_dict_any(tmp_path / "page.pth")
    with pytest.raises(FileNotFoundError, match="nothing.pth"):
        zoo.load_state_dict_any(tmp_path / "nothing.pth")


def test_wrong_layout_keys_and_shapes(tmp_path):
    f = tmp_path / "weird.pth"
    torch.save({"weights": {"a": 1}, "epoch": 2}, f)
    with pytest.raises(ValueError, match=r"weird\.pth: unrecognised checkpoint layout.*'epoch', 'weights'"):
        zoo.load_state_dict_any(f)
    torch.save({"state_dict": [random_mnist_state(), random_mnist_state()]}, f)
    with pytest.raises(ValueError, match="holds 2 state_dicts"):
        zoo.load_state_dict_any(f)
    torch.save(random_mnist_state(), f)
    with pytest.raises(ValueError, match=r"weird\.pth: does not fit the architecture \(ResNet\): missing keys"):
        zoo.load(f, arch="resnet18_cifar")
    sd = random_mnist_state()
    sd["7.weight"] = torch.zeros(5, 100)
    torch.save(sd, f)
    with pytest.raises(ValueError, match=r"shape mismatch \[7\.weight: checkpoint \(5, 100\) vs model \(10, 100\)"):
        zoo.load(f, arch="mnist_cnn")


# --------------------------------------------------------------------------- registry, resolution, downloads


def test_registry_contents():
    expected = {
        "wong2019-mnist-vanilla",
        "wong2019-mnist-adv",
        "wong2019-mnist-binarize",
        "wong2019-mnist-robust",
        "hu2020-mnist-adv",
        "wu2020-mnist-adv-fw",
        "sinkhorn-attacks-mnist-uot",
    }
    assert expected <= set(zoo.names()) and set(zoo.names("mnist")) == expected
    for name in zoo.names():
        e = zoo.info(name)
        bundled = (Path(zoo.__file__).parent / "weights" / e.filename).is_file()
        assert e.pinned and (bundled or e.urls) and all(u.startswith("https://github.com/") for u in e.urls)
        assert e.arch in zoo.ARCHITECTURES
        assert e.sha256 is None or len(e.sha256) == 64
        assert name in e.describe()
    assert zoo.info("wong2019-mnist-vanilla").sha256.startswith("f95e9ca5")
    assert zoo.info("wong2019-mnist-binarize").binarize
    assert zoo.info("wong2019-cifar-adv").mean == zoo.CIFAR10_MEAN
    with pytest.raises(ValueError, match="known: wong2019-mnist-vanilla"):
        zoo.load("wong2019-mnist-nonexistent")
    with pytest.raises(ValueError, match="known: wong2019-mnist-vanilla"):
        zoo.info("nope")


def test_bundled_checkpoint_loads_offline_and_is_verified():
    """The library's own defence ships with the package: found without a models folder or a download."""
    path = zoo.locate("sinkhorn-attacks-mnist-uot", models_dir=None, download=False)
    assert (
        path.parent.name == "weights"
        and hashlib.sha256(path.read_bytes()).hexdigest() == zoo.info("sinkhorn-attacks-mnist-uot").sha256
    )
    x = torch.rand(2, 1, 28, 28)
    assert zoo.load("sinkhorn-attacks-mnist-uot", download=False)(x).shape == (2, 10)


def test_sha256_mismatch_is_refused(tmp_path, monkeypatch):
    models = tmp_path / "models"
    models.mkdir()
    torch.save({"state_dict": [random_mnist_state()]}, models / "wong2019_mnist_vanilla.pth")  # not the real file
    with pytest.raises(ChecksumError, match=r"sha256 mismatch: expected f95e9ca5.*not the published"):
        zoo.load("wong2019-mnist-vanilla", models_dir=models)
    monkeypatch.setenv("SINKHORN_ATTACKS_MODELS", str(models))
    with pytest.raises(ChecksumError):
        zoo.load("wong2019-mnist-vanilla")
    model = zoo.load("wong2019-mnist-vanilla", verify=False)  # explicit opt-out
    assert model(torch.rand(1, 1, 28, 28)).shape == (1, 10)
    with pytest.raises(ChecksumError):
        zoo.load("wong2019-mnist-vanilla", path=models / "wong2019_mnist_vanilla.pth")


def test_offline_download_failure_says_where_to_put_the_file(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        zoo.load("wong2019-mnist-adv", cache_dir=tmp_path / "c")
    msg = str(err.value)
    assert "wong2019_mnist_adv_training.pth" in msg and str(tmp_path / "c") in msg
    assert "SINKHORN_ATTACKS_MODELS" in msg and "Name or service not known" in msg
    assert "projected_sinkhorn/raw/" in msg
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").iterdir())
    with pytest.raises(FileNotFoundError, match="download=False"):
        zoo.load("wong2019-mnist-adv", download=False)


def test_download_from_file_url_is_checked_and_atomic(tmp_path, monkeypatch):
    monkeypatch.setattr("urllib.request.urlopen", REAL_URLOPEN)
    src = tmp_path / "upstream" / "mnist_vanilla.pth"
    src.parent.mkdir()
    torch.save({"state_dict": [random_mnist_state()]}, src)
    entry = fake_entry(monkeypatch, src, urls=("file:///nonexistent/mnist_vanilla.pth", src.as_uri()))
    cache = tmp_path / "cache" / "models"
    model = zoo.load("wong2019-mnist-vanilla")
    assert (cache / entry.filename).read_bytes() == src.read_bytes()
    assert sorted(p.name for p in cache.iterdir()) == [entry.filename]  # no .part left behind
    assert zoo.locate("wong2019-mnist-vanilla", download=False) == cache / entry.filename
    assert model(torch.rand(1, 1, 28, 28)).shape == (1, 10)
    # a download whose content does not match is not kept
    bad = dataclasses.replace(entry, sha256="0" * 64)
    monkeypatch.setitem(registry.REGISTRY, "wong2019-mnist-vanilla", bad)
    other = tmp_path / "other"
    with pytest.raises(FileNotFoundError, match="sha256 mismatch"):
        zoo.load("wong2019-mnist-vanilla", cache_dir=other)
    assert not other.exists() or not any(other.iterdir())


def test_resolution_order(tmp_path, monkeypatch):
    upstream = tmp_path / "env" / "mnist_vanilla.pth"  # the authors' file name is accepted
    upstream.parent.mkdir()
    torch.save(random_mnist_state(), upstream)
    fake_entry(monkeypatch, upstream)
    monkeypatch.setenv("SINKHORN_ATTACKS_MODELS", str(upstream.parent))
    assert zoo.locate("wong2019-mnist-vanilla") == upstream
    explicit = tmp_path / "explicit.pth"
    explicit.write_bytes(upstream.read_bytes())
    assert zoo.locate("wong2019-mnist-vanilla", path=explicit) == explicit
    cache = tmp_path / "cache" / "models"
    cache.mkdir(parents=True)
    (cache / "wong2019_mnist_vanilla.pth").write_bytes(upstream.read_bytes())
    monkeypatch.delenv("SINKHORN_ATTACKS_MODELS")
    assert zoo.locate("wong2019-mnist-vanilla") == cache / "wong2019_mnist_vanilla.pth"


# --------------------------------------------------------------------------- CLI


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="sinkhorn-attacks")
    cli_zoo.add_parser(parser.add_subparsers(dest="command"), "zoo help")
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli(tmp_path, monkeypatch, capsys):
    assert run_cli(["zoo", "list"]) == 0
    assert "wong2019-mnist-binarize" in capsys.readouterr().out
    assert run_cli(["zoo", "info", "wong2019-mnist-adv"]) == 0
    assert "cb1b02fecc0fa07a0b86a22ef87187c1e849ebaa24cd8f8004f039a0f9871f32" in capsys.readouterr().out
    assert run_cli(["zoo", "info", "nope"]) == 2
    assert run_cli(["zoo"]) == 2
    capsys.readouterr()
    models = tmp_path / "m"
    models.mkdir()
    torch.save(random_mnist_state(), models / "wong2019_mnist_robust.pth")  # wrong content
    assert run_cli(["zoo", "verify", "--models-dir", str(models)]) == 1
    out = capsys.readouterr().out
    assert "wong2019-mnist-robust" in out and "FAILED" in out and "sha256 mismatch" in out
    assert run_cli(["zoo", "verify", "wong2019-mnist-adv", "--models-dir", str(models)]) == 1  # named, missing
    assert run_cli(["zoo", "download", "wong2019-mnist-adv", "--cache-dir", str(tmp_path / "c")]) == 1
    assert "download failed" in capsys.readouterr().err
    monkeypatch.setattr("urllib.request.urlopen", REAL_URLOPEN)
    src = tmp_path / "mnist_vanilla.pth"
    torch.save(random_mnist_state(), src)
    fake_entry(monkeypatch, src, urls=(src.as_uri(),))
    assert run_cli(["zoo", "download", "wong2019-mnist-vanilla", "--cache-dir", str(tmp_path / "c")]) == 0
    assert (tmp_path / "c" / "wong2019_mnist_vanilla.pth").is_file()
    assert run_cli(["zoo", "verify", "wong2019-mnist-vanilla", "--cache-dir", str(tmp_path / "c")]) == 0


# --------------------------------------------------------------------------- the real published checkpoints


@pytest.fixture
def real_models() -> Path:
    if not REAL_MODELS:
        pytest.skip("set SINKHORN_ATTACKS_MODELS to the folder holding wong2019_mnist_*.pth (e.g. ../shared/models)")
    return Path(REAL_MODELS)


@pytest.mark.data
@pytest.mark.parametrize("name", list(REFERENCE_ACC))
def test_real_wong_checkpoints(real_models, name):
    model = zoo.load(name, models_dir=real_models, download=False)  # sha256-verified
    x = torch.rand(4, 1, 28, 28, requires_grad=True)
    model(x).sum().backward()
    assert x.grad.abs().sum() > 0  # gradients reach the input, also through the straight-through threshold
    if not REAL_DATA or not (Path(REAL_DATA) / "mnist_test.npz").is_file():
        pytest.skip("set SINKHORN_ATTACKS_DATA to a folder with mnist_test.npz for the accuracy check")
    from sinkhorn_attacks.data import load_dataset

    ds = load_dataset("mnist", "test", data_dir=REAL_DATA, limit=500, download=False)
    with torch.no_grad():
        acc = 100.0 * (model(ds.images).argmax(1) == ds.labels).float().mean().item()
    assert abs(acc - REFERENCE_ACC[name]) <= 2.0, (name, acc)
