#!/usr/bin/env python3
"""Ventricular sensitivity and positive predictivity of the supervised beat classifier at
several thresholds on P(V), from the beats `tsad eval ecg --train-records … --test-records …
--beats-out FILE` wrote (its `surprise` column is P(V) in supervised mode).

Counted as EC57 prescribes, as `tsad eval ecg` counts its `overall`: beats in each record's
first 300 s (its learning period) are not scored, and a fusion beat called V is not a false
positive. Several files are pooled (leave-one-record-out runs, say). docs/EVALUATION.md
("A threshold on the probability of V") was made with it.

    scripts/v-threshold-sweep.py beats.csv [more.csv ...] [--thresholds 0.25,0.3,...]
"""
import argparse
import csv

LEARN_S = 300.0
FS = 360.0  # MIT-BIH's sampling rate


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("beats", nargs="+")
    p.add_argument("--thresholds", default="0.25,0.3,0.35,0.4,0.45,0.5,0.55,0.6")
    a = p.parse_args()
    rows = []
    for path in a.beats:
        with open(path, newline="") as f:
            rows += [r for r in csv.DictReader(f) if float(r["sample"]) >= LEARN_S * FS and r["class"] != "Q"]
    print(f"{len(rows)} beats scored from {len(a.beats)} file(s)")
    print(f"{'P(V) >=':>8} {'Se V %':>7} {'+P V %':>7} {'V beats':>8} {'false +':>8}")
    for t in (float(x) for x in a.thresholds.split(",")):
        tp = fn = fp = 0
        for r in rows:
            called = float(r["surprise"]) >= t
            if r["class"] == "V":
                tp, fn = tp + called, fn + (not called)
            elif called and r["class"] in ("N", "S"):
                fp += 1
        se = 100.0 * tp / (tp + fn) if tp + fn else float("nan")
        pp = 100.0 * tp / (tp + fp) if tp + fp else float("nan")
        print(f"{t:>8.2f} {se:>7.1f} {pp:>7.1f} {tp + fn:>8} {fp:>8}")


if __name__ == "__main__":
    main()
