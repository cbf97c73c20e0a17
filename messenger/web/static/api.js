// HTTP client for the v1 API (shared/API.md). Every call returns the parsed JSON body
// (null for 204) or throws an ApiError (the server answered with an error) or a
// NetworkError (no answer at all: offline, connection reset, proxy timeout).

export class ApiError extends Error {
  constructor(status, code, message, fields, retryAfterSecs) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.fields = fields || null;
    this.retryAfterSecs = retryAfterSecs;
  }

  /** True for answers worth retrying later: overload, outage, rate limit. */
  get isTransient() {
    return this.status >= 500 || this.status === 429 || this.status === 408;
  }

  /** The message plus any per-field validation messages, for display. */
  describe() {
    if (!this.fields) return this.message;
    const parts = Object.entries(this.fields).map(
      ([field, msgs]) => `${field}: ${[].concat(msgs).join(" ")}`,
    );
    return parts.length ? `${this.message} (${parts.join("; ")})` : this.message;
  }
}

export class NetworkError extends Error {
  constructor(message) {
    super(message || "Cannot reach the server. Check your connection.");
    this.name = "NetworkError";
    this.isTransient = true;
  }

  describe() {
    return this.message;
  }
}

/** A user-readable sentence for any error thrown by this module (or a bug). */
export function describeError(err) {
  if (err && typeof err.describe === "function") return err.describe();
  return (err && err.message) || "Something went wrong.";
}

let currentToken = null;
let unauthorizedHandler = () => {};

export function setToken(token) {
  currentToken = token;
}

/** Called once per 401 answer to an authenticated call made with the current token. */
export function onUnauthorized(handler) {
  unauthorizedHandler = handler;
}

function parseRetryAfter(value) {
  if (!value) return null;
  const secs = Number(value);
  if (Number.isFinite(secs)) return Math.max(0, secs);
  const at = Date.parse(value);
  return Number.isNaN(at) ? null : Math.max(0, (at - Date.now()) / 1000);
}

/**
 * One API call.
 *
 * @param {string} method
 * @param {string} path  e.g. "/v1/conversations"
 * @param {{body?: object, query?: object, signal?: AbortSignal, auth?: boolean}} options
 */
export async function request(method, path, { body, query, signal, auth = true } = {}) {
  const headers = { Accept: "application/json" };
  const token = currentToken;
  if (auth) {
    if (!token) throw new ApiError(401, "unauthorized", "You are not logged in.");
    headers.Authorization = `Bearer ${token}`;
  }
  // A POST without a body (typing, logout) sends no Content-Type (API.md).
  const init = { method, headers, signal, cache: "no-store", credentials: "omit" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let url = path;
  if (query) {
    const params = new URLSearchParams();
    for (const [key, value] of Object.entries(query)) {
      if (value !== undefined && value !== null) params.set(key, String(value));
    }
    const qs = params.toString();
    if (qs) url += `?${qs}`;
  }

  let res;
  let text;
  try {
    res = await fetch(url, init);
    text = await res.text();
  } catch (err) {
    if (err && err.name === "AbortError") throw err;
    throw new NetworkError();
  }

  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null; // e.g. an HTML 502 page from a proxy
    }
  }
  if (res.ok) return res.status === 204 ? null : data;

  const detail = data && typeof data === "object" ? data.error : null;
  const err = new ApiError(
    res.status,
    (detail && detail.code) || `http_${res.status}`,
    (detail && detail.message) || `The server answered ${res.status} ${res.statusText}.`.trim(),
    detail && detail.fields,
    parseRetryAfter(res.headers.get("Retry-After")),
  );
  // A 401 for a token we no longer use (logged out meanwhile) is not news.
  if (res.status === 401 && auth && token === currentToken) unauthorizedHandler(err);
  throw err;
}

const enc = encodeURIComponent;

// Users and sessions
export const register = (handle, password, displayName) =>
  request("POST", "/v1/users", {
    auth: false,
    body: displayName ? { handle, password, display_name: displayName } : { handle, password },
  });
export const login = (handle, password) =>
  request("POST", "/v1/sessions", { auth: false, body: { handle, password } });
export const logout = () => request("DELETE", "/v1/sessions/current");
export const getMe = () => request("GET", "/v1/users/me");
export const getUser = (userId) => request("GET", `/v1/users/${enc(userId)}`);
export const findUserByHandle = (handle) => request("GET", "/v1/users", { query: { handle } });

// Conversations
export const listConversations = (before, limit = 50, archived = false) =>
  request("GET", "/v1/conversations", {
    query: { before, limit, archived: archived ? "true" : undefined },
  });
export const getConversation = (conversationId) =>
  request("GET", `/v1/conversations/${enc(conversationId)}`);
export const createDirect = (userId) =>
  request("POST", "/v1/conversations", { body: { kind: "direct", user_id: userId } });
export const createGroup = (title, memberIds) =>
  request("POST", "/v1/conversations", {
    body: { kind: "group", title, member_ids: memberIds },
  });
export const renameConversation = (conversationId, title) =>
  request("PATCH", `/v1/conversations/${enc(conversationId)}`, { body: { title } });
export const deleteConversation = (conversationId) =>
  request("DELETE", `/v1/conversations/${enc(conversationId)}`);
export const addMember = (conversationId, userId) =>
  request("POST", `/v1/conversations/${enc(conversationId)}/members`, {
    body: { user_id: userId },
  });
export const removeMember = (conversationId, userId) =>
  request("DELETE", `/v1/conversations/${enc(conversationId)}/members/${enc(userId)}`);

// Messages
export const listMessages = (conversationId, { before, after, limit = 50 } = {}) =>
  request("GET", `/v1/conversations/${enc(conversationId)}/messages`, {
    query: { before, after, limit },
  });
export const sendMessage = (conversationId, clientMsgId, body, extra = {}) => {
  const payload = { client_msg_id: clientMsgId, body };
  if (extra.replyTo) payload.reply_to = extra.replyTo;
  if (extra.attachmentIds && extra.attachmentIds.length) {
    payload.attachment_ids = extra.attachmentIds;
  }
  return request("POST", `/v1/conversations/${enc(conversationId)}/messages`, {
    body: payload,
  });
};
const messagePath = (conversationId, seq) =>
  `/v1/conversations/${enc(conversationId)}/messages/${enc(seq)}`;
export const editMessage = (conversationId, seq, body) =>
  request("PATCH", messagePath(conversationId, seq), { body: { body } });
export const deleteMessage = (conversationId, seq) =>
  request("DELETE", messagePath(conversationId, seq));
export const setReaction = (conversationId, seq, emoji) =>
  request("PUT", `${messagePath(conversationId, seq)}/reaction`, { body: { emoji } });
export const removeReaction = (conversationId, seq) =>
  request("DELETE", `${messagePath(conversationId, seq)}/reaction`);

// Attachments
/**
 * Upload a file's raw bytes with XMLHttpRequest (fetch reports no upload progress).
 * onProgress(loaded, total) is called as the bytes go out; `signal` (an AbortSignal)
 * cancels it. Resolves to the Attachment; rejects with an ApiError or a NetworkError
 * like request(), or an AbortError.
 */
export function uploadAttachment(file, onProgress, signal) {
  return new Promise((resolve, reject) => {
    const token = currentToken;
    if (!token) {
      reject(new ApiError(401, "unauthorized", "You are not logged in."));
      return;
    }
    const xhr = new XMLHttpRequest();
    const name = file.name || "file";
    xhr.open("POST", `/v1/attachments?filename=${enc(name.slice(0, 255))}`);
    xhr.setRequestHeader("Authorization", `Bearer ${token}`);
    xhr.setRequestHeader("Accept", "application/json");
    xhr.setRequestHeader("Content-Type", file.type || "application/octet-stream");
    xhr.upload.onprogress = (ev) => {
      if (ev.lengthComputable) onProgress(ev.loaded, ev.total);
    };
    xhr.onerror = () => reject(new NetworkError());
    xhr.onabort = () => reject(new DOMException("The upload was cancelled.", "AbortError"));
    if (signal) signal.addEventListener("abort", () => xhr.abort(), { once: true });
    xhr.onload = () => {
      let data = null;
      try {
        data = JSON.parse(xhr.responseText);
      } catch {
        data = null;
      }
      if (xhr.status === 201 && data) {
        onProgress(file.size, file.size);
        resolve(data.attachment);
        return;
      }
      const detail = data && typeof data === "object" ? data.error : null;
      const err = new ApiError(
        xhr.status,
        (detail && detail.code) || `http_${xhr.status}`,
        (detail && detail.message) || `The server answered ${xhr.status}.`,
        detail && detail.fields,
        parseRetryAfter(xhr.getResponseHeader("Retry-After")),
      );
      if (xhr.status === 401 && token === currentToken) unauthorizedHandler(err);
      reject(err);
    };
    xhr.send(file);
  });
}

/** An attachment (or its thumbnail) as a Blob: <img> can't send the bearer token. */
export async function fetchAttachment(attachmentId, { thumbnail = false } = {}) {
  const token = currentToken;
  if (!token) throw new ApiError(401, "unauthorized", "You are not logged in.");
  let res;
  try {
    res = await fetch(
      `/v1/attachments/${enc(attachmentId)}${thumbnail ? "/thumbnail" : ""}`,
      { headers: { Authorization: `Bearer ${token}` }, credentials: "omit" },
    );
  } catch {
    throw new NetworkError();
  }
  if (!res.ok) {
    let detail = null;
    try {
      detail = (await res.json()).error;
    } catch {
      detail = null;
    }
    throw new ApiError(
      res.status,
      (detail && detail.code) || `http_${res.status}`,
      (detail && detail.message) || `The server answered ${res.status}.`,
    );
  }
  return res.blob();
}
export const postReceipt = (conversationId, type, seq) =>
  request("POST", `/v1/conversations/${enc(conversationId)}/receipts`, {
    body: { type, seq },
  });
export const postTyping = (conversationId) =>
  request("POST", `/v1/conversations/${enc(conversationId)}/typing`);

// Events and presence
export const getEvents = (after, timeoutSecs, signal) =>
  request("GET", "/v1/events", {
    query: after == null ? {} : { after, timeout: timeoutSecs },
    signal,
  });
export const getPresence = (userIds) =>
  request("GET", "/v1/presence", { query: { user_ids: userIds.join(",") } });

// Accounts and sessions (second release)
export const searchUsers = (q, limit = 8) => request("GET", "/v1/users", { query: { q, limit } });
export const updateMe = (displayName) =>
  request("PATCH", "/v1/users/me", { body: { display_name: displayName } });
export const changePassword = (currentPassword, newPassword) =>
  request("PUT", "/v1/users/me/password", {
    body: { current_password: currentPassword, new_password: newPassword },
  });
export const listSessions = () => request("GET", "/v1/sessions");
export const revokeSession = (sessionId) => request("DELETE", `/v1/sessions/${enc(sessionId)}`);
export const revokeOtherSessions = () => request("DELETE", "/v1/sessions");

// Blocks, requests, per-member settings
export const listBlocks = () => request("GET", "/v1/blocks");
export const blockUser = (userId) => request("PUT", `/v1/blocks/${enc(userId)}`);
export const unblockUser = (userId) => request("DELETE", `/v1/blocks/${enc(userId)}`);
export const acceptRequest = (conversationId) =>
  request("POST", `/v1/conversations/${enc(conversationId)}/accept`);
export const updateMySettings = (conversationId, settings) =>
  request("PATCH", `/v1/conversations/${enc(conversationId)}/me`, { body: settings });
