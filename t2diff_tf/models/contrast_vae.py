"""ContrastVAE: a contrastive variational autoencoder over the behaviour sequence.

Wang, Zhang, Liu, Yu, Zhang, Zhao and Yu, "ContrastVAE: Contrastive Variational AutoEncoder for
Sequential Recommendation", CIKM 2022 (the model-augmentation variant, the authors'
``--latent_contrastive_learning``).

What is implemented:

* Encoder ``q(z_t | x_{<=t})``: the history's item vectors (the shared
  :class:`~t2diff_tf.layers.items.ItemRepresentation`, padding zeroed) go through a causal
  Transformer (:class:`~t2diff_tf.layers.causal_transformer.CausalTransformer`, SASRec's blocks)
  and :class:`GaussianPosterior` maps each position's state to a diagonal Gaussian: mean
  ``mu_t`` and log-variance ``log sigma^2_t``, both ``[batch, L, d]``.
* Reparameterisation ``z_t = mu_t + sigma_t * eps``, ``eps ~ N(0, I)`` (training only).
* Decoder ``p(x_{t+1} | z_{<=t})``: a second causal Transformer from ``z`` to per-position states
  ``h_t`` ``[batch, L, d]``; every valid position predicts the next behaviour (the history's own
  next items, then the window's target) with a full softmax over the corpus (items ``1..N``),
  scored by dot product against a linear item tower, exactly like
  :class:`~t2diff_tf.models.sequential.NextItemModel`'s all-positions loss (the reconstruction
  term of the ELBO).
* KL term ``KL(q(z_t | x) || N(0, I)) = 1/2 sum_d (mu^2 + sigma^2 - 1 - log sigma^2)``, averaged
  over the valid positions, weighted by an annealed ``beta = kl_weight * min(1, step /
  kl_warmup_steps)`` (linear KL annealing, the authors' ``anneal_cap`` and
  ``total_annealing_step``). ``step`` counts training steps in the non-trainable variable
  :attr:`ContrastVAE.train_steps`, saved with the weights.
* Two views by *model augmentation*: two forward passes of the same batch, with independent
  dropout masks and independent reparameterisation noise, give two latent sequences ``z', z''``.
* ContrastELBO (the two views' ELBOs plus an InfoNCE term):
  ``L = 1/2 (rec' + rec'') + beta * 1/2 (KL' + KL'') + contrastive_weight * InfoNCE(z'_L, z''_L)``.
  :func:`info_nce` is the authors' two-sided (NT-Xent) form over the batch: the latent of the
  last position of one view must pick its other view among the ``2B - 1`` other latents of both
  views, with cosine similarity divided by a ``temperature``.
* Inference: ``z = mu`` (the posterior mean, no sampling), decoded without dropout; ``e_u`` is
  the decoder state at the last position (deterministic, and never reads the target). In
  evaluation mode (``training=False``, e.g. Keras' validation loss) the loss is the single
  deterministic view's ``rec + beta * KL`` (the contrastive term needs two random views).

Simplified / different from the authors' code:

* One encoder with two linear heads for ``mu`` and ``log sigma^2`` (the authors run two separate
  Transformer encoders); the Transformer blocks are this library's pre-norm causal blocks and the
  decoder adds its own learned positions.
* The two views are averaged (the authors sum them), so ``contrastive_weight = 0.3`` here equals
  their ``latent_clr_weight = 0.6``; the contrastive term uses the latent of the last position
  (the one ``e_u`` is decoded from) rather than the sum of ``z`` over positions; the second view
  samples ``eps`` like the first instead of the authors' dropout on ``sigma``.
* The reconstruction term is a full softmax over the corpus (the authors: binary cross-entropy
  with one sampled negative), and the KL is masked to valid positions.
* The variational-augmentation (learned variational dropout) and data-augmentation variants of
  the paper are not implemented.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional, Tuple

import numpy as np
import tensorflow as tf

from t2diff_tf import features as F
from t2diff_tf.layers.causal_transformer import CausalTransformer
from t2diff_tf.models.base import Features, LossConfig, RetrievalModel
from t2diff_tf.models.config import DictConfig


@dataclasses.dataclass(frozen=True)
class ContrastVAEConfig(DictConfig):
    """Hyperparameters of :class:`ContrastVAE`.

    Attributes:
      embedding_dim: ``d`` of items, latents and decoder states.
      num_blocks: Transformer blocks of the encoder and of the decoder (authors: 1).
      num_heads: attention heads.
      dropout: dropout rate of both Transformers; also the source of the two views (authors:
        0.3).
      kl_weight: the KL weight ``beta`` reached after the warm-up (authors' ``anneal_cap``).
      kl_warmup_steps: training steps of the linear warm-up of ``beta`` from 0; 0 = constant
        ``kl_weight``.
      contrastive_weight: weight of the InfoNCE term.
      temperature: divides the cosine similarities of the InfoNCE term (authors: 0.5).
    """

    embedding_dim: int = 64
    num_blocks: int = 1
    num_heads: int = 2
    dropout: float = 0.3
    kl_weight: float = 0.2
    kl_warmup_steps: int = 2000
    contrastive_weight: float = 0.3
    temperature: float = 0.5

    def __post_init__(self):
        for name in ("embedding_dim", "num_blocks", "num_heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.kl_weight < 0.0:
            raise ValueError(f"kl_weight must be >= 0, got {self.kl_weight}")
        if self.kl_warmup_steps < 0:
            raise ValueError(f"kl_warmup_steps must be >= 0, got {self.kl_warmup_steps}")
        if self.contrastive_weight < 0.0:
            raise ValueError(f"contrastive_weight must be >= 0, got {self.contrastive_weight}")
        if self.temperature <= 0.0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")


# -- the ELBO's and the contrastive term's maths ------------------------------------------------

def gaussian_kl(mean: tf.Tensor, log_variance: tf.Tensor,
                mask: Optional[tf.Tensor] = None) -> tf.Tensor:
    """``KL(N(mean, exp(log_variance)) || N(0, I))`` averaged over the positions of ``mask``.

    Args:
      mean, log_variance: ``[..., d]`` diagonal Gaussians.
      mask: ``[...]`` bool positions to average over (``None``: all); an empty mask gives 0.

    Returns:
      A scalar: the mean over positions of ``1/2 sum_d (mean^2 + exp(log_variance) - 1 -
      log_variance)``.
    """
    per_position = 0.5 * tf.reduce_sum(
        tf.square(mean) + tf.exp(log_variance) - 1.0 - log_variance, axis=-1)
    if mask is None:
        return tf.reduce_mean(per_position)
    weights = tf.cast(mask, per_position.dtype)
    return tf.math.divide_no_nan(tf.reduce_sum(per_position * weights), tf.reduce_sum(weights))


def info_nce(first: tf.Tensor, second: tf.Tensor, temperature: float = 1.0) -> tf.Tensor:
    """Two-sided InfoNCE (NT-Xent) between two views of a batch.

    Each of the ``2B`` vectors is an anchor whose positive is the other view of the same row and
    whose negatives are the ``2B - 2`` other vectors of both views; the similarity is the cosine
    divided by ``temperature``.

    Args:
      first, second: ``[B, d]`` the two views (row ``i`` of each comes from the same example).
      temperature: > 0.

    Returns:
      The mean over the ``2B`` anchors of the cross-entropy of their positive (a scalar).
    """
    a = tf.math.l2_normalize(first, axis=-1)
    b = tf.math.l2_normalize(second, axis=-1)
    batch = tf.shape(a)[0]
    self_pairs = tf.cast(tf.eye(batch), tf.bool)
    excluded = tf.fill([batch, batch], tf.constant(-np.inf, a.dtype))
    ab = tf.matmul(a, b, transpose_b=True) / temperature
    aa = tf.where(self_pairs, excluded, tf.matmul(a, a, transpose_b=True) / temperature)
    bb = tf.where(self_pairs, excluded, tf.matmul(b, b, transpose_b=True) / temperature)
    # Anchors of the first view: columns [second view, first view]; positive = column i.
    # Anchors of the second view: columns [first view, second view]; positive = column i.
    logits = tf.concat([tf.concat([ab, aa], axis=1),
                        tf.concat([tf.transpose(ab), bb], axis=1)], axis=0)
    labels = tf.concat([tf.range(batch), tf.range(batch)], axis=0)
    return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))


# -- layers -------------------------------------------------------------------------------------

@tf.keras.utils.register_keras_serializable(package="t2diff")
class GaussianPosterior(tf.keras.layers.Layer):
    """States -> a diagonal Gaussian posterior per position, and its reparameterised sample.

    ``mean = h W_mu + b_mu``, ``log_variance = h W_s + b_s`` (both ``[..., latent_dim]``);
    padded positions get ``mean = 0, log_variance = 0`` (the prior), so they add nothing.

    Call arguments:
      inputs: ``[batch, L, d]`` encoder states.
      mask: ``[batch, L]`` bool, ``True`` on valid positions (``None``: all valid).
      sample: draw ``z = mean + exp(log_variance / 2) * eps`` (else ``z = mean``).
      noise: optional ``eps`` ``[batch, L, latent_dim]`` (default: ``N(0, I)`` draws).

    Returns:
      ``(z, mean, log_variance)``, each ``[batch, L, latent_dim]``.
    """

    def __init__(self, latent_dim: int, **kwargs):
        super().__init__(**kwargs)
        self.latent_dim = int(latent_dim)

    def build(self, input_shape):
        self.mean_head = tf.keras.layers.Dense(self.latent_dim, name="mean")
        # Starts near log sigma^2 = 0 (the prior's unit variance).
        self.log_variance_head = tf.keras.layers.Dense(
            self.latent_dim, kernel_initializer=tf.keras.initializers.RandomNormal(stddev=0.02),
            name="log_variance")
        self.mean_head.build(input_shape)
        self.log_variance_head.build(input_shape)
        super().build(input_shape)

    def call(self, inputs: tf.Tensor, mask: Optional[tf.Tensor] = None, sample: bool = False,
             noise: Optional[tf.Tensor] = None) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        mean = self.mean_head(inputs)
        log_variance = self.log_variance_head(inputs)
        if mask is not None:
            keep = tf.cast(mask, mean.dtype)[..., None]
            mean, log_variance = mean * keep, log_variance * keep
        if not sample:
            return mean, mean, log_variance
        if noise is None:
            noise = tf.random.normal(tf.shape(mean), dtype=mean.dtype)
        z = mean + tf.exp(0.5 * log_variance) * noise
        if mask is not None:
            z = z * tf.cast(mask, z.dtype)[..., None]
        return z, mean, log_variance

    def compute_mask(self, inputs, mask=None):
        return None

    def get_config(self) -> Dict[str, Any]:
        return {**super().get_config(), "latent_dim": self.latent_dim}


# -- the model ----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class View:
    """One forward pass of :meth:`ContrastVAE.view` (all ``[batch, L, d]``; ``mask`` ``[batch,
    L]`` bool)."""

    z: tf.Tensor
    mean: tf.Tensor
    log_variance: tf.Tensor
    states: tf.Tensor
    mask: tf.Tensor


class ContrastVAE(RetrievalModel):
    """ContrastVAE (see the module docstring).

    Args:
      config: hyperparameters.
      num_items, item_features, item_frequencies, example_spec: see
        :class:`~t2diff_tf.models.base.RetrievalModel`. ``item_frequencies`` is unused (the
        reconstruction loss is a full softmax).
    """


    # Learns every position of a chunk in one pass (cloze / next item at every position).
    trains_on_sequences = True

    def __init__(self, config: ContrastVAEConfig = ContrastVAEConfig(), *, num_items: int,
                 item_features: Optional[np.ndarray] = None,
                 item_frequencies: Optional[np.ndarray] = None,
                 example_spec: F.ExampleSpec = F.ExampleSpec(), name: str = "contrast_vae"):
        # A linear item tower (no hidden layer), as in SASRec: the output side stays close to the
        # shared item embeddings.
        super().__init__(num_items, config.embedding_dim, (), LossConfig(),
                         item_features=item_features, item_frequencies=item_frequencies,
                         example_spec=example_spec, name=name)
        self.config = config
        length = example_spec.positions
        self.encoder = CausalTransformer(length, config.num_blocks, config.num_heads,
                                         config.dropout, name="encoder")
        self.posterior = GaussianPosterior(config.embedding_dim, name="posterior")
        self.decoder = CausalTransformer(length, config.num_blocks, config.num_heads,
                                         config.dropout, name="decoder")
        # Training steps seen (drives the KL annealing); saved with the weights.
        self.train_steps = tf.Variable(0, trainable=False, dtype=tf.int64, name="train_steps",
                                       aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)

    # -- KL annealing ---------------------------------------------------------------------------

    def kl_weight(self) -> tf.Tensor:
        """``beta = kl_weight * min(1, train_steps / kl_warmup_steps)`` (a float32 scalar)."""
        c = self.config
        if c.kl_warmup_steps == 0:
            return tf.constant(c.kl_weight, tf.float32)
        progress = tf.cast(self.train_steps, tf.float32) / float(c.kl_warmup_steps)
        return c.kl_weight * tf.minimum(1.0, progress)

    # -- encoder / decoder ----------------------------------------------------------------------

    def view(self, history: tf.Tensor, training: bool = False, sample: Optional[bool] = None,
             noise: Optional[tf.Tensor] = None) -> View:
        """One encoder -> posterior -> decoder pass over ``history`` ``[batch, L]``.

        Args:
          history: item ids, left-padded with 0.
          training: enables dropout.
          sample: reparameterise ``z = mu + sigma * eps`` (default: ``training``); else
            ``z = mu``.
          noise: optional ``eps`` ``[batch, L, d]``.
        """
        sample = training if sample is None else sample
        history = tf.cast(history, tf.int64)
        mask = tf.not_equal(history, F.PADDING_ID)
        vectors = self.items(history) * tf.cast(mask, tf.float32)[..., None]
        encoded = self.encoder(vectors, mask=mask, training=training)
        z, mean, log_variance = self.posterior(encoded, mask=mask, sample=sample, noise=noise)
        states = self.decoder(z, mask=mask, training=training)
        return View(z=z, mean=mean, log_variance=log_variance, states=states, mask=mask)

    def user_tower(self, features: Features, training: bool = False
                   ) -> Tuple[tf.Tensor, tf.Tensor]:
        """``e_u`` ``[batch, d]``: the decoder state at the last position, decoded from the
        posterior mean (no sampling). Never reads the target."""
        view = self.view(features[F.HISTORY], training=training, sample=False)
        return view.states[:, -1, :], tf.constant(0.0)

    # -- losses ---------------------------------------------------------------------------------

    @staticmethod
    def next_item_labels(features: Features) -> Tuple[tf.Tensor, tf.Tensor]:
        """``(labels [batch, L], valid [batch, L])``: position ``t`` predicts ``history[t + 1]``
        (the target at the last position); valid where both the input and the label are items."""
        history = tf.cast(features[F.HISTORY], tf.int64)
        target = tf.cast(tf.reshape(features[F.TARGET], [-1, 1]), tf.int64)
        labels = tf.concat([history[:, 1:], target], axis=1)
        valid = tf.logical_and(tf.not_equal(history, F.PADDING_ID),
                               tf.not_equal(labels, F.PADDING_ID))
        return labels, valid

    def reconstruction_loss(self, states: tf.Tensor, labels: tf.Tensor,
                            valid: tf.Tensor) -> tf.Tensor:
        """Mean full-softmax cross-entropy of ``labels`` ``[batch, L]`` from ``states``
        ``[batch, L, d]`` over the ``valid`` ``[batch, L]`` positions."""
        queries = tf.boolean_mask(states, valid)
        logits = tf.matmul(queries, self.corpus_embeddings(), transpose_b=True)
        losses = tf.nn.sparse_softmax_cross_entropy_with_logits(
            tf.boolean_mask(labels, valid) - 1, logits)
        return tf.math.divide_no_nan(tf.reduce_sum(losses), tf.cast(tf.size(losses), tf.float32))

    def contrast_elbo(self, features: Features, training: bool = False,
                      noise: Optional[Tuple[tf.Tensor, tf.Tensor]] = None
                      ) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """The ContrastELBO's terms: ``(reconstruction, KL, InfoNCE)`` scalars (unweighted).

        With ``training`` two views are drawn (dropout and ``z`` sampling; ``noise`` optionally
        fixes the two ``eps`` ``[batch, L, d]``) and the reconstruction and KL terms are their
        means; without, one deterministic view (``z = mu``) and an InfoNCE of 0.
        """
        labels, valid = self.next_item_labels(features)
        history = features[F.HISTORY]
        if not training:
            view = self.view(history, training=False, sample=False)
            return (self.reconstruction_loss(view.states, labels, valid),
                    gaussian_kl(view.mean, view.log_variance, view.mask), tf.constant(0.0))
        noise = noise or (None, None)
        views = [self.view(history, training=True, sample=True, noise=eps) for eps in noise]
        reconstruction = tf.add_n([self.reconstruction_loss(v.states, labels, valid)
                                   for v in views]) / 2.0
        kl = tf.add_n([gaussian_kl(v.mean, v.log_variance, v.mask) for v in views]) / 2.0
        contrastive = info_nce(views[0].z[:, -1, :], views[1].z[:, -1, :],
                               self.config.temperature)
        return reconstruction, kl, contrastive

    def compute_loss(self, features: Features, training: bool = False) -> tf.Tensor:
        """``rec + beta * KL + contrastive_weight * InfoNCE`` (see :meth:`contrast_elbo`);
        a training call advances :attr:`train_steps`."""
        reconstruction, kl, contrastive = self.contrast_elbo(features, training=training)
        auxiliary = self.kl_weight() * kl + self.config.contrastive_weight * contrastive
        if training:
            self.train_steps.assign_add(1)
        return self.total_loss(reconstruction, auxiliary)
