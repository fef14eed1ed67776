// The runbook console: runs, a run's timeline, logs and audit, operator actions, schedules.
// Every value from the API is put into the page as text (textContent), never as markup.
'use strict';

const TOKEN_KEY = 'runbook.token';
const STATES = ['running', 'waiting', 'paused', 'needs_attention', 'succeeded', 'failed', 'canceled', 'rolled_back'];
const ROLE_RANK = { viewer: 0, operator: 1, approver: 2, admin: 3 };

const app = {
  token: sessionStorage.getItem(TOKEN_KEY) || '',
  me: null,
  refresh: null,
  runbooks: null,
  paramCache: new Map(),
  log: null,
};

// ----- helpers ----------------------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === 'class') node.className = value;
    else if (key === 'on') for (const [event, fn] of Object.entries(value)) node.addEventListener(event, fn);
    else if (key === 'dataset') Object.assign(node.dataset, value);
    else node.setAttribute(key, value === true ? '' : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); return node; }

function main() { return clear(document.getElementById('main')); }

function banner(message) {
  const node = document.getElementById('banner');
  node.textContent = message || '';
  node.hidden = !message;
}

class ApiError extends Error {
  constructor(status, code, message) { super(message); this.status = status; this.code = code; }
}

async function api(method, path, body) {
  const headers = { 'Accept': 'application/json' };
  if (app.token) headers['Authorization'] = 'Bearer ' + app.token;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const response = await fetch(path, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
    credentials: 'omit', cache: 'no-store',
  });
  const text = await response.text();
  let value = null;
  try { value = text ? JSON.parse(text) : null; } catch (_) { value = null; }
  if (!response.ok) {
    const error = (value && value.error) || {};
    if (response.status === 401) { logout(error.message || 'log in with your token'); }
    throw new ApiError(response.status, error.code || 'internal', error.message || `HTTP ${response.status}`);
  }
  return value;
}

function can(role) { return app.me && ROLE_RANK[app.me.role] >= ROLE_RANK[role]; }

function when(iso) {
  if (!iso) return '';
  const date = new Date(iso);
  const pad = (n) => String(n).padStart(2, '0');
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())} ${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}`;
}

function span(ms) {
  if (ms === null || ms === undefined || isNaN(ms)) return '';
  const negative = ms < 0; ms = Math.abs(ms);
  const s = Math.floor(ms / 1000), d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600), m = Math.floor(s % 3600 / 60);
  let text;
  if (d > 0) text = `${d}d ${h}h`;
  else if (h > 0) text = `${h}h ${m}m`;
  else if (m > 0) text = `${m}m ${s % 60}s`;
  else text = ms < 1000 ? `${(ms / 1000).toFixed(2)}s` : `${s}s`;
  return negative ? '-' + text : text;
}

function ago(iso) { return iso ? span(Date.now() - new Date(iso).getTime()) + ' ago' : ''; }

function badge(state) { return el('span', { class: 'badge state-' + state }, state.replace('_', ' ')); }

function actorName(actor) {
  if (!actor) return 'the daemon';
  if (actor.user) return actor.user;
  return actor.name ? `uid ${actor.uid} (${actor.name})` : `uid ${actor.uid}`;
}

// A countdown: the element's text is kept as "in 2h 3m" until `until`.
function countdown(until, prefix) {
  return el('span', { class: 'countdown', dataset: { until, prefix: prefix || '' } }, prefix + span(new Date(until) - Date.now()));
}

setInterval(() => {
  for (const node of document.querySelectorAll('.countdown')) {
    const left = new Date(node.dataset.until) - Date.now();
    node.textContent = node.dataset.prefix + (left > 0 ? span(left) : 'now');
  }
}, 1000);

function stopRefresh() {
  if (app.refresh) clearInterval(app.refresh);
  app.refresh = null;
  if (app.log) clearTimeout(app.log.timer);
  app.log = null;
}

// ----- login ------------------------------------------------------------------------------------

function logout(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  app.token = '';
  app.me = null;
  stopRefresh();
  document.getElementById('nav').hidden = true;
  document.getElementById('who').hidden = true;
  renderLogin(message);
}

function renderLogin(message) {
  const input = el('input', { type: 'password', id: 'token', name: 'token', autocomplete: 'off', placeholder: 'rbt_…', required: true });
  const error = el('p', { class: 'error', id: 'login-error' }, message || '');
  const form = el('form', { class: 'card login', id: 'login', on: { submit: async (event) => {
    event.preventDefault();
    app.token = input.value.trim();
    try {
      await whoami();
      sessionStorage.setItem(TOKEN_KEY, app.token);
      route();
    } catch (e) {
      app.token = '';
      error.textContent = e.message;
    }
  } } },
    el('h1', {}, 'Log in'),
    el('p', { class: 'muted' }, 'Paste your token (an admin makes one with `runbook token create <you>`). It stays in this tab only.'),
    el('label', { for: 'token' }, 'Token'), input, error,
    el('button', { type: 'submit', class: 'primary', id: 'login-submit' }, 'Log in'));
  main().append(form);
  input.focus();
}

async function whoami() {
  app.me = await api('GET', '/v1/whoami');
  document.getElementById('who-name').textContent = app.me.user || `uid ${app.me.uid} (local)`;
  document.getElementById('who-role').textContent = app.me.role;
  document.getElementById('nav').hidden = false;
  document.getElementById('who').hidden = false;
}

// ----- runs -------------------------------------------------------------------------------------

async function renderRuns(query) {
  const root = main();
  const filters = {
    state: query.get('state') || '',
    runbook: query.get('runbook') || '',
    param: query.get('param') || '',
  };
  if (!app.runbooks) {
    app.runbooks = (await api('GET', '/v1/runbooks')).runbooks.map((r) => r.name);
  }
  const apply = () => {
    const next = new URLSearchParams();
    for (const [key, value] of Object.entries(filters)) if (value) next.set(key, value);
    location.hash = '#/runs' + (next.toString() ? '?' + next : '');
  };
  const stateSelect = el('select', { id: 'filter-state', on: { change: (e) => { filters.state = e.target.value; apply(); } } },
    el('option', { value: '' }, 'unfinished'), el('option', { value: 'all' }, 'all'),
    STATES.map((s) => el('option', { value: s, selected: s === filters.state }, s)));
  if (filters.state === 'all') stateSelect.value = 'all';
  const runbookSelect = el('select', { id: 'filter-runbook', on: { change: (e) => { filters.runbook = e.target.value; apply(); } } },
    el('option', { value: '' }, 'every runbook'),
    app.runbooks.map((name) => el('option', { value: name, selected: name === filters.runbook }, name)));
  const paramInput = el('input', { id: 'filter-param', placeholder: 'param=value', value: filters.param,
    on: { change: (e) => { filters.param = e.target.value.trim(); apply(); } } });
  const body = el('div', { id: 'runs' }, el('p', { class: 'muted' }, 'Loading…'));
  const toolbar = el('div', { class: 'toolbar' },
    el('h1', {}, 'Runs'),
    el('div', { class: 'filters' },
      el('label', {}, 'State ', stateSelect),
      el('label', {}, 'Runbook ', runbookSelect),
      el('label', {}, 'Param ', paramInput)));
  if (can('operator')) toolbar.append(el('button', { type: 'button', class: 'primary', id: 'start-run', on: { click: () => startDialog() } }, 'Start a run'));
  root.append(toolbar, body);

  const load = async () => {
    const params = new URLSearchParams({ limit: '100' });
    if (filters.state === 'all') params.set('all', 'true');
    else if (filters.state) params.set('state', filters.state);
    if (filters.runbook) params.set('runbook', filters.runbook);
    let runs = (await api('GET', '/v1/runs?' + params)).runs;
    if (filters.param.includes('=')) runs = await byParam(runs, filters.param);
    clear(body).append(runsTable(runs));
  };
  await load().catch((e) => banner(e.message));
  app.refresh = setInterval(() => load().catch((e) => banner(e.message)), 5000);
}

// Runs whose param `key` is `value` (the listing has no params: each run is read, once when
// it has finished).
async function byParam(runs, filter) {
  const [key, ...rest] = filter.split('=');
  const want = rest.join('=');
  const kept = [];
  for (const run of runs) {
    let params = app.paramCache.get(run.id);
    if (!params) {
      params = (await api('GET', '/v1/runs/' + encodeURIComponent(run.id))).params || {};
      if (run.finished_at) app.paramCache.set(run.id, params);
    }
    const value = params[key.trim()];
    const text = typeof value === 'string' ? value : JSON.stringify(value);
    if (value !== undefined && text === want.trim()) kept.push(run);
  }
  return kept;
}

function runsTable(runs) {
  if (!runs.length) return el('p', { class: 'muted empty' }, 'No runs here.');
  return el('div', { class: 'table-wrap' }, el('table', { class: 'runs' },
    el('thead', {}, el('tr', {}, el('th', {}, 'Run'), el('th', {}, 'Runbook'), el('th', {}, 'State'),
      el('th', {}, 'Waits for'), el('th', { class: 'wide' }, 'Current step'), el('th', { class: 'wide' }, 'Next wake-up'), el('th', { class: 'wide' }, 'Started'))),
    el('tbody', {}, runs.map((run) => el('tr', { class: 'run-row', dataset: { run: run.id } },
      el('td', { class: 'mono' }, el('a', { href: '#/run/' + run.id }, run.id.slice(0, 13))),
      el('td', {}, run.runbook),
      el('td', {}, badge(run.state)),
      el('td', {}, run.waiting_for ? [run.waiting_for, el('span', { class: 'wide' }, ` · ${ago(run.waiting_since)}`)] : ''),
      el('td', { class: 'wide mono' }, run.current_step || ''),
      el('td', { class: 'wide' }, run.next_wakeup ? countdown(run.next_wakeup, 'in ') : ''),
      el('td', { class: 'wide' }, ago(run.created_at)))))));
}

// ----- one run ----------------------------------------------------------------------------------

async function renderRun(id) {
  const root = main();
  const body = el('div', { id: 'run' }, el('p', { class: 'muted' }, 'Loading…'));
  root.append(el('p', {}, el('a', { href: '#/runs' }, '← Runs')), body);
  const load = async () => {
    const run = await api('GET', '/v1/runs/' + encodeURIComponent(id));
    const open = app.log && app.log.step;
    clear(body).append(runHeader(run), runActions(run), timeline(run), logPanel(run), auditTable(run), notificationsTable(run));
    if (open) showLog(run, open.step, open.undo, false);
  };
  await load().catch((e) => banner(e.message));
  app.refresh = setInterval(() => load().catch((e) => banner(e.message)), 2000);
}

function runHeader(run) {
  const facts = [
    ['Runbook', `${run.runbook} v${run.version}`],
    ['Started', `${when(run.created_at)} by ${actorName(run.started_by)}`],
  ];
  if (run.finished_at) facts.push(['Finished', when(run.finished_at)]);
  if (run.waiting_for) facts.push(['Waits for', `${run.waiting_for} since ${when(run.waiting_since)} (${ago(run.waiting_since)})`]);
  if (run.attention) facts.push(['Needs attention', `${run.attention.reason} at ${run.attention.step}: ${run.attention.message}`]);
  if (run.error) facts.push(['Error', run.error]);
  if (run.locks.length) facts.push(['Locks', run.locks.join(', ')]);
  const params = Object.entries(run.params || {}).map(([k, v]) => `${k} = ${typeof v === 'string' ? v : JSON.stringify(v)}`);
  if (params.length) facts.push(['Params', params.join('\n')]);
  return el('section', { class: 'card run-head' },
    el('div', { class: 'title' }, el('h1', { class: 'mono' }, run.id), badge(run.state)),
    el('dl', {}, facts.map(([k, v]) => [el('dt', {}, k), el('dd', { class: k === 'Params' ? 'mono pre' : '' }, v)])));
}

function runActions(run) {
  const bar = el('div', { class: 'actions', id: 'actions' });
  const terminal = ['succeeded', 'failed', 'canceled', 'rolled_back'].includes(run.state);
  const gate = run.steps.find((s) => s.state === 'waiting' && s.waiting_for === 'approval');
  const undos = run.undos_left || [];
  const button = (label, id, role, handler, kind) => {
    if (!can(role)) return;
    bar.append(el('button', { type: 'button', id, class: kind || '', on: { click: handler } }, label));
  };
  if (gate) button('Approve ' + gate.id, 'approve', 'approver', () => confirmAction({
    title: `Approve ${gate.id}`,
    body: [gate.prompt ? `The gate asks: ${gate.prompt}` : 'The gate has no prompt.',
      'The run goes on with the steps after it. Your name and comment are journaled.'],
    ok: 'Approve', path: `/v1/runs/${run.id}/approve`, extra: { step: gate.id },
  }), 'primary');
  if (!terminal && !run.paused && run.state !== 'needs_attention') button('Pause', 'pause', 'operator', () => confirmAction({
    title: 'Pause the run', body: ['Its waits stop counting and no new step starts until it is resumed. A step running now runs to its end.'],
    ok: 'Pause', path: `/v1/runs/${run.id}/pause`,
  }));
  if (run.paused) button('Resume', 'resume', 'operator', () => confirmAction({
    title: 'Resume the run', body: ['Waits count again from where they stopped; the next step starts.'],
    ok: 'Resume', path: `/v1/runs/${run.id}/resume`,
  }));
  if (run.attention && run.attention.step) {
    const step = run.attention.step;
    const isGate = (run.steps.find((s) => s.id === step) || {}).action === 'approval';
    const role = isGate ? 'approver' : 'operator';
    button('Retry ' + step, 'retry', role, () => confirmAction({
      title: `Retry ${step}`, body: [`Step ${step} runs again (a new attempt).`].concat(isGate ? ['It is an approval gate: retrying it counts as approving it.'] : []),
      ok: 'Retry', path: `/v1/runs/${run.id}/steps/${encodeURIComponent(step)}/retry`, required: isGate,
    }));
    button('Skip ' + step, 'skip', role, () => confirmAction({
      title: `Skip ${step}`, body: [`Step ${step} is marked skipped and the run goes on without it.`].concat(isGate ? ['It is an approval gate: skipping it counts as approving it.'] : []),
      ok: 'Skip', path: `/v1/runs/${run.id}/steps/${encodeURIComponent(step)}/skip`, required: isGate,
    }));
  }
  if (!terminal) button('Cancel', 'cancel', 'operator', () => confirmAction({
    title: 'Cancel the run',
    body: undos.length
      ? [`These undos will NOT run: ${undos.join(', ')} — what those steps changed stays changed.`, 'To undo them too, use Roll back instead (or roll back the canceled run later).']
      : ['No completed step has an undo: nothing is left to undo.'],
    ok: 'Cancel the run', path: `/v1/runs/${run.id}/cancel`, extra: { rollback: false }, danger: true,
  }), 'danger');
  if (undos.length && run.state !== 'rolled_back') button('Roll back', 'rollback', 'operator', () => confirmAction({
    title: 'Roll back the run',
    body: [`These undos will run, newest first: ${undos.join(', ')}.`, 'The run ends as rolled back.'],
    ok: 'Roll back', path: `/v1/runs/${run.id}/rollback`, danger: true,
  }), 'danger');
  return bar;
}

function confirmAction(spec) {
  const dialog = document.getElementById('confirm');
  document.getElementById('confirm-title').textContent = spec.title;
  const body = clear(document.getElementById('confirm-body'));
  for (const line of spec.body) body.append(el('p', {}, line));
  const comment = document.getElementById('confirm-comment');
  comment.value = '';
  document.getElementById('confirm-required').textContent = spec.required ? '(required)' : '(journaled with your name)';
  const ok = document.getElementById('confirm-ok');
  ok.textContent = spec.ok;
  ok.className = spec.danger ? 'danger' : 'primary';
  const form = document.getElementById('confirm-form');
  form.onsubmit = async (event) => {
    event.preventDefault();
    const text = comment.value.trim();
    if (spec.required && !text) { comment.focus(); return; }
    try {
      await api('POST', spec.path, Object.assign({ comment: text || null }, spec.extra || {}));
      dialog.close();
      banner('');
      route();
    } catch (e) {
      dialog.close();
      banner(e.message);
    }
  };
  document.getElementById('confirm-cancel').onclick = () => dialog.close();
  dialog.showModal();
  comment.focus();
}

function stepNote(step) {
  const notes = [];
  if (step.waiting_for === 'approval') notes.push(`waiting for approval since ${when(step.waiting_since)}`);
  else if (step.state === 'waiting' && step.fire_at) notes.push(countdown(step.fire_at, 'fires in '));
  else if (step.fire_at && step.late_by_ms !== null && step.late_by_ms !== undefined) notes.push(`fired ${span(step.late_by_ms)} late`);
  if (step.polls) notes.push(`${step.polls} poll${step.polls === 1 ? '' : 's'}`);
  if (step.attempts > 1) notes.push(`attempt ${step.attempts}`);
  if (step.approval) notes.push(`approved by ${actorName(step.approval.by)}${step.approval.comment ? ': ' + step.approval.comment : ''}`);
  if (step.skipped_by) notes.push(`skipped by ${actorName(step.skipped_by)}`);
  if (step.undo) notes.push(`undo ${step.undo.state}${step.undo.error ? ': ' + step.undo.error : ''}`);
  if (step.error) notes.push(step.error);
  return notes;
}

function timeline(run) {
  const started = run.steps.map((s) => s.started_at).filter(Boolean).map((t) => new Date(t).getTime());
  const t0 = Math.min(new Date(run.created_at).getTime(), ...started);
  const t1 = Math.max(run.finished_at ? new Date(run.finished_at).getTime() : Date.now(), t0 + 1000);
  const rows = run.steps.map((step) => {
    const from = step.started_at ? new Date(step.started_at).getTime() : null;
    const to = step.finished_at ? new Date(step.finished_at).getTime() : (from ? Math.min(Date.now(), t1) : null);
    const bar = from === null ? el('div', { class: 'bar none' })
      : el('div', { class: 'bar state-' + step.state, style: null });
    if (from !== null) {
      bar.style.left = `${((from - t0) / (t1 - t0) * 100).toFixed(2)}%`;
      bar.style.width = `max(3px, ${((to - from) / (t1 - t0) * 100).toFixed(2)}%)`;
    }
    const notes = stepNote(step);
    return el('li', { class: 'step', dataset: { step: step.id, state: step.state } },
      el('div', { class: 'step-name' },
        el('button', { type: 'button', class: 'link mono', title: 'Show the log', on: { click: () => showLog(run, step.id, false, true) } }, step.id),
        el('span', { class: 'muted' }, ' ' + step.action)),
      el('div', { class: 'step-state' }, badge(step.state), el('span', { class: 'muted' }, step.started_at ? ' ' + span((to || Date.now()) - from) : '')),
      el('div', { class: 'track' }, bar),
      el('div', { class: 'step-note' }, notes.map((n) => el('span', {}, n))));
  });
  return el('section', { class: 'card' },
    el('div', { class: 'axis' }, el('h2', {}, 'Timeline'), el('span', { class: 'muted' }, `${when(new Date(t0).toISOString())} → ${run.finished_at ? when(run.finished_at) : 'now'} (${span(t1 - t0)})`)),
    el('ol', { class: 'timeline' }, rows));
}

function logPanel() {
  return el('section', { class: 'card', id: 'log-panel' },
    el('h2', {}, 'Step log'),
    el('p', { class: 'muted', id: 'log-title' }, 'Choose a step in the timeline.'),
    el('pre', { class: 'log', id: 'log' }));
}

// Shows a step's log and follows it while the step runs.
function showLog(run, step, undo, fresh) {
  if (app.log) clearTimeout(app.log.timer);
  const previous = app.log;
  app.log = { step: { step, undo }, offset: 0, text: '', timer: null };
  if (!fresh && previous && previous.step && previous.step.step === step) {
    app.log.offset = previous.offset; app.log.text = previous.text;
  }
  const poll = async () => {
    const title = document.getElementById('log-title');
    const pre = document.getElementById('log');
    if (!title || !pre || !app.log) return;
    title.textContent = `${step}${undo ? ' (undo)' : ''}`;
    try {
      const part = await api('GET', `/v1/runs/${run.id}/steps/${encodeURIComponent(step)}/log?offset=${app.log.offset}${undo ? '&undo=true' : ''}`);
      app.log.text += part.data;
      app.log.offset = part.next_offset;
      pre.textContent = app.log.text || '(no output)';
      if (!part.done) app.log.timer = setTimeout(poll, 1000);
    } catch (e) {
      pre.textContent = e.message;
    }
  };
  poll();
}

function auditTable(run) {
  return el('section', { class: 'card', id: 'audit' }, el('h2', {}, 'Audit trail'),
    run.audit.length ? el('div', { class: 'table-wrap' }, el('table', { class: 'audit' },
      el('thead', {}, el('tr', {}, el('th', {}, 'When'), el('th', {}, 'Who'), el('th', {}, 'Action'), el('th', {}, 'Step'), el('th', {}, 'Comment'))),
      el('tbody', {}, run.audit.map((entry) => el('tr', {},
        el('td', {}, when(entry.at)), el('td', {}, actorName(entry.actor)), el('td', {}, entry.action),
        el('td', { class: 'mono' }, entry.step || ''), el('td', {}, entry.comment || ''))))))
      : el('p', { class: 'muted' }, 'No operator action yet.'));
}

function notificationsTable(run) {
  const notes = run.notifications || [];
  if (!notes.length) return null;
  return el('section', { class: 'card', id: 'notifications' }, el('h2', {}, 'Notifications'),
    el('div', { class: 'table-wrap' }, el('table', { class: 'audit' },
      el('thead', {}, el('tr', {}, el('th', {}, 'Event'), el('th', {}, 'Sink'), el('th', {}, 'State'), el('th', {}, 'Tries'), el('th', {}, 'Detail'))),
      el('tbody', {}, notes.map((n) => el('tr', {},
        el('td', {}, n.event.replace('_', ' ')), el('td', {}, n.sink), el('td', {}, n.state), el('td', {}, n.attempts),
        el('td', {}, n.state === 'delivered' ? when(n.delivered_at) : (n.last_error || ''))))))));
}

// ----- start a run ------------------------------------------------------------------------------

async function startDialog() {
  const name = window.prompt('Runbook to start:', (app.runbooks || [])[0] || '');
  if (!name) return;
  const described = await api('GET', '/v1/runbooks/' + encodeURIComponent(name)).catch((e) => { banner(e.message); return null; });
  if (!described) return;
  const params = {};
  for (const param of described.params || []) {
    const shown = param.default === undefined || param.default === null ? ''
      : (typeof param.default === 'string' ? param.default : JSON.stringify(param.default));
    const value = window.prompt(`${param.name} (${param.type})${param.description ? ' — ' + param.description : ''}`, shown);
    if (value === null) return;
    if (value === '' || value === shown) continue;
    // Lists, numbers and booleans as JSON; anything else as the text typed.
    let typed = value;
    if (!['string', 'duration'].includes(param.type)) { try { typed = JSON.parse(value); } catch (_) { typed = value; } }
    params[param.name] = typed;
  }
  try {
    const run = await api('POST', '/v1/runs', { runbook: name, params });
    location.hash = '#/run/' + run.id;
  } catch (e) { banner(e.message); }
}

// ----- schedules --------------------------------------------------------------------------------

async function renderSchedules() {
  const root = main();
  const body = el('div', { id: 'schedules' }, el('p', { class: 'muted' }, 'Loading…'));
  root.append(el('div', { class: 'toolbar' }, el('h1', {}, 'Schedules')), body);
  const load = async () => {
    const schedules = (await api('GET', '/v1/schedules')).schedules;
    if (!schedules.length) { clear(body).append(el('p', { class: 'muted empty' }, 'No schedules.')); return; }
    clear(body).append(...schedules.map((s) => {
      const history = (s.history || []).slice(-5).reverse();
      const card = el('section', { class: 'card schedule', dataset: { schedule: s.name } },
        el('div', { class: 'title' }, el('h2', {}, s.name), s.paused ? badge('paused') : badge('running')),
        el('dl', {},
          el('dt', {}, 'Runbook'), el('dd', {}, s.runbook),
          el('dt', {}, 'When'), el('dd', { class: 'mono' }, `${s.cron} (${s.tz})`),
          el('dt', {}, 'Next'), el('dd', {}, s.paused ? 'paused' : (s.next_fire ? [when(s.next_fire), ' (', countdown(s.next_fire, 'in '), ')'] : 'never')),
          el('dt', {}, 'Overlap'), el('dd', {}, `${s.overlap}, catch-up ${s.catch_up}`)),
        history.length ? el('ul', { class: 'history' }, history.map((h) => el('li', {},
          `${when(h.at)} ${h.outcome}`, h.run ? [' ', el('a', { href: '#/run/' + h.run }, h.run.slice(0, 13))] : '', h.detail ? ` — ${h.detail}` : ''))) : null);
      if (can('admin')) {
        const verb = s.paused ? 'resume' : 'pause';
        card.append(el('div', { class: 'actions' }, el('button', { type: 'button', on: { click: async () => {
          try { await api('POST', `/v1/schedules/${encodeURIComponent(s.name)}/${verb}`, {}); load(); } catch (e) { banner(e.message); }
        } } }, verb === 'pause' ? 'Pause' : 'Resume')));
      }
      return card;
    }));
  };
  await load().catch((e) => banner(e.message));
  app.refresh = setInterval(() => load().catch((e) => banner(e.message)), 10000);
}

// ----- routing ----------------------------------------------------------------------------------

async function route() {
  stopRefresh();
  banner('');
  if (!app.me) {
    if (!app.token) { renderLogin(); return; }
    try { await whoami(); } catch (e) { if (!(e instanceof ApiError && e.status === 401)) banner(e.message); return; }
  }
  const hash = location.hash || '#/runs';
  const [path, search] = hash.slice(1).split('?');
  const query = new URLSearchParams(search || '');
  for (const link of document.querySelectorAll('[data-nav]')) link.classList.toggle('active', path.startsWith('/' + link.dataset.nav));
  try {
    if (path.startsWith('/run/')) await renderRun(decodeURIComponent(path.slice(5)));
    else if (path === '/schedules') await renderSchedules();
    else await renderRuns(query);
  } catch (e) { banner(e.message); }
}

window.addEventListener('hashchange', route);
document.addEventListener('DOMContentLoaded', () => {
  document.getElementById('logout').addEventListener('click', () => logout());
  route();
});
