"""SensorFlow end to end, the way users run it: `helm install` the operator, `kubectl apply` a
SensorPipeline, real Pods consume from and produce to a real broker, Parquet lands in a GCS
server. The scenarios run in file order and build on each other (one pipeline, `demo`).

Needs the environment tests/e2e/run.sh sets up (KUBECONFIG, a broker and a GCS server on the
host, the host-built `replay`, the image on the nodes).
"""

import calendar
import collections
import math
import os
import signal
import threading
import time

import pyarrow.parquet as pq
import pytest
import yaml
from conftest import (BOOT, GCS, IMAGE, NS, OP_NS, PREVIOUS_CHART, PREVIOUS_CHART_REF, RELEASE, REPO, UPGRADE_IMAGE,
                      condition, count, gcs, gcs_buckets, gcs_list, gcs_read, group_lag, helm, kjson, kubectl,
                      list_topics, log, partitions_of, pods_ready, read_all, replay, wait_for)
from sfproto import decode, decode_feature, decode_prediction, field_double, packed_varints, signed
from sfref import (RANGES, WINDOW_MS, AsOf, aggregate, aligned_outcomes, bin_of, expected_features, expected_vector,
                   near)

pytestmark = pytest.mark.skipif(not BOOT or not GCS, reason="run through tests/e2e/run.sh")

PIPELINE = "demo"
ROLES = ["sx", "sy", "sz", "fa", "fi", "fd", "predictions", "dead-letter", "late"]
# The operator's default Kafka names: topics <namespace>.<pipeline>.<role>, consumer groups
# <namespace>.<pipeline>-<stage>.
KAFKA_PREFIX = f"{NS}.{PIPELINE}"
TOPICS = {r: f"{KAFKA_PREFIX}.{r}" for r in ROLES}
CHART = f"{REPO}/charts/sensorflow-operator"
DAY_MS = 86_400_000
TRIGGER_SX, TRIGGER_SY, TRIGGER_FEATURES = 1, 2, 3
TRIGGER_NAMES = {TRIGGER_SX: "sx", TRIGGER_SY: "sy", TRIGGER_FEATURES: "features"}

# Sizing of the e2e pipeline for a small node (2 cores here): the example manifest is applied
# with these fields changed, and nothing else.
SCALE = {"minReplicas": 1, "maxReplicas": 4, "lagTargetPerReplica": 3000}
COOLDOWN_S = 30
# A window-processor replica throttled to 0.05 CPU falls behind a full-speed replay: the backlog
# scenario needs the processors to be slower than the producer.
WINDOW_CPU_LIMIT = "50m"
JOIN_MIN = 2


POD_TEMPLATE = {"labels": {"e2e.sensorflow.test/overlay": "yes"},
                "nodeSelector": {"kubernetes.io/os": "linux"},
                "env": [{"name": "E2E_OVERLAY", "value": "from-pod-template"}]}


def manifest():
    with open(f"{REPO}/examples/sensorpipeline.yaml") as f:
        sp = yaml.safe_load(f)
    spec = sp["spec"]
    sp["metadata"]["namespace"] = NS
    spec["kafka"]["bootstrapServers"] = BOOT
    # One broker on the host: the example's replication factor 3 is for a real cluster.
    spec["topics"]["replicationFactor"] = 1
    # The scenarios replay fixed days of 2026-01 (record timestamps are event times): with the
    # example's 7-day retention Apache Kafka deletes them within minutes, under the running test
    # (seen: offsets out of range, join rebuilds timing out). Keep them forever here.
    spec["topics"]["retentionMs"] = -1
    spec["sink"]["endpoint"] = GCS
    spec["sink"]["rotation"]["maxAgeSeconds"] = 10
    p = spec["processors"]
    # No processors.image: the processors run the operator's own image (IMAGE, then
    # UPGRADE_IMAGE after scenario 2b's helm upgrade).
    p.pop("image", None)
    p["imagePullPolicy"] = "IfNotPresent"
    p["resources"] = {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "512Mi"}}
    p["scaleDownCooldownSeconds"] = COOLDOWN_S
    p["window"] = dict(SCALE, resources={"requests": {"cpu": "50m", "memory": "64Mi"},
                                         "limits": {"cpu": WINDOW_CPU_LIMIT, "memory": "512Mi"}})
    p["join"] = dict(SCALE, minReplicas=JOIN_MIN)
    # The pod template overlay (a label, a nodeSelector the node matches, an extra variable)
    # on every stage; the scenarios check the Pods carry it.
    for stage_spec in (p["window"], p["join"], spec["sink"]):
        stage_spec["podTemplate"] = POD_TEMPLATE
    # Kafka transactions end to end: the chaos scenario must show no duplicate at all.
    p["deliveryGuarantee"] = "ExactlyOnce"
    return sp


MODEL = manifest()["spec"]["model"]


def sp_status():
    return kjson("get", "sp", PIPELINE, "-n", NS)


def deployment(stage):
    return kjson("get", "deployment", f"{PIPELINE}-{stage}", "-n", NS)


def drained():
    """True once the window and join consumer groups have committed everything."""
    lw = group_lag(f"{KAFKA_PREFIX}-window", [TOPICS["sz"]])
    lj = group_lag(f"{KAFKA_PREFIX}-join", [TOPICS[r] for r in ["sx", "sy", "fa", "fi", "fd"]])
    log(f"lag: window {lw}, join {lj}")
    return lw == 0 and lj == 0


def in_day(t, day):
    """`day` None means every day."""
    return day is None or day <= t < day + DAY_MS


def day_ms(date):
    return calendar.timegm(time.strptime(date, "%Y-%m-%d")) * 1000


def readings(topic, day):
    """{client: [(t, value, partition, offset)]} of a readings topic, for event times on `day`,
    in event-time order."""
    out = {}
    for r in read_all(topic):
        f = decode(r.value)
        t = signed(f.get(1, [0])[0])
        if in_day(t, day):
            out.setdefault(r.key.decode(), []).append((t, field_double(f, 2), r.partition, r.offset))
    for v in out.values():
        v.sort()
    return out


def features(kind, day):
    """[(client, t, value, bin, (topic, partition, offset))] of feature topic `kind` for event
    times on `day`."""
    out = []
    topic = TOPICS[kind.lower()]
    for r in read_all(topic):
        f = decode(r.value)
        t = signed(f.get(3, [0])[0])
        if in_day(t, day):
            out.append((f[1][0].decode(), t, field_double(f, 7), f.get(6, [0])[0], (topic, r.partition, r.offset)))
    return out


class Checked:
    """What check_nothing_lost verified for one day: the SZ readings per client and their
    reference features; and, over every day so far (a prediction may use an earlier triple),
    the bins the pipeline gave each reading and which SZ record (partition, offset) it is."""

    def __init__(self, sz_all, day):
        self.sz = {c: [r for r in rs if in_day(r[0], day)] for c, rs in sz_all.items()}
        self.sz = {c: rs for c, rs in self.sz.items() if rs}
        self.want = {}
        self.bins = {}
        self.at = {(p, o): (client, t) for client, rs in sz_all.items() for t, _, p, o in rs}
        self.feature_records = {}  # (client, t) → [(topic, partition, offset)] of its FA/FI/FD
        self.dups = 0
        self.pred_dups = 0
        self.dup_samples = {}  # trigger → [(source, first (partition, offset), repeat (partition, offset))]


def check_nothing_lost(day):
    """Every SZ reading of `day` has an FA, FI and FD feature equal to the independent reference
    (duplicates from at-least-once redelivery are counted, never different values)."""
    sz_all = readings(TOPICS["sz"], None)
    c = Checked(sz_all, day)
    for client in c.sz:
        # The window of a reading early in `day` holds the client's readings of the previous
        # WINDOW_MS too (test 5 replays a whole day that ends a minute before test 5b's).
        since = [(t, v) for t, v, _, _ in sz_all[client] if day is None or t > day - WINDOW_MS]
        for t, mean, integral, deriv in expected_features(since):
            if in_day(t, day):
                c.want[(client, t)] = {"FA": mean, "FI": integral, "FD": deriv}
    for i, kind in enumerate(["FA", "FI", "FD"]):
        got = {}
        lo, hi = RANGES[kind]
        for client, t, value, b, at in features(kind, None):
            key = (client, t)
            c.bins.setdefault(key, [None, None, None])[i] = b
            c.feature_records.setdefault(key, []).append(at)
            if not in_day(t, day):
                continue
            assert key in c.want, f"{kind} for a reading that was never sent: {key}"
            assert near(value, c.want[key][kind]), f"{kind} {key}: {value} != reference {c.want[key][kind]}"
            assert b in (bin_of(c.want[key][kind], lo, hi), bin_of(value, lo, hi)), f"{kind} {key}: bin {b}"
            assert got.get(key, b) == b, f"{kind} {key}: two different bins"
            c.dups += key in got
            got[key] = b
        missing = set(c.want) - set(got)
        assert not missing, f"{kind}: {len(missing)} of {len(c.want)} readings have no feature, e.g. {sorted(missing)[:3]}"
    log(f"features of {len(c.want)} readings equal the reference; {c.dups} duplicate feature records")
    return c


def late_records(topic=TOPICS["late"], partitions=100):
    """{(source topic, partition, offset)} of every record routed to the late topic: the join
    never uses those, so the as-of reference leaves them out too."""
    out = set()
    for r in read_all(topic, partitions):
        h = {k: v.decode() for k, v in (r.headers or [])}
        if "sensorflow.source.topic" in h:
            out.add((h["sensorflow.source.topic"], int(h["sensorflow.source.partition"]), int(h["sensorflow.source.offset"])))
    return out


def check_predictions(day, c):
    """Every prediction of `day` holds exactly the as-of vector (sfref.expected_vector): for a
    trigger at t, its own value, and each other input's latest value with event time <= t
    (ties: larger offset; the triple of the latest SZ reading of the client at or before t,
    with the bins the pipeline gave it, checked against the reference above); never a value
    from after t. Its probability and alert follow the manifest's logistic model. Every SX, SY
    and SZ reading triggers one prediction (the household rows carry all three at the same
    minute, so none is missing or stale), repeats after a crash being identical.
    Returns the number of distinct predictions."""
    sx = readings(TOPICS["sx"], day)
    sy = readings(TOPICS["sy"], day)
    late = late_records()
    stores = {"sx": AsOf(), "sy": AsOf(), "features": AsOf()}
    own = {}
    for kind, rs_by in [("sx", sx), ("sy", sy)]:
        for client, rs in rs_by.items():
            for t, x, part, off in rs:
                own[(TOPICS[kind], part, off)] = int(x)
                if (TOPICS[kind], part, off) not in late:
                    stores[kind].add(client, t, (part, off), int(x))
    for (part, off), (client, t) in c.at.items():
        bins = c.bins.get((client, t))
        # A triple with a feature routed late never completed in the join (it was released as
        # incomplete): neither a trigger nor an as-of value.
        if bins and None not in bins and not any(at in late for at in c.feature_records.get((client, t), [])):
            stores["features"].add(client, t, (part, off), ((part, off), bins))
    w, bias, threshold = MODEL["weights"], MODEL["bias"], MODEL["threshold"]
    seen = {}
    where = {}  # key → (partition, offset) of its first prediction record
    for r in read_all(TOPICS["predictions"]):
        p = decode(r.value)
        t = signed(p.get(2, [0])[0])
        if not in_day(t, day):
            continue
        client = p[1][0].decode()
        assert r.key.decode() == client
        v = packed_varints(p[3])
        assert len(v) == 5, v
        trigger = TRIGGER_NAMES[p.get(8, [0])[0]]
        src = (p[9][0].decode(), p.get(10, [0])[0], signed(p.get(11, [0])[0]))
        feat_src = (p.get(12, [0])[0], signed(p.get(13, [0])[0]))
        if trigger == "features":
            assert feat_src in c.at, f"{client} {t}: features from SZ {feat_src}, which holds no reading"
            assert c.at[feat_src] == (client, t), f"features-triggered prediction at {t} for {c.at[feat_src]}"
            mine = (feat_src, c.bins[(client, t)])
        else:
            assert src in own, f"{client} {t}: trigger record {src} was never sent"
            mine = own[src]
        want = expected_vector(trigger, t, mine, client, stores["sx"], stores["sy"], stores["features"])
        assert want is not None, f"{client} {t}: a {trigger} prediction where an input is missing or stale"
        assert v == want[0], f"{client} {t} ({trigger}): vector {v} != as-of reference {want[0]}"
        assert feat_src == want[1], f"{client} {t}: triple of SZ {feat_src}, as-of says {want[1]}"
        z = sum(a * b for a, b in zip(w, v)) + bias
        prob = field_double(p, 4)
        assert near(prob, 1 / (1 + math.exp(-z))), f"{client} {t} {v}: probability {prob}"
        assert bool(p.get(5, [0])[0]) == (prob >= threshold)
        key = (trigger, src if trigger != "features" else feat_src)
        # Each record is read once: a key seen before is a second record for the same trigger.
        if key in seen:
            c.pred_dups += 1
            c.dup_samples.setdefault(trigger, []).append((key[1], where[key], (r.partition, r.offset)))
        where.setdefault(key, (r.partition, r.offset))
        assert seen.setdefault(key, v) == v, f"{client} {t}: a repeated prediction differs"
    # Nothing lost: every trigger of `day` the join took (its record not late; for a triple, none
    # of its features late) whose as-of inputs are there and fresh has its prediction. (The
    # household rows carry SX, SY and SZ at the same minute, so only late inputs make a
    # reference vector None.)
    lost = []
    for kind, rs_by in [("sx", sx), ("sy", sy)]:
        for client, rs in rs_by.items():
            for t, x, part, off in rs:
                src = (TOPICS[kind], part, off)
                if src in late or (kind, src) in seen:
                    continue
                if expected_vector(kind, t, int(x), client, stores["sx"], stores["sy"], stores["features"]) is not None:
                    lost.append((kind, client, t, src))
    for client, rs in c.sz.items():
        for t, _, part, off in rs:
            if ("features", (part, off)) in seen:
                continue
            triple = stores["features"].at(client, t)
            if triple is None or triple[0] != t or triple[1][0] != (part, off):
                continue  # incomplete or late: no trigger
            if expected_vector("features", t, triple[1], client, stores["sx"], stores["sy"], stores["features"]) is not None:
                lost.append(("features", client, t, (part, off)))
    assert not lost, f"{len(lost)} triggers with every input present have no prediction, e.g. {lost[:5]}"
    per_trigger = {k: sum(1 for (trig, _) in seen if trig == k) for k in TRIGGER_NAMES.values()}
    log(f"{len(seen)} predictions {per_trigger} for {len(c.want)} readings hold the exact as-of vectors; "
        f"{c.pred_dups} repeated prediction records, {len(late)} late inputs")
    for trig, ds in c.dup_samples.items():
        parts = sorted({d[2][0] for d in ds})
        log(f"repeated {trig}-triggered predictions: {len(ds)} on {len(parts)} prediction partitions {parts[:20]}; "
            f"e.g. (trigger source, first record, repeat) {ds[:3]}")
    return len(seen)


def scale_watch(stop, seen):
    """Samples every 2 s, per stage, (Deployment spec.replicas, status.readyReplicas) into
    `seen[stage]` until `stop` is set."""
    while not stop.is_set():
        for stage in ["window", "join"]:
            try:
                d = deployment(stage)
                seen.setdefault(stage, []).append((d["spec"]["replicas"], d["status"].get("readyReplicas", 0)))
            except (AssertionError, KeyError, ValueError):
                pass
        stop.wait(2)


def assert_exactly_once(checked):
    """The pipeline runs with ExactlyOnce and the reader is read_committed: no feature and no
    prediction may be there twice, whatever restarted or rebalanced."""
    assert checked.dups == 0, f"{checked.dups} duplicate feature records with ExactlyOnce"
    assert checked.pred_dups == 0, f"{checked.pred_dups} duplicate prediction records with ExactlyOnce"


@pytest.fixture(scope="module", autouse=True)
def clean_cluster():
    """Leftovers of an earlier run would make the scenarios lie: remove them first."""
    kubectl("delete", "sp", "--all", "-n", NS, "--ignore-not-found", "--timeout", "120s", check=False)
    helm("uninstall", RELEASE, "-n", OP_NS, "--wait", check=False)
    kubectl("delete", "namespace", NS, "--ignore-not-found", "--timeout", "120s", check=False)
    bucket = manifest()["spec"]["sink"]["bucket"]
    if bucket not in gcs_buckets():
        gcs("POST", "/storage/v1/b", {"name": bucket})
    yield


def chart_values(image):
    """The e2e's Helm values: the operator's image, the watched namespace, a 5 s resync."""
    repo, tag = image.rsplit(":", 1)
    return ["--set", f"image.repository={repo}", "--set", f"image.tag={tag}",
            "--set", f"watch.namespaces={{{NS}}}", "--set", "resyncSeconds=5"]


# --- 1 ----------------------------------------------------------------------------------------
def test_1_helm_install_operator_becomes_ready():
    # The PREVIOUS chart version (run.sh extracts it from git): scenario 2b upgrades from it.
    assert PREVIOUS_CHART and os.path.isfile(f"{PREVIOUS_CHART}/Chart.yaml"), \
        f"no previous chart at {PREVIOUS_CHART!r} (run through tests/e2e/run.sh)"
    log(f"installing the chart as of {PREVIOUS_CHART_REF} with {IMAGE}")
    # The chart watches the namespaces it is told to (namespaced Roles, no cluster-wide Secret
    # access); the pipelines' namespace must exist first.
    kubectl("create", "namespace", NS)
    log(helm("install", RELEASE, PREVIOUS_CHART, "-n", OP_NS, "--create-namespace", *chart_values(IMAGE),
             "--wait", "--timeout", "5m"))
    pods = wait_for("the operator pod to be Ready", lambda: pods_ready(OP_NS, f"app.kubernetes.io/instance={RELEASE}"), 180)
    assert len(pods) == 1
    crd = kjson("get", "crd", "sensorpipelines.sensorflow.io")
    assert condition(crd, "Established").get("status") == "True"


# --- 2 ----------------------------------------------------------------------------------------
def test_2_apply_example_topics_pods_ready():
    log(kubectl("apply", "-f", "-", input=yaml.safe_dump(manifest())))
    topics = wait_for("9 topics with 100 partitions",
                      lambda: (lambda p: p if len(p) == 9 and set(p.values()) == {100} else None)(
                          partitions_of(list(TOPICS.values()))), 120)
    assert set(topics) == set(TOPICS.values())
    for stage in ["window", "join", "sink"]:
        wait_for(f"{stage} pods Running and Ready",
                 lambda: pods_ready(NS, f"sensorflow.io/pipeline={PIPELINE},app.kubernetes.io/component={stage}"), 240)
    sp = wait_for("kubectl get sp to show Ready",
                  lambda: (lambda s: s if condition(s, "Ready").get("status") == "True" else None)(sp_status()), 180)
    log("\n" + kubectl("get", "sp", "-n", NS))
    assert sp["status"]["phase"] == "Running"
    for d in ["window", "join", "sink"]:
        dep = deployment(d)
        assert dep["metadata"]["ownerReferences"][0]["kind"] == "SensorPipeline"
        assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == IMAGE
        # The pod template overlay reached the running Pods, next to what the operator owns.
        pods = pods_ready(NS, f"sensorflow.io/pipeline={PIPELINE},app.kubernetes.io/component={d}")
        for pod in pods:
            assert pod["metadata"]["labels"]["e2e.sensorflow.test/overlay"] == "yes", pod["metadata"]["labels"]
            assert pod["metadata"]["labels"]["app.kubernetes.io/component"] == d
            assert pod["spec"]["nodeSelector"] == {"kubernetes.io/os": "linux"}
            env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0].get("env", [])}
            assert env.get("E2E_OVERLAY") == "from-pod-template", env


# --- 2b ---------------------------------------------------------------------------------------
def stage_images():
    """{stage: (Deployment template image, {images of its live pods})}."""
    out = {}
    for s_ in ["window", "join", "sink"]:
        d = deployment(s_)
        pods = [p for p in stage_pods(s_) if not p["metadata"].get("deletionTimestamp")]
        out[s_] = (d["spec"]["template"]["spec"]["containers"][0]["image"],
                   {p["spec"]["containers"][0]["image"] for p in pods})
    return out


def rolled_to(image):
    """True once every stage's Deployment has rolled out `image`: template, every live pod, all
    replicas updated and available."""
    for s_ in ["window", "join", "sink"]:
        d = deployment(s_)
        st, want = d["status"], d["spec"]["replicas"]
        if d["spec"]["template"]["spec"]["containers"][0]["image"] != image:
            return False
        if st.get("observedGeneration") != d["metadata"]["generation"]:
            return False
        if st.get("updatedReplicas", 0) != want or st.get("availableReplicas", 0) != want or st.get("replicas", 0) != want:
            return False
        pods = [p for p in stage_pods(s_) if not p["metadata"].get("deletionTimestamp")]
        if {p["spec"]["containers"][0]["image"] for p in pods} != {image}:
            return False
    return True


def test_2b_helm_upgrade_from_the_previous_chart_under_load_rolls_processors_nothing_lost():
    """The upgrade as operator/README.md#upgrading says, while a paced replay runs: the new
    CRD, `helm upgrade` to this chart with a second operator image, then the image the previous
    CRD defaulted into the stored pipeline removed. Every processor rolls to the new image (the
    operator resolves an unset processors.image to its own); with ExactlyOnce a read_committed
    reader sees every reading's features and predictions once."""
    assert UPGRADE_IMAGE and UPGRADE_IMAGE != IMAGE, f"SENSORFLOW_E2E_UPGRADE_IMAGE {UPGRADE_IMAGE!r}"
    day = day_ms("2025-12-30")  # before every later scenario's days: nothing of theirs is late
    # One whole day at 960 event-seconds per wall-second: ~35,000 readings over ~90 s.
    t0 = time.time()
    proc = replay(KAFKA_PREFIX, "--clients", "8", "--rows-per-client", "1440", "--base-date", "2025-12-30",
                  "--speed", "960", wait=False)
    try:
        upgrade_under_load(proc, t0, day)
    finally:
        if proc.poll() is None:  # a failure above: the next scenarios must not see its records
            proc.kill()
            proc.wait()


def upgrade_under_load(proc, t0, day):
    time.sleep(5)
    assert proc.poll() is None, "the replay ended before the upgrade began"
    # 1. the new CRD (Helm installs a chart's crds/ once and never upgrades them)
    log(kubectl("apply", "--server-side", "--force-conflicts", "-f", f"{CHART}/crds/sensorpipelines.yaml"))
    # 2. helm upgrade to this working tree's chart and the second image
    t_up = time.time()
    log(helm("upgrade", RELEASE, CHART, "-n", OP_NS, *chart_values(UPGRADE_IMAGE), "--wait", "--timeout", "5m"))
    log(f"{time.time() - t0:.0f} s: helm upgrade done in {time.time() - t_up:.0f} s")
    op = wait_for("the upgraded operator pod Ready", lambda: (lambda ps: ps if ps and all(
        p["spec"]["containers"][0]["image"] == UPGRADE_IMAGE for p in ps) else None)(
        pods_ready(OP_NS, f"app.kubernetes.io/instance={RELEASE}")), 180)
    env = {e["name"]: e.get("value") for e in op[0]["spec"]["containers"][0].get("env", [])}
    assert env.get("SF_OPERATOR_PROCESSOR_IMAGE") == UPGRADE_IMAGE, env
    # 3. the previous CRD wrote its default image into the stored pipeline, which pins it: the
    #    new operator leaves it there. Removed (the previous chart's admission policy refused a
    #    pipeline without one, so only now), the pipeline follows the operator's image.
    stored = sp_status()["spec"]["processors"].get("image")
    log(f"{time.time() - t0:.0f} s: processors.image stored by the previous CRD: {stored!r}")
    if stored is not None:
        time.sleep(6)  # a resync (5 s) of the new operator: the pinned image stays
        pinned = stage_images()
        assert all(tpl == stored for tpl, _ in pinned.values()), pinned

    def unpinned():
        # Until the API server serves the new CRD (a moment after the apply) the old one's
        # default would write the image back: removed until it stays away.
        if "image" not in sp_status()["spec"]["processors"]:
            return True
        kubectl("patch", "sp", PIPELINE, "-n", NS, "--type", "json",
                "-p", '[{"op": "remove", "path": "/spec/processors/image"}]')
        return "image" not in sp_status()["spec"]["processors"]
    wait_for("the pipeline stored without processors.image", unpinned, 60, interval=1)
    log(f"{time.time() - t0:.0f} s: processors.image removed")
    # The roll begins while readings still flow.
    wait_for("the operator to move the Deployments to the new image",
             lambda: all(tpl == UPGRADE_IMAGE for tpl, _ in stage_images().values()), 120, interval=1)
    log(f"{time.time() - t0:.0f} s: Deployments on {UPGRADE_IMAGE}")
    assert proc.poll() is None, (f"the replay ended {time.time() - t0:.0f} s in, before the processors rolled: "
                                 "not an upgrade under load")
    wait_for(f"every processor pod on {UPGRADE_IMAGE}", lambda: rolled_to(UPGRADE_IMAGE), 300, interval=3)
    log(f"{time.time() - t0:.0f} s: every processor pod rolled; replay running: {proc.poll() is None}")
    assert proc.wait(timeout=300) == 0, "replay failed (see logs/replay.log)"
    log(f"replay done after {time.time() - t0:.0f} s")
    wait_for("window and join groups drained", drained, 300, interval=5)
    checked = check_nothing_lost(day)
    n = check_predictions(day, checked)
    log(f"upgrade: {len(checked.want)} readings, {n} predictions, {checked.dups} duplicate feature records, "
        f"{checked.pred_dups} duplicate predictions")
    assert_exactly_once(checked)
    assert rolled_to(UPGRADE_IMAGE)
    assert "image" not in sp_status()["spec"]["processors"]
    wait_for("the pipeline Ready", lambda: condition(sp_status(), "Ready").get("status") == "True", 180)
    log("\n" + kubectl("get", "sp", "-n", NS))


# --- 3 ----------------------------------------------------------------------------------------
def test_3_replay_predictions_and_parquet():
    day = day_ms("2026-01-01")
    before = count(TOPICS["sz"])  # scenario 2b's day
    summary = replay(KAFKA_PREFIX, "--clients", "4", "--rows-per-client", "180", "--base-date", "2026-01-01")
    log(f"replayed: {summary}")
    sz = wait_for("features for every SZ reading", lambda: (lambda n, f: n if n and f >= n else None)(
        count(TOPICS["sz"]), count(TOPICS["fd"])), 300)
    wait_for("window and join groups drained", drained, 300)
    checked = check_nothing_lost(day)
    assert len(checked.want) == sz - before
    check_predictions(day, checked)
    assert_exactly_once(checked)

    # The sink archives every record of the predictions topic as Parquet rows.
    bucket, prefix = manifest()["spec"]["sink"]["bucket"], manifest()["spec"]["sink"]["prefix"]
    on_topic = {(r.partition, r.offset) for r in read_all(TOPICS["predictions"])}

    def archived():
        rows = set()
        names = [n for n in gcs_list(bucket, f"{prefix}topic={TOPICS['predictions']}/") if n.endswith(".parquet")]
        for n in names:
            t = pq.read_table(gcs_read(bucket, n), columns=["kafka_partition", "kafka_offset"])
            rows |= set(zip(t.column("kafka_partition").to_pylist(), t.column("kafka_offset").to_pylist()))
        log(f"{len(names)} Parquet files, {len(rows)} of {len(on_topic)} prediction records")
        return names if rows >= on_topic else None

    names = wait_for("the predictions in Parquet in the GCS server", archived, 240, interval=5)
    # Partitioned by event date: scenario 2b's day and this one.
    assert {n.split("/date=")[1].split("/")[0] for n in names} == {"2025-12-30", "2026-01-01"}, names[:5]


# --- 4 ---------------------------------------------------------------------------------------
def test_4_backlog_scales_up_then_down_nothing_lost():
    day = day_ms("2026-01-02")
    stop, seen = threading.Event(), {}
    watcher = threading.Thread(target=scale_watch, args=(stop, seen), daemon=True)
    watcher.start()
    try:
        # A backlog the throttled window (WINDOW_CPU_LIMIT) needs tens of seconds for: on Apache
        # Kafka 21,600 readings at 200m drained in ~6 s, before the operator's first step.
        t0 = time.time()
        summary = replay(KAFKA_PREFIX, "--clients", "60", "--rows-per-client", "720", "--base-date", "2026-01-02")
        log(f"replayed in {time.time() - t0:.1f} s: {summary}")
        wait_for("window and join groups drained", drained, 300, interval=5)
        log(f"drained {time.time() - t0:.1f} s after the replay started")
    finally:
        stop.set()
        watcher.join(timeout=30)
    w = seen.get("window", [])
    j = seen.get("join", [])
    log(f"(replicas, ready) seen: window {sorted(set(w))}, join {sorted(set(j))}")
    cap = min(SCALE["maxReplicas"], 100)  # 100 partitions per topic
    assert w and max(n for n, _ in w) > 1, f"the window was never scaled up: {w}"
    assert all(n <= cap for n, _ in w + j), f"replicas above min(maxReplicas, partitions) = {cap}: {w} {j}"
    # The scale-up is real: more than one window pod became Ready, not only spec.replicas.
    assert max(r for _, r in w) > 1, f"never more than one window pod Ready: {w}"
    events = kubectl("get", "events", "-n", NS, "--field-selector", "reason=ScaledUp")
    assert "ScaledUp" in events, events
    checked = check_nothing_lost(day)
    check_predictions(day, checked)
    # Scale steps under load (rebalances with open transactions) repeat nothing.
    assert_exactly_once(checked)
    # Back to minReplicas once the lag stayed low for the cooldown.
    for stage, floor in [("window", SCALE["minReplicas"]), ("join", JOIN_MIN)]:
        wait_for(f"{stage} back to {floor} replicas after the {COOLDOWN_S} s cooldown",
                 lambda: deployment(stage)["spec"]["replicas"] == floor, COOLDOWN_S + 120, interval=3)
    assert "ScaledDown" in kubectl("get", "events", "-n", NS, "--field-selector", "reason=ScaledDown")
    log("\n" + kubectl("get", "sp", "-n", NS))


# --- 5 ---------------------------------------------------------------------------------------
def kill9(ns, pod, binary):
    """SIGKILLs `binary` in pod `ns/pod` from the host (a crash, not a graceful stop: no
    transaction aborted, nothing flushed; the kubelet restarts the container in place, with the
    same HOSTNAME and so the same transactional.id). Finds the process through /proc by its
    executable name and its HOSTNAME (the pod's name); needs root on a host that runs the
    node's processes (tests/cluster/node.sh, or kind). Returns the PID killed."""
    for pid in [d for d in os.listdir("/proc") if d.isdigit()]:
        try:
            if os.path.basename(os.readlink(f"/proc/{pid}/exe")) != binary:
                continue
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:  # exited meanwhile, or not ours to read
            continue
        if f"HOSTNAME={pod}".encode() in env:
            os.kill(int(pid), signal.SIGKILL)
            return int(pid)
    raise AssertionError(f"no {binary} process of pod {ns}/{pod} visible in /proc (the node's processes "
                         "must run on this host and the test as root)")


def restarts(ns, pod):
    return sum(c.get("restartCount", 0) for c in kjson("get", "pod", "-n", ns, pod)["status"].get("containerStatuses", []))


def test_5_chaos_processor_and_operator_pods_deleted_mid_replay():
    day = day_ms("2026-01-03")
    # 12 whole days at 1440 event-seconds per wall-second: ~17,000 readings spread over ~60 s,
    # so every fault below lands while readings flow and transactions are open.
    t0 = time.time()
    proc = replay(KAFKA_PREFIX, "--clients", "12", "--rows-per-client", "1440", "--base-date", "2026-01-03",
                  "--speed", "1440", wait=False)
    op_before = pods_ready(OP_NS, f"app.kubernetes.io/instance={RELEASE}")[0]["metadata"]["name"]
    stage = lambda s: f"sensorflow.io/pipeline={PIPELINE},app.kubernetes.io/component={s}"  # noqa: E731
    killed = None
    for at, action, ns, selector in [
        (12, "delete", NS, stage("window")),
        (22, "kill -9", NS, stage("join")),
        (32, "delete", NS, stage("join")),
        (40, "delete", OP_NS, f"app.kubernetes.io/instance={RELEASE}"),
    ]:
        time.sleep(max(0.0, t0 + at - time.time()))
        assert proc.poll() is None, f"the replay ended after {time.time() - t0:.0f} s, before the {action} at {at} s"
        pods = [p for p in kjson("get", "pods", "-n", ns, "-l", selector)["items"] if not p["metadata"].get("deletionTimestamp")]
        victim = next((p for p in pods if p["metadata"]["name"] != killed), pods[0])["metadata"]["name"]
        if action == "kill -9":
            before = restarts(ns, victim)
            log(f"{at} s: kill -9 join-predict (pid {kill9(ns, victim, 'join-predict')}) in pod {ns}/{victim}")
            killed = victim
        else:
            log(f"{at} s: deleting pod {ns}/{victim}")
            kubectl("delete", "pod", "-n", ns, victim, "--wait=false")
    assert proc.wait(timeout=300) == 0, "replay failed (see logs/replay.log)"
    log(f"replay done after {time.time() - t0:.0f} s")
    wait_for(f"the killed container of {killed} restarted in place", lambda: restarts(NS, killed) > before, 120)
    op_after = wait_for("a new operator pod Ready", lambda: pods_ready(OP_NS, f"app.kubernetes.io/instance={RELEASE}"), 240)
    assert op_after[0]["metadata"]["name"] != op_before
    wait_for("window and join groups drained", drained, 300, interval=5)
    for s in ["window", "join", "sink"]:
        wait_for(f"{s} Deployment available again", lambda: (lambda d: d["status"].get("availableReplicas", 0)
                 >= d["spec"]["replicas"])(deployment(s)), 240)
    checked = check_nothing_lost(day)
    n = check_predictions(day, checked)
    log(f"chaos: {len(checked.want)} readings, {n} predictions, {checked.dups} duplicate feature records, "
        f"{checked.pred_dups} duplicate predictions (exactly-once)")
    # ExactlyOnce: pods deleted or killed mid-transaction leave nothing twice for a read_committed reader.
    assert_exactly_once(checked)
    # The restarted operator still reconciles: the pipeline is Ready again.
    wait_for("the pipeline Ready", lambda: condition(sp_status(), "Ready").get("status") == "True", 180)


# --- 5b --------------------------------------------------------------------------------------
def stage_pods(stage):
    return [p for p in kjson("get", "pods", "-n", NS, "-l",
                             f"sensorflow.io/pipeline={PIPELINE},app.kubernetes.io/component={stage}")["items"]]


def test_5b_suspend_to_zero_pods_then_resume_continues_from_committed_offsets():
    # Everything of the earlier days is processed and committed first.
    wait_for("window and join groups drained", drained, 300, interval=5)
    before_fd = len(features("FD", None))
    kubectl("patch", "sp", PIPELINE, "-n", NS, "--type", "merge", "-p", '{"spec": {"suspend": true}}')
    for s in ["window", "join", "sink"]:
        wait_for(f"{s} Deployment at 0 replicas and no pod left",
                 lambda: deployment(s)["spec"]["replicas"] == 0 and not stage_pods(s), 180, interval=3)
    st = wait_for("phase Suspended", lambda: (lambda x: x if x["status"].get("phase") == "Suspended" else None)(sp_status()), 60)
    assert condition(st, "Suspended").get("status") == "True"
    log("\n" + kubectl("get", "sp", "-n", NS))
    # A day of readings arrives while suspended: the topics are kept, nothing processes them.
    day = day_ms("2026-01-04")
    summary = replay(KAFKA_PREFIX, "--clients", "4", "--rows-per-client", "180", "--base-date", "2026-01-04")
    log(f"replayed while suspended: {summary}")
    time.sleep(10)
    assert set(TOPICS.values()) <= list_topics()
    assert len(features("FD", None)) == before_fd, "features written while suspended"
    lag = group_lag(f"{KAFKA_PREFIX}-window", [TOPICS["sz"]])
    assert lag > 0, "the window group has nothing to catch up"
    # Resume: the stages come back and continue from their committed offsets.
    kubectl("patch", "sp", PIPELINE, "-n", NS, "--type", "merge", "-p", '{"spec": {"suspend": false}}')
    for s in ["window", "join", "sink"]:
        wait_for(f"{s} pods Running and Ready again", lambda: pods_ready(
            NS, f"sensorflow.io/pipeline={PIPELINE},app.kubernetes.io/component={s}"), 240)
    wait_for("window and join groups drained after resume", drained, 300, interval=5)
    checked = check_nothing_lost(day)
    check_predictions(day, checked)
    # Continued from the committed offsets: nothing of the earlier days processed again (no
    # duplicates under ExactlyOnce) and nothing of the suspended day lost.
    assert_exactly_once(checked)
    assert len(features("FD", None)) == before_fd + len(checked.want), "earlier days' features written again"
    wait_for("the pipeline Ready", lambda: condition(sp_status(), "Ready").get("status") == "True", 180)


# --- 5c ---------------------------------------------------------------------------------------
HOP = "hop"
HOP_PREFIX = f"{NS}.{HOP}"
HOP_TOPICS = {r: f"{HOP_PREFIX}.{r}" for r in ROLES}
HOP_PARTITIONS = 4
# A non-default window: hopping 10 min every 1 min, each window emitted once when it closes; a
# whole-minute grace puts the watermark on window ends (the replay's readings are on minutes):
# the closing rule watermark >= end is exercised at equality.
HOP_WINDOW = {"kind": "Hopping", "sizeMs": 600_000, "advanceMs": 60_000, "emit": "Final", "time": "EventTime",
              "graceMs": 60_000, "watermarkScope": "partition"}


def hop_manifest():
    """The example pipeline as a second pipeline `hop` with HOP_WINDOW (aggregates: the default
    FA=Mean, FI=Integral, FD=Derivative), 4 partitions, one replica per stage, no sink, and
    deletionPolicy Delete (its topics go with it)."""
    sp = manifest()
    sp["metadata"]["name"] = HOP
    spec = sp["spec"]
    spec["window"].update(HOP_WINDOW)
    spec["topics"].update(partitions=HOP_PARTITIONS, deletionPolicy="Delete")
    spec.pop("sink")
    p = spec["processors"]
    p["window"] = {"minReplicas": 1, "maxReplicas": 1}
    p["join"] = {"minReplicas": 1, "maxReplicas": 1}
    return sp


def test_5c_hopping_final_window_features_exact_and_one_prediction_per_triple():
    """A second pipeline with hopping 10 min / 1 min windows emitted final: every feature
    record equals sfref's aligned-window definition (window bounds, event time end - 1, count,
    value bit for bit, bin, source_index), each SZ reading accounted for; the join pairs each
    (SZ partition, offset, index) triple once into a features-triggered prediction holding its
    bins and the as-of SX and SY; SX/SY-triggered predictions hold the as-of triple."""
    t0 = time.time()
    kubectl("apply", "-f", "-", input=yaml.safe_dump(hop_manifest()))
    wait_for("the hop pipeline Ready", lambda: condition(kjson("get", "sp", HOP, "-n", NS), "Ready").get("status")
             == "True", 240)
    summary = replay(HOP_PREFIX, "--clients", "3", "--rows-per-client", "90", "--base-date", "2026-01-05")
    log(f"hop: replayed {summary}")

    def hop_drained():
        lw = group_lag(f"{HOP_PREFIX}-window", [HOP_TOPICS["sz"]], HOP_PARTITIONS)
        lj = group_lag(f"{HOP_PREFIX}-join", [HOP_TOPICS[r] for r in ["sx", "sy", "fa", "fi", "fd"]], HOP_PARTITIONS)
        log(f"hop lag: window {lw}, join {lj}")
        return lw == 0 and lj == 0 and count(HOP_TOPICS["sz"], HOP_PARTITIONS) > 0

    wait_for("the hop pipeline's groups drained", hop_drained, 300, interval=3)

    # Features: the reference from the SZ topic in each partition's arrival order.
    sz = sorted(read_all(HOP_TOPICS["sz"], HOP_PARTITIONS), key=lambda r: (r.partition, r.offset))
    records = []
    for r in sz:
        f = decode(r.value)
        records.append((r.partition, r.offset, r.key.decode(), signed(f.get(1, [0])[0]), field_double(f, 2)))
    w = HOP_WINDOW
    want = aligned_outcomes(records, w["kind"], w["sizeMs"], w["advanceMs"], w["emit"], w["graceMs"],
                            w["watermarkScope"])
    late = late_records(HOP_TOPICS["late"], HOP_PARTITIONS)
    assert not [k for k, o in want.items() if o == "late"], "the replay sends in event-time order"
    triples = {}  # (p, o, index) -> {kind: feature}
    dups = 0
    for kind in ["FA", "FI", "FD"]:
        for r in read_all(HOP_TOPICS[kind.lower()], HOP_PARTITIONS):
            f = decode_feature(r.value)
            slot = triples.setdefault((f["source_partition"], f["source_offset"], f["source_index"]), {})
            dups += kind in slot
            slot[kind] = f
    assert dups == 0, f"{dups} repeated feature records with ExactlyOnce"
    expected = {(p, o, i): em for (p, o), ems in want.items() for i, em in enumerate(ems)}
    assert set(triples) == set(expected), (f"missing {sorted(set(expected) - set(triples))[:3]}, "
                                           f"unexpected {sorted(set(triples) - set(expected))[:3]}")
    assert len(expected) >= 100, len(expected)
    defaults = {"FA": "Mean", "FI": "Integral", "FD": "Derivative"}
    bins = {}
    for key, em in expected.items():
        got = triples[key]
        assert set(got) == {"FA", "FI", "FD"}, (key, sorted(got))
        for kind, f in got.items():
            value = aggregate(defaults[kind], em["window"])
            assert (f["client_id"], f["window_start_ms"], f["window_end_ms"], f["event_time_ms"], f["window_count"]) \
                == (em["client"], em["start"], em["end"], em["end"] - 1, em["count"]), f"{kind} {key}: {f} != {em}"
            assert f["value"].hex() == value.hex(), f"{kind} {key}: {f['value']!r} != {value!r}"
            assert f["bin"] == bin_of(value, *RANGES[kind]), f"{kind} {key}: bin {f['bin']}"
        bins[key] = [got[k]["bin"] for k in ["FA", "FI", "FD"]]
    log(f"hop: {len(expected)} final windows of {len(records)} readings equal the reference")

    # Predictions: each triple once, with the as-of SX and SY at its event time (end - 1).
    stores = {"sx": AsOf(), "sy": AsOf(), "features": AsOf()}
    own = {}
    for kind in ["sx", "sy"]:
        for r in read_all(HOP_TOPICS[kind], HOP_PARTITIONS):
            f = decode(r.value)
            own[(HOP_TOPICS[kind], r.partition, r.offset)] = int(field_double(f, 2))
            if (HOP_TOPICS[kind], r.partition, r.offset) not in late:
                stores[kind].add(r.key.decode(), signed(f.get(1, [0])[0]), (r.partition, r.offset),
                                 int(field_double(f, 2)))
    for key, em in expected.items():
        stores["features"].add(em["client"], em["end"] - 1, key, (key, bins[key]))
    seen = collections.Counter()
    last_triple = {}
    for key, em in expected.items():
        last_triple[em["client"]] = max(last_triple.get(em["client"], em["end"] - 1), em["end"] - 1)
    checked_sxsy = 0
    for r in read_all(HOP_TOPICS["predictions"], HOP_PARTITIONS):
        p = decode_prediction(r.value)
        trig, t, client = TRIGGER_NAMES[p["trigger"]], p["event_time_ms"], p["client_id"]
        src = (p["features_source_partition"], p["features_source_offset"], p["features_source_index"])
        if trig == "features":
            assert src in expected, f"{client} {t}: a prediction of triple {src}, which the reference has not"
            assert t == expected[src]["end"] - 1, (t, expected[src])
            want_v = expected_vector("features", t, (src, bins[src]), client, stores["sx"], stores["sy"],
                                     stores["features"])
            seen[("features", src)] += 1
        else:
            at = (p["source_topic"], p["source_partition"], p["source_offset"])
            assert at in own, f"{client} {t}: trigger {at} was never sent"
            seen[(trig, at)] += 1
            if t > last_triple.get(client, t):
                continue  # after the last closed window: released by the join's idle timeout
            want_v = expected_vector(trig, t, own[at], client, stores["sx"], stores["sy"], stores["features"])
            checked_sxsy += 1
        assert want_v is not None, f"{client} {t}: a {trig} prediction where an input is missing or stale"
        assert p["features"] == want_v[0], f"{client} {t} ({trig}): {p['features']} != as-of {want_v[0]}"
        assert src == want_v[1], f"{client} {t} ({trig}): triple {src}, as-of says {want_v[1]}"
    assert all(n == 1 for n in seen.values()), [k for k, n in seen.items() if n > 1][:5]
    missing = [k for k in expected if ("features", k) not in seen]
    assert not missing, f"{len(missing)} of {len(expected)} triples have no prediction, e.g. {missing[:3]}"
    log(f"hop: one features-triggered prediction per triple ({len(expected)}), {checked_sxsy} SX/SY-triggered "
        f"ones hold the as-of triple; scenario {time.time() - t0:.0f} s")
    kubectl("delete", "sp", HOP, "-n", NS, "--timeout", "180s")
    wait_for("the hop pipeline's topics deleted", lambda: not (set(HOP_TOPICS.values()) & list_topics()), 120)


# --- 6 ----------------------------------------------------------------------------------------
def test_6_delete_pipeline_garbage_collects_owned_objects_topics_retained():
    selector = f"sensorflow.io/pipeline={PIPELINE}"
    assert kjson("get", "deployments,configmaps,services,serviceaccounts", "-n", NS, "-l", selector)["items"]
    kubectl("delete", "sp", PIPELINE, "-n", NS, "--timeout", "120s")
    wait_for("owned objects garbage-collected", lambda: not kjson(
        "get", "deployments,replicasets,pods,configmaps,services,serviceaccounts", "-n", NS, "-l", selector)["items"], 180)
    # deletionPolicy: Retain (the example's): the topics and their data stay.
    assert set(TOPICS.values()) <= list_topics()
    assert count(TOPICS["sz"]) > 0

    # deletionPolicy: Delete: a second pipeline's topics go with it (finalizer sensorflow.io/topics).
    gone = {"apiVersion": "sensorflow.io/v1alpha1", "kind": "SensorPipeline",
            "metadata": {"name": "gone", "namespace": NS},
            "spec": {"kafka": {"bootstrapServers": BOOT},
                     "topics": {"partitions": 4, "deletionPolicy": "Delete"},
                     "processors": {"resources": {"requests": {"cpu": "10m", "memory": "32Mi"}},
                                    "window": {"maxReplicas": 2}, "join": {"minReplicas": 1, "maxReplicas": 2}}}}
    kubectl("apply", "-f", "-", input=yaml.safe_dump(gone))
    names = {f"{NS}.gone.{r}" for r in ROLES}
    wait_for("the Delete-policy pipeline's topics", lambda: names <= list_topics(), 120)
    assert "sensorflow.io/topics" in kjson("get", "sp", "gone", "-n", NS)["metadata"].get("finalizers", [])
    kubectl("delete", "sp", "gone", "-n", NS, "--timeout", "180s")
    wait_for("the Delete-policy pipeline's topics deleted", lambda: not (names & list_topics()), 120)


# --- 7 ----------------------------------------------------------------------------------------
def test_7_helm_uninstall_leaves_no_operator_objects():
    log(helm("uninstall", RELEASE, "-n", OP_NS, "--wait", "--timeout", "3m"))
    selector = f"app.kubernetes.io/instance={RELEASE}"
    wait_for("operator objects gone", lambda: not kjson(
        "get", "deployments,replicasets,pods,services,serviceaccounts,configmaps,roles,rolebindings,leases",
        "-n", OP_NS, "-l", selector)["items"], 180)
    assert not kjson("get", "clusterroles,clusterrolebindings", "-l", selector)["items"]
    leftovers = [o["metadata"]["name"] for o in kjson("get", "leases,configmaps,secrets", "-n", OP_NS)["items"]
                 if not o["metadata"]["name"].startswith(("kube-root-ca", "default-token"))]
    assert not leftovers, f"left in {OP_NS}: {leftovers}"
    # Helm's CRD policy: CRDs from the chart's crds/ are installed once and never deleted, so
    # pipelines (and their data) survive an uninstall; `kubectl delete crd` removes it.
    kjson("get", "crd", "sensorpipelines.sensorflow.io")
    kubectl("delete", "crd", "sensorpipelines.sensorflow.io", "--timeout", "120s", timeout=180)
