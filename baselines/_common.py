"""Pieces shared by the primal-dual methods: the dual variables and their ascent step.

A constrained method keeps one multiplier per relaxed layer. After each primal step it moves the
multipliers along the constraint values measured *before* that step (gradient ascent on the
Lagrangian in the multipliers), and projects them on ``lambda >= 0`` for inequality constraints.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["DualVariables", "DUAL_OPTIMIZERS"]

DUAL_OPTIMIZERS = ("sgd", "adam")


class DualVariables:
    """Lagrange multipliers ``lambda`` (one per constraint) and their ascent step.

    Parameters
    ----------
    n : int
        Number of constraints.
    lr : float
        Dual learning rate ``eta_d``.
    optimizer : {"sgd", "adam"}
        ``sgd``: ``lambda <- lambda + eta_d * c`` (plain gradient ascent). ``adam``: Adam minimising
        ``-<lambda, c>``, i.e. Adam fed the negated constraint value as the gradient.
    nonnegative : bool
        Project on ``lambda >= 0`` after each step (inequality constraints).
    dtype : torch.dtype
        Floating-point type of the multipliers (the model's).
    eps : float
        The ``eps`` of the dual Adam (added to its denominator); unused by ``sgd``.

    Examples
    --------
    >>> dual = DualVariables(2, lr=0.5)
    >>> dual.ascend(torch.tensor([1.0, -2.0]))
    >>> dual.value.tolist()
    [0.5, -1.0]
    >>> ineq = DualVariables(2, lr=0.5, nonnegative=True)
    >>> ineq.ascend(torch.tensor([1.0, -2.0]))
    >>> ineq.value.tolist()
    [0.5, 0.0]
    """

    def __init__(self, n: int, lr: float, optimizer: str = "sgd", nonnegative: bool = False,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None,
                 eps: float = 1e-8):
        if optimizer not in DUAL_OPTIMIZERS:
            raise ValueError(f"dual optimizer {optimizer!r}; allowed: {', '.join(DUAL_OPTIMIZERS)}")
        if not eps > 0:
            raise ValueError(f"dual Adam eps={eps!r}: must be > 0")
        self.lr = lr
        self.nonnegative = nonnegative
        self._value = torch.zeros(n, dtype=dtype, device=device, requires_grad=optimizer == "adam")
        self._opt = torch.optim.Adam([self._value], lr=lr, eps=eps) if optimizer == "adam" else None

    @property
    def value(self) -> torch.Tensor:
        """The multipliers, detached (a snapshot safe to use in a loss)."""
        return self._value.detach().clone()

    @torch.no_grad()
    def ascend(self, constraint: torch.Tensor) -> None:
        """One ascent step along the constraint values ``c`` (taken at the pre-step iterate)."""
        c = constraint.detach().to(self._value)
        if self._opt is None:
            self._value.add_(self.lr * c)
        else:
            self._value.grad = -c.clone()
            self._opt.step()
            self._value.grad = None
        if self.nonnegative:
            self._value.clamp_(min=0.0)

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value, "optimizer": None if self._opt is None else self._opt.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            self._value.copy_(state["value"])
        if self._opt is not None:
            if state.get("optimizer") is None:
                raise ValueError("checkpoint has no state of the dual Adam optimiser")
            self._opt.load_state_dict(state["optimizer"])
