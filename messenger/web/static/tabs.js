// Leader election among the tabs of one session, so that they share ONE long poll.
//
// Browsers allow about 6 connections per host over HTTP/1.1; a held /v1/events request
// occupies one for its whole duration, so every tab polling on its own would starve the
// other requests after a few tabs. Instead, one tab (the leader) polls and rebroadcasts
// what it receives on a BroadcastChannel named after the session key; the others
// (followers) apply the events it forwards and remember its cursor, so that whichever tab
// leads next resumes exactly where the last leader stopped.
//
// Election, best mechanism first:
// 1. Web Locks (navigator.locks; secure contexts only: https or localhost). Every tab
//    requests the same exclusive lock; the holder is the leader and keeps it until it
//    closes or crashes, when the browser grants it to the next waiting tab. No timers, no
//    split brain.
// 2. Fallback (plain http on a LAN address, older browsers): a lease over the channel.
//    The leader sends a heartbeat every HEARTBEAT_MS; a follower that hears nothing for
//    LEASE_MS claims leadership with term = last seen term + 1. Two leaders resolve on
//    the first heartbeat they hear from each other: higher term wins, then lower tab id.
//    A tab that closes sends "resign" so another takes over at once instead of after the
//    lease. A brief overlap of two pollers is harmless: followers drop stored events they
//    already applied (by event id).
// 3. No BroadcastChannel at all: every tab leads on its own.

const HEARTBEAT_MS = 1000;
const LEASE_MS = 3500;
// A new tab waits this long to hear an existing leader before claiming in the fallback.
const FIRST_LISTEN_MS = 400;

export class TabGroup {
  /**
   * @param {string} name  the session key
   * @param {{onLeadershipChange: (isLeader: boolean) => void,
   *          onMessage: (msg: object) => void}} handlers
   */
  constructor(name, { onLeadershipChange, onMessage }) {
    this.name = name;
    this.onLeadershipChange = onLeadershipChange;
    this.onMessage = onMessage;
    this.tabId = `${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 10)}`;
    this.isLeader = false;
    this.stopped = true;
    this.channel = null;
    this.mode = "solo";
  }

  start() {
    if (!this.stopped) return;
    this.stopped = false;
    if (!("BroadcastChannel" in window)) {
      this.mode = "solo";
      this.setLeader(true);
      return;
    }
    this.channel = new BroadcastChannel(`messenger:tabs:${this.name}`);
    this.channel.onmessage = (ev) => this.receive(ev.data || {});
    if (navigator.locks && typeof navigator.locks.request === "function") {
      this.mode = "locks";
      this.startLocks();
    } else {
      this.mode = "lease";
      this.startLease();
    }
  }

  stop() {
    if (this.stopped) return;
    if (this.isLeader && this.channel) this.send({ kind: "resign" });
    this.stopped = true;
    if (this.lockAbort) this.lockAbort.abort();
    if (this.releaseLock) this.releaseLock();
    this.lockAbort = this.releaseLock = null;
    clearInterval(this.leaseTimer);
    clearTimeout(this.claimTimer);
    if (this.channel) this.channel.close();
    this.channel = null;
    this.setLeader(false);
  }

  /** Post an application message to the other tabs of the group. */
  send(msg) {
    if (!this.channel) return;
    this.channel.postMessage({ ...msg, from: this.tabId, term: this.term, leader: this.isLeader });
  }

  setLeader(isLeader) {
    if (this.isLeader === isLeader) return;
    this.isLeader = isLeader;
    this.onLeadershipChange(isLeader);
  }

  receive(msg) {
    if (this.stopped) return;
    if (this.mode === "lease" && this.leaseReceive(msg)) return;
    if (msg.kind === "hb" || msg.kind === "resign") return;
    this.onMessage(msg);
  }

  // --- Web Locks -----------------------------------------------------------------

  startLocks() {
    this.lockAbort = new AbortController();
    navigator.locks
      .request(`messenger:poll:${this.name}`, { signal: this.lockAbort.signal }, () => {
        if (this.stopped) return undefined;
        this.setLeader(true);
        // Hold the lock until stop(): the promise resolves only then.
        return new Promise((resolve) => {
          this.releaseLock = resolve;
        });
      })
      .catch(() => {
        /* AbortError after stop(): nothing to do */
      });
  }

  // --- Lease fallback ------------------------------------------------------------

  startLease() {
    this.term = 0;
    this.leaderId = null;
    this.lastHeardAt = 0;
    this.startedAt = Date.now();
    this.send({ kind: "hello" });
    this.leaseTimer = setInterval(() => this.leaseTick(), HEARTBEAT_MS / 2);
    this.claimTimer = setTimeout(() => this.leaseTick(), FIRST_LISTEN_MS);
  }

  leaseTick() {
    if (this.stopped) return;
    if (this.isLeader) {
      this.heartbeat();
      return;
    }
    const now = Date.now();
    const heardAt = Math.max(this.lastHeardAt, this.startedAt);
    const limit = this.lastHeardAt ? LEASE_MS : FIRST_LISTEN_MS;
    if (now - heardAt >= limit) this.claim();
  }

  heartbeat() {
    const now = Date.now();
    if (now - (this.lastBeatAt || 0) < HEARTBEAT_MS / 2) return;
    this.lastBeatAt = now;
    this.send({ kind: "hb" });
  }

  claim() {
    this.term += 1;
    this.leaderId = this.tabId;
    this.lastBeatAt = 0;
    this.setLeader(true);
    this.heartbeat();
  }

  /** Returns true when the message was lease bookkeeping only. */
  leaseReceive(msg) {
    const now = Date.now();
    if (typeof msg.term === "number" && msg.term > this.term && !this.isLeader) {
      this.term = msg.term;
    }
    if (msg.kind === "hello") {
      if (this.isLeader) {
        this.lastBeatAt = 0;
        this.heartbeat();
      }
      return true;
    }
    if (msg.kind === "resign") {
      if (msg.from === this.leaderId) {
        this.leaderId = null;
        this.lastHeardAt = 0;
        this.startedAt = 0;
        // Jitter so that the followers do not all claim in the same instant.
        clearTimeout(this.claimTimer);
        this.claimTimer = setTimeout(() => {
          if (!this.stopped && !this.isLeader && this.leaderId === null) this.claim();
        }, Math.random() * 250);
      }
      return true;
    }
    // Any message from a leader (heartbeat or forwarded events) renews its lease.
    if (msg.kind === "hb" || msg.leader) {
      if (this.isLeader && msg.from !== this.tabId) {
        const theyWin = msg.term > this.term || (msg.term === this.term && msg.from < this.tabId);
        if (!theyWin) {
          this.lastBeatAt = 0;
          this.heartbeat(); // tell them to step down
          return msg.kind === "hb";
        }
        this.term = msg.term;
        this.setLeader(false);
      }
      this.leaderId = msg.from;
      this.lastHeardAt = now;
      return msg.kind === "hb";
    }
    return false;
  }
}
