"""What an ONNX chain folds into its conv and linear layers instead of reading as layers
(lipref.folding has the arithmetic and its guarantees):

- Add, Sub, Mul, Div of a constant (one value per feature, or per channel before or after a
  Conv): right after a Conv / Gemm / MatMul, onto its outputs (a bias Add, Keras's batch norm
  as Mul + Add); elsewhere held until the next Conv / Gemm / MatMul and folded onto its inputs
  (input normalisation, (x - mean) / std or x * (1 / std) + c). The fold is exact where the
  model's precision or float64 holds it; else correctly rounded to float64 and recorded: an
  input normalisation (constants before the first layer) is then refused by sound mode, a fold
  between layers (Keras's batch norm) is certified as folded in both modes, as a BatchNorm is.
  A shift before a padded Conv is refused in any mode: the padded zeros are zeros of the
  normalised input, which no per-channel bias reproduces;
- BatchNormalization (inference) right after a Conv / Gemm / MatMul, folded in float64;
- Transpose: at the input (Keras's NHWC input and its Transpose (0, 3, 1, 2)) it fixes the
  layout the imported model reads; after a layer (Keras's flatten of NHWC features) it is
  carried to the next Flatten and the linear layer after it, whose columns it reorders (exact).
"""
import math
from fractions import Fraction

from ..backend import host
from ..folding import Elementwise, batchnorm_problem, fold_affine, fold_batchnorm, record, store
from ..layers import Conv2d

ARITHMETIC = ("Add", "Sub", "Mul", "Div")
FLOAT_ORDER = {10: 0, 16: 0, 1: 1, 11: 2}  # FLOAT16 and BFLOAT16 < FLOAT < DOUBLE: widening keeps values


class FoldingOps:
    """The Chain's ops that fold (see the module docstring). State: `pending` (an Elementwise on
    the canonical features, or None), `side` ("input" / "output"), `order` (for each position
    of the current tensor, the index of its feature in lipref's layout)."""

    def reset_order(self):
        self.order = host.arange(math.prod(self.canonical)).reshape(self.canonical)

    @property
    def in_order(self):
        return self.order.shape == tuple(self.canonical) and bool(
            host.all(self.order.ravel() == host.arange(self.order.size)))

    def canonical_array(self, node, a):
        """Constant `a`, broadcast to the current features (it must fit them), in lipref's layout."""
        if not self.fits(a, self.shape):
            raise self.error(node, f"constant of shape {tuple(a.shape)} does not fit the features {self.shape}")
        current = host.broadcast_to(a, (1, *self.shape))[0].ravel()
        out = host.empty(self.order.size, dtype=a.dtype)
        out[self.order.ravel()] = current
        return out.reshape(self.canonical)

    # ------------------------------------------------ elementwise constants

    def on_arithmetic(self, node):
        """Add / Sub / Mul / Div of the data and one constant: composed into the pending map."""
        name = next(i for i in node.input if i in self.constants)
        constant = self.canonical_array(node, self.data_constant(node, "constant"))
        if self.pending is None:
            self.pending, self.side, self.pending_from = Elementwise(self.canonical), \
                "output" if self.after_affine else "input", []
            self.at_input = not any(layer.is_affine for layer in self.layers)  # an input normalisation
        why = self.pending.apply(node.op_type, constant, data_first=node.input[0] == self.current)
        if why is not None:
            raise self.error(node, f"{why}: lipref folds x + c, x - c, c - x, x * c and x / c into a conv or linear "
                                   "layer")
        self.pending_from.append((node, name))

    on_Add = on_Sub = on_Mul = on_Div = on_arithmetic

    def _described(self):
        ops = [f"{node.op_type} {node.name or '#'}" for node, _ in self.pending_from]
        return ", ".join(ops)

    def _per_channel(self, layer, node):
        pair = self.pending.per_channel() if isinstance(layer, Conv2d) else (self.pending.scale, self.pending.shift)
        if pair is None:
            raise self.error(node, f"{self._described()}: constants that vary over the image around a conv "
                                   "(lipref folds one value per channel)")
        return pair

    def _store(self, node, index, folded):
        """Store layer `index`'s folded weight and bias (`folding.fold_affine`'s result): in the
        model's precision, or float64, where that holds them exactly, else correctly rounded to
        float64. Returns whether the stored values are the exact fold."""
        if folded is None:
            raise self.error(node, f"{self._described()} folded into layer {index} gives values beyond float64")
        weight, w_exact, bias = folded
        dtypes = [self.params[f"{index}.weight"].dtype, self.params[f"{index}.bias"].dtype]
        dtypes += [self.constants[name].dtype for _, name in self.pending_from]
        precision = "float64" if any(d == host.float64 for d in dtypes) else "float32"
        stored = store(bias, precision)
        if stored is None:
            raise self.error(node, f"{self._described()} folded into layer {index} gives values beyond float64")
        b, b_exact = stored
        if weight is not None:
            narrow = weight.astype(host.float32) if precision == "float32" and w_exact else None
            keep = narrow is not None and bool(host.all(narrow == weight))
            self.params[f"{index}.weight"] = narrow if keep else weight
        self.params[f"{index}.bias"] = b
        exact = w_exact and b_exact
        return exact

    def _record(self, index, exact, scaled):
        """Record the fold (a plain bias Add, exact, is the layer's bias: not recorded)."""
        if scaled or not exact:
            w, b = self.params[f"{index}.weight"], self.params[f"{index}.bias"]
            self.folds.append(record("elementwise", self._described(), index, exact, str(host.result_type(w, b)),
                                     side=self.side, input_normalisation=self.side == "input" and self.at_input))
        self.pending = None

    def flush_output(self, node):
        """Fold a pending map on the last layer's outputs into that layer: from the layer's
        values, or, where an earlier fold onto its inputs rounded, from the file's values with
        both maps (`origin`), so that the layer is rounded once."""
        index = len(self.layers) - 1
        scale, shift = self._per_channel(self.layers[index], node)
        scaled = any(v != 1 for v in scale.ravel())
        if index in self.origin:  # after an earlier output map r1 z + s1: r (r1 z + s1) + s
            weight, bias, inputs, (r1, s1) = self.origin[index]
            self.origin[index] = (weight, bias, inputs, (scale * r1, scale * s1 + shift))
            exact = self._store(node, index, fold_affine(weight, bias, inputs, self.origin[index][3]))
            if scaled:
                self._record(index, exact, scaled)
            self.pending = None  # a plain bias Add: the earlier fold's record says the layer rounded
            return
        weight, bias = self.params[f"{index}.weight"], self.params[f"{index}.bias"]
        exact = self._store(node, index, fold_affine(weight, bias, None, (scale, shift)))
        if not exact:
            self.origin[index] = (weight, bias, None, (scale, shift))
        self._record(index, exact, scaled or not exact)

    def fold_into_inputs(self, node, index):
        """Fold a pending map on the inputs of the layer just added (`index`) into it."""
        layer = self.layers[index]
        inputs = self._per_channel(layer, node)
        if isinstance(layer, Conv2d) and layer.padding and self.pending.shifts:
            raise self.error(node, f"{self._described()} shifts the inputs of a conv with padding {layer.padding}: its "
                                   "padded zeros are zeros of the shifted input, which no bias reproduces (export "
                                   "the model without the normalisation, or with an unpadded first conv)")
        weight, bias = self.params[f"{index}.weight"], self.params[f"{index}.bias"]
        exact = self._store(node, index, fold_affine(weight, bias, inputs, None))
        if not exact:
            ones = host.full(weight.shape[0], Fraction(1), dtype=object)
            self.origin[index] = (weight, bias, inputs, (ones, ones * 0))
        self._record(index, exact, True)

    def passes_pending(self, node):
        """Whether a pending input-side map may pass `node` on its way to the next layer (an
        AveragePool commutes with a per-channel map, and with a shift where it pads nothing)."""
        if node.op_type != "AveragePool":
            return True
        pads = self.attributes(node).get("pads", [0])
        return self.pending.per_channel() is not None and (not self.pending.shifts or not any(pads))

    # ------------------------------------------------ BatchNormalization

    def on_BatchNormalization(self, node):
        """BatchNormalization in inference mode right after a Conv / Gemm / MatMul: folded into
        it in float64 (lipref.folding.fold_batchnorm)."""
        a = self.attributes(node)
        if a.get("training_mode", 0) or a.get("spatial", 1) != 1 or sum(1 for o in node.output if o) > 1:
            raise self.error(node, "lipref folds BatchNormalization in inference mode (training_mode 0, spatial 1, "
                                   "one output)")
        if not self.after_affine or not self.in_order:
            raise self.error(node, "lipref folds BatchNormalization only right after a Conv, Gemm or MatMul")
        index = len(self.layers) - 1
        weight, bias = self.params[f"{index}.weight"], self.params[f"{index}.bias"]
        scale, beta, mean, var = (self.param(node, node.input[k], what) for k, what in
                                  ((1, "scale"), (2, "B"), (3, "mean"), (4, "var")))
        eps = a.get("epsilon", float(host.float32(1e-5)))  # ONNX's default, a float32 number
        problem = batchnorm_problem(mean, var, eps, weight.shape[0])
        if problem is None and (scale.shape != mean.shape or beta.shape != mean.shape):
            problem = f"scale {tuple(scale.shape)} and B {tuple(beta.shape)} for {weight.shape[0]} channels"
        if problem is not None:
            raise self.error(node, problem)
        w, b, bounds = fold_batchnorm(weight, bias, scale, beta, mean, var, eps)
        self.params[f"{index}.weight"], self.params[f"{index}.bias"] = w, b
        self.folds.append(record("batchnorm", f"BatchNormalization {self.label}", index, False, "float64",
                                 epsilon=float(eps), **bounds))

    # ------------------------------------------------ layout

    def on_Transpose(self, node):
        """Transpose of the features (the batch axis stays first): at the input, the layout the
        imported model reads; after a layer, a reordering carried to the next linear layer."""
        perm = list(self.attributes(node).get("perm", range(len(self.shape), -1, -1)))
        if sorted(perm) != list(range(len(self.shape) + 1)) or perm[0] != 0:
            raise self.error(node, f"perm {perm}: lipref reads transposes that keep the batch axis first")
        axes = [p - 1 for p in perm[1:]]
        if not self.layers:  # at the input: the model reads the transposed layout
            self.input_perm = [self.input_perm[p] for p in axes] if self.input_perm else axes
            self.canonical = self.shape = tuple(self.shape[p] for p in axes)
            self.reset_order()
            if self.pending is not None:
                self.pending = self.pending.transposed(axes)
            return
        self.order = self.order.transpose(axes)
        self.shape = tuple(self.order.shape)

    def on_Cast(self, node):
        """A Cast of the data to its own float type or a wider one (values kept): nothing to do."""
        to = self.attributes(node).get("to")
        if FLOAT_ORDER.get(to, -1) < FLOAT_ORDER.get(self.data_type, 99) or (to in (10, 16) and to != self.data_type):
            raise self.error(node, f"a Cast of the data from type {self.data_type} to {to}: lipref reads casts that "
                                   "keep the values (to the same float type or a wider one)")
        self.data_type = to

    def input_layout(self):
        """The layout of the file's input, as the metadata says it."""
        if len(self.input_shape) == 1:
            return "ND"
        if self.input_perm in (None, [0, 1, 2]):
            return "NCHW"
        axes = [0] + [p + 1 for p in self.input_perm]
        return "NHWC" if self.input_perm == [2, 0, 1] else f"axes {axes} of the file's"
