"""The bundled demo source: a deterministic upstream repository of a small Python package.

``build.create_demo_repo(path)`` writes ``smelter-demo/calc``, a pure-Python calculator library
(``src/`` layout, pytest only, tests run in well under 2 s) with 15 merged pull requests in both
GitHub styles, built to walk every branch of the pipeline. ``prs.DEMO_PRS`` says, for each PR,
what it covers and its expected fate at each stage; the stage tests assert against it.

Modules, each imported from directly (this package re-exports nothing):
- ``prs``: each demo pull request and its expected fate (``DemoPR``, ``DEMO_PRS``).
- ``files``: the repository's file contents at its first commit, and a noisy PR description.
- ``build``: creating the git repository (``create_demo_repo``, ``DemoRepo``, ``write_tree``).
"""
