// Signalling client for video visits (protocol: video/PROTOCOL.md). An ES module with no dependencies.
//
//   const signal = new SignalClient(encounterId);
//   signal.addEventListener('welcome', (e) => console.log(e.detail));
//   signal.connect();
//
// Every server message is dispatched as an event named after its `type`, with the message as `detail`.
// The client adds: `reconnecting` {attempt, delay, code}, `reconnected` (the welcome of a resume),
// `open`, `closed` {code, reason, fatal}, and `status` {status} whenever `status` changes.
//
// It keeps the highest `seq` it processed, reconnects with exponential backoff (capped at 5 s) presenting
// `resume=<token>&last_seq=<n>`, joins afresh when the resume is refused (`resume_rejected`,
// `resume_expired`), pings every 5 s and treats 15 s without any message as a dead socket.

const DEFAULTS = {
  pingInterval: 5000, // ms between pings
  deadAfter: 15000, // ms without any message before the socket is considered dead
  backoffBase: 250, // first reconnect delay (ms), doubled per attempt
  backoffMax: 5000, // cap of the reconnect delay (ms)
  settleQuiet: 80, // fresh join: ms of quiet after a welcome before the burst is processed
  settleMax: 1500, // fresh join: longest wait for the burst to end (ms)
};

// Refusals after which reconnecting would not help.
const FATAL = new Set(['not_authenticated', 'not_found', 'taken_over', 'replaced', 'already_active']);

export function signalUrl(encounterId, base = globalThis.location) {
  const scheme = base.protocol === 'https:' ? 'wss:' : 'ws:';
  return `${scheme}//${base.host}/ws/v1/encounters/${encodeURIComponent(encounterId)}/signal`;
}

export class SignalClient extends EventTarget {
  constructor(encounterId, options = {}) {
    super();
    this.encounterId = encounterId;
    this.options = { ...DEFAULTS, ...options };
    this.url = options.url || signalUrl(encounterId);
    this.WebSocket = options.WebSocket || globalThis.WebSocket;
    this.seq = 0; // highest seq processed
    this.resumeToken = null;
    this.you = null; // {user, role, polite, admitted}
    this.encounter = null; // {id, status}
    this.participants = [];
    this.turn = null; // latest TURN credentials (welcome / admitted)
    this.status = 'idle'; // idle | connecting | open | reconnecting | closed
    this.attempt = 0;
    this.signalRtt = null; // ms, from ping/pong
    this.skippedOnJoin = 0;
    this.ws = null;
    this._wanted = false; // the application wants a connection
    this._automatic = false; // the current attempt is an automatic reconnect
    this._fatal = null; // the refusal that stops reconnecting
    this._ackedSeq = 0;
    this._lastMessageAt = 0;
    this._pingSentAt = 0;
    this._pingTimer = null;
    this._watchTimer = null;
    this._retryTimer = null;
    this._settling = null;
    this._resuming = false;
    this._refused = false; // the server refused the resume (or saw our old socket): retry at once
    this._takeoverNext = false;
    this._unansweredSince = 0;
    this._onOnline = () => {
      if (this.status === 'reconnecting' && this._retryTimer) {
        clearTimeout(this._retryTimer);
        this._retryTimer = null;
        this._open();
      }
    };
    globalThis.addEventListener?.('online', this._onOnline);
  }

  // -- public API -----------------------------------------------------------------------------------

  /** Join (or, with takeover, move the visit from another window to this one). */
  connect({ takeover = false } = {}) {
    this._wanted = true;
    this._fatal = null;
    this._automatic = false;
    this.attempt = 0;
    clearTimeout(this._retryTimer);
    this._retryTimer = null;
    const old = this.ws;
    this._teardown();
    if (old && old.readyState <= 1) old.close(1000);
    this._open({ takeover });
  }

  /** Send a client message; false when there is no open socket (the caller may retry after `welcome`). */
  send(type, payload = {}) {
    const ws = this.ws;
    if (!ws || ws.readyState !== 1 || this.status !== 'open') return false;
    ws.send(JSON.stringify({ ...payload, type }));
    return true;
  }

  admit(user) { return this.send('admit', { user }); }
  deny(user) { return this.send('deny', { user }); }
  end() { return this.send('end'); }
  offer(sdp) { return this.send('offer', { sdp }); }
  answer(sdp) { return this.send('answer', { sdp }); }
  candidate(candidate) { return this.send('candidate', { candidate }); }
  iceRestart() { return this.send('ice_restart'); }

  /** Leave deliberately (no grace period) and close. */
  leave() {
    this.send('leave');
    this.close(1000, 'left');
  }

  /** Close for good: no reconnect. */
  close(code = 1000, reason = 'closed') {
    this._wanted = false;
    clearTimeout(this._retryTimer);
    this._retryTimer = null;
    const ws = this.ws;
    this._teardown();
    if (ws && ws.readyState <= 1) ws.close(code);
    this._setStatus('closed');
    this._emit('closed', { code, reason, fatal: false });
  }

  /** Drop the socket as a network failure would (the server sees a disconnect without `leave`); the
   * client reconnects and resumes. For tests and for a page that knows its network changed. */
  drop() {
    if (!this.ws) return;
    this._lost(4999, 'dropped');
  }

  // -- connection ---------------------------------------------------------------------------------------

  _open({ takeover = false } = {}) {
    const params = new URLSearchParams();
    const resuming = Boolean(this.resumeToken);
    if (resuming) {
      // Kept until the server answers: a socket that never reached it did not use the token up; one that did
      // gets `resume_rejected` and joins afresh.
      params.set('resume', this.resumeToken);
      params.set('last_seq', String(this.seq));
    }
    if (takeover) params.set('takeover', '1');
    const query = params.toString();
    this._setStatus(this.status === 'reconnecting' ? 'reconnecting' : 'connecting');
    let ws;
    try {
      ws = new this.WebSocket(query ? `${this.url}?${query}` : this.url);
    } catch (err) {
      this._lost(1006, String(err));
      return;
    }
    this.ws = ws;
    this._resuming = resuming;
    this._settling = resuming ? null : { buffer: [], quiet: null, max: null };
    this._lastMessageAt = Date.now();
    this._unansweredSince = 0;
    ws.onopen = () => {
      if (ws !== this.ws) return;
      this._lastMessageAt = Date.now();
      this._emit('open', { resuming });
      this._pingTimer = setInterval(() => this._ping(), this.options.pingInterval);
    };
    ws.onmessage = (event) => {
      if (ws !== this.ws) return;
      this._lastMessageAt = Date.now();
      this._unansweredSince = 0;
      let message;
      try {
        message = JSON.parse(event.data);
      } catch {
        return;
      }
      if (message && typeof message.type === 'string') this._receive(message);
    };
    ws.onclose = (event) => {
      if (ws !== this.ws) return;
      this._lost(event.code, event.reason);
    };
    ws.onerror = () => {}; // a close event follows
    this._watchTimer = setInterval(() => this._watch(), Math.min(1000, this.options.deadAfter / 5));
  }

  /** Dead socket: nothing heard for `deadAfter` although pings went out (every `pingInterval`, so normally
   * 15 s of silence). Counting from the first unanswered ping keeps a tab whose timers the browser throttles
   * from declaring its socket dead only because it did not ping. */
  _watch() {
    const { deadAfter, pingInterval } = this.options;
    const now = Date.now();
    const ws = this.ws;
    if (!ws) return;
    if (ws.readyState === 0 && now - this._lastMessageAt > deadAfter) {
      this._lost(4000, 'could not connect');
    } else if (
      now - this._lastMessageAt > deadAfter &&
      this._unansweredSince &&
      now - this._unansweredSince >= deadAfter - pingInterval
    ) {
      this._lost(4000, 'no message for too long');
    }
  }

  _ping() {
    const ws = this.ws;
    if (!ws || ws.readyState !== 1) return;
    if (this.status === 'open' && this.seq > this._ackedSeq) {
      ws.send(JSON.stringify({ type: 'ack', seq: this.seq }));
      this._ackedSeq = this.seq;
    }
    this._pingSentAt = Date.now();
    if (!this._unansweredSince) this._unansweredSince = this._pingSentAt;
    ws.send(JSON.stringify({ type: 'ping' }));
  }

  /** The socket is gone (closed, dead or dropped): reconnect unless that would not help. */
  _lost(code, reason) {
    const ws = this.ws;
    this._teardown();
    if (ws && ws.readyState <= 1) {
      try {
        ws.close(code >= 4000 && code < 5000 ? code : 4000);
      } catch {
        // closing a dead socket: nothing to do
      }
    }
    if (!this._wanted || this._fatal) {
      this._wanted = false;
      this._setStatus('closed');
      this._emit('closed', { code, reason, fatal: Boolean(this._fatal), error: this._fatal });
      return;
    }
    const delay = this._refused ? 0 : this._backoff();
    this._refused = false;
    this.attempt += 1;
    this._automatic = true;
    this._setStatus('reconnecting');
    this._emit('reconnecting', { attempt: this.attempt, delay, code, reason });
    this._retryTimer = setTimeout(() => {
      this._retryTimer = null;
      if (this._wanted) this._open({ takeover: this._takeoverNext === true });
      this._takeoverNext = false;
    }, delay);
  }

  _backoff() {
    const { backoffBase, backoffMax } = this.options;
    const exp = Math.min(backoffMax, backoffBase * 2 ** Math.min(this.attempt, 10));
    return Math.round(exp / 2 + Math.random() * (exp / 2)); // jittered, at most backoffMax
  }

  _teardown() {
    clearInterval(this._pingTimer);
    clearInterval(this._watchTimer);
    this._pingTimer = this._watchTimer = null;
    if (this._settling) {
      clearTimeout(this._settling.quiet);
      clearTimeout(this._settling.max);
      this._settling = null;
    }
    if (this.ws) {
      this.ws.onopen = this.ws.onmessage = this.ws.onclose = this.ws.onerror = null;
      this.ws = null;
    }
  }

  // -- messages -----------------------------------------------------------------------------------------

  _receive(message) {
    if (message.type === 'pong') {
      if (this._pingSentAt) this.signalRtt = Date.now() - this._pingSentAt;
      return;
    }
    const seq = Number(message.seq || 0);
    if (!seq) {
      this._unnumbered(message);
      return;
    }
    if (this._settling) {
      this._settle(message);
      return;
    }
    if (seq <= this.seq) return; // already processed (a replay overlapping what we had)
    this._process(message);
  }

  /** A fresh join may be answered with the participant's earlier stream before the new welcome; only the
   * last welcome and what follows it describe the present. Numbered messages are held until the burst ends,
   * then processed from the last welcome on. */
  _settle(message) {
    const s = this._settling;
    s.buffer.push(message);
    if (!s.buffer.some((m) => m.type === 'welcome')) return;
    clearTimeout(s.quiet);
    s.quiet = setTimeout(() => this._settled(), this.options.settleQuiet);
    if (!s.max) s.max = setTimeout(() => this._settled(), this.options.settleMax);
  }

  _settled() {
    const s = this._settling;
    if (!s) return;
    clearTimeout(s.quiet);
    clearTimeout(s.max);
    this._settling = null;
    let start = -1;
    s.buffer.forEach((m, i) => {
      if (m.type === 'welcome') start = i;
    });
    this.skippedOnJoin = start; // earlier messages replayed before this connection's welcome
    const present = s.buffer.slice(start);
    this.seq = present[0].seq - 1;
    for (const message of present) {
      if (message.seq > this.seq) this._process(message);
      if (this.ws === null && !this._wanted) break;
    }
  }

  _process(message) {
    this.seq = message.seq;
    switch (message.type) {
      case 'welcome': {
        this.resumeToken = message.resume_token || null;
        this.you = message.you || null;
        this.encounter = message.encounter || null;
        this.participants = message.participants || [];
        if (message.turn) this.turn = message.turn;
        const wasReconnect = this._automatic;
        this.attempt = 0;
        this._automatic = false;
        this._setStatus('open');
        this._emit('welcome', message);
        if (wasReconnect || message.resumed) this._emit('reconnected', message);
        return;
      }
      case 'admitted':
        if (message.turn) this.turn = message.turn;
        if (this.you) this.you = { ...this.you, admitted: true };
        if (message.encounter) this.encounter = message.encounter;
        break;
      case 'state':
        if (message.encounter) this.encounter = message.encounter;
        break;
      case 'presence':
        this._presence(message);
        break;
      case 'denied':
        this._fatal = 'denied';
        break;
      case 'ended':
        if (message.encounter) this.encounter = message.encounter;
        this._fatal = 'ended';
        break;
      default:
        break;
    }
    this._emit(message.type, message);
    if (message.type === 'ended') this.close(1000, 'ended');
  }

  _presence(message) {
    const others = this.participants.filter((p) => p.user !== message.user);
    others.push({ user: message.user, role: message.role, status: message.status });
    this.participants = others;
  }

  /** Unnumbered messages: refusals of the connection (followed by a close) and nothing else. */
  _unnumbered(message) {
    if (message.type !== 'error') {
      this._emit(message.type, message);
      return;
    }
    const code = message.code;
    if (code === 'resume_rejected' || code === 'resume_expired') {
      // Join afresh, at once.
      this.resumeToken = null;
      this._refused = true;
    } else if (code === 'already_active' && this._automatic) {
      // Our own earlier socket, not yet noticed dead by the server: move the visit back here.
      this._takeoverNext = true;
      this._refused = true;
    } else if (FATAL.has(code)) {
      this._fatal = code;
    }
    this._emit('error', message);
  }

  _setStatus(status) {
    if (this.status === status) return;
    this.status = status;
    this._emit('status', { status });
  }

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}
