"""Training the networks of a sweep point: the problem of a point's settings, the device, and the
seed ensemble trained in chunks that fit the memory budget."""

from __future__ import annotations

import os

import numpy as np

__all__ = ["MAX_POINT_BYTES", "device_name", "problem", "block", "point_memory_bytes", "seed_chunk", "train"]

#: Memory budget of one training call; a point whose seed ensemble needs more is trained in seed
#: chunks (the results are concatenated; each seed's weights depend only on its own seed).
MAX_POINT_BYTES = int(float(os.environ.get("MEANODE_MAX_POINT_GB", "16")) * 2**30)


def device_name(name: str) -> str:
    """``"auto"``: CUDA when available, else the CPU; other names as given."""
    if name == "auto":
        import torch
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def problem(s: dict):
    """The :class:`~meanode.data.Problem` (data, coupled embeddings, held-out inputs) of settings ``s``:
    the default data, sequences for an attention block, or the follow-up's linear experiment."""
    from ..data import Problem
    if s.get("data", "default") == "linear":
        from ..large_d import linear_experiment_problem
        return linear_experiment_problem(s["D"], D_max=s["D_max"], data_seed=s["data_seed"], embed_seed=s["embed_seed"])
    if s.get("block", "2lp") == "attention":
        return Problem.sequences(D=s["D"], T=s["T"], N=s["N"], d_in=s["d_in"], d_out=s["d_out"],
                                 data_seed=s["data_seed"], embed_seed=s["embed_seed"], D_max=s["D_max"],
                                 N_eval=s["N_eval"])
    return Problem.default(D=s["D"], N=s["N"], d_in=s["d_in"], d_out=s["d_out"], data_seed=s["data_seed"],
                           embed_seed=s["embed_seed"], D_max=s["D_max"], N_eval=s["N_eval"])


def block(s: dict):
    """The block of settings ``s``: None for the 2LP block (``activation`` picks its sigma), else
    the block object."""
    if s.get("block", "2lp") == "attention":
        from ..attention import AttentionHeadBlock
        return AttentionHeadBlock(s["D"], d_head=s["d_head"])
    return None


def point_memory_bytes(s: dict, n_seeds: int) -> int:
    """Peak memory of the trainer for one point, roughly (float64): weights twice, hidden states,
    pre-activations and activations of every layer."""
    E, L, M, D = n_seeds, s["L"], s["M"], s["D"]
    n = (s["N"] + s["N_eval"]) * (s["T"] if s.get("block") == "attention" else 1)
    words = 2 * E * L * M * 2 * D + (L + 1) * E * n * D + 2 * L * E * n * M + 2 * E * (s["K"] + 1) * n * (D + s["d_out"])
    return 8 * words


def seed_chunk(s: dict, n_seeds: int) -> int:
    """How many seeds one training call takes for settings ``s`` under :data:`MAX_POINT_BYTES`."""
    per_seed = point_memory_bytes(s, 1)
    return max(1, min(n_seeds, int(MAX_POINT_BYTES // max(per_seed, 1))))


def train(prob, s: dict, seeds: tuple, L: int, M: int, alpha: float, scaling=None, record_hidden: bool = False):
    """:func:`meanode.train_resnet` over ``seeds``, in chunks of :func:`seed_chunk` seeds."""
    import torch

    from ..resnet import MLU, TrainResult, train_resnet
    kw = dict(L=L, M=M, alpha=alpha, eta=s["eta"], steps=s["K"], activation=s["activation"],
              device=device_name(s["device"]), dtype=getattr(torch, s["dtype"]), scaling=scaling or MLU,
              divergence_threshold=s["divergence_threshold"], block=block(dict(s, L=L, M=M)),
              record_hidden=record_hidden)
    n = seed_chunk(dict(s, L=L, M=M), len(seeds))
    parts = [train_resnet(**prob.arrays(), seeds=seeds[i:i + n], **kw) for i in range(0, len(seeds), n)]
    if len(parts) == 1:
        return parts[0]
    cat = lambda name: (None if getattr(parts[0], name) is None  # noqa: E731
                        else np.concatenate([getattr(p, name) for p in parts]))
    return TrainResult(f=cat("f"), h=cat("h"), loss=cat("loss"), f_eval=cat("f_eval"), h_eval=cat("h_eval"),
                       hidden=cat("hidden"), unit_movement=cat("unit_movement"), diverged=cat("diverged"),
                       diverged_step=cat("diverged_step"), seeds=tuple(seeds), config=dict(parts[0].config, seed_chunk=n),
                       wall_time=sum(p.wall_time for p in parts))
