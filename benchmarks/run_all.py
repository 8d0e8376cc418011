"""Run every benchmark script in benchmarks/ and collect their results into benchmarks/results/SUMMARY.md.

Scripts run one after another, each in its own process (so no benchmark inherits another's threads or imports),
with --quick passed to those that take it. A failing or timed-out script is recorded as such and the runner goes
on. SUMMARY.md (written atomically) has one line per benchmark (status, wall time, headline numbers and
targets) followed by each script's own results/NAME.md; benchmarks not selected this time keep their last
results, marked "not run". lut_fidelity and flops_vs_latency share one quick build (runs/bench-artifacts), so
the second reuses the first's export; flops_vs_latency takes early_exit's trained cpu-drn export instead when
runs/early_exit/cpu-drn holds one (then its mIoU is real). Scripts run in dependency order (ORDER). Output of
each script: runs/bench-logs/NAME.log.

    python benchmarks/run_all.py [--quick] [--only lut_fidelity,flops_vs_latency] [--timeout-s 1800]
    python benchmarks/run_all.py --summary-only     # run nothing: rebuild SUMMARY.md from the saved results
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results")
LOGS = os.path.join(ROOT, "runs", "bench-logs")
# Dependency order: exit_policy and gate_overhead read early_exit's artifacts; flops_vs_latency uses early_exit's
# trained cpu-drn export when it is there (real mIoU for its searches), else the shared quick build.
ORDER = ("search_speed", "lut_fidelity", "early_exit", "gate_overhead", "exit_policy", "flops_vs_latency", "soak",
         "training_ablation")
SHARED_BUILD = ("lut_fidelity", "flops_vs_latency")  # scripts taking --work: one export serves both
TRAINED_DRN = os.path.join(ROOT, "runs", "early_exit", "cpu-drn")


def discover():
    """Benchmark names present in benchmarks/: ORDER first, then any other script (not _private, not this)."""
    present = {f[:-3] for f in os.listdir(HERE) if f.endswith(".py") and not f.startswith("_") and f != "run_all.py"}
    return [n for n in ORDER if n in present] + sorted(present - set(ORDER))


def takes_option(name, option):
    """Does benchmarks/NAME.py declare ``option`` (e.g. "--quick")? Read from its source, not by running it."""
    with open(os.path.join(HERE, name + ".py"), encoding="utf-8") as f:
        return '"{}"'.format(option) in f.read()


def command(name, quick):
    cmd = [sys.executable, os.path.join(HERE, name + ".py")]
    if quick and takes_option(name, "--quick"):
        cmd.append("--quick")
    trained = {"--onnx": os.path.join(TRAINED_DRN, "onnx"), "--engines": os.path.join(TRAINED_DRN, "engines"),
               "--memo": os.path.join(TRAINED_DRN, "memo_cal.npz")}
    ready = [os.path.join(trained["--onnx"], "manifest.json"), os.path.join(trained["--engines"], "lut.json"),
             trained["--memo"]]
    if name == "flops_vs_latency" and all(os.path.isfile(f) for f in ready):
        cmd += [v for kv in trained.items() for v in kv]
    elif name in SHARED_BUILD:
        cmd += ["--work", os.path.join(ROOT, "runs", "bench-artifacts")]
    return cmd


def run_one(name, quick, timeout_s):
    """{"name", "status", "wall_s", "rc", "log", "command"} of one script run."""
    os.makedirs(LOGS, exist_ok=True)
    log = os.path.join(LOGS, name + ".log")
    cmd = command(name, quick)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    t0 = time.time()
    with open(log, "w", encoding="utf-8") as out:
        # its own session: on a timeout the whole group goes (a benchmark starts mess-edge subprocesses)
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout_s or None)
            status = "ok" if rc == 0 else "failed (exit {})".format(rc)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            rc, status = None, "timeout ({} s)".format(timeout_s)
    return {"name": name, "status": status, "wall_s": time.time() - t0, "rc": rc, "log": log,
            "command": " ".join(cmd[1:]), "started": t0}


def headline(name, since=None):
    """(headline text, results markdown or None, when the results were taken or None) of
    benchmarks/results/NAME.*.

    The headline is the JSON's "headline" if it has one, else the markdown's first line naming a target or a
    result, else its first line of prose. When: the JSON's ``conditions.date`` (what _common.save records),
    else the markdown's modification time (a fresh clone gives every file the clone's time), as "%Y-%m-%d %H:%M".
    Results older than ``since`` (epoch s) count as absent.
    """
    md_path, js_path = os.path.join(RESULTS, name + ".md"), os.path.join(RESULTS, name + ".json")
    if not os.path.isfile(md_path) or (since is not None and os.path.getmtime(md_path) < since):
        return None, None, None
    with open(md_path, encoding="utf-8") as f:
        md = f.read()
    text = when = None
    if os.path.isfile(js_path):
        try:
            with open(js_path, encoding="utf-8") as f:
                payload = json.load(f)
            text = payload.get("headline")
            when = (payload.get("conditions") or {}).get("date")
        except (OSError, ValueError, AttributeError):
            text = when = None
    lines = [ln.strip() for ln in md.splitlines() if ln.strip()]
    if not text:
        text = next((ln for ln in lines if ln.lower().startswith(("targets", "target:", "result"))), None)
    if not text:
        text = next((ln for ln in lines if not ln.startswith(("#", "|"))), "")
    text = " ".join(text.split())
    when = when or time.strftime("%Y-%m-%d %H:%M", time.localtime(os.path.getmtime(md_path)))
    return (text[:400] + " ...") if len(text) > 400 else text, md, when


def summary_markdown(records, mode):
    from benchmarks._common import conditions

    cond = conditions()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    lines = ["# Benchmark summary", "",
             "{}; {} ({} cores); python {}; 1-min load average {} at the end; {}.".format(
                 cond["date"], cond["cpu"], cond["cores"], cond["python"], None if load is None else round(load, 2),
                 mode if mode == "saved results" else mode + " mode"), "",
             "| benchmark | status | wall s | headline (numbers, targets) |", "|---|---|---:|---|"]
    for r in records:
        lines.append("| {} | {} | {} | {} |".format(r["name"], r["status"], "-" if r["wall_s"] is None else
                                                    "{:.0f}".format(r["wall_s"]),
                                                    (r["headline"] or "-").replace("|", "/")))
    for r in records:
        if r["status"].startswith("absent"):
            continue
        lines += ["", "---", "", "## {} ({})".format(r["name"], r["status"]), ""]
        if r["markdown"]:
            # the script's own headings nested under this "## name" section
            lines += [("##" + ln) if ln.startswith("#") else ln for ln in r["markdown"].rstrip().splitlines()]
        else:
            lines.append("No results file{}.".format("; output in " + r["log"] if r.get("log") else ""))
    return "\n".join(lines) + "\n"


def main(argv=None):
    sys.path.insert(0, ROOT)
    from mess_edge.artifacts import write_bytes_atomic, write_json_atomic

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="pass --quick to every script that takes it")
    ap.add_argument("--only", default=None, help="comma-separated benchmark names (default: all present)")
    ap.add_argument("--timeout-s", type=float, default=0, help="per-script time limit in seconds (0: none)")
    ap.add_argument("--summary-only", action="store_true", help="run nothing; rebuild SUMMARY.md from the results")
    a = ap.parse_args(argv)
    present = discover()
    chosen = present if a.only is None else [n.strip() for n in a.only.split(",") if n.strip()]
    if a.summary_only:
        chosen = []
    unknown = [n for n in chosen if n not in present]
    if unknown:
        sys.exit("error: got --only {}; expected names among {}; try --only {}".format(
            ",".join(unknown), ",".join(present), present[0] if present else "search_speed"))
    records = []
    for name in present:
        if name not in chosen:
            text, md, when = headline(name)
            status = ("saved" if a.summary_only else "not run") + (" (results of {})".format(when) if when else "")
            records.append({"name": name, "status": status, "wall_s": None, "headline": text, "markdown": md})
            continue
        print("== {} ...".format(name), flush=True)
        rec = run_one(name, a.quick, a.timeout_s)
        rec["headline"], rec["markdown"], _ = headline(name, since=rec["started"])
        if rec["status"] == "ok" and rec["markdown"] is None:
            rec["status"] = "ok (wrote no results file)"
        print("== {}: {} in {:.0f} s; {}".format(name, rec["status"], rec["wall_s"], rec["headline"] or "-"),
              flush=True)
        records.append(rec)
    for name in ORDER:
        if name not in present:
            records.append({"name": name, "status": "absent (no script)", "wall_s": None, "headline": None,
                            "markdown": None})
    mode = "saved results" if a.summary_only else "quick" if a.quick else "full"
    write_bytes_atomic(os.path.join(RESULTS, "SUMMARY.md"), summary_markdown(records, mode).encode("utf-8"))
    write_json_atomic(os.path.join(RESULTS, "SUMMARY.json"), {"quick": a.quick, "mode": mode, "benchmarks": [
        {k: v for k, v in r.items() if k != "markdown"} for r in records]})
    print("wrote {}".format(os.path.join(RESULTS, "SUMMARY.md")))
    return 1 if any(r["status"].startswith(("failed", "timeout")) for r in records) else 0


if __name__ == "__main__":
    sys.exit(main())
