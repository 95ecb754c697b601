"""Writes the Keras models exported to ONNX by tf2onnx that tests/test_onnx_exports.py imports:
keras_conv.onnx (NHWC input, Normalization, Conv2D + BatchNormalization, Flatten of NHWC
features, Dense + BatchNormalization, Dropout) and keras_dense.onnx (Normalization with
MNIST's mean and std, Dense layers), each with keras_*.npz: inputs (NHWC as Keras reads them)
and Keras's own logits for them. Not run by the tests (TensorFlow is not a test extra):

    python3 -m venv /tmp/tf && /tmp/tf/bin/pip install tensorflow-cpu==2.21.0 tf2onnx==1.17.0
    /tmp/tf/bin/python tests/exports/make_keras_onnx.py

(written with tensorflow-cpu 2.21.0, keras 3.15.1, tf2onnx 1.17.0, opset 17)."""
from pathlib import Path

import numpy as np
import tensorflow as tf
import tf2onnx

keras = tf.keras
HERE = Path(__file__).resolve().parent


def randomise(model, rng):
    """Random weights, and BatchNorm statistics away from their init (gamma, beta, mean, var)."""
    for layer in model.layers:
        weights = layer.get_weights()
        if not weights or isinstance(layer, keras.layers.Normalization):
            continue
        if isinstance(layer, keras.layers.BatchNormalization):
            g, b, m, v = (rng.normal(size=w.shape).astype(np.float32) for w in weights)
            layer.set_weights([1 + 0.3 * g, 0.3 * b, 0.3 * m, np.abs(v) + 0.5])
        else:
            layer.set_weights([(0.4 * rng.normal(size=w.shape)).astype(np.float32) for w in weights])


def conv_model():
    x = keras.Input((8, 8, 2), name="x")
    h = keras.layers.Normalization(mean=[0.5, 0.25], variance=[0.25, 0.0625])(x)  # std 0.5, 0.25: exact
    h = keras.layers.Conv2D(4, 3, padding="valid")(h)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.ReLU()(h)
    h = keras.layers.Conv2D(6, 4, strides=2, padding="valid", activation="relu")(h)
    h = keras.layers.Flatten()(h)  # of NHWC features: tf2onnx writes a Transpose before the Reshape
    h = keras.layers.Dense(12)(h)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.Activation("relu")(h)
    h = keras.layers.Dropout(0.5)(h)
    return keras.Model(x, keras.layers.Dense(5)(h)), (8, 8, 2)


def dense_model():
    x = keras.Input((6,), name="x")
    h = keras.layers.Normalization(mean=0.1307, variance=0.3081 ** 2)(x)  # MNIST's: not exact
    h = keras.layers.Dense(16, activation="relu")(h)
    return keras.Model(x, keras.layers.Dense(3)(h)), (6,)


def main():
    rng = np.random.default_rng(28)
    for name, make in (("keras_conv", conv_model), ("keras_dense", dense_model)):
        model, shape = make()
        randomise(model, rng)
        spec = (tf.TensorSpec((None, *shape), tf.float32, name="x"),)
        proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=17)
        (HERE / f"{name}.onnx").write_bytes(proto.SerializeToString())
        images = rng.uniform(0, 1, (16, *shape)).astype(np.float32)
        np.savez(HERE / f"{name}.npz", images=images, logits=model(images, training=False).numpy())


if __name__ == "__main__":
    main()
