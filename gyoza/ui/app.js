/* gyoza dashboard: plain JavaScript, no build step, no external requests.
 *
 * It talks only to the public JSON API of the server that serves it. Every
 * piece of text from the API reaches the page through textContent or
 * attributes set with setAttribute (the h() helper); never through innerHTML.
 * The API key, when the server needs one, lives in sessionStorage and travels
 * only in the X-API-Key header, never in a URL.
 */
'use strict';
(() => {
  // The API lives next to /ui (also behind a proxy that mounts gyoza under a prefix).
  const BASE = location.pathname.replace(/\/ui(\/.*)?$/, '');
  const KEY_NAME = 'gyoza.apiKey';
  const STATES = ['PENDING', 'ASSIGNED', 'RUNNING', 'COMPLETED', 'FAILED', 'CANCELLED'];
  const ACTIVE = new Set(['ASSIGNED', 'RUNNING']);
  const TERMINAL = new Set(['COMPLETED', 'FAILED', 'CANCELLED']);
  const QUIET_EVENTS = new Set(['LOG', 'PROGRESS']);
  const RUNS_TICK_MS = 1500;
  const WORKERS_TICK_MS = 2000;
  const MAX_LOG_NODES = 4000;

  // -- DOM helpers ---------------------------------------------------------------------------

  const PROPS = new Set(['value', 'checked', 'disabled', 'selected', 'hidden', 'open']);

  /** Create an element; strings become text nodes, so API text is never parsed as HTML. */
  function h(tag, props, ...children) {
    const el = document.createElement(tag);
    if (props) {
      for (const [k, v] of Object.entries(props)) {
        if (v === null || v === undefined || v === false) continue;
        if (k === 'class') el.className = v;
        else if (k === 'text') el.textContent = String(v);
        else if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
        else if (PROPS.has(k)) el[k] = v;
        else el.setAttribute(k, v === true ? '' : String(v));
      }
    }
    add(el, children);
    return el;
  }

  function add(el, ...children) {
    for (const c of children.flat(Infinity)) {
      if (c === null || c === undefined || c === false) continue;
      el.append(c instanceof Node ? c : String(c));
    }
    return el;
  }

  const $ = (sel, root = document) => root.querySelector(sel);
  const enc = encodeURIComponent;
  const shortId = (id) => String(id).slice(0, 8);
  const json = (v) => JSON.stringify(v, null, 2);

  function badge(state, text) {
    return h('span', { class: `badge s-${state}`, text: text || state });
  }

  function progressBar(pct, mode) {
    const value = Math.max(0, Math.min(100, Number(pct) || 0));
    const bar = h('div', { class: `bar ${mode || ''}`, role: 'progressbar', 'aria-valuemin': 0, 'aria-valuemax': 100, 'aria-valuenow': Math.round(value) }, h('span'));
    bar.firstChild.style.width = `${value}%`;
    const label = pct === null || pct === undefined ? '–' : `${Math.round(value)}%`;
    return h('div', { class: 'progress' }, bar, h('span', { class: 'pct', text: label }));
  }

  function tags(list) {
    if (!list || !list.length) return h('span', { class: 'muted', text: '—' });
    return list.map((t) => h('span', { class: 'tag', text: t }));
  }

  function runLink(id, text) {
    return h('a', { class: 'mono', href: `#/runs/${enc(id)}`, title: id, text: text || shortId(id) });
  }

  // -- time ----------------------------------------------------------------------------------------

  let skewMs = 0; // server clock minus ours, from the Date header (only used when large)

  function noteServerDate(resp) {
    const d = resp.headers.get('date');
    if (!d) return;
    const t = Date.parse(d);
    if (!Number.isNaN(t)) skewMs = t + 500 - Date.now();
  }

  const now = () => Date.now() + (Math.abs(skewMs) > 2500 ? skewMs : 0);
  const parseT = (s) => (s ? Date.parse(String(s).replace(/(\.\d{3})\d+/, '$1')) : NaN);

  function fmtDur(ms) {
    if (!Number.isFinite(ms)) return '—';
    let s = Math.max(0, Math.floor(ms / 1000));
    if (s < 60) return `${s}s`;
    let m = Math.floor(s / 60); s %= 60;
    if (m < 60) return `${m}m ${String(s).padStart(2, '0')}s`;
    let hr = Math.floor(m / 60); m %= 60;
    if (hr < 24) return `${hr}h ${String(m).padStart(2, '0')}m`;
    const d = Math.floor(hr / 24); hr %= 24;
    return `${d}d ${hr}h`;
  }

  const ago = (s) => (s ? `${fmtDur(now() - parseT(s))} ago` : '—');

  function fmtTime(s) {
    const t = parseT(s);
    return Number.isFinite(t) ? new Date(t).toLocaleString() : '—';
  }

  function runDuration(run) {
    if (!run.started_at) return '—';
    const end = run.finished_at ? parseT(run.finished_at) : now();
    return fmtDur(end - parseT(run.started_at));
  }

  function timeEl(s, text) {
    return h('time', { datetime: s || '', title: s ? fmtTime(s) : '', text: text === undefined ? ago(s) : text });
  }

  function fmtMb(mb) {
    const n = Number(mb) || 0;
    return n >= 1024 ? `${(n / 1024).toFixed(n >= 10240 ? 0 : 1)} GiB` : `${n} MiB`;
  }

  const fmtCores = (c) => String(Math.round((Number(c) || 0) * 100) / 100);

  // -- API --------------------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, code, detail) {
      super(detail);
      this.status = status;
      this.code = code;
      this.detail = detail;
    }
  }

  const isAbort = (e) => e && e.name === 'AbortError';

  function storedKey() {
    try { return sessionStorage.getItem(KEY_NAME); } catch { return null; }
  }

  function abortable(promise, signal) {
    if (!signal) return promise;
    return new Promise((resolve, reject) => {
      if (signal.aborted) { reject(new DOMException('aborted', 'AbortError')); return; }
      const onAbort = () => reject(new DOMException('aborted', 'AbortError'));
      signal.addEventListener('abort', onAbort, { once: true });
      promise.then((v) => { signal.removeEventListener('abort', onAbort); resolve(v); },
        (e) => { signal.removeEventListener('abort', onAbort); reject(e); });
    });
  }

  function sleep(ms, signal) {
    return abortable(new Promise((resolve) => setTimeout(resolve, ms)), signal);
  }

  /** One API call. A 401 asks for a key, then the call is sent again with it. */
  async function api(method, path, { body, params, signal } = {}) {
    let url = BASE + path;
    if (params) {
      const q = new URLSearchParams();
      for (const [k, v] of Object.entries(params)) if (v !== null && v !== undefined && v !== '') q.set(k, String(v));
      const qs = q.toString();
      if (qs) url += `?${qs}`;
    }
    for (;;) {
      if (auth.waiting) await abortable(auth.waiting, signal);
      const key = storedKey();
      const headers = { Accept: 'application/json' };
      if (key) headers['X-API-Key'] = key;
      if (body !== undefined) headers['Content-Type'] = 'application/json';
      let resp;
      try {
        resp = await fetch(url, {
          method, headers, signal, cache: 'no-store', credentials: 'omit', referrerPolicy: 'no-referrer',
          body: body === undefined ? undefined : JSON.stringify(body),
        });
      } catch (e) {
        if (isAbort(e)) throw e;
        setConn(false, 'server unreachable, retrying…');
        throw new ApiError(0, 'network', `cannot reach the gyoza server (${e.message})`);
      }
      noteServerDate(resp);
      setConn(true);
      const text = await abortable(resp.text(), signal);
      let data = null;
      if (text) { try { data = JSON.parse(text); } catch { data = null; } }
      if (resp.status === 401) {
        if (storedKey() !== key && !auth.waiting) continue; // a new key arrived meanwhile
        askForKey(key ? (data && data.detail) || 'wrong API key' : null);
        continue;
      }
      if (!resp.ok) {
        const detail = (data && data.detail) || text.slice(0, 500) || resp.statusText;
        throw new ApiError(resp.status, (data && data.error) || 'http_error', detail);
      }
      return data;
    }
  }

  // -- API key prompt ------------------------------------------------------------------------

  const auth = { waiting: null, resolve: null };

  function askForKey(refusedDetail) {
    const dialog = $('#key-dialog');
    const err = $('#key-error');
    if (refusedDetail) {
      try { sessionStorage.removeItem(KEY_NAME); } catch { /* private mode */ }
      err.textContent = `The server refused that key (${refusedDetail}). Check it and try again.`;
      err.hidden = false;
    } else if (!auth.waiting) {
      err.hidden = true;
    }
    updateForgetButton();
    if (!auth.waiting) {
      auth.waiting = new Promise((resolve) => { auth.resolve = resolve; });
    }
    if (!dialog.open) {
      if (typeof dialog.showModal === 'function') dialog.showModal(); else dialog.setAttribute('open', '');
      const input = $('#key-input');
      input.value = '';
      input.focus();
    }
  }

  function setupKeyDialog() {
    const dialog = $('#key-dialog');
    dialog.addEventListener('cancel', (e) => e.preventDefault()); // nothing to show without a key
    $('#key-form').addEventListener('submit', (e) => {
      e.preventDefault();
      const key = $('#key-input').value.trim();
      if (!key) {
        const err = $('#key-error');
        err.textContent = 'Enter the API key the server was started with (--api-key or GYOZA_API_KEY).';
        err.hidden = false;
        return;
      }
      try { sessionStorage.setItem(KEY_NAME, key); } catch { /* private mode: key lasts until reload */ }
      $('#key-input').value = '';
      dialog.close();
      updateForgetButton();
      const resolve = auth.resolve;
      auth.waiting = null;
      auth.resolve = null;
      if (resolve) resolve();
    });
    $('#forget-key').addEventListener('click', () => {
      try { sessionStorage.removeItem(KEY_NAME); } catch { /* ignore */ }
      updateForgetButton();
      route();
    });
    updateForgetButton();
  }

  function updateForgetButton() {
    $('#forget-key').hidden = !storedKey();
  }

  function setConn(ok, msg) {
    const el = $('#conn');
    el.classList.toggle('bad', !ok);
    el.textContent = ok ? '● live' : `● ${msg}`;
  }

  // -- page plumbing -------------------------------------------------------------------------

  /** Run fn now and then every ms (slower in a hidden tab) until the page goes away. */
  async function every(ms, signal, fn, onError) {
    while (!signal.aborted) {
      try {
        await fn();
        if (onError) onError(null);
      } catch (e) {
        if (isAbort(e) || signal.aborted) return;
        if (onError) onError(e);
      }
      try {
        await sleep(document.hidden ? Math.max(ms, 10000) : ms, signal);
      } catch {
        return;
      }
    }
  }

  function errorBox() {
    const box = h('div', { class: 'error', role: 'alert', hidden: true });
    box.show = (e) => {
      if (!e) { box.hidden = true; return; }
      box.textContent = e instanceof ApiError ? e.detail : String(e.message || e);
      box.hidden = false;
    };
    return box;
  }

  function notice(text) {
    return h('p', { class: 'notice', text });
  }

  // -- Runs ---------------------------------------------------------------------------------------

  /** Last PROGRESS per run, fetched incrementally with ?after=<last event id>. */
  const progressCache = new Map();

  async function refreshProgress(run, signal) {
    let c = progressCache.get(run.id);
    if (!c) { c = { after: 0, pct: null, attempt: run.attempt }; progressCache.set(run.id, c); }
    const data = await api('GET', `/runs/${enc(run.id)}/events`, { params: { after: c.after }, signal });
    for (const e of data.events) {
      c.after = Math.max(c.after, e.id);
      if (e.type === 'PROGRESS') { c.pct = Number(e.msg); c.attempt = e.attempt; }
      else if (e.type === 'QUEUED' || e.type === 'RETRYING') c.pct = null;
    }
  }

  function progressCell(run) {
    const c = progressCache.get(run.id);
    const pct = c && c.pct !== null && c.attempt === run.attempt ? c.pct : null;
    if (run.state === 'PENDING') {
      if (run.scheduling) return h('div', { class: 'sched', text: run.scheduling });
      return h('span', { class: 'muted', text: run.attempt > 1 ? 'queued for a new attempt' : 'queued' });
    }
    if (run.state === 'COMPLETED') return progressBar(100, 'done');
    if (ACTIVE.has(run.state)) return progressBar(pct);
    if (run.state === 'FAILED' && run.error) {
      const first = String(run.error).split('\n')[0];
      return h('div', { class: 'err-line', title: String(run.error).slice(0, 2000), text: first });
    }
    if (pct !== null) return progressBar(pct, 'stopped');
    return h('span', { class: 'muted', text: '—' });
  }

  function opLabel(run) {
    if (run.definition) return h('span', { class: 'mono', text: `${run.definition}@${run.version}` });
    return h('span', { class: 'mono', title: 'ad-hoc run (no definition)', text: run.image });
  }

  function workerLabel(run) {
    if (!run.worker_id) return h('span', { class: 'muted', text: '—' });
    const parts = [h('span', { class: 'mono', text: run.worker_id })];
    if (run.gpu_ids && run.gpu_ids.length) parts.push(h('span', { class: 'muted', text: ` · GPU ${run.gpu_ids.join(', ')}` }));
    return h('span', null, parts);
  }

  function runRowSignature(run) {
    const c = progressCache.get(run.id);
    return JSON.stringify([run.state, run.scheduling, run.attempt, run.worker_id, run.gpu_ids, run.updated_at, c && c.pct]);
  }

  function buildRunRow(run) {
    const td = (cls, label, ...kids) => h('td', { class: cls, 'data-label': label }, ...kids);
    const ageTd = td('c-age num', 'Age', timeEl(run.created_at));
    const durTd = td('c-duration num', 'Duration', runDuration(run));
    const tr = h('tr', { class: 'clickable', 'data-run-id': run.id, 'data-state': run.state },
      td('c-id', 'Run', runLink(run.id)),
      td('c-op', 'Op', opLabel(run)),
      td('c-state', 'State', badge(run.state)),
      td('c-progress', 'Progress', progressCell(run)),
      td('c-attempt num', 'Attempt', `${run.attempt}/${run.retry_policy ? run.retry_policy.max_attempts : '?'}`),
      td('c-worker', 'Worker', workerLabel(run)),
      ageTd, durTd);
    tr.addEventListener('click', (e) => {
      if (e.target.closest('a, button')) return;
      location.hash = `#/runs/${enc(run.id)}`;
    });
    return { tr, ageTd, durTd, sig: runRowSignature(run) };
  }

  async function runsPage(ctx) {
    const state = ctx.q.get('state') || '';
    const definition = ctx.q.get('definition') || '';
    let limit = 50;
    setTitle('Runs');

    const go = (changes) => {
      const q = new URLSearchParams({ state, definition, ...changes });
      for (const [k, v] of [...q.entries()]) if (!v) q.delete(k);
      const qs = q.toString();
      location.hash = `#/runs${qs ? `?${qs}` : ''}`;
    };
    const stateSel = h('select', { id: 'filter-state', onchange: () => go({ state: stateSel.value }) },
      h('option', { value: '', text: 'all states' }),
      STATES.map((s) => h('option', { value: s, text: s, selected: s === state })));
    const defSel = h('select', { id: 'filter-definition', onchange: () => go({ definition: defSel.value }) },
      h('option', { value: '', text: 'all definitions' }));
    if (definition) defSel.append(h('option', { value: definition, text: definition, selected: true }));
    const count = h('span', { class: 'muted', 'aria-live': 'polite' });
    const more = h('button', { type: 'button', hidden: true, text: 'Show more', onclick: () => { limit = Math.min(limit + 50, 1000); tick(); } });
    const errors = errorBox();
    const tbody = h('tbody');
    const empty = notice('Loading…');
    const table = h('div', { class: 'table-wrap' }, h('table', { class: 'cards', id: 'runs-table' },
      h('thead', null, h('tr', null, ['Run', 'Op', 'State', 'Progress', 'Attempt', 'Worker / GPUs', 'Age', 'Duration'].map((t) => h('th', { scope: 'col', text: t })))),
      tbody));
    table.hidden = true;
    add(ctx.main, h('h1', { text: 'Runs' }),
      h('div', { class: 'toolbar' }, h('label', null, 'State', stateSel), h('label', null, 'Definition', defSel), count),
      errors, table, empty, h('div', { class: 'actions' }, more));

    api('GET', '/definitions', { signal: ctx.signal }).then((defs) => {
      const names = [...new Set(defs.map((d) => d.name))].sort();
      for (const n of names) if (n !== definition) defSel.append(h('option', { value: n, text: n }));
    }, () => { /* the filter still works for the current value */ });

    const rows = new Map();
    async function tick() {
      const page = await api('GET', '/runs', { params: { state, definition, limit }, signal: ctx.signal });
      const runs = page.runs;
      // Progress: only the visible active runs, each from the last event seen.
      await Promise.all(runs.filter((r) => ACTIVE.has(r.state)).slice(0, 40)
        .map((r) => refreshProgress(r, ctx.signal).catch((e) => { if (isAbort(e)) throw e; })));
      const seen = new Set();
      let prev = null;
      for (const run of runs) {
        seen.add(run.id);
        let row = rows.get(run.id);
        const sig = runRowSignature(run);
        if (!row || row.sig !== sig) {
          const fresh = buildRunRow(run);
          if (row) row.tr.replaceWith(fresh.tr);
          row = fresh;
          rows.set(run.id, row);
        } else {
          row.ageTd.firstChild.textContent = ago(run.created_at);
          row.durTd.textContent = runDuration(run);
        }
        const want = prev ? prev.nextSibling : tbody.firstChild;
        if (want !== row.tr) tbody.insertBefore(row.tr, want);
        prev = row.tr;
      }
      for (const [id, row] of rows) if (!seen.has(id)) { row.tr.remove(); rows.delete(id); }
      const filtered = state || definition;
      empty.textContent = filtered ? 'No runs match these filters.' : 'No runs yet. Start one from Definitions, or with `gyoza run NAME`.';
      empty.hidden = runs.length > 0;
      table.hidden = runs.length === 0;
      count.textContent = `${runs.length}${page.next_cursor ? '+' : ''} run${runs.length === 1 ? '' : 's'}`;
      more.hidden = !page.next_cursor || limit >= 1000;
    }
    await every(RUNS_TICK_MS, ctx.signal, tick, errors.show);
  }

  // -- Run detail ---------------------------------------------------------------------------------

  async function runPage(ctx, id) {
    setTitle(`Run ${shortId(id)}`);
    let run;
    try {
      run = await api('GET', `/runs/${enc(id)}`, { signal: ctx.signal });
    } catch (e) {
      if (isAbort(e)) throw e;
      add(ctx.main, h('p', null, h('a', { href: '#/runs', text: '← Runs' })), h('div', { class: 'error', role: 'alert', text: e.detail || String(e) }));
      return;
    }

    const title = h('h1', { class: 'mono', text: id });
    const stateSlot = h('span', { id: 'run-state' });
    const opSlot = h('span');
    const progressSlot = h('div', { id: 'run-progress' });
    const actionMsg = h('div', { id: 'action-message', role: 'alert', hidden: true });
    const cancelBtn = h('button', { type: 'button', class: 'danger', id: 'cancel-run', text: 'Cancel run' });
    const confirmBox = h('span', { hidden: true }, h('span', { text: 'Cancel this run? ' }));
    const confirmYes = h('button', { type: 'button', class: 'danger', id: 'confirm-cancel', text: 'Yes, cancel it' });
    const confirmNo = h('button', { type: 'button', text: 'Keep running' });
    add(confirmBox, confirmYes, ' ', confirmNo);
    const retryBtn = h('button', { type: 'button', id: 'retry-run', text: 'Retry' });
    const summary = h('dl', { class: 'kv', id: 'run-summary' });
    const timeline = h('ol', { class: 'timeline', id: 'run-timeline' });
    const follow = h('input', { type: 'checkbox', id: 'log-follow', checked: true });
    const log = h('pre', { class: 'log', id: 'run-log', tabindex: 0, 'aria-label': 'Log output' });
    const attempts = h('div', { id: 'run-attempts' });
    const inputsPre = h('pre', { class: 'json', id: 'run-inputs' });
    const outputsPre = h('pre', { class: 'json', id: 'run-outputs' });
    const deliveries = h('div', { id: 'run-deliveries' });
    const followErr = errorBox();

    add(ctx.main,
      h('p', null, h('a', { href: '#/runs', text: '← Runs' })),
      h('div', { class: 'head' }, title, stateSlot, opSlot),
      h('div', { class: 'actions' }, cancelBtn, confirmBox, retryBtn),
      actionMsg,
      h('div', { class: 'panel' }, progressSlot, h('h2', { text: 'Timeline' }), timeline),
      h('div', { class: 'panel' }, summary),
      h('div', { class: 'panel' },
        h('div', { class: 'log-head' }, h('h2', { text: 'Log' }), h('label', null, follow, ' follow')),
        followErr, log),
      h('h2', { text: 'Attempts' }), attempts,
      h('div', { class: 'grid2' },
        h('div', null, h('h2', { text: 'Inputs' }), inputsPre),
        h('div', null, h('h2', { text: 'Outputs' }), outputsPre)),
      h('h2', { text: 'Webhook deliveries' }), deliveries);

    let lastId = 0;
    let pct = null;
    let pctAttempt = 0;
    let logAttempt = 0;
    let logNodes = 0;
    let lastAutoScroll = 0;
    // Scrolling up to read stops following; scrolling back to the bottom resumes it.
    log.addEventListener('scroll', () => {
      if (log.scrollTop === lastAutoScroll) return;
      follow.checked = log.scrollHeight - log.scrollTop - log.clientHeight < 24;
    });

    function showAction(text, ok) {
      actionMsg.className = ok ? 'muted' : 'error';
      actionMsg.textContent = text;
      actionMsg.hidden = !text;
    }

    function renderProgress() {
      progressSlot.replaceChildren();
      const current = pct !== null && pctAttempt === run.attempt ? pct : null;
      if (run.state === 'COMPLETED') add(progressSlot, progressBar(100, 'done'));
      else if (ACTIVE.has(run.state)) add(progressSlot, progressBar(current));
      else if (run.state === 'PENDING') add(progressSlot, run.scheduling ? h('div', { class: 'sched', id: 'run-scheduling', text: run.scheduling }) : h('span', { class: 'muted', text: 'Queued, waiting for a worker.' }));
      else if (current !== null) add(progressSlot, progressBar(current, 'stopped'));
    }

    function addTimeline(e) {
      const label = e.attempt > 1 && (e.type === 'QUEUED' || e.type === 'RETRYING') ? `${e.type} #${e.attempt}` : e.type;
      const tip = `${fmtTime(e.t)} · attempt ${e.attempt} · state ${e.state}${typeof e.msg === 'string' && e.msg ? ` · ${e.msg.slice(0, 300)}` : ''}`;
      timeline.append(h('li', { title: tip }, badge(e.state, label), timeEl(e.t, new Date(parseT(e.t)).toLocaleTimeString())));
    }

    function addLog(e) {
      if (logAttempt && e.attempt !== logAttempt) {
        log.append(h('span', { class: 'muted', text: `── attempt ${e.attempt} ──\n` }));
        logNodes++;
      }
      logAttempt = e.attempt;
      const text = String(e.msg);
      log.append(text.endsWith('\n') ? text : `${text}\n`);
      logNodes++;
      while (logNodes > MAX_LOG_NODES && log.firstChild) { log.firstChild.remove(); logNodes--; }
      if (follow.checked) { log.scrollTop = log.scrollHeight; lastAutoScroll = log.scrollTop; }
    }

    function takeEvents(events) {
      let changed = false;
      for (const e of events) {
        if (e.id <= lastId) continue;
        lastId = e.id;
        if (e.type === 'LOG') addLog(e);
        else if (e.type === 'PROGRESS') { pct = Number(e.msg); pctAttempt = e.attempt; }
        else { addTimeline(e); changed = true; }
      }
      return changed;
    }

    function renderRun() {
      const terminal = TERMINAL.has(run.state);
      stateSlot.replaceChildren(badge(run.state));
      opSlot.replaceChildren(run.definition
        ? h('a', { class: 'mono', href: `#/definitions/${enc(run.definition)}?version=${enc(run.version)}`, text: `${run.definition}@${run.version}` })
        : opLabel(run));
      cancelBtn.disabled = terminal;
      retryBtn.disabled = !(run.state === 'FAILED' || run.state === 'CANCELLED');
      if (terminal) { confirmBox.hidden = true; cancelBtn.hidden = false; }
      renderProgress();

      const c = run.constraints || {};
      const rows = [
        ['Op', run.definition ? `${run.definition}@${run.version}` : '(ad-hoc)'],
        ['Image', h('span', { class: 'mono', text: run.image })],
        ['Command', run.command ? h('span', { class: 'mono', text: JSON.stringify(run.command) }) : null],
        ['State', run.state],
        ['Attempt', `${run.attempt} of ${run.retry_policy ? run.retry_policy.max_attempts : '?'} (retries on ${(run.retry_policy && run.retry_policy.retry_on || []).join(', ') || 'nothing'})`],
        ['Priority', String(run.priority)],
        ['Worker', run.worker_id ? h('span', { class: 'mono', text: run.worker_id }) : '—'],
        ['GPUs', run.gpu_ids && run.gpu_ids.length ? run.gpu_ids.join(', ') : '—'],
        ['Reserves', `${fmtCores(c.cpu_cores)} CPU · ${fmtMb(c.ram_mb)} RAM${c.gpus ? ` · ${c.gpus} GPU${c.gpus > 1 ? 's' : ''}${c.vram_mb ? ` ≥ ${fmtMb(c.vram_mb)}` : ''}` : ''}${c.tags && c.tags.length ? ` · tags ${c.tags.join(', ')}` : ''}${c.gpu_tags && c.gpu_tags.length ? ` · GPU tags ${c.gpu_tags.join(', ')}` : ''}`],
        ['Timeout', run.timeout_s ? fmtDur(run.timeout_s * 1000) : 'none'],
        ['Created', h('span', null, timeEl(run.created_at), h('span', { class: 'muted', text: ` · ${fmtTime(run.created_at)}` }))],
        ['Started', run.started_at ? fmtTime(run.started_at) : '—'],
        ['Finished', run.finished_at ? fmtTime(run.finished_at) : '—'],
        ['Duration', runDuration(run)],
        ['Scheduling', run.scheduling ? h('span', { class: 'sched', text: run.scheduling }) : null],
        ['Error', run.error ? h('pre', { class: 'error', id: 'run-error', text: run.error }) : null],
      ];
      summary.replaceChildren(...rows.filter(([, v]) => v !== null).flatMap(([k, v]) => [h('dt', { text: k }), h('dd', null, v)]));

      const list = run.attempts || [];
      if (!list.length) attempts.replaceChildren(notice('No attempts.'));
      else {
        const td = (label, ...kids) => h('td', { 'data-label': label }, ...kids);
        attempts.replaceChildren(h('div', { class: 'table-wrap' }, h('table', { class: 'cards' },
          h('thead', null, h('tr', null, ['#', 'State', 'Reason', 'Exit code', 'Worker', 'GPUs', 'Started', 'Finished', 'Error'].map((t) => h('th', { scope: 'col', text: t })))),
          h('tbody', null, list.map((a) => h('tr', { 'data-attempt': a.number },
            td('#', String(a.number)), td('State', badge(a.state)), td('Reason', a.reason || '—'),
            td('Exit code', a.exit_code === null || a.exit_code === undefined ? '—' : String(a.exit_code)),
            td('Worker', a.worker_id ? h('span', { class: 'mono', text: a.worker_id }) : '—'),
            td('GPUs', a.gpu_ids && a.gpu_ids.length ? a.gpu_ids.join(', ') : '—'),
            td('Started', a.started_at ? fmtTime(a.started_at) : '—'),
            td('Finished', a.finished_at ? fmtTime(a.finished_at) : '—'),
            td('Error', a.error ? h('div', { class: 'mono', text: a.error }) : '—')))))));
      }
      inputsPre.textContent = json(run.inputs || {});
      outputsPre.textContent = run.outputs ? json(run.outputs) : (terminal ? 'none' : 'not yet');
    }

    async function loadDeliveries() {
      if (!run.event_delivery) {
        deliveries.replaceChildren(notice('This run has no webhook (event_delivery).'));
        return false;
      }
      let list;
      try {
        list = await api('GET', `/runs/${enc(id)}/deliveries`, { signal: ctx.signal });
      } catch (e) {
        if (isAbort(e)) throw e;
        deliveries.replaceChildren(h('div', { class: 'error', text: `Deliveries unavailable: ${e.detail || e}` }));
        return false;
      }
      const head = h('p', { class: 'muted' }, 'To ', h('span', { class: 'mono', text: run.event_delivery.url }));
      if (!list.length) { deliveries.replaceChildren(head, notice('No deliveries yet.')); return true; }
      const td = (label, ...kids) => h('td', { 'data-label': label }, ...kids);
      deliveries.replaceChildren(head, h('div', { class: 'table-wrap' }, h('table', { class: 'cards' },
        h('thead', null, h('tr', null, ['Event', 'Status', 'Attempts', 'Last answer', 'Last error', 'When'].map((t) => h('th', { scope: 'col', text: t })))),
        h('tbody', null, list.map((d) => h('tr', null,
          td('Event', `#${d.event_id} ${d.event_type || ''}`),
          td('Status', h('span', { class: `badge s-${d.status === 'DELIVERED' ? 'COMPLETED' : d.status === 'FAILED' ? 'FAILED' : 'PENDING'}`, text: d.status })),
          td('Attempts', `${d.attempts}/${d.max_attempts}`),
          td('Last answer', d.last_status_code ? String(d.last_status_code) : '—'),
          td('Last error', d.last_error ? h('span', { class: 'mono', text: d.last_error }) : '—'),
          td('When', d.delivered_at ? `delivered ${ago(d.delivered_at)}`
            : d.status === 'PENDING' && d.attempts > 0 && d.next_attempt_at ? `next try ${fmtTime(d.next_attempt_at)}`
              : d.status === 'PENDING' ? 'queued' : '—')))))));
      return list.some((d) => d.status === 'PENDING');
    }

    async function refetch() {
      const fresh = await api('GET', `/runs/${enc(id)}`, { signal: ctx.signal });
      run = fresh;
      takeEvents(fresh.events || []);
      renderRun();
    }

    cancelBtn.addEventListener('click', () => { cancelBtn.hidden = true; confirmBox.hidden = false; confirmYes.focus(); });
    confirmNo.addEventListener('click', () => { cancelBtn.hidden = false; confirmBox.hidden = true; });
    confirmYes.addEventListener('click', async () => {
      confirmYes.disabled = true;
      try {
        run = { ...run, ...(await api('PATCH', `/runs/${enc(id)}`, { body: { state: 'CANCELLED' }, signal: ctx.signal })) };
        showAction('Run cancelled.', true);
        renderRun();
        refetch().catch(() => { /* the follow loop catches up */ });
      } catch (e) {
        if (isAbort(e)) return;
        showAction(`Cancel refused: ${e.detail || e}`, false);
      } finally {
        confirmYes.disabled = false;
        confirmBox.hidden = true;
        cancelBtn.hidden = false;
      }
    });
    retryBtn.addEventListener('click', async () => {
      retryBtn.disabled = true;
      try {
        run = { ...run, ...(await api('POST', `/runs/${enc(id)}/retry`, { signal: ctx.signal })) };
        showAction(`Retrying: attempt ${run.attempt} is queued.`, true);
        renderRun();
        refetch().catch(() => { /* the follow loop catches up */ });
      } catch (e) {
        if (isAbort(e)) return;
        showAction(`Retry refused: ${e.detail || e}`, false);
        renderRun();
      }
    });

    takeEvents(run.events || []);
    renderRun();
    follow.addEventListener('change', () => { if (follow.checked) log.scrollTop = log.scrollHeight; });

    let deliveriesPending = await loadDeliveries().catch((e) => { if (isAbort(e)) throw e; return false; });
    let lastDeliveries = Date.now();
    // Ticking durations and ages on the page.
    const clock = setInterval(() => {
      if (!ctx.signal.aborted && !TERMINAL.has(run.state)) summary.querySelectorAll('time').forEach((t) => { t.textContent = ago(t.getAttribute('datetime')); });
    }, 1000);
    ctx.signal.addEventListener('abort', () => clearInterval(clock), { once: true });

    // Follow: long-poll for events after the last one seen; a terminal run answers at once,
    // so then poll slowly (someone may retry it).
    while (!ctx.signal.aborted) {
      try {
        const terminal = TERMINAL.has(run.state);
        const data = await api('GET', `/runs/${enc(id)}/events`, { params: { after: lastId, wait: terminal ? undefined : 20 }, signal: ctx.signal });
        followErr.show(null);
        const changed = takeEvents(data.events);
        // A state change, or a quiet long-poll (the scheduling sentence changes without events).
        if (changed || (!terminal && !data.events.length)) await refetch();
        else if (data.events.length) renderProgress();
        if (run.event_delivery && (changed || (deliveriesPending && Date.now() - lastDeliveries > 3000))) {
          deliveriesPending = await loadDeliveries();
          lastDeliveries = Date.now();
        }
        if (TERMINAL.has(run.state) && !data.events.length) await sleep(3000, ctx.signal);
      } catch (e) {
        if (isAbort(e) || ctx.signal.aborted) return;
        followErr.show(e);
        try { await sleep(2000, ctx.signal); } catch { return; }
      }
    }
  }

  // -- Workers ------------------------------------------------------------------------------------

  function meter(label, used, total, fmt) {
    const pct = total > 0 ? (used / total) * 100 : 0;
    const bar = h('div', { class: 'bar', role: 'meter', 'aria-valuemin': 0, 'aria-valuemax': total, 'aria-valuenow': used, 'aria-label': label }, h('span'));
    bar.firstChild.style.width = `${Math.max(0, Math.min(100, pct))}%`;
    return h('div', { class: 'meter' }, h('span', { class: 'muted', text: label }), bar, h('span', { class: 'num', text: `${fmt(used)} / ${fmt(total)} used` }));
  }

  function workerCard(w) {
    const res = w.resources || { cpu_cores: 0, ram_mb: 0, gpus: [] };
    const free = w.free || { cpu_cores: res.cpu_cores, ram_mb: res.ram_mb, gpu_ids: [] };
    const holder = new Map();
    for (const op of w.running_ops || []) for (const g of op.gpu_ids || []) holder.set(g, op.run_id);
    const freeGpus = new Set(free.gpu_ids || []);
    const td = (label, ...kids) => h('td', { 'data-label': label }, ...kids);
    const gpus = res.gpus || [];
    const gpuTable = gpus.length
      ? h('div', { class: 'table-wrap' }, h('table', { class: 'cards gpus' },
        h('thead', null, h('tr', null, ['GPU', 'Name', 'VRAM', 'Tags', 'Run'].map((t) => h('th', { scope: 'col', text: t })))),
        h('tbody', null, gpus.map((g) => h('tr', { 'data-gpu': g.id },
          td('GPU', String(g.id)),
          td('Name', g.name || '—'),
          td('VRAM', fmtMb(g.vram_mb)),
          td('Tags', tags(g.tags)),
          td('Run', holder.has(g.id) ? runLink(holder.get(g.id))
            : h('span', { class: 'muted', text: freeGpus.has(g.id) ? 'free' : 'reserved' })))))))
      : h('p', { class: 'muted', text: 'No GPUs.' });
    const runs = (w.running_ops || []).map((op) => runLink(op.run_id));
    return h('section', { class: 'panel worker', 'data-worker-id': w.worker_id },
      h('div', { class: 'head' }, h('h2', { class: 'mono', text: w.worker_id }), badge(w.status),
        h('span', { class: 'muted' }, 'heartbeat ', timeEl(w.last_heartbeat_at))),
      w.tags && w.tags.length ? h('p', null, tags(w.tags)) : null,
      meter('CPU', res.cpu_cores - free.cpu_cores, res.cpu_cores, (v) => `${fmtCores(v)}`),
      meter('RAM', res.ram_mb - free.ram_mb, res.ram_mb, fmtMb),
      h('p', null, h('span', { class: 'muted', text: 'Running: ' }), runs.length ? runs.flatMap((a, i) => (i ? [', ', a] : [a])) : h('span', { class: 'muted', text: 'nothing' })),
      gpuTable);
  }

  async function workersPage(ctx) {
    setTitle('Workers');
    const errors = errorBox();
    const list = h('div', { class: 'workers', id: 'workers' });
    add(ctx.main, h('h1', { text: 'Workers' }), errors, list);
    await every(WORKERS_TICK_MS, ctx.signal, async () => {
      const workers = await api('GET', '/workers', { signal: ctx.signal });
      workers.sort((a, b) => (a.status === b.status ? a.worker_id.localeCompare(b.worker_id) : a.status === 'ONLINE' ? -1 : 1));
      if (!workers.length) list.replaceChildren(notice('No worker has connected yet. Start one with `gyoza worker --server URL`, or use `gyoza up`.'));
      else list.replaceChildren(...workers.map(workerCard));
    }, errors.show);
  }

  // -- Definitions ------------------------------------------------------------------------------

  function groupDefinitions(defs) {
    const byName = new Map();
    for (const d of defs) {
      if (!byName.has(d.name)) byName.set(d.name, []);
      byName.get(d.name).push(d);
    }
    for (const list of byName.values()) list.sort((a, b) => parseT(b.created_at) - parseT(a.created_at));
    return [...byName.entries()].sort((a, b) => a[0].localeCompare(b[0]));
  }

  async function definitionsPage(ctx) {
    setTitle('Definitions');
    const defs = await api('GET', '/definitions', { signal: ctx.signal });
    add(ctx.main, h('h1', { text: 'Definitions' }));
    const groups = groupDefinitions(defs);
    if (!groups.length) { add(ctx.main, notice('No definitions yet. Deploy some with `gyoza deploy PATH`.')); return; }
    const td = (label, ...kids) => h('td', { 'data-label': label }, ...kids);
    add(ctx.main, h('div', { class: 'table-wrap' }, h('table', { class: 'cards', id: 'definitions-table' },
      h('thead', null, h('tr', null, ['Name', 'Latest', 'Versions', 'Image', 'Description'].map((t) => h('th', { scope: 'col', text: t })))),
      h('tbody', null, groups.map(([name, versions]) => h('tr', { 'data-definition': name, class: 'clickable', onclick: (e) => { if (!e.target.closest('a')) location.hash = `#/definitions/${enc(name)}`; } },
        td('Name', h('a', { href: `#/definitions/${enc(name)}`, text: name })),
        td('Latest', h('span', { class: 'mono', text: versions[0].version })),
        td('Versions', versions.map((v) => v.version).join(', ')),
        td('Image', h('span', { class: 'mono', text: versions[0].image })),
        td('Description', versions[0].description || '—')))))));
  }

  function typeLabel(s) {
    if (!s || typeof s !== 'object') return 'any';
    let t = Array.isArray(s.type) ? s.type.join(' | ') : s.type || (s.enum ? 'enum' : s.properties ? 'object' : 'any');
    if (t === 'array' && s.items && typeof s.items === 'object' && s.items.type) t = `array of ${s.items.type}`;
    if (s.format) t += ` (${s.format})`;
    if (s.enum) t += `: one of ${s.enum.map((v) => JSON.stringify(v)).join(', ')}`;
    const bounds = [];
    if (s.minimum !== undefined) bounds.push(`≥ ${s.minimum}`);
    if (s.maximum !== undefined) bounds.push(`≤ ${s.maximum}`);
    if (s.minLength !== undefined) bounds.push(`length ≥ ${s.minLength}`);
    if (s.maxLength !== undefined) bounds.push(`length ≤ ${s.maxLength}`);
    if (bounds.length) t += ` (${bounds.join(', ')})`;
    return t;
  }

  function schemaTable(schema, id) {
    const props = schema && typeof schema === 'object' && schema.properties && typeof schema.properties === 'object' ? schema.properties : null;
    if (!schema) return notice('No schema: any JSON object is accepted.');
    if (!props || !Object.keys(props).length) return h('pre', { class: 'json', text: json(schema) });
    const required = new Set(Array.isArray(schema.required) ? schema.required : []);
    const td = (label, ...kids) => h('td', { 'data-label': label }, ...kids);
    return h('div', { class: 'table-wrap' }, h('table', { class: 'cards', id },
      h('thead', null, h('tr', null, ['Field', 'Type', 'Required', 'Default', 'Description'].map((t) => h('th', { scope: 'col', text: t })))),
      h('tbody', null, Object.entries(props).map(([name, s]) => h('tr', { 'data-field': name },
        td('Field', h('span', { class: 'mono', text: name })),
        td('Type', typeLabel(s)),
        td('Required', required.has(name) ? 'yes' : 'no'),
        td('Default', s && typeof s === 'object' && 'default' in s ? h('span', { class: 'mono', text: JSON.stringify(s.default) }) : '—'),
        td('Description', (s && s.description) || '—'))))));
  }

  /** A form for the schema's top-level properties; each field knows how to read itself. */
  function inputFields(schema) {
    const props = schema && schema.properties && typeof schema.properties === 'object' ? schema.properties : null;
    if (!props || !Object.keys(props).length) {
      const area = h('textarea', { id: 'inputs-json', rows: 6, placeholder: '{"key": "value"}', 'aria-label': 'Inputs as JSON' });
      return {
        nodes: [h('label', { for: 'inputs-json', text: 'Inputs (JSON)' }), h('div', null, area)],
        read() {
          const text = area.value.trim();
          if (!text) return {};
          try { return JSON.parse(text); } catch (e) { throw new Error(`Inputs: not valid JSON (${e.message})`); }
        },
      };
    }
    const required = new Set(Array.isArray(schema.required) ? schema.required : []);
    const fields = [];
    const nodes = [];
    Object.entries(props).forEach(([name, s], i) => {
      s = s && typeof s === 'object' ? s : {};
      const fid = `field-${i}`;
      const hasDefault = 'default' in s;
      const type = Array.isArray(s.type) ? null : s.type;
      const hint = [s.description, hasDefault ? `default ${JSON.stringify(s.default)}` : null, typeLabel(s)].filter(Boolean).join(' · ');
      let control;
      let read;
      if (Array.isArray(s.enum)) {
        control = h('select', { id: fid, name, 'data-field': name },
          h('option', { value: '', text: hasDefault ? `(default: ${JSON.stringify(s.default)})` : '(not set)' }),
          s.enum.map((v) => h('option', { value: JSON.stringify(v), text: typeof v === 'string' ? v : JSON.stringify(v) })));
        read = () => (control.value === '' ? undefined : JSON.parse(control.value));
      } else if (type === 'boolean') {
        control = h('select', { id: fid, name, 'data-field': name },
          h('option', { value: '', text: hasDefault ? `(default: ${JSON.stringify(s.default)})` : '(not set)' }),
          h('option', { value: 'true', text: 'true' }), h('option', { value: 'false', text: 'false' }));
        read = () => (control.value === '' ? undefined : control.value === 'true');
      } else if (type === 'integer' || type === 'number') {
        control = h('input', { id: fid, name, 'data-field': name, type: 'text', inputmode: type === 'integer' ? 'numeric' : 'decimal', autocomplete: 'off', placeholder: hasDefault ? String(s.default) : '' });
        read = () => {
          const v = control.value.trim();
          if (v === '') return undefined;
          const n = Number(v);
          return Number.isFinite(n) ? n : v; // the server names the type error
        };
      } else if (type === 'string') {
        const long = (s.maxLength || 0) > 200 || s.format === 'textarea';
        control = h(long ? 'textarea' : 'input', { id: fid, name, 'data-field': name, type: long ? null : 'text', autocomplete: 'off', placeholder: hasDefault ? String(s.default) : '' });
        read = () => (control.value === '' ? undefined : control.value);
      } else {
        control = h('textarea', { id: fid, name, 'data-field': name, rows: 3, placeholder: hasDefault ? JSON.stringify(s.default) : 'JSON value' });
        read = () => {
          const v = control.value.trim();
          if (v === '') return undefined;
          try { return JSON.parse(v); } catch (e) { throw new Error(`${name}: not valid JSON (${e.message})`); }
        };
      }
      fields.push([name, read]);
      nodes.push(h('label', { for: fid }, name, required.has(name) ? h('span', { class: 'req', title: 'required', text: ' *' }) : null),
        h('div', null, control, h('div', { class: 'hint', text: hint })));
    });
    return {
      nodes,
      read() {
        const out = {};
        for (const [name, read] of fields) {
          const v = read();
          if (v !== undefined) out[name] = v;
        }
        return out;
      },
    };
  }

  async function definitionPage(ctx, name) {
    setTitle(name);
    const defs = (await api('GET', '/definitions', { signal: ctx.signal })).filter((d) => d.name === name);
    const back = h('p', null, h('a', { href: '#/definitions', text: '← Definitions' }));
    if (!defs.length) { add(ctx.main, back, h('div', { class: 'error', role: 'alert', text: `No definition named ${name}.` })); return; }
    const versions = groupDefinitions(defs)[0][1];
    const wanted = ctx.q.get('version');
    const def = versions.find((v) => v.version === wanted) || versions[0];
    const isLatest = def === versions[0];

    const versionSel = h('select', { id: 'version', onchange: () => { location.hash = `#/definitions/${enc(name)}?version=${enc(versionSel.value)}`; } },
      versions.map((v, i) => h('option', { value: v.version, text: i === 0 ? `${v.version} (latest)` : v.version, selected: v === def })));
    const c = def.constraints || {};
    const r = def.retry_policy || {};
    const kv = [
      ['Image', h('span', { class: 'mono', text: def.image })],
      ['Command', def.command ? h('span', { class: 'mono', text: JSON.stringify(def.command) }) : 'image default'],
      ['Reserves', `${fmtCores(c.cpu_cores)} CPU · ${fmtMb(c.ram_mb)} RAM${c.gpus ? ` · ${c.gpus} GPU${c.gpus > 1 ? 's' : ''}${c.vram_mb ? ` ≥ ${fmtMb(c.vram_mb)}` : ''}` : ''}${c.gpu_tags && c.gpu_tags.length ? ` · GPU tags ${c.gpu_tags.join(', ')}` : ''}${c.tags && c.tags.length ? ` · worker tags ${c.tags.join(', ')}` : ''}`],
      ['Retries', `${r.max_attempts} attempt${r.max_attempts === 1 ? '' : 's'}, retry on ${(r.retry_on || []).join(', ') || 'nothing'}`],
      ['Timeout', def.timeout_s ? fmtDur(def.timeout_s * 1000) : 'none'],
      ['Webhook', def.event_delivery ? h('span', { class: 'mono', text: def.event_delivery.url }) : 'none'],
      ['Updated', h('span', null, timeEl(def.updated_at), h('span', { class: 'muted', text: ` · ${fmtTime(def.updated_at)}` }))],
    ];

    const fields = inputFields(def.input_schema);
    const priority = h('input', { id: 'run-priority', type: 'text', inputmode: 'numeric', placeholder: '5', autocomplete: 'off' });
    const formError = h('div', { class: 'error', id: 'run-form-error', role: 'alert', hidden: true });
    const submit = h('button', { type: 'submit', class: 'primary', id: 'run-submit', text: `Run ${name}@${def.version}` });
    const form = h('form', { id: 'run-form', novalidate: true, autocomplete: 'off' },
      h('div', { class: 'form-grid' }, fields.nodes,
        h('label', { for: 'run-priority', text: 'priority' }),
        h('div', null, priority, h('div', { class: 'hint', text: '0..100, higher runs first · default 5' }))),
      h('div', { class: 'actions' }, submit),
      formError);
    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      formError.hidden = true;
      let inputs;
      try { inputs = fields.read(); } catch (err) { formError.textContent = err.message; formError.hidden = false; return; }
      const body = { inputs };
      const p = priority.value.trim();
      if (p !== '') body.priority = Number.isInteger(Number(p)) ? Number(p) : p;
      submit.disabled = true;
      try {
        const run = await api('POST', `/definitions/${enc(name)}/runs`, { body, params: { version: def.version }, signal: ctx.signal });
        location.hash = `#/runs/${enc(run.id)}`;
      } catch (err) {
        if (isAbort(err)) return;
        formError.textContent = err instanceof ApiError ? `Not started: ${err.detail}` : String(err.message || err);
        formError.hidden = false;
      } finally {
        submit.disabled = false;
      }
    });

    add(ctx.main, back,
      h('div', { class: 'head' }, h('h1', { class: 'mono', text: name }), h('label', { class: 'muted' }, 'version ', versionSel),
        isLatest ? null : h('span', { class: 'badge s-ASSIGNED', text: 'not the latest' })),
      def.description ? h('p', { text: def.description }) : null,
      h('p', null, h('a', { href: `#/runs?definition=${enc(name)}`, text: 'Runs of this definition →' })),
      h('div', { class: 'panel' }, h('dl', { class: 'kv' }, kv.flatMap(([k, v]) => [h('dt', { text: k }), h('dd', null, v)]))),
      h('h2', { text: 'Inputs' }), schemaTable(def.input_schema, 'input-schema'),
      def.output_schema ? [h('h2', { text: 'Outputs' }), schemaTable(def.output_schema, 'output-schema')] : null,
      h('h2', { text: 'Start a run' }), h('div', { class: 'panel' }, form));
  }

  // -- router -----------------------------------------------------------------------------------------

  let current = null;

  function setTitle(text) {
    document.title = `${text} · gyoza`;
  }

  async function route() {
    if (current) current.abort();
    const ctrl = new AbortController();
    current = ctrl;
    const raw = location.hash.replace(/^#/, '') || '/runs';
    const qi = raw.indexOf('?');
    const path = qi >= 0 ? raw.slice(0, qi) : raw;
    const q = new URLSearchParams(qi >= 0 ? raw.slice(qi + 1) : '');
    let parts;
    try { parts = path.split('/').filter(Boolean).map(decodeURIComponent); } catch { parts = []; }
    const main = $('#main');
    main.replaceChildren();
    const section = parts[0] || 'runs';
    document.querySelectorAll('[data-nav]').forEach((a) => a.classList.toggle('active', a.dataset.nav === section));
    const ctx = { main, q, signal: ctrl.signal };
    try {
      if (section === 'runs' && parts[1]) await runPage(ctx, parts[1]);
      else if (section === 'runs') await runsPage(ctx);
      else if (section === 'workers') await workersPage(ctx);
      else if (section === 'definitions' && parts[1]) await definitionPage(ctx, parts[1]);
      else if (section === 'definitions') await definitionsPage(ctx);
      else add(main, h('h1', { text: 'Not found' }), h('p', null, h('a', { href: '#/runs', text: 'Go to runs' })));
    } catch (e) {
      if (isAbort(e) || ctrl.signal.aborted) return;
      add(main, h('div', { class: 'error', role: 'alert', text: e instanceof ApiError ? e.detail : String(e.message || e) }));
    }
  }

  function start() {
    setupKeyDialog();
    window.addEventListener('hashchange', route);
    route();
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
  else start();
})();
