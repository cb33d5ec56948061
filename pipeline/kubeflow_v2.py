"""Compiles the t2diff pipeline for Kubeflow Pipelines V2 / Vertex AI Pipelines.

Beam components (preprocessing, StatisticsGen) run on Dataflow through ``--runner=DataflowRunner``
Beam options; training scales with ``--strategy multi_worker_mirrored`` (workers from
``TF_CONFIG``, which Vertex custom jobs set). The same options as ``pipeline.local``, plus::

    python -m pipeline.kubeflow_v2 --project P --region us-central1 \\
        --output-root gs://BUCKET/t2diff --image gcr.io/P/t2diff:latest \\
        --source sequences --input gs://BUCKET/ml-1m/sequences.txt.gz --output pipeline.json

then submit ``pipeline.json`` (e.g. ``aiplatform.PipelineJob(template_path=...)``). Compiling
needs no cloud access as long as the pipeline root is not read (tests compile with a local root).
"""

import argparse
import dataclasses
import os
import sys
from typing import List, Optional, Sequence

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from tfx.orchestration.kubeflow.v2 import kubeflow_v2_dag_runner  # noqa: E402

from pipeline import cli  # noqa: E402
from pipeline.configs import PipelineConfig  # noqa: E402
from pipeline.t2diff_pipeline import create_pipeline  # noqa: E402


def dataflow_beam_args(project: str, region: str, temp_location: str,
                       max_num_workers: int = 10) -> List[str]:
    """Beam options that send the Beam components to Dataflow."""
    return ["--runner=DataflowRunner", f"--project={project}", f"--region={region}",
            f"--temp_location={temp_location}", f"--max_num_workers={max_num_workers}",
            "--experiments=use_runner_v2"]


def compile_pipeline(config: PipelineConfig, image: str, output_path: str) -> str:
    """Writes the pipeline spec JSON for ``config`` to ``output_path`` and returns the path."""
    runner = kubeflow_v2_dag_runner.KubeflowV2DagRunner(
        config=kubeflow_v2_dag_runner.KubeflowV2DagRunnerConfig(default_image=image),
        output_dir=os.path.dirname(os.path.abspath(output_path)),
        output_filename=os.path.basename(output_path))
    runner.run(create_pipeline(config), write_out=True)
    return output_path


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_pipeline_arguments(parser)
    g = parser.add_argument_group("Kubeflow / Vertex / Dataflow")
    g.add_argument("--project", default=None, help="GCP project (enables Dataflow Beam options)")
    g.add_argument("--region", default="us-central1", help="Dataflow region")
    g.add_argument("--image", default="gcr.io/tfx-oss-public/tfx:1.21.0",
                   help="container image with this package installed")
    g.add_argument("--max-num-workers", type=int, default=10, help="Dataflow worker cap")
    g.add_argument("--output", default="pipeline.json", help="where the pipeline spec goes")
    args = parser.parse_args(argv)
    config = cli.pipeline_config_from_args(args)
    if args.project:
        temp = os.path.join(config.output_root, "tmp")
        config = dataclasses.replace(config, beam_pipeline_args=tuple(dataflow_beam_args(
            args.project, args.region, temp, args.max_num_workers)) + tuple(args.beam_arg))
    print(compile_pipeline(config, args.image, args.output))


if __name__ == "__main__":
    sys.exit(main())
