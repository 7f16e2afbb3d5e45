// The Trellis dashboard: the live service graph from /api/graph, drawn
// with cytoscape; a click opens golden-metric charts (/api/series) and
// recent requests (/api/requests). Plain ES module, no build step.
import cytoscape from './vendor/cytoscape.esm.min.mjs';

const colors = {
  healthy: '#3e8635', degraded: '#f0ab00', failure: '#c9190b', idle: '#8a8d90',
  http: '#0066cc', grpc: '#009596', tcp: '#6a6e73', denied: '#c9190b', route: '#8f4bbf',
};
const refreshMs = 5000;
const params = new URLSearchParams(location.search);
const state = {
  window: params.get('window') || '1m',
  hidden: new Set((params.get('hide') || '').split(',').filter(Boolean)), // namespaces not shown
  selected: null, // id of the node or edge in the panel
  // Each fetch of the graph or of the panel takes a number; an answer
  // that arrives after a later fetch's was asked for is dropped, so a
  // slow answer never paints over a newer one (another window, another
  // node).
  graphFetch: 0,
  panelFetch: 0,
  graph: null,
  layoutKey: '',
};

const cy = cytoscape({
  container: document.getElementById('cy'),
  wheelSensitivity: 0.3,
  minZoom: 0.2,
  maxZoom: 3,
  style: [
    { selector: 'node', style: {
      'label': 'data(label)', 'font-size': 11, 'text-valign': 'bottom', 'text-margin-y': 5,
      'text-wrap': 'wrap', 'text-max-width': 140,
      'background-color': '#fff', 'border-width': 3, 'border-color': colors.idle, 'width': 30, 'height': 30 } },
    { selector: 'node.service', style: { 'shape': 'triangle', 'width': 36, 'height': 32 } },
    { selector: 'node.workload, node.unknown', style: { 'shape': 'rectangle' } },
    { selector: 'node.outside', style: { 'border-style': 'dashed' } },
    { selector: 'node.healthy', style: { 'border-color': colors.healthy } },
    { selector: 'node.degraded', style: { 'border-color': colors.degraded } },
    { selector: 'node.failure', style: { 'border-color': colors.failure, 'background-color': '#fbe9e7' } },
    { selector: 'node.namespace', style: {
      'shape': 'round-rectangle', 'background-color': '#e8edf5', 'background-opacity': 0.5,
      'border-width': 1, 'border-style': 'dashed', 'border-color': '#9aa3b5',
      'text-valign': 'top', 'text-halign': 'center', 'text-margin-y': -4, 'font-size': 13, 'font-weight': 'bold',
      'color': '#4a5163', 'padding': 24 } },
    { selector: 'edge', style: {
      'curve-style': 'bezier', 'width': 2, 'target-arrow-shape': 'triangle', 'arrow-scale': 1.1,
      'line-color': colors.tcp, 'target-arrow-color': colors.tcp,
      'label': 'data(label)', 'font-size': 9, 'text-rotation': 'autorotate', 'text-wrap': 'wrap',
      'text-background-color': '#fff', 'text-background-opacity': 0.9, 'text-background-padding': 2 } },
    { selector: 'edge.http', style: { 'line-color': colors.http, 'target-arrow-color': colors.http } },
    { selector: 'edge.grpc', style: { 'line-color': colors.grpc, 'target-arrow-color': colors.grpc } },
    { selector: 'edge.degraded', style: { 'line-color': colors.degraded, 'target-arrow-color': colors.degraded } },
    { selector: 'edge.failure', style: { 'line-color': colors.failure, 'target-arrow-color': colors.failure } },
    { selector: 'edge.route', style: {
      'line-style': 'dashed', 'line-color': colors.route, 'target-arrow-color': colors.route,
      'target-arrow-shape': 'vee', 'color': colors.route,
      // bowed, so that it does not hide the traffic beside it
      'curve-style': 'unbundled-bezier', 'control-point-distances': 60, 'control-point-weights': 0.5 } },
    { selector: 'edge.denied', style: {
      'line-style': 'dashed', 'line-color': colors.denied, 'target-arrow-color': colors.denied,
      'target-arrow-shape': 'tee', 'color': colors.denied } },
    { selector: ':selected', style: { 'overlay-color': '#0066cc', 'overlay-opacity': 0.15, 'overlay-padding': 6 } },
  ],
});
window.trellis = { cy, state }; // for the browser test and the curious

const pct = (x) => `${(100 * x).toFixed(x > 0 && x < 0.01 ? 2 : 0)}%`;
const num = (x) => (x >= 100 ? x.toFixed(0) : x >= 10 ? x.toFixed(1) : x.toFixed(2));
const ms = (x) => (x == null ? '–' : `${x >= 100 ? x.toFixed(0) : x.toFixed(1)}ms`);

function nodeLabel(n) {
  if (n.kind === 'unknown') return 'unknown\n(outside the mesh)';
  let l = n.name;
  if (n.kind === 'workload' && !n.sidecar) l += '\n(no sidecar)';
  return l;
}

// routeShares describes a route edge: each route's share of its rule's
// requests sent from the Service to the backend.
function routeShares(e) {
  return (e.routes || []).map((r) => `${pct(r.share)}${r.subset ? ` to subset ${r.subset}` : ''}${r.consumers ? ` for ${r.consumers}` : ''}${r.invalid ? ' (invalid: 500)' : ''}`);
}

function edgeLabel(e) {
  if (e.protocol === 'route') return `ROUTE ${routeShares(e).join(', ')}`;
  if (e.denied) return `DENIED ${Math.round(e.requests)}`;
  const head = [`${e.protocol.toUpperCase()} ${num(e.rps)}/s`];
  let latency = '';
  if (e.protocol !== 'tcp') {
    head.push(`${pct(e.errorRate)} err`);
    if (e.p50 != null) latency = `\np50 ${ms(e.p50)} p95 ${ms(e.p95)} p99 ${ms(e.p99)}`;
  } else if (e.bytesPerSec) {
    head.push(`${num(e.bytesPerSec / 1024)} KiB/s`);
  }
  head.push(`mTLS ${pct(e.mtls)}`);
  if (e.authzDenied) head.push(`${Math.round(e.authzDenied)} denied by policy`);
  return head.join(' · ') + latency;
}

function edgeHealth(e) {
  if (e.protocol === 'route') return '';
  if (e.denied) return 'denied';
  return e.errorRate >= 0.2 ? 'failure' : e.errorRate >= 0.001 ? 'degraded' : 'healthy';
}

// elements turns the API's graph into cytoscape elements, namespaces as
// compound parents.
function elements(g) {
  const shown = g.nodes.filter((n) => !state.hidden.has(n.namespace));
  const ids = new Set(shown.map((n) => n.id));
  const els = [];
  for (const ns of g.namespaces) {
    if (!state.hidden.has(ns)) els.push({ group: 'nodes', data: { id: `ns:${ns}`, label: ns }, classes: 'namespace' });
  }
  for (const n of shown) {
    const outside = n.kind === 'unknown' || (n.kind === 'workload' && !n.sidecar);
    els.push({
      group: 'nodes',
      data: { ...n, label: nodeLabel(n), parent: n.namespace ? `ns:${n.namespace}` : undefined },
      classes: [n.kind, n.health, outside ? 'outside' : ''].join(' '),
    });
  }
  for (const e of g.edges) {
    if (!ids.has(e.source) || !ids.has(e.target)) continue;
    els.push({ group: 'edges', data: { ...e, label: edgeLabel(e) }, classes: `${e.protocol} ${edgeHealth(e)}${e.denied ? ' denied' : ''}` });
  }
  return els;
}

function renderNamespaces(g) {
  const box = document.getElementById('namespaces');
  box.replaceChildren(...g.namespaces.map((ns) => {
    const label = document.createElement('label');
    const cb = document.createElement('input');
    cb.type = 'checkbox';
    cb.checked = !state.hidden.has(ns);
    cb.addEventListener('change', () => {
      if (cb.checked) state.hidden.delete(ns); else state.hidden.add(ns);
      draw(state.graph);
    });
    label.append(cb, ` ${ns}`);
    return label;
  }));
}

function draw(g) {
  const els = elements(g);
  const key = els.map((e) => e.data.id).sort().join('|');
  cy.batch(() => {
    const keep = new Set(els.map((e) => e.data.id));
    cy.elements().filter((el) => !keep.has(el.id())).remove();
    for (const el of els) {
      const have = cy.getElementById(el.data.id);
      if (have.nonempty()) {
        have.data(el.data);
        have.classes(el.classes);
      } else {
        cy.add(el);
      }
    }
  });
  if (key !== state.layoutKey) {
    state.layoutKey = key;
    layout();
  }
  if (state.selected) showPanel(state.selected, false);
}

// layout places callers left and callees right, in layers (as Kiali's
// default does): a breadth-first layering from the nodes nobody calls,
// turned on its side; namespaces wrap their members.
function layout() {
  const members = cy.nodes('[kind]');
  const roots = members.filter((n) => n.incomers('edge').empty());
  cy.layout({
    name: 'breadthfirst', directed: true, roots: roots.nonempty() ? roots : undefined, eles: members.union(cy.edges()),
    spacingFactor: 1.1, avoidOverlap: true, nodeDimensionsIncludeLabels: true, animate: false, padding: 40,
    transform: (_node, pos) => ({ x: pos.y * 1.6, y: pos.x * 0.7 }),
  }).run();
  cy.fit(undefined, 40);
}

async function getJSON(url) {
  const resp = await fetch(url);
  const body = await resp.json();
  if (!resp.ok) throw new Error(body.error || resp.statusText);
  return body;
}

async function refresh() {
  const status = document.getElementById('status');
  const ticket = ++state.graphFetch;
  try {
    const g = await getJSON(`api/graph?window=${encodeURIComponent(state.window)}`);
    if (ticket !== state.graphFetch) return;
    state.graph = g;
    renderNamespaces(g);
    draw(g);
    const edges = g.edges.length;
    status.textContent = `${g.nodes.length} nodes, ${edges} edges · last ${state.window} · updated ${new Date().toLocaleTimeString()}`;
    status.classList.remove('error');
    document.body.dataset.loaded = 'true';
  } catch (err) {
    if (ticket !== state.graphFetch) return;
    status.textContent = `cannot load the graph: ${err.message}`;
    status.classList.add('error');
  }
}

// The side panel: figures, charts and recent requests of one node or edge.
async function showPanel(id, fresh = true) {
  const el = cy.getElementById(id);
  if (el.empty()) return;
  state.selected = id;
  const ticket = ++state.panelFetch;
  const d = el.data();
  const panel = document.getElementById('panel');
  if (panel.hidden) {
    panel.hidden = false;
    document.querySelector('main').classList.add('with-panel');
    cy.resize();
    cy.fit(undefined, 40); // nothing hides behind the panel
  }
  const byId = (x) => cy.getElementById(x).data('label')?.replace('\n', ' ') || x;
  document.getElementById('panel-title').textContent = el.isEdge() ? `${byId(d.source)} → ${byId(d.target)}` : d.label.replace('\n', ' ');
  document.getElementById('panel-kind').textContent = el.isEdge()
    ? `${d.protocol.toUpperCase()} edge${d.denied ? ' — denied: ' + d.reason : ''}`
    : `${d.kind}${d.namespace ? ' in namespace ' + d.namespace : ''} · ${d.health}`;
  if (el.isEdge() && d.protocol === 'route') {
    document.getElementById('panel-kind').textContent = 'route split: configuration, not traffic (the requests are on the edges into the backend)';
    const stats = d.routes.map((r) => [`${r.route} rule ${r.rule}`, routeShares({ routes: [r] })[0]]);
    renderStats(stats);
    for (const c of ['rps', 'success', 'latency']) document.getElementById(`chart-${c}`).innerHTML = '<div class="empty">a route has no traffic of its own</div>';
    requests([]);
    return;
  }
  const stats = el.isEdge()
    ? [['rate', `${num(d.rps)}/s (${Math.round(d.requests)} in ${state.window})`], ['errors', pct(d.errorRate)],
       ['p50 / p95 / p99', `${ms(d.p50)} / ${ms(d.p95)} / ${ms(d.p99)}`], ['mTLS', pct(d.mtls)],
       ['denied by AuthorizationPolicy', `${Math.round(d.authzDenied || 0)} in ${state.window}`]]
    : [['rate', `${num(d.rps)}/s`], ['errors', pct(d.errorRate)], ['sidecar', d.kind === 'workload' ? (d.sidecar ? 'yes' : 'no') : '–'],
       ...(d.routes || []).map((r) => [`${r.route} rule ${r.rule}`, routeShares({ routes: [r] })[0]])];
  renderStats(stats);
  if (fresh) for (const c of ['rps', 'success', 'latency']) document.getElementById(`chart-${c}`).textContent = '…';
  try {
    const [series, reqs] = await Promise.all([
      getJSON(`api/series?id=${encodeURIComponent(id)}&window=${encodeURIComponent(state.window)}`),
      getJSON(`api/requests?id=${encodeURIComponent(id)}`),
    ]);
    if (ticket !== state.panelFetch) return;
    chart('chart-rps', series, [{ key: 'rps', color: colors.http }]);
    chart('chart-success', series.map((p) => ({ ...p, success: p.rps > 0 ? 100 * (1 - p.errorRate) : null })),
      [{ key: 'success', color: colors.healthy }], 100);
    chart('chart-latency', series, [{ key: 'p50', color: colors.grpc }, { key: 'p95', color: colors.degraded }, { key: 'p99', color: colors.failure }]);
    requests(reqs);
  } catch (err) {
    if (ticket !== state.panelFetch) return;
    document.getElementById('chart-rps').textContent = `cannot load: ${err.message}`;
  }
}

// renderStats fills the panel's figures with [name, value] pairs.
function renderStats(stats) {
  document.getElementById('panel-stats').replaceChildren(...stats.flatMap(([k, v]) => {
    const dt = document.createElement('dt'); dt.textContent = k;
    const dd = document.createElement('dd'); dd.textContent = v;
    return [dt, dd];
  }));
}

function chart(elId, points, lines, fixedMax) {
  const box = document.getElementById(elId);
  const vals = points.flatMap((p) => lines.map((l) => p[l.key])).filter((v) => v != null);
  if (vals.length === 0 || points.length < 2) {
    box.innerHTML = '<div class="empty">no data in this window</div>';
    return;
  }
  const W = 400, H = 90, pad = 14;
  const max = fixedMax || Math.max(...vals) * 1.1 || 1;
  const t0 = new Date(points[0].t).getTime(), t1 = new Date(points[points.length - 1].t).getTime();
  const x = (t) => pad + ((new Date(t).getTime() - t0) / Math.max(t1 - t0, 1)) * (W - 2 * pad);
  const y = (v) => H - pad - (v / max) * (H - 2 * pad);
  const paths = lines.map((l) => {
    const pts = points.filter((p) => p[l.key] != null).map((p) => `${x(p.t).toFixed(1)},${y(p[l.key]).toFixed(1)}`);
    return `<polyline fill="none" stroke="${l.color}" stroke-width="2" points="${pts.join(' ')}"><title>${l.key}</title></polyline>`;
  });
  box.innerHTML = `<svg viewBox="0 0 ${W} ${H}" preserveAspectRatio="none" role="img">
    <line x1="${pad}" y1="${H - pad}" x2="${W - pad}" y2="${H - pad}" stroke="#ccd"/>
    <text x="${pad}" y="10" font-size="9" fill="#6b7385">${num(max)}</text>
    <text x="${W - pad}" y="${H - 2}" font-size="9" fill="#6b7385" text-anchor="end">now</text>
    ${paths.join('')}</svg>`;
}

function requests(reqs) {
  const body = document.querySelector('#requests tbody');
  if (reqs.length === 0) {
    body.innerHTML = '<tr><td colspan="5" class="empty">none recorded</td></tr>';
    return;
  }
  body.replaceChildren(...reqs.map((r) => {
    const tr = document.createElement('tr');
    const bad = r.protocol === 'grpc' ? r.grpcStatus && r.grpcStatus !== '0' : r.code === 0 || r.code >= 500;
    const cells = [new Date(r.time).toLocaleTimeString([], { hour12: false }), `${r.method} ${r.path}`,
      r.protocol === 'grpc' ? `grpc ${r.grpcStatus}` : String(r.code), r.durationMs.toFixed(1)];
    for (const [i, c] of cells.entries()) {
      const td = document.createElement('td');
      td.textContent = c;
      if (i === 2 && bad) td.className = 'bad';
      tr.append(td);
    }
    const td = document.createElement('td');
    if (r.traceId) {
      const a = document.createElement('a');
      a.href = `trace.html?id=${encodeURIComponent(r.traceId)}`;
      a.textContent = r.traceId.slice(0, 8);
      a.target = '_blank';
      td.append(a);
    }
    tr.append(td);
    return tr;
  }));
}

cy.on('tap', 'node[kind], edge', (ev) => showPanel(ev.target.id()));
document.getElementById('close').addEventListener('click', () => {
  state.selected = null;
  state.panelFetch++; // an answer on its way is for a panel no longer shown
  document.getElementById('panel').hidden = true;
  document.querySelector('main').classList.remove('with-panel');
  cy.resize();
  cy.fit(undefined, 40);
});

async function init() {
  const select = document.getElementById('window');
  let windows = ['1m', '5m', '10m', '30m'];
  try { windows = await getJSON('api/windows'); } catch { /* the defaults */ }
  if (!windows.includes(state.window)) windows.unshift(state.window);
  select.replaceChildren(...windows.map((w) => new Option(`last ${w}`, w, false, w === state.window)));
  select.addEventListener('change', () => {
    state.window = select.value;
    refresh();
  });
  await refresh();
  setInterval(() => { if (document.getElementById('live').checked) refresh(); }, refreshMs);
}
init();
