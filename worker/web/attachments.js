/*
 * A message's attachments as the page shows them: an http(s) link as a
 * chip with its type and host, and a file shared through this server
 * (protocol 1.1: {type: "file", url: "/files/<id>", name, size, mime}) as
 * an inline preview for images or a download chip with name and size.
 *
 * The server checks who asks for a file, and an <img> cannot send a
 * header, so a file's address carries our identity in its query, the same
 * one the WebSocket uses. Only a relative /files/<id> path is taken as a
 * file; anything else that is not http(s) is shown inert.
 */
import { el, safeUrl } from './util.js';
import { identQuery } from './conn.js';

// Shown inline; the server serves every other type as a download.
export const PREVIEW_TYPES = new Set(['image/png', 'image/jpeg', 'image/gif', 'image/webp']);

const FILE_PATH_RE = /^\/files\/(?!\.+$)[A-Za-z0-9._~+=-]{1,200}$/;
const PREVIEW_HEIGHT = 180;       // the preview's box, kept by CSS until the image is known

// The address of a shared file with our identity, or null when url is
// not the path of one.
export function fileHref(url) {
  if (typeof url !== 'string' || !FILE_PATH_RE.test(url)) return null;
  const q = identQuery();
  return q ? url + '?' + q : url;
}

export function isFile(a) {
  return !!a && a.type === 'file' && typeof a.url === 'string' && FILE_PATH_RE.test(a.url);
}

// 1536 -> "1.5 KiB", the units of the server's limits.
export function humanSize(n) {
  if (typeof n !== 'number' || !Number.isFinite(n) || n < 0) return '';
  if (n < 1024) return n + ' B';
  const units = ['KiB', 'MiB', 'GiB', 'TiB'];
  let v = n / 1024;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
  return (v < 10 ? v.toFixed(1) : String(Math.round(v))) + ' ' + units[i];
}

function fileName(a) {
  return typeof a.name === 'string' && a.name ? a.name.slice(0, 255) : 'file';
}

function fileMime(a) {
  return typeof a.mime === 'string' ? a.mime.toLowerCase().split(';')[0].trim() : '';
}

// A small image keeps its own height instead of being blown up to the box
// (the browser's scroll anchoring keeps what is in view in place).
function fitPreview(img) {
  const h = img.naturalHeight;
  if (h > 0 && h < PREVIEW_HEIGHT) img.style.height = h + 'px';
  img.closest('.att-img').classList.add('loaded');
}

function renderPreview(a, href) {
  const name = fileName(a);
  const link = el('a', 'att-img');
  link.href = href;
  link.target = '_blank';
  link.rel = 'noopener noreferrer';
  link.title = name + (typeof a.size === 'number' ? ' · ' + humanSize(a.size) : '') + ' · open full size';
  const img = el('img');
  img.alt = name;
  img.decoding = 'async';
  img.loading = 'lazy';
  img.addEventListener('load', () => fitPreview(img), { once: true });
  img.addEventListener('error', () => {
    link.classList.add('broken');
    link.textContent = name + ' (cannot be shown)';
  }, { once: true });
  img.src = href;
  link.append(img);
  return link;
}

function renderDownload(a, href) {
  const name = fileName(a);
  const link = el('a', 'att file');
  link.href = href;
  link.download = name;
  link.rel = 'noopener noreferrer';
  link.title = 'Download ' + name;
  const dot = name.lastIndexOf('.');
  const ext = dot > 0 && name.length - dot <= 6 ? name.slice(dot + 1) : 'file';
  link.append(el('span', 'att-type', ext), el('span', 'att-name', name));
  if (typeof a.size === 'number') link.append(el('span', 'att-size', humanSize(a.size)));
  return link;
}

function renderLink(a) {
  const type = typeof a.type === 'string' && a.type ? a.type.slice(0, 40) : 'link';
  const u = safeUrl(a.url);
  if (!u) {
    const span = el('span', 'att unsafe', type + ': (unsupported link)');
    span.title = 'Only http and https links are opened';
    return span;
  }
  const link = el('a', 'att');
  link.href = u.href;
  link.target = '_blank';
  link.rel = 'noopener noreferrer nofollow';
  link.title = u.href;
  link.append(el('span', 'att-type', type), el('span', 'att-url', u.host + (u.pathname.length > 1 ? u.pathname : '')));
  return link;
}

export function renderAttachments(list) {
  const box = el('div', 'atts');
  for (const a of list) {
    if (!a || typeof a !== 'object') continue;
    if (isFile(a)) {
      const href = fileHref(a.url);
      box.append(PREVIEW_TYPES.has(fileMime(a)) ? renderPreview(a, href) : renderDownload(a, href));
    } else {
      box.append(renderLink(a));
    }
  }
  return box;
}
