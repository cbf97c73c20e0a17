// Small DOM helpers (textContent only: message bodies are never parsed as HTML) and
// formatting of times.

import * as api from "./api.js";

export const $ = (id) => document.getElementById(id);

export const wideQuery = window.matchMedia("(min-width: 720px)");

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "text") el.textContent = value;
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(el.dataset, value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function showError(el, errOrText) {
  el.textContent = typeof errOrText === "string" ? errOrText : api.describeError(errOrText);
  el.hidden = false;
}

export function clearError(el) {
  el.textContent = "";
  el.hidden = true;
}

export function announce(text) {
  const region = $("live-region");
  region.append(h("p", { text }));
  while (region.childElementCount > 3) region.firstElementChild.remove();
}

export function isWide() {
  return wideQuery.matches;
}

export function codePoints(text) {
  return [...text].length;
}

export function formatTime(iso) {
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return "";
  const now = new Date();
  if (date.toDateString() === now.toDateString()) {
    return date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  }
  return date.toLocaleDateString([], { month: "short", day: "numeric" });
}

export function formatFull(iso) {
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? "" : date.toLocaleString();
}
