"""Development tools, not needed to decompose a project: the fake OpenAI-compatible LLM
(`fakellm`, `paradecom fake-llm`), the DevAI evaluation (`evaluate`, `paradecom eval`) and the
helpers tests and benchmarks share for child processes (`testing`).

Everything a run needs lives beside this folder: the contract and what every part shares in
`paradecom/` (limits, errors, project, tree, security, logs), the leader in `leader/`, the runner
in `runner/`, and the client side (`api`, `cli`, `client`, `local_run`, `sequential`, `local_llm`,
the embedded model a run starts when no endpoint is set) in `paradecom/` too.
"""
