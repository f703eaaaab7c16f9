"""The user's side of ParaDecom: the `paradecom` command (cli.py, its flags and displays), the
Python API (api.py: `parallel_decompose_project`), a client of a remote leader (leader_client.py),
and the one-machine run that puts a leader and its runners in this process (local_run.py,
run_settings.py, sequential.py), on the embedded model when no endpoint is set (local_llm.py).

Beside it: the contract and the code every part shares at the top of `paradecom/` (project.py,
tree.py, subtasks.py, limits.py, errors.py, security.py, ...; the generated stubs in v1/), the
leader in `leader/` (paradecom.leader), the runner in `runner/` (paradecom.runner), and tools for
developing and measuring in `paradecom/devtools/` (fake-llm, eval).
"""
