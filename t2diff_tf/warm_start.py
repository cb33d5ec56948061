"""Warm start: a new model starts from an older model's weights across a changed vocabulary.

Continuous training retrains every day on new logs, and each day's item vocabulary differs from
the last in content (new items arrive, old ones fall out) and in order (ids ``1..N`` are
assigned by frequency). The old model's item-indexed tables therefore cannot be copied as they
are; they are mapped through the raw item ids:

* an item in both vocabularies keeps its learnt row (old row ``old_id`` -> new row ``new_id``);
* an item new to the vocabulary keeps the new model's freshly initialised row;
* an item the new vocabulary no longer holds is dropped;
* the padding row 0 is copied as it is.

Every other weight (attention, U-Net, feed-forward layers, ...) is copied unchanged when its
shape matches; one whose shape changed (e.g. a different ``embedding_dim`` or history length) keeps
its initial value, and :class:`WarmStartReport` says which and why. Constant item tables that the
data defines, not training (the non-trainable item side-feature matrix), are always the new
model's. The optimizer starts afresh.

Which weights are item-indexed is found, not assumed: a *probe* model of the same architecture
with one more item is built, and every weight whose first axis grows by one with it is an item
table (``[N + 1, ...]``). This holds for every registry model (id embeddings, STOSA's covariance
embeddings, DAT's augmentation tables, ...) without naming them.

    mapping = ItemIdMapping.from_raw_ids(old_vocabulary_raw_ids, new_vocabulary_raw_ids)
    old, new, probe = (build(n) for n in (n_old, n_new, n_new + 1))   # same config
    for m, s in ((old, old_spec), (new, spec), (probe, spec)): create_variables(m, s)
    restore_saved_model_weights(old, "<model>/Format-Serving")
    report = transfer_weights(old, new, probe, mapping)
"""

from __future__ import annotations

import dataclasses
import re
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from t2diff_tf import features as F

# ``t2diff_tf.serving.signatures.UserTowerModule`` tracks the Keras model under this name, so a
# Trainer's SavedModel checkpoint holds the model's variables under ``model/...``.
SAVED_MODEL_ATTRIBUTE = "model"


@dataclasses.dataclass(frozen=True)
class ItemIdMapping:
    """New int item ids -> old int item ids, through the raw ids.

    Attributes:
      old_ids: ``[N_new + 1]`` int64; ``old_ids[j]`` is the old id of new item ``j``, 0 when the
        item is new to the vocabulary (``old_ids[0] = 0``: padding maps to padding).
      num_old_items: ``N_old``.
    """

    old_ids: np.ndarray
    num_old_items: int

    @classmethod
    def from_raw_ids(cls, old_raw_ids: Sequence[str], new_raw_ids: Sequence[str]
                     ) -> "ItemIdMapping":
        """``old_raw_ids[i]`` is old item ``i + 1``'s raw id, ``new_raw_ids[j]`` new item ``j + 1``'s."""
        for name, raw_ids in (("old", old_raw_ids), ("new", new_raw_ids)):
            if len(set(raw_ids)) != len(raw_ids):
                raise ValueError(f"the {name} vocabulary holds a raw id more than once")
        old_index = {raw: i + 1 for i, raw in enumerate(old_raw_ids)}
        old_ids = np.zeros(len(new_raw_ids) + 1, dtype=np.int64)
        for j, raw in enumerate(new_raw_ids, start=1):
            old_ids[j] = old_index.get(raw, 0)
        return cls(old_ids, len(old_raw_ids))

    @property
    def num_new_items(self) -> int:
        return int(self.old_ids.shape[0] - 1)

    @property
    def items_kept(self) -> int:
        """Items in both vocabularies (their rows are carried over)."""
        return int(np.count_nonzero(self.old_ids[1:]))

    @property
    def items_added(self) -> int:
        """Items only in the new vocabulary (fresh rows)."""
        return self.num_new_items - self.items_kept

    @property
    def items_removed(self) -> int:
        """Items only in the old vocabulary (their rows are dropped)."""
        return self.num_old_items - self.items_kept


@dataclasses.dataclass(frozen=True)
class WarmStartReport:
    """What :func:`transfer_weights` did, weight by weight (names without Keras' ``_1``
    suffixes) and item by item."""

    copied: Tuple[str, ...]
    remapped: Tuple[str, ...]
    kept_initial: Tuple[Tuple[str, str], ...]
    items_kept: int
    items_added: int
    items_removed: int

    def as_dict(self) -> Dict[str, object]:
        return {"copied": list(self.copied), "remapped": list(self.remapped),
                "kept_initial": [{"weight": w, "reason": r} for w, r in self.kept_initial],
                "items_kept": self.items_kept, "items_added": self.items_added,
                "items_removed": self.items_removed}

    def summary(self) -> str:
        text = (f"{len(self.copied)} weights copied, {len(self.remapped)} item tables mapped "
                f"through the raw ids ({self.items_kept:,} items kept, {self.items_added:,} new "
                f"with fresh rows, {self.items_removed:,} dropped)")
        if self.kept_initial:
            text += "; kept their initial value: " + ", ".join(
                f"{w} ({r})" for w, r in self.kept_initial)
        return text


def dummy_batch(spec: F.ExampleSpec, num_items: int, batch_size: int = 2
                ) -> Dict[str, tf.Tensor]:
    """A valid window batch (query features and ``target``) that builds every variable."""
    length = spec.history_length
    ids = (np.arange(batch_size * length) % max(1, num_items) + 1).reshape(batch_size, length)
    return {F.HISTORY: tf.constant(ids, tf.int64),
            F.HISTORY_TIME_LAG: tf.ones([batch_size, length], tf.int64),
            F.HISTORY_SESSION: tf.zeros([batch_size, length], tf.int64),
            F.SESSION_LENGTH: tf.fill([batch_size], tf.constant(min(length, 2), tf.int64)),
            F.HISTORY_TIMESTAMPS: tf.tile(tf.range(length, dtype=tf.int64)[None],
                                          [batch_size, 1]),
            F.TARGET: tf.constant(np.arange(batch_size) % max(1, num_items) + 1, tf.int64)}


def create_variables(model: tf.keras.Model, spec: F.ExampleSpec) -> None:
    """Creates all of ``model``'s variables (towers and loss) by running it on a dummy batch,
    as ``t2diff_tf.training.fit`` does before restoring a checkpoint."""
    batch = dummy_batch(spec, model.num_items)
    model(batch)
    model.compute_loss(batch)


def restore_saved_model_weights(model: tf.keras.Model, saved_model_dir: str) -> None:
    """Loads into ``model`` (variables created, same architecture and sizes as the saved one)
    the weights of a Trainer's user-tower SavedModel (``UserTowerModule``).

    Raises:
      ValueError: when there is no SavedModel there, or a variable of ``model`` is not in it
        (another architecture).
    """
    prefix = tf.io.gfile.join(saved_model_dir, "variables", "variables")
    if not tf.io.gfile.exists(prefix + ".index"):
        raise ValueError(f"{saved_model_dir}: no SavedModel variables "
                         f"(variables/variables.index) to warm-start from")
    try:
        status = tf.train.Checkpoint(**{SAVED_MODEL_ATTRIBUTE: model}).read(prefix)
        status.assert_existing_objects_matched()
    except (AssertionError, ValueError) as e:
        raise ValueError(f"{saved_model_dir}: the saved model does not have this model's "
                         f"weights (another architecture?): {e}") from None


def normalized_name(variable: tf.Variable, model: Optional[tf.keras.Model] = None) -> str:
    """``sasrec_1/items/id_embeddings:0`` -> ``items/id_embeddings``: the name without the
    suffixes Keras adds to make names unique in a process and without the model's own name
    (which a variable has or not depending on the call that created it)."""
    name = re.sub(r"_\d+(?=/|$)", "", variable.name.split(":")[0])
    if model is not None:
        prefix = re.sub(r"_\d+$", "", model.name) + "/"
        if name.startswith(prefix):
            name = name[len(prefix):]
    return name


def item_indexed(model: tf.keras.Model, probe: tf.keras.Model) -> List[bool]:
    """Per weight of ``model`` (``N`` items), whether it is an item table: its first axis is
    one longer in ``probe`` (same architecture, ``N + 1`` items)."""
    weights, probes = model.weights, probe.weights
    if len(weights) != len(probes):
        raise ValueError(f"the probe model has {len(probes)} weights, the model {len(weights)}")
    out = []
    for w, p in zip(weights, probes):
        a, b = tuple(w.shape), tuple(p.shape)
        out.append(len(a) >= 1 and len(a) == len(b) and b[0] == a[0] + 1 and a[1:] == b[1:])
    return out


def transfer_weights(old_model: tf.keras.Model, new_model: tf.keras.Model,
                     probe_model: tf.keras.Model, mapping: ItemIdMapping) -> WarmStartReport:
    """Warm-starts ``new_model`` from ``old_model`` (see the module docstring).

    Args:
      old_model: the trained model, ``mapping.num_old_items`` items, variables created and
        restored.
      new_model: the model to train, ``mapping.num_new_items`` items, variables created and
        initialised; its weights are assigned here.
      probe_model: ``new_model``'s architecture with one item more (variables created): finds
        the item tables.
      mapping: new item ids -> old item ids.

    Raises:
      ValueError: when the two models are not the same architecture (different weights).
    """
    if new_model.num_items != mapping.num_new_items or \
            old_model.num_items != mapping.num_old_items:
        raise ValueError(f"the mapping is for {mapping.num_old_items} -> "
                         f"{mapping.num_new_items} items, the models have "
                         f"{old_model.num_items} -> {new_model.num_items}")
    old_weights, new_weights = old_model.weights, new_model.weights
    if len(old_weights) != len(new_weights):
        raise ValueError(f"the base model has {len(old_weights)} weights and this model "
                         f"{len(new_weights)}: not the same architecture")
    for old, new in zip(old_weights, new_weights):  # all checked before any is assigned
        if normalized_name(old, old_model) != normalized_name(new, new_model):
            raise ValueError(f"weight {normalized_name(old, old_model)!r} of the base model "
                             f"faces {normalized_name(new, new_model)!r}: not the same "
                             f"architecture")
    tables = item_indexed(new_model, probe_model)
    copied, remapped, kept = [], [], []
    for old, new, is_table in zip(old_weights, new_weights, tables):
        name = normalized_name(new, new_model)
        if is_table:
            if not new.trainable:
                kept.append((name, "item data of the new vocabulary"))
                continue
            old_value = old.numpy()
            if old_value.shape[0] != mapping.num_old_items + 1 or \
                    old_value.shape[1:] != tuple(new.shape[1:]):
                kept.append((name, f"shape {tuple(old_value.shape)} -> {tuple(new.shape)}"))
                continue
            value = new.numpy()
            rows = np.flatnonzero(mapping.old_ids)  # new ids with an old row
            value[rows] = old_value[mapping.old_ids[rows]]
            value[0] = old_value[0]
            new.assign(value)
            remapped.append(name)
        elif tuple(old.shape) == tuple(new.shape):
            new.assign(old.numpy())
            copied.append(name)
        else:
            kept.append((name, f"shape {tuple(old.shape)} -> {tuple(new.shape)}"))
    return WarmStartReport(tuple(copied), tuple(remapped), tuple(kept), mapping.items_kept,
                           mapping.items_added, mapping.items_removed)
