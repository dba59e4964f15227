"""Train a tiny decoder-only language model with crossent's fused linear cross-entropy.

    python examples/tiny_lm.py                      # a few hundred steps on CPU, ~1 minute
    python examples/tiny_lm.py --steps 50 --vocab 4096 --naive   # the unfused loss instead

The model is a GPT in miniature (token + position embeddings, pre-norm transformer blocks
with causal self-attention, a final LayerNorm, an output projection tied to the token
embedding). Its loss never materialises the (batch * time, vocab) logits:
``crossent.torch.linear_cross_entropy(hidden, lm_head_weight, targets, ...)`` works on
chunks of rows, with a z-loss keeping the log-partition function near 0 and padding
tokens ignored through ``ignore_index``.

The data is synthetic and learnable: each sequence follows a fixed random permutation of
the vocabulary (``next = perm[current]``) except that with probability ``noise`` a token is
drawn uniformly instead, so the best achievable loss is known (printed at the start).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

try:
    from crossent.torch import linear_cross_entropy
except ImportError:  # pragma: no cover - crossent.torch needs all of its modules
    from crossent.torch._linear import linear_cross_entropy

PAD = -100  # ignore_index: targets of padded positions


@dataclass
class Config:
    vocab: int = 1024
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    seq_len: int = 32
    batch: int = 16
    steps: int = 300
    lr: float = 3e-3
    noise: float = 0.1
    z_loss: float = 1e-4
    seed: int = 0
    dtype: str = "float32"
    naive: bool = False  # F.cross_entropy on the full logits instead (for comparison)
    chunk_size: int | None = None


class Block(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(D, dim=-1)
        q, k, v = (t.reshape(B, T, self.heads, D // self.heads).transpose(1, 2) for t in (q, k, v))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(a.transpose(1, 2).reshape(B, T, D))
        return x + self.mlp(self.ln2(x))


class TinyLM(nn.Module):
    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.tok = nn.Embedding(cfg.vocab, cfg.d_model)
        self.pos = nn.Embedding(cfg.seq_len, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg.d_model, cfg.n_heads) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        nn.init.normal_(self.tok.weight, std=0.02)
        nn.init.normal_(self.pos.weight, std=0.02)

    @property
    def lm_head_weight(self) -> torch.Tensor:
        return self.tok.weight  # tied output projection, (vocab, d_model)

    def hidden(self, idx: torch.Tensor) -> torch.Tensor:
        """Final hidden states (B, T, d_model): everything but the output projection."""
        T = idx.shape[1]
        x = self.tok(idx) + self.pos(torch.arange(T, device=idx.device))
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x)

    def loss(self, idx: torch.Tensor, targets: torch.Tensor, cfg: Config) -> torch.Tensor:
        h = self.hidden(idx)
        W = self.lm_head_weight
        if cfg.naive:
            logits = F.linear(h, W).float()
            lse = torch.logsumexp(logits, -1)
            ce = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=PAD, reduction="none")
            valid = targets != PAD
            return (ce + cfg.z_loss * lse**2 * valid).sum() / valid.sum()
        return linear_cross_entropy(
            h, W, targets, ignore_index=PAD, z_loss=cfg.z_loss, chunk_size=cfg.chunk_size
        )


def make_batch(gen: torch.Generator, perm: torch.Tensor, cfg: Config) -> tuple:
    """Sequences following ``perm`` with noise; the last positions of some rows are padding."""
    B, T, V = cfg.batch, cfg.seq_len + 1, cfg.vocab
    seq = torch.empty(B, T, dtype=torch.long)
    seq[:, 0] = torch.randint(0, V, (B,), generator=gen)
    for t in range(1, T):
        follow = perm[seq[:, t - 1]]
        rand = torch.randint(0, V, (B,), generator=gen)
        seq[:, t] = torch.where(torch.rand(B, generator=gen) < cfg.noise, rand, follow)
    idx, targets = seq[:, :-1].clone(), seq[:, 1:].clone()
    lengths = torch.randint(T // 2, T, (B,), generator=gen)  # ragged: pad the tails
    pad = torch.arange(T - 1)[None, :] >= lengths[:, None]
    targets[pad] = PAD
    return idx, targets


def best_loss(cfg: Config) -> float:
    """Entropy of the next token given the current one (the loss of a perfect model)."""
    p_follow = 1 - cfg.noise + cfg.noise / cfg.vocab
    p_other = cfg.noise / cfg.vocab
    return -(p_follow * math.log(p_follow) + (cfg.vocab - 1) * p_other * math.log(p_other))


def train(cfg: Config, log_every: int = 0) -> list:
    """Train for ``cfg.steps`` steps; returns the loss of every step."""
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    perm = torch.randperm(cfg.vocab, generator=gen)
    model = TinyLM(cfg).to(getattr(torch, cfg.dtype))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    losses = []
    t0 = time.perf_counter()
    for step in range(cfg.steps):
        idx, targets = make_batch(gen, perm, cfg)
        loss = model.loss(idx, targets, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        if log_every and (step % log_every == 0 or step == cfg.steps - 1):
            print(f"step {step:4d}  loss {losses[-1]:.4f}  ({time.perf_counter() - t0:.1f} s)", flush=True)
    return losses


def main(argv: list | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for f in Config.__dataclass_fields__.values():
        if f.name == "naive":
            p.add_argument("--naive", action="store_true", help="F.cross_entropy on full logits")
        elif f.name == "chunk_size":
            p.add_argument("--chunk-size", type=int, default=None, help="rows per chunk")
        else:
            p.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default)
    cfg = Config(**vars(p.parse_args(argv)))
    print(
        f"tiny LM: vocab {cfg.vocab}, d_model {cfg.d_model}, {cfg.n_layers} layers, "
        f"{cfg.batch}x{cfg.seq_len} tokens/step, {cfg.dtype}, "
        f"{'naive' if cfg.naive else 'crossent.torch.linear_cross_entropy'}; "
        f"best achievable loss {best_loss(cfg):.3f}, uniform {math.log(cfg.vocab):.3f}"
    )
    losses = train(cfg, log_every=max(1, cfg.steps // 10))
    print(f"loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
