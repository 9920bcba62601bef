/*
 * Searching a room (protocol 1.1): the box in the room's header sends
 * `search {room, q}`; the answer's messages (newest first) fill a panel,
 * each with its sender, time and the words that matched highlighted, and
 * "More results" asks for older ones with `before` = the oldest seq
 * shown. Every room keeps its own search while another is open. Clicking
 * a result jumps to the message: older history is paged in (below the
 * oldest message held, so what the room holds stays one run of seqs)
 * until the message is there, which is then scrolled to and flashed.
 *
 * Highlighting is done here, after the server's rules: words are runs of
 * letters and digits (with their marks), compared case-folded and with
 * the accents of Latin letters removed; every word of the query must
 * equal a word, and the last may also start one when it has at least two
 * characters.
 */
import { el, clear, avatar, fmtTime, fmtFull, dayLabel } from './util.js';
import { S, activeRoom } from './state.js';
import { request } from './conn.js';
import { ui, roomTitle } from './views.js';
import { loadOlderPage } from './rooms.js';
import { isFile } from './attachments.js';

const PAGE = 20;                  // results per request
const JUMP_PAGE = 100;            // messages per history page while jumping
const JUMP_CONTEXT = 5;           // messages held above the one jumped to
const JUMP_PAGE_MS = 15000;       // a page that takes longer ends the jump
const FLASH_MS = 2400;

const searches = new Map();       // room -> { q, words, results, more, loading, error, open, token, note }
let tokens = 0;
let jump = null;                  // { room, seq, timer } while paging toward a message

// ------------------------------------------------------- words
const WORD_RE = /[\p{L}\p{N}\p{M}]+/gu;

// A word as the server compares it: Latin letters without their accents,
// then case-folded (upper then lower case folds ß to ss, ς to σ).
export function fold(word) {
  return word.normalize('NFD').replace(/(?<=\p{Script=Latin}\p{M}*)\p{M}/gu, '')
    .toUpperCase().toLowerCase().normalize('NFC');
}

function queryWords(q) {
  const words = (q.match(WORD_RE) || []).map(fold);
  const last = words.length ? words[words.length - 1] : '';
  return { exact: new Set(words), prefix: Array.from(last).length >= 2 ? last : null };
}

// text with the words that match the query in <mark>, as DOM nodes.
function highlight(text, qw) {
  const frag = document.createDocumentFragment();
  let i = 0;
  for (const m of text.matchAll(WORD_RE)) {
    const f = fold(m[0]);
    if (!qw.exact.has(f) && !(qw.prefix && f.startsWith(qw.prefix))) continue;
    if (m.index > i) frag.append(text.slice(i, m.index));
    frag.append(el('mark', null, m[0]));
    i = m.index + m[0].length;
  }
  if (i < text.length) frag.append(text.slice(i));
  return frag;
}

// ------------------------------------------------------- requests
function ask(room, st, before) {
  if (!room.joined || S.conn !== 'online') {
    st.loading = false;
    st.error = 'Not connected to #' + room.name + ' right now: try again in a moment.';
    return;
  }
  const payload = { room: room.name, q: st.q, limit: PAGE };
  if (before !== undefined) payload.before = before;
  st.loading = true;
  st.error = null;
  request('search', payload, { kind: 'search', room: room.name, token: st.token });
}

// Enter in the search box.
export function runSearch() {
  const room = activeRoom();
  if (!room) return;
  const q = ui.searchQ.value.trim();
  if (!q) { closeSearch(); return; }
  tokens += 1;
  const st = { q, words: queryWords(q), results: [], more: false, loading: true, error: null,
    open: true, token: tokens, note: null };
  searches.set(room.name, st);
  ask(room, st);
  render();
}

export function moreResults() {
  const room = activeRoom();
  const st = room && searches.get(room.name);
  if (!st || st.loading || !st.more || !st.results.length) return;
  ask(room, st, st.results[st.results.length - 1].seq);
  render();
}

// The answer of one of our searches.
export function onResults(p, req) {
  const st = req && req.kind === 'search' ? searches.get(req.room) : null;
  if (!st || st.token !== req.token) return;      // a newer search took its place
  const have = new Set(st.results.map((m) => m.seq));
  const msgs = Array.isArray(p.messages) ? p.messages : [];
  for (const m of msgs) {
    if (!m || typeof m.seq !== 'number' || have.has(m.seq)) continue;
    have.add(m.seq);
    st.results.push(m);
  }
  st.more = !!p.more && msgs.length > 0;
  st.loading = false;
  st.error = null;
  if (req.room === S.active) render();
}

const ERRORS = {
  rate_limited: 'Searching too fast: wait a moment, then press Enter again.',
  bad_request: 'Nothing to search for: a search needs letters or digits.',
  too_large: 'That search is too long: at most 10 words and 256 bytes.',
  not_joined: 'Not in this room (yet): try again once it is joined.',
  unavailable: 'Search is unavailable right now: try again later.',
};

// An error answering one of our searches: shown in the panel.
export function searchFailed(req, code, message) {
  const st = searches.get(req.room);
  if (!st || st.token !== req.token) return;
  st.loading = false;
  st.error = (ERRORS[code] || 'The search failed.') + ' (' + code + (message ? ': ' + message : '') + ')';
  if (req.room === S.active) render();
}

// The link went down: answers on their way are lost.
export function searchDown() {
  for (const st of searches.values()) {
    if (st.loading) {
      st.loading = false;
      st.error = 'The connection dropped: press Enter to search again.';
    }
  }
  endJump(null);
  render();
}

export function closeSearch() {
  const room = activeRoom();
  if (room) searches.delete(room.name);
  ui.searchQ.value = '';
  endJump(null);
  render();
}

// ------------------------------------------------------- jumping
function endJump(note) {
  if (!jump) return;
  clearTimeout(jump.timer);
  const st = searches.get(jump.room);
  jump = null;
  if (st) st.note = note;
}

function flash(node) {
  node.classList.remove('flash');
  void node.offsetWidth;          // restart the animation
  node.classList.add('flash');
  setTimeout(() => node.classList.remove('flash'), FLASH_MS);
}

// One step toward the message: shown when held (with a few before it),
// else one more older page, or another look soon while a page of someone
// else's is on its way or the room is being joined again.
function jumpStep() {
  const j = jump;
  if (!j) return;
  clearTimeout(j.timer);
  const room = S.rooms.get(j.room);
  if (!room || room !== activeRoom()) { endJump(null); render(); return; }
  const entry = room.msgs.get(j.seq);
  if (entry && (room.oldest <= Math.max(1, j.seq - JUMP_CONTEXT) || !room.more)) {
    endJump(null);
    entry.node.scrollIntoView({ block: 'center' });
    flash(entry.node);
    // A phone's panel covers the messages.
    const st = searches.get(room.name);
    if (st && matchMedia('(max-width: 760px)').matches) st.open = false;
    render();
    return;
  }
  if (!entry && room.msgs.size && (!room.more || room.oldest <= j.seq)) {
    endJump('That message is not in the room any more.');
    render();
    return;
  }
  if (Date.now() > j.until) {
    endJump('Loading older messages took too long.');
    render();
    return;
  }
  const asked = loadOlderPage(room, JUMP_PAGE, (ok) => {
    if (jump !== j) return;
    if (!ok) { endJump('Could not load older messages.'); render(); return; }
    j.until = Date.now() + JUMP_PAGE_MS;
    jumpStep();
  });
  j.timer = setTimeout(jumpStep, asked ? JUMP_PAGE_MS + 50 : 150);
}

function jumpTo(seq) {
  const room = activeRoom();
  const st = room && searches.get(room.name);
  if (!st) return;
  endJump(null);
  jump = { room: room.name, seq, timer: null, until: Date.now() + JUMP_PAGE_MS };
  st.note = null;
  st.current = seq;
  render();
  jumpStep();
}

// ------------------------------------------------------- the panel
function hit(m, st) {
  const li = el('li', 'hit' + (st.current === m.seq ? ' current' : ''));
  const b = el('button', 'hit-open');
  b.type = 'button';
  b.dataset.seq = String(m.seq);
  b.title = 'Show this message in the room';
  const sender = typeof m.sender === 'string' ? m.sender : '?';
  const head = el('span', 'hit-head');
  head.append(avatar(sender), el('span', 'hit-sender', sender === S.me ? 'You' : sender));
  if (typeof m.ts === 'number') {
    const t = el('time', 'hit-time', dayLabel(m.ts) + ' ' + fmtTime(m.ts));
    t.dateTime = new Date(m.ts).toISOString();
    t.title = fmtFull(m.ts);
    head.append(t);
  }
  b.append(head, el('span', 'hit-text'));
  b.lastChild.append(highlight(typeof m.content === 'string' ? m.content : '', st.words));
  const names = (Array.isArray(m.attachments) ? m.attachments : [])
    .filter((a) => isFile(a) && typeof a.name === 'string').map((a) => a.name);
  if (names.length) b.append(el('span', 'hit-files', '📎 ' + names.join(', ')));
  if (jump && jump.room === S.active && jump.seq === m.seq) b.append(el('span', 'hit-loading', 'Loading…'));
  li.append(b);
  return li;
}

// The open room's search, if any.
export function render() {
  const room = activeRoom();
  const st = room ? searches.get(room.name) : null;
  ui.searchQ.placeholder = room ? 'Search ' + roomTitle(room) : 'Search';
  ui.main.classList.toggle('searching', !!(st && st.open));
  if (!st || !st.open) {
    ui.searchPanel.hidden = true;
    if (!st && document.activeElement !== ui.searchQ) ui.searchQ.value = '';
    return;
  }
  if (document.activeElement !== ui.searchQ) ui.searchQ.value = st.q;
  ui.searchPanel.hidden = false;
  ui.searchPanel.style.top = ui.searchForm.parentElement.offsetHeight + 'px';
  ui.searchTitle.textContent = 'Results for “' + st.q + '”';
  clear(ui.searchResults);
  for (const m of st.results) ui.searchResults.append(hit(m, st));
  let status = '';
  if (st.error) status = st.error;
  else if (st.loading) status = 'Searching…';
  else if (!st.results.length) status = 'No messages match.';
  else if (st.note) status = st.note;
  ui.searchStatus.textContent = status;
  ui.searchStatus.className = 'search-status' + (st.error || st.note ? ' error' : '');
  ui.searchMore.hidden = !st.more || !!st.error;
  ui.searchMore.disabled = st.loading;
  ui.searchPanel.dataset.state = st.error ? 'error' : st.loading ? 'loading' : 'done';
}

export function onResultsClick(ev) {
  const b = ev.target.closest('button.hit-open');
  if (b) jumpTo(Number(b.dataset.seq));
}
