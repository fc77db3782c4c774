"""Datasets as integer pixels: ``(images uint8 (N, *shape), labels int64 (N,))`` splits.

Nothing is ever downloaded. The datasets, by name:

``digits``
    scikit-learn's embedded 8x8 digits, pixels 0..16, split into a fixed train/test partition
    of 1,347/450 images.
``mnist``, ``fashion-mnist``
    ``(N, 28, 28)`` images, pixels 0..255, read from the four idx files ``train-images-idx3-ubyte``,
    ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``, each
    gzipped (``.gz``) or not, also under the other common naming (``train-images.idx3-ubyte``).
``cifar10``
    ``(N, 3, 32, 32)`` channel-first images (torchvision's ToTensor layout), pixels 0..255, read
    from the python version's batch files ``data_batch_1`` .. ``data_batch_5`` and ``test_batch``,
    in the folder or in ``cifar-10-batches-py/`` below it.

The folder is ``data_dir`` when given (the CLI's ``--data-dir``), otherwise the first existing
one of :func:`search_dirs`: ``$BNNFLOW_DATA/<name>``, the system's copy if there is one
(Debian's ``dataset-fashion-mnist`` installs ``/usr/share/datasets/fashion-mnist``), then
``~/.cache/bnnflow/<name>``.
"""

from __future__ import annotations

import codecs
import gzip
import math
import os
import pickle
import struct
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

__all__ = ["Dataset", "DatasetError", "load", "DATASETS", "ENV_VAR", "SYSTEM_DIRS",
           "search_dirs", "read_idx", "read_cifar_batch"]

ENV_VAR = "BNNFLOW_DATA"
SYSTEM_DIRS = {"fashion-mnist": Path("/usr/share/datasets/fashion-mnist")}

_TITLES = {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST", "cifar10": "CIFAR-10"}
_SOURCES = {
    "mnist": "the four idx files from the MNIST site (train-images-idx3-ubyte.gz, "
             "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz)",
    "fashion-mnist": "apt-get install dataset-fashion-mnist, or the idx files from the "
                     "dataset's site",
    "cifar10": "the python version (cifar-10-python.tar.gz), extracted",
}
_NUM_CLASSES = 10
_IDX_UBYTE = 0x08
_CIFAR_SUBDIR = "cifar-10-batches-py"
_CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_SHAPE = (3, 32, 32)


class DatasetError(ValueError):
    """A dataset that cannot be found or read."""


@dataclass(frozen=True, eq=False)
class Dataset:
    """A train/test split of integer images.

    Attributes
    ----------
    name : str
        The name it was loaded by.
    x_train, x_test : numpy.ndarray
        uint8 images ``(N, *input_shape)`` with pixels ``0..pixel_max``.
    y_train, y_test : numpy.ndarray
        int64 labels ``(N,)`` in ``0..num_classes - 1``.
    pixel_max : int
        The largest pixel value of the format (16 for digits, 255 otherwise).
    num_classes : int
        How many classes there are.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    pixel_max: int
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def input_scale(self) -> float:
        """The model sees ``pixel * input_scale`` in [0, 1], like torchvision's ToTensor."""
        return 1.0 / self.pixel_max


def _digits(data_dir=None) -> Dataset:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = d.data.astype(np.uint8)  # (1797, 64), pixels 0..16
    y = d.target.astype(np.int64)
    # A fixed, stratified split (seeded), so every run and every test sees the same 450 images.
    rng = np.random.default_rng(0)
    test = np.zeros(len(y), bool)
    for k in range(10):
        idx = np.flatnonzero(y == k)
        test[rng.permutation(idx)[: round(450 * len(idx) / len(y))]] = True
    extra = 450 - test.sum()
    if extra:
        candidates = np.flatnonzero(~test) if extra > 0 else np.flatnonzero(test)
        test[rng.permutation(candidates)[: abs(extra)]] = extra > 0
    return Dataset("digits", x[~test], y[~test], x[test], y[test], pixel_max=16, num_classes=10)


# -- where the files are ----------------------------------------------------------------------

def search_dirs(name: str) -> list[Path]:
    """The folders searched, in order, for dataset ``name`` when no ``data_dir`` is given.

    Parameters
    ----------
    name : str
        A dataset name such as ``"mnist"``.

    Returns
    -------
    list of pathlib.Path
        ``$BNNFLOW_DATA/<name>`` (if the variable is set), the system's copy (if one is known),
        and ``~/.cache/bnnflow/<name>``.
    """
    dirs = []
    if os.environ.get(ENV_VAR):
        dirs.append(Path(os.environ[ENV_VAR]).expanduser() / name)
    if name in SYSTEM_DIRS:
        dirs.append(SYSTEM_DIRS[name])
    dirs.append(Path.home() / ".cache" / "bnnflow" / name)
    return [d.absolute() for d in dirs]


def _folder(name: str, data_dir) -> Path:
    if data_dir is not None:
        folder = Path(data_dir).expanduser().absolute()
        if not folder.is_dir():
            raise DatasetError(f"{folder}: no such folder; expected the {_TITLES[name]} files "
                               "in it")
        return folder
    dirs = search_dirs(name)
    for folder in dirs:
        if folder.is_dir():
            return folder
    others = f" (nor {', '.join(map(str, dirs[1:]))})" if len(dirs) > 1 else ""
    raise DatasetError(f"{dirs[0]}: no such folder{others}; expected the {_TITLES[name]} files "
                       f"there, in $BNNFLOW_DATA/{name}, or in a data_dir (--data-dir)")


@contextmanager
def _sources(name: str) -> Iterator[None]:
    try:
        yield
    except DatasetError as e:
        raise DatasetError(f"{e}. Get {_TITLES[name]}: {_SOURCES[name]}") from None


# -- idx (MNIST, Fashion-MNIST) ---------------------------------------------------------------

def read_idx(path: str | Path, ndim: int | None = None) -> np.ndarray:
    """Read an idx file of unsigned bytes, gzipped or not.

    Parameters
    ----------
    path : str or pathlib.Path
        The file; gzip is recognised by its magic bytes, not by the name.
    ndim : int, optional
        The number of dimensions expected (3 for images, 1 for labels).

    Returns
    -------
    numpy.ndarray
        A writable uint8 array of the dimensions in the file's header.

    Raises
    ------
    DatasetError
        A missing file, a damaged gzip stream, a wrong magic number or data type, a different
        number of dimensions, or data shorter or longer than the header says.
    """
    path = Path(path).absolute()
    try:
        with path.open("rb") as f:
            gzipped = f.read(2) == b"\x1f\x8b"
        with (gzip.open(path, "rb") if gzipped else path.open("rb")) as f:
            raw = f.read()
    except FileNotFoundError:
        raise DatasetError(f"{path}: no such file") from None
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError; EOF is truncation
        raise DatasetError(f"{path}: unreadable {'gzip ' if gzipped else ''}file ({e})") from None
    kind = {3: "images", 1: "labels"}.get(ndim, "data")
    if len(raw) < 4 or raw[:2] != b"\0\0":
        raise DatasetError(f"{path}: not an idx file: expected the magic number "
                           f"0x0000{_IDX_UBYTE:02x}{ndim or 0:02x}, found 0x{raw[:4].hex()}")
    code, dims_n = raw[2], raw[3]
    if code != _IDX_UBYTE:
        raise DatasetError(f"{path}: idx data type 0x{code:02x}; expected 0x{_IDX_UBYTE:02x} "
                           "(unsigned bytes)")
    if ndim is not None and dims_n != ndim:
        raise DatasetError(f"{path}: an idx file of {dims_n} dimensions; expected {ndim} ({kind})")
    start = 4 + 4 * dims_n
    if len(raw) < start:
        raise DatasetError(f"{path}: truncated idx header; expected {dims_n} dimension sizes")
    dims = struct.unpack(f">{dims_n}I", raw[4:start])
    size, found = math.prod(dims), len(raw) - start
    if found != size:
        what = "truncated" if found < size else "trailing data"
        raise DatasetError(f"{path}: {what}: {found} bytes of {kind}; expected {size} for the "
                           f"dimensions {' x '.join(map(str, dims))} in its header")
    return np.frombuffer(raw, np.uint8, size, start).reshape(dims).copy()


def _idx_file(folder: Path, stem: str, kind: str) -> Path:
    names = [f"{stem}-{kind}-ubyte", f"{stem}-{kind}-ubyte.gz",
             f"{stem}.{kind}-ubyte", f"{stem}.{kind}-ubyte.gz"]
    for name in names:
        if (folder / name).is_file():
            return folder / name
    raise DatasetError(f"{folder / names[1]}: no such file (nor {', '.join(names[:1] + names[2:])})"
                       f"; expected the idx files train-images, train-labels, t10k-images and "
                       f"t10k-labels in {folder}")


def _labels(path: Path, labels: np.ndarray, count: int, count_source: str) -> np.ndarray:
    if len(labels) != count:
        raise DatasetError(f"{path}: {len(labels)} labels; expected {count}, one for each image "
                           f"in {count_source}")
    if len(labels) and (labels.min() < 0 or labels.max() >= _NUM_CLASSES):
        bad = labels[(labels < 0) | (labels >= _NUM_CLASSES)][0]
        raise DatasetError(f"{path}: label {bad}; expected labels 0..{_NUM_CLASSES - 1}")
    return labels.astype(np.int64)


def _idx_split(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    images_path = _idx_file(folder, f"{split}-images", "idx3")
    labels_path = _idx_file(folder, f"{split}-labels", "idx1")
    images = read_idx(images_path, 3)
    if images.shape[1:] != (28, 28):
        raise DatasetError(f"{images_path}: images of {images.shape[1]} x {images.shape[2]} "
                           "pixels; expected 28 x 28")
    labels = _labels(labels_path, read_idx(labels_path, 1), len(images), images_path.name)
    return images, labels


def _idx_dataset(name: str, data_dir=None) -> Dataset:
    with _sources(name):
        folder = _folder(name, data_dir)
        x_train, y_train = _idx_split(folder, "train")
        x_test, y_test = _idx_split(folder, "t10k")
    return Dataset(name, x_train, y_train, x_test, y_test, pixel_max=255,
                   num_classes=_NUM_CLASSES)


# -- CIFAR-10 python batches ------------------------------------------------------------------

class _Refused(pickle.UnpicklingError):
    pass


def _latin1(text, encoding):
    # Protocol-2 pickles written by Python 3 store bytes as _codecs.encode(text, "latin1"); any
    # other codec would look a module up by name, so only this one call is let through.
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise _Refused(f"_codecs.encode with {type(text).__name__}, {encoding!r}")
    return codecs.encode(text, "latin-1")


def _allowed_globals() -> dict[tuple[str, str], object]:
    # The real objects, taken from an array's own reduce tuple rather than imported by name:
    # the files say numpy.core.multiarray, which numpy 2 still maps but deprecates.
    probe = np.zeros(1, np.uint8)
    reconstruct, frombuffer = probe.__reduce__()[0], probe.__reduce_ex__(5)[0]
    allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
               ("_codecs", "encode"): _latin1}
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{core}.numeric", "_frombuffer")] = frombuffer
    return allowed


class _BatchUnpickler(pickle.Unpickler):
    """Builds dicts, lists, bytes, str, ints and numpy arrays; refuses every other global."""

    allowed = _allowed_globals()

    def find_class(self, module, name):
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise _Refused(f"{module}.{name}") from None


def read_cifar_batch(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one batch file of CIFAR-10's python version through a restricted unpickler.

    Parameters
    ----------
    path : str or pathlib.Path
        A file such as ``data_batch_1`` or ``test_batch``: a pickled dict with ``b"data"``
        (N x 3072 uint8, each row the red, green then blue 32 x 32 planes) and ``b"labels"``.

    Returns
    -------
    images : numpy.ndarray
        uint8 ``(N, 3, 32, 32)``.
    labels : numpy.ndarray
        int64 ``(N,)`` in 0..9.

    Raises
    ------
    DatasetError
        A missing or damaged file, a pickle that names any global other than the numpy array
        machinery, or content of another shape.
    """
    path = Path(path).absolute()
    try:
        with path.open("rb") as f:
            batch = _BatchUnpickler(f, encoding="bytes").load()
    except FileNotFoundError:
        raise DatasetError(f"{path}: no such file; expected the CIFAR-10 python batches "
                           f"{', '.join(_CIFAR_TRAIN)} and test_batch") from None
    except _Refused as e:
        raise DatasetError(f"{path}: refused to unpickle {e}: a CIFAR-10 batch holds only a dict "
                           "of bytes, lists, ints and a uint8 numpy array") from None
    except Exception as e:  # a damaged pickle raises nearly anything (EOFError, ValueError, ...)
        raise DatasetError(f"{path}: not a readable CIFAR-10 python batch "
                           f"({type(e).__name__}: {e})") from None
    expected = 'expected a dict with b"data" (N x 3072 uint8) and b"labels" (N ints)'
    if not isinstance(batch, dict):
        raise DatasetError(f"{path}: a pickled {type(batch).__name__}; {expected}")
    data, labels = (batch.get(key, batch.get(key.decode())) for key in (b"data", b"labels"))
    size = math.prod(_CIFAR_SHAPE)
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
            and data.shape[1] == size):
        found = (f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray)
                 else type(data).__name__)
        raise DatasetError(f"{path}: data is a {found}; {expected}")
    labels = np.asarray(labels) if isinstance(labels, list | np.ndarray) else None
    if labels is None or labels.ndim != 1 or (labels.size and labels.dtype.kind not in "iu"):
        raise DatasetError(f"{path}: labels are not a list of ints; {expected}")
    labels = _labels(path, labels, len(data), "its data")
    images = data.reshape(len(data), *_CIFAR_SHAPE)
    return (images if images.flags.writeable else images.copy()), labels


def _cifar10(data_dir=None) -> Dataset:
    with _sources("cifar10"):
        folder = _folder("cifar10", data_dir)
        if not (folder / _CIFAR_TRAIN[0]).exists() and (folder / _CIFAR_SUBDIR).is_dir():
            folder = folder / _CIFAR_SUBDIR
        train = [read_cifar_batch(folder / name) for name in _CIFAR_TRAIN]
        x_test, y_test = read_cifar_batch(folder / "test_batch")
    x_train = np.concatenate([x for x, _ in train])
    y_train = np.concatenate([y for _, y in train])
    return Dataset("cifar10", x_train, y_train, x_test, y_test, pixel_max=255,
                   num_classes=_NUM_CLASSES)


DATASETS = {
    "digits": _digits,
    "mnist": partial(_idx_dataset, "mnist"),
    "fashion-mnist": partial(_idx_dataset, "fashion-mnist"),
    "cifar10": _cifar10,
}


def load(name: str, data_dir: str | os.PathLike | None = None) -> Dataset:
    """Load a dataset by name, from local files only.

    Parameters
    ----------
    name : {"digits", "mnist", "fashion-mnist", "cifar10"}
        Which dataset.
    data_dir : str or path-like, optional
        The folder holding its files (ignored for ``digits``, which is embedded). Without it,
        the first existing folder of :func:`search_dirs` is used.

    Returns
    -------
    Dataset
        The train/test split: digits 1,347/450 images of 8 x 8 (flattened to 64), MNIST and
        Fashion-MNIST 60,000/10,000 of 28 x 28, CIFAR-10 50,000/10,000 of 3 x 32 x 32.

    Raises
    ------
    DatasetError
        An unknown name, or a missing or malformed file: the message names the file, what was
        expected there, and where such files can be had.
    """
    try:
        loader = DATASETS[name]
    except KeyError:
        raise DatasetError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}") from None
    return loader(data_dir)
