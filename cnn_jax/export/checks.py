"""What is checked before an exported artifact runs: its bytes against the SHA-256 its ``meta.json`` recorded, and
its operations against what this code's exports hold.

An artifact is a program: a SavedModel's graph can read and write files (``ReadFile``, ``WriteFile``, ``SaveV2``,
``PrintV2`` to a file, ...), a StableHLO module can call host code (``custom_call``), a TFLite model can name
custom or TensorFlow (Flex) ops, an ONNX model can point at external data files. So each format is inspected,
after its sum, before it is loaded:

- ``saved_model``: every op of its graph and function library must be in ``SAVED_MODEL_OPS``, the ops
  ``cnn_jax.export.portable`` writes (the model as one ``XlaCallModule``, the ``serving_bytes`` image decoding
  and resizing, and the calls between functions). Checkpoint ops (``CHECKPOINT_OPS``) are allowed only in the
  save and restore functions that ``tf.saved_model.save`` adds for TF1's saver, when nothing else calls them:
  ``tf.saved_model.load`` restores with ops of its own and never runs them. An allow-list, not a deny-list:
  TensorFlow has well over a thousand op types and adds more each release, so a list of dangerous ones would miss
  the next; a model this code did not write is refused, naming the op, at worst needlessly.
- ``stablehlo``: no ``custom_call`` but jax.export's ``shape_assertion``, no effects.
- ``tflite``: builtin operators only (no custom or Flex op).
- ``onnx``: the standard ``ai.onnx`` domain only, no model-local functions, no external data.

A sum detects a changed artifact or a ``meta.json`` from another export; it is no defence against whoever wrote
the workdir, who writes the sums too. The op checks bound what a hostile artifact can do to reading its input and
computing, but not every weakness of the runtimes that parse it: a workdir from someone else is code to trust, and
ONNX (the smallest runtime surface here, checked as above) is the format to share.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import tempfile
from typing import Iterator

from cnn_jax.export.meta import ExportError, ExportMeta, digest

# Ops of the SavedModels cnn_jax.export.portable writes (both signatures), and a few that the same tf.function
# code gives in other TensorFlow versions (PartitionedCall, IdentityN, StopGradient, the Decode* that DecodeImage
# dispatches to). None touches a file, the network or the process.
SAVED_MODEL_OPS = frozenset({
    "AddV2", "All", "Assert", "Cast", "Ceil", "ConcatV2", "Const", "DecodeBmp", "DecodeGif", "DecodeImage",
    "DecodeJpeg", "DecodePng", "DecodeWebP", "ExpandDims", "Fill", "Floor", "FloorDiv", "Greater", "GreaterEqual",
    "Identity", "IdentityN", "Less", "LessEqual", "LogicalAnd", "Maximum", "Minimum", "Mul", "Neg", "NoOp", "Pack",
    "Pad", "PartitionedCall", "Placeholder", "PreventGradient", "Range", "RealDiv", "Reshape", "Round",
    "ScaleAndTranslate", "Select", "SelectV2", "Shape", "Slice", "Squeeze", "StatefulPartitionedCall",
    "StopGradient", "StridedSlice", "Sub", "TensorListFromTensor", "TensorListGetItem", "TensorListReserve",
    "TensorListSetItem", "TensorListStack", "Transpose", "Unpack", "While", "XlaCallModule",
})
CHECKPOINT_OPS = frozenset({"MergeV2Checkpoints", "RestoreV2", "SaveV2", "ShardedFilename", "StaticRegexFullMatch",
                            "StringJoin"})
STABLEHLO_TARGETS = frozenset({"shape_assertion"})
ONNX_DOMAINS = frozenset({"", "ai.onnx"})


def _refusal(fmt: str, path: str, what: str) -> ExportError:
    return ExportError(f"refusing the {fmt} artifact {path}: {what}, which no model this code exports holds and "
                       "which could read or write files or run code. A workdir from someone else is code to trust; "
                       "share models as ONNX")


def _check_sum(path: str, actual: str, meta: ExportMeta, what: str, fix: str) -> None:
    name = os.path.basename(path)
    expected = meta.sha256.get(name)
    if expected is None:
        raise ExportError(f"the {what} {path} has no SHA-256 in its meta.json, so it was not written for this "
                          f"export; {fix}")
    if actual != expected:
        raise ExportError(f"the {what} {path} is not the file its meta.json recorded (sha256 {actual[:16]}..., "
                          f"recorded {expected[:16]}...): it was changed, or the metadata is another export's; {fix}")


def read_verified(path: str, meta: ExportMeta, what: str, fix: str) -> bytes:
    """The bytes of the file ``path``, read once, if their SHA-256 is the one ``meta`` recorded for it; else
    ExportError naming ``what`` and ending with ``fix``."""
    try:
        with open(path, "rb") as file:
            content = file.read()
    except OSError as error:
        raise ExportError(f"cannot read the {what} {path} ({error.strerror}); {fix}") from None
    _check_sum(path, hashlib.sha256(content).hexdigest(), meta, what, fix)
    return content


@contextlib.contextmanager
def verified_copy(path: str, meta: ExportMeta, what: str, fix: str) -> Iterator[str]:
    """A private copy of the directory ``path`` whose SHA-256 (``meta.digest``) is the one ``meta`` recorded, so
    what is loaded from it is what was checked; removed afterwards."""
    with tempfile.TemporaryDirectory() as private:  # mode 0700
        copy = os.path.join(private, os.path.basename(path))
        try:
            shutil.copytree(path, copy, symlinks=True)
        except OSError as error:
            raise ExportError(f"cannot read the {what} {path} ({error}); {fix}") from None
        _check_sum(path, digest(copy), meta, what, fix)
        yield copy


def _called(nodes, functions) -> set:
    """The library functions that ``nodes`` call: by op name, or through a function-valued attribute."""
    called = set()
    for node in nodes:
        if node.op in functions:
            called.add(node.op)
        for value in node.attr.values():
            called.update([value.func.name] if value.HasField("func") else [])
            called.update(function.name for function in value.list.func)
    return called


def _closure(roots: set, functions) -> set:
    reached, todo = set(), list(roots)
    while todo:
        name = todo.pop()
        if name in reached or name not in functions:
            continue
        reached.add(name)
        todo.extend(_called(functions[name].node_def, functions))
    return reached


def check_saved_model(directory: str, path: str) -> None:
    """ExportError unless the SavedModel in ``directory`` (named ``path`` in messages) is a TF2 SavedModel whose
    ops are all allowed (module docstring)."""
    from google.protobuf.message import DecodeError
    from tensorflow.core.protobuf import saved_model_pb2

    model = saved_model_pb2.SavedModel()
    try:
        with open(os.path.join(directory, "saved_model.pb"), "rb") as file:
            model.ParseFromString(file.read())
    except (OSError, DecodeError) as error:
        raise ExportError(f"corrupt saved_model artifact {path} ({type(error).__name__}: {error})") from None
    if len(model.meta_graphs) != 1 or not model.meta_graphs[0].object_graph_def.nodes:
        raise _refusal("saved_model", path, "it is not a TF2 SavedModel of one graph (TF1 loading runs its "
                                            "initialization and restore ops)")
    graph = model.meta_graphs[0].graph_def
    saver = model.meta_graphs[0].saver_def
    functions = {function.signature.name: function for function in graph.library.function}
    saver_nodes = {saver.restore_op_name, saver.save_tensor_name.split(":")[0]} - {""}
    saving = _closure(_called([n for n in graph.node if n.name in saver_nodes], functions), functions)
    others = _called([n for n in graph.node if n.name not in saver_nodes], functions)
    others |= set(model.meta_graphs[0].object_graph_def.concrete_functions) | (set(functions) - saving)
    saver_only = saving - _closure(others, functions)
    places = [(f"the graph's node {n.name}", n.op, SAVED_MODEL_OPS) for n in graph.node if n.name not in saver_nodes]
    places += [(f"the saver's node {n.name}", n.op, {"StatefulPartitionedCall", "PartitionedCall"})
               for n in graph.node if n.name in saver_nodes]
    for name, function in functions.items():
        allowed = SAVED_MODEL_OPS | CHECKPOINT_OPS if name in saver_only else SAVED_MODEL_OPS
        places += [(f"function {name}", node.op, allowed) for node in function.node_def]
    for where, op, allowed in places:
        if op not in allowed and op not in functions:
            raise _refusal("saved_model", path, f"it holds the op {op!r} (in {where})")


def check_stablehlo(exported, path: str) -> None:
    """ExportError unless the deserialized ``jax.export.Exported`` calls no host code and has no effects."""
    text = exported.mlir_module()
    targets = set(re.findall(r"custom_call @([\w.$-]+)", text)) | set(re.findall(r'call_target_name = "([^"]*)"',
                                                                                 text))
    unknown = sorted(targets - STABLEHLO_TARGETS)
    if unknown:
        raise _refusal("stablehlo", path, f"it calls the custom target {unknown[0]!r}")
    if exported.ordered_effects or exported.unordered_effects:
        raise _refusal("stablehlo", path, "it has side effects (host callbacks)")


def check_tflite(content: bytes, path: str) -> None:
    """ExportError unless the TFLite flatbuffer ``content`` uses builtin operators only."""
    from ai_edge_litert import schema_py_generated as schema

    try:
        model = schema.Model.GetRootAs(content, 0)
        codes = [model.OperatorCodes(i) for i in range(model.OperatorCodesLength())]
        builtin = [max(code.BuiltinCode(), code.DeprecatedBuiltinCode()) for code in codes]
    except Exception as error:  # noqa: BLE001 -- a flatbuffer that does not parse is a corrupt file
        raise ExportError(f"corrupt tflite artifact {path} ({type(error).__name__}: {error})") from None
    for code, number in zip(codes, builtin):
        if number == schema.BuiltinOperator.CUSTOM:
            name = (code.CustomCode() or b"").decode("utf-8", "replace")
            raise _refusal("tflite", path, f"it holds the custom operator {name!r}")


def _onnx_graph_problem(graph, onnx) -> str | None:
    for tensor in list(graph.initializer) + [node_attr.t for node in graph.node for node_attr in node.attribute]:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            return f"its tensor {tensor.name!r} reads external data from a file"
    for node in graph.node:
        if node.domain not in ONNX_DOMAINS:
            return f"its node {node.name!r} is the op {node.op_type!r} of the domain {node.domain!r}"
        for attribute in node.attribute:
            for subgraph in [attribute.g, *attribute.graphs]:
                problem = _onnx_graph_problem(subgraph, onnx)
                if problem:
                    return problem
    return None


def check_onnx(content: bytes, path: str) -> None:
    """ExportError unless the ONNX model ``content`` uses the standard domain only and no external data."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load_model_from_string(content)
    except (DecodeError, ValueError) as error:
        raise ExportError(f"corrupt onnx artifact {path} ({type(error).__name__}: {error})") from None
    if model.functions:
        raise _refusal("onnx", path, f"it defines the function {model.functions[0].name!r}")
    domains = sorted({opset.domain for opset in model.opset_import} - ONNX_DOMAINS)
    problem = _onnx_graph_problem(model.graph, onnx) or (domains and f"it imports the op domain {domains[0]!r}")
    if problem:
        raise _refusal("onnx", path, problem)
