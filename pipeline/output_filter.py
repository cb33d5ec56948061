"""Keeps a run's terminal output to what a person needs; everything goes to a log file.

A local TFX run writes hundreds of lines that say nothing to the user: the Trainer's module is
packaged as a wheel (``setup.py bdist_wheel`` in a subprocess, then ``pip install --target``, both
writing straight to the process's stdout/stderr), absl and TensorFlow log warnings, C++ logs and
Python ``DeprecationWarning``\\ s. ``filtered_output`` redirects the process's file descriptors 1
and 2 (so subprocesses and C++ code are caught too) through ``NoiseFilter``: every line goes to
the log file, and only the lines that are not noise reach the terminal. ``--verbose`` runs
without it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import threading
from typing import IO, Iterator, List, Optional, Tuple

# Lines that are noise, by their start.
NOISE_PATTERNS: Tuple[str, ...] = (
    # setup.py bdist_wheel of the Trainer's user module (tfx.components.util.udf_utils)
    r"running (bdist_wheel|build|build_py|install|install_lib|install_egg_info|egg_info|"
    r"install_scripts)\b",
    r"(creating|copying|Copying|adding|removing|installing to|writing|reading manifest) ",
    r"warning: (build_py|install_lib|install|bdist_wheel|egg_info): ",
    # pip install --target of that wheel, before the Trainer runs
    r"Looking in (indexes|links): ",
    r"Processing \S+\.whl$",
    r"Installing collected packages: ",
    r"Successfully installed ",
    r"Requirement already satisfied: ",
    r"\[notice\] ",
    r"WARNING: (Running pip as|Target directory|You are using pip)",
    # Python logging of libraries (absl, tensorflow, apache_beam, ...) below ERROR
    r"(DEBUG|INFO|WARNING):[\w.]+:",
    # C++ logs (TensorFlow, XLA, absl)
    r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWE] ",
    r"[IWEF]\d{4} [\d:.]+ +\d+ \S+:\d+\] ",
    r"WARNING: All log messages before absl::InitializeLog\(\) is called",
)
# Python warnings ("path.py:12: FutureWarning: ..."); the indented source lines after them
# are noise too.
WARNING_HEADER = re.compile(r"\S+\.py:\d+: \w*Warning: ")
# setuptools frames its deprecation notices in "!!" lines.
BANNER = "!!"
# Warnings of this project that matter to the user, although they come through absl.
ALWAYS_SHOWN: Tuple[str, ...] = (r".*ScaNN recall",)

_NOISE = re.compile("|".join(f"(?:{p})" for p in NOISE_PATTERNS))
_SHOWN = re.compile("|".join(f"(?:{p})" for p in ALWAYS_SHOWN))


class NoiseFilter:
    """Decides, line by line, what is noise (stateful: a warning's source line and a banner's
    body follow their header)."""

    def __init__(self):
        self._in_warning = False
        self._in_banner = False

    def is_noise(self, line: str) -> bool:
        text = line.rstrip("\r\n")
        if self._in_banner:
            if text.strip() == BANNER:
                self._in_banner = False
            return True
        if text.strip() == BANNER:
            self._in_banner = True
            return True
        if self._in_warning and text[:1].isspace():
            return True
        self._in_warning = False
        if not text.strip():
            return True
        if _SHOWN.match(text):
            return False
        if WARNING_HEADER.match(text):
            self._in_warning = True
            return True
        return bool(_NOISE.match(text))

    def shown(self, lines: List[str]) -> List[str]:
        """The lines of ``lines`` a person sees (for tests and logs read back)."""
        return [line for line in lines if not self.is_noise(line)]


def _pump(read_fd: int, terminal_fd: int, log: IO[bytes], lock: threading.Lock) -> None:
    """Copies lines from ``read_fd`` to the log, and those that are not noise to the terminal,
    until end of file."""
    noise = NoiseFilter()
    pending = b""
    with os.fdopen(read_fd, "rb", buffering=0) as source:
        while True:
            chunk = source.read(65536)
            if not chunk:
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for raw in lines:
                _route(raw + b"\n", noise, terminal_fd, log, lock)
        if pending:
            _route(pending + b"\n", noise, terminal_fd, log, lock)


def _route(raw: bytes, noise: NoiseFilter, terminal_fd: int, log: IO[bytes],
           lock: threading.Lock) -> None:
    with lock:
        log.write(raw)
        log.flush()
    if not noise.is_noise(raw.decode("utf-8", "replace")):
        try:
            os.write(terminal_fd, raw)
        except OSError:  # the terminal went away (a closed pipe): the log still has it
            pass


@contextlib.contextmanager
def filtered_output(log_path: str) -> Iterator[str]:
    """While open, everything the process (and its subprocesses) writes to stdout and stderr is
    appended to ``log_path``, and only the lines that are not noise reach the terminal (stdout
    lines to stdout, stderr lines to stderr). Yields ``log_path``."""
    os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    lock = threading.Lock()
    saved: List[Tuple[int, int]] = []
    threads: List[threading.Thread] = []
    with open(log_path, "ab") as log:
        try:
            for fd in (1, 2):
                terminal = os.dup(fd)
                read_fd, write_fd = os.pipe()
                os.dup2(write_fd, fd)
                os.close(write_fd)
                saved.append((fd, terminal))
                thread = threading.Thread(target=_pump, args=(read_fd, terminal, log, lock),
                                          name=f"t2diff-output-filter-{fd}", daemon=True)
                thread.start()
                threads.append(thread)
            yield log_path
        finally:
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except (OSError, ValueError):
                    pass
            for fd, terminal in saved:
                os.dup2(terminal, fd)  # closes the pipe's last write end: the pump sees EOF
            for thread in threads:
                thread.join(timeout=10)
            for (_, terminal), thread in zip(saved, threads):
                if not thread.is_alive():  # else a subprocess still holds the pipe: keep the fd
                    os.close(terminal)


def add_verbose_argument(parser: argparse.ArgumentParser) -> None:
    """``--verbose`` of the commands that run the pipeline."""
    from t2diff_tf.progress import verbose_requested

    parser.add_argument(
        "--verbose", action="store_true", default=verbose_requested(),
        help="print everything the run writes (wheel packaging of the Trainer module, absl/"
             "TensorFlow warnings, Keras's epoch lines); by default only progress lines and "
             "errors are printed and the rest goes to <output-root>/logs/ "
             "(T2DIFF_VERBOSE=1 turns it on too)")


def log_path_for(output_root: str, stamp: Optional[str] = None) -> str:
    """``<output_root>/logs/run-<YYYYmmdd-HHMMSS>.log``."""
    import datetime

    stamp = stamp or datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return os.path.join(output_root, "logs", f"run-{stamp}.log")
