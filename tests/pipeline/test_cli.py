"""The `t2diff` console script, as a user runs it."""

import os
import subprocess
import sys

BIN = os.path.dirname(sys.executable)


def test_console_script_resolves_on_the_pinned_stack():
    # The entry script loads through pkg_resources, which resolves the package's requirements
    # as soon as anything imports setuptools (TFX artifacts do): they must hold on this stack.
    check = subprocess.run([sys.executable, "-c",
                            "import pkg_resources; pkg_resources.require('t2diff')"],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stderr[-2000:]


def test_preprocess_command_prints_counts_that_add_up(tmp_path):
    out = tmp_path / "out"
    run = subprocess.run([os.path.join(BIN, "t2diff"), "preprocess", "--source", "synthetic",
                          "--synthetic-users", "40", "--synthetic-items", "30",
                          "--output", str(out)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "interactions read" in run.stdout and "examples: train" in run.stdout
    assert (out / "stats.json").exists()


def test_bad_path_is_a_one_line_error_with_exit_code_2(tmp_path):
    run = subprocess.run([os.path.join(BIN, "t2diff"), "preprocess", "--source", "sequences",
                          "--input", str(tmp_path / "missing.txt"), "--output", str(tmp_path)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 2
    assert f"t2diff preprocess: error: {tmp_path / 'missing.txt'}: no such file" in run.stderr


def test_run_batching_flags_reach_the_training_config(tmp_path):
    from pipeline.cli import build_parser, pipeline_config_from_args

    args = build_parser("run").parse_args(
        ["run", "--source", "synthetic", "--output-root", str(tmp_path),
         "--length-buckets", "8", "--positions-per-batch", "8192"])
    train = pipeline_config_from_args(args).train
    assert (train.length_buckets, train.positions_per_batch) == (8, 8192)
    default = pipeline_config_from_args(build_parser("run").parse_args(
        ["run", "--source", "synthetic", "--output-root", str(tmp_path)])).train
    assert (default.length_buckets, default.positions_per_batch) == (1, None)


def test_leave_last_out_is_for_preprocessing_not_for_the_pipeline(tmp_path, capsys):
    """The pipeline selects epochs and warms models up on the validation split, which
    leave-last-out does not hold out: its ``run`` refuses the protocol, in the parser and in
    the config, while ``preprocess`` writes it."""
    import pytest

    from components.preprocessing.config import LEAVE_LAST_OUT, ProtocolConfig
    from components.preprocessing.transforms import PreprocessConfig
    from pipeline.cli import build_parser, preprocess_config_from_args
    from pipeline.configs import PipelineConfig

    with pytest.raises(SystemExit):
        build_parser("run").parse_args(["run", "--source", "synthetic", "--output-root",
                                        str(tmp_path), "--protocol", LEAVE_LAST_OUT])
    assert "invalid choice: 'leave_last_out'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="holds out no validation split"):
        PipelineConfig(preprocess=PreprocessConfig(protocol=ProtocolConfig(name=LEAVE_LAST_OUT)))
    args = build_parser("preprocess").parse_args(
        ["preprocess", "--source", "synthetic", "--output", str(tmp_path),
         "--protocol", LEAVE_LAST_OUT])
    assert preprocess_config_from_args(args).protocol.name == LEAVE_LAST_OUT
