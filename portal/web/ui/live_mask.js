// The live mask widget (js_on_load of a gr.HTML; see live_mask.py for why it decodes on the server).
// Gradio passes: element, props, server (server.decode / server.prepare), trigger, watch.
// Drag: a box, decoded while the mouse moves. Click: an include point; shift-click (or the
// "exclude" toggle): an exclude point. Mouse-up sends the final prompt to the Annotate tab
// (trigger('submit')), which records the proposal server-side.
const S = {cfg: null, img: null, mask: null, box: null, points: [], drag: null,
           moving: null, pending: null, finalKey: null, drawnKey: null, upAt: 0, last: null, log: [],
           seq: 0, drawnSeq: 0, finals: 0};
window.__medsamLive = S;  // read by the benchmark and the browser test
const q = (sel) => element.querySelector(sel);
const keyOf = (p) => JSON.stringify(p);
const prompt = () => ({boxes: S.box ? [S.box] : [], points: S.points.slice()});

function frame() {
  const r = q('canvas').getBoundingClientRect();
  const s = Math.min(r.width / S.cfg.width, r.height / S.cfg.height);
  return {r, s, ox: (r.width - S.cfg.width * s) / 2, oy: (r.height - S.cfg.height * s) / 2};
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
  g.drawImage(S.img, f.ox, f.oy, w, h);
  if (S.mask) { g.imageSmoothingEnabled = false; g.drawImage(S.mask, f.ox, f.oy, w, h); }
  if (S.box) {
    const [x0, y0, x1, y1] = S.box;
    g.strokeStyle = '#ffc800'; g.lineWidth = 2;
    g.strokeRect(f.ox + x0 * f.s, f.oy + y0 * f.s, (x1 - x0) * f.s, (y1 - y0) * f.s);
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
  for (let i = 0, n = out.width * out.height; i < n; i++) {
    if ((bytes[i >> 3] >> (7 - (i & 7))) & 1) { const o = 4 * i; px[o] = 255; px[o + 1] = 40; px[o + 2] = 40; px[o + 3] = 120; }
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
    if (!S.cfg || !S.img || ev.button !== 0) return;
    canvas.setPointerCapture(ev.pointerId);
    S.drag = {start: toImage(ev), x: ev.clientX, y: ev.clientY, moved: false};
  });
  canvas.addEventListener('pointermove', (ev) => {
    if (!S.drag) return;
    if (!S.drag.moved && Math.hypot(ev.clientX - S.drag.x, ev.clientY - S.drag.y) < 4) return;
    if (!S.drag.moved) { S.drag.moved = true; S.points = []; }
    S.box = boxFrom(S.drag.start, toImage(ev));
    draw();
    request(prompt(), false);
  });
  canvas.addEventListener('pointerup', (ev) => {
    if (!S.drag) return;
    const d = S.drag; S.drag = null;
    if (d.moved) S.box = boxFrom(d.start, toImage(ev));
    else {
      const [x, y] = d.start, exclude = ev.shiftKey || q('.live-exclude').checked;
      S.points.push([Math.round(x * 10) / 10, Math.round(y * 10) / 10, exclude ? 0 : 1]);
    }
    draw();
    request(prompt(), true);
  });
  q('.live-clear').addEventListener('click', () => { S.box = null; S.points = []; S.mask = null; S.pending = null; draw(); });
  new ResizeObserver(draw).observe(canvas);
}

function load() {
  bind();
  const cfg = props.value && typeof props.value === 'object' && props.value.image_id ? props.value : null;
  if (S.cfg && cfg && S.cfg.image_id === cfg.image_id && S.cfg.src === cfg.src) return;
  Object.assign(S, {cfg, img: null, mask: null, box: null, points: [], pending: null, finalKey: null,
                   drawnKey: null, drawnSeq: S.seq});
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
