"""Benchmark harness for crossent: ``python -m benchmarks`` (from the repository root).

Compares crossent's softmax cross-entropy (forward, and loss + gradient) with NumPy, SciPy,
PyTorch (eager and ``torch.compile``) and JAX/optax, in the same process with the same
thread count, next to the memory-bandwidth limit measured in the same run (a single read
pass over the logits; read + write for loss + gradient).

``python -m benchmarks --help`` lists the options; ``--quick`` is a smoke run (about a
minute). Results go to ``benchmarks/results/`` (CSV per run, ``latest.md``); quick runs go
to ``benchmarks/results/quick/``, which git ignores.

Other scripts in this folder are separate benchmarks with their own entry points
(``python -m benchmarks.<name>``); they do not use these modules.

Timings never belong in unit tests: this package is run by hand or by a scheduled job.

Modules: ``_cli`` (options, plan, child processes, report), ``_worker`` (one child: data,
implementations, timing), ``_impls`` (the implementations), ``_measure`` (timing, memory,
bandwidth limit), ``_machine`` (CPU, versions, git commit, load), ``_report`` (CSV and
markdown).
"""

__all__: list[str] = []
