"""The compiler front end: a QONNX model (ours or any Brevitas 1W1A export) to the IR.

The importer walks the ONNX graph in order and tracks what each tensor *is*:

* a constant (initializers, ``Constant`` nodes, and ops on constants);
* the input as a float function of an integer pixel (``pixel * input_scale`` then whatever
  elementwise arithmetic the model applies, e.g. bnn_pynq's ``2x - 1``);
* binary activations (the output of a ``BipolarQuant``), with their positive scale;
* a binary layer's accumulator followed by a chain of elementwise float ops (scales,
  BatchNorm, biases).

When a ``BipolarQuant`` closes a chain, the chain is evaluated in float32 on every reachable
integer value (every pixel value for the input, every popcount for a layer) and the IR keeps
the resulting integer thresholds (:mod:`bnnflow.thresholds`). Nothing is approximated, so the
IR reproduces the float model at every reachable value.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from .ir import Dense, InputSpec, Network
from .thresholds import ThresholdError, bn_sign_table, derive_thresholds

__all__ = ["FrontendError", "import_qonnx", "METADATA_PREFIX"]

#: ONNX ``metadata_props`` keys that bnnflow's exporter writes: the input's pixel domain.
METADATA_PREFIX = "bnnflow."


class FrontendError(ValueError):
    """A model the front end cannot import; the message names the file and node."""


@dataclass
class _Const:
    value: np.ndarray


@dataclass
class _Chain:
    """A float function applied elementwise after a source value (pixel or accumulator)."""

    ops: list = field(default_factory=list)  # (op, const ndarray, const_is_left)

    def then(self, op: str, const: np.ndarray, left: bool = False) -> _Chain:
        return _Chain(self.ops + [(op, np.asarray(const, np.float32), left)])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float32)
        for op, c, left in self.ops:
            a, b = (c, x) if left else (x, c)
            if op == "Mul":
                x = a * b
            elif op == "Add":
                x = a + b
            elif op == "Sub":
                x = a - b
            elif op == "Div":
                x = a / b
            elif op == "BatchNormalization":
                x = _batchnorm(x, *c)
            elif op == "PRelu":
                x = np.where(x >= 0, x, x * c)
            x = np.asarray(x, np.float32)
        return x


def _batchnorm(x, scale, bias, mean, var, eps):
    """Eval-mode BatchNorm exactly as PyTorch computes it on the CPU.

    PyTorch folds the statistics in float32 (``invstd = 1/sqrt(var + eps)``,
    ``alpha = invstd * weight``, ``beta = bias - mean * alpha``) and then evaluates
    ``x * alpha + beta`` with a fused multiply-add, i.e. rounded once. We evaluate that sum
    exactly in float64 (``x * alpha`` is exact there for our integer ``x``), so the sign, which
    is all a threshold needs, is the model's own even at exact ties. onnxruntime rounds the
    product first and can differ from PyTorch by one ulp at a tie; we follow the trained model.
    """
    invstd = np.float32(1.0) / np.sqrt(var + eps, dtype=np.float32)
    alpha = (invstd * scale).astype(np.float32)
    beta = (bias - mean * alpha).astype(np.float32)
    return (x.astype(np.float64) * alpha.astype(np.float64) + beta.astype(np.float64)).astype(
        np.float32)


@dataclass
class _Pixel:
    chain: _Chain


@dataclass
class _Bits:
    scale: float
    width: int


@dataclass
class _Acc:
    weights: np.ndarray  # (out, in) bits
    chain: _Chain
    node: str


_ELEMENTWISE = {"Mul", "Add", "Sub", "Div", "PRelu"}
_PASS = {"Identity", "Dropout"}


def _load(path: Path) -> onnx.ModelProto:
    if not path.is_file():
        raise FrontendError(f"{path}: no such file")
    try:
        model = onnx.load(str(path))
    except Exception as e:  # protobuf DecodeError and friends
        raise FrontendError(f"{path}: not a readable ONNX model ({type(e).__name__})") from None
    if not model.graph.node:
        raise FrontendError(f"{path}: the ONNX graph has no nodes")
    return model


def _input_domain(model, pixel_max, input_scale):
    meta = {p.key: p.value for p in model.metadata_props}
    if pixel_max is None:
        pixel_max = int(meta.get(METADATA_PREFIX + "pixel_max", 255))
    if input_scale is None:
        input_scale = float(meta.get(METADATA_PREFIX + "input_scale", 1.0 / pixel_max))
    return pixel_max, input_scale, meta


def import_qonnx(path: str | Path, *, pixel_max: int | None = None,
                 input_scale: float | None = None) -> Network:
    """Import a QONNX file into a :class:`~bnnflow.ir.Network`.

    Parameters
    ----------
    path
        The ``.onnx`` file (Brevitas ``export_qonnx``).
    pixel_max, input_scale
        The integer input domain: the model sees ``pixel * input_scale`` for pixels
        ``0..pixel_max``. Read from the file's ``bnnflow.*`` metadata when bnnflow exported it;
        otherwise 8-bit pixels scaled by 1/255 (torchvision's ``ToTensor``).
    """
    path = Path(path)
    model = _load(path)
    pixel_max, input_scale, meta = _input_domain(model, pixel_max, input_scale)
    graph = model.graph
    inits = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in inits]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise FrontendError(f"{path}: expected one input and one output, found "
                            f"{len(inputs)} and {len(graph.output)}")
    dims = [d.dim_value for d in inputs[0].type.tensor_type.shape.dim][1:]
    if not dims or any(d <= 0 for d in dims):
        raise FrontendError(f"{path}: input {inputs[0].name} has no static shape {dims}")

    values: dict[str, object] = {
        t.name: _Const(numpy_helper.to_array(t)) for t in graph.initializer}
    values[inputs[0].name] = _Pixel(_Chain())
    state = {"input": None, "layers": [], "nodes": {}, "shape": tuple(dims)}
    for node in graph.node:
        where = f"{path}: node {node.name or node.output[0]!r} ({node.op_type})"
        try:
            _visit(node, values, state, pixel_max, input_scale)
        except (FrontendError, ThresholdError) as e:
            raise FrontendError(f"{where}: {e}") from None

    out = values.get(graph.output[0].name)
    if not isinstance(out, _Acc):
        raise FrontendError(f"{path}: the output {graph.output[0].name!r} is not the accumulator "
                            "of a binary layer")
    state["score_map"] = _score_map(out)
    name = f"fc{len(state['layers'])}"
    state["nodes"][name] = out.node
    state["layers"].append(Dense(name, out.weights, None))
    if state["input"] is None:
        raise FrontendError(f"{path}: the input never reaches a binary quantizer (BipolarQuant); "
                            "integer-input first layers are not supported yet")
    name = meta.get(METADATA_PREFIX + "model", path.stem)
    meta = {"source": str(path.name), "producer": model.producer_name,
            "onnx_nodes": state["nodes"]}
    if state["score_map"] is not None:
        meta["score_map"] = state["score_map"]
    return Network(state["input"], tuple(state["layers"]), name, meta)


def _score_map(out: _Acc) -> dict | None:
    """What the float model does to the final integer dot products.

    ``None`` when the scores are the integer dots themselves. A per-tensor map that is strictly
    increasing over the reachable dots (bnn_pynq's TensorNorm, a positive scale) keeps every
    argmax, ties included, so the IR keeps integer scores and records the map as
    ``model score ~= scale * dot + offset``. Anything else cannot be represented.
    """
    n = out.weights.shape[1]
    dots = np.arange(-n, n + 1, 2, dtype=np.float32)[:, None]
    values = np.broadcast_to(out.chain(dots), (len(dots), out.weights.shape[0]))
    if np.array_equal(values, np.broadcast_to(dots, values.shape)):
        return None
    if not np.all(values == values[:, :1]):
        raise FrontendError(f"node {out.node!r}: the final layer applies a different float "
                            "transform to each class; only one increasing map for all classes "
                            "keeps the integer scores' argmax")
    col = values[:, 0].astype(np.float64)
    if not np.all(np.diff(col) > 0):
        raise FrontendError(f"node {out.node!r}: the final layer's float transform is not "
                            "strictly increasing (a negative or zero scale), so the argmax of "
                            "the integer scores would differ from the model's")
    scale = (col[-1] - col[0]) / (2 * n)
    mid = len(col) // 2
    return {"scale": float(scale), "offset": float(col[mid] - scale * float(dots[mid, 0]))}


def _visit(node, values, state, pixel_max, input_scale):
    op = node.op_type
    args = [values.get(i) if i else None for i in node.input]
    if any(a is None for a, name in zip(args, node.input, strict=True) if name):
        missing = [n for a, n in zip(args, node.input, strict=True) if n and a is None]
        raise FrontendError(f"input(s) {missing} come from an unsupported branch")
    out = node.output[0]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}

    if op == "Constant":
        values[out] = _Const(numpy_helper.to_array(attrs["value"]))
    elif all(isinstance(a, _Const) for a in args if a is not None) and op != "BipolarQuant":
        values[out] = _Const(_fold_const(op, [a.value for a in args if a is not None], attrs))
    elif op in _PASS:
        values[out] = args[0]
    elif op in ("Reshape", "Flatten"):
        src = args[0]
        if not isinstance(src, (_Pixel, _Bits)):
            raise FrontendError("reshape of an accumulator is not supported")
        values[out] = src
    elif op in _ELEMENTWISE:
        values[out] = _elementwise(op, args)
    elif op == "BatchNormalization":
        x = args[0]
        if not isinstance(x, _Acc) or not all(isinstance(a, _Const) for a in args[1:5]):
            raise FrontendError("BatchNormalization must follow a binary layer")
        eps = np.float32(attrs.get("epsilon", 1e-5))
        bn = np.stack([np.asarray(a.value, np.float32) for a in args[1:5]] +
                      [np.full_like(np.asarray(args[1].value, np.float32), eps)])
        values[out] = _Acc(x.weights, x.chain.then("BatchNormalization", bn), x.node)
    elif op == "BipolarQuant":
        values[out] = _bipolar(node, args, state, pixel_max, input_scale)
    elif op in ("MatMul", "Gemm"):
        values[out] = _matmul(node, op, args, attrs)
    elif op == "Quant":
        raise FrontendError("multi-bit quantizer (Quant): integer-input first layers and "
                            "multi-bit activations are not supported by this version of the "
                            "compiler and hardware generator yet (1-bit BipolarQuant only)")
    elif op in ("Conv", "MaxPool"):
        raise FrontendError(f"{op} layers are not supported by this version of the compiler "
                            "and hardware generator yet (dense 1W1A networks only)")
    else:
        raise FrontendError(f"unsupported op {op!r} (bnnflow imports 1W1A dense networks: "
                            "BipolarQuant, MatMul/Gemm, BatchNormalization, elementwise "
                            "Mul/Add/Sub/Div/PRelu, Reshape/Flatten, Dropout/Identity)")


def _fold_const(op, vals, attrs):
    if op == "Transpose":
        return np.transpose(vals[0], attrs.get("perm"))
    if op == "Reshape":
        return np.reshape(vals[0], vals[1])
    if op == "Pow":
        return np.power(vals[0], vals[1]).astype(np.asarray(vals[0]).dtype)
    if op in _ELEMENTWISE:
        if op == "PRelu":
            return np.where(vals[0] >= 0, vals[0], vals[0] * vals[1])
        return {"Mul": np.multiply, "Add": np.add, "Sub": np.subtract, "Div": np.divide}[op](*vals)
    if op in _PASS:
        return vals[0]
    raise FrontendError(f"unsupported op {op!r} on constants")


def _elementwise(op, args):
    a, b = args
    left = isinstance(a, _Const)
    if op == "PRelu" and left:
        raise FrontendError("PRelu needs a constant slope")
    x, c = (b, a) if left else (a, b)
    if isinstance(a, _Acc) and isinstance(b, _Acc):
        raise FrontendError(f"{op} of two binary layers' outputs (ABC-Net-style multiple bases "
                            "or shortcut connections) is not supported by the hardware yet")
    if not isinstance(c, _Const):
        raise FrontendError(f"{op} of two computed tensors is not supported")
    if isinstance(x, _Pixel):
        if np.asarray(c.value).size != 1:
            raise FrontendError(f"{op} on the input must use a scalar constant")
        return _Pixel(x.chain.then(op, np.asarray(c.value).reshape(()), left))
    if isinstance(x, _Acc):
        const = np.asarray(c.value, np.float32)
        if const.size not in (1, x.weights.shape[0]):
            raise FrontendError(f"{op} constant of shape {const.shape} does not broadcast over "
                                f"{x.weights.shape[0]} channels")
        return _Acc(x.weights, x.chain.then(op, const.reshape(-1), left), x.node)
    raise FrontendError(f"{op} on binary activations is not supported")


def _positive_scalar(c, what):
    s = np.asarray(c.value, np.float32)
    if s.size != 1 or not s.reshape(()) > 0:
        raise FrontendError(f"{what} scale must be one positive scalar, got {s.ravel()[:4]}")
    return float(s.reshape(()))


def _bipolar(node, args, state, pixel_max, input_scale):
    x, scale = args[0], args[1]
    if not isinstance(scale, _Const):
        raise FrontendError("BipolarQuant scale must be a constant")
    if isinstance(x, _Const):
        s = np.asarray(scale.value, np.float32)
        return _Const(np.where(np.asarray(x.value) >= 0, 1.0, -1.0).astype(np.float32) * s)
    s = _positive_scalar(scale, "activation")
    if isinstance(x, _Pixel):
        if state["input"] is not None:
            raise FrontendError("the input is quantized twice")
        pixels = np.arange(pixel_max + 1, dtype=np.float32)
        bits = x.chain(pixels * np.float32(input_scale)) >= 0
        t = int(np.argmax(bits)) if bits.any() else pixel_max + 1
        if not np.array_equal(bits, np.arange(pixel_max + 1) >= t):
            raise FrontendError("the input quantizer is not increasing in the pixel value")
        state["input"] = InputSpec(state["shape"], pixel_max, input_scale, t)
        return _Bits(s, int(np.prod(state["shape"])))
    if isinstance(x, _Acc):
        n = x.weights.shape[1]
        table = bn_sign_table(n, x.chain)
        name = f"fc{len(state['layers'])}"
        state["nodes"][name] = x.node
        state["layers"].append(Dense(name, x.weights, derive_thresholds(table, layer=x.node)))
        return _Bits(s, x.weights.shape[0])
    raise FrontendError("BipolarQuant of binary activations is not supported")


def _matmul(node, op, args, attrs):
    x, w = args[0], args[1]
    if not isinstance(x, _Bits) or not isinstance(w, _Const):
        raise FrontendError(f"{op} must multiply binary activations by constant weights")
    wv = np.asarray(w.value, np.float32)
    if op == "Gemm":
        if attrs.get("transA", 0):
            raise FrontendError("Gemm with transA is not supported")
        if attrs.get("transB", 0):
            wv = wv.T
    if wv.ndim != 2 or wv.shape[0] != x.width:
        raise FrontendError(f"weights of shape {wv.shape} do not fit {x.width} inputs")
    # Binary weights are +/-s_j with one positive scale per output (or per tensor). A scale
    # is a positive factor on the integer dot product; it folds into the thresholds.
    mag = np.abs(wv)
    col = mag.max(axis=0)
    if np.any(col <= 0) or not np.array_equal(mag, np.broadcast_to(col, mag.shape)):
        raise FrontendError("weights are not binary (+/-s with one s > 0 per output): the "
                            "node's weights need a BipolarQuant (1-bit) quantizer")
    bits = (wv.T > 0).astype(np.uint8)  # (out, in)
    chain = _Chain()
    scale = np.float32(x.scale) * col.astype(np.float32)
    if np.any(scale != 1.0):
        chain = chain.then("Mul", scale if np.unique(scale).size > 1 else scale[:1])
    if op == "Gemm":
        if attrs.get("alpha", 1.0) != 1.0 or (len(args) > 2 and attrs.get("beta", 1.0) != 1.0):
            raise FrontendError("Gemm with alpha/beta != 1 is not supported")
        if len(args) > 2 and args[2] is not None:
            chain = chain.then("Add", np.asarray(args[2].value, np.float32).reshape(-1))
    return _Acc(bits, chain, node.name or node.output[0])
