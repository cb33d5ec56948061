"""Beam preprocessing of interaction logs into window examples (see ``t2diff_tf.features``)."""
