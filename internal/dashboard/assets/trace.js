// One trace as a waterfall, from /api/traces/{id}: a row per span,
// indented under its parent, its bar placed on the trace's timeline.
const id = new URLSearchParams(location.search).get('id') || '';
document.getElementById('trace-id').textContent = id;
const status = document.getElementById('status');

function depthOf(span, byId) {
  let d = 0;
  for (let p = byId.get(span.parentId); p && d < 50; p = byId.get(p.parentId)) d++;
  return d;
}

async function load() {
  const resp = await fetch(`api/traces/${encodeURIComponent(id)}`);
  const body = await resp.json();
  if (!resp.ok) {
    status.textContent = body.error || resp.statusText;
    status.classList.add('error');
    return;
  }
  const spans = body;
  const byId = new Map(spans.map((s) => [s.spanId, s]));
  const t0 = Math.min(...spans.map((s) => s.startUs));
  const t1 = Math.max(...spans.map((s) => s.startUs + s.durationUs));
  const total = Math.max(t1 - t0, 1);
  const rows = spans.map((s) => {
    const tr = document.createElement('tr');
    tr.dataset.spanId = s.spanId;
    if (s.error) tr.classList.add('error');
    const start = s.startUs, end = s.startUs + s.durationUs;
    const cells = [s.service, s.name, s.kind, (s.durationUs / 1000).toFixed(2)];
    cells.forEach((c, i) => {
      const td = document.createElement('td');
      td.textContent = c;
      if (i === 1) td.style.paddingLeft = `${4 + 16 * depthOf(s, byId)}px`;
      tr.append(td);
    });
    const td = document.createElement('td');
    td.className = 'timeline';
    const bar = document.createElement('div');
    bar.className = `bar ${s.kind}`;
    bar.style.marginLeft = `${(100 * (start - t0)) / total}%`;
    bar.style.width = `${Math.max((100 * (end - start)) / total, 0.5)}%`;
    bar.title = Object.entries(s.attributes || {}).map(([k, v]) => `${k}=${v}`).join('\n');
    td.append(bar);
    tr.append(td);
    return tr;
  });
  document.querySelector('#spans tbody').replaceChildren(...rows);
  const services = new Set(spans.map((s) => s.service));
  status.textContent = `${spans.length} spans across ${services.size} services, ${(total / 1000).toFixed(2)} ms`;
  document.body.dataset.loaded = 'true';
}
load();
