// The form's wire core: canonical protobuf bytes, DSSE PAE signatures, restricted reports (HPKE)
// and the checks of a mandate, a node accreditation and a receipt. No DOM, no storage: the page
// (app.ts) and the cross-language test (tests/integration/test_observer_web_crosslang.py) call
// the same functions.
//
// Canonical bytes: the strict Python decoder (bus/model.py) re-serializes what it parses and
// refuses anything else. @bufbuild/protobuf writes fields in field-number order and leaves
// implicit-presence fields at their zero value out, as upb does; the two places they could
// differ are handled here: a -0.0 double (upb writes it, protobuf-es does not) is made +0.0,
// and text must be well-formed Unicode (a lone surrogate would be written as U+FFFD).
import { create, toBinary, fromBinary } from "@bufbuild/protobuf";
import { CipherSuite, DhkemX25519HkdfSha256, HkdfSha256, Aes256Gcm } from "@hpke/core";
import { SignedEnvelopeSchema, SignatureSchema } from "./gen/obus/v1/envelope_pb";
import {
  ObserverReportSchema,
  LocationSchema,
  CasualtiesSchema,
  AttachmentSchema,
  type ObserverReport,
} from "./gen/obus/v1/report_pb";
import { ReceiptSchema, type Receipt } from "./gen/obus/v1/receipt_pb";
import {
  MandateSchema,
  AccreditationSchema,
  type Mandate,
  type Accreditation,
} from "./gen/obus/v1/trust_pb";
import {
  SealedReportSchema,
  SealedRecipientSchema,
  EncryptionKeySchema,
  type EncryptionKey,
} from "./gen/obus/v1/sealed_pb";
import rules from "../build/rules.json";

export { rules };
export type { ObserverReport, Receipt, Mandate, Accreditation, EncryptionKey };

const utf8 = new TextEncoder();

/** A refusal with a machine-readable reason (the codes of bus/errors.py where they exist). */
export class CheckError extends Error {
  constructor(
    readonly reason: string,
    message: string,
  ) {
    super(message);
  }
}

export function hex(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

export function unhex(text: string): Uint8Array {
  if (!/^([0-9a-f]{2})*$/.test(text)) throw new CheckError("malformed", "not lower-case hex");
  const out = new Uint8Array(text.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(text.slice(2 * i, 2 * i + 2), 16);
  return out;
}

export function b64(bytes: Uint8Array): string {
  let s = "";
  for (const b of bytes) s += String.fromCharCode(b);
  return btoa(s);
}

export function unb64(text: string): Uint8Array {
  return Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
}

function concat(...parts: Uint8Array[]): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

function buf(bytes: Uint8Array): Uint8Array<ArrayBuffer> {
  return new Uint8Array(bytes);
}

export async function sha256(data: Uint8Array): Promise<Uint8Array> {
  return new Uint8Array(await crypto.subtle.digest("SHA-256", buf(data)));
}

export function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((v, i) => v === b[i]);
}

/** DSSE v1 PAE(type, body): the exact bytes every envelope signature covers (bus/crypto.py). */
export function pae(payloadType: string, payload: Uint8Array): Uint8Array<ArrayBuffer> {
  const type = utf8.encode(payloadType);
  return concat(
    utf8.encode(`DSSEv1 ${type.length} `),
    type,
    utf8.encode(` ${payload.length} `),
    payload,
  );
}

// -- keys ---------------------------------------------------------------------------------------

/** An observer key: WebCrypto Ed25519, the private half non-extractable. */
export interface DeviceKey {
  privateKey: CryptoKey;
  publicKey: Uint8Array; // raw 32 bytes
  keyId: Uint8Array; // SHA-256 of the raw public key
}

export async function generateKey(): Promise<DeviceKey> {
  const pair = (await crypto.subtle.generateKey({ name: "Ed25519" }, false, [
    "sign",
    "verify",
  ])) as CryptoKeyPair;
  const publicKey = new Uint8Array(await crypto.subtle.exportKey("raw", pair.publicKey));
  return { privateKey: pair.privateKey, publicKey, keyId: await sha256(publicKey) };
}

export async function signBytes(key: DeviceKey, message: Uint8Array): Promise<Uint8Array> {
  return new Uint8Array(await crypto.subtle.sign({ name: "Ed25519" }, key.privateKey, buf(message)));
}

export async function verifyBytes(
  publicKey: Uint8Array,
  message: Uint8Array,
  signature: Uint8Array,
): Promise<boolean> {
  const key = await crypto.subtle.importKey("raw", buf(publicKey), { name: "Ed25519" }, false, [
    "verify",
  ]);
  return crypto.subtle.verify({ name: "Ed25519" }, key, buf(signature), buf(message));
}

/** A singly signed envelope's canonical bytes (bus.crypto.sign_single). */
export async function signEnvelope(
  key: DeviceKey,
  payloadType: string,
  payload: Uint8Array,
): Promise<Uint8Array> {
  const sig = await signBytes(key, pae(payloadType, payload));
  return toBinary(
    SignedEnvelopeSchema,
    create(SignedEnvelopeSchema, {
      payloadType,
      payload,
      signatures: [create(SignatureSchema, { keyId: key.keyId, sig })],
    }),
  );
}

export interface OpenedEnvelope {
  payloadType: string;
  payload: Uint8Array;
  keyId: Uint8Array;
  sig: Uint8Array;
}

/** Decode an envelope that must carry exactly one signature of the given payload type. */
export function openSingle(raw: Uint8Array, payloadType: string): OpenedEnvelope {
  let env;
  try {
    env = fromBinary(SignedEnvelopeSchema, raw);
  } catch (e) {
    throw new CheckError("malformed", `envelope does not parse: ${e}`);
  }
  if (env.payloadType !== payloadType)
    throw new CheckError("wrong_payload_type", `${env.payloadType} is not ${payloadType}`);
  if (env.signatures.length !== 1)
    throw new CheckError("missing_signature", "exactly one signature is required");
  const s = env.signatures[0];
  return { payloadType, payload: env.payload, keyId: s.keyId, sig: s.sig };
}

// -- reports ------------------------------------------------------------------------------------

/** What the observer fills in; the device adds identity, id, time and chain position. */
export interface Draft {
  zone: string;
  observedAtMs: number;
  lat: number;
  lon: number;
  precisionM: number;
  place: string;
  category: number;
  subType: string;
  severity: number;
  confidence: number;
  killed: number;
  injured: number;
  missing: number;
  civilian: boolean;
  narrative: string;
  attachments: { sha256: Uint8Array; size: number; mediaType: string; name: string }[];
  corrects: string;
}

export interface Identity {
  observerId: string;
  org: string;
  mandateId: string;
}

export interface ChainHead {
  seq: number;
  digest: Uint8Array;
}

const plusZero = (x: number): number => (Object.is(x, -0) ? 0 : x);

/** The canonical ObserverReport bytes (location and casualties always present, as in Python). */
export function encodeReport(
  who: Identity,
  d: Draft,
  reportId: string,
  signedAtMs: number,
  head: ChainHead | null,
): Uint8Array {
  const msg = create(ObserverReportSchema, {
    reportId,
    mandateId: who.mandateId,
    zone: d.zone,
    observerId: who.observerId,
    org: who.org,
    seq: BigInt(head === null ? 1 : head.seq + 1),
    prevDigest: head === null ? new Uint8Array() : head.digest,
    observedAtMs: BigInt(d.observedAtMs),
    signedAtMs: BigInt(signedAtMs),
    location: create(LocationSchema, {
      lat: plusZero(d.lat),
      lon: plusZero(d.lon),
      precisionM: d.precisionM,
      place: d.place,
    }),
    category: d.category,
    subType: d.subType,
    severity: d.severity,
    confidence: plusZero(d.confidence),
    casualties: create(CasualtiesSchema, {
      killed: d.killed,
      injured: d.injured,
      missing: d.missing,
      civilian: d.civilian,
    }),
    narrative: d.narrative,
    attachments: d.attachments.map((a) =>
      create(AttachmentSchema, {
        sha256: a.sha256,
        size: BigInt(a.size),
        mediaType: a.mediaType,
        name: a.name,
      }),
    ),
    corrects: d.corrects,
  });
  return toBinary(ObserverReportSchema, msg);
}

export function decodeReport(payload: Uint8Array): ObserverReport {
  return fromBinary(ObserverReportSchema, payload);
}

/** A UUIDv7 (RFC 9562) for the report id, from the signing time and 74 random bits. */
export function uuid7(unixMs: number): string {
  const b = crypto.getRandomValues(new Uint8Array(16));
  let ms = unixMs;
  for (let i = 5; i >= 0; i--) {
    b[i] = ms % 256;
    ms = Math.floor(ms / 256);
  }
  b[6] = 0x70 | (b[6] & 0x0f);
  b[8] = 0x80 | (b[8] & 0x3f);
  const h = hex(b);
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

export interface Signed {
  reportId: string;
  seq: number;
  envelope: Uint8Array;
  digest: Uint8Array;
  sealedFor: string[];
}

/** Sign the draft as the next link after ``head``: a plain report, or a restricted one when
 * ``recipients`` are given (bus.sign.ReportSigner.sign / sign_sealed). */
export async function signReport(
  key: DeviceKey,
  who: Identity,
  d: Draft,
  reportId: string,
  signedAtMs: number,
  head: ChainHead | null,
  recipients: EncryptionKey[] = [],
): Promise<Signed> {
  const payload = encodeReport(who, d, reportId, signedAtMs, head);
  const seq = head === null ? 1 : head.seq + 1;
  let envelope: Uint8Array;
  if (recipients.length === 0) {
    envelope = await signEnvelope(key, rules.payload_types.report, payload);
  } else {
    const sealed = await sealReport(payload, who, d, reportId, signedAtMs, head, recipients);
    envelope = await signEnvelope(key, rules.payload_types.sealed_report, sealed);
  }
  return {
    reportId,
    seq,
    envelope,
    digest: await sha256(envelope),
    sealedFor: recipients.map((r) => r.org),
  };
}

// -- restricted reports (bus/sealed.py) --------------------------------------------------------

const suite = new CipherSuite({
  kem: new DhkemX25519HkdfSha256(),
  kdf: new HkdfSha256(),
  aead: new Aes256Gcm(),
});

async function hmacSha256(key: Uint8Array, message: Uint8Array): Promise<Uint8Array> {
  const k = await crypto.subtle.importKey("raw", buf(key), { name: "HMAC", hash: "SHA-256" }, false, [
    "sign",
  ]);
  return new Uint8Array(await crypto.subtle.sign("HMAC", k, buf(message)));
}

/** bus.sealed.bucket_size */
export function bucketSize(n: number): number {
  const s = rules.sealed;
  if (n <= s.smallest_bucket) return s.smallest_bucket;
  if (n <= s.largest_power_of_two_bucket) return 2 ** Math.ceil(Math.log2(n));
  return Math.ceil(n / s.largest_power_of_two_bucket) * s.largest_power_of_two_bucket;
}

/** The SealedReport bytes of a report's canonical bytes, for the recipients' current keys. */
export async function sealReport(
  content: Uint8Array,
  who: Identity,
  d: Draft,
  reportId: string,
  signedAtMs: number,
  head: ChainHead | null,
  recipients: EncryptionKey[],
): Promise<Uint8Array> {
  const s = rules.sealed;
  const seq = head === null ? 1 : head.seq + 1;
  const orgs = recipients.map((r) => r.org);
  if (recipients.length < 1 || recipients.length > rules.limits.max_recipients)
    throw new CheckError("invalid_field", "recipients: 1 to the limit of organizations");
  if (new Set(orgs).size !== orgs.length)
    throw new CheckError("invalid_field", "recipients: an organization is named twice");
  const cek = crypto.getRandomValues(new Uint8Array(s.content_key_bytes));
  const nonce = crypto.getRandomValues(new Uint8Array(s.nonce_bytes));
  const context = utf8.encode(`${s.context_prefix}|${reportId}|${who.observerId}|${who.org}|${seq}`);
  const n = content.length + 1;
  const padded = new Uint8Array(bucketSize(n));
  padded.set(content);
  padded[content.length] = s.pad_marker;
  const aeadKey = await crypto.subtle.importKey(
    "raw",
    buf(await hmacSha256(cek, concat(utf8.encode("encrypt|"), context))),
    "AES-GCM",
    false,
    ["encrypt"],
  );
  const ciphertext = new Uint8Array(
    await crypto.subtle.encrypt({ name: "AES-GCM", iv: nonce, additionalData: buf(context) }, aeadKey, padded),
  );
  const wrapped = [];
  for (const ek of recipients) {
    const pk = await suite.kem.deserializePublicKey(buf(ek.publicKey).buffer);
    const sender = await suite.createSenderContext({
      recipientPublicKey: pk,
      info: buf(utf8.encode(s.hpke_info)).buffer,
    });
    const wrappedKey = new Uint8Array(
      await sender.seal(buf(cek).buffer, buf(utf8.encode(`${reportId}|${ek.org}`)).buffer),
    );
    wrapped.push(
      create(SealedRecipientSchema, {
        org: ek.org,
        keyId: await sha256(ek.publicKey),
        enc: new Uint8Array(sender.enc),
        wrappedKey,
      }),
    );
  }
  return toBinary(
    SealedReportSchema,
    create(SealedReportSchema, {
      reportId,
      mandateId: who.mandateId,
      zone: d.zone,
      observerId: who.observerId,
      org: who.org,
      seq: BigInt(seq),
      prevDigest: head === null ? new Uint8Array() : head.digest,
      signedAtMs: BigInt(signedAtMs),
      recipients: wrapped,
      nonce,
      ciphertext,
      keyCommitment: await hmacSha256(cek, concat(utf8.encode("commit|"), context)),
    }),
  );
}

// -- trust: mandate, accreditations, encryption keys, receipts --------------------------------

export interface VerifiedMandate {
  mandate: Mandate;
  fingerprint: string; // SHA-256 of the signed mandate file, hex
}

/** The out-of-band mandate file: a threshold of its organizations' root keys signed it
 * (bus.trust.verify_mandate for a first version). */
export async function verifyMandate(raw: Uint8Array, nowMs: number): Promise<VerifiedMandate> {
  let env;
  try {
    env = fromBinary(SignedEnvelopeSchema, raw);
  } catch (e) {
    throw new CheckError("malformed", `not a signed mandate: ${e}`);
  }
  if (env.payloadType !== rules.payload_types.mandate)
    throw new CheckError("wrong_payload_type", `${env.payloadType} is not a mandate`);
  const mandate = fromBinary(MandateSchema, env.payload);
  const signedBy = new Set<string>();
  for (const s of env.signatures) {
    for (const o of mandate.organizations) {
      if (!equalBytes(await sha256(o.rootPublicKey), s.keyId)) continue;
      if (await verifyBytes(o.rootPublicKey, pae(env.payloadType, env.payload), s.sig))
        signedBy.add(o.org);
    }
  }
  if (signedBy.size < mandate.threshold)
    throw new CheckError(
      "threshold_not_met",
      `signed by ${signedBy.size} organizations, ${mandate.threshold} needed`,
    );
  if (nowMs > Number(mandate.notAfterMs))
    throw new CheckError("mandate_expired", "the mandate has ended");
  return { mandate, fingerprint: hex(await sha256(raw)) };
}

async function rootSigned(
  raw: Uint8Array,
  payloadType: string,
  mandate: Mandate,
  org: string,
): Promise<Uint8Array> {
  const env = openSingle(raw, payloadType);
  const o = mandate.organizations.find((x) => x.org === org);
  if (o === undefined) throw new CheckError("wrong_org", `${org} is not in the mandate`);
  if (!equalBytes(await sha256(o.rootPublicKey), env.keyId))
    throw new CheckError("unknown_key", `not signed by ${org}'s root key`);
  if (!(await verifyBytes(o.rootPublicKey, pae(payloadType, env.payload), env.sig)))
    throw new CheckError("bad_signature", "root signature does not verify");
  return env.payload;
}

/** GET /v1/node: the gateway's NODE accreditation by ``org``'s root key. */
export async function verifyNodeAccreditation(
  raw: Uint8Array,
  mandate: Mandate,
  org: string,
): Promise<Accreditation> {
  const peek = fromBinary(AccreditationSchema, openSingle(raw, rules.payload_types.accreditation).payload);
  const payload = await rootSigned(raw, rules.payload_types.accreditation, mandate, peek.org);
  const acc = fromBinary(AccreditationSchema, payload);
  if (acc.mandateId !== mandate.mandateId) throw new CheckError("wrong_mandate", acc.mandateId);
  if (acc.org !== org || acc.role !== rules.roles.node)
    throw new CheckError("wrong_role", `gateway key is ${acc.org}/${acc.role}, not ${org}/node`);
  return acc;
}

/** An organization's published encryption key, signed by its root key. */
export async function verifyEncryptionKey(raw: Uint8Array, mandate: Mandate): Promise<EncryptionKey> {
  const peek = fromBinary(EncryptionKeySchema, openSingle(raw, rules.payload_types.encryption_key).payload);
  const payload = await rootSigned(raw, rules.payload_types.encryption_key, mandate, peek.org);
  const ek = fromBinary(EncryptionKeySchema, payload);
  if (ek.mandateId !== mandate.mandateId) throw new CheckError("wrong_mandate", ek.mandateId);
  if (ek.publicKey.length !== 32) throw new CheckError("invalid_field", "public_key: 32 bytes");
  return ek;
}

/** An encryption key as the gateway lists it (GET /v1/recipients). */
export function encryptionKey(
  org: string,
  publicKey: Uint8Array,
  mandateId: string,
  serial: number,
  notBeforeMs: number,
  notAfterMs: number,
): EncryptionKey {
  return create(EncryptionKeySchema, {
    org, publicKey, mandateId, serial: BigInt(serial),
    notBeforeMs: BigInt(notBeforeMs), notAfterMs: BigInt(notAfterMs),
  });
}

/** bus.receipt.verify_receipt with the envelope delivered: signed by the accredited node key,
 * naming that key, node and organization, issued inside the key's validity, and answering
 * exactly this envelope (digest, report id, observer, seq, organization). */
export async function verifyReceipt(
  raw: Uint8Array,
  node: Accreditation,
  mandate: Mandate,
  envelope: Uint8Array,
  expect: { reportId: string; observerId: string; seq: number; org: string },
): Promise<Receipt> {
  const env = openSingle(raw, rules.payload_types.receipt);
  if (!equalBytes(env.keyId, await sha256(node.publicKey)))
    throw new CheckError("unknown_key", "receipt signed by another key than the gateway's node");
  if (!(await verifyBytes(node.publicKey, pae(env.payloadType, env.payload), env.sig)))
    throw new CheckError("bad_signature", "receipt signature does not verify");
  const r = fromBinary(ReceiptSchema, env.payload);
  if (!equalBytes(r.nodeKeyId, env.keyId) || r.nodeId !== node.subjectId)
    throw new CheckError("subject_mismatch", "receipt names another node");
  if (r.org !== node.org) throw new CheckError("wrong_org", r.org);
  if (r.mandateId !== mandate.mandateId) throw new CheckError("wrong_mandate", r.mandateId);
  if (r.issuedAtMs < node.notBeforeMs || r.issuedAtMs > node.notAfterMs)
    throw new CheckError("key_expired", "receipt issued outside the node key's validity");
  if (!equalBytes(r.envelopeDigest, await sha256(envelope)))
    throw new CheckError("receipt_mismatch", "receipt names another envelope digest");
  const mine = [expect.reportId, expect.observerId, expect.seq, expect.org].join("/");
  const theirs = [r.reportId, r.observerId, Number(r.seq), r.org].join("/");
  if (mine !== theirs) throw new CheckError("receipt_mismatch", `receipt names ${theirs}`);
  return r;
}

export function decodeAccreditation(payload: Uint8Array): Accreditation {
  return fromBinary(AccreditationSchema, payload);
}

// -- the observer's chain head as the gateway signs it (GET /v1/observers/{id}/head) --------

/** The head statement as served: JSON of the signed fields plus the node's signature. */
export interface HeadDoc {
  org: string;
  observer_id: string;
  seq: number;
  digest_b64: string;
  as_of_ms: number;
  node_key_id_b64: string;
  signature_b64: string;
}

/** nodes.gateway.service.head_payload: the canonical JSON the node key signs. */
export function headPayload(d: HeadDoc): Uint8Array {
  const body = {
    as_of_ms: d.as_of_ms,
    digest_b64: d.digest_b64,
    node_key_id_b64: d.node_key_id_b64,
    observer_id: d.observer_id,
    org: d.org,
    seq: d.seq,
  };
  return utf8.encode(canonicalJson(body));
}

/** Check a served chain head: signed by the gateway's accredited node key (``node``, from
 * verifyNodeAccreditation) over its canonical bytes, naming this observer and organization;
 * seq 0 with an empty digest means no report yet (returns null). A new device continues the
 * chain after the head returned. */
export async function verifyHead(
  d: HeadDoc,
  node: Accreditation,
  who: { observerId: string; org: string },
): Promise<ChainHead | null> {
  const isInt = (x: unknown): x is number => Number.isSafeInteger(x) && (x as number) >= 0;
  if (typeof d !== "object" || d === null || !isInt(d.seq) || !isInt(d.as_of_ms))
    throw new CheckError("malformed", "not a chain head statement");
  for (const k of ["org", "observer_id", "digest_b64", "node_key_id_b64", "signature_b64"] as const)
    if (typeof d[k] !== "string") throw new CheckError("malformed", `${k} is not text`);
  if (d.org !== who.org || d.observer_id !== who.observerId)
    throw new CheckError("subject_mismatch", `head of ${d.org}/${d.observer_id}`);
  const keyId = await sha256(node.publicKey);
  if (!equalBytes(unb64(d.node_key_id_b64), keyId))
    throw new CheckError("unknown_key", "head signed by another key than the gateway's node");
  const payload = headPayload(d);
  if (!(await verifyBytes(node.publicKey, pae(rules.observer_head.payload_type, payload), unb64(d.signature_b64))))
    throw new CheckError("bad_signature", "the head's signature does not verify");
  const digest = unb64(d.digest_b64);
  if (d.seq === 0) {
    if (digest.length !== 0) throw new CheckError("malformed", "seq 0 with a digest");
    return null;
  }
  if (digest.length !== 32) throw new CheckError("malformed", "digest: 32 bytes");
  return { seq: d.seq, digest };
}

// -- the accreditation request (nodes/observer/device.py accreditation_request) --------------

/** JSON with sorted keys and no spaces, as Python's json.dumps(sort_keys=True,
 * separators=(",", ":")) writes ASCII ids, hex and integers. */
function canonicalJson(body: Record<string, string | number>): string {
  const keys = Object.keys(body).sort();
  return `{${keys.map((k) => `${JSON.stringify(k)}:${JSON.stringify(body[k])}`).join(",")}}`;
}

export async function accreditationRequest(
  key: DeviceKey,
  who: Identity,
  atMs: number,
): Promise<Record<string, string | number>> {
  const r = rules.accreditation_request;
  const body: Record<string, string | number> = {
    type: r.type,
    version: r.version,
    observer_id: who.observerId,
    org: who.org,
    role: r.role,
    mandate_id: who.mandateId,
    public_key: hex(key.publicKey),
    key_id: hex(key.keyId),
    requested_at_ms: atMs,
  };
  const canonical = utf8.encode(canonicalJson(body));
  const proof = await signBytes(key, pae(r.payload_type, canonical));
  return { ...body, proof: hex(proof) };
}
