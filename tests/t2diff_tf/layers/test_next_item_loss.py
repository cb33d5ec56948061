"""Per-position next-item losses: closed forms of the full softmax, logQ-corrected sampled
softmax and gBCE, and accidental-hit removal."""

import numpy as np
import pytest
import tensorflow as tf

from t2diff_tf.layers.next_item_loss import (FULL_SOFTMAX, GBCE, SAMPLED_SOFTMAX, NextItemLoss,
                                      NextItemLossConfig, gbce_beta)

N, D = 7, 3
RNG = np.random.default_rng(0)
TABLE = RNG.normal(size=(N + 1, D)).astype(np.float32)
QUERIES = RNG.normal(size=(5, D)).astype(np.float32)
LABELS = np.array([1, 3, 3, 7, 2])
FREQUENCIES = np.array([0, 5, 1, 1, 2, 8, 3, 1], np.float64)
SEED = tf.constant([4, 2], tf.int64)


def embed(ids):
    return tf.gather(TABLE, ids)


def logits_of(ids):
    return QUERIES @ TABLE[np.asarray(ids)].T


def drawn_negatives(loss):
    return loss._negatives(SEED).numpy()


def test_full_softmax_is_the_cross_entropy_over_every_item():
    loss = NextItemLoss(NextItemLossConfig(FULL_SOFTMAX), N)
    logits = logits_of(np.arange(1, N + 1))
    log_softmax = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    expected = -log_softmax[np.arange(5), LABELS - 1].mean()
    assert float(loss(QUERIES, LABELS, embed)) == pytest.approx(expected, rel=1e-5)


def test_sampled_softmax_subtracts_log_mq_and_removes_accidental_hits():
    config = NextItemLossConfig(SAMPLED_SOFTMAX, num_negatives=4)
    loss = NextItemLoss(config, N, FREQUENCIES)
    negatives = drawn_negatives(loss)
    q = FREQUENCIES[1:] / FREQUENCIES[1:].sum()
    q = 0.99 * q + 0.01 / N
    correction = np.log(4 * q)
    positive = (QUERIES * TABLE[LABELS]).sum(1) - correction[LABELS - 1]
    negative = logits_of(negatives) - correction[negatives - 1][None, :]
    negative = np.where(LABELS[:, None] == negatives[None, :], -1e9, negative)
    logits = np.concatenate([positive[:, None], negative], 1)
    expected = -(logits[:, 0] - np.log(np.exp(logits).sum(1))).mean()
    assert float(loss(QUERIES, LABELS, embed, seed=SEED)) == pytest.approx(expected, rel=1e-5)


def test_sampled_negatives_follow_q():
    loss = NextItemLoss(NextItemLossConfig(SAMPLED_SOFTMAX, num_negatives=20000), N,
                        FREQUENCIES)
    counts = np.bincount(drawn_negatives(loss), minlength=N + 1)[1:] / 20000
    q = FREQUENCIES[1:] / FREQUENCIES[1:].sum()
    np.testing.assert_allclose(counts, 0.99 * q + 0.01 / N, atol=0.015)


def test_gbce_closed_form():
    config = NextItemLossConfig(GBCE, num_negatives=3, gbce_t=0.75)
    loss = NextItemLoss(config, N)
    negatives = drawn_negatives(loss)
    beta = gbce_beta(3, N, 0.75)
    softplus = lambda x: np.log1p(np.exp(x))  # noqa: E731
    positive = (QUERIES * TABLE[LABELS]).sum(1)
    negative = softplus(logits_of(negatives))
    negative = np.where(LABELS[:, None] == negatives[None, :], 0.0, negative)
    expected = (beta * softplus(-positive) + negative.sum(1)).mean()
    assert float(loss(QUERIES, LABELS, embed, seed=SEED)) == pytest.approx(expected, rel=1e-5)


def test_gbce_beta_limits():
    # t = 0: plain BCE; t = 1: beta = alpha; every item a negative: alpha = 1, beta = 1.
    assert gbce_beta(10, 101, 0.0) == pytest.approx(1.0)
    assert gbce_beta(10, 101, 1.0) == pytest.approx(0.1)
    assert gbce_beta(100, 101, 0.75) == pytest.approx(1.0)


def test_no_labelled_position_gives_zero():
    loss = NextItemLoss(NextItemLossConfig(SAMPLED_SOFTMAX, num_negatives=4), N)
    empty = loss(np.zeros([0, D], np.float32), np.zeros([0], np.int64), embed, seed=SEED)
    assert float(empty) == 0.0


def test_config_validation():
    with pytest.raises(ValueError, match="loss kind"):
        NextItemLossConfig("bpr")
    with pytest.raises(ValueError, match="gbce_t"):
        NextItemLossConfig(GBCE, gbce_t=1.5)
