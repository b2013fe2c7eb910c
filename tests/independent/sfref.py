"""Code that shares nothing with the SensorFlow binaries, used to check them.

- Protobuf: encoded and decoded by hand in tests/lib/sfproto.py (from the field numbers in
  processors/core/proto/sensorflow/v1/messages.proto), not with prost.
- The window definition from scratch, exactly: FA = math.fsum(values) / n (the exact sum
  rounded once, then divided; a one-reading window is its reading), FI = the exact rational
  sum of (v_i + v_{i+1}) * (t_{i+1} - t_i) / 2000 rounded once (fractions.Fraction; float()
  of a Fraction is correctly rounded), FD = (v_last - v_first) / (dt_ms * 0.001) in double
  arithmetic; so the pipeline's values must be equal bit for bit, not just close.
- The aligned windows (tumbling, hopping, global), from their definition: epoch-aligned
  windows [k*A, k*A + S) holding a reading at t, created by their first reading; watermark =
  max event time - grace per partition or per client, a reading with t < watermark is late and
  joins no window; a window [s, e) closes once the watermark is >= e. Emission per record (the
  updated aggregates of every window holding the reading, start order, stamped with the
  window's newest reading time) or final (each window once when it closes, stamped e - 1, in
  the order (e, s, client)). Aggregates: count, sum (exact, rounded once), mean, min, max,
  integral, derivative, over the window's readings sorted by (t, arrival).
- The join's as-of lookup: for a trigger at t, the latest value of another input with event
  time <= t (ties: larger offset; triples: larger SZ partition/offset), unused when older than
  t - max staleness.

Used by tests/independent (processes on the host) and tests/e2e (pods on a cluster).
"""

import bisect
import math
from fractions import Fraction

WINDOW_MS = 600_000
MAX_STALENESS_MS = 600_000
RANGES = {"FA": (0.0, 5.0), "FI": (0.0, 3000.0), "FD": (-0.01, 0.01)}


# --- the window definition, from scratch --------------------------------------------------
def expected_features(readings):
    """readings: [(t_ms, v)] of one client in order -> [(t, mean, integral_s, derivative_s)]."""
    out = []
    for k, (t, _) in enumerate(readings):
        w = [(tj, vj) for tj, vj in readings[: k + 1] if t - WINDOW_MS < tj <= t]
        out.append((t,) + window_aggregates(w))
    return out


def window_aggregates(w):
    """(mean, integral_s, derivative_s) of one window [(t_ms, v)] sorted by time, exactly as
    defined above (bit for bit what the window-processor must emit)."""
    if len(w) == 1:
        return w[0][1], 0.0, 0.0
    mean = math.fsum(v for _, v in w) / len(w)
    area = sum(((Fraction(w[i][1]) + Fraction(w[i + 1][1])) * (w[i + 1][0] - w[i][0]) for i in range(len(w) - 1)), Fraction(0))
    integral = float(area / 2000)
    dt = w[-1][0] - w[0][0]
    deriv = (w[-1][1] - w[0][1]) / (dt * 0.001) if dt else 0.0
    return mean, integral, deriv


# --- aligned windows: tumbling, hopping, global ------------------------------------------
INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1
AGGREGATES = ("Count", "Sum", "Mean", "Min", "Max", "Integral", "Derivative")


def aggregate(name, w):
    """One aggregate of a window w = [(t_ms, v)] sorted by (t, arrival), exactly: Count (as a
    float), Sum (the exact rational sum rounded once), Mean, Min, Max, Integral (value*s),
    Derivative (value/s)."""
    if name == "Count":
        return float(len(w))
    if name == "Sum":
        return float(sum((Fraction(v) for _, v in w), Fraction(0)))
    if name == "Min":
        return min(v for _, v in w)
    if name == "Max":
        return max(v for _, v in w)
    mean, integral, deriv = window_aggregates(w)
    return {"Mean": mean, "Integral": integral, "Derivative": deriv}[name]


def windows_of(t, kind, size_ms, advance_ms):
    """The windows [(start, end)] holding a reading at t, in start order."""
    if kind == "Global":
        return [(INT64_MIN, INT64_MAX)]
    a = size_ms if kind == "Tumbling" else advance_ms
    # k*a <= t < k*a + size  <=>  (t - size) / a < k <= t / a
    return [(k * a, k * a + size_ms) for k in range((t - size_ms) // a + 1, t // a + 1)]


def aligned_outcomes(records, kind, size_ms, advance_ms=None, emit="PerRecord", grace_ms=0, scope="partition"):
    """The window-processor's outcome of each SZ reading under an aligned window, from the
    definition. records: [(partition, offset, client, t_ms, v)] in each partition's arrival
    order (partitions independent; any interleaving of them). Returns {(partition, offset):
    "late" or [emission]}, an emission being a dict with client, start, end, time (event
    time), count and window (its readings [(t, v)] sorted by (t, arrival)) in emission order
    (the list index is the Feature's source_index)."""
    assert kind in ("Tumbling", "Hopping", "Global") and emit in ("PerRecord", "Final")
    assert scope in ("partition", "client") and not (kind == "Global" and emit == "Final")
    out = {}
    maxt = {}  # watermark key -> max event time accepted
    open_w = {}  # partition -> {(client, start, end): [(t, arrival, v)]}
    for arrival, (p, off, client, t, v) in enumerate(records):
        wkey = (p, client) if scope == "client" else p
        if wkey in maxt and t < maxt[wkey] - grace_ms:
            out[(p, off)] = "late"
            continue
        maxt[wkey] = max(maxt.get(wkey, t), t)
        wins = open_w.setdefault(p, {})
        ems = []
        for s, e in windows_of(t, kind, size_ms, advance_ms):
            rows = wins.setdefault((client, s, e), [])
            rows.append((t, arrival, v))
            if emit == "PerRecord":
                ems.append(_emission(client, s, e, rows, max(r[0] for r in rows)))
        if emit == "Final":
            closing = []
            for (c, s, e), rows in wins.items():
                wm_key = (p, c) if scope == "client" else p
                if c == client or scope == "partition":
                    if maxt[wm_key] - grace_ms >= e:
                        closing.append((e, s, c))
            for e, s, c in sorted(closing):
                ems.append(_emission(c, s, e, wins.pop((c, s, e)), e - 1))
        out[(p, off)] = ems
    return out


def _emission(client, start, end, rows, time):
    w = [(t, v) for t, _, v in sorted(rows)]
    return {"client": client, "start": start, "end": end, "time": time, "count": len(w), "window": w}


class AsOf:
    """Values of one input per client for as-of lookups: add(client, t, tie, value), then
    at(client, t) -> (t', value) of the latest with t' <= t (largest tie among equal times)."""

    def __init__(self):
        self.by = {}

    def add(self, client, t, tie, value):
        self.by.setdefault(client, []).append(((t, tie), value))

    def at(self, client, t):
        rows = self.by.get(client)
        if not rows:
            return None
        if not getattr(self, "_sorted", False):
            for r in self.by.values():
                r.sort(key=lambda x: x[0])
            self._sorted = True
        i = bisect.bisect_right(rows, t, key=lambda x: x[0][0])
        if i == 0:
            return None
        (tt, _), v = rows[i - 1]
        return tt, v


def expected_vector(trigger, t, own, client, sx, sy, triples, staleness_ms=MAX_STALENESS_MS):
    """The join's [SX, SY, FA, FI, FD] for a trigger ('sx', 'sy' or 'features') at t whose own
    value is `own` (SX/SY value, or the triple's ((sz_partition, sz_offset), bins)), from the
    AsOf stores sx, sy (values) and triples (((p, o), bins)); None when an input is missing or
    older than t - staleness (no prediction then). Returns (vector, triple source)."""
    def pick(kind, store):
        if trigger == kind:
            return t, own
        return store.at(client, t)

    got = [pick("sx", sx), pick("sy", sy), pick("features", triples)]
    if any(g is None or g[0] < t - staleness_ms for g in got):
        return None
    source, bins = got[2][1]
    return [got[0][1], got[1][1]] + list(bins), source


def bin_of(x, lo, hi):
    return min(max(math.floor((x - lo) / (hi - lo) * 10), 0), 9)


def near(a, b):
    return abs(a - b) <= 1e-9 * (1 + max(abs(a), abs(b)))
