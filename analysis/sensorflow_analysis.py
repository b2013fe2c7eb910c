"""SensorFlow analysis: Spark over the gcs-sink's Parquet archive, a model trained from it, a report.

    archive (gs://BUCKET/PREFIX or a local directory)          output directory
      topic=SZ/date=D/hour=H/*.parquet ─┐                      ├─ summary.txt, summary.json
      topic=FA|FI|FD/…                  ├─► analysis ─────────►├─ rows_per_topic_hour.csv,
      topic=predictions/…               │                      │  alert_rate_by_client.csv
      topic=dead-letter|late/…          ┘                      ├─ alert_rate_by_hour.png, roc.png,
      predictions ⋈ future SZ (label) ──► split ─► MLlib LR ──►│  feature_bins.png, latency.png
                                                               ├─ model-patch.yaml (spec.model)
                                                               └─ labels/ (Parquet, one row per
                                                                  labelled prediction)

One file, no package: `gcloud dataproc jobs submit pyspark analysis/sensorflow_analysis.py …`
runs it unchanged on Dataproc (Spark 3.5, the GCS connector built in); locally, `python
sensorflow_analysis.py …` starts Spark in `local[2]` (analysis/README.md).

The layout and column types are the sink's (processors/sink/src/rows.rs, layout.rs):
`PREFIX/topic=T/date=YYYY-MM-DD/hour=HH/*.parquet`, times are TIMESTAMP(MILLIS, UTC).

The label (documented in analysis/README.md): a prediction of client c at event time t is
positive when an SZ reading of c with event time in (t, t + horizon] has a value > X
(`--exceed`, default 3.0 kW; `--horizon-min`, default 10). Predictions whose horizon reaches past
c's last archived SZ reading are left out: their future is not in the archive. Non-finite SZ
values (bad input, dead-lettered by window-processor) are ignored.

The pure helpers (ROC, AUC, thresholds, model parsing, patch YAML) need neither Spark nor
matplotlib, so the unit tests import this module without starting a JVM.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from functools import reduce

# The processors' built-in logistic model (processors/core/src/model.rs: DEFAULT_WEIGHTS,
# DEFAULT_BIAS) and the CRD's default threshold (operator/src/crd.rs: ModelSpec).
DEFAULT_WEIGHTS = (0.01, 0.01, 1.0, 0.3, 0.2)
DEFAULT_BIAS = -6.0
DEFAULT_THRESHOLD = 0.5
# The prediction's feature vector [SX, SY, FA bin, FI bin, FD bin] as the sink stores it.
FEATURE_COLUMNS = ("f_sx", "f_sy", "f_fa_bin", "f_fi_bin", "f_fd_bin")
FEATURE_NAMES = ("SX", "SY", "FA", "FI", "FD")
# Topic roles and their default names (processors: SF_TOPIC_*), and the operator's naming
# `<pipeline>.<role>`.
ROLES = ("SX", "SY", "SZ", "FA", "FI", "FD", "predictions", "dead-letter", "late")
# What every picture measures, in pixels (figsize × dpi); the tests check it.
PICTURE_SIZE = (1000, 600)
PICTURE_DPI = 100


# --------------------------------------------------------------------------------------------
# Pure helpers
# --------------------------------------------------------------------------------------------


@dataclass
class Model:
    """A logistic model `p = 1 / (1 + e^-(w·x + b))`, alert at `p >= threshold`."""

    weights: tuple
    bias: float
    threshold: float
    source: str = ""

    def probability(self, x) -> float:
        z = sum(w * float(v) for w, v in zip(self.weights, x)) + self.bias
        return sigmoid(z)


def sigmoid(z: float) -> float:
    """The logistic function, without overflow for large |z|."""
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def parse_model_version(version: str):
    """`w=0.01,0.01,1,0.3,0.2,-6` (what join-predict writes as `model_version` of a logistic
    model) → (weights, bias); None when the string is not of that form."""
    if not version or not version.startswith("w="):
        return None
    try:
        nums = [float(x) for x in version[2:].split(",")]
    except ValueError:
        return None
    if len(nums) != 6 or not all(math.isfinite(x) for x in nums):
        return None
    return tuple(nums[:5]), nums[5]


def model_from_spec(spec_model: dict | None, source: str) -> Model:
    """A SensorPipeline `spec.model` (dict) → Model; unset weights/bias/threshold take the
    processors' and the CRD's defaults, as the operator does."""
    m = spec_model or {}
    kind = m.get("kind", "logistic")
    if kind != "logistic":
        raise ValueError(f"{source}: spec.model.kind is {kind!r}; only a logistic model can be compared")
    weights = tuple(float(w) for w in (m.get("weights") or DEFAULT_WEIGHTS))
    if len(weights) != 5:
        raise ValueError(f"{source}: spec.model.weights needs 5 numbers, got {len(weights)}")
    bias = float(m["bias"]) if m.get("bias") is not None else DEFAULT_BIAS
    threshold = float(m["threshold"]) if m.get("threshold") is not None else DEFAULT_THRESHOLD
    return Model(weights, bias, threshold, source)


def roc_from_counts(counts):
    """ROC of a score from `[(score, positives, negatives), …]` (one entry per distinct score,
    any order). Returns (points, auc): points are (fpr, tpr, threshold) from (0, 0) to (1, 1),
    one per distinct score taken as `score >= threshold`; auc is the exact area (tied scores
    form one diagonal segment, i.e. count half), None when one class is missing."""
    rows = sorted(((float(s), int(p), int(n)) for s, p, n in counts), key=lambda r: -r[0])
    P = sum(r[1] for r in rows)
    N = sum(r[2] for r in rows)
    points = [(0.0, 0.0, math.inf)]
    tp = fp = 0
    area = 0.0
    for s, p, n in rows:
        area += n * (tp + p / 2.0)
        tp += p
        fp += n
        points.append((fp / N if N else 0.0, tp / P if P else 0.0, s))
    auc = area / (P * N) if P and N else None
    return points, auc


def confusion_at(counts, threshold: float):
    """(tp, fp, fn, tn) of `score >= threshold` from `[(score, positives, negatives), …]`."""
    tp = fp = fn = tn = 0
    for s, p, n in counts:
        if float(s) >= threshold:
            tp += int(p)
            fp += int(n)
        else:
            fn += int(p)
            tn += int(n)
    return tp, fp, fn, tn


def metrics_at(counts, threshold: float) -> dict:
    """AUC, precision, recall, F1 and the confusion counts at `threshold`."""
    _, auc = roc_from_counts(counts)
    tp, fp, fn, tn = confusion_at(counts, threshold)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "auc": auc,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "threshold": threshold,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
    }


def best_f1_threshold(counts) -> float:
    """The score threshold (one of the scores) with the highest F1 of `score >= threshold`;
    ties go to the higher threshold (fewer alerts). 0.5 when there is no positive."""
    rows = sorted(((float(s), int(p), int(n)) for s, p, n in counts), key=lambda r: -r[0])
    P = sum(r[1] for r in rows)
    if P == 0:
        return DEFAULT_THRESHOLD
    best, best_f1 = DEFAULT_THRESHOLD, -1.0
    tp = fp = 0
    for s, p, n in rows:
        tp += p
        fp += n
        f1 = 2 * tp / (2 * tp + fp + (P - tp))
        if f1 > best_f1:
            best, best_f1 = s, f1
    return best


def floor_to(x: float, digits: int) -> float:
    """x rounded down to `digits` decimals (an exported threshold must not exclude its own
    score)."""
    q = 10**digits
    return math.floor(x * q) / q


def yaml_float(x: float) -> str:
    """Shortest round-trip repr of a finite float, with a '.' in the mantissa so YAML 1.1
    readers (PyYAML) take `1e-05` as a number too, not a string."""
    r = repr(float(x))
    if not math.isfinite(float(x)):
        raise ValueError(f"not a finite number: {x}")
    mant, e, exp = r.partition("e")
    if "." not in mant:
        mant += ".0"
    return mant + (e + exp if e else "")


def model_patch_yaml(name: str, model: Model, comment_lines=()) -> str:
    """A SensorPipeline `spec.model` patch (YAML) for `kubectl patch --type merge --patch-file`
    or `kubectl apply --server-side`: apiVersion/kind/metadata.name identify the object, spec
    holds only the model (CRD: operator/src/crd.rs ModelSpec; kind logistic, 5 weights, bias,
    threshold in [0, 1])."""
    w = ", ".join(yaml_float(x) for x in model.weights)
    head = "".join(f"# {c}\n" for c in comment_lines)
    return (
        f"{head}apiVersion: sensorflow.io/v1alpha1\n"
        f"kind: SensorPipeline\n"
        f"metadata:\n"
        f"  name: {name}\n"
        f"spec:\n"
        f"  model:\n"
        f"    kind: logistic\n"
        f"    weights: [{w}]\n"
        f"    bias: {yaml_float(model.bias)}\n"
        f"    threshold: {yaml_float(model.threshold)}\n"
    )


def topic_names(pipeline: str | None, overrides) -> dict:
    """Role → topic name: the processors' defaults (SX … late), or `<pipeline>.<role>` in lower
    case (the operator's names) with `--pipeline`; `--topic role=name` overrides either."""
    names = {r: (f"{pipeline}.{r.lower()}" if pipeline else r) for r in ROLES}
    for o in overrides or ():
        role, _, name = o.partition("=")
        match = [r for r in ROLES if r.lower() == role.lower()]
        if not match or not name:
            raise ValueError(f"--topic {o!r}: expected ROLE=NAME with ROLE one of {', '.join(ROLES)}")
        names[match[0]] = name
    return names


def percentile_label(ms) -> str:
    return "–" if ms is None else f"{ms:.0f} ms"


# --------------------------------------------------------------------------------------------
# Spark
# --------------------------------------------------------------------------------------------


def parse_args(argv):
    p = argparse.ArgumentParser(
        description="Analyse a SensorFlow Parquet archive, train a model from it, write a report.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--archive", required=True, help="gs://BUCKET/PREFIX or a local directory (the sink's --prefix / --local-dir)")
    p.add_argument("--output", required=True, help="report directory: local, or gs://BUCKET/PATH")
    p.add_argument("--pipeline", help="topic names are <pipeline>.<role>; for an operator's pipeline give its topic prefix without the last dot, <namespace>.<name> (status.defaultNames.topicPrefix); default: SX … late")
    p.add_argument("--topic", action="append", default=[], metavar="ROLE=NAME", help="one topic's name (repeatable)")
    p.add_argument("--exceed", type=float, default=3.0, help="label: an SZ value above this (kW) …")
    p.add_argument("--horizon-min", type=float, default=10.0, help="… within this many minutes after the prediction's event time")
    p.add_argument("--split-by", choices=("event-time", "client"), default="event-time", help="time-based split: by event time, or by client id order (the household replay: a client is a calendar day)")
    p.add_argument("--train-fraction", type=float, default=0.7, help="earliest share of event time (or of the clients) used for training")
    p.add_argument("--threshold", default="f1", help="alert threshold of the trained model: a number, or 'f1' (best F1 on the training split)")
    p.add_argument("--reg-param", type=float, default=0.0, help="MLlib LogisticRegression regParam")
    p.add_argument("--manifest", help="SensorPipeline YAML whose spec.model is the current model (default: the model recorded in the archived predictions)")
    p.add_argument("--name", help="metadata.name of the exported patch (default: the manifest's, else 'demo')")
    p.add_argument("--gcs-endpoint", help="GCS endpoint override, unauthenticated (fake-gcs-server: http://127.0.0.1:4443)")
    p.add_argument("--gcs-connector-jar", default=os.environ.get("SF_GCS_CONNECTOR_JAR"), help="local runs: the gcs-connector shaded jar (Dataproc has it built in)")
    p.add_argument("--master", default=None, help="Spark master when not run by spark-submit (default local[2])")
    p.add_argument("--driver-memory", default="1g", help="local runs: spark.driver.memory")
    p.add_argument("--no-pictures", action="store_true", help="skip the PNGs (no matplotlib needed)")
    return p.parse_args(argv)


def spark_session(args):
    from pyspark.sql import SparkSession

    b = SparkSession.builder.appName("sensorflow-analysis")
    # spark-submit (Dataproc, YARN) starts the JVM and sets the master; run by plain python, the
    # job starts a lean local Spark itself.
    if "PYSPARK_GATEWAY_PORT" not in os.environ:
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        b = (
            b.master(args.master or "local[2]")
            .config("spark.driver.memory", args.driver_memory)
            .config("spark.driver.host", "127.0.0.1")
            .config("spark.driver.bindAddress", "127.0.0.1")
            .config("spark.ui.enabled", "false")
            .config("spark.ui.showConsoleProgress", "false")
            .config("spark.sql.shuffle.partitions", "4")
            .config("spark.default.parallelism", "2")
            .config("spark.sql.adaptive.enabled", "true")
        )
        if args.gcs_connector_jar:
            b = b.config("spark.jars", args.gcs_connector_jar)
    if args.gcs_connector_jar or args.gcs_endpoint:
        b = b.config("spark.hadoop.fs.gs.impl", "com.google.cloud.hadoop.fs.gcs.GoogleHadoopFileSystem").config(
            "spark.hadoop.fs.AbstractFileSystem.gs.impl", "com.google.cloud.hadoop.fs.gcs.GoogleHadoopFS"
        )
    if args.gcs_endpoint:
        # An emulator: the JSON API at this root URL, no credentials (gcs-connector 3.0 keys).
        b = b.config("spark.hadoop.fs.gs.storage.root.url", args.gcs_endpoint.rstrip("/") + "/").config(
            "spark.hadoop.fs.gs.auth.type", "UNAUTHENTICATED"
        )
    spark = b.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    spark.conf.set("spark.sql.session.timeZone", "UTC")
    return spark


def qualify(path: str) -> str:
    """A local path becomes an absolute file:// URI; URIs stay."""
    if "://" in path:
        return path.rstrip("/")
    return "file://" + os.path.abspath(path)


class Fs:
    """Existence checks and uploads through Hadoop's FileSystem (the GCS connector for gs://)."""

    def __init__(self, spark):
        self.jvm = spark.sparkContext._jvm
        self.conf = spark.sparkContext._jsc.hadoopConfiguration()

    def _fs(self, uri):
        path = self.jvm.org.apache.hadoop.fs.Path(uri)
        return path.getFileSystem(self.conf), path

    def exists(self, uri) -> bool:
        fs, path = self._fs(uri)
        return bool(fs.exists(path))

    def data_files(self, uri):
        """Paths of the data files below `uri` (recursive), skipping hidden and temporary names
        (`.x`, `_x`) as Spark's file index does."""
        fs, path = self._fs(uri)
        base = path.toString().rstrip("/") + "/"
        it = fs.listFiles(path, True)
        out = []
        while it.hasNext():
            name = it.next().getPath().toString()
            rel = name[len(base):] if name.startswith(base) else name.rsplit("/", 1)[-1]
            if not any(part.startswith((".", "_")) for part in rel.split("/")):
                out.append(rel)
        return out

    def upload_dir(self, local_dir, uri):
        fs, path = self._fs(uri)
        for name in sorted(os.listdir(local_dir)):
            src = os.path.join(local_dir, name)
            if os.path.isfile(src):
                fs.copyFromLocalFile(False, True, self.jvm.org.apache.hadoop.fs.Path("file://" + src), self.jvm.org.apache.hadoop.fs.Path(uri + "/" + name))


@dataclass
class Report:
    archive: str
    output: str
    topics: dict
    rows: dict = field(default_factory=dict)
    files: dict = field(default_factory=dict)
    hours: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)


def read_topics(spark, fs, archive, names):
    """Role → DataFrame of the topic's rows (None when the archive holds no such topic), with the
    Hive partition columns date and hour."""
    out = {}
    for role, name in names.items():
        uri = f"{archive}/topic={name}"
        out[role] = spark.read.parquet(uri) if fs.exists(uri) else None
    return out


def phase(what, _last=[time.time()]):
    """Progress on stderr: what finished and how long it took."""
    now = time.time()
    sys.stderr.write(f"[analysis] {what}: {now - _last[0]:.1f} s\n")
    _last[0] = now


def analyse(spark, args):
    from pyspark.sql import functions as F

    t0 = time.time()
    archive = qualify(args.archive)
    names = topic_names(args.pipeline, args.topic)
    fs = Fs(spark)
    dfs = read_topics(spark, fs, archive, names)
    rep = Report(archive=archive, output=args.output, topics=names)
    present = {r: d for r, d in dfs.items() if d is not None}
    if not present:
        raise SystemExit(f"no topic of {sorted(names.values())} under {archive} (wrong --archive or topic names?)")

    # --- rows per topic and hour (the Hive partitions: UTC hour of the Kafka timestamp) ---
    # Files per hour from the listing (what the sink wrote), rows per hour from Spark (one job
    # over all topics).
    files = {}
    for role in present:
        for rel in fs.data_files(f"{archive}/topic={names[role]}"):
            parts = dict(p.split("=", 1) for p in rel.split("/")[:-1] if "=" in p)
            key = (role, parts.get("date"), int(parts.get("hour", -1)))
            files[key] = files.get(key, 0) + 1
    hourly = reduce(
        lambda a, b: a.unionByName(b),
        [d.select(F.lit(role).alias("role"), F.date_format("date", "yyyy-MM-dd").alias("date"), F.col("hour").cast("int").alias("hour")) for role, d in present.items()],
    )
    per_hour = []
    for r in hourly.groupBy("role", "date", "hour").count().orderBy("role", "date", "hour").collect():
        role = r["role"]
        per_hour.append({"topic": names[role], "role": role, "date": r["date"], "hour": r["hour"], "rows": int(r["count"]), "files": files.get((role, r["date"], r["hour"]), 0)})
    for role in present:
        mine = [h for h in per_hour if h["role"] == role]
        rep.rows[role] = sum(h["rows"] for h in mine)
        rep.files[role] = sum(n for (r, _, _), n in files.items() if r == role)
        rep.hours[role] = len(mine)
    rep.data["rows_per_topic_hour"] = per_hour
    phase("rows per topic and hour")

    preds = dfs.get("predictions")
    if preds is None:
        raise SystemExit(f"the archive has no predictions topic ({names['predictions']}): nothing to analyse or train on")
    preds = preds.withColumn("t", F.expr("unix_millis(event_time)")).cache()
    phase("read")

    # --- alert rate by hour of day (event time, UTC) and by client ---
    by_hod = (
        preds.groupBy(F.hour("event_time").alias("hod"))
        .agg(F.count(F.lit(1)).alias("n"), F.sum(F.col("alert").cast("int")).alias("alerts"))
        .orderBy("hod")
        .collect()
    )
    rep.data["alert_rate_by_hour"] = [{"hour": r["hod"], "predictions": r["n"], "alerts": r["alerts"], "rate": r["alerts"] / r["n"]} for r in by_hod]
    by_client = (
        preds.groupBy("client_id")
        .agg(F.count(F.lit(1)).alias("n"), F.sum(F.col("alert").cast("int")).alias("alerts"))
        .orderBy(F.desc(F.col("alerts") / F.col("n")), "client_id")
        .collect()
    )
    rep.data["alert_rate_by_client"] = [{"client": r["client_id"], "predictions": r["n"], "alerts": r["alerts"], "rate": r["alerts"] / r["n"]} for r in by_client]
    totals = preds.agg(F.count(F.lit(1)).alias("n"), F.sum(F.col("alert").cast("int")).alias("alerts")).first()
    rep.data["predictions"] = {"rows": totals["n"], "alerts": totals["alerts"] or 0}
    phase("alert rates")

    # --- feature-bin distributions: the feature topics when archived, else the predictions' ---
    bins = {}
    feat = [dfs[r] for r in ("FA", "FI", "FD") if dfs.get(r) is not None]
    if feat:
        src = "FA/FI/FD topics"
        for r in reduce(lambda a, b: a.unionByName(b), [d.select("kind", "bin") for d in feat]).groupBy("kind", "bin").count().collect():
            bins.setdefault(r["kind"], {})[int(r["bin"])] = r["count"]
    else:
        src = "predictions' feature vectors"
        for name, col in zip(("FA", "FI", "FD"), FEATURE_COLUMNS[2:]):
            for r in preds.groupBy(col).count().collect():
                bins.setdefault(name, {})[int(r[col])] = r["count"]
    rep.data["feature_bins"] = {"source": src, "counts": {k: [v.get(b, 0) for b in range(10)] for k, v in sorted(bins.items())}}

    # --- dead letters and late readings by reason ---
    for role in ("dead-letter", "late"):
        d = dfs.get(role)
        if d is None:
            rep.data[role] = None
            continue
        rep.data[role] = [
            {"reason": r["reason"], "source_topic": r["source_topic"], "rows": r["count"]}
            for r in d.groupBy("reason", "source_topic").count().orderBy(F.desc("count")).collect()
        ]

    # --- end-to-end latency: predicted_at − ingest_time of the triggering reading ---
    lat = preds.where(F.col("predicted_at").isNotNull() & F.col("ingest_time").isNotNull()).select(
        (F.expr("unix_millis(predicted_at)") - F.expr("unix_millis(ingest_time)")).alias("ms")
    ).cache()
    q = lat.agg(
        F.count(F.lit(1)).alias("n"),
        F.expr("percentile_approx(ms, array(0.5, 0.9, 0.99), 100000)").alias("p"),
        F.min("ms").alias("min"),
        F.max("ms").alias("max"),
        F.avg("ms").alias("mean"),
    ).first()
    latency = {"n": q["n"]}
    if q["n"]:
        latency.update(p50=q["p"][0], p90=q["p"][1], p99=q["p"][2], min=q["min"], max=q["max"], mean=q["mean"])
        lo, hi = q["min"], q["max"]
        width = max(1, math.ceil((hi - lo + 1) / 50))
        hist = lat.groupBy(F.floor((F.col("ms") - lo) / width).alias("b")).count().collect()
        latency["histogram"] = {"lo": lo, "width": width, "counts": {int(r["b"]): r["count"] for r in hist}}
    lat.unpersist()
    rep.data["latency_ms"] = latency
    phase("feature bins, dead letters, latency")

    train_and_compare(spark, args, rep, dfs, preds)
    rep.data["seconds"] = round(time.time() - t0, 1)
    return rep


def current_model(args, preds) -> Model:
    """The model to compare against: the manifest's spec.model, else the logistic model recorded
    in the newest archived prediction (model_version `w=…`), else the processors' defaults."""
    from pyspark.sql import functions as F

    if args.manifest:
        import yaml  # only needed with --manifest

        with open(args.manifest) as f:
            docs = [d for d in yaml.safe_load_all(f) if d and d.get("kind") == "SensorPipeline"]
        if not docs:
            raise SystemExit(f"{args.manifest}: no SensorPipeline document")
        return model_from_spec(docs[0].get("spec", {}).get("model"), f"manifest {args.manifest} spec.model")
    r = preds.where(F.col("model_name") == "logistic").orderBy(F.desc_nulls_last("predicted_at")).select("model_version", "threshold").first()
    if r is not None:
        parsed = parse_model_version(r["model_version"])
        if parsed:
            return Model(parsed[0], parsed[1], float(r["threshold"]), f"archive (model_version {r['model_version']})")
    return Model(DEFAULT_WEIGHTS, DEFAULT_BIAS, DEFAULT_THRESHOLD, "processor defaults")


def score_counts(df, score_col):
    """[(score, positives, negatives)] per distinct score of `df` (column `label` 0/1)."""
    from pyspark.sql import functions as F

    rows = df.groupBy(score_col).agg(F.sum("label").alias("p"), F.count(F.lit(1)).alias("n")).collect()
    return [(r[score_col], int(r["p"]), int(r["n"] - r["p"])) for r in rows]


def train_and_compare(spark, args, rep, dfs, preds):
    from pyspark.ml.classification import LogisticRegression
    from pyspark.ml.evaluation import BinaryClassificationEvaluator
    from pyspark.ml.feature import VectorAssembler
    from pyspark.ml.functions import vector_to_array
    from pyspark.sql import functions as F

    sz = dfs.get("SZ")
    if sz is None:
        raise SystemExit(f"the label needs the SZ readings in the archive: add {rep.topics['SZ']} to the sink's topics (--sink-topics / spec.sink.topics)")
    H = int(round(args.horizon_min * 60_000))
    X = args.exceed

    # One row per prediction: join-predict's redelivered inputs repeat a prediction with the same
    # trigger and source record; keep one.
    ident = ["trigger", "source_topic", "source_partition", "source_offset"]
    p = preds.select("client_id", "t", *FEATURE_COLUMNS, *ident).dropDuplicates(ident)
    p = p.cache()
    n_preds = p.count()

    # Censoring: the horizon must end at or before the client's last archived SZ reading.
    # Non-finite readings are bad input (window-processor dead-letters them as `non-finite`),
    # and Spark orders NaN above every number: they take no part in the label.
    finite = ~F.isnan("value") & (F.abs(F.col("value")) < F.lit(float("inf")))
    sz_t = sz.where(finite).select(F.col("client_id").alias("c"), F.expr("unix_millis(event_time)").alias("te"), "value").cache()
    last = sz_t.groupBy("c").agg(F.max("te").alias("last"))
    p = p.join(last, p.client_id == last.c, "inner").where(F.col("t") + H <= F.col("last")).drop("c", "last")

    # Label by an equi-join on (client, H-bucket): an exceedance at te lies in (t, t + H] only if
    # floor(t/H) is floor(te/H) or floor(te/H) − 1, so each exceedance is offered under both keys.
    ex = sz_t.where(F.col("value") > X).withColumn("kb", F.floor(F.col("te") / H))
    ex = ex.select("c", "te", F.explode(F.array(F.col("kb"), F.col("kb") - 1)).alias("k"))
    pk = p.withColumn("k", F.floor(F.col("t") / H))
    cond = (pk.client_id == ex.c) & (pk.k == ex.k) & (ex.te > pk.t) & (ex.te <= pk.t + H)
    pos = pk.join(ex, cond, "left_semi").withColumn("label", F.lit(1.0))
    neg = pk.join(ex, cond, "left_anti").withColumn("label", F.lit(0.0))
    labelled = pos.unionByName(neg).drop("k")
    for c in FEATURE_COLUMNS:
        labelled = labelled.withColumn(c, F.col(c).cast("double"))
    labelled = labelled.cache()

    # Time-based split. By event time (default): the earliest train_fraction of event time
    # trains; the training side is purged of the last horizon before the cut, whose labels look
    # into the test period. By client: the first train_fraction of the clients in id order
    # train, the rest test (the household replay's clients are calendar days on one common
    # clock, so their id order is the readings' real chronological order and event time is
    # only the time of day).
    if args.split_by == "client":
        ids = [r[0] for r in labelled.select("client_id").distinct().orderBy("client_id").collect()]
        k = min(max(1, int(round(len(ids) * args.train_fraction))), len(ids) - 1) if len(ids) > 1 else 0
        cut = ids[k] if ids else ""
        labelled = labelled.withColumn("split", F.when(F.col("client_id") >= F.lit(cut), F.lit("test")).otherwise(F.lit("train")))
        cut_text = f"clients in id order, test from {cut}"
    else:
        cut = (labelled.approxQuantile("t", [args.train_fraction], 0.0) or [0])[0]
        labelled = labelled.withColumn(
            "split", F.when(F.col("t") >= cut, F.lit("test")).when(F.col("t") + H <= cut, F.lit("train")).otherwise(F.lit("purged"))
        )
        cut_text = f"event time, test from {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(cut / 1000))} UTC"
    stats = {r["split"]: (int(r["n"]), int(r["pos"])) for r in labelled.groupBy("split").agg(F.count(F.lit(1)).alias("n"), F.sum("label").alias("pos")).collect()}
    n_lab = sum(n for n, _ in stats.values())
    n_pos = sum(p for _, p in stats.values())
    (n_train, train_pos), (n_test, test_pos) = stats.get("train", (0, 0)), stats.get("test", (0, 0))
    train = labelled.where(F.col("split") == "train")
    test = labelled.where(F.col("split") == "test")
    label_info = {
        "definition": f"an SZ reading of the same client with value > {X:g} within (t, t + {args.horizon_min:g} min] of the prediction's event time t",
        "exceed": X,
        "horizon_ms": H,
        "predictions": n_preds,
        "labelled": n_lab,
        "censored": n_preds - n_lab,
        "positive": n_pos,
        "positive_rate": n_pos / n_lab if n_lab else None,
        "split_by": args.split_by,
        "split_cut": cut,
        "split_text": cut_text,
        "train": n_train,
        "test": n_test,
        "purged": n_lab - n_train - n_test,
        "train_positive": train_pos,
        "test_positive": test_pos,
    }
    rep.data["label"] = label_info
    phase("label and split")
    if not (label_info["train_positive"] and label_info["train_positive"] < n_train and label_info["test_positive"] and label_info["test_positive"] < n_test):
        raise SystemExit(f"both classes are needed on both sides of the split: {json.dumps(label_info)} (try another --exceed)")

    assembler = VectorAssembler(inputCols=list(FEATURE_COLUMNS), outputCol="features")
    lr = LogisticRegression(featuresCol="features", labelCol="label", maxIter=100, regParam=args.reg_param, tol=1e-6)
    train_x = assembler.transform(train).select("features", "label").cache()
    fitted = lr.fit(train_x)
    train_x.unpersist()
    weights = tuple(float(w) for w in fitted.coefficients.toArray())
    phase("training")
    bias = float(fitted.intercept)

    def trained_scores(df):
        return fitted.transform(assembler.transform(df)).withColumn("score", vector_to_array("probability")[1])

    # The current model, evaluated the way join-predict computes it.
    cur = current_model(args, preds)
    z = sum(F.col(c) * float(w) for c, w in zip(FEATURE_COLUMNS, cur.weights)) + F.lit(float(cur.bias))
    cur_score = 1.0 / (1.0 + F.exp(-z))

    train_counts = score_counts(trained_scores(train), "score")
    if args.threshold == "f1":
        threshold = floor_to(best_f1_threshold(train_counts), 6)
        how = "best F1 on the training split"
    else:
        threshold = float(args.threshold)
        how = "--threshold"
    if not 0.0 <= threshold <= 1.0:
        raise SystemExit(f"threshold {threshold} is outside [0, 1]")
    trained = Model(weights, bias, threshold, "trained (MLlib LogisticRegression)")

    scored = trained_scores(test).withColumn("cur_score", cur_score).cache()
    t_counts = score_counts(scored, "score")
    c_counts = score_counts(scored, "cur_score")
    t_metrics = metrics_at(t_counts, trained.threshold)
    c_metrics = metrics_at(c_counts, cur.threshold)
    ev = BinaryClassificationEvaluator(labelCol="label", metricName="areaUnderROC", numBins=0)
    t_metrics["auc_mllib"] = ev.setRawPredictionCol("rawPrediction").evaluate(scored)
    c_metrics["auc_mllib"] = ev.setRawPredictionCol("cur_score").evaluate(scored)
    t_roc, _ = roc_from_counts(t_counts)
    c_roc, _ = roc_from_counts(c_counts)

    # Does the archive agree with the current model? (recorded vs recomputed probability)
    agree = preds.select(*FEATURE_COLUMNS, "probability").withColumn("re", 1.0 / (1.0 + F.exp(-(sum(F.col(c).cast("double") * float(w) for c, w in zip(FEATURE_COLUMNS, cur.weights)) + F.lit(float(cur.bias))))))
    n_agree = agree.where(F.abs(F.col("re") - F.col("probability")) <= 1e-9).count()

    rep.data["models"] = {
        "trained": {"weights": list(weights), "bias": bias, "threshold": threshold, "threshold_from": how, "test": t_metrics, "reg_param": args.reg_param, "iterations": fitted.summary.totalIterations},
        "current": {"weights": list(cur.weights), "bias": cur.bias, "threshold": cur.threshold, "source": cur.source, "test": c_metrics, "archive_probabilities_matching": n_agree, "archive_predictions": rep.data["predictions"]["rows"]},
    }
    rep.data["roc"] = {"trained": [(f, t) for f, t, _ in thin(t_roc)], "current": [(f, t) for f, t, _ in thin(c_roc)]}
    rep.data["_trained_model"] = trained
    phase("evaluation")
    rep.data["_labelled"] = labelled.select("client_id", "t", *FEATURE_COLUMNS, *ident, "label", "split")
    scored.unpersist()


def thin(points, keep=2000):
    """At most ~`keep` ROC points for the picture and the JSON (first and last kept)."""
    if len(points) <= keep:
        return points
    step = len(points) / keep
    out = [points[int(i * step)] for i in range(keep)]
    out.append(points[-1])
    return out


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------


def pictures(rep, out_dir):
    """The PNGs, each PICTURE_SIZE pixels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = (PICTURE_SIZE[0] / PICTURE_DPI, PICTURE_SIZE[1] / PICTURE_DPI)
    written = []

    def save(fig, name):
        path = os.path.join(out_dir, name)
        fig.savefig(path, dpi=PICTURE_DPI)
        plt.close(fig)
        written.append(name)

    d = rep.data
    # Alert rate by hour of day.
    fig, ax = plt.subplots(figsize=size)
    hours = [r["hour"] for r in d["alert_rate_by_hour"]]
    ax.bar(hours, [100 * r["rate"] for r in d["alert_rate_by_hour"]], color="#d95f02")
    ax.set_xlabel("hour of day (event time, UTC)")
    ax.set_ylabel("alerts per prediction (%)")
    ax.set_xticks(range(0, 24))
    ax.set_xlim(-0.6, 23.6)
    ax.set_title(f"Alert rate by hour: {d['predictions']['alerts']} alerts in {d['predictions']['rows']} predictions")
    ax2 = ax.twinx()
    ax2.plot(hours, [r["predictions"] for r in d["alert_rate_by_hour"]], color="#444444", marker=".", lw=1)
    ax2.set_ylabel("predictions")
    ax2.set_ylim(bottom=0)
    fig.tight_layout()
    save(fig, "alert_rate_by_hour.png")

    # ROC of both models on the test split.
    fig, ax = plt.subplots(figsize=size)
    m = d["models"]
    for key, colour, label in (("trained", "#1b9e77", "trained"), ("current", "#7570b3", "current")):
        pts = d["roc"][key]
        ax.plot([x for x, _ in pts], [y for _, y in pts], color=colour, lw=2, label=f"{label}: AUC {m[key]['test']['auc']:.3f}")
        t = m[key]["test"]
        fpr = t["fp"] / (t["fp"] + t["tn"]) if t["fp"] + t["tn"] else 0.0
        ax.plot([fpr], [t["recall"]], "o", color=colour, ms=8, label=f"{label} at threshold {t['threshold']:.3g}: precision {t['precision']:.2f}, recall {t['recall']:.2f}")
    ax.plot([0, 1], [0, 1], ls=":", color="#999999")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    lab = d["label"]
    ax.set_title(f"ROC on the test split ({lab['test']} predictions); label: an SZ reading > {lab['exceed']:g} within the next {lab['horizon_ms'] / 60000:g} min")
    ax.legend(loc="lower right", fontsize=9)
    fig.tight_layout()
    save(fig, "roc.png")

    # Feature-bin histograms.
    fb = d["feature_bins"]
    fig, axes = plt.subplots(1, 3, figsize=size, sharey=False)
    for ax, kind, colour in zip(axes, ("FA", "FI", "FD"), ("#1b9e77", "#d95f02", "#7570b3")):
        counts = fb["counts"].get(kind, [0] * 10)
        ax.bar(range(10), counts, color=colour)
        ax.set_xticks(range(10))
        ax.set_xlabel(f"{kind} bin")
        ax.set_title(f"{kind}: {sum(counts)} values")
    axes[0].set_ylabel("count")
    fig.suptitle(f"Feature bins ({fb['source']})")
    fig.tight_layout()
    save(fig, "feature_bins.png")

    # End-to-end latency histogram.
    lat = d["latency_ms"]
    fig, ax = plt.subplots(figsize=size)
    if lat.get("histogram"):
        h = lat["histogram"]
        xs = sorted(h["counts"])
        ax.bar([(h["lo"] + b * h["width"]) / 1000 for b in xs], [h["counts"][b] for b in xs], width=h["width"] / 1000, align="edge", color="#1f78b4")
        for k, ls in (("p50", "-"), ("p90", "--"), ("p99", ":")):
            ax.axvline(lat[k] / 1000, color="#e31a1c", ls=ls, label=f"{k} {lat[k] / 1000:.2f} s")
        ax.legend()
    ax.set_xlabel("end-to-end latency (s): prediction time − ingest time of the triggering reading")
    ax.set_ylabel("predictions")
    ax.set_title(f"End-to-end latency ({lat['n']} predictions)")
    fig.tight_layout()
    save(fig, "latency.png")
    return written


def fmt_pct(x):
    return "–" if x is None else f"{100 * x:.2f}%"


def summary_text(rep) -> str:
    d = rep.data
    m = d["models"]
    lab = d["label"]
    lat = d["latency_ms"]
    lines = ["==================== SensorFlow analysis ====================="]
    lines.append(f"{'archive':<26}{rep.archive}")
    lines.append(f"{'rows per topic':<26}" + ", ".join(f"{rep.topics[r]} {rep.rows[r]}" for r in ROLES if r in rep.rows))
    lines.append(f"{'files, event hours':<26}{sum(rep.files.values())} files over {max(rep.hours.values())} hours (rows per topic and hour: rows_per_topic_hour.csv)")
    pr = d["predictions"]
    lines.append(f"{'alerts':<26}{pr['alerts']} of {pr['rows']} predictions ({fmt_pct(pr['alerts'] / pr['rows'] if pr['rows'] else None)})")
    hod = sorted(d["alert_rate_by_hour"], key=lambda r: -r["rate"])
    if hod:
        lines.append(f"{'alert rate by hour (UTC)':<26}highest {hod[0]['hour']:02d}h {fmt_pct(hod[0]['rate'])}, lowest {hod[-1]['hour']:02d}h {fmt_pct(hod[-1]['rate'])}")
    cl = d["alert_rate_by_client"]
    if cl:
        lines.append(f"{'alert rate by client':<26}{len(cl)} clients; highest {cl[0]['client']} {fmt_pct(cl[0]['rate'])}, lowest {cl[-1]['client']} {fmt_pct(cl[-1]['rate'])}")
    for kind, counts in d["feature_bins"]["counts"].items():
        lines.append(f"{kind + ' bins 0-9':<26}{' '.join(str(c) for c in counts)}")
    for role in ("dead-letter", "late"):
        v = d[role]
        txt = "none in the archive (no object of that topic)" if v is None else (", ".join(f"{r['reason']} ({r['source_topic']}) {r['rows']}" for r in v) or "none")
        lines.append(f"{role + ' by reason':<26}{txt}")
    if lat["n"]:
        lines.append(f"{'end-to-end latency':<26}p50 {lat['p50']} ms, p90 {lat['p90']} ms, p99 {lat['p99']} ms, max {lat['max']} ms ({lat['n']} predictions)")
    lines.append(f"{'label':<26}{lab['definition']}")
    lines.append(f"{'':<26}{lab['positive']} of {lab['labelled']} positive ({fmt_pct(lab['positive_rate'])}); {lab['censored']} censored (horizon past the last SZ reading)")
    lines.append(f"{'split':<26}train {lab['train']}, test {lab['test']}, purged {lab['purged']} ({lab['split_text']})")
    lines.append(f"{'model (test split)':<26}{'AUC':>7} {'precision':>10} {'recall':>8} {'threshold':>10}")
    for key in ("trained", "current"):
        t = m[key]["test"]
        lines.append(f"{'  ' + key:<26}{t['auc']:>7.4f} {t['precision']:>10.4f} {t['recall']:>8.4f} {t['threshold']:>10.4g}")
    tr, cu = m["trained"], m["current"]
    lines.append(f"{'trained weights, bias':<26}[{', '.join(f'{w:.4g}' for w in tr['weights'])}], {tr['bias']:.4g} (threshold: {tr['threshold_from']})")
    lines.append(f"{'current weights, bias':<26}[{', '.join(f'{w:.4g}' for w in cu['weights'])}], {cu['bias']:.4g} ({cu['source']}; {cu['archive_probabilities_matching']} of {cu['archive_predictions']} archived probabilities match it)")
    lines.append(f"{'spec.model patch':<26}{rep.output.rstrip('/')}/model-patch.yaml")
    lines.append(f"{'job time':<26}{d['seconds']} s")
    lines.append("===============================================================")
    return "\n".join(lines) + "\n"


def write_outputs(spark, args, rep):
    out = args.output
    remote = "://" in out and not out.startswith("file://")
    local_dir = tempfile.mkdtemp(prefix="sf-analysis-") if remote else os.path.abspath(out.replace("file://", ""))
    os.makedirs(local_dir, exist_ok=True)
    trained = rep.data.pop("_trained_model")
    labelled = rep.data.pop("_labelled")

    written = [] if args.no_pictures else pictures(rep, local_dir)
    name = args.name
    if not name and args.manifest:
        import yaml

        with open(args.manifest) as f:
            for doc in yaml.safe_load_all(f):
                if doc and doc.get("kind") == "SensorPipeline":
                    name = doc.get("metadata", {}).get("name")
                    break
    name = name or "demo"
    t = rep.data["models"]["trained"]["test"]
    c = rep.data["models"]["current"]["test"]
    patch = model_patch_yaml(
        name,
        trained,
        [
            f"Trained by analysis/sensorflow_analysis.py from {rep.archive}",
            f"label: {rep.data['label']['definition']}",
            f"test split: AUC {t['auc']:.4f}, precision {t['precision']:.4f}, recall {t['recall']:.4f} (current model: AUC {c['auc']:.4f}, precision {c['precision']:.4f}, recall {c['recall']:.4f})",
            f"kubectl patch sensorpipeline {name} --type merge --patch-file model-patch.yaml",
            f"  or: kubectl apply --server-side --field-manager sensorflow-analysis --force-conflicts -f model-patch.yaml",
        ],
    )
    with open(os.path.join(local_dir, "model-patch.yaml"), "w") as f:
        f.write(patch)
    with open(os.path.join(local_dir, "rows_per_topic_hour.csv"), "w") as f:
        f.write("topic,date,hour,rows,files\n")
        for r in rep.data["rows_per_topic_hour"]:
            f.write(f"{r['topic']},{r['date']},{r['hour']:02d},{r['rows']},{r['files']}\n")
    with open(os.path.join(local_dir, "alert_rate_by_client.csv"), "w") as f:
        f.write("client,predictions,alerts,rate\n")
        for r in rep.data["alert_rate_by_client"]:
            f.write(f"{r['client']},{r['predictions']},{r['alerts']},{r['rate']:.6f}\n")
    text = summary_text(rep)
    summary = {
        "archive": rep.archive,
        "topics": rep.topics,
        "rows": rep.rows,
        "files": rep.files,
        "hours": rep.hours,
        "pictures": written,
        **{k: v for k, v in rep.data.items() if k not in ("rows_per_topic_hour", "roc")},
    }
    with open(os.path.join(local_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2, default=str)
    with open(os.path.join(local_dir, "summary.txt"), "w") as f:
        f.write(text)
    # The labelled predictions, for audits (the tests recompute the label from them).
    labels_uri = (out.rstrip("/") if remote else qualify(local_dir)) + "/labels"
    labelled.coalesce(1).write.mode("overwrite").parquet(labels_uri)
    if remote:
        Fs(spark).upload_dir(local_dir, out.rstrip("/"))
        shutil.rmtree(local_dir, ignore_errors=True)
    return text


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    spark = spark_session(args)
    phase("spark started")
    try:
        rep = analyse(spark, args)
        text = write_outputs(spark, args, rep)
        sys.stdout.write(text)
        sys.stdout.flush()
    finally:
        spark.stop()


if __name__ == "__main__":
    main()
