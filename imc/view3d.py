"""The report's interactive 3D view of a model: camera frusta and coloured sparse points on a
canvas, drawn by a short inline script (no library, nothing fetched), rotated by dragging and
zoomed with the mouse wheel; a double click restores the first view.

The data of each view sits in a `<script type='application/json'>` beside its canvas: the
points subsampled to `MAX_POINTS`, in the display frame of plots.view_frame (z up), centred on
the view box and scaled to about [-1, 1], as little-endian int16 (base64), their colours as
uint8 RGB (base64), and per camera its centre and the four corners of its frustum (the first
two on the upright image's top edge, drawn thicker). The first view frames the cameras and the
points inside the view box (plots.view_box); points far beyond it (a distant background) come
into sight by zooming out. After drawing, the script sets the
canvas's `data-drawn` attribute to the number of points drawn, `data-cameras` to the cameras'
and `data-view` to "yaw,pitch,zoom" (the browser test reads them).
"""

from __future__ import annotations

import base64
import html
import json

import numpy as np

from .plots import ModelView, view_box, view_frame

MAX_POINTS = 4000
QUANT = 2000.0  # int16 step: 1/2000 of the half box; points beyond 16 half boxes are dropped
FRUSTUM = (0.04, 0.4, 0.25)  # frustum depth: least, share of the median camera spacing, most


def view_data(
    view: ModelView,
    reference: np.ndarray | None = None,
    good: np.ndarray | None = None,
    max_points: int = MAX_POINTS,
) -> dict:
    """The JSON the script draws. reference: [N x 3] aligned reference centres (NaN rows: none),
    good: [N] bool within threshold (plots.align_reference). Cameras: [N x 15] centre then four
    frustum corners, display coordinates rounded to 1e-4."""
    frame = view_frame(view.centers, view.downs, view.points)
    c = view.centers @ frame.T
    p = view.points @ frame.T
    r = None if reference is None else reference @ frame.T
    lo, hi = view_box(c, p, r)
    mid, half = (lo + hi) / 2, max(float((hi - lo).max()) / 2, 1e-9)
    c, p = (c - mid) / half, (p - mid) / half
    keep = np.flatnonzero((np.abs(p) < 32000 / QUANT).all(1))
    if len(keep) > max_points:
        keep = np.sort(np.random.default_rng(0).choice(keep, max_points, replace=False))
    q = np.round(p[keep] * QUANT).astype("<i2")
    corners = c[:, None] + frustum_depth(c) * (view.rays @ frame.T)
    cams = np.concatenate([c[:, None], corners], axis=1).reshape(-1, 15)
    out = {
        "n": len(keep),
        "q": QUANT,
        "points": base64.b64encode(q.tobytes()).decode(),
        "colors": base64.b64encode(view.colors[keep].astype(np.uint8).tobytes()).decode(),
        "cameras": np.round(cams, 4).tolist(),
    }
    if r is not None:
        ok = np.isfinite(r).all(1)
        good_ = np.zeros(len(c), bool) if good is None else np.asarray(good, bool)
        out["reference"] = [
            [*np.round((r[i] - mid) / half, 4).tolist(), int(good_[i])] for i in np.flatnonzero(ok)
        ]
        out["reference_of"] = np.flatnonzero(ok).tolist()  # camera index of each reference
    return out


def frustum_depth(centers: np.ndarray) -> float:
    """Depth of the drawn frusta (display units): a share of the median distance from each
    camera to its nearest one, within FRUSTUM's bounds. centers: [N x 3]."""
    least, share, most = FRUSTUM
    if len(centers) < 2:
        return most
    d = np.linalg.norm(centers[:, None] - centers[None], axis=2)
    np.fill_diagonal(d, np.inf)
    return float(np.clip(share * np.median(d.min(1)), least, most))


def canvas_html(view: ModelView, reference=None, good=None) -> str:
    """The canvas, its data and a line that says how to move it."""
    data = view_data(view, reference, good)
    text = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    refs = "; black circles: reference centres, a line to their camera" * ("reference" in data)
    return (
        f"<canvas class='view3d' width='1000' height='560' "
        f"aria-label='3D view of model {view.index}'></canvas>"
        f"<script type='application/json'>{text}</script>"
        f"<p class='muted'>3D view: {data['n']} of {len(view.points)} points, "
        f"{len(view.names)} cameras (red frusta; the thick edge is the top of the picture)"
        f"{html.escape(refs)}. Drag to rotate, wheel to zoom, double click to reset.</p>"
    )


SCRIPT = r"""
(function () {
  function bytes(s) {
    var b = atob(s), u = new Uint8Array(b.length);
    for (var i = 0; i < b.length; i++) u[i] = b.charCodeAt(i);
    return u;
  }
  function setup(cv) {
    var d = JSON.parse(cv.nextElementSibling.textContent);
    var raw = bytes(d.points), dv = new DataView(raw.buffer), n = raw.length / 6;
    var P = new Float32Array(3 * n), C = bytes(d.colors), cams = d.cameras;
    var refs = d.reference || [], refOf = d.reference_of || [];
    for (var i = 0; i < 3 * n; i++) P[i] = dv.getInt16(2 * i, true) / d.q;
    var style = [];
    for (i = 0; i < n; i++) {
      style.push("rgb(" + C[3 * i] + "," + C[3 * i + 1] + "," + C[3 * i + 2] + ")");
    }
    var yaw0 = -0.7, pitch0 = 0.45, yaw = yaw0, pitch = pitch0, zoom = 1, fit = 1, pan = [0, 0];
    var drag = null, queued = false;
    var ctx = cv.getContext("2d"), order = new Uint32Array(n), depth = new Float32Array(n);
    var sx = new Float32Array(n), sy = new Float32Array(n);
    function projector(s, o) {  // turn about the up axis, tilt, then a mild perspective
      var W = cv.width, H = cv.height;
      var cy = Math.cos(yaw), sn = Math.sin(yaw), cp = Math.cos(pitch), sp = Math.sin(pitch);
      return function (x, y, z) {
        var X = cy * x - sn * y, Y = sn * x + cy * y;
        var up = sp * Y + cp * z, dep = cp * Y - sp * z, k = 6 / (6 + Math.max(dep, -5));
        return [W / 2 + s * (o[0] + k * X), H / 2 + s * (o[1] - k * up), dep];
      };
    }
    (function () {  // the first view: the cameras and 96 % of the points in the view box
      var p = projector(1, [0, 0]), xs = [], ys = [], cx = [], cy = [];
      for (var i = 0; i < n; i++) {
        var x = P[3 * i], y = P[3 * i + 1], z = P[3 * i + 2];
        if (Math.max(Math.abs(x), Math.abs(y), Math.abs(z)) > 1.05) continue;
        var q = p(x, y, z); xs.push(q[0]); ys.push(q[1]);
      }
      for (i = 0; i < cams.length; i++) {
        q = p(cams[i][0], cams[i][1], cams[i][2]); cx.push(q[0]); cy.push(q[1]);
      }
      function span(a, c) {
        a = a.slice().sort(function (u, v) { return u - v; });
        var lo = a.length ? [a[Math.floor(0.02 * (a.length - 1))]] : [];
        var hi = a.length ? [a[Math.ceil(0.98 * (a.length - 1))]] : [];
        return [Math.min.apply(null, lo.concat(c)), Math.max.apply(null, hi.concat(c))];
      }
      var bx = span(xs, cx), by = span(ys, cy);
      var w = Math.max(bx[1] - bx[0], 1e-6), h = Math.max(by[1] - by[0], 1e-6);
      fit = 0.9 * Math.min(cv.width / w, cv.height / h);
      pan = [cv.width / 2 - (bx[0] + bx[1]) / 2, cv.height / 2 - (by[0] + by[1]) / 2];
    })();
    function draw() {
      queued = false;
      var W = cv.width, H = cv.height, proj = projector(fit * zoom, pan);
      ctx.fillStyle = "#fbfbfb"; ctx.fillRect(0, 0, W, H);
      for (var i = 0; i < n; i++) {
        var q = proj(P[3 * i], P[3 * i + 1], P[3 * i + 2]);
        sx[i] = q[0]; sy[i] = q[1]; depth[i] = q[2]; order[i] = i;
      }
      order.sort(function (a, b) { return depth[b] - depth[a]; });
      var drawn = 0;
      for (i = 0; i < n; i++) {
        var j = order[i];
        if (depth[j] < -5) continue;  // behind the viewer
        ctx.fillStyle = style[j]; ctx.fillRect(sx[j] - 1, sy[j] - 1, 2.5, 2.5); drawn++;
      }
      for (i = 0; i < refs.length; i++) {
        var r = proj(refs[i][0], refs[i][1], refs[i][2]), c = cams[refOf[i]];
        var o = proj(c[0], c[1], c[2]);
        ctx.strokeStyle = refs[i][3] ? "#2ca02c" : "#d62728"; ctx.lineWidth = 1;
        ctx.beginPath(); ctx.moveTo(o[0], o[1]); ctx.lineTo(r[0], r[1]); ctx.stroke();
        ctx.strokeStyle = "#000"; ctx.beginPath(); ctx.arc(r[0], r[1], 4, 0, 6.3); ctx.stroke();
      }
      ctx.strokeStyle = "#d62728";
      for (i = 0; i < cams.length; i++) {
        var v = [];
        var m = cams[i];
        for (var k = 0; k < 5; k++) v.push(proj(m[3 * k], m[3 * k + 1], m[3 * k + 2]));
        ctx.lineWidth = 1; ctx.beginPath();
        for (k = 1; k < 5; k++) { ctx.moveTo(v[0][0], v[0][1]); ctx.lineTo(v[k][0], v[k][1]); }
        ctx.moveTo(v[2][0], v[2][1]); ctx.lineTo(v[3][0], v[3][1]); ctx.lineTo(v[4][0], v[4][1]);
        ctx.lineTo(v[1][0], v[1][1]); ctx.stroke();
        ctx.lineWidth = 2.5; ctx.beginPath();
        ctx.moveTo(v[1][0], v[1][1]); ctx.lineTo(v[2][0], v[2][1]); ctx.stroke();
      }
      cv.dataset.drawn = String(drawn);
      cv.dataset.cameras = String(cams.length);
      cv.dataset.view = [yaw, pitch, zoom].map(function (x) { return x.toFixed(3); }).join();
    }
    function later() { if (!queued) { queued = true; requestAnimationFrame(draw); } }
    cv.addEventListener("pointerdown", function (e) {
      drag = [e.clientX, e.clientY];
      try { cv.setPointerCapture(e.pointerId); } catch (err) { /* not an active pointer */ }
    });
    cv.addEventListener("pointermove", function (e) {
      if (!drag) return;
      yaw += (e.clientX - drag[0]) * 0.01;
      pitch = Math.max(-1.55, Math.min(1.55, pitch + (e.clientY - drag[1]) * 0.01));
      drag = [e.clientX, e.clientY]; later();
    });
    cv.addEventListener("pointerup", function () { drag = null; });
    cv.addEventListener("wheel", function (e) {
      e.preventDefault(); zoom = Math.max(0.2, Math.min(20, zoom * Math.exp(-e.deltaY * 0.001)));
      later();
    }, {passive: false});
    cv.addEventListener("dblclick", function () { yaw = yaw0; pitch = pitch0; zoom = 1; later(); });
    draw();
  }
  document.querySelectorAll("canvas.view3d").forEach(setup);
})();
"""
