"""`make bench`: imc against plain COLMAP on every dataset of imc-bench, in the same run.

For each dataset, each tool runs in its own process (fresh cache for imc), so that its wall time
and peak memory are its own. Both submissions are scored with the IMC2025 metric and the
results replace the pipeline section of BENCHMARKS.md.

    python bench/run_bench.py [--data ../shared/imc-bench] [--datasets A,B] [--preset NAME]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from imc import formats, report, scoring  # noqa: E402
from imc.submission import read_submission  # noqa: E402

START, END = "<!-- bench:pipeline:start -->", "<!-- bench:pipeline:end -->"


def timed(cmd: list[str], log: Path) -> tuple[float, float, int, float]:
    """Run `cmd`; (wall seconds, peak RSS MiB of the process tree's largest member, exit code,
    CPU seconds: user + system of the process and the children it waited for)."""
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO)
        _, status, usage = os.wait4(proc.pid, 0)
    wall, code = time.perf_counter() - t0, os.waitstatus_to_exitcode(status)
    return wall, usage.ru_maxrss / 1024.0, code, usage.ru_utime + usage.ru_stime


def score(data: Path, dataset: str, csv: Path) -> dict:
    comp = formats.read_competition(data, split="train", datasets=[dataset])
    row = scoring.score(comp, read_submission(csv, comp.year)).to_dict()["datasets"][0]
    row["registered"] = registered(csv)
    return row


def registered(csv: Path) -> int:
    import pandas as pd

    df = pd.read_csv(csv)
    return int((~df["rotation_matrix"].astype(str).str.contains("nan")).sum())


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} CPU cores ({cpu}), Python {platform.python_version()}"


def run(args) -> list[dict]:
    """Run both tools on every dataset; timings saved to outputs/bench/runs.json."""
    out = REPO / "outputs" / "bench"
    shutil.rmtree(out / "cache", ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    comp = formats.read_competition(args.data, split="train")
    names = args.datasets.split(",") if args.datasets else list(comp.datasets)
    py, imc = sys.executable, str(Path(sys.executable).with_name("imc"))
    rows = []
    for ds in names:
        peer_csv, imc_csv = out / f"peer_{ds}.csv", out / f"imc_{ds}.csv"
        load0 = os.getloadavg()[0]
        peer = timed(
            [py, "bench/colmap_peer.py", str(args.data), "--datasets", ds, "--output",
             str(peer_csv), "--work", str(out / "peer")],
            out / f"peer_{ds}.log",
        )  # fmt: skip
        cmd = [imc, "run", str(args.data), "--split", "train", "--datasets", ds, "--output",
               str(imc_csv), "--run-dir", str(out / "imc" / ds), "--cache-dir", str(out / "cache"),
               "--no-score", "--no-report"]  # fmt: skip
        if args.preset:
            cmd += ["--preset", args.preset]
        mine = timed(cmd, out / f"imc_{ds}.log")
        if peer[2] or mine[2]:
            raise SystemExit(f"{ds}: a run failed, see {out}/*_{ds}.log")
        stats = json.loads((out / "imc" / ds / "stats.json").read_text())[ds]
        rows.append({
            "dataset": ds, "imc_csv": str(imc_csv), "peer_csv": str(peer_csv),
            "imc_seconds": mine[0], "peer_seconds": peer[0], "imc_peak_mib": mine[1],
            "peer_peak_mib": peer[1], "load": [load0, os.getloadavg()[0]],
            "imc_cpu_seconds": mine[3], "peer_cpu_seconds": peer[3],
            "stages": {k: v["seconds"] for k, v in stats.items() if k != "total"},
        })  # fmt: skip
        # the run's report, with the score breakdown (outside the timed run)
        rows[-1]["report"] = str(report.write_report(out / "imc" / ds, args.data, split="train"))
        print(json.dumps(rows[-1]), flush=True)
        (out / "runs.json").write_text(json.dumps(rows, indent=1))
    return rows


def score_rows(rows: list[dict], data: Path) -> list[dict]:
    for r in rows:
        r["imc"] = score(data, r["dataset"], Path(r["imc_csv"]))
        r["peer"] = score(data, r["dataset"], Path(r["peer_csv"]))
    return rows


def markdown(rows: list[dict], args) -> str:
    date = datetime.date.today().isoformat()
    cmd = "make bench" + (f" (preset {args.preset})" if args.preset else "")
    lines = [
        START,
        f"Command: `{cmd}`; machine: {machine()}; date: {date}.",
        "",
        "| dataset | imc score | peer score | imc mAA | peer mAA | imc clusterness | "
        "peer clusterness | imc registered | peer registered | images |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        i, p = r["imc"], r["peer"]
        lines.append(
            f"| {r['dataset']} | {i['score']:.1f} | {p['score']:.1f} | {i['mAA']:.1f} | "
            f"{p['mAA']:.1f} | {i['clusterness']:.1f} | {p['clusterness']:.1f} | "
            f"{i['registered']} | {p['registered']} | {i.get('n_images', '')} |"
        )
    mean_i = sum(r["imc"]["score"] for r in rows) / len(rows)
    mean_p = sum(r["peer"]["score"] for r in rows) / len(rows)
    lines.append(f"| **mean** | **{mean_i:.1f}** | **{mean_p:.1f}** | | | | | | | |")
    stages = sorted({s for r in rows for s in r["stages"]}, key=list(rows[0]["stages"]).index)
    lines += [
        "",
        "Seconds per stage (imc), total wall time of each tool (process start to exit, "
        "model loading included), its CPU utilization (CPU seconds of all its threads and "
        "child processes over wall seconds; 200 % is both cores busy) and peak resident memory:",
        "",
        "| dataset | " + " | ".join(stages) + " | imc total | peer total | ratio | "
        "imc CPU | peer CPU | imc peak MiB | peer peak MiB |",
        "|---|" + "---|" * (len(stages) + 7),
    ]
    for r in rows:
        st = " | ".join(f"{r['stages'].get(s, 0):.1f}" for s in stages)
        lines.append(
            f"| {r['dataset']} | {st} | {r['imc_seconds']:.0f} | "
            f"{r['peer_seconds']:.0f} | {r['imc_seconds'] / r['peer_seconds']:.1f}x | "
            f"{_use(r, 'imc')} | {_use(r, 'peer')} | "
            f"{r['imc_peak_mib']:.0f} | {r['peer_peak_mib']:.0f} |"
        )
    ti, tp = sum(r["imc_seconds"] for r in rows), sum(r["peer_seconds"] for r in rows)
    ci = sum(r.get("imc_cpu_seconds", 0) for r in rows)
    cp = sum(r.get("peer_cpu_seconds", 0) for r in rows)
    lines += [
        "| **all** | " + " | " * len(stages) + f"**{ti:.0f}** | **{tp:.0f}** | "
        f"**{ti / tp:.1f}x** | **{100 * ci / ti:.0f} %** | **{100 * cp / tp:.0f} %** | | |",
        "",
        "Each dataset's run report (imc report, with the score breakdown): "
        "`outputs/bench/imc/<dataset>/report.html`.",
        "",
        END,
    ]
    return "\n".join(lines)


def _use(row: dict, tool: str) -> str:
    """CPU utilization of one tool's run, in percent of one core."""
    cpu = row.get(f"{tool}_cpu_seconds")
    return "" if cpu is None else f"{100 * cpu / row[f'{tool}_seconds']:.0f} %"


def write_section(text: str) -> None:
    path = REPO / "BENCHMARKS.md"
    old = path.read_text() if path.exists() else "# Benchmarks\n\n"
    if START in old:
        new = re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: text, old, flags=re.S)
    else:
        new = (
            old.rstrip()
            + "\n\n## Pipeline against plain COLMAP (imc-bench, IMC2025 metric)\n\n"
            + text
            + "\n"
        )
    path.write_text(new)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "imc-bench")
    p.add_argument("--datasets")
    p.add_argument("--preset")
    p.add_argument("--no-write", action="store_true", help="print, don't update BENCHMARKS.md")
    p.add_argument("--score-only", action="store_true", help="rescore outputs/bench/runs.json")
    args = p.parse_args(argv)
    runs = REPO / "outputs" / "bench" / "runs.json"
    rows = json.loads(runs.read_text()) if args.score_only else run(args)
    rows = score_rows(rows, args.data)
    text = markdown(rows, args)
    print(text)
    if not args.no_write:
        write_section(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
