// Slice keys for the volume viewer (js_on_load of a gr.HTML inside #vol-viewer).
// While the viewer has focus (click the slice first): the arrow keys step one slice, Page Up/Down
// five. The slice asked for goes to the server with trigger('submit'), which moves the slider;
// presses made before the slider has caught up count from the last slice asked for.
const viewer = element.closest('#vol-viewer') || document.getElementById('vol-viewer');
const STEPS = {ArrowUp: 1, ArrowRight: 1, ArrowDown: -1, ArrowLeft: -1, PageUp: 5, PageDown: -5};
const K = {asked: null, at: 0};
window.__medsamVolumeKeys = K;  // read by the browser test

function shown() {
  const range = viewer && viewer.querySelector('#vol-slice input[type=range]');
  return range ? {z: Number(range.value), max: Number(range.max)} : null;
}

if (viewer && !viewer.__volKeys) {
  viewer.__volKeys = true;
  viewer.tabIndex = 0;  // focusable, so a click on the slice gives it the keys
  viewer.addEventListener('keydown', (ev) => {
    const t = ev.target, step = STEPS[ev.key];
    if (!step || ev.altKey || ev.ctrlKey || ev.metaKey) return;
    if (t && (t.tagName === 'INPUT' || t.tagName === 'TEXTAREA' || t.tagName === 'SELECT' || t.isContentEditable)) return;
    const now = shown();
    if (!now) return;
    ev.preventDefault();
    const from = K.asked !== null && performance.now() - K.at < 1500 && K.asked !== now.z ? K.asked : now.z;
    const z = Math.max(0, Math.min(now.max, from + step));
    K.asked = z; K.at = performance.now();
    if (z !== now.z) trigger('submit', {z});
  });
}
