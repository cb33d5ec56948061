"""t2diff: T2Diff (diffusion-based cross-interaction two-tower retrieval) on TensorFlow/TFX.

Dependencies are pinned in requirements.lock and installed with ``pip install --no-deps`` (see
README.md: the verified stack overrides some of TFX's own pins). The direct ones are tensorflow
2.20.0, tf-keras 2.20.1, tensorflow-recommenders 0.7.7, scann 1.4.2, apache-beam 2.77.0,
tfx 1.21.0 and tensorflow-datasets 4.9.10. They are deliberately *not* ``install_requires``: the
console script's loader (pkg_resources) would then resolve TFX's own pins (e.g. pyarrow<19) and
refuse to start on the verified stack.
"""

from setuptools import find_packages, setup

setup(
    name="t2diff",
    version="0.1.0",
    description="T2Diff two-tower retrieval with diffusion-based cross interaction, as a TFX pipeline",
    python_requires=">=3.11,<3.12",
    packages=find_packages(include=["t2diff_tf", "t2diff_tf.*", "components", "components.*",
                                    "pipeline", "pipeline.*"]),
    package_data={"": ["*.pbtxt"]},
    entry_points={"console_scripts": ["t2diff=pipeline.cli:main"]},
)
