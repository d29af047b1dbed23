// The reference tus client (tus-js-client, Node) against `tessera serve`, driven by
// tests/it/tus.rs (`tus_js_client_resumes_across_abort_and_server_restart`).
//
// Environment: TUS_ENDPOINT (…/api/uploads), TUS_TOKEN (bearer token), TUS_FILE (the file to
// upload), TUS_CHUNK_SIZE (bytes per PATCH, default 8 MiB).
//
// 1. Upload #1 starts from the endpoint; a PATCH past 30 % of the file is aborted
//    (`upload.abort()`, which destroys the socket) before its answer, mid-body when the OS has
//    not taken all of it yet (see below). The server keeps the bytes that arrived.
// 2. Upload #2 resumes from upload #1's URL (no endpoint: a failed resume cannot silently start
//    over). After its first chunk (or before its only one) it prints `PAUSED <offset>` before
//    sending the next PATCH and waits for a `GO` line on stdin: meanwhile the test kills the
//    server (SIGKILL) and starts it again on the same port and store. retryDelays let tus-js-client recover by itself from
//    whatever that costs (a dead keep-alive socket, 409/423 while the server settles).
// 3. On success it prints `DONE <Tessera-File-Id of the last response>` and exits 0.
//
// Every line on stdout is `WORD args…` for the test to parse; anything else goes to stderr.
// Any failure prints `ERROR <message>` and exits non-zero.

import { readFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { Upload } from 'tus-js-client';

const say = (...parts) => process.stdout.write(`${parts.join(' ')}\n`);
const fail = (msg) => {
  say('ERROR', String(msg).replace(/\s+/g, ' '));
  process.exit(1);
};
process.on('unhandledRejection', (e) => fail(e?.stack ?? e));
process.on('uncaughtException', (e) => fail(e?.stack ?? e));
setTimeout(() => fail('timed out after 300 s'), 300_000).unref();

const need = (name) => process.env[name] || fail(`${name} is not set`);
const endpoint = need('TUS_ENDPOINT');
const token = need('TUS_TOKEN');
const data = readFileSync(need('TUS_FILE'));
const chunkSize = Number(process.env.TUS_CHUNK_SIZE || 8 * 1024 * 1024);
const total = data.length;

// stdin lines, in order, whether they come before or after someone waits for them.
const lines = [];
const waiters = [];
createInterface({ input: process.stdin }).on('line', (l) => {
  const w = waiters.shift();
  if (w) w(l.trim());
  else lines.push(l.trim());
});
const nextLine = () =>
  lines.length ? Promise.resolve(lines.shift()) : new Promise((r) => waiters.push(r));

const common = {
  headers: { Authorization: `Bearer ${token}` },
  chunkSize,
  metadata: { filename: 'big.bin', filetype: 'application/octet-stream', client: 'tus-js-client' },
  retryDelays: [0, 200, 500, 1000, 2000, 3000, 5000],
  removeFingerprintOnSuccess: true,
  onShouldRetry(err, attempt) {
    const status = err.originalResponse ? err.originalResponse.getStatus() : 0;
    say('RETRY', attempt, status);
    return status === 0 || status >= 500 || status === 409 || status === 423;
  },
  onAfterResponse(req, res) {
    say('RESPONSE', req.getMethod(), res.getStatus(), res.getHeader('Upload-Offset') ?? '-');
  },
};

// 1. Start, then break the connection of a PATCH before its answer: the first PATCH that
//    starts past 30 % of the file is aborted as soon as part of its body is queued in Node on a
//    connected socket (the OS took all it could for now, so the server cannot get it all), or
//    at the latest after 30 % of the time earlier PATCHes took (loopback buffers can swallow a
//    whole chunk at once; then the server may still receive every byte, and the client never
//    learns it). If that PATCH was answered first anyway, the next one is tried.
const uploadUrl = await new Promise((resolve, reject) => {
  let serial = 0;
  let aborted = false;
  let startedAt = 0;
  const durations = [];
  const upload = new Upload(data, {
    ...common,
    endpoint,
    onBeforeRequest(req) {
      if (req.getMethod() !== 'PATCH') return;
      const offset = Number(req.getHeader('Upload-Offset'));
      const mine = ++serial;
      startedAt = Date.now();
      say('PATCH', offset);
      if (aborted || offset < 0.3 * total) return;
      const deadline = startedAt + Math.max(2, 0.3 * Math.min(...durations, 50));
      const poll = setInterval(() => {
        if (aborted || serial !== mine) return clearInterval(poll);
        const sock = req.getUnderlyingObject()?.socket;
        const queued = sock && !sock.connecting && sock.writableLength > 0;
        if (!queued && Date.now() < deadline) return;
        clearInterval(poll);
        aborted = true;
        const handed = sock ? sock.bytesWritten - sock.writableLength : 0;
        const pending = sock ? sock.writableLength : 0;
        upload.abort().then(() => {
          say('ABORTED', offset, queued ? 'queued' : 'deadline', handed, pending);
          resolve(upload.url);
        }, reject);
      }, 1);
    },
    onChunkComplete(_size, accepted) {
      serial += 1; // answered: any pending abort of that PATCH is moot
      durations.push(Date.now() - startedAt);
      say('CHUNK_DONE', accepted);
    },
    onSuccess() {
      reject(new Error('upload #1 finished before it could be aborted'));
    },
    onError: reject,
  });
  upload.start();
}).catch(fail);
say('URL', uploadUrl);

// 2. Resume from the URL; pause once between two PATCHes for the server restart.
const fileId = await new Promise((resolve, reject) => {
  let chunks = 0;
  let paused = false;
  const upload = new Upload(data, {
    ...common,
    uploadUrl,
    async onBeforeRequest(req) {
      if (req.getMethod() !== 'PATCH') return;
      // After the first chunk; or now, if this PATCH is the last one (an abort late in the
      // file): between two PATCHes either way.
      const last = Number(req.getHeader('Upload-Offset')) + chunkSize >= total;
      if ((chunks >= 1 || last) && !paused) {
        paused = true;
        say('PAUSED', req.getHeader('Upload-Offset'));
        const line = await nextLine();
        if (line !== 'GO') throw new Error(`expected GO on stdin, got ${JSON.stringify(line)}`);
      }
      say('PATCH', req.getHeader('Upload-Offset'));
    },
    onChunkComplete(_size, accepted) {
      chunks += 1;
      say('CHUNK_DONE', accepted);
    },
    onSuccess({ lastResponse }) {
      const id = lastResponse.getHeader('Tessera-File-Id');
      if (!id) reject(new Error(`the last response (${lastResponse.getStatus()}) has no Tessera-File-Id`));
      else resolve(id);
    },
    onError: reject,
  });
  upload.start();
}).catch(fail);
say('DONE', fileId);
process.exit(0);
