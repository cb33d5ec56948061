"""Typed configuration of the preprocessing: sessions, windows and evaluation protocols."""

from __future__ import annotations

import dataclasses
from typing import Optional

from t2diff_tf.features import ExampleSpec
from t2diff_tf.sequence_windows import SequenceWindowConfig

LAST_K = "last_k"
TIME_GAP = "time_gap"
SESSION_MODES = (LAST_K, TIME_GAP)

LEAVE_ONE_OUT = "leave_one_out"
USER_HOLDOUT = "user_holdout"
LEAVE_LAST_OUT = "leave_last_out"
PROTOCOLS = (LEAVE_ONE_OUT, USER_HOLDOUT, LEAVE_LAST_OUT)
# The protocols with a validation split, which the TFX pipeline's epoch selection and model
# warm-up need.
VALIDATED_PROTOCOLS = (LEAVE_ONE_OUT, USER_HOLDOUT)

TRAIN, VALIDATION, TEST = "train", "validation", "test"
SPLITS = (TRAIN, VALIDATION, TEST)
# The training data as sequence chunks (written beside the windows when asked for).
TRAIN_SEQUENCES = "train_sequences"
# One window per user that ends at the user's latest behaviour, with no target: what serving
# and nightly batch candidates embed (``windows.serving_window``).
SERVING = "serving"


@dataclasses.dataclass(frozen=True)
class WindowConfig:
    """How a target's history is cut into the example.

    Attributes:
      example: fixed shapes (history length ``L``, time-lag buckets).
      session_mode: ``"last_k"`` (the paper: the session is the last ``k`` behaviours) or
        ``"time_gap"`` (a new session starts after a gap longer than ``session_gap_seconds``;
        needs timestamps).
      session_k: ``k`` of the last-k rule (paper default 10).
      session_gap_seconds: the gap of the time-gap rule (default 30 minutes).
    """

    example: ExampleSpec = ExampleSpec()
    session_mode: str = LAST_K
    session_k: int = 10
    session_gap_seconds: int = 1800

    def __post_init__(self):
        if self.session_mode not in SESSION_MODES:
            raise ValueError(f"session_mode must be one of {SESSION_MODES}, got "
                             f"{self.session_mode!r}")
        if self.session_k < 1:
            raise ValueError(f"session_k must be >= 1, got {self.session_k}")
        if self.session_gap_seconds < 0:
            raise ValueError("session_gap_seconds must be >= 0")

    def sequence_windows(self) -> SequenceWindowConfig:
        """How a trainer rebuilds these windows from sequence chunks, at every position
        (:func:`t2diff_tf.sequence_windows.chunk_windows`)."""
        return SequenceWindowConfig.for_examples(
            self.example, self.session_k if self.session_mode == LAST_K else None)


@dataclasses.dataclass(frozen=True)
class ProtocolConfig:
    """Which windows go to which split.

    ``leave_one_out`` (default): per user, in time order, the last item is the test target, the
    second to last the validation target, and every earlier position (with at least one behaviour
    before it) a training target; ``max_train_windows_per_user`` keeps only the latest ones.

    ``user_holdout`` (the paper's protocol): users are split by a seeded hash into test users
    (``test_fraction``) and training users, of which ``validation_fraction`` form a held-out
    validation slice. Test and validation users give one window each (their last item); training
    users give up to ``max_train_windows_per_user`` windows with targets at positions
    ``>= min_target_position`` (the latest ones), or their last item when they are shorter.

    ``leave_last_out`` (the HSTU papers' ML-1M protocol: generative-recommenders trains with
    ``ignore_last_n=1``, as does its TensorFlow reimplementation): per user, the last item is
    the test target and every earlier position a training target, the second to last included.
    There is no validation split: a model trains a fixed number of epochs, chosen beforehand
    without the test items (e.g. its best epoch under ``leave_one_out``). Its test targets and
    test windows are ``leave_one_out``'s.
    """

    name: str = LEAVE_ONE_OUT
    max_train_windows_per_user: Optional[int] = None
    test_fraction: float = 0.2
    validation_fraction: float = 0.1
    min_target_position: int = 50
    seed: int = 0

    def __post_init__(self):
        if self.name not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {self.name!r}")
        if self.max_train_windows_per_user is not None and self.max_train_windows_per_user < 1:
            raise ValueError("max_train_windows_per_user must be >= 1 or None")
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError("test_fraction must be in (0, 1)")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError("validation_fraction must be in [0, 1)")
        if self.min_target_position < 1:
            raise ValueError("min_target_position must be >= 1")

    @classmethod
    def paper(cls, seed: int = 0) -> "ProtocolConfig":
        """The T2Diff authors' protocol: 80/20 users, <= 10 windows per user from position 50."""
        return cls(name=USER_HOLDOUT, max_train_windows_per_user=10, seed=seed)

    @property
    def min_sequence_length(self) -> int:
        """The shortest user sequence the protocol can use."""
        return 3 if self.name == LEAVE_ONE_OUT else 2

    @property
    def has_validation(self) -> bool:
        """Whether the protocol holds out validation targets."""
        return self.name in VALIDATED_PROTOCOLS
