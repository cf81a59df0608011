"""Formal robustness of an exported graph: can any image within an L∞ ball change its label?

A query is (graph, image x0, radius K). The perturbed image x ranges over every uint8
image with |x_i − x0_i| ≤ K; the question is whether some x gets another label than x0
from ``bnnkit.runtime.numpy_ref`` (the specification). It is encoded in CNF and given
to a SAT solver: UNSAT proves the label robust, a model is a counterexample, which is
replayed through the NumPy runtime before it is reported.

The encoding is exact, not an over-approximation, because every quantity in the graph
up to the class scores is an integer the CNF represents literally:

* Pixel i is ``lo_i + u_i1 + … + u_ir`` over ``[lo_i, hi_i] = [x0_i − K, x0_i + K] ∩
  [0, 255]``, with unary bits ordered (u_i,j+1 → u_ij) so each value has one encoding.
* A bits tensor is one literal per element; a constant element is the literal T or ¬T
  of a variable fixed true.
* An accumulator (``input_*``/``binary_*`` ops) is ``const + mult · count(lits)``. For
  an input layer Σ w_i x_i with w = ±1 the literals are u_ij (w = +1) and ¬u_ij (w = −1,
  its −r_i folded into const), mult = 1. For a binary layer each valid tap is
  w·s = 2[lit] − 1 with lit = s or ¬s by the sign of w, mult = 2; a constant tap adds
  ±1 and a padded tap adds w times the pad value, as in numpy_ref.
* ``threshold``: ``acc ≥ t`` ⇔ ``count ≥ k`` with k = ⌈(t − const)/mult⌉, and the flipped
  ``acc ≤ t`` is the negation of ``count ≥ ⌊(t − const)/mult⌋ + 1``. Where k ≤ 0 or k > n
  the bit is a constant (this also makes ``INT32_MIN`` channels constant, and is what
  keeps small radii small: most neurons cannot move). Otherwise a fresh b is reified.
  With ``encoding="native"`` (Minicard/Gluecard only) that is two of the
  solver's own at-most constraints over the n literals, a literal listed m times
  counting m times: Σ¬l + k·b ≤ n (b → count ≥ k) and Σl + (n − k + 1)·¬b ≤ n
  (¬b → count ≤ k − 1); each is vacuous on the other value of b, so together they are
  b ⇔ count ≥ k, in O(n) instead of the O(n·k) clauses of a sequential counter. With a
  CNF encoding it is PySAT's ``atleast(lits, k)`` with ¬b added to each clause and
  ``atmost(lits, k − 1)`` with b added (sound and complete since each encoding's
  auxiliaries are fresh).
* ``maxpool`` of bits is OR (AND on ``min_channels``): a fresh b ⇔ OR of the
  non-constant window literals, so no literal appears twice in a later count.
* The head (the ops from the last accumulator to ``argmax``: ``affine``, ``add``,
  ``flatten``) is elementwise, so each class score is f_j(count_j). Its table is
  computed by running those numpy_ref kernels on every reachable count, and "j beats
  the clean label c" by running numpy_ref's ``argmax`` on every pair of scores (ties
  go to the lower index, exactly as in the reference). Each reachable class gets an
  exact unary counter o_j[t] ⇔ count_j ≥ t (two PySAT totalizers, one on the negated
  literals, linked; clauses under every encoding, since the solver proves far less with
  native constraints here), and for each count t of class c one clause says: count_c = t
  implies some class j has a count in a run of counts that beats c at t.

Other ops (``avgpool``, ``maxpool`` of accumulators, a residual ``add`` before the
head) are refused by name. ``ENCODERS`` is the SAT backend's table of the op table: per op
kind its encoder, the head, or a ``Refusal``.
"""

from __future__ import annotations

import dataclasses
import io
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pysat.card import CardEnc, EncType, ITotalizer
from pysat.formula import IDPool
from pysat.solvers import Solver

from bnnkit.errors import BnnkitError
from bnnkit.files import atomic_write, make_dir
from bnnkit.graph import OPS, Family, Graph, Op, OpTable, Refusal, pad_of, pair
from bnnkit.progress import progress as bar
from bnnkit.runtime.evaluate import test_images
from bnnkit.runtime.numpy_ref import KERNELS, _windows, check_input, execute

ENCODERS = OpTable("sat")
# the head: from the first of its ops (ENCODERS' entry Encoding._head) to argmax, every op acts
# value by value, so each class score is a function of one accumulator element
HEAD_FAMILIES = (Family.ELEMENTWISE, Family.VIEW, Family.HEAD)
ENCODERS.refuse("avgpool", "a window sum of accumulators is not one count of literals")
for _kind in ("quantize_input", "int8_conv2d", "int8_dense", "requantize"):
    ENCODERS.refuse(
        _kind, "int8 arithmetic (products of 8-bit values, requantization) has no encoding as counts of literals"
    )
_FLOAT_PATH = "float32 arithmetic on the real-valued path is not encoded in SAT"
ENCODERS.refuse("sign", f"{_FLOAT_PATH} (the sign of a real value depends on it)")
ENCODERS.refuse("meanpool", _FLOAT_PATH)
ENCODERS.refuse("conv2d_f32", _FLOAT_PATH)
ENCODERS.refuse("dense_f32", _FLOAT_PATH)
for _kind in ("affine_q", "add_q", "prelu_q", "conv2d_q", "dense_q"):
    ENCODERS.refuse(
        _kind, "fixed-point arithmetic on the real-valued path (64-bit products, rounding, saturation) is not encoded"
    )
# "native": the solver's own at-most-k constraints; the rest: PySAT CardEnc clauses
ENCODINGS = ("native", "seqcounter", "sortnetwrk", "cardnetwrk", "totalizer", "mtotalizer", "kmtotalizer")
NATIVE_SOLVERS = ("minicard", "gluecard3", "gluecard4")
# measured fastest on Fashion-MNIST at radii 1-2 (docs/verification.md): the solver
# decides more queries with the sequential counter's auxiliaries than with native ones
DEFAULT_SOLVER = "glucose4"  # interruptible (as are Minicard and Gluecard), so a time-out stops it
DEFAULT_ENCODING = "seqcounter"


class _Timeout(Exception):
    """The query's deadline passed while the CNF was being built."""


@dataclass
class _Pixels:
    """The perturbed u8 input: pixel i = lo[i] + number of true variables in unary[i]."""

    lo: np.ndarray  # int64 (P,)
    unary: np.ndarray  # int32 (P, R), 0 pads a row
    shape: tuple[int, ...]


@dataclass
class _Sums:
    """An accumulator: element e = const[e] + mult · (number of true literals in lits[e])."""

    const: np.ndarray  # int64 (E,)
    mult: int
    lits: np.ndarray  # int32 (E, K), 0 pads a row
    shape: tuple[int, ...]


@dataclass
class _Bits:
    lits: np.ndarray  # int32, the tensor's shape


def _taps(op: Op, in_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Input element index of each tap (P output positions, K taps; −1 for padding),
    and the weight sign of each (O, K), both in numpy_ref's (C, kh, kw) tap order."""
    w = op.params["weight"]
    sign = np.where(w.reshape(len(w), -1), 1, -1).astype(np.int32)
    if w.ndim == 2:
        return np.arange(w.shape[1])[None, :], sign
    (sh, sw), (ph, pw) = pair(op.attrs["stride"]), pair(op.attrs["padding"])
    index = np.pad(
        np.arange(int(np.prod(in_shape))).reshape(in_shape), ((0, 0), (ph, ph), (pw, pw)), constant_values=-1
    )
    win = np.lib.stride_tricks.sliding_window_view(index, w.shape[2:], axis=(1, 2))[:, ::sh, ::sw]  # C,Ho,Wo,kh,kw
    return win.transpose(1, 2, 0, 3, 4).reshape(win.shape[1] * win.shape[2], -1), sign


class Encoding:
    """The CNF of one query, loaded into a PySAT solver: ``graph`` on every image within
    ``eps`` of ``image``. ``add_goal(label)`` adds "the label is not ``label``"."""

    def __init__(
        self,
        graph: Graph,
        image: np.ndarray,
        eps: int,
        *,
        solver: str = DEFAULT_SOLVER,
        encoding: str = DEFAULT_ENCODING,
        deadline: float | None = None,
    ):
        image = check_input(graph, np.asarray(image)[None])[0]
        if int(eps) != eps or eps < 0:
            raise BnnkitError(f"the radius must be an integer >= 0, got {eps}")
        if encoding not in ENCODINGS:
            raise BnnkitError(f"unknown cardinality encoding {encoding!r}; use one of {', '.join(ENCODINGS)}")
        self.native = encoding == "native"
        if self.native and solver not in NATIVE_SOLVERS:
            raise BnnkitError(
                f"the native encoding needs a solver with cardinality constraints ({', '.join(NATIVE_SOLVERS)}), "
                f"not {solver!r}; or pick a CNF encoding ({', '.join(ENCODINGS[1:])})"
            )
        self.graph, self.deadline = graph, deadline
        self.card = None if self.native else getattr(EncType, encoding)
        self.pool = IDPool()
        try:
            self.solver = Solver(name=solver)
        except Exception as e:  # PySAT names its solvers in the message
            raise BnnkitError(f"unknown SAT solver {solver!r}: {e}") from None
        self.clauses = self.atmosts = 0
        self.true = self.pool.id()
        self.add([[self.true]])
        self._counters: dict[int, list[int]] = {}
        self._runs: dict[tuple[int, int, int], int] = {}
        try:
            self.env: dict[str, Any] = {graph.input: self._pixels(image, int(eps))}
            for i, op in enumerate(graph.ops):
                encode = ENCODERS.find(op.kind)
                if isinstance(encode, Refusal):
                    self._refuse(i, op, f"{op.kind} has no encoding: {encode.reason}")
                if encode is Encoding._head:
                    self._head(i)
                    break
                self.env[op.output] = encode(self, i, op, self.env[op.inputs[0]])
        except BaseException:
            self.solver.delete()
            raise

    # --- bookkeeping -----------------------------------------------------------

    def add(self, clauses: list[list[int]]) -> None:
        self.solver.append_formula(clauses)
        self.clauses += len(clauses)

    def atmost(self, lits: list[int], k: int) -> None:
        """At most k of ``lits`` are true; a literal listed m times counts m times."""
        self.solver.add_atmost(lits, k)
        self.atmosts += 1

    def _tick(self) -> None:
        if self.deadline is not None and time.perf_counter() > self.deadline:
            raise _Timeout

    def _fresh(self, n: int) -> np.ndarray:
        first = self.pool.top + 1
        self.pool.top += n
        return np.arange(first, first + n, dtype=np.int32)

    def _refuse(self, i: int, op: Op, why: str) -> None:
        raise BnnkitError(
            f"op {i} ({op.kind}{' from ' + op.name if op.name else ''}): {why}; the verifier encodes "
            "input_conv2d, input_dense, binary_conv2d, binary_dense, threshold, maxpool of bits, flatten, "
            "and affine/add/flatten after the last accumulator"
        )

    # --- the network -------------------------------------------------------------

    def _pixels(self, image: np.ndarray, eps: int) -> _Pixels:
        x = image.reshape(-1).astype(np.int64)
        lo, hi = np.maximum(x - eps, 0), np.minimum(x + eps, 255)
        width = hi - lo
        unary = np.zeros((len(x), int(width.max(initial=0))), np.int32)
        mask = np.arange(unary.shape[1])[None, :] < width[:, None]
        unary[mask] = self._fresh(int(mask.sum()))
        # u_i,j+1 → u_ij: the value lo + (number of true bits) has one encoding
        later = unary[:, 1:][mask[:, 1:]]
        earlier = unary[:, :-1][mask[:, 1:]]
        self.add(np.stack([-later, earlier], 1).tolist())
        return _Pixels(lo, unary, image.shape)

    # Every encoder takes (op index, op, the encoding of its first input) and returns its output's.

    @ENCODERS.register("input_conv2d", "input_dense")
    def _input_layer(self, i: int, op: Op, px: _Pixels) -> _Sums:
        idx, sign = _taps(op, px.shape)
        lo = np.append(px.lo, 0)[idx]  # a padded pixel is 0 and adds nothing
        unary = np.vstack([px.unary, np.zeros((1, px.unary.shape[1]), np.int32)])[idx]  # P,K,R
        width = (unary != 0).sum(-1)
        # w·x = w·lo + Σ_j u_j for w = +1, and w·lo − r + Σ_j ¬u_j for w = −1
        const = lo @ sign.T.astype(np.int64) - width @ (sign.T < 0)
        lits = unary[None] * sign[:, None, :, None]
        return _Sums(const.T.reshape(-1), 1, lits.reshape(const.size, -1), self.graph.types[op.output][1])

    @ENCODERS.register("binary_conv2d", "binary_dense")
    def _binary_layer(self, i: int, op: Op, src: _Bits) -> _Sums:
        idx, sign = _taps(op, self.graph.types[op.inputs[0]][1])
        pad = idx < 0
        eff = np.append(src.lits.reshape(-1), 0)[idx][None] * sign[:, None, :]  # O,P,K: lit true ⇔ w·s = +1
        fixed = np.abs(eff) == self.true
        free = ~fixed & ~pad[None]
        pad_value = pad_of(op).value
        const = pad_value * (pad.astype(np.int64) @ sign.T).T + np.sign(eff, where=fixed, out=np.zeros_like(eff)).sum(
            -1
        )
        const = const - free.sum(-1)  # a free tap is 2[lit] − 1
        lits = np.where(free, eff, 0)
        return _Sums(
            const.reshape(-1).astype(np.int64), 2, lits.reshape(const.size, -1), self.graph.types[op.output][1]
        )

    @ENCODERS.register("threshold")
    def _threshold(self, i: int, op: Op, acc: _Sums) -> _Bits:
        per = acc.const.size // len(op.params["thresh"])
        t = np.repeat(op.params["thresh"].astype(np.int64), per)
        flip = np.repeat(op.params["flip"], per)
        # count ≥ k: k = ⌈(t − const)/mult⌉; flipped: acc ≤ t ⇔ ¬(count ≥ ⌊(t − const)/mult⌋ + 1)
        k = np.where(flip, (t - acc.const) // acc.mult + 1, -((acc.const - t) // acc.mult))
        n = (acc.lits != 0).sum(1)
        out = np.where(k <= 0, self.true, -self.true).astype(np.int32)
        for e in np.flatnonzero((k > 0) & (k <= n)):
            row = acc.lits[e]
            out[e] = self._at_least(row[row != 0].tolist(), int(k[e]))
        return _Bits(np.where(flip, -out, out).reshape(acc.shape))

    def _at_least(self, lits: list[int], k: int) -> int:
        """A fresh b ⇔ (at least k of ``lits`` are true), for 0 < k ≤ len(lits)."""
        self._tick()
        b = int(self._fresh(1)[0])
        if self.native:
            n = len(lits)
            self.atmost([-l for l in lits] + [b] * k, n)  # b → Σ¬l ≤ n − k
            self.atmost(lits + [-b] * (n - k + 1), n)  # ¬b → Σl ≤ k − 1
            return b
        on = CardEnc.atleast(lits, k, vpool=self.pool, encoding=self.card).clauses
        off = CardEnc.atmost(lits, k - 1, vpool=self.pool, encoding=self.card).clauses
        self.add([c + [-b] for c in on] + [c + [b] for c in off])
        return b

    @ENCODERS.register("maxpool")
    def _maxpool(self, i: int, op: Op, src: _Bits | _Sums) -> _Bits:
        if not isinstance(src, _Bits):
            self._refuse(i, op, f"{op.kind} on {self.graph.types[op.inputs[0]][0]} has no encoding here")
        win = _windows(op, src.lits[None])[0]  # C,Ho,Wo,kh*kw
        mins = op.params.get("min_channels", np.zeros(win.shape[0], bool))[:, None, None, None]
        win = np.where(mins, -win, win)  # AND(lits) = ¬OR(¬lits)
        out = np.where((win == self.true).any(-1), self.true, -self.true).astype(np.int32)
        free = np.abs(win) != self.true
        for pos in zip(*np.nonzero(free.any(-1) & (out == -self.true))):
            lits = win[pos][free[pos]].tolist()
            b = int(self._fresh(1)[0])
            self.add([[-b] + lits] + [[-l, b] for l in lits])
            out[pos] = b
        return _Bits(np.where(mins[..., 0], -out, out))

    @ENCODERS.register("flatten")
    def _flatten(self, i: int, op: Op, src: _Pixels | _Sums | _Bits) -> _Pixels | _Sums | _Bits:
        return _Bits(src.lits.reshape(-1)) if isinstance(src, _Bits) else _reshape(src, (int(np.prod(src.shape)),))

    # --- the head: class scores and the goal ---------------------------------------

    @ENCODERS.register("affine", "add", "prelu", "argmax")
    def _head(self, first: int) -> None:
        """The ops from ``first`` to ``argmax``: each class score as a table over the counts of
        its accumulator element."""
        ops = self.graph.ops[first:]
        base = ops[0].inputs[0]
        derived = {base}
        for j, op in enumerate(ops, start=first):
            if OPS[op.kind].family not in HEAD_FAMILIES:
                self._refuse(
                    first,
                    ops[0],
                    f"{ops[0].kind} is encoded only on the way to the class scores, not before op {j} ({op.kind})",
                )
            if not set(op.inputs) <= derived:
                self._refuse(j, op, "the class scores must be an elementwise function of one accumulator")
            derived.add(op.output)
        acc = self.env[base]
        self.counts = (acc.lits != 0).sum(1)
        # every reachable value of every score: row t holds count min(t, n_e) of element e
        t = np.minimum(np.arange(self.counts.max(initial=0) + 1)[:, None], self.counts[None, :])
        env = {base: (acc.const[None, :] + acc.mult * t).astype(np.int32).reshape(len(t), *acc.shape)}
        for op in ops[:-1]:
            env[op.output] = KERNELS[op.kind](op, *(env[name] for name in op.inputs))
        self.scores = env[ops[-1].inputs[0]].reshape(len(t), -1)
        self.head_lits = acc.lits
        self.argmax = ops[-1]

    def counter(self, e: int) -> list[int]:
        """o[0..n+1] for score element e: o[t] ⇔ count_e ≥ t (o[0] = T, o[n+1] = ¬T)."""
        if e not in self._counters:
            self._tick()
            row = self.head_lits[e]
            lits = row[row != 0].tolist()
            o = [self.true]
            if lits:
                up = ITotalizer(lits, ubound=len(lits) - 1, top_id=self.pool.top)  # count ≥ t → up.rhs[t−1]
                down = ITotalizer(
                    [-l for l in lits], ubound=len(lits) - 1, top_id=up.top_id
                )  # count ≤ n−s → down.rhs[s−1]
                self.pool.top = down.top_id
                self.add(up.cnf.clauses + down.cnf.clauses)
                self.add([[-down.rhs[len(lits) - t], -up.rhs[t - 1]] for t in range(1, len(lits) + 1)])
                o += list(up.rhs)
                up.delete()
                down.delete()
            self._counters[e] = o + [-self.true]
        return self._counters[e]

    def _run(self, e: int, a: int, b: int) -> int:
        """A literal that implies a ≤ count_e ≤ b."""
        o = self.counter(e)
        if a == 0 or b == self.counts[e]:
            return -o[b + 1] if a == 0 else o[a]
        if (e, a, b) not in self._runs:
            r = int(self._fresh(1)[0])
            self.add([[-r, o[a]], [-r, -o[b + 1]]])
            self._runs[e, a, b] = r
        return self._runs[e, a, b]

    def beats(self, j: int, c: int) -> np.ndarray:
        """(n_c + 1, n_j + 1): does class j win over class c at these counts, by numpy_ref's argmax?"""
        sj, sc = self.scores[: self.counts[j] + 1, j], self.scores[: self.counts[c] + 1, c]
        pairs = np.stack(np.broadcast_arrays(sc[:, None], sj[None, :]), -1)  # (t_c, t_j, [c, j])
        if j < c:
            pairs = pairs[..., ::-1]
        winner = KERNELS["argmax"](self.argmax, pairs.reshape(-1, 2)).reshape(pairs.shape[:2])
        return winner == (0 if j < c else 1)

    def add_goal(self, label: int) -> None:
        """Clauses for "the graph's label is not ``label``"."""
        others = [j for j in range(self.scores.shape[1]) if j != label]
        table = {j: self.beats(j, label) for j in others}
        o = self.counter(label) if any(b.any() for b in table.values()) else None
        clauses = []
        for t in range(self.counts[label] + 1):
            self._tick()
            clause = [] if o is None else [-o[t], o[t + 1]]  # ¬(count = t) ∨ …
            for j in others:
                clause += [self._run(j, a, b) for a, b in _runs(table[j][t])]
            clauses.append(clause)
        self.add(clauses)

    # --- reading a model ---------------------------------------------------------------

    def values(self, model: list[int], lits: np.ndarray) -> np.ndarray:
        truth = np.zeros(self.pool.top + 1, bool)
        m = np.asarray(model)
        truth[np.abs(m)] = m > 0
        return truth[np.abs(lits)] == (lits > 0)

    def image(self, model: list[int]) -> np.ndarray:
        px = self.env[self.graph.input]
        x = px.lo + (self.values(model, px.unary) & (px.unary != 0)).sum(1)
        return x.astype(np.uint8).reshape(px.shape)

    def bits(self) -> dict[str, np.ndarray]:
        """The literals of every bits tensor, by name."""
        return {name: v.lits for name, v in self.env.items() if isinstance(v, _Bits)}


def _reshape(v: _Pixels | _Sums, shape: tuple[int, ...]) -> _Pixels | _Sums:
    return dataclasses.replace(v, shape=shape)


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """Maximal runs [a, b] of True in ``mask``."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1) - 1))


@dataclass
class Result:
    eps: int
    status: str  # robust | counterexample | timeout
    label: int  # the graph's label on the clean image
    seconds: float  # encoding + solving
    encode_seconds: float
    variables: int = 0
    clauses: int = 0
    atmosts: int = 0  # native cardinality constraints, besides the clauses
    counterexample: np.ndarray | None = field(default=None, repr=False)
    new_label: int | None = None
    linf: int | None = None  # the counterexample's distance from the clean image
    changed_pixels: int | None = None

    def to_dict(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "counterexample"}


def label_of(graph: Graph, image: np.ndarray) -> int:
    return int(execute(graph, np.asarray(image)[None])[graph.ops[-1].output][0])


def verify(
    graph: Graph,
    image: np.ndarray,
    eps: int,
    timeout: float | None = None,
    *,
    solver: str = DEFAULT_SOLVER,
    encoding: str = DEFAULT_ENCODING,
) -> Result:
    """Is ``graph``'s label on ``image`` the same on every image within L∞ distance ``eps``
    (pixels kept in 0..255)? ``timeout`` bounds encoding plus solving, in seconds."""
    if timeout is not None and timeout <= 0:
        raise BnnkitError(f"the time-out must be > 0 seconds, got {timeout}")
    start = time.perf_counter()
    deadline = None if timeout is None else start + timeout
    label = label_of(graph, image)
    try:
        enc = Encoding(graph, image, eps, solver=solver, encoding=encoding, deadline=deadline)
    except _Timeout:
        now = time.perf_counter() - start
        return Result(int(eps), "timeout", label, now, now)
    try:
        enc.add_goal(label)
        encoded = time.perf_counter()
        answer = _solve(enc.solver, None if deadline is None else deadline - encoded)
    except _Timeout:
        answer = encoded = None
    now = time.perf_counter()
    status = "timeout" if answer is None else "counterexample" if answer else "robust"
    result = Result(
        int(eps), status, label, now - start, (encoded or now) - start, enc.pool.top, enc.clauses, enc.atmosts
    )
    if answer:
        x = enc.image(enc.solver.get_model())
        diff = np.abs(x.astype(np.int64) - image)
        result.counterexample, result.new_label = x, label_of(graph, x)
        result.linf, result.changed_pixels = int(diff.max()), int(np.count_nonzero(diff))
        if result.new_label == label or result.linf > eps:
            raise RuntimeError(f"internal error: the counterexample at radius {eps} is not one in numpy_ref")
    enc.solver.delete()
    return result


def _solve(solver: Solver, seconds: float | None) -> bool | None:
    """True (SAT), False (UNSAT) or None (ran out of time)."""
    if seconds is None:
        return solver.solve()
    if seconds <= 0:
        return None
    timer = threading.Timer(seconds, solver.interrupt)
    timer.start()
    try:
        return solver.solve_limited(expect_interrupt=True)
    finally:
        timer.cancel()


def verify_images(
    graph: Graph,
    first: int,
    count: int,
    radii: list[int],
    timeout: float | None,
    dataset: str | None = None,
    data_dir: str | None = None,
    save: Path | None = None,
    progress: bool = False,
    solver: str = DEFAULT_SOLVER,
    encoding: str = DEFAULT_ENCODING,
) -> dict:
    """``verify`` on test images ``first .. first + count − 1`` at each radius: every query
    and, per radius, the counts of answers and the median and largest time."""
    if count < 1 or first < 0:
        raise BnnkitError(f"--image must be >= 0 and --images >= 1, got {first} and {count}")
    name, x, y = test_images(graph, dataset, first + count, data_dir)
    if first + count > len(x):
        raise BnnkitError(
            f"images {first}..{first + count - 1} asked for, the {name} test set has {len(x)} (0..{len(x) - 1})"
        )
    if save is not None:
        make_dir(save, "counterexample directory")
    queries = []
    for i in bar(range(first, first + count), desc="verify", unit="image", enabled=progress):
        for eps in radii:
            r = verify(graph, x[i], eps, timeout, solver=solver, encoding=encoding)
            queries.append({"image": i, "true_label": int(y[i]), **r.to_dict()})
            if save is not None and r.counterexample is not None:
                buf = io.BytesIO()
                np.save(buf, r.counterexample, allow_pickle=False)
                atomic_write(save / f"image{i}_eps{eps}.npy", buf.getvalue())
    summary = {}
    for eps in radii:
        done = [q for q in queries if q["eps"] == eps]
        times = [q["seconds"] for q in done]
        summary[str(eps)] = {
            **{s: sum(q["status"] == s for q in done) for s in ("robust", "counterexample", "timeout")},
            "median_seconds": float(np.median(times)),
            "max_seconds": float(np.max(times)),
            "median_encode_seconds": float(np.median([q["encode_seconds"] for q in done])),
            "median_clauses": float(np.median([q["clauses"] for q in done])),
        }
    return {
        "graph_dataset": name,
        "timeout": timeout,
        "solver": solver,
        "encoding": encoding,
        "queries": queries,
        "summary": summary,
    }
