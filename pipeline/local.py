"""Runs the t2diff pipeline with TFX's LocalDagRunner.

As the TFX CLI expects (the pipeline file is executed; the defaults are the embedded demo)::

    tfx pipeline create --pipeline_path=pipeline/local.py --engine=local
    tfx run create --pipeline_name=t2diff --engine=local

Directly, with options (``python -m pipeline.local --help``)::

    python -m pipeline.local --source sequences --input ../shared/data/ml-1m/sequences.txt.gz \\
        --model t2diff --baseline-model mean_pool_two_tower --epochs 20

Without arguments (the TFX CLI path) the options come from ``T2DIFF_PIPELINE_ARGS`` (one string,
e.g. ``"--source sequences --input ..."``) or, when it is unset, are the demo's (``DEMO_ARGS``).
"""

import argparse
import contextlib
import os
import shlex
import sys
from typing import Iterator, Optional, Sequence

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

if __package__ in (None, ""):  # executed as a file (the TFX CLI does this)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tfx import v1 as tfx  # noqa: E402

from components.preprocessing.readers import resolve_files  # noqa: E402
from pipeline import cli, output_filter  # noqa: E402
from pipeline.configs import PipelineConfig  # noqa: E402
from pipeline.progress import MetadataReader, RunProgress, reporting_launches  # noqa: E402
from pipeline.t2diff_pipeline import create_pipeline  # noqa: E402
from t2diff_tf.progress import VERBOSE_ENV  # noqa: E402


# The embedded demo: T2Diff against the mean-pooled two-tower on the synthetic log.
DEMO_ARGS = ["--model", "t2diff", "--baseline-model", "mean_pool_two_tower", "--epochs", "3",
             "--output-root", "outputs/demo"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Run the t2diff TFX pipeline locally (LocalDagRunner).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    cli.add_pipeline_arguments(parser)
    output_filter.add_verbose_argument(parser)
    return parser


def check_inputs(config: PipelineConfig) -> None:
    """Fails before any component runs when the data cannot be read (missing, unreadable or
    empty files, truncated gzip, a header without the needed columns or with a duplicate one),
    so that a bad input never starts a run."""
    if config.source.paths:
        resolve_files(config.source.paths)
        config.source.check_inputs()
    if config.source.movies_path:
        resolve_files(config.source.movies_path)
    if config.schema_path:
        resolve_files(config.schema_path)


def close_stale_executions(metadata_path: str) -> int:
    """Marks executions still RUNNING in the ML Metadata store as CANCELED; returns how many.

    LocalDagRunner runs a pipeline inside this process, so an execution that is RUNNING before
    a run starts belongs to a process that was killed (the work it did is not lost: a Trainer
    resumes from its checkpoints). Do not point two concurrent local runs at one store.
    """
    if not os.path.exists(metadata_path):
        return 0
    from ml_metadata.metadata_store import metadata_store
    from ml_metadata.proto import metadata_store_pb2

    connection = metadata_store_pb2.ConnectionConfig()
    connection.sqlite.filename_uri = metadata_path
    store = metadata_store.MetadataStore(connection)
    stale = [e for e in store.get_executions()
             if e.last_known_state == metadata_store_pb2.Execution.RUNNING]
    for execution in stale:
        execution.last_known_state = metadata_store_pb2.Execution.CANCELED
        execution.custom_properties["closed_by"].string_value = (
            "t2diff: the process running it ended before it finished")
    if stale:
        store.put_executions(stale)
    return len(stale)


@contextlib.contextmanager
def _verbose_environment(verbose: bool) -> Iterator[None]:
    """Tells the Trainer module (same process) whether to keep Keras's own output."""
    before = os.environ.get(VERBOSE_ENV)
    os.environ[VERBOSE_ENV] = "1" if verbose else "0"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(VERBOSE_ENV, None)
        else:
            os.environ[VERBOSE_ENV] = before


def run(config: PipelineConfig, verbose: bool = True, progress: bool = True) -> Optional[str]:
    """Runs ``config``'s pipeline with LocalDagRunner and SQLite ML Metadata (closing first the
    executions a killed earlier run left RUNNING).

    Args:
      config: the pipeline.
      verbose: print everything the run writes; ``False``: only progress lines, errors and
        other lines that are not noise (``pipeline.output_filter``), the whole output going to
        ``<output_root>/logs/run-<time>.log``.
      progress: print one line when each component starts and one when it ends (time, key
        counts; ``pipeline.progress``).

    Returns:
      The log file's path when ``verbose`` is ``False``, else ``None``.
    """
    check_inputs(config)
    os.makedirs(os.path.dirname(config.metadata_path), exist_ok=True)
    closed = close_stale_executions(config.metadata_path)
    if closed:
        print(f"t2diff: {closed} execution(s) left RUNNING by an interrupted run marked CANCELED "
              f"in {config.metadata_path}", file=sys.stderr)
    log_path = None
    with contextlib.ExitStack() as stack:
        stack.enter_context(_verbose_environment(verbose))
        if not verbose:
            log_path = output_filter.log_path_for(config.output_root)
            print(f"t2diff: running pipeline {config.pipeline_name}; the full output goes to "
                  f"{log_path} (--verbose prints it here)", flush=True)
            stack.enter_context(output_filter.filtered_output(log_path))
        pipeline = create_pipeline(
            config, tfx.orchestration.metadata.sqlite_metadata_connection_config(
                config.metadata_path))
        if progress:
            stack.enter_context(reporting_launches(RunProgress(
                len(pipeline.components), MetadataReader.sqlite(config.metadata_path))))
        tfx.orchestration.LocalDagRunner().run(pipeline)
    return log_path


def main(argv: Optional[Sequence[str]] = None) -> None:
    if argv is None:
        argv = sys.argv[1:] or shlex.split(os.environ.get("T2DIFF_PIPELINE_ARGS", "")) or DEMO_ARGS
    args = build_parser().parse_args(argv)
    run(cli.pipeline_config_from_args(args), verbose=args.verbose)


if __name__ == "__main__":
    main()
