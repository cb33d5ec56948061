"""The ``t2diff`` command line.

    t2diff run                                   # the TFX pipeline on the synthetic demo data
    t2diff preprocess --source synthetic --output outputs/synthetic
    t2diff preprocess --source sequences --input ../shared/data/ml-1m/sequences.txt.gz \\
        --movies ../shared/data/ml-1m/movies.dat --max-train-windows-per-user 50 \\
        --output outputs/ml1m
    t2diff candidates --bundle outputs/demo/serving --examples '<examples>/Split-serving/*' \\
        --output candidates.parquet --top-k 100 --index scann   # nightly batch top-K

Run ``t2diff <command> --help`` for every option.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING, Optional, Sequence

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from components.preprocessing.config import (LAST_K, LEAVE_LAST_OUT, LEAVE_ONE_OUT, PROTOCOLS,  # noqa: E402
                                             SESSION_MODES, USER_HOLDOUT, VALIDATED_PROTOCOLS,
                                             ProtocolConfig, WindowConfig)
from components.preprocessing.records import InputError  # noqa: E402
from components.preprocessing.sources import SOURCE_KINDS, SourceConfig  # noqa: E402
from components.preprocessing.transforms import (PreprocessConfig, PreprocessingError,  # noqa: E402
                                                  run_preprocessing)
from pipeline import output_filter  # noqa: E402
from t2diff_tf.features import ExampleSpec, SequenceSpec  # noqa: E402

if TYPE_CHECKING:
    from pipeline.configs import PipelineConfig

# The pipeline's options (``run``) import the model registry and the training loop, hence
# TensorFlow (about 6 s); ``t2diff preprocess`` and ``candidates`` do not build them.


def add_source_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("data source")
    g.add_argument("--source", choices=SOURCE_KINDS, default="synthetic",
                   help="log format: 'synthetic' (embedded default: users drifting through item "
                        "clusters), 'ml1m_ratings' (UserID::MovieID::Rating::Timestamp), "
                        "'sequences' ('user item item ...' per line, in time order), 'kuairand' "
                        "(KuaiRand log CSV; clicks in tab 1 kept), 'csv' (header with user, item, "
                        "timestamp[, label]), 'tfds' (movielens/1m-ratings prepared beforehand)")
    g.add_argument("--input", nargs="+", default=[], metavar="PATH",
                   help="input files or globs (gzip detected from content)")
    g.add_argument("--movies", default=None, metavar="PATH",
                   help="MovieLens movies.dat: genres become item side features")
    g.add_argument("--min-rating", type=float, default=None,
                   help="keep ratings >= this (default: keep all, as the paper does)")
    g.add_argument("--csv-user-column", default="user", help="CSV: user id column")
    g.add_argument("--csv-item-column", default="item", help="CSV: item id column")
    g.add_argument("--csv-timestamp-column", default="timestamp",
                   help="CSV: numeric time column; '' when rows are already in time order")
    g.add_argument("--csv-timestamp-divisor", type=float, default=1.0,
                   help="CSV: divide the time column by this to get seconds (1000 for ms)")
    g.add_argument("--csv-label-column", default=None,
                   help="CSV: label column; rows with label < 1 are filtered (counted)")
    g.add_argument("--csv-delimiter", default=",", help="CSV: field separator")
    g.add_argument("--trim-spaces", action="store_true",
                   help="remove spaces around fields (ids and numbers), counted in stats.json "
                        "(normalised.trimmed_fields); without it such rows are dead letters")
    g.add_argument("--kuairand-main-tab", type=int, default=1,
                   help="KuaiRand: keep rows of this tab (the paper keeps tab 1); -1 keeps all")
    g.add_argument("--tfds-name", default="movielens/1m-ratings", help="TFDS data set name")
    g.add_argument("--tfds-data-dir", default=None, help="TFDS data_dir holding the prepared set")
    g.add_argument("--synthetic-users", type=int, default=1500,
                   help="synthetic: number of users")
    g.add_argument("--synthetic-items", type=int, default=1000,
                   help="synthetic: number of items")
    g.add_argument("--synthetic-seed", type=int, default=0, help="synthetic: seed")


def add_preprocess_arguments(parser: argparse.ArgumentParser,
                             protocols: Sequence[str] = PROTOCOLS) -> None:
    g = parser.add_argument_group("windows and protocol")
    g.add_argument("--protocol", choices=protocols, default=LEAVE_ONE_OUT,
                   help="'leave_one_out': per user, last item = test, second to last = "
                        "validation, earlier = train; 'user_holdout': the paper's seeded 80/20 "
                        "user split with a validation slice of the training users" + (
                            "; 'leave_last_out': last item = test, every earlier one = train, "
                            "no validation (the HSTU papers' split)"
                            if LEAVE_LAST_OUT in protocols else ""))
    g.add_argument("--history-length", type=int, default=50,
                   help="behaviours kept before each target (left-padded with item id 0)")
    g.add_argument("--time-lag-buckets", type=int, default=32,
                   help="log2 buckets of the gap between a behaviour and the target")
    g.add_argument("--session-mode", choices=SESSION_MODES, default=LAST_K,
                   help="'last_k': the session is the last k behaviours (paper); 'time_gap': a "
                        "new session after a gap longer than --session-gap-seconds")
    g.add_argument("--session-k", type=int, default=10, help="k of the last-k session rule")
    g.add_argument("--session-gap-seconds", type=int, default=1800,
                   help="gap that starts a new time-gap session")
    g.add_argument("--min-user-interactions", type=int, default=5,
                   help="drop users with fewer interactions (counted in the stats)")
    g.add_argument("--min-item-interactions", type=int, default=0,
                   help="k-core: drop items with fewer interactions, and users who then fall "
                        "below --min-user-interactions, to a fixed point (5 with 5: the usual "
                        "5-core); 0 keeps every item")
    g.add_argument("--kcore-max-rounds", type=int, default=10,
                   help="k-core: the most rounds; the run fails if the core is not reached")
    g.add_argument("--max-user-interactions", type=int, default=None,
                   help="keep each user's latest N interactions, count the older ones as "
                        "filtered (ML-1M with 200 is closest to the T2Diff paper's statistics)")
    g.add_argument("--max-train-windows-per-user", type=int, default=None,
                   help="keep only each user's latest N training windows (default: all for "
                        "leave-one-out, 10 for user_holdout)")
    g.add_argument("--min-target-position", type=int, default=50,
                   help="user_holdout: training targets start at this position")
    g.add_argument("--test-fraction", type=float, default=0.2, help="user_holdout: test users")
    g.add_argument("--validation-fraction", type=float, default=0.1,
                   help="user_holdout: share of the training users held out for validation")
    g.add_argument("--seed", type=int, default=0, help="seed of the user split")
    g.add_argument("--max-rejected-fraction", type=float, default=0.1,
                   help="fail when more of the interactions read are rejected as malformed")
    g.add_argument("--sequence-length", type=int, default=None, metavar="L",
                   help="also write the training data as sequence chunks of L inputs "
                        "(Split-train_sequences; every training interaction a label once), "
                        "for models that learn from every position; 200 is SASRec's usual L")
    g.add_argument("--max-chunks-per-user", type=int, default=None,
                   help="with --sequence-length: keep each user's latest chunks only")
    g.add_argument("--no-serving-windows", action="store_true",
                   help="do not write Split-serving (one window per user ending at the latest "
                        "behaviour, the input of `t2diff candidates`)")
    g.add_argument("--num-shards", type=int, default=0,
                   help="TFRecord shards per split (0, the default: the runner decides, "
                        "without shuffling every example; N: exactly N files)")
    g.add_argument("--beam-arg", action="append", default=[], metavar="ARG",
                   help="a Beam pipeline option, repeatable, e.g. --beam-arg=--runner=DataflowRunner "
                        "--beam-arg=--project=P (Flink/Spark/Dask runner options pass through)")


def source_from_args(args: argparse.Namespace) -> SourceConfig:
    return SourceConfig(
        kind=args.source, paths=tuple(args.input), movies_path=args.movies,
        min_rating=args.min_rating, csv_user_column=args.csv_user_column,
        csv_item_column=args.csv_item_column, csv_timestamp_column=args.csv_timestamp_column,
        csv_label_column=args.csv_label_column, csv_delimiter=args.csv_delimiter,
        csv_timestamp_divisor=args.csv_timestamp_divisor,
        kuairand_main_tab=None if args.kuairand_main_tab < 0 else args.kuairand_main_tab,
        tfds_name=args.tfds_name, tfds_data_dir=args.tfds_data_dir,
        synthetic_users=args.synthetic_users, synthetic_items=args.synthetic_items,
        synthetic_seed=args.synthetic_seed, trim_spaces=getattr(args, "trim_spaces", False))


def preprocess_config_from_args(args: argparse.Namespace) -> PreprocessConfig:
    cap = args.max_train_windows_per_user
    if cap is None and args.protocol == USER_HOLDOUT:
        cap = 10
    return PreprocessConfig(
        window=WindowConfig(ExampleSpec(args.history_length, args.time_lag_buckets),
                            args.session_mode, args.session_k, args.session_gap_seconds),
        protocol=ProtocolConfig(args.protocol, cap, args.test_fraction, args.validation_fraction,
                                args.min_target_position, args.seed),
        min_user_interactions=args.min_user_interactions,
        min_item_interactions=args.min_item_interactions,
        kcore_max_rounds=args.kcore_max_rounds,
        max_user_interactions=args.max_user_interactions,
        max_rejected_fraction=args.max_rejected_fraction, num_shards=args.num_shards,
        sequences=(SequenceSpec(args.sequence_length, args.max_chunks_per_user)
                   if args.sequence_length else None),
        serving_windows=not args.no_serving_windows)


def add_pipeline_arguments(parser: argparse.ArgumentParser) -> None:
    from pipeline.configs import DEFAULT_OUTPUT_ROOT, PIPELINE_NAME
    from t2diff_tf.learning_rate import KINDS
    from t2diff_tf.models.registry import available_models
    from t2diff_tf.training import STRATEGIES

    add_source_arguments(parser)
    # The pipeline selects epochs and warms models up on the validation split.
    add_preprocess_arguments(parser, VALIDATED_PROTOCOLS)
    g = parser.add_argument_group("model, training, evaluation, push")
    g.add_argument("--pipeline-name", default=PIPELINE_NAME, help="TFX pipeline name")
    g.add_argument("--output-root", default=DEFAULT_OUTPUT_ROOT,
                   help="pipeline root, ML Metadata and (by default) the push destination")
    g.add_argument("--model", default="t2diff", choices=available_models(),
                   help="registry model to train")
    g.add_argument("--model-config", default="{}",
                   help="JSON of the model's config fields, e.g. '{\"embedding_dim\": 64}'")
    g.add_argument("--baseline-model", default=None, choices=available_models(),
                   help="also train this model; the Evaluator compares against it")
    g.add_argument("--epochs", type=int, default=10, help="maximum training epochs")
    g.add_argument("--batch-size", type=int, default=256, help="training batch size")
    g.add_argument("--length-buckets", type=int, default=1,
                   help="sequence layout: batch chunks within this many length ranges "
                        "(1, the default: mix every length in a batch, so every label weighs "
                        "alike; more trims padding but weighs short histories' labels more)")
    g.add_argument("--positions-per-batch", type=int, default=None,
                   help="sequence layout: size each length bucket's batches to about this many "
                        "positions instead of --batch-size chunks, so buckets trim padding and "
                        "every label still weighs about alike")
    g.add_argument("--learning-rate", type=float, default=1e-3, help="Adam learning rate")
    g.add_argument("--lr-schedule", default="constant", choices=KINDS,
                   help="learning rate over epochs: constant, or cosine/linear decay (after "
                        "--warmup-epochs of linear warm-up) towards --final-lr-fraction of it")
    g.add_argument("--warmup-epochs", type=int, default=0)
    g.add_argument("--final-lr-fraction", type=float, default=0.0)
    g.add_argument("--patience", type=int, default=2,
                   help="early stopping: epochs without a better validation metric")
    g.add_argument("--selection-metric", default="recall@20",
                   help="validation metric that selects the epoch")
    g.add_argument("--select-seen-excluded", action="store_true",
                   help="rank the validation targets without the user's seen items when "
                        "selecting the epoch")
    g.add_argument("--strategy", choices=STRATEGIES, default="default",
                   help="tf.distribute strategy of the Trainer")
    g.add_argument("--ks", default="2,10,20,100", help="Evaluator cut-offs")
    g.add_argument("--blessing-threshold", type=float, default=0.0,
                   help="bless only when the blessing metric reaches this")
    g.add_argument("--blessing-metric", default="recall@20", help="metric of the blessing rule")
    g.add_argument("--exclude-history", action="store_true",
                   help="rank without the items the user has already seen")
    g.add_argument("--no-serving-baseline", action="store_true",
                   help="do not compare with the model that serves (the pipeline's latest "
                        "blessed model in ML Metadata); by default a model that does not beat it "
                        "is not blessed or pushed")
    g.add_argument("--serving-rule", choices=("better", "not_worse"), default="better",
                   help="against the serving model: 'better' needs the paired 95%% interval of "
                        "the blessing metric's difference above 0, 'not_worse' not below 0")
    g.add_argument("--warm-start", action="store_true",
                   help="start training from the latest blessed (pushed) model's weights; "
                        "items new to the vocabulary get fresh rows")
    g.add_argument("--push-destination", default=None,
                   help="where blessed models go (default <output-root>/serving)")
    g.add_argument("--schema", default=None,
                   help="a schema the examples must follow (the run stops early otherwise)")
    g.add_argument("--no-cache", action="store_true", help="rerun every component")
    g.add_argument("--preprocess-beam-arg", action="append", default=[], metavar="ARG",
                   help="a Beam option for PreprocessLogs only, after the pipeline's (it wins), "
                        "repeatable: --preprocess-beam-arg=--direct_num_workers=2 "
                        "--preprocess-beam-arg=--direct_running_mode=multi_processing runs the "
                        "preprocessing in two processes (StatisticsGen cannot: BENCHMARKS.md)")


def pipeline_config_from_args(args: argparse.Namespace) -> PipelineConfig:
    from pipeline.configs import EvalConfig, PipelineConfig
    from t2diff_tf.learning_rate import LearningRateSchedule
    from t2diff_tf.training import TrainConfig

    beam_args = tuple(args.beam_arg) or PipelineConfig.beam_pipeline_args
    return PipelineConfig(
        pipeline_name=args.pipeline_name, output_root=os.path.abspath(args.output_root),
        source=source_from_args(args), preprocess=preprocess_config_from_args(args),
        model=args.model, model_config=json.loads(args.model_config),
        baseline_model=args.baseline_model,
        train=TrainConfig(epochs=args.epochs, batch_size=args.batch_size,
                          learning_rate=args.learning_rate, early_stopping_patience=args.patience,
                          learning_rate_schedule=LearningRateSchedule(
                              args.lr_schedule, args.warmup_epochs, args.final_lr_fraction),
                          selection_metric=args.selection_metric, strategy=args.strategy,
                          exclude_seen=args.select_seen_excluded,
                          length_buckets=args.length_buckets,
                          positions_per_batch=args.positions_per_batch),
        eval=EvalConfig(ks=tuple(int(k) for k in args.ks.split(",")),
                        blessing_metric=args.blessing_metric, threshold=args.blessing_threshold,
                        exclude_history=args.exclude_history,
                        serving_baseline=not args.no_serving_baseline,
                        serving_rule=args.serving_rule),
        warm_start=args.warm_start,
        push_destination=args.push_destination,
        schema_path=os.path.abspath(args.schema) if args.schema else None,
        beam_pipeline_args=beam_args,
        preprocess_beam_pipeline_args=tuple(args.preprocess_beam_arg),
        enable_cache=not args.no_cache)


def describe_lines(stats: dict) -> str:
    """E.g. ``read 100,000 lines: 99,999 interactions, 1 blank`` (what the lines held)."""
    parts = [f"{stats['interactions_read']:,} interactions"]
    for key, what in (("header_lines", "header"), ("blank_lines", "blank")):
        if stats.get(key):
            parts.append(f"{stats[key]:,} {what}")
    normalised = ", ".join(f"{name.replace('_', ' ')} {n:,}"
                           for name, n in sorted(stats.get("normalised", {}).items()))
    return (f"read {stats.get('lines_read', 0):,} lines: {', '.join(parts)}"
            + (f" (normalised: {normalised})" if normalised else ""))


def format_stats(stats: dict, output_dir: str) -> str:
    lines = [f"Preprocessed {stats['source']} into {output_dir} in {stats['elapsed_seconds']} s",
             f"  {describe_lines(stats)}",
             f"  interactions read  {stats['interactions_read']:>10,}",
             f"  kept               {stats['kept']:>10,}"]
    for reason, n in sorted(stats["filtered"].items()):
        lines.append(f"  filtered ({reason}) {n:>10,}")
    if "kcore" in stats:
        lines.append(f"  k-core: fixed point after {stats['kcore']['rounds_with_removals']} "
                     f"round(s) that removed interactions")
    lines.append(f"  rejected (dead letters) {stats['rejected']:>5,}  -> "
                 f"{os.path.join(output_dir, 'dead_letter', 'dead_letter.jsonl')}")
    lines.append(f"  users kept {stats['users_kept']:,} of {stats['users_read']:,}; "
                 f"items {stats['items']:,}")
    ex = stats["examples"]
    lines.append(f"  examples: train {ex['train']:,}, validation {ex['validation']:,}, "
                 f"test {ex['test']:,}")
    if "train_sequences" in ex:
        lines.append(f"  training sequences: {ex['train_sequences']:,} chunks teaching "
                     f"{stats.get('sequence_labels', 0):,} next items")
    return "\n".join(lines)


def _preprocess(args: argparse.Namespace) -> int:
    from components.preprocessing.dask_runner import runner_beam_args

    source = source_from_args(args)
    config = preprocess_config_from_args(args)
    with runner_beam_args(args.runner, args.dask_workers, args.beam_arg) as beam_args:
        stats = run_preprocessing(source.build(), args.output, config, beam_args,
                                  user_grouping=args.user_grouping)
    print(format_stats(stats, args.output))
    if args.json:
        print(json.dumps(stats, indent=2, sort_keys=True))
    return 0


def _run(args: argparse.Namespace) -> int:
    from pipeline import local, report

    config = pipeline_config_from_args(args)
    local.run(config, verbose=args.verbose)
    print(report.summarize_run(config))
    return 0


def _candidates(args: argparse.Namespace) -> int:
    from t2diff_tf.serving import batch_candidates as B

    config = B.BatchCandidatesConfig(
        top_k=args.top_k, index=args.index, batch_size=args.batch_size,
        leaves_to_search=args.leaves_to_search, output_format=args.format,
        examples_vocabulary=args.examples_vocabulary)
    if args.engine == "beam":
        from components.batch_candidates import run_batch_candidates

        result = run_batch_candidates(args.bundle, args.examples, args.output, config,
                                      args.beam_arg)
        skipped = ", ".join(f"{r} {n:,}" for r, n in result["skipped"].items()) or "none"
        print(f"candidates (Beam): {result['users_written']:,} users written to "
              f"{result['output']} (top {result['k']}, {result['index']} index, model version "
              f"{result['model_version']}) in {result['seconds']:.1f} s\n"
              f"  windows read {result['windows_read']:,}; superseded by a later window of the "
              f"same user {result['superseded']:,}; skipped: {skipped} -> "
              f"{result['skipped_path']}")
        return 0
    bundle = B.CandidateBundle(args.bundle)
    print(f"candidates: bundle {bundle.directory}, model version {bundle.model_version} "
          f"({bundle.num_items:,} items)")
    summary = B.generate_candidates(bundle, args.examples, args.output, config, progress=print)
    skipped = ", ".join(f"{reason} {n:,}" for reason, n in summary.skipped.items()) or "none"
    print(f"candidates: {summary.users_written:,} users written to {summary.output} "
          f"(top {summary.k}, {summary.index} index, model version {summary.model_version}) in "
          f"{summary.selection_seconds + summary.scoring_seconds:.1f} s, "
          f"{summary.users_per_second:,.0f} users/s\n"
          f"  windows read {summary.windows_read:,}; superseded by a later window of the same "
          f"user {summary.superseded:,}; skipped: {skipped} -> {summary.skipped_path}")
    for note in summary.notes:
        print(f"  note: {note}")
    return 0


def add_candidates_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bundle", required=True,
                        help="a pushed bundle (<push destination>/<version>), or the push "
                             "destination (its latest version); it may have been copied anywhere")
    parser.add_argument("--examples", required=True, nargs="+", metavar="PATTERN",
                        help="tf.Example window files or globs (gzip or not), e.g. "
                             "'<examples>/Split-serving/*' (each user's window after the latest "
                             "behaviour): one row per user, on the user's latest window")
    parser.add_argument("--output", required=True,
                        help="candidates file: .parquet, .tfrecord or .tfrecord.gz (columns "
                             "user_id, item_ids, scores, model_version); a .summary.json and a "
                             ".skipped.jsonl go beside it")
    parser.add_argument("--top-k", type=int, default=100, help="items per user")
    parser.add_argument("--index", choices=("exact", "scann"), default="exact",
                        help="'exact': brute force over the bundle's item embeddings; 'scann': "
                             "the pushed ScaNN searcher")
    parser.add_argument("--batch-size", type=int, default=1024, help="users per batch")
    parser.add_argument("--leaves-to-search", type=int, default=None,
                        help="ScaNN: leaves searched per user (default: the pushed index's)")
    parser.add_argument("--format", choices=("parquet", "tfrecord"), default=None,
                        help="output format (default: from the --output extension)")
    parser.add_argument("--engine", choices=("local", "beam"), default="local",
                        help="'local': one process, --output is a file; 'beam': a Beam job for "
                             "large user sets, --output is a directory of shards "
                             "(candidates-*.parquet or .tfrecord.gz, skipped.jsonl, summary.json)")
    parser.add_argument("--beam-arg", action="append", default=[], metavar="ARG",
                        help="with --engine beam: a Beam pipeline option, repeatable")
    parser.add_argument("--examples-vocabulary", default=None, metavar="PATH",
                        help="item vocabulary the examples' ids come from (default: the "
                             "item_vocabulary.tsv of their artifact, when there is one); ids are "
                             "mapped to the bundle's through the raw ids")


def build_parser(command: Optional[str] = None) -> argparse.ArgumentParser:
    """The ``t2diff`` parser; with ``command``, only that command's options are added (every
    command is still listed), so a ``preprocess`` does not import what ``run`` needs."""
    parser = argparse.ArgumentParser(
        prog="t2diff", description="T2Diff retrieval on TensorFlow/TFX: preprocess interaction "
        "logs, train, evaluate and export.", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    pre = sub.add_parser(
        "preprocess", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        help="Beam preprocessing: log -> tf.Example windows per split, vocabulary, stats",
        description="Reads a log, validates it (malformed rows go to a dead-letter file), drops "
        "short users, orders by time, cuts sessions and windows, splits by protocol and writes "
        "TFRecords, the item vocabulary, item features, the schema and stats.json.")
    add_source_arguments(pre)
    add_preprocess_arguments(pre)
    pre.add_argument("--output", required=True, help="output directory")
    pre.add_argument("--json", action="store_true", help="also print the full stats JSON")
    pre.add_argument("--runner", choices=("direct", "dask"), default="direct",
                     help="'direct': Beam's DirectRunner (add --beam-arg=--direct_num_workers=2 "
                          "--beam-arg=--direct_running_mode=multi_processing for processes); "
                          "'dask': Beam's DaskRunner on a local Dask cluster of --dask-workers "
                          "processes on 127.0.0.1 (other runners: --beam-arg=--runner=...)")
    pre.add_argument("--dask-workers", type=int, default=2,
                     help="with --runner dask: worker processes of the local cluster")
    pre.add_argument("--user-grouping", choices=("auto", "shuffle", "disk"), default="auto",
                     help="how rows are grouped by user: 'disk' through partition files under "
                          "--output (a worker's memory bounded whatever the log's size), "
                          "'shuffle' by the runner; 'auto': disk on the DirectRunner (its own "
                          "grouping holds the whole log in memory), shuffle on other runners")
    pre.set_defaults(func=_preprocess)

    run = sub.add_parser(
        "run", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        help="the TFX pipeline: preprocess -> statistics/schema/validation -> train -> evaluate "
             "-> push (LocalDagRunner)",
        description="Runs the whole TFX pipeline locally and prints the evaluation and where the "
        "pushed model and index are. Same as python -m pipeline.local.")
    if command in (None, "run"):
        add_pipeline_arguments(run)
        output_filter.add_verbose_argument(run)
    run.set_defaults(func=_run)

    candidates = sub.add_parser(
        "candidates", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        help="batch candidates: the top-K items of every user from a pushed bundle",
        description="Reads window examples, embeds each user's latest window with the bundle's "
        "user tower, searches the item embeddings (exact or the pushed ScaNN index) and writes "
        "one row per user: raw user id, raw item ids, scores and the model version.")
    add_candidates_arguments(candidates)
    candidates.set_defaults(func=_candidates)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command).parse_args(argv)
    try:
        return args.func(args)
    except (InputError, PreprocessingError, ValueError) as e:
        print(f"t2diff {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
