"""Random valid ``Graph``s, with inputs to run them on.

Two sources of the same graphs: ``graph_cases()``, a hypothesis strategy in which
hypothesis draws the structure (ops, shapes, strides, padding modes, flags) so that
failures shrink, and ``case_from_seed(seed)``, where one integer determines everything,
for the batched runtime checks that never shrink and must name a failing graph in a
form that rebuilds it. In both a NumPy generator draws the bulk parameters. Thresholds
are drawn from the accumulator values the graph really produces on the case's images
(computed with the reference interpreter while the graph is built), so binary
activations are not constant and ties (``x == thresh``) occur.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from bnnkit.graph import INT32_MIN, Graph, Op
from bnnkit.runtime import numpy_ref
from bnnkit.runtime.numpy_ref import KERNELS

# deterministic across runs and machines, no example database, no timing flakiness
SETTINGS = settings(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)


def examples(full: int) -> int:
    """A property test's example count: ``full`` in the whole suite; under the ``fast`` profile
    (tests/conftest.py) at most that profile's ``max_examples``."""
    if settings.get_current_profile_name() == "fast":
        return min(full, settings.default.max_examples)
    return full


N_IMAGES = 8
KERNEL_SIZES = (1, 3, 5)


@dataclass
class Case:
    graph: Graph
    x: np.ndarray  # uint8 (N, C, H, W): the images the thresholds were drawn for
    seed: int | None = None  # case_from_seed(seed) rebuilds it; None when hypothesis drew it


class _Drawn:
    """Choices drawn by hypothesis."""

    def __init__(self, draw):
        self.draw = draw

    def choice(self, options):
        return self.draw(st.sampled_from(options))

    def integer(self, low: int, high: int) -> int:
        return self.draw(st.integers(low, high))

    def boolean(self) -> bool:
        return self.draw(st.booleans())


class _Seeded:
    """Choices drawn by a NumPy generator, uniformly."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng

    def choice(self, options):
        return options[self.rng.integers(len(options))]

    def integer(self, low: int, high: int) -> int:
        return int(self.rng.integers(low, high + 1))

    def boolean(self) -> bool:
        return bool(self.rng.integers(2))


class _Builder:
    def __init__(self, choose: _Drawn | _Seeded, rng: np.random.Generator, x: np.ndarray):
        self.choose, self.rng = choose, rng
        self.ops: list[Op] = []
        self.env: dict[str, np.ndarray] = {"input": x}

    def op(self, kind: str, inputs: list[str], attrs: dict | None = None, params: dict | None = None) -> str:
        name = f"t{len(self.ops)}"
        op = Op(kind, inputs, name, attrs or {}, params or {}, name=f"layer{len(self.ops)}")
        self.env[name] = KERNELS[kind](op, *(self.env[i] for i in inputs))
        self.ops.append(op)
        return name

    def kind(self, name: str) -> str:
        return {"uint8": "u8", "bool": "bits", "int32": "i32", "float32": "f32", "int8": "i8"}[
            self.env[name].dtype.name
        ]

    def bits(self, *shape: int) -> np.ndarray:
        return self.rng.random(shape) < 0.5

    def channels(self) -> int:
        return self.choose.choice([1, 2, 3, 5, 8, 16, 31, 32, 33, 40, 63, 64, 65, 70])

    def sign(self, src: str) -> str:
        """``src`` as the input of a dense layer: thresholded when it is an accumulator or real."""
        return {"i32": self.threshold, "f32": self.real_sign}.get(self.kind(src), lambda t: t)(src)

    # --- one op or a small pattern each -----------------------------------------------

    def conv_geometry(self, h: int, w: int) -> dict:
        stride = self.choose.choice([1, 2, (1, 2), (2, 1)])
        padding = self.choose.choice([0, 1, (0, 1), (1, 0)])
        ph, pw = (padding, padding) if isinstance(padding, int) else padding
        fits = [k for k in KERNEL_SIZES if k <= h + 2 * ph and k <= w + 2 * pw]
        k = self.choose.choice(fits)
        return {"stride": stride, "padding": padding, "k": k}

    def conv(self, src: str, out_channels: int | None = None, geometry: dict | None = None) -> str:
        cin, h, w = self.env[src].shape[1:]
        g = geometry or self.conv_geometry(h, w)
        o = out_channels or self.channels()
        weight = self.bits(o, cin, g["k"], g["k"])
        attrs = {"stride": g["stride"], "padding": g["padding"]}
        if self.kind(src) == "u8":
            return self.op("input_conv2d", [src], attrs, {"weight": weight})
        attrs["pad"] = self.choose.choice(["zero", "minus_one", "plus_one"])
        return self.op("binary_conv2d", [src], attrs, {"weight": weight})

    def threshold(self, src: str) -> str:
        acc = self.env[src]
        c = acc.shape[1]
        values = np.sort(np.moveaxis(acc, 1, 0).reshape(c, -1), axis=1)
        n = values.shape[1]
        # a value between the quartiles: both signs occur, and so do ties
        thresh = values[np.arange(c), self.rng.integers(n // 4, n - n // 4, c)].astype(np.int32)
        thresh[self.rng.random(c) < 0.1] = INT32_MIN  # constant channels
        flip = self.rng.random(c) < 0.4  # BN with negative gamma
        return self.op("threshold", [src], params={"thresh": thresh, "flip": flip})

    def pool(self, src: str) -> str:
        h, w = self.env[src].shape[2:]
        kernel = (self.choose.integer(1, min(3, h)), self.choose.integer(1, min(3, w)))
        stride = (self.choose.integer(1, 3), self.choose.integer(1, 3))
        attrs = {"kernel": kernel if kernel[0] != kernel[1] else kernel[0], "stride": stride}
        if self.kind(src) == "bits":
            params = {"min_channels": self.bits(self.env[src].shape[1])} if self.choose.boolean() else {}
            return self.op("maxpool", [src], attrs, params)
        return self.op(self.choose.choice(["maxpool", "avgpool"]), [src], attrs)

    def affine(self, src: str) -> str:
        x = self.env[src]
        c = x.shape[1]
        # roughly standardizes each channel (a folded BN), so that no class wins on its
        # offset alone
        spread = np.moveaxis(x, 1, 0).reshape(c, -1).std(axis=1) + 1
        scale = (self.rng.normal(1, 0.3, c) * self.rng.choice([1, -1], c, p=[0.8, 0.2]) / spread).astype(np.float32)
        mean = np.moveaxis(x, 1, 0).reshape(c, -1).mean(axis=1)
        bias = (self.rng.normal(0, 0.5, c) - mean * scale).astype(np.float32)
        return self.op("affine", [src], params={"scale": scale, "bias": bias})

    def dense(self, src: str, out_features: int) -> str:
        if self.env[src].ndim > 2:
            src = self.op("flatten", [src])
        kind = "input_dense" if self.kind(src) == "u8" else "binary_dense"
        return self.op(kind, [src], params={"weight": self.bits(out_features, self.env[src].shape[1])})

    def two_branches(self, src: str) -> str:
        """Two convolutions of one map, summed: both stay live until the add."""
        g = self.conv_geometry(*self.env[src].shape[2:])
        o = self.channels()
        return self.op("add", [self.conv(src, o, g), self.conv(src, o, g)])

    def residual(self, src: str) -> str:
        """acc + conv(sign(acc)) with a shape-preserving conv: ``src`` lives across it."""
        k = self.choose.choice([1, 3])
        g = {"stride": 1, "padding": k // 2, "k": k}
        return self.op("add", [src, self.conv(self.threshold(src), self.env[src].shape[1], g)])

    # --- the real-valued path ------------------------------------------------------------

    def real(self, src: str) -> str:
        """An accumulator onto the real-valued stream (a folded BN)."""
        return self.affine(src)

    def real_sign(self, src: str) -> str:
        x = self.env[src]
        c = x.shape[1]
        values = np.sort(np.moveaxis(x, 1, 0).reshape(c, -1), axis=1)
        n = values.shape[1]
        thresh = values[np.arange(c), self.rng.integers(n // 4, n - n // 4, c)]  # ties occur
        return self.op("sign", [src], params={"thresh": thresh.astype(np.float32)})

    def prelu(self, src: str) -> str:
        slope = self.rng.normal(0.25, 0.5, self.env[src].shape[1]).astype(np.float32)
        return self.op("prelu", [src], params={"slope": slope})

    def meanpool(self, src: str) -> str:
        h, w = self.env[src].shape[2:]
        kernel = (self.choose.integer(1, min(3, h)), self.choose.integer(1, min(3, w)))
        kind = self.choose.choice(["meanpool", "meanpool", "maxpool"])
        return self.op(kind, [src], {"kernel": kernel, "stride": (self.choose.integer(1, 3),) * 2})

    def fp_conv(self, src: str) -> str:
        cin, h, w = self.env[src].shape[1:]
        g, o = self.conv_geometry(h, w), self.channels()
        scale = 1 / np.sqrt(cin * g["k"] ** 2) / (64 if self.kind(src) == "u8" else 1)
        weight = (self.rng.normal(0, 1, (o, cin, g["k"], g["k"])) * scale).astype(np.float32)
        attrs = {"stride": g["stride"], "padding": g["padding"]}
        return self.op(
            "conv2d_f32", [src], attrs, {"weight": weight, "bias": self.rng.normal(0, 0.3, o).astype(np.float32)}
        )

    def fp_dense(self, src: str, out_features: int) -> str:
        if self.env[src].ndim > 2:
            src = self.op("flatten", [src])
        f = self.env[src].shape[1]
        weight = (self.rng.normal(0, 1, (out_features, f)) / np.sqrt(f)).astype(np.float32)
        return self.op("dense_f32", [src], params={"weight": weight, "bias": np.zeros(out_features, np.float32)})

    def real_residual(self, src: str) -> str:
        """x + affine(conv(sign(x))) on the real stream: Bi-Real's block, ``src`` live across it."""
        k = self.choose.choice([1, 3])
        g = {"stride": 1, "padding": k // 2, "k": k}
        return self.op("add", [src, self.affine(self.conv(self.real_sign(src), self.env[src].shape[1], g))])


class _NarrowBuilder(_Builder):
    """Maps of 1 to 31 channels: bits maps the C runtime stores bit-dense (bnnkit.graph.plan)."""

    def channels(self) -> int:
        return self.choose.integer(1, 31)


@st.composite
def graph_cases(draw, max_layers: int = 4) -> Case:
    return _build(_Drawn(draw), np.random.default_rng(draw(st.integers(0, 2**32 - 1))), max_layers)


def case_from_seed(seed: int, max_layers: int = 4) -> Case:
    """The random graph numbered ``seed``: the same one on every machine and run."""
    rng = np.random.default_rng(seed)
    return _build(_Seeded(rng), rng, max_layers, seed)


def narrow_case_from_seed(seed: int, max_layers: int = 4) -> Case:
    """The random graph numbered ``seed`` among those whose every map has 1 to 31 channels, on
    images of odd sizes (5 to 21), so that bit-dense rows start anywhere in a word."""
    rng = np.random.default_rng(seed)
    return _build(_Seeded(rng), rng, max_layers, seed, narrow=True)


def _build(
    choose: _Drawn | _Seeded, rng: np.random.Generator, max_layers: int, seed: int | None = None, narrow: bool = False
) -> Case:
    if narrow:
        shape = (choose.integer(1, 3), 2 * choose.integer(2, 10) + 1, 2 * choose.integer(2, 10) + 1)
    else:
        shape = (choose.integer(1, 3), choose.integer(2, 10), choose.integer(2, 10))
    builder = _NarrowBuilder if narrow else _Builder
    b = builder(choose, rng, rng.integers(0, 256, (N_IMAGES, *shape), dtype=np.uint8))
    t = "input"
    if choose.choice(["conv", "conv", "conv", "dense"]) == "conv":
        t = b.conv(t) if choose.integer(0, 4) else b.fp_conv(t)
        for _ in range(choose.integer(0, max_layers)):
            moves = {
                "i32": ["threshold", "pool", "residual", "real"],
                "bits": ["conv", "pool", "two_branches"],
                "f32": ["real_sign", "prelu", "meanpool", "fp_conv", "real_residual"],
            }
            t = getattr(b, choose.choice(moves[b.kind(t)]))(t)
    if b.kind(t) == "f32" and choose.boolean():
        t = b.fp_dense(t, choose.integer(2, 12))
    # dense layers to the class scores, or the flattened i32 map itself as scores
    if b.kind(t) != "i32" or choose.boolean():
        for _ in range(choose.integer(0, 2)):
            t = b.dense(b.sign(t), b.channels())
        t = b.dense(b.sign(t), choose.integer(2, 12))
    head = choose.choice(["i32", "affine", "affine_map", "two_affines", "affine_of_affine"])
    if head == "affine_map":
        t = b.affine(t)
    if b.env[t].ndim > 2:
        t = b.op("flatten", [t])
    if head == "affine":
        t = b.affine(t)
    elif head == "two_affines":
        t = b.op("add", [b.affine(t), b.affine(t)])
    elif head == "affine_of_affine":
        t = b.affine(b.affine(t))
    b.op("argmax", [t])
    return Case(Graph(shape, b.ops), b.env["input"], seed)


def ebnn_cnn(rng: np.random.Generator) -> Graph:
    """The Fashion-MNIST shape: conv 32, conv 32, pool, conv 64, conv 64, pool, dense 256, dense 10."""

    def bits(*shape):
        return rng.random(shape) < 0.5

    def sign(src, c, spread):
        return Op(
            "threshold",
            [src],
            f"{src}s",
            {},
            {"thresh": rng.integers(-spread, spread, c).astype(np.int32), "flip": bits(c)},
        )

    def conv(kind, src, name, cin, cout, **extra):
        return Op(kind, [src], name, {"stride": 1, "padding": 1, **extra}, {"weight": bits(cout, cin, 3, 3)})

    ops = [
        conv("input_conv2d", "input", "c1", 1, 32),
        sign("c1", 32, 200),
        conv("binary_conv2d", "c1s", "c2", 32, 32, pad="zero"),
        sign("c2", 32, 20),
        Op("maxpool", ["c2s"], "p2", {"kernel": 2, "stride": 2}),
        conv("binary_conv2d", "p2", "c3", 32, 64, pad="minus_one"),
        sign("c3", 64, 20),
        conv("binary_conv2d", "c3s", "c4", 64, 64, pad="plus_one"),
        sign("c4", 64, 30),
        Op("maxpool", ["c4s"], "p4", {"kernel": 2, "stride": 2}, {"min_channels": bits(64)}),
        Op("flatten", ["p4"], "f"),
        Op("binary_dense", ["f"], "d1", {}, {"weight": bits(256, 3136)}),
        sign("d1", 256, 40),
        Op("binary_dense", ["d1s"], "d2", {}, {"weight": bits(10, 256)}),
        Op(
            "affine",
            ["d2"],
            "s",
            {},
            {"scale": rng.normal(1, 0.1, 10).astype(np.float32), "bias": rng.normal(0, 1, 10).astype(np.float32)},
        ),
        Op("argmax", ["s"], "label"),
    ]
    return Graph((1, 28, 28), ops)


def ebnn16(rng: np.random.Generator) -> Graph:
    """``ebnn_cnn`` (16, 32) as ``bnnkit export`` writes it: two conv + threshold + pool blocks
    (16 and 32 channels), a dense layer to 10 scores; its 16-channel map is stored bit-dense."""

    def bits(*shape):
        return rng.random(shape) < 0.5

    def sign(src, c, spread):
        thresh = rng.integers(-spread, spread, c).astype(np.int32)
        return Op("threshold", [src], f"{src}s", {}, {"thresh": thresh, "flip": bits(c)})

    ops = [
        Op("input_conv2d", ["input"], "c1", {"stride": 1, "padding": 1}, {"weight": bits(16, 1, 3, 3)}),
        sign("c1", 16, 200),
        Op("maxpool", ["c1s"], "p1", {"kernel": 2, "stride": 2}),
        Op("binary_conv2d", ["p1"], "c2", {"stride": 1, "padding": 1, "pad": "zero"}, {"weight": bits(32, 16, 3, 3)}),
        sign("c2", 32, 20),
        Op("maxpool", ["c2s"], "p2", {"kernel": 2, "stride": 2}),
        Op("flatten", ["p2"], "f"),
        Op("binary_dense", ["f"], "d", {}, {"weight": bits(10, 32 * 7 * 7)}),
        Op("argmax", ["d"], "label"),
    ]
    return Graph((1, 28, 28), ops)


def edge_thresholds(bound: int, n: int, rng: np.random.Generator) -> Op:
    """A threshold of ``n`` channels (on tensor ``a``, to ``b``) at the edges a sum within
    +-``bound`` can meet (the bound and one beyond, 0) and at those of int16 and int32, each with
    and without its flip: where the C runtime stores it as int16 (clamped), each must still decide
    as the int32 value does."""
    edges = [bound, bound + 1, -bound, -bound - 1, 0, 1, 2**15 - 1, 2**15, -(2**15), -(2**15) - 1]
    edges += [40000, -40000, INT32_MIN, 2**31 - 1]
    thresh = np.resize(np.array(edges, np.int64), n)  # each edge twice: the flip below differs
    thresh[2 * len(edges) :] = rng.integers(-bound, bound + 1, max(n - 2 * len(edges), 0))
    flip = np.resize([False, True], n) ^ (np.arange(n) // len(edges) % 2 == 1)
    return Op("threshold", ["a"], "b", {}, {"thresh": thresh.astype(np.int32), "flip": flip})


def edge_dense(pixels: int, rng: np.random.Generator) -> Graph:
    """flatten -> input_dense (``pixels`` u8 inputs, 28 channels: all +1, all -1 and random
    weights) -> ``edge_thresholds`` -> a binary_dense whose output j is the sum less twice bit j,
    so the scores give every thresholded bit."""
    n = 28
    weight = rng.random((n, pixels)) < 0.5
    weight[0::4], weight[1::4] = True, False
    read_bits = ~np.eye(n, dtype=bool)
    return Graph(
        (1, 1, pixels),
        [
            Op("flatten", ["input"], "f"),
            Op("input_dense", ["f"], "a", {}, {"weight": weight}),
            edge_thresholds(255 * pixels, n, rng),
            Op("binary_dense", ["b"], "s", {}, {"weight": read_bits}),
            Op("argmax", ["s"], "label"),
        ],
    )


def edge_binary_dense(bits: int, rng: np.random.Generator) -> Graph:
    """One pixel spread to ``bits`` equal bits (all 1 from pixel 128 up, else all 0), then a
    binary_dense of ``bits`` taps with all +1 weights, so every channel's sum is +-``bits``
    -> ``edge_thresholds`` (each edge with and without its flip) -> a binary_dense whose scores
    give every thresholded bit: the sum bound at int16's very edge."""
    n = 28
    weight = np.ones((n, bits), bool)
    spread = Op("threshold", ["p"], "a0", {}, {"thresh": np.full(bits, 128, np.int32), "flip": np.zeros(bits, bool)})
    return Graph(
        (1, 1, 1),
        [
            Op("flatten", ["input"], "f"),
            Op("input_dense", ["f"], "p", {}, {"weight": np.ones((bits, 1), bool)}),
            spread,
            Op("binary_dense", ["a0"], "a", {}, {"weight": weight}),
            edge_thresholds(bits, n, rng),
            Op("binary_dense", ["b"], "s", {}, {"weight": ~np.eye(n, dtype=bool)}),
            Op("argmax", ["s"], "label"),
        ],
    )


def edge_cnn(rng: np.random.Generator) -> Graph:
    """The kernels of the Cortex-M's assembly at threshold edges: a 3x3 u8 conv (32 channels,
    the patch in registers) and a 32 -> 32 3x3 binary conv (288-bit patches, the pair loop),
    each thresholded by ``edge_thresholds``, then a dense layer to 10 scores."""

    def bits(*shape):
        return rng.random(shape) < 0.5

    def at(op: Op, src: str, dst: str) -> Op:
        return Op(op.kind, [src], dst, op.attrs, op.params)

    ops = [
        Op("input_conv2d", ["input"], "c1", {"stride": 1, "padding": 1}, {"weight": bits(32, 1, 3, 3)}),
        at(edge_thresholds(255 * 9, 32, rng), "c1", "s1"),
        Op(
            "binary_conv2d",
            ["s1"],
            "c2",
            {"stride": 1, "padding": 1, "pad": "minus_one"},
            {"weight": bits(32, 32, 3, 3)},
        ),
        at(edge_thresholds(288, 32, rng), "c2", "s2"),
        Op("flatten", ["s2"], "f"),
        Op("binary_dense", ["f"], "d", {}, {"weight": bits(10, 32 * 6 * 6)}),
        Op("argmax", ["d"], "label"),
    ]
    return Graph((1, 6, 6), ops)


# --- int8 graphs (the baseline's ops) ----------------------------------------------------------


def _requant_params(rng: np.random.Generator, acc: np.ndarray) -> dict:
    """Per channel, a multiplier and shift that map the spread of the accumulators ``acc``
    (N, C, ...) onto about +-100 (some values saturate, ties of the rounding occur), and ReLU on
    some channels."""
    c = acc.shape[1]
    spread = np.abs(np.moveaxis(acc, 1, 0).reshape(c, -1)).max(axis=1).astype(np.float64) + 1
    shift = rng.integers(20, 40, c)
    mult = np.clip(np.round(100 / spread * 2.0**shift * rng.uniform(0.5, 2.0, c)), 0, 2**31 - 1)
    return {"multiplier": mult.astype(np.int32), "shift": shift.astype(np.int32), "relu": rng.random(c) < 0.5}


class _Int8Builder(_Builder):
    def int8_layer(self, src: str, kind: str, weight_shape: tuple, attrs: dict | None = None) -> str:
        """An int8 conv (requantized) or dense (i32) layer with random int8 weights and bias; the
        requantization is fitted to the accumulators the layer really produces."""
        weight = self.rng.integers(-128, 128, weight_shape).astype(np.int8)
        bias = self.rng.integers(-5000, 5000, weight_shape[0]).astype(np.int32)
        params = {"weight": weight, "bias": bias}
        if kind == "int8_conv2d":
            acc = numpy_ref.int8_sum(Op(kind, [src], "acc", attrs or {}, params), self.env[src])
            params.update(_requant_params(self.rng, acc))
        return self.op(kind, [src], attrs or {}, params)

    def int8_conv(self, src: str) -> str:
        cin, h, w = self.env[src].shape[1:]
        g = self.conv_geometry(h, w)
        o = self.channels()
        return self.int8_layer(
            src, "int8_conv2d", (o, cin, g["k"], g["k"]), {"stride": g["stride"], "padding": g["padding"]}
        )

    def int8_pool(self, src: str) -> str:
        h, w = self.env[src].shape[2:]
        kernel = (self.choose.integer(1, min(3, h)), self.choose.integer(1, min(3, w)))
        return self.op(
            "maxpool", [src], {"kernel": kernel, "stride": (self.choose.integer(1, 3), self.choose.integer(1, 3))}
        )

    def int8_dense(self, src: str, out_features: int, requantize: bool) -> str:
        if self.env[src].ndim > 2:
            src = self.op("flatten", [src])
        t = self.int8_layer(src, "int8_dense", (out_features, self.env[src].shape[1]))
        return self.op("requantize", [t], params=_requant_params(self.rng, self.env[t])) if requantize else t


def int8_case_from_seed(seed: int, max_layers: int = 3) -> Case:
    """The random int8 graph numbered ``seed``: quantize_input, int8 convolutions (requantized,
    some channels with ReLU, so that activations of both signs reach the next layer) and
    max-pools, then int8 dense layers to int32 class scores."""
    rng = np.random.default_rng(seed)
    choose = _Seeded(rng)
    shape = (choose.integer(1, 3), choose.integer(2, 10), choose.integer(2, 10))
    b = _Int8Builder(choose, rng, rng.integers(0, 256, (N_IMAGES, *shape), dtype=np.uint8))
    t = b.op("quantize_input", ["input"])
    if choose.choice(["conv", "conv", "conv", "dense"]) == "conv":
        t = b.int8_conv(t)
        for _ in range(choose.integer(0, max_layers)):
            t = b.int8_pool(t) if choose.boolean() else b.int8_conv(t)
    for _ in range(choose.integer(0, 2)):
        t = b.int8_dense(t, b.channels(), requantize=True)
    t = b.int8_dense(t, choose.integer(2, 12), requantize=False)
    b.op("argmax", [t])
    return Case(Graph(shape, b.ops), b.env["input"], seed)


# --- fixed-point graphs (the real-valued stream in q32) -----------------------------------------

Q_FRACTION = 16  # the raw values of the drawn q32 streams are about 2**16 (value ~1): far from both ends


def _mult_shift(rng: np.random.Generator, ratio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per channel a multiplier and shift with mult / 2**shift ~ ``ratio``: the shift drawn below the
    largest that keeps |mult| < 2**31 (ratios of 2**31 and more get shift 0 and saturate)."""
    top = np.floor(np.log2((2**31 - 1) / np.maximum(np.abs(ratio), 2.0**-40))).astype(np.int64)
    top = np.clip(top, 0, 62)
    shift = np.maximum(top - rng.integers(0, 12, len(ratio)), 0)
    mult = np.clip(np.round(ratio * 2.0**shift), -(2**31 - 1), 2**31 - 1)
    return mult.astype(np.int32), shift.astype(np.int32)


class _FixedBuilder(_Builder):
    """Binary layers as ``_Builder`` draws them, and a real-valued stream of the q32 ops."""

    def __init__(self, *args):
        super().__init__(*args)
        self.q: set[str] = set()

    def op(self, kind: str, inputs: list[str], attrs: dict | None = None, params: dict | None = None) -> str:
        name = super().op(kind, inputs, attrs, params)
        if kind in ("affine_q", "add_q", "prelu_q", "conv2d_q", "dense_q") or (
            kind in ("maxpool", "meanpool", "flatten") and inputs[0] in self.q
        ):
            self.q.add(name)
        return name

    def kind(self, name: str) -> str:
        return "q32" if name in self.q else super().kind(name)

    def sign(self, src: str) -> str:
        return self.threshold(src) if self.kind(src) in ("i32", "q32") else src

    def _spread(self, src: str) -> np.ndarray:
        x = self.env[src]
        return np.abs(np.moveaxis(x, 1, 0).reshape(x.shape[1], -1).astype(np.float64)).max(axis=1) + 1

    def real(self, src: str) -> str:
        """``affine_q``: each channel onto about +-2**16, a few far beyond (they saturate)."""
        c = self.env[src].shape[1]
        target = 2.0**Q_FRACTION * np.where(self.rng.random(c) < 0.05, 2.0**17, 1.0)
        ratio = target / self._spread(src) * self.rng.normal(1, 0.3, c) * self.rng.choice([1, -1], c, p=[0.8, 0.2])
        mult, shift = _mult_shift(self.rng, ratio)
        bias = np.round(self.rng.normal(0, 0.5, c) * 2.0**Q_FRACTION).astype(np.int32)
        return self.op("affine_q", [src], params={"mult": mult, "shift": shift, "bias": bias})

    affine = real

    def prelu(self, src: str) -> str:
        mult, shift = _mult_shift(self.rng, self.rng.normal(0.25, 0.5, self.env[src].shape[1]))
        return self.op("prelu_q", [src], params={"mult": mult, "shift": shift})

    def _q_layer(self, kind: str, src: str, weight_shape: tuple, attrs: dict) -> str:
        """A conv or dense layer with int32 weights (a few at the shape rule's bound) and the shift
        that brings its sums back to about 2**16."""
        fan_in = int(np.prod(weight_shape[1:]))
        bound = min(2**62 // (fan_in * (255 if self.kind(src) == "u8" else 2**31)), 2**31 - 1)
        scale = min(2.0 ** self.choose.integer(4, 14), bound)
        weight = np.clip(np.round(self.rng.normal(0, 1, weight_shape) * scale), -bound, bound)
        if self.choose.integer(0, 9) == 0:
            weight.flat[self.rng.integers(weight.size)] = bound * self.rng.choice([1, -1])
        o, weight = weight_shape[0], weight.astype(np.int32)
        params = {"weight": weight, "bias": np.zeros(o, np.int32), "shift": np.zeros(o, np.int32)}
        acc = numpy_ref._int64_sum(Op(kind, [src], "acc", attrs, params), self.env[src])
        top = np.abs(np.moveaxis(acc, 1, 0).reshape(o, -1)).max(axis=1).astype(np.float64) + 1
        params["shift"] = np.clip(np.ceil(np.log2(top)) - Q_FRACTION + self.rng.integers(-1, 2, o), 0, 62).astype(
            np.int32
        )
        params["bias"] = np.round(self.rng.normal(0, 0.3, o) * 2.0**Q_FRACTION).astype(np.int32)
        return self.op(kind, [src], attrs, params)

    def fp_conv(self, src: str) -> str:
        cin, h, w = self.env[src].shape[1:]
        g = self.conv_geometry(h, w)
        attrs = {"stride": g["stride"], "padding": g["padding"]}
        return self._q_layer("conv2d_q", src, (self.channels(), cin, g["k"], g["k"]), attrs)

    def fp_dense(self, src: str, out_features: int) -> str:
        if self.env[src].ndim > 2:
            src = self.op("flatten", [src])
        return self._q_layer("dense_q", src, (out_features, self.env[src].shape[1]), {})

    def real_residual(self, src: str) -> str:
        """x + affine_q(conv(threshold(x))): Bi-Real's block on the fixed-point stream."""
        k = self.choose.choice([1, 3])
        g = {"stride": 1, "padding": k // 2, "k": k}
        return self.op("add_q", [src, self.real(self.conv(self.threshold(src), self.env[src].shape[1], g))])


def fixed_case_from_seed(seed: int, max_layers: int = 4) -> Case:
    """The random fixed-point graph numbered ``seed``: a first layer (binary, or ``conv2d_q`` on the
    pixels), then binary layers and the q32 stream in any order (``affine_q`` from accumulators,
    ``threshold`` back to bits, ``prelu_q``, mean- and max-pools, ``conv2d_q``, residual
    ``add_q``), to class scores from ``dense_q``, a binary dense layer or the stream itself."""
    rng = np.random.default_rng(seed)
    choose = _Seeded(rng)
    shape = (choose.integer(1, 3), choose.integer(2, 10), choose.integer(2, 10))
    b = _FixedBuilder(choose, rng, rng.integers(0, 256, (N_IMAGES, *shape), dtype=np.uint8))
    t = b.conv("input") if choose.boolean() else b.fp_conv("input")
    moves = {
        "i32": ["threshold", "real", "real"],
        "bits": ["conv", "pool"],
        "q32": ["threshold", "prelu", "meanpool", "fp_conv", "real_residual", "real"],
    }
    for _ in range(choose.integer(0, max_layers)):
        t = getattr(b, choose.choice(moves[b.kind(t)]))(t)
    if b.kind(t) == "i32":
        t = b.real(t)
    head = choose.choice(["dense_q", "binary", "stream"])
    if head == "dense_q" and b.kind(t) == "q32":
        t = b.fp_dense(t, choose.integer(2, 12))
    elif head == "binary" or b.kind(t) != "q32":
        t = b.real(b.dense(b.sign(t), choose.integer(2, 12)))
    if b.env[t].ndim > 2:
        t = b.op("flatten", [t])
    b.op("argmax", [t])
    return Case(Graph(shape, b.ops), b.env["input"], seed)
