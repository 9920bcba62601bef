/*
 * One-to-one voice and video calls (protocol 1.1) in a direct conversation
 * or a room of two: WebRTC between the two browsers, with the server
 * relaying only the signalling (`signal`: offer, answer, ice, hangup,
 * reject, busy) and giving the STUN/TURN servers (`welcome.iceServers`).
 * Media never touches the server.
 *
 * A signal reaches every connection of its receiver, so every device of
 * the callee rings. Each page says which device it is (`dev` in the
 * signal's data, a JSON object): the caller takes the first answer, and
 * tells the callee's other devices with a `hangup` that keeps the one
 * that answered; a reject or busy from any device ends the call and the
 * same hangup stops the others. A page already in a call (or ringing)
 * answers an offer with `busy`. One call at a time per page.
 */
import { randomId } from './util.js';
import { S, activeRoom } from './state.js';
import { ask } from './conn.js';
import { ui, showBanner } from './views.js';
import { ensureRoom } from './rooms.js';

const RING_MS = 45000;            // an unanswered call gives up after this
const ENDED_SHOW_MS = 6000;       // the ended panel stays this long
const DEV = randomId() + randomId();

let call = null;                  // the call of this page, or null (see newCall)

function supported() {
  return !!(window.RTCPeerConnection && navigator.mediaDevices && navigator.mediaDevices.getUserMedia);
}

// Who a call from room would reach: the other user of a DM, or of a room
// where exactly two people are.
function peerOf(room) {
  if (!room || !room.joined) return null;
  if (room.dm) return room.dm;
  if (room.members.size !== 2 || !room.members.has(S.me)) return null;
  return Array.from(room.members).find((u) => u !== S.me) || null;
}

function newCall(f) {
  return Object.assign({
    id: null, peer: null, room: null, role: 'caller', video: true, state: 'calling',
    pc: null, local: null, peerDev: null, offerSdp: null, inIce: [], outIce: [], canIce: false,
    startedAt: 0, endedAt: 0, ringTimer: null, tick: null, hideTimer: null, reason: '', pcState: '',
  }, f);
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// A signal about call c. The sender must have joined the room: the callee
// may not have (a DM it never opened), so it joins and tries again.
async function sig(c, kind, data) {
  const payload = { to: c.peer, room: c.room, callId: c.id, kind,
    data: JSON.stringify(Object.assign({ dev: DEV }, data || {})) };
  try {
    return await ask('signal', payload);
  } catch (e) {
    if (e.code !== 'not_joined') throw e;
    const room = ensureRoom(c.room, false);
    for (let i = 0; i < 100 && !room.joined; i++) await sleep(100);
    return ask('signal', payload);
  }
}

function quiet(p) {
  p.catch(() => {});
}

// ------------------------------------------------------- media
function makePc(c) {
  const pc = new RTCPeerConnection({ iceServers: S.iceServers });
  c.pc = pc;
  for (const t of c.local.getTracks()) pc.addTrack(t, c.local);
  // Our candidates go only after the offer or answer they belong to.
  pc.onicecandidate = (ev) => {
    if (!ev.candidate || call !== c) return;
    if (c.canIce) quiet(sig(c, 'ice', { c: ev.candidate.toJSON() }));
    else c.outIce.push(ev.candidate.toJSON());
  };
  pc.ontrack = (ev) => {
    if (call !== c) return;
    ui.callRemote.srcObject = ev.streams[0] || new MediaStream([ev.track]);
  };
  pc.onconnectionstatechange = () => {
    if (call !== c || c.state === 'ended') return;
    c.pcState = pc.connectionState;
    if (c.pcState === 'connected' && c.state !== 'connected') {
      c.state = 'connected';
      c.startedAt = Date.now();
      c.tick = setInterval(() => { renderTimer(); stats(c); }, 1000);
    } else if (c.pcState === 'failed') {
      end('the connection failed (no route between the two: a TURN server would help)', true);
      return;
    }
    render();
  };
  ui.callLocal.srcObject = c.local;
}

function iceGo(c) {
  c.canIce = true;
  for (const cand of c.outIce.splice(0)) quiet(sig(c, 'ice', { c: cand }));
}

async function addIce(c) {
  for (const cand of c.inIce.splice(0)) await c.pc.addIceCandidate(cand).catch(() => {});
}

// What the page shows of the incoming video, and what the tests read.
async function stats(c) {
  if (!c.pc || c.state !== 'connected') return;
  const report = await c.pc.getStats().catch(() => null);
  if (!report || call !== c) return;
  let text = '';
  report.forEach((s) => {
    if (s.type !== 'inbound-rtp') return;
    if (s.kind === 'video') {
      ui.call.dataset.framesDecoded = String(s.framesDecoded || 0);
      if (s.frameWidth) text = s.frameWidth + '×' + s.frameHeight + (s.framesPerSecond ? ' · ' + Math.round(s.framesPerSecond) + ' fps' : '');
    } else if (s.kind === 'audio' && !text) {
      ui.call.dataset.audioPackets = String(s.packetsReceived || 0);
    }
  });
  ui.callStats.textContent = text;
}

// ------------------------------------------------------- the call
async function start(video) {
  const room = activeRoom();
  const peer = peerOf(room);
  if (!peer || !supported() || (call && call.state !== 'ended')) return;
  if (call) clearTimeout(call.hideTimer);
  const c = call = newCall({ id: randomId() + randomId(), peer, room: room.name, role: 'caller', video });
  render();
  try {
    c.local = await navigator.mediaDevices.getUserMedia({ audio: true, video });
    if (call !== c || c.state === 'ended') { stopMedia(c); return; }
    makePc(c);
    const offer = await c.pc.createOffer();
    await c.pc.setLocalDescription(offer);
    await sig(c, 'offer', { sdp: offer.sdp, video });
    iceGo(c);
    c.ringTimer = setTimeout(() => end('no answer', true), RING_MS);
  } catch (e) {
    end(e.code === 'not_found' ? peer + ' is not online' : 'could not start the call (' + (e.message || e.name) + ')', false);
  }
}

function onOffer(p, d) {
  if (call && call.state !== 'ended') {
    if (call.id !== p.callId) quiet(sig(newCall({ peer: p.from, room: p.room, id: p.callId }), 'busy'));
    return;
  }
  if (typeof d.sdp !== 'string' || !supported()) {
    quiet(sig(newCall({ peer: p.from, room: p.room, id: p.callId }), 'reject', { reason: 'unsupported' }));
    return;
  }
  if (call) clearTimeout(call.hideTimer);
  const c = call = newCall({ id: p.callId, peer: p.from, room: p.room, role: 'callee', state: 'ringing',
    video: d.video !== false, peerDev: d.dev, offerSdp: d.sdp });
  c.ringTimer = setTimeout(() => end('missed call', false), RING_MS + 5000);
  render();
}

async function accept() {
  const c = call;
  if (!c || c.state !== 'ringing') return;
  clearTimeout(c.ringTimer);
  c.state = 'connecting';
  render();
  try {
    c.local = await navigator.mediaDevices.getUserMedia({ audio: true, video: c.video });
    if (call !== c || c.state === 'ended') { stopMedia(c); return; }
    makePc(c);
    await c.pc.setRemoteDescription({ type: 'offer', sdp: c.offerSdp });
    await addIce(c);
    const answer = await c.pc.createAnswer();
    await c.pc.setLocalDescription(answer);
    await sig(c, 'answer', { sdp: answer.sdp });
    iceGo(c);
  } catch (e) {
    end('could not answer (' + (e.message || e.name) + ')', true);
  }
}

function reject() {
  const c = call;
  if (!c || c.state !== 'ringing') return;
  quiet(sig(c, 'reject'));
  end('declined', false);
}

// A signal frame for us.
export function onSignal(p) {
  if (typeof p.from !== 'string' || typeof p.callId !== 'string' || typeof p.data !== 'string') return;
  let d;
  try { d = JSON.parse(p.data); } catch (e) { return; }
  if (!d || typeof d !== 'object') return;
  if (p.kind === 'offer') { onOffer(p, d); return; }
  const c = call;
  if (!c || c.id !== p.callId || c.peer !== p.from || c.state === 'ended') return;
  // After the answer only the device that answered (or the caller's
  // device) counts.
  const fromPeer = !c.peerDev || d.dev === c.peerDev;
  switch (p.kind) {
    case 'answer':
      if (c.role !== 'caller' || c.state !== 'calling' || typeof d.sdp !== 'string') return;
      c.peerDev = d.dev;
      clearTimeout(c.ringTimer);
      c.state = 'connecting';
      render();
      // The callee's other devices stop ringing.
      quiet(sig(c, 'hangup', { reason: 'answered', keep: d.dev }));
      c.pc.setRemoteDescription({ type: 'answer', sdp: d.sdp }).then(() => addIce(c))
        .catch((e) => end('could not connect (' + (e.message || e.name) + ')', true));
      break;
    case 'ice':
      if (!fromPeer || !d.c) return;
      c.inIce.push(d.c);
      if (c.pc && c.pc.remoteDescription) quiet(addIce(c));
      break;
    case 'hangup':
      if (d.keep === DEV) return;       // we are the device that answered
      if (c.role === 'caller' && !fromPeer) return;
      end(d.reason === 'answered' ? 'answered on another device'
        : d.reason === 'rejected' ? 'declined' : d.reason === 'busy' ? 'busy'
          : c.state === 'ringing' ? 'missed call' : 'call ended', false);
      break;
    case 'reject':
    case 'busy':
      if (c.role !== 'caller' || c.state !== 'calling') return;
      // Any other device of the callee stops ringing too.
      quiet(sig(c, 'hangup', { reason: p.kind === 'reject' ? 'rejected' : 'busy' }));
      end(p.kind === 'reject' ? c.peer + ' declined' : c.peer + ' is busy', false);
      break;
    default:
      break;
  }
}

function stopMedia(c) {
  if (c.local) for (const t of c.local.getTracks()) t.stop();
}

// Ends the call (telling the peer when tell), keeping the panel a moment
// with the reason and the final time.
function end(reason, tell) {
  const c = call;
  if (!c || c.state === 'ended') return;
  if (tell) quiet(sig(c, 'hangup', { reason: 'hangup' }));
  c.state = 'ended';
  c.reason = reason;
  c.endedAt = Date.now();
  clearTimeout(c.ringTimer);
  clearInterval(c.tick);
  if (c.pc) c.pc.close();
  stopMedia(c);
  ui.callRemote.srcObject = null;
  ui.callLocal.srcObject = null;
  render();
  c.hideTimer = setTimeout(() => {
    if (call === c) {
      call = null;
      render();
    }
  }, ENDED_SHOW_MS);
}

function hangup() {
  if (call && call.state !== 'ended') end(call.state === 'calling' ? 'cancelled' : 'call ended', true);
}

function toggle(kind, button) {
  if (!call || !call.local) return;
  const tracks = kind === 'audio' ? call.local.getAudioTracks() : call.local.getVideoTracks();
  const off = button.getAttribute('aria-pressed') !== 'true';
  for (const t of tracks) t.enabled = !off;
  button.setAttribute('aria-pressed', off ? 'true' : 'false');
  if (kind === 'audio') button.textContent = off ? 'Unmute' : 'Mute';
  else button.textContent = off ? 'Camera on' : 'Camera off';
}

// ------------------------------------------------------- the page
function clock(ms) {
  const s = Math.max(0, Math.floor(ms / 1000));
  const mm = String(Math.floor(s / 60) % 60).padStart(2, '0');
  const ss = String(s % 60).padStart(2, '0');
  return (s >= 3600 ? Math.floor(s / 3600) + ':' : '') + mm + ':' + ss;
}

function renderTimer() {
  const c = call;
  ui.callTimer.textContent = c && c.startedAt ? clock((c.endedAt || Date.now()) - c.startedAt) : '';
}

const STATUS = {
  calling: () => 'calling…',
  ringing: (c) => 'is calling you (' + (c.video ? 'video' : 'voice') + ')',
  connecting: () => 'connecting…',
  connected: (c) => (c.pcState === 'disconnected' ? 'reconnecting…' : 'connected'),
  ended: (c) => c.reason || 'call ended',
};

function render() {
  const c = call;
  ui.call.hidden = !c;
  ui.call.dataset.state = c ? c.state : 'idle';
  if (c) {
    ui.call.dataset.kind = c.video ? 'video' : 'audio';
    ui.call.dataset.role = c.role;
    ui.callTitle.textContent = c.peer;
    ui.callStatus.textContent = STATUS[c.state](c);
    if (c.state === 'ringing' || c.state === 'calling') {
      ui.callMute.setAttribute('aria-pressed', 'false');
      ui.callMute.textContent = 'Mute';
      ui.callCamera.setAttribute('aria-pressed', 'false');
      ui.callCamera.textContent = 'Camera off';
      ui.callStats.textContent = '';
      delete ui.call.dataset.framesDecoded;
    }
  }
  renderTimer();
  renderCallButtons();
}

// The call buttons of the room header: shown where a call can go.
export function renderCallButtons() {
  const peer = supported() ? peerOf(activeRoom()) : null;
  const busy = !!call && call.state !== 'ended';
  ui.callAudio.hidden = ui.callVideo.hidden = !peer;
  ui.callAudio.disabled = ui.callVideo.disabled = busy;
  if (peer) {
    ui.callAudio.title = 'Voice call with ' + peer;
    ui.callVideo.title = 'Video call with ' + peer;
  }
}

export function roomShown() {
  renderCallButtons();
}

// What the call buttons do (wired by main.js).
export const callActions = {
  audio: () => start(false).catch((e) => showBanner(String(e), 'error', 6000)),
  video: () => start(true).catch((e) => showBanner(String(e), 'error', 6000)),
  accept: () => { accept(); },
  reject,
  hangup,
  mute: () => toggle('audio', ui.callMute),
  camera: () => toggle('video', ui.callCamera),
  pagehide: () => { if (call && call.state !== 'ended') end('page closed', true); },
};
