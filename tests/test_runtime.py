"""Process tuning: importing the notebooks' front door applies it once, from the environment."""

import json
import os
import subprocess
import sys

CHECK = """
import json, torch
from threadpoolctl import threadpool_info
from conceptsim import pipeline, runtime
at_import = torch.get_num_threads()
torch.set_num_threads(3)
runtime.configure_process()  # already applied at import: must not touch torch again
blas = [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]
print(json.dumps({"at_import": at_import, "torch": torch.get_num_threads(), "blas": blas}))
"""


def run_check(threads: str) -> dict:
    env = {**os.environ, "CONCEPTSIM_TORCH_THREADS": threads}
    out = subprocess.run([sys.executable, "-c", CHECK], env=env, capture_output=True, text=True, timeout=300, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_importing_pipeline_tunes_the_process_once():
    got = run_check("2")
    assert got["at_import"] == 2
    assert got["torch"] == 3  # the second call left the later choice alone
    assert got["blas"] and all(n == 1 for n in got["blas"])


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
