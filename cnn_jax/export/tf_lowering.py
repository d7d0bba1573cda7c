"""The zoo's inference graphs (``export.graph``) as TensorFlow ops, the route to TFLite.

Route and why: TF 2.21's TFLite converter does read the StableHLO inside jax2tf's ``XlaCallModule`` op, but
with a symbolic batch it stops at the first ``stablehlo.dynamic_gather`` ("'vhlo.dynamic_gather_v1' op is not
part of the vhlo support yet"; ``jnp`` slicing lowers to a gather under symbolic shapes, e.g. simple_cnn's max
pool), so no zoo model with a pooling crop converts with a dynamic batch. Writing each primitive as the TF op
that TFLite has a builtin for gives a graph of builtins only (no Flex or custom ops), with the batch dynamic,
that the converter also quantizes (dynamic-range and full int8). Each primitive is tested against JAX
(tests/export/test_export_ops.py, tests/export/test_onnx_rules.py).
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from cnn_jax.export import graph as graph_lib

FORMAT = "tflite"
_ELEMENTWISE = {"add": tf.add, "sub": tf.subtract, "mul": tf.multiply, "div": tf.divide, "max": tf.maximum,
                "min": tf.minimum, "pow": tf.pow, "neg": tf.negative, "exp": tf.exp, "log": tf.math.log,
                "tanh": tf.tanh, "logistic": tf.sigmoid, "sqrt": tf.sqrt, "rsqrt": tf.math.rsqrt, "abs": tf.abs,
                "square": tf.square, "erf": tf.math.erf, "floor": tf.floor, "ceil": tf.math.ceil,
                "gt": tf.greater, "lt": tf.less, "ge": tf.greater_equal, "le": tf.less_equal, "eq": tf.equal,
                "copy": tf.identity}
_REDUCTIONS = {"reduce_sum": tf.reduce_sum, "reduce_max": tf.reduce_max, "reduce_min": tf.reduce_min}
_NHWC = ((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))  # lhs_spec, rhs_spec, out_spec of NHWC / HWIO / NHWC


def _conv(eqn, x, kernel):
    p = eqn.params
    numbers = p["dimension_numbers"]
    if (tuple(numbers.lhs_spec), tuple(numbers.rhs_spec), tuple(numbers.out_spec)) != _NHWC:
        raise graph_lib.UnsupportedOpError("conv_general_dilated", FORMAT, "a layout other than NHWC/HWIO")
    if any(d != 1 for d in p["lhs_dilation"]) or p["batch_group_count"] != 1:
        raise graph_lib.UnsupportedOpError("conv_general_dilated", FORMAT, "input dilation or batch groups")
    if min(v for pair in p["padding"] for v in pair) < 0:
        raise graph_lib.UnsupportedOpError("conv_general_dilated", FORMAT, "negative padding")
    groups, channels = int(p["feature_group_count"]), graph_lib.shape(eqn.inputs[0])[3]
    (top, bottom), (left, right) = p["padding"]
    if any((top, bottom, left, right)):
        x = tf.pad(x, [[0, 0], [top, bottom], [left, right], [0, 0]])
    strides, dilations = list(p["window_strides"]), list(p["rhs_dilation"])
    if groups == 1:
        return tf.nn.conv2d(x, kernel, [1, *strides, 1], "VALID", dilations=dilations)
    if groups == channels and isinstance(kernel, np.ndarray):
        kh, kw, _, features = kernel.shape
        depthwise = kernel.reshape(kh, kw, channels, features // channels)
        return tf.nn.depthwise_conv2d(x, depthwise, [1, *strides, 1], "VALID", dilations=dilations)
    raise graph_lib.UnsupportedOpError("conv_general_dilated", FORMAT,
                                       f"a grouped convolution with {groups} groups of {channels} channels",
                                       suggest="onnx, stablehlo or saved_model")


def _max_pool(eqn, x):
    p = eqn.params
    window, strides, padding = p["window_dimensions"], p["window_strides"], p["padding"]
    if len(window) != 4 or (window[0], window[-1], strides[0], strides[-1]) != (1, 1, 1, 1) or any(
            d != 1 for d in (*p["base_dilation"], *p["window_dilation"])) or padding[0] != (0, 0) != padding[-1]:
        raise graph_lib.UnsupportedOpError("reduce_window_max", FORMAT, "a window other than over H, W of NHWC")
    if any(v for pair in padding for v in pair):
        x = tf.pad(x, [list(pair) for pair in padding], constant_values=-np.inf)
    return tf.nn.max_pool2d(x, list(window[1:3]), list(strides[1:3]), "VALID")


def _dot_general(eqn, lhs, rhs):
    ((lc, rc), (lb, rb)) = eqn.params["dimension_numbers"]
    left_shape, right_shape = (graph_lib.shape(v) for v in eqn.inputs)
    if not lb and len(right_shape) == 2 and tuple(lc) == (len(left_shape) - 1,) and tuple(rc) == (0,):
        return tf.matmul(lhs, rhs)
    raise graph_lib.UnsupportedOpError("dot_general", FORMAT, "a contraction other than a matrix product",
                                       suggest="onnx, stablehlo or saved_model")


def _broadcast_in_dim(eqn, x, batch):
    target = eqn.params["shape"]
    operand = graph_lib.shape(eqn.inputs[0])
    keep = dict(zip(eqn.params["broadcast_dimensions"], operand, strict=True))
    middle = [keep.get(axis, 1) for axis in range(len(target))]
    x = tf.reshape(x, graph_lib.dims(middle, FORMAT))
    if list(middle) == list(target):
        return x
    # The traced batch is the images' batch (``batch``) at run time, whether x has it or is broadcast along it.
    return tf.broadcast_to(x, [batch if t == graph_lib.BATCH else t for t in target])


def _slice(eqn, x):
    p = eqn.params
    steps = p["strides"] or (1,) * len(p["start_indices"])
    batch = [limit == graph_lib.BATCH for limit in p["limit_indices"]]  # to the end, whatever the batch
    ends = [0 if to_end else int(limit) for limit, to_end in zip(p["limit_indices"], batch, strict=True)]
    return tf.strided_slice(x, [int(s) for s in p["start_indices"]], ends, [int(s) for s in steps],
                            end_mask=sum(1 << axis for axis, to_end in enumerate(batch) if to_end))


def _pad(eqn, x, value):
    config = eqn.params["padding_config"]
    if any(interior for _, _, interior in config) or min(min(lo, hi) for lo, hi, _ in config) < 0:
        raise graph_lib.UnsupportedOpError("pad", FORMAT, "interior or negative padding")
    if not isinstance(value, np.ndarray):
        raise graph_lib.UnsupportedOpError("pad", FORMAT, "a padding value computed from the images")
    return tf.pad(x, [[int(lo), int(hi)] for lo, hi, _ in config], constant_values=value.item())


def _select_n(which, cases):
    """``cases[which]``: a boolean ``which`` picks between two cases, an int32 one among several."""
    if which.dtype == tf.bool:
        return tf.where(which, cases[1], cases[0])
    chosen = cases[-1]
    for index in range(len(cases) - 2, -1, -1):
        chosen = tf.where(tf.equal(which, index), cases[index], chosen)
    return chosen


def _apply(eqn, ins, batch):
    name, p = eqn.primitive, eqn.params
    if name in _ELEMENTWISE:
        return _ELEMENTWISE[name](*ins)
    if name in _REDUCTIONS:
        return _REDUCTIONS[name](ins[0], axis=list(p["axes"]))
    if name == "integer_pow":
        return tf.pow(ins[0], tf.constant(p["y"], ins[0].dtype)) if p["y"] != 2 else tf.square(ins[0])
    if name == "convert_element_type":
        return tf.cast(ins[0], tf.as_dtype(np.dtype(p["new_dtype"])))
    if name == "select_n":
        return _select_n(ins[0], ins[1:])
    if name == "clamp":
        return tf.minimum(tf.maximum(ins[1], ins[0]), ins[2])
    if name == "conv_general_dilated":
        return _conv(eqn, ins[0], eqn.inputs[1] if isinstance(eqn.inputs[1], np.ndarray) else ins[1])
    if name == "reduce_window_max":
        return _max_pool(eqn, ins[0])
    if name == "dot_general":
        return _dot_general(eqn, *ins)
    if name in ("reshape", "squeeze"):
        return tf.reshape(ins[0], graph_lib.dims(graph_lib.shape(eqn.outputs[0]), FORMAT))
    if name == "broadcast_in_dim":
        return _broadcast_in_dim(eqn, ins[0], batch)
    if name == "transpose":
        return tf.transpose(ins[0], list(p["permutation"]))
    if name == "slice":
        return _slice(eqn, ins[0])
    if name == "pad":
        return _pad(eqn, ins[0], eqn.inputs[1])
    if name == "concatenate":
        return tf.concat(ins, axis=int(p["dimension"]))
    raise graph_lib.UnsupportedOpError(name, FORMAT, suggest="onnx, stablehlo or saved_model")


def lower(graph: graph_lib.Graph):
    """``images -> logits`` in TF ops for ``graph``; checks every primitive is expressible before returning."""
    def run(images):
        env, batch = {id(graph.input): images}, tf.shape(images)[0]

        def read(value):
            return tf.constant(value) if isinstance(value, np.ndarray) else env[id(value)]

        for eqn in graph.equations:
            (out,) = eqn.outputs
            env[id(out)] = _apply(eqn, [read(v) for v in eqn.inputs], batch)
        return read(graph.output)

    signature = tf.TensorSpec([None, *graph.input.aval.shape[1:]], tf.float32, name="images")
    function = tf.function(run, input_signature=[signature], autograph=False)
    function.get_concrete_function()  # traces now, so an unsupported primitive fails at export
    return function
