"""The CPU facts a benchmark prints beside its ratios: kernel speed depends on them (VNNI and AMX
make int8 fast; a CPU without VNNI needs 7-bit weights), and machines differ between sessions."""

from __future__ import annotations

from pathlib import Path

FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16")


def _cpuinfo_field(name: str) -> str | None:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux
        return None
    return next((line.split(":", 1)[1].strip() for line in text.splitlines()
                 if line.startswith(name)), None)


def cpu_flags() -> dict[str, bool]:
    """Which of :data:`FLAGS` this CPU has (empty when /proc/cpuinfo cannot be read)."""
    flags = _cpuinfo_field("flags")
    if flags is None:
        return {}
    present = set(flags.split())
    return {flag: flag in present for flag in FLAGS}


def cpu_model() -> str:
    return _cpuinfo_field("model name") or "unknown"
