"""The contract every registered model keeps, so that the pipeline and the benchmarks can treat
them alike: built by name from a dict, trained by ``fit``, ranked by ``evaluate``, and served
through its user tower as a SavedModel that answers like the live model.
"""

import numpy as np
import pytest
import tensorflow as tf

from t2diff_tf import features as F
from t2diff_tf.metrics import evaluate
from t2diff_tf.models.registry import available_models, build_model

SPEC = F.ExampleSpec(history_length=8)
NUM_ITEMS = 30
GENRES = np.eye(NUM_ITEMS + 1, 4, dtype=np.float32)[np.arange(NUM_ITEMS + 1) % 4]
GENRES[0] = 0.0

# Small configurations; samplers deterministic so that a served embedding can be compared.
CONFIGS = {
    "t2diff": {"embedding_dim": 8, "diffusion": {"sampler": "fast", "sampler_steps": 3,
                                                 "approximator": {"filters": (4, 8)}}},
    "wo_dp": {"embedding_dim": 8, "diffusion": {"sampler": "fast", "sampler_steps": 3,
                                                "approximator": {"filters": (4, 8)}}},
    "mixed_attention": {"embedding_dim": 8},
    "mean_pool_two_tower": {"embedding_dim": 8},
    "sasrec": {"embedding_dim": 8},
    "gru4rec": {"embedding_dim": 8},
    "caser": {"embedding_dim": 8, "sequence_length": 4},
    "bert4rec": {"embedding_dim": 8},
    "dat_plus": {"embedding_dim": 8},
    "diffurec": {"embedding_dim": 8, "sampler": "deterministic"},
    "fit": {"embedding_dim": 8},
    "mamba4rec": {"embedding_dim": 8, "state_dim": 4},
    # The TensorFlow reimplementation's options, the furthest from the defaults: the time bias
    # reads history_timestamps and history_time_lag; positions from the newest, no offsets.
    "hstu": {"embedding_dim": 8, "num_blocks": 2, "linear_dim": 4, "attention_dim": 4,
             "time_bias": True, "attention_normalization": "visible_keys",
             "residual": "normalized_input", "position_origin": "last",
             "relative_position_bias": False},
    "contrast_vae": {"embedding_dim": 8},
    "stosa": {"embedding_dim": 8},
}


def _windows(n=64, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, SPEC.history_length + 1, n)
    history = np.zeros([n, SPEC.history_length], np.int64)
    for row, length in enumerate(lengths):
        history[row, -length:] = rng.integers(1, NUM_ITEMS + 1, length)
    valid = history > 0
    return {F.USER_ID: np.array([str(i).encode() for i in range(n)]),
            F.HISTORY: history,
            F.HISTORY_TIME_LAG: np.where(valid, rng.integers(1, SPEC.num_time_lag_buckets,
                                                             history.shape), 0),
            F.HISTORY_SESSION: np.where(valid, 0, F.PADDING_SESSION),
            F.HISTORY_TIMESTAMPS: np.where(valid, np.cumsum(rng.integers(0, 10 ** 5, history.shape),
                                                            axis=1), 0),
            F.SESSION_LENGTH: np.minimum(lengths, 4).astype(np.int64),
            F.TARGET: rng.integers(1, NUM_ITEMS + 1, n).astype(np.int64)}


def test_every_registered_model_has_a_test_configuration():
    assert set(available_models()) == set(CONFIGS)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_registered_model_trains_ranks_and_serves(name, tmp_path):
    tf.keras.utils.set_random_seed(0)
    model = build_model(name, CONFIGS[name], num_items=NUM_ITEMS, item_features=GENRES,
                        item_frequencies=np.full(NUM_ITEMS + 1, 1.0 / NUM_ITEMS),
                        example_spec=SPEC)
    data = _windows()
    train = tf.data.Dataset.from_tensor_slices(
        {k: v for k, v in data.items() if k != F.USER_ID}).batch(16)
    model.compile(optimizer=tf.keras.optimizers.Adam(1e-2))
    history = model.fit(train, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))

    result = evaluate(model, data, ks=(10,), num_bootstrap=0)
    assert result.num_examples == 64 and 0.0 <= result["recall@10"] <= 1.0

    # The target is a label: the user tower gives the same embedding whatever it is.
    query = {k: tf.constant(data[k][:5]) for k in F.QUERY_FEATURES}
    e_u = model.query_embeddings(query).numpy()
    relabelled = dict(query, **{F.TARGET: tf.constant([1] * 5, tf.int64)})
    np.testing.assert_allclose(model.query_embeddings(relabelled).numpy(), e_u, atol=1e-6)

    # The serving function survives a SavedModel round trip and answers like the live model.
    module = tf.Module()
    module.model = model  # tracks the variables the signature captures
    module.serve = model.serving_user_tower()
    tf.saved_model.save(module, str(tmp_path / "user_tower"),
                        signatures={"serving_default": module.serve})
    loaded = tf.saved_model.load(str(tmp_path / "user_tower"))
    served = loaded.signatures["serving_default"](**query)["user_embedding"].numpy()
    np.testing.assert_allclose(served, e_u, rtol=1e-4, atol=1e-5)


SEQUENCE_MODELS = ("bert4rec", "contrast_vae", "gru4rec", "hstu", "mamba4rec", "sasrec",
                   "stosa")


def test_the_models_that_learn_every_position_say_so():
    trains = {name for name in CONFIGS
              if build_model(name, CONFIGS[name], num_items=NUM_ITEMS,
                             example_spec=SPEC).trains_on_sequences}
    assert trains == set(SEQUENCE_MODELS)


@pytest.mark.parametrize("name", SEQUENCE_MODELS)
def test_sequence_models_train_on_trimmed_chunks(name):
    """A batch of chunks, trimmed to fewer columns than ``L``, trains every weight the window
    batch does."""
    tf.keras.utils.set_random_seed(0)
    model = build_model(name, CONFIGS[name], num_items=NUM_ITEMS, item_features=GENRES,
                        item_frequencies=np.full(NUM_ITEMS + 1, 1.0 / NUM_ITEMS),
                        example_spec=SPEC)
    chunks = {F.SEQUENCE_ITEMS: tf.constant([[0, 0, 3, 4, 5], [6, 7, 8, 9, 10]], tf.int64),
              F.SEQUENCE_TIMESTAMPS: tf.constant([[0, 0, 7, 9, 60], [1, 2, 3, 900, 4000]],
                                                 tf.int64)}
    batch = F.sequence_as_window(chunks)
    assert batch[F.HISTORY].shape == (2, 4)
    with tf.GradientTape() as tape:
        loss = model.compute_loss(batch, training=True)
    grads = tape.gradient(loss, model.trainable_variables)
    assert np.isfinite(float(loss))
    assert sum(g is not None for g in grads) > 0


@pytest.mark.parametrize("name", SEQUENCE_MODELS)
def test_sequence_models_train_on_chunks_longer_than_their_windows(name):
    """Built with ``model_example_spec`` (windows of 8, chunks of 20 inputs, as the paper
    protocol's 50 and 200), a model trains on full-width chunks and still ranks windows of 8."""
    tf.keras.utils.set_random_seed(0)
    spec = F.model_example_spec(SPEC, F.SequenceSpec(history_length=20))
    assert spec.history_length == SPEC.history_length and spec.positions == 20
    model = build_model(name, CONFIGS[name], num_items=NUM_ITEMS, item_features=GENRES,
                        item_frequencies=np.full(NUM_ITEMS + 1, 1.0 / NUM_ITEMS),
                        example_spec=spec)
    items = np.random.default_rng(0).integers(1, NUM_ITEMS + 1, [3, 21])
    batch = F.sequence_as_window({F.SEQUENCE_ITEMS: tf.constant(items, tf.int64),
                                  F.SEQUENCE_TIMESTAMPS: tf.constant(
                                      np.cumsum(items * 1000, axis=1), tf.int64)})
    assert batch[F.HISTORY].shape == (3, 20)
    with tf.GradientTape() as tape:
        loss = model.compute_loss(batch, training=True)
    assert np.isfinite(float(loss))
    assert any(g is not None for g in tape.gradient(loss, model.trainable_variables))
    windows = _windows(n=5)
    queries = model.query_embeddings({n: tf.constant(windows[n]) for n in F.QUERY_FEATURES})
    assert queries.shape[0] == 5 and np.all(np.isfinite(queries.numpy()))


@pytest.mark.parametrize("name", SEQUENCE_MODELS)
def test_sequence_models_rank_alike_with_shared_padding_trimmed(name):
    """``evaluate`` sorts a sequence model's windows by history length and trims each batch's
    shared left padding: every user's rank is the one the full windows give, in input order."""
    tf.keras.utils.set_random_seed(0)
    model = build_model(name, CONFIGS[name], num_items=NUM_ITEMS, item_features=GENRES,
                        item_frequencies=np.full(NUM_ITEMS + 1, 1.0 / NUM_ITEMS),
                        example_spec=SPEC)
    windows = _windows(n=48, seed=3)
    windows[F.HISTORY][:20, :-3] = 0  # short histories, so batches of them trim
    windows[F.HISTORY_TIME_LAG][:20, :-3] = 0
    windows[F.HISTORY_SESSION][:20, :-3] = F.PADDING_SESSION
    windows[F.HISTORY_TIMESTAMPS][:20, :-3] = 0
    full = evaluate(model, windows, ks=(5,), num_bootstrap=0, batch_size=16, trim_padding=False)
    trimmed = evaluate(model, windows, ks=(5,), num_bootstrap=0, batch_size=16)
    np.testing.assert_array_equal(trimmed.ranks, full.ranks)
    np.testing.assert_array_equal(trimmed.groups, windows[F.USER_ID])
    query = {n: tf.constant(windows[n][:20]) for n in F.QUERY_FEATURES}
    short = F.trim_window_padding(query)
    assert short[F.HISTORY].shape[1] == 4  # three items and one column of padding
    np.testing.assert_allclose(model.query_embeddings(short).numpy(),
                               model.query_embeddings(query).numpy(), rtol=1e-4, atol=1e-5)
