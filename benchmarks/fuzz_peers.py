"""The peers ``benchmarks/fuzz.py`` runs on the fuzzed graphs, each in one long-lived
subprocess (restarted when it aborts or hangs): onnxsim and onnxslim with their defaults.

The worker reads ``IN OUT`` paths, one pair a line, and answers ``ok`` once it wrote the
simplified model to ``OUT``, or ``refused: why`` when the tool raised (or, for onnxsim, said
its own check failed)."""

from __future__ import annotations

import select
import subprocess
import sys
from pathlib import Path

import onnx

#: peer name -> the code that simplifies ``m`` (an onnx.ModelProto) into ``out``
PEERS: dict[str, str] = {
    "onnxsim": (
        "import onnxsim\n"
        "def simplify(m):\n"
        "    out, ok = onnxsim.simplify(m)\n"
        "    if not ok:\n"
        "        raise RuntimeError('onnxsim: its check failed')\n"
        "    return out\n"
    ),
    "onnxslim": (
        "import logging, onnxslim\n"
        "logging.disable(logging.WARNING)\n"
        "def simplify(m):\n"
        "    return onnxslim.slim(m)\n"
    ),
}

LOOP = (
    "import sys, os, onnx\n"
    "proto = os.fdopen(os.dup(1), 'w')  # the answers; the tools' own prints (C++ too) go nowhere\n"
    "os.dup2(os.open(os.devnull, os.O_WRONLY), 1)\n"
    "for line in sys.stdin:\n"
    "    src, dst = line.rstrip('\\n').split('\\t')\n"
    "    try:\n"
    "        onnx.save(simplify(onnx.load(src)), dst)\n"
    "        print('ok', file=proto, flush=True)\n"
    "    except Exception as e:\n"
    "        msg = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]\n"
    "        print('refused: ' + type(e).__name__ + ': ' + msg, file=proto, flush=True)\n"
)


class PeerWorker:
    """One peer in a subprocess; :meth:`run` returns (model, "") or (None, why)."""

    def __init__(self, name: str, timeout: float = 120.0) -> None:
        self.name, self.timeout = name, timeout
        self.proc: subprocess.Popen | None = None

    def _start(self) -> subprocess.Popen:
        if self.proc is None or self.proc.poll() is not None:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", PEERS[self.name] + LOOP],
                text=True,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
        return self.proc

    def run(self, src: Path) -> tuple[onnx.ModelProto | None, str]:
        proc = self._start()
        dst = src.with_suffix(f".{self.name}.onnx")
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(f"{src}\t{dst}\n")
            proc.stdin.flush()
            ready, _, _ = select.select([proc.stdout], [], [], self.timeout)
            line = proc.stdout.readline().strip() if ready else ""
        except BrokenPipeError:
            line = ""
        if not line:
            proc.kill()
            self.proc = None
            return None, "aborted" if ready else f"aborted: no answer in {self.timeout:.0f} s"
        if line != "ok":
            return None, line.removeprefix("refused: ")
        try:
            return onnx.load(str(dst)), ""
        except Exception as e:  # noqa: BLE001 - a file the peer wrote but onnx cannot read
            return None, f"aborted: unreadable output ({type(e).__name__})"

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            self.proc.wait(timeout=30)
