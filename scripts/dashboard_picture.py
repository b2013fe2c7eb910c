"""The Grafana dashboard of the chart (charts/sensorflow-operator/dashboards/sensorflow.json) as a
PNG, from a real run: run by scripts/dashboard-picture.sh (not by CI).

It starts the real processors on the host against a real Apache Kafka broker (two
window-processor members, join-predict, gcs-sink with a local directory; ExactlyOnce), replays
real household data at a paced rate, produces a few malformed records, kill -9s one window
member mid-stream and restarts it, and scrapes every process's /metrics every SCRAPE_S
seconds, as Prometheus would. Each panel's PromQL is then evaluated over those scrapes by the
small evaluator below (the subset of PromQL the dashboard uses: sum/max by, rate, increase,
histogram_quantile, time(), binary - and /) and drawn where the dashboard places it (gridPos).
Each scrape target gets the labels the chart's ServiceMonitor gives it (namespace, pipeline,
stage, pod). Panels whose metrics no process of this run exposes (the operator's, and
kube-state-metrics' restarts) say "no data", as Grafana would.
"""

import argparse
import json
import math
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

SCRAPE_S = 2.0
# Grafana's $__rate_interval: four scrape intervals at least.
RATE_WINDOW_S = 4 * SCRAPE_S
NAMESPACE, PIPELINE = "demo", "demo"


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --- scraping ---------------------------------------------------------------------------------
LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text, target_labels):
    """Prometheus text exposition → {(name, frozenset(labels)): value}."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = LINE.match(line)
        if not m:
            continue
        labels = dict(LABEL.findall(m.group(3) or ""))
        labels.update(target_labels)
        try:
            v = float(m.group(4))
        except ValueError:
            continue
        out[(m.group(1), frozenset(labels.items()))] = v
    return out


class Scraper(threading.Thread):
    """Scrapes every target every SCRAPE_S; a target that does not answer (a killed process)
    has no samples for that time, as in Prometheus."""

    def __init__(self, targets):
        super().__init__(daemon=True)
        self.targets = targets  # [(url, labels)]
        self.samples = []  # [(t, {key: value})]
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            t = time.time()
            snap = {}
            for url, labels in self.targets:
                try:
                    with urllib.request.urlopen(url, timeout=1.5) as r:
                        snap.update(parse_metrics(r.read().decode(), labels))
                except OSError:
                    pass
            self.samples.append((t, snap))
            self.stop.wait(max(0.0, SCRAPE_S - (time.time() - t)))


# --- a PromQL subset --------------------------------------------------------------------------
TOKEN = re.compile(r'\s*(?:(\d+\.?\d*)|([a-zA-Z_:][a-zA-Z0-9_:]*)|(\{[^}]*\})|(\[[^\]]*\])|("[^"]*")|(.))')


def tokens(expr):
    out, i = [], 0
    while i < len(expr):
        m = TOKEN.match(expr, i)
        if not m or m.end() == i:
            break
        i = m.end()
        num, ident, sel, rng, s, ch = m.groups()
        if num:
            out.append(("num", float(num)))
        elif ident:
            out.append(("id", ident))
        elif sel:
            out.append(("sel", sel))
        elif rng:
            out.append(("range", rng))
        elif s:
            out.append(("str", s))
        elif ch and not ch.isspace():
            out.append(("ch", ch))
    return out


def duration_s(rng):
    m = re.fullmatch(r"\[(\d+)([smh])\]", rng)
    if not m:  # $__rate_interval
        return RATE_WINDOW_S
    return int(m.group(1)) * {"s": 1, "m": 60, "h": 3600}[m.group(2)]


def matchers(sel):
    """{label: regex} of a selector's =~ and = matchers; "$variable" ones match everything."""
    out = {}
    for lab, op, val in re.findall(r'(\w+)\s*(=~|!=|=)\s*"([^"]*)"', sel or ""):
        if "$" in val or op == "!=":
            continue
        out[lab] = val if op == "=~" else re.escape(val)
    return out


class Eval:
    """Evaluates an expression at every scrape time: a vector is {labels: np.array over time}
    (NaN where a series has no sample), a scalar a float or an array."""

    def __init__(self, samples):
        self.t = np.array([t for t, _ in samples])
        self.samples = samples

    def parse(self, expr):
        self.toks, self.i = tokens(expr), 0
        v = self.expr()
        return v

    def peek(self):
        return self.toks[self.i] if self.i < len(self.toks) else (None, None)

    def take(self, want=None):
        tok = self.toks[self.i]
        self.i += 1
        if want and tok[1] != want:
            raise ValueError(f"expected {want}, got {tok}")
        return tok

    def expr(self):
        left = self.term()
        while self.peek() in (("ch", "/"), ("ch", "-")):
            op = self.take()[1]
            left = binary(left, self.term(), op)
        return left

    def term(self):
        kind, val = self.peek()
        if kind == "num":
            self.take()
            return val
        if kind == "ch" and val == "(":
            self.take()
            v = self.expr()
            self.take(")")
            return v
        if kind == "id" and val == "time":
            self.take(), self.take("("), self.take(")")
            return self.t.copy()
        if kind == "id" and val in ("sum", "max"):
            self.take()
            by = None
            if self.peek() == ("id", "by"):
                self.take(), self.take("(")
                by = []
                while self.peek() != ("ch", ")"):
                    k, v = self.take()
                    if k == "id":
                        by.append(v)
                self.take(")")
            self.take("(")
            inner = self.expr()
            self.take(")")
            return aggregate(inner, by, np.nansum if val == "sum" else np.nanmax)
        if kind == "id" and val in ("rate", "increase"):
            self.take(), self.take("(")
            vec = self.selector()
            w = duration_s(self.take()[1])
            self.take(")")
            return {k: rate(self.t, s, w) * (w if val == "increase" else 1) for k, s in vec.items()}
        if kind == "id" and val == "histogram_quantile":
            self.take(), self.take("(")
            q = self.take()[1]
            self.take(",")
            vec = self.expr()
            self.take(")")
            return quantile(q, vec)
        return self.selector()

    def selector(self):
        name = self.take()[1]
        sel = self.take()[1] if self.peek()[0] == "sel" else ""
        want = matchers(sel)
        series = {}
        for j, (_, snap) in enumerate(self.samples):
            for (n, labels), v in snap.items():
                if n != name:
                    continue
                d = dict(labels)
                if all(re.fullmatch(rx, d.get(lab, "")) for lab, rx in want.items()):
                    series.setdefault(labels, np.full(len(self.samples), np.nan))[j] = v
        return series


def rate(t, s, w):
    """Per-second increase over the last `w` seconds (counter resets count from 0, as in
    Prometheus; NaN where the window holds fewer than two samples)."""
    out = np.full(len(t), np.nan)
    for j in range(len(t)):
        idx = [k for k in range(j + 1) if t[j] - t[k] <= w and not math.isnan(s[k])]
        if len(idx) < 2:
            continue
        inc = 0.0
        for a, b in zip(idx, idx[1:]):
            inc += s[b] - s[a] if s[b] >= s[a] else s[b]
        span = t[idx[-1]] - t[idx[0]]
        out[j] = inc / span if span > 0 else np.nan
    return out


def aggregate(vec, by, fn):
    groups = {}
    for labels, s in vec.items():
        d = dict(labels)
        key = frozenset((k, d.get(k, "")) for k in (by or []))
        groups.setdefault(key, []).append(s)
    out = {}
    for key, ss in groups.items():
        arr = np.vstack(ss)
        with np.errstate(all="ignore"), __import__("warnings").catch_warnings():
            __import__("warnings").simplefilter("ignore")
            v = fn(arr, axis=0)
        v[np.all(np.isnan(arr), axis=0)] = np.nan
        out[key] = v
    return out


def quantile(q, vec):
    """histogram_quantile: linear interpolation inside the bucket holding rank q·count."""
    groups = {}
    for labels, s in vec.items():
        d = dict(labels)
        le = float(d.pop("le", "nan").replace("+Inf", "inf"))
        groups.setdefault(frozenset(d.items()), []).append((le, s))
    out = {}
    for key, buckets in groups.items():
        buckets.sort(key=lambda b: b[0])
        n = len(buckets[0][1])
        res = np.full(n, np.nan)
        for j in range(n):
            bs = [(le, s[j]) for le, s in buckets if not math.isnan(s[j])]
            if not bs or bs[-1][1] <= 0:
                continue
            rank = q * bs[-1][1]
            prev_le, prev_c = 0.0, 0.0
            for le, c in bs:
                if c >= rank:
                    if math.isinf(le):
                        res[j] = prev_le
                    else:
                        res[j] = prev_le + (le - prev_le) * ((rank - prev_c) / (c - prev_c) if c > prev_c else 0)
                    break
                prev_le, prev_c = le, c
        out[key] = res
    return out


def binary(a, b, op):
    f = (lambda x, y: x / y) if op == "/" else (lambda x, y: x - y)
    with np.errstate(all="ignore"):
        if isinstance(a, dict) and isinstance(b, dict):
            return {k: f(a[k], b[k]) for k in a if k in b}
        if isinstance(a, dict):
            return {k: f(v, b) for k, v in a.items()}
        if isinstance(b, dict):
            return {k: f(a, v) for k, v in b.items()}
        return f(a, b)


# --- the run ----------------------------------------------------------------------------------
def start(cmd, env, log_path):
    f = open(log_path, "ab")
    return subprocess.Popen(cmd, env={**os.environ, **env}, stdout=f, stderr=f)


def run_pipeline(args):
    """Starts the processors and the replay, injects the faults, returns the scrapes."""
    b = args.bin
    common = {"KAFKA_BOOTSTRAP_SERVERS": args.bootstrap, "RUST_LOG": "info"}
    logs = os.path.join(args.work, "logs")
    os.makedirs(logs, exist_ok=True)
    subprocess.run([f"{b}/sensorflow", "create-topics", "--partitions", str(args.partitions), "--replication", "1"],
                   env={**os.environ, **common}, check=True)
    port = args.metrics_port
    procs, targets = {}, []

    def proc_env(name, stage, extra=None):
        nonlocal port
        addr = f"127.0.0.1:{port}"
        port += 1
        targets.append((f"http://{addr}/metrics",
                        {"namespace": NAMESPACE, "pipeline": PIPELINE, "stage": stage, "pod": name}))
        return {**common, "SF_METRICS_ADDR": addr, **(extra or {})}

    eo = {"SF_EXACTLY_ONCE": "true"}
    envs = {
        "demo-window-0": ("window-processor", proc_env("demo-window-0", "window", {**eo, "SF_TRANSACTIONAL_ID": "picture-window-0"})),
        "demo-window-1": ("window-processor", proc_env("demo-window-1", "window", {**eo, "SF_TRANSACTIONAL_ID": "picture-window-1"})),
        "demo-join-0": ("join-predict", proc_env("demo-join-0", "join", {**eo, "SF_TRANSACTIONAL_ID": "picture-join-0"})),
        "demo-sink-0": ("gcs-sink", proc_env("demo-sink-0", "sink")),
    }
    for name, (binary_, env) in envs.items():
        cmd = [f"{b}/{binary_}"]
        if binary_ == "gcs-sink":
            cmd += ["--local-dir", os.path.join(args.work, "parquet"), "--max-age-seconds", "5"]
        procs[name] = start(cmd, env, os.path.join(logs, f"{name}.log"))
    scraper = Scraper(targets)
    scraper.start()
    t0 = time.time()
    log(f"processors started; scraping {len(targets)} targets every {SCRAPE_S} s")
    time.sleep(10)
    replay = start([f"{b}/replay", "--bootstrap-servers", args.bootstrap, "--input", args.input,
                    "--clients", str(args.clients), "--rows-per-client", "1440", "--base-date", "2026-01-01",
                    "--speed", str(args.speed)], {}, os.path.join(logs, "replay.log"))
    # Malformed records (not protobuf) on SZ, every few seconds: dead-lettered with their reason.
    from kafka import KafkaProducer
    producer = KafkaProducer(bootstrap_servers=args.bootstrap)
    kill_at, restart_at = t0 + args.duration * 0.45, t0 + args.duration * 0.55
    killed = False
    while replay.poll() is None and time.time() - t0 < args.duration:
        for k in range(5):
            producer.send("SZ", key=f"client-{k}".encode(), value=b"\xff\x00not a reading")
        producer.flush()
        now = time.time()
        if not killed and now >= kill_at:
            procs["demo-window-1"].send_signal(signal.SIGKILL)
            procs["demo-window-1"].wait()
            killed = True
            log(f"{now - t0:.0f} s: kill -9 demo-window-1")
        if killed and restart_at and now >= restart_at:
            binary_, env = envs["demo-window-1"]
            procs["demo-window-1"] = start([f"{b}/{binary_}"], env, os.path.join(logs, "demo-window-1.log"))
            restart_at = None
            log(f"{now - t0:.0f} s: demo-window-1 restarted")
        time.sleep(3)
    replay.wait(timeout=600)
    log(f"{time.time() - t0:.0f} s: replay done; draining")
    time.sleep(args.tail)
    scraper.stop.set()
    scraper.join(timeout=10)
    for p in procs.values():
        p.send_signal(signal.SIGTERM)
    for p in procs.values():
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
    producer.close()
    return scraper.samples


# --- drawing ----------------------------------------------------------------------------------
def fmt(v, unit):
    if v is None or math.isnan(v):
        return "no data"
    if unit == "percentunit":
        return f"{v * 100:.2f}%"
    if unit == "s":
        return f"{v * 1000:.0f} ms" if v < 1 else f"{v:.1f} s"
    if unit == "bytes":
        for u in ["B", "KiB", "MiB", "GiB"]:
            if abs(v) < 1024:
                return f"{v:.0f} {u}"
            v /= 1024
        return f"{v:.1f} TiB"
    if abs(v) >= 1000:
        return f"{v / 1000:.1f}k"
    return f"{v:.3g}"


def legend(fmt_, labels):
    if not fmt_:
        return ", ".join(f"{k}={v}" for k, v in sorted(labels)) or "value"
    d = dict(labels)
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: d.get(m.group(1), ""), fmt_)


def draw(dashboard, samples, out, note):
    ev = Eval(samples)
    t_rel = ev.t - ev.t[0]
    panels = dashboard["panels"]
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    unit_h = 0.42  # inches per grid row
    head = 1.5  # inches above the grid: title and note
    height = rows * unit_h + head
    fig = plt.figure(figsize=(24, height), dpi=72)
    fig.patch.set_facecolor("#111217")
    top = 1 - head / height

    def box(gp):
        x0 = gp["x"] / 24 + 0.004
        w = gp["w"] / 24 - 0.008
        h = (gp["h"] / rows) * top
        y0 = top - (gp["y"] / rows) * top - h
        return [x0 + 0.01 * w, y0 + 0.12 * h, w * 0.97, h * 0.74]

    fig.text(0.006, 1 - 0.35 / height, dashboard.get("title", "dashboard"), color="white",
             fontsize=20, weight="bold", va="center")
    fig.text(0.006, 1 - 0.65 / height, "\n".join(textwrap.wrap(note, 230)), color="#9fa7b3", fontsize=11, va="top")
    for p in panels:
        gp = p["gridPos"]
        if p["type"] == "row":
            y = top - (gp["y"] / rows) * top - 0.5 * (1 / rows) * top
            fig.text(0.006, y, p["title"], color="#d8d9da", fontsize=13, weight="bold", va="center")
            continue
        ax = fig.add_axes(box(gp))
        ax.set_facecolor("#181b1f")
        unit = p.get("fieldConfig", {}).get("defaults", {}).get("unit", "")
        ax.set_title(p["title"], color="#d8d9da", fontsize=11, loc="left")
        results = []
        for tgt in p.get("targets", []):
            try:
                v = ev.parse(tgt["expr"])
            except (ValueError, IndexError, KeyError) as e:
                log(f"panel {p['title']}: cannot evaluate {tgt['expr']!r}: {e}")
                v = {}
            if not isinstance(v, dict):
                v = {frozenset(): v}
            results += [(legend(tgt.get("legendFormat"), k), s) for k, s in v.items() if np.any(~np.isnan(s))]
        for s in ax.spines.values():
            s.set_color("#2c3235")
        ax.tick_params(colors="#9fa7b3", labelsize=8)
        if p["type"] == "stat":
            ax.set_xticks([]), ax.set_yticks([])
            last = None
            if results:
                s = results[0][1]
                ok = s[~np.isnan(s)]
                last = float(ok[-1]) if len(ok) else None
            ax.text(0.5, 0.45, fmt(last, unit), color="#73bf69" if last is not None else "#9fa7b3",
                    fontsize=26, ha="center", va="center", transform=ax.transAxes, weight="bold")
            continue
        if not results:
            ax.text(0.5, 0.5, "no data", color="#9fa7b3", fontsize=12, ha="center", va="center", transform=ax.transAxes)
            ax.set_xticks([]), ax.set_yticks([])
            continue
        for name, s in sorted(results, key=lambda r: r[0])[:10]:
            ax.plot(t_rel, s, lw=1.4, label=name)
        ax.set_xlabel("s since start", color="#9fa7b3", fontsize=8)
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: fmt(v, unit)))
        ax.grid(color="#2c3235", lw=0.5)
        ax.legend(fontsize=7, loc="upper right", facecolor="#181b1f", edgecolor="#2c3235", labelcolor="#d8d9da")
    fig.savefig(out, facecolor=fig.get_facecolor())
    log(f"wrote {out}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", required=True, help="directory of the release binaries")
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--input", required=True, help="the household dataset (data/household_power.csv.xz)")
    ap.add_argument("--work", required=True)
    ap.add_argument("--dashboard", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--metrics-port", type=int, default=19510, help="first of four /metrics ports")
    ap.add_argument("--partitions", type=int, default=12)
    ap.add_argument("--clients", type=int, default=24)
    ap.add_argument("--speed", type=int, default=720, help="event-seconds per wall-second")
    ap.add_argument("--duration", type=float, default=150, help="seconds of replay at most")
    ap.add_argument("--tail", type=float, default=20, help="seconds scraped after the replay")
    ap.add_argument("--samples", help="reuse the scrapes saved by an earlier run (JSON) instead of running")
    a = ap.parse_args()
    with open(a.dashboard) as f:
        dashboard = json.load(f)
    saved = os.path.join(a.work, "scrapes.json")
    if a.samples:
        with open(a.samples) as f:
            samples = [(t, {(n, frozenset(map(tuple, ls))): v for n, ls, v in snap}) for t, snap in json.load(f)]
    else:
        samples = run_pipeline(a)
        with open(saved, "w") as f:
            json.dump([(t, [(n, sorted(ls), v) for (n, ls), v in snap.items()]) for t, snap in samples], f)
    note = (f"rendered from a real run ({time.strftime('%Y-%m-%d', time.gmtime(samples[0][0]))}): window-processor x2, "
            f"join-predict, gcs-sink on Apache Kafka, ExactlyOnce, {a.clients} clients paced at {a.speed}x, "
            "malformed records on SZ, one window member kill -9ed and restarted; every panel's PromQL over the "
            f"processes' /metrics scraped every {SCRAPE_S:.0f} s (scripts/dashboard-picture.sh). "
            "No operator or kube-state-metrics ran: their panels say no data.")
    draw(dashboard, samples, a.out, note)


if __name__ == "__main__":
    main()
