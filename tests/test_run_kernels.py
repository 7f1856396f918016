"""Warm kernels (conceptsim.run.kernels): one kernel serves several runs, and each run starts as in a fresh one."""

from __future__ import annotations

import os

import nbformat
import papermill
import pytest
from traitlets.config import Config

from conceptsim.run import kernels

# What a run can leave behind in a kernel, and what it sees of the run before it.
PROBE = """
import os, warnings, torch
print("pid", os.getpid())
print("leftover", "left_behind" in globals())
print("draw", round(torch.rand(1).item(), 6))
print("grad", torch.is_grad_enabled())
print("cwd", os.getcwd())
warnings.warn("shown in every run")
left_behind = 1
torch.set_grad_enabled(False)
os.chdir("/")
"""


def notebook(path, *cells):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "language": "python", "display_name": "Python 3"}
    nb.metadata["language_info"] = {"name": "python"}
    nb.cells = [nbformat.v4.new_code_cell("x = 0", metadata={"tags": ["parameters"]})]
    nb.cells += [nbformat.v4.new_code_cell(c) for c in cells]
    nbformat.write(nb, path)
    return path


def execute(kernel, path, out, **parameters):
    papermill.execute_notebook(str(path), str(out), parameters=parameters, kernel_name="python3", progress_bar=False,
                               engine_name=kernels.ENGINE, warm_kernel=kernel, cwd=str(path.parent))
    nb = nbformat.read(out, as_version=4)
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    facts = dict(line.split(" ", 1) for line in text.splitlines() if line.split(" ", 1)[0] in
                 ("pid", "leftover", "draw", "grad", "cwd"))
    counts = [c.execution_count for c in nb.cells if c.cell_type == "code"]
    return facts, text, counts


@pytest.fixture
def kernel(tmp_path):
    k = kernels.WarmKernel(cwd=tmp_path, config=Config({"KernelManager": {"transport_encryption": "auto"}}))
    yield k
    k.shutdown()


def test_a_kernel_is_reused_and_each_run_starts_as_in_a_fresh_kernel(tmp_path, kernel):
    nb = notebook(tmp_path / "probe.ipynb", PROBE)
    first, text1, counts1 = execute(kernel, nb, tmp_path / "1.ipynb")
    second, text2, counts2 = execute(kernel, nb, tmp_path / "2.ipynb")
    assert first["pid"] == second["pid"]  # the same kernel
    assert second["leftover"] == "False"  # the namespace was emptied
    assert first["draw"] == second["draw"]  # torch's generator back at its start state
    assert second["grad"] == "True" and second["cwd"] == str(tmp_path)
    assert "shown in every run" in text1 and "shown in every run" in text2  # warnings are not "already shown"
    assert counts1 == counts2 == list(range(1, len(counts1) + 1))  # execution counts start at 1 every run
    assert kernel.runs == 2


def test_a_failed_run_leaves_the_kernel_usable_and_clean(tmp_path, kernel):
    bad = notebook(tmp_path / "bad.ipynb", "left_behind = 1\nraise ValueError('this run fails')")
    with pytest.raises(papermill.PapermillExecutionError, match="this run fails"):
        execute(kernel, bad, tmp_path / "bad-out.ipynb")
    pid = kernel.manager.provisioner.pid
    facts, _, _ = execute(kernel, notebook(tmp_path / "probe.ipynb", PROBE), tmp_path / "2.ipynb")
    assert facts["pid"] == str(pid) and facts["leftover"] == "False"


def test_a_dead_kernel_is_replaced(tmp_path, kernel):
    dies = notebook(tmp_path / "dies.ipynb", "import os\nos._exit(3)")
    with pytest.raises(Exception):  # nbclient's DeadKernelError, raised through papermill
        execute(kernel, dies, tmp_path / "dies-out.ipynb")
    facts, _, _ = execute(kernel, notebook(tmp_path / "probe.ipynb", PROBE), tmp_path / "2.ipynb")
    assert facts["pid"] and facts["leftover"] == "False"


def test_a_changed_environment_gets_a_new_kernel(tmp_path, kernel, monkeypatch):
    nb = notebook(tmp_path / "probe.ipynb", PROBE)
    first, _, _ = execute(kernel, nb, tmp_path / "1.ipynb")
    monkeypatch.setenv("CONCEPTSIM_TORCH_THREADS", "1" if os.environ.get("CONCEPTSIM_TORCH_THREADS") != "1" else "2")
    second, _, _ = execute(kernel, nb, tmp_path / "2.ipynb")
    assert first["pid"] != second["pid"]


def test_the_engine_needs_a_warm_kernel(tmp_path):
    nb = notebook(tmp_path / "probe.ipynb", "print(1)")
    with pytest.raises(TypeError, match="warm_kernel"):
        papermill.execute_notebook(str(nb), str(tmp_path / "out.ipynb"), kernel_name="python3", progress_bar=False,
                                   engine_name=kernels.ENGINE)


def test_a_forked_child_does_not_use_its_parents_kernel(tmp_path, kernel):
    kernel.ensure()
    parent_pid = kernel.manager.provisioner.pid
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # the child: its kernel must be its own, and its shutdown must leave the parent's alone
        try:
            kernel.shutdown()
            os.write(write, b"ok" if kernel.manager is None else b"no")
        finally:
            os._exit(0)
    os.waitpid(child, 0)
    assert os.read(read, 2) == b"ok"
    assert kernel.manager is not None and kernel.manager.provisioner.pid == parent_pid
    from jupyter_core.utils import run_sync

    assert run_sync(kernel.manager.is_alive)()
