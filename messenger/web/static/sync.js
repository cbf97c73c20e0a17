// Staying in sync: the tab group (one long poll per session, see tabs.js), the poll
// itself when this tab leads, resync from history, and the connection status.

import * as api from "./api.js";
import { TabGroup } from "./tabs.js";
import { Poller } from "./poller.js";
import { highestSeq, HISTORY_PAGE_SIZE, scrollToBottom, updateHistoryEdge } from "./chat.js";
import { loadConversations, refreshConversation } from "./conversations.js";
import { $ } from "./dom.js";
import { applyEvents } from "./events.js";
import { addMessages } from "./messages.js";
import { retryAllQueues } from "./outbox.js";
import { maybeMarkRead, postDelivered } from "./receipts.js";
import { state } from "./state.js";

let tabs = null; // this tab's TabGroup while a session runs here
let poller = null; // the Poller, while this tab leads its group

export function renderConnection() {
  const el = $("connection-status");
  const labels = {
    connecting: "Connecting…",
    live: "Online",
    reconnecting: "Reconnecting…",
    offline: "Offline",
    unauthorized: "Logged out",
  };
  el.dataset.state = state.connection;
  el.dataset.role = tabs && tabs.isLeader ? "leader" : "follower";
  el.textContent = labels[state.connection] || state.connection;
}

function onLeadershipChange(isLeader) {
  if (isLeader) {
    poller = new Poller({
      getCursor: () => state.cursor,
      onEvents: (events, cursor) => {
        state.cursor = cursor;
        if (tabs) tabs.send({ kind: "events", events, cursor });
        applyEvents(events);
        // Delivered receipts come from the one tab that polls, not from every tab.
        const newest = new Map();
        for (const event of events) {
          const m = event.type === "message" ? event.message : null;
          if (m && m.sender_id !== state.me.id) {
            newest.set(m.conversation_id, Math.max(newest.get(m.conversation_id) || 0, m.seq));
          }
        }
        for (const [conversationId, seq] of newest) postDelivered(conversationId, seq);
      },
      onResync: (cursor, reason) => {
        state.cursor = cursor;
        if (tabs) tabs.send({ kind: "resync", cursor, reason });
        resync();
      },
      onStatus: (connection) => {
        state.connection = connection;
        if (tabs) tabs.send({ kind: "status", state: connection, cursor: state.cursor });
        renderConnection();
      },
    });
    poller.start();
  } else if (poller) {
    poller.stop();
    poller = null;
  }
  renderConnection();
}

function onTabMessage(msg) {
  switch (msg.kind) {
    case "events":
      if (msg.cursor) state.cursor = msg.cursor;
      applyEvents(msg.events || []);
      break;
    case "resync":
      state.cursor = msg.cursor || state.cursor;
      resync();
      break;
    case "status":
      if (tabs && tabs.isLeader) break; // a stale word from a previous leader
      state.connection = msg.state;
      if (msg.cursor) state.cursor = msg.cursor;
      renderConnection();
      break;
    case "status?":
      if (tabs && tabs.isLeader) {
        tabs.send({ kind: "status", state: state.connection, cursor: state.cursor });
      }
      break;
    default:
      break;
  }
}

export function joinTabGroup(session) {
  tabs = new TabGroup(session.key, { onLeadershipChange, onMessage: onTabMessage });
  tabs.start();
  tabs.send({ kind: "status?" }); // the leader answers with its status and cursor
}

/** Rebuild from history: after a fresh cursor (start, takeover without one, 410). */
async function resync() {
  await loadConversations({ reset: true });
  const chat = state.chat;
  if (chat && chat.loaded) {
    try {
      const page = await api.listMessages(chat.id, { limit: HISTORY_PAGE_SIZE });
      if (chat !== state.chat) return;
      const messages = page.messages || [];
      const newest = highestSeq(chat);
      if (messages.length && newest && messages[0].seq > newest + 1) {
        // Too much was missed to stitch: show the newest page, scroll back for the rest.
        chat.messages.clear();
        for (const [key, el] of chat.elements) {
          if (typeof key === "number") {
            el.remove();
            chat.elements.delete(key);
          }
        }
        chat.nextBefore = page.next_before ?? null;
        updateHistoryEdge();
      }
      addMessages(messages);
      scrollToBottom();
      refreshConversation(chat.id);
      maybeMarkRead();
    } catch {
      /* shown on the next action */
    }
  }
  retryAllQueues();
}

/** True when this tab holds the session's long poll. */
export function isLeaderTab() {
  return Boolean(tabs && tabs.isLeader);
}

/** Stop this tab's poll and leave its tab group: the session ends in this tab. */
export function stopSync() {
  if (poller) poller.stop();
  poller = null;
  if (tabs) tabs.stop();
  tabs = null;
}

export function bindSync() {
  window.addEventListener("online", () => {
    if (poller) poller.retryNow();
    retryAllQueues();
  });
  window.addEventListener("offline", () => {
    if (tabs && tabs.isLeader) {
      state.connection = "offline";
      renderConnection();
    }
  });
  // Closing, freezing or moving the tab to the back/forward cache hands the poll to
  // another tab at once (a frozen leader would otherwise keep the lock and poll nothing).
  const suspend = () => {
    if (tabs) tabs.stop();
    tabs = null;
  };
  const revive = () => {
    if (!state.session || tabs) return;
    joinTabGroup(state.session);
    resync();
  };
  window.addEventListener("pagehide", suspend);
  document.addEventListener("freeze", suspend);
  window.addEventListener("pageshow", (ev) => {
    if (ev.persisted) revive();
  });
  document.addEventListener("resume", revive);
}
