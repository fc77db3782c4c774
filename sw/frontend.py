"""The compiler front end: a QONNX model (ours or any Brevitas 1W1A export) to the IR.

The importer walks the ONNX graph in order and tracks what each tensor *is*:

* a constant (initializers, ``Constant`` nodes, and ops on constants);
* the input as a float function of an integer pixel (``pixel * input_scale`` then whatever
  elementwise arithmetic the model applies, e.g. bnn_pynq's ``2x - 1``);
* integer input levels (the output of a multi-bit ``Quant`` on the input), with their scale;
* binary activations (the output of a ``BipolarQuant``), with their positive scale and shape;
* a binary layer's accumulator (dense or conv) followed by a chain of elementwise float ops
  (scales, BatchNorm, biases, PReLU).

When a ``BipolarQuant`` closes a chain, the chain is evaluated in float on every reachable
integer value (every pixel value for the input, every accumulator value for a layer) and the
IR keeps the resulting integer thresholds (:mod:`bnnflow.thresholds`). Nothing is
approximated, so the IR reproduces the float model at every reachable value.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from .chain import Chain
from .ir import Conv, Dense, InputSpec, MaxPool, Network
from .thresholds import ThresholdError, derive_thresholds, sign_table

__all__ = ["FrontendError", "import_qonnx", "METADATA_PREFIX"]

#: ONNX ``metadata_props`` keys that bnnflow's exporter writes: the input's pixel domain.
METADATA_PREFIX = "bnnflow."


class FrontendError(ValueError):
    """A model the front end cannot import; the message names the file and node."""


@dataclass
class _Const:
    value: np.ndarray


@dataclass
class _Pixel:
    chain: Chain


@dataclass
class _Levels:
    """Integer input levels: the value is ``level(pixel) * scale``."""

    scale: float
    shape: tuple


@dataclass
class _Bits:
    """Binary activations: the value is ``+/-scale``; ``pad`` is an explicit (size, +/-1)."""

    scale: float
    shape: tuple
    pad: tuple[int, int] | None = None


@dataclass
class _Acc:
    """A binary layer's accumulator followed by a float chain."""

    kind: str  # "dense" | "conv"
    weights: np.ndarray  # bits: (out, in) or (out, in, k, k)
    chain: Chain
    node: str
    integer: bool
    conv: dict = field(default_factory=dict)  # in_shape, stride, padding, pad_value

    @property
    def channels(self) -> int:
        return self.weights.shape[0]

    @property
    def fan_in(self) -> int:
        return int(np.prod(self.weights.shape[1:]))


_ELEMENTWISE = {"Mul", "Add", "Sub", "Div", "PRelu"}
_PASS = {"Identity", "Dropout"}
_FOLD = {"Mul": np.multiply, "Add": np.add, "Sub": np.subtract, "Div": np.divide}


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
    meta = {p.key: p.value for p in model.metadata_props}
    if pixel_max is None:
        pixel_max = int(meta.get(METADATA_PREFIX + "pixel_max", 255))
    if input_scale is None:
        input_scale = float(meta.get(METADATA_PREFIX + "input_scale", 1.0 / pixel_max))
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
    values[inputs[0].name] = _Pixel(Chain())
    state = {"input": None, "layers": [], "nodes": {}, "shape": tuple(dims),
             "pixel_max": pixel_max, "input_scale": input_scale}
    for node in graph.node:
        where = f"{path}: node {node.name or node.output[0]!r} ({node.op_type})"
        try:
            _visit(node, values, state)
        except (FrontendError, ThresholdError) as e:
            raise FrontendError(f"{where}: {e}") from None

    out = values.get(graph.output[0].name)
    if not isinstance(out, _Acc) or out.kind != "dense":
        raise FrontendError(f"{path}: the output {graph.output[0].name!r} is not the accumulator "
                            "of a binary dense layer")
    if state["input"] is None:
        raise FrontendError(f"{path}: the input never reaches a quantizer (BipolarQuant or "
                            "Quant)")
    try:
        score_map = _score_map(out)
    except FrontendError as e:
        raise FrontendError(f"{path}: {e}") from None
    _add_layer(state, out, None)
    info = {"source": str(path.name), "producer": model.producer_name,
            "onnx_nodes": state["nodes"]}
    if score_map is not None:
        info["score_map"] = score_map
    return Network(state["input"], tuple(state["layers"]),
                   meta.get(METADATA_PREFIX + "model", path.stem), info)


def _score_map(out: _Acc) -> dict | None:
    """What the float model does to the final integer dot products.

    ``None`` when the scores are the integer dots themselves. A per-tensor map that is strictly
    increasing over the reachable dots (bnn_pynq's TensorNorm, a positive scale) keeps every
    argmax, ties included, so the IR keeps integer scores and records the map as
    ``model score ~= scale * dot + offset``. Anything else cannot be represented.
    """
    n = out.fan_in
    dots = np.arange(-n, n + 1, 2, dtype=np.float32)[:, None]
    values = np.broadcast_to(out.chain(dots), (len(dots), out.channels))
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


def _visit(node, values, state):
    op = node.op_type
    args = [values.get(i) if i else None for i in node.input]
    missing = [n for a, n in zip(args, node.input, strict=True) if n and a is None]
    if missing:
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
        values[out] = _reshape(op, args, attrs)
    elif op in _ELEMENTWISE:
        values[out] = _elementwise(op, args)
    elif op == "BatchNormalization":
        x = args[0]
        if not isinstance(x, _Acc) or not all(isinstance(a, _Const) for a in args[1:5]):
            raise FrontendError("BatchNormalization must follow a binary layer")
        eps = np.float32(attrs.get("epsilon", 1e-5))
        bn = np.stack([np.asarray(a.value, np.float32).reshape(-1) for a in args[1:5]] +
                      [np.full(x.channels, eps, np.float32)])
        values[out] = _Acc(x.kind, x.weights, x.chain.then("BatchNormalization", bn), x.node,
                           x.integer, x.conv)
    elif op == "BipolarQuant":
        values[out] = _bipolar(args, state)
    elif op == "Quant":
        values[out] = _quant(args, attrs, state)
    elif op in ("MatMul", "Gemm", "Conv"):
        values[out] = _layer(node, op, args, attrs)
    elif op == "MaxPool":
        values[out] = _maxpool(args[0], attrs, state)
    elif op == "Pad":
        values[out] = _pad(args, attrs)
    else:
        raise FrontendError(f"unsupported op {op!r} (bnnflow imports 1W1A networks: "
                            "BipolarQuant, Quant on the input, MatMul/Gemm, Conv, MaxPool, Pad, "
                            "BatchNormalization, elementwise Mul/Add/Sub/Div/PRelu, "
                            "Reshape/Flatten, Dropout/Identity)")


def _fold_const(op, vals, attrs):
    if op == "Transpose":
        return np.transpose(vals[0], attrs.get("perm"))
    if op == "Reshape":
        return np.reshape(vals[0], vals[1])
    if op == "Pow":
        return np.power(vals[0], vals[1]).astype(np.asarray(vals[0]).dtype)
    if op == "PRelu":
        return np.where(vals[0] >= 0, vals[0], vals[0] * vals[1])
    if op in _FOLD:
        return _FOLD[op](*vals)
    if op in _PASS:
        return vals[0]
    raise FrontendError(f"unsupported op {op!r} on constants")


def _reshape(op, args, attrs):
    x = args[0]
    if isinstance(x, _Pixel):  # the input keeps its own shape; layers check sizes
        return x
    if not isinstance(x, _Bits):
        raise FrontendError("reshape of anything but binary activations is not supported")
    target = attrs.get("axis", 1) if op == "Flatten" else np.asarray(args[1].value)
    if (op == "Flatten" and target != 1) or (op == "Reshape" and len(target) != 2):
        raise FrontendError("only flattening (N, C, H, W) to (N, C*H*W) is supported")
    return _Bits(x.scale, (int(np.prod(x.shape)),))


def _elementwise(op, args):
    a, b = args
    left = isinstance(a, _Const)
    if op == "PRelu" and left:
        raise FrontendError("PRelu needs a constant slope")
    if isinstance(a, _Acc) and isinstance(b, _Acc):
        raise FrontendError(f"{op} of two binary layers' outputs (ABC-Net-style multiple bases "
                            "or shortcut connections) is not supported by the hardware yet")
    x, c = (b, a) if left else (a, b)
    if not isinstance(c, _Const):
        raise FrontendError(f"{op} of two computed tensors is not supported")
    if isinstance(x, _Pixel):
        if np.asarray(c.value).size != 1:
            raise FrontendError(f"{op} on the input must use a scalar constant")
        return _Pixel(x.chain.then(op, np.asarray(c.value).reshape(()), left))
    if isinstance(x, _Acc):
        const = np.asarray(c.value, np.float32)
        if const.size not in (1, x.channels):
            raise FrontendError(f"{op} constant of shape {const.shape} does not broadcast over "
                                f"{x.channels} channels")
        return _Acc(x.kind, x.weights, x.chain.then(op, const.reshape(-1), left), x.node,
                    x.integer, x.conv)
    raise FrontendError(f"{op} on binary activations is not supported")


def _positive_scalar(c, what):
    s = np.asarray(c.value, np.float32)
    if s.size != 1 or not s.reshape(()) > 0:
        raise FrontendError(f"{what} scale must be one positive scalar, got {s.ravel()[:4]}")
    return float(s.reshape(()))


def _pixel_values(x: _Pixel, state) -> np.ndarray:
    pixels = np.arange(state["pixel_max"] + 1, dtype=np.float32)
    return x.chain(pixels * np.float32(state["input_scale"]))


def _bipolar(args, state):
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
        bits = _pixel_values(x, state) >= 0
        t = int(np.argmax(bits)) if bits.any() else state["pixel_max"] + 1
        if not np.array_equal(bits, np.arange(len(bits)) >= t):
            raise FrontendError("the input quantizer is not increasing in the pixel value")
        state["input"] = InputSpec(state["shape"], state["pixel_max"], state["input_scale"], t)
        return _Bits(s, state["shape"])
    if isinstance(x, _Acc):
        if x.integer:
            reach = x.fan_in * state["input"].max_level
            acc = np.arange(-reach, reach + 1)
            table, dots = sign_table(acc, x.chain), acc
        else:
            dots = 2 * np.arange(x.fan_in + 1) - x.fan_in
            table, acc = sign_table(dots, x.chain), None
        layer = _add_layer(state, x, derive_thresholds(table, layer=x.node, values=acc))
        return _Bits(s, layer.out_shape(_in_shape(state, x)))
    raise FrontendError("BipolarQuant of binary activations is not supported")


def _quant(args, attrs, state):
    from qonnx.custom_op.general.intquant import int_quant

    x = args[0]
    if not isinstance(x, _Pixel):
        raise FrontendError("multi-bit quantizers (Quant) are supported on the input only: "
                            "multi-bit activations are not supported by the hardware yet")
    if state["input"] is not None:
        raise FrontendError("the input is quantized twice")
    scale = _positive_scalar(args[1], "input quantizer")
    zp = np.asarray(args[2].value, np.float32)
    mode = attrs.get("rounding_mode", "ROUND")
    q = int_quant(_pixel_values(x, state), np.float32(scale), zp, args[3].value,
                  attrs.get("signed", 1), attrs.get("narrow", 0),
                  mode.decode() if isinstance(mode, bytes) else mode)
    levels = np.rint(np.asarray(q, np.float64) / scale)
    if not np.array_equal((levels * scale).astype(np.float32), np.asarray(q, np.float32)):
        raise FrontendError("the input quantizer's outputs are not integer multiples of its "
                            "scale")
    state["input"] = InputSpec(state["shape"], state["pixel_max"], state["input_scale"], None,
                               tuple(int(v) for v in levels))
    return _Levels(scale, state["shape"])


def _binary_weights(wv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bits and per-output magnitudes of weights ``(out, ...)`` that are +/-s_j."""
    mag = np.abs(wv).reshape(len(wv), -1)
    col = mag.max(axis=1)
    if np.any(col <= 0) or not np.array_equal(mag, np.broadcast_to(col[:, None], mag.shape)):
        raise FrontendError("weights are not binary (+/-s with one s > 0 per output): the "
                            "node's weights need a BipolarQuant (1-bit) quantizer")
    return (wv > 0).astype(np.uint8), col.astype(np.float32)


def _layer(node, op, args, attrs):
    x, w = args[0], args[1]
    if not isinstance(x, (_Bits, _Levels)) or not isinstance(w, _Const):
        raise FrontendError(f"{op} must multiply quantized activations by constant weights")
    wv = np.asarray(w.value, np.float32)
    conv = {}
    if op == "Conv":
        conv = _conv_params(x, wv, attrs)
        bits, col = _binary_weights(wv)
    else:
        if op == "Gemm":
            if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or \
                    attrs.get("beta", 1.0) != 1.0:
                raise FrontendError("Gemm with transA or alpha/beta != 1 is not supported")
            wv = wv.T if attrs.get("transB", 0) else wv
        width = int(np.prod(x.shape))
        if wv.ndim != 2 or wv.shape[0] != width:
            raise FrontendError(f"weights of shape {wv.shape} do not fit {width} inputs")
        bits, col = _binary_weights(wv.T)
    # A positive scale per output multiplies the integer accumulator: it folds into thresholds.
    chain = Chain()
    scale = np.float32(x.scale) * col
    if np.any(scale != 1.0):
        chain = chain.then("Mul", scale if np.unique(scale).size > 1 else scale[:1])
    if len(args) > 2 and args[2] is not None:
        chain = chain.then("Add", np.asarray(args[2].value, np.float32).reshape(-1))
    kind = "conv" if op == "Conv" else "dense"
    conv["in_shape"] = x.shape
    return _Acc(kind, bits, chain, node.name or node.output[0], isinstance(x, _Levels), conv)


def _conv_params(x, wv, attrs) -> dict:
    if wv.ndim != 4 or len(x.shape) != 3 or wv.shape[1] != x.shape[0]:
        raise FrontendError(f"weights of shape {wv.shape} do not fit input {x.shape}")
    k = list(attrs.get("kernel_shape", wv.shape[2:]))
    strides = list(attrs.get("strides", [1, 1]))
    pads = list(attrs.get("pads", [0, 0, 0, 0]))
    if attrs.get("group", 1) != 1 or any(d != 1 for d in attrs.get("dilations", [1, 1])) \
            or k[0] != k[1] or strides[0] != strides[1] or len(set(pads)) > 1:
        raise FrontendError("only square, ungrouped, undilated convolutions with one stride and "
                            "symmetric padding are supported")
    if isinstance(x, _Bits):
        if pads[0]:
            raise FrontendError("zero padding of binary activations is not binary (0 is "
                                "neither -1 nor +1): pad explicitly with -1 or +1 (a Pad node), "
                                "as bnnflow's own models do")
        padding, pad_value = x.pad or (0, -1)
    else:
        padding, pad_value = pads[0], 0
    return {"stride": strides[0], "padding": padding, "pad_value": pad_value}


def _pad(args, attrs):
    x = args[0]
    if not isinstance(x, _Bits) or len(x.shape) != 3 or x.pad is not None:
        raise FrontendError("Pad is supported on binary (C, H, W) activations before a Conv")
    pads = np.asarray(args[1].value).reshape(-1).tolist() if len(args) > 1 else attrs["pads"]
    value = float(np.asarray(args[2].value)) if len(args) > 2 and args[2] is not None else 0.0
    p = pads[2]
    if attrs.get("mode", b"constant") not in (b"constant", "constant") or \
            pads != [0, 0, p, p, 0, 0, p, p] or abs(value) != np.float32(x.scale):
        raise FrontendError("Pad must be a constant, symmetric spatial pad with value -1 or +1 "
                            "(times the activations' scale)")
    return _Bits(x.scale, x.shape, (p, 1 if value > 0 else -1))


def _maxpool(x, attrs, state):
    if not isinstance(x, _Bits) or len(x.shape) != 3:
        raise FrontendError("MaxPool is supported on binary (C, H, W) activations")
    k = list(attrs.get("kernel_shape", [1, 1]))
    s = list(attrs.get("strides", [1, 1]))
    if k[0] != k[1] or s[0] != s[1] or any(attrs.get("pads", [0])) or attrs.get("ceil_mode", 0):
        raise FrontendError("only square, unpadded, floor-mode max-pooling is supported")
    name = f"pool{len(state['layers'])}"
    layer = MaxPool(name, x.shape, k[0], s[0])
    state["layers"].append(layer)
    return _Bits(x.scale, layer.out_shape(x.shape))


def _in_shape(state, x: _Acc):
    return x.conv["in_shape"]


def _add_layer(state, x: _Acc, thresholds):
    index = len(state["layers"])
    if x.kind == "dense":
        layer = Dense(f"fc{index}", x.weights, thresholds, x.integer)
    else:
        c = x.conv
        layer = Conv(f"conv{index}", x.weights, thresholds, c["in_shape"], c["stride"],
                     c["padding"], c["pad_value"], x.integer)
    state["nodes"][layer.name] = x.node
    state["layers"].append(layer)
    return layer
