"""``crossent eval``: score prediction files of any size (the command-line evaluator).

The command is a thin layer over :mod:`crossent.metrics`:

- :mod:`.readers` streams predictions and labels out of ``.npy``, ``.npz``, CSV/TSV,
  Parquet and Arrow/Feather files (and directories of part files) in bounded chunks;
- :mod:`.job` ties a predictions file, a labels file and the evaluator's options into a
  picklable job that scores any row range (one partition), with a progress bar;
- :mod:`.dask` runs the partitions of a job on a Dask distributed cluster and merges the
  partial evaluators;
- :mod:`.report` formats results (a table, JSON) and writes files atomically;
- :mod:`.plot` draws the reliability diagram, loss histogram and per-class losses;
- :mod:`.cli` is the ``crossent eval`` argument parser.

Only NumPy is needed for ``.npy``, ``.npz`` and CSV; Parquet/Arrow need ``pyarrow``
(``pip install 'crossent[eval]'``), pictures ``matplotlib`` (``crossent[plot]``), clusters
``dask[distributed]`` (``crossent[dask]``), and the progress bar uses ``tqdm`` when it is
installed (``crossent[progress]``).
"""
