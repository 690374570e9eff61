"""Install imc offline from this bundle, then write a submission for a competition folder.

    python install_and_run.py --competition DIR --output SUBMISSION.csv [--venv DIR]
        [--time-budget SECONDS] [--preset gpu] [--config best.json] [--set KEY=VALUE]
        [--dinov2 DIR] [--work-dir DIR]

The steps of the Kaggle notebook, runnable anywhere (standard library only):
1. environment: with `--venv DIR`, a virtual environment created there (from this bundle
   alone); else the running interpreter (Kaggle's, which has torch, numpy, opencv...);
2. install: `pip install --no-index --find-links wheels -r wheels/requirements.txt`, pip's
   configuration files ignored, so that nothing is looked up on a network;
3. check: the packages import, and the weights match their manifest;
4. run: `dataset/submission.py` with `dataset/` on PYTHONPATH (the package source and its
   weights/), on `--competition` or the only competition folder found under `--input-root`,
   with $IMC_DINOV2 set to `--dinov2`, else to $IMC_DINOV2, else to the folder under
   `--input-root` whose config.json says model_type dinov2 (a Kaggle model input,
   <input>/<model>/<framework>/<variation>/<version>/); none: imc's ALIKED retrieval;
5. when datasets fail inside the pipeline (exit status 3), the submission is written all the
   same, every row, and the failed datasets are listed; if the run fails before writing
   anything, the competition's sample submission is copied to `--output` (a valid file that
   scores nothing). Either way the exit status is non-zero, after the submission is written.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import venv
from pathlib import Path

BUNDLE = Path(__file__).resolve().parent
FAILED_DATASETS = 3  # submission.py's exit status when datasets failed but the file is complete
CHECK = (
    "import kornia, pycolmap, faiss, cv2, h5py, torch, imc.pipeline, imc.weights as w\n"
    "for name in w.manifest():\n"
    "    print('weights ok:', w.find_weights(name))"
)


def log(message: str) -> None:
    print(f"[install_and_run {time.strftime('%H:%M:%S')}] {message}", flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--competition", type=Path, help="competition folder (default: search)")
    p.add_argument(
        "--input-root",
        type=Path,
        default=Path(os.environ.get("IMC_KAGGLE_INPUT", "/kaggle/input")),
        help="where to search for the competition (default: $IMC_KAGGLE_INPUT or /kaggle/input)",
    )
    p.add_argument("--output", type=Path, default=Path("submission.csv"))
    p.add_argument("--venv", type=Path, help="create and use a virtual environment here")
    p.add_argument("--work-dir", type=Path, help="cache and run folders (default: beside output)")
    p.add_argument("--bundle", type=Path, default=BUNDLE, help="the bundle (default: here)")
    p.add_argument("--time-budget", help="seconds for the whole run (default: imc's)")
    p.add_argument("--preset", help="imc preset (cpu, gpu, fast, baseline)")
    p.add_argument("--config", help="imc config file (JSON)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--dinov2", type=Path, help="DINOv2 model folder (default: search)")
    p.add_argument("--split", default="test", choices=["train", "test"])
    p.add_argument("--install-only", action="store_true", help="install and check, no run")
    p.add_argument("--no-install", action="store_true", help="skip the installation step")
    return p.parse_args(argv)


def environment(venv_dir: Path | None) -> Path:
    """The Python to install into and run with."""
    if venv_dir is None:
        return Path(sys.executable)
    python = venv_dir / "bin" / "python"
    if not python.exists():
        log(f"creating the virtual environment {venv_dir}")
        venv.EnvBuilder(with_pip=True, clear=False).create(venv_dir)
    return python


def check_python(info: dict) -> None:
    """Stop with a clear message when the bundle's wheels are for another Python (pip would
    only say that it finds no matching distribution)."""
    here = "{}.{}".format(*sys.version_info[:2])
    if info["python"] != here:
        raise SystemExit(
            f"this bundle's wheels are for Python {info['python']} and this is Python {here}: "
            f"rebuild it with `python -m imc.bundle build --python-version {here}`"
        )


def install(python: Path, bundle: Path) -> None:
    """pip install the bundle's requirements from its wheels folder alone."""
    wheels = bundle / "wheels"
    env = {**os.environ, "PIP_CONFIG_FILE": os.devnull, "PIP_NO_INPUT": "1"}
    env.pop("PIP_FIND_LINKS", None)
    env.pop("PIP_INDEX_URL", None)
    env.pop("PIP_EXTRA_INDEX_URL", None)
    cmd = [str(python), "-m", "pip", "install", "--no-index", "--find-links", str(wheels)]
    cmd += ["--disable-pip-version-check", "--no-warn-script-location", "-q"]
    cmd += ["-r", str(wheels / "requirements.txt")]
    log(f"installing {len(requirements(bundle))} packages from {wheels}")
    t0 = time.time()
    subprocess.run(cmd, check=True, env=env)
    log(f"installed in {time.time() - t0:.0f} s")


def requirements(bundle: Path) -> list[str]:
    lines = (bundle / "wheels" / "requirements.txt").read_text().splitlines()
    return [line for line in lines if line.strip() and not line.startswith("#")]


def run_env(bundle: Path, dinov2: Path | None = None) -> dict:
    """The environment of the imc process: the bundle's source first on PYTHONPATH, its
    weights first searched (unless IMC_WEIGHTS says otherwise), $IMC_DINOV2 = `dinov2`."""
    source = str(bundle / "dataset")
    path = os.environ.get("PYTHONPATH")
    env = {
        **os.environ,
        "IMC_WEIGHTS": os.environ.get("IMC_WEIGHTS", str(bundle / "dataset" / "weights")),
        "PYTHONPATH": source + (os.pathsep + path if path else ""),
        "PYTHONDONTWRITEBYTECODE": "1",
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
    }
    if dinov2 is not None:
        env["IMC_DINOV2"] = str(dinov2)
    return env


def find_dinov2(root: Path) -> Path | None:
    """The folder under `root` (four levels at most: a Kaggle model input is mounted as
    <root>/<model>/<framework>/<variation>/<version>/) whose config.json says model_type
    dinov2; the first in sorted order, the shallowest first."""
    for depth in range(1, 5):
        for config in sorted(root.glob("*/" * depth + "config.json")):
            try:
                model_type = json.loads(config.read_text()).get("model_type")
            except (OSError, ValueError, AttributeError):
                continue
            if model_type == "dinov2":
                return config.parent
    return None


def choose_dinov2(given: Path | None, input_root: Path) -> Path | None:
    """`--dinov2`, else $IMC_DINOV2, else find_dinov2 under the input root; logged."""
    folder = given or (Path(os.environ["IMC_DINOV2"]) if os.environ.get("IMC_DINOV2") else None)
    folder = folder or (find_dinov2(input_root) if input_root.is_dir() else None)
    folder = folder.resolve() if folder else None  # imc runs in the work folder
    if folder is None:
        log(f"no DINOv2 model under {input_root}: retrieval uses ALIKED descriptors "
            "(attach a transformers DINOv2 model as a model input to use it)")  # fmt: skip
    else:
        log(f"DINOv2 model: {folder}")
    return folder


def find_competition(root: Path) -> Path:
    """The folder under `root` (two levels at most) holding sample_submission.csv and test/."""
    found = []
    for pattern in ("*", "*/*", "competitions/*"):
        for d in sorted(root.glob(pattern)):
            if (d / "sample_submission.csv").is_file() and (d / "test").is_dir():
                found.append(d)
    found = list(dict.fromkeys(found))
    if len(found) != 1:
        what = ", ".join(map(str, found)) or "none"
        raise SystemExit(f"expected one competition folder under {root}, found {what}: "
                         "pass --competition")  # fmt: skip
    return found[0]


def run(python: Path, args: argparse.Namespace, competition: Path, work: Path) -> int:
    """submission.py on `competition`, its cache and run folders in `work`."""
    cmd = [str(python), str(args.bundle / "dataset" / "submission.py")]
    cmd += ["--data-root", str(competition), "--output", str(args.output), "--split", args.split]
    cmd += ["--cache-dir", str(work / "imc-cache"), "--run-dir", str(work / "imc-run")]
    for flag in ("time_budget", "preset", "config"):
        if getattr(args, flag):
            cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    for item in args.overrides:
        cmd += ["--set", item]
    log("running " + " ".join(cmd))
    work.mkdir(parents=True, exist_ok=True)
    return subprocess.run(cmd, env=run_env(args.bundle, args.dinov2), cwd=work).returncode


def fallback(competition: Path, output: Path) -> None:
    """Copy the sample submission, so that a submission exists even after a crash."""
    if output.exists():
        return
    sample = competition / "sample_submission.csv"
    output.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(sample, output)
    log(f"THE RUN FAILED: copied {sample} to {output} (valid, scores nothing)")


def finish(code: int, competition: Path, output: Path, work: Path) -> int:
    """Say how the run ended; make sure a submission exists; return `code`."""
    if code == 0:
        log(f"submission written: {output}")
    elif code == FAILED_DATASETS and output.exists():
        log(f"SOME DATASETS FAILED (listed above; tracebacks in {work / 'imc-run' / 'errors.log'}"
            f"): {output} has every row, their images as outliers")  # fmt: skip
    else:
        log(f"imc exited with status {code}")
        fallback(competition, output)
    return code


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.bundle, args.output = args.bundle.resolve(), args.output.resolve()
    if args.config:  # imc runs in the work folder: paths given here must not be relative
        args.config = str(Path(args.config).resolve())
    info = json.loads((args.bundle / "bundle.json").read_text())
    log(f"bundle {args.bundle}: imc {info['imc_version']}, {info['mode']} wheels")
    python = environment(args.venv)
    args.dinov2 = choose_dinov2(args.dinov2, args.input_root)
    if not args.no_install:
        check_python(info)
        install(python, args.bundle)
    env = run_env(args.bundle, args.dinov2)
    subprocess.run([str(python), "-c", CHECK], check=True, env=env, cwd=args.bundle)
    log("imports and weights checked")
    if args.install_only:
        return 0
    competition = (args.competition or find_competition(args.input_root)).resolve()
    log(f"competition folder: {competition}")
    work = (args.work_dir or args.output.parent).resolve()
    return finish(run(python, args, competition, work), competition, args.output, work)


if __name__ == "__main__":
    sys.exit(main())
