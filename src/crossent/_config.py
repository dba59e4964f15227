"""``crossent.show_config()``: which implementation runs, with which threads and libraries."""

from __future__ import annotations

import platform
import sys
from typing import Any

from . import _kernels

__all__ = ["show_config"]


def show_config(print_out: bool = True) -> dict[str, Any]:
    r"""Report how crossent computes: compiled kernels or the reference, threads, versions.

    The compiled kernels run for NumPy arrays whose class axis can be read as contiguous
    rows (float32, float64, float16, bfloat16); everything else (other libraries, other
    dtypes, an install without a C compiler, or ``CROSSENT_DISABLE_KERNELS=1``) runs the
    array-API reference implementation, with the same results to float rounding.
    ``last_path`` says which one the most recent logits call took.

    .. math::

        \text{threads} = \texttt{CROSSENT\_NUM\_THREADS} \text{, else }
        \texttt{torch.get\_num\_threads()} \text{ if torch is imported, else the CPUs available}

    Parameters
    ----------
    print_out : bool, default True
        Print the report; the dict is returned either way.

    Returns
    -------
    dict
        ``{"crossent": version, "kernels": {...}, "python": ..., "platform": ...,
        "libraries": {name: version}}``.

    Examples
    --------
    >>> import crossent
    >>> cfg = crossent.show_config(print_out=False)
    >>> sorted(cfg["kernels"])
    ['built', 'enabled', 'float16', 'isa', 'last_path', 'num_threads']
    """
    from . import __version__

    libs = {}
    for name in ("numpy", "array_api_compat", "torch", "jax", "dask"):
        mod = sys.modules.get(name)
        if mod is not None:
            libs[name] = getattr(mod, "__version__", "?")
    cfg = {
        "crossent": __version__,
        "kernels": _kernels.kernel_info(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "libraries": libs,
    }
    if print_out:
        k = cfg["kernels"]
        print(f"crossent {__version__} on Python {cfg['python']}, {cfg['platform']}")
        state = "enabled" if k["enabled"] else ("built, disabled" if k["built"] else "not built")
        print(f"  compiled kernels: {state}; instruction set: {k['isa']}; "
              f"float16: {k['float16']}; threads: {k['num_threads']}")
        print(f"  last logits call ran: {k['last_path']}")
        print("  libraries: " + ", ".join(f"{n} {v}" for n, v in libs.items()))
    return cfg
