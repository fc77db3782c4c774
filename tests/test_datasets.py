"""Dataset loaders: small idx and CIFAR files written here, every error path, the real copy."""

from __future__ import annotations

import gzip
import os
import pickle
import re
import struct

import numpy as np
import pytest

from bnnflow import datasets
from bnnflow.datasets import DatasetError, read_cifar_batch, read_idx

FASHION_DIR = datasets.SYSTEM_DIRS["fashion-mnist"]
FASHION_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                 "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


@pytest.fixture(autouse=True)
def _no_user_dirs(tmp_path, monkeypatch):
    # The user's own $BNNFLOW_DATA and ~/.cache must not decide what these tests see.
    monkeypatch.delenv(datasets.ENV_VAR, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


# -- writers ----------------------------------------------------------------------------------

def _idx(array: np.ndarray, code: int = 0x08) -> bytes:
    head = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return head + np.ascontiguousarray(array, np.uint8).tobytes()


def _put(path, data: bytes, gz: bool):
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def _write_mnist(folder, *, dot=False, gz=True, n_train=6, n_test=4, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, n, dtype=np.uint8)
        for kind, what, arr in (("images", "idx3", x), ("labels", "idx1", y)):
            name = f"{split}-{kind}.{what}-ubyte" if dot else f"{split}-{kind}-{what}-ubyte"
            _put(folder / (name + ".gz" if gz else name), _idx(arr), gz)
        out[split] = (x, y)
    return out


class _Py2Pickler(pickle._Pickler):
    """Writes bytes as Python 2's str (BINSTRING), as the real CIFAR-10 batch files do.

    The pure-Python pickler is the one whose dispatch table can be extended.
    """

    dispatch = dict(pickle._Pickler.dispatch)

    def _save_py2_str(self, obj):
        self.write(pickle.BINSTRING + struct.pack("<I", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str


def _py2_pickle(obj) -> bytes:
    import io

    f = io.BytesIO()
    _Py2Pickler(f, protocol=2).dump(obj)
    # The files were written by numpy 1, whose arrays reconstruct from numpy.core.
    return f.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def _batch(n, seed):
    rng = np.random.default_rng(seed)
    return {b"batch_label": b"training batch", b"labels": rng.integers(0, 10, n).tolist(),
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"filenames": [b"img_%d.png" % i for i in range(n)]}


def _write_cifar(folder, dumps=_py2_pickle, n=3):
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    batches = {name: _batch(n + i, i) for i, name in enumerate(names)}
    for name, batch in batches.items():
        (folder / name).write_bytes(dumps(batch))
    return batches


# -- digits -----------------------------------------------------------------------------------

def test_digits_unchanged():
    ds = datasets.load("digits")
    assert ds.x_train.shape == (1347, 64) and ds.x_test.shape == (450, 64)
    assert ds.x_train.dtype == np.uint8 and ds.y_train.dtype == np.int64
    assert (ds.pixel_max, ds.num_classes, ds.input_shape) == (16, 10, (64,))
    # The split itself: other tests and saved runs depend on exactly these 450 images.
    assert int(ds.x_test.sum()) == 140024 and int(ds.x_train.sum()) == 421694
    assert np.bincount(ds.y_test).tolist() == [45, 46, 44, 46, 44, 46, 45, 45, 44, 45]
    assert ds.y_test[:12].tolist() == [1, 5, 9, 2, 4, 5, 6, 7, 9, 3, 4, 6]


def test_unknown_name():
    with pytest.raises(DatasetError, match="unknown dataset 'svhn'.*cifar10"):
        datasets.load("svhn")


# -- MNIST, Fashion-MNIST ---------------------------------------------------------------------

@pytest.mark.parametrize("dot", [False, True], ids=["dash", "dot"])
@pytest.mark.parametrize("gz", [True, False], ids=["gz", "plain"])
@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_idx_dataset(tmp_path, name, dot, gz):
    written = _write_mnist(tmp_path / "d", dot=dot, gz=gz)
    ds = datasets.load(name, tmp_path / "d")
    assert ds.name == name and (ds.pixel_max, ds.num_classes) == (255, 10)
    assert ds.input_shape == (28, 28) and ds.input_scale == 1 / 255
    for x, y, (wx, wy) in ((ds.x_train, ds.y_train, written["train"]),
                           (ds.x_test, ds.y_test, written["t10k"])):
        assert x.dtype == np.uint8 and y.dtype == np.int64 and x.flags.writeable
        np.testing.assert_array_equal(x, wx)
        np.testing.assert_array_equal(y, wy)


def test_idx_mixed_files_and_str_dir(tmp_path):
    _write_mnist(tmp_path, gz=True)
    plain = tmp_path / "t10k-labels-idx1-ubyte"
    plain.write_bytes(gzip.decompress((tmp_path / "t10k-labels-idx1-ubyte.gz").read_bytes()))
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    assert datasets.load("mnist", str(tmp_path)).x_test.shape == (4, 28, 28)


def test_default_dirs(tmp_path, monkeypatch):
    home_copy = _write_mnist(tmp_path / "home" / ".cache" / "bnnflow" / "mnist", seed=1)
    np.testing.assert_array_equal(datasets.load("mnist").x_train, home_copy["train"][0])
    env_copy = _write_mnist(tmp_path / "data" / "mnist", seed=2)
    monkeypatch.setenv(datasets.ENV_VAR, str(tmp_path / "data"))
    np.testing.assert_array_equal(datasets.load("mnist").x_train, env_copy["train"][0])
    system = _write_mnist(tmp_path / "system", seed=3)
    monkeypatch.setitem(datasets.SYSTEM_DIRS, "fashion-mnist", tmp_path / "system")
    np.testing.assert_array_equal(datasets.load("fashion-mnist").x_train, system["train"][0])
    assert datasets.search_dirs("fashion-mnist") == [
        tmp_path / "data" / "fashion-mnist", tmp_path / "system",
        tmp_path / "home" / ".cache" / "bnnflow" / "fashion-mnist"]


def test_no_folder(tmp_path, monkeypatch):
    monkeypatch.setitem(datasets.SYSTEM_DIRS, "fashion-mnist", tmp_path / "nowhere")
    with pytest.raises(DatasetError) as e:
        datasets.load("fashion-mnist")
    assert str(e.value).startswith(f"{tmp_path / 'nowhere'}: no such folder (nor ")
    assert "apt-get install dataset-fashion-mnist" in str(e.value)
    with pytest.raises(DatasetError, match=r"no such folder; expected the MNIST files.*MNIST site"):
        datasets.load("mnist", tmp_path / "absent")


@pytest.mark.parametrize("name, hint", [("mnist", "the four idx files from the MNIST site"),
                                        ("fashion-mnist", "apt-get install dataset-fashion")])
def test_missing_idx_file(tmp_path, name, hint):
    _write_mnist(tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(DatasetError) as e:
        datasets.load(name, tmp_path)
    msg = str(e.value)
    assert msg.startswith(f"{tmp_path / 't10k-images-idx3-ubyte.gz'}: no such file (nor ")
    assert "t10k-images.idx3-ubyte" in msg and hint in msg and "\n" not in msg


def _load_with(tmp_path, filename, data: bytes, gz=True):
    _write_mnist(tmp_path, gz=gz)
    _put(tmp_path / filename, data, gz)
    with pytest.raises(DatasetError) as e:
        datasets.load("mnist", tmp_path)
    assert str(e.value).startswith(f"{tmp_path / filename}: ")
    assert "MNIST site" in str(e.value)
    return str(e.value)


IMAGES, LABELS = "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"
X3, Y3 = np.zeros((3, 28, 28), np.uint8), np.zeros(6, np.uint8)


@pytest.mark.parametrize("filename, data, match", [
    (IMAGES, b"\x12\x34" + _idx(X3)[2:], "not an idx file: expected the magic number 0x00000803, "
                                         "found 0x12340803"),
    (IMAGES, b"\0\0", "not an idx file"),
    (IMAGES, _idx(X3, code=0x0D), r"idx data type 0x0d; expected 0x08 \(unsigned bytes\)"),
    (LABELS, _idx(X3), r"3 dimensions; expected 1 \(labels\)"),
    (IMAGES, _idx(X3)[:10], "truncated idx header"),
    (IMAGES, _idx(X3)[:-5], r"truncated: 2347 bytes of images; expected 2352 for the dimensions "
                            r"3 x 28 x 28"),
    (IMAGES, _idx(X3) + b"\0", "trailing data: 2353 bytes"),
    (IMAGES, _idx(np.zeros((3, 27, 28), np.uint8)), "images of 27 x 28 pixels; expected 28 x 28"),
    (LABELS, _idx(np.zeros(5, np.uint8)), r"5 labels; expected 6, one for each image in "
                                          "train-images-idx3-ubyte"),
    (LABELS, _idx(np.array([0, 1, 2, 10, 3, 4], np.uint8)), r"label 10; expected labels 0..9"),
], ids=["magic", "short", "dtype", "ndim", "header", "truncated", "trailing", "27x28", "count",
        "range"])
@pytest.mark.parametrize("gz", [True, False], ids=["gz", "plain"])
def test_malformed_idx(tmp_path, filename, data, match, gz):
    msg = _load_with(tmp_path, filename if gz else filename.removesuffix(".gz"), data, gz)
    assert re.search(match, msg), msg


@pytest.mark.parametrize("data, match", [
    (gzip.compress(_idx(X3))[:-20], "unreadable gzip file"),
    (b"\x1f\x8b" + b"junk" * 10, "unreadable gzip file"),
])
def test_damaged_gzip(tmp_path, data, match):
    (tmp_path / "f.gz").write_bytes(data)
    with pytest.raises(DatasetError, match=f"^{tmp_path / 'f.gz'}: {match}"):
        read_idx(tmp_path / "f.gz", 3)


def test_read_idx_any_rank(tmp_path):
    a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a").write_bytes(_idx(a))
    np.testing.assert_array_equal(read_idx(tmp_path / "a"), a)


# -- CIFAR-10 ---------------------------------------------------------------------------------

@pytest.mark.parametrize("dumps", [_py2_pickle, lambda o: pickle.dumps(o, protocol=2),
                                   lambda o: pickle.dumps(o, protocol=5)],
                         ids=["py2", "protocol2", "protocol5"])
@pytest.mark.parametrize("sub", ["", "cifar-10-batches-py"])
def test_cifar10(tmp_path, dumps, sub):
    batches = _write_cifar(tmp_path / sub, dumps)
    ds = datasets.load("cifar10", tmp_path)
    assert ds.x_train.shape == (3 + 4 + 5 + 6 + 7, 3, 32, 32) and ds.x_test.shape == (8, 3, 32, 32)
    assert (ds.pixel_max, ds.num_classes, ds.input_shape) == (255, 10, (3, 32, 32))
    assert ds.x_train.dtype == np.uint8 and ds.y_train.dtype == np.int64
    assert ds.x_train.flags.writeable and ds.x_test.flags.writeable
    rows = np.concatenate([batches[f"data_batch_{i}"][b"data"] for i in range(1, 6)])
    np.testing.assert_array_equal(ds.x_train.reshape(len(rows), -1), rows)
    # Channel-first: each row is the red, green, then blue 32 x 32 plane.
    np.testing.assert_array_equal(ds.x_test[2, 1], batches["test_batch"][b"data"][2, 1024:2048]
                                  .reshape(32, 32))
    assert ds.y_test.tolist() == batches["test_batch"][b"labels"]


def test_cifar10_str_keys(tmp_path):
    batch = {k.decode(): v for k, v in _batch(4, 0).items()}
    (tmp_path / "b").write_bytes(pickle.dumps(batch))
    x, y = read_cifar_batch(tmp_path / "b")
    assert x.shape == (4, 3, 32, 32) and y.tolist() == batch["labels"]


def test_cifar10_missing_batch(tmp_path):
    _write_cifar(tmp_path)
    (tmp_path / "data_batch_4").unlink()
    with pytest.raises(DatasetError) as e:
        datasets.load("cifar10", tmp_path)
    assert str(e.value).startswith(f"{tmp_path / 'data_batch_4'}: no such file; expected the "
                                   "CIFAR-10 python batches data_batch_1, ")
    assert "the python version (cifar-10-python.tar.gz), extracted" in str(e.value)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo should-never-run",))


def _with(**changes):
    batch = _batch(4, 0)
    batch.update({k.encode(): v for k, v in changes.items()})
    return pickle.dumps(batch)


@pytest.mark.parametrize("data, match", [
    (pickle.dumps({b"data": _Evil()}), r"refused to unpickle (posix|os)\.system: a CIFAR-10 batch"),
    (pickle.dumps(np.float64), "refused to unpickle numpy.float64"),
    (b"cos\nsystem\n(S'echo no'\ntR.", r"refused to unpickle os\.system"),
    (b"c_codecs\nencode\n(Vx\nVrot13\ntR.", r"refused .* _codecs.encode with str, 'rot13'"),
    (pickle.dumps(_batch(4, 0))[:-100], "not a readable CIFAR-10 python batch"),
    (b"", r"not a readable CIFAR-10 python batch \(EOFError"),
    (pickle.dumps([1, 2]), 'a pickled list; expected a dict with b"data"'),
    (_with(data=np.zeros((4, 3072), np.float32)), "data is a float32 array of shape"),
    (_with(data=np.zeros((4, 3, 32, 32), np.uint8)), r"shape \(4, 3, 32, 32\); expected"),
    (_with(data=None), "data is a NoneType"),
    (_with(labels=[1, 2, 3]), r"3 labels; expected 4, one for each image in its data"),
    (_with(labels=[0, 1, 12, 3]), r"label 12; expected labels 0\.\.9"),
    (_with(labels=[0, 1, -1, 3]), r"label -1; expected labels 0\.\.9"),
    (_with(labels=[0.0, 1.0, 2.0, 3.0]), "labels are not a list of ints"),
    (_with(labels=b"0123"), "labels are not a list of ints"),
], ids=["reduce", "numpy-global", "os-system", "codec", "truncated", "empty", "list", "float32",
        "shape", "no-data", "count", "range", "negative", "float-labels", "bytes-labels"])
def test_cifar10_malformed(tmp_path, data, match):
    _write_cifar(tmp_path)
    (tmp_path / "test_batch").write_bytes(data)
    with pytest.raises(DatasetError, match=match) as e:
        datasets.load("cifar10", tmp_path)
    assert str(e.value).startswith(f"{tmp_path / 'test_batch'}: ")
    assert str(e.value).endswith("Get CIFAR-10: the python version (cifar-10-python.tar.gz), "
                                 "extracted")


# -- the real Fashion-MNIST, where Debian's package installed it ------------------------------

def test_installed_fashion_mnist():
    missing = [f for f in FASHION_FILES if not (FASHION_DIR / f).is_file()]
    if missing:
        msg = (f"{FASHION_DIR}: missing {', '.join(missing)} "
               "(apt-get install dataset-fashion-mnist)")
        if os.environ.get("CI", "").lower() not in ("", "0", "false"):
            pytest.fail(msg)  # CI must exercise the real files, not quietly skip them
        pytest.skip(msg)
    ds = datasets.load("fashion-mnist")
    assert ds.x_train.shape == (60000, 28, 28) and ds.x_test.shape == (10000, 28, 28)
    assert ds.y_train.shape == (60000,) and ds.y_test.shape == (10000,)
    assert np.bincount(ds.y_train).tolist() == [6000] * 10
    assert np.bincount(ds.y_test).tolist() == [1000] * 10
    assert ds.x_train.max() == 255 and ds.x_train.min() == 0
    # The reader the dataset's authors ship: fixed header offsets, no checks.
    with gzip.open(FASHION_DIR / "t10k-images-idx3-ubyte.gz") as f:
        ref = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    np.testing.assert_array_equal(ds.x_test, ref)
