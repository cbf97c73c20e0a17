// Attachments: picking files (button, drag-and-drop, paste), uploading them with a
// progress bar while the message is written, and showing a message's attachments
// (inline image thumbnails that open full size, file chips for the rest).

import * as api from "./api.js";
import { $, h, showError } from "./dom.js";
import { state } from "./state.js";

const MAX_ATTACHMENTS = 10; // API.md: at most 10 per message

// Blob URLs of fetched thumbnails and files, by "<id>" / "<id>:thumb": each is fetched
// once per page (they can't be <img src> URLs: those carry no bearer token).
const blobUrls = new Map();

/** The files being attached to the next message: [{key, file, state, progress, attachment}] */
function tray() {
  if (!state.uploads) state.uploads = [];
  return state.uploads;
}

/** Attachment ids ready to send, or null while an upload is still running or failed. */
export function readyAttachmentIds() {
  const items = tray();
  if (items.some((i) => i.state !== "done")) return null;
  return items.map((i) => i.attachment.id);
}

export function hasUploads() {
  return tray().length > 0;
}

export function clearUploads() {
  for (const item of tray()) if (item.state === "uploading") item.controller.abort();
  state.uploads = [];
  renderTray();
}

function formatSize(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(0)} KB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
}

export function addFiles(files) {
  const items = tray();
  for (const file of files) {
    if (items.length >= MAX_ATTACHMENTS) {
      showError($("chat-error"), `A message can carry at most ${MAX_ATTACHMENTS} files.`);
      break;
    }
    const item = {
      key: `${Date.now()}-${Math.random()}`,
      file,
      state: "uploading",
      loaded: 0,
      error: null,
      attachment: null,
      controller: new AbortController(),
    };
    items.push(item);
    upload(item);
  }
  renderTray();
}

async function upload(item) {
  try {
    item.attachment = await api.uploadAttachment(
      item.file,
      (loaded) => {
        item.loaded = loaded;
        updateProgress(item);
      },
      item.controller.signal,
    );
    item.state = "done";
  } catch (err) {
    if (err && err.name === "AbortError") return; // removed from the tray
    item.state = "failed";
    item.error = api.describeError(err);
  }
  renderTray();
}

function updateProgress(item) {
  const el = document.querySelector(`[data-upload-key="${CSS.escape(item.key)}"]`);
  if (!el) return;
  const bar = el.querySelector("progress");
  if (bar) bar.value = item.loaded;
  const pct = item.file.size ? Math.floor((100 * item.loaded) / item.file.size) : 100;
  el.querySelector(".upload-status").textContent = `${pct}%`;
}

function renderTray() {
  const holder = $("upload-tray");
  const items = tray();
  holder.hidden = items.length === 0;
  holder.replaceChildren(
    ...items.map((item) => {
      const status =
        item.state === "done" ? "Ready" : item.state === "failed" ? item.error : "0%";
      return h(
        "li",
        {
          class: `upload ${item.state}`,
          dataset: { testid: "upload-item", state: item.state, uploadKey: item.key },
        },
        h("span", { class: "upload-name", text: item.file.name || "file" }),
        h("span", { class: "upload-size", text: formatSize(item.file.size) }),
        item.state === "uploading"
          ? h("progress", {
              max: String(Math.max(1, item.file.size)),
              value: String(item.loaded),
              "aria-label": `Uploading ${item.file.name || "file"}`,
              dataset: { testid: "upload-progress" },
            })
          : null,
        h("span", { class: "upload-status", text: status }),
        h("button", {
          type: "button",
          class: "link",
          text: "Remove",
          "aria-label": `Remove ${item.file.name || "file"}`,
          dataset: { testid: "upload-remove" },
          onclick: () => {
            item.controller.abort(); // stops an upload still under way
            state.uploads = tray().filter((i) => i !== item);
            renderTray();
            $("message-input").focus();
          },
        }),
      );
    }),
  );
  if (items.some((i) => i.state === "uploading")) updateAll(items);
}

function updateAll(items) {
  for (const item of items) if (item.state === "uploading") updateProgress(item);
}

async function blobUrl(attachmentId, thumbnail) {
  const key = `${attachmentId}${thumbnail ? ":thumb" : ""}`;
  if (!blobUrls.has(key)) {
    const promise = api.fetchAttachment(attachmentId, { thumbnail }).then((blob) =>
      URL.createObjectURL(blob),
    );
    blobUrls.set(key, promise);
    promise.catch(() => blobUrls.delete(key));
  }
  return blobUrls.get(key);
}

function openLightbox(attachment) {
  const dialog = $("lightbox");
  const img = $("lightbox-image");
  img.removeAttribute("src");
  img.alt = attachment.filename;
  $("lightbox-caption").textContent = attachment.filename;
  if (!dialog.open) dialog.showModal();
  blobUrl(attachment.id, false).then(
    (url) => {
      img.src = url;
    },
    (err) => {
      $("lightbox-caption").textContent = api.describeError(err);
    },
  );
}

async function download(attachment, link) {
  try {
    link.href = await blobUrl(attachment.id, false);
    link.download = attachment.filename;
    link.click();
  } catch (err) {
    showError($("chat-error"), err);
  }
}

function imageElement(attachment) {
  const img = h("img", {
    class: "attachment-thumb",
    alt: attachment.filename,
    width: String(Math.min(attachment.width || 320, 320)),
    dataset: { testid: "attachment-image", attachmentId: String(attachment.id) },
  });
  if (attachment.width && attachment.height) {
    const scale = Math.min(1, 320 / Math.max(attachment.width, attachment.height));
    img.width = Math.max(1, Math.round(attachment.width * scale));
    img.height = Math.max(1, Math.round(attachment.height * scale));
  }
  blobUrl(attachment.id, true).then(
    (url) => {
      img.src = url;
    },
    () => {
      img.alt = `${attachment.filename} (not available)`;
    },
  );
  return h(
    "button",
    {
      type: "button",
      class: "attachment-image",
      "aria-label": `Open ${attachment.filename} full size`,
      onclick: () => openLightbox(attachment),
    },
    img,
  );
}

function fileChip(attachment) {
  const link = h("a", {
    class: "attachment-file",
    href: "#",
    dataset: { testid: "attachment-file", attachmentId: String(attachment.id) },
    onclick: (ev) => {
      if (link.download) return; // the second click: the blob URL is set
      ev.preventDefault();
      download(attachment, link);
    },
  });
  link.append(
    h("span", { class: "file-icon", "aria-hidden": "true", text: "📎" }),
    h("span", { class: "file-name", text: attachment.filename }),
    h("span", { class: "file-size", text: formatSize(attachment.size) }),
  );
  return link;
}

/** A message's attachments, or null when it has none. */
export function attachmentsElement(message) {
  const list = message.attachments || [];
  if (!list.length) return null;
  return h(
    "div",
    { class: "msg-attachments", dataset: { testid: "message-attachments" } },
    list.map((a) => (a.width ? imageElement(a) : fileChip(a))),
  );
}

/** What a conversation preview says of a message without text. */
export function attachmentsSummary(message) {
  const list = message.attachments || [];
  if (!list.length) return "";
  if (list.every((a) => a.width)) return list.length > 1 ? `📷 ${list.length} photos` : "📷 Photo";
  return list.length > 1 ? `📎 ${list.length} files` : `📎 ${list[0].filename}`;
}

export function bindAttachments() {
  const input = $("file-input");
  $("attach-button").addEventListener("click", () => input.click());
  input.addEventListener("change", () => {
    addFiles([...input.files]);
    input.value = "";
  });
  const pane = $("chat");
  pane.addEventListener("dragover", (ev) => {
    if (!ev.dataTransfer || ![...ev.dataTransfer.types].includes("Files")) return;
    ev.preventDefault();
    pane.classList.add("dropping");
  });
  pane.addEventListener("dragleave", (ev) => {
    if (ev.target === pane) pane.classList.remove("dropping");
  });
  pane.addEventListener("drop", (ev) => {
    pane.classList.remove("dropping");
    if (!ev.dataTransfer || !ev.dataTransfer.files.length) return;
    ev.preventDefault();
    addFiles([...ev.dataTransfer.files]);
  });
  $("message-input").addEventListener("paste", (ev) => {
    const files = ev.clipboardData ? [...ev.clipboardData.files] : [];
    if (!files.length) return;
    ev.preventDefault();
    addFiles(files);
  });
  $("lightbox-close").addEventListener("click", () => $("lightbox").close());
}
