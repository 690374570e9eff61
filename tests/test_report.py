"""The run report: pieces by hand, the page of a real (small) run, and the page in a browser.

The run: 8 demo images (two scenes, two of them rotated, one outlier) through `imc run` with
small settings, in a module fixture with its own cache. The browser test opens the page in
headless Chromium through the DevTools protocol (a minimal websocket client below), checks that
no console error or failed load is reported and that every image decoded, and saves a
screenshot (also to $IMC_REPORT_SCREENSHOT when set).
"""

from __future__ import annotations

import base64
import csv
import io
import json
import math
import os
import re
import shutil
import socket
import struct
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pycolmap
import pytest
from PIL import Image

from imc import cli, plots, report
from imc.demo import make_demo
from imc.export import pose_from_transform
from imc.images import unrotate_points

SUBSET = [
    "boxes_00.png",
    "boxes_01.png",
    "boxes_02.png",
    "boxes_03.png",  # stored rotated: turned upright by 270 degrees
    "wall_00.png",
    "wall_01.png",
    "wall_02.png",  # stored rotated: 90 degrees
    "outlier_00.png",
]
SMALL = [
    "--preset=fast",
    "--set=features.max_keypoints=512",
    "--set=features.resize_long_side=512",
    "--set=orientation.num_neighbors=1",
    "--set=orientation.max_keypoints=128",
    "--set=orientation.resize_long_side=256",
    "--no-score",  # the run's own report: no alignment; `imc report` below scores
]


# ----------------------------------------------------------------- pieces, by hand


def test_circle_layout_groups_with_one_gap():
    """3 names + 2 groups = 5 slots of 72 degrees, starting at the top: a, b, gap, c."""
    pos = plots.circle_layout([["a", "b"], [], ["c"]])
    for name, deg in (("a", 90), ("b", 162), ("c", 306)):
        a = math.radians(deg)
        np.testing.assert_allclose(pos[name], [math.cos(a), math.sin(a)], atol=1e-12)


def test_edge_width_grows_with_log_inliers():
    assert plots.edge_width(10) == pytest.approx(1.2)
    assert plots.edge_width(1000) == pytest.approx(2.8)
    assert plots.edge_width(0) == plots.edge_width(1) == pytest.approx(0.4)


@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_down_axis_of_each_rotation(k):
    """One pixel down in rotate(stored, k) is DOWN_OF_ROTATION[k] in the stored image."""
    p = unrotate_points(np.array([[5.0, 7.0], [5.0, 8.0]]), k, (40, 30))
    assert tuple((p[1] - p[0]).tolist()) == plots.DOWN_OF_ROTATION[k][:2]


def test_view_frame_up_is_minus_the_mean_down_axis():
    centers = np.array([[0.0, 0, 0], [4, 0, 0], [8, 1, 0]])
    downs = np.array([[0.0, 0, -1], [0.1, 0, -1], [-0.1, 0, -1]])
    frame = plots.view_frame(centers, downs, np.zeros((0, 3)))
    np.testing.assert_allclose(frame[2], [0, 0, 1], atol=1e-12)
    np.testing.assert_allclose(frame @ frame.T, np.eye(3), atol=1e-12)
    assert abs(frame[0] @ np.array([1.0, 0.125, 0]) / np.hypot(1, 0.125)) > 0.99


def test_match_choices_and_groups(tmp_path):
    import h5py

    from imc.cache import pair_key

    with h5py.File(tmp_path / "v.h5", "w") as f:
        g = f.create_group(pair_key("a", "d"))
        g.attrs["num_matches"], g.attrs["num_inliers"] = 40, 6
    summary = {
        "images": {n: f"{n}.png" for n in "abcdef"},
        "clusters": {"a": "cluster10", "b": "cluster2", "c": "cluster2", "d": "cluster2"},
        "failed": {"f": "broken"},
        "retrieval_pairs": [["a", "b"], ["b", "c"], ["c", "d"], ["a", "d"], ["b", "e"]],
        "verified_pairs": [["a", "b", 300, False], ["b", "c", 90, True], ["c", "d", 20, True]],
        "verified": str(tmp_path / "v.h5"),
    }
    assert report.image_groups(summary) == [
        ("cluster2", ["b", "c", "d"]),
        ("cluster10", ["a"]),
        ("unregistered (outliers)", ["e"]),
        ("failed (unreadable)", ["f"]),
    ]
    assert report.match_choices(summary) == [
        ("inliers", "b", "c", "verified: 90 inliers"),
        ("inliers", "c", "d", "verified: 20 inliers"),
        ("inliers", "a", "b", "verified, cut by clustering: 300 inliers"),
        ("matches", "a", "d", "rejected: 40 matches, 6 inliers"),
    ]  # (b, e) has no entry in verified.h5: no match, nothing to draw


STAGES = {
    "orientation": {"seconds": 10.0, "cpu_seconds": 18.0, "peak_rss_mib": 900.0, "started": 0},
    "features": {"seconds": 20.0, "cpu_seconds": 20.0, "peak_rss_mib": 1400.0, "started": 10},
    "pairs": {"seconds": 2.0, "cpu_seconds": 1.0, "peak_rss_mib": 1400.0, "started": 30},
    "mapping": {"seconds": 4.0, "cpu_seconds": 3.0, "peak_rss_mib": 1500.5, "started": 32},
}


def test_memory_added_and_cpu_use_per_stage():
    """The recorded peak is the process's running maximum: each stage shows what it added."""
    assert plots.memory_added({**STAGES, "total": {"peak_rss_mib": 9999.0}}) == {
        "orientation": None,  # the peak before the first stage was not recorded
        "features": 500.0,
        "pairs": 0.0,
        "mapping": 100.5,
    }
    assert plots.cpu_use(STAGES["orientation"]) == 1.8
    assert plots.cpu_use({"seconds": 0.0, "cpu_seconds": 1.0}) is None
    assert plots.cpu_use({"seconds": 3.0}) is None  # older stats.json


def test_time_table_and_chart():
    text = report.timing_html(STAGES)
    assert "<th>CPU use</th>" in text and "<th>MiB added by the stage</th>" in text
    assert re.search(r"<td>orientation</td><td>[\d:]{8}</td><td>10.00</td><td>18.00</td>"
                     r"<td>180 %</td><td>900.00</td><td></td>", text)  # fmt: skip
    assert "<td>features</td>" in text and "<td>500.00</td>" in text
    fig = plots.stage_figure(STAGES)
    fig.canvas.draw()
    left, right = fig.axes
    labels = [t for t in left.get_yticklabels() if t.get_text()]
    assert [t.get_text() for t in labels] == list(STAGES)
    for t in labels:  # whole, inside the figure, left of the first chart
        box = t.get_window_extent()
        assert 0 <= box.x0 and box.x1 <= left.get_window_extent().x0
    assert not any(t.get_visible() and t.get_text() for t in right.get_yticklabels())
    assert "running maximum" in right.get_title()
    assert len(plots.stage_chart(STAGES)) > 1000


def test_what_ran():
    ran = {
        "preset": "fast",
        "device": "cpu",
        "retrieval": "aliked (fallback: no DINOv2 model found; see $IMC_DINOV2)",
        "matching_precision": "float32",
        "matching_batch_size": "auto",
    }
    text = report.ran_html({"ran": ran})
    assert text.startswith("<p>What ran: preset <b>fast</b> · device <b>cpu</b> · retrieval ")
    assert "matching precision <b>float32</b> · matching batch size <b>auto</b>.</p>" in text
    assert "<b class='note'>aliked (fallback: no DINOv2" in text
    ran["retrieval"] = "dinov2 (/models/dinov2-base)"
    assert "class='note'" not in report.ran_html({"ran": ran})
    assert report.ran_html({}) == ""


def _view(n_points: int = 500) -> plots.ModelView:
    """Three cameras on the x axis looking along +y, upright (image down = world -z)."""
    rng = np.random.default_rng(1)
    R = np.array([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]])  # rows: right, down, forward
    camera = pycolmap.Camera(model="PINHOLE", width=400, height=300, params=[400, 400, 200, 150])
    centers = np.array([[0.0, 0, 0], [1, 0, 0], [2, 0, 0]])
    poses = [np.concatenate([R, -R @ c[:, None]], 1) for c in centers]
    return plots.ModelView(
        index=0,
        names=["a", "b", "c"],
        centers=centers,
        forwards=np.tile(R[2], (3, 1)),
        downs=np.tile(R[1], (3, 1)),
        points=rng.normal([1, 5, 0], 1, (n_points, 3)),
        colors=rng.integers(0, 256, (n_points, 3)).astype(np.uint8),
        rays=np.stack([plots.corner_rays(camera, p, 0) for p in poses]),
    )


def test_corner_rays_start_with_the_top_of_the_upright_image():
    R = np.array([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]])  # looks along +y, image down = -z
    pose = np.concatenate([R, np.zeros((3, 1))], 1)
    camera = pycolmap.Camera(model="PINHOLE", width=400, height=300, params=[400, 400, 200, 150])
    rays = plots.corner_rays(camera, pose, 0)
    np.testing.assert_allclose(rays[:, 1], 1.0)  # unit depth along the viewing direction
    np.testing.assert_allclose(rays[:2, 2], 150 / 400)  # corners 0, 1: the top edge, up (+z)
    np.testing.assert_allclose(rays[0], [-0.5, 1, 0.375])  # top left
    # stored turned by 90 degrees (k=1): the upright top is the stored image's right edge
    rays = plots.corner_rays(camera, pose, 1)
    np.testing.assert_allclose(rays[:2, 0], 0.5)


def test_3d_view_data_decodes_to_the_model():
    import base64

    from imc import view3d

    view = _view(6000)
    data = view3d.view_data(view, max_points=1000)
    q = np.frombuffer(base64.b64decode(data["points"]), "<i2").reshape(-1, 3) / data["q"]
    rgb = np.frombuffer(base64.b64decode(data["colors"]), np.uint8).reshape(-1, 3)
    assert len(q) == len(rgb) == data["n"] == 1000
    cams = np.array(data["cameras"]).reshape(-1, 5, 3)
    assert cams.shape == (3, 5, 3)
    # the display frame is a rotation (z up), then a shift and one scale for points and cameras
    frame = plots.view_frame(view.centers, view.downs, view.points)
    np.testing.assert_allclose(frame[2], [0, 0, 1], atol=1e-9)
    scale = np.linalg.norm(cams[1, 0] - cams[0, 0])  # 1 world unit apart
    shift = cams[0, 0] - scale * (view.centers[0] @ frame.T)
    world = (q - shift) / scale @ frame  # back to the model's frame
    dist = np.linalg.norm(world[:, None] - view.points[None], axis=2).min(1)
    assert dist.max() < 1e-3 * np.ptp(view.points, axis=0).max()  # int16 steps
    assert {tuple(c) for c in rgb} <= {tuple(c) for c in view.colors}
    # frusta: the top edge (corners 1, 2) is above the bottom one (3, 4) on the up axis
    assert (cams[:, 1:3, 2].mean(1) > cams[:, 3:5, 2].mean(1)).all()
    html_ = view3d.canvas_html(view)
    assert "<canvas class='view3d'" in html_ and "4000 of 6000 points, 3 cameras" in html_


def test_report_of_a_folder_without_results(tmp_path):
    from imc.errors import ImcError

    with pytest.raises(ImcError, match="no dataset results"):
        report.write_report(tmp_path)


# ----------------------------------------------------------------- a real run


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """`imc run` on 8 demo images; returns (data root, run folder)."""
    tmp = tmp_path_factory.mktemp("report")
    demo = make_demo(tmp / "demo")
    root = tmp / "data"
    (root / "train" / "demo").mkdir(parents=True)
    with open(demo / "train_labels.csv") as f, open(root / "train_labels.csv", "w") as g:
        rows = list(csv.reader(f))
        csv.writer(g).writerows([rows[0]] + [r for r in rows[1:] if r[2] in SUBSET])
    shutil.copy(demo / "train_thresholds.csv", root / "train_thresholds.csv")
    for name in SUBSET:
        shutil.copy(demo / "train" / "demo" / name, root / "train" / "demo" / name)
    run = tmp / "run"
    args = ["run", str(root), "--split=train", f"--run-dir={run}", f"--cache-dir={tmp / 'c'}"]
    assert cli.main(args + SMALL) == 0
    return root, run


def test_report_flags_of_the_command_line():
    parser = cli.build_parser()
    assert parser.parse_args(["run", "data", "--no-report"]).no_report
    assert not parser.parse_args(["run", "data"]).no_report
    assert parser.parse_args(["demo", "--no-report"]).no_report
    args = parser.parse_args(["report", "run", "--data-root=d", "--output=r.html"])
    assert (args.run_dir, args.data_root, args.output) == (Path("run"), Path("d"), Path("r.html"))


def test_run_writes_the_report_and_the_exports(small_run):
    root, run = small_run
    own = (run / "report.html").read_text()  # written by `imc run` itself, labels shown
    assert len(own) > 100_000 and "reference: wall" in own and "Reference centres" not in own
    summary = json.loads((run / "demo" / "summary.json").read_text())
    assert summary["rotations"]["boxes_03.png"] == 3 and summary["rotations"]["wall_02.png"] == 1
    models = sorted((run / "demo" / "models").iterdir())
    assert len(models) >= 2
    for d in models:
        model = pycolmap.Reconstruction(str(d))
        meta = json.loads((d / "transforms.json").read_text())
        assert (d / "text" / "images.txt").is_file() and (d / meta["ply_file_path"]).is_file()
        assert len(meta["frames"]) == model.num_reg_images()
        for frame in meta["frames"]:
            path = (d / frame["file_path"]).resolve()
            assert path.parent == (root / "train" / "demo").resolve() and path.is_file()
            image = model.find_image_with_name(path.name)
            pose = pose_from_transform(np.array(frame["transform_matrix"]))
            assert np.abs(pose - image.cam_from_world().matrix()).max() < 1e-6
            assert frame["w"] == model.cameras[image.camera_id].width


def test_every_output_has_the_umask_mode(small_run):
    """No private (mkstemp 0600) file among the outputs: what the umask lets others read, they
    can read in every file of the run folder (the json, csv and html files included)."""
    import stat

    from imc.cache import file_mode

    _, run = small_run
    files = [p for p in run.rglob("*") if p.is_file() and not p.is_symlink()]
    names = {p.name for p in files}
    assert {"config.json", "stats.json", "submission.csv", "summary.json", "report.html"} <= names
    assert "transforms.json" in names
    readable = file_mode() & 0o044
    for p in files:
        assert stat.S_IMODE(p.stat().st_mode) & 0o044 == readable, p


def _data_images(page: str) -> list[tuple[str, str, Image.Image]]:
    """(class, alt, decoded image) of every <img> of the page; fails on any non-data source."""
    out = []
    for tag in re.findall(r"<img [^>]*>", page):
        src = re.search(r"src='([^']*)'", tag).group(1)
        assert src.startswith(("data:image/png;base64,", "data:image/jpeg;base64,")), src[:60]
        im = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        im.load()
        cls, alt = re.search(r"class='(\w+)'", tag).group(1), re.search(r"alt='([^']*)'", tag)
        out.append((cls, alt.group(1), im))
    return out


@pytest.fixture(scope="module")
def page(small_run, tmp_path_factory):
    """`imc report` with the data root: reference poses (and scores once the metric is in)."""
    root, run = small_run
    out = tmp_path_factory.mktemp("page") / "report.html"
    assert cli.main(["report", str(run), f"--data-root={root}", f"--output={out}"]) == 0
    return out


def test_page_content(small_run, page):
    root, run = small_run
    text = page.read_text()
    summary = json.loads((run / "demo" / "summary.json").read_text())
    assert 0.2e6 < len(text) < 3e6
    assert not re.search(r"(src|href)\s*=\s*['\"]?(https?:|//)", text)  # nothing fetched
    images = _data_images(text)
    thumbs = [alt for cls, alt, _ in images if cls == "t"]
    assert sorted(thumbs) == sorted(SUBSET)
    assert all(max(im.size) == report.THUMB for cls, _, im in images if cls == "t")
    alts = [alt for _, alt, _ in images]
    assert "pair graph" in alts and "time per stage" in alts
    models = sorted((run / "demo" / "models").iterdir())
    assert sum(a.startswith("cameras of model") for a in alts) == len(models)
    captions = [c for *_, c in report.match_choices(summary)]
    assert sum(a in captions for a in alts) == len(captions) >= 3
    assert any(c.startswith("verified: ") for c in captions)
    assert "rotation 270° (turned upright)" in text and "rotation 90° (turned upright)" in text
    n_reg = len(summary["clusters"])
    assert f"8 images, {n_reg} registered in" in text
    cameras = summary["mapping"]["cameras"]
    assert ("; cameras shared in" if cameras == "shared" else "; one camera per image") in text
    assert "reference: boxes" in text and "reference: outliers" in text
    # the metric's breakdown: overall, the dataset, and one row per reference scene
    assert "clusterness" in text and "cameras within each threshold" in text
    assert re.search(r"<td>boxes</td><td>4</td>", text) and re.search(
        r"<td>wall</td><td>3</td>", text
    )


def test_a_missing_cache_costs_only_its_part(small_run, tmp_path):
    """The match pictures need the cache; without it the rest of the page is still there."""
    _, run = small_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    summary = json.loads((copy / "demo" / "summary.json").read_text())
    summary["features"] = str(tmp_path / "gone" / "features.h5")
    (copy / "demo" / "summary.json").write_text(json.dumps(summary))
    text = report.write_report(copy).read_text()
    assert "<p class='note'>matches_html: " in text and "gone/features.h5" in text
    alts = [alt for _, alt, _ in _data_images(text)]
    assert "pair graph" in alts and sum(a.endswith(".png") for a in alts) == len(SUBSET)
    assert not any(a.startswith("verified") for a in alts)


def test_reference_alignment_of_the_demo(small_run):
    """The demo's exact geometry: after the metric's registration every registered camera of
    each model lies within the largest threshold of its reference centre."""
    root, run = small_run
    from imc import formats

    ref = formats.read_competition(root, split="train").datasets["demo"]
    summary = json.loads((run / "demo" / "summary.json").read_text())
    views = plots.load_models(run / "demo", summary)
    scenes = set()
    for view in views:
        al = plots.align_reference(view, ref)
        assert al is not None
        scenes.add(al.scene)
        ok = np.isfinite(al.error)
        assert ok.sum() >= 3 and (al.error[ok] < al.threshold).all(), al.error
        assert al.threshold == ref.thresholds[al.scene].max()
        # the aligned reference centres sit on the cameras in the model's frame
        gap = np.linalg.norm(al.reference[ok] - view.centers[ok], axis=1)
        assert gap.max() < 0.1 * np.ptp(view.centers, axis=0).max()
    assert scenes == {"boxes", "wall"}


# ----------------------------------------------------------------- the page in a browser

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-port=0",
]


class DevTools:
    """A DevTools-protocol session over a minimal websocket client (RFC 6455, text frames)."""

    def __init__(self, ws_url: str, timeout: float = 60.0):
        u = urllib.parse.urlparse(ws_url)
        self.sock = socket.create_connection((u.hostname, u.port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            f"GET {u.path} HTTP/1.1\r\nHost: {u.hostname}:{u.port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        data = b""
        while b"\r\n\r\n" not in data:
            data += self.sock.recv(4096)
        head, self.buf = data.split(b"\r\n\r\n", 1)
        assert b" 101 " in head.split(b"\r\n")[0], head
        self.next_id, self.events = 0, []

    def _read(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(1 << 20)
            assert chunk, "DevTools connection closed"
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _send(self, payload: bytes, opcode: int = 0x1) -> None:
        n, mask = len(payload), os.urandom(4)
        if n < 126:
            head = struct.pack(">BB", 0x80 | opcode, 0x80 | n)
        elif n < 1 << 16:
            head = struct.pack(">BBH", 0x80 | opcode, 0x80 | 126, n)
        else:
            head = struct.pack(">BBQ", 0x80 | opcode, 0x80 | 127, n)
        masked = np.frombuffer(payload, np.uint8) ^ np.resize(np.frombuffer(mask, np.uint8), n)
        self.sock.sendall(head + mask + masked.tobytes())

    def _message(self) -> dict:
        parts = []
        while True:
            b0, b1 = self._read(2)
            n = b1 & 0x7F
            n = struct.unpack(">H", self._read(2))[0] if n == 126 else n
            n = struct.unpack(">Q", self._read(8))[0] if n == 127 else n
            payload = self._read(n)  # server frames are not masked
            opcode = b0 & 0x0F
            if opcode == 0x9:  # ping
                self._send(payload, 0xA)
                continue
            assert opcode in (0x0, 0x1), f"unexpected websocket opcode {opcode}"
            parts.append(payload)
            if b0 & 0x80:
                return json.loads(b"".join(parts))

    def call(self, method: str, **params) -> dict:
        self.next_id += 1
        self._send(json.dumps({"id": self.next_id, "method": method, "params": params}).encode())
        while True:
            msg = self._message()
            if msg.get("id") == self.next_id:
                assert "error" not in msg, msg
                return msg.get("result", {})
            self.events.append(msg)

    def wait_for(self, method: str) -> dict:
        while not any(e.get("method") == method for e in self.events):
            self.events.append(self._message())
        return next(e for e in self.events if e.get("method") == method)

    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and error log entries (failed loads) so far."""
        out = []
        for e in self.events:
            m, p = e.get("method"), e.get("params", {})
            if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append("console: " + " ".join(str(a.get("value")) for a in p["args"]))
            elif m == "Runtime.exceptionThrown":
                out.append("exception: " + json.dumps(p.get("exceptionDetails"))[:300])
            elif m == "Log.entryAdded" and p["entry"]["level"] == "error":
                out.append(f"log: {p['entry'].get('text')} {p['entry'].get('url', '')}")
        return out


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.skip("no chromium binary (Debian package `chromium`; .ci/run installs it)")


def open_in_browser(
    html_path: Path, tmp: Path, screenshot: Path | None = None, script: str | None = None
) -> dict:
    """Load a page in headless Chromium; its errors, images, the value of `script` (a JS
    expression, awaited when a promise; None when not given) and optionally a screenshot."""
    proc = subprocess.Popen(
        [_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp / 'profile'}", "about:blank"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        port, t0 = None, time.monotonic()
        while port is None and time.monotonic() - t0 < 60:
            line = proc.stderr.readline()
            assert line or proc.poll() is None, "chromium exited before DevTools started"
            m = re.search(r"DevTools listening on ws://[^:]+:(\d+)/", line)
            port = m and int(m.group(1))
        assert port, "chromium did not start DevTools within 60 s"
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        targets = json.load(opener.open(f"http://127.0.0.1:{port}/json/list", timeout=30))
        page = next(t for t in targets if t["type"] == "page")
        dt = DevTools(page["webSocketDebuggerUrl"])
        for domain in ("Runtime", "Log", "Page"):
            dt.call(f"{domain}.enable")
        dt.call(
            "Emulation.setDeviceMetricsOverride",
            width=1400,
            height=3000,
            deviceScaleFactor=1,
            mobile=False,
        )
        dt.events.clear()
        dt.call("Page.navigate", url=html_path.resolve().as_uri())
        dt.wait_for("Page.loadEventFired")
        js = "JSON.stringify([...document.images].map(i => [i.alt, i.complete, i.naturalWidth]))"
        result = dt.call("Runtime.evaluate", expression=js, returnByValue=True)
        images = json.loads(result["result"]["value"])
        value = None
        if script is not None:
            got = dt.call("Runtime.evaluate", expression=script, awaitPromise=True,
                          returnByValue=True)  # fmt: skip
            assert "exceptionDetails" not in got, got["exceptionDetails"]
            value = got["result"].get("value")
        shot = None
        if screenshot is not None:
            shot = base64.b64decode(dt.call("Page.captureScreenshot", format="png")["data"])
            screenshot.write_bytes(shot)
        return {"errors": dt.errors(), "images": images, "dt": dt, "script": value}
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_browser_check_catches_errors(tmp_path):
    """The check can fail: a console error, a script exception and a broken image are seen."""
    bad = tmp_path / "bad.html"
    bad.write_text(
        "<html><body><img alt='ok' src='data:image/png;base64,"
        + base64.b64encode(_png_1x1()).decode()
        + "'><img alt='broken' src='data:image/png;base64,AAAA'><img alt='missing' src='no.png'>"
        "<script>console.error('injected'); undefined_function();</script></body></html>"
    )
    got = open_in_browser(bad, tmp_path)
    errors = "\n".join(got["errors"])
    assert "console: injected" in errors and "exception:" in errors and "no.png" in errors
    widths = {alt: w for alt, _, w in got["images"]}
    assert widths == {"ok": 1, "broken": 0, "missing": 0}


def _png_1x1() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buf, format="PNG")
    return buf.getvalue()


# Per 3D view: points drawn, cameras drawn, pixels off the background, and the view (yaw,
# pitch, zoom) before and after a drag and a wheel turn dispatched to it.
CANVAS_CHECK = """(async () => {
  const out = [];
  for (const c of document.querySelectorAll('canvas.view3d')) {
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    let ink = 0;
    for (let i = 0; i < d.length; i += 4) if (d[i] + d[i + 1] + d[i + 2] < 700) ink++;
    const before = c.dataset.view, at = (x, y) => ({clientX: x, clientY: y, pointerId: 1});
    c.dispatchEvent(new PointerEvent('pointerdown', at(10, 10)));
    c.dispatchEvent(new PointerEvent('pointermove', at(70, 30)));
    c.dispatchEvent(new PointerEvent('pointerup', at(70, 30)));
    c.dispatchEvent(new WheelEvent('wheel', {deltaY: -300, cancelable: true}));
    await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
    out.push([+c.dataset.drawn, +c.dataset.cameras, ink, before, c.dataset.view]);
  }
  return JSON.stringify(out);
})()"""


def test_report_in_a_browser(page, tmp_path):
    shot = Path(os.environ.get("IMC_REPORT_SCREENSHOT") or tmp_path / "report.png")
    got = open_in_browser(page, tmp_path, shot, CANVAS_CHECK)
    assert got["errors"] == []
    views = json.loads(got["script"])
    text = page.read_text()
    assert len(views) == text.count("<canvas class='view3d'") == text.count("cameras of model")
    assert len(views) >= 2  # one per model (test_run_writes_the_report_and_the_exports)
    for drawn, cameras, ink, before, after in views:
        assert drawn > 50 and cameras >= 3, views
        assert ink > 1000, views  # points and frusta on the canvas, not a blank one
        yaw, pitch, zoom = map(float, after.split(","))
        assert after != before and zoom > 1, views  # the drag turned it, the wheel zoomed in
    expected = len(re.findall(r"<img ", page.read_text()))
    assert len(got["images"]) == expected > 10
    assert all(complete and width > 0 for _, complete, width in got["images"]), got["images"]
    with Image.open(shot) as im:
        assert im.size == (1400, 3000)
        # not a blank page: the thumbnails and plots give many distinct colours
        assert len(im.convert("RGB").getcolors(1 << 24)) > 1000


def test_mapping_record_in_words():
    shared = {"mapper": "incremental", "cameras": "shared", "shared_groups": 2}
    assert report._cameras_text({"mapping": shared}) == "; cameras shared in 2 group(s)"
    fallback = {"mapper": "global", "cameras": "per_image", "stopped_at_time_limit": False}
    assert report._cameras_text({"mapping": fallback}) == (
        "; one camera per image; global mapping (incremental mapping left the pair graph in pieces)"
    )
    fallback["global_pairs"] = 41
    assert report._cameras_text({"mapping": fallback}).endswith(
        "; global mapping on 41 pairs (incremental mapping left the pair graph in pieces)"
    )
    assert report._cameras_text({}) == ""
