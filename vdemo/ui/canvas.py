"""The motion-strokes pad: a small HTML/JS canvas (a `gr.HTML` with `js_on_load`) that records freehand strokes.

The pad shows one image, the server-rendered overlay (`vdemo.strokes.draw_strokes_overlay`: every stroke in its own
colour with an arrow head and a dot per frame), and a transparent <canvas> on top that draws the stroke being dragged.
Pointer events keep the points in drawing order, normalised to [0, 1] over the image (origin top-left). On release the
pad fires a custom `stroke` event whose data is `{"points": [[x, y], ...]}`; the Python handler appends the stroke to
the session's `gr.State`, re-renders the overlay and sends it back as the pad's value (a PNG data URL), which clears
the ink. A click without movement sends one point: an anchor.
"""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

from vdemo.strokes import Stroke, draw_strokes_overlay, stroke_positions

PAD_SIDE_PX = 384  # the overlay's long side (the pad is drawn at most 360 px wide in the page)
MIN_STEP = 0.004  # drop pointer moves shorter than this (normalised): ~1.5 px on the pad, keeps strokes short

PAD_TEMPLATE = """
<div class="vd-pad" data-testid="stroke-pad">
  <img class="vd-pad-img" src="${value}" alt="first frame with strokes" draggable="false">
  <canvas class="vd-pad-ink"></canvas>
</div>
"""

PAD_CSS = """
.vd-pad { position: relative; width: 100%; max-width: 360px; margin: 0 auto; border-radius: 6px; overflow: hidden;
          background: #111; user-select: none; }
.vd-pad-img { width: 100%; height: auto; margin: 0 !important; display: block; pointer-events: none; }
.vd-pad-ink { position: absolute; inset: 0; width: 100%; height: 100%; cursor: crosshair; touch-action: none; }
"""

# Runs once when the pad mounts. `element`, `trigger`, `props` and `watch` come from gr.HTML.
PAD_JS = f"""
const ink = element.querySelector('.vd-pad-ink');
const ctx = ink.getContext('2d');
const MIN_STEP = {MIN_STEP};
let points = null;
function clamp(v) {{ return Math.min(1, Math.max(0, v)); }}
function where(ev) {{
  const r = ink.getBoundingClientRect();
  return [clamp((ev.clientX - r.left) / r.width), clamp((ev.clientY - r.top) / r.height)];
}}
function fit() {{
  const r = ink.getBoundingClientRect();
  const w = Math.max(1, Math.round(r.width * devicePixelRatio));
  const h = Math.max(1, Math.round(r.height * devicePixelRatio));
  if (ink.width !== w || ink.height !== h) {{ ink.width = w; ink.height = h; }}
}}
function draw() {{
  fit();
  ctx.clearRect(0, 0, ink.width, ink.height);
  if (!points) return;
  ctx.strokeStyle = '#ffffff'; ctx.fillStyle = '#ffffff';
  ctx.lineWidth = 2 * devicePixelRatio; ctx.lineJoin = 'round'; ctx.lineCap = 'round';
  ctx.setLineDash([6 * devicePixelRatio, 4 * devicePixelRatio]);
  ctx.beginPath();
  points.forEach(([x, y], i) => (i ? ctx.lineTo : ctx.moveTo).call(ctx, x * ink.width, y * ink.height));
  ctx.stroke();
  const [x0, y0] = points[0];
  ctx.beginPath(); ctx.arc(x0 * ink.width, y0 * ink.height, 3 * devicePixelRatio, 0, 2 * Math.PI); ctx.fill();
}}
ink.addEventListener('pointerdown', (ev) => {{
  if (ev.button !== 0) return;
  ev.preventDefault();
  ink.setPointerCapture(ev.pointerId);
  points = [where(ev)];
  draw();
}});
ink.addEventListener('pointermove', (ev) => {{
  if (!points) return;
  const p = where(ev), q = points[points.length - 1];
  if (Math.hypot(p[0] - q[0], p[1] - q[1]) >= MIN_STEP) {{ points.push(p); draw(); }}
}});
function finish(ev) {{
  if (!points) return;
  const p = where(ev), q = points[points.length - 1];
  if (Math.hypot(p[0] - q[0], p[1] - q[1]) > 0) points.push(p);
  const stroke = points.map(([x, y]) => [Math.round(x * 1e4) / 1e4, Math.round(y * 1e4) / 1e4]);
  element.dataset.lastStroke = JSON.stringify(stroke);
  trigger('stroke', {{points: stroke}});
}}
ink.addEventListener('pointerup', finish);
ink.addEventListener('pointercancel', () => {{ points = null; draw(); }});
watch('value', () => {{ points = null; draw(); }});
"""


def to_data_url(image_u8: np.ndarray) -> str:
    """(H, W, 3) uint8 -> a PNG data URL (what the pad's <img> shows)."""
    buffer = io.BytesIO()
    Image.fromarray(image_u8).save(buffer, format="PNG", optimize=False)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def pad_shape(height: int, width: int) -> tuple[int, int]:
    """The pad's (height, width) in px for a video of height × width: the same aspect, long side PAD_SIDE_PX."""
    scale = PAD_SIDE_PX / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def render_pad(base_u8: np.ndarray, strokes: list[Stroke], num_frames: int) -> str:
    """The pad's value: the overlay of all strokes on the (pad-sized) first frame, as a data URL.

    On top of `draw_strokes_overlay` each per-frame dot gets a thin light ring, so that the dots stay visible on the
    line at the pad's display size.
    """
    import cv2

    image = draw_strokes_overlay(base_u8, strokes, num_frames)
    height, width = image.shape[:2]
    ring_px = max(3, round(min(height, width) / 64))
    for stroke, positions in zip(strokes, stroke_positions(strokes, num_frames)):
        if stroke.is_anchor:
            continue
        for x, y in positions:
            centre = (int(round(x * width)), int(round(y * height)))
            cv2.circle(image, centre, ring_px, (245, 245, 245), 1, cv2.LINE_AA)
    return to_data_url(image)
