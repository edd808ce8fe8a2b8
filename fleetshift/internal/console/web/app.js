// fleetshift web console: a small single-page app over the operator HTTP API. Hash routes:
// #/rollouts, #/rollouts/<id>, #/fleet, #/policies, #/policies/new, #/policies/<id>, #/notifications,
// #/notifications/<id>.
// Live updates come from GET /api/v1/events/stream (Server-Sent Events); the token is kept in
// sessionStorage and sent as a bearer token (and as ?token= to the event stream, which EventSource needs).
'use strict';
(() => {
  const $ = (sel, root = document) => root.querySelector(sel);
  const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));
  const main = $('#main');
  const esc = (v) => String(v ?? '').replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));
  const short = (id) => (String(id).length > 12 ? String(id).slice(0, 8) + '…' : String(id));
  const pct = (x, digits = 1) => (x * 100).toFixed(digits).replace(/\.0+$/, '') + '%';

  // ---- session -----------------------------------------------------------------------------------
  const session = {
    get token() { return sessionStorage.getItem('fleetshift.token') || ''; },
    get scope() { return sessionStorage.getItem('fleetshift.scope') || ''; },
    get name() { return sessionStorage.getItem('fleetshift.name') || ''; },
    set(token, who) {
      sessionStorage.setItem('fleetshift.token', token);
      sessionStorage.setItem('fleetshift.scope', who.scope);
      sessionStorage.setItem('fleetshift.name', who.name);
    },
    clear() { ['token', 'scope', 'name'].forEach((k) => sessionStorage.removeItem('fleetshift.' + k)); },
    canOperate() { return this.scope === 'operate' || this.scope === 'admin'; },
    canAdmin() { return this.scope === 'admin'; },
  };

  class APIError extends Error {
    constructor(status, body, fallback) {
      const e = (body && body.error) || {};
      super(e.message || fallback || ('HTTP ' + status));
      this.status = status;
      this.code = e.code || '';
      this.field = e.field || '';
    }
  }

  async function api(method, path, body, token = session.token) {
    const init = { method, headers: { Authorization: 'Bearer ' + token } };
    if (body !== undefined) {
      init.headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    const res = await fetch(path, init);
    let data = null;
    try { data = await res.json(); } catch (_) { /* empty or not JSON */ }
    if (!res.ok) {
      if (res.status === 401 && token === session.token && session.token) {
        signOut('Your token is no longer accepted: sign in again.');
      }
      throw new APIError(res.status, data, res.statusText);
    }
    return data;
  }

  // ---- time --------------------------------------------------------------------------------------
  const fmtTime = (t) => (t ? new Date(t).toLocaleTimeString([], { hour12: false }) : '');
  const fmtDate = (t) => (t ? new Date(t).toLocaleString([], { hour12: false }) : '—');
  function ago(t) {
    if (!t) return 'never';
    const s = Math.max(0, Math.round((Date.now() - new Date(t).getTime()) / 1000));
    if (s < 60) return s + ' s ago';
    if (s < 3600) return Math.round(s / 60) + ' min ago';
    if (s < 86400) return Math.round(s / 3600) + ' h ago';
    return Math.round(s / 86400) + ' d ago';
  }

  // ---- live events -------------------------------------------------------------------------------
  // live opens the event stream (of one rollout, or all) and calls onEvent for each event and onOpen each
  // time the stream (re)connects; it returns a function that closes it.
  function live(rollout, onEvent, onOpen) {
    let url = '/api/v1/events/stream?token=' + encodeURIComponent(session.token);
    if (rollout) url += '&rollout=' + encodeURIComponent(rollout);
    const es = new EventSource(url);
    const ind = $('#live');
    ind.hidden = false;
    es.onopen = () => { ind.classList.add('on'); $('#live-text').textContent = 'live'; if (onOpen) onOpen(); };
    es.onerror = () => { ind.classList.remove('on'); $('#live-text').textContent = 'reconnecting'; };
    es.onmessage = (m) => { try { onEvent(normEvent(JSON.parse(m.data))); } catch (_) { /* ignore */ } };
    return () => { es.close(); ind.classList.remove('on'); ind.hidden = true; $('#live-text').textContent = 'connecting'; };
  }

  // normEvent gives stream events (streams.EventV1) and listed events (rollout_events rows) one shape.
  const normEvent = (e) => ({
    id: e.event_id || e.id, type: e.event_type || e.type, rollout: e.rollout_id, device: e.device_uuid,
    message: e.message, actor: e.actor, data: e.data, at: e.timestamp,
  });

  // refresher runs fn at most once per `ms`, and once more after a call that came in while it ran.
  function refresher(fn, ms = 200) {
    let timer = null; let running = false; let again = false;
    const run = async () => {
      timer = null;
      if (running) { again = true; return; }
      running = true;
      try { await fn(); } catch (e) { console.warn(e); } finally {
        running = false;
        if (again) { again = false; schedule(); }
      }
    };
    const schedule = () => { if (!timer) timer = setTimeout(run, ms); };
    return schedule;
  }

  // ---- confirmation ------------------------------------------------------------------------------
  function confirmDialog(title, text, confirmLabel, danger) {
    const back = $('#modal');
    $('#modal-title').textContent = title;
    $('#modal-text').textContent = text;
    const ok = $('#modal-confirm');
    ok.textContent = confirmLabel;
    ok.className = 'btn ' + (danger ? 'primary danger-fill' : 'primary');
    back.hidden = false;
    ok.focus();
    return new Promise((resolve) => {
      const done = (v) => { back.hidden = true; ok.onclick = null; $('#modal-cancel').onclick = null; document.onkeydown = null; resolve(v); };
      ok.onclick = () => done(true);
      $('#modal-cancel').onclick = () => done(false);
      document.onkeydown = (e) => { if (e.key === 'Escape') done(false); };
    });
  }

  // ---- status helpers ----------------------------------------------------------------------------
  const label = (s) => String(s || '').replace(/_/g, ' ');
  const pill = (s, id) => `<span class="pill ${esc(s)}"${id ? ` id="${id}"` : ''} data-status="${esc(s)}">${esc(label(s))}</span>`;
  const ACTIVE = ['pending', 'scheduled', 'in_progress', 'paused', 'awaiting_approval'];

  // groups folds a batch's per-status device counts into the bar's segments.
  function groups(st) {
    const n = (k) => Number(st[k] || 0);
    return {
      completed: n('completed'), running: n('scheduled') + n('updating') + n('health_checking'),
      failed: n('failed'), rolledBack: n('rolled_back'), skipped: n('skipped'), pending: n('pending'),
    };
  }
  function barHTML(batch, size, big) {
    const g = groups(batch ? batch.statuses || {} : {});
    const total = Math.max(1, size || (batch && batch.total) || 0);
    const seg = (cls, v, what) => (v > 0 ? `<span class="${cls}" style="width:${(100 * v) / total}%" title="${v} ${what}"></span>` : '');
    const title = `${g.completed} completed, ${g.running} in progress, ${g.failed} failed, ${g.rolledBack} rolled back, ${g.pending} pending`;
    return `<div class="bar${big ? ' big' : ''}" title="${esc(title)}">${seg('s-ok', g.completed, 'completed')}${seg('s-run', g.running, 'in progress')}` +
      `${seg('s-fail', g.failed, 'failed')}${seg('s-back', g.rolledBack, 'rolled back')}${seg('s-skip', g.skipped, 'skipped')}</div>`;
  }
  function batchBars(r, detail) {
    const sizes = r.batch_sizes || [];
    const byNum = {};
    ((detail && detail.batches) || []).forEach((b) => { byNum[b.batch] = b; });
    if (!sizes.length) return '<span class="sub">no devices</span>';
    return `<div class="bars">${sizes.map((s, i) => barHTML(byNum[i + 1], s)).join('')}</div>`;
  }
  const threshold = (r) => Number((r.policy && r.policy.max_failure_rate) ?? 0);
  function rateHTML(r) {
    const rate = Number(r.failure_rate || 0);
    const thr = threshold(r);
    const scale = Math.max(thr * 1.5, rate, 0.05);
    const cls = thr > 0 && rate > thr ? 'over' : (thr > 0 && rate > thr * 0.6 ? 'warn' : '');
    const auto = r.policy && r.policy.auto_rollback_enabled;
    return `<div class="rate">${pct(rate)} <span class="of">/ ${thr > 0 ? pct(thr) : '—'}${auto ? '' : ' (no auto rollback)'}</span></div>` +
      `<div class="meter"><div class="fill ${cls}" style="width:${Math.min(100, (100 * rate) / scale)}%"></div>` +
      (thr > 0 ? `<div class="mark" style="left:${(100 * thr) / scale}%" title="threshold ${pct(thr)}"></div>` : '') + '</div>';
  }
  const LEGEND = '<div class="legend"><span><i class="s-ok"></i>completed</span><span><i class="s-run"></i>in progress</span>' +
    '<span><i class="s-fail"></i>failed</span><span><i class="s-back"></i>rolled back</span><span><i class="s-pend"></i>pending</span></div>';

  // ---- pages -------------------------------------------------------------------------------------
  let current = null; // the page on screen: { destroy() }

  function signInPage(message) {
    $('#topbar').hidden = true;
    main.innerHTML = `<div class="signin"><div class="panel">
      <h1><span class="logo" aria-hidden="true"></span>fleetshift console</h1>
      <div class="sub">Sign in with an API token (read, operate or admin). It is kept in this tab only.</div>
      <form id="signin-form" autocomplete="off">
        <input type="password" id="token" placeholder="API token" aria-label="API token" required>
        <button class="btn primary" id="signin-btn" type="submit">Sign in</button>
      </form>
      <div class="msg error" id="signin-error"${message ? '' : ' hidden'}>${esc(message)}</div>
    </div></div>`;
    $('#signin-form').onsubmit = async (ev) => {
      ev.preventDefault();
      const token = $('#token').value.trim();
      try {
        const who = await api('GET', '/api/v1/whoami', undefined, token);
        session.set(token, who);
        if (!location.hash || location.hash === '#/signin') location.hash = '#/rollouts';
        else route();
      } catch (e) {
        const box = $('#signin-error');
        box.hidden = false;
        box.textContent = e.status === 401 ? 'That token is not valid (unknown or revoked).' : e.message;
      }
    };
    $('#token').focus();
    return { destroy() {} };
  }

  function signOut(message) {
    if (current) { current.destroy(); current = null; }
    session.clear();
    $('#who-name').textContent = '';
    $('#who-scope').textContent = '';
    current = signInPage(message);
  }

  // Rollouts ------------------------------------------------------------------------------------
  function rolloutsPage() {
    main.innerHTML = `<div class="page-head"><h1>Rollouts</h1><span class="spacer"></span>
      <div class="filters"><label class="sub" for="f-status">Status</label>
      <select id="f-status"><option value="">all</option><option value="${ACTIVE.join(',')}">active</option>
      ${['in_progress', 'paused', 'awaiting_approval', 'pending', 'scheduled', 'completed', 'failed', 'cancelled', 'rolled_back', 'superseded']
    .map((s) => `<option value="${s}">${label(s)}</option>`).join('')}</select></div></div>
      <div class="panel flush"><table><thead><tr><th>Image</th><th>Status</th><th>Strategy</th><th>Batches</th>
      <th class="num">Devices</th><th>Failure rate / threshold</th><th>Created</th></tr></thead>
      <tbody id="rollouts-body"><tr><td colspan="7" class="empty">Loading…</td></tr></tbody></table></div>
      <div>${LEGEND}</div>`;
    const details = {}; // rollout id -> GET /rollouts/:id (batches)
    let list = [];
    let stale = new Set();
    const render = () => {
      const body = $('#rollouts-body');
      if (!body) return;
      if (!list.length) { body.innerHTML = '<tr><td colspan="7" class="empty">No rollouts yet. A registry push that matches a policy starts one.</td></tr>'; return; }
      body.innerHTML = list.map((r0) => {
        const r = details[r0.rollout_id] || r0;
        return `<tr class="click" data-rollout="${esc(r.rollout_id)}">
          <td><div class="mono"><b>${esc(r.image_name)}:${esc(r.new_tag)}</b></div><div class="sub">from ${esc(r.old_tag || '—')}</div></td>
          <td>${pill(r.status)}${r.auto_paused ? ' <span class="sub">auto</span>' : ''}</td>
          <td>${esc(label(r.strategy))}</td>
          <td>${batchBars(r, details[r.rollout_id])}<div class="sub">batch ${r.current_batch} of ${r.total_batches}</div></td>
          <td class="num">${r.updated_devices} / ${r.total_devices}</td>
          <td>${rateHTML(r)}</td>
          <td title="${esc(fmtDate(r.created_at))}">${esc(ago(r.created_at))}</td></tr>`;
      }).join('');
      $$('tr[data-rollout]', body).forEach((tr) => { tr.onclick = () => { location.hash = '#/rollouts/' + tr.dataset.rollout; }; });
    };
    const load = async () => {
      const status = $('#f-status') ? $('#f-status').value : '';
      const res = await api('GET', '/api/v1/rollouts?limit=25' + (status ? '&status=' + encodeURIComponent(status) : ''));
      list = res.rollouts || [];
      const want = list.filter((r) => !details[r.rollout_id] || stale.has(r.rollout_id) || ACTIVE.includes(r.status));
      stale = new Set();
      await Promise.all(want.map(async (r) => { details[r.rollout_id] = await api('GET', '/api/v1/rollouts/' + r.rollout_id); }));
      render();
    };
    const refresh = refresher(load, 250);
    $('#f-status').onchange = refresh;
    const close = live('', (e) => { if (e.rollout) stale.add(e.rollout); refresh(); }, refresh);
    const clock = setInterval(render, 30000);
    load().catch(showError);
    return { destroy() { close(); clearInterval(clock); } };
  }

  const VERBS = [
    { verb: 'start', label: 'Start', when: ['pending'], text: 'Start this rollout: its first batch is dispatched now.' },
    { verb: 'pause', label: 'Pause', when: ['in_progress', 'scheduled', 'awaiting_approval'], text: 'Pause this rollout: nothing further is dispatched until it is resumed.' },
    { verb: 'resume', label: 'Resume', when: ['paused'], text: 'Resume this rollout.' },
    { verb: 'approve', label: 'Approve next batch', when: ['awaiting_approval'], text: 'Approve the next batch of this rollout.' },
    { verb: 'cancel', label: 'Cancel', when: ACTIVE, danger: true, text: 'Cancel this rollout: nothing further is dispatched; moved devices stay on the new image.' },
    { verb: 'rollback-all', label: 'Roll back all', when: [], danger: true, text: 'Move every device this rollout moved back to its own old image.' },
  ];

  // Rollout ---------------------------------------------------------------------------------------
  function rolloutPage(id) {
    main.innerHTML = `<div class="crumbs"><a href="#/rollouts">Rollouts</a> / <span class="mono">${esc(id)}</span></div>
      <div class="page-head"><h1 id="r-title" class="mono">Rollout</h1><span id="r-status"></span><span class="spacer"></span>
      <div class="controls" id="controls"></div></div>
      <div class="sub" id="r-meta" style="margin:-8px 0 14px"></div>
      <div class="msg" id="ctl-msg" style="margin:0 0 14px" hidden></div>
      <div class="cards" id="r-cards"></div>
      <div class="grid2">
        <div class="panel"><h2>Batches</h2><div id="r-batches"></div><div style="margin-top:10px">${LEGEND}</div></div>
        <div class="panel"><h2>Failure rate over time</h2><div id="r-chart"></div></div>
      </div>
      <div class="grid2">
        <div class="panel flush"><h2 style="display:flex;align-items:center;gap:10px">Devices <span class="spacer" style="flex:1"></span>
          <select id="d-status" style="font-size:13px;padding:4px 8px"><option value="">all statuses</option>
          ${['failed', 'rolled_back', 'pending', 'scheduled', 'updating', 'health_checking', 'completed', 'skipped'].map((s) => `<option value="${s}">${label(s)}</option>`).join('')}
          </select></h2>
          <div class="scroll"><table><thead><tr><th>Device</th><th class="num">Batch</th><th>Status</th><th>Image tag</th><th>Reason</th></tr></thead>
          <tbody id="r-devices"></tbody></table></div><div class="sub" id="r-devices-more" style="padding:8px 18px"></div></div>
        <div class="panel flush"><h2>Events</h2><ul class="timeline" id="r-events"></ul></div>
      </div>`;
    if (session.canOperate()) {
      $('#controls').innerHTML = VERBS.map((v) => `<button class="btn ${v.danger ? 'danger' : ''}" type="button" data-verb="${v.verb}">${v.label}</button>`).join('');
      $$('#controls button').forEach((b) => { b.onclick = () => control(b.dataset.verb); });
    }
    let rollout = null;
    const events = []; const seen = new Set();
    let loadedEvents = false; const early = [];

    const renderHead = () => {
      const r = rollout;
      $('#r-title').textContent = `${r.image_name}:${r.new_tag}`;
      $('#r-status').innerHTML = pill(r.status, 'rollout-status') + (r.auto_paused ? ' <span class="sub">paused automatically</span>' : '');
      $('#r-meta').innerHTML = `from <span class="mono">${esc(r.old_tag || '—')}</span> · ${esc(label(r.strategy))} · batch ${r.current_batch} of ${r.total_batches}` +
        (r.strategy === 'rate' && r.rate_per_minute ? ` · <span id="r-rate">${esc(r.rate_per_minute)} devices/min, ${esc(r.rate_dispatched)} dispatched</span>` : '') +
        ((r.policy && r.policy.download_ahead) || r.downloaded_devices ? ` · <span id="r-downloaded" title="devices that pulled the new image ahead of the window">${esc(r.downloaded_devices || 0)} of ${esc(r.total_devices)} downloaded ahead</span>` : '') +
        ` · created ${esc(fmtDate(r.created_at))}${r.completed_at ? ' · finished ' + esc(fmtDate(r.completed_at)) : ''}` +
        (r.policy && r.policy.id ? ` · policy <a href="#/policies/${esc(r.policy.id)}">#${esc(r.policy.id)}</a>` : '');
      const g = { completed: 0, running: 0, failed: 0, rolledBack: 0, pending: 0, skipped: 0 };
      (r.batches || []).forEach((b) => { const x = groups(b.statuses || {}); Object.keys(g).forEach((k) => { g[k] += x[k]; }); });
      $('#r-cards').innerHTML = `
        <div class="card"><div class="k">Devices</div><div class="v">${r.total_devices}</div></div>
        <div class="card ok"><div class="k">Completed</div><div class="v">${g.completed}</div></div>
        <div class="card run"><div class="k">In progress</div><div class="v">${g.running}</div></div>
        <div class="card fail"><div class="k">Failed</div><div class="v">${g.failed}</div></div>
        <div class="card back"><div class="k">Rolled back</div><div class="v">${g.rolledBack}</div></div>
        <div class="card"><div class="k">Failure rate</div><div class="v" style="font-size:15px;margin-top:6px">${rateHTML(r)}</div></div>`;
      const sizes = r.batch_sizes || [];
      const byNum = {}; (r.batches || []).forEach((b) => { byNum[b.batch] = b; });
      $('#r-batches').innerHTML = sizes.length ? `<table><thead><tr><th>Batch</th><th style="width:40%">Progress</th><th class="num">Done</th>
        <th class="num">Running</th><th class="num">Failed</th><th class="num">Rolled back</th><th class="num">Pending</th></tr></thead><tbody>${
  sizes.map((s, i) => {
    const b = byNum[i + 1]; const x = groups((b && b.statuses) || {});
    return `<tr data-batch="${i + 1}"><td style="white-space:nowrap">${i + 1}${i + 1 === r.current_batch && ACTIVE.includes(r.status) ? ' <span class="sub">current</span>' : ''}<div class="sub">${s} devices</div></td>
            <td>${barHTML(b, s, true)}</td><td class="num">${x.completed}</td><td class="num">${x.running}</td><td class="num">${x.failed}</td>
            <td class="num">${x.rolledBack}</td><td class="num">${x.pending}</td></tr>`;
  }).join('')}</tbody></table>` : '<div class="empty">No devices in this rollout.</div>';
      if (session.canOperate()) {
        VERBS.forEach((v) => { const b = $(`#controls [data-verb="${v.verb}"]`); if (b) b.classList.toggle('suggest', v.when.includes(r.status)); });
      }
    };

    const loadRollout = async () => { rollout = await api('GET', '/api/v1/rollouts/' + id); renderHead(); renderChart(); };
    const loadDevices = async () => {
      const st = $('#d-status').value;
      const res = await api('GET', `/api/v1/rollouts/${id}/devices?limit=500${st ? '&status=' + st : ''}`);
      // Problems first: failed, then rolled back, then the rest in batch order.
      const rank = (d) => ({ failed: 0, rolled_back: 1 }[d.status] ?? 2);
      const list = (res.devices || []).map((d, i) => [d, i]).sort((a, b) => rank(a[0]) - rank(b[0]) || a[1] - b[1]).map((x) => x[0]);
      $('#r-devices').innerHTML = list.length ? list.map((d) => `<tr data-device="${esc(d.device_uuid)}">
        <td><div>${esc(d.device_name || d.device_uuid)}</div><div class="sub mono">${esc(d.device_uuid)}</div></td>
        <td class="num">${d.batch_number}</td><td>${pill(d.status)}</td>
        <td class="mono">${esc(d.old_image_tag || '—')} → ${esc(d.new_image_tag || '—')}${d.downloaded_at ? `<div class="sub" data-downloaded title="${esc(fmtDate(d.downloaded_at))}">downloaded ${esc(ago(d.downloaded_at))}</div>` : ''}</td>
        <td class="reason">${d.error_message ? `<span style="color:#b42318">${esc(d.error_message)}</span>`
    : d.download_error && !d.downloaded_at ? `<span style="color:#b54708" data-download-error>download failed: ${esc(d.download_error)}</span>` : ''}</td></tr>`).join('')
        : '<tr><td colspan="5" class="empty">No devices.</td></tr>';
      $('#r-devices-more').textContent = res.next_cursor ? 'Showing the first 500 devices; filter by status to narrow.' : '';
    };
    $('#d-status').onchange = () => loadDevices().catch(showError);

    const addEvents = (list, fresh) => {
      let added = false;
      list.forEach((e) => { if (e.id && seen.has(e.id)) return; if (e.id) seen.add(e.id); events.push(e); added = true; });
      if (!added) return;
      events.sort((a, b) => new Date(a.at) - new Date(b.at));
      renderEvents(fresh);
      renderChart();
    };
    const renderEvents = (fresh) => {
      const shown = events.slice(-300).reverse();
      $('#r-events').innerHTML = shown.length ? shown.map((e, i) => `<li class="${fresh && i === 0 ? 'fresh' : ''}" data-type="${esc(e.type)}">
        <span class="t" title="${esc(fmtDate(e.at))}">${esc(fmtTime(e.at))}</span><span class="d ${eventTone(e.type)}"></span>
        <div><span class="what">${esc(label(String(e.type || '').replace(/^image\./, '')))}</span>${e.device ? ` <span class="mono sub" title="${esc(e.device)}">${esc(short(e.device))}</span>` : ''}
        ${e.message ? `<div class="m">${esc(e.message)}</div>` : ''}${e.actor ? `<div class="sub">by ${esc(e.actor)}</div>` : ''}</div></li>`).join('')
        : '<li class="empty" style="display:block">No events yet.</li>';
    };
    const renderChart = () => { if (rollout) $('#r-chart').innerHTML = failureChart(rollout, events); };

    const loadEvents = async () => {
      let cursor = ''; const all = [];
      for (let page = 0; page < 20; page++) {
        const res = await api('GET', `/api/v1/rollouts/${id}/events?limit=500${cursor ? '&cursor=' + encodeURIComponent(cursor) : ''}`);
        all.push(...(res.events || []).map(normEvent));
        if (!res.next_cursor) break;
        cursor = res.next_cursor;
      }
      loadedEvents = true;
      addEvents(all.concat(early.splice(0)), false);
    };
    const refresh = refresher(async () => { await loadRollout(); await loadDevices(); }, 200);
    // The stream opens first and buffers, so nothing between the listed events and the stream is lost.
    const close = live(id, (e) => { if (loadedEvents) addEvents([e], true); else early.push(e); refresh(); }, refresh);

    async function control(verb) {
      const v = VERBS.find((x) => x.verb === verb);
      const ok = await confirmDialog(v.label + '?', v.text, v.label, v.danger);
      if (!ok) return;
      const box = $('#ctl-msg');
      try {
        const res = await api('POST', `/api/v1/rollouts/${id}/${verb}`, {});
        box.className = 'msg ok';
        box.textContent = res && res.changed === false ? `${v.label}: nothing to change (already done).` : `${v.label}: done. Status is now ${label((res && res.status) || '')}.`;
      } catch (e) {
        box.className = 'msg error';
        box.textContent = (e.status === 409 ? 'Not possible now: ' : '') + e.message;
      }
      box.hidden = false;
      refresh();
    }

    Promise.all([loadRollout(), loadDevices(), loadEvents()]).catch(showError);
    return { destroy() { close(); } };
  }

  function eventTone(t) {
    t = String(t || '');
    if (/failed/.test(t)) return 'fail';
    if (/rolled_back/.test(t)) return 'back';
    if (/(completed|passed|device_updated)/.test(t)) return 'ok';
    if (/(paused|resumed|cancelled|approved|start_requested|superseded)/.test(t)) return 'op';
    if (/(started|scheduled|created)/.test(t)) return 'run';
    return '';
  }

  // failureChart draws failures / finished devices over time, as the events tell it, against the policy's
  // threshold (the same definition as the rollout's failure_rate).
  function failureChart(r, events) {
    const hc = !r.policy || r.policy.health_check_enabled !== false;
    const state = new Map(); let failures = 0; let finished = 0;
    const pts = [];
    const set = (dev, s) => {
      const was = state.get(dev);
      if (was === s || (was === 'fail' && s === 'back')) { if (was === 'fail' && s === 'back') state.set(dev, 'failback'); return; }
      if (was === 'fail' || was === 'failback') failures--;
      if (was) finished--;
      state.set(dev, s); finished++;
      if (s === 'fail') failures++;
    };
    events.forEach((e) => {
      const t = String(e.type || ''); const d = e.device; if (!d) return;
      if (t === 'image.device_failed' || t === 'image.health_check_failed') set(d, 'fail');
      else if (t === 'image.health_check_passed' || (!hc && t === 'image.device_updated')) set(d, 'ok');
      else if (t === 'image.device_rolled_back') set(d, 'back');
      else return;
      pts.push([new Date(e.at).getTime(), finished ? failures / finished : 0]);
    });
    const thr = threshold(r);
    if (!pts.length) return `<div class="empty">No device has finished yet.${thr ? ' Threshold ' + pct(thr) + '.' : ''}</div>`;
    const end = ACTIVE.includes(r.status) ? Date.now() : Math.max(pts[pts.length - 1][0], new Date(r.completed_at || 0).getTime());
    pts.push([end, pts[pts.length - 1][1]]);
    const W = 560; const H = 200; const L = 44; const R = 12; const T = 12; const B = 26;
    const t0 = pts[0][0]; const t1 = Math.max(end, t0 + 1000);
    const ymax = Math.min(1, Math.max(thr * 1.3, ...pts.map((p) => p[1] * 1.1), 0.05));
    const x = (t) => L + ((t - t0) / (t1 - t0)) * (W - L - R);
    const y = (v) => T + (1 - v / ymax) * (H - T - B);
    let d = `M${x(pts[0][0]).toFixed(1)},${y(pts[0][1]).toFixed(1)}`;
    for (let i = 1; i < pts.length; i++) d += `H${x(pts[i][0]).toFixed(1)}V${y(pts[i][1]).toFixed(1)}`;
    const area = `${d}V${y(0)}H${x(pts[0][0]).toFixed(1)}Z`;
    const ticks = [0, ymax / 2, ymax].map((v) => `<line class="grid" x1="${L}" x2="${W - R}" y1="${y(v)}" y2="${y(v)}"/>` +
      `<text class="axis" x="${L - 6}" y="${y(v) + 4}" text-anchor="end">${pct(v, 0)}</text>`).join('');
    const thrLine = thr > 0 ? `<line class="thr" x1="${L}" x2="${W - R}" y1="${y(thr)}" y2="${y(thr)}"/>` +
      `<text class="thr-label" x="${W - R}" y="${y(thr) - 5}" text-anchor="end">threshold ${pct(thr)}</text>` : '';
    return `<svg class="chart" viewBox="0 0 ${W} ${H}" preserveAspectRatio="none" role="img" aria-label="failure rate over time">
      ${ticks}<path class="area" d="${area}"/><path class="line" d="${d}"/>${thrLine}
      <text class="axis" x="${L}" y="${H - 8}">${esc(fmtTime(t0))}</text><text class="axis" x="${W - R}" y="${H - 8}" text-anchor="end">${esc(fmtTime(t1))}</text>
      </svg><div class="sub">Now ${pct(Number(r.failure_rate || 0))} of ${r.updated_devices + r.failed_devices + r.rolled_back_devices} finished devices failed.</div>`;
  }

  // Fleet -----------------------------------------------------------------------------------------
  function fleetPage() {
    main.innerHTML = `<div class="page-head"><h1>Fleet</h1><span class="spacer"></span>
      <div class="filters"><input type="text" id="f-fleet" placeholder="fleet" list="fleets" style="width:150px"><datalist id="fleets"></datalist>
      <input type="text" id="f-tag" placeholder="tags (comma-separated)" style="width:210px">
      <button class="btn small" id="f-clear" type="button">Clear</button></div></div>
      <div class="cards" id="fl-cards"></div>
      <div class="panel flush"><h2>Image versions</h2><table><thead><tr><th>Image</th><th>Tag</th><th>Fleet</th><th class="num">Devices</th><th class="num">Online</th></tr></thead>
      <tbody id="fl-images"></tbody></table></div>
      <div class="panel flush"><h2>Devices</h2><div class="scroll"><table><thead><tr><th>Device</th><th>Fleet</th><th>Tags</th><th>Connection</th><th>Last seen</th><th class="num">Target version</th></tr></thead>
      <tbody id="fl-devices"></tbody></table></div><div class="sub" id="fl-more" style="padding:8px 18px"></div></div>`;
    const q = () => {
      const p = new URLSearchParams();
      const f = $('#f-fleet').value.trim(); if (f) p.set('fleet_id', f);
      $('#f-tag').value.split(',').map((t) => t.trim()).filter(Boolean).forEach((t) => p.append('tag', t));
      return p.toString();
    };
    const fleets = new Set();
    const load = async () => {
      const qs = q();
      const [devs, imgs] = await Promise.all([api('GET', '/api/v1/devices?limit=500' + (qs ? '&' + qs : '')), api('GET', '/api/v1/images' + (qs ? '?' + qs : ''))]);
      const list = devs.devices || [];
      list.forEach((d) => { if (d.fleet_id) fleets.add(d.fleet_id); });
      (imgs.images || []).forEach((i) => { if (i.fleet_id) fleets.add(i.fleet_id); });
      $('#fleets').innerHTML = [...fleets].sort().map((f) => `<option value="${esc(f)}">`).join('');
      const online = list.filter((d) => d.is_online).length;
      $('#fl-cards').innerHTML = `<div class="card"><div class="k">Devices</div><div class="v">${list.length}${devs.next_cursor ? '+' : ''}</div></div>
        <div class="card ok"><div class="k">Online</div><div class="v">${online}</div></div>
        <div class="card"><div class="k">Offline</div><div class="v">${list.length - online}</div></div>
        <div class="card"><div class="k">Image versions</div><div class="v">${new Set((imgs.images || []).map((i) => i.repository + ':' + i.tag)).size}</div></div>`;
      const im = imgs.images || [];
      $('#fl-images').innerHTML = im.length ? im.map((i) => `<tr><td class="mono">${esc(i.repository)}</td><td class="mono"><b>${esc(i.tag || '—')}</b></td>
        <td>${esc(i.fleet_id || '—')}</td><td class="num">${i.devices}</td><td class="num">${i.online}</td></tr>`).join('')
        : '<tr><td colspan="5" class="empty">No device has a target with images.</td></tr>';
      $('#fl-devices').innerHTML = list.length ? list.map((d) => `<tr data-device="${esc(d.uuid)}">
        <td><div>${esc(d.device_name)}</div><div class="sub mono">${esc(d.uuid)}</div></td><td>${esc(d.fleet_id || '—')}</td>
        <td>${(d.tags || []).map((t) => `<span class="chip">${esc(t)}</span>`).join('')}</td>
        <td><span class="dot-s ${d.is_online ? 'on' : ''}"></span>${d.is_online ? 'online' : 'offline'}</td>
        <td title="${esc(fmtDate(d.last_seen_at))}">${esc(ago(d.last_seen_at))}</td><td class="num">${d.target_version ?? '—'}</td></tr>`).join('')
        : '<tr><td colspan="6" class="empty">No devices match.</td></tr>';
      $('#fl-more').textContent = devs.next_cursor ? 'Showing the first 500 devices; filter by fleet or tag to narrow.' : '';
    };
    const refresh = refresher(load, 300);
    ['#f-fleet', '#f-tag'].forEach((s) => { $(s).onchange = refresh; });
    $('#f-clear').onclick = () => { $('#f-fleet').value = ''; $('#f-tag').value = ''; refresh(); };
    // Online state and last-seen change without rollout events: poll every second while the tab is
    // visible, and follow events too.
    const poll = setInterval(() => { if (document.visibilityState === 'visible') refresh(); }, 1000);
    const close = live('', refresh);
    load().catch(showError);
    return { destroy() { clearInterval(poll); close(); } };
  }

  // Policies --------------------------------------------------------------------------------------
  function policiesPage() {
    main.innerHTML = `<div class="page-head"><h1>Policies</h1><span class="spacer"></span>
      ${session.canOperate() ? '<a class="btn primary" href="#/policies/new" id="new-policy">New policy</a>' : ''}</div>
      <div class="panel flush"><table><thead><tr><th class="num">#</th><th>Image pattern</th><th>Strategy</th><th>Batches</th><th>Health check</th>
      <th>Auto rollback</th><th>Scope</th><th class="num">Priority</th><th>Enabled</th></tr></thead><tbody id="p-body"></tbody></table></div>
      ${previewPanel()}`;
    bindPreview();
    (async () => {
      const res = await api('GET', '/api/v1/image-policies?limit=500');
      const list = res.policies || [];
      $('#p-body').innerHTML = list.length ? list.map((p) => `<tr class="click" data-policy="${p.id}"><td class="num">${p.id}</td>
        <td class="mono"><b>${esc(p.image_pattern)}</b>${p.tag_policy === 'semver' ? ` <span class="chip">semver ${esc(p.semver_range || '')}</span>` : ''}</td>
        <td>${esc(label(p.update_strategy))}${p.batch_approval ? ' <span class="chip">approval</span>' : ''}</td>
        <td>${esc((p.batch_percentages || []).join(' / '))}%${p.batch_delay_seconds != null ? ` <span class="sub">every ${p.batch_delay_seconds}s</span>` : ''}</td>
        <td>${p.health_check_enabled ? `on <span class="sub">${p.health_check_timeout_seconds}s</span>` : 'off'}</td>
        <td>${p.auto_rollback_enabled ? `above ${pct(p.max_failure_rate)}` : 'off'}</td>
        <td>${p.fleet_id ? `<span class="chip">fleet ${esc(p.fleet_id)}</span>` : ''}${(p.device_tags || []).map((t) => `<span class="chip">${esc(t)}</span>`).join('') || (p.fleet_id ? '' : '<span class="sub">all devices</span>')}</td>
        <td class="num">${p.priority}</td><td>${p.enabled ? pill('completed').replace('>completed<', '>yes<') : pill('cancelled').replace('>cancelled<', '>no<')}</td></tr>`).join('')
        : '<tr><td colspan="9" class="empty">No policies. A push rolls out only when a policy matches its image.</td></tr>';
      $$('tr[data-policy]').forEach((tr) => { tr.onclick = () => { location.hash = '#/policies/' + tr.dataset.policy; }; });
    })().catch(showError);
    return { destroy() {} };
  }

  function previewPanel() {
    return `<div class="panel"><h2>Preview a push</h2><div class="sub" style="margin-bottom:10px">What a registry push of this image would do right now: the matching policy, its batches and the devices left out. Nothing is written.</div>
      <form class="filters" id="pv-form"><input type="text" id="pv-image" placeholder="repository:tag, e.g. acme/app:1.2" style="width:340px">
      <button class="btn" type="submit" id="pv-btn">Preview</button></form><div id="pv-out" style="margin-top:12px"></div></div>`;
  }
  function bindPreview() {
    $('#pv-form').onsubmit = async (ev) => {
      ev.preventDefault();
      const out = $('#pv-out');
      try {
        const p = await api('POST', '/api/v1/rollouts/preview', { image: $('#pv-image').value.trim() });
        const ex = p.excluded || [];
        out.innerHTML = `<div class="cards">
          <div class="card"><div class="k">Policy</div><div class="v" style="font-size:15px">${p.policy ? `<a href="#/policies/${p.policy.id}">#${p.policy.id}</a> <span class="mono">${esc(p.policy.image_pattern)}</span>` : 'none'}</div></div>
          <div class="card"><div class="k">Strategy</div><div class="v" style="font-size:15px">${esc(label(p.strategy || '—'))}${p.status ? ` <span class="sub">starts ${esc(label(p.status))}</span>` : ''}</div></div>
          <div class="card"><div class="k">Devices</div><div class="v">${p.total_devices}</div></div>
          <div class="card"><div class="k">Batches</div><div class="v" style="font-size:15px">${(p.batches || []).map((b) => b.size).join(' → ') || '—'}</div></div>
          <div class="card"><div class="k">Excluded</div><div class="v">${ex.length}</div></div></div>
          ${p.reason ? `<div class="msg ok">${esc(p.reason)}</div>` : ''}
          ${ex.length ? `<table><thead><tr><th>Excluded device</th><th>Why</th></tr></thead><tbody>${ex.slice(0, 20).map((e) =>
    `<tr><td class="mono">${esc(e.device_uuid || e.uuid || '')}</td><td>${esc(e.reason || '')}</td></tr>`).join('')}</tbody></table>${ex.length > 20 ? `<div class="sub">and ${ex.length - 20} more</div>` : ''}` : ''}`;
      } catch (e) {
        out.innerHTML = `<div class="msg error">${esc(e.message)}</div>`;
      }
    };
  }

  // Policy form: fields as the API names them, so an error's field lands next to its input.
  const FIELDS = [
    ['Match', [
      { k: 'image_pattern', label: 'Image pattern', type: 'text', hint: 'e.g. acme/app:* or nginx:1.*' },
      { k: 'tag_policy', label: 'Tag policy', type: 'select', options: ['glob', 'semver'] },
      { k: 'semver_range', label: 'Semver range', type: 'text', hint: 'with tag policy semver, e.g. ^1.2' },
      { k: 'fleet_id', label: 'Fleet', type: 'text', hint: 'empty: every fleet' },
      { k: 'device_tags', label: 'Device tags', type: 'list', hint: 'comma-separated; devices need all' },
      { k: 'priority', label: 'Priority', type: 'int' },
      { k: 'description', label: 'Description', type: 'text' },
      { k: 'enabled', label: 'Enabled', type: 'bool' },
    ]],
    ['Rollout', [
      { k: 'update_strategy', label: 'Update strategy', type: 'select', options: ['staged', 'auto', 'manual', 'scheduled', 'rate'] },
      { k: 'batch_percentages', label: 'Batch percentages', type: 'ints', hint: 'comma-separated, ending at 100' },
      { k: 'batch_delay_seconds', label: 'Batch delay (seconds)', type: 'int' },
      { k: 'maintenance_window_start', label: 'Window start', type: 'text', hint: 'HH:MM, scheduled strategy' },
      { k: 'maintenance_window_end', label: 'Window end', type: 'text', hint: 'HH:MM' },
      { k: 'timezone', label: 'Time zone', type: 'text', hint: 'e.g. Europe/Berlin' },
      { k: 'batch_approval', label: 'Approve each batch', type: 'bool' },
    ]],
    ['Rate (rate strategy only)', [
      { k: 'rate_base_per_minute', label: 'Base rate (devices/min)', type: 'int', hint: 'required for the rate strategy' },
      { k: 'rate_increment_factor', label: 'Increment factor', type: 'float', hint: 'above 1, at most 5; default 2' },
      { k: 'rate_increase_criteria', label: 'Raise on', type: 'select', options: ['', 'succeeded', 'notified'] },
      { k: 'rate_increase_threshold', label: 'Raise every N devices', type: 'int', hint: 'default: the base rate' },
      { k: 'rate_maximum_per_minute', label: 'Maximum rate (devices/min)', type: 'int', hint: 'default: 10 x the base rate' },
    ]],
    ['Health', [
      { k: 'health_check_enabled', label: 'Health check', type: 'bool' },
      { k: 'health_check_timeout_seconds', label: 'Health timeout (seconds)', type: 'int' },
      { k: 'auto_rollback_enabled', label: 'Automatic rollback', type: 'bool' },
      { k: 'max_failure_rate', label: 'Max failure rate', type: 'float', hint: '0 to 1, e.g. 0.2 = 20%' },
      { k: 'min_sample_size', label: 'Min sample size', type: 'int' },
    ]],
  ];

  // replayPanel: the stored policy replayed over the pushes of the last days (POST .../:id/replay).
  function replayPanel() {
    return `<div class="panel"><h2>Replay history</h2><div class="sub" style="margin-bottom:10px">The rollouts this policy, as saved, would have created for the pushes of the last days, planned over today's devices. Nothing is written.</div>
      <form class="filters" id="rp-form"><input type="text" id="rp-days" value="7" inputmode="numeric" style="width:60px"> days
      <button class="btn" type="submit" id="rp-btn">Replay</button></form><div id="rp-out" style="margin-top:12px"></div></div>`;
  }
  function bindReplay(id) {
    $('#rp-form').onsubmit = async (ev) => {
      ev.preventDefault();
      const out = $('#rp-out');
      try {
        const r = await api('POST', '/api/v1/image-policies/' + id + '/replay', { days: Number($('#rp-days').value.trim()) });
        const ro = r.rollouts || [];
        out.innerHTML = `<div class="sub">${r.pushes} push(es) replayed${r.truncated ? ' (most recent only)' : ''}: ${ro.length} rollout(s), ${(r.skipped || []).length} skipped.</div>
          ${ro.length ? `<table id="rp-table"><thead><tr><th>Pushed</th><th>Image</th><th>Starts</th><th class="num">Devices</th><th>Batches</th></tr></thead><tbody>${ro.map((x) =>
    `<tr><td>${esc(x.pushed_at)}</td><td class="mono">${esc(x.image)}</td><td>${esc(label(x.status))}</td><td class="num">${x.total_devices}</td><td>${esc((x.batch_sizes || []).join(' → '))}</td></tr>`).join('')}</tbody></table>` : ''}`;
      } catch (e) {
        out.innerHTML = `<div class="msg error">${esc(e.message)}</div>`;
      }
    };
  }

  function policyPage(id) {
    const isNew = id === 'new';
    const ro = !session.canOperate();
    main.innerHTML = `<div class="crumbs"><a href="#/policies">Policies</a> / ${isNew ? 'new' : '#' + esc(id)}</div>
      <div class="page-head"><h1>${isNew ? 'New policy' : 'Policy #' + esc(id)}</h1><span class="spacer"></span>
      ${!ro && !isNew ? '<button class="btn danger" type="button" id="p-delete">Delete</button>' : ''}</div>
      <form class="panel" id="p-form" novalidate>${FIELDS.map(([group, fs]) => `<fieldset><legend>${group}</legend><div class="form">${fs.map(fieldHTML).join('')}</div></fieldset>`).join('')}
      <div class="controls">${ro ? '<span class="sub">Read-only token: policies can be viewed, not changed.</span>' : `<button class="btn primary" type="submit" id="p-save">${isNew ? 'Create policy' : 'Save changes'}</button>`}
      <a class="btn ghost" href="#/policies">Back</a></div><div class="msg" id="p-msg" hidden></div></form>${previewPanel()}${isNew ? '' : replayPanel()}`;
    bindPreview();
    if (!isNew) bindReplay(id);
    if (ro) $$('#p-form input, #p-form select').forEach((el) => { el.disabled = true; });
    let doc = { image_pattern: '', update_strategy: 'staged', batch_percentages: [10, 50, 100], batch_delay_seconds: 60, health_check_enabled: true,
      health_check_timeout_seconds: 300, auto_rollback_enabled: true, max_failure_rate: 0.2, min_sample_size: 0, enabled: true, priority: 0, tag_policy: 'glob' };
    const fill = () => FIELDS.forEach(([, fs]) => fs.forEach((f) => {
      const el = $('#pf-' + f.k); const v = doc[f.k];
      if (f.type === 'bool') el.checked = !!v;
      else if (f.type === 'ints' || f.type === 'list') el.value = (v || []).join(', ');
      else el.value = v ?? '';
    }));
    if (isNew) fill(); else api('GET', '/api/v1/image-policies/' + id).then((p) => { doc = p; fill(); }).catch(showError);

    $('#p-form').onsubmit = async (ev) => {
      ev.preventDefault();
      if (ro) return;
      clearFieldErrors('#p-form');
      const msg = $('#p-msg'); msg.hidden = true;
      const body = { ...doc };
      let bad = false;
      FIELDS.forEach(([, fs]) => fs.forEach((f) => {
        const el = $('#pf-' + f.k); const raw = el.type === 'checkbox' ? el.checked : el.value.trim();
        if (f.type === 'bool') body[f.k] = raw;
        else if (f.type === 'list') body[f.k] = raw ? raw.split(',').map((s) => s.trim()).filter(Boolean) : [];
        else if (f.type === 'ints') {
          const parts = raw ? raw.split(',').map((s) => s.trim()) : [];
          if (parts.some((s) => !/^\d+$/.test(s))) { bad = fieldError(f.k, 'whole numbers separated by commas, e.g. 10, 50, 100') || bad; return; }
          body[f.k] = parts.map(Number);
        } else if (f.type === 'int' || f.type === 'float') {
          if (raw === '') { delete body[f.k]; return; }
          const n = Number(raw);
          if (!Number.isFinite(n) || (f.type === 'int' && !Number.isInteger(n))) { bad = fieldError(f.k, f.type === 'int' ? 'a whole number' : 'a number') || bad; return; }
          body[f.k] = n;
        } else body[f.k] = raw === '' ? null : raw;
      }));
      if (bad) return;
      if (body.batch_delay_seconds != null) delete body.batch_delay_minutes;
      if (body.batch_percentages) delete body.staged_batches; // the number of batches follows the list
      try {
        const saved = await api(isNew ? 'POST' : 'PUT', isNew ? '/api/v1/image-policies' : '/api/v1/image-policies/' + id, body);
        if (isNew) { location.hash = '#/policies/' + saved.id; return; }
        doc = saved; fill();
        msg.className = 'msg ok'; msg.textContent = 'Saved.'; msg.hidden = false;
      } catch (e) {
        if (!(e.field && fieldError(e.field, e.message))) { msg.className = 'msg error'; msg.textContent = e.message; msg.hidden = false; }
      }
    };
    const del = $('#p-delete');
    if (del) {
      del.onclick = async () => {
        if (!await confirmDialog('Delete policy #' + id + '?', 'Pushes matching only this policy will no longer roll out. Running rollouts keep their snapshot.', 'Delete', true)) return;
        try { await api('DELETE', '/api/v1/image-policies/' + id); location.hash = '#/policies'; } catch (e) { showError(e); }
      };
    }
    return { destroy() {} };
  }

  function fieldHTML(f) {
    const id = 'pf-' + f.k;
    let input;
    if (f.type === 'bool') {
      return `<div class="field check"><input type="checkbox" id="${id}" name="${f.k}"><label for="${id}">${esc(f.label)}</label><div class="err" data-err="${f.k}" hidden></div></div>`;
    }
    if (f.type === 'select') input = `<select id="${id}" name="${f.k}">${f.options.map((o) => `<option value="${o}">${esc(label(o))}</option>`).join('')}</select>`;
    else input = `<input type="text" id="${id}" name="${f.k}"${f.type === 'int' || f.type === 'float' ? ' inputmode="decimal"' : ''}>`;
    return `<div class="field"><label for="${id}">${esc(f.label)}</label>${input}${f.hint ? `<div class="hint">${esc(f.hint)}</div>` : ''}<div class="err" data-err="${f.k}" hidden></div></div>`;
  }

  // Notifications ---------------------------------------------------------------------------------
  // Outgoing webhook subscriptions (GET/POST/DELETE /api/v1/notifications). Reading needs a read token
  // (which sees each URL cut to its scheme and host); creating and deleting need admin, so only an admin
  // token gets the form and the delete buttons. Deliveries change without events of their own (retries,
  // answers), so the pages poll every 2 s while visible, and also refresh on every event.
  const KINDS = [['paused', 'Paused'], ['failed', 'Failed'], ['completed', 'Completed'], ['rolled_back', 'Rolled back']];
  const FORMATS = { json: 'generic JSON', slack: 'Slack' };
  const kindsHTML = (ts) => (ts || []).map((k) => `<span class="chip">${esc(label(k))}</span>`).join('');
  const NOTIFY_POLL_MS = 2000;

  // latestHTML: a subscription's newest delivery, as a status pill and when.
  function latestHTML(l) {
    if (!l) return '<span class="sub">none yet</span>';
    const when = l.last_attempt_at || l.created_at;
    return `${pill(l.status)} <span class="sub" title="${esc(fmtDate(when))}">${esc(label(String(l.event_type || '').replace(/^image\.rollout_/, '')))} · ${esc(ago(when))}` +
      `${l.last_status_code ? ' · HTTP ' + esc(l.last_status_code) : ''}</span>`;
  }

  // polling runs fn now, every NOTIFY_POLL_MS while the tab is visible, and on every event; it returns
  // a function that stops it.
  function polling(fn) {
    const refresh = refresher(fn, 200);
    const poll = setInterval(() => { if (document.visibilityState === 'visible') refresh(); }, NOTIFY_POLL_MS);
    const close = live('', refresh);
    fn().catch(showError);
    return () => { clearInterval(poll); close(); };
  }

  async function deleteSubscription(s) {
    if (!await confirmDialog(`Delete subscription ${s.name}?`, 'Its deliveries are deleted with it and nothing more is sent to its URL.', 'Delete', true)) return false;
    try { await api('DELETE', '/api/v1/notifications/' + s.id); return true; } catch (e) { showError(e); return false; }
  }

  function notificationsPage() {
    const admin = session.canAdmin();
    main.innerHTML = `<div class="page-head"><h1>Notifications</h1><span class="spacer"></span>
      <span class="sub">Webhooks posted, signed, when a rollout pauses, fails, completes or rolls back.</span></div>
      <div class="panel flush"><table><thead><tr><th>Name / URL</th><th>Format</th><th>Events</th><th class="num">Delivered</th>
      <th class="num">Pending</th><th class="num">Failed</th><th>Latest delivery</th>${admin ? '<th></th>' : ''}</tr></thead>
      <tbody id="n-body"><tr><td colspan="8" class="empty">Loading…</td></tr></tbody></table></div>
      ${admin ? `<form class="panel" id="n-form" novalidate><h2>New subscription</h2><div class="form">
        <div class="field"><label for="nf-name">Name</label><input type="text" id="nf-name" name="name"><div class="err" data-err="name" hidden></div></div>
        <div class="field"><label for="nf-url">URL</label><input type="text" id="nf-url" name="url" placeholder="https://hooks.example.com/fleetshift">
          <div class="hint">http:// or https://; every POST is signed with a secret shown once</div><div class="err" data-err="url" hidden></div></div>
        <div class="field"><label for="nf-format">Format</label><select id="nf-format" name="format">${Object.entries(FORMATS).map(([v, l]) => `<option value="${v}">${esc(l)}</option>`).join('')}</select>
          <div class="err" data-err="format" hidden></div></div>
        <div class="field"><label>Events</label><div class="checks">${KINDS.map(([k, l]) => `<label class="inline"><input type="checkbox" name="nf-event" value="${k}" checked> ${esc(l)}</label>`).join('')}</div>
          <div class="err" data-err="event_types" hidden></div></div>
      </div><div class="controls" style="margin-top:14px"><button class="btn primary" type="submit" id="nf-save">Create subscription</button></div>
      <div class="msg" id="nf-msg" hidden></div></form>`
    : '<div class="sub" id="n-readonly">Subscriptions are created and deleted with an admin token; this token can only look. URLs are shown up to their host.</div>'}`;
    let list = [];
    const render = () => {
      const body = $('#n-body');
      if (!body) return;
      body.innerHTML = list.length ? list.map((s) => `<tr class="click" data-sub="${esc(s.id)}">
        <td><div><b>${esc(s.name)}</b></div><div class="sub mono">${esc(s.url)}</div></td>
        <td>${esc(FORMATS[s.format] || s.format)}</td><td>${kindsHTML(s.event_types)}</td>
        <td class="num">${s.delivered}</td><td class="num">${s.pending}</td><td class="num">${s.failed}</td>
        <td class="latest">${latestHTML(s.latest_delivery)}</td>
        ${admin ? `<td><button class="btn danger small" type="button" data-delete="${esc(s.id)}">Delete</button></td>` : ''}</tr>`).join('')
        : `<tr><td colspan="8" class="empty">No subscriptions.${admin ? ' Create one below.' : ''}</td></tr>`;
      $$('tr[data-sub]', body).forEach((tr) => { tr.onclick = () => { location.hash = '#/notifications/' + tr.dataset.sub; }; });
      $$('button[data-delete]', body).forEach((b) => {
        b.onclick = async (ev) => {
          ev.stopPropagation();
          const s = list.find((x) => x.id === b.dataset.delete);
          if (s && await deleteSubscription(s)) await load();
        };
      });
    };
    let shown = '';
    const load = async () => {
      const l = (await api('GET', '/api/v1/notifications')).notifications || [];
      const key = JSON.stringify(l);
      if (key === shown) return; // unchanged: keep the rows (and what the pointer is on)
      shown = key; list = l; render();
    };
    const stop = polling(load);
    const clock = setInterval(render, 30000);
    if (admin) {
      $('#n-form').onsubmit = async (ev) => {
        ev.preventDefault();
        clearFieldErrors('#n-form');
        const msg = $('#nf-msg'); msg.hidden = true;
        const kinds = $$('input[name="nf-event"]:checked').map((c) => c.value);
        if (!kinds.length) { fieldError('event_types', 'choose at least one event'); return; }
        const body = { name: $('#nf-name').value.trim(), url: $('#nf-url').value.trim(), format: $('#nf-format').value, event_types: kinds };
        try {
          const s = await api('POST', '/api/v1/notifications', body);
          $('#nf-name').value = ''; $('#nf-url').value = '';
          msg.className = 'msg ok';
          msg.innerHTML = `Subscribed <b>${esc(s.name)}</b>. Its signing secret, shown only now: <code id="nf-secret">${esc(s.secret)}</code>`;
          msg.hidden = false;
          await load();
        } catch (e) {
          if (!(e.field && fieldError(e.field, e.message))) { msg.className = 'msg error'; msg.textContent = e.message; msg.hidden = false; }
        }
      };
    }
    return { destroy() { stop(); clearInterval(clock); } };
  }

  function notificationPage(id) {
    const admin = session.canAdmin();
    main.innerHTML = `<div class="crumbs"><a href="#/notifications">Notifications</a> / <span class="mono">${esc(id)}</span></div>
      <div class="page-head"><h1 id="n-title">Subscription</h1><span class="spacer"></span>
      ${admin ? '<button class="btn danger" type="button" id="n-delete">Delete</button>' : ''}</div>
      <div class="sub mono" id="n-url" style="margin:-8px 0 14px"></div>
      <div class="cards" id="n-cards"></div>
      <div class="panel flush"><h2 style="display:flex;align-items:center;gap:10px">Deliveries <span class="spacer" style="flex:1"></span>
        <select id="nd-status" style="font-size:13px;padding:4px 8px"><option value="">all statuses</option>
        ${['pending', 'delivered', 'failed'].map((s) => `<option value="${s}">${s}</option>`).join('')}</select></h2>
        <div class="scroll"><table><thead><tr><th class="num">#</th><th>Event</th><th>Status</th><th class="num">Attempts</th><th class="num">Response</th>
        <th>Last error</th><th>Last attempt</th><th>Next / delivered</th></tr></thead><tbody id="nd-body"></tbody></table></div>
        <div class="sub" style="padding:8px 18px">Newest first, at most 100. A pending delivery is retried with backoff.</div></div>`;
    let sub = null; let shown = '';
    const load = async () => {
      const st = $('#nd-status').value;
      const [s, d] = await Promise.all([api('GET', '/api/v1/notifications/' + id),
        api('GET', `/api/v1/notifications/${id}/deliveries${st ? '?status=' + st : ''}`)]);
      const key = JSON.stringify([s, d, Math.floor(Date.now() / 30000)]); // re-render at least every 30 s (the "ago" times)
      if (key === shown) return;
      shown = key; sub = s;
      $('#n-title').textContent = s.name;
      $('#n-url').textContent = s.url;
      $('#n-cards').innerHTML = `<div class="card"><div class="k">Format</div><div class="v" style="font-size:15px">${esc(FORMATS[s.format] || s.format)}</div></div>
        <div class="card"><div class="k">Events</div><div class="v" style="font-size:15px">${kindsHTML(s.event_types)}</div></div>
        <div class="card ok"><div class="k">Delivered</div><div class="v">${s.delivered}</div></div>
        <div class="card run"><div class="k">Pending</div><div class="v">${s.pending}</div></div>
        <div class="card fail"><div class="k">Failed</div><div class="v">${s.failed}</div></div>
        <div class="card"><div class="k">Created</div><div class="v" style="font-size:13px">${esc(fmtDate(s.created_at))}${s.created_by ? `<div class="sub">by ${esc(s.created_by)}</div>` : ''}</div></div>`;
      const ds = d.deliveries || [];
      $('#nd-body').innerHTML = ds.length ? ds.map((x) => `<tr data-delivery="${x.id}">
        <td class="num">${x.id}</td>
        <td><div>${esc(label(String(x.event_type).replace(/^image\./, '')))}</div>${x.rollout_id ? `<a class="sub mono" href="#/rollouts/${esc(x.rollout_id)}">${esc(short(x.rollout_id))}</a>` : ''}</td>
        <td>${pill(x.status)}</td><td class="num attempts">${x.attempts}</td>
        <td class="num code">${x.last_status_code ?? '—'}</td>
        <td class="reason">${x.last_error ? `<span style="color:#b42318">${esc(x.last_error)}</span>` : ''}</td>
        <td title="${esc(fmtDate(x.last_attempt_at))}">${esc(x.last_attempt_at ? ago(x.last_attempt_at) : 'not yet')}</td>
        <td>${x.delivered_at ? `<span title="${esc(fmtDate(x.delivered_at))}">${esc(fmtTime(x.delivered_at))}</span>`
    : (x.next_attempt_at ? `<span class="sub" title="${esc(fmtDate(x.next_attempt_at))}">next ${esc(fmtTime(x.next_attempt_at))}</span>` : '—')}</td></tr>`).join('')
        : '<tr><td colspan="8" class="empty">No deliveries yet. Only events after the subscription was created are sent.</td></tr>';
    };
    const stop = polling(load);
    $('#nd-status').onchange = () => load().catch(showError);
    const del = $('#n-delete');
    if (del) {
      del.onclick = async () => {
        if (sub && await deleteSubscription(sub)) location.hash = '#/notifications';
      };
    }
    return { destroy() { stop(); } };
  }

  // fieldError shows msg next to the form field the API named; false when there is no such field.
  function fieldError(k, msg) {
    const box = $(`[data-err="${k}"]`);
    if (!box) return false;
    box.textContent = msg; box.hidden = false; box.parentElement.classList.add('bad');
    return true;
  }
  function clearFieldErrors(form) {
    $$(`${form} [data-err]`).forEach((b) => { b.hidden = true; b.parentElement.classList.remove('bad'); });
  }

  function showError(e) {
    if (e && e.status === 401) return;
    let box = $('#page-error');
    if (!box) {
      box = document.createElement('div');
      box.id = 'page-error'; box.className = 'msg error';
      main.prepend(box);
    }
    box.textContent = (e && e.message) || String(e);
  }

  // ---- router ------------------------------------------------------------------------------------
  function route() {
    if (current) { current.destroy(); current = null; }
    if (!session.token) { current = signInPage(''); return; }
    $('#topbar').hidden = false;
    $('#who-name').textContent = session.name;
    $('#who-scope').textContent = session.scope;
    const parts = (location.hash.replace(/^#\/?/, '') || 'rollouts').split('/');
    $$('[data-nav]').forEach((a) => a.classList.toggle('active', a.dataset.nav === parts[0]));
    window.scrollTo(0, 0);
    switch (parts[0]) {
      case 'rollouts': current = parts[1] ? rolloutPage(parts[1]) : rolloutsPage(); break;
      case 'fleet': current = fleetPage(); break;
      case 'policies': current = parts[1] ? policyPage(parts[1]) : policiesPage(); break;
      case 'notifications': current = parts[1] ? notificationPage(parts[1]) : notificationsPage(); break;
      default: location.hash = '#/rollouts';
    }
  }
  $('#signout').onclick = () => signOut('');
  window.addEventListener('hashchange', route);
  route();
})();
