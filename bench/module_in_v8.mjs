// The module's own cost per request, without Envoy: Node's V8 (Envoy's wasm
// engine too) runs the module against a stand-in proxy-wasm host, in memory,
// whose host calls cost next to nothing. Per scenario it prints the CPU ns per
// request (context created, request and response headers, log, done; the
// stand-in host's share included) and the host calls the module made, by
// kind, with the calls that return data and their bytes. A module built with `--features count-allocs` logs its
// allocations per request; they are counted too.
//
//   node bench/module_in_v8.mjs MODULE.wasm INPUT.json
//
// INPUT.json (bench/module_in_v8.py writes it from compare.py's bench policy):
// {"policy": "...", "env": {"NAME": "value"}, "scenarios": {"name": [[header, value], ...]}}
// The stand-in host accepts every signature it is asked to check: only cached
// tokens are timed.

import fs from 'node:fs';
import { webcrypto } from 'node:crypto';

const [modulePath, inputPath] = process.argv.slice(2);
const input = JSON.parse(fs.readFileSync(inputPath, 'utf8'));
const ITERS = Number(process.env.ITERS ?? 20000);
const BATCHES = 5;

const OK = 0, NOT_FOUND = 1, CAS_MISMATCH = 8;
let memory, exports;
// Views of the module's memory, made again only when it grows.
let views = { buffer: null };
function view() {
  if (views.buffer !== memory.buffer) {
    views = { buffer: memory.buffer, u8: new Uint8Array(memory.buffer), dv: new DataView(memory.buffer) };
  }
  return views;
}
const u8 = () => view().u8;
const dv = () => view().dv;
const enc = new TextEncoder(), dec = new TextDecoder();
const str = (ptr, len) => dec.decode(u8().subarray(ptr, ptr + len));
const bytes = (ptr, len) => u8().slice(ptr, ptr + len);

// Copies `data` into a buffer the module allocates and hands it over.
function give(data, retPtr, retSize) {
  const ptr = data.length ? exports.proxy_on_memory_allocate(data.length) : 0;
  u8().set(data, ptr);
  dv().setUint32(retPtr, ptr, true);
  dv().setUint32(retSize, data.length, true);
  returned.bytes += data.length;
}

function serialize(pairs) {
  const parts = pairs.map(([n, v]) => [enc.encode(n), enc.encode(v)]);
  const size = 4 + parts.reduce((s, [n, v]) => s + 8 + n.length + v.length + 2, 0);
  const out = new Uint8Array(size), lengths = new DataView(out.buffer);
  lengths.setUint32(0, parts.length, true);
  let at = 4;
  for (const [n, v] of parts) { lengths.setUint32(at, n.length, true); lengths.setUint32(at + 4, v.length, true); at += 8; }
  for (const [n, v] of parts) { out.set(n, at); at += n.length + 1; out.set(v, at); at += v.length + 1; }
  return out;
}

let calls = {};
let returned = { calls: 0, bytes: 0 };
let allocs = [];
const shared = new Map();
let casCounter = 0;
// The request's and the response's header maps, serialised once per scenario:
// the stand-in host counts header edits but does not apply them.
let maps = {};
let metricIds = 0;
const config = enc.encode(input.policy);
const environ = Object.entries(input.env ?? {}).map(([k, v]) => enc.encode(`${k}=${v}\0`));

function count(name) { calls[name] = (calls[name] ?? 0) + 1; }

const env = {
  proxy_log(level, ptr, len) {
    count('log');
    const line = str(ptr, len);
    const m = line.match(/: (\d+) allocations, (\d+) bytes/);
    if (m) allocs.push([Number(m[1]), Number(m[2])]);
    else if (level >= 3) console.error(`module log ${level}: ${line}`);
    return OK;
  },
  proxy_get_current_time_nanoseconds(ret) {
    count('get_current_time');
    dv().setBigUint64(ret, BigInt(Date.now()) * 1000000n, true);
    return OK;
  },
  proxy_get_buffer_bytes(type, start, max, retPtr, retSize) {
    count('get_buffer_bytes'); returned.calls++;
    give(type === 7 ? config.subarray(start >>> 0, (start >>> 0) + (max >>> 0)) : new Uint8Array(0), retPtr, retSize);
    return OK;
  },
  proxy_get_header_map_pairs(type, retPtr, retSize) {
    count('get_header_map_pairs'); returned.calls++;
    give(maps[type]?.serialized ?? serialize([]), retPtr, retSize);
    return OK;
  },
  proxy_get_header_map_value(type, kp, kl, retPtr, retSize) {
    count('get_header_map_value');
    const name = str(kp, kl), found = (maps[type]?.pairs ?? []).find(([n]) => n === name);
    if (!found) return NOT_FOUND;
    returned.calls++;
    give(enc.encode(found[1]), retPtr, retSize);
    return OK;
  },
  proxy_replace_header_map_value() { count('replace_header'); return OK; },
  proxy_add_header_map_value() { count('add_header'); return OK; },
  proxy_remove_header_map_value() { count('remove_header'); return OK; },
  proxy_set_header_map_pairs() { count('set_header_map_pairs'); return OK; },
  proxy_get_shared_data(kp, kl, retPtr, retSize, retCas) {
    count('get_shared_data');
    const entry = shared.get(str(kp, kl));
    if (!entry) return NOT_FOUND;
    returned.calls++;
    give(entry.value, retPtr, retSize);
    dv().setUint32(retCas, entry.cas, true);
    return OK;
  },
  proxy_set_shared_data(kp, kl, vp, vl, cas) {
    count('set_shared_data');
    // Envoy's rule: a missing key is created whatever the CAS; an existing
    // one only on a CAS of 0 or its own.
    const key = str(kp, kl), entry = shared.get(key);
    if (entry && cas !== 0 && (cas >>> 0) !== entry.cas) return CAS_MISMATCH;
    casCounter = (casCounter + 1) >>> 0 || 1;
    shared.set(key, { value: bytes(vp, vl), cas: casCounter });
    return OK;
  },
  proxy_define_metric(type, np, nl, retId) { count('define_metric'); dv().setUint32(retId, ++metricIds, true); return OK; },
  proxy_increment_metric(id, delta) { count('increment_metric'); return OK; },
  proxy_record_metric(id, value) { count('record_metric'); return OK; },
  proxy_send_local_response(status, dp, dl, bp, bl, hp, hl, grpc) { count('send_local_response'); return OK; },
  proxy_set_property(pp, pl, vp, vl) { count('set_property'); return OK; },
  proxy_get_property(pp, pl, retPtr, retSize) { count('get_property'); return NOT_FOUND; },
  proxy_set_tick_period_milliseconds(ms) { count('set_tick_period'); return OK; },
  proxy_call_foreign_function(np, nl, ap, al, retPtr, retSize) {
    count('call_foreign_function'); returned.calls++;
    give(new Uint8Array([0x08, 0x01]), retPtr, retSize); // VerifySignatureResult { result: true }
    return OK;
  },
  proxy_continue_stream() { count('continue_stream'); return OK; },
  proxy_close_stream() { count('close_stream'); return OK; },
  proxy_set_effective_context() { count('set_effective_context'); return OK; },
  proxy_done() { return OK; },
};
// Calls the module makes only off the request path: refused if reached.
for (const name of WebAssembly.Module.imports(new WebAssembly.Module(fs.readFileSync(modulePath)))
  .filter(i => i.module === 'env' && !(i.name in env)).map(i => i.name)) {
  env[name] = () => { count(name); return 12; }; // Unimplemented
}

const wasi = {
  random_get(ptr, len) { webcrypto.getRandomValues(u8().subarray(ptr, ptr + len)); return 0; },
  environ_sizes_get(countPtr, sizePtr) {
    dv().setUint32(countPtr, environ.length, true);
    dv().setUint32(sizePtr, environ.reduce((s, e) => s + e.length, 0), true);
    return 0;
  },
  environ_get(ptrs, buf) {
    for (const [i, e] of environ.entries()) { dv().setUint32(ptrs + 4 * i, buf, true); u8().set(e, buf); buf += e.length; }
    return 0;
  },
  fd_write(fd, iovs, n, written) {
    let total = 0;
    for (let i = 0; i < n; i++) total += dv().getUint32(iovs + 8 * i + 4, true);
    dv().setUint32(written, total, true);
    return 0;
  },
  proc_exit(code) { throw new Error(`proc_exit(${code})`); },
};

const instance = new WebAssembly.Instance(new WebAssembly.Module(fs.readFileSync(modulePath)),
  { env, wasi_snapshot_preview1: wasi });
exports = instance.exports;
memory = exports.memory;
exports._initialize();
const ROOT = 1;
exports.proxy_on_context_create(ROOT, 0);
if (!exports.proxy_on_vm_start(ROOT, 0) || !exports.proxy_on_configure(ROOT, config.length)) {
  throw new Error('the module refused the configuration');
}

let next = ROOT + 1;
const RESPONSE = [[':status', '200'], ['content-length', '3']];
function request(headers) {
  const id = next++;
  exports.proxy_on_context_create(id, ROOT);
  exports.proxy_on_request_headers(id, headers.length, 1);
  exports.proxy_on_response_headers(id, 2, 1);
  exports.proxy_on_log(id);
  exports.proxy_on_done(id);
  exports.proxy_on_delete(id);
}

console.log(`module ${modulePath}; ${BATCHES} batches of ${ITERS} requests, median ns/request`);
for (const [name, pairs] of Object.entries(input.scenarios)) {
  const headers = [[':authority', 'bench'], [':path', '/bench'], [':method', 'GET'], [':scheme', 'http'],
    ...pairs, ['x-forwarded-proto', 'http'], ['x-request-id', '5f0c3a58-2b1e-4d6f-9a4e-0c1d2e3f4a5b']];
  maps = { 0: { pairs: headers, serialized: serialize(headers) }, 2: { pairs: RESPONSE, serialized: serialize(RESPONSE) } };
  for (let i = 0; i < ITERS; i++) request(headers); // warm up: tiers up the JIT, fills caches
  const times = [];
  for (let b = 0; b < BATCHES; b++) {
    // CPU time, not wall time: the machine may be shared.
    const start = process.cpuUsage();
    for (let i = 0; i < ITERS; i++) request(headers);
    const used = process.cpuUsage(start);
    times.push((used.user + used.system) * 1000 / ITERS);
  }
  calls = {}; returned = { calls: 0, bytes: 0 }; allocs = [];
  request(headers);
  times.sort((a, b) => a - b);
  const kinds = Object.entries(calls).filter(([k]) => k !== 'log').map(([k, n]) => `${k} ${n}`).join(', ');
  const total = Object.entries(calls).filter(([k]) => k !== 'log').reduce((s, [, n]) => s + n, 0);
  const alloc = allocs.length ? `; ${allocs[0][0]} allocations, ${allocs[0][1]} bytes` : '';
  console.log(`${name}: ${times[BATCHES >> 1].toFixed(0)} ns; ${total} host calls (${kinds}); ` +
    `${returned.calls} returning data, ${returned.bytes} bytes${alloc}`);
}
