// The media side of a video visit: one RTCPeerConnection, relay-only through the clinic's TURN server,
// negotiated with "perfect negotiation" over a SignalClient (signal.js). An ES module with no dependencies.
//
//   const call = new VideoCall(signal, { localVideo, remoteVideo });
//   await call.startMedia();
//   call.addEventListener('connection', (e) => console.log(e.detail.connectionState));
//   await call.stats();   // {rttMs, packetsLost, localCandidateType, remoteCandidateType, quality, ...}
//
// Events: `media` {muted, cameraOff, audio, video}, `remote` {stream}, `connection` {connectionState,
// iceConnectionState}, `state` {state} (idle | in-call | ended), `peer` {status}, `turn` {available}, and
// `problem` {message} for what the page should tell the user.
//
// Roles: the patient is polite (welcome.you.polite), the practitioner impolite. On an offer collision the polite
// side rolls back and accepts; the impolite side ignores the other's offer. After a resume the server sends
// `restart_ice` to both sides: the impolite side restarts ICE (a new offer), both refresh their TURN
// credentials from the resumed welcome. A fresh join (no resume) means the other side has a new peer
// connection, so both sides build a new one.

const RESTART_MIN_INTERVAL = 5000; // ms between two ICE restarts we start ourselves
const DISCONNECTED_GRACE = 4000; // ms of `disconnected` ICE before it is treated as failed

export function iceServersFrom(turn) {
  if (!turn) return [];
  const urls = turn.uris || turn.urls || [];
  if (!urls.length || !turn.username || !turn.credential) return [];
  return [{ urls: [...urls], username: turn.username, credential: turn.credential }];
}

export function qualityOf({ rttMs, lossRate, connected }) {
  if (!connected) return 'unknown';
  if (rttMs == null && lossRate == null) return 'unknown';
  const rtt = rttMs ?? 0;
  const loss = lossRate ?? 0;
  if (rtt < 200 && loss < 0.02) return 'good';
  if (rtt < 450 && loss < 0.08) return 'fair';
  return 'poor';
}

export class VideoCall extends EventTarget {
  constructor(signal, options = {}) {
    super();
    this.signal = signal;
    this.localVideo = options.localVideo || null;
    this.remoteVideo = options.remoteVideo || null;
    this.constraints = options.constraints || {
      audio: { echoCancellation: true, noiseSuppression: true },
      video: { width: { ideal: 640 }, height: { ideal: 480 }, frameRate: { ideal: 24 } },
    };
    this.PeerConnection = options.RTCPeerConnection || globalThis.RTCPeerConnection;
    this.mediaDevices = options.mediaDevices || globalThis.navigator?.mediaDevices;
    // Optional: async () => fresh TURN credentials, used before an ICE restart when ours are getting old.
    this.refreshTurn = options.refreshTurn || null;
    this.pc = null;
    this.generation = 0; // peer connections built so far
    this.negotiations = 0; // offer/answer exchanges completed
    this.iceRestarts = 0;
    this.polite = true;
    this.role = null;
    this.user = null;
    this.turn = null;
    this.turnReceivedAt = 0;
    this.state = 'idle';
    this.localStream = null;
    this.remoteStream = null;
    this.muted = false;
    this.cameraOff = false;
    this.peerStatus = null; // the other participant: connected | dropped | left
    this.peerUser = null;
    this._makingOffer = false;
    this._ignoreOffer = false;
    this._answerPending = false;
    this._queue = Promise.resolve();
    this._lastRestart = 0;
    this._disconnectedTimer = null;
    this._peerResumed = false;
    this._lastStats = null;
    this._bindSignal();
  }

  // -- media ------------------------------------------------------------------------------------------

  /** Camera and microphone (audio only, then nothing, if that is all the device allows). */
  async startMedia() {
    if (this.localStream) return this.localStream;
    const attempts = [this.constraints, { audio: this.constraints.audio, video: false }];
    let lastError = null;
    for (const constraints of attempts) {
      try {
        this.localStream = await this.mediaDevices.getUserMedia(constraints);
        break;
      } catch (err) {
        lastError = err;
      }
    }
    if (!this.localStream) {
      this._problem(`Camera and microphone are not available (${lastError?.name || 'unknown'}).`);
      this.localStream = new MediaStream();
    }
    if (this.localVideo) this.localVideo.srcObject = this.localStream;
    this._emitMedia();
    if (this.pc) this._rebuild('media');
    return this.localStream;
  }

  setMuted(muted) {
    this.muted = Boolean(muted);
    for (const track of this.localStream?.getAudioTracks() || []) track.enabled = !this.muted;
    this._emitMedia();
  }

  toggleMute() {
    this.setMuted(!this.muted);
  }

  setCameraOff(off) {
    this.cameraOff = Boolean(off);
    for (const track of this.localStream?.getVideoTracks() || []) track.enabled = !this.cameraOff;
    this._emitMedia();
  }

  toggleCamera() {
    this.setCameraOff(!this.cameraOff);
  }

  /** Stop everything: peer connection and local devices. */
  hangUp(reason = 'ended') {
    this._closePC();
    for (const track of this.localStream?.getTracks() || []) track.stop();
    if (this.localVideo) this.localVideo.srcObject = null;
    if (this.remoteVideo) this.remoteVideo.srcObject = null;
    this._setState('ended', reason);
  }

  _emitMedia() {
    this._emit('media', {
      muted: this.muted,
      cameraOff: this.cameraOff,
      audio: Boolean(this.localStream?.getAudioTracks().length),
      video: Boolean(this.localStream?.getVideoTracks().length),
    });
  }

  // -- signalling ---------------------------------------------------------------------------------------

  _bindSignal() {
    const on = (type, handler) => this.signal.addEventListener(type, (event) => handler(event.detail));
    on('welcome', (m) => this._onWelcome(m));
    on('admitted', (m) => {
      this._setTurn(m.turn);
      this._update();
    });
    on('state', (m) => {
      if (m.encounter?.status === 'finished' || m.encounter?.status === 'cancelled') this.hangUp('finished');
      else this._update();
    });
    on('presence', (m) => this._onPresence(m));
    on('offer', (m) => this._enqueue(() => this._onDescription({ type: 'offer', sdp: sdpOf(m) })));
    on('answer', (m) => this._enqueue(() => this._onDescription({ type: 'answer', sdp: sdpOf(m) })));
    on('candidate', (m) => this._enqueue(() => this._onCandidate(m.candidate)));
    on('restart_ice', (m) => {
      // Noted at once: the `presence: connected` that follows a resume must not rebuild the connection.
      if (m.user && m.user !== this.user) this._peerResumed = true;
      this._enqueue(() => this._onRestartRequest(m));
    });
    on('ice_restart', (m) => this._enqueue(() => this._onRestartRequest(m)));
    on('ended', () => this.hangUp('ended'));
    on('denied', () => this.hangUp('denied'));
  }

  _onWelcome(m) {
    this.polite = Boolean(m.you?.polite);
    this.role = m.you?.role || null;
    this.user = m.you?.user || null;
    this._setTurn(m.turn);
    const other = (m.participants || []).find((p) => p.user !== this.user);
    if (other) {
      this.peerUser = other.user;
      this.peerStatus = other.status;
    }
    if (!m.resumed && this.pc) {
      // A fresh join: the server holds no resumable state of ours, and the other side will build a new peer
      // connection when it sees us connect; so do we.
      this._closePC();
    }
    this._update();
  }

  _onPresence(m) {
    if (m.user === this.user) return;
    const before = this.peerStatus;
    this.peerUser = m.user;
    this.peerStatus = m.status;
    this._emit('peer', { status: m.status, role: m.role, user: m.user, grace_seconds: m.grace_seconds });
    if (m.status === 'left') {
      this._closePC();
      this._peerResumed = false;
    } else if (m.status === 'dropped') {
      this._peerResumed = false;
    } else if (m.status === 'connected') {
      // A resume announces itself with restart_ice before this; anything else means the other side has a
      // fresh peer connection (or had none when ours made its offer): start over so both sides offer again.
      if (before !== 'connected' && !this._peerResumed && this.pc) this._closePC();
      this._peerResumed = false;
    }
    this._update();
  }

  /** In a call: admitted, the visit in progress, and the other participant present. */
  _inCall() {
    const you = this.signal.you;
    const status = this.signal.encounter?.status;
    if (!you || this.state === 'ended') return false;
    if (status === 'finished' || status === 'cancelled') return false;
    if (you.role === 'patient' && !you.admitted) return false;
    if (you.role === 'practitioner' && status !== 'in-progress') return false;
    return true;
  }

  _update() {
    if (this.state === 'ended') return;
    const inCall = this._inCall();
    if (!inCall) {
      if (this.state === 'in-call') this._closePC();
      this._setState('idle');
      return;
    }
    this._setState('in-call');
    if (!this.pc && this.peerStatus !== 'left') this._createPC();
  }

  _setTurn(turn) {
    if (!turn) {
      if (!this.turn) this._emit('turn', { available: false });
      return;
    }
    this.turn = turn;
    this.turnReceivedAt = Date.now();
    this._emit('turn', { available: iceServersFrom(turn).length > 0 });
    if (this.pc) {
      try {
        this.pc.setConfiguration(this._config());
      } catch (err) {
        this._log('setConfiguration', err);
      }
    }
  }

  _config() {
    return {
      iceServers: iceServersFrom(this.turn),
      iceTransportPolicy: 'relay', // media stays on the clinic's relay: no host or reflexive candidates
      bundlePolicy: 'max-bundle',
      rtcpMuxPolicy: 'require',
    };
  }

  // -- the peer connection ------------------------------------------------------------------------------

  _createPC() {
    const pc = new this.PeerConnection(this._config());
    this.pc = pc;
    this.generation += 1;
    this._makingOffer = false;
    this._ignoreOffer = false;
    this._answerPending = false;
    this.remoteStream = new MediaStream();
    if (this.remoteVideo) this.remoteVideo.srcObject = this.remoteStream;
    const stream = this.localStream;
    const kinds = new Set();
    for (const track of stream?.getTracks() || []) {
      pc.addTrack(track, stream);
      kinds.add(track.kind);
    }
    for (const kind of ['audio', 'video']) {
      if (!kinds.has(kind)) pc.addTransceiver(kind, { direction: 'recvonly' });
    }
    pc.onnegotiationneeded = () => this._enqueue(() => this._offer(pc));
    pc.onicecandidate = ({ candidate }) => {
      if (pc === this.pc && candidate) this.signal.candidate(candidate.toJSON());
    };
    pc.ontrack = ({ track, streams }) => {
      if (pc !== this.pc) return;
      const remote = streams && streams[0] ? streams[0] : this.remoteStream;
      if (remote !== this.remoteStream) {
        this.remoteStream = remote;
      } else if (!remote.getTracks().includes(track)) {
        remote.addTrack(track);
      }
      if (this.remoteVideo && this.remoteVideo.srcObject !== remote) this.remoteVideo.srcObject = remote;
      this._emit('remote', { stream: remote, kind: track.kind });
    };
    pc.oniceconnectionstatechange = () => {
      if (pc === this.pc) this._onIceState(pc);
    };
    pc.onconnectionstatechange = () => {
      if (pc === this.pc) this._emitConnection(pc);
    };
    this._emitConnection(pc);
    return pc;
  }

  _closePC() {
    clearTimeout(this._disconnectedTimer);
    const pc = this.pc;
    this.pc = null;
    if (pc) {
      pc.onnegotiationneeded = pc.onicecandidate = pc.ontrack = null;
      pc.oniceconnectionstatechange = pc.onconnectionstatechange = null;
      pc.close();
      this._emit('connection', { connectionState: 'closed', iceConnectionState: 'closed' });
    }
  }

  _rebuild(reason) {
    this._log('rebuilding the peer connection', reason);
    this._closePC();
    this._update();
  }

  _enqueue(task) {
    this._queue = this._queue.then(task).catch((err) => this._log('signalling task', err));
    return this._queue;
  }

  async _offer(pc) {
    if (pc !== this.pc) return;
    try {
      this._makingOffer = true;
      await pc.setLocalDescription();
      if (pc === this.pc && pc.localDescription?.type === 'offer') this.signal.offer(pc.localDescription.sdp);
    } catch (err) {
      this._log('making an offer', err);
    } finally {
      this._makingOffer = false;
    }
  }

  async _onDescription(description, retried = false) {
    if (!description.sdp) return;
    if (!this.pc) {
      if (!this._inCall()) return;
      this._createPC();
    }
    const pc = this.pc;
    const readyForOffer = !this._makingOffer && (pc.signalingState === 'stable' || this._answerPending);
    const collision = description.type === 'offer' && !readyForOffer;
    this._ignoreOffer = !this.polite && collision;
    if (this._ignoreOffer) return;
    if (description.type === 'answer' && pc.signalingState !== 'have-local-offer') return; // stale answer
    try {
      this._answerPending = description.type === 'answer';
      await pc.setRemoteDescription(description); // the polite side rolls back its own offer implicitly
      this._answerPending = false;
      if (description.type === 'offer') {
        await pc.setLocalDescription();
        if (pc === this.pc) this.signal.answer(pc.localDescription.sdp);
      }
      this.negotiations += 1;
      this._emitConnection(pc);
    } catch (err) {
      this._answerPending = false;
      if (description.type === 'offer' && !retried && pc === this.pc) {
        // An offer this connection cannot take (the other side built a new one: new fingerprint, other
        // m-lines): start over with a fresh connection and apply it there.
        this._log('offer refused, rebuilding', err);
        this._closePC();
        this._createPC();
        await this._onDescription(description, true);
      } else {
        this._log('applying a description', err);
      }
    }
  }

  async _onCandidate(candidate) {
    if (!this.pc || !candidate) return;
    const init = typeof candidate === 'string' ? { candidate, sdpMid: '0', sdpMLineIndex: 0 } : candidate;
    try {
      await this.pc.addIceCandidate(init);
    } catch (err) {
      if (!this._ignoreOffer) this._log('adding a candidate', err);
    }
  }

  async _onRestartRequest(m) {
    if (!this._inCall()) return;
    if (!this.pc) {
      this._update();
      return;
    }
    if (!this.polite) await this._restartIce(m.reason || m.type, true);
  }

  async _restartIce(reason, requested = false) {
    const pc = this.pc;
    if (!pc) return;
    const now = Date.now();
    if (!requested && now - this._lastRestart < RESTART_MIN_INTERVAL) return;
    if (!iceServersFrom(this.turn).length) return; // nothing to restart onto
    this._lastRestart = now;
    if (this.polite) {
      // The impolite side owns restarts: ask it.
      this.signal.iceRestart();
      return;
    }
    await this._maybeRefreshTurn();
    if (pc !== this.pc) return;
    this.iceRestarts += 1;
    this._log('restarting ICE', reason);
    pc.restartIce(); // negotiationneeded follows: a new offer with new ICE credentials
  }

  async _maybeRefreshTurn() {
    const ttl = Number(this.turn?.ttl || 0) * 1000;
    if (!this.refreshTurn || !ttl || Date.now() - this.turnReceivedAt < ttl * 0.7) return;
    try {
      const fresh = await this.refreshTurn();
      if (fresh) this._setTurn(fresh);
    } catch (err) {
      this._log('refreshing TURN credentials', err);
    }
  }

  _onIceState(pc) {
    this._emitConnection(pc);
    const state = pc.iceConnectionState;
    clearTimeout(this._disconnectedTimer);
    if (state === 'failed') {
      this._enqueue(() => this._restartIce('failed'));
    } else if (state === 'disconnected') {
      this._disconnectedTimer = setTimeout(() => {
        if (pc === this.pc && pc.iceConnectionState === 'disconnected') {
          this._enqueue(() => this._restartIce('disconnected'));
        }
      }, DISCONNECTED_GRACE);
    }
  }

  _emitConnection(pc) {
    this._emit('connection', {
      connectionState: pc.connectionState,
      iceConnectionState: pc.iceConnectionState,
      signalingState: pc.signalingState,
    });
  }

  // -- quality ----------------------------------------------------------------------------------------

  /** A reading of the connection from getStats: round-trip time, loss, the selected candidate pair. */
  async stats() {
    const pc = this.pc;
    const base = {
      at: Date.now(),
      connectionState: pc ? pc.connectionState : 'none',
      iceConnectionState: pc ? pc.iceConnectionState : 'none',
      rttMs: null,
      jitterMs: null,
      packetsLost: 0,
      packetsReceived: 0,
      packetsSent: 0,
      remotePacketsLost: 0,
      lossRate: null,
      bytesSent: 0,
      bytesReceived: 0,
      localCandidateType: null,
      remoteCandidateType: null,
      relayProtocol: null,
      quality: 'unknown',
    };
    if (!pc) return base;
    const report = await pc.getStats();
    let pair = null;
    report.forEach((s) => {
      if (s.type === 'transport' && s.selectedCandidatePairId) pair = report.get(s.selectedCandidatePairId);
    });
    if (!pair) {
      report.forEach((s) => {
        if (s.type === 'candidate-pair' && (s.selected || (s.nominated && s.state === 'succeeded'))) pair = s;
      });
    }
    let jitter = null;
    report.forEach((s) => {
      if (s.type === 'inbound-rtp') {
        base.packetsLost += s.packetsLost || 0;
        base.packetsReceived += s.packetsReceived || 0;
        if (s.kind === 'audio' && typeof s.jitter === 'number') jitter = s.jitter;
      } else if (s.type === 'outbound-rtp') {
        base.packetsSent += s.packetsSent || 0;
      } else if (s.type === 'remote-inbound-rtp') {
        base.remotePacketsLost += s.packetsLost || 0;
      }
    });
    if (jitter != null) base.jitterMs = Math.round(jitter * 1000);
    if (pair) {
      const local = report.get(pair.localCandidateId);
      const remote = report.get(pair.remoteCandidateId);
      base.localCandidateType = local?.candidateType || null;
      base.remoteCandidateType = remote?.candidateType || null;
      base.relayProtocol = local?.relayProtocol || null;
      base.bytesSent = pair.bytesSent || 0;
      base.bytesReceived = pair.bytesReceived || 0;
      if (typeof pair.currentRoundTripTime === 'number') base.rttMs = Math.round(pair.currentRoundTripTime * 1000);
    }
    // Loss over the interval since the last reading (cumulative counters otherwise hide a recovery).
    const previous = this._lastStats;
    const lost = base.packetsLost - (previous?.packetsLost || 0);
    const received = base.packetsReceived - (previous?.packetsReceived || 0);
    if (lost + received > 0) base.lossRate = Math.max(0, lost) / (Math.max(0, lost) + Math.max(0, received));
    this._lastStats = base;
    base.quality = qualityOf({
      rttMs: base.rttMs,
      lossRate: base.lossRate,
      connected: pc.connectionState === 'connected' || pc.iceConnectionState === 'connected' || pc.iceConnectionState === 'completed',
    });
    return base;
  }

  /** Synchronous state, for the page and tests. */
  snapshot() {
    const pc = this.pc;
    return {
      state: this.state,
      role: this.role,
      polite: this.polite,
      turn: iceServersFrom(this.turn).length > 0,
      generation: this.generation,
      negotiations: this.negotiations,
      iceRestarts: this.iceRestarts,
      muted: this.muted,
      cameraOff: this.cameraOff,
      peerStatus: this.peerStatus,
      remoteTracks: this.remoteStream ? this.remoteStream.getTracks().length : 0,
      pc: pc
        ? {
            signalingState: pc.signalingState,
            iceConnectionState: pc.iceConnectionState,
            connectionState: pc.connectionState,
            iceGatheringState: pc.iceGatheringState,
            localDescription: Boolean(pc.currentLocalDescription),
            remoteDescription: Boolean(pc.currentRemoteDescription),
            iceTransportPolicy: pc.getConfiguration().iceTransportPolicy,
          }
        : null,
    };
  }

  // -- helpers -----------------------------------------------------------------------------------------

  _setState(state, reason) {
    if (this.state === state) return;
    this.state = state;
    this._emit('state', { state, reason });
  }

  _problem(message) {
    this._emit('problem', { message });
  }

  _log(what, detail) {
    if (globalThis.console) console.debug(`[video] ${what}`, detail ?? '');
  }

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}

function sdpOf(message) {
  if (typeof message.sdp === 'string') return message.sdp;
  if (message.sdp && typeof message.sdp.sdp === 'string') return message.sdp.sdp;
  if (message.description && typeof message.description.sdp === 'string') return message.description.sdp;
  return '';
}
