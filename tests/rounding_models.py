"""Networks whose float32 rounding changes what they compute, for the tests that the model
certified is the model in the file (ONNX, torch, .npz): Linear -> ReLU -> Linear on vectors,
float64, whose two top classes' rows differ by about 2^-30 of their size and biases by 2^-35.
Rounded to float32 the rows are equal, so the rounded model predicts class 0 everywhere (and
is certified at any eps); the file's model changes class at a finite distance from x = 0."""
import numpy


def rounding_sensitive_weights(seed, n_in=5, hidden=8):
    """(w1, b1, w2, b2), float64: hidden biases negative (every ReLU off at x = 0, where the
    margin of class 0 is 2^-35), class 2's row far below the other two."""
    rng = numpy.random.default_rng(seed)
    w1, b1 = rng.normal(size=(hidden, n_in)), -rng.uniform(0.05, 0.2, hidden)
    row = rng.normal(size=hidden).astype(numpy.float32).astype(numpy.float64)
    w2 = numpy.stack([row + 2.0 ** -30 * rng.uniform(-1, 1, hidden) * numpy.abs(row), row, -10 * numpy.abs(row)])
    return w1, b1, w2, numpy.array([2.0 ** -35, 0.0, -1.0])


def nearest_counterexample(logits_of, x, label, rng, n_directions=200):
    """A point x' with argmax logits_of(x') != label, near x: the smallest step found along
    random directions (bisection), taken 1% further so that the class change is clear."""
    best = None
    for u in rng.normal(size=(n_directions,) + x.shape[1:]):
        u /= numpy.linalg.norm(u)
        if numpy.argmax(logits_of(x + 64 * u)) == label:
            continue
        lo, hi = 0.0, 64.0
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if numpy.argmax(logits_of(x + mid * u)) == label else (lo, mid)
        if best is None or hi < best[0]:
            best = (hi, u)
    assert best is not None, "no counterexample found: the drawn model does not test anything"
    return x + 1.01 * best[0] * best[1]
