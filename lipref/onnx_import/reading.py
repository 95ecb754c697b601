"""Reading an ONNX file: the ModelProto and its opset, the graph's one data input, the
attributes lipref reads (each of its type), and the constants (initializers and Constant
tensors), each checked before any array is made: its element type, and its declared size
against the values it stores (a tensor that declares 2^40 entries and stores 16 bytes is
refused before anything is allocated). Every refusal is one OnnxImportError naming the file
and the tensor, node or input."""
import math
import os

from ..errors import MissingExtraError, UserError, import_extra

ONNX_MISSING = "onnx is not installed: pip install 'lipref[onnx]'"
# The default domain's opsets read. From 7 Add and Gemm broadcast as NumPy does (no `broadcast`
# attribute); the ops read here keep their meaning up to 28 (later versions add element types).
OPSET_RANGE = (7, 28)
FLOAT_TYPES = (1, 10, 11, 16)  # TensorProto FLOAT, FLOAT16, DOUBLE, BFLOAT16
# the element types a constant may have: numbers and bool (strings, complex, float8, 4-bit: refused)
NUMBER_TYPES = (1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 16)
# the attributes lipref reads, by the Python type onnx.helper gives them (others are not read)
ATTRIBUTE_KINDS = {
    **dict.fromkeys(("group", "axis", "transA", "transB", "allowzero", "start", "end", "to", "training_mode",
                     "spatial"), "an integer"),
    **dict.fromkeys(("alpha", "beta", "min", "max", "epsilon"), "a number"),
    **dict.fromkeys(("kernel_shape", "strides", "pads", "dilations", "axes", "perm", "starts", "ends"),
                    "a list of integers"),
    "auto_pad": "a string",
}


class OnnxImportError(UserError, ValueError):
    """An ONNX file that cannot be imported (unreadable, or a graph outside what lipref reads)."""


class OnnxNotInstalled(MissingExtraError):
    """The onnx package is needed for this operation and is not installed."""


def require_onnx():
    """The onnx module, or OnnxNotInstalled with the install command."""
    return import_extra("onnx", ONNX_MISSING, OnnxNotInstalled)


def read_onnx(path):
    """The ModelProto in `path`, its default-domain opset checked against OPSET_RANGE."""
    onnx = require_onnx()
    if not os.path.isfile(path):
        raise OnnxImportError(f"{path}: no such ONNX file")
    try:
        proto = onnx.load(path)
    except Exception as exc:  # onnx raises DecodeError, ValueError, ... for a file that is not a model
        raise OnnxImportError(f"{path}: not a readable ONNX model ({type(exc).__name__}: {exc})".replace("\n", " "))
    if not proto.HasField("graph"):  # an empty file parses as an empty ModelProto
        raise OnnxImportError(f"{path}: not an ONNX model (no graph)")
    version = {o.domain or "ai.onnx": o.version for o in proto.opset_import}.get("ai.onnx")
    if version is None or not OPSET_RANGE[0] <= version <= OPSET_RANGE[1]:
        raise OnnxImportError(f"{path}: default-domain opset {version}; lipref reads opsets "
                              f"{OPSET_RANGE[0]} to {OPSET_RANGE[1]} (re-export with one of those)")
    return proto


def _type_name(code):
    from onnx import helper
    try:
        return helper.tensor_dtype_to_string(code).removeprefix("TensorProto.")
    except (KeyError, ValueError):
        return f"code {code}"


def tensor_array(tensor, refuse):
    """The host array a TensorProto holds, once its element type is a number type and its
    declared size equals what it stores; else `refuse(reason)` is raised, before any array
    of the declared size is made."""
    from onnx import TensorProto, helper, numpy_helper
    kind = tensor.data_type
    if kind not in NUMBER_TYPES:
        raise refuse(f"has element type {_type_name(kind)}; lipref reads numeric constants")
    if tensor.data_location == TensorProto.EXTERNAL or tensor.HasField("segment"):
        raise refuse("keeps its values outside the tensor (external data not loaded, or a segment)")
    dims = list(tensor.dims)
    if any(d < 0 for d in dims):
        raise refuse(f"declares a negative dimension {dims}")
    entries = math.prod(dims)
    if tensor.HasField("raw_data"):
        unit, stored = "bytes", len(tensor.raw_data)
        expected = entries * helper.tensor_dtype_to_np_dtype(kind).itemsize
    else:
        unit, stored, expected = "values", len(getattr(tensor, helper.tensor_dtype_to_field(kind))), entries
    if stored != expected:
        raise refuse(f"declares shape {dims} ({expected} {unit}) but stores {stored} {unit}")
    return numpy_helper.to_array(tensor)


def graph_constants(path, graph):
    """{name: host array} of the graph's initializers (`tensor_array`)."""
    constants = {}
    for init in graph.initializer:
        constants[init.name] = tensor_array(init, lambda why, n=init.name: OnnxImportError(
            f"{path}: initializer {n} {why}"))
    return constants


def graph_input(path, graph, constants):
    """(name, feature shape, fixed batch size or None, element type) of the graph's one data
    input, which must be a float tensor (N, C, H, W), (N, H, W, C) (transposed to the first, the
    chain finds) or (N, D) with known feature sizes."""
    inputs = [i for i in graph.input if i.name not in constants]  # old exporters list initializers too
    if len(inputs) != 1:
        raise OnnxImportError(f"{path}: the graph must have one input, found {len(inputs)} "
                              f"({', '.join(i.name for i in inputs)})")
    value, tensor = inputs[0], inputs[0].type.tensor_type
    dims = tensor.shape.dim
    shape = tuple(d.dim_value for d in dims[1:])
    if tensor.elem_type not in FLOAT_TYPES:
        raise OnnxImportError(f"{path}: input {value.name} has element type {tensor.elem_type}; lipref reads "
                              "floating-point inputs")
    if len(dims) not in (2, 4) or any(s <= 0 for s in shape):
        raise OnnxImportError(f"{path}: input {value.name} must be (N, C, H, W), (N, H, W, C) or (N, D) with known "
                              "feature "
                              f"sizes, got {[d.dim_value or d.dim_param or '?' for d in dims]}")
    return value.name, shape, dims[0].dim_value or None, tensor.elem_type


def _of_kind(value, kind):
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return {"an integer": number and isinstance(value, int), "a number": number, "a string": isinstance(value, str),
            "a list of integers": isinstance(value, list) and all(_of_kind(v, "an integer") for v in value)}[kind]


def attributes(node, refuse):
    """{name: value} of a node's attributes (strings as str); one that lipref reads must be of
    its kind (ATTRIBUTE_KINDS), else `refuse(reason)` is raised."""
    from onnx import helper
    values = {}
    for attribute in node.attribute:
        value = helper.get_attribute_value(attribute)
        value = value.decode(errors="replace") if isinstance(value, bytes) else value
        kind = ATTRIBUTE_KINDS.get(attribute.name)
        if kind is not None and not _of_kind(value, kind):
            raise refuse(f"attribute {attribute.name} must be {kind}, got {str(value)[:40]!r}")
        values[attribute.name] = value
    return values
