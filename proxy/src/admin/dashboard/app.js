// Portico dashboard. Reads the admin API (GET only) and its anomaly event stream, and draws with inline SVG.
// Everything shown comes from the server as data and goes into the page as text (textContent, attributes),
// never as markup: a series or plugin name cannot inject anything.
'use strict';

(() => {
  const SVG_NS = 'http://www.w3.org/2000/svg';
  const WINDOW_MS = 5 * 60 * 1000; // charts show the last five minutes
  const MAX_POINTS = 600; // the server keeps ten minutes at one point a second
  const W = 300;
  const H = 90;

  const state = {
    stats: { timestamps: [], series: {} },
    alerts: new Map(),
    incidents: new Map(),
    scores: new Map(),
    anomaly: 'unknown',
    events: null,
    cards: new Map(),
  };

  // ---- small helpers -------------------------------------------------------------------------------------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null) continue;
      if (k === 'class') node.className = v;
      else node.setAttribute(k, String(v));
    }
    for (const child of children) {
      if (child === undefined || child === null) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function svgEl(tag, attrs) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    return node;
  }

  async function getJson(path) {
    const response = await fetch(path, { cache: 'no-store', headers: { accept: 'application/json' } });
    if (!response.ok) {
      const error = new Error(`${path}: ${response.status}`);
      error.status = response.status;
      throw error;
    }
    return response.json();
  }

  function every(ms, job) {
    const run = async () => {
      try {
        await job();
      } catch (e) {
        if (!e.status) setLive(false, String(e.message || e));
      } finally {
        setTimeout(run, ms);
      }
    };
    run();
  }

  function time(ms) {
    return ms ? new Date(ms).toLocaleTimeString() : '';
  }

  function fmt(v, digits = 1) {
    if (v === null || v === undefined || Number.isNaN(v)) return '–';
    if (Math.abs(v) >= 1000) return Math.round(v).toLocaleString();
    return Number(v).toFixed(digits);
  }

  function badge(text, kind) {
    return el('span', { class: `status status-${kind || text}` }, text);
  }

  function replaceRows(tbody, rows) {
    tbody.replaceChildren(...rows);
  }

  function setLive(on, why) {
    const live = document.getElementById('live');
    live.className = `badge ${on ? 'on' : 'off'}`;
    live.dataset.state = on ? 'live' : 'disconnected';
    live.textContent = on ? 'live' : 'disconnected';
    live.title = why || '';
  }

  /** The charts' time span: the last five minutes, or less while the history is shorter (at least one). */
  function windowMs() {
    const ts = state.stats.timestamps;
    const have = ts.length ? nowMs() - ts[0] : 0;
    return Math.min(WINDOW_MS, Math.max(60 * 1000, have));
  }

  function nowMs() {
    const ts = state.stats.timestamps;
    return ts.length ? Math.max(ts[ts.length - 1], Date.now() - 2000) : Date.now();
  }

  // ---- traffic history (GET /stats) ----------------------------------------------------------------------

  function mergeStats(chunk) {
    const s = state.stats;
    const before = s.timestamps.length;
    const added = chunk.timestamps.length;
    if (!added) return false;
    s.timestamps.push(...chunk.timestamps);
    for (const [name, column] of Object.entries(s.series)) {
      const fresh = chunk.series[name];
      for (let i = 0; i < added; i++) column.push(fresh ? fresh[i] : null);
    }
    for (const [name, fresh] of Object.entries(chunk.series)) {
      if (!(name in s.series)) s.series[name] = new Array(before).fill(null).concat(fresh);
    }
    const extra = s.timestamps.length - MAX_POINTS;
    if (extra > 0) {
      s.timestamps.splice(0, extra);
      for (const column of Object.values(s.series)) column.splice(0, extra);
    }
    return true;
  }

  async function refreshStats() {
    const ts = state.stats.timestamps;
    const since = ts.length ? ts[ts.length - 1] : 0;
    const chunk = await getJson(`/stats?since=${since}`);
    setLive(true);
    document.getElementById('updated').textContent = `updated ${new Date().toLocaleTimeString()}`;
    if (mergeStats(chunk)) renderTraffic();
  }

  /** Listener and upstream scopes present in the history, listeners first. */
  function scopes() {
    const found = new Map();
    for (const name of Object.keys(state.stats.series)) {
      const first = name.indexOf('.');
      const last = name.lastIndexOf('.');
      const kind = name.slice(0, first);
      if ((kind === 'listener' || kind === 'upstream') && last > first) {
        const scope = name.slice(first + 1, last);
        found.set(`${kind}.${scope}`, { kind, name: scope });
      }
    }
    return [...found.entries()].sort(([a], [b]) => (a.startsWith('l') === b.startsWith('l') ? a.localeCompare(b) : a.startsWith('l') ? -1 : 1));
  }

  /** Whether an alert's series belongs to this listener or upstream (an endpoint belongs to its upstream). */
  function concerns(series, kind, name) {
    if (series.startsWith(`${kind}.${name}.`)) return true;
    return kind === 'upstream' && series.startsWith(`endpoint.${name}.`);
  }

  function incidentConcerns(incident, kind, name) {
    const members = [incident.cause, ...(incident.symptoms || [])];
    return members.some((m) => m && m.alert && concerns(m.alert.series, kind, name));
  }

  const CHARTS = [
    { title: 'requests/s', metrics: ['qps'], digits: 1, scale: 1, floor: 1 },
    { title: 'latency ms (p50, p99)', metrics: ['latency_p50', 'latency_p99'], digits: 1, scale: 1, floor: 1 },
    { title: '5xx ratio %', metrics: ['error_ratio'], digits: 1, scale: 100, floor: 1 },
  ];

  function renderTraffic() {
    const box = document.getElementById('traffic');
    const list = scopes();
    if (!list.length) return;
    const empty = box.querySelector('.empty');
    if (empty) empty.remove();
    for (const [key, scope] of list) {
      let card = state.cards.get(key);
      if (!card) {
        card = buildCard(key, scope);
        state.cards.set(key, card);
        box.append(card.root);
      }
      for (const chart of card.charts) drawChart(chart, scope);
    }
  }

  function buildCard(key, scope) {
    const root = el('div', { class: 'card', 'data-scope': key, 'data-kind': scope.kind, 'data-name': scope.name },
      el('h4', {}, el('span', { class: 'kind' }, scope.kind), scope.name));
    const grid = el('div', { class: 'charts' });
    const charts = CHARTS.map((spec) => {
      const now = el('span', { class: 'now' });
      const title = el('div', { class: 'chart-title' }, el('span', {}, spec.title), now);
      const svg = svgEl('svg', { class: 'chart', viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: 'none' });
      const since = el('span', {}, '−5 min');
      const axis = el('div', { class: 'axis' }, since, el('span', {}, 'now'));
      grid.append(el('div', { class: 'chart-box' }, title, svg, axis));
      return { spec, svg, now, since };
    });
    root.append(grid);
    return { root, charts };
  }

  function drawChart(chart, scope) {
    const { spec, svg } = chart;
    const ts = state.stats.timestamps;
    const end = nowMs();
    const span = windowMs();
    const start = end - span;
    const x = (t) => ((t - start) / span) * W;
    chart.since.textContent = `−${Math.round(span / 60000)} min`;
    const names = spec.metrics.map((m) => `${scope.kind}.${scope.name}.${m}`);
    let max = spec.floor;
    for (const name of names) {
      const column = state.stats.series[name] || [];
      for (let i = 0; i < ts.length; i++) {
        if (ts[i] >= start && column[i] !== null && column[i] !== undefined) max = Math.max(max, column[i] * spec.scale);
      }
    }
    max *= 1.1;
    const y = (v) => H - 3 - (v / max) * (H - 8);
    const children = [svgEl('line', { class: 'grid', x1: 0, x2: W, y1: y(0), y2: y(0) })];
    // Incidents first (under the lines): a band from opened to resolved, and a line where it opened.
    for (const incident of state.incidents.values()) {
      if (!incidentConcerns(incident, scope.kind, scope.name)) continue;
      const from = incident.opened_at;
      const to = incident.resolved_at || end;
      if (to < start) continue;
      const x0 = Math.max(0, x(from));
      const band = svgEl('rect', { class: 'span-incident', x: x0, y: 0, width: Math.max(1, x(to) - x0), height: H });
      const line = svgEl('line', { class: 'marker-incident', x1: x(from), x2: x(from), y1: 0, y2: H, 'data-incident': incident.id });
      line.append(svgEl('title', {}));
      line.lastChild.textContent = `incident ${incident.id}: cause ${incident.cause.alert.series}`;
      children.push(band, line);
    }
    for (const alert of state.alerts.values()) {
      if (!concerns(alert.series, scope.kind, scope.name) || alert.started_at < start) continue;
      const line = svgEl('line', { class: 'marker-alert', x1: x(alert.started_at), x2: x(alert.started_at), y1: 0, y2: H, 'data-alert': alert.series });
      line.append(svgEl('title', {}));
      line.lastChild.textContent = `${alert.severity} alert on ${alert.series}`;
      children.push(line);
    }
    let total = 0;
    const latest = [];
    for (const [i, name] of names.entries()) {
      const column = state.stats.series[name] || [];
      const points = [];
      let last = null;
      for (let j = 0; j < ts.length; j++) {
        const v = column[j];
        if (ts[j] < start || v === null || v === undefined) continue;
        points.push(`${x(ts[j]).toFixed(1)},${y(v * spec.scale).toFixed(1)}`);
        last = v * spec.scale;
      }
      total += points.length;
      latest.push(fmt(last, spec.digits));
      children.push(svgEl('polyline', { class: `s-${spec.metrics[i]}`, points: points.join(' '), 'data-series': name, 'data-points': points.length }));
    }
    svg.replaceChildren(...children);
    svg.setAttribute('data-series', names.join(' '));
    svg.setAttribute('data-points', total);
    chart.now.textContent = latest.join(' / ');
    chart.now.title = `top of the chart: ${fmt(max, spec.digits)}`;
  }

  // ---- upstreams and endpoints ---------------------------------------------------------------------------

  function spark(values, cls) {
    const svg = svgEl('svg', { class: 'spark', viewBox: '0 0 160 22', preserveAspectRatio: 'none' });
    const shown = values.filter((v) => v !== null && v !== undefined);
    const max = Math.max(1e-9, ...shown);
    const step = values.length > 1 ? 160 / (values.length - 1) : 0;
    const points = [];
    values.forEach((v, i) => {
      if (v !== null && v !== undefined) points.push(`${(i * step).toFixed(1)},${(21 - (v / max) * 19).toFixed(1)}`);
    });
    svg.append(svgEl('polyline', { class: cls, points: points.join(' '), 'data-points': points.length }));
    return svg;
  }

  function recent(name, count) {
    const column = state.stats.series[name] || [];
    return column.slice(-count);
  }

  function yesNo(flag, bad) {
    return el('span', { class: flag === bad ? 'flag-yes' : 'flag-no' }, flag ? 'yes' : 'no');
  }

  async function refreshUpstreams() {
    const groups = await getJson('/upstreams');
    const blocks = groups.map((group) => {
      const rows = group.endpoints.map((e) => {
        const prefix = `endpoint.${group.name}.${e.address}`;
        return el('tr', { 'data-endpoint': e.address, 'data-status': e.status },
          el('td', {}, el('code', {}, e.address)),
          el('td', {}, badge(e.status)),
          el('td', {}, yesNo(e.healthy !== false, false)),
          el('td', {}, yesNo(!!e.ejected, true)),
          el('td', {}, yesNo(!!e.drained, true)),
          el('td', { class: 'num' }, e.weight),
          el('td', { class: 'num' }, e.active_requests),
          el('td', { class: 'num' }, fmt(e.latency_ewma_ms, 2)),
          el('td', {}, spark(recent(`${prefix}.qps`, 120), 's-qps')),
          el('td', {}, spark(recent(`${prefix}.latency`, 120), 's-latency')));
      });
      const table = el('table', {},
        el('thead', {}, el('tr', {}, ...['endpoint', 'status', 'healthy', 'ejected', 'drained', 'weight', 'in flight', 'latency ms (EWMA)', 'requests/s (2 min)', 'latency (2 min)'].map((h) => el('th', {}, h)))),
        el('tbody', {}, ...rows));
      return el('div', { class: 'upstream-block', 'data-upstream': group.name },
        el('h4', {}, group.name, ' ', el('span', { class: 'muted' }, group.protocol || '')), table);
    });
    document.getElementById('upstreams').replaceChildren(...blocks);
  }

  // ---- anomaly: incidents, alerts, scores, actions ---------------------------------------------------------

  function anomalyOff(off) {
    state.anomaly = off ? 'off' : 'on';
    document.getElementById('anomaly-off').classList.toggle('hidden', !off);
  }

  async function refreshAnomaly() {
    try {
      const [incidents, alerts, actions] = await Promise.all([
        getJson('/anomaly/incidents'),
        getJson('/anomaly/alerts'),
        getJson('/anomaly/actions'),
      ]);
      anomalyOff(false);
      for (const incident of incidents) state.incidents.set(incident.id, incident);
      for (const alert of [...(alerts.history || []), ...(alerts.active || [])]) state.alerts.set(alert.id, alert);
      renderIncidents();
      renderAlerts();
      renderActions(actions);
      renderTraffic(); // marks on the charts
      if (!state.events) connectEvents();
    } catch (e) {
      if (e.status === 404 || e.status === 503) anomalyOff(true);
      else throw e;
    }
  }

  function connectEvents() {
    const events = new EventSource('/anomaly/events');
    state.events = events;
    events.onopen = () => setLive(true);
    events.onerror = () => {
      if (events.readyState === EventSource.CLOSED) {
        state.events = null; // refreshAnomaly connects again when the stream is back
        setLive(false, 'event stream closed');
      }
    };
    events.addEventListener('scores', (m) => onScores(JSON.parse(m.data)));
    events.addEventListener('alert', (m) => {
      const change = JSON.parse(m.data);
      state.alerts.set(change.alert.id, change.alert);
      renderAlerts();
      renderTraffic();
    });
    events.addEventListener('incident', (m) => {
      const change = JSON.parse(m.data);
      state.incidents.set(change.incident.id, change.incident);
      renderIncidents();
      renderTraffic();
    });
  }

  function onScores(tick) {
    const start = tick.timestamp_ms - WINDOW_MS;
    for (const s of tick.scores) {
      let entry = state.scores.get(s.series);
      if (!entry) {
        entry = { points: [], last: s };
        state.scores.set(s.series, entry);
      }
      entry.last = s;
      entry.points.push([tick.timestamp_ms, s.score]);
      while (entry.points.length && entry.points[0][0] < start) entry.points.shift();
    }
    if (!state.scoresQueued) {
      state.scoresQueued = true;
      setTimeout(() => {
        state.scoresQueued = false;
        renderScores();
      }, 1000);
    }
  }

  function renderScores() {
    const firing = new Set([...state.alerts.values()].filter((a) => a.state === 'firing').map((a) => a.series));
    const entries = [...state.scores.entries()].sort(([a, x], [b, y]) => (y.last.score - x.last.score) || a.localeCompare(b));
    const rows = entries.map(([series, entry]) => {
      const s = entry.last;
      return el('tr', { 'data-series': series, class: firing.has(series) || s.in_event ? 'hot' : '' },
        el('td', {}, el('code', {}, series)),
        el('td', { class: 'num' }, fmt(s.score, 2), ' ', el('span', { class: 'score-bar', 'data-score': s.score }, '')),
        el('td', {}, spark(entry.points.map((p) => p[1]), 's-score')),
        el('td', { class: 'num' }, fmt(s.value, 2)),
        el('td', { class: 'num' }, fmt(s.predicted, 2)));
    });
    replaceRows(document.querySelector('#scores tbody'), rows);
    // The bar's width is set through the CSSOM, which the page's Content-Security-Policy allows.
    for (const bar of document.querySelectorAll('#scores .score-bar')) bar.style.width = `${Math.round(Number(bar.dataset.score) * 60)}px`;
  }

  function renderIncidents() {
    const list = [...state.incidents.values()].sort((a, b) => b.opened_at - a.opened_at);
    const rows = list.map((incident) => {
      const symptoms = (incident.symptoms || []).map((m) => m.alert.series);
      return el('tr', { 'data-incident': incident.id, 'data-state': incident.state, 'data-cause': incident.cause.alert.series },
        el('td', {}, el('code', {}, incident.id)),
        el('td', {}, badge(incident.state)),
        el('td', {}, badge(incident.severity)),
        el('td', { class: 'cause' }, el('code', {}, incident.cause.alert.series), incident.settled_at ? '' : ' (settling)'),
        el('td', { class: 'symptoms' }, symptoms.length ? symptoms.join(', ') : '–'),
        el('td', {}, time(incident.opened_at)),
        el('td', {}, time(incident.resolved_at)));
    });
    replaceRows(document.querySelector('#incidents tbody'), rows);
  }

  function renderAlerts() {
    const list = [...state.alerts.values()].sort((a, b) => b.started_at - a.started_at).slice(0, 50);
    const rows = list.map((a) => el('tr', { 'data-alert': a.id, 'data-series': a.series, 'data-state': a.state },
      el('td', {}, el('code', {}, a.series)),
      el('td', {}, badge(a.state)),
      el('td', {}, badge(a.severity)),
      el('td', { class: 'num' }, fmt(a.peak_score, 2)),
      el('td', { class: 'num' }, fmt(a.value, 2)),
      el('td', { class: 'num' }, fmt(a.predicted, 2)),
      el('td', {}, time(a.started_at)),
      el('td', {}, time(a.resolved_at))));
    replaceRows(document.querySelector('#alerts tbody'), rows);
  }

  function outcome(o) {
    if (typeof o === 'string') return o;
    const [kind, detail] = Object.entries(o || {})[0] || ['unknown', ''];
    return `${kind} ${detail}`;
  }

  function renderActions(actions) {
    const rows = [...actions].reverse().slice(0, 50).map((a) => el('tr', { 'data-hook': a.hook },
      el('td', {}, a.hook),
      el('td', {}, el('code', {}, a.incident_id || '')),
      el('td', {}, el('code', {}, a.series)),
      el('td', {}, badge(outcome(a.outcome), a.outcome === 'ok' ? 'ok' : 'warning')),
      el('td', {}, time(a.started_at)),
      el('td', { class: 'num' }, `${a.duration_ms} ms`)));
    replaceRows(document.querySelector('#actions tbody'), rows);
  }

  // ---- plugins and the cluster -----------------------------------------------------------------------------

  /** A rollout in progress, if this Portico has a rollout API; null otherwise (nothing is shown). */
  async function rollout(name) {
    try {
      const r = await getJson(`/plugins/${encodeURIComponent(name)}/rollout`);
      return r && r.state ? r : null;
    } catch (e) {
      return null;
    }
  }

  async function refreshPlugins() {
    const plugins = await getJson('/plugins');
    const rollouts = await Promise.all(plugins.map((p) => rollout(p.name)));
    const rows = plugins.map((p, i) => {
      const failures = p.failures || {};
      const other = Object.entries(failures).filter(([k]) => k !== 'trap' && k !== 'timeout').reduce((n, [, v]) => n + v, 0);
      const r = rollouts[i];
      const rolloutText = r ? `${r.state} ${r.percent ?? ''}%${r.step !== undefined ? ` (step ${r.step})` : ''}` : '–';
      return el('tr', { 'data-plugin': p.name },
        el('td', {}, p.name),
        el('td', {}, p.origin),
        el('td', { title: p.sha256 }, el('code', {}, (p.sha256 || '').slice(0, 16))),
        el('td', {}, p.abi),
        el('td', {}, time((p.since || 0) * 1000)),
        el('td', { class: 'num' }, p.instances),
        el('td', {}, badge(p.broken ? 'broken' : 'ok')),
        el('td', { class: 'num' }, failures.trap || 0),
        el('td', { class: 'num' }, failures.timeout || 0),
        el('td', { class: 'num' }, other),
        el('td', { 'data-rollout': r ? r.state : '' }, rolloutText));
    });
    replaceRows(document.querySelector('#plugins tbody'), rows);
    document.getElementById('plugins-section').classList.toggle('hidden', plugins.length === 0);
  }

  async function refreshCluster() {
    let status;
    try {
      status = await getJson('/cluster');
    } catch (e) {
      if (e.status === 404) {
        document.getElementById('cluster-summary').textContent = 'not clustered (no [cluster] table)';
        document.getElementById('cluster').classList.add('hidden');
        return;
      }
      throw e;
    }
    const refused = status.config_refused ? ' · this node refused the cluster\'s configuration' : '';
    document.getElementById('cluster-summary').textContent =
      `node ${status.node_id} is ${status.state} · leader ${status.leader ?? 'unknown'}${status.leader_confirmed ? ' (confirmed)' : ''} · term ${status.term} · applied ${status.applied_index ?? '–'} · commit ${status.commit_index ?? '–'}${status.isolated ? ' · isolated' : ''}${refused}`;
    const rows = (status.members || []).map((m) => el('tr', { 'data-node': m.node_id },
      el('td', {}, m.node_id, m.node_id === status.node_id ? ' (this node)' : ''),
      el('td', {}, el('code', {}, m.address)),
      el('td', {}, m.node_id === status.leader ? badge('leader', 'ok') : 'follower'),
      el('td', {}, m.voter ? 'yes' : 'learner'),
      el('td', { class: 'num' }, m.lag ?? '–')));
    replaceRows(document.querySelector('#cluster tbody'), rows);
    document.getElementById('cluster').classList.remove('hidden');
  }

  async function start() {
    // The history first: the tables' sparklines and the charts' marks are drawn over it.
    try {
      await refreshStats();
    } catch (e) {
      setLive(false, String(e.message || e));
    }
    setTimeout(() => every(1000, refreshStats), 1000);
    every(2000, refreshUpstreams);
    every(5000, refreshAnomaly);
    every(5000, refreshPlugins);
    every(5000, refreshCluster);
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
  else start();
})();
