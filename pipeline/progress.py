"""One progress line per pipeline component as a local run goes, read from what it produced.

LocalDagRunner runs the components one after the other in this process and offers no hooks, so
``reporting_launches`` wraps the launcher it uses for the duration of a run: each component's
launch is timed and, when it ends, its output artifacts are read back from ML Metadata (cached
executions included) and summed up in one line. A component still running after 10 s also gets
a start line. From ``make demo``::

    [1/9] PreprocessLogs running ...
    [1/9] PreprocessLogs done in 2m20s: 57,082 rows read, 57,082 kept, 0 filtered, ...
    [4/9] SchemaGen done in 0.6s: schema of 7 features
    [7/9] Trainer done in 14m09s: t2diff, 3 epochs, best val recall@20 0.5973 (epoch 3), ...
    [8/9] RetrievalEvaluator done in 25s: test recall@20 0.5973 [0.5727, 0.6220], ...; blessed: yes
    [9/9] RetrievalPusher done in 1m47s: pushed version 1796271367 to outputs/demo/serving

What a line says comes from the artifacts' types (``summarize_artifact``), so any component,
resolvers and later additions included, gets a line, unknown types named with their URI.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import json
import os
import sys
import threading
import time
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Sequence

from t2diff_tf.progress import format_duration


@dataclasses.dataclass(frozen=True)
class OutputArtifact:
    """One output of a finished execution, as ML Metadata records it.

    Attributes:
      key: the component's output name (e.g. ``"examples"``, ``"model"``).
      type_name: the artifact type (e.g. ``"Examples"``, ``"Model"``, ``"PushedModel"``).
      uri: where the artifact's files are.
      properties: its custom properties (ints, floats and strings).
    """

    key: str
    type_name: str
    uri: str
    properties: Mapping[str, object] = dataclasses.field(default_factory=dict)


# ------------------------------------------------------------------------------------------------
# What an artifact says, by type


def _read_json(path: str) -> Optional[dict]:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _examples(artifact: OutputArtifact) -> Optional[str]:
    stats = _read_json(os.path.join(artifact.uri, "stats.json"))
    if not stats:
        return None
    filtered = sum(int(v) for v in (stats.get("filtered") or {}).values())
    text = (f"{stats['interactions_read']:,} rows read, {stats['kept']:,} kept, "
            f"{filtered:,} filtered, {stats['rejected']:,} dead-lettered")
    if "users_kept" in stats and "items" in stats:
        text += f"; {stats['users_kept']:,} users, {stats['items']:,} items"
    examples = stats.get("examples") or {}
    if examples:
        text += "; examples " + " / ".join(f"{split} {n:,}" for split, n in examples.items())
    return text


def _splits(uri: str) -> List[str]:
    return sorted(os.path.basename(p)[len("Split-"):]
                  for p in glob.glob(os.path.join(uri, "Split-*")))


def _statistics(artifact: OutputArtifact) -> Optional[str]:
    splits = _splits(artifact.uri)
    return f"statistics of {len(splits)} splits ({', '.join(splits)})" if splits else None


def _schema(artifact: OutputArtifact) -> Optional[str]:
    path = os.path.join(artifact.uri, "schema.pbtxt")
    if not os.path.exists(path):
        return None
    from google.protobuf import text_format
    from tensorflow_metadata.proto.v0 import schema_pb2

    with open(path) as f:
        schema = text_format.Parse(f.read(), schema_pb2.Schema())
    return f"schema of {len(schema.feature)} features"


def _anomalies(artifact: OutputArtifact) -> Optional[str]:
    from tensorflow_metadata.proto.v0 import anomalies_pb2

    found: Dict[str, List[str]] = {}
    splits = _splits(artifact.uri)
    for split in splits:
        path = os.path.join(artifact.uri, f"Split-{split}", "SchemaDiff.pb")
        if not os.path.exists(path):
            continue
        anomalies = anomalies_pb2.Anomalies()
        with open(path, "rb") as f:
            anomalies.ParseFromString(f.read())
        names = sorted(anomalies.anomaly_info)
        if anomalies.HasField("dataset_anomaly_info"):
            names.append("(dataset)")
        if names:
            found[split] = names
    if not splits:
        return None
    if not found:
        return f"no anomalies in {len(splits)} splits"
    return "anomalies: " + "; ".join(f"{split}: {', '.join(names)}"
                                     for split, names in found.items())


def _model(artifact: OutputArtifact) -> Optional[str]:
    training = _read_json(os.path.join(artifact.uri, "Format-Serving", "assets.extra",
                                       "training.json"))
    if not training:
        return None
    history = training.get("history") or {}
    train = training.get("train") or {}
    metric = f"val_{train.get('selection_metric', 'recall@20')}"
    epochs = len(history.get("loss") or history.get(metric) or [])
    text = f"{training.get('model', 'model')}, {epochs} epoch{'s' if epochs != 1 else ''}"
    if training.get("layout") == "sequences":
        text += " on sequence chunks"
    elif training.get("layout") == "sequence_windows":
        text += " on every chunk position"
    values = history.get(metric) or []
    if values:
        best = max(range(len(values)), key=values.__getitem__)
        text += f", best {metric.replace('val_', 'val ', 1)} {values[best]:.4f} (epoch {best + 1})"
    seconds = history.get("train_seconds") or []
    if seconds:
        text += f", {format_duration(seconds[-1])} training"
    return text


def _evaluation(artifact: OutputArtifact) -> Optional[str]:
    report = _read_json(os.path.join(artifact.uri, "metrics.json"))
    if not report:
        return None
    blessing = report.get("blessing") or {}
    model = report.get("model") or {}
    metric = blessing.get("metric") or next(iter(model.get("metrics") or {}), None)
    if metric is None or metric not in (model.get("metrics") or {}):
        return None
    value = model["metrics"][metric]
    text = f"{report.get('split', '')} {metric} {value:.4f}".strip()
    interval = (model.get("intervals") or {}).get(metric)
    if interval:
        text += f" [{interval[0]:.4f}, {interval[1]:.4f}]"
    if blessing.get("baseline_value") is not None:
        text += f", baseline {blessing['baseline_value']:.4f}"
    serving = blessing.get("serving")
    if isinstance(serving, dict) and serving.get("serving") is not None:
        text += f", serving model {serving['serving']:.4f}"
    return text


def _blessing(artifact: OutputArtifact) -> Optional[str]:
    if "blessed" in artifact.properties:
        return f"blessed: {'yes' if int(artifact.properties['blessed']) else 'no'}"
    for marker, word in (("BLESSED", "yes"), ("NOT_BLESSED", "no")):
        if os.path.exists(os.path.join(artifact.uri, marker)):
            return f"blessed: {word}"
    return None


def _pushed(artifact: OutputArtifact) -> Optional[str]:
    p = artifact.properties
    if "pushed" not in p:
        return None
    if not int(p["pushed"]):
        return "not pushed"
    where = f" to {p['pushed_destination']}" if p.get("pushed_destination") else ""
    if int(p.get("already_pushed", 0)):
        return f"already pushed as version {p.get('pushed_version')}{where}"
    return f"pushed version {p.get('pushed_version')}{where}"


SUMMARIES: Dict[str, Callable[[OutputArtifact], Optional[str]]] = {
    "Examples": _examples,
    "ExampleStatistics": _statistics,
    "Schema": _schema,
    "ExampleAnomalies": _anomalies,
    "Model": _model,
    "ModelEvaluation": _evaluation,
    "ModelBlessing": _blessing,
    "PushedModel": _pushed,
}
# Artifacts that only point at logs: not worth a mention.
SILENT_TYPES = ("ModelRun",)


def summarize_artifact(artifact: OutputArtifact) -> Optional[str]:
    """A few words on one output artifact (``None``: nothing to say). Unknown types are named
    with their URI; a file that cannot be read says so rather than failing the run."""
    if artifact.type_name in SILENT_TYPES:
        return None
    summarize = SUMMARIES.get(artifact.type_name)
    try:
        text = summarize(artifact) if summarize else None
    except Exception as e:  # noqa: BLE001 -- a progress line must never stop a run
        return f"{artifact.key}: unreadable ({type(e).__name__}: {e})"
    return text if text is not None else f"{artifact.key} ({artifact.type_name}) at {artifact.uri}"


def summarize_outputs(outputs: Sequence[OutputArtifact]) -> str:
    """The key counts of one execution's outputs, ``"; "``-joined (``"no outputs"`` if none),
    in the order of ``SUMMARIES`` (evaluation before blessing), unknown types last."""
    order = {name: i for i, name in enumerate(SUMMARIES)}
    ordered = sorted(outputs, key=lambda a: (order.get(a.type_name, len(order)), a.key))
    parts = [text for text in map(summarize_artifact, ordered) if text]
    return "; ".join(parts) if parts else "no outputs"


# ------------------------------------------------------------------------------------------------
# Reading an execution back from ML Metadata


class MetadataReader:
    """Reads one execution's state and output artifacts from the run's ML Metadata store."""

    def __init__(self, connection_config):
        from ml_metadata.metadata_store import metadata_store

        self._store = metadata_store.MetadataStore(connection_config)

    @classmethod
    def sqlite(cls, path: str) -> "MetadataReader":
        from ml_metadata.proto import metadata_store_pb2

        connection = metadata_store_pb2.ConnectionConfig()
        connection.sqlite.filename_uri = path
        return cls(connection)

    def cached(self, execution_id: int) -> bool:
        from ml_metadata.proto import metadata_store_pb2

        executions = self._store.get_executions_by_id([execution_id])
        return bool(executions) and (executions[0].last_known_state
                                     == metadata_store_pb2.Execution.CACHED)

    def outputs(self, execution_id: int) -> List[OutputArtifact]:
        from ml_metadata.proto import metadata_store_pb2

        keys = {}
        for event in self._store.get_events_by_execution_ids([execution_id]):
            if event.type in (metadata_store_pb2.Event.OUTPUT,
                              metadata_store_pb2.Event.DECLARED_OUTPUT):
                keys[event.artifact_id] = event.path.steps[0].key if event.path.steps else ""
        artifacts = self._store.get_artifacts_by_id(list(keys)) if keys else []
        type_ids = sorted({a.type_id for a in artifacts})
        types = {t.id: t.name for t in self._store.get_artifact_types_by_id(type_ids)} \
            if type_ids else {}
        out = []
        for artifact in sorted(artifacts, key=lambda a: (keys[a.id], a.id)):
            properties = {}
            for name, value in artifact.custom_properties.items():
                kind = value.WhichOneof("value")
                if kind in ("int_value", "double_value", "string_value"):
                    properties[name] = getattr(value, kind)
            out.append(OutputArtifact(keys[artifact.id], types.get(artifact.type_id, "?"),
                                      artifact.uri, properties))
        return out


# ------------------------------------------------------------------------------------------------
# The lines


def _stdout_line(text: str) -> None:
    print(text, file=sys.stdout, flush=True)


class RunProgress:
    """Prints where a pipeline run is: one line when a component ends (time, key counts), and
    one when it starts if it is still running ``start_line_after_seconds`` later (so that the
    quick ones take one line and a long one never leaves the user guessing).

    Args:
      num_components: components in the pipeline (for ``[i/n]``).
      reader: reads executions back (``MetadataReader``); ``None``: no counts, only times.
      start_line_after_seconds: delay of the start line (0: printed at once).
      clock: seconds, monotonic (tests pass a fake).
      write: takes one line (default: printed to stdout and flushed).
    """

    def __init__(self, num_components: int, reader: Optional[MetadataReader] = None,
                 start_line_after_seconds: float = 10.0,
                 clock: Callable[[], float] = time.monotonic,
                 write: Callable[[str], None] = _stdout_line):
        self.num_components = num_components
        self.reader = reader
        self.start_line_after_seconds = start_line_after_seconds
        self._clock = clock
        self._write = write
        self._started: Dict[str, float] = {}
        self._index = 0
        self._position: Dict[str, int] = {}
        self._pending: Optional[threading.Timer] = None
        self._lock = threading.Lock()
        self.lines: List[str] = []

    def _emit(self, text: str) -> None:
        with self._lock:
            self.lines.append(text)
            self._write(text)

    def _cancel_start_line(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None

    def _label(self, node_id: str) -> str:
        return f"[{self._position[node_id]}/{self.num_components}] {node_id}"

    def started(self, node_id: str) -> None:
        self._index += 1
        self._position[node_id] = self._index
        self._started[node_id] = self._clock()
        text = f"{self._label(node_id)} running ..."
        self._cancel_start_line()
        if self.start_line_after_seconds <= 0:
            self._emit(text)
            return
        self._pending = threading.Timer(self.start_line_after_seconds, self._emit, (text,))
        self._pending.daemon = True
        self._pending.start()

    def finished(self, node_id: str, execution_id: Optional[int]) -> None:
        self._cancel_start_line()
        elapsed = format_duration(self._clock() - self._started[node_id])
        summary, cached = "", False
        if self.reader is not None and execution_id is not None:
            try:
                cached = self.reader.cached(execution_id)
                summary = summarize_outputs(self.reader.outputs(execution_id))
            except Exception as e:  # noqa: BLE001 -- a progress line must never stop a run
                summary = f"(outputs unreadable: {type(e).__name__}: {e})"
        elif execution_id is None:
            summary = "skipped (inputs not available)"
        verb = f"cached ({elapsed})" if cached else f"done in {elapsed}"
        self._emit(f"{self._label(node_id)} {verb}" + (f": {summary}" if summary else ""))

    def failed(self, node_id: str, error: BaseException) -> None:
        self._cancel_start_line()
        elapsed = format_duration(self._clock() - self._started[node_id])
        self._emit(f"{self._label(node_id)} FAILED after {elapsed}: {type(error).__name__}")


def _execution_id(result) -> Optional[int]:
    """The execution id from what ``Launcher.launch`` returns (``ExecutionInfo`` for components,
    an MLMD ``Execution`` for system nodes such as resolvers; ``None`` when nothing ran)."""
    if result is None:
        return None
    if hasattr(result, "execution_id"):
        return result.execution_id
    return getattr(result, "id", None)


@contextlib.contextmanager
def reporting_launches(progress: RunProgress) -> Iterator[None]:
    """Makes LocalDagRunner report every component's start and end to ``progress`` while the
    context is open (it launches each through ``launcher.Launcher``; this swaps in a subclass
    for that module's lookups only, and puts the original back on exit)."""
    from tfx.orchestration.local import local_dag_runner
    from tfx.orchestration.portable import launcher as portable_launcher

    class ReportingLauncher(portable_launcher.Launcher):
        def launch(self):
            node_id = self._pipeline_node.node_info.id
            progress.started(node_id)
            try:
                result = super().launch()
            except BaseException as e:
                progress.failed(node_id, e)
                raise
            progress.finished(node_id, _execution_id(result))
            return result

    class LauncherModule:
        """Stands for ``tfx.orchestration.portable.launcher`` inside ``local_dag_runner``."""

        def __getattr__(self, name):
            return ReportingLauncher if name == "Launcher" else getattr(portable_launcher, name)

    original = local_dag_runner.launcher
    local_dag_runner.launcher = LauncherModule()
    try:
        yield
    finally:
        local_dag_runner.launcher = original
