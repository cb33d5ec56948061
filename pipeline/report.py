"""What a finished pipeline run produced, read back from its outputs (for people)."""

import glob
import json
import os
from typing import Optional

from pipeline.configs import PipelineConfig


def _latest(pattern: str) -> Optional[str]:
    paths = glob.glob(pattern)
    return max(paths, key=os.path.getmtime) if paths else None


def summarize_run(config: PipelineConfig) -> str:
    """A metrics table (with 95% CIs and the baseline's), the blessing, and push locations."""
    root = config.pipeline_root
    metrics_path = _latest(os.path.join(root, "RetrievalEvaluator", "evaluation", "*",
                                        "metrics.json"))
    lines = [f"Pipeline {config.pipeline_name}: {root}"]
    if not metrics_path:
        return "\n".join(lines + ["  no evaluation found"])
    with open(metrics_path) as f:
        report = json.load(f)
    model, baseline = report["model"], report.get("baseline")
    lines.append(f"Evaluation on {report['split']} ({model['num_examples']:,} examples, "
                 f"{model['num_items']:,} items, full corpus, history "
                 f"{'excluded' if model['exclude_history'] else 'included'}): {metrics_path}")
    header = f"  {'metric':<12}{config.model:>28}"
    if baseline:
        header += f"{config.baseline_model or 'baseline':>30}"
    lines.append(header)
    for name, value in model["metrics"].items():
        low, high = model["intervals"].get(name, (value, value))
        row = f"  {name:<12}{value:>10.4f} [{low:.4f}, {high:.4f}]"
        if baseline:
            b = baseline["metrics"][name]
            bl, bh = baseline["intervals"].get(name, (b, b))
            row += f"{b:>12.4f} [{bl:.4f}, {bh:.4f}]"
        lines.append(row)
    blessing = report["blessing"]
    lines.append(f"Blessed: {blessing['blessed']}"
                 + (f" ({'; '.join(blessing['reasons'])})" if blessing["reasons"] else ""))
    manifest = _latest(os.path.join(config.serving_destination, "**", "manifest.json"))
    if blessing["blessed"] and manifest:
        lines.append(f"Pushed to {config.serving_destination} (manifest {manifest})")
    else:
        lines.append("Nothing pushed.")
    return "\n".join(lines)
