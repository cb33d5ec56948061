"""Shared setup of the model-library tests: tf-keras (Keras 2) and quiet, seeded TensorFlow."""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same random state."""
    tf.keras.utils.set_random_seed(0)
    np.random.seed(0)
    yield
