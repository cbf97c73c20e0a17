// Typing: who types in which conversation (shown for a while), and telling others.

import * as api from "./api.js";
import { $ } from "./dom.js";
import { scheduleRender } from "./render.js";
import { state } from "./state.js";
import { userName } from "./users.js";

// API.md: POST .../typing "at most every ~3 s"; show an indicator for ~5 s.
const TYPING_SEND_INTERVAL_MS = 3000;
const TYPING_SHOW_MS = 5000;

export function onTyping(event) {
  if (event.user_id === state.me.id) return;
  let typers = state.typing.get(event.conversation_id);
  if (!typers) {
    typers = new Map();
    state.typing.set(event.conversation_id, typers);
  }
  clearTimeout(typers.get(event.user_id));
  typers.set(
    event.user_id,
    setTimeout(() => clearTyping(event.conversation_id, event.user_id), TYPING_SHOW_MS),
  );
  scheduleRender();
}

export function clearTyping(conversationId, userId) {
  const typers = state.typing.get(conversationId);
  if (!typers || !typers.has(userId)) return;
  clearTimeout(typers.get(userId));
  typers.delete(userId);
  if (!typers.size) state.typing.delete(conversationId);
  scheduleRender();
}

export function renderTyping() {
  const el = $("typing-indicator");
  const chat = state.chat;
  const typers = chat ? state.typing.get(chat.id) : null;
  let text = "";
  if (typers && typers.size) {
    const names = [...typers.keys()].map((id) => userName(id));
    if (names.length === 1) text = `${names[0]} is typing…`;
    else if (names.length === 2) text = `${names[0]} and ${names[1]} are typing…`;
    else text = `${names.length} people are typing…`;
  }
  if (el.textContent !== text) el.textContent = text;
  el.dataset.active = String(Boolean(text));
}

export function composerInput() {
  const chat = state.chat;
  if (!chat || !$("message-input").value.trim()) return;
  const now = Date.now();
  if (now - state.lastTypingSentAt < TYPING_SEND_INTERVAL_MS) return;
  state.lastTypingSentAt = now;
  api.postTyping(chat.id).catch(() => {}); // ephemeral: losing one is fine
}
