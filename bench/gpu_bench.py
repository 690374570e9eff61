"""The GPU check, in one command that a lent GPU machine runs in under 5 minutes.

    python bench/gpu_bench.py [--data ../shared/imc-bench] [--out DIR] [--quick]

1. Matching throughput of the stage (bench/match_speed.py): pairs/s at 1024, 2048 and 4096
   keypoints per image, per batch size (1, 8, 16, 32), half precision.
2. The dev bench (ETs, templeRing, dinoSparseRing) end to end with `imc run --preset gpu` on a
   fresh cache: seconds per stage, GPU utilization sampled every 0.5 s by nvidia-smi (mean over
   the matching stage and over the run), peak GPU memory, and the scores.
Writes `gpu_bench.md` and `gpu_bench.json` to `--out` (default: $OUT when set, else
outputs/gpu_bench). The CPU scores of the same settings, to set beside these, come from
`make bench` with `--preset gpu` on the CPU. `--quick` shrinks everything for a smoke test on
a machine without a GPU (1024 keypoints, batch 1 and 2, ETs only).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

DATASETS = "ETs,templeRing,dinoSparseRing"


class GpuSampler(threading.Thread):
    """nvidia-smi's utilization (%) and memory used (MiB) every `period` seconds."""

    def __init__(self, period: float = 0.5):
        super().__init__(daemon=True)
        self.period, self.samples, self.stop = period, [], threading.Event()
        self.available = shutil.which("nvidia-smi") is not None

    def run(self) -> None:
        query = ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used",
                 "--format=csv,noheader,nounits"]  # fmt: skip
        while self.available and not self.stop.is_set():
            out = subprocess.run(query, capture_output=True, text=True).stdout.splitlines()
            if out:
                util, mem = (float(v) for v in out[0].split(","))
                self.samples.append((time.time(), util, mem))
            time.sleep(self.period)

    def mean(self, start: float = 0.0, end: float = float("inf")) -> float | None:
        values = [u for t, u, _ in self.samples if start <= t <= end]
        return sum(values) / len(values) if values else None

    def peak_memory(self) -> float | None:
        return max((m for *_, m in self.samples), default=None)


def end_to_end(args, out: Path, sampler: GpuSampler) -> dict:
    run_dir, cache = out / "run", out / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    cmd = [sys.executable, "-m", "imc.cli", "run", str(args.data), "--split", "train",
           "--datasets", args.datasets, "--preset", "gpu", "--run-dir", str(run_dir),
           "--cache-dir", str(cache), "--output", str(out / "submission.csv"),
           "--no-report"]  # fmt: skip
    t0 = time.time()
    with open(out / "run.log", "w") as log:
        code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO).returncode
    t1 = time.time()
    stats = json.loads((run_dir / "stats.json").read_text())
    scores = subprocess.run(
        [sys.executable, "-m", "imc.cli", "score", str(out / "submission.csv"), str(args.data),
         "--json"], capture_output=True, text=True, cwd=REPO,
    ).stdout  # fmt: skip
    windows = [(v["matching"]["started"], v["matching"]["started"] + v["matching"]["seconds"])
               for v in stats.values() if "matching" in v]  # fmt: skip
    in_matching = [sampler.mean(a, b) for a, b in windows]
    return {
        "exit": code,
        "wall_seconds": round(t1 - t0, 1),
        "stages": stats,
        "gpu_util_mean_run": sampler.mean(t0, t1),
        "gpu_util_mean_matching_stage": in_matching,
        "scores": json.loads(scores) if scores.strip().startswith("{") else scores,
    }


def markdown(result: dict) -> str:
    lines = [f"GPU check, {result['date']}, device: {result['device']}", ""]
    lines += ["| keypoints | batch | pairs/s | GPU util % |", "|---|---|---|---|"]
    for r in result["matching"]:
        lines.append(f"| {r['keypoints']} | {r['batch']} | {r['pairs_per_s']} | {r.get('util')} |")
    e2e = result["end_to_end"]
    lines += ["", "| dataset | " + " | ".join(next(iter(e2e["stages"].values()))) + " |"]
    lines.append("|---|" + "---|" * len(next(iter(e2e["stages"].values()))))
    for ds, stages in e2e["stages"].items():
        lines.append(f"| {ds} | " + " | ".join(f"{v['seconds']:.1f}" for v in stages.values()))
    total = sum(s["total"]["seconds"] for s in e2e["stages"].values())
    lines += ["", f"stages in all: {total:.1f} s; wall {e2e['wall_seconds']} s; GPU busy "
              f"{e2e['gpu_util_mean_run']} % on average, during matching "
              f"{e2e['gpu_util_mean_matching_stage']}; peak GPU memory "
              f"{result['peak_gpu_mib']} MiB", "",
              f"scores: {json.dumps(e2e['scores'])}"]  # fmt: skip
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "imc-bench")
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "outputs/gpu_bench")))
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    args.datasets = "ETs" if args.quick else DATASETS
    args.out.mkdir(parents=True, exist_ok=True)
    import torch

    from bench import match_speed

    sampler = GpuSampler()
    sampler.start()
    rows = []
    keypoints, batches = ("1024", "1,2") if args.quick else ("1024,2048,4096", "1,8,16,32")
    t0 = time.time()
    match_speed.main(["--data", str(args.data), "--keypoints", keypoints, "--batch", batches,
                      "--json", str(args.out / "match_speed.json")])  # fmt: skip
    rows = json.loads((args.out / "match_speed.json").read_text())["rows"]
    matching_util = sampler.mean(t0, time.time())
    for r in rows:
        r["util"] = matching_util
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "matching": rows,
        "gpu_util_mean_matching_bench": matching_util,
        "end_to_end": end_to_end(args, args.out, sampler),
    }
    sampler.stop.set()
    result["peak_gpu_mib"] = sampler.peak_memory()
    (args.out / "gpu_bench.json").write_text(json.dumps(result, indent=1))
    text = markdown(result)
    (args.out / "gpu_bench.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
