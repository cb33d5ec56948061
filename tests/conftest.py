"""Test-wide setup: tf-keras (Keras 2) for TFRS, quiet TF logs, the shared data location."""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ML1M_DIR = os.environ.get("T2DIFF_ML1M_DIR",
                          os.path.join(REPO_ROOT, "..", "shared", "data", "ml-1m"))


@pytest.fixture
def ml1m_dir():
    """The MovieLens-1M folder (read at run time, never copied into the repo)."""
    if not os.path.isdir(ML1M_DIR):
        pytest.skip(f"MovieLens-1M not found at {ML1M_DIR} (set T2DIFF_ML1M_DIR)")
    return ML1M_DIR
