"""Process set-up: importing the library changes nothing; ``runtime.setup()`` applies the settings once."""

import json
import os
import subprocess
import sys

CHECK = """
import json, torch
from threadpoolctl import threadpool_info
from conceptsim import pipeline, runtime
at_import = torch.get_num_threads()
runtime.setup()
at_setup = torch.get_num_threads()
torch.set_num_threads(3)
runtime.setup()  # already applied: must not touch torch again
blas = [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]
print(json.dumps({"at_import": at_import, "at_setup": at_setup, "torch": torch.get_num_threads(), "blas": blas}))
"""

# What a process looks like from inside: its environment, torch's and BLAS's threads, whether a large
# allocation is served by a fresh mmap (glibc's default; keep_freed_memory turns that off), the network.
STATE = """
import ctypes, ctypes.util, json, os, socket, sys
import pandas, sklearn, torch, zarr  # third-party packages set what they set on import (sklearn: KMP_INIT_AT_FORK)
from threadpoolctl import threadpool_info

libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]

def state():
    mapped = libc.mallinfo2().hblks
    block = libc.malloc(64 << 20)
    mmapped = libc.mallinfo2().hblks - mapped
    libc.free(block)
    blas = sorted({p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"})  # loaded libraries may add more
    return {"environ": dict(os.environ), "torch_threads": torch.get_num_threads(), "blas_threads": blas,
            "large_blocks_mmapped": mmapped,
            "cache_folder": os.path.isdir(os.environ["CONCEPTSIM_CACHE"]),
            "connect": getattr(socket.socket.connect, "__module__", "socket")}

before = state()
import conceptsim, conceptsim.api, conceptsim.pipeline, conceptsim.cli, conceptsim.run.orchestrate
from conceptsim import open_results, linear_cka  # the lazily loaded front door
after_import = state()
conceptsim.runtime.setup()
after_setup = state()
print(json.dumps({"before": before, "after_import": after_import, "after_setup": after_setup}))
"""

SET_UP_VARIABLES = ("YOLO_CONFIG_DIR", "MPLCONFIGDIR", "JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR",
                    "IPYTHONDIR", "TORCH_HOME", "YOLO_OFFLINE", "YOLO_AUTOINSTALL", "YOLO_VERBOSE")


def test_setup_tunes_the_process_once():
    # every thread variable set here: earlier tests of the session may have left their own in os.environ
    env = {**os.environ, "CONCEPTSIM_TORCH_THREADS": "1", "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2",
           "OPENBLAS_NUM_THREADS": "2"}
    out = subprocess.run([sys.executable, "-c", CHECK], env=env, capture_output=True, text=True, timeout=300, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert (got["at_import"], got["at_setup"]) == (2, 1)  # importing left torch alone; setup() applied the setting
    assert got["torch"] == 3  # the second call left the later choice alone
    assert got["blas"] and all(n == 1 for n in got["blas"])


def test_importing_the_library_changes_nothing_in_the_process(tmp_path):
    """The environment, thread counts, the allocator and the network stay as the caller had them; setup()
    changes each of them (the probe can see a change)."""
    env = {k: v for k, v in os.environ.items() if k not in SET_UP_VARIABLES}
    env.update(CONCEPTSIM_CACHE=str(tmp_path / "cache"), CONCEPTSIM_TORCH_THREADS="1", CONCEPTSIM_FORBID_NETWORK="1",
               CONCEPTSIM_KEEP_FREED_MEMORY="1", OMP_NUM_THREADS="2", MKL_NUM_THREADS="2", OPENBLAS_NUM_THREADS="2")
    out = subprocess.run([sys.executable, "-c", STATE], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    before, after, setup = got["before"], got["after_import"], got["after_setup"]
    assert {k: v for k, v in after["environ"].items() if before["environ"].get(k) != v} == {}
    assert set(after["environ"]) == set(before["environ"])
    assert after == before
    assert not before["cache_folder"]  # and after == before: no folder created
    # the positive control: setup() changes what the probe reads
    assert {k: setup["environ"][k] for k in ("MPLCONFIGDIR", "YOLO_OFFLINE")} == {
        "MPLCONFIGDIR": str(tmp_path / "cache" / "matplotlib"), "YOLO_OFFLINE": "1"}
    assert setup["cache_folder"] and (tmp_path / "cache" / "matplotlib").is_dir()
    assert before["torch_threads"] == 2 and setup["torch_threads"] == 1
    assert before["blas_threads"] and before["blas_threads"] == [2] and setup["blas_threads"] == [1]
    assert before["large_blocks_mmapped"] == 1 and setup["large_blocks_mmapped"] == 0
    assert before["connect"] == "socket" and setup["connect"] == "conceptsim.netguard"


def test_library_notes_print_as_plain_output_not_stderr(capsys):
    """In a notebook a concept exclusion is a line of the page, not a stderr stream (the browser test
    rejects stderr in outputs)."""
    import logging

    from conceptsim import runtime

    logger = logging.getLogger("conceptsim")
    before = list(logger.handlers)
    logger.handlers[:] = [h for h in before if not getattr(h, "conceptsim_notes", False)]  # one bound to this stdout
    try:
        runtime.notes_to_stdout()
        runtime.notes_to_stdout()  # idempotent: one handler
        assert sum(getattr(h, "conceptsim_notes", False) for h in logger.handlers) == 1
        logging.getLogger("conceptsim.data.coco").warning("concept %r excluded", "green")
        out, err = capsys.readouterr()
        assert "note: concept 'green' excluded" in out and "excluded" not in err
    finally:
        logger.handlers[:] = before


BUILD_UNDER_CLI_SIGNALS = """
import signal, sys
from pathlib import Path
from conceptsim.cli import _interrupt
from conceptsim.data.shapes import build_shapes

signal.signal(signal.SIGTERM, _interrupt)  # what `conceptsim run` installs before it builds a dataset
for i in range(12):  # the SIGTERM meets a worker at a random point: it printed in about 1 build of 3
    build_shapes(Path(sys.argv[1]) / str(i), n=6, size=48, seed=0, workers=2)
print("built")
"""


def test_dataset_build_workers_end_without_tracebacks(tmp_path):
    """A pool's workers inherit the command line's SIGTERM handler; the pool ends them with SIGTERM. A build
    under that handler must end cleanly, with no worker's ``KeyboardInterrupt`` traceback on stderr."""
    out = subprocess.run([sys.executable, "-c", BUILD_UNDER_CLI_SIGNALS, str(tmp_path / "shapes")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("built")
    assert "Traceback" not in out.stderr and "KeyboardInterrupt" not in out.stderr, out.stderr[-3000:]
    assert (tmp_path / "shapes" / "11" / "annotations.json").is_file()
