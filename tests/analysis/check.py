"""Independent checks of the analysis job's output (pyarrow, pandas, numpy; no Spark).

    check.py download --endpoint URL --src BUCKET/PATH --dst DIR
    check.py counts   --archive A [--endpoint URL] --report DIR [--sink-summary FILE]
    check.py label    --archive A [--endpoint URL] --report DIR
    check.py auc      --report DIR
    check.py pictures --report DIR

A is a local directory or gs://BUCKET/PREFIX (read through pyarrow's GCS filesystem at URL,
anonymously). The archive is read file by file from the object listing, without Hive
partition discovery; topic names are the processors' defaults. Each command prints what it
compared and exits 1 on any difference.
"""

import argparse
import json
import os
import struct
import sys

import numpy as np
import pandas as pd
import pyarrow.fs as pafs
import pyarrow.parquet as pq

IDENT = ["trigger", "source_topic", "source_partition", "source_offset"]
FEATURES = ["f_sx", "f_sy", "f_fa_bin", "f_fi_bin", "f_fd_bin"]


def filesystem(archive, endpoint):
    """(pyarrow filesystem, root path inside it)."""
    if archive.startswith("gs://"):
        host = endpoint.split("://", 1)[1].rstrip("/")
        fs = pafs.GcsFileSystem(anonymous=True, endpoint_override=host, scheme=endpoint.split("://", 1)[0])
        return fs, archive[len("gs://") :].rstrip("/")
    return pafs.LocalFileSystem(), os.path.abspath(archive)


def topic_files(fs, root):
    """topic → [object paths], from a recursive listing; hidden and temporary files skipped as
    Spark skips them."""
    out = {}
    for info in fs.get_file_info(pafs.FileSelector(root, recursive=True)):
        if info.type != pafs.FileType.File or not info.path.endswith(".parquet"):
            continue
        rel = info.path[len(root) :].lstrip("/").split("/")
        if any(p.startswith((".", "_")) for p in rel) or not rel[0].startswith("topic="):
            continue
        out.setdefault(rel[0][len("topic=") :], []).append(info.path)
    return out


def read_topic(fs, files, columns):
    frames = [pq.read_table(f, filesystem=fs, columns=columns).to_pandas() for f in files]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)


def ms(series):
    """Timestamp column → int64 Unix ms."""
    return series.astype("datetime64[ms, UTC]").astype("int64")


def load_summary(report):
    with open(os.path.join(report, "summary.json")) as f:
        return json.load(f)


def cmd_download(a):
    fs, _ = filesystem("gs://" + a.src, a.endpoint)
    n = 0
    for info in fs.get_file_info(pafs.FileSelector(a.src, recursive=True)):
        if info.type != pafs.FileType.File:
            continue
        rel = info.path[len(a.src) :].lstrip("/")
        dst = os.path.join(a.dst, rel)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        with fs.open_input_stream(info.path) as src, open(dst, "wb") as out:
            out.write(src.read())
        n += 1
    print(f"downloaded {n} objects from gs://{a.src} to {a.dst}")
    return n > 0


def cmd_counts(a):
    fs, root = filesystem(a.archive, a.endpoint)
    files = topic_files(fs, root)
    counts = {t: sum(pq.read_metadata(f, filesystem=fs).num_rows for f in fs_files) for t, fs_files in files.items()}
    s = load_summary(a.report)
    job = {s["topics"][role]: n for role, n in s["rows"].items()}
    ok = True
    print(f"{'topic':<14}{'pyarrow rows':>14}{'job rows':>10}{'files':>8}{'job files':>10}")
    for t in sorted(set(counts) | set(job)):
        role = next((r for r, name in s["topics"].items() if name == t), None)
        jf = s["files"].get(role) if role else None
        same = counts.get(t) == job.get(t) and len(files.get(t, [])) == jf
        ok &= same
        print(f"{t:<14}{counts.get(t, '–'):>14}{job.get(t, '–'):>10}{len(files.get(t, [])):>8}{jf if jf is not None else '–':>10}{'' if same else '   ✘'}")
    total = sum(counts.values())
    if a.sink_summary:
        with open(a.sink_summary) as f:
            sink = json.load(f)
        same = sink["rows_written"] == total and sink["files_written"] == sum(len(v) for v in files.values())
        print(f"sink summary: rows_written {sink['rows_written']}, files_written {sink['files_written']}; archive: {total} rows in {sum(len(v) for v in files.values())} files{'' if same else '   ✘'}")
        ok &= same
    # The hourly rows add up to the same totals.
    hourly = {}
    with open(os.path.join(a.report, "rows_per_topic_hour.csv")) as f:
        next(f)
        for line in f:
            t, _, _, rows, _ = line.strip().split(",")
            hourly[t] = hourly.get(t, 0) + int(rows)
    if hourly != counts:
        print(f"rows_per_topic_hour.csv sums {hourly} differ from {counts}   ✘")
        ok = False
    return ok


def independent_labels(preds, sz, exceed, horizon_ms):
    """The label by a different method than the job's join: per client, the sorted times of SZ
    readings above `exceed`, and a binary search for the first one after t."""
    preds = preds.drop_duplicates(IDENT).copy()
    sz = sz[np.isfinite(sz["value"])]
    last = sz.groupby("client_id")["te"].max()
    preds["last"] = preds["client_id"].map(last)
    kept = preds[preds["last"].notna() & (preds["t"] + horizon_ms <= preds["last"])].copy()
    ex = sz[sz["value"] > exceed]
    times = {c: np.sort(g["te"].to_numpy()) for c, g in ex.groupby("client_id")}
    labels = np.zeros(len(kept))
    for i, (c, t) in enumerate(zip(kept["client_id"], kept["t"])):
        arr = times.get(c)
        if arr is None:
            continue
        j = np.searchsorted(arr, t, side="right")
        labels[i] = 1.0 if j < len(arr) and arr[j] <= t + horizon_ms else 0.0
    kept["label"] = labels
    return kept, len(preds)


def cmd_label(a):
    fs, root = filesystem(a.archive, a.endpoint)
    files = topic_files(fs, root)
    s = load_summary(a.report)
    exceed, horizon = s["label"]["exceed"], s["label"]["horizon_ms"]
    preds = read_topic(fs, files.get(s["topics"]["predictions"], []), ["client_id", "event_time", *IDENT, *FEATURES])
    preds["t"] = ms(preds["event_time"])
    sz = read_topic(fs, files.get(s["topics"]["SZ"], []), ["client_id", "event_time", "value"])
    sz["te"] = ms(sz["event_time"])
    mine, n_preds = independent_labels(preds, sz, exceed, horizon)
    job = pd.read_parquet(os.path.join(a.report, "labels"))
    print(f"label: SZ > {exceed} within (t, t + {horizon} ms]; {len(sz)} SZ readings, {n_preds} distinct predictions")
    print(f"independent: {len(mine)} labelled, {int(mine['label'].sum())} positive; job: {len(job)} labelled, {int(job['label'].sum())} positive")
    m = mine.merge(job, on=IDENT, how="outer", suffixes=("_mine", "_job"), indicator=True)
    only_mine = int((m["_merge"] == "left_only").sum())
    only_job = int((m["_merge"] == "right_only").sum())
    both = m[m["_merge"] == "both"]
    differ = int((both["label_mine"] != both["label_job"]).sum())
    same_t = bool((both["t_mine"] == both["t_job"]).all())
    same_x = all((both[f + "_mine"].astype(float) == both[f + "_job"].astype(float)).all() for f in FEATURES)
    print(f"compared {len(both)} predictions: {differ} labels differ, {only_mine} only in mine, {only_job} only in the job's; event times equal: {same_t}; feature vectors equal: {same_x}")
    counts_ok = s["label"]["labelled"] == len(mine) and s["label"]["positive"] == int(mine["label"].sum()) and s["label"]["predictions"] == n_preds
    print(f"summary counts (predictions {s['label']['predictions']}, labelled {s['label']['labelled']}, positive {s['label']['positive']}) equal mine: {counts_ok}")
    return differ == 0 and only_mine == 0 and only_job == 0 and same_t and same_x and counts_ok and len(both) > 0


def rank_auc(scores, labels):
    """AUC by the Mann–Whitney rank sum (average ranks for ties)."""
    r = pd.Series(scores).rank(method="average").to_numpy()
    y = np.asarray(labels) == 1
    P, N = int(y.sum()), int((~y).sum())
    return (r[y].sum() - P * (P + 1) / 2) / (P * N)


def cmd_auc(a):
    import yaml

    s = load_summary(a.report)
    with open(os.path.join(a.report, "model-patch.yaml")) as f:
        patch = yaml.safe_load(f)
    job = pd.read_parquet(os.path.join(a.report, "labels"))
    test = job[job["split"] == "test"]
    x = test[FEATURES].to_numpy(dtype=float)
    y = test["label"].to_numpy()
    ok = True
    print(f"test split: {len(test)} predictions, {int(y.sum())} positive")
    print(f"{'model':<9}{'AUC (job)':>11}{'AUC (rank)':>12}{'precision':>11}{'recall':>8}{'threshold':>11}")
    result = {}
    for key, spec in (("trained", patch["spec"]["model"]), ("current", s["models"]["current"])):
        w = np.asarray(spec["weights"], dtype=float)
        # Left to right, as join-predict (Rust) and Spark compute w·x + b: the same rounding, so
        # vectors with mathematically equal scores tie here as they tie there.
        z = np.zeros(len(x))
        for i in range(5):
            z = z + x[:, i] * w[i]
        p = 1.0 / (1.0 + np.exp(-(z + float(spec["bias"]))))
        auc = rank_auc(p, y)
        thr = float(spec["threshold"])
        alert = p >= thr
        tp = int((alert & (y == 1)).sum())
        precision = tp / int(alert.sum()) if alert.sum() else 0.0
        recall = tp / int(y.sum())
        jt = s["models"][key]["test"]
        same = abs(auc - jt["auc"]) < 1e-6 and abs(jt["auc_mllib"] - jt["auc"]) < 1e-6 and abs(precision - jt["precision"]) < 1e-9 and abs(recall - jt["recall"]) < 1e-9
        ok &= same
        result[key] = auc
        print(f"{key:<9}{jt['auc']:>11.6f}{auc:>12.6f}{precision:>11.4f}{recall:>8.4f}{thr:>11.6g}{'' if same else '   ✘ differs from the job'}")
    better = result["trained"] >= result["current"]
    print(f"trained AUC {result['trained']:.6f} {'>=' if better else '<'} current AUC {result['current']:.6f}")
    return ok and better


def png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    if head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", head[16:24])


def cmd_pictures(a):
    import matplotlib.image as mpimg

    ok = True
    for name in ("alert_rate_by_hour.png", "roc.png", "feature_bins.png", "latency.png"):
        path = os.path.join(a.report, name)
        if not os.path.isfile(path):
            print(f"{name}: missing   ✘")
            ok = False
            continue
        size = png_size(path)
        pixels = mpimg.imread(path)
        distinct = len(np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0))
        good = size == (1000, 600) and os.path.getsize(path) > 10_000 and distinct > 8
        ok &= good
        print(f"{name}: {os.path.getsize(path)} bytes, {size[0]}x{size[1]} px, {distinct} colours{'' if good else '   ✘'}")
    return ok


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("download")
    d.add_argument("--endpoint", required=True)
    d.add_argument("--src", required=True)
    d.add_argument("--dst", required=True)
    for name in ("counts", "label"):
        p = sub.add_parser(name)
        p.add_argument("--archive", required=True)
        p.add_argument("--endpoint")
        p.add_argument("--report", required=True)
        if name == "counts":
            p.add_argument("--sink-summary")
    for name in ("auc", "pictures"):
        sub.add_parser(name).add_argument("--report", required=True)
    a = ap.parse_args()
    ok = {"download": cmd_download, "counts": cmd_counts, "label": cmd_label, "auc": cmd_auc, "pictures": cmd_pictures}[a.cmd](a)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
