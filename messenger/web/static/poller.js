// The /v1/events long-poll loop, run by the leader tab only (see tabs.js).
//
// - Polls again at once after every answer, with the cursor it returned.
// - Without a cursor (first start, or after 410 cursor_expired) it asks for the head
//   with GET /v1/events (no `after`) and then calls onResync: whatever happened before
//   the new head is recovered from history, not from events.
// - On failure it waits with exponential backoff and full jitter (AWS style), honouring
//   Retry-After on 429/503, then resumes from the same cursor: nothing is skipped.

import { ApiError, getEvents } from "./api.js";

// Server default is 25 s (max 55); proxies and NAT boxes tolerate this comfortably.
export const POLL_TIMEOUT_SECS = 25;
// A held poll must answer within its timeout; give the network this much on top before
// treating the request as lost (a half-open TCP connection would otherwise hang forever).
const POLL_GRACE_MS = 20_000;
const BACKOFF_BASE_MS = 1000;
const BACKOFF_MAX_MS = 30_000;

export function backoffDelayMs(failures, retryAfterSecs) {
  if (retryAfterSecs != null) return retryAfterSecs * 1000 + Math.random() * 500;
  const ceiling = Math.min(BACKOFF_MAX_MS, BACKOFF_BASE_MS * 2 ** Math.max(0, failures - 1));
  // Full jitter, but never a hot loop.
  return Math.max(250, Math.random() * ceiling);
}

export class Poller {
  /**
   * @param {{getCursor: () => string|null, onEvents: (events: object[], cursor: string) => void,
   *          onResync: (cursor: string, reason: string) => void,
   *          onStatus: (state: string, detail?: object) => void}} handlers
   */
  constructor({ getCursor, onEvents, onResync, onStatus }) {
    this.getCursor = getCursor;
    this.onEvents = onEvents;
    this.onResync = onResync;
    this.onStatus = onStatus;
    this.running = false;
    this.failures = 0;
    this.abort = null;
    this.wakeSleep = null;
    this.needHead = false;
    this.status = null;
  }

  report(status, detail) {
    if (status === this.status && !detail) return;
    this.status = status;
    this.onStatus(status, detail);
  }

  start() {
    if (this.running) return;
    this.running = true;
    this.loop();
  }

  stop() {
    this.running = false;
    if (this.abort) this.abort.abort();
    if (this.wakeSleep) this.wakeSleep();
  }

  /** Skip the current backoff wait (e.g. the browser just came back online). */
  retryNow() {
    if (this.wakeSleep) this.wakeSleep();
  }

  sleep(ms) {
    return new Promise((resolve) => {
      const timer = setTimeout(done, ms);
      function done() {
        clearTimeout(timer);
        resolve();
      }
      this.wakeSleep = done;
    }).finally(() => {
      this.wakeSleep = null;
    });
  }

  async loop() {
    this.report("connecting");
    // The first poll after a start or a failure asks with timeout=0: it answers at once,
    // so the status shows "live" without waiting for a held poll to end.
    let confirmed = false;
    while (this.running) {
      const cursor = this.needHead ? null : this.getCursor();
      this.abort = new AbortController();
      const guard = setTimeout(() => this.abort.abort(), POLL_TIMEOUT_SECS * 1000 + POLL_GRACE_MS);
      try {
        const res = await getEvents(cursor, confirmed ? POLL_TIMEOUT_SECS : 0, this.abort.signal);
        clearTimeout(guard);
        if (!this.running) break;
        confirmed = true;
        this.report("live");
        this.failures = 0;
        if (cursor == null) {
          this.needHead = false;
          this.onResync(res.cursor, this.resyncReason || "start");
          this.resyncReason = null;
        } else {
          this.onEvents(res.events || [], res.cursor);
        }
      } catch (err) {
        clearTimeout(guard);
        if (!this.running) break;
        if (err instanceof ApiError && err.status === 410) {
          // cursor_expired: start again from the head and rebuild from history.
          this.needHead = true;
          this.resyncReason = "expired";
          continue;
        }
        if (err instanceof ApiError && err.status === 401) {
          this.report("unauthorized");
          this.running = false; // the app logs out (api.onUnauthorized)
          break;
        }
        if (err instanceof ApiError && (err.status === 400 || err.status === 422)) {
          // A cursor the server no longer understands: start from the head (after a
          // backoff, in case the server is the one misbehaving).
          this.needHead = true;
          this.resyncReason = "invalid cursor";
        }
        this.failures += 1;
        confirmed = false;
        const delay = backoffDelayMs(
          this.failures,
          err instanceof ApiError ? err.retryAfterSecs : null,
        );
        this.report(navigator.onLine === false ? "offline" : "reconnecting", {
          retryInMs: delay,
          error: err,
        });
        await this.sleep(delay);
      }
    }
    this.abort = null;
  }
}
