"""L2-regularised logistic regression fitted by full-batch L-BFGS in PyTorch (CPU or GPU).

The classifier of the linear-transfer protocol (SynCLR, Tian et al. CVPR 2024; StableRep, Tian et
al. NeurIPS 2023), which the authors fit with scikit-learn's (or cuML's) ``LogisticRegression``.
This one minimises the same objective as ``sklearn.linear_model.LogisticRegression(solver="lbfgs",
C=1/weight_decay)`` divided by ``C·N`` (as scikit-learn does internally):

.. math::

    J(W, b) = \\frac{1}{N} \\sum_{i=1}^{N} \\ell(\\tilde x_i W + b,\\ y_i)
              + \\frac{\\lambda}{2N} \\lVert W \\rVert^2,
    \\qquad \\tilde x_i = (x_i - \\mu) / \\sigma

with :math:`\\lambda` the weight decay (= 1/C), the bias not penalised, and :math:`\\ell` either

- *multinomial*: the cross-entropy of the softmax over the K columns (scikit-learn's multiclass); or
- *binary*: the sum over the K columns of the logistic loss of each column, i.e. K independent
  binary classifiers (scikit-learn's two-class model, or one model per VOC class).

The optional standardisation :math:`(\\mu, \\sigma)` is folded into the linear map
(:math:`\\tilde x W = x (W / \\sigma) - (\\mu / \\sigma) W`): the features are never copied to be
z-scored, so a memory-mapped feature file is read in place; W lives in the z-scored coordinates,
where the problem is as well conditioned as scikit-learn's on z-scored features.

The solver is a compact L-BFGS of our own (:func:`_lbfgs`: history of 10 pairs, as scikit-learn's;
a backtracking line search, enough on a convex J), so that a fit along a sweep can start with the
previous fit's curvature pairs. Stopping as scikit-learn's: when
:math:`\\max |\\nabla J| \\le` ``tol`` (1e-4), when J stops changing, or after ``max_iter``
iterations. Problems stacked along leading batch dimensions (few-shot episodes), and the columns of
the binary model, are independent: they are fitted jointly, each reaching its own optimum, and the
gradient test holds for every one of them.

Examples:
    >>> import torch
    >>> x = torch.randn(200, 5)
    >>> y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    >>> model = fit_logistic_regression([(x, y)], weight_decay=1.0, num_outputs=3)
    >>> (model.predict(x) == y).float().mean() > 0.8
    tensor(True)
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

MAX_ITER = 1000  # the protocol's cap on L-BFGS iterations
TOL = 1e-4  # scikit-learn's default gradient tolerance
MAX_EVAL = 15000  # scipy's default cap on function evaluations (sklearn leaves it)
HISTORY = 10  # L-BFGS's curvature pairs, as scikit-learn's (scipy's m)
_ARMIJO = 1e-4  # the sufficient decrease a step's length must reach (Nocedal & Wright's c1)
_MAX_BACKTRACKS = 25
_STALL = 1e-9  # J, a step or the slope below this: J has stopped changing (torch LBFGS's default)
# Features per chunk of rows (J, mean/std, gathers): what is computed per row (logits, float64
# copies) is held for one chunk only. 16 MB in float32 on the CPU (the protocol-size sweep took
# the same time as with whole blocks), 256 MB on a GPU (few kernel launches).
_CHUNK_FLOATS = 1 << 22
_DEVICE_CHUNK_FLOATS = 1 << 26
_NUMPY_DTYPES = {torch.float32: np.float32, torch.float64: np.float64}
# Below this many multiply-adds per evaluation of J, one CPU thread is faster: the evaluation takes
# microseconds, and waking other threads costs more (far more on a loaded machine, measured 40x).
_SINGLE_THREAD_WORK = 1 << 24


def as_tensor(features, device=None, dtype=torch.float32) -> torch.Tensor:
    """``features`` (numpy array, memory map or tensor) as a tensor on ``device``; a float32
    C-contiguous array on the CPU is shared, not copied (it is only ever read)."""
    if isinstance(features, torch.Tensor):
        return features.to(device=device, dtype=dtype)
    array = np.asarray(features)
    if array.dtype == _NUMPY_DTYPES.get(dtype) and array.flags.c_contiguous:
        with warnings.catch_warnings():  # a read-only memory map: we never write through it
            warnings.simplefilter("ignore", UserWarning)
            return torch.from_numpy(array).to(device)
    return torch.as_tensor(np.ascontiguousarray(array), dtype=dtype, device=device)


class RowSubset:
    """Rows ``rows`` of ``features`` (N, D) (a memory map, say) as one block of the solver, never
    gathered as a whole: read a chunk of rows at a time (onto ``device``) wherever the
    block is used, i.e. at every evaluation of J (the gather costs a few % of the products)."""

    def __init__(self, features, rows, device=None, dtype=torch.float32):
        self.features = features
        self.rows = np.asarray(rows)
        self.device = torch.device(device or "cpu")
        self.dtype = dtype
        self.shape = torch.Size((len(self.rows), features.shape[-1]))

    def chunks(self):
        """(first row, rows as a tensor) per chunk."""
        step = _chunk_rows(self.shape[-1], self.device)
        for start in range(0, len(self.rows), step):
            rows = self.features[self.rows[start : start + step]]
            yield start, as_tensor(rows, self.device, self.dtype)

    def gathered(self) -> torch.Tensor:
        """The rows as one tensor on ``device``, filled chunk by chunk."""
        out = torch.empty(self.shape, dtype=self.dtype, device=self.device)
        for start, rows in self.chunks():
            out[start : start + len(rows)] = rows
        return out


def _chunk_rows(dim: int, device: torch.device) -> int:
    return max(1, (_CHUNK_FLOATS if device.type == "cpu" else _DEVICE_CHUNK_FLOATS) // dim)


def row_chunks(x):
    """(first row, tensor) per chunk of the rows of ``x``: views of a (N, D) tensor, gathers of a
    :class:`RowSubset`; a batch of problems (..., N, D) whole. What is computed per row (logits,
    float64 statistics) is then held for one chunk at a time."""
    if isinstance(x, RowSubset):
        yield from x.chunks()
    elif x.dim() == 2:
        step = _chunk_rows(x.shape[-1], x.device)
        for start in range(0, x.shape[0], step):
            yield start, x[start : start + step]
    else:
        yield 0, x


@dataclass
class Standardization:
    """Per-feature mean and standard deviation (population, as ``np.std``); a constant feature gets
    σ = 1 so that it maps to 0 instead of NaN."""

    mean: torch.Tensor
    std: torch.Tensor

    @classmethod
    def of(cls, blocks: Sequence[torch.Tensor]) -> Standardization:
        """Statistics of the rows of all ``blocks`` (N_b, D) together, accumulated in float64 over
        chunks of rows (no float64 copy of a block)."""
        count, total, total_sq = 0, 0.0, 0.0
        for rows in _stats_chunks(blocks):
            total = total + rows.sum(0)
            count += rows.shape[0]
        mean = total / count
        for rows in _stats_chunks(blocks):
            total_sq = total_sq + rows.sub_(mean).square_().sum(0)
        std = (total_sq / count).sqrt()
        std = torch.where(std > 0, std, torch.ones_like(std))
        dtype = blocks[0].dtype
        return cls(mean.to(dtype), std.to(dtype))


def _stats_chunks(blocks):
    """The rows of ``blocks`` in float64, a chunk at a time."""
    for block in blocks:
        for _, x in row_chunks(block):
            yield x.to(torch.float64, copy=True)


@dataclass
class Curvature:
    """L-BFGS's memory at the end of a fit: steps ``s`` and gradient changes ``y`` of J (flat over
    weight then bias), J's penalty factor λ/N then."""

    steps: list[torch.Tensor]
    changes: list[torch.Tensor]
    penalty: float

    def for_penalty(self, penalty: float, num_weights: int):
        """The pairs as J with penalty factor ``penalty`` has them: the data term's part of each y
        is unchanged, the penalty's is ``penalty`` times s on the weights (exact); pairs no longer
        of positive curvature are dropped. Returns (steps, changes, 1 / (y·s))."""
        steps, changes, rho = [], [], []
        for s, y in zip(self.steps, self.changes, strict=True):
            y = y.clone()
            y[:num_weights] += (penalty - self.penalty) * s[:num_weights]
            ys = float(y.dot(s))
            if ys > 1e-10:
                steps.append(s)
                changes.append(y)
                rho.append(1.0 / ys)
        return steps, changes, rho


@dataclass
class LogisticModel:
    """A fitted model: ``weight`` (..., D, K) and ``bias`` (..., K) act on z-scored features."""

    weight: torch.Tensor
    bias: torch.Tensor
    binary: bool
    standardization: Standardization | None = None
    n_iter: int = 0
    # gradient of J's data term (no penalty) at (weight, bias) on the rows it was fitted to
    data_gradient: tuple[torch.Tensor, torch.Tensor] | None = None
    # L-BFGS's last curvature pairs, for the next fit along a path (see fit_logistic_regression)
    curvature: Curvature | None = None
    func_evals: int = 0

    def decision_function(self, features: torch.Tensor | RowSubset) -> torch.Tensor:
        """Scores (..., N, K) of raw ``features`` (..., N, D)."""
        scores = [
            _logits(x, self.weight, self.bias, self.standardization)
            for _, x in row_chunks(features)
        ]
        return scores[0] if len(scores) == 1 else torch.cat(scores, -2)

    def restandardized(self, standardization: Standardization) -> LogisticModel:
        """The same function of the raw features, with its weights in ``standardization``'s
        coordinates (a warm start for a refit on rows z-scored with other statistics)."""
        assert self.standardization is not None
        old, new = self.standardization, standardization
        weight = self.weight * (new.std / old.std).unsqueeze(-1)
        raw_bias = self.bias - (old.mean / old.std) @ self.weight
        bias = raw_bias + (new.mean / new.std) @ weight
        # the curvature of nearby coordinates (std ratios near 1): a start the line search checks
        return LogisticModel(weight, bias, self.binary, new, curvature=self.curvature)

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        """Class indices (..., N): argmax of the softmax model; for a binary model of one column,
        1 where its score is positive (scikit-learn's two-class convention)."""
        scores = self.decision_function(features)
        if self.binary:
            if scores.shape[-1] != 1:
                raise ValueError("a binary model of several columns predicts no single class")
            return (scores[..., 0] > 0).long()
        return scores.argmax(-1)


def _logits(x, weight, bias, standardization: Standardization | None):
    if standardization is None:
        return x @ weight + bias.unsqueeze(-2)
    scale = 1.0 / standardization.std
    weight_raw = weight * scale.unsqueeze(-1)
    bias_raw = bias - (standardization.mean * scale) @ weight
    return x @ weight_raw + bias_raw.unsqueeze(-2)


@contextlib.contextmanager
def _single_thread_if(condition: bool):
    threads = torch.get_num_threads()
    if condition:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _prior_bias(blocks, num_outputs: int, binary: bool, num_rows: int) -> torch.Tensor:
    """log p(class) (softmax) or logit p(column) (binary) per problem, p floored at 0.5 / N."""
    if binary:
        frequency = sum(y.sum(-2) for _, y in blocks) / num_rows
    else:
        counts = sum(F.one_hot(y, num_outputs).sum(-2) for _, y in blocks)
        frequency = counts.to(blocks[0][0].dtype) / num_rows
    frequency = frequency.clamp(0.5 / num_rows, 1 - 0.5 / num_rows)
    return frequency.log() - (1 - frequency).log() if binary else frequency.log()


def meets_tolerance(model: LogisticModel, weight_decay: float, num_rows: int, tol: float = TOL):
    """Whether ``model``, fitted on ``num_rows`` rows, already stops L-BFGS at ``weight_decay``
    on those rows (max |∇J| <= ``tol``), known without evaluating J: the data term's gradient it
    carries plus the penalty's. False when it carries none."""
    if model.data_gradient is None:
        return False
    grad_weight = model.data_gradient[0] + weight_decay / num_rows * model.weight
    return max(grad_weight.abs().max().item(), model.data_gradient[1].abs().max().item()) <= tol


def fit_logistic_regression(
    blocks: Sequence[tuple[torch.Tensor, torch.Tensor]],
    weight_decay: float,
    num_outputs: int,
    *,
    binary: bool = False,
    standardization: Standardization | None = None,
    init: LogisticModel | None = None,
    max_iter: int = MAX_ITER,
    tol: float = TOL,
) -> LogisticModel:
    """Minimises J (module docstring) over the rows of all ``blocks`` (no concatenation).

    Args:
        blocks: pairs (features (..., N_b, D) float, targets), all on one device: targets (..., N_b)
            class indices in [0, num_outputs) for the multinomial model, or (..., N_b, K) zeros and
            ones for the binary one.
        weight_decay: λ = 1 / C.
        num_outputs: K, the number of columns.
        binary: K independent binary classifiers instead of one softmax.
        standardization: z-scoring applied to the features inside the model.
        init: a model to start from (warm start along a sweep), of the same shapes; its curvature
            pairs, if any, are L-BFGS's memory from the first step.
    """
    features = blocks[0][0]  # a tensor or a RowSubset: shape, dtype, device
    batch_shape, dim = features.shape[:-2], features.shape[-1]
    num_rows = sum(x.shape[-2] for x, _ in blocks)
    if init is None:  # W = 0 and the bias that is optimal for it: the class log-frequencies
        weight = torch.zeros(
            *batch_shape, dim, num_outputs, dtype=features.dtype, device=features.device
        )
        bias = _prior_bias(blocks, num_outputs, binary, num_rows)
    else:
        weight, bias = init.weight, init.bias
    weight_shape, bias_shape, num_weights = weight.shape, bias.shape, weight.numel()
    penalty = weight_decay / num_rows

    def unflatten(point):
        return point[:num_weights].view(weight_shape), point[num_weights:].view(bias_shape)

    @torch.no_grad()
    def objective(point):
        """J at ``point`` (the weights, then the bias, flat) and its gradient, by hand: the two
        products with the features are the whole cost, autograd's bookkeeping is not needed."""
        weight, bias = unflatten(point)
        total = weight.new_zeros((), dtype=torch.float64)  # one sync per evaluation, not per chunk
        grad_weight, grad_bias = torch.zeros_like(weight), torch.zeros_like(bias)
        for block, block_y in blocks:  # one chunk's logits in memory at a time
            for start, x in row_chunks(block):
                y = block_y if x is block else block_y[start : start + x.shape[-2]]
                logits = _logits(x, weight, bias, standardization)
                if binary:
                    total += F.binary_cross_entropy_with_logits(logits, y, reduction="sum")
                    residual = logits.sigmoid_().sub_(y)  # d loss / d logits
                else:
                    log_p = logits.log_softmax(-1)
                    total -= log_p.gather(-1, y.unsqueeze(-1)).sum()
                    residual = log_p.exp_()
                    residual.scatter_add_(
                        -1, y.unsqueeze(-1), residual.new_full(y.unsqueeze(-1).shape, -1.0)
                    )
                grad_weight += x.transpose(-1, -2) @ residual
                grad_bias += residual.sum(-2)
        if standardization is not None:  # back through w / sigma and b - (mu / sigma) w
            scale = 1.0 / standardization.std
            shift = (standardization.mean * scale).unsqueeze(-1)
            grad_weight = grad_weight * scale.unsqueeze(-1) - shift * grad_bias.unsqueeze(-2)
        gradient = torch.cat([grad_weight.reshape(-1), grad_bias.reshape(-1)]).div_(num_rows)
        gradient[:num_weights].add_(point[:num_weights], alpha=penalty)
        value = total.item() / num_rows + 0.5 * penalty * weight.square().sum().item()
        return value, gradient

    memory = None
    if init is not None and init.curvature is not None:
        memory = init.curvature.for_penalty(penalty, num_weights)
    start = torch.cat([weight.reshape(-1), bias.reshape(-1)])
    problems = math.prod(batch_shape)  # independent fits stacked along the batch dimensions
    work = num_rows * dim * num_outputs * problems
    with _single_thread_if(features.device.type == "cpu" and work < _SINGLE_THREAD_WORK):
        point, gradient, (steps, changes, _), n_iter, func_evals = _lbfgs(
            objective, start, memory, max_iter=max_iter, tol=tol, problems=problems
        )
    weight, bias = unflatten(point)
    grad_weight, grad_bias = unflatten(gradient)
    return LogisticModel(
        weight,
        bias,
        binary,
        standardization,
        n_iter,
        (grad_weight - penalty * weight, grad_bias),  # the data term's: without the penalty's
        Curvature(steps, changes, penalty) if steps else None,
        func_evals,
    )


def _lbfgs(objective, point: torch.Tensor, memory, *, max_iter: int, tol: float, problems: int = 1):
    """Minimises a convex ``objective(point) -> (J, ∇J)`` by L-BFGS (Nocedal & Wright, *Numerical
    Optimization*, 2nd ed., Alg. 7.5): each step goes along -H ∇J, H the inverse Hessian of the
    last :data:`HISTORY` curvature pairs (``memory``: steps s, gradient changes y, 1 / y·s, from
    a previous fit, or None), its length from 1 (the first step without pairs: 1 / |∇J|₁, as
    torch's ``LBFGS``, taken per problem: the ``problems`` stacked in ``point`` sum their |∇J|₁,
    and a step shrinking with their number stalled 600 few-shot episodes at W = 0) backtracked
    until J decreases enough (Armijo). J is convex, so every step gives y·s >= 0: no curvature
    condition is needed. Stops at max |∇J| <= ``tol``, when J or the
    point stops changing, after ``max_iter`` steps or :data:`MAX_EVAL` evaluations.

    Returns (point, ∇J there, the pairs (steps, changes, 1 / y·s), steps taken, evaluations)."""
    steps, changes, rho = (list(pairs) for pairs in (memory or ([], [], [])))
    value, gradient = objective(point)
    iterations, evaluations = 0, 1
    while iterations < max_iter and evaluations < MAX_EVAL and gradient.abs().max() > tol:
        direction = _inverse_hessian_times(gradient, steps, changes, rho).neg_()
        slope = float(gradient.dot(direction))
        if slope > -_STALL:
            break
        length = 1.0 if steps else min(1.0, problems / float(gradient.abs().sum()))
        for _ in range(_MAX_BACKTRACKS):
            trial = point + length * direction
            trial_value, trial_gradient = objective(trial)
            evaluations += 1
            if trial_value <= value + _ARMIJO * length * slope:
                break
            # to the minimum of the parabola through J(0), J'(0) and J(length), within [0.1, 0.5]
            excess = trial_value - value - slope * length  # > 0 where the test failed
            shrink = -slope * length / (2 * excess) if math.isfinite(excess) else 0.5
            length *= min(max(shrink, 0.1), 0.5)
        else:
            break
        iterations += 1
        step, change = trial - point, trial_gradient - gradient
        curvature = float(change.dot(step))
        if curvature > 1e-10:
            if len(steps) == HISTORY:
                del steps[0], changes[0], rho[0]
            steps.append(step)
            changes.append(change)
            rho.append(1.0 / curvature)
        stalled = abs(trial_value - value) < _STALL or float(step.abs().max()) <= _STALL
        point, value, gradient = trial, trial_value, trial_gradient
        if stalled:
            break
    return point, gradient, (steps, changes, rho), iterations, evaluations


def _inverse_hessian_times(vector, steps, changes, rho):
    """H ``vector`` by L-BFGS's two-loop recursion (Nocedal & Wright, Alg. 7.4), from
    H₀ = (s·y / y·y) I of the latest pair (I without pairs)."""
    q = vector.clone()
    alphas = []
    for s, y, r in zip(reversed(steps), reversed(changes), reversed(rho), strict=True):
        alphas.append(r * s.dot(q))  # tensors: no sync with a GPU
        q.sub_(alphas[-1] * y)
    if steps:
        q.mul_(1.0 / (rho[-1] * changes[-1].dot(changes[-1])))
    for s, y, r, alpha in zip(steps, changes, rho, reversed(alphas), strict=True):
        q.add_((alpha - r * y.dot(q)) * s)
    return q
