// The message list of the open chat: confirmed messages in seq order, unsent ones
// last, and their delivery ticks.

import { $, formatFull, formatTime, h } from "./dom.js";
import { discardUnsent, retryNow } from "./outbox.js";
import { state } from "./state.js";
import { userName } from "./users.js";

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

function messageElement(message, conv) {
  const own = message.sender_id === state.me.id;
  const status = own ? ownStatus(conv, message.seq) : "received";
  const showSender = !own && conv && conv.kind === "group";
  return h(
    "li",
    {
      class: `msg ${own ? "own" : "theirs"}`,
      dataset: {
        testid: "message",
        seq: String(message.seq),
        clientMsgId: message.client_msg_id,
        senderId: String(message.sender_id),
        own: String(own),
        status,
      },
    },
    showSender
      ? h("span", {
          class: "msg-sender",
          text: userName(message.sender_id),
          dataset: { testid: "message-sender", userId: String(message.sender_id) },
        })
      : null,
    h("span", { class: "msg-body", text: message.body, dataset: { testid: "message-body" } }),
    h(
      "span",
      { class: "msg-meta" },
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
