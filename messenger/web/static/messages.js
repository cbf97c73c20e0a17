// The message list of the open chat: confirmed messages in seq order, unsent ones
// last, and their delivery ticks.

import { menuButton, snippet, toggleReaction } from "./actions.js";
import { attachmentsElement } from "./attachments.js";
import { loadOlderUntil } from "./chat.js";
import { $, formatFull, formatTime, h } from "./dom.js";
import { discardUnsent, retryNow } from "./outbox.js";
import { state } from "./state.js";
import { userName } from "./users.js";

// How long a message jumped to (from a reply's quote) stays highlighted.
const HIGHLIGHT_MS = 1600;

function ownStatus(conv, seq) {
  const others =
    conv && Array.isArray(conv.members)
      ? conv.members.filter((m) => m.user_id !== state.me.id)
      : [];
  if (others.length === 0) return "sent";
  let read = true;
  let delivered = true;
  for (const m of others) {
    const readSeq = m.read_seq || 0;
    if (readSeq < seq) read = false;
    if (Math.max(m.delivered_seq || 0, readSeq) < seq) delivered = false;
  }
  if (read) return "read";
  return delivered ? "delivered" : "sent";
}

const STATUS_LABELS = {
  pending: "Sending…",
  failed: "Not sent",
  sent: "Sent",
  delivered: "Delivered",
  read: "Read",
};

function statusMark(status) {
  const glyph = { sent: "✓", delivered: "✓✓", read: "✓✓" }[status] || "🕓";
  return h(
    "span",
    {
      class: `ticks ${status}`,
      title: STATUS_LABELS[status],
      dataset: { testid: "message-status" },
    },
    h("span", { "aria-hidden": "true", text: status === "failed" ? "!" : glyph }),
    h("span", { class: "visually-hidden", text: STATUS_LABELS[status] }),
  );
}

/** Scroll to a message of the open chat (loading older pages if needed), and
 * highlight it for a moment. */
export async function jumpTo(seq) {
  const chat = state.chat;
  if (!chat) return;
  if (!chat.elements.has(seq)) await loadOlderUntil(seq);
  const el = chat.elements.get(seq);
  if (!el || chat !== state.chat) return;
  el.scrollIntoView({ block: "center" });
  el.classList.add("highlight");
  el.dataset.highlighted = "true";
  el.tabIndex = -1;
  el.focus({ preventScroll: true });
  setTimeout(() => {
    el.classList.remove("highlight");
    delete el.dataset.highlighted;
  }, HIGHLIGHT_MS);
}

function replyQuote(message) {
  if (!message.reply_to) return null;
  const chat = state.chat;
  const quoted = chat ? chat.messages.get(message.reply_to) : null;
  const who = quoted ? userName(quoted.sender_id) : "an earlier message";
  return h(
    "button",
    {
      type: "button",
      class: "reply-quote",
      "aria-label": `Reply to ${who}: show that message`,
      dataset: { testid: "reply-quote", replyTo: String(message.reply_to) },
      onclick: () => jumpTo(message.reply_to),
    },
    h("span", { class: "reply-who", text: who }),
    h("span", { class: "reply-text", text: quoted ? snippet(quoted) : "" }),
  );
}

function reactionsElement(message) {
  const entries = Object.entries(message.reactions || {});
  if (!entries.length) return null;
  return h(
    "div",
    { class: "msg-reactions", dataset: { testid: "message-reactions" } },
    entries.map(([emoji, ids]) => {
      const mine = ids.includes(state.me.id);
      const names = ids.map((id) => userName(id)).join(", ");
      return h("button", {
        type: "button",
        class: `reaction${mine ? " mine" : ""}`,
        "aria-pressed": String(mine),
        "aria-label": `${emoji} ${ids.length}: ${names}`,
        title: names,
        text: `${emoji} ${ids.length}`,
        dataset: { testid: "reaction-chip", emoji, count: String(ids.length) },
        onclick: () => toggleReaction(message, emoji),
      });
    }),
  );
}

function messageElement(message, conv) {
  const own = message.sender_id === state.me.id;
  const status = own ? ownStatus(conv, message.seq) : "received";
  const showSender = !own && conv && conv.kind === "group";
  const deleted = Boolean(message.deleted);
  return h(
    "li",
    {
      class: `msg ${own ? "own" : "theirs"}${deleted ? " deleted" : ""}`,
      dataset: {
        testid: "message",
        seq: String(message.seq),
        clientMsgId: message.client_msg_id,
        senderId: String(message.sender_id),
        own: String(own),
        status,
        deleted: String(deleted),
        edited: String(Boolean(message.edited_at)),
      },
    },
    showSender
      ? h("span", {
          class: "msg-sender",
          text: userName(message.sender_id),
          dataset: { testid: "message-sender", userId: String(message.sender_id) },
        })
      : null,
    deleted ? null : replyQuote(message),
    deleted
      ? h("span", {
          class: "msg-deleted",
          text: "Message deleted",
          dataset: { testid: "message-deleted" },
        })
      : null,
    h("span", {
      class: "msg-body",
      text: message.body,
      hidden: !message.body,
      dataset: { testid: "message-body" },
    }),
    deleted ? null : attachmentsElement(message),
    deleted ? null : reactionsElement(message),
    deleted ? null : menuButton(message),
    h(
      "span",
      { class: "msg-meta" },
      message.edited_at && !deleted
        ? h("span", {
            class: "msg-edited",
            text: "edited",
            title: formatFull(message.edited_at),
            dataset: { testid: "message-edited" },
          })
        : null,
      h("time", {
        datetime: message.created_at,
        title: formatFull(message.created_at),
        text: formatTime(message.created_at),
        dataset: { testid: "message-time" },
      }),
      own ? statusMark(status) : null,
    ),
  );
}

function pendingElement(item) {
  const queue = state.sendQueues.get(item.conversation_id);
  let note = null;
  if (item.status === "failed") {
    let text = item.error || "Not sent.";
    if (!item.permanent && queue && queue.retryAt) {
      const secs = Math.max(1, Math.round((queue.retryAt - Date.now()) / 1000));
      text += ` Retrying in ${secs} s.`;
    }
    note = h("span", { class: "msg-error", text, dataset: { testid: "message-error" } });
  }
  return h(
    "li",
    {
      class: `msg own unsent ${item.status}`,
      dataset: {
        testid: "message",
        clientMsgId: item.client_msg_id,
        senderId: String(state.me.id),
        own: "true",
        status: item.status,
      },
    },
    h("span", { class: "msg-body", text: item.body, dataset: { testid: "message-body" } }),
    item.attachment_ids && item.attachment_ids.length
      ? h("span", {
          class: "msg-pending-files",
          text: `📎 ${item.attachment_ids.length} attached`,
        })
      : null,
    h(
      "span",
      { class: "msg-meta" },
      note,
      item.status === "failed"
        ? h("button", {
            type: "button",
            class: "link",
            text: "Retry",
            dataset: { testid: "retry-button" },
            onclick: () => retryNow(item),
          })
        : null,
      item.status === "failed"
        ? h("button", {
            type: "button",
            class: "link",
            text: "Discard",
            dataset: { testid: "discard-button" },
            onclick: () => discardUnsent(item),
          })
        : null,
      statusMark(item.status),
    ),
  );
}

/** A changed message (an edit, a deletion, a reaction) in the open chat: shown as
 * it is now, where it is. Messages not on screen are left for history to bring. */
export function updateMessage(message) {
  const chat = state.chat;
  if (!chat || chat.id !== message.conversation_id) return;
  if (!chat.messages.has(message.seq)) return;
  addMessages([message]); // replies quoting it follow (refreshQuotes)
}

/** Insert or update confirmed messages of the open chat, in seq order. */
export function addMessages(messages) {
  const chat = state.chat;
  if (!chat) return;
  const list = $("message-list");
  const conv = state.conversations.get(chat.id);
  for (const message of messages) {
    if (message.conversation_id !== chat.id) continue;
    const pendingKey = `c:${message.client_msg_id}`;
    if (message.sender_id === state.me.id && chat.elements.has(pendingKey)) {
      chat.elements.get(pendingKey).remove();
      chat.elements.delete(pendingKey);
    }
    const el = messageElement(message, conv);
    const old = chat.elements.get(message.seq);
    chat.messages.set(message.seq, message);
    chat.elements.set(message.seq, el);
    if (old) {
      old.replaceWith(el);
      continue;
    }
    // Find the first confirmed element with a higher seq, scanning from the end (new
    // messages are usually the newest); unsent ones always stay last.
    let before = null;
    for (let node = list.lastElementChild; node; node = node.previousElementSibling) {
      if (!node.dataset.seq) {
        before = node;
        continue;
      }
      if (Number(node.dataset.seq) > message.seq) before = node;
      else break;
    }
    list.insertBefore(el, before);
  }
  refreshQuotes(messages);
}

/** Replies on screen quoting any of these messages show their current text (a
 * quoted message loaded later, edited or deleted). */
function refreshQuotes(messages) {
  const chat = state.chat;
  const changed = new Set(messages.map((m) => m.seq));
  const conv = state.conversations.get(chat.id);
  for (const other of chat.messages.values()) {
    if (!other.reply_to || !changed.has(other.reply_to) || changed.has(other.seq)) continue;
    const el = messageElement(other, conv);
    chat.elements.get(other.seq).replaceWith(el);
    chat.elements.set(other.seq, el);
  }
}

export function refreshTicks() {
  const chat = state.chat;
  if (!chat) return;
  const conv = state.conversations.get(chat.id);
  for (const el of $("message-list").querySelectorAll('li[data-own="true"][data-seq]')) {
    const status = ownStatus(conv, Number(el.dataset.seq));
    if (el.dataset.status === status) continue;
    el.dataset.status = status;
    el.querySelector('[data-testid="message-status"]').replaceWith(statusMark(status));
  }
}

export function refreshSenderNames() {
  for (const el of document.querySelectorAll('[data-testid="message-sender"]')) {
    const name = userName(Number(el.dataset.userId));
    if (el.textContent !== name) el.textContent = name;
  }
}

export function renderPendingForChat() {
  const chat = state.chat;
  if (!chat) return;
  for (const item of state.outbox.values()) {
    if (item.conversation_id === chat.id) renderPending(item);
  }
}

export function renderPending(item) {
  const chat = state.chat;
  if (!chat || chat.id !== item.conversation_id) return;
  const key = `c:${item.client_msg_id}`;
  const el = pendingElement(item);
  const old = chat.elements.get(key);
  chat.elements.set(key, el);
  if (old) old.replaceWith(el);
  else $("message-list").append(el);
}
