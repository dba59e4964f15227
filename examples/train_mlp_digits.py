"""Train a small MLP on scikit-learn's digits twice: with crossent.torch and with PyTorch.

Both runs start from the same weights and see the same mini-batches; the only difference
is the loss function (``crossent.torch.cross_entropy`` versus
``torch.nn.functional.cross_entropy``). The two loss curves agree to float rounding.

    pip install scikit-learn
    python examples/train_mlp_digits.py [--epochs 20] [--label-smoothing 0.1]
"""

from __future__ import annotations

import argparse
import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from crossent.torch import cross_entropy


@dataclass
class Run:
    """What one training run produced."""

    losses: list[float]  # the training loss of every step
    test_accuracy: float


def load_data(dtype: torch.dtype = torch.float32, seed: int = 0):  # type: ignore[no-untyped-def]
    """The 8x8 digits (1797 images, 10 classes), scaled to [0, 1], split 80/20."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.data, dtype=dtype) / 16.0
    y = torch.tensor(digits.target, dtype=torch.int64)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_train = int(0.8 * len(y))
    train, test = perm[:n_train], perm[n_train:]
    return x[train], y[train], x[test], y[test]


def make_model(dtype: torch.dtype = torch.float32, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10)
    ).to(dtype)


def train(
    model: torch.nn.Module,
    loss_fn,  # type: ignore[no-untyped-def]
    data,  # type: ignore[no-untyped-def]
    *,
    epochs: int,
    batch_size: int = 64,
    lr: float = 0.1,
    label_smoothing: float = 0.0,
    seed: int = 0,
) -> Run:
    x_train, y_train, x_test, y_test = data
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    order = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(epochs):
        perm = torch.randperm(len(y_train), generator=order)
        for start in range(0, len(perm), batch_size):
            idx = perm[start : start + batch_size]
            loss = loss_fn(model(x_train[idx]), y_train[idx], label_smoothing=label_smoothing)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
    with torch.no_grad():
        acc = float((model(x_test).argmax(1) == y_test).double().mean())
    return Run(losses, acc)


def compare(
    epochs: int = 20,
    *,
    batch_size: int = 64,
    lr: float = 0.1,
    label_smoothing: float = 0.0,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> tuple[Run, Run]:
    """Train the same model with both losses; returns ``(pytorch_run, crossent_run)``."""
    data = load_data(dtype, seed)
    model = make_model(dtype, seed)
    kw = dict(
        epochs=epochs, batch_size=batch_size, lr=lr, label_smoothing=label_smoothing, seed=seed
    )
    ref = train(copy.deepcopy(model), F.cross_entropy, data, **kw)
    ours = train(copy.deepcopy(model), cross_entropy, data, **kw)
    return ref, ours


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--label-smoothing", type=float, default=0.0)
    parser.add_argument("--float64", action="store_true", help="train in float64")
    args = parser.parse_args(argv)
    ref, ours = compare(
        args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        label_smoothing=args.label_smoothing,
        dtype=torch.float64 if args.float64 else torch.float32,
    )
    steps = len(ref.losses) // args.epochs
    print(f"{'epoch':>5}  {'torch.nn.functional':>20}  {'crossent.torch':>15}  {'max |diff|':>10}")
    for e in range(args.epochs):
        a, b = ref.losses[e * steps : (e + 1) * steps], ours.losses[e * steps : (e + 1) * steps]
        diff = max(abs(u - v) for u, v in zip(a, b))
        print(f"{e + 1:>5}  {sum(a) / len(a):>20.6f}  {sum(b) / len(b):>15.6f}  {diff:>10.2e}")
    worst = max(abs(u - v) for u, v in zip(ref.losses, ours.losses))
    print(f"\n{len(ref.losses)} steps; largest per-step loss difference {worst:.2e}")
    print(
        f"test accuracy: torch.nn.functional {ref.test_accuracy:.4f}, "
        f"crossent.torch {ours.test_accuracy:.4f}"
    )


if __name__ == "__main__":
    main()
