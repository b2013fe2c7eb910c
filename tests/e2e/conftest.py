"""Shared plumbing of the e2e scenarios: kubectl/helm, the broker seen from the host, the GCS
server, waiting, and diagnostics dumped when a scenario fails.

Everything here talks to real components: the cluster through the caller's KUBECONFIG, the
broker through kafka-python (not librdkafka), GCS through its JSON API.
"""

import io
import json
import os
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest

# sfref (the independent reference) and sfproto (the hand-written protobuf decoder), imported
# by test_e2e.py.
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "independent"))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "lib"))

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition  # noqa: E402

KUBECTL = os.environ.get("KUBECTL", "kubectl")
HELM = os.environ.get("HELM", "helm")
BOOT = os.environ.get("SF_E2E_BOOTSTRAP", "")
GCS = os.environ.get("SF_E2E_GCS", "")
BIN = os.environ.get("SF_E2E_BIN_DIR", "")
WORK = os.environ.get("SF_E2E_WORK", "/tmp/sensorflow-e2e")
IMAGE = os.environ.get("SENSORFLOW_E2E_IMAGE", "sensorflow/sensorflow:0.1.0")
# The helm-upgrade scenario: the operator's second version (a second tag of IMAGE on the nodes)
# and the previous chart version it upgrades from (extracted from git by run.sh).
UPGRADE_IMAGE = os.environ.get("SENSORFLOW_E2E_UPGRADE_IMAGE", "")
PREVIOUS_CHART = os.environ.get("SF_E2E_PREVIOUS_CHART", "")
PREVIOUS_CHART_REF = os.environ.get("SF_E2E_PREVIOUS_CHART_REF", "")
REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))

OP_NS = "sensorflow-system"
RELEASE = "sensorflow"
NS = "sensorflow-e2e"


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --- kubectl / helm -------------------------------------------------------------------------
def run(cmd, input=None, check=True, timeout=600):
    p = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {p.returncode}:\n{p.stdout}\n{p.stderr}")
    return p


def kubectl(*args, input=None, check=True, timeout=600):
    return run([KUBECTL, *args], input=input, check=check, timeout=timeout).stdout


def kjson(*args):
    return json.loads(kubectl(*args, "-o", "json"))


def helm(*args, check=True, timeout=600):
    return run([HELM, *args], check=check, timeout=timeout).stdout


def wait_for(what, fn, timeout, interval=2.0):
    """Polls `fn` until it returns a truthy value; fails with `what` and fn's last answer."""
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            last = fn()
        except (AssertionError, OSError, ValueError, KeyError) as e:  # not there yet
            last = e
        if last and not isinstance(last, Exception):
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}; last: {last!r}")


def condition(obj, kind):
    for c in obj.get("status", {}).get("conditions", []) or []:
        if c.get("type") == kind:
            return c
    return {}


def pods_ready(ns, selector):
    pods = kjson("get", "pods", "-n", ns, "-l", selector)["items"]
    live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
    if not live:
        return False
    return all(p["status"].get("phase") == "Running" and condition(p, "Ready").get("status") == "True" for p in live) and live


# --- Kafka, seen from the host --------------------------------------------------------------
def admin():
    return KafkaAdminClient(bootstrap_servers=BOOT, request_timeout_ms=30000)


def consumer():
    # read_committed: the pipeline runs with ExactlyOnce; aborted outputs are not outputs.
    return KafkaConsumer(bootstrap_servers=BOOT, enable_auto_commit=False, consumer_timeout_ms=3000,
                         isolation_level="read_committed")


def partitions_of(topics):
    a = admin()
    try:
        return {t["name"]: len(t["partitions"]) for t in a.describe_topics(topics) if t.get("error_code", 0) == 0}
    finally:
        a.close()


def list_topics():
    a = admin()
    try:
        return set(a.list_topics())
    finally:
        a.close()


def end_offsets(topic, partitions):
    c = consumer()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        return c.end_offsets(tps)
    finally:
        c.close()


def count(topic, partitions=100):
    return sum(end_offsets(topic, partitions).values())


def read_all(topic, partitions=100):
    """Every record of `topic`, from the beginning to the end offsets taken at the call."""
    c = consumer()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        c.assign(tps)
        c.seek_to_beginning(*tps)
        end = c.end_offsets(tps)
        out = []
        deadline = time.time() + 300
        while any(c.position(tp) < end[tp] for tp in tps):
            assert time.time() < deadline, f"reading {topic} took over 300 s"
            for records in c.poll(timeout_ms=500, max_records=5000).values():
                out.extend(records)
        return out
    finally:
        c.close()


def group_lag(group, topics, partitions=100):
    """Committed-offset lag of `group` over `topics` (partitions without a commit count from 0)."""
    a = admin()
    try:
        committed = a.list_group_offsets(group).get(group, {})
    finally:
        a.close()
    lag = 0
    for t in topics:
        for tp, end in end_offsets(t, partitions).items():
            meta = committed.get(tp)
            lag += end - (meta.offset if meta is not None and meta.offset >= 0 else 0)
    return lag


# --- GCS JSON API ---------------------------------------------------------------------------
def gcs(method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(GCS + path, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.read()


def gcs_buckets():
    return {b["name"] for b in json.loads(gcs("GET", "/storage/v1/b")).get("items", [])}


def gcs_list(bucket, prefix):
    names, token = [], None
    while True:
        q = {"prefix": prefix}
        if token:
            q["pageToken"] = token
        page = json.loads(gcs("GET", f"/storage/v1/b/{bucket}/o?{urllib.parse.urlencode(q)}"))
        names += [o["name"] for o in page.get("items", [])]
        token = page.get("nextPageToken")
        if not token:
            return names


def gcs_read(bucket, name):
    return io.BytesIO(gcs("GET", f"/download/storage/v1/b/{bucket}/o/{urllib.parse.quote(name, safe='')}?alt=media"))


# --- replay from the host -------------------------------------------------------------------
def replay(pipeline, *args, wait=True):
    """Runs the host-built `replay` against the input topics `<pipeline>.sx|sy|sz` (`pipeline`:
    the pipeline's topic prefix without its last dot); returns its summary
    (JSON) when `wait`, else the running process."""
    summary = os.path.join(WORK, f"replay-{time.time_ns()}.json")
    cmd = [os.path.join(BIN, "replay"), "--bootstrap-servers", BOOT,
           "--topic-sx", f"{pipeline}.sx", "--topic-sy", f"{pipeline}.sy", "--topic-sz", f"{pipeline}.sz",
           "--input", os.path.join(REPO, "data", "household_power.csv.xz"), "--summary-json", summary, *args]
    log("replay " + " ".join(args))
    logf = open(os.path.join(WORK, "logs", "replay.log"), "ab")
    p = subprocess.Popen(cmd, stdout=logf, stderr=logf)
    if not wait:
        p.summary = summary
        return p
    assert p.wait(timeout=900) == 0, "replay failed (see logs/replay.log)"
    with open(summary) as f:
        return json.load(f)


# --- diagnostics on failure -----------------------------------------------------------------
def diagnostics(name):
    """Writes the cluster's state to WORK/logs/NAME (objects, descriptions, events, every pod's
    log and, for restarted containers, the previous container's log) and prints a summary:
    pods, the namespace's recent events, and the tail of each unready or restarted pod's logs
    (a crash loop's reason is in the previous container's log)."""
    d = os.path.join(WORK, "logs", name)
    os.makedirs(d, exist_ok=True)
    for fname, cmd in {
        "get-all.txt": ["get", "all,sp,cm,lease", "-A", "-o", "wide"],
        "events.txt": ["get", "events", "-A", "--sort-by", ".lastTimestamp"],
        "describe-sp.txt": ["describe", "sp", "-n", NS],
        "describe-pods.txt": ["describe", "pods", "-A"],
    }.items():
        with open(os.path.join(d, fname), "w") as f:
            f.write(run([KUBECTL, *cmd], check=False, timeout=60).stdout)
    summary = [run([KUBECTL, "get", "pods", "-A", "-o", "wide"], check=False, timeout=60).stdout]
    events = run([KUBECTL, "get", "events", "-n", NS, "--sort-by", ".lastTimestamp"], check=False, timeout=60).stdout
    summary.append("events in " + NS + " (last 25):\n" + "\n".join(events.splitlines()[-25:]))
    for ns in (NS, OP_NS):
        p = run([KUBECTL, "get", "pods", "-n", ns, "-o", "json"], check=False, timeout=60)
        try:
            pods = json.loads(p.stdout)["items"]
        except ValueError:
            continue
        for pod in pods:
            name_ = pod["metadata"]["name"]
            statuses = pod.get("status", {}).get("containerStatuses", []) or []
            restarted = any(c.get("restartCount", 0) > 0 for c in statuses)
            unready = not all(c.get("ready") for c in statuses) or not statuses
            logs = run([KUBECTL, "logs", "-n", ns, name_, "--all-containers", "--tail", "2000"],
                       check=False, timeout=60).stdout
            with open(os.path.join(d, f"{ns}-{name_}.log"), "w") as f:
                f.write(logs)
            prev = ""
            if restarted:
                prev = run([KUBECTL, "logs", "-n", ns, name_, "--all-containers", "--previous", "--tail", "400"],
                           check=False, timeout=60).stdout
                with open(os.path.join(d, f"{ns}-{name_}.previous.log"), "w") as f:
                    f.write(prev)
            # Warnings and errors (aborted transactions, refused commits, rebuilds) of every pod.
            warn = [ln[:400] for ln in logs.splitlines() if '"level":"WARN"' in ln or '"level":"ERROR"' in ln]
            if warn:
                summary.append(f"{ns}/{name_}: {len(warn)} WARN/ERROR lines, the last ones:\n" + "\n".join(warn[-8:]))
            if restarted or unready:
                # Rebalance lines list hundreds of partitions: cut long lines.
                tail = [ln[:400] for ln in (prev or logs).splitlines()[-12:]]
                summary.append(f"{ns}/{name_} ({'previous container' if prev else 'log'}, last lines):\n"
                               + "\n".join(tail))
    log(f"diagnostics in {d}:\n" + "\n\n".join(summary))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.when != "call" or not rep.failed:
        return
    # The failure itself at once (pytest prints it only after every scenario has run).
    log(f"{item.name} failed:\n" + "\n".join(rep.longreprtext.splitlines()[-15:]))
    try:
        diagnostics(item.name)
    except Exception as e:  # noqa: BLE001 - diagnostics must never hide the failure itself
        log(f"collecting diagnostics failed: {e!r}")
