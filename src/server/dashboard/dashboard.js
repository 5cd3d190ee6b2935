(function () {
  'use strict';
  // The dashboard of `dispatch_runner serve`. Everything shown comes from the API with the
  // token in an Authorization header; the run's events come from the SSE endpoint read as a
  // streamed fetch() body (EventSource cannot send headers, and the token must never sit in a
  // URL). Task data is hostile: it only ever reaches the page as textContent or attribute values.
  // Events change a model; the DOM is updated at most once per animation frame.

  var SVGNS = 'http://www.w3.org/2000/svg';
  var KEY = 'dispatch_runner.token';
  var MAX_SHOWN = 16 * 1024;
  var MAX_EDGES = 5000;
  var LANE_H = 16, LANE_GAP = 3, LEFT = 40, TOP = 18;
  var NODE_W = 150, NODE_H = 18, COL_W = 185, ROW_H = 24, MARGIN = 8;

  var $ = function (id) { return document.getElementById(id); };
  var token = sessionStorage.getItem(KEY) || '';
  var runsTimer = null;
  var runRows = {};
  var current = null; // the open run
  var frameAsked = false;
  var growing = null; // the timer that redraws running bars
  var width = -1; // of the timeline, in pixels; measured again on resize

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) { e.className = cls; }
    if (text !== undefined && text !== null) { e.textContent = String(text); }
    return e;
  }
  function svg(tag, attrs) {
    var e = document.createElementNS(SVGNS, tag);
    for (var k in attrs) { if (Object.prototype.hasOwnProperty.call(attrs, k)) { e.setAttribute(k, attrs[k]); } }
    return e;
  }
  function headers(extra) {
    var h = extra || {};
    if (token) { h.Authorization = 'Bearer ' + token; }
    return h;
  }
  function api(path, opts) {
    opts = opts || {};
    opts.headers = headers(opts.headers);
    opts.cache = 'no-store';
    return fetch(path, opts).then(function (res) {
      if (res.status === 401) { needLogin('The token was refused.'); throw new Error('unauthorized'); }
      return res;
    });
  }
  function human(ms) {
    if (ms === null || ms === undefined || isNaN(ms)) { return '-'; }
    if (ms < 10 && ms % 1 !== 0) { return ms.toFixed(1) + ' ms'; }
    if (ms < 1000) { return Math.round(ms) + ' ms'; }
    if (ms < 120000) { return (ms / 1000).toFixed(1) + ' s'; }
    return (ms / 60000).toFixed(1) + ' min';
  }
  function conn(text, bad) { var c = $('conn'); c.textContent = text; c.className = bad ? 'conn bad' : 'conn'; }

  // ---- token ----
  function needLogin(message) {
    stopAll();
    $('app').hidden = true;
    $('login').hidden = false;
    $('forget').hidden = true;
    $('login-error').textContent = message || '';
    $('token').focus();
  }
  $('login').addEventListener('submit', function (e) {
    e.preventDefault();
    token = $('token').value.trim();
    $('token').value = '';
    sessionStorage.setItem(KEY, token);
    start();
  });
  $('forget').addEventListener('click', function () {
    sessionStorage.removeItem(KEY);
    token = '';
    needLogin('');
  });
  function stopAll() {
    if (runsTimer) { clearTimeout(runsTimer); runsTimer = null; }
    if (current && current.ctrl) { current.ctrl.abort(); }
  }
  function start() {
    $('login').hidden = true;
    $('app').hidden = false;
    $('forget').hidden = !token;
    pollRuns();
    api('/v1/workers').then(function (r) { return r.json(); }).then(function (w) {
      if (w.available) { $('workers').hidden = false; renderWorkers(w.workers); }
    }).catch(function () {});
    var wanted = decodeURIComponent((location.hash || '').replace(/^#run=/, ''));
    if (wanted && /^[A-Za-z0-9-]{1,64}$/.test(wanted)) { openRun(wanted); }
  }

  // ---- the runs list (polled: cheap, and it survives reconnects without state) ----
  function pollRuns() {
    if (runsTimer) { clearTimeout(runsTimer); }
    api('/v1/runs').then(function (r) { return r.json(); }).then(function (doc) {
      conn('connected · ' + new Date().toLocaleTimeString());
      renderRuns(doc.runs || []);
      if (!$('workers').hidden) {
        return api('/v1/workers').then(function (r) { return r.json(); }).then(function (w) { renderWorkers(w.workers); });
      }
    }).catch(function (e) {
      if (e.message === 'unauthorized') { return; }
      conn('server unreachable; retrying', true);
    }).then(function () {
      if (!$('app').hidden) { runsTimer = setTimeout(pollRuns, 1000); }
    });
  }
  function renderRuns(runs) {
    var body = $('run-rows');
    $('no-runs').hidden = runs.length > 0;
    var seen = {};
    runs.forEach(function (r, i) {
      seen[r.run_id] = true;
      var row = runRows[r.run_id];
      if (!row) {
        row = el('tr');
        row.dataset.run = r.run_id;
        ['id', '', 'n', 'n', 'n', 'n', 'n', ''].forEach(function (c) { row.appendChild(el('td', c)); });
        row.addEventListener('click', function () { openRun(r.run_id); });
        runRows[r.run_id] = row;
      }
      if (body.children[i] !== row) { body.insertBefore(row, body.children[i] || null); }
      var s = r.summary || {};
      var state = r.state === 'finished' ? (r.status || 'finished') : r.state;
      var c = row.children;
      c[0].textContent = r.run_id;
      if (!c[1].firstChild) { c[1].appendChild(el('span', 'badge')); }
      c[1].firstChild.className = 'badge st-' + state;
      c[1].firstChild.textContent = state;
      c[2].textContent = s.total_tasks;
      c[3].textContent = s.successful;
      c[4].textContent = (s.failed || 0) + (s.timed_out || 0);
      c[5].textContent = s.running;
      c[6].textContent = human(r.duration_ms);
      c[7].textContent = (r.submitted_at || '').replace('T', ' ').replace(/\.\d+Z$/, 'Z');
      row.dataset.state = r.state;
      row.classList.toggle('selected', !!current && current.id === r.run_id);
    });
    Object.keys(runRows).forEach(function (id) {
      if (!seen[id]) { runRows[id].remove(); delete runRows[id]; }
    });
  }
  function renderWorkers(workers) {
    // The workers panel (serve --redis): one row per worker, one column per field it reports.
    var cols = [];
    (workers || []).forEach(function (w) { Object.keys(w).forEach(function (k) { if (cols.indexOf(k) < 0) { cols.push(k); } }); });
    var head = $('worker-head'); head.textContent = '';
    cols.forEach(function (k) { head.appendChild(el('th', '', k)); });
    var body = $('worker-rows'); body.textContent = '';
    (workers || []).forEach(function (w) {
      var tr = el('tr');
      cols.forEach(function (k) { var v = w[k]; tr.appendChild(el('td', '', v === undefined ? '' : (typeof v === 'object' ? JSON.stringify(v) : v))); });
      body.appendChild(tr);
    });
  }

  // ---- one run: model ----
  function newRun(id) {
    return {
      id: id, ctrl: null, lastId: null, tasks: [], byId: {}, attempts: [], lanes: 1,
      started: false, finished: false, status: null, cancelReason: null, summary: null,
      elapsed: 0, clockAt: performance.now(), domain: 10000,
      dirtyAll: true, dirtyTasks: {}, newAttempts: [], dirtyAttempts: [], ended: false,
      retryDelay: 500, selected: null
    };
  }
  function openRun(id) {
    if (current && current.ctrl) { current.ctrl.abort(); }
    current = newRun(id);
    history.replaceState(null, '', '#run=' + encodeURIComponent(id));
    Object.keys(runRows).forEach(function (k) { runRows[k].classList.toggle('selected', k === id); });
    $('run').hidden = false;
    $('run-title').textContent = id;
    $('run-notice').hidden = true;
    $('detail').textContent = '';
    $('detail').appendChild(el('p', 'muted', 'Click a task (in the list, the graph or the timeline) to see its attempts, output and error.'));
    ['timeline-svg', 'graph-svg', 'task-rows', 'cards'].forEach(function (k) { $(k).textContent = ''; });
    stream(current);
    schedule();
  }
  function task(run, id) { return run.byId[id]; }
  function apply(run, ev) {
    if (typeof ev.elapsed_ms === 'number' && ev.elapsed_ms >= run.elapsed) {
      run.elapsed = ev.elapsed_ms; run.clockAt = performance.now();
    }
    var t;
    switch (ev.event) {
      case 'run_started':
        run.started = true; run.tasks = []; run.byId = {}; run.attempts = []; run.dirtyAll = true;
        (ev.tasks || []).forEach(function (info, i) {
          var t = { id: info.task_id, agent: info.agent, desc: info.description || '', deps: info.dependencies || [],
                    status: 'pending', attempts: [], output: null, error: null, time: null, index: i };
          t.text = (t.id + ' ' + t.agent + ' ' + t.desc).toLowerCase();
          run.tasks.push(t); run.byId[t.id] = t;
        });
        break;
      case 'task_ready':
        if ((t = task(run, ev.task_id))) { t.status = 'ready'; mark(run, t); }
        break;
      case 'attempt_started':
        if ((t = task(run, ev.task_id))) {
          var a = { task: t, n: ev.attempt, worker: ev.worker || 0, start: ev.elapsed_ms, dur: null, outcome: null, error: null, rect: null };
          t.attempts.push(a); run.attempts.push(a); run.newAttempts.push(a);
          if (a.worker + 1 > run.lanes) { run.lanes = a.worker + 1; run.dirtyLanes = true; }
          t.status = 'running'; mark(run, t);
        }
        break;
      case 'attempt_finished':
        if ((t = task(run, ev.task_id))) {
          for (var i = t.attempts.length - 1; i >= 0; i--) {
            var at = t.attempts[i];
            if (at.n === ev.attempt && at.outcome === null) {
              at.dur = ev.duration_ms; at.outcome = ev.outcome; at.error = ev.error; run.dirtyAttempts.push(at); break;
            }
          }
          mark(run, t);
        }
        break;
      case 'retry_scheduled':
        if ((t = task(run, ev.task_id))) { t.status = 'retrying'; mark(run, t); }
        break;
      case 'task_finished':
        if ((t = task(run, ev.task_id))) {
          t.status = ev.status; t.output = ev.output; t.error = ev.error;
          if (t.attempts.length) { t.time = ev.elapsed_ms - t.attempts[0].start; }
          mark(run, t);
        }
        break;
      case 'run_cancelled':
        run.cancelReason = ev.reason;
        break;
      case 'run_finished':
        run.finished = true; run.status = ev.status; run.summary = ev.summary;
        run.attempts.forEach(function (a) { if (a.outcome === null) { a.outcome = 'interrupted'; a.dur = ev.elapsed_ms - a.start; run.dirtyAttempts.push(a); } });
        break;
    }
  }
  function mark(run, t) { run.dirtyTasks[t.id] = t; }

  // ---- one run: the event stream ----
  function stream(run) {
    var ctrl = new AbortController();
    run.ctrl = ctrl;
    var h = {};
    if (run.lastId !== null) { h['Last-Event-ID'] = String(run.lastId); }
    conn('following ' + run.id);
    api('/v1/runs/' + encodeURIComponent(run.id) + '/events', { headers: h, signal: ctrl.signal }).then(function (res) {
      if (res.status === 204) { run.ended = true; schedule(); return null; }
      if (res.status === 404) { notice(run, 'No such run on this server.'); run.ended = true; return null; }
      if (!res.ok || !res.body) { throw new Error('HTTP ' + res.status); }
      var reader = res.body.getReader();
      var decoder = new TextDecoder();
      var buf = '';
      function pump() {
        return reader.read().then(function (r) {
          if (r.done) { return 'done'; }
          var p0 = performance.now();
          buf += decoder.decode(r.value, { stream: true });
          var cut, from = 0;
          while ((cut = buf.indexOf('\n\n', from)) >= 0) {
            block(run, buf.slice(from, cut));
            from = cut + 2;
          }
          buf = buf.slice(from);
          stats.maxParseMs = Math.max(stats.maxParseMs, performance.now() - p0);
          schedule();
          return pump();
        });
      }
      return pump();
    }).then(function (how) {
      if (how !== 'done' || current !== run) { return; }
      run.retryDelay = 500;
      // The stream ends when the run does; ask again from the last id to be sure nothing is
      // left (a finished run answers 204).
      if (!run.ended) { stream(run); }
    }).catch(function (e) {
      if (ctrl.signal.aborted || current !== run || e.message === 'unauthorized') { return; }
      conn('stream interrupted; resuming after event ' + run.lastId, true);
      setTimeout(function () { if (current === run) { stream(run); } }, run.retryDelay);
      run.retryDelay = Math.min(run.retryDelay * 2, 10000);
    });
  }
  function block(run, text) {
    var id = null, kind = 'message', data = [];
    text.split('\n').forEach(function (line) {
      if (!line || line.charAt(0) === ':') { return; }
      var i = line.indexOf(':');
      var field = i < 0 ? line : line.slice(0, i);
      var value = i < 0 ? '' : line.slice(i + 1).replace(/^ /, '');
      if (field === 'id') { id = value; } else if (field === 'event') { kind = value; } else if (field === 'data') { data.push(value); }
    });
    if (!data.length) { return; }
    if (id !== null) { run.lastId = Number(id); }
    if (kind === 'dropped') {
      var d = JSON.parse(data.join('\n'));
      notice(run, 'Events ' + d.from + ' to ' + d.to + ' of this run were dropped from the server\'s buffer before this page read them: statuses are fetched again, but the timeline misses those attempts (the trace file has everything).');
      resync(run);
      return;
    }
    apply(run, JSON.parse(data.join('\n')));
  }
  function notice(run, text) { if (current === run) { var n = $('run-notice'); n.textContent = text; n.hidden = false; } }
  function resync(run) {
    api('/v1/runs/' + encodeURIComponent(run.id)).then(function (r) { return r.json(); }).then(function (doc) {
      (doc.tasks || []).forEach(function (x) {
        var t = task(run, x.task_id);
        if (t && typeof x.status === 'string') { t.status = x.status; mark(run, t); }
      });
      schedule();
    }).catch(function () {});
  }

  // ---- cancel ----
  $('cancel').addEventListener('click', function () {
    var b = $('cancel');
    if (!current) { return; }
    if (!b.classList.contains('armed')) {
      b.classList.add('armed'); b.textContent = 'Click again to cancel';
      setTimeout(function () { b.classList.remove('armed'); if (!b.disabled) { b.textContent = 'Cancel run'; } }, 4000);
      return;
    }
    b.classList.remove('armed'); b.disabled = true; b.textContent = 'Cancelling…';
    var run = current;
    api('/v1/runs/' + encodeURIComponent(run.id) + '?result=compact', { method: 'DELETE' }).then(function (r) {
      if (r.status === 409) { notice(run, 'The run had already finished.'); }
    }).catch(function () {}).then(function () { pollRuns(); });
  });

  // ---- rendering, once per frame ----
  function schedule() {
    if (!frameAsked) { frameAsked = true; requestAnimationFrame(frame); }
  }
  // The page's own cost, for tests and the curious: the longest frame, and the longest build.
  var stats = window.__dashboard = { maxFrameMs: 0, maxBuildMs: 0, maxParseMs: 0 };
  function frame() {
    var t0 = performance.now();
    render();
    stats.maxFrameMs = Math.max(stats.maxFrameMs, performance.now() - t0);
  }
  function render() {
    frameAsked = false;
    var run = current;
    if (!run) { return; }
    // Read before anything changes: reading layout after DOM writes would force a synchronous
    // layout of the whole page (a second, for 1,000 new rows).
    width = Math.max(600, $('timeline-wrap').clientWidth - 2);
    if (run.dirtyAll && run.started) { var b0 = performance.now(); build(run); stats.maxBuildMs = Math.max(stats.maxBuildMs, performance.now() - b0); }
    var dirty = run.dirtyTasks; run.dirtyTasks = {};
    var status = $('status-filter').value;
    Object.keys(dirty).forEach(function (id) { updateTask(run, dirty[id], status); });
    if (Object.keys(dirty).length) { countShown(run); }
    timeline(run);
    header(run);
    if (run.selected && dirty[run.selected.id]) { detail(run, run.selected); }
    // Running bars grow ten times a second: smooth enough, and cheap for a tab left open.
    if (!run.finished && !run.ended && !growing && run.attempts.some(function (a) { return a.outcome === null; })) {
      growing = setTimeout(function () { growing = null; schedule(); }, 100);
    }
  }
  function now(run) {
    return run.finished ? run.elapsed : run.elapsed + (performance.now() - run.clockAt);
  }
  function header(run) {
    var state = run.finished ? run.status : (run.cancelReason ? 'cancelling' : (run.ended ? 'ended' : 'running'));
    var b = $('run-state'); b.textContent = state; b.className = 'badge st-' + state;
    var cancel = $('cancel');
    cancel.hidden = run.finished || run.ended;
    if (cancel.hidden) { cancel.disabled = false; cancel.textContent = 'Cancel run'; }
    var n = { pending: 0, ready: 0, running: 0, retrying: 0, success: 0, error: 0, timeout: 0, skipped: 0, cancelled: 0 };
    run.tasks.forEach(function (t) { n[t.status] = (n[t.status] || 0) + 1; });
    var cards = [['tasks', run.tasks.length, ''], ['succeeded', n.success, 'c-success'], ['failed', n.error, 'c-error'],
                 ['timed out', n.timeout, 'c-timeout'], ['skipped', n.skipped, ''], ['cancelled', n.cancelled, ''],
                 ['running', n.running + n.retrying, 'c-running'], ['waiting', n.pending + n.ready, ''],
                 ['attempts', run.attempts.length, ''], ['wall time', human(run.finished && run.summary ? run.summary.total_time_ms : now(run)), '']];
    var box = $('cards');
    if (box.children.length !== cards.length) {
      box.textContent = '';
      cards.forEach(function () { var c = el('div', 'card'); c.appendChild(el('div', 'v')); c.appendChild(el('div', 'l')); box.appendChild(c); });
    }
    cards.forEach(function (c, i) {
      var d = box.children[i]; d.className = 'card ' + c[2]; d.dataset.card = c[0];
      d.firstChild.textContent = c[1]; d.lastChild.textContent = c[0];
    });
  }

  // Task list and graph: built once per run_started, then updated per changed task.
  function build(run) {
    run.dirtyAll = false;
    var rows = $('task-rows'); rows.textContent = '';
    var frag = document.createDocumentFragment();
    run.tasks.forEach(function (t) {
      var tr = el('div', 'trow');
      tr.dataset.task = t.id;
      tr.appendChild(el('span', 'id', t.id));
      tr.appendChild(el('span', 'muted', t.agent));
      var st = el('span'); st.appendChild(el('span', 'badge')); tr.appendChild(st);
      tr.appendChild(el('span', 'n')); tr.appendChild(el('span', 'n')); tr.appendChild(el('span', 'err'));
      t.row = tr;
      frag.appendChild(tr);
    });
    rows.appendChild(frag);
    graph(run);
    run.tasks.forEach(function (t) { run.dirtyTasks[t.id] = t; });
    run.lanesDrawn = 0;
  }
  function visible(t, q, status) {
    var ok = status === 'all' || t.status === status ||
      (status === 'unfinished' && ['pending', 'ready', 'running', 'retrying'].indexOf(t.status) >= 0) ||
      (status === 'failed' && ['error', 'timeout', 'skipped', 'cancelled'].indexOf(t.status) >= 0);
    return ok && (!q || t.text.indexOf(q) >= 0);
  }
  function updateTask(run, t, status) {
    if (!t.row) { return; }
    var c = t.row.children;
    c[2].firstChild.className = 'badge s-' + t.status;
    c[2].firstChild.textContent = t.status;
    c[3].textContent = t.attempts.length || '';
    c[4].textContent = t.time === null ? '' : human(t.time);
    c[5].textContent = t.error ? firstLine(t.error.message || t.error.kind || '') : '';
    t.row.dataset.status = t.status;
    t.row.hidden = !visible(t, $('filter').value.trim().toLowerCase(), status);
    if (t.node) { t.node.setAttribute('class', 'node s-' + t.status + (run.selected === t ? ' selected' : '')); }
  }
  function firstLine(s) { s = String(s); var i = s.indexOf('\n'); return i < 0 ? s : s.slice(0, i) + ' …'; }
  function refilter() {
    var run = current; if (!run) { return; }
    var q = $('filter').value.trim().toLowerCase(), status = $('status-filter').value;
    run.tasks.forEach(function (t) { if (t.row) { t.row.hidden = !visible(t, q, status); } });
    countShown(run);
  }
  function countShown(run) {
    var n = 0;
    run.tasks.forEach(function (t) { if (t.row && !t.row.hidden) { n++; } });
    $('shown').textContent = n + ' of ' + run.tasks.length + ' tasks';
  }
  $('filter').addEventListener('input', refilter);
  $('status-filter').addEventListener('change', refilter);

  function graph(run) {
    var g = $('graph-svg'); g.textContent = '';
    var level = {}, order = [], byLevel = [];
    // Longest path from a root, without recursion (a chain of 1,000 tasks is fine).
    var pending = {}, dependants = {};
    run.tasks.forEach(function (t) {
      pending[t.id] = 0;
      t.deps.forEach(function (d) { if (run.byId[d]) { pending[t.id]++; (dependants[d] = dependants[d] || []).push(t); } });
    });
    var queue = run.tasks.filter(function (t) { return pending[t.id] === 0; });
    queue.forEach(function (t) { level[t.id] = 0; });
    while (queue.length) {
      var t = queue.shift(); order.push(t);
      (dependants[t.id] || []).forEach(function (d) {
        level[d.id] = Math.max(level[d.id] || 0, level[t.id] + 1);
        if (--pending[d.id] === 0) { queue.push(d); }
      });
    }
    run.tasks.forEach(function (t) { if (level[t.id] === undefined) { level[t.id] = 0; } });
    run.tasks.forEach(function (t) { var l = level[t.id]; (byLevel[l] = byLevel[l] || []).push(t); });
    var rows = 0;
    byLevel.forEach(function (ts, l) {
      ts.forEach(function (t, r) { t.gx = MARGIN + l * COL_W; t.gy = MARGIN + r * ROW_H; });
      rows = Math.max(rows, ts.length);
    });
    g.setAttribute('width', MARGIN * 2 + Math.max(1, byLevel.length) * COL_W);
    g.setAttribute('height', MARGIN * 2 + Math.max(1, rows) * ROW_H);
    var edges = svg('g', { 'class': 'edges' });
    var count = 0;
    run.tasks.forEach(function (t) { count += t.deps.length; });
    if (count <= MAX_EDGES) {
      run.tasks.forEach(function (t) {
        t.deps.forEach(function (d) {
          var s = run.byId[d]; if (!s) { return; }
          var x1 = s.gx + NODE_W, y1 = s.gy + NODE_H / 2, x2 = t.gx, y2 = t.gy + NODE_H / 2, mx = (x1 + x2) / 2;
          edges.appendChild(svg('path', { d: 'M' + x1 + ',' + y1 + ' C' + mx + ',' + y1 + ' ' + mx + ',' + y2 + ' ' + x2 + ',' + y2, 'data-from': d, 'data-to': t.id }));
        });
      });
    }
    g.appendChild(edges);
    var nodes = svg('g', {});
    run.tasks.forEach(function (t) {
      var n = svg('g', { 'class': 'node s-' + t.status, 'data-task': t.id, transform: 'translate(' + t.gx + ',' + t.gy + ')' });
      n.appendChild(svg('rect', { width: NODE_W, height: NODE_H, rx: 4 }));
      var label = svg('text', { x: 6, y: 13 });
      label.textContent = t.id.length > 22 ? t.id.slice(0, 21) + '…' : t.id;
      n.appendChild(label);
      var title = svg('title', {}); title.textContent = t.id + ' (' + t.agent + ')' + (t.desc ? ': ' + t.desc : '');
      n.appendChild(title);
      t.node = n;
      nodes.appendChild(n);
    });
    g.appendChild(nodes);
  }

  // The timeline: one lane per worker slot, one bar per attempt, growing while it runs. The
  // scale only changes when the run outgrows it (then every bar moves once).
  function timeline(run) {
    var g = $('timeline-svg');
    var t = now(run);
    var rescale = false;
    if (run.lanesDrawn !== run.lanes || run.width !== width) { rescale = true; }
    while (t > run.domain * 0.98) { run.domain *= 1.5; rescale = true; }
    if (run.finished && run.domain > Math.max(t, 1) * 1.05) { run.domain = Math.max(t, 1) * 1.02; rescale = true; }
    var px = (width - LEFT - 10) / run.domain;
    if (rescale) {
      run.width = width; run.lanesDrawn = run.lanes;
      g.textContent = '';
      g.setAttribute('width', width);
      g.setAttribute('height', TOP + run.lanes * (LANE_H + LANE_GAP) + 4);
      var grid = svg('g', {});
      var step = niceStep(run.domain / 8);
      for (var s = 0; s <= run.domain; s += step) {
        var x = LEFT + s * px;
        grid.appendChild(svg('line', { 'class': 'tick', x1: x, x2: x, y1: TOP - 4, y2: TOP + run.lanes * (LANE_H + LANE_GAP) }));
        if (x < width - 50) { var label = svg('text', { 'class': 'axis', x: x + 2, y: TOP - 6 }); label.textContent = human(s); grid.appendChild(label); }
      }
      for (var l = 0; l < run.lanes; l++) {
        var y = TOP + l * (LANE_H + LANE_GAP);
        grid.appendChild(svg('rect', { 'class': 'lane', x: LEFT, y: y, width: width - LEFT - 10, height: LANE_H }));
        var ll = svg('text', { 'class': 'axis', x: 4, y: y + 12 }); ll.textContent = 'w' + l; grid.appendChild(ll);
      }
      g.appendChild(grid);
      run.bars = svg('g', {});
      g.appendChild(run.bars);
      run.attempts.forEach(function (a) { a.rect = null; });
      run.newAttempts = run.attempts.slice();
      run.dirtyAttempts = [];
    }
    run.newAttempts.forEach(function (a) {
      a.rect = svg('rect', { 'data-task': a.task.id, 'data-attempt': a.n, height: LANE_H, y: TOP + a.worker * (LANE_H + LANE_GAP) });
      a.rect.appendChild(svg('title', {}));
      run.bars.appendChild(a.rect);
      run.dirtyAttempts.push(a);
    });
    run.newAttempts = [];
    var seen = new Set();
    run.dirtyAttempts.forEach(function (a) {
      if (seen.has(a) || !a.rect) { return; }
      seen.add(a);
      bar(a, px, t);
    });
    run.dirtyAttempts = [];
    run.attempts.forEach(function (a) { if (a.outcome === null && a.rect && !seen.has(a)) { bar(a, px, t); } });
  }
  function bar(a, px, t) {
    var dur = a.outcome === null ? Math.max(0, t - a.start) : a.dur;
    a.rect.setAttribute('x', LEFT + a.start * px);
    a.rect.setAttribute('width', Math.max(2, dur * px));
    a.rect.setAttribute('class', 'bar o-' + (a.outcome || 'running'));
    a.rect.firstChild.textContent = a.task.id + ' #' + a.n + ' · ' + (a.outcome || 'running') + ' · ' + human(dur);
  }
  function niceStep(raw) {
    raw = Math.max(raw, 1);
    var pow = Math.pow(10, Math.floor(Math.log10(raw)));
    var m = [1, 2, 5, 10].find(function (k) { return k * pow >= raw; });
    return m * pow;
  }

  // ---- a task's details ----
  document.addEventListener('click', function (e) {
    var target = e.target.closest ? e.target.closest('[data-task]') : null;
    if (!target || !current || $('run').contains(target) === false) { return; }
    var t = current.byId[target.dataset.task];
    if (!t) { return; }
    var before = current.selected;
    current.selected = t;
    if (before && before.node) { mark(current, before); }
    mark(current, t);
    if (before && before.row) { before.row.classList.remove('selected'); }
    if (t.row) { t.row.classList.add('selected'); }
    detail(current, t);
    schedule();
  });
  function detail(run, t) {
    var d = $('detail'); d.textContent = '';
    var h = el('h3'); h.appendChild(el('span', 'id', t.id)); h.appendChild(document.createTextNode(' '));
    h.appendChild(el('span', 'badge s-' + t.status, t.status)); d.appendChild(h);
    d.dataset.task = t.id;
    var meta = el('p', 'muted', t.agent + (t.desc ? ' · ' + t.desc : '') + (t.deps.length ? ' · after ' + t.deps.join(', ') : ''));
    d.appendChild(meta);
    if (t.attempts.length) {
      d.appendChild(el('h4', '', 'Attempts'));
      var table = el('table', 'attempts');
      var head = el('tr'); ['#', 'worker', 'outcome', 'duration', 'error'].forEach(function (k) { head.appendChild(el('th', '', k)); });
      table.appendChild(head);
      t.attempts.forEach(function (a) {
        var tr = el('tr');
        tr.appendChild(el('td', '', a.n)); tr.appendChild(el('td', '', 'w' + a.worker));
        tr.appendChild(el('td', 'o-text-' + (a.outcome || 'running'), a.outcome || 'running'));
        tr.appendChild(el('td', '', a.outcome === null ? 'running' : human(a.dur)));
        var err = el('td'); if (a.error) { err.appendChild(el('pre', 'error', errorText(a.error))); } tr.appendChild(err);
        table.appendChild(tr);
      });
      d.appendChild(table);
    }
    if (t.error) { d.appendChild(el('h4', '', 'Error')); d.appendChild(el('pre', 'error', errorText(t.error))); }
    if (t.output !== null && t.output !== undefined) { output(d, t.output); }
  }
  function errorText(e) {
    var rest = {}, any = false;
    Object.keys(e).forEach(function (k) { if (k !== 'kind' && k !== 'message') { rest[k] = e[k]; any = true; } });
    return (e.kind ? '[' + e.kind + '] ' : '') + (e.message || '') + (any ? '\n' + shown(rest) : '');
  }
  function output(d, out) {
    if (typeof out === 'string') { d.appendChild(el('h4', '', 'output')); d.appendChild(pre(tail(out), 'output')); return; }
    if (!out || typeof out !== 'object' || Array.isArray(out)) { d.appendChild(el('h4', '', 'output')); d.appendChild(pre(shown(out), 'output')); return; }
    var rest = {}, any = false;
    Object.keys(out).forEach(function (k) {
      if (typeof out[k] === 'string' && (out[k].indexOf('\n') >= 0 || k === 'stdout' || k === 'stderr')) {
        d.appendChild(el('h4', '', 'output.' + k)); d.appendChild(pre(tail(out[k]), k));
      } else { rest[k] = out[k]; any = true; }
    });
    if (any) { d.appendChild(el('h4', '', 'output')); d.appendChild(pre(shown(rest), 'output')); }
  }
  function pre(text, field) { var p = el('pre', '', text); p.dataset.field = field; return p; }
  function tail(s) { return s.length <= MAX_SHOWN ? s : '[… ' + (s.length - MAX_SHOWN) + ' earlier characters; the trace has everything]\n' + s.slice(s.length - MAX_SHOWN); }
  function shown(v) { var s = JSON.stringify(v, null, 2); if (s === undefined) { s = String(v); } return s.length <= MAX_SHOWN ? s : s.slice(0, MAX_SHOWN) + '\n[… the trace has everything]'; }

  window.addEventListener('resize', function () { if (current) { current.width = -1; width = -1; schedule(); } });

  if (document.body.dataset.auth === 'required' && !token) { needLogin(''); } else { start(); }
})();
