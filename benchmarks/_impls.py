"""The implementations compared, per mode.

Mode ``fwd``: per-example loss, ``reduction="none"``, integer labels.
Mode ``grad``: mean loss and its gradient with respect to the logits.

Each implementation is a function ``setup(x, y, threads) -> (fn, setup_seconds, note)``
where ``fn()`` runs one complete call (synchronised: JAX results are blocked on) and returns
what the call returns (fwd: the losses; grad: ``(mean loss, gradient)``). ``x`` is a C-order
``(N, C)`` NumPy array, float32 or ``ml_dtypes.bfloat16``; ``y`` int64 labels. Peers get
their own arrays: PyTorch tensors share ``x``'s memory (``torch.from_numpy``; bfloat16
through an int16 view), JAX gets a device copy; NumPy and SciPy have no bfloat16
arithmetic, so they upcast to float32 inside the call (counted).

Frameworks are imported only when one of their implementations is selected.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np

IMPL_NAMES = ("crossent", "crossent.out", "crossent.torch", "numpy", "scipy", "torch", "torch.compile",
              "jax")
MODES = ("fwd", "grad")

LABELS = {
    ("fwd", "crossent"): "crossent.softmax_cross_entropy",
    ("fwd", "numpy"): "NumPy max, exp, sum, log, gather",
    ("fwd", "scipy"): "scipy.special.logsumexp(z, 1) - z[i, y]",
    ("fwd", "torch"): "torch F.cross_entropy (eager)",
    ("fwd", "torch.compile"): "torch.compile(F.cross_entropy)",
    ("fwd", "jax"): "jax.jit(optax.softmax_cross_entropy_with_integer_labels)",
    ("grad", "crossent"): "crossent.softmax_cross_entropy_value_and_grad",
    ("grad", "crossent.out"): "the same, gradient into a reused buffer (out=)",
    ("fwd", "crossent.torch"): "crossent.torch.cross_entropy (drop-in for F.cross_entropy)",
    ("grad", "crossent.torch"): "crossent.torch.cross_entropy + autograd.grad",
    ("grad", "numpy"): "NumPy softmax - onehot (by hand)",
    ("grad", "torch"): "torch F.cross_entropy + autograd.grad (eager)",
    ("grad", "torch.compile"): "torch.compile(F.cross_entropy) + autograd.grad",
    ("grad", "jax"): "jax.jit(jax.value_and_grad(optax mean))",
}

_IS_TORCH_SET_UP = False


def available(mode: str) -> list[str]:
    return [n for n in IMPL_NAMES if (mode, n) in LABELS]


def _upcast(x: np.ndarray) -> np.ndarray:
    return x if x.dtype in (np.float32, np.float64) else x.astype(np.float32)


# --------------------------------------------------------------------------- crossent

def crossent_setup(mode: str, x: np.ndarray, y: np.ndarray, threads: int):
    import crossent

    crossent.set_num_threads(threads)
    if mode == "fwd":
        def fn():
            return crossent.softmax_cross_entropy(x, y)
    else:
        def fn():
            return crossent.softmax_cross_entropy_value_and_grad(x, y, reduction="mean")
    t0 = time.perf_counter()
    fn()
    setup = time.perf_counter() - t0
    path = crossent.show_config(print_out=False)["kernels"]["last_path"]
    return fn, setup, f"ran {path}"


def crossent_out_setup(mode: str, x: np.ndarray, y: np.ndarray, threads: int):
    """The gradient written into one buffer reused call after call (``out=``), as a training
    loop does: no fresh pages to fault in, so it is compared with the read + write pass
    (the fresh-output call is bounded by the alloc + write pass instead)."""
    import crossent

    crossent.set_num_threads(threads)
    buf = np.empty_like(x)
    buf.fill(0)  # resident, as after a first step

    def fn():
        return crossent.softmax_cross_entropy_value_and_grad(x, y, reduction="mean", out=buf)
    t0 = time.perf_counter()
    fn()
    setup = time.perf_counter() - t0
    path = crossent.show_config(print_out=False)["kernels"]["last_path"]
    return fn, setup, f"ran {path}, out= buffer"


# --------------------------------------------------------------------------- numpy / scipy

def numpy_setup(mode: str, x: np.ndarray, y: np.ndarray, threads: int):
    rows = np.arange(x.shape[0])
    n = x.shape[0]

    if mode == "fwd":
        def fn():
            z = _upcast(x)
            m = z.max(axis=1, keepdims=True)
            t = z - m                      # the one N x C temporary
            np.exp(t, out=t)
            s = t.sum(axis=1)
            return np.log(s) + m[:, 0] - z[rows, y]
    else:
        def fn():
            z = _upcast(x)
            m = z.max(axis=1, keepdims=True)
            t = z - m                      # becomes the gradient
            np.exp(t, out=t)
            s = t.sum(axis=1)
            loss = np.mean(np.log(s) + m[:, 0] - z[rows, y])
            t *= (1.0 / (s * n))[:, None].astype(t.dtype)
            t[rows, y] -= t.dtype.type(1.0 / n)
            return loss, t
    note = "" if x.dtype in (np.float32, np.float64) else "upcasts to float32 in the call"
    return fn, None, note


def scipy_setup(mode: str, x: np.ndarray, y: np.ndarray, threads: int):
    from scipy.special import logsumexp

    rows = np.arange(x.shape[0])

    def fn():
        z = _upcast(x)
        return logsumexp(z, axis=1) - z[rows, y]

    note = "" if x.dtype in (np.float32, np.float64) else "upcasts to float32 in the call"
    return fn, None, note


# --------------------------------------------------------------------------- torch

def _torch_tensor(x: np.ndarray):
    import torch

    if x.dtype == np.float32 or x.dtype == np.float64:
        return torch.from_numpy(x)
    if x.dtype.name == "bfloat16":
        return torch.from_numpy(x.view(np.int16)).view(torch.bfloat16)
    raise TypeError(f"no torch tensor for dtype {x.dtype}")


def _ce_none(a, b):
    import torch.nn.functional as F

    return F.cross_entropy(a, b, reduction="none")


def _ce_mean(a, b):
    import torch.nn.functional as F

    return F.cross_entropy(a, b)


def _torch_common():
    global _IS_TORCH_SET_UP
    import torch

    if not _IS_TORCH_SET_UP:
        # several shapes in one process (--isolate none): allow one compiled graph each
        for name in ("recompile_limit", "cache_size_limit"):
            if hasattr(torch._dynamo.config, name):
                setattr(torch._dynamo.config, name, 64)
        _IS_TORCH_SET_UP = True
    return torch


def _torch_fns(mode: str, x: np.ndarray, y: np.ndarray, ce_none, ce_mean):
    torch = _torch_common()
    yt = torch.from_numpy(y)
    if mode == "fwd":
        xt = _torch_tensor(x)

        def fn():
            return ce_none(xt, yt)
    else:
        xt = _torch_tensor(x).requires_grad_(True)

        def fn():
            loss = ce_mean(xt, yt)
            (g,) = torch.autograd.grad(loss, xt)
            return loss.detach(), g
    return fn


def torch_setup(mode: str, x: np.ndarray, y: np.ndarray, threads: int):
    fn = _torch_fns(mode, x, y, _ce_none, _ce_mean)
    return fn, None, ""


def crossent_torch_setup(mode: str, x: np.ndarray, y: np.ndarray, threads: int):
    """crossent's drop-in for ``F.cross_entropy`` on tensors, timed as PyTorch eager is."""
    _torch_common()
    import crossent
    from crossent.torch import cross_entropy

    crossent.set_num_threads(threads)
    fn = _torch_fns(mode, x, y, lambda a, b: cross_entropy(a, b, reduction="none"),
                    lambda a, b: cross_entropy(a, b))
    return fn, None, ""


def torch_compile_setup(mode: str, x: np.ndarray, y: np.ndarray, threads: int):
    torch = _torch_common()
    ce_none = torch.compile(_ce_none, dynamic=False)
    ce_mean = torch.compile(_ce_mean, dynamic=False)
    fn = _torch_fns(mode, x, y, ce_none, ce_mean)
    t0 = time.perf_counter()
    fn()  # compile (fwd; fwd + bwd for grad); excluded from the timings
    setup = time.perf_counter() - t0
    return fn, setup, f"compile {setup:.1f} s (excluded)"


# --------------------------------------------------------------------------- jax / optax

def _optax_mean(a, b):
    import optax

    return optax.softmax_cross_entropy_with_integer_labels(a, b).mean()


def jax_setup(mode: str, x: np.ndarray, y: np.ndarray, threads: int):
    import jax
    import optax

    xj = jax.device_put(x)
    yj = jax.device_put(y.astype(np.int32))
    if mode == "fwd":
        f = jax.jit(optax.softmax_cross_entropy_with_integer_labels)

        def fn():
            return f(xj, yj).block_until_ready()
    else:
        vg = jax.jit(jax.value_and_grad(_optax_mean))

        def fn():
            loss, g = vg(xj, yj)
            g.block_until_ready()
            return loss.block_until_ready(), g
    t0 = time.perf_counter()
    fn()  # trace + compile; excluded from the timings
    setup = time.perf_counter() - t0
    return fn, setup, f"jit {setup:.1f} s (excluded)"


SETUPS: dict[str, Callable[..., Any]] = {
    "crossent": crossent_setup,
    "crossent.out": crossent_out_setup,
    "crossent.torch": crossent_torch_setup,
    "numpy": numpy_setup,
    "scipy": scipy_setup,
    "torch": torch_setup,
    "torch.compile": torch_compile_setup,
    "jax": jax_setup,
}


# --------------------------------------------------------------------------- accuracy

def to_f64(a: Any) -> np.ndarray:
    """Any result array (NumPy, torch, JAX; any float dtype) as a float64 NumPy array."""
    mod = type(a).__module__
    if mod.startswith("torch"):
        import torch

        return a.detach().to(torch.float64).cpu().numpy()
    return np.asarray(a).astype(np.float64)


def reference_rows(x: np.ndarray, y: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """float64 losses and per-example gradients (softmax - onehot) of the first k rows."""
    z = x[:k].astype(np.float64)
    m = z.max(axis=1, keepdims=True)
    e = np.exp(z - m)
    s = e.sum(axis=1)
    rows = np.arange(z.shape[0])
    loss = np.log(s) + m[:, 0] - z[rows, y[:k]]
    g = e / s[:, None]
    g[rows, y[:k]] -= 1.0
    return loss, g


def reference_mean(x: np.ndarray, y: np.ndarray, block_elems: int = 1 << 22) -> float:
    """The float64 mean loss over all rows, in row blocks (bounded memory)."""
    n, c = x.shape
    step = max(1, block_elems // c)
    total = 0.0
    for r0 in range(0, n, step):
        loss, _ = reference_rows(x[r0:r0 + step], y[r0:r0 + step], step)
        total += float(loss.sum())
    return total / n


def accuracy(mode: str, out: Any, ref_loss: np.ndarray, ref_grad: np.ndarray | None,
             ref_mean: float | None, n: int) -> tuple[float, float | None]:
    """fwd: max |loss - ref| over the reference rows. grad: (|mean - ref mean|,
    max |N * grad - (softmax - onehot)| over the reference rows)."""
    k = ref_loss.shape[0]
    if mode == "fwd":
        return float(np.max(np.abs(to_f64(out[:k]) - ref_loss))), None
    loss, grad = out
    acc_loss = abs(float(to_f64(loss)) - ref_mean)
    acc_grad = float(np.max(np.abs(to_f64(grad[:k]) * n - ref_grad)))
    return acc_loss, acc_grad
