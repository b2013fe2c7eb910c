"""Code that shares nothing with the SensorFlow binaries, used to check them.

- Protobuf: encoded and decoded by hand from the field numbers in
  processors/core/proto/sensorflow/v1/messages.proto, not with prost.
- The window definition from scratch: mean, trapezoidal integral in value*s, derivative in
  value/s over a sliding event-time window, and uniform 10-bin binning.

Used by tests/independent (processes on the host) and tests/e2e (pods on a cluster).
"""

import math
import struct

WINDOW_MS = 600_000
RANGES = {"FA": (0.0, 5.0), "FI": (0.0, 3000.0), "FD": (-0.01, 0.01)}


# --- protobuf wire format, by hand -------------------------------------------------------
def varint(n):
    n &= (1 << 64) - 1  # int64 negatives are ten-byte two's complement
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def encode_reading(t_ms, value, sensor):
    # SensorReading: 1 event_time_ms (varint), 2 value (double), 3 sensor (enum)
    return (
        varint(1 << 3 | 0) + varint(t_ms)
        + varint(2 << 3 | 1) + struct.pack("<d", value)
        + varint(3 << 3 | 0) + varint(sensor)
    )


def decode(buf):
    """Field number -> list of raw values (int for varint, bytes for fixed64/len-delimited)."""
    fields, i = {}, 0
    while i < len(buf):
        key, i = read_varint(buf, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            v, i = read_varint(buf, i)
        elif wt == 1:
            v, i = buf[i:i + 8], i + 8
        elif wt == 2:
            n, i = read_varint(buf, i)
            v, i = buf[i:i + n], i + n
        elif wt == 5:
            v, i = buf[i:i + 4], i + 4
        else:
            raise ValueError(f"wire type {wt}")
        fields.setdefault(num, []).append(v)
    return fields


def read_varint(buf, i):
    shift = n = 0
    while True:
        b = buf[i]
        i += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return n, i


def signed(n):
    return n - (1 << 64) if n >= 1 << 63 else n


def packed_varints(raw_list):
    out = []
    for raw in raw_list:
        if isinstance(raw, int):
            out.append(signed(raw))
            continue
        i = 0
        while i < len(raw):
            v, i = read_varint(raw, i)
            out.append(signed(v))
    return out


def double(raw):
    return struct.unpack("<d", raw)[0]


def field_double(fields, num):
    """A double field; proto3 leaves 0.0 off the wire."""
    return double(fields[num][0]) if num in fields else 0.0


# --- the window definition, from scratch --------------------------------------------------
def expected_features(readings):
    """readings: [(t_ms, v)] of one client in order -> [(t, mean, integral_s, derivative_s)]."""
    out = []
    for k, (t, _) in enumerate(readings):
        w = [(tj, vj) for tj, vj in readings[: k + 1] if t - WINDOW_MS < tj <= t]
        mean = sum(v for _, v in w) / len(w)
        integral = sum((w[i][1] + w[i + 1][1]) / 2 * (w[i + 1][0] - w[i][0]) / 1000 for i in range(len(w) - 1))
        dt = (w[-1][0] - w[0][0]) / 1000
        deriv = (w[-1][1] - w[0][1]) / dt if dt else 0.0
        out.append((t, mean, integral, deriv))
    return out


def bin_of(x, lo, hi):
    return min(max(math.floor((x - lo) / (hi - lo) * 10), 0), 9)


def near(a, b):
    return abs(a - b) <= 1e-9 * (1 + max(abs(a), abs(b)))
