#!/usr/bin/env python3
"""Writes the seed corpus in tests/fuzz/corpus/{exact,idx}/ (checked in; rerun after changing the
input format of a fuzz target). Seeds are small on purpose: libFuzzer mutates from them."""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def write(kind, name, data):
    d = os.path.join(HERE, "corpus", kind)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# ---- IDX (parseIdx takes the decompressed bytes) ----------------------------------------------
def idx(code, dims, payload):
    return bytes([0, 0, code, len(dims)]) + b"".join(struct.pack(">I", d) for d in dims) + payload


write("idx", "valid-ubyte-1d", idx(0x08, [3], bytes([0, 127, 255])))
write("idx", "valid-ubyte-images", idx(0x08, [2, 2, 3], bytes(range(12))))
write("idx", "valid-sbyte", idx(0x09, [4], bytes([0x80, 0xFF, 0, 0x7F])))
write("idx", "valid-short", idx(0x0B, [2], struct.pack(">hh", -32768, 32767)))
write("idx", "valid-int", idx(0x0C, [1, 2], struct.pack(">ii", -(2**31), 2**31 - 1)))
write("idx", "valid-float", idx(0x0D, [3], struct.pack(">fff", 1.5, float("inf"), float("nan"))))
write("idx", "valid-double", idx(0x0E, [2], struct.pack(">dd", -0.0, 1e308)))
write("idx", "valid-empty-dim", idx(0x08, [0, 28, 28], b""))
write("idx", "bad-empty", b"")
write("idx", "bad-magic", b"\x1f\x8b\x08\x00" + bytes(8))
write("idx", "bad-type", idx(0x0A, [1], b"\x00"))
write("idx", "bad-no-dims", bytes([0, 0, 8, 0]))
write("idx", "bad-truncated-header", bytes([0, 0, 8, 3, 0, 0, 0, 2, 0, 0]))
write("idx", "bad-truncated-data", idx(0x0C, [4], struct.pack(">i", 7)))
write("idx", "bad-extra-data", idx(0x08, [1], b"\x01\x02"))
write("idx", "bad-huge-dims", idx(0x0E, [0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF], b""))
write("idx", "bad-huge-then-zero", idx(0x08, [0xFFFFFFFF, 0xFFFFFFFF, 0], b"\x00"))


# ---- exact (the program format is documented in fuzz_exact.cpp) -------------------------------
def u16(x):
    return struct.pack("<H", x & 0xFFFF)


def u32(x):
    return struct.pack("<I", x & 0xFFFFFFFF)


def u64(x):
    return struct.pack("<Q", x & 0xFFFFFFFFFFFFFFFF)


def ratio_program(mode, n, block, values, ops):
    """values: (kind, small, extra bytes); ops: raw op bytes."""
    out = bytes([mode, n - 1, block - 1])
    for kind, small, extra in values:
        out += bytes([kind]) + u16(small) + extra
    return out + b"".join(ops)


def multiply(floor, runs):  # op code: kind 0 (multiply), bit 2 = floor rounding
    return bytes([0 | (4 if floor else 0)]) + runs


def divide(floor, runs):
    return bytes([1 | (4 if floor else 0)]) + runs


def one_numerator(n):  # runs kind 0, numerator kind 5 (1 + u32 % d)
    return bytes([0, 5]) + u32(n - 1)


def add_small(count, mantissas, exponent):  # op kind 2, bit 3 clear: mantissa * 2^(e - R)
    return bytes([2]) + b"".join(u32(m) + bytes([exponent]) for m in mantissas[:count])


edge_values = [(0, 0, u64(0x123456789ABCDEF)), (1, 3, b""), (2, 5, b""), (3, 7, b""), (4, 9, b""), (5, 200, b""),
               (6, 0, u32(0xDEADBEEF)), (0, 0, u64(-(2**63)))]
for mode in range(4):
    gamma = [58982, 200, 950000, 4000][mode]  # ~0.9 of each denominator (2^16, 2^8, 2^20, 2^12)
    write("exact", f"ratio{mode}-bitsback", ratio_program(
        mode, 8, 3, edge_values, [multiply(False, one_numerator(gamma)), add_small(8, list(range(1, 9)), 40),
                                  multiply(False, one_numerator(gamma)), divide(False, one_numerator(gamma))]))
    write("exact", f"ratio{mode}-floor-per-element", ratio_program(
        mode, 4, 4, edge_values[1:5],
        [multiply(True, bytes([1, 5]) + u32(gamma) + bytes([1]) + bytes([2, 5]) + u32(3) + bytes([0, 1])),
         divide(True, one_numerator(1))]))
write("exact", "ratio0-invalid-numerators", ratio_program(
    0, 2, 1, edge_values[5:7], [multiply(False, bytes([0, 0]) + u32(0)), multiply(False, bytes([0, 4])),
                                divide(True, bytes([0, 0]) + u32(0xFFFFFFFF)), multiply(False, bytes([3, 2, 0, 5, 1]))]))


def buffer_program(mode, n, block, ops):
    return bytes([mode, n - 1, block - 1]) + b"".join(ops)


for mode in range(4, 10):
    ops = []
    for e in range(4):
        ops.append(bytes([0 | (7 << 2), e, 16]) + b"".join(u32(0x9E3779B9 * (e + r)) for r in range(8)))  # pushPow2 x8
        ops.append(bytes([3, e, 7]) + u32(123457))                                                     # popUniform
        ops.append(bytes([2 | (3 << 2) | (1 << 5), e, 2]) + b"".join(u32(r) for r in range(4)))        # pushUniform M/2
        ops.append(bytes([1, e, 5]))                                                                   # popPow2
    write("exact", f"buffer{mode}", buffer_program(mode, 4, 2, ops))
    write("exact", f"buffer{mode}-pops-first", buffer_program(mode, 2, 1, [bytes([3, 0, 6]), bytes([1, 1, 31])]))


# ---- exact: optimizer programs (first byte >= 128; byte % 3 picks the instantiation) -----------
OPT_DEFAULT, OPT_FLOOR40, OPT_Q62 = 129, 130, 128  # SgdMomentum<>, FloorRounding Q23.40, Q1.62 d=2^8


def f64(x):
    return struct.pack("<d", x)


def moderate(x):
    """anyDouble kind 4: scale * int16 / 32768 (x in [-1, 1) of the scale)."""
    return bytes([4]) + u16(int(round(x * 32768)))


def raw_double(x):
    """anyDouble kind 0: any bit pattern."""
    return bytes([0]) + f64(x)


def momentum(g):
    """anyMomentum kind 6: (1 + u16) / 65537."""
    return bytes([6]) + u16(int(round(g * 65537)) - 1)


def optimizer_program(kind, n, group_sizes, block, alphas, gammas, start, ops):
    """alphas, gammas: T rows of per-group encoded entries; start: start mode byte + payload."""
    out = bytes([kind, n - 1, len(group_sizes) - 1])
    offset = 0
    for k, size in enumerate(group_sizes[:-1]):
        out += bytes([size - 1])  # 1 + u8 % left
        offset += size
    out += bytes([block - 1, len(alphas) - 1])
    for arow, grow in zip(alphas, gammas):
        for a, g in zip(arow, grow):
            out += a + g
    return out + start + b"".join(ops)


def doubles_start(w, v):  # mode 2: from doubles, weights and velocity
    return bytes([2]) + b"".join(moderate(x) for x in w) + b"".join(moderate(x) for x in v)


def step(values):  # op 0: stepWithGradient, anyDouble(scale 4) entries
    return bytes([0]) + b"".join(values)


UNSTEP_WEIGHTS, RESTEP_WEIGHTS, UNSTEP_STATE = bytes([2]), bytes([3]), bytes([4])


def unstep_perturbed(kind, index):  # op 5
    return bytes([5, kind, index])


def restart_bad(which, index):  # op 6
    return bytes([6, which, index])


def healthy_ops(n, steps):
    ops = [step([moderate(0.1 * ((i * 7 + t) % 9 - 4)) for i in range(n)]) for t in range(steps)]
    ops += [UNSTEP_WEIGHTS, RESTEP_WEIGHTS, UNSTEP_WEIGHTS, unstep_perturbed(2, 1), UNSTEP_STATE,
            restart_bad(1, 0), UNSTEP_WEIGHTS, unstep_perturbed(5, 0), unstep_perturbed(0, 3), UNSTEP_STATE]
    return ops


T6 = 6
for kind, name in [(OPT_DEFAULT, "default"), (OPT_FLOOR40, "floor40"), (OPT_Q62, "q62")]:
    alphas = [[moderate(0.3), moderate(0.2)] for _ in range(T6)]
    gammas = [[momentum(0.9), momentum(0.05)] for _ in range(T6)]
    w = [0.9 * (i / 7 - 0.5) for i in range(8)]
    v = [0.1 * (0.5 - i / 7) for i in range(8)]
    write("exact", f"optimizer-{name}-cycle",
          optimizer_program(kind, 8, [5, 3], 3, alphas, gammas, doubles_start(w, v), healthy_ops(8, T6)))
# Construction must throw InvalidArgument: a NaN learning rate, gamma 0, gamma just above 1.
write("exact", "optimizer-default-nan-alpha", optimizer_program(
    OPT_DEFAULT, 2, [2], 1, [[raw_double(float("nan"))]], [[momentum(0.9)]], b"", []))
write("exact", "optimizer-default-gamma-zero", optimizer_program(
    OPT_DEFAULT, 2, [2], 1, [[moderate(0.1)]], [[bytes([2 | 0x80])]], b"", []))
write("exact", "optimizer-q62-gamma-above-one", optimizer_program(
    OPT_Q62, 3, [1, 2], 2, [[moderate(0.1), moderate(0.1)]], [[momentum(0.5), bytes([3, 20])]], b"", []))
# A start from raw fixed vectors: weights at the edges of the int64 range, a small velocity; a step
# with g = 0 and alpha = 0 (gamma only: the multiply near INT64_MIN / INT64_MAX), then one that overflows.
edge = [(1, 3, b""), (2, 5, b""), (3, 7, b""), (4, 9, b""), (1, 0, b""), (2, 0, b"")]
small = [(5, 200, b""), (6, 0, u32(0xDEADBEEF)), (5, 3, b""), (6, 0, u32(12345)), (5, 250, b""), (5, 1, b"")]
raw = bytes([3]) + b"".join(bytes([k]) + u16(x) + e for k, x, e in edge + small)
write("exact", "optimizer-default-raw-start", optimizer_program(
    OPT_DEFAULT, 6, [3, 3], 4, [[bytes([1]), bytes([1])]] * 3, [[momentum(0.7), momentum(0.3)]] * 3, raw,
    [step([bytes([1])] * 6), step([raw_double(1e300)] + [bytes([1])] * 5), step([moderate(0.5)] * 6),
     UNSTEP_WEIGHTS, UNSTEP_STATE]))
# Bad gradients: NaN, infinity, huge, wrong size (an op code % 7 in {0, 1} with the high nibble set:
# 0xF5 one entry short, 0xFD one too many).
bad_steps = [step([moderate(0.2)] * 3 + [raw_double(float("nan"))]),
             step([raw_double(float("-inf"))] + [moderate(0.2)] * 3),
             step([raw_double(1e300)] * 4),
             bytes([0xF5]) + b"".join(moderate(0.1) for _ in range(3)),
             bytes([0xFD]) + b"".join(moderate(0.1) for _ in range(5)),
             step([moderate(0.3)] * 4), UNSTEP_WEIGHTS, unstep_perturbed(0x85, 9), UNSTEP_STATE]
write("exact", "optimizer-floor40-bad-gradients", optimizer_program(
    OPT_FLOOR40, 4, [1, 1, 1, 1], 5, [[moderate(0.25)] * 4] * 2, [[momentum(0.9), momentum(1.0), bytes([1]), bytes([4, 9])]] * 2,
    doubles_start([0.5, -0.5, 0.25, 0.0], [0.0] * 4), bad_steps))
