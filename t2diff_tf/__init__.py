"""The T2Diff model library: pure TensorFlow / Keras / TFRS, no TFX.

Modules:
  ``features``  the example contract shared with preprocessing.
  ``layers``    noise schedules, the U-Net approximator, drift diffusion, session and target attention.
  ``models``    T2Diff and the two-tower baselines behind :func:`t2diff_tf.models.build_model`.
  ``metrics``   full-corpus Recall / MRR / NDCG with bootstrap confidence intervals.
  ``serving``   user-tower and top-K SavedModels.

Nothing is imported here so that ``import t2diff_tf.features`` stays light.
"""
