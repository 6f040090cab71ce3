// tsad dashboard: plain JavaScript, no build step. Talks only to this server's API
// (DESIGN.md §5) and sends the API key typed into the top bar as `Authorization: Bearer`.
'use strict';

(() => {
  const POLL_MS = 3000;           // streams, the selected stream and its anomalies
  const ADMIN_EVERY = 4;          // models and jobs: every 4th poll
  const PAGE_MAX = 10000;         // the API's largest page of readings
  const KEY_STORAGE = 'tsad.apiKey';
  const COLORS = {
    value: '#1d4ed8',
    expected: '#64748b',
    bandLine: 'rgba(37, 99, 235, 0.28)',
    band: 'rgba(37, 99, 235, 0.13)',
    flag: '#d92d20',
    event: 'rgba(217, 45, 32, 0.10)',
    eventEdge: 'rgba(217, 45, 32, 0.55)',
    score: '#7c3aed',
    scoreFill: 'rgba(124, 58, 237, 0.10)',
    axis: '#6b7486',
    grid: '#edf0f4',
  };

  const $ = (id) => document.getElementById(id);

  // ---- state ------------------------------------------------------------------------

  const state = {
    key: localStorage.getItem(KEY_STORAGE) || '',
    streams: [],
    moreStreams: false,
    latest: new Map(),      // stream name -> {lastTs, score, anomaly}
    selected: null,         // stream name
    detail: null,           // GET /v1/streams/{stream}
    rows: [],               // readings of the chart window, oldest first
    lastMs: null,           // timestamp of the newest loaded reading
    events: [],             // anomaly events of the selected stream, newest first
    channel: 0,
    windowSize: 2000,
    live: true,
    zoomed: false,
    focusedEvent: null,
    ticks: 0,
    busy: false,
    loadSeq: 0,             // discards answers for a stream that is no longer selected
    inflight: null,         // loadSeq of the refresh of the selected stream in progress
  };

  // ---- API --------------------------------------------------------------------------

  class ApiFailure extends Error {
    constructor(status, detail) {
      super(detail || `HTTP ${status}`);
      this.status = status;
    }
  }

  async function api(path, options = {}) {
    const headers = { Accept: 'application/json', ...(options.headers || {}) };
    if (state.key) headers.Authorization = `Bearer ${state.key}`;
    if (options.body !== undefined) headers['Content-Type'] = 'application/json';
    let response;
    try {
      response = await fetch(path, {
        method: options.method || 'GET',
        headers,
        body: options.body === undefined ? undefined : JSON.stringify(options.body),
        cache: 'no-store',
      });
    } catch (e) {
      throw new ApiFailure(0, 'cannot reach the server');
    }
    const text = await response.text();
    let body = null;
    try { body = text ? JSON.parse(text) : null; } catch { /* not JSON */ }
    if (!response.ok) throw new ApiFailure(response.status, (body && body.detail) || response.statusText);
    return body;
  }

  const enc = encodeURIComponent;
  const isAuthError = (e) => e instanceof ApiFailure && (e.status === 401 || e.status === 403);

  // ---- formatting -------------------------------------------------------------------

  const tsMs = (text) => Date.parse(text);

  function fmtTime(ms, withMs = true) {
    if (ms == null || !Number.isFinite(ms)) return '—';
    const iso = new Date(ms).toISOString();           // 2026-01-01T10:00:00.000Z
    const base = `${iso.slice(0, 10)} ${iso.slice(11, 19)}`;
    return withMs && ms % 1000 !== 0 ? `${base}.${iso.slice(20, 23)}` : base;
  }

  function fmtNum(v) {
    if (v == null || !Number.isFinite(v)) return '—';
    const a = Math.abs(v);
    if (a !== 0 && (a >= 1e7 || a < 1e-3)) return v.toExponential(3);
    return v.toLocaleString('en-US', { maximumSignificantDigits: 5 });
  }

  const fmtCount = (n) => (n == null ? '—' : Number(n).toLocaleString('en-US'));
  const fmtScore = (s) => (s == null || !Number.isFinite(s) ? '—' : s.toFixed(3));

  function fmtDuration(ms) {
    if (!Number.isFinite(ms)) return '—';
    if (ms <= 0) return 'single reading';
    const s = ms / 1000;
    if (s < 1) return `${Math.round(ms)} ms`;
    if (s < 90) return `${fmtNum(s)} s`;
    if (s < 5400) return `${fmtNum(s / 60)} min`;
    if (s < 172800) return `${fmtNum(s / 3600)} h`;
    return `${fmtNum(s / 86400)} d`;
  }

  function fmtSeconds(s) {
    if (!Number.isFinite(s)) return '—';
    if (s < 60) return `${Math.round(s)} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
    return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
  }

  /** One channel of a value that is a number or, for multichannel streams, an array. */
  const pick = (v, c) => (Array.isArray(v) ? v[c] : v);

  // ---- DOM helpers ------------------------------------------------------------------

  /** Creates an element; text children are text nodes, so nothing is parsed as HTML. */
  function h(tag, attrs = {}, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (v == null || v === false) continue;
      if (k === 'class') el.className = v;
      else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v === true ? '' : v);
    }
    for (const child of children.flat()) {
      if (child == null || child === false) continue;
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return el;
  }

  const badge = (text, kind) => h('span', { class: `badge badge-${kind}` }, text);

  function scoreBar(score) {
    const s = Number.isFinite(score) ? Math.max(0, Math.min(1, score)) : 0;
    const level = s >= 0.9 ? 'high' : s >= 0.5 ? 'mid' : '';
    const fill = h('span', { class: 'fill' });
    fill.style.width = `${(s * 100).toFixed(1)}%`;
    return h('span', { class: `scorebar ${level}`, title: 'latest anomaly score' },
      h('span', { class: 'track' }, fill), fmtScore(score));
  }

  let toastTimer = null;
  function toast(message, isError = false) {
    const el = $('toast');
    el.textContent = message;
    el.classList.toggle('err', isError);
    el.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { el.hidden = true; }, 4000);
  }

  function setConnection(ok, text) {
    $('conn').className = `conn ${ok ? 'ok' : 'err'}`;
    $('conn-text').textContent = text;
  }

  function setBanner(text) {
    $('banner').textContent = text || '';
    $('banner').hidden = !text;
  }

  // ---- stream list ------------------------------------------------------------------

  /** Most streams the list loads: the API pages them by name, 1,000 a page. */
  const MAX_LISTED = 10000;

  async function refreshStreams() {
    const streams = [];
    let cursor = null;
    do {
      const body = await api(`/v1/streams?limit=1000${cursor ? `&cursor=${enc(cursor)}` : ''}`);
      streams.push(...(body.streams || []));
      cursor = body.next_cursor;
    } while (cursor && streams.length < MAX_LISTED);
    state.moreStreams = Boolean(cursor);
    state.streams = streams.sort((a, b) => a.name.localeCompare(b.name));
    await refreshLatestScores();
    renderStreamList();
  }

  /** The latest score of each stream whose newest reading changed, a few requests at a time. */
  async function refreshLatestScores() {
    const stale = state.streams.filter((s) => s.last_ts && state.latest.get(s.name)?.lastTs !== s.last_ts)
      .slice(0, 200);
    const worker = async () => {
      for (let s = stale.shift(); s; s = stale.shift()) {
        try {
          const page = await api(`/v1/streams/${enc(s.name)}/readings?from=${tsMs(s.last_ts)}&limit=1`);
          const r = page.readings[0];
          if (r) state.latest.set(s.name, { lastTs: s.last_ts, score: r.score, anomaly: r.anomaly });
        } catch (e) {
          if (isAuthError(e)) throw e;
        }
      }
    };
    await Promise.all([worker(), worker(), worker(), worker()]);
  }

  function renderStreamList() {
    const filter = $('stream-filter').value.trim().toLowerCase();
    const shown = state.streams.filter((s) => !filter || s.name.toLowerCase().includes(filter));
    $('stream-count').textContent = state.streams.length
      ? `(${state.moreStreams ? 'first ' : ''}${fmtCount(state.streams.length)})` : '';
    $('stream-empty').hidden = state.streams.length > 0;
    const list = $('stream-list');
    list.replaceChildren(...shown.map((s) => {
      const latest = state.latest.get(s.name);
      const select = () => selectStream(s.name);
      return h('li', {
        class: `stream-item${s.name === state.selected ? ' selected' : ''}`,
        tabindex: 0, role: 'button', 'data-stream': s.name,
        'aria-current': s.name === state.selected ? 'true' : null,
        onclick: select,
        onkeydown: (ev) => { if (ev.key === 'Enter' || ev.key === ' ') { ev.preventDefault(); select(); } },
      },
      h('span', { class: 'stream-name', title: s.name }, s.name),
      latest ? scoreBar(latest.score) : h('span', { class: 'muted hint' }, '—'),
      h('span', { class: 'stream-meta' },
        badge(s.state, s.state),
        h('span', {}, `${fmtCount(s.readings)} readings`),
        h('span', { class: s.anomalies > 0 ? 'alerts' : '' },
          `${fmtCount(s.anomalies)} ${s.anomalies === 1 ? 'anomaly' : 'anomalies'}`)));
    }));
  }

  // ---- selected stream --------------------------------------------------------------

  function selectStream(name) {
    if (state.selected === name) return;
    state.selected = name;
    state.detail = null;
    state.rows = [];
    state.lastMs = null;
    state.events = [];
    state.channel = 0;
    state.zoomed = false;
    state.focusedEvent = null;
    state.loadSeq += 1;
    if (decodeURIComponent(location.hash) !== `#/streams/${name}`) history.replaceState(null, '', `#/streams/${name}`);
    renderStreamList();
    $('detail-placeholder').hidden = true;
    $('detail-body').hidden = false;
    $('anomalies').hidden = false;
    $('detail-name').textContent = name;
    $('detail-facts').replaceChildren();
    $('anomaly-rows').replaceChildren();
    charts.clear();
    refreshSelected(true).catch(reportError);
  }

  function clearSelection() {
    state.selected = null;
    state.loadSeq += 1;
    history.replaceState(null, '', location.pathname);
    $('detail-placeholder').hidden = false;
    $('detail-body').hidden = true;
    $('anomalies').hidden = true;
    charts.clear();
    renderStreamList();
  }

  async function refreshSelected(initial = false) {
    const name = state.selected;
    if (!name) return;
    const seq = state.loadSeq;
    if (state.inflight === seq) return;   // the previous refresh of this view is still running
    state.inflight = seq;
    try {
      await refreshSelectedNow(name, seq, initial);
    } finally {
      if (state.inflight === seq) state.inflight = null;
    }
  }

  async function refreshSelectedNow(name, seq, initial) {
    let detail;
    try {
      detail = await api(`/v1/streams/${enc(name)}`);
    } catch (e) {
      if (e instanceof ApiFailure && e.status === 404 && seq === state.loadSeq) {
        toast(`Stream ${name} no longer exists`);
        clearSelection();
        return;
      }
      throw e;
    }
    if (seq !== state.loadSeq) return;
    state.detail = detail;
    renderDetail();
    const [events] = await Promise.all([
      api(`/v1/streams/${enc(name)}/anomalies?limit=200`),
      initial || state.live ? refreshReadings(name, seq, initial) : null,
    ]);
    if (seq !== state.loadSeq) return;
    state.events = events.anomalies || [];
    renderAnomalies();
    charts.render();
  }

  function renderDetail() {
    const d = state.detail;
    const fact = (label, ...value) => h('div', {}, h('dt', {}, label), h('dd', {}, ...value));
    $('detail-facts').replaceChildren(
      fact('State', badge(d.state, d.state), d.fit_pending ? badge('fitting own model', 'running') : null),
      fact('Model', h('code', {}, d.model), d.model_version ? ` v${d.model_version}` : ''),
      fact('Sensitivity', fmtNum(d.sensitivity)),
      fact('Warm-up', `${fmtCount(d.warmup)} readings`),
      fact('Readings', fmtCount(d.readings)),
      fact('Anomalies', fmtCount(d.anomalies)),
      fact('Last reading', d.last_ts ? `${fmtTime(tsMs(d.last_ts))} UTC` : '—'),
    );
    const channels = d.channels || 1;
    $('channel-wrap').hidden = channels < 2;
    const select = $('channel');
    if (select.options.length !== channels) {
      select.replaceChildren(...Array.from({ length: channels }, (_, i) => h('option', { value: i }, `#${i}`)));
      select.value = String(state.channel);
    }
  }

  /** Reads one page of a stream's stored readings (oldest first). */
  function readingsPage(name, params) {
    const q = new URLSearchParams(Object.entries(params).map(([k, v]) => [k, String(v)]));
    return api(`/v1/streams/${enc(name)}/readings?${q}`);
  }

  const cadenceOf = (rows) =>
    rows.length > 1 ? (tsMs(rows[rows.length - 1].ts) - tsMs(rows[0].ts)) / (rows.length - 1) : 0;

  /**
   * The newest `target` readings. The API pages forward in time from `from`, so this
   * guesses a time span that holds about `target` readings from the stream's cadence,
   * widening or narrowing it until it does.
   */
  async function loadLatest(name, lastMs, total, target) {
    const limit = Math.min(PAGE_MAX, target * 2);
    let span = 3600e3;
    let rows = [];
    for (let attempt = 0; attempt < 10; attempt++) {
      const from = Math.max(0, Math.floor(lastMs - span));
      let page = await readingsPage(name, { from, limit });
      rows = page.readings;
      if (page.next_cursor) {
        const cadence = cadenceOf(rows);
        const wanted = cadence > 0 ? cadence * target * 1.1 : span / 4;
        if (wanted < span * 0.8 && attempt < 9) { span = wanted; continue; }
        // About right: read on to the newest reading, keeping the last `target`.
        for (let p = 0; page.next_cursor && p < 6; p++) {
          page = await readingsPage(name, { cursor: page.next_cursor, limit });
          rows = rows.concat(page.readings).slice(-target);
        }
        return rows.slice(-target);
      }
      if (rows.length >= target || rows.length >= total || from === 0) return rows.slice(-target);
      const cadence = cadenceOf(rows);
      span = Math.max(span * 2, cadence > 0 ? cadence * target * 1.2 : span * 16);
    }
    return rows.slice(-target);
  }

  async function refreshReadings(name, seq, initial) {
    const d = state.detail;
    if (!d.last_ts) { state.rows = []; return; }
    const last = tsMs(d.last_ts);
    if (!initial && state.lastMs != null && last <= state.lastMs) return;
    let rows;
    if (initial || state.lastMs == null) {
      rows = await loadLatest(name, last, d.readings, state.windowSize);
    } else {
      // Live: everything after the newest reading we hold.
      rows = state.rows;
      let cursor = state.lastMs;
      for (let p = 0; p < 5; p++) {
        const page = await readingsPage(name, { cursor, limit: PAGE_MAX });
        rows = rows.concat(page.readings).slice(-state.windowSize);
        if (!page.next_cursor) { cursor = null; break; }
        cursor = page.next_cursor;
      }
      if (cursor != null) rows = await loadLatest(name, last, d.readings, state.windowSize); // fell far behind
    }
    if (seq !== state.loadSeq) return;
    state.rows = rows;
    state.lastMs = rows.length ? tsMs(rows[rows.length - 1].ts) : null;
  }

  // ---- anomalies --------------------------------------------------------------------

  function renderAnomalies() {
    const events = state.events;
    $('anomaly-count').textContent = events.length ? `(${fmtCount(events.length)}${events.length >= 200 ? '+' : ''})` : '';
    $('anomaly-empty').hidden = events.length > 0;
    const c = state.channel;
    $('anomaly-rows').replaceChildren(...events.map((ev) => {
      const start = tsMs(ev.start);
      const stored = ev.feedback;
      const feedbackButton = (label, text, cls) => h('button', {
        type: 'button', class: `btn btn-small ${cls}`, 'data-label': label,
        'aria-pressed': stored === label ? 'true' : 'false',
        title: stored === label ? 'stored feedback' : `mark as ${text.toLowerCase()}`,
        onclick: (e) => { e.stopPropagation(); sendFeedback(ev.id, label); },
      }, text);
      return h('tr', {
        class: `anomaly-row${state.focusedEvent === ev.id ? ' focused' : ''}`,
        'data-anomaly-id': ev.id,
        onclick: () => focusEvent(ev),
      },
      h('td', { class: 'mono' }, ev.id),
      h('td', {}, fmtTime(start)),
      h('td', {}, fmtDuration(tsMs(ev.end) - start)),
      h('td', { class: `num${ev.peak_score >= 0.9 ? ' score-hi' : ''}` }, fmtScore(ev.peak_score)),
      h('td', { class: 'num' }, fmtNum(pick(ev.actual, c))),
      h('td', { class: 'num' }, fmtNum(pick(ev.expected, c))),
      h('td', {}, h('code', {}, ev.model), ev.model_version ? ` v${ev.model_version}` : ''),
      h('td', {}, badge(ev.status, ev.status)),
      h('td', {}, h('div', { class: 'feedback' },
        feedbackButton('true_positive', 'True positive', 'btn-tp'),
        feedbackButton('false_positive', 'False positive', 'btn-fp'),
        stored ? h('span', { class: 'feedback-stored', 'data-feedback': stored },
          badge(stored === 'true_positive' ? 'confirmed' : 'false alarm', stored === 'true_positive' ? 'tp' : 'fp'))
          : null)));
    }));
  }

  async function sendFeedback(id, label) {
    try {
      const updated = await api(`/v1/anomalies/${id}/feedback`, { method: 'POST', body: { label } });
      state.events = state.events.map((ev) => (ev.id === updated.id ? updated : ev));
      renderAnomalies();
      toast(`Anomaly #${id} marked as ${label === 'true_positive' ? 'a true positive' : 'a false positive'}`);
    } catch (e) {
      if (isAuthError(e)) toast('Feedback needs a key with the write scope.', true);
      else toast(`Feedback was not stored: ${e.message}`, true);
    }
  }

  function focusEvent(ev) {
    const start = tsMs(ev.start);
    const end = tsMs(ev.end);
    const rows = state.rows;
    if (!rows.length || end < tsMs(rows[0].ts)) {
      toast(`Anomaly #${ev.id} is older than the readings in the chart window; widen the window.`);
      return;
    }
    state.focusedEvent = ev.id;
    const cadence = cadenceOf(rows) || 1000;
    const pad = Math.max((end - start) * 1.5, cadence * 40);
    charts.zoomTo((start - pad) / 1000, (end + pad) / 1000);
    renderAnomalies();
  }

  // ---- charts -----------------------------------------------------------------------

  const charts = (() => {
    let main = null;
    let score = null;
    let data = null;       // [x, upper, lower, expected, value, flagged]
    let scoreData = null;  // [x, score, flagged score]
    let syncing = false;

    const tzDate = (ts) => uPlot.tzDate(new Date(ts * 1e3), 'Etc/UTC');
    const legendValue = (u, v) => fmtNum(v);
    const axis = (extra = {}) => ({
      stroke: COLORS.axis,
      font: '11px system-ui, sans-serif',
      grid: { stroke: COLORS.grid, width: 1 },
      ticks: { stroke: COLORS.grid, width: 1, size: 4 },
      ...extra,
    });

    /** Time ticks in UTC, 24-hour; the date is shown on the first tick and where it changes. */
    function timeTicks(u, splits, axisIdx, space, incr) {
      let prevDay = null;
      return splits.map((v) => {
        if (v == null) return '';
        const iso = new Date(Math.round(v * 1000)).toISOString();
        const day = iso.slice(5, 10);
        const time = incr >= 86400 ? '' : incr >= 60 ? iso.slice(11, 16) : incr >= 1 ? iso.slice(11, 19) : iso.slice(14, 23);
        const label = !time ? iso.slice(0, 10) : day !== prevDay ? `${day} ${time}` : time;
        prevDay = day;
        return label;
      });
    }

    function build() {
      const width = Math.max(300, $('chart').clientWidth);
      const common = {
        width,
        tzDate,
        cursor: { sync: { key: 'tsad' }, drag: { x: true, y: false, setScale: true }, y: false, points: { size: 7 } },
        hooks: { drawClear: [drawEventBands], draw: [drawEventMarks], setScale: [onScale] },
      };
      main = new uPlot({
        ...common,
        height: 300,
        scales: { x: { time: true }, y: { range: valueRange } },
        series: [
          { label: 'Time (UTC)', value: (u, v) => (v == null ? '—' : fmtTime(Math.round(v * 1000))) },
          { label: 'band upper', stroke: COLORS.bandLine, width: 1, value: legendValue, points: { show: false } },
          { label: 'band lower', stroke: COLORS.bandLine, width: 1, value: legendValue, points: { show: false } },
          { label: 'expected', stroke: COLORS.expected, width: 1.25, dash: [5, 4], value: legendValue, points: { show: false } },
          { label: 'reading', stroke: COLORS.value, width: 1.5, value: legendValue, points: { show: false } },
          {
            label: 'flagged', stroke: COLORS.flag, width: 0, value: legendValue, paths: () => null,
            points: { show: true, size: 8, stroke: COLORS.flag, fill: COLORS.flag, width: 1 },
          },
        ],
        bands: [{ series: [1, 2], fill: COLORS.band }],
        axes: [axis({ size: 30, space: 90, values: timeTicks }), axis({ size: 64 })],
      }, data, $('chart'));
      score = new uPlot({
        ...common,
        height: 120,
        scales: { x: { time: true }, y: { range: [0, 1.05] } },
        series: [
          { label: 'Time (UTC)', value: (u, v) => (v == null ? '—' : fmtTime(Math.round(v * 1000))) },
          { label: 'anomaly score', stroke: COLORS.score, fill: COLORS.scoreFill, width: 1.25, value: (u, v) => fmtScore(v), points: { show: false } },
          {
            label: 'flagged', stroke: COLORS.flag, width: 0, value: (u, v) => fmtScore(v), paths: () => null,
            points: { show: true, size: 7, stroke: COLORS.flag, fill: COLORS.flag, width: 1 },
          },
        ],
        axes: [axis({ size: 30, space: 90, values: timeTicks }), axis({ size: 64, splits: () => [0, 0.5, 1], values: (u, vals) => vals.map((v) => v.toFixed(1)) })],
      }, scoreData, $('score-chart'));
    }

    /** The y range of the readings (and a sensible share of the band), so a wide band at warm-up does not flatten them. */
    function valueRange(u, dataMin, dataMax) {
      const [xs, upper, lower, , values] = u.data;
      // uPlot sets the visible index range before it ranges the y scale.
      const [i0, i1] = u.series[0].idxs || [0, xs.length - 1];
      let vmin = Infinity, vmax = -Infinity, bmin = Infinity, bmax = -Infinity;
      for (let i = Math.max(0, i0 ?? 0); i <= Math.min(xs.length - 1, i1 ?? xs.length - 1); i++) {
        const v = values[i];
        if (v != null) { vmin = Math.min(vmin, v); vmax = Math.max(vmax, v); }
        if (lower[i] != null) bmin = Math.min(bmin, lower[i]);
        if (upper[i] != null) bmax = Math.max(bmax, upper[i]);
      }
      if (!Number.isFinite(vmin)) return [dataMin ?? 0, dataMax ?? 1];
      const spread = Math.max(vmax - vmin, Math.abs(vmax) * 1e-3, 1e-9);
      const lo = Math.min(vmin, Math.max(bmin, vmin - spread * 0.5));
      const hi = Math.max(vmax, Math.min(bmax, vmax + spread * 0.5));
      const pad = (hi - lo) * 0.06;
      return [lo - pad, hi + pad];
    }

    function eventSpans(u) {
      const { left, width } = u.bbox;
      const dpr = window.devicePixelRatio || 1;
      const out = [];
      for (const ev of state.events) {
        const x0 = u.valToPos(tsMs(ev.start) / 1000, 'x', true);
        const x1 = u.valToPos(tsMs(ev.end) / 1000, 'x', true);
        const xp = u.valToPos(tsMs(ev.peak_ts) / 1000, 'x', true);
        if (x1 < left - 4 || x0 > left + width + 4) continue;
        const w = Math.max(x1 - x0, 4 * dpr);
        out.push({ ev, x: (x0 + x1) / 2 - w / 2, w, xp });
      }
      return out;
    }

    /** Anomaly events as shaded spans behind the lines. */
    function drawEventBands(u) {
      const ctx = u.ctx;
      const { left, top, width, height } = u.bbox;
      ctx.save();
      ctx.beginPath();
      ctx.rect(left, top, width, height);
      ctx.clip();
      for (const { ev, x, w } of eventSpans(u)) {
        ctx.fillStyle = state.focusedEvent === ev.id ? 'rgba(217, 45, 32, 0.18)' : COLORS.event;
        ctx.fillRect(x, top, w, height);
      }
      ctx.restore();
    }

    /** A marker at each event's peak, on top of the lines. */
    function drawEventMarks(u) {
      if (u !== main) return;
      const ctx = u.ctx;
      const { left, top, width } = u.bbox;
      const dpr = window.devicePixelRatio || 1;
      const spans = eventSpans(u);
      $('chart').dataset.events = String(spans.length);   // what is on screen, for tests
      ctx.save();
      for (const { ev, xp } of spans) {
        if (xp < left || xp > left + width) continue;
        ctx.strokeStyle = COLORS.eventEdge;
        ctx.lineWidth = dpr;
        ctx.beginPath();
        ctx.moveTo(xp, top);
        ctx.lineTo(xp, top + u.bbox.height);
        ctx.stroke();
        const s = 6 * dpr;
        ctx.fillStyle = COLORS.flag;
        ctx.beginPath();
        ctx.moveTo(xp - s, top);
        ctx.lineTo(xp + s, top);
        ctx.lineTo(xp, top + s * 1.4);
        ctx.closePath();
        ctx.fill();
      }
      ctx.restore();
    }

    /** Mirrors the x range onto the other chart and notes whether the user zoomed in. */
    function onScale(u, key) {
      if (key !== 'x' || syncing) return;
      const other = u === main ? score : main;
      const { min, max } = u.scales.x;
      if (other && (other.scales.x.min !== min || other.scales.x.max !== max)) {
        syncing = true;
        other.setScale('x', { min, max });
        syncing = false;
      }
      const xs = u.data[0];
      state.zoomed = xs.length > 1 && (min > xs[0] + 1e-9 || max < xs[xs.length - 1] - 1e-9);
      $('reset-zoom').disabled = !state.zoomed;
    }

    function toData() {
      const c = state.channel;
      const n = state.rows.length;
      const x = new Array(n), upper = new Array(n), lower = new Array(n), expected = new Array(n);
      const value = new Array(n), flagged = new Array(n), s = new Array(n), sFlagged = new Array(n);
      let flags = 0;
      state.rows.forEach((r, i) => {
        x[i] = tsMs(r.ts) / 1000;
        upper[i] = pick(r.upper, c);
        lower[i] = pick(r.lower, c);
        expected[i] = pick(r.expected, c);
        value[i] = r.values ? r.values[c] : r.value;
        flagged[i] = r.anomaly ? value[i] : null;
        s[i] = r.score;
        sFlagged[i] = r.anomaly ? r.score : null;
        if (r.anomaly) flags += 1;
      });
      data = [x, upper, lower, expected, value, flagged];
      scoreData = [x, s, sFlagged];
      return flags;
    }

    function render() {
      const flags = toData();
      const empty = state.rows.length === 0;
      $('chart-empty').hidden = !empty;
      $('chart').hidden = empty;
      $('score-chart').hidden = empty;
      const el = $('chart');
      el.dataset.points = String(state.rows.length);
      el.dataset.flagged = String(flags);
      if (empty) return;
      if (!main) {
        build();
      } else {
        const keep = state.zoomed;
        const { min, max } = main.scales.x;
        main.setData(data, !keep);
        score.setData(scoreData, !keep);
        if (keep) { main.setScale('x', { min, max }); }
      }
    }

    function clear() {
      if (main) { main.destroy(); main = null; }
      if (score) { score.destroy(); score = null; }
      $('chart').replaceChildren();
      $('score-chart').replaceChildren();
      $('reset-zoom').disabled = true;
      delete $('chart').dataset.points;
    }

    function zoomTo(min, max) {
      if (!main) return;
      main.setScale('x', { min, max });
    }

    function resetZoom() {
      if (!main) return;
      state.focusedEvent = null;
      state.zoomed = false;
      main.setData(data, true);
      score.setData(scoreData, true);
      renderAnomalies();
    }

    function resize() {
      if (!main) return;
      const width = Math.max(300, $('chart').clientWidth);
      if (width !== main.width) {
        main.setSize({ width, height: main.height });
        score.setSize({ width, height: score.height });
      }
    }

    return { render, clear, zoomTo, resetZoom, resize };
  })();

  // ---- models and jobs (admin) ------------------------------------------------------

  async function refreshAdmin() {
    let models, jobs;
    try {
      [models, jobs] = await Promise.all([api('/admin/v1/models'), api('/admin/v1/jobs')]);
    } catch (e) {
      if (isAuthError(e)) {
        $('admin-locked').hidden = false;
        $('admin-body').hidden = true;
        return;
      }
      throw e;
    }
    $('admin-locked').hidden = true;
    $('admin-body').hidden = false;
    renderModels(models.models || []);
    renderJobs(jobs.jobs || []);
  }

  function renderModels(models) {
    const rows = [];
    for (const m of models.slice().sort((a, b) => a.name.localeCompare(b.name))) {
      const versions = (m.versions || []).slice().reverse();   // newest first
      const shown = versions.slice(0, 3);
      shown.forEach((v, i) => rows.push(h('tr', { 'data-model': m.name },
        h('td', { class: 'mono' }, i === 0 ? m.name : ''),
        h('td', {}, h('code', {}, v.version), v.active ? badge('active', 'active') : null),
        h('td', {}, `${String(v.architecture).toUpperCase()} · ${v.hidden} × ${v.layers}`),
        h('td', { class: 'num' }, v.window == null ? '—' : fmtCount(v.window)),
        h('td', { class: 'num' }, fmtNum(v.val_loss)),
        h('td', {}, v.created_at ? fmtTime(tsMs(v.created_at), false) : '—'))));
      if (versions.length > shown.length) {
        rows.push(h('tr', {}, h('td', {}), h('td', { class: 'muted', colspan: 5 },
          `+ ${versions.length - shown.length} older version${versions.length - shown.length === 1 ? '' : 's'}`)));
      }
      if (!versions.length) rows.push(h('tr', {}, h('td', { class: 'mono' }, m.name), h('td', { class: 'muted', colspan: 5 }, 'no versions')));
    }
    $('model-rows').replaceChildren(...rows);
  }

  function renderJobs(jobs) {
    $('job-empty').hidden = jobs.length > 0;
    $('job-table').hidden = jobs.length === 0;
    $('job-rows').replaceChildren(...jobs.slice(0, 20).map((j) => {
      const p = j.progress;
      let progress = h('span', { class: 'muted' }, '—');
      if (p && p.epochs) {
        const fill = h('span', { class: 'fill' });
        fill.style.width = `${Math.min(100, (100 * p.epoch) / p.epochs).toFixed(0)}%`;
        const tail = j.status === 'running' && Number.isFinite(p.eta_s) ? ` · ETA ${fmtSeconds(p.eta_s)}` : ` · val ${fmtNum(p.val_loss)}`;
        progress = h('span', { class: 'progress' }, h('span', { class: 'track' }, fill), `${p.epoch}/${p.epochs}${tail}`);
      }
      return h('tr', { 'data-job': j.id },
        h('td', { class: 'mono' }, j.id),
        h('td', { class: 'mono' }, j.model),
        h('td', {}, badge(j.status, j.status),
          j.error ? h('span', { class: 'error-text', title: j.error }, ` ${j.error}`) : null),
        h('td', {}, progress),
        h('td', {}, j.version ? h('code', {}, j.version) : '—'),
        h('td', {}, fmtTime(tsMs(j.created_at), false)));
    }));
  }

  // ---- polling ----------------------------------------------------------------------

  function reportError(e) {
    if (isAuthError(e)) {
      setConnection(false, e.status === 401 ? 'API key needed' : 'key not allowed');
      setBanner(e.status === 401
        ? 'This server requires an API key. Enter a key with the read scope in the top bar.'
        : 'This API key may not read streams. Enter a key with the read (or admin) scope.');
    } else {
      setConnection(false, e.status ? `error ${e.status}: ${e.message}` : e.message);
    }
  }

  async function tick() {
    if (state.busy) return;
    state.busy = true;
    try {
      const admin = state.ticks % ADMIN_EVERY === 0 ? refreshAdmin().catch(() => {}) : null;
      state.ticks += 1;
      await refreshStreams();
      await refreshSelected();
      await admin;
      setBanner('');
      setConnection(true, `live · ${fmtTime(Date.now(), false).slice(11)} UTC`);
    } catch (e) {
      reportError(e);
    } finally {
      state.busy = false;
    }
  }

  function selectFromHash() {
    const m = location.hash.match(/^#\/streams\/(.+)$/);
    if (m) selectStream(decodeURIComponent(m[1]));
  }

  function start() {
    $('api-key').value = state.key;
    $('key-form').addEventListener('submit', (e) => {
      e.preventDefault();
      state.key = $('api-key').value.trim();
      if (state.key) localStorage.setItem(KEY_STORAGE, state.key);
      else localStorage.removeItem(KEY_STORAGE);
      state.latest.clear();
      state.ticks = 0;
      toast(state.key ? 'API key saved in this browser' : 'API key cleared');
      tick();
    });
    $('stream-filter').addEventListener('input', renderStreamList);
    $('window').addEventListener('change', () => {
      state.windowSize = Number($('window').value);
      state.zoomed = false;
      state.lastMs = null;
      state.loadSeq += 1;
      refreshSelected(true).catch(reportError);
    });
    $('channel').addEventListener('change', () => {
      state.channel = Number($('channel').value);
      charts.render();
      renderAnomalies();
    });
    $('live').addEventListener('change', () => { state.live = $('live').checked; });
    $('reset-zoom').addEventListener('click', () => charts.resetZoom());
    window.addEventListener('hashchange', selectFromHash);
    new ResizeObserver(() => charts.resize()).observe($('detail'));
    selectFromHash();
    tick();
    setInterval(() => { if (!document.hidden) tick(); }, POLL_MS);
  }

  start();
})();
