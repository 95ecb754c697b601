"""Import an ONNX model (a chain of conv, linear and ReLU-like layers) as a lipref model.

ONNX is what TensorFlow (GloRo), Keras, JAX and torch export to, so this makes their models
auditable. The graph must be one chain from its single input, (N, C, H, W), (N, H, W, C) with a
Transpose to the first (Keras's) or (N, D), the batch size symbolic or fixed, to logits
computed by a linear layer, made of:

- Conv (square kernel, equal strides, the same pad on every side or auto_pad VALID, dilation
  1, group 1); Gemm (alpha = beta = 1, transA = 0, transB 0 or 1); MatMul with a constant;
  each optionally followed by an Add of a constant bias (one per channel after a Conv);
- AveragePool (square kernel, equal strides, the same pad on every side, padded zeros
  counted: count_include_pad 1 or no padding; no ceil_mode): lipref's AvgPool2d;
- Relu, Max(x, 0); Clip with min 0 (no max: ReLU; a scalar max t: a clipped ReLU with
  threshold t), its bounds as inputs (opset >= 11) or attributes (older);
- Min(x, T) followed by Relu, Clip(min 0) or Max(., 0): the paper's official clipped ReLU
  clamp(min(x, T), min=0), T per neuron ([1, C, H, W], [1, F], ...) or scalar;
- Flatten (axis 1), or Reshape to (N, -1) / (-1, F), including the Shape / Gather / Slice /
  Unsqueeze / Concat / Cast arithmetic exporters write for a flatten (constants.py);
- Identity, Dropout (at inference the identity), a Cast of the data that keeps its values;
- what folds into a layer (folds.py): Add / Sub / Mul / Div of a constant, BatchNormalization
  after a layer, Transposes at the input and before a flatten.

lipref's clipped ReLU is min(max(x, 0), t), the official one max(min(x, t), 0): equal for
t >= 0, and for t < 0 the official output is 0, which lipref's gives with t = 0. So negative
thresholds are raised to 0 at import: the imported model computes the file's function.

The parameters are the file's, exactly: FLOAT (and FLOAT16, BFLOAT16, widened exactly) give a
float32 model, DOUBLE a float64 one (a graph that mixes them widens to float64); nothing is
rounded (lipref.precision). A fold is exact where the model's precision or float64 holds it,
else correctly rounded to float64 and recorded in metadata["folds"] (lipref.folding says what
each mode then certifies); metadata["input_layout"] says whether the file read NCHW or NHWC.

Anything else (another op, a branch, several inputs, an attribute outside these, a graph not
ending in a linear layer, a node without its inputs or output, a constant whose declared size
is not what it stores) is a one-line OnnxImportError naming the node, its op type or the
constant. `reading.py` reads and checks the file, `chain.py` builds the layers. The onnx
package is optional: it is imported inside the functions that need it.
"""
import os

from ..layers import ClippedReLU
from ..models import save_model
from .chain import Chain
from .reading import (
    ONNX_MISSING,
    OPSET_RANGE,
    OnnxImportError,
    OnnxNotInstalled,
    graph_constants,
    graph_input,
    read_onnx,
    require_onnx,
)

__all__ = ["ONNX_MISSING", "OPSET_RANGE", "OnnxImportError", "OnnxNotInstalled", "import_onnx_model", "read_onnx",
           "require_onnx"]


def import_onnx_model(path, out_path=None):
    """A lipref model (NumPy backend, parameters in the file's precision) computing the ONNX
    model in `path` (see the package docstring for what is read); also saved to out_path when
    given (models.save_model, atomic)."""
    path = os.fspath(path)
    graph = read_onnx(path).graph
    constants = graph_constants(path, graph)
    name, shape, batch, data_type = graph_input(path, graph, constants)
    chain = Chain(path, name, shape, constants, batch, data_type)
    for index, node in enumerate(graph.node):
        chain.add(node, index)
    model = chain.finish([o.name for o in graph.output])
    clipped = any(isinstance(layer, ClippedReLU) for layer in model.layers)
    model.metadata = {"arch": "onnx", "activation": "clipped_relu" if clipped else "relu", "n_classes": model.n_classes,
                      "input_shape": list(model.input_shape), "threshold_init": 1.0,
                      "imported_from": os.path.basename(path), "input_layout": chain.input_layout()}
    if chain.folds:
        model.metadata["folds"] = chain.folds
    if out_path is not None:
        save_model(out_path, model)
    return model
