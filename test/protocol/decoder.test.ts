import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as P from '../../src/protocol/index.js';

// The test builds frames by hand, not with the encoders under test.
function frame(type: number, payload: Buffer): Buffer {
  const h = Buffer.alloc(8);
  h.writeUInt32LE(type, 0);
  h.writeUInt32LE(payload.length, 4);
  return Buffer.concat([h, payload]);
}

const anyRules: P.LengthRules = (t) => (t >= 0x190 && t <= 0x193 ? { min: 0, max: 65536 } : t === 0x300 ? { min: 4, max: 4 } : undefined);

void test('decodes a stream pushed in one piece, byte by byte, and at every split point', () => {
  const frames = [
    frame(0x300, Buffer.from('04000000', 'hex')),
    frame(0x191, Buffer.from('hello')),
    frame(0x191, Buffer.alloc(0)),
    frame(0x192, Buffer.alloc(300, 7)),
    frame(0x193, Buffer.from('00000000', 'hex')),
  ];
  const stream = Buffer.concat(frames);
  const expect = (got: P.Frame[]): void => {
    assert.deepEqual(
      got.map((f) => [f.type, f.payload.toString('hex'), f.offset]),
      [
        [0x300, '04000000', 0],
        [0x191, Buffer.from('hello').toString('hex'), 12],
        [0x191, '', 25],
        [0x192, Buffer.alloc(300, 7).toString('hex'), 33],
        [0x193, '00000000', 341],
      ],
    );
  };
  expect(new P.FrameDecoder(anyRules).pushAll(stream));
  {
    const d = new P.FrameDecoder(anyRules);
    const got: P.Frame[] = [];
    for (let i = 0; i < stream.length; i++) got.push(...d.push(stream.subarray(i, i + 1)));
    expect(got);
    assert.ok(d.idle);
  }
  for (let cut = 0; cut <= stream.length; cut++) {
    const d = new P.FrameDecoder(anyRules);
    expect([...d.push(stream.subarray(0, cut)), ...d.push(stream.subarray(cut))]);
  }
});

void test('frames inside one chunk are zero-copy views', () => {
  const d = new P.FrameDecoder(anyRules);
  const chunk = frame(0x191, Buffer.alloc(1000, 1));
  const [f] = d.pushAll(chunk);
  assert.ok(f);
  assert.equal(f.payload.buffer, chunk.buffer);
});

void test('rejects unknown types and bad lengths from the header alone, before any body', () => {
  const cases: [string, Buffer, P.ProtocolErrorCode, RegExp][] = [
    ['unknown type', Buffer.from('9999000001000000', 'hex'), 'UNKNOWN_TYPE', /unexpected message type 0x9999 \(length 1\)/],
    ['1 GB length', frameHeader(0x191, 0x40000000), 'BAD_LENGTH', /MSG_DATA_STDOUT with length 1073741824 outside \[0, 65536\]/],
    ['64 KiB + 1', frameHeader(0x190, 65537), 'BAD_LENGTH', /outside/],
    ['short hello', frameHeader(0x300, 3), 'BAD_LENGTH', /MSG_HELLO with length 3 outside \[4, 4\]/],
    ['u32 max', frameHeader(0x191, 0xffffffff), 'BAD_LENGTH', /4294967295/],
  ];
  for (const [name, bytes, code, re] of cases) {
    const d = new P.FrameDecoder(anyRules);
    assert.throws(() => d.pushAll(bytes), (e: unknown) => e instanceof P.ProtocolError && e.code === code && re.test(e.message) && e.offset === 0, name);
    assert.equal(d.bufferedBytes, 0);
    assert.throws(() => d.pushAll(Buffer.from([1])), (e: unknown) => e instanceof P.ProtocolError && e.code === 'DECODER_FAILED', name);
  }
});

function frameHeader(type: number, len: number): Buffer {
  const h = Buffer.alloc(8);
  h.writeUInt32LE(type, 0);
  h.writeUInt32LE(len >>> 0, 4);
  return h;
}

void test('rules can change between two frames of one chunk (handshake then data)', () => {
  const d = new P.FrameDecoder(P.helloRules);
  const got: number[] = [];
  for (const f of d.push(Buffer.concat([frame(0x300, Buffer.from('04000000', 'hex')), frame(0x190, Buffer.from('x'))]))) {
    got.push(f.type);
    if (f.type === 0x300) d.setRules(P.dataRules(4));
  }
  assert.deepEqual(got, [0x300, 0x190]);
  assert.throws(() => new P.FrameDecoder(P.helloRules).pushAll(Buffer.concat([frame(0x300, Buffer.from('04000000', 'hex')), frame(0x190, Buffer.from('x'))])), /unexpected message type MSG_DATA_STDIN/);
});

void test('channel rule presets', () => {
  const a3 = P.agentToDaemonRules(3);
  assert.deepEqual(a3(0x212), { min: 97, max: 96 + 65000 });
  assert.equal(a3(0x213), undefined, 'TRIGGER_SERVICE4 needs v4');
  assert.equal(a3(0x210), undefined, 'TRIGGER_SERVICE needs v2');
  assert.equal(a3(0x300), undefined, 'no HELLO after handshake');
  const a4 = P.agentToDaemonRules(4);
  assert.deepEqual(a4(0x213), { min: 161, max: 160 + 65000 });
  assert.deepEqual(a4(0x211), { min: 8, max: 8 });
  assert.deepEqual(P.agentToDaemonRules(2)(0x210), { min: 128, max: 128 });
  assert.deepEqual(P.dataRules(2)(0x191), { min: 0, max: 4096 });
  assert.deepEqual(P.dataRules(3)(0x190), { min: 0, max: 65536 });
  assert.equal(P.dataRules(3)(0x200), undefined);
  assert.deepEqual(P.clientToDaemonRules(0x202), { min: 9, max: 65535 });
  assert.deepEqual(P.daemonToAgentRules(0x203), { min: 32, max: 32 });
  assert.deepEqual(P.helloRules(0x300), { min: 4, max: 4 });
  assert.equal(P.helloRules(0x200), undefined);
});

// Deterministic PRNG so failures reproduce.
function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s / 0x100000000;
  };
}

void test('fuzz: 100,000+ random and mutated frames, bounded memory, only ProtocolErrors', () => {
  const r = rng(12345);
  const types = [0x190, 0x191, 0x192, 0x193, 0x200, 0x201, 0x202, 0x203, 0x210, 0x211, 0x212, 0x213, 0x300];
  const ruleSets: P.LengthRules[] = [
    P.agentToDaemonRules(4),
    P.agentToDaemonRules(3),
    P.agentToDaemonRules(2),
    P.dataRules(3),
    P.dataRules(2),
    P.clientToDaemonRules,
    P.daemonToAgentRules,
    P.helloRules,
  ];
  const bound = 8 + 65535 + 4096; // largest max of any preset, plus a header
  let frames = 0;
  let errors = 0;
  let decoded = 0;
  let triggersParsed = 0;
  while (frames < 100_000) {
    const rules = ruleSets[Math.floor(r() * ruleSets.length)] as P.LengthRules;
    const d = new P.FrameDecoder(rules);
    const n = 1 + Math.floor(r() * 40);
    const parts: Buffer[] = [];
    for (let i = 0; i < n; i++, frames++) {
      const valid = types.filter((t) => rules(t) !== undefined);
      const pick = r();
      const type =
        pick < 0.95 ? (valid[Math.floor(r() * valid.length)] as number) : pick < 0.98 ? (types[Math.floor(r() * types.length)] as number) : Math.floor(r() * 0x100000000);
      const b = rules(type);
      let len = b ? b.min + Math.floor(r() * Math.min(b.max - b.min + 1, 300)) : Math.floor(r() * 64);
      if (r() < 0.005) len = Math.floor(r() * 0x100000000); // absurd length
      const body = Buffer.alloc(Math.min(len, 400));
      for (let k = 0; k < body.length; k++) body[k] = r() < 0.7 ? 0x61 + Math.floor(r() * 26) : Math.floor(r() * 256);
      const h = Buffer.alloc(8);
      h.writeUInt32LE(type >>> 0, 0);
      h.writeUInt32LE(len >>> 0, 4);
      let f = Buffer.concat([h, body]);
      if (r() < 0.01) {
        // mutate: flip random bytes, truncate or duplicate
        f = Buffer.from(f);
        const m = Math.floor(r() * 4);
        for (let k = 0; k < m; k++) {
          const idx = Math.floor(r() * f.length);
          f[idx] = Math.floor(r() * 256);
        }
        if (r() < 0.3) f = f.subarray(0, Math.floor(r() * f.length));
      }
      parts.push(f);
    }
    const stream = Buffer.concat(parts);
    let pos = 0;
    try {
      while (pos < stream.length) {
        const step = 1 + Math.floor(r() * (r() < 0.5 ? 16 : 5000));
        for (const fr of d.push(stream.subarray(pos, pos + step))) {
          decoded++;
          const lb = rules(fr.type);
          assert.ok(lb && fr.payload.length >= lb.min && fr.payload.length <= lb.max);
          if (fr.type === 0x212 || fr.type === 0x213 || fr.type === 0x210) {
            P.parseTrigger(fr.type, fr.payload); // must not throw for decoder-accepted lengths
            triggersParsed++;
          }
          if (fr.type === 0x200 || fr.type === 0x201 || fr.type === 0x202) {
            try {
              const e = P.parseExec(fr.payload);
              try {
                P.parseCommand(e.cmdline.toString('latin1'), true);
              } catch (err) {
                if (!(err instanceof P.ProtocolError)) throw err;
              }
            } catch (err) {
              if (!(err instanceof P.ProtocolError)) throw err;
            }
          }
        }
        pos += step;
        assert.ok(d.bufferedBytes <= bound, `buffered ${d.bufferedBytes}`);
      }
    } catch (e) {
      if (!(e instanceof P.ProtocolError)) throw e;
      errors++;
    }
  }
  assert.ok(frames >= 100_000);
  assert.ok(errors > 100 && decoded > 10_000 && triggersParsed > 100, `errors ${errors} decoded ${decoded} triggers ${triggersParsed}`);
});
