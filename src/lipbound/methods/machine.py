"""The speed of the machine, the one home of every rate that turns predicted work into seconds.

lipbound never decides *what* to compute from a measured wall time: a method plans its steps from
the sizes of the graph and the rates below (:mod:`lipbound.methods.work_plan` for one method's
steps, :mod:`lipbound.methods.cost` for the choice of methods, :mod:`lipbound.methods.lipsdp_conv`
for the "blocks" path of LipSDP), so the same graph and budget give the same numbers on a fast or
a loaded machine; the wall clock only caps what the plan started (``stopped_by == "time"``).

The rates were measured on this project's CPU machine (2 cores shared by several jobs, one thread
per job) and are set on the slow side, so that the clock rarely has to act: a faster CPU or a GPU
only makes the predictions pessimistic. Two kinds of constants live here:

* **Kernel rates**, measured on one operation (unit in each comment): :data:`SVD_RATE`,
  :data:`GRAM_RATE`, :data:`QR_RATE`, :data:`MATMUL_RATE`, :data:`FACTOR_RATE`, :data:`POWER_SECONDS`,
  :data:`BLOCKS_RATE`, :data:`MATERIALISE_SECONDS`, :data:`CHAIN_IPM_SECONDS`,
  :data:`DENSE_IPM_SECONDS`, :data:`SPLIT_NODE_SECONDS` (the split tree's plan,
  :func:`lipbound.methods.split_bounds.planned_leaves`).
* **Per-method constants** of the cost model (:data:`METHOD_SECONDS`): seconds per unit of each
  method's own work count (:func:`lipbound.methods.cost.work`), fitted end to end by
  ``benchmarks/cost_model.py`` (total measured seconds / total work over random MLPs and a CNN),
  so they include Python's overheads and are not comparable with the kernel rates.
"""

from __future__ import annotations

__all__ = ["SVD_RATE", "GRAM_RATE", "QR_RATE", "MATMUL_RATE", "FACTOR_RATE", "POWER_SECONDS", "BLOCKS_RATE",
           "MATERIALISE_SECONDS", "CHAIN_IPM_SECONDS", "DENSE_IPM_SECONDS", "DUAL_SECONDS", "STEP_SECONDS",
           "SPLIT_NODE_SECONDS", "METHOD_SECONDS"]

#: ``m n min(m, n)`` per second of a float64 SVD of an ``m x n`` matrix (measured 1.0-1.8e9 on one
#: core; an OVAL21 convolution materialised as 3072 x 2048: 1.1e9)
SVD_RATE = 1e9
#: the same unit, ``m n min(m, n)`` per second, for the Gram + shifted-Cholesky certificate of a
#: wide matrix (:mod:`lipbound.linalg.dense_gram`; measured 2.6e10 at 4096 x 9216)
GRAM_RATE = 1e10
#: flops per second (``2 m n^2 - 2 n^3 / 3`` for ``m >= n``) of the float64 Householder QR of an
#: ``m x n`` matrix, ``R`` only (LAPACK ``geqrf``; measured 1.1-1.8e10 on one core at load 5-9, at
#: 3072 x 2048 and 3072 x 1024)
QR_RATE = 8e9
#: multiply-accumulates per second of a float64 matrix product (numpy on one loaded core; measured
#: up to 2e10)
MATMUL_RATE = 5e9
#: flops per second of the dense factorisations (LU, Cholesky, symmetric eigenvalues) of a
#: Lipschitz LMI's blocks (measured 4.7e9 for a 1352 x 1352 inverse)
FACTOR_RATE = 4e9
#: seconds per multiply-add of the power iterations through a layer's operator (its forward and
#: adjoint passes; set by hand, not fitted)
POWER_SECONDS = 2e-9
#: float64 flops per second of LipSDP's "blocks" path (:mod:`lipbound.methods.lipsdp_conv`): its block
#: eliminations (:meth:`~lipbound.methods.lipsdp_banded.BlockStructure.work`) and its ECLipsE-Fast
#: start (:func:`~lipbound.methods.eclipse.recursion_work`). Measured on one core of the shared CPU at
#: load 4-5 on the realnets CNNs (ConvSmall, OVAL21 base and wide, ResNet-2B, LeNet5): evaluations
#: 1.7-4e10, recursions 1.9-3.4e10, the start's check 2.1-3.8e10 (``benchmarks/results/sdp_cnn.md``)
BLOCKS_RATE = 2e10
#: seconds per float64 entry (:meth:`~lipbound.methods.lipsdp_banded.BlockStructure.entries`) of
#: materialising and bounding the "blocks" path's layer matrices (measured 0.4-0.9e-7 on the same CNNs)
MATERIALISE_SECONDS = 1e-7
#: seconds per unit ``order^3 + 4 order^2 w`` of one iteration of the chain interior point
#: (:mod:`lipbound.methods.lipsdp_ipm`; ``w`` the widest block), measured on GLipSDP's mlp_L33_W32
#: and mlp_L65_W32 (0.5 to 0.8 s at order 1056, 3 to 5 s at 2112, one thread of the loaded CPU)
CHAIN_IPM_SECONDS = 6e-10
#: seconds per ``order^3`` of a whole solve (to convergence, ~20-25 iterations) of the same interior point
#: on an LMI that is no chain (dense factorisations), measured on one core with the other busy: a
#: residual MLP of order 608 in 1.2 s and 1696 in 21 s; localized mnistfc_256x6 (order 1180) 9.7 s and
#: ERAN 9x200 (994) 5.3 s (4.3-5.9e-9; benchmarks/results/local.md, "Session 10")
DENSE_IPM_SECONDS = 6e-9
#: seconds of the first-order solver's dual bound (:func:`~lipbound.methods.lipsdp_dual.first_order_dual`):
#: up to ten projected-gradient subproblems on ``top x top`` matrices, whatever the LMI's size (measured
#: 0.3-1.2 s on one core, on a 52-order LMI and on OVAL21 base's)
DUAL_SECONDS = 1.5
#: seconds of one step's Python and library calls that a prediction from work at the rates above leaves
#: out (:class:`~lipbound.methods.budget.Clock` adds it to every step it times or prices; set by hand)
STEP_SECONDS = 0.05

#: seconds per unit of the three work counts of bounding one node of the split tree
#: (:func:`lipbound.methods.split_bounds.node_seconds`): a multiply-add of its back-substitutions, a
#: multiply-add of one sign-multiplier step, and a hidden layer (Python's overhead per node and layer).
#: Measured in batches of 32 nodes on one core with the other busy (load 3-4): ERAN 9x200 0.050 /
#: 0.115 / 0.159 s per node at 0 / 2 / 4 steps, mnistfc 256x6 0.064 / 0.193 / 0.272, ACAS Xu 0.0016 /
#: 0.0022 / 0.0027; the rates predict 0.94-1.4x those times at 2 steps (0.070 / 0.159 / 0.247 on ERAN)
SPLIT_NODE_SECONDS = (1.5e-10, 2e-10, 3.5e-4)

#: Seconds per unit of work of each cost model (:func:`lipbound.methods.cost.work`) on one CPU
#: thread, fitted by ``benchmarks/cost_model.py`` (2026 run on the shared 2-core CPU); ``power``,
#: ``ipm`` and ``exact`` are set by hand, ``power`` and ``blocks`` are the kernel rates above.
METHOD_SECONDS = {
    "start": 0.2,            # fixed overhead of a method call
    "autolip": 1.6e-9,       # per flop of the dense SVDs and convolution DFT bounds
    "power": POWER_SECONDS,  # per multiply-add of the power iterations
    "seqlip": 4e-8,          # per flop of the SVDs (convolutions materialised) and the pair products
    "eclipse": 2.8e-9,       # per flop of the block recursions and the check
    "lipsdp": 1e-9,          # per flop of the first-order solver's iterations
    "ipm": 2e-8,             # per (reduced LMI order)^3.5 of an interior-point solve
    "blocks": 1 / BLOCKS_RATE,  # per flop of the "blocks" path's start and eliminations
    "lower": 5e-8,           # per multiply-add of the search's forward and backward passes
    "exact": 1e-3,           # per activation pattern visited
}
