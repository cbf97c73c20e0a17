// The composer: Enter sends, Shift+Enter adds a line; typing tells the others.

import { randomId } from "./session.js";
import { scrollToBottom } from "./chat.js";
import { $, clearError, codePoints, showError } from "./dom.js";
import { renderPending } from "./messages.js";
import { persistOutbox, pumpQueue } from "./outbox.js";
import { state } from "./state.js";
import { composerInput } from "./typing.js";

const MAX_BODY_CHARS = 4000; // API.md limit, counted in code points

function sendComposer() {
  const chat = state.chat;
  const input = $("message-input");
  const body = input.value;
  if (!chat || !body.trim()) return;
  if (codePoints(body) > MAX_BODY_CHARS) {
    showError($("chat-error"), `A message can have at most ${MAX_BODY_CHARS} characters.`);
    return;
  }
  clearError($("chat-error"));
  const item = {
    conversation_id: chat.id,
    client_msg_id: `w-${randomId(16)}`, // [A-Za-z0-9_-]{1,64} per API.md
    body,
    created_at: new Date().toISOString(),
    status: "pending",
    error: null,
    permanent: false,
  };
  state.outbox.set(item.client_msg_id, item);
  persistOutbox();
  input.value = "";
  state.lastTypingSentAt = 0;
  renderPending(item);
  scrollToBottom();
  pumpQueue(chat.id);
}

export function bindComposer() {
  const input = $("message-input");
  $("composer").addEventListener("submit", (ev) => {
    ev.preventDefault();
    sendComposer();
    input.focus();
  });
  input.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) {
      ev.preventDefault();
      sendComposer();
    }
  });
  input.addEventListener("input", composerInput);
}
