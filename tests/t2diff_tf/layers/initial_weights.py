"""Checks on a built layer's initial weights, shared by the layer tests."""

import itertools

import numpy as np


def assert_random_weights_start_apart(layer) -> None:
    """No two randomly initialised weights of ``layer`` start from the same draws.

    One unseeded Keras initializer instance returns the same values on every call, so a layer
    that shares one instance starts its same-shaped kernels equal, and differently shaped ones
    from a common prefix of one random stream. Compares the flattened leading values of every
    pair of non-constant weights.
    """
    weights = [(w.name, w.numpy().ravel()) for w in layer.weights]
    random = [(name, values) for name, values in weights if np.unique(values).size > 16]
    assert len(random) >= 2, [name for name, _ in weights]
    for (name_a, a), (name_b, b) in itertools.combinations(random, 2):
        n = min(a.size, b.size, 64)
        assert not np.array_equal(a[:n], b[:n]), f"{name_a} and {name_b} start equal"
