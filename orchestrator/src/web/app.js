// Airlock's web UI: sign in with a token, list and create sessions, chat with the agent, and
// approve or deny each tool call it proposes after seeing the exact diff or command.
//
// Safety rules of this file (checked by a unit test in web/mod.rs and by the browser tests):
// - everything that comes from the server is put into the page with textContent (never as
//   HTML), after `clean()` made control characters visible (ESC shows as ^[);
// - nothing from content becomes a URL, an image, a link or a style;
// - the token lives in sessionStorage (this tab only) and goes out as `Authorization: Bearer`
//   on fetch and as the WebSocket subprotocol `airlock.token.<T>` next to `airlock.v1`.
'use strict';

(function () {
  const TOKEN_KEY = 'airlock.token';
  const $ = (id) => document.getElementById(id);

  // ---- text safety ------------------------------------------------------------------------

  // Makes control characters visible: C0 as caret notation (ESC -> ^[, CR -> ^M, DEL -> ^?),
  // C1 and bidirectional overrides as <U+XXXX>. Newlines and tabs stay.
  function clean(value) {
    const s = value === null || value === undefined ? '' : String(value);
    let out = '';
    for (const ch of s) {
      const c = ch.codePointAt(0);
      if (ch === '\n' || ch === '\t') {
        out += ch;
      } else if (c < 0x20) {
        out += '^' + String.fromCharCode(c + 0x40);
      } else if (c === 0x7f) {
        out += '^?';
      } else if ((c >= 0x80 && c <= 0x9f) || (c >= 0x202a && c <= 0x202e) ||
                 (c >= 0x2066 && c <= 0x2069) || c === 0x200e || c === 0x200f ||
                 c === 0x061c || c === 0xfeff) {
        out += '<U+' + c.toString(16).toUpperCase().padStart(4, '0') + '>';
      } else {
        out += ch;
      }
    }
    return out;
  }

  // An element with a class and (cleaned) text.
  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = clean(text);
    return e;
  }

  function show(e, on) {
    e.classList.toggle('hidden', !on);
  }

  function shortId(id) {
    return String(id || '').slice(0, 8);
  }

  // Event ids are `<ms>-<seq>`; compares two of them.
  function cmpId(a, b) {
    const [am, as] = String(a).split('-').map(Number);
    const [bm, bs] = String(b).split('-').map(Number);
    return am !== bm ? am - bm : as - bs;
  }

  let toastTimer = null;
  function toast(text) {
    const t = $('toast');
    t.textContent = clean(text);
    show(t, true);
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => show(t, false), 6000);
  }

  // ---- the API ----------------------------------------------------------------------------

  let token = sessionStorage.getItem(TOKEN_KEY);

  async function api(method, path, body, withToken) {
    const headers = { Authorization: 'Bearer ' + (withToken || token) };
    const init = { method, headers, cache: 'no-store', credentials: 'omit', referrerPolicy: 'no-referrer' };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    let res;
    try {
      res = await fetch(path, init);
    } catch (e) {
      return { status: 0, json: { error: { code: 'network', message: 'the server cannot be reached' } } };
    }
    let json = null;
    try {
      json = await res.json();
    } catch (e) {
      json = null;
    }
    if (res.status === 401 && !withToken) {
      signOut('Your token is no longer accepted by the server. Sign in again.');
    }
    return { status: res.status, json };
  }

  function errText(r) {
    if (r.json && r.json.error) return r.json.error.code + ': ' + r.json.error.message;
    return 'HTTP ' + r.status;
  }

  // ---- sign in ----------------------------------------------------------------------------

  async function signIn(ev) {
    ev.preventDefault();
    const candidate = $('token').value.trim();
    const err = $('signin-error');
    show(err, false);
    if (!/^[A-Za-z0-9._~-]+$/.test(candidate)) {
      err.textContent = 'That does not look like an Airlock token.';
      show(err, true);
      return;
    }
    $('signin-button').disabled = true;
    const r = await api('GET', '/v1/sessions', undefined, candidate);
    $('signin-button').disabled = false;
    if (r.status === 200) {
      token = candidate;
      sessionStorage.setItem(TOKEN_KEY, token);
      $('token').value = '';
      enterApp(r.json.sessions || []);
    } else if (r.status === 401) {
      err.textContent = 'The server refused this token (401 unauthorized). Check it and try again.';
      show(err, true);
    } else {
      err.textContent = 'Sign-in failed: ' + clean(errText(r));
      show(err, true);
    }
  }

  function signOut(message) {
    closeView();
    token = null;
    sessionStorage.removeItem(TOKEN_KEY);
    show($('app'), false);
    show($('signout'), false);
    show($('who'), false);
    show($('conn'), false);
    show($('signin'), true);
    const err = $('signin-error');
    if (message) {
      err.textContent = message;
      show(err, true);
    } else {
      show(err, false);
    }
    if (location.hash) history.replaceState(null, '', location.pathname);
    $('token').focus();
  }

  // ---- sessions ---------------------------------------------------------------------------

  function enterApp(sessions) {
    show($('signin'), false);
    show($('app'), true);
    show($('signout'), true);
    renderSessions(sessions);
    route();
  }

  async function loadSessions() {
    const r = await api('GET', '/v1/sessions');
    if (r.status === 200) renderSessions(r.json.sessions || []);
    else if (r.status !== 401) toast('Could not list sessions: ' + errText(r));
  }

  function renderSessions(sessions) {
    const ul = $('sessions');
    ul.replaceChildren();
    show($('sessions-empty'), sessions.length === 0);
    if (sessions.length > 0) {
      const who = $('who');
      who.textContent = 'signed in as ' + clean(sessions[0].owner);
      show(who, true);
    }
    for (const s of sessions) {
      const li = el('li');
      const b = el('button', 'session-link');
      b.type = 'button';
      b.dataset.sessionId = s.id;
      b.appendChild(el('code', null, shortId(s.id)));
      b.appendChild(el('span', 'muted', new Date(s.created_at_ms).toLocaleString()));
      b.addEventListener('click', () => { location.hash = '#/s/' + encodeURIComponent(s.id); });
      if (view && view.id === s.id) b.classList.add('active');
      li.appendChild(b);
      ul.appendChild(li);
    }
  }

  async function newSession() {
    const r = await api('POST', '/v1/sessions');
    if (r.status !== 201) {
      if (r.status !== 401) toast('Could not create a session: ' + errText(r));
      return;
    }
    await loadSessions();
    location.hash = '#/s/' + encodeURIComponent(r.json.id);
  }

  // A notification's link (#call=ID, no token in it) opens that call's session after sign-in.
  let pendingCall = null;
  let focusCall = null;
  function takeCallLink() {
    const m = /^#call=([A-Za-z0-9-]+)$/.exec(location.hash);
    if (m) pendingCall = m[1];
  }

  async function openCallLink() {
    const id = pendingCall;
    pendingCall = null;
    const r = await api('GET', '/v1/tool-calls/' + encodeURIComponent(id));
    if (r.status === 200 && r.json.session_id) {
      focusCall = id;
      location.hash = '#/s/' + encodeURIComponent(r.json.session_id);
    } else if (r.status !== 401) {
      toast('That call is not there any more (or it is not yours).');
      history.replaceState(null, '', location.pathname);
    }
  }

  function route() {
    takeCallLink();
    if (pendingCall) {
      openCallLink();
      return;
    }
    const m = /^#\/s\/([A-Za-z0-9-]+)$/.exec(location.hash);
    if (m) openSession(decodeURIComponent(m[1]));
    else {
      closeView();
      show($('chat-empty'), true);
      show($('chat-head'), false);
      show($('log'), false);
      show($('composer'), false);
    }
  }

  // ---- one session ------------------------------------------------------------------------

  let view = null;

  function closeView() {
    if (!view) return;
    view.closed = true;
    clearTimeout(view.retryTimer);
    if (view.ws) view.ws.close();
    view = null;
  }

  async function openSession(id) {
    if (view && view.id === id) return;
    closeView();
    const v = {
      id, ws: null, lastId: null, closed: false, retry: 0, retryTimer: null, failures: 0,
      calls: new Map(), bubbles: new Map(), running: null, grantsAllowed: false,
    };
    view = v;
    for (const b of document.querySelectorAll('.session-link')) {
      b.classList.toggle('active', b.dataset.sessionId === id);
    }
    show($('chat-empty'), false);
    show($('chat-head'), true);
    show($('log'), true);
    show($('composer'), true);
    $('session-id').textContent = clean(id);
    $('log').replaceChildren();
    setRunning(v, null);
    const g = await api('GET', '/v1/sessions/' + encodeURIComponent(id) + '/grants');
    if (view !== v) return;
    if (g.status === 404) {
      note(v, 'error', 'No such session (it may have been deleted).');
      show($('composer'), false);
      return;
    }
    v.grantsAllowed = g.status === 200 && g.json.allowed === true;
    connect(v);
    $('message').focus();
  }

  function setConn(state, text) {
    const c = $('conn');
    c.dataset.state = state;
    c.textContent = text;
    show(c, true);
  }

  function connect(v) {
    const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
    let url = proto + '//' + location.host + '/v1/sessions/' + encodeURIComponent(v.id) + '/events';
    if (v.lastId) url += '?after=' + encodeURIComponent(v.lastId);
    setConn('connecting', v.lastId ? 'reconnecting…' : 'connecting…');
    let ws;
    try {
      ws = new WebSocket(url, ['airlock.v1', 'airlock.token.' + token]);
    } catch (e) {
      scheduleReconnect(v);
      return;
    }
    v.ws = ws;
    let opened = false;
    ws.onopen = () => {
      opened = true;
      v.retry = 0;
      v.failures = 0;
      setConn('live', 'live');
    };
    ws.onmessage = (m) => {
      if (view !== v) return;
      let msg;
      try {
        msg = JSON.parse(m.data);
      } catch (e) {
        return;
      }
      if (!msg.id) {
        // Not stored: a refusal of something this client sent, or a stream problem.
        const d = msg.data || {};
        toast((d.code || 'error') + ': ' + (d.message || ''));
        return;
      }
      if (v.lastId && cmpId(msg.id, v.lastId) <= 0) return; // already shown
      v.lastId = msg.id;
      try {
        handle(v, msg);
      } catch (e) {
        note(v, 'error', 'Could not show event ' + msg.type + ': ' + e);
      }
    };
    ws.onclose = () => {
      if (v.closed || view !== v) return;
      if (!opened) v.failures += 1;
      scheduleReconnect(v);
    };
  }

  async function scheduleReconnect(v) {
    if (v.closed || view !== v) return;
    if (v.failures >= 2) {
      // The upgrade keeps failing: find out whether it is the token or the session.
      const r = await api('GET', '/v1/sessions/' + encodeURIComponent(v.id) + '?limit=1');
      if (view !== v) return;
      if (r.status === 404) {
        setConn('error', 'session gone');
        note(v, 'error', 'This session no longer exists.');
        return;
      }
      if (r.status === 200 && v.failures === 2) {
        note(v, 'error', 'The event stream cannot be opened. If this persists, the server\'s ' +
          'allowed_origins must include ' + location.origin + '.');
      }
    }
    const delay = Math.min(500 * Math.pow(2, v.retry), 8000);
    v.retry += 1;
    setConn('reconnecting', 'disconnected — reconnecting in ' + Math.ceil(delay / 1000) + ' s');
    v.retryTimer = setTimeout(() => {
      if (!v.closed && view === v) connect(v);
    }, delay);
  }

  // ---- the log ----------------------------------------------------------------------------

  function append(node) {
    const log = $('log');
    const atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 120;
    log.appendChild(node);
    if (atBottom) log.scrollTop = log.scrollHeight;
  }

  function note(v, kind, text) {
    const n = el('div', 'note ' + kind, text);
    append(n);
    return n;
  }

  function setRunning(v, turnId) {
    v.running = turnId;
    show($('cancel-turn'), !!turnId);
    $('send').disabled = !!turnId;
    const s = $('turn-state');
    s.textContent = turnId ? 'agent working…' : '';
    s.classList.toggle('busy', !!turnId);
  }

  function handle(v, ev) {
    const d = ev.data || {};
    switch (ev.type) {
      case 'user_message': {
        const b = el('div', 'bubble user');
        b.appendChild(el('div', 'who', 'you'));
        b.appendChild(el('div', 'text', d.content));
        append(b);
        setRunning(v, d.turn_id);
        break;
      }
      case 'assistant_delta': {
        const b = bubble(v, d.turn_id, d.step);
        b.text.appendChild(document.createTextNode(clean(d.text)));
        b.seen = true;
        const log = $('log');
        if (log.scrollHeight - log.scrollTop - log.clientHeight < 200) log.scrollTop = log.scrollHeight;
        break;
      }
      case 'assistant_message': {
        const key = d.turn_id + '/' + d.step;
        const existing = v.bubbles.get(key);
        if (!existing && d.content) {
          bubble(v, d.turn_id, d.step).text.textContent = clean(d.content);
        }
        if (existing) existing.node.classList.add('done');
        break;
      }
      case 'call_proposed':
        callCard(v, d.call_id, d);
        break;
      case 'approval_required': {
        const c = callCard(v, d.call_id);
        c.sha = d.args_sha256 || c.sha;
        c.expires = d.expires_at_ms || c.expires;
        setStatus(c, 'awaiting_approval');
        showActions(v, c);
        break;
      }
      case 'call_edited': {
        const c = callCard(v, d.call_id);
        c.sha = d.args_sha256 || c.sha;
        c.args = d.args || c.args;
        c.preview = d.preview || null;
        const fresh = body({ tool: c.tool, args: c.args, preview: c.preview });
        c.bodyNode.replaceWith(fresh);
        c.bodyNode = fresh;
        addLine(c, 'muted', 'edited by ' + d.edited_by + ': the diff above is the new change');
        if (c.node.dataset.status === 'awaiting_approval') showActions(v, c);
        break;
      }
      case 'approved':
      case 'denied':
      case 'expired': {
        const c = callCard(v, d.call_id);
        setStatus(c, d.status || ev.type);
        hideActions(c);
        if (ev.type === 'denied' && d.reason) addLine(c, 'reason', 'reason: ' + d.reason);
        if (d.decided_by) addLine(c, 'muted', ev.type + ' by ' + d.decided_by);
        if (ev.type === 'expired') addLine(c, 'muted', 'Nobody decided in time; the call did not run.');
        break;
      }
      case 'call_started': {
        const c = callCard(v, d.call_id);
        setStatus(c, 'running');
        hideActions(c);
        break;
      }
      case 'output': {
        const c = callCard(v, d.call_id);
        show(c.output, true);
        c.output.appendChild(el('span', d.stream === 'stderr' ? 'stderr' : 'stdout', d.data));
        break;
      }
      case 'call_finished': {
        const c = callCard(v, d.call_id);
        setStatus(c, d.status);
        hideActions(c);
        finished(c, d);
        const res = d.result || {};
        if (res.tool === 'revert' && res.applied) {
          // The reverted call's change is undone: its Undo is used up.
          const orig = v.calls.get(res.reverts);
          if (orig && orig.undoRow) {
            orig.undoRow.replaceWith(el('div', 'line muted', 'reverted by call ' + shortId(d.call_id)));
            orig.undoRow = null;
          }
        }
        if (d.undo) showUndo(v, c, d.undo);
        break;
      }
      case 'call_cancelled': {
        const c = callCard(v, d.call_id);
        setStatus(c, 'cancelled');
        hideActions(c);
        break;
      }
      case 'tool_result':
        if (d.status === 'rejected' || d.status === 'not_run') {
          const why = d.error && d.error.message ? ': ' + d.error.message : '';
          note(v, 'warn', 'The model\'s ' + (d.tool || 'tool') + ' call was ' +
            (d.status === 'rejected' ? 'rejected' : 'not run') + why);
        }
        break;
      case 'session_grant':
        note(v, 'info', 'Allowed for the rest of this session: ' + d.tool + ' ' + d.pattern +
          (d.writable ? ' (runs with a writable workspace, as approved)' : ''));
        break;
      case 'agent_retry':
        note(v, 'muted', 'The model request failed (' + d.code + '); retrying in ' +
          Math.round((d.delay_ms || 0) / 100) / 10 + ' s (attempt ' + d.attempt + ').');
        break;
      case 'agent_error':
        note(v, 'error', 'Agent error ' + d.code + ': ' + d.message);
        break;
      case 'turn_finished': {
        let text = 'Turn ' + d.status;
        if (d.steps !== undefined) text += ' · ' + d.steps + (d.steps === 1 ? ' step' : ' steps');
        if (d.usage && d.usage.total_tokens) text += ' · ' + d.usage.total_tokens + ' tokens';
        if (d.error) text += ' · ' + (d.error.message || d.error.code || JSON.stringify(d.error));
        note(v, 'turn turn-' + d.status, text);
        if (v.running === d.turn_id || !v.running) setRunning(v, null);
        for (const b of v.bubbles.values()) b.node.classList.add('done');
        break;
      }
      default:
        break; // event types this UI does not know yet are ignored
    }
  }

  function bubble(v, turn, step) {
    const key = turn + '/' + step;
    let b = v.bubbles.get(key);
    if (!b) {
      const node = el('div', 'bubble assistant');
      node.appendChild(el('div', 'who', 'agent'));
      const text = el('div', 'text');
      node.appendChild(text);
      append(node);
      b = { node, text, seen: false };
      v.bubbles.set(key, b);
    }
    return b;
  }

  // ---- tool-call cards --------------------------------------------------------------------

  const STATUS_TEXT = {
    proposed: 'proposed',
    awaiting_approval: 'waiting for your approval',
    approved: 'approved',
    denied: 'denied',
    expired: 'approval expired',
    running: 'running',
    succeeded: 'succeeded',
    failed: 'failed',
    timed_out: 'timed out',
    cancelled: 'cancelled',
  };

  function callCard(v, id, d) {
    let c = v.calls.get(id);
    if (c) return c;
    d = d || { call_id: id, tool: '?', args: {} };
    const node = el('div', 'callcard');
    node.dataset.callId = id;
    node.dataset.tool = d.tool;
    const head = el('div', 'call-head');
    head.appendChild(el('span', 'tool', d.tool));
    head.appendChild(el('span', 'target', target(d)));
    const badge = el('span', 'badge');
    head.appendChild(badge);
    node.appendChild(head);
    const meta = el('div', 'call-meta');
    const decision = d.decision ? 'policy: ' + d.decision : '';
    meta.appendChild(el('span', null, [decision, d.rule].filter(Boolean).join(' · ')));
    meta.appendChild(el('span', 'muted', 'call ' + shortId(id)));
    node.appendChild(meta);
    const bodyNode = body(d);
    node.appendChild(bodyNode);
    const lines = el('div', 'call-lines');
    node.appendChild(lines);
    const actions = el('div', 'actions hidden');
    node.appendChild(actions);
    const output = el('pre', 'output hidden');
    node.appendChild(output);
    const result = el('div', 'result');
    node.appendChild(result);
    append(node);
    if (id === focusCall) {
      focusCall = null;
      node.classList.add('focused');
      node.scrollIntoView({ block: 'center' });
    }
    c = { id, node, badge, lines, actions, output, result, bodyNode, tool: d.tool, args: d.args || {},
          preview: d.preview || null, sha: d.args_sha256, expires: d.expires_at_ms,
          deniedByPolicy: false };
    v.calls.set(id, c);
    if (d.status) setStatus(c, d.status);
    if (d.status === 'denied') {
      c.deniedByPolicy = true;
      c.badge.textContent = 'denied by policy';
      addLine(c, 'reason', 'The policy does not allow this call (' + (d.rule || 'no rule') + '); it did not run.');
    }
    if (d.status === 'failed' && d.error) {
      addLine(c, 'error', (d.error.code || 'error') + ': ' + (d.error.message || ''));
    }
    return c;
  }

  function target(d) {
    const a = d.args || {};
    if (d.tool === 'run_shell') return '';
    if (d.tool === 'search') return a.pattern + (a.path ? ' in ' + a.path : '');
    if (d.tool === 'revert') {
      const names = (a.files || []).map((f) => f.path);
      return 'call ' + shortId(String(a.reverts || '')) + ': ' + names.slice(0, 3).join(', ') +
        (names.length > 3 ? ' and ' + (names.length - 3) + ' more' : '');
    }
    if (a.path !== undefined) return a.path;
    return '';
  }

  // What the call would do: the diff, the command, or the arguments.
  function body(d) {
    const a = d.args || {};
    if (d.preview && typeof d.preview.diff === 'string') {
      const wrap = el('div', 'change');
      if (d.preview.created) wrap.appendChild(el('div', 'muted', 'creates a new file'));
      const diff = d.preview.diff;
      wrap.appendChild(diff ? renderDiff(diff) : el('div', 'muted', 'no change to the file'));
      return wrap;
    }
    if (d.preview && Array.isArray(d.preview.changes)) {
      // A revert: the reverse change of each file the call changed.
      const wrap = el('div', 'change');
      for (const ch of d.preview.changes) {
        if (ch.kind === 'created') wrap.appendChild(el('div', 'muted', 'puts back ' + clean(ch.path)));
        if (ch.kind === 'deleted') wrap.appendChild(el('div', 'muted', 'removes ' + clean(ch.path)));
        if (ch.diff) wrap.appendChild(renderDiff(ch.diff));
      }
      return wrap;
    }
    if (d.tool === 'run_shell') {
      const wrap = el('div', 'change');
      wrap.appendChild(el('div', 'label', 'command' + (a.cwd ? ' (in ' + clean(a.cwd) + ')' : '')));
      wrap.appendChild(el('pre', 'command', a.command));
      return wrap;
    }
    // read_file / list_dir / search: the header says it all unless there are more arguments.
    const extra = Object.keys(a).filter((k) => k !== 'path' && !(d.tool === 'search' && k === 'pattern'));
    if (extra.length === 0) return el('div', 'hidden');
    return el('pre', 'args', JSON.stringify(a, null, 2));
  }

  function renderDiff(text) {
    const pre = el('pre', 'diff');
    const lines = clean(text).split('\n');
    if (lines.length && lines[lines.length - 1] === '') lines.pop();
    for (const line of lines) {
      let cls = 'ctx';
      if (line.startsWith('+++ ') || line.startsWith('--- ')) cls = 'meta';
      else if (line.startsWith('@@')) cls = 'hunk';
      else if (line.startsWith('+')) cls = 'add';
      else if (line.startsWith('-')) cls = 'del';
      else if (line.startsWith('\\')) cls = 'meta';
      const span = document.createElement('span');
      span.className = 'dl ' + cls;
      span.textContent = line + '\n';
      pre.appendChild(span);
    }
    return pre;
  }

  function setStatus(c, status) {
    c.node.dataset.status = status;
    if (status === 'denied' && c.deniedByPolicy) return;
    c.badge.textContent = STATUS_TEXT[status] || status;
    c.badge.className = 'badge status-' + status;
  }

  function addLine(c, cls, text) {
    c.lines.appendChild(el('div', 'line ' + cls, text));
  }

  function hideActions(c) {
    c.actions.replaceChildren();
    show(c.actions, false);
  }

  function showActions(v, c) {
    const a = c.actions;
    a.replaceChildren();
    show(a, true);
    const row = el('div', 'action-row');
    const approve = el('button', 'approve', 'Approve');
    approve.type = 'button';
    const reason = el('input', 'deny-reason');
    reason.placeholder = 'reason (optional, shown to the agent)';
    reason.maxLength = 2000;
    const deny = el('button', 'deny danger', 'Deny');
    deny.type = 'button';
    row.appendChild(approve);
    row.appendChild(reason);
    row.appendChild(deny);
    a.appendChild(row);
    const pattern = c.tool === 'run_shell' ? c.args.command : c.args.path;
    let grantBtn = null;
    let grantInput = null;
    if (v.grantsAllowed && typeof pattern === 'string' && pattern) {
      const g = el('div', 'action-row grant');
      grantBtn = el('button', 'ghost approve-session', 'Approve and allow for this session:');
      grantBtn.type = 'button';
      grantInput = el('input', 'grant-pattern');
      grantInput.value = pattern;
      g.appendChild(grantBtn);
      g.appendChild(grantInput);
      a.appendChild(g);
    }
    // Per-hunk choice: every hunk is ticked; untick what should not be applied.
    const hunks = (c.preview && Array.isArray(c.preview.hunks)) ? c.preview.hunks : [];
    const boxes = [];
    if (hunks.length > 1) {
      const list = el('div', 'hunks');
      list.appendChild(el('div', 'label', 'Hunks to apply:'));
      for (const h of hunks) {
        const lab = el('label', 'hunk-choice');
        const box = el('input');
        box.type = 'checkbox';
        box.checked = true;
        box.dataset.hunk = String(h.id);
        boxes.push(box);
        lab.appendChild(box);
        lab.appendChild(el('span', null, ' ' + clean(h.header) + ' (+' + h.added + ' −' + h.removed + ')'));
        list.appendChild(lab);
      }
      a.appendChild(list);
    }
    // Edit before approving: the user's own content, previewed by the server.
    let editBtn = null;
    if (c.tool === 'write_file' || c.tool === 'edit_file') {
      const er = el('div', 'action-row edit');
      editBtn = el('button', 'ghost edit-change', 'Edit…');
      editBtn.type = 'button';
      er.appendChild(editBtn);
      a.appendChild(er);
    }
    const foot = el('div', 'muted small');
    foot.appendChild(el('span', null, 'bound to args_sha256 ' + String(c.sha || '').slice(0, 16) + '…'));
    if (c.expires) {
      const exp = el('span', 'expires');
      exp.dataset.expires = String(c.expires);
      foot.appendChild(exp);
    }
    a.appendChild(foot);
    const err = el('div', 'line error hidden');
    a.appendChild(err);
    tickExpiry();

    const busy = (on) => {
      for (const b of a.querySelectorAll('button, input')) b.disabled = on;
    };
    const decide = async (decision, why) => {
      const picked = boxes.filter((b) => b.checked).map((b) => Number(b.dataset.hunk));
      if (decision === 'approve' && boxes.length && picked.length === 0) {
        err.textContent = 'Tick at least one hunk to approve, or deny the call.';
        show(err, true);
        return;
      }
      busy(true);
      const body = { decision, args_sha256: c.sha };
      if (why) body.reason = why;
      if (decision === 'approve' && picked.length < boxes.length) body.hunks = picked;
      const r = await api('POST', '/v1/tool-calls/' + encodeURIComponent(c.id) + '/decision', body);
      if (r.status !== 200) {
        busy(false);
        err.textContent = clean('Not ' + (decision === 'approve' ? 'approved' : 'denied') + ': ' + errText(r));
        show(err, true);
      }
      // Success shows through the call's events.
    };
    approve.addEventListener('click', () => decide('approve'));
    if (editBtn) editBtn.addEventListener('click', () => openEditor(c, a, err, busy));
    deny.addEventListener('click', () => decide('deny', reason.value.trim()));
    reason.addEventListener('keydown', (e) => {
      if (e.key === 'Enter') { e.preventDefault(); decide('deny', reason.value.trim()); }
    });
    if (grantBtn) {
      grantBtn.addEventListener('click', async () => {
        // No grant for an approval that would be refused (no hunk ticked).
        if (boxes.length && !boxes.some((b) => b.checked)) {
          err.textContent = 'Tick at least one hunk to approve, or deny the call.';
          show(err, true);
          return;
        }
        busy(true);
        const r = await api('POST', '/v1/sessions/' + encodeURIComponent(v.id) + '/grants',
          { tool: c.tool, pattern: grantInput.value });
        if (r.status !== 201) {
          busy(false);
          err.textContent = clean('No session grant: ' + errText(r));
          show(err, true);
          return;
        }
        decide('approve');
      });
    }
  }

  // The edit box: a write's whole content, or one box per edit's new text. "Preview edit"
  // sends it; the call_edited event then shows the new diff and fresh buttons.
  function openEditor(c, a, err, busy) {
    if (a.querySelector('.edit-box')) return;
    const box = el('div', 'edit-box');
    const areas = [];
    const texts = c.tool === 'write_file'
      ? [c.args.content || '']
      : (c.args.edits || []).map((e) => e.new_string || '');
    texts.forEach((t, i) => {
      if (texts.length > 1 || c.tool === 'edit_file') {
        box.appendChild(el('div', 'label', c.tool === 'write_file' ? 'content' : 'new text of edit ' + (i + 1) + ' of ' + texts.length));
      }
      const ta = el('textarea', 'edit-text');
      ta.value = t;
      ta.rows = Math.min(20, Math.max(4, t.split('\n').length + 1));
      ta.spellcheck = false;
      areas.push(ta);
      box.appendChild(ta);
    });
    const row = el('div', 'action-row');
    const send = el('button', 'preview-edit', 'Preview edit');
    send.type = 'button';
    const cancel = el('button', 'ghost', 'Cancel');
    cancel.type = 'button';
    row.appendChild(send);
    row.appendChild(cancel);
    box.appendChild(row);
    a.insertBefore(box, a.querySelector('.small'));
    cancel.addEventListener('click', () => box.remove());
    send.addEventListener('click', async () => {
      const body = { args_sha256: c.sha };
      if (c.tool === 'write_file') body.content = areas[0].value;
      else body.new_strings = areas.map((t) => t.value);
      busy(true);
      const r = await api('POST', '/v1/tool-calls/' + encodeURIComponent(c.id) + '/edit', body);
      busy(false);
      if (r.status !== 200) {
        err.textContent = clean('Not edited: ' + errText(r));
        show(err, true);
      }
      // Success shows through the call_edited event (new diff, new buttons).
    });
  }

  // Undo on an applied change: proposes the reverse change as a new call (its diff then
  // waits for approval like any other); what could not be kept is said here.
  function showUndo(v, c, undo) {
    const files = Array.isArray(undo.files) ? undo.files : [];
    const notKept = Array.isArray(undo.not_kept) ? undo.not_kept : [];
    const row = el('div', 'undo-row');
    if (files.length && undo.expires_at_ms) {
      const btn = el('button', 'ghost undo', 'Undo');
      btn.type = 'button';
      btn.title = 'Propose putting back: ' + files.map((f) => f.path).join(', ');
      row.appendChild(btn);
      const err = el('span', 'line error hidden');
      btn.addEventListener('click', async () => {
        btn.disabled = true;
        const r = await api('POST', '/v1/tool-calls/' + encodeURIComponent(c.id) + '/revert', {});
        if (r.status !== 201) {
          btn.disabled = false;
          err.textContent = clean('Not reverted: ' + errText(r));
          show(err, true);
          return;
        }
        // The revert arrives as a new call through the session's events.
        btn.textContent = 'Undo proposed';
      });
      row.appendChild(el('span', 'muted small', files.length + ' file(s) can be put back'));
      row.appendChild(err);
    }
    for (const n of notKept) {
      row.appendChild(el('div', 'muted small', 'cannot undo ' + clean(n.path) + ': ' + clean(n.reason)));
    }
    if (!row.childNodes.length) return;
    if (c.undoRow) c.undoRow.replaceWith(row);
    else c.result.appendChild(row);
    c.undoRow = row;
  }

  function tickExpiry() {
    const now = Date.now();
    for (const e of document.querySelectorAll('.expires')) {
      const left = Math.max(0, Math.round((Number(e.dataset.expires) - now) / 1000));
      const mm = Math.floor(left / 60);
      const ss = String(left % 60).padStart(2, '0');
      e.textContent = left > 0 ? ' · expires in ' + mm + ':' + ss : ' · expiring…';
    }
  }

  function finished(c, d) {
    const r = c.result;
    r.replaceChildren();
    if (d.error) {
      r.appendChild(el('div', 'line error', (d.error.code || 'error') + ': ' + (d.error.message || '')));
    }
    const o = d.outcome || {};
    const bits = [];
    if (o.timed_out) bits.push('hit its time limit and was stopped');
    if (o.oom_killed) bits.push('ran out of memory');
    if (o.output_truncated) bits.push('output limit reached, stopped');
    if (o.cancelled) bits.push('cancelled');
    if (typeof o.duration_ms === 'number') bits.push(o.duration_ms + ' ms');
    const res = d.result;
    if (res && res.tool) {
      switch (res.tool) {
        case 'read_file': {
          const head = res.path + ' · lines ' + res.first_line + '–' +
            (res.first_line + res.lines_returned - 1) + ' of ' + res.total_lines +
            (res.truncated ? ' (truncated)' : '');
          const det = el('details', 'content');
          det.appendChild(el('summary', null, head));
          det.appendChild(el('pre', 'file', res.content !== undefined ? res.content : res.binary_summary));
          r.appendChild(det);
          break;
        }
        case 'list_dir': {
          const det = el('details', 'content');
          det.appendChild(el('summary', null, res.path + ' · ' + res.entries.length + ' entries' +
            (res.truncated ? ' (truncated)' : '')));
          det.appendChild(el('pre', 'file', res.entries.map((e) =>
            e.path + (e.kind === 'dir' ? '/' : '')).join('\n')));
          r.appendChild(det);
          break;
        }
        case 'search': {
          const det = el('details', 'content');
          det.appendChild(el('summary', null, res.matches.length + ' matches in ' +
            res.files_searched + ' files' + (res.truncated ? ' (truncated)' : '')));
          det.appendChild(el('pre', 'file', res.matches.map((m) =>
            m.path + ':' + m.line_number + ': ' + m.line).join('\n')));
          r.appendChild(det);
          break;
        }
        case 'write_file':
        case 'edit_file':
          bits.unshift(res.applied ? (res.created ? 'created ' : 'changed ') + res.path : 'not applied');
          break;
        case 'revert':
          bits.unshift(res.applied ? 'reverted ' + (res.changes || []).length + ' file(s) of call ' + shortId(res.reverts) : 'not applied');
          break;
        case 'run_shell':
          bits.unshift(res.signal ? 'killed by signal ' + res.signal : 'exit code ' + res.exit_code);
          if (res.changes && res.changes.length) {
            bits.push(res.changes.length + ' file(s) changed: ' +
              res.changes.map((ch) => ch.path).slice(0, 10).join(', '));
          }
          break;
        default:
          break;
      }
    }
    if (bits.length) r.appendChild(el('div', 'line muted', bits.join(' · ')));
  }

  // ---- the composer -----------------------------------------------------------------------

  async function send(ev) {
    ev.preventDefault();
    if (!view) return;
    const box = $('message');
    const content = box.value.trim();
    if (!content) return;
    $('send').disabled = true;
    const r = await api('POST', '/v1/sessions/' + encodeURIComponent(view.id) + '/messages', { content });
    if (r.status === 202) {
      box.value = '';
      setRunning(view, r.json.turn_id);
    } else {
      $('send').disabled = false;
      if (r.status !== 401) toast(errText(r));
    }
  }

  async function cancelTurn() {
    if (!view) return;
    const r = await api('POST', '/v1/sessions/' + encodeURIComponent(view.id) + '/cancel');
    if (r.status !== 200 && r.status !== 401) toast('Could not stop the turn: ' + errText(r));
  }

  // ---- start ------------------------------------------------------------------------------

  document.addEventListener('DOMContentLoaded', () => {
    takeCallLink(); // before a sign-out clears the address
    $('signin-form').addEventListener('submit', signIn);
    $('signout').addEventListener('click', () => signOut());
    $('new-session').addEventListener('click', newSession);
    $('composer').addEventListener('submit', send);
    $('message').addEventListener('keydown', (e) => {
      if (e.key === 'Enter' && !e.shiftKey) {
        e.preventDefault();
        $('composer').requestSubmit();
      }
    });
    $('cancel-turn').addEventListener('click', cancelTurn);
    window.addEventListener('hashchange', () => { if (token) route(); });
    setInterval(tickExpiry, 1000);
    if (token) {
      api('GET', '/v1/sessions').then((r) => {
        if (r.status === 200) enterApp(r.json.sessions || []);
        else if (r.status !== 401) signOut('Sign-in failed: ' + errText(r));
      });
    } else {
      signOut();
    }
  });
})();
