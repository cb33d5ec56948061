"""A small trained model from the registry and one full export of it, shared by the tests."""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import dataclasses  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from t2diff_tf import features as F  # noqa: E402
from t2diff_tf.models import TwoTowerConfig, build_model  # noqa: E402
from t2diff_tf.serving.export import export_for_serving  # noqa: E402
from t2diff_tf.serving.scann_index import ScannConfig  # noqa: E402
from t2diff_tf.serving.warmup import synthetic_query_features  # noqa: E402

NUM_ITEMS = 1500
SPEC = F.ExampleSpec(history_length=8, num_time_lag_buckets=8)
K = 20
VERSION = 7
# A real tree + anisotropic hashing + reordering on the small corpus (the automatic config would
# pick exact brute force below 4096 items).
SCANN = ScannConfig(num_leaves=24, num_leaves_to_search=8, reorder_k=100)


@dataclasses.dataclass
class Exported:
    model: object
    result: object
    vocabulary_path: str
    queries: dict


def random_windows(batch, seed):
    """Windows of the feature contract with random items and targets."""
    windows = dict(synthetic_query_features(SPEC, NUM_ITEMS, batch, seed=seed))
    windows[F.TARGET] = np.random.default_rng(seed).integers(1, NUM_ITEMS + 1, batch)
    return windows


def train_small_model():
    tf.keras.utils.set_random_seed(0)
    model = build_model(
        "mean_pool_two_tower",
        TwoTowerConfig(embedding_dim=16, user_tower_units=(32,), item_tower_units=(32,)),
        num_items=NUM_ITEMS, example_spec=SPEC)
    model.compile(optimizer=tf.keras.optimizers.Adam(1e-2))
    data = tf.data.Dataset.from_tensor_slices(random_windows(256, seed=1)).batch(64)
    model.fit(data, epochs=2, verbose=0)
    return model


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """The model, its export (top-K k = 20, ScaNN tree) and held-out query windows."""
    root = tmp_path_factory.mktemp("export")
    vocabulary = root / "vocabulary.tsv"
    vocabulary.write_text("int_id\traw_id\tcount\n" + "".join(
        f"{i}\traw{i}\t{i % 7 + 1}\n" for i in range(1, NUM_ITEMS + 1)))
    model = train_small_model()
    result = export_for_serving(model, SPEC, str(root / "serving"), str(vocabulary),
                                version=VERSION, k=K, scann=SCANN)
    queries = {n: v for n, v in random_windows(32, seed=2).items() if n in F.QUERY_FEATURES}
    return Exported(model=model, result=result, vocabulary_path=str(vocabulary), queries=queries)
