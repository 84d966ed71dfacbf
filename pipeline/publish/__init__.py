"""Exports of validated tasks: SWE-bench rows, a swebench task repository, a Hugging Face folder.

``smelter export OUT`` turns ``OUT/tasks.jsonl`` into SWE-bench's field format (JSONL + Parquet)
and into a task repository in the layout of the ``swebench`` package 5.x; ``smelter publish OUT
--dest DIR`` assembles a Hugging Face dataset folder (card + ``tasks`` and ``shards`` configs)
and, with ``--push``, uploads it. Both commands are wired in ``smelter.pipeline.cmd_publish``.

Modules, each imported from directly (this package re-exports nothing):
- ``swebench``: SWE-bench's field format, the rows' Arrow schema, the JSONL/Parquet writers,
  the task repository and ``export_tasks`` (everything ``smelter export`` writes).
- ``harness``: what swebench's harness runs per task (pure): the image name it derives, the
  task's Dockerfile, ``eval.sh``, and the ``swebench eval`` command line.
- ``images``: Docker I/O: building the harness images, ``docker save`` / ``docker load``
  archives of them.
- ``hub``: the Hugging Face dataset folder and its upload.
- ``card``: the dataset card (README.md) of that folder.
"""
