"""The zoo's inference graphs (``export.graph``) as ONNX models, one primitive at a time.

Route and why: no converter on the package index fits beside this project's pins. jax2onnx 0.13.1-0.17.1
require ``orbax-checkpoint<0.11.37`` (a downgrade of the pinned 0.12). 0.13.0, what pip falls back to, is
untested on jax 0.10 by its authors; tried here, one of its plugins fails to import
(``jax.interpreters.batching.not_mapped`` is gone), it has no rule for ``platform_index`` (every CPU trace of
``ops.conv2d`` outside kernel mode "portable"), and it pulls in some twenty packages (equinox, huggingface_hub,
netron, ...); it did convert simple_cnn in that mode. tf2onnx has no handler for the ``XlaCallModule`` op that every
jax2tf SavedModel holds. So this module lowers the primitives the zoo uses itself, small enough to own: ``RULES``
names each primitive with its rule, and every rule is tested against onnxruntime (tests/export/test_onnx_rules.py),
and every zoo model against JAX.

Layout: JAX convolutions and pools are NHWC; ONNX's are NCHW, so each is wrapped in a pair of Transposes,
which onnxruntime's transpose optimizer cancels between neighbouring layers. Opset 18.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from cnn_jax.export import graph as graph_lib

OPSET = 18
FORMAT = "onnx"
_ELEMENTWISE = {"add": "Add", "sub": "Sub", "mul": "Mul", "div": "Div", "max": "Max", "min": "Min", "pow": "Pow",
                "neg": "Neg", "exp": "Exp", "log": "Log", "tanh": "Tanh", "logistic": "Sigmoid", "sqrt": "Sqrt",
                "abs": "Abs", "erf": "Erf", "sign": "Sign", "floor": "Floor", "ceil": "Ceil",
                "gt": "Greater", "lt": "Less", "ge": "GreaterOrEqual", "le": "LessOrEqual", "eq": "Equal",
                "copy": "Identity"}
# JAX's logical ops are bitwise on integers; ONNX's And, Or and Not take booleans only.
_LOGICAL = {"and": ("And", "BitwiseAnd"), "or": ("Or", "BitwiseOr"), "not": ("Not", "BitwiseNot")}
_REDUCTIONS = {"reduce_sum": "ReduceSum", "reduce_max": "ReduceMax", "reduce_min": "ReduceMin"}
_DTYPES = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.int32): TensorProto.INT32,
           np.dtype(np.int64): TensorProto.INT64, np.dtype(np.bool_): TensorProto.BOOL}


class _Builder:
    """Names for values, initializers for constants, and the node list."""

    def __init__(self, graph: graph_lib.Graph, input_name: str):
        self.nodes, self.initializers, self.names, self._count = [], [], {}, 0
        self.names[id(graph.input)] = (input_name, graph.input)
        self._input, self._batch = input_name, None

    def fresh(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def constant(self, array) -> str:
        array = np.asarray(array)
        if array.dtype == np.float64:
            array = array.astype(np.float32)
        name = self.fresh("const")
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def name(self, value) -> str:
        if isinstance(value, np.ndarray):
            key = id(value)
            if key not in self.names:
                self.names[key] = (self.constant(value), value)  # the array is kept alive with its id
            return self.names[key][0]
        return self.names.setdefault(id(value), (self.fresh("v"), value))[0]

    def inputs(self, eqn) -> list:
        return [self.name(v) for v in eqn.inputs]

    def node(self, op: str, inputs, outputs=None, **attributes) -> str:
        outputs = outputs or [self.fresh(op.lower())]
        self.nodes.append(helper.make_node(op, list(inputs), list(outputs), **attributes))
        return outputs[0]

    def ints(self, values) -> str:
        return self.constant(np.asarray(values, np.int64))

    def shape(self, sizes) -> str:
        """A 1-D int64 shape tensor of ``sizes``, the traced batch replaced by the images' batch at run time."""
        sizes = graph_lib.dims(sizes, FORMAT, batch=graph_lib.BATCH)
        if graph_lib.BATCH not in sizes:
            return self.ints(sizes)
        if self._batch is None:
            self._batch = self.node("Shape", [self._input], start=0, end=1)
        parts = [self._batch if size == graph_lib.BATCH else self.ints([size]) for size in sizes]
        return self.node("Concat", parts, axis=0)


def _nchw(b, x, spec, out, lower):
    """Runs ``lower(x_nchw) -> y_nchw`` on ``x`` laid out as ``spec`` (batch, feature, spatial...) axes."""
    x = b.node("Transpose", [x], perm=list(spec[0]))
    y = lower(x)
    b.node("Transpose", [y], [out], perm=[int(i) for i in np.argsort(spec[1])])


def _conv(b, eqn, out):
    p = eqn.params
    numbers = p["dimension_numbers"]
    if any(d != 1 for d in p["lhs_dilation"]) or p["batch_group_count"] != 1:
        raise graph_lib.UnsupportedOpError("conv_general_dilated", FORMAT, "input dilation or batch groups")
    if min(v for pair in p["padding"] for v in pair) < 0:
        raise graph_lib.UnsupportedOpError("conv_general_dilated", FORMAT, "negative padding")
    kernel = eqn.inputs[1]
    if isinstance(kernel, np.ndarray):  # transposed here, so the untransposed kernel is never stored
        weight = b.constant(np.transpose(kernel, numbers.rhs_spec))
    else:
        weight = b.node("Transpose", [b.name(kernel)], perm=list(numbers.rhs_spec))
    pads = [lo for lo, _ in p["padding"]] + [hi for _, hi in p["padding"]]
    _nchw(b, b.name(eqn.inputs[0]), (numbers.lhs_spec, numbers.out_spec), out,
          lambda v: b.node("Conv", [v, weight], strides=list(p["window_strides"]), pads=pads,
                           dilations=list(p["rhs_dilation"]), group=int(p["feature_group_count"])))


def _max_pool(b, eqn, out):
    p = eqn.params
    window, strides, padding = p["window_dimensions"], p["window_strides"], p["padding"]
    rank = len(window)
    if (window[0], window[-1], strides[0], strides[-1]) != (1, 1, 1, 1) or rank != 4 or any(
            d != 1 for d in (*p["base_dilation"], *p["window_dilation"])) or padding[0] != (0, 0) != padding[-1]:
        raise graph_lib.UnsupportedOpError(eqn.primitive, FORMAT, "a window other than over the H, W axes of NHWC")
    spatial = padding[1:3]
    _nchw(b, b.name(eqn.inputs[0]), ((0, 3, 1, 2), (0, 3, 1, 2)), out,
          lambda v: b.node("MaxPool", [v], kernel_shape=list(window[1:3]), strides=list(strides[1:3]),
                           pads=[lo for lo, _ in spatial] + [hi for _, hi in spatial]))


def _dot_general(b, eqn, out):
    ((lc, rc), (lb, rb)) = eqn.params["dimension_numbers"]
    lhs, rhs = (graph_lib.shape(v) for v in eqn.inputs)
    if not lb and len(rhs) == 2 and tuple(lc) == (len(lhs) - 1,) and tuple(rc) == (0,):
        b.node("MatMul", b.inputs(eqn), [out])
        return
    letters = iter("abcdefghijklmnopqrstuvwxyz")
    left = [next(letters) for _ in lhs]
    right = [next(letters) for _ in rhs]
    for i, j in zip((*lc, *lb), (*rc, *rb), strict=True):
        right[j] = left[i]
    kept_left = [left[i] for i in range(len(lhs)) if i not in lc and i not in lb]
    kept_right = [right[j] for j in range(len(rhs)) if j not in rc and j not in rb]
    result = "".join([left[i] for i in lb] + kept_left + kept_right)
    b.node("Einsum", b.inputs(eqn), [out], equation=f"{''.join(left)},{''.join(right)}->{result}")


def _reshape(b, eqn, out):
    b.node("Reshape", [b.name(eqn.inputs[0]), b.ints(graph_lib.dims(graph_lib.shape(eqn.outputs[0]), FORMAT))],
           [out])


def _broadcast_in_dim(b, eqn, out):
    target = eqn.params["shape"]
    keep = dict(zip(eqn.params["broadcast_dimensions"], graph_lib.shape(eqn.inputs[0]), strict=True))
    middle = [keep.get(axis, 1) for axis in range(len(target))]
    x = b.name(eqn.inputs[0])
    if list(middle) == list(target):
        b.node("Reshape", [x, b.ints(graph_lib.dims(middle, FORMAT))], [out])
        return
    reshaped = b.node("Reshape", [x, b.ints(graph_lib.dims(middle, FORMAT))])
    if graph_lib.BATCH in middle:  # Expand keeps the input's size where the shape says 1: its batch
        b.node("Expand", [reshaped, b.ints(graph_lib.dims(target, FORMAT, batch=1))], [out])
    else:  # a broadcast along the batch axis (e.g. zeros shaped as the images) takes the images' batch
        b.node("Expand", [reshaped, b.shape(target)], [out])


def _slice(b, eqn, out):
    p = eqn.params
    x, sizes = b.name(eqn.inputs[0]), graph_lib.shape(eqn.inputs[0])
    steps = p["strides"] or (1,) * len(sizes)
    axes = [a for a in range(len(sizes))
            if (p["start_indices"][a], p["limit_indices"][a], steps[a]) != (0, sizes[a], 1)]
    if not axes:
        b.node("Identity", [x], [out])
        return
    b.node("Slice", [x, b.ints([p["start_indices"][a] for a in axes]), b.ints([p["limit_indices"][a] for a in axes]),
                     b.ints(axes), b.ints([steps[a] for a in axes])], [out])


def _pad(b, eqn, out):
    config = eqn.params["padding_config"]
    if any(interior for _, _, interior in config) or min(min(lo, hi) for lo, hi, _ in config) < 0:
        raise graph_lib.UnsupportedOpError("pad", FORMAT, "interior or negative padding")
    pads = [int(lo) for lo, _, _ in config] + [int(hi) for _, hi, _ in config]
    x, value = b.inputs(eqn)
    b.node("Pad", [x, b.ints(pads), value], [out], mode="constant")


def _integer_pow(b, eqn, out):
    (x,), y = b.inputs(eqn), eqn.params["y"]
    if y == 2:
        b.node("Mul", [x, x], [out])
    else:
        b.node("Pow", [x, b.constant(np.asarray(y, _dtype(eqn.outputs[0])))], [out])


def _convert_element_type(b, eqn, out):
    dtype = np.dtype(eqn.params["new_dtype"])
    if dtype not in _DTYPES:
        raise graph_lib.UnsupportedOpError("convert_element_type", FORMAT, f"to {dtype}")
    b.node("Cast", b.inputs(eqn), [out], to=_DTYPES[dtype])


def _dtype(value) -> np.dtype:
    return value.dtype if isinstance(value, np.ndarray) else value.aval.dtype


def _select_n(b, eqn, out):
    """``cases[which]``: a boolean ``which`` picks between two cases, an int32 one among several."""
    which, *cases = b.inputs(eqn)
    if _dtype(eqn.inputs[0]) == np.bool_:
        b.node("Where", [which, cases[1], cases[0]], [out])
        return
    chosen = cases[-1]
    for index in range(len(cases) - 2, -1, -1):
        hit = b.node("Equal", [which, b.constant(np.asarray(index, np.int32))])
        chosen = b.node("Where", [hit, cases[index], chosen], [out] if index == 0 else None)


def _logical(boolean: str, bitwise: str):
    def rule(b, eqn, out):
        b.node(boolean if _dtype(eqn.outputs[0]) == np.bool_ else bitwise, b.inputs(eqn), [out])
    return rule


def _one_op(op: str):
    def rule(b, eqn, out):
        b.node(op, b.inputs(eqn), [out])
    return rule


def _reduction(op: str):
    def rule(b, eqn, out):
        b.node(op, [b.name(eqn.inputs[0]), b.ints(eqn.params["axes"])], [out], keepdims=0)
    return rule


def _rsqrt(b, eqn, out):
    b.node("Reciprocal", [b.node("Sqrt", b.inputs(eqn))], [out])


def _square(b, eqn, out):
    (x,) = b.inputs(eqn)
    b.node("Mul", [x, x], [out])


def _clamp(b, eqn, out):
    low, x, high = b.inputs(eqn)
    b.node("Min", [b.node("Max", [x, low]), high], [out])


def _transpose(b, eqn, out):
    b.node("Transpose", b.inputs(eqn), [out], perm=list(eqn.params["permutation"]))


def _concatenate(b, eqn, out):
    b.node("Concat", b.inputs(eqn), [out], axis=int(eqn.params["dimension"]))


# The JAX primitives this lowering expresses, each with its rule ``rule(builder, equation, output name)``.
RULES = {
    **{name: _one_op(op) for name, op in _ELEMENTWISE.items()},
    **{name: _logical(*ops) for name, ops in _LOGICAL.items()},
    **{name: _reduction(op) for name, op in _REDUCTIONS.items()},
    "rsqrt": _rsqrt, "square": _square, "integer_pow": _integer_pow, "convert_element_type": _convert_element_type,
    "select_n": _select_n, "clamp": _clamp, "conv_general_dilated": _conv, "reduce_window_max": _max_pool,
    "dot_general": _dot_general, "reshape": _reshape, "squeeze": _reshape, "broadcast_in_dim": _broadcast_in_dim,
    "transpose": _transpose, "slice": _slice, "pad": _pad, "concatenate": _concatenate,
}


def lower(graph: graph_lib.Graph, input_name: str = "images", output_name: str = "logits") -> onnx.ModelProto:
    """An ONNX model of ``graph``: float32 ``images`` [batch, H, W, C] to ``logits`` [batch, classes]."""
    b = _Builder(graph, input_name)
    for eqn in graph.equations:
        rule = RULES.get(eqn.primitive)
        if rule is None:
            raise graph_lib.UnsupportedOpError(eqn.primitive, FORMAT, suggest="stablehlo, saved_model or tflite")
        (out,) = [b.name(v) for v in eqn.outputs]
        rule(b, eqn, out)
    b.node("Identity", [b.name(graph.output)], [output_name])

    def symbolic(sizes):
        return ["batch" if size == graph_lib.BATCH else int(size) for size in sizes]

    model = helper.make_model(
        helper.make_graph(b.nodes, "cnn_jax", [helper.make_tensor_value_info(input_name, TensorProto.FLOAT,
                                                                            symbolic(graph.input.aval.shape))],
                          [helper.make_tensor_value_info(output_name, TensorProto.FLOAT,
                                                         symbolic(graph_lib.shape(graph.output)))],
                          b.initializers),
        opset_imports=[helper.make_opsetid("", OPSET)], producer_name="cnn_jax")
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model
