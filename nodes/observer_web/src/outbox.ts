// Signing into the outbox and delivering it, with the CLI's guarantees
// (nodes/observer/delivery.py): oldest first, one report at a time; a failure that can heal (no
// connection, 408, 429, 5xx, rate_limited, unknown_key) is retried with exponential backoff and
// full jitter, honouring Retry-After; any other 4xx is a refusal, shown with its reason. The same
// bytes are sent again until answered, so the gateway answers them with the same receipt.
// A refused report never stays in the chain: the head goes back to the report before it and the
// reports queued after it are signed again in order (same ids, new chain positions), so one
// refusal never silences the observer. Attachments are uploaded after their report's receipt.
//
// Times are the device's own: a report states when this device signed it, never a figure
// taken from the gateway. Before signing, clockCheck() compares the device clock with the
// gateway's (GET /v1/time) so the page can warn about a report the nodes would refuse as
// clock_skew (signed more than the nodes' limit ahead of their clock).
//
// A new device taking over an observer id (Profile.takeover) continues that observer's chain:
// until its first report is delivered, every delivery attempt first fetches the observer's head
// from the gateway (GET /v1/observers/{id}/head), checks it is signed by the gateway's
// accredited node key, and signs the queued reports again after it (same ids, positions
// seq+1, seq+2, ... with that digest). Nothing is sent before that check passed.
import * as core from "./core";
import * as store from "./store";
import type { Entry, Profile } from "./store";

const RETRY_REASONS = new Set(["rate_limited", "unknown_key"]);
const BASE_S = 0.5;
const CAP_S = 60;

/** The device clock: what a report states as its signing time. */
export function now(): number {
  return Date.now();
}

/** The last comparison of the device clock with the gateway's. */
export interface ClockCheck {
  /** How far the device clock runs ahead of the gateway's (negative: behind), in ms. */
  aheadMs: number;
  /** The nodes' limit: a report signed more than this ahead of their clock is refused. */
  maxSkewMs: number;
  /** Half the round trip of the measurement: how uncertain aheadMs is. */
  errorMs: number;
  /** Device time of the measurement. */
  atMs: number;
  /** True when a report signed now would be refused as clock_skew. */
  refused: boolean;
}

const CLOCK_TIMEOUT_MS = 4000;
/** A measurement younger than this that found the clock right is not repeated before signing. */
const CLOCK_FRESH_MS = 60_000;

/** Measure the device clock against the gateway's (GET /v1/time) and keep the result; when
 * the gateway cannot be reached, the last measurement (or null when there was none). A recent
 * measurement that found the clock right is used as it is; one that found it wrong is always
 * repeated, so a clock set right since is seen at once. */
export async function clockCheck(): Promise<ClockCheck | null> {
  const last = await store.getMeta<Omit<ClockCheck, "refused">>("clock");
  const good = (m: Omit<ClockCheck, "refused">): boolean => m.aheadMs + m.errorMs <= m.maxSkewMs;
  const fresh = last !== undefined && good(last) && Math.abs(Date.now() - last.atMs) < CLOCK_FRESH_MS;
  if (!fresh) await measureClock();
  const m = await store.getMeta<Omit<ClockCheck, "refused">>("clock");
  return m === undefined ? null : { ...m, refused: !good(m) };
}

async function measureClock(): Promise<void> {
  try {
    const t0 = Date.now();
    const r = await fetch("/v1/time", { cache: "no-store", signal: AbortSignal.timeout(CLOCK_TIMEOUT_MS) });
    const t1 = Date.now();
    if (r.status === 200) {
      const doc = (await r.json()) as { now_ms: number; max_skew_ms: number };
      if (Number.isSafeInteger(doc.now_ms) && Number.isSafeInteger(doc.max_skew_ms)) {
        const m = { aheadMs: Math.round((t0 + t1) / 2) - doc.now_ms, maxSkewMs: doc.max_skew_ms,
          errorMs: Math.ceil((t1 - t0) / 2), atMs: t1 };
        await store.setMeta("clock", m);
      }
    }
  } catch {
    /* offline or slow: judge with the last measurement */
  }
}

async function chainLock<T>(work: () => Promise<T>): Promise<T> {
  return navigator.locks.request("obus-chain", work);
}

/** Sign the draft as the next link of the chain and queue it (one transaction). */
export async function signAndQueue(
  profile: Profile,
  draft: core.Draft,
  files: { sha256: string; data: Blob; mediaType: string }[],
  recipients: core.EncryptionKey[],
): Promise<Entry> {
  return chainLock(async () => {
    const head = await store.head();
    const at = now();
    const who = identity(profile);
    const signed = await core.signReport(profile.key, who, draft, core.uuid7(at), at, head, recipients);
    const entry = newEntry(signed, draft, at);
    entry.slot = await store.append(
      entry,
      files.map((f) => ({ ...f, state: "pending", reason: "" })),
      { seq: signed.seq, digest: signed.digest },
    );
    return entry;
  });
}

function identity(p: Profile): core.Identity {
  return { observerId: p.observerId, org: p.org, mandateId: p.mandateId };
}

function newEntry(signed: core.Signed, draft: core.Draft, at: number): Entry {
  return {
    seq: signed.seq,
    reportId: signed.reportId,
    envelope: signed.envelope,
    digest: signed.digest,
    draft,
    sealedFor: signed.sealedFor,
    state: "queued",
    createdAtMs: at,
    attempts: 0,
    lastError: "",
    httpStatus: 0,
    reason: "",
    detail: "",
    receipt: null,
    receiptOk: null,
    receiptProblem: "",
    where: "",
  };
}

/** Sign ``queued`` again, in order, after ``head``; store them with ``first`` (an entry
 * changed by the caller) and the new head in one transaction. */
async function resign(
  profile: Profile,
  queued: Entry[],
  head: core.ChainHead | null,
  recipients: core.EncryptionKey[],
  first: Entry[] = [],
): Promise<void> {
  const changed = [...first];
  for (const e of queued) {
    const keys = recipients.filter((r) => e.sealedFor.includes(r.org));
    const s = await core.signReport(profile.key, identity(profile), e.draft, e.reportId, now(), head, keys);
    changed.push({ ...e, seq: s.seq, envelope: s.envelope, digest: s.digest, attempts: 0 });
    head = { seq: s.seq, digest: s.digest };
  }
  await store.rewrite(changed, head);
}

/** After a refusal at ``refused.seq``: the head goes back before it (to the last delivered
 * report, else to where this device's chain starts), later queued reports are signed again
 * after it, in their order. */
async function unwindAfterRefusal(profile: Profile, refused: Entry, recipients: core.EncryptionKey[]): Promise<void> {
  await chainLock(async () => {
    const all = (await store.entries()).filter((e) => e.state !== "refused" || e.slot === refused.slot);
    const last = all.filter((e) => e.state === "delivered" && e.seq < refused.seq).at(-1);
    const head = last === undefined ? await store.base() : { seq: last.seq, digest: last.digest };
    const later = all.filter((x) => x.state === "queued" && (x.slot ?? 0) > (refused.slot ?? 0));
    await resign(profile, later, head, recipients, [refused]);
  });
}

/** A device taking over an observer id, before its first delivery: the observer's head as the
 * gateway signed it becomes where this device's chain starts, and the queued reports are
 * signed again after it when it moved. Throws when the head cannot be fetched or checked. */
async function continueChain(profile: Profile): Promise<void> {
  const answer = await call("GET", `/v1/observers/${encodeURIComponent(profile.observerId)}/head`);
  if (answer.status !== 200) {
    const [reason, detail] = reasonOf(answer);
    throw new core.CheckError(reason, `chain head: HTTP ${answer.status} ${detail}`);
  }
  const doc = JSON.parse(new TextDecoder().decode(answer.body)) as core.HeadDoc;
  const node = await nodeAccreditation(profile);
  const head = await core.verifyHead(doc, node, profile);
  await chainLock(async () => {
    const base = await store.base();
    const same = base === null ? head === null : head !== null && base.seq === head.seq && core.equalBytes(base.digest, head.digest);
    if (same) return;
    const queued = (await store.entries()).filter((e) => e.state === "queued");
    await store.setBase(head);
    await resign(profile, queued, head, await recipientKeys(profile));
  });
}

/** The gateway's node accreditation, checked against the mandate (fetched once if missing). */
async function nodeAccreditation(profile: Profile): Promise<core.Accreditation> {
  const { mandate } = await core.verifyMandate(profile.mandate, Date.now());
  let raw = await store.getMeta<Uint8Array>("node");
  if (raw === undefined) {
    await refreshFromGateway(profile);
    raw = await store.getMeta<Uint8Array>("node");
  }
  if (raw === undefined) throw new core.CheckError("unknown_key", "no node accreditation from the gateway");
  return core.verifyNodeAccreditation(raw, mandate, profile.org);
}

export interface SyncReport {
  delivered: number;
  refused: number;
  uploaded: number;
  failed: boolean;
  retryInS: number;
}

interface Answer {
  status: number;
  body: Uint8Array;
  retryAfterS: number;
}

async function call(method: string, path: string, body?: Uint8Array | Blob): Promise<Answer> {
  const r = await fetch(path, {
    method,
    body: body instanceof Uint8Array ? new Blob([new Uint8Array(body)]) : body,
    headers: body === undefined ? {} : { "content-type": "application/octet-stream" },
    cache: "no-store",
  });
  const retry = Number(r.headers.get("retry-after") ?? "0");
  return { status: r.status, body: new Uint8Array(await r.arrayBuffer()), retryAfterS: retry || 0 };
}

function reasonOf(a: Answer): [string, string] {
  try {
    const doc = JSON.parse(new TextDecoder().decode(a.body)) as { reason: string; detail?: string };
    return [String(doc.reason), String(doc.detail ?? "")];
  } catch {
    return [`http_${a.status}`, new TextDecoder().decode(a.body.slice(0, 200))];
  }
}

function isRefusal(a: Answer): boolean {
  if (a.status < 400 || a.status >= 500 || a.status === 408 || a.status === 429) return false;
  return !RETRY_REASONS.has(reasonOf(a)[0]);
}

/** Fetch what the gateway publishes for observers: its node accreditation (for receipts), the
 * recipients' encryption keys, and its clock. Each is verified before it is kept. */
export async function refreshFromGateway(profile: Profile): Promise<void> {
  const { mandate } = await core.verifyMandate(profile.mandate, Date.now());
  await measureClock();
  const node = await call("GET", "/v1/node");
  if (node.status === 200) {
    await core.verifyNodeAccreditation(node.body, mandate, profile.org);
    await store.setMeta("node", node.body);
  }
  // GET /v1/recipients: each organization's current encryption key in the gateway's final
  // trust state. Checked for shape, mandate and key id; a wrong key would only make the nodes
  // quarantine the report (recipient_key_not_current), never expose it to another key holder
  // than the one the gateway names.
  const rec = await call("GET", "/v1/recipients");
  if (rec.status === 200) {
    const doc = JSON.parse(new TextDecoder().decode(rec.body)) as {
      mandate_id: string;
      recipients: { org: string; key_id_b64: string; public_key_b64: string; serial: number;
        not_before_ms: number; not_after_ms: number }[];
    };
    const keys = [];
    for (const r of doc.recipients ?? []) {
      const publicKey = core.unb64(r.public_key_b64);
      const known = mandate.organizations.some((o) => o.org === r.org);
      if (doc.mandate_id !== mandate.mandateId || !known || publicKey.length !== 32) continue;
      if (!core.equalBytes(await core.sha256(publicKey), core.unb64(r.key_id_b64))) continue;
      keys.push({ org: r.org, publicKey, serial: r.serial, notBeforeMs: r.not_before_ms, notAfterMs: r.not_after_ms });
    }
    await store.setMeta("recipients", keys);
  }
}

interface RecipientKey {
  org: string;
  publicKey: Uint8Array;
  serial: number;
  notBeforeMs: number;
  notAfterMs: number;
}

/** The recipients' keys last fetched, usable now. */
export async function recipientKeys(profile: Profile): Promise<core.EncryptionKey[]> {
  const at = now();
  return ((await store.getMeta<RecipientKey[]>("recipients")) ?? [])
    .filter((k) => k.notBeforeMs <= at && at <= k.notAfterMs)
    .map((k) => core.encryptionKey(k.org, k.publicKey, profile.mandateId, k.serial, k.notBeforeMs, k.notAfterMs));
}

async function checkReceipt(profile: Profile, e: Entry, receipt: Uint8Array): Promise<[boolean, string, string]> {
  try {
    const { mandate } = await core.verifyMandate(profile.mandate, Date.now());
    const node = await nodeAccreditation(profile);
    const r = await core.verifyReceipt(receipt, node, mandate, e.envelope, {
      reportId: e.reportId,
      observerId: profile.observerId,
      seq: e.seq,
      org: profile.org,
    });
    return [true, "", `${r.topic}[${r.partition}]@${r.offset}`];
  } catch (err) {
    const reason = err instanceof core.CheckError ? err.reason : "malformed";
    return [false, `${reason}: ${(err as Error).message}`, ""];
  }
}

/** Deliver until nothing is left or a failure that may heal (then ``retryInS`` says when). */
export async function sync(profile: Profile, failures: number): Promise<SyncReport> {
  const out: SyncReport = { delivered: 0, refused: 0, uploaded: 0, failed: false, retryInS: 0 };
  const run = async (): Promise<void> => {
    for (;;) {
      const all = await store.entries();
      const delivered = new Set(all.filter((e) => e.state === "delivered").map((e) => e.slot));
      const upload = (await store.blobs()).find((b) => b.state === "pending" && delivered.has(b.slot));
      let answer: Answer;
      try {
        if (upload !== undefined) {
          answer = await call("PUT", `/v1/attachments/${upload.sha256}`, upload.data);
          if (answer.status === 200 || answer.status === 201) {
            await store.putBlob({ ...upload, state: "uploaded", data: new Blob([]) });
            out.uploaded++;
            continue;
          }
          if (isRefusal(answer)) {
            await store.putBlob({ ...upload, state: "refused", reason: reasonOf(answer).join(": ") });
            continue;
          }
        } else {
          let next = all.find((e) => e.state === "queued");
          if (next === undefined) return;
          if (profile.takeover && !all.some((e) => e.state === "delivered")) {
            await continueChain(profile);
            next = (await store.entries()).find((e) => e.state === "queued");
            if (next === undefined) return;
          }
          next.attempts++;
          answer = await call("POST", "/v1/reports", next.envelope);
          if (answer.status === 200 || answer.status === 201) {
            const [ok, problem, where] = await checkReceipt(profile, next, answer.body);
            await store.put({
              ...next, state: "delivered", httpStatus: answer.status, receipt: answer.body,
              receiptOk: ok, receiptProblem: problem, where,
            });
            out.delivered++;
            continue;
          }
          if (isRefusal(answer)) {
            const [reason, detail] = reasonOf(answer);
            const refused = { ...next, state: "refused" as const, httpStatus: answer.status, reason, detail };
            await unwindAfterRefusal(profile, refused, await recipientKeys(profile));
            out.refused++;
            continue;
          }
          await store.put({ ...next, lastError: `HTTP ${answer.status}: ${reasonOf(answer)[0]}` });
        }
      } catch (err) {
        answer = { status: 0, body: new Uint8Array(), retryAfterS: 0 };
        // Read again: the chain may have been signed again (continueChain) since ``all``.
        const next = (await store.entries()).find((e) => e.state === "queued");
        const why = err instanceof core.CheckError ? `${err.reason}: ${err.message}` : String(err);
        if (next !== undefined) await store.put({ ...next, lastError: why });
      }
      out.failed = true;
      const bound = Math.min(CAP_S, BASE_S * 2 ** Math.min(failures, 60));
      out.retryInS = Math.max(Math.random() * bound, answer.retryAfterS);
      return;
    }
  };
  await navigator.locks.request("obus-sync", { ifAvailable: true }, async (lock) => {
    if (lock !== null) await run();
  });
  return out;
}
