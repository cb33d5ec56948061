"""T2Diff and the baselines: registry, towers, losses, gradient isolation, serving round trips."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from t2diff_tf import features as F
from t2diff_tf.layers.diffusion import DiffusionConfig
from t2diff_tf.layers.schedules import ScheduleConfig
from t2diff_tf.layers.unet import UNetConfig
from t2diff_tf.models import (LossConfig, MeanPoolTwoTower, T2Diff, T2DiffConfig, TwoTowerConfig,
                              available_models, build_model)
from t2diff_tf.models.behaviours import behaviour_masks

NUM_ITEMS = 40
SPEC = F.ExampleSpec(history_length=12, num_time_lag_buckets=6)
DIFFUSION = DiffusionConfig(schedule=ScheduleConfig(num_steps=8),
                            approximator=UNetConfig(filters=(8, 16), step_embedding_dim=8),
                            sampler_steps=3)
CONFIG = T2DiffConfig(embedding_dim=16, session_size=5, diffusion=DIFFUSION,
                      attention_units=(16,), user_tower_units=(32,), item_tower_units=(32,),
                      time_lag_dim=4, dropout=0.0)
GENRES = (np.random.default_rng(0).random((NUM_ITEMS + 1, 3)) < 0.4).astype(np.float32)
GENRES[0] = 0


def _windows(batch=6, seed=0):
    rng = np.random.default_rng(seed)
    L = SPEC.history_length
    lengths = rng.integers(1, L + 1, size=batch)
    lengths[0] = 2  # shorter than the session window
    history = np.zeros([batch, L], np.int64)
    for row, n in enumerate(lengths):
        history[row, L - n:] = rng.integers(1, NUM_ITEMS + 1, size=n)
    valid = history > 0
    return {
        F.HISTORY: history,
        F.HISTORY_TIME_LAG: np.where(valid, rng.integers(1, 6, size=history.shape), 0),
        F.HISTORY_SESSION: np.where(valid, 0, -1),
        F.HISTORY_TIMESTAMPS: np.where(valid, np.cumsum(valid, axis=1), 0),
        F.SESSION_LENGTH: np.minimum(lengths, rng.integers(1, 8, size=batch)),
        F.TARGET: rng.integers(1, NUM_ITEMS + 1, size=batch),
    }


def _t2diff(config=CONFIG, **kwargs):
    kwargs.setdefault("item_features", GENRES)
    return build_model("t2diff", config, num_items=NUM_ITEMS, example_spec=SPEC, **kwargs)


def test_behaviour_masks():
    history = tf.constant([[0, 0, 5, 6, 7, 8], [0, 0, 0, 0, 0, 9], [1, 2, 3, 4, 5, 6]])
    masks = behaviour_masks(history, tf.constant([2, 1, 6]), session_size=4)
    np.testing.assert_array_equal(masks.session.numpy(),
                                  [[0, 0, 1, 1], [0, 0, 0, 1], [1, 1, 1, 1]])
    np.testing.assert_array_equal(masks.long_term.numpy(),
                                  [[0, 0, 1, 1, 0, 0], [0] * 6, [1, 1, 0, 0, 0, 0]])
    # Every valid behaviour is in exactly one part.
    window = np.zeros([3, 6], bool)
    window[:, 2:] = masks.session.numpy()
    np.testing.assert_array_equal(window ^ masks.long_term.numpy(), masks.valid.numpy())


def test_registry():
    assert set(available_models()) >= {"t2diff", "mixed_attention", "mean_pool_two_tower"}
    with pytest.raises(ValueError, match="known models: .*mean_pool_two_tower.*t2diff"):
        build_model("no_such_model", num_items=NUM_ITEMS)
    with pytest.raises(ValueError, match="T2DiffConfig"):
        build_model("t2diff", TwoTowerConfig(), num_items=NUM_ITEMS)
    assert isinstance(build_model("mean_pool_two_tower", {"embedding_dim": 8},
                                  num_items=NUM_ITEMS), MeanPoolTwoTower)
    mixed = build_model("mixed_attention", CONFIG, num_items=NUM_ITEMS, example_spec=SPEC)
    assert isinstance(mixed, T2Diff) and mixed.diffusion is None
    assert CONFIG.diffusion is not None  # the caller's config is not mutated
    from_dict = build_model("t2diff", CONFIG.to_dict(), num_items=NUM_ITEMS, example_spec=SPEC)
    assert from_dict.config == CONFIG


def test_config_round_trip_through_json():
    import json
    restored = T2DiffConfig.from_dict(json.loads(json.dumps(CONFIG.to_dict())))
    assert restored == CONFIG
    assert TwoTowerConfig.from_dict(json.loads(json.dumps(TwoTowerConfig().to_dict()))) \
        == TwoTowerConfig()


@pytest.mark.parametrize("name", ["t2diff", "mixed_attention", "mean_pool_two_tower"])
def test_towers_shapes(name):
    config = TwoTowerConfig(embedding_dim=16) if name == "mean_pool_two_tower" else CONFIG
    model = build_model(name, config, num_items=NUM_ITEMS, example_spec=SPEC,
                        item_features=GENRES)
    windows = _windows()
    assert model.query_embeddings(windows).shape == (6, 16)
    assert model.candidate_embeddings(tf.constant([1, 2, 3])).shape == (3, 16)
    assert model.corpus_embeddings().shape == (NUM_ITEMS, 16)
    np.testing.assert_array_equal(model.corpus_ids().numpy(), np.arange(1, NUM_ITEMS + 1))
    loss = model.compute_loss({k: tf.constant(v) for k, v in windows.items()}, training=True)
    assert loss.shape == () and np.isfinite(loss.numpy())


def test_side_features_reach_the_item_tower():
    model = _t2diff()
    a = model.candidate_embeddings(tf.constant([1, 2])).numpy()
    model.items.feature_matrix.assign(tf.zeros_like(model.items.feature_matrix))
    b = model.candidate_embeddings(tf.constant([1, 2])).numpy()
    assert np.abs(a - b).max() > 1e-4


def test_user_tower_reads_session_and_long_term_history():
    config = dataclasses.replace(CONFIG, diffusion=dataclasses.replace(DIFFUSION, sampler="fast"))
    model = _t2diff(config)
    windows = _windows()
    windows[F.HISTORY][2] = np.arange(1, 13)
    windows[F.SESSION_LENGTH][2] = 4
    base = model.query_embeddings(windows).numpy()
    long_term = {k: v.copy() for k, v in windows.items()}
    long_term[F.HISTORY][2, 0] = 30
    session = {k: v.copy() for k, v in windows.items()}
    session[F.HISTORY][2, -1] = 30
    lag_on_padding = {k: v.copy() for k, v in windows.items()}
    lag_on_padding[F.HISTORY_TIME_LAG][0, :5] = 5  # row 0 has 2 behaviours: these are padding
    for changed, row_moves in ((long_term, True), (session, True), (lag_on_padding, False)):
        out = model.query_embeddings(changed).numpy()
        np.testing.assert_allclose(np.delete(out, 2, 0), np.delete(base, 2, 0), rtol=1e-5,
                                   atol=1e-6) if row_moves else None
        moved = np.abs(out - base).max() > 1e-5
        assert moved == row_moves


def test_full_softmax_is_cross_entropy_over_the_corpus():
    model = _t2diff(dataclasses.replace(CONFIG, diffusion=None))
    query = tf.random.normal([5, 16])
    target = tf.constant([1, 7, 7, 40, 3], tf.int64)
    logits = tf.matmul(query, model.corpus_embeddings(), transpose_b=True)
    expected = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(target - 1, logits))
    np.testing.assert_allclose(model.tower_loss(query, target).numpy(), expected.numpy(),
                               rtol=1e-5)


def test_sampled_softmax_with_log_q_and_accidental_hits():
    frequencies = np.random.default_rng(1).random(NUM_ITEMS + 1).astype(np.float32)
    frequencies[0] = 0
    model = _t2diff(dataclasses.replace(CONFIG, diffusion=None,
                                        loss=LossConfig(kind="sampled_softmax")),
                    item_frequencies=frequencies)
    query = tf.random.normal([4, 16])
    target = np.array([3, 9, 3, 12])
    candidates = model.candidate_embeddings(tf.constant(target)).numpy()
    q = frequencies[target] / frequencies.sum()
    logits = query.numpy() @ candidates.T - np.log(q)[None, :]
    losses = []
    for row in range(4):
        keep = (target != target[row]) | (np.arange(4) == row)  # the duplicate 3 is removed
        row_logits = logits[row, keep]
        positive = logits[row, row]
        losses.append(np.log(np.exp(row_logits - row_logits.max()).sum()) + row_logits.max()
                      - positive)
    np.testing.assert_allclose(model.tower_loss(query, tf.constant(target)).numpy(),
                               np.mean(losses), rtol=1e-4)
    with pytest.raises(ValueError, match="item_frequencies"):
        _t2diff(dataclasses.replace(CONFIG, loss=LossConfig(kind="sampled_softmax")))


def test_gradient_isolation_in_the_model():
    model = _t2diff()
    windows = {k: tf.constant(v) for k, v in _windows().items()}
    with tf.GradientTape(persistent=True) as tape:
        query, diffusion_loss = model.user_tower(windows, training=True)
        tower_loss = model.tower_loss(query, windows[F.TARGET])
    approximator = model.diffusion.trainable_variables
    tables = [model.items.id_embeddings, model.items.feature_embeddings]
    assert approximator and float(diffusion_loss) > 0
    # The tower loss never reaches the approximator ...
    assert all(g is None for g in tape.gradient(tower_loss, approximator))
    # ... but does train the embedding tables and the attention.
    grads = tape.gradient(tower_loss, tables + model.session_encoder.trainable_variables)
    assert all(g is not None for g in grads)
    # L_KL trains the approximator and never the embedding tables.
    assert all(g is None for g in tape.gradient(diffusion_loss, tables))
    kl_grads = tape.gradient(diffusion_loss, approximator)
    assert any(g is not None and float(tf.reduce_sum(tf.abs(g))) > 0 for g in kl_grads)
    # One optimiser step on the total loss moves both.
    before = [v.numpy().copy() for v in approximator[:1] + tables[:1]]
    model.compile(tf.keras.optimizers.Adam(1e-2))
    model.train_step(windows)
    after = [v.numpy() for v in approximator[:1] + tables[:1]]
    assert all(np.abs(a - b).max() > 0 for a, b in zip(after, before))


def test_loss_weight_scales_the_auxiliary_loss():
    windows = {k: tf.constant(v) for k, v in _windows().items()}
    model = _t2diff(dataclasses.replace(CONFIG, diffusion=dataclasses.replace(
        DIFFUSION, loss_weight=0.0)))
    _, auxiliary = model.user_tower(windows, training=True)
    assert float(auxiliary) == 0.0


def test_inference_sampler_and_ablation_switches():
    windows = _windows()
    fast = _t2diff(dataclasses.replace(CONFIG, diffusion=dataclasses.replace(DIFFUSION,
                                                                             sampler="fast")))
    a, b = fast.query_embeddings(windows).numpy(), fast.query_embeddings(windows).numpy()
    np.testing.assert_array_equal(a, b)
    full = _t2diff()
    for model in (fast, full):
        model.corpus_embeddings()
    full.query_embeddings(windows)
    full.set_weights(fast.get_weights())
    c, d = full.query_embeddings(windows).numpy(), full.query_embeddings(windows).numpy()
    assert np.abs(c - d).max() > 1e-6  # the full chain samples
    no_dp = _t2diff(dataclasses.replace(CONFIG, diffusion=dataclasses.replace(DIFFUSION,
                                                                              drift=False)))
    assert no_dp.query_embeddings(windows).shape == (6, 16)
    trajectory = full.drift_trajectory({k: tf.constant(v) for k, v in windows.items()},
                                       sampler="fast")
    assert trajectory["z0"].shape == (6, 5, 16)
    assert trajectory["z0_hat"].shape == (3, 6, 5, 16)
    assert trajectory["mask"].shape == (6, 5)


def test_direct_x_hat_reaches_the_user_head_and_needs_a_leak_free_x_hat():
    leak_free = dataclasses.replace(DIFFUSION, training_x_hat="inference_sampler", sampler="fast")
    with pytest.raises(ValueError, match="direct_x_hat"):
        dataclasses.replace(CONFIG, direct_x_hat=True)  # one-step denoise: leaks the target
    with pytest.raises(ValueError, match="direct_x_hat"):
        dataclasses.replace(CONFIG, diffusion=None, direct_x_hat=True)
    config = dataclasses.replace(CONFIG, diffusion=leak_free, direct_x_hat=True)
    assert T2DiffConfig.from_dict(config.to_dict()) == config
    model = _t2diff(config)
    windows = {k: tf.constant(v) for k, v in _windows().items()}
    model.query_embeddings(windows)
    d = CONFIG.embedding_dim
    assert model.user_head.layers[0].kernel.shape == (3 * d, 32)  # [h_l, h_s, x_hat]
    # x_hat reaches e_u through the head's last d input rows: zeroing them changes e_u.
    x_hat, _ = model.diffusion(model.items(windows[F.HISTORY])[:, -5:],
                               mask=behaviour_masks(windows[F.HISTORY],
                                                    windows[F.SESSION_LENGTH], 5).session)
    assert float(tf.reduce_max(tf.abs(x_hat))) > 0
    before = model.query_embeddings(windows).numpy()
    kernel = model.user_head.layers[0].kernel
    kernel.assign(tf.concat([kernel[:2 * d], tf.zeros_like(kernel[2 * d:])], axis=0))
    after = model.query_embeddings(windows).numpy()
    assert np.abs(after - before).max() > 1e-4
    # Training sees the sampler's x_hat, never the target: the target moves only L_KL.
    other = dict(windows, **{F.TARGET: tf.reverse(windows[F.TARGET], [0])})
    tf.keras.utils.set_random_seed(0)
    e_u, _ = model.user_tower(windows, training=True)
    tf.keras.utils.set_random_seed(0)
    e_u_other, _ = model.user_tower(other, training=True)
    np.testing.assert_allclose(e_u.numpy(), e_u_other.numpy(), atol=1e-6)


def test_fit_reduces_the_loss():
    model = _t2diff()
    model.compile(tf.keras.optimizers.Adam(1e-2))
    data = tf.data.Dataset.from_tensor_slices(_windows(64, seed=3)).batch(32).repeat(8)
    history = model.fit(data, epochs=2, verbose=0).history
    assert history["tower_loss"][-1] < history["tower_loss"][0]
    assert history["auxiliary_loss"][-1] < history["auxiliary_loss"][0]


def test_xla_serving_tower_matches_the_graph_tower():
    """``jit_compile=True`` changes how the tower runs, not what it computes (deterministic
    fast sampler, so both calls see the same reverse process), at two batch sizes."""
    config = dataclasses.replace(CONFIG, diffusion=dataclasses.replace(DIFFUSION, sampler="fast"))
    model = _t2diff(config)
    windows = _windows(batch=7, seed=5)
    model.query_embeddings(windows)
    plain, xla = model.serving_user_tower(), model.serving_user_tower(jit_compile=True)
    must_compile = [f.get_concrete_function().function_def.attr["_XlaMustCompile"].b
                    for f in (plain, xla)]
    assert must_compile == [False, True]  # only the second one is handed to XLA
    for batch in (7, 2):
        query = {k: tf.constant(v[:batch]) for k, v in windows.items() if k in F.QUERY_FEATURES}
        expected = plain(query)["user_embedding"].numpy()
        np.testing.assert_allclose(xla(query)["user_embedding"].numpy(), expected,
                                   rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(expected, model.query_embeddings(query).numpy(),
                                   rtol=1e-5, atol=1e-6)


def test_saved_model_round_trip(tmp_path):
    """User tower and TFRS BruteForce top-K saved as signatures, reloaded, same answers."""
    config = dataclasses.replace(CONFIG, diffusion=dataclasses.replace(DIFFUSION, sampler="fast"))
    model = _t2diff(config)
    windows = _windows()
    expected = model.query_embeddings(windows).numpy()
    index = model.brute_force_index(k=5)
    scores, ids = index(windows, k=5)
    np.testing.assert_array_equal(ids.numpy(), np.argsort(
        -(expected @ model.corpus_embeddings().numpy().T), axis=1)[:, :5] + 1)

    module = tf.Module()
    module.model, module.index = model, index
    module.user_tower = model.serving_user_tower()
    module.top_k = tf.function(lambda f: dict(zip(("scores", "item_ids"), index(f, k=5))),
                               input_signature=[model.query_input_signature()])
    tf.saved_model.save(module, str(tmp_path), signatures={
        "serving_default": module.user_tower.get_concrete_function(),
        "top_k": module.top_k.get_concrete_function()})
    loaded = tf.saved_model.load(str(tmp_path))
    inputs = {k: tf.constant(v) for k, v in windows.items() if k in F.QUERY_FEATURES}
    got = loaded.signatures["serving_default"](**inputs)["user_embedding"].numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    top = loaded.signatures["top_k"](**inputs)
    np.testing.assert_array_equal(top["item_ids"].numpy(), ids.numpy())
    np.testing.assert_allclose(top["scores"].numpy(), scores.numpy(), rtol=1e-5, atol=1e-6)
    assert top["item_ids"].numpy().min() >= 1


def test_full_chain_model_exports(tmp_path):
    model = _t2diff()
    windows = _windows()
    model.query_embeddings(windows)
    module = tf.Module()
    module.model = model
    module.user_tower = model.serving_user_tower()
    tf.saved_model.save(module, str(tmp_path),
                        signatures=module.user_tower.get_concrete_function())
    loaded = tf.saved_model.load(str(tmp_path))
    inputs = {k: tf.constant(v) for k, v in windows.items() if k in F.QUERY_FEATURES}
    out = loaded.signatures["serving_default"](**inputs)["user_embedding"].numpy()
    assert out.shape == (6, 16) and np.all(np.isfinite(out))
