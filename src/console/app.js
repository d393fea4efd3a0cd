// uring-gateway web console: one WebSocket to /ws in JSON mode
// (docs/PROTOCOL.md section 8). No framework, no build step, no requests
// beyond the gateway that served this file.
'use strict';

(() => {
  const NIL = '00000000-0000-0000-0000-000000000000';
  const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
  const LOG_MAX = 300;
  const REPLIES_MAX = 50;
  const PENDING_MAX = 256;
  const BACKOFF_MIN_MS = 500;
  const BACKOFF_MAX_MS = 30000;
  const TIME_SYNC_EVERY_MS = 15000;
  const TIME_SAMPLES = 8;
  const TICK_MS = 1000;

  const $ = (id) => document.getElementById(id);
  const ui = {
    status: $('conn-status'), reconnect: $('reconnect'), myId: $('my-id'),
    offset: $('clock-offset'), rtt: $('clock-rtt'), showToken: $('show-token'),
    authBox: $('auth-box'), authReason: $('auth-reason'), tokenForm: $('token-form'), token: $('token'),
    watchForm: $('watch-form'), code: $('code'), codeError: $('code-error'),
    presence: $('presence'), presenceSince: $('presence-since'),
    stateMeta: $('state-meta'), state: $('state'), stateRaw: $('state-raw'), refresh: $('refresh-state'),
    commandForm: $('command-form'), command: $('command'), replies: $('replies'),
    log: $('log'), clearLog: $('clear-log'),
  };

  // ----- session storage (this tab only) ---------------------------------

  const KEY = 'uring-gateway-console.';
  const load = (name) => {
    try { return sessionStorage.getItem(KEY + name) || ''; } catch { return ''; }
  };
  const save = (name, value) => {
    try { sessionStorage.setItem(KEY + name, value); } catch { /* storage disabled */ }
  };

  function randomUuid() {
    if (crypto.randomUUID) return crypto.randomUUID(); // secure contexts only
    const b = crypto.getRandomValues(new Uint8Array(16));
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    const h = Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
    return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
  }

  function freshId() {
    const id = randomUuid();
    save('id', id);
    return id;
  }

  let me = UUID_RE.test(load('id')) ? load('id') : freshId();
  let token = load('token');
  let watched = UUID_RE.test(load('code')) ? load('code').toLowerCase() : '';

  // ----- connection -------------------------------------------------------

  let ws = null;
  let registered = false;
  let authBlocked = false;
  let attempt = 0;
  let reconnectAt = 0;
  let reconnectTimer = 0;
  let nextId = 1;
  let heartbeatMs = 90000;
  let lastSent = 0;
  let lastHeard = 0;
  let lastTimeSync = 0;
  let timeSamples = [];
  let offsetUs = 0;
  const pending = new Map(); // id -> { kind, li? }

  const nowUs = () => Math.round((performance.timeOrigin + performance.now()) * 1000);

  function wsUrl() {
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    return `${scheme}//${location.host}/ws`;
  }

  function setStatus(state, text) {
    ui.status.dataset.state = state;
    ui.status.textContent = text;
    ui.reconnect.hidden = state !== 'waiting';
  }

  function connect() {
    clearTimeout(reconnectTimer);
    reconnectAt = 0;
    registered = false;
    setStatus('connecting', 'connecting…');
    let sock;
    try {
      sock = new WebSocket(wsUrl());
    } catch (err) {
      logNote(`cannot open ${wsUrl()}: ${err.message}`, true);
      scheduleReconnect();
      return;
    }
    ws = sock;
    sock.onopen = () => {
      if (ws !== sock) return;
      nextId = 1;
      pending.clear();
      const hello = { kind: 'hello', src: me };
      if (token) hello.payload = token;
      send(hello);
    };
    sock.onmessage = (ev) => {
      if (ws !== sock) return;
      lastHeard = Date.now();
      if (typeof ev.data !== 'string') {
        logNote('binary message ignored (this page speaks JSON)', false);
        return;
      }
      let frame;
      try {
        frame = JSON.parse(ev.data);
      } catch {
        logNote(`unreadable message: ${ev.data.slice(0, 200)}`, true);
        return;
      }
      receive(frame);
    };
    sock.onclose = (ev) => {
      if (ws !== sock) return;
      ws = null;
      registered = false;
      logNote(`connection closed (code ${ev.code})`, false);
      if (authBlocked) {
        setStatus('auth', 'token needed');
      } else {
        scheduleReconnect();
      }
    };
  }

  function scheduleReconnect() {
    const ceiling = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** attempt);
    const delay = ceiling / 2 + Math.random() * (ceiling / 2);
    attempt += 1;
    reconnectAt = Date.now() + delay;
    reconnectTimer = setTimeout(connect, delay);
    showCountdown();
  }

  function showCountdown() {
    if (!reconnectAt) return;
    const s = Math.max(0, Math.ceil((reconnectAt - Date.now()) / 1000));
    setStatus('waiting', `disconnected, retrying in ${s} s`);
  }

  function send(frame) {
    if (!ws || ws.readyState !== WebSocket.OPEN) return 0;
    const id = nextId++;
    const out = Object.assign({ id }, frame);
    ws.send(JSON.stringify(out));
    lastSent = Date.now();
    logFrame('out', out);
    return id;
  }

  function request(kind, fields, context) {
    const id = send(Object.assign({ kind }, fields));
    if (id) pending.set(id, Object.assign({ kind }, context));
    // Commands nobody answers stay pending; forget the oldest.
    if (pending.size > PENDING_MAX) pending.delete(pending.keys().next().value);
    return id;
  }

  // ----- frames from the gateway -----------------------------------------

  function receive(f) {
    logFrame('in', f);
    const asked = pending.get(f.id);
    if (f.id && f.kind !== 'data') pending.delete(f.id);
    switch (f.kind) {
      case 'welcome': return onWelcome(f);
      case 'time_resp': return onTime(f);
      case 'presence': return onPresence(f);
      case 'state': return onState(f);
      case 'data': return onData(f, asked);
      case 'error': return onError(f, asked);
      default: return undefined; // heartbeat, state_ack
    }
  }

  function onWelcome(f) {
    registered = true;
    attempt = 0;
    authBlocked = false;
    heartbeatMs = f.heartbeat_timeout_ms || heartbeatMs;
    if (token) ui.authBox.hidden = true;
    setStatus('connected', 'connected');
    timeSamples = [];
    syncTime();
    if (watched) watch(watched);
  }

  function syncTime() {
    lastTimeSync = Date.now();
    request('time_req', { t0: nowUs() });
  }

  function onTime(f) {
    const t3 = nowUs();
    const offset = ((f.t1 - f.t0) + (f.t2 - t3)) / 2;
    const rtt = (t3 - f.t0) - (f.t2 - f.t1);
    timeSamples.push({ offset, rtt });
    if (timeSamples.length > TIME_SAMPLES) timeSamples.shift();
    // Like NTP, trust the sample with the shortest round trip.
    const best = timeSamples.reduce((a, b) => (b.rtt < a.rtt ? b : a));
    offsetUs = best.offset;
    const sign = best.offset >= 0 ? '+' : '−';
    ui.offset.textContent = `${sign}${(Math.abs(best.offset) / 1000).toFixed(1)} ms`;
    ui.rtt.textContent = `(round trip ${(best.rtt / 1000).toFixed(1)} ms)`;
  }

  function onPresence(f) {
    if (f.address !== watched) return;
    const since = f.at_us ? `since ${when(f.at_us)}` : '(not seen by this gateway)';
    showPresence(String(f.online), f.online ? 'online' : 'offline', since);
  }

  // online: 'true', 'false' or 'unknown' (styles and tests read it).
  function showPresence(online, text, since) {
    ui.presence.dataset.online = online;
    ui.presence.textContent = text;
    ui.presenceSince.textContent = since;
  }

  function clearState(meta) {
    ui.stateMeta.textContent = meta;
    ui.state.replaceChildren();
    ui.stateRaw.hidden = true;
  }

  function onState(f) {
    if (f.address !== watched) return;
    clearState(`stored ${when(f.updated_at_us)}`);
    const text = payloadText(f);
    let value;
    try { value = JSON.parse(text); } catch { value = undefined; }
    if (value && typeof value === 'object' && !Array.isArray(value)) {
      for (const [key, v] of Object.entries(value)) {
        const dt = el('dt', key);
        const dd = el('dd', typeof v === 'string' ? v : JSON.stringify(v));
        dd.dataset.key = key;
        if (typeof v === 'boolean') dd.className = v ? 'on' : 'off';
        ui.state.append(dt, dd);
      }
    } else {
      ui.stateRaw.hidden = false;
      ui.stateRaw.textContent = text;
    }
  }

  function onData(f, asked) {
    const text = payloadText(f);
    if (asked && asked.kind === 'data' && f.src === asked.dst && asked.li) {
      setResult(asked.li, 'ok', text);
      return;
    }
    const li = addReply(`from ${f.src}`);
    setResult(li, 'ok', text);
  }

  function onError(f, asked) {
    const what = `${f.error}: ${f.message || ''}`.trim();
    if (asked && asked.li) setResult(asked.li, 'error', what);
    switch (f.error) {
      case 'auth_failed':
        authBlocked = true;
        ui.authBox.hidden = false;
        ui.authReason.textContent = `The gateway refused this page: ${f.message || 'auth_failed'}. Enter a token.`;
        ui.token.focus();
        break;
      case 'taken_over':
        // Another tab (a duplicated one shares session storage) took our
        // address: pick a new one so the two do not keep taking turns.
        me = freshId();
        ui.myId.textContent = me;
        break;
      case 'not_found':
        if (asked && asked.kind === 'state_get' && asked.address === watched) {
          clearState('no state stored yet');
        }
        break;
      case 'forbidden':
        if (asked && asked.kind === 'subscribe' && asked.address === watched) {
          showPresence('unknown', 'forbidden', f.message || '');
        }
        break;
      default:
        break;
    }
  }

  // ----- what the user does -----------------------------------------------

  function watch(code) {
    request('subscribe', { address: code }, { address: code });
    request('state_get', { address: code }, { address: code });
  }

  ui.watchForm.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const code = ui.code.value.trim().toLowerCase();
    if (!UUID_RE.test(code) || code === NIL) {
      ui.code.setAttribute('aria-invalid', 'true');
      ui.codeError.textContent = 'A controller code is a UUID such as 6fa76274-4205-419a-990f-dc6cbcef8305.';
      return;
    }
    ui.code.removeAttribute('aria-invalid');
    ui.codeError.textContent = '';
    if (registered && watched && watched !== code) send({ kind: 'unsubscribe', address: watched });
    watched = code;
    save('code', code);
    showPresence('unknown', registered ? 'asking…' : 'waiting for the gateway', '');
    clearState('—');
    if (registered) watch(code);
  });

  ui.refresh.addEventListener('click', () => {
    if (registered && watched) request('state_get', { address: watched }, { address: watched });
  });

  function sendCommand(text) {
    if (!watched) {
      ui.code.focus();
      ui.codeError.textContent = 'Watch a controller first.';
      return;
    }
    const li = addReply(text);
    if (!registered) {
      setResult(li, 'error', 'not connected to the gateway');
      return;
    }
    const id = request('data', { dst: watched, payload: text }, { dst: watched, li });
    li.dataset.id = String(id);
  }

  ui.commandForm.addEventListener('submit', (ev) => {
    ev.preventDefault();
    sendCommand(ui.command.value);
  });

  for (const button of document.querySelectorAll('[data-command]')) {
    button.addEventListener('click', () => {
      ui.command.value = button.dataset.command;
      sendCommand(button.dataset.command);
    });
  }

  ui.tokenForm.addEventListener('submit', (ev) => {
    ev.preventDefault();
    token = ui.token.value.trim();
    save('token', token);
    authBlocked = false;
    attempt = 0;
    if (ws) ws.close();
    ws = null;
    connect();
  });

  ui.showToken.addEventListener('click', () => {
    ui.authBox.hidden = !ui.authBox.hidden;
    if (!ui.authBox.hidden) ui.token.focus();
  });

  ui.reconnect.addEventListener('click', () => {
    attempt = 0;
    connect();
  });

  ui.clearLog.addEventListener('click', () => ui.log.replaceChildren());

  // ----- rendering --------------------------------------------------------

  function el(tag, text, className) {
    const e = document.createElement(tag);
    if (text !== undefined) e.textContent = text;
    if (className) e.className = className;
    return e;
  }

  function payloadText(f) {
    if (typeof f.payload === 'string') return f.payload;
    if (typeof f.payload_b64 === 'string') return `(binary, base64) ${f.payload_b64}`;
    return '';
  }

  // A gateway time (µs) as local wall-clock time, corrected by the offset.
  function when(us) {
    const d = new Date((us - offsetUs) / 1000);
    const today = new Date().toDateString() === d.toDateString();
    const time = d.toLocaleTimeString();
    return today ? time : `${d.toLocaleDateString()} ${time}`;
  }

  const short = (uuid) => (uuid && uuid !== NIL ? `${uuid.slice(0, 8)}…` : 'gateway');

  function addReply(commandText) {
    const li = el('li');
    li.append(el('code', commandText, 'cmd'), el('span', 'waiting…', 'result pending'));
    ui.replies.append(li);
    while (ui.replies.children.length > REPLIES_MAX) ui.replies.firstElementChild.remove();
    li.scrollIntoView({ block: 'nearest' });
    return li;
  }

  function setResult(li, cls, text) {
    const result = li.querySelector('.result');
    result.className = `result ${cls}`;
    result.textContent = text;
  }

  function summary(f) {
    switch (f.kind) {
      case 'hello': return `as ${f.src}${f.payload ? ' with token' : ''}`;
      case 'welcome': return `heartbeat ${f.heartbeat_timeout_ms} ms, max payload ${f.max_payload} B`;
      case 'time_req': return `t0 ${f.t0}`;
      case 'time_resp': return `t1 ${f.t1} t2 ${f.t2}`;
      case 'subscribe': case 'unsubscribe': case 'state_get': return f.address;
      case 'presence': return `${f.address} ${f.online ? 'online' : 'offline'}`;
      case 'state': return `${f.address} ${payloadText(f)}`;
      case 'state_ack': return `updated ${f.updated_at_us}`;
      case 'data': return `${f.dst && f.dst !== me ? `to ${short(f.dst)}` : `from ${short(f.src)}`} ${payloadText(f)}`;
      case 'error': return `${f.error}: ${f.message || ''}`;
      default: return '';
    }
  }

  function stamp() {
    const d = new Date();
    return `${d.toLocaleTimeString([], { hour12: false })}.${String(d.getMilliseconds()).padStart(3, '0')}`;
  }

  function appendLog(li) {
    const follow = ui.log.scrollTop + ui.log.clientHeight >= ui.log.scrollHeight - 4;
    ui.log.append(li);
    while (ui.log.children.length > LOG_MAX) ui.log.firstElementChild.remove();
    if (follow) ui.log.scrollTop = ui.log.scrollHeight;
  }

  function logFrame(dir, f) {
    const isError = f.kind === 'error';
    const li = el('li', undefined, `${dir}${isError ? ' error' : ''}`);
    li.dataset.kind = f.kind;
    li.append(
      el('span', stamp(), 'time'),
      el('span', dir === 'out' ? '→' : '←', 'dir'),
      el('span', f.kind, 'kind'),
      el('span', `#${f.id}`, 'id'),
      el('span', summary(f), 'text'),
    );
    li.querySelector('.dir').setAttribute('aria-label', dir === 'out' ? 'sent' : 'received');
    appendLog(li);
  }

  function logNote(text, isError) {
    const li = el('li', undefined, `note${isError ? ' error' : ''}`);
    li.append(el('span', stamp(), 'time'), el('span', '·', 'dir'), el('span', text, 'text'));
    appendLog(li);
  }

  // ----- once a second ------------------------------------------------------

  function tick() {
    const now = Date.now();
    if (reconnectAt) showCountdown();
    if (!registered || !ws) return;
    if (now - lastHeard > heartbeatMs) {
      logNote('the gateway has been silent for the heartbeat timeout; reconnecting', true);
      ws.close();
      return;
    }
    if (now - lastSent >= heartbeatMs / 3) send({ kind: 'heartbeat' });
    if (now - lastTimeSync >= TIME_SYNC_EVERY_MS) syncTime();
  }

  ui.myId.textContent = me;
  ui.token.value = token;
  if (watched) {
    ui.code.value = watched;
    showPresence('unknown', 'waiting for the gateway', '');
  }
  setInterval(tick, TICK_MS);
  connect();
})();
