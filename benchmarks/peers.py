"""Peer environments: the other tools a benchmark measures graphopt against, each in its own venv.

A peer often cannot live in graphopt's environment: MXNet's bundled ONNX exporter
(``mxnet.onnx.export_model``) needs ``from onnx import mapping``, which current onnx removed, so it
runs only beside onnx 1.14.1. Each peer gets a venv outside git, under
``$GRAPHOPT_PEERS`` (default ``~/.cache/graphopt/peers``), built from pinned requirements and
rebuilt only when the pins change: a file ``graphopt-peer.json`` written inside the venv after a
successful install records them, so a half-finished install is never taken for a finished one.

The benchmark talks to a peer by running a Python script in the peer's interpreter
(:func:`run_in_peer`) and reading one JSON object from its last line of output. graphopt's own
venv is never touched (its numpy must stay 1.23.5).

Command line: ``python benchmarks/peers.py [setup|path] [NAME]`` builds (or shows) a peer venv.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

MARKER = "graphopt-peer.json"


@dataclass(frozen=True)
class Peer:
    """A venv to build: its folder name, pinned requirements, and a check that it works."""
    name: str
    requirements: tuple[str, ...]
    probe: str  # Python code that must run without error in a working venv
    why: str


# MXNet's bundled exporter as it last worked: mxnet 1.9.1 needs numpy < 1.24 (np.bool), the
# exporter needs onnx <= 1.14 (onnx.mapping), and onnx 1.14.1 needs protobuf >= 3.20.2. Not
# 3.20.x itself: it has no compiled wheel for Python 3.11, and with its pure-Python backend
# the exporter took 29 s of CPU for resnet50_v1, against 6 s with protobuf 4.25 (compiled upb,
# measured): that is the peer at its best.
# onnxruntime is not needed here: the benchmark runs every ONNX file in graphopt's own
# onnxruntime, so both exporters' models are timed by the same runtime in the same process.
MX2ONNX = Peer(
    name="mx2onnx-venv",
    requirements=("mxnet==1.9.1", "numpy==1.23.5", "onnx==1.14.1", "protobuf==4.25.8",
                  "requests==2.32.3", "graphviz==0.8.4"),
    probe=("import mxnet, onnx; from onnx import mapping; from mxnet.onnx import export_model; "
           "from google.protobuf.internal import api_implementation as api; "
           "assert api.Type() != 'python', 'pure-Python protobuf: exports would be ~5x slower'"),
    why="MXNet's bundled ONNX exporter (mxnet.onnx.export_model) runs only with onnx <= 1.14",
)

PEERS = {peer.name: peer for peer in (MX2ONNX,)}


def peers_root() -> Path:
    return Path(os.environ.get("GRAPHOPT_PEERS")
                or Path.home() / ".cache" / "graphopt" / "peers")


def venv_python(peer: Peer) -> Path:
    return peers_root() / peer.name / "bin" / "python"


def _base_python() -> str:
    """The interpreter to build venvs from: the one under graphopt's venv, not the venv itself
    (a venv made from inside a venv is fine, but this keeps the peer independent of ours)."""
    return getattr(sys, "_base_executable", None) or sys.executable


def _recorded(peer: Peer) -> dict | None:
    marker = peers_root() / peer.name / MARKER
    try:
        return json.loads(marker.read_text())
    except (OSError, ValueError):
        return None


def _probe(peer: Peer) -> bool:
    python = venv_python(peer)
    if not python.exists():
        return False
    result = subprocess.run([str(python), "-c", peer.probe], capture_output=True, text=True)
    return result.returncode == 0


def ensure_peer(peer: Peer, log=print) -> Path:
    """Build the venv of ``peer`` unless a working one with the same pins exists; return its python.

    Idempotent: a second call with unchanged pins only runs the probe (about a second).
    """
    folder = peers_root() / peer.name
    recorded = _recorded(peer)
    if recorded and recorded.get("requirements") == list(peer.requirements) and _probe(peer):
        return venv_python(peer)
    if folder.exists():
        log(f"[peers] rebuilding {folder} (pins changed or install incomplete)")
        shutil.rmtree(folder)
    started = time.perf_counter()
    log(f"[peers] creating {folder}: {peer.why}")
    folder.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([_base_python(), "-m", "venv", str(folder)], check=True)
    python = venv_python(peer)
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
           "--only-binary=:all:"]
    subprocess.run(pip + list(peer.requirements), check=True)
    if not _probe(peer):
        raise RuntimeError(f"peer venv {folder} was installed but its probe fails: {peer.probe}")
    freeze = subprocess.run([str(python), "-m", "pip", "freeze"], capture_output=True, text=True,
                            check=True).stdout.split()
    (folder / MARKER).write_text(json.dumps(
        {"requirements": list(peer.requirements), "installed": freeze,
         "python": _base_python()}, indent=2))
    log(f"[peers] {peer.name} ready in {time.perf_counter() - started:.0f} s")
    return python


def run_in_peer(peer: Peer, script: str | os.PathLike, args: list[str], *,
                timeout: float | None = None) -> dict:
    """Run ``script args...`` in the peer's interpreter; return the JSON object it prints last.

    The script's other output (warnings, logs) is kept in the error raised when it fails.
    """
    python = ensure_peer(peer)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    result = subprocess.run([str(python), str(script), *map(str, args)], capture_output=True,
                            text=True, timeout=timeout, env=env)
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    if result.returncode != 0 or not lines:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-20:])
        raise RuntimeError(f"{peer.name}: {Path(script).name} exited {result.returncode}:\n{tail}")
    return json.loads(lines[-1])


def installed_versions(peer: Peer) -> dict[str, str]:
    """``{package: version}`` of the peer venv, as recorded when it was built."""
    recorded = _recorded(peer) or {}
    return dict(line.split("==", 1) for line in recorded.get("installed", []) if "==" in line)


def main(argv: list[str] | None = None) -> int:
    import argparse
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["setup", "path"], nargs="?", default="setup")
    parser.add_argument("name", nargs="?", default=MX2ONNX.name, choices=sorted(PEERS))
    args = parser.parse_args(argv)
    peer = PEERS[args.name]
    print(ensure_peer(peer) if args.action == "setup" else venv_python(peer))
    return 0


if __name__ == "__main__":
    sys.exit(main())
