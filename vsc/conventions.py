"""The two conventions a linear-generator run can follow (``Config.convention``).

``"paper_equations"`` follows the paper's text; ``"public_code"`` follows the paper's
public code (kfallah/variational-sparse-coding, ``train_vsc_dict.py`` with
``dict_config/*.json``), which produced the paper's Table 1. Each difference below was
checked by running the public code's function and ours on the same inputs and noise
(``tests/test_public_code_conventions.py`` records the numbers):

====================  ====================================  ======================================
                      ``paper_equations``                   ``public_code``
====================  ====================================  ======================================
straight-through      eq. (4): ``z~ = s + T(sg[s]) - sg[s]``  ``"straight_shift"``: the shift ``mu``
                      (``estimator="straight"``)            added to active entries keeps its
                                                            gradient (``sample_laplacian``)
``sampling="iwae"``   Burda et al.'s bound                  ``"softmin"``: ``sum_j w_j L_j``,
                      ``-log mean_j exp(-L_j)``              ``w = softmax(-L)`` not detached
                                                            (``compute_loss``); the dictionary
                                                            steps with ``w`` detached
scale warm-up         ``0.1 + 2e-4 t`` for both bases        Laplace base only: 0.1 held for 1,500
                      (Appendix B)                          steps, then ``+2e-4`` per step; the
                                                            Gaussian bases are never warmed
objective (10)        ``||x - Az||^2 + 20 ||z||_1``          ``0.5 ||x - Az||^2 + 20 ||z||_1``
                      (FISTA solves it: ``tau = 10``)       (FISTA with ``tau = 20``, the
                                                            validation loss in the paper's scale)
FISTA                 from 0, ``tol = 1e-4`` per row         from ``A^T x``, ``tol = 1e-3`` (the
                                                            public FISTA stops on the batch)
encoder schedule      one cycle with the CycleScheduler's   ``CycleScheduler(warmup_proportion=
                      defaults (30% warm-up, momentum       0.05, momentum=None)``: lr 1e-2 for the
                      0.95 -> 0.85 -> 0.95):                first step, then linear from 4e-4 to
                      ``torch.optim.lr_scheduler.OneCycleLR``  1e-2 over 5% of the steps, cosine
                                                            down to 4e-8; momentum 0.9 throughout
validation codes      one posterior sample per input        the best of the ``J`` samples by the
                                                            per-sample loss (``max``), one drawn
                                                            from the softmax (``iwae``) or a
                                                            uniform one (``avg``)
====================  ====================================  ======================================

Not reproduced on purpose: the public code's Laplacian *subgradient* branch thresholds
``b^2 eps`` without the warm-up (``soft_threshold(eps * scale)`` with ``eps`` already
scaled); ``estimator="subgradient"`` is the exact a.e. gradient of eq. (2) under both
conventions.
"""

from __future__ import annotations

import math

import torch

CONVENTIONS = ("public_code", "paper_equations")

# The public code's CycleScheduler call in train_vsc_dict.py.
PUBLIC_WARMUP_PROPORTION = 0.05
CYCLE_DIVIDER = 25.0          # lr_min = lr_max / 25
CYCLE_FINAL_DIVIDER = 1e4     # the cosine phase ends at lr_min / 1e4


def public_cycle_factor(step: int, total_steps: int,
                        warmup_proportion: float = PUBLIC_WARMUP_PROPORTION) -> float:
    """Learning rate of optimizer step ``step`` (0-based) over ``lr_max`` under the
    public code's ``CycleScheduler(opt, lr_max, n_iter=total_steps, momentum=None,
    warmup_proportion=0.05)``, stepped after every optimizer step.

    Step 0 runs at the optimizer's own ``lr_max``; after ``k`` scheduler steps the rate
    is ``lr_min + (k / n1) (lr_max - lr_min)`` for ``k <= n1 = int(0.05 total)``, then
    the cosine from ``lr_max`` to ``lr_min / 1e4`` over the remaining ``n2`` steps
    (``lr_min = lr_max / 25``); the cycle restarts after ``total_steps``.
    """
    if step == 0:
        return 1.0
    n1 = int(total_steps * warmup_proportion)
    n2 = total_steps - n1
    k = (step - 1) % max(total_steps, 1) + 1      # scheduler steps taken, within the cycle
    low = 1.0 / CYCLE_DIVIDER
    if k <= n1:
        return low + (k / n1) * (1.0 - low)
    end = low / CYCLE_FINAL_DIVIDER
    return end + (1.0 - end) / 2.0 * (math.cos(math.pi * (k - n1) / n2) + 1.0)


class _PublicCycle:
    """Picklable ``lr_lambda`` for :class:`torch.optim.lr_scheduler.LambdaLR`."""

    def __init__(self, total_steps: int):
        self.total_steps = total_steps

    def __call__(self, step: int) -> float:
        return public_cycle_factor(step, self.total_steps)


def encoder_scheduler(optimizer: torch.optim.Optimizer, convention: str, lr: float,
                      total_steps: int):
    """The encoder's learning-rate schedule, stepped after every optimizer step."""
    if convention == "public_code":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, _PublicCycle(total_steps))
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=total_steps)
