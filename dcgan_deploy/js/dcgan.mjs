// dcgan.mjs — the JavaScript runtime of dcgan-deploy: a generator exported to ONNX, in the browser or in Node.
//
//   import * as ort from "onnxruntime-web";                 // or the page's copy of ort.wasm.min.mjs
//   import { loadGenerator } from "./dcgan.mjs";
//   const gen = await loadGenerator("mnist.onnx", { ort });
//   const { rgba, width, height } = await gen.generate(16, 42);   // the same images as Python's generate(16, 42)
//
// The seed -> latent contract of the Python runtime, reproduced bit for bit: numpy's SeedSequence, PCG64,
// standard_normal(dtype=float32) by numpy's float32 ziggurat, uniform(-1, 1) in float64 cast to float32,
// truncation as one float32 multiplication, uint8 as rint((x + 1) * 127.5) in float32 (docs/DESIGN.md).
// The one place JavaScript's arithmetic may differ from numpy's C library is inside the ziggurat's rare
// rejection steps (exp and log1p may round differently in the last bit); how often, and by how much, is
// measured in the tests and stated in the design.

import { FI, INV_R, KI, R, WI } from "./ziggurat.mjs";

export const MAX_SEED = (1n << 64n) - 1n;
const M32 = 0xffffffffn;
const M64 = (1n << 64n) - 1n;
const M128 = (1n << 128n) - 1n;

// ---- numpy's SeedSequence ------------------------------------------------------------------------
const INIT_A = 0x43b0d7e5, MULT_A = 0x931e8875, INIT_B = 0x8b51f9dd, MULT_B = 0x58f38ded;
const MIX_MULT_L = 0xca01f9dd, MIX_MULT_R = 0x4973f715, POOL_SIZE = 4;

function entropyWords(seed) {
  // a non-negative integer -> its 32-bit words, lowest first ([0] for 0)
  let n = BigInt(seed);
  if (n < 0n || n > MAX_SEED) throw new RangeError(`seed must be a whole number from 0 to 2**64 - 1, got ${seed}`);
  if (n === 0n) return [0];
  const words = [];
  while (n > 0n) { words.push(Number(n & M32)); n >>= 32n; }
  return words;
}

/** numpy.random.SeedSequence(seed).generate_state(4, np.uint64), as four BigInts. */
export function seedSequenceState(seed, nWords = 4) {
  const entropy = entropyWords(seed);
  let hashConst = INIT_A;
  const hashmix = (value) => {
    value = (value ^ hashConst) >>> 0;
    hashConst = Math.imul(hashConst, MULT_A) >>> 0;
    value = Math.imul(value, hashConst) >>> 0;
    return (value ^ (value >>> 16)) >>> 0;
  };
  const mix = (x, y) => {
    const r = (Math.imul(MIX_MULT_L, x) - Math.imul(MIX_MULT_R, y)) >>> 0;
    return (r ^ (r >>> 16)) >>> 0;
  };
  const pool = new Array(POOL_SIZE);
  for (let i = 0; i < POOL_SIZE; i++) pool[i] = hashmix(i < entropy.length ? entropy[i] : 0);
  for (let src = 0; src < POOL_SIZE; src++)
    for (let dst = 0; dst < POOL_SIZE; dst++)
      if (src !== dst) pool[dst] = mix(pool[dst], hashmix(pool[src]));
  for (let src = POOL_SIZE; src < entropy.length; src++)
    for (let dst = 0; dst < POOL_SIZE; dst++) pool[dst] = mix(pool[dst], hashmix(entropy[src]));
  let hashB = INIT_B;
  const words32 = [];
  for (let i = 0; i < 2 * nWords; i++) {
    let v = (pool[i % POOL_SIZE] ^ hashB) >>> 0;
    hashB = Math.imul(hashB, MULT_B) >>> 0;
    v = Math.imul(v, hashB) >>> 0;
    words32.push((v ^ (v >>> 16)) >>> 0);
  }
  const out = [];
  for (let i = 0; i < nWords; i++) out.push(BigInt(words32[2 * i]) | (BigInt(words32[2 * i + 1]) << 32n));
  return out;
}

// ---- numpy's PCG64 (XSL-RR 128/64) ---------------------------------------------------------------
const MULT = (2549297995355413924n << 64n) | 4865540595714422341n;

export class PCG64 {
  constructor(seed) {
    const [s0, s1, i0, i1] = seedSequenceState(seed);
    const initstate = (s0 << 64n) | s1;
    const initseq = (i0 << 64n) | i1;
    this.inc = ((initseq << 1n) | 1n) & M128;
    this.state = 0n;
    this.step();
    this.state = (this.state + initstate) & M128;
    this.step();
    this.hasUint32 = false;
    this.uinteger = 0;
  }

  step() { this.state = (this.state * MULT + this.inc) & M128; }

  /** The next 64 random bits, a BigInt. */
  next64() {
    this.step();
    const hi = this.state >> 64n, lo = this.state & M64;
    const x = hi ^ lo, rot = hi >> 58n;
    return ((x >> rot) | (x << ((64n - rot) & 63n))) & M64;
  }

  /** The next 32 random bits (numpy hands out each 64-bit draw as two halves, low first). */
  next32() {
    if (this.hasUint32) { this.hasUint32 = false; return this.uinteger; }
    const next = this.next64();
    this.hasUint32 = true;
    this.uinteger = Number(next >> 32n);
    return Number(next & M32);
  }

  nextFloat() { return Math.fround((this.next32() >>> 8) * (1 / 16777216)); }

  nextDouble() { return Number(this.next64() >> 11n) * (1.0 / 9007199254740992.0); }
}

/** numpy's random_standard_normal_f: one float32 standard normal value. */
export function standardNormalF32(rng) {
  for (;;) {
    const r = rng.next32();
    const idx = r & 0xff;
    const sign = (r >>> 8) & 1;
    const rabs = (r >>> 9) & 0x7fffff;
    let x = Math.fround(rabs * WI[idx]);
    if (sign) x = -x;
    if (rabs < KI[idx]) return x; // 99.3% of the time
    if (idx === 0) {
      for (;;) {
        // -r^-1 * log1pf(-U): float32 arithmetic, as numpy's C
        const xx = Math.fround(-INV_R * Math.fround(Math.log1p(-rng.nextFloat())));
        const yy = Math.fround(-Math.fround(Math.log1p(-rng.nextFloat())));
        if (Math.fround(yy + yy) > Math.fround(xx * xx))
          return ((rabs >>> 8) & 1) ? -Math.fround(R + xx) : Math.fround(R + xx);
      }
    } else if (Math.fround(Math.fround(Math.fround(FI[idx - 1] - FI[idx]) * rng.nextFloat()) + FI[idx]) < Math.exp(-0.5 * x * x)) {
      return x;
    }
  }
}

/** Draws latent rows for one seed, a chunk at a time: ``take(a)`` then ``take(b)`` equals ``take(a + b)``. */
export class LatentStream {
  constructor(seed, latentDim, prior = "normal") {
    if (!["normal", "uniform"].includes(prior)) throw new RangeError(`unknown latent prior ${prior}`);
    this.rng = new PCG64(checkSeed(seed));
    this.latentDim = latentDim;
    this.prior = prior;
  }

  take(n) {
    const out = new Float32Array(n * this.latentDim);
    if (this.prior === "normal") for (let i = 0; i < out.length; i++) out[i] = standardNormalF32(this.rng);
    else for (let i = 0; i < out.length; i++) out[i] = -1.0 + 2.0 * this.rng.nextDouble(); // float64, then float32
    return out;
  }
}

// ---- the input rules (docs/DESIGN.md, "Input rules"; tests/data/input_contract.json holds their test vectors,
// which the Python and the JavaScript runtimes both run) -------------------------------------------------
export const MAX_STRENGTH = 100;
export const MAX_DIRECTIONS = 64;
export const MAX_CLASSES = 1000;
const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

/** A seed: a BigInt or a safe-integer Number from 0 to 2**64 - 1 (no strings, booleans or arrays). */
export function checkSeed(seed) {
  const whole = typeof seed === "bigint" || (typeof seed === "number" && Number.isSafeInteger(seed));
  if (!whole) throw new RangeError(`seed must be a whole number from 0 to 2**64 - 1, got ${describe(seed)}`);
  const s = BigInt(seed);
  if (s < 0n || s > MAX_SEED) throw new RangeError(`seed must be from 0 to 2**64 - 1, got ${s}`);
  return s;
}

/** A truncation psi: a number with 0 < psi <= 1 whose float32 value (the one used) is above 0. */
export function checkTruncation(psi) {
  if (typeof psi !== "number" || !(psi > 0 && psi <= 1) || !(Math.fround(psi) > 0))
    throw new RangeError(`truncation must be a number with 0 < psi <= 1 (1 = off; as float32 above 0), got ${describe(psi)}`);
  return psi;
}

/** An edit strength: a finite number within +-MAX_STRENGTH. */
export function checkStrength(s) {
  if (typeof s !== "number" || !Number.isFinite(s) || Math.abs(s) > MAX_STRENGTH)
    throw new RangeError(`a strength must be a finite number within +-${MAX_STRENGTH}, got ${describe(s)}`);
  return s;
}

/** A direction's name: a letter or digit, then up to 63 of letters, digits, '.', '_', '-'; not all digits. */
export function checkDirectionName(name) {
  if (typeof name !== "string" || !NAME.test(name) || /^[0-9]+$/.test(name))
    throw new RangeError(`a direction's name must be 1-64 letters, digits, '.', '_' or '-' (not all digits), got ${describe(name)}`);
  return name;
}

/** A direction's vector: ``latentDim`` finite numbers of unit norm (within 1e-3). */
export function checkDirectionVector(vector, latentDim) {
  if (!Array.isArray(vector) || vector.length !== latentDim || !vector.every((v) => typeof v === "number" && Number.isFinite(v)))
    throw new RangeError(`a direction's vector must be ${latentDim} finite numbers`);
  const norm = Math.sqrt(vector.reduce((a, v) => a + v * v, 0));
  if (Math.abs(norm - 1) > 1e-3) throw new RangeError(`a direction's vector is not a unit vector (norm ${norm})`);
  return vector;
}

/** The model file's ``directions`` entry: version 1, at most MAX_DIRECTIONS uniquely named sefa/labelled unit vectors. */
export function checkDirections(entry, latentDim) {
  if (!entry || typeof entry !== "object" || entry.version !== 1 || !Array.isArray(entry.directions))
    throw new RangeError("directions must be an object with version 1 and a list of directions");
  if (entry.directions.length > MAX_DIRECTIONS)
    throw new RangeError(`${entry.directions.length} directions; at most ${MAX_DIRECTIONS}`);
  const names = new Set();
  for (const d of entry.directions) {
    if (!d || typeof d !== "object" || !["sefa", "labelled"].includes(d.method))
      throw new RangeError("each direction needs a name and a method (sefa or labelled)");
    checkDirectionName(d.name);
    if (names.has(d.name)) throw new RangeError(`direction ${d.name} is named twice`);
    names.add(d.name);
    checkDirectionVector(d.vector, latentDim);
  }
  return entry;
}

function describe(v) {
  if (typeof v === "string") return JSON.stringify(v.length > 80 ? v.slice(0, 80) + "..." : v);
  if (typeof v === "bigint") return `${v}`;
  try { return JSON.stringify(v) ?? String(v); } catch { return String(v); }
}

/** The truncation contract: float32(psi) * z, in float32 (z itself for psi = 1). */
export function truncate(z, psi = 1) {
  checkTruncation(psi);
  if (psi === 1) return z;
  const p = Math.fround(psi);
  return z.map((v) => Math.fround(p * v));
}

/** ``n`` latents for ``seed``: a Float32Array of n * latentDim, row by row, as Python's ``latents(n, seed)``. */
export function latents(n, seed, latentDim, prior = "normal", truncation = 1) {
  checkCount(n, "n");
  return truncate(new LatentStream(seed, latentDim, prior).take(n), truncation);
}

/** A count (n, frames, batchSize): a whole Number >= 1. */
export function checkCount(n, what = "n") {
  if (!Number.isSafeInteger(n) || n < 1) throw new RangeError(`${what} must be a whole number >= 1, got ${describe(n)}`);
  return n;
}

// ---- images ----------------------------------------------------------------------------------------
function rint(v) {
  // round half to even, as numpy's rint
  const f = Math.floor(v), d = v - f;
  if (d > 0.5) return f + 1;
  if (d < 0.5) return f;
  return f % 2 === 0 ? f : f + 1;
}

/** Float images [n, C, H, W] in [-1, 1] -> uint8 [n, H, W, C], as Python's ``to_uint8``. */
export function toUint8(images, n, c, h, w) {
  const out = new Uint8Array(n * h * w * c);
  for (let i = 0; i < n; i++)
    for (let ch = 0; ch < c; ch++)
      for (let y = 0; y < h; y++)
        for (let x = 0; x < w; x++) {
          const v = rint(Math.fround(Math.fround(images[((i * c + ch) * h + y) * w + x] + 1) * 127.5));
          out[((i * h + y) * w + x) * c + ch] = v < 0 ? 0 : v > 255 ? 255 : v;
        }
  return out;
}

/** uint8 [n, H, W, C] (C = 1 or 3) -> RGBA [n, H, W, 4], for ImageData. */
export function toRGBA(u8, n, h, w, c) {
  const out = new Uint8ClampedArray(n * h * w * 4);
  for (let p = 0; p < n * h * w; p++) {
    for (let k = 0; k < 3; k++) out[4 * p + k] = u8[p * c + (c === 1 ? 0 : k)];
    out[4 * p + 3] = 255;
  }
  return out;
}

// ---- the model file's metadata (a small reader of ONNX's protobuf: ModelProto.metadata_props) --------
function varint(buf, pos) {
  let value = 0, mul = 1, b;
  do {
    if (pos >= buf.length) throw new Error("truncated varint");
    b = buf[pos++];
    value += (b & 0x7f) * mul;
    mul *= 128;
  } while (b & 0x80);
  return [value, pos];
}

function* fields(buf, start, end) {
  let pos = start;
  while (pos < end) {
    let tag;
    [tag, pos] = varint(buf, pos);
    const number = Math.floor(tag / 8), wire = tag & 7;
    if (wire === 0) { let v; [v, pos] = varint(buf, pos); yield [number, wire, v]; }
    else if (wire === 1) { pos += 8; }
    else if (wire === 5) { pos += 4; }
    else if (wire === 2) { let size; [size, pos] = varint(buf, pos); yield [number, wire, [pos, pos + size]]; pos += size; }
    else throw new Error(`unsupported wire type ${wire}`);
  }
}

/** The ``metadata_props`` of an ONNX file (bytes), as an object of strings. */
export function readMetadata(bytes) {
  const buf = bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes);
  const text = new TextDecoder();
  const meta = {};
  for (const [number, wire, span] of fields(buf, 0, buf.length)) {
    if (number !== 14 || wire !== 2) continue;
    let key = "", value = "";
    for (const [n, w, s] of fields(buf, span[0], span[1])) {
      if (w !== 2) continue;
      if (n === 1) key = text.decode(buf.subarray(s[0], s[1]));
      if (n === 2) value = text.decode(buf.subarray(s[0], s[1]));
    }
    meta[key] = value;
  }
  return meta;
}

// ---- the graph: no random or training-only ops, in subgraphs and local functions too (as the Python runtime) -----
const FORBIDDEN_OPS = new Set(["RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial",
                               "Bernoulli", "Dropout"]);

function* graphNodes(buf, start, end, depth) {
  if (depth > 32) throw new Error("subgraphs nested more than 32 deep");
  for (const [number, wire, span] of fields(buf, start, end)) if (number === 1 && wire === 2) yield* node(buf, span, depth);
}

function* node(buf, span, depth) {
  const text = new TextDecoder();
  let op = "", domain = "", training = false;
  const subgraphs = [];
  for (const [n, w, v] of fields(buf, span[0], span[1])) {
    if (n === 4 && w === 2) op = text.decode(buf.subarray(v[0], v[1]));
    else if (n === 7 && w === 2) domain = text.decode(buf.subarray(v[0], v[1]));
    else if (n === 5 && w === 2) {
      let name = "", int = 0;
      for (const [an, aw, av] of fields(buf, v[0], v[1])) {
        if (an === 1 && aw === 2) name = text.decode(buf.subarray(av[0], av[1]));
        else if (an === 3 && aw === 0) int = av;
        else if ((an === 6 || an === 11) && aw === 2) subgraphs.push(av);
      }
      if (name === "training_mode" && int) training = true;
    }
  }
  yield { op, domain, training };
  for (const g of subgraphs) yield* graphNodes(buf, g[0], g[1], depth + 1);
}

/** Refuse a graph that holds random or training-only ops: the same seed must give the same bytes. */
export function checkGraph(bytes, where = "model") {
  const buf = bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes);
  const found = new Set();
  for (const [number, wire, span] of fields(buf, 0, buf.length)) {
    if (wire !== 2) continue;
    let nodes = [];
    if (number === 7) nodes = graphNodes(buf, span[0], span[1], 0);
    else if (number === 25) nodes = (function* () {  // FunctionProto: node = 7
      for (const [n, w, v] of fields(buf, span[0], span[1])) if (n === 7 && w === 2) yield* node(buf, v, 1);
    })();
    for (const nd of nodes) {
      if ((nd.domain === "" || nd.domain === "ai.onnx") && FORBIDDEN_OPS.has(nd.op)) found.add(nd.op);
      if (nd.op === "BatchNormalization" && nd.training) found.add("training-mode BatchNormalization");
    }
  }
  if (found.size) throw new Error(`${where}: the graph holds random or training-only ops (${[...found].sort().join(", ")}); ` +
                                  "a generator must compute the same image for the same latent every time");
}

const REQUIRED = ["architecture", "latent_dim", "latent_prior", "channels", "height", "width"];

function checkMetadata(meta, where) {
  if (meta["dcgan_deploy.format"] !== "1") throw new Error(`${where}: not a dcgan-deploy generator (format ${meta["dcgan_deploy.format"]})`);
  for (const k of REQUIRED) if (!(k in meta)) throw new Error(`${where}: metadata lacks ${k}`);
  for (const [k, hi] of [["latent_dim", 4096], ["channels", 3], ["height", 1024], ["width", 1024]]) {
    if (!/^[0-9]+$/.test(meta[k]) || +meta[k] < 1 || +meta[k] > hi) throw new Error(`${where}: metadata ${k} is not 1 to ${hi}`);
  }
  if (!["normal", "uniform"].includes(meta.latent_prior)) throw new Error(`${where}: unknown latent_prior`);
  if ("classes" in meta) checkClasses(meta.classes, where);
}

/** A class-conditional model's ``classes``: a JSON list of 2 to 1000 different, printable names. */
export function checkClasses(text, where = "model") {
  let v;
  try { v = JSON.parse(text); } catch { v = null; }
  const ok = Array.isArray(v) && v.length >= 2 && v.length <= MAX_CLASSES && new Set(v).size === v.length
    && v.every((x) => typeof x === "string" && x.length > 0 && x.length <= 100 && !/[\x00-\x1f\x7f]/.test(x));
  if (!ok) throw new Error(`${where}: metadata 'classes' must be a list of 2 to ${MAX_CLASSES} different, printable names`);
  return v;
}

/**
 * A conditional model's labels when none are given, as Python's ``latent.seed_labels``: image ``i`` of
 * ``seed`` (from ``start``) is of class (seed + start + i) mod k. BigInt64Array of ``n``.
 */
export function seedLabels(n, seed, k, start = 0) {
  const first = Number((checkSeed(seed) + BigInt(start)) % BigInt(k));
  const out = new BigInt64Array(checkCount(n, "n"));
  for (let i = 0; i < out.length; i++) out[i] = BigInt((first + i) % k);
  return out;
}

// ---- the generator -------------------------------------------------------------------------------
export class Generator {
  constructor(session, metadata, ort, source) {
    this.session = session;
    this.metadata = metadata;
    this.ort = ort;
    this.source = source;
    this.latentDim = +metadata.latent_dim;
    this.prior = metadata.latent_prior;
    this.channels = +metadata.channels;
    this.height = +metadata.height;
    this.width = +metadata.width;
    this.parity = metadata.parity ? JSON.parse(metadata.parity) : {};
    let d = null;
    try {
      d = metadata.directions ? checkDirections(JSON.parse(metadata.directions), this.latentDim) : null;
    } catch (e) { throw new Error(`${source}: metadata 'directions': ${e.message}`); }
    this.directions = d ? d.directions.map((x) => ({ ...x, vector: Float32Array.from(x.vector) })) : [];
    this.classes = metadata.classes ? checkClasses(metadata.classes, source) : [];  // label i = classes[i]
  }

  /** A class by index (7, "7") or name -> its index; RangeError naming the classes otherwise. */
  classIndex(label) {
    if (typeof label === "string" && this.classes.includes(label)) return this.classes.indexOf(label);
    const i = typeof label === "string" && /^[0-9]+$/.test(label) ? Number(label) : label;
    if (Number.isInteger(i) && i >= 0 && i < this.classes.length) return i;
    throw new RangeError(`unknown class ${describe(label)}: this model's classes are ${this.classes.slice(0, 20).join(", ")} `
      + `(or their indices 0 to ${this.classes.length - 1})`);
  }

  /** Labels of images start .. start + count - 1 of ``seed``: ``label`` one class for all, one per image (an
   *  array of the run's length, or of 1), or undefined: the seed's (``seedLabels``). Null for an unconditional model. */
  labels(count, seed, label, start = 0, total = count) {
    if (!this.classes.length) {
      if (label !== undefined && label !== null) throw new RangeError(`${this.source} is not class-conditional: it takes no label`);
      return null;
    }
    if (label === undefined || label === null) return seedLabels(count, seed, this.classes.length, start);
    if (typeof label === "string" || typeof label === "number") return new BigInt64Array(count).fill(BigInt(this.classIndex(label)));
    if (!Array.isArray(label)) throw new RangeError(`label must be a class, or one class per image, got ${describe(label)}`);
    if (label.length !== 1 && label.length !== total) throw new RangeError(`${label.length} labels for ${total} images; give one, or one per image`);
    const picked = label.length === 1 ? Array(count).fill(label[0]) : label.slice(start, start + count);
    return BigInt64Array.from(picked, (x) => BigInt(this.classIndex(x)));
  }

  latents(n, seed, truncation = 1) { return latents(n, seed, this.latentDim, this.prior, truncation); }

  /** Latents (Float32Array of n * latentDim) -> float images [n, C, H, W] in [-1, 1], one session run. */
  async run(z, labels = null) {
    if (!(z instanceof Float32Array) || z.length === 0 || z.length % this.latentDim !== 0)
      throw new RangeError(`latents must be a Float32Array of n * ${this.latentDim} values`);
    if (!z.every(Number.isFinite)) throw new RangeError("latents contain NaN or infinite values");
    const n = z.length / this.latentDim;
    const feeds = { z: new this.ort.Tensor("float32", z, [n, this.latentDim]) };
    if (this.classes.length) {
      if (!(labels instanceof BigInt64Array) || labels.length !== n || labels.some((y) => y < 0n || y >= BigInt(this.classes.length)))
        throw new RangeError(`labels must be a BigInt64Array of ${n} class indices from 0 to ${this.classes.length - 1}`);
      feeds.label = new this.ort.Tensor("int64", labels, [n]);
    } else if (labels !== null && labels !== undefined) throw new RangeError(`${this.source} is not class-conditional: it takes no label`);
    const out = await this.session.run(feeds);
    const image = out.image.data;
    if (!image.every(Number.isFinite)) throw new Error(`${this.source}: the model produced NaN or infinite values`);
    return image;
  }

  /** Images of given latents, ``batchSize`` per session run: {float, uint8, rgba, n, width, height, channels}. */
  async images(z, batchSize = 64, label = undefined, seed = 0n) {
    checkCount(batchSize, "batchSize");
    const n = z.length / this.latentDim, per = this.channels * this.height * this.width;
    this.labels(n, seed, label);  // checked before anything runs
    const float = new Float32Array(n * per);
    for (let i = 0; i < n; i += batchSize) {
      const m = Math.min(batchSize, n - i);
      float.set(await this.run(z.subarray(i * this.latentDim, (i + m) * this.latentDim), this.labels(m, seed, label, i, n)),
                i * per);
    }
    const uint8 = toUint8(float, n, this.channels, this.height, this.width);
    return { n, width: this.width, height: this.height, channels: this.channels, float, uint8,
             get rgba() { return toRGBA(uint8, n, this.height, this.width, this.channels); } };
  }

  /** ``n`` images for ``seed``: the same as Python's ``Generator.generate(n, seed, truncation=...)``. */
  async generate(n, seed, { truncation = 1, batchSize = 64, label = undefined } = {}) {
    return this.images(this.latents(checkCount(n, "n"), seed, truncation), batchSize, label, seed);
  }

  /** A walk through the seeds' first latents, ``frames`` frames from each to the next, then the last seed. */
  async interpolate(seeds, frames, { method = "slerp", truncation = 1, label = undefined } = {}) {
    if (seeds.length < 2) throw new RangeError("an interpolation needs at least two seeds");
    checkCount(frames, "frames");
    const total = (seeds.length - 1) * frames + 1;
    if (total > 1000) throw new RangeError(`${total} frames requested; the limit is 1000`);
    const points = seeds.map((s) => this.latents(1, s, truncation));
    const d = this.latentDim, z = new Float32Array(total * d);
    let row = 0;
    for (let k = 0; k + 1 < points.length; k++)
      for (let f = 0; f < frames; f++) z.set(interpolateOne(points[k], points[k + 1], f / frames, method), d * row++);
    z.set(points[points.length - 1], d * row);
    // a conditional model walks in one class: ``label``, or the first seed's
    const one = this.classes.length ? Number(this.labels(1, seeds[0], label === undefined ? undefined : [label])[0]) : undefined;
    return this.images(z, 64, one);
  }

  /** A latent ``z`` moved along named directions: ``moves`` = [[name, strength], ...]. */
  edit(z, moves) {
    const out = Float32Array.from(z);
    for (const [name, s] of moves) {
      const dir = this.directions.find((x) => x.name === name);
      if (!dir) throw new RangeError(`unknown direction ${describe(name)}`);
      checkStrength(s);
      for (let i = 0; i < out.length; i++) out[i] = Math.fround(out[i] + Math.fround(s * dir.vector[i]));
    }
    return out;
  }
}

function interpolateOne(a, b, t, method) {
  const out = new Float32Array(a.length);
  if (method === "slerp") {
    let dot = 0, na = 0, nb = 0;
    for (let i = 0; i < a.length; i++) { dot += a[i] * b[i]; na += a[i] * a[i]; nb += b[i] * b[i]; }
    const omega = Math.acos(Math.min(1, Math.max(-1, dot / Math.max(Math.sqrt(na) * Math.sqrt(nb), 1e-12))));
    const s = Math.sin(omega);
    if (s >= 1e-6) {
      for (let i = 0; i < a.length; i++) out[i] = (Math.sin((1 - t) * omega) / s) * a[i] + (Math.sin(t * omega) / s) * b[i];
      return out;
    }
  } else if (method !== "lerp") throw new RangeError(`unknown interpolation ${method}; slerp or lerp`);
  for (let i = 0; i < a.length; i++) out[i] = (1 - t) * a[i] + t * b[i];
  return out;
}

/**
 * Open a generator: ``source`` a URL, a file path (Node) or the file's bytes. ``options.ort``: the
 * onnxruntime-web (or onnxruntime-node) module; ``options.executionProviders``: e.g. ["wasm"] or ["webgpu"].
 */
export async function loadGenerator(source, options = {}) {
  const ort = options.ort || globalThis.ort;
  if (!ort) throw new Error("loadGenerator needs onnxruntime: pass { ort } (onnxruntime-web or onnxruntime-node)");
  let bytes = source;
  if (typeof source === "string" || source instanceof URL) {
    if (typeof window === "undefined" && !/^https?:/.test(String(source))) {
      const { readFile } = await import("node:fs/promises");
      bytes = await readFile(source);
    } else {
      const response = await fetch(source);
      if (!response.ok) throw new Error(`${source}: ${response.status} ${response.statusText}`);
      bytes = await response.arrayBuffer();
    }
  }
  const u8 = new Uint8Array(bytes.buffer ? bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength) : bytes);
  const where = typeof source === "string" ? source : "model";
  const metadata = readMetadata(u8);
  checkMetadata(metadata, where);
  checkGraph(u8, where);
  const providers = options.executionProviders || ["wasm"];
  const gate = metadata.web_gate ? JSON.parse(metadata.web_gate) : {};
  for (const ep of providers) {
    const verdict = ep === "wasm" ? gate["wasm-1-thread"] : gate[ep];
    if (verdict === "failed") throw new Error(`${where}: this model failed the browser parity gate on ${ep}; use another backend`);
  }
  const session = await ort.InferenceSession.create(u8, { executionProviders: providers, graphOptimizationLevel: "all",
    logSeverityLevel: 3 });  // errors only, as the Python runtime
  const inputs = metadata.classes ? "z,label" : "z";
  if (session.inputNames.join() !== inputs || session.outputNames.join() !== "image")
    throw new Error(`${where}: the graph must have input${metadata.classes ? "s 'z' and 'label'" : " 'z'"} and one output 'image'`);
  return new Generator(session, metadata, ort, where);
}
