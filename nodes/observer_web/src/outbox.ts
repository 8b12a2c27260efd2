// Signing into the outbox and delivering it, with the CLI's guarantees
// (nodes/observer/delivery.py): oldest first, one report at a time; a failure that can heal (no
// connection, 408, 429, 5xx, rate_limited, unknown_key) is retried with exponential backoff and
// full jitter, honouring Retry-After; any other 4xx is a refusal, shown with its reason. The same
// bytes are sent again until answered, so the gateway answers them with the same receipt.
// A refused report never stays in the chain: the head goes back to the report before it and the
// reports queued after it are signed again in order (same ids, new chain positions), so one
// refusal never silences the observer. Attachments are uploaded after their report's receipt.
import * as core from "./core";
import * as store from "./store";
import type { Entry, Profile } from "./store";

const RETRY_REASONS = new Set(["rate_limited", "unknown_key"]);
const BASE_S = 0.5;
const CAP_S = 60;

/** The device clock corrected by the gateway's, when the gateway was ever asked. */
export async function now(): Promise<number> {
  return Date.now() + ((await store.getMeta<number>("clock_offset_ms")) ?? 0);
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
    const at = await now();
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

/** After a refusal at ``refused.seq``: the head goes back before it, later queued reports are
 * signed again after it, in their order. */
async function unwindAfterRefusal(profile: Profile, refused: Entry, recipients: core.EncryptionKey[]): Promise<void> {
  await chainLock(async () => {
    const all = (await store.entries()).filter((e) => e.state !== "refused" || e.slot === refused.slot);
    const before = all.filter((e) => e.state === "delivered" && e.seq < refused.seq);
    const last = before.at(-1);
    let head: core.ChainHead | null = last === undefined ? null : { seq: last.seq, digest: last.digest };
    const changed: Entry[] = [refused];
    for (const e of all.filter((x) => x.state === "queued" && (x.slot ?? 0) > (refused.slot ?? 0))) {
      const keys = recipients.filter((r) => e.sealedFor.includes(r.org));
      const at = await now();
      const s = await core.signReport(profile.key, identity(profile), e.draft, e.reportId, at, head, keys);
      changed.push({ ...e, seq: s.seq, envelope: s.envelope, digest: s.digest, attempts: 0 });
      head = { seq: s.seq, digest: s.digest };
    }
    await store.rewrite(changed, head);
  });
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
  const t0 = Date.now();
  try {
    const a = await call("GET", "/v1/time");
    if (a.status === 200) {
      const doc = JSON.parse(new TextDecoder().decode(a.body)) as { now_ms: number; max_skew_ms: number };
      const offset = doc.now_ms - Math.round((t0 + Date.now()) / 2);
      await store.setMeta("clock_offset_ms", Math.abs(offset) > 1000 ? offset : 0);
      await store.setMeta("max_skew_ms", doc.max_skew_ms);
    }
  } catch {
    /* offline: the last known offset stays */
  }
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
  const at = await now();
  return ((await store.getMeta<RecipientKey[]>("recipients")) ?? [])
    .filter((k) => k.notBeforeMs <= at && at <= k.notAfterMs)
    .map((k) => core.encryptionKey(k.org, k.publicKey, profile.mandateId, k.serial, k.notBeforeMs, k.notAfterMs));
}

async function checkReceipt(profile: Profile, e: Entry, receipt: Uint8Array): Promise<[boolean, string, string]> {
  try {
    const { mandate } = await core.verifyMandate(profile.mandate, Date.now());
    let nodeRaw = await store.getMeta<Uint8Array>("node");
    if (nodeRaw === undefined) {
      await refreshFromGateway(profile);
      nodeRaw = await store.getMeta<Uint8Array>("node");
    }
    if (nodeRaw === undefined) return [false, "unknown_key: no node accreditation", ""];
    const node = await core.verifyNodeAccreditation(nodeRaw, mandate, profile.org);
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
          const next = all.find((e) => e.state === "queued");
          if (next === undefined) return;
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
        const next = all.find((e) => e.state === "queued");
        if (next !== undefined) await store.put({ ...next, lastError: String(err) });
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
