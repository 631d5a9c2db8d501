// The live mask widget (js_on_load of a gr.HTML; see live_mask.py for why it decodes on the server).
// Gradio passes: element, props, server (server.decode / server.prepare), trigger, watch.
// Drag: a box, decoded while the mouse moves. Click: an include point; shift-click (or the
// "exclude" toggle): an exclude point. Mouse-up sends the final prompt to the Annotate tab
// (trigger('submit')), which records the proposal server-side.
// View: the wheel zooms around the cursor, a middle-button drag (or space + drag) pans, Fit resets;
// prompts stay in original image pixels whatever the view. Ctrl+Z undoes the last prompt change,
// or the editor's last stroke when that came later (the editor keeps its own history).
const S = {cfg: null, img: null, mask: null, box: null, points: [], drag: null,
           moving: null, pending: null, finalKey: null, drawnKey: null, upAt: 0, last: null, log: [],
           seq: 0, drawnSeq: 0, finals: 0, view: {z: 1, dx: 0, dy: 0}, pan: null, space: false,
           undo: [], promptAt: 0};
window.__medsamLive = S;  // read by the benchmark and the browser test
const q = (sel) => element.querySelector(sel);
const keyOf = (p) => JSON.stringify(p);
const prompt = () => ({boxes: S.box ? [S.box] : [], points: S.points.slice()});

function frame() {
  // Fitted to the panel (small images scaled up, large ones down), then the user's zoom and pan.
  const r = q('canvas').getBoundingClientRect(), v = S.view;
  const fit = Math.min(r.width / S.cfg.width, r.height / S.cfg.height), s = fit * v.z;
  return {r, s, fit, ox: (r.width - S.cfg.width * fit) / 2 + v.dx, oy: (r.height - S.cfg.height * fit) / 2 + v.dy};
}

function zoomAt(ev, factor) {
  // The image point under the cursor stays under it.
  const f = frame(), mx = ev.clientX - f.r.left, my = ev.clientY - f.r.top;
  const ix = (mx - f.ox) / f.s, iy = (my - f.oy) / f.s, z = Math.max(1, Math.min(64, S.view.z * factor));
  if (z === 1) { S.view = {z: 1, dx: 0, dy: 0}; draw(); return; }
  const s = f.fit * z, baseX = (f.r.width - S.cfg.width * f.fit) / 2, baseY = (f.r.height - S.cfg.height * f.fit) / 2;
  S.view = {z, dx: mx - ix * s - baseX, dy: my - iy * s - baseY};
  draw();
}

function remember() {
  // The prompt before a change, for Ctrl+Z.
  S.undo.push({box: S.box, points: S.points.slice()});
  if (S.undo.length > 50) S.undo.shift();
  S.promptAt = performance.now();
}

function undoPrompt() {
  const before = S.undo.pop();
  if (!before) return false;
  S.box = before.box; S.points = before.points; S.pending = null;
  if (!S.box && !S.points.length) { S.mask = null; S.drawnKey = null; }
  draw();
  request(prompt(), true);
  return true;
}

function draw() {
  const canvas = q('canvas'), dpr = window.devicePixelRatio || 1, r = canvas.getBoundingClientRect();
  if (canvas.width !== Math.round(r.width * dpr)) canvas.width = Math.round(r.width * dpr);
  if (canvas.height !== Math.round(r.height * dpr)) canvas.height = Math.round(r.height * dpr);
  const g = canvas.getContext('2d');
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  g.clearRect(0, 0, r.width, r.height);
  if (!S.cfg || !S.img) return;
  const f = frame(), w = S.cfg.width * f.s, h = S.cfg.height * f.s;
  g.imageSmoothingEnabled = f.s < 2;  // zoomed in: whole pixels, not a blur
  g.drawImage(S.img, f.ox, f.oy, w, h);
  if (S.mask) { g.imageSmoothingEnabled = false; g.drawImage(S.mask, f.ox, f.oy, w, h); }
  if (S.box) {
    const [x0, y0, x1, y1] = S.box;
    // Outlined only (a dark line under a bright one), so the object inside stays visible.
    const rect = [f.ox + x0 * f.s, f.oy + y0 * f.s, (x1 - x0) * f.s, (y1 - y0) * f.s];
    g.strokeStyle = 'rgba(0,0,0,0.7)'; g.lineWidth = 4; g.strokeRect(...rect);
    g.strokeStyle = '#ffc800'; g.lineWidth = 2; g.strokeRect(...rect);
  }
  for (const [x, y, label] of S.points) {
    g.beginPath(); g.arc(f.ox + x * f.s, f.oy + y * f.s, 5, 0, 2 * Math.PI);
    g.fillStyle = label ? '#22c55e' : '#ef4444'; g.fill(); g.strokeStyle = '#fff'; g.lineWidth = 1.5; g.stroke();
  }
}

function paintMask(out) {
  // np.packbits order: the first pixel is the most significant bit of the first byte.
  const bytes = Uint8Array.from(atob(out.bits), (c) => c.charCodeAt(0));
  const c = document.createElement('canvas'); c.width = out.width; c.height = out.height;
  const g = c.getContext('2d'), img = g.createImageData(out.width, out.height), px = img.data;
  const hex = (S.cfg && S.cfg.colour) || '#ff2828', rgb = [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16));
  for (let i = 0, n = out.width * out.height; i < n; i++) {
    if ((bytes[i >> 3] >> (7 - (i & 7))) & 1) { const o = 4 * i; px[o] = rgb[0]; px[o + 1] = rgb[1]; px[o + 2] = rgb[2]; px[o + 3] = 120; }
  }
  g.putImageData(img, 0, 0);
  S.mask = c;
  draw();
}

function finished(p, out) {
  // The final prompt's mask is on screen: tell the page (timing) and the tab (record the proposal).
  S.finalKey = null;
  S.last = {prompt: p, bits: out.bits, width: out.width, height: out.height, iou: out.iou, drawnAt: performance.now()};
  element.dispatchEvent(new CustomEvent('medsam-mask', {bubbles: true, detail: {ms: S.last.drawnAt - S.upAt}}));
  q('.live-note').textContent = `IoU ${out.iou.toFixed(3)} · decoded in ${out.decode_ms.toFixed(0)} ms on the server`;
  trigger('submit', {image_id: S.cfg.image_id, boxes: p.boxes, points: p.points, mask: out.bits, seq: ++S.finals});
}

async function send(p, final) {
  const k = keyOf(p), imageId = S.cfg.image_id, seq = ++S.seq;
  if (!final) S.moving = k;
  let out;
  const sent = performance.now();
  try { out = await server.decode({image_id: imageId, boxes: p.boxes, points: p.points}); }
  catch (e) { out = {error: String(e)}; }
  if (!final) S.moving = null;
  S.log.push({sent, round_trip: performance.now() - sent, server: out.decode_ms, final});  // for the benchmark
  if (S.log.length > 100) S.log.shift();
  if (S.cfg && S.cfg.image_id === imageId && seq > S.drawnSeq) {  // an older answer never paints over a newer one
    if (out.error) q('.live-note').textContent = out.error;
    else { S.drawnSeq = seq; paintMask(out); S.drawnKey = k; S.drawnOut = out; if (k === S.finalKey) finished(p, out); }
  }
  const next = S.pending; S.pending = null;
  if (next && !final && S.finalKey === null && S.cfg && S.cfg.image_id === imageId) request(next, false);
}

function request(p, final) {
  // While the mouse moves: one decode in flight, newer prompts replace the pending one, so the
  // mask follows the mouse without a queue building up. The final prompt (mouse-up, click) does
  // not wait behind a move's decode: it goes at once, unless that decode is for the same prompt.
  const k = keyOf(p);
  if (final) { S.finalKey = k; S.upAt = performance.now(); S.pending = null; }
  if (!p.boxes.length && !p.points.length) return;
  if (S.moving === k) return;  // its answer is on the way
  if (final && S.drawnKey === k) { finished(p, S.drawnOut); return; }  // already on screen
  if (!final && S.moving) { S.pending = p; return; }
  send(p, final);
}

function toImage(ev) {
  const f = frame(), c = (v, hi) => Math.max(0, Math.min(hi, v));
  return [c((ev.clientX - f.r.left - f.ox) / f.s, S.cfg.width), c((ev.clientY - f.r.top - f.oy) / f.s, S.cfg.height)];
}

function boxFrom(a, b) {
  return [Math.min(a[0], b[0]), Math.min(a[1], b[1]), Math.max(a[0], b[0]), Math.max(a[1], b[1])].map((v) => Math.round(v * 10) / 10);
}

function bind() {
  const canvas = q('canvas');
  if (canvas.__live) return;
  canvas.__live = true;
  canvas.addEventListener('pointerdown', (ev) => {
    if (!S.cfg || !S.img) return;
    if (ev.button === 1 || (ev.button === 0 && S.space)) {
      ev.preventDefault(); canvas.setPointerCapture(ev.pointerId); canvas.classList.add('panning');
      S.pan = {x: ev.clientX, y: ev.clientY, dx: S.view.dx, dy: S.view.dy};
      return;
    }
    if (ev.button !== 0) return;
    canvas.setPointerCapture(ev.pointerId);
    S.drag = {start: toImage(ev), x: ev.clientX, y: ev.clientY, moved: false};
  });
  canvas.addEventListener('pointermove', (ev) => {
    if (S.pan) {
      S.view = {...S.view, dx: S.pan.dx + ev.clientX - S.pan.x, dy: S.pan.dy + ev.clientY - S.pan.y};
      draw(); return;
    }
    if (!S.drag) return;
    if (!S.drag.moved && Math.hypot(ev.clientX - S.drag.x, ev.clientY - S.drag.y) < 4) return;
    if (!S.drag.moved) { S.drag.moved = true; remember(); S.points = []; }
    S.box = boxFrom(S.drag.start, toImage(ev));
    draw();
    request(prompt(), false);
  });
  canvas.addEventListener('pointerup', (ev) => {
    if (S.pan) { S.pan = null; canvas.classList.remove('panning'); return; }
    if (!S.drag) return;
    const d = S.drag; S.drag = null;
    if (d.moved) S.box = boxFrom(d.start, toImage(ev));
    else {
      remember();
      const [x, y] = d.start, exclude = ev.shiftKey || q('.live-exclude').checked;
      S.points.push([Math.round(x * 10) / 10, Math.round(y * 10) / 10, exclude ? 0 : 1]);
    }
    draw();
    request(prompt(), true);
  });
  canvas.addEventListener('auxclick', (ev) => ev.preventDefault());
  canvas.addEventListener('wheel', (ev) => {
    if (!S.cfg || !S.img) return;
    ev.preventDefault();
    zoomAt(ev, Math.exp(-ev.deltaY * (ev.deltaMode === 1 ? 0.05 : 0.0015)));
  }, {passive: false});
  canvas.addEventListener('pointerenter', () => { S.hover = true; });
  canvas.addEventListener('pointerleave', () => { S.hover = false; });
  q('.live-fit').addEventListener('click', () => { S.view = {z: 1, dx: 0, dy: 0}; draw(); });
  q('.live-clear').addEventListener('click', () => {
    if (S.box || S.points.length) remember();
    S.box = null; S.points = []; S.mask = null; S.pending = null; S.drawnKey = null; draw();
  });
  new ResizeObserver(draw).observe(canvas);
  bindKeys();
}

function typing(el) {
  return el && (el.tagName === 'INPUT' || el.tagName === 'TEXTAREA' || el.isContentEditable);
}

function bindKeys() {
  if (window.__medsamLiveKeys) return;
  window.__medsamLiveKeys = true;
  // The editor's strokes: their time decides whether Ctrl+Z means the last stroke or the last prompt.
  document.addEventListener('pointerup', (ev) => {
    if (ev.target && ev.target.closest && ev.target.closest('#ann-editor canvas')) S.strokeAt = performance.now();
  }, true);
  document.addEventListener('keydown', (ev) => {
    if (ev.key === ' ' && S.hover && !typing(ev.target)) { S.space = true; ev.preventDefault(); return; }
    if (!(ev.ctrlKey || ev.metaKey) || ev.shiftKey || ev.altKey || (ev.key !== 'z' && ev.key !== 'Z')) return;
    if (typing(ev.target) || element.offsetParent === null) return;  // a text box's own undo; another tab
    const undo = document.querySelector('#ann-editor button[aria-label="Undo"]');
    const canStroke = undo && !undo.disabled && undo.offsetParent !== null;
    if (canStroke && (S.strokeAt || 0) > S.promptAt) { ev.preventDefault(); undo.click(); return; }
    if (undoPrompt()) { ev.preventDefault(); return; }
    if (canStroke) { ev.preventDefault(); undo.click(); }
  });
  document.addEventListener('keyup', (ev) => { if (ev.key === ' ') S.space = false; });
}

function load() {
  bind();
  const cfg = props.value && typeof props.value === 'object' && props.value.image_id ? props.value : null;
  if (S.cfg && cfg && S.cfg.image_id === cfg.image_id && S.cfg.src === cfg.src) return;
  Object.assign(S, {cfg, img: null, mask: null, box: null, points: [], pending: null, finalKey: null,
                   drawnKey: null, drawnSeq: S.seq, view: {z: 1, dx: 0, dy: 0}, undo: [], promptAt: 0, strokeAt: 0});
  q('.live-note').textContent = cfg ? 'Preparing the image…' : 'Choose an image.';
  draw();
  if (!cfg) return;
  const img = new Image();
  img.onload = () => { if (S.cfg === cfg) { S.img = img; draw(); } };
  img.src = cfg.src;
  server.prepare({image_id: cfg.image_id}).then((out) => {
    if (S.cfg !== cfg) return;
    q('.live-note').textContent = out.error ? out.error : 'Ready: drag a box; click to include, shift-click to exclude.';
    if (out.error) delete q('.live-wrap').dataset.ready; else q('.live-wrap').dataset.ready = String(cfg.image_id);
  });
}

load();
watch('value', load);
