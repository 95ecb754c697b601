"""Constant folding for an ONNX graph: Constant nodes, and the shape arithmetic exporters write
around a flatten (torch's `x.view(x.size(0), -1)`, tf2onnx's Shape / Gather / Cast / Slice /
Concat / Cast before a Reshape), with the batch size a symbol. Only integer (shape) values are
computed, besides Casts (the model's own rounding, as ONNX defines it); no float arithmetic is
folded, so that no weight is rounded by lipref."""
from ..backend import host
from .reading import tensor_array

BATCH = "N"  # the batch size, a symbol in shape arithmetic
SHAPE_OPS = ("Constant", "Shape", "Gather", "Unsqueeze", "Squeeze", "Concat", "Cast", "Identity", "Slice")
INTEGER_CASTS = (6, 7, 12, 13)  # TensorProto INT32, INT64, UINT32, UINT64: shape values


def constant_value(chain, node, a):
    """The value of a Constant node (`value`, `value_float(s)` or `value_int(s)`)."""
    if "value" in a:
        return tensor_array(a["value"], lambda why: chain.error(node, f"tensor {why}"))
    key = next((k for k in ("value_float", "value_floats", "value_int", "value_ints") if k in a), None)
    if key is not None:  # ONNX's float attributes are float32 numbers: exact in float32
        return host.asarray(a[key], dtype=host.float32 if "float" in key else host.int64)
    raise chain.error(node, f"attribute {', '.join(a) or '(none)'}: lipref reads numeric constants only")


def _cast(chain, node, value, to):
    """Cast of a constant, as the model computes it: integers to integers (shape values, the
    batch symbol kept), a float to a float (ONNX's Cast rounds to nearest, as astype does: the
    value the model uses), between integers and floats where the values are kept (the legacy
    exporter's shape arithmetic in floats); others refused."""
    from onnx import helper
    target = host.dtype(helper.tensor_dtype_to_np_dtype(to))
    if value.dtype == object:
        return value
    kinds = value.dtype.kind + target.kind
    if kinds in ("ii", "iu", "ui", "uu", "ff"):
        return value.astype(target)
    if value.dtype.kind in "iuf" and target.kind in "iuf":  # int <-> float: where the values are kept
        with host.errstate(invalid="ignore", over="ignore"):
            out = value.astype(target)
            if bool(host.all(out.astype(value.dtype) == value)):
                return out
    raise chain.error(node, f"a Cast of a {value.dtype} constant to {target}: lipref folds casts between integers, "
                            "between floats, and between integers and floats that keep the values")


def _slice(value, args, a):
    """Slice on the first axes named (starts, ends[, axes[, steps]]): inputs from opset 10,
    attributes before."""
    starts = a.get("starts", None if len(args) < 2 else args[1].tolist())
    ends = a.get("ends", None if len(args) < 3 else args[2].tolist())
    axes = a.get("axes", None if len(args) < 4 or args[3] is None else args[3].tolist())
    steps = None if len(args) < 5 or args[4] is None else args[4].tolist()
    axes = list(range(len(starts))) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    index = [slice(None)] * value.ndim
    for axis, start, end, step in zip(axes, starts, ends, steps):
        index[int(axis)] = slice(int(start), int(end), int(step))
    return value[tuple(index)]


def shape_op(chain, node):
    """The value of a shape-arithmetic node on constants (object arrays where the batch symbol
    is in them)."""
    a, args = chain.attributes(node), [chain.constants.get(i) if i else None for i in node.input]
    op = node.op_type
    if op == "Constant":
        return constant_value(chain, node, a)
    if op == "Shape":
        known = chain.shapes.get(node.input[0])  # a tensor of the chain, or a constant
        full = [chain.batch or BATCH, *known] if known is not None else list(args[0].shape)
        return host.asarray(full[a.get("start", 0):a.get("end")], dtype=object)
    if op == "Gather":
        return host.asarray(host.take(args[0], args[1].astype(int), axis=a.get("axis", 0)), dtype=args[0].dtype)
    if op in ("Unsqueeze", "Squeeze"):  # axes: an attribute before opset 13, an input from 13
        axes = a.get("axes", None if len(args) < 2 or args[1] is None else [int(v) for v in args[1]])
        axes = None if axes is None else tuple(axes)
        return host.squeeze(args[0], axis=axes) if op == "Squeeze" else host.expand_dims(args[0], axes)
    if op == "Concat":
        return host.concatenate([host.atleast_1d(v) for v in args], axis=a.get("axis", 0))
    if op == "Slice":
        return _slice(args[0], args, a)
    if op == "Cast":
        return _cast(chain, node, args[0], a.get("to"))
    return args[0]  # Identity
