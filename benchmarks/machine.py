"""What machine a benchmark ran on (recorded beside every result)."""

import os
import platform
from typing import Dict


def describe() -> Dict[str, object]:
    """CPU model, core count, platform, Python and TensorFlow versions, visible GPUs."""
    import tensorflow as tf

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "tensorflow": tf.__version__,
            "gpus": len(tf.config.list_physical_devices("GPU"))}
