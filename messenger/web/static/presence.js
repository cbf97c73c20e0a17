// Presence: who is online (asked in batches; lifecycle.js refreshes it every
// PRESENCE_REFRESH_MS while a session runs) and the dots that show it.

import * as api from "./api.js";
import { peerId } from "./conversations.js";
import { formatFull, h } from "./dom.js";
import { scheduleRender } from "./render.js";
import { state } from "./state.js";

export const PRESENCE_REFRESH_MS = 60_000;
const PRESENCE_BATCH = 100;

export function presenceDot(userId, testid = "presence-dot") {
  const info =
    state.me && userId === state.me.id
      ? { status: state.connection === "live" ? "online" : "offline" }
      : state.presence.get(userId);
  const status = info ? info.status : "offline";
  let label = status === "online" ? "Online" : "Offline";
  if (status !== "online" && info && info.last_seen) {
    label += `, last seen ${formatFull(info.last_seen)}`;
  }
  return h("span", {
    class: `presence-dot ${status}`,
    role: "img",
    "aria-label": label,
    title: label,
    dataset: { testid, status, userId: String(userId) },
  });
}

function directPeers() {
  const ids = new Set();
  for (const conv of state.conversations.values()) {
    const peer = peerId(conv);
    if (peer !== null) ids.add(peer);
  }
  return [...ids];
}

export async function loadPresence(ids = directPeers()) {
  for (let i = 0; i < ids.length; i += PRESENCE_BATCH) {
    try {
      const res = await api.getPresence(ids.slice(i, i + PRESENCE_BATCH));
      for (const [userId, info] of Object.entries(res.presence || {})) {
        state.presence.set(Number(userId), info);
      }
    } catch {
      return; // decorative: try again on the next refresh
    }
  }
  scheduleRender();
}
