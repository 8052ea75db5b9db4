// The video visit page (/visit/<encounter id>): sign-in, waiting room, call. The page itself is a shell
// with no health information; what it shows arrives over the authenticated API and signalling socket.

import { SignalClient } from './signal.js';
import { VideoCall } from './call.js';

const $ = (id) => document.getElementById(id);
const root = document.documentElement;
const encounterId = document.body.dataset.encounter;
const VIEWS = ['loading', 'signin', 'connecting', 'message', 'patient-waiting', 'practitioner-waiting', 'call'];
const STATS_INTERVAL = 2000;

let signal = null;
let call = null;
let me = null;
let statsTimer = null;
let patientName = null;
let finished = false; // the visit is over for this page (ended, denied, left, flagged)
let endRequested = false;
const waiting = new Map(); // user id -> list item

// -- branding (custom properties through CSSOM: no inline style attribute, which the CSP forbids) --------

function applyBranding() {
  for (const [data, property] of [['primary', '--brand-primary'], ['accent', '--brand-accent']]) {
    const value = root.dataset[data];
    if (/^#[0-9a-fA-F]{6}$/.test(value || '')) root.style.setProperty(property, value);
  }
}

// -- helpers ------------------------------------------------------------------------------------------------

function show(view) {
  for (const name of VIEWS) $(`view-${name}`).hidden = name !== view;
  document.body.dataset.view = view;
}

function message(title, text, { takeover = false } = {}) {
  $('message-title').textContent = title;
  $('message-text').textContent = text;
  $('takeover').hidden = !takeover;
  show('message');
}

function banner(text, kind = 'warning') {
  const el = $('banner');
  if (!text) {
    el.hidden = true;
    el.textContent = '';
    return;
  }
  el.textContent = text;
  el.dataset.kind = kind;
  el.hidden = false;
}

let bannerTimer = null;
function flash(text) {
  banner(text, 'ok');
  clearTimeout(bannerTimer);
  bannerTimer = setTimeout(() => banner(''), 2500);
}

async function api(path, { method = 'GET', body = undefined, csrf = null } = {}) {
  const headers = { Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (csrf) headers['X-CSRFToken'] = csrf;
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      credentials: 'same-origin',
      cache: 'no-store',
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch {
    return { status: 0, data: null };
  }
  let data = null;
  try {
    data = await response.json();
  } catch {
    data = null;
  }
  return { status: response.status, data };
}

async function csrfToken() {
  const { data } = await api('/api/v1/auth/csrf');
  return data?.csrf_token || '';
}

// -- sign-in ----------------------------------------------------------------------------------------------

function showSignIn(note = '') {
  $('sign-out').hidden = true;
  $('signin-error').hidden = !note;
  $('signin-error').textContent = note;
  show('signin');
  $('signin-email').focus();
}

async function onSignIn(event) {
  event.preventDefault();
  const submit = $('signin-submit');
  const error = $('signin-error');
  submit.disabled = true;
  error.hidden = true;
  const body = { email: $('signin-email').value.trim(), password: $('signin-password').value };
  const totp = $('signin-totp').value.trim();
  if (totp) body.totp = totp;
  try {
    const result = await api('/api/v1/auth/login', { method: 'POST', body, csrf: await csrfToken() });
    if (result.status === 200) {
      $('signin-password').value = '';
      $('signin-totp').value = '';
      start(result.data);
      return;
    }
    const code = result.data?.error?.code;
    if (code === 'mfa_required') {
      $('signin-totp-row').hidden = false;
      $('signin-totp').focus();
    }
    error.textContent =
      result.data?.error?.message || (result.status === 0 ? 'The network is unavailable.' : 'Sign-in failed.');
    error.hidden = false;
  } finally {
    submit.disabled = false;
  }
}

async function onSignOut() {
  if (signal) signal.close(1000, 'signed out');
  if (call) call.hangUp('signed out');
  await api('/api/v1/auth/logout', { method: 'POST', csrf: await csrfToken() });
  window.location.reload();
}

// -- the visit ----------------------------------------------------------------------------------------------

function start(who, { takeover = false } = {}) {
  me = who;
  finished = false;
  $('sign-out').hidden = false;
  if (who.mfa_enrollment_required) {
    message(
      'Set up two-step sign-in first',
      'Your clinic requires an authenticator app. Set it up in the portal, then come back to this page.',
    );
    return;
  }
  show('connecting');
  signal = new SignalClient(encounterId);
  call = new VideoCall(signal, {
    localVideo: $('local-video'),
    remoteVideo: $('remote-video'),
    refreshTurn: async () => {
      const { status, data } = await api(`/api/v1/video/turn-credentials?encounter=${encodeURIComponent(encounterId)}`);
      return status === 200 ? data : null;
    },
  });
  // For the page's own diagnostics and for end-to-end tests.
  window.__signal = signal;
  window.__call = call;
  bindSignal();
  bindCall();
  signal.connect({ takeover });
  call.startMedia().then((stream) => {
    $('preview').srcObject = stream;
  });
}

function bindSignal() {
  const on = (type, handler) => signal.addEventListener(type, (event) => handler(event.detail));
  on('welcome', (m) => {
    document.body.dataset.role = m.you.role;
    banner('');
    if (m.you.role === 'practitioner') {
      for (const user of [...waiting.keys()]) removeWaiting(user);
      if (m.encounter.status !== 'in-progress') {
        for (const p of m.participants) {
          if (p.role === 'patient' && p.status === 'connected') addWaiting(p.user);
        }
      }
    }
    render();
  });
  on('reconnecting', (d) => {
    banner(
      d.attempt > 1
        ? `Connection lost. Reconnecting (attempt ${d.attempt})…`
        : 'Connection lost. Reconnecting…',
    );
  });
  on('reconnected', () => flash('Reconnected.'));
  on('waiting', (m) => {
    addWaiting(m.user);
    render();
  });
  on('admitted', () => render());
  on('state', (m) => {
    if (m.documentation_required) {
      finish('The visit was interrupted', 'The connection was not restored in time. The visit has been closed for documentation.');
      return;
    }
    render();
  });
  on('presence', (m) => {
    if (signal.you?.role === 'practitioner' && m.role === 'patient') {
      // A patient back in the waiting room by resuming is announced by presence alone (no `waiting`).
      if (m.status !== 'connected') removeWaiting(m.user);
      else if (signal.encounter?.status !== 'in-progress') addWaiting(m.user);
      render();
    }
    renderPeer();
  });
  on('denied', () => finish('Not admitted', 'The practitioner was not able to admit you to this visit.'));
  on('ended', () => finish('The visit has ended', 'Thank you. You can close this page.'));
  on('error', (m) => onError(m));
  on('closed', (d) => {
    if (!d.fatal && document.body.dataset.view === 'connecting') message('Disconnected', 'The connection closed.');
  });
}

function onError(m) {
  switch (m.code) {
    case 'not_authenticated':
      finished = true;
      stopStats();
      call?.hangUp('signed out');
      showSignIn('Your session has ended. Please sign in again.');
      break;
    case 'not_found':
      if (endRequested || signal?.you) {
        // In the visit a moment ago: it ended (the refusal of a message sent meanwhile can overtake `ended`),
        // or this account is no longer a participant in it.
        finish(
          'The visit has ended',
          endRequested ? 'Thank you. You can close this page.' : 'This visit has ended or is no longer available to you.',
        );
        break;
      }
      finished = true;
      stopStats();
      call?.hangUp('unavailable');
      message('Visit not available', 'This visit is not available to you. It may have ended, or the link may be wrong.');
      break;
    case 'already_active':
      message('Open in another window', 'This visit is already open in another window or device.', { takeover: true });
      break;
    case 'taken_over':
    case 'replaced': // resumed on another connection (this one's resume token was used elsewhere)
      finished = true;
      stopStats();
      call?.hangUp('taken over');
      message('Moved to another window', 'This visit is now open in another window.', { takeover: true });
      break;
    case 'not_permitted':
    case 'invalid_state':
    case 'not_admitted':
      notice(m.message || 'That did not work.');
      break;
    default:
      break;
  }
}

function finish(title, text) {
  finished = true;
  stopStats();
  call?.hangUp('finished');
  banner('');
  $('quality').hidden = true;
  $('turn-missing').hidden = true;
  message(title, text);
}

function bindCall() {
  const on = (type, handler) => call.addEventListener(type, (event) => handler(event.detail));
  on('media', (d) => {
    $('toggle-mute').textContent = d.muted ? 'Unmute' : 'Mute';
    $('toggle-mute').setAttribute('aria-pressed', String(d.muted));
    $('toggle-mute').disabled = !d.audio;
    $('toggle-camera').textContent = d.cameraOff ? 'Camera on' : 'Camera off';
    $('toggle-camera').setAttribute('aria-pressed', String(d.cameraOff));
    $('toggle-camera').disabled = !d.video;
  });
  on('state', (d) => {
    if (d.state === 'in-call') startStats();
    render();
  });
  on('peer', () => renderPeer());
  on('connection', () => renderPeer());
  on('turn', (d) => {
    if (d.available) {
      $('turn-missing').hidden = true;
      notice('');
    } else if ($('turn-missing').hidden) {
      notice('The video relay is not available right now, so video cannot connect. The visit continues; try again shortly.');
      explainMissingTurn();
    }
  });
  on('problem', (d) => notice(d.message));
}

// No relay credentials came with the visit: ask the endpoint why. 503 `turn_unavailable` means this server has no
// TURN server configured at all, not a passing failure, and the page says so in the template's words.
async function explainMissingTurn() {
  const { status, data } = await api(`/api/v1/video/turn-credentials?encounter=${encodeURIComponent(encounterId)}`);
  if (status === 503 && data?.error?.code === 'turn_unavailable' && !finished) {
    $('turn-missing').hidden = false;
    notice('');
  }
}

function notice(text) {
  $('call-notice').textContent = text;
  $('call-notice').hidden = !text;
}

function render() {
  if (!signal?.you || finished) return;
  const view = document.body.dataset.view;
  if (view === 'message' && !$('takeover').hidden) return; // a refusal is on screen until acted on
  const { role, admitted } = signal.you;
  const status = signal.encounter?.status;
  if (status === 'finished' || status === 'cancelled') return;
  const inCall = role === 'practitioner' ? status === 'in-progress' : admitted;
  $('end-visit').hidden = role !== 'practitioner';
  $('leave-visit').hidden = role !== 'patient';
  if (inCall) {
    show('call');
    renderPeer();
  } else if (role === 'practitioner') {
    $('waiting-empty').hidden = waiting.size > 0;
    show('practitioner-waiting');
  } else {
    show('patient-waiting');
  }
}

function renderPeer() {
  if (!call || !signal?.you) return;
  const other = signal.you.role === 'practitioner' ? 'The patient' : 'Your practitioner';
  const status = call.peerStatus;
  const pc = call.pc;
  let text = '';
  if (!status || status === 'left') text = `Waiting for ${other.toLowerCase()} to join…`;
  else if (status === 'dropped') text = `${other}'s connection dropped. Holding the visit while they reconnect…`;
  else if (!pc || pc.connectionState !== 'connected') text = 'Connecting video…';
  $('peer-status').textContent = text;
  $('peer-status').hidden = !text;
}

// -- practitioner: waiting room ------------------------------------------------------------------------

function addWaiting(user) {
  if (waiting.has(user)) return;
  const item = $('waiting-item').content.firstElementChild.cloneNode(true);
  item.dataset.user = user;
  item.querySelector('.waiting-name').textContent = patientName || 'Your patient';
  item.querySelector('[data-action="admit"]').addEventListener('click', () => {
    if (signal.admit(user)) disableItem(item);
  });
  item.querySelector('[data-action="deny"]').addEventListener('click', () => {
    if (signal.deny(user)) removeWaiting(user);
    render();
  });
  waiting.set(user, item);
  $('waiting-list').append(item);
  $('waiting-empty').hidden = true;
  loadPatientName();
}

function disableItem(item) {
  for (const button of item.querySelectorAll('button')) button.disabled = true;
}

function removeWaiting(user) {
  const item = waiting.get(user);
  if (item) item.remove();
  waiting.delete(user);
  $('waiting-empty').hidden = waiting.size > 0;
}

let nameRequest = null;
function loadPatientName() {
  if (!nameRequest && me?.role === 'practitioner') nameRequest = fetchPatientName();
  return nameRequest;
}

async function fetchPatientName() {
  const encounter = await api(`/api/v1/encounters/${encodeURIComponent(encounterId)}`);
  if (encounter.status !== 200 || !encounter.data?.patient) return;
  const patient = await api(`/api/v1/patients/${encodeURIComponent(encounter.data.patient)}`);
  if (patient.status !== 200 || !patient.data) return;
  patientName = [patient.data.given_name, patient.data.family_name].filter(Boolean).join(' ') || null;
  if (!patientName) return;
  for (const item of waiting.values()) item.querySelector('.waiting-name').textContent = patientName;
}

// -- connection quality --------------------------------------------------------------------------------

function startStats() {
  if (statsTimer) return;
  $('quality').hidden = false;
  statsTimer = setInterval(updateStats, STATS_INTERVAL);
  updateStats();
}

function stopStats() {
  clearInterval(statsTimer);
  statsTimer = null;
}

async function updateStats() {
  if (!call) return;
  const s = await call.stats();
  window.__lastStats = s;
  const el = $('quality');
  el.dataset.quality = s.quality;
  const parts = [`Connection: ${s.quality === 'unknown' ? '…' : s.quality}`];
  if (s.rttMs != null) parts.push(`${s.rttMs} ms`);
  if (s.lossRate != null && s.lossRate > 0) parts.push(`${(s.lossRate * 100).toFixed(1)}% lost`);
  if (s.localCandidateType) parts.push(s.localCandidateType === 'relay' ? 'relayed' : s.localCandidateType);
  $('quality-text').textContent = parts.join(' · ');
  el.title = `Round trip ${s.rttMs ?? '?'} ms, ${s.packetsLost} packets lost, ${s.localCandidateType ?? '?'} → ${s.remoteCandidateType ?? '?'}`;
}

// -- controls ------------------------------------------------------------------------------------------

function bindControls() {
  $('signin-form').addEventListener('submit', onSignIn);
  $('sign-out').addEventListener('click', onSignOut);
  $('takeover').addEventListener('click', () => {
    $('takeover').hidden = true;
    show('connecting');
    if (!signal || (call && call.state === 'ended')) {
      // The devices were released when this window lost the visit: start over here.
      start(me, { takeover: true });
      return;
    }
    signal.connect({ takeover: true });
  });
  $('toggle-mute').addEventListener('click', () => call?.toggleMute());
  $('toggle-camera').addEventListener('click', () => call?.toggleCamera());
  $('end-visit').addEventListener('click', () => {
    if (window.confirm('End this visit for everyone?') && signal?.end()) endRequested = true;
  });
  $('leave-visit').addEventListener('click', () => {
    if (!window.confirm('Leave the visit?')) return;
    signal?.leave();
    finish('You left the visit', 'You can rejoin from the same link while the visit is open.');
  });
}

async function main() {
  applyBranding();
  bindControls();
  const result = await api('/api/v1/auth/me');
  if (result.status === 200) start(result.data);
  else if (result.status === 0) message('Offline', 'The network is unavailable. Reload the page to try again.');
  else showSignIn();
}

main();
