"""Acceptance: on synthetic drift data, full-corpus Recall@20 of T2Diff against the mean-pooled
two-tower and the Mixed-attention-only ablation (fixed seed, about 2-3 minutes on 2 cores, so
behind the ``heavy`` marker: ``make test-heavy``; the default suite keeps T2Diff's learning
tests: ``test_fit_reduces_the_loss``, ``test_t2diff_learns_from_every_chunk_position``, and
every registered model trained, ranked and served in ``test_registry``).

Data: ``components.preprocessing.synthetic`` users who, inside a session, move a fixed number of
clusters (their velocity) along a ring of item clusters at every behaviour; leave-one-out windows
of 20 behaviours, session = the last 10; 1000 users, 50 clusters, six velocities.

What holds, and what does not yet:

* T2Diff (and the ablation) beat the mean-pooled two-tower by a wide margin: the next item's
  cluster follows from the direction of travel, which a bag of past items cannot see.
* T2Diff against Mixed-attention only is not asserted: it does not hold on this data, and the
  issue tracker (issue 3) carries the measurements. The ablation's position-aware self-attention over the session decodes the same drift, and ``x_hat``
  carries no information the session encoder cannot compute from the same behaviours. Measured on
  this data (1000 test users, 5 epochs): T2Diff 0.394..0.424 vs 0.403..0.408 over seeds and
  approximator sizes; with the leakage-free ``training_x_hat="inference_sampler"`` T2Diff led
  at every epoch but by at most 0.02 (0.413 vs 0.408), inside the noise of 1000 users (standard
  error about 0.015). With the generator's defaults (20 clusters x 4 velocities) the two tie
  (0.568 vs 0.553 after 8 epochs, 0.597 vs 0.599 after 3 on 1500 users).
* Fewer training windows do not change that (2026-11-23; test Recall@20 after 8 epochs, 50
  clusters x 6 velocities): 1000 users x 2 windows, mixed 0.081 vs T2Diff 0.099 (one seed); 2000
  users x 3 windows, 0.278 vs 0.267; 3000 users x 2 windows, 0.292 vs 0.289 (seed 1). The dense
  next-drift supervision of ``L_KL`` does not give the session encoder anything it does not learn
  from the tower loss, at 3-5x the training time.
"""

import time

import pytest
import tensorflow as tf

from components.preprocessing.config import WindowConfig  # noqa: E402
from components.preprocessing.inmemory import synthetic_arrays  # noqa: E402
from components.preprocessing.synthetic import SyntheticConfig  # noqa: E402
from t2diff_tf import features as F  # noqa: E402
from t2diff_tf.layers.diffusion import DiffusionConfig  # noqa: E402
from t2diff_tf.layers.unet import UNetConfig  # noqa: E402
from t2diff_tf.metrics import evaluate  # noqa: E402
from t2diff_tf.models import T2DiffConfig, TwoTowerConfig, build_model  # noqa: E402

SPEC = F.ExampleSpec(history_length=20)
SYNTHETIC = SyntheticConfig(num_users=1000, num_clusters=50, velocities=(-3, -2, -1, 1, 2, 3),
                            seed=0)
EPOCHS = {"mean_pool_two_tower": 3, "mixed_attention": 5, "t2diff": 5}
DIMENSION = 32
T2DIFF = T2DiffConfig(embedding_dim=DIMENSION,
                      diffusion=DiffusionConfig(approximator=UNetConfig(filters=(16, 32))))
CONFIGS = {
    "mean_pool_two_tower": TwoTowerConfig(embedding_dim=DIMENSION),
    "mixed_attention": T2DIFF,
    "t2diff": T2DIFF,
}


def _train_and_evaluate(name, data):
    tf.keras.utils.set_random_seed(0)
    model = build_model(name, CONFIGS[name], num_items=data.num_items,
                        item_features=data.item_features.matrix, example_spec=SPEC)
    model.compile(tf.keras.optimizers.Adam(3e-3))
    names = F.QUERY_FEATURES + (F.TARGET,)
    train = tf.data.Dataset.from_tensor_slices(
        {n: data.splits["train"][n] for n in names}).shuffle(100_000, seed=0).batch(256)
    model.fit(train, epochs=EPOCHS[name], verbose=0)
    return evaluate(model, data.splits["test"], ks=(20,), num_bootstrap=0)["recall@20"]


@pytest.fixture(scope="module")
def recall_at_20():
    start = time.time()
    data = synthetic_arrays(SYNTHETIC, WindowConfig(example=SPEC))
    recall = {name: _train_and_evaluate(name, data) for name in CONFIGS}
    print(f"\nRecall@20 on {len(data.splits['test'][F.TARGET])} test users: {recall} "
          f"({time.time() - start:.0f} s)")
    return recall


@pytest.mark.heavy
def test_t2diff_beats_mean_pooled_two_tower(recall_at_20):
    # Everything learned something (1000 items: chance Recall@20 = 0.02) ...
    assert recall_at_20["mean_pool_two_tower"] > 0.05
    # ... and the drift-aware towers see what the bag of items cannot.
    assert recall_at_20["t2diff"] > recall_at_20["mean_pool_two_tower"] + 0.1
    assert recall_at_20["mixed_attention"] > recall_at_20["mean_pool_two_tower"] + 0.1
