"""A serialisable description of a log source (what the CLI and the TFX component take)."""

from __future__ import annotations

import dataclasses
import json
from typing import Optional, Tuple

import apache_beam as beam

from components.preprocessing import readers, synthetic

SOURCE_KINDS = ("synthetic", "ml1m_ratings", "sequences", "kuairand", "csv", "tfds")


@dataclasses.dataclass(frozen=True)
class SourceConfig:
    """Which log to read and how.

    Attributes:
      kind: one of ``synthetic`` (the embedded default), ``ml1m_ratings`` (``ratings.dat``),
        ``sequences`` (``user item item ...`` lines), ``kuairand``, ``csv``, ``tfds``.
      paths: input files or globs (file kinds).
      movies_path: ``movies.dat`` for genres (``ml1m_ratings``, ``sequences``).
      min_rating: keep ratings >= this (``ml1m_ratings``, ``tfds``).
      csv_user_column, csv_item_column, csv_timestamp_column, csv_label_column, csv_delimiter,
      csv_timestamp_divisor: the generic CSV's layout.
      kuairand_main_tab: the tab KuaiRand rows must be in (``None``: all).
      tfds_name, tfds_data_dir: the TFDS data set, prepared beforehand.
      synthetic_users, synthetic_items, synthetic_seed: size and seed of the synthetic log.
      trim_spaces: remove leading and trailing spaces around fields (ids and numbers) and count
        them in ``stats.json`` (``normalised.trimmed_fields``); off (default), such a row is a
        dead letter (``space_around_value``). Whitespace-separated sequences have no spaces to
        trim.
    """

    kind: str = "synthetic"
    paths: Tuple[str, ...] = ()
    movies_path: Optional[str] = None
    min_rating: Optional[float] = None
    csv_user_column: str = "user"
    csv_item_column: str = "item"
    csv_timestamp_column: str = "timestamp"
    csv_label_column: Optional[str] = None
    csv_delimiter: str = ","
    csv_timestamp_divisor: float = 1.0
    kuairand_main_tab: Optional[int] = 1
    tfds_name: str = "movielens/1m-ratings"
    tfds_data_dir: Optional[str] = None
    synthetic_users: int = synthetic.SyntheticConfig.num_users
    synthetic_items: int = synthetic.SyntheticConfig.num_items
    synthetic_seed: int = 0
    trim_spaces: bool = False

    def __post_init__(self):
        if self.kind not in SOURCE_KINDS:
            raise ValueError(f"unknown source kind {self.kind!r}; choose one of {SOURCE_KINDS}")
        object.__setattr__(self, "paths", tuple(self.paths))
        if self.kind in ("ml1m_ratings", "sequences", "kuairand", "csv") and not self.paths:
            raise ValueError(f"source kind {self.kind!r} needs at least one input path")

    def synthetic_config(self) -> synthetic.SyntheticConfig:
        return synthetic.SyntheticConfig(num_users=self.synthetic_users,
                                         num_items=self.synthetic_items, seed=self.synthetic_seed)

    def build(self) -> beam.PTransform:
        """The Beam source transform."""
        if self.kind == "synthetic":
            return readers.SyntheticLog(self.synthetic_config())
        if self.kind == "ml1m_ratings":
            return readers.MovieLensRatings(self.paths, self.movies_path, self.min_rating,
                                            trim_spaces=self.trim_spaces)
        if self.kind == "sequences":
            genres = readers.read_movielens_genres(self.movies_path) if self.movies_path else None
            return readers.SequenceFile(self.paths, genres=genres)
        if self.kind == "kuairand":
            return readers.KuaiRandLog(self.paths, main_tab=self.kuairand_main_tab,
                                       trim_spaces=self.trim_spaces)
        if self.kind == "csv":
            return readers.CsvLog(self.paths, self.csv_user_column, self.csv_item_column,
                                  self.csv_timestamp_column, self.csv_timestamp_divisor,
                                  self.csv_label_column, delimiter=self.csv_delimiter,
                                  trim_spaces=self.trim_spaces)
        return readers.TfdsMovieLens(self.tfds_name, self.tfds_data_dir, self.min_rating,
                                     trim_spaces=self.trim_spaces)

    def check_inputs(self) -> None:
        """The checks before Beam for this source's files, without building a pipeline: they
        exist, are readable and not empty, gzip streams are whole, headers have the needed
        columns once each, the inputs hold a data line, and ``movies.dat`` parses.

        Raises:
          InputError: naming the file (and line).
        """
        if self.kind in ("synthetic", "tfds"):
            return
        source = self.build()  # reads movies.dat (genres) where the kind uses it
        readers.check_data_files(readers.resolve_files(self.paths),
                                 source.parser().header_spec())
        if self.movies_path and self.kind != "sequences":
            readers.read_movielens_genres(self.movies_path)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "SourceConfig":
        return cls(**json.loads(text))
