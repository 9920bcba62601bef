/*
 * chatd browser client. Plain script, no build step, no dependencies.
 *
 * Guarantees the user can see:
 *  - every message sent carries an id and stays "pending" until the server's
 *    ack (durable); it is resent with the same id after a reconnect until
 *    acked, so the server's deduplication makes retries harmless;
 *  - after a disconnect the client reconnects with exponential backoff and
 *    jitter and rejoins every room with `since` = the last seq it holds, so
 *    nothing is missed; messages are kept per room by seq, so nothing is
 *    shown twice and everything is shown in seq order.
 *
 * User data only ever reaches the page through textContent or a validated
 * href: never innerHTML.
 */
'use strict';

(function () {
  const ROOM_RE = /^[A-Za-z0-9_.:-]{1,128}$/;
  const USER_RE = /^[A-Za-z0-9_.-]{1,64}$/;
  const HISTORY_PAGE = 50;
  const BACKOFF_BASE_MS = 500;
  const BACKOFF_MAX_MS = 15000;
  const TYPING_REPEAT_MS = 3000;    // resend active:true at most this often
  const TYPING_IDLE_MS = 3500;      // send active:false after this pause
  const TYPING_EXPIRE_MS = 6500;    // forget a typer who went silent
  const ACK_TIMEOUT_MS = 15000;     // resend (same id) if no answer by then
  const PRESENCE_POLL_MS = 30000;

  // ------------------------------------------------------------------ DOM
  const $ = (id) => document.getElementById(id);

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
  }

  const ui = {
    login: $('login'), loginForm: $('login-form'), loginUser: $('login-user'),
    loginToken: $('login-token'), loginRoom: $('login-room'), loginError: $('login-error'),
    app: $('app'), conn: $('conn'), connText: $('conn-text'), me: $('me'), meAvatar: $('me-avatar'),
    signout: $('signout'), rooms: $('rooms'), joinForm: $('join-form'), joinRoom: $('join-room'),
    presence: $('presence'), peopleCount: $('people-count'), menu: $('menu'), scrim: $('scrim'),
    roomName: $('room-name'), roomSub: $('room-sub'), leave: $('leave'),
    banner: $('banner'), bannerText: $('banner-text'), bannerClose: $('banner-close'),
    log: $('log'), older: $('older'), views: $('room-views'), jump: $('jump'),
    typing: $('typing'), composer: $('composer'), input: $('input'), send: $('send'),
    attach: $('attach'), attachRow: $('attach-row'), attachUrl: $('attach-url'),
  };

  // ---------------------------------------------------------------- state
  const S = {
    ident: null,            // { user } or { token }
    me: null,               // the user name the server gave in welcome
    session: null,
    ws: null,
    gen: 0,                 // connection generation: bumps on every connect
    conn: 'connecting',     // connecting | online | reconnecting
    everOnline: false,
    attempt: 0,
    failedNoWelcome: 0,
    reconnectAt: 0,
    reconnectTimer: null,
    openedAt: 0,
    lastFrameAt: 0,
    heartbeat: 25,
    limits: { maxContent: 16384, maxMessage: 65536, rate: 20, burst: 40 },
    tokens: 40,
    tokensAt: 0,
    rooms: new Map(),       // name -> room
    order: [],              // room names in sidebar order
    active: null,
    outbox: [],             // unacked chats, in the order they were written
    requests: new Map(),    // request id -> { kind, room, ... }
    idPrefix: randomId(),
    idSeq: 0,
    flushTimer: null,
    typing: { room: null, active: false, lastSent: 0, idleTimer: null },
  };

  function randomId() {
    const a = new Uint8Array(6);
    crypto.getRandomValues(a);
    return Array.from(a, (b) => b.toString(36).padStart(2, '0')).join('');
  }

  function nextId(kind) {
    S.idSeq += 1;
    return kind + '-' + S.idPrefix + '-' + S.idSeq.toString(36);
  }

  function newRoom(name) {
    const view = el('div', 'room-view');
    const list = el('ol', 'msgs');
    const pending = el('ol', 'pending-list');
    view.append(list, pending);
    view.hidden = true;
    ui.views.append(view);
    return {
      name,
      joined: false,         // joined on the current connection
      joinedOnce: false,     // joined on some connection: rejoin with since
      lastSeq: 0,            // highest seq held; `since` on rejoin
      msgs: new Map(),       // seq -> { p: payload, node }
      oldest: Infinity,
      more: true,
      loadingOlder: false,
      unread: 0,
      members: new Set(),
      typers: new Map(),     // user -> expiry timer
      error: null,
      view, list, pending,
      stickToBottom: true,
    };
  }

  // ----------------------------------------------------------- storage
  function storeKey(what) {
    return 'chatd.' + what + '.' + (S.me || (S.ident && S.ident.user) || 'token');
  }

  function saveRooms() {
    try { localStorage.setItem(storeKey('rooms'), JSON.stringify(S.order)); } catch (e) { /* private mode */ }
  }

  function loadRooms() {
    try {
      const v = JSON.parse(localStorage.getItem(storeKey('rooms')) || '[]');
      return Array.isArray(v) ? v.filter((r) => typeof r === 'string' && ROOM_RE.test(r)) : [];
    } catch (e) {
      return [];
    }
  }

  // The outbox survives a reload, so a message typed just before the tab
  // was closed is still sent (once: same id) when it comes back.
  function saveOutbox() {
    const items = S.outbox.filter((m) => m.state !== 'failed')
      .map((m) => ({ id: m.id, room: m.room, content: m.content, attachments: m.attachments, at: m.at }));
    try { localStorage.setItem(storeKey('outbox'), JSON.stringify(items)); } catch (e) { /* ignore */ }
  }

  function restoreOutbox() {
    let items = [];
    try { items = JSON.parse(localStorage.getItem(storeKey('outbox')) || '[]'); } catch (e) { items = []; }
    if (!Array.isArray(items)) return;
    for (const it of items) {
      if (!it || typeof it.id !== 'string' || typeof it.room !== 'string' || !ROOM_RE.test(it.room)) continue;
      if (typeof it.content !== 'string' || S.outbox.some((m) => m.id === it.id)) continue;
      const room = ensureRoom(it.room, false);
      const m = {
        id: it.id, room: it.room, content: it.content,
        attachments: Array.isArray(it.attachments) ? it.attachments : [],
        at: typeof it.at === 'number' ? it.at : Date.now(), state: 'pending', sentGen: -1, sentAt: 0,
        tries: 0, retryAt: 0, node: null,
      };
      m.node = renderPending(m);
      room.pending.append(m.node);
      S.outbox.push(m);
    }
  }

  // ------------------------------------------------------- formatting
  function fmtTime(ts) {
    const d = new Date(ts);
    return d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  }

  function fmtFull(ts) {
    return new Date(ts).toLocaleString([], { dateStyle: 'medium', timeStyle: 'medium' });
  }

  function dayLabel(ts) {
    const d = new Date(ts);
    const today = new Date();
    const y = new Date(); y.setDate(today.getDate() - 1);
    if (d.toDateString() === today.toDateString()) return 'Today';
    if (d.toDateString() === y.toDateString()) return 'Yesterday';
    return d.toLocaleDateString([], { weekday: 'long', month: 'long', day: 'numeric', year: 'numeric' });
  }

  function hue(name) {
    let h = 0;
    for (let i = 0; i < name.length; i++) h = (h * 31 + name.charCodeAt(i)) >>> 0;
    return h % 360;
  }

  function avatar(name) {
    const a = el('span', 'avatar', (name || '?').slice(0, 1));
    a.style.background = 'hsl(' + hue(name || '?') + ' 55% 46%)';
    a.setAttribute('aria-hidden', 'true');
    return a;
  }

  function utf8Len(s) {
    return new TextEncoder().encode(s).length;
  }

  // Only http(s) URLs become links; anything else is shown inert.
  function safeUrl(raw) {
    if (typeof raw !== 'string' || raw.length > 2048) return null;
    try {
      const u = new URL(raw);
      return u.protocol === 'http:' || u.protocol === 'https:' ? u : null;
    } catch (e) {
      return null;
    }
  }

  function guessType(url) {
    const p = url.pathname.toLowerCase();
    if (/\.(png|jpe?g|gif|webp|svg|avif)$/.test(p)) return 'image';
    if (/\.(mp4|webm|mov)$/.test(p)) return 'video';
    if (/\.(mp3|ogg|wav|m4a)$/.test(p)) return 'audio';
    if (/\.(pdf|zip|gz|docx?|xlsx?|pptx?|txt|csv)$/.test(p)) return 'file';
    return 'link';
  }

  // ------------------------------------------------------- rendering
  function renderAttachments(list) {
    const box = el('div', 'atts');
    for (const a of list) {
      if (!a || typeof a !== 'object') continue;
      const type = typeof a.type === 'string' && a.type ? a.type.slice(0, 40) : 'link';
      const u = safeUrl(a.url);
      if (u) {
        const link = el('a', 'att');
        link.href = u.href;
        link.target = '_blank';
        link.rel = 'noopener noreferrer nofollow';
        link.title = u.href;
        link.append(el('span', 'att-type', type), el('span', 'att-url', u.host + (u.pathname.length > 1 ? u.pathname : '')));
        box.append(link);
      } else {
        const span = el('span', 'att unsafe', type + ': (unsupported link)');
        span.title = 'Only http and https links are opened';
        box.append(span);
      }
    }
    return box;
  }

  // One message: avatar, sender + time, the text, attachments, and for our
  // own messages a delivery status.
  function renderMessage(p, own) {
    const li = el('li', 'msg' + (own ? ' own' : ''));
    li.append(avatar(p.sender));
    const wrap = el('div', 'bubble-wrap');
    const meta = el('div', 'meta');
    meta.append(el('span', 'sender', own ? 'You' : p.sender));
    const t = el('time', 'ts', p.ts ? fmtTime(p.ts) : '');
    if (p.ts) {
      t.dateTime = new Date(p.ts).toISOString();
      t.title = fmtFull(p.ts);
    }
    meta.append(t);
    const bubble = el('div', 'bubble', p.content);
    wrap.append(meta, bubble);
    if (Array.isArray(p.attachments) && p.attachments.length) wrap.append(renderAttachments(p.attachments));
    li.append(wrap);
    li.dataset.sender = p.sender || '';
    if (p.ts) li.dataset.ts = String(p.ts);
    return li;
  }

  function setStatus(node, state, text) {
    let st = node.querySelector('.status');
    if (!st) {
      st = el('div', 'status');
      node.querySelector('.bubble-wrap').append(st);
    }
    st.className = 'status ' + state;
    clear(st);
    st.append(document.createTextNode(text));
    node.classList.toggle('pending', state === 'pending');
    node.classList.toggle('failed', state === 'failed');
    node.dataset.status = state;
    return st;
  }

  function renderPending(m) {
    const node = renderMessage({ sender: S.me || (S.ident && S.ident.user) || '', content: m.content, attachments: m.attachments, ts: m.at }, true);
    node.dataset.cid = m.id;
    setStatus(node, 'pending', 'sending…');
    return node;
  }

  function dayKey(ts) {
    return ts ? new Date(ts).toDateString() : '';
  }

  // Groups a message under the one before it (same sender, same day,
  // within five minutes) and puts day separators between days.
  function regroup(node) {
    if (!node || !node.classList || !node.classList.contains('msg')) return;
    let prev = node.previousElementSibling;
    if (prev && prev.classList.contains('day')) {
      const d = prev;
      prev = d.previousElementSibling;
      d.remove();
    }
    const ts = Number(node.dataset.ts || 0);
    const pts = prev ? Number(prev.dataset.ts || 0) : 0;
    if (ts && (!prev || dayKey(ts) !== dayKey(pts))) {
      node.before(el('li', 'day', dayLabel(ts)));
    }
    const cont = prev && prev.classList.contains('msg') && prev.dataset.sender === node.dataset.sender &&
      dayKey(ts) === dayKey(pts) && Math.abs(ts - pts) < 5 * 60 * 1000;
    node.classList.toggle('cont', !!cont);
  }

  function nextMsg(node) {
    let n = node.nextElementSibling;
    while (n && !n.classList.contains('msg')) n = n.nextElementSibling;
    return n;
  }

  // Puts a message node into the room's list at its seq position.
  function placeBySeq(room, seq, node) {
    node.dataset.seq = String(seq);
    const list = room.list;
    let after = list.lastElementChild;
    while (after && !(after.classList.contains('msg') && Number(after.dataset.seq) < seq)) {
      after = after.previousElementSibling;
    }
    if (after) {
      after.after(node);
    } else {
      list.prepend(node);
    }
    regroup(node);
    const n = nextMsg(node);
    if (n) regroup(n);
  }

  // Adds a chat payload to its room. Returns true if it was new. Dedup is
  // by seq: a seq already held is never shown twice.
  function addChat(p, source) {
    const room = S.rooms.get(p.room);
    if (!room || typeof p.seq !== 'number') return false;
    const own = p.sender === S.me;
    if (room.msgs.has(p.seq)) {
      // Already shown. Our own message may still be in the outbox (replayed
      // after a reconnect before its ack): keep it pending until acked.
      return false;
    }
    let node = null;
    if (own && p.cid) {
      const m = S.outbox.find((x) => x.id === p.cid && x.room === p.room);
      if (m) {
        node = m.node;
        m.seq = p.seq;
        const t = node.querySelector('time');
        t.textContent = fmtTime(p.ts);
        t.dateTime = new Date(p.ts).toISOString();
        t.title = fmtFull(p.ts);
        node.dataset.ts = String(p.ts);
        setStatus(node, 'pending', 'sent, awaiting ack…');
      }
    }
    if (!node) {
      node = renderMessage(p, own);
      if (p.cid) node.dataset.cid = p.cid;
    }
    const keepBottom = room === activeRoom() && nearBottom();
    placeBySeq(room, p.seq, node);
    room.msgs.set(p.seq, { p, node });
    if (p.seq < room.oldest) room.oldest = p.seq;
    if (p.seq === 1) room.more = false;
    // History pages without `before` are the newest and contiguous, and
    // older pages lie below lastSeq, so the highest seq held is always a
    // safe `since`.
    if (p.seq > room.lastSeq) room.lastSeq = p.seq;
    if (source === 'live' && !own) {
      removeTyper(room, p.sender);
      if (room !== activeRoom() || document.hidden) {
        room.unread += 1;
        renderRooms();
      }
    }
    if (room === activeRoom() && room.msgs.size === 1) renderOlder();
    if (room === activeRoom() && source !== 'history') {
      if (keepBottom || own) scrollToBottom();
      else ui.jump.hidden = false;
    }
    return true;
  }

  function activeRoom() {
    return S.active ? S.rooms.get(S.active) : null;
  }

  function nearBottom() {
    const l = ui.log;
    return l.scrollHeight - l.scrollTop - l.clientHeight < 80;
  }

  function scrollToBottom() {
    ui.log.scrollTop = ui.log.scrollHeight;
    ui.jump.hidden = true;
  }

  function renderRooms() {
    clear(ui.rooms);
    let total = 0;
    for (const name of S.order) {
      const r = S.rooms.get(name);
      const li = el('li');
      if (name === S.active) li.classList.add('active');
      if (r.unread) li.classList.add('unread');
      if (r.error) li.classList.add('error');
      const b = el('button');
      b.type = 'button';
      b.dataset.room = name;
      b.append(el('span', 'room-label', name));
      if (r.unread) {
        b.append(el('span', 'badge', r.unread > 99 ? '99+' : r.unread));
        total += r.unread;
      }
      b.title = r.error ? r.error : name;
      b.addEventListener('click', () => { selectRoom(name); closeDrawer(); });
      li.append(b);
      ui.rooms.append(li);
    }
    document.title = (total ? '(' + total + ') ' : '') + (S.active ? '#' + S.active + ' · ' : '') + 'chatd';
  }

  function renderPresence() {
    const room = activeRoom();
    clear(ui.presence);
    if (!room) {
      ui.peopleCount.textContent = '';
      return;
    }
    const users = Array.from(room.members).sort((a, b) => (a === S.me ? -1 : b === S.me ? 1 : a.localeCompare(b)));
    for (const u of users) {
      const li = el('li');
      li.dataset.user = u;
      li.append(avatar(u), el('span', 'name', u));
      if (u === S.me) li.append(el('small', null, '(you)'));
      ui.presence.append(li);
    }
    ui.peopleCount.textContent = users.length ? String(users.length) : '';
    ui.roomSub.textContent = users.length ? users.length + (users.length === 1 ? ' person here' : ' people here') : '';
  }

  function renderTyping() {
    const room = activeRoom();
    const names = room ? Array.from(room.typers.keys()) : [];
    let text = '';
    if (names.length === 1) text = names[0] + ' is typing…';
    else if (names.length === 2) text = names[0] + ' and ' + names[1] + ' are typing…';
    else if (names.length > 2) text = 'Several people are typing…';
    ui.typing.textContent = text;
    ui.typing.classList.toggle('on', !!text);
  }

  function renderOlder() {
    const room = activeRoom();
    if (!room) { ui.older.textContent = ''; return; }
    if (room.loadingOlder) ui.older.textContent = 'Loading older messages…';
    else if (!room.more) ui.older.textContent = room.msgs.size ? 'This is the beginning of #' + room.name : 'No messages yet. Say hello!';
    else ui.older.textContent = room.joined ? 'Scroll up for older messages' : '';
  }

  function setConn(state, detail) {
    S.conn = state;
    ui.conn.dataset.state = state;
    ui.connText.textContent = detail || state;
    ui.conn.title = state === 'online' ? 'Connected · session ' + (S.session || '') : (detail || state);
  }

  let bannerTimer = null;
  function showBanner(text, kind, ms) {
    ui.bannerText.textContent = text;
    ui.banner.className = 'banner' + (kind ? ' ' + kind : '');
    ui.banner.hidden = false;
    clearTimeout(bannerTimer);
    if (ms) bannerTimer = setTimeout(hideBanner, ms);
  }

  function hideBanner() {
    ui.banner.hidden = true;
  }

  // ------------------------------------------------------- rooms
  function ensureRoom(name, select) {
    let room = S.rooms.get(name);
    if (!room) {
      room = newRoom(name);
      S.rooms.set(name, room);
      S.order.push(name);
      saveRooms();
      if (S.conn === 'online') sendJoin(room);
    }
    if (select || !S.active) selectRoom(name);
    else renderRooms();
    return room;
  }

  function selectRoom(name) {
    const prev = activeRoom();
    if (prev && prev.name !== name) {
      prev.stickToBottom = nearBottom();
      prev.scrollTop = ui.log.scrollTop;
      prev.view.hidden = true;
      stopTyping();
    }
    const room = S.rooms.get(name);
    if (!room) return;
    S.active = name;
    room.view.hidden = false;
    room.unread = 0;
    ui.roomName.textContent = name;
    ui.input.placeholder = 'Message #' + name;
    ui.jump.hidden = true;
    renderRooms();
    renderPresence();
    renderTyping();
    renderOlder();
    if (room.stickToBottom || room.scrollTop === undefined) scrollToBottom();
    else ui.log.scrollTop = room.scrollTop;
    if (room.joined) requestPresence(room);
    try { history.replaceState(null, '', urlWith({ room: name })); } catch (e) { /* file: */ }
    maybeLoadOlder();
  }

  function leaveRoom(name) {
    const room = S.rooms.get(name);
    if (!room) return;
    if (S.conn === 'online' && room.joined) send({ type: 'leave', id: nextId('l'), payload: { room: name } });
    S.outbox = S.outbox.filter((m) => m.room !== name);
    saveOutbox();
    room.view.remove();
    S.rooms.delete(name);
    S.order = S.order.filter((n) => n !== name);
    saveRooms();
    if (S.active === name) {
      S.active = null;
      if (S.order.length) selectRoom(S.order[0]);
      else {
        ui.roomName.textContent = '';
        renderRooms(); renderPresence(); renderTyping(); renderOlder();
      }
    } else {
      renderRooms();
    }
  }

  function removeTyper(room, user) {
    const t = room.typers.get(user);
    if (t !== undefined) {
      clearTimeout(t);
      room.typers.delete(user);
      if (room === activeRoom()) renderTyping();
    }
  }

  // ------------------------------------------------------- rate limit
  // The same token bucket as the server's (chat + typing), a little
  // slower, so the client never provokes rate_limited on its own.
  function takeToken() {
    const now = performance.now();
    const rate = Math.max(1, S.limits.rate * 0.9);
    S.tokens = Math.min(S.limits.burst, S.tokens + (now - S.tokensAt) * rate / 1000);
    S.tokensAt = now;
    if (S.tokens >= 1) {
      S.tokens -= 1;
      return true;
    }
    return false;
  }

  function msUntilToken() {
    const rate = Math.max(1, S.limits.rate * 0.9);
    return Math.ceil((1 - S.tokens) * 1000 / rate) + 5;
  }

  // ------------------------------------------------------- connection
  function wsUrl() {
    const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const q = S.ident.token ? 'token=' + encodeURIComponent(S.ident.token) : 'user=' + encodeURIComponent(S.ident.user);
    return proto + '//' + location.host + '/ws?' + q;
  }

  function connect() {
    clearTimeout(S.reconnectTimer);
    S.reconnectTimer = null;
    S.gen += 1;
    const gen = S.gen;
    S.connectStarted = Date.now();
    setConn(S.everOnline ? 'reconnecting' : 'connecting');
    let ws;
    try {
      ws = new WebSocket(wsUrl());
    } catch (e) {
      scheduleReconnect();
      return;
    }
    S.ws = ws;
    S.welcomed = false;
    ws.onopen = () => {
      if (gen !== S.gen) return;
      S.openedAt = Date.now();
      S.lastFrameAt = Date.now();
    };
    ws.onmessage = (ev) => {
      if (gen !== S.gen) return;
      S.lastFrameAt = Date.now();
      let msg;
      try { msg = JSON.parse(ev.data); } catch (e) { return; }
      if (msg && typeof msg === 'object' && typeof msg.type === 'string') handle(msg);
    };
    ws.onclose = (ev) => {
      if (gen !== S.gen) return;
      disconnected(ev.code, ev.reason);
    };
    ws.onerror = () => { /* onclose follows with the details */ };
  }

  function disconnected(code, reason) {
    const ws = S.ws;
    S.ws = null;
    S.gen += 1;            // late events of the old socket are ignored
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
      try { ws.close(); } catch (e) { /* already closed */ }
    }
    for (const room of S.rooms.values()) {
      room.joined = false;
      room.loadingOlder = false;
      for (const t of room.typers.values()) clearTimeout(t);
      room.typers.clear();
    }
    S.requests.clear();
    S.typing.active = false;
    for (const m of S.outbox) if (m.state === 'pending') setStatus(m.node, 'pending', 'waiting for connection…');
    renderTyping();
    renderOlder();
    if (!S.welcomed) S.failedNoWelcome += 1;
    if (S.openedAt && Date.now() - S.openedAt > 5000) S.attempt = 0;
    S.openedAt = 0;
    if (code === 1008) showBanner('Disconnected for sending too fast. Reconnecting…', 'error', 8000);
    else if (S.failedNoWelcome >= 3) {
      showBanner(S.ident.token
        ? 'Cannot connect. The server may be down, or the token was refused (expired or invalid).'
        : 'Cannot connect to the server. Retrying…', 'error');
    }
    scheduleReconnect(code, reason);
  }

  function scheduleReconnect() {
    const ceiling = Math.min(BACKOFF_MAX_MS, BACKOFF_BASE_MS * Math.pow(2, S.attempt));
    // "Equal jitter": at least half the ceiling, so a crowd of clients
    // spreads out but none hammers the server right away.
    const delay = Math.round(ceiling / 2 + Math.random() * ceiling / 2);
    S.attempt += 1;
    S.reconnectAt = Date.now() + delay;
    clearTimeout(S.reconnectTimer);
    S.reconnectTimer = setTimeout(connect, delay);
    tickConn();
  }

  function tickConn() {
    if (S.ws || !S.reconnectTimer) return;
    const left = Math.max(0, Math.ceil((S.reconnectAt - Date.now()) / 1000));
    setConn(S.everOnline ? 'reconnecting' : 'connecting',
      (S.everOnline ? 'reconnecting' : 'connecting') + (left > 0 ? ' in ' + left + 's' : '…'));
  }

  function send(obj) {
    if (!S.ws || S.ws.readyState !== WebSocket.OPEN) return false;
    try {
      S.ws.send(JSON.stringify(obj));
      return true;
    } catch (e) {
      return false;
    }
  }

  function sendJoin(room) {
    // One join per room per connection: a second one would be answered
    // with recovered:false and look like a gap.
    if (room.joinGen === S.gen) return;
    room.joinGen = S.gen;
    const payload = { room: room.name };
    if (room.joinedOnce) payload.since = room.lastSeq;
    const id = nextId('j');
    S.requests.set(id, { kind: 'join', room: room.name });
    send({ type: 'join', id, payload });
  }

  function requestPresence(room) {
    if (!room.joined) return;
    const id = nextId('p');
    S.requests.set(id, { kind: 'presence', room: room.name });
    send({ type: 'presence', id, payload: { room: room.name } });
  }

  function requestHistory(room, before, kind) {
    if (!room.joined) return;
    const id = nextId('h');
    const payload = { room: room.name, limit: HISTORY_PAGE };
    if (before !== undefined) payload.before = before;
    S.requests.set(id, { kind, room: room.name });
    if (kind === 'older') {
      room.loadingOlder = true;
      if (room === activeRoom()) renderOlder();
    }
    send({ type: 'history', id, payload });
  }

  function maybeLoadOlder() {
    const room = activeRoom();
    if (!room || !room.joined || room.loadingOlder || !room.more) return;
    if (ui.log.scrollTop > 120) return;
    if (!room.msgs.size) return;      // the first page comes with the join
    requestHistory(room, room.oldest, 'older');
  }

  // ------------------------------------------------------- frames in
  function handle(msg) {
    const p = msg.payload && typeof msg.payload === 'object' ? msg.payload : {};
    const req = msg.id ? S.requests.get(msg.id) : undefined;
    if (req && msg.type !== 'error') S.requests.delete(msg.id);
    switch (msg.type) {
      case 'welcome': onWelcome(p); break;
      case 'joined': onJoined(p); break;
      case 'left': break;
      case 'chat': addChat(p, 'live'); break;
      case 'ack': onAck(msg.id, p); break;
      case 'history': onHistory(p, req); break;
      case 'presence': onPresence(p); break;
      case 'member': onMember(p); break;
      case 'typing': onTyping(p); break;
      case 'pong': break;
      case 'error': onError(msg.id, p, req); break;
      default: break;
    }
  }

  function onWelcome(p) {
    const first = !S.everOnline;
    S.welcomed = true;
    S.everOnline = true;
    S.failedNoWelcome = 0;
    S.me = typeof p.user === 'string' ? p.user : S.me;
    S.session = p.session || null;
    if (typeof p.heartbeat === 'number' && p.heartbeat > 0) S.heartbeat = p.heartbeat;
    if (p.limits && typeof p.limits === 'object') {
      for (const k of ['maxContent', 'maxMessage', 'rate', 'burst']) {
        if (typeof p.limits[k] === 'number' && p.limits[k] > 0) S.limits[k] = p.limits[k];
      }
    }
    S.tokens = S.limits.burst;
    S.tokensAt = performance.now();
    ui.me.textContent = S.me;
    clear(ui.meAvatar);
    ui.meAvatar.textContent = (S.me || '?').slice(0, 1);
    ui.meAvatar.style.background = 'hsl(' + hue(S.me || '?') + ' 55% 46%)';
    ui.conn.dataset.session = S.session || '';
    S.connects = (S.connects || 0) + 1;
    ui.conn.dataset.connects = String(S.connects);
    setConn('online');
    if (!ui.banner.classList.contains('keep')) hideBanner();
    if (first) {
      for (const r of loadRooms()) ensureRoom(r, false);
      restoreOutbox();
    }
    for (const room of S.rooms.values()) sendJoin(room);
    renderPresence();
  }

  function onJoined(p) {
    const room = S.rooms.get(p.room);
    if (!room) return;
    if (room.joined) return;
    const rejoin = room.joinedOnce;
    room.joined = true;
    room.joinedOnce = true;
    room.error = null;
    if (rejoin && p.recovered === false) {
      // Too much was missed for a replay: start over from the newest page.
      for (const { node } of room.msgs.values()) node.remove();
      clear(room.list);
      room.msgs.clear();
      room.oldest = Infinity;
      room.more = true;
      room.list.append(el('li', 'notice', 'You were away for a while: showing the latest messages.'));
    }
    if (typeof p.seq === 'number' && p.seq > room.lastSeq && !(rejoin && p.recovered)) {
      // No replay follows a plain join: everything up to seq comes from
      // history, so since starts here.
      room.lastSeq = p.seq;
    }
    if (!rejoin || p.recovered === false) {
      if (p.seq > 0) requestHistory(room, undefined, 'initial');
      else room.more = false;
    }
    requestPresence(room);
    renderRooms();
    if (room === activeRoom()) renderOlder();
    flushOutbox();
  }

  function onHistory(p, req) {
    const room = S.rooms.get(p.room);
    if (!room) return;
    const msgs = Array.isArray(p.messages) ? p.messages : [];
    const active = room === activeRoom();
    const oldHeight = ui.log.scrollHeight;
    const oldTop = ui.log.scrollTop;
    const atBottom = nearBottom();
    for (const m of msgs) {
      if (m && typeof m === 'object') addChat(Object.assign({ room: p.room }, m), 'history');
    }
    if (req && req.kind === 'older') room.loadingOlder = false;
    // Both kinds of page end at the oldest message held, so `more` says
    // whether anything older exists.
    room.more = !!p.more && msgs.length > 0 && room.oldest > 1;
    if (active) {
      if (req && req.kind === 'older') {
        ui.log.scrollTop = oldTop + (ui.log.scrollHeight - oldHeight);
      } else if (atBottom || (req && req.kind === 'initial')) {
        scrollToBottom();
      }
      renderOlder();
      // A short first page may not fill the window: keep paging.
      setTimeout(maybeLoadOlder, 0);
    }
  }

  function onPresence(p) {
    const room = S.rooms.get(p.room);
    if (!room || !Array.isArray(p.users)) return;
    room.members = new Set(p.users.filter((u) => typeof u === 'string'));
    if (room === activeRoom()) renderPresence();
  }

  function onMember(p) {
    const room = S.rooms.get(p.room);
    if (!room || typeof p.user !== 'string') return;
    if (p.event === 'join') room.members.add(p.user);
    else if (p.event === 'leave') {
      room.members.delete(p.user);
      removeTyper(room, p.user);
    }
    if (room === activeRoom()) renderPresence();
  }

  function onTyping(p) {
    const room = S.rooms.get(p.room);
    if (!room || typeof p.user !== 'string' || p.user === S.me) return;
    const old = room.typers.get(p.user);
    if (old !== undefined) clearTimeout(old);
    if (p.active) {
      room.typers.set(p.user, setTimeout(() => removeTyper(room, p.user), TYPING_EXPIRE_MS));
    } else {
      room.typers.delete(p.user);
    }
    if (room === activeRoom()) renderTyping();
  }

  function onAck(id, p) {
    const i = S.outbox.findIndex((m) => m.id === id);
    if (i < 0) return;
    const m = S.outbox[i];
    S.outbox.splice(i, 1);
    saveOutbox();
    const room = S.rooms.get(m.room);
    m.state = 'acked';
    m.seq = p.seq;
    const node = m.node;
    node.dataset.ts = String(p.ts || m.at);
    setStatus(node, 'acked', p.duplicate ? 'delivered (retry)' : 'delivered');
    node.querySelector('.status').title = 'Stored as #' + p.seq + (p.duplicate ? ' (an earlier send had already arrived)' : '');
    if (!room) return;
    const held = room.msgs.get(p.seq);
    if (held && held.node !== node) {
      // The broadcast (e.g. a replay) got here first and is already shown:
      // mark that one delivered and drop the pending copy.
      node.remove();
      setStatus(held.node, 'acked', 'delivered');
      return;
    }
    if (!held) {
      const keepBottom = room === activeRoom() && nearBottom();
      const t = node.querySelector('time');
      if (p.ts) { t.textContent = fmtTime(p.ts); t.title = fmtFull(p.ts); }
      placeBySeq(room, p.seq, node);
      room.msgs.set(p.seq, { p: { room: m.room, seq: p.seq, sender: S.me, content: m.content, attachments: m.attachments, ts: p.ts, cid: m.id }, node });
      if (p.seq < room.oldest) room.oldest = p.seq;
      // The broadcast may still come; it is dropped by seq. lastSeq is not
      // advanced: earlier seqs may still be on their way.
      if (keepBottom) scrollToBottom();
      if (room === activeRoom() && room.msgs.size === 1) renderOlder();
    }
  }

  const ERROR_TEXT = {
    rate_limited: 'You are sending too fast; slowing down.',
    unavailable: 'The server cannot store messages right now; retrying.',
    too_large: 'That message is too large.',
    forbidden: 'You are not allowed to do that.',
    not_joined: 'Not in that room (yet).',
    bad_request: 'The server did not accept that request.',
    unauthorized: 'Not signed in.',
    internal: 'The server had an internal error.',
  };

  function onError(id, p, req) {
    const code = typeof p.code === 'string' ? p.code : 'internal';
    const text = (ERROR_TEXT[code] || 'Error') + (p.message ? ' (' + code + ': ' + p.message + ')' : ' (' + code + ')');
    const m = id ? S.outbox.find((x) => x.id === id) : null;
    if (m) {
      if (code === 'rate_limited' || code === 'unavailable' || code === 'not_joined' || code === 'internal') {
        // Transient: the same id goes again later (dedup makes it safe).
        m.tries += 1;
        m.sentGen = -1;
        m.retryAt = Date.now() + Math.min(10000, 500 * Math.pow(2, m.tries));
        setStatus(m.node, 'pending', code === 'rate_limited' ? 'slowed down, retrying…' : 'retrying…');
        scheduleFlush(m.retryAt - Date.now());
        showBanner(text, code === 'unavailable' ? 'error' : '', 6000);
      } else {
        failMessage(m, text);
      }
      return;
    }
    if (req) {
      S.requests.delete(id);
      if (req.kind === 'join') {
        const room = S.rooms.get(req.room);
        if (room) {
          room.error = text;
          renderRooms();
        }
        showBanner('Cannot join #' + req.room + ': ' + text, 'error', 10000);
        return;
      }
      if (req.kind === 'older') {
        const room = S.rooms.get(req.room);
        if (room) { room.loadingOlder = false; renderOlder(); }
      }
    }
    showBanner(text, code === 'rate_limited' ? '' : 'error', 8000);
  }

  function failMessage(m, text) {
    m.state = 'failed';
    const i = S.outbox.indexOf(m);
    if (i >= 0) S.outbox.splice(i, 1);
    saveOutbox();
    const st = setStatus(m.node, 'failed', 'not sent: ' + text + ' ');
    const retry = el('button', null, 'Edit');
    retry.type = 'button';
    retry.addEventListener('click', () => {
      ui.input.value = m.content;
      m.node.remove();
      ui.input.focus();
    });
    const drop = el('button', null, 'Dismiss');
    drop.type = 'button';
    drop.addEventListener('click', () => m.node.remove());
    st.append(retry, drop);
  }

  // ------------------------------------------------------- sending
  function scheduleFlush(ms) {
    if (S.flushTimer) return;
    S.flushTimer = setTimeout(() => { S.flushTimer = null; flushOutbox(); }, Math.max(0, ms));
  }

  // Sends every unacked message that is not in flight on this connection,
  // in order per room: a room whose head cannot go yet holds the rest back,
  // so a room's messages get their seqs in the order they were written.
  function flushOutbox() {
    if (S.conn !== 'online') return;
    const blocked = new Set();
    const now = Date.now();
    for (const m of S.outbox) {
      if (m.state !== 'pending' || blocked.has(m.room)) continue;
      const room = S.rooms.get(m.room);
      if (!room || !room.joined) { blocked.add(m.room); continue; }
      if (m.sentGen === S.gen && now - m.sentAt < ACK_TIMEOUT_MS) continue;
      if (m.retryAt > now) { blocked.add(m.room); scheduleFlush(m.retryAt - now); continue; }
      if (!takeToken()) { scheduleFlush(msUntilToken()); return; }
      const payload = { room: m.room, content: m.content };
      if (m.attachments.length) payload.attachments = m.attachments;
      if (!send({ type: 'chat', id: m.id, payload })) return;
      m.sentGen = S.gen;
      m.sentAt = now;
      setStatus(m.node, 'pending', m.tries || m.resent ? 'resending…' : 'sending…');
      m.resent = true;
    }
  }

  function submit() {
    const room = activeRoom();
    if (!room) return;
    const content = ui.input.value.replace(/\s+$/, '');
    const attachments = [];
    const rawUrl = ui.attachUrl.value.trim();
    if (rawUrl) {
      const u = safeUrl(rawUrl);
      if (!u) {
        showBanner('Attachments must be http:// or https:// links.', 'error', 5000);
        return;
      }
      attachments.push({ type: guessType(u), url: u.href });
    }
    if (!content.trim()) {
      if (attachments.length) {
        // content is required by the protocol; a bare link says itself.
        return sendMessage(room, attachments[0].url, attachments);
      }
      return;
    }
    const bytes = utf8Len(content);
    if (bytes > S.limits.maxContent) {
      showBanner('Message too long: ' + bytes + ' bytes, the limit is ' + S.limits.maxContent + '.', 'error', 6000);
      return;
    }
    sendMessage(room, content, attachments);
  }

  function sendMessage(room, content, attachments) {
    const m = {
      id: nextId('c'), room: room.name, content, attachments, at: Date.now(),
      state: 'pending', sentGen: -1, sentAt: 0, tries: 0, retryAt: 0, node: null,
    };
    m.node = renderPending(m);
    room.pending.append(m.node);
    S.outbox.push(m);
    saveOutbox();
    ui.input.value = '';
    ui.attachUrl.value = '';
    ui.attachRow.hidden = true;
    autosize();
    stopTyping();
    scrollToBottom();
    flushOutbox();
  }

  // ------------------------------------------------------- typing
  function sendTyping(room, active) {
    if (!room || !room.joined || S.conn !== 'online') return false;
    if (!takeToken()) return false;   // typing is best effort: never queue it
    return send({ type: 'typing', id: nextId('t'), payload: { room: room.name, active } });
  }

  function onInput() {
    autosize();
    const room = activeRoom();
    if (!room) return;
    const now = Date.now();
    const t = S.typing;
    if (ui.input.value.trim() === '') {
      stopTyping();
      return;
    }
    if (!t.active || t.room !== room.name || now - t.lastSent > TYPING_REPEAT_MS) {
      if (sendTyping(room, true)) {
        t.active = true;
        t.room = room.name;
        t.lastSent = now;
      }
    }
    clearTimeout(t.idleTimer);
    t.idleTimer = setTimeout(stopTyping, TYPING_IDLE_MS);
  }

  function stopTyping() {
    const t = S.typing;
    clearTimeout(t.idleTimer);
    if (t.active) {
      sendTyping(S.rooms.get(t.room), false);
      t.active = false;
    }
  }

  function autosize() {
    ui.input.style.height = 'auto';
    ui.input.style.height = Math.min(160, ui.input.scrollHeight) + 'px';
  }

  // ------------------------------------------------------- housekeeping
  // Once a second: the reconnect countdown, a JSON ping so a dead link is
  // noticed (browsers hide WebSocket pings from scripts), overdue acks,
  // and a slow presence poll for rooms too big for member events.
  let lastPing = 0;
  let lastPresence = 0;
  function housekeeping() {
    const now = Date.now();
    tickConn();
    if (S.ws && S.conn === 'online') {
      const hb = S.heartbeat * 1000;
      if (now - lastPing > hb / 2) {
        lastPing = now;
        send({ type: 'ping', id: nextId('k') });
      }
      if (now - S.lastFrameAt > 2 * hb + 5000) {
        disconnected(4000, 'no answer');
        return;
      }
      if (S.outbox.some((m) => m.state === 'pending' && m.sentGen === S.gen && now - m.sentAt >= ACK_TIMEOUT_MS)) {
        flushOutbox();
      }
      if (now - lastPresence > PRESENCE_POLL_MS) {
        lastPresence = now;
        const room = activeRoom();
        if (room) requestPresence(room);
      }
    } else if (S.ws && S.ws.readyState === WebSocket.CONNECTING && S.openedAt === 0 &&
               now - (S.connectStarted || now) > 10000) {
      disconnected(4001, 'connect timeout');
    }
  }

  // ------------------------------------------------------- identity
  function urlWith(extra) {
    const q = new URLSearchParams(location.search);
    q.delete('token');
    for (const [k, v] of Object.entries(extra)) {
      if (v === null) q.delete(k); else q.set(k, v);
    }
    const s = q.toString();
    return location.pathname + (s ? '?' + s : '');
  }

  function start(ident, room) {
    S.ident = ident;
    ui.login.hidden = true;
    ui.app.hidden = false;
    ui.me.textContent = ident.user || '…';
    ui.meAvatar.textContent = (ident.user || '?').slice(0, 1);
    if (room) ensureRoom(room, true);
    S.connectStarted = Date.now();
    connect();
    setInterval(housekeeping, 1000);
  }

  function showLogin(err) {
    ui.app.hidden = true;
    ui.login.hidden = false;
    ui.loginError.textContent = err || '';
    const q = new URLSearchParams(location.search);
    if (q.get('room')) ui.loginRoom.value = q.get('room');
    ui.loginUser.focus();
  }

  function init() {
    const q = new URLSearchParams(location.search);
    let room = q.get('room') || null;
    if (room && !ROOM_RE.test(room)) room = null;
    const token = q.get('token') || sessionStorage.getItem('chatd.token');
    const user = q.get('user');
    if (q.get('token')) {
      // Keep the token out of the address bar and history.
      sessionStorage.setItem('chatd.token', q.get('token'));
      try { history.replaceState(null, '', urlWith({})); } catch (e) { /* ignore */ }
    }
    if (user && USER_RE.test(user)) {
      start({ user }, room || 'general');
    } else if (token) {
      start({ token }, room || 'general');
    } else {
      showLogin(user ? 'That user name is not valid.' : '');
    }
  }

  // ------------------------------------------------------- events
  ui.loginForm.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const user = ui.loginUser.value.trim();
    const token = ui.loginToken.value.trim();
    const room = ui.loginRoom.value.trim() || 'general';
    if (!ROOM_RE.test(room)) { ui.loginError.textContent = 'Room names use letters, digits and _ . : -'; return; }
    if (token) {
      sessionStorage.setItem('chatd.token', token);
      history.replaceState(null, '', urlWith({ user: null, room }));
      start({ token }, room);
    } else if (USER_RE.test(user)) {
      history.replaceState(null, '', urlWith({ user, room }));
      start({ user }, room);
    } else {
      ui.loginError.textContent = 'Enter a user name (letters, digits, _ . -) or a token.';
    }
  });

  ui.signout.addEventListener('click', () => {
    sessionStorage.removeItem('chatd.token');
    location.href = location.pathname;
  });

  ui.joinForm.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const name = ui.joinRoom.value.trim().replace(/^#/, '');
    if (!ROOM_RE.test(name)) {
      showBanner('Room names are 1–128 letters, digits or _ . : -', 'error', 5000);
      return;
    }
    ui.joinRoom.value = '';
    ensureRoom(name, true);
    closeDrawer();
  });

  ui.leave.addEventListener('click', () => { if (S.active) leaveRoom(S.active); });
  ui.composer.addEventListener('submit', (ev) => { ev.preventDefault(); submit(); });
  ui.input.addEventListener('input', onInput);
  ui.input.addEventListener('keydown', (ev) => {
    if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing) {
      ev.preventDefault();
      submit();
    }
  });
  ui.input.addEventListener('blur', stopTyping);
  ui.attach.addEventListener('click', () => {
    ui.attachRow.hidden = !ui.attachRow.hidden;
    if (!ui.attachRow.hidden) ui.attachUrl.focus();
  });
  ui.attachUrl.addEventListener('keydown', (ev) => {
    if (ev.key === 'Enter') { ev.preventDefault(); submit(); }
  });
  ui.log.addEventListener('scroll', () => {
    if (nearBottom()) ui.jump.hidden = true;
    maybeLoadOlder();
  }, { passive: true });
  ui.jump.addEventListener('click', scrollToBottom);
  ui.bannerClose.addEventListener('click', hideBanner);
  ui.menu.addEventListener('click', () => ui.app.classList.add('drawer'));
  ui.scrim.addEventListener('click', closeDrawer);
  function closeDrawer() { ui.app.classList.remove('drawer'); }

  document.addEventListener('visibilitychange', () => {
    const room = activeRoom();
    if (!document.hidden && room && room.unread) { room.unread = 0; renderRooms(); }
  });
  // Back online: no reason to sit out the backoff.
  window.addEventListener('online', () => { if (!S.ws && S.ident) connect(); });

  init();
})();
