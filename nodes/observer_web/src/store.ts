// The device's durable state in IndexedDB: the key (a non-extractable CryptoKey), the identity,
// the mandate, the chain head, the outbox with its receipts, attachment bytes waiting for upload,
// and what was last fetched from the gateway (node accreditation, recipients' keys, clock).
// Every write that changes the chain is one transaction, so a reload, a closed tab or a flat
// battery leaves either the report and its head, or neither.
import { openDB, type DBSchema, type IDBPDatabase } from "idb";
import type { ChainHead, Draft, DeviceKey } from "./core";

export type State = "queued" | "delivered" | "refused";

export interface Entry {
  slot?: number; // local order of signing (the key, given by IndexedDB)
  seq: number; // chain position
  reportId: string;
  envelope: Uint8Array;
  digest: Uint8Array;
  draft: Draft; // kept so a refused report can be fixed, and later ones signed again
  sealedFor: string[];
  state: State;
  createdAtMs: number;
  attempts: number;
  lastError: string;
  httpStatus: number;
  reason: string;
  detail: string;
  receipt: Uint8Array | null;
  receiptOk: boolean | null;
  receiptProblem: string;
  where: string; // topic[partition]@offset from the verified receipt
}

export interface Blob_ {
  sha256: string; // hex, the key
  slot: number; // the entry whose report references it
  data: Blob;
  mediaType: string;
  state: "pending" | "uploaded" | "refused";
  reason: string;
}

export interface Profile {
  observerId: string;
  org: string;
  mandateId: string;
  mandate: Uint8Array; // the signed mandate file, as given
  key: DeviceKey;
  request: Record<string, string | number>;
  createdAtMs: number;
  /** This observer id reported from another device before: continue its chain from the head
   * the gateway signs (outbox.ts), never start a second chain at seq 1. */
  takeover: boolean;
}

interface Schema extends DBSchema {
  meta: { key: string; value: unknown };
  outbox: { key: number; value: Entry; indexes: { state: State } };
  blobs: { key: string; value: Blob_; indexes: { state: string } };
}

let dbp: Promise<IDBPDatabase<Schema>> | null = null;

export function db(): Promise<IDBPDatabase<Schema>> {
  dbp ??= openDB<Schema>("obus-observer", 1, {
    upgrade(d) {
      d.createObjectStore("meta");
      d.createObjectStore("outbox", { keyPath: "slot", autoIncrement: true }).createIndex("state", "state");
      d.createObjectStore("blobs", { keyPath: "sha256" }).createIndex("state", "state");
    },
  });
  return dbp;
}

export async function getMeta<T>(key: string): Promise<T | undefined> {
  return (await (await db()).get("meta", key)) as T | undefined;
}

export async function setMeta(key: string, value: unknown): Promise<void> {
  await (await db()).put("meta", value, key);
}

export async function entries(): Promise<Entry[]> {
  return (await db()).getAll("outbox");
}

export async function head(): Promise<ChainHead | null> {
  return ((await getMeta<ChainHead>("head")) ?? null) as ChainHead | null;
}

/** Where this device's chain starts: null for a new observer (seq 1), or the head of the
 * observer's chain a device taking over continues after (its first report is seq + 1). */
export async function base(): Promise<ChainHead | null> {
  return ((await getMeta<ChainHead | null>("base")) ?? null) as ChainHead | null;
}

export async function setBase(b: ChainHead | null): Promise<void> {
  await setMeta("base", b);
}

/** Queue a signed report with its attachments and move the head to it, in one transaction. */
export async function append(
  entry: Entry,
  files: Omit<Blob_, "slot">[],
  newHead: ChainHead,
): Promise<number> {
  const tx = (await db()).transaction(["meta", "outbox", "blobs"], "readwrite");
  const slot = await tx.objectStore("outbox").add(entry);
  await Promise.all([
    ...files.map((f) => tx.objectStore("blobs").put({ ...f, slot })),
    tx.objectStore("meta").put(newHead, "head"),
    tx.done,
  ]);
  return slot;
}

export async function put(entry: Entry): Promise<void> {
  await (await db()).put("outbox", entry);
}

/** Replace entries and the head together (after a refusal: the chain is signed again). */
export async function rewrite(changed: Entry[], newHead: ChainHead | null): Promise<void> {
  const tx = (await db()).transaction(["meta", "outbox"], "readwrite");
  const meta = tx.objectStore("meta");
  await Promise.all([
    ...changed.map((e) => tx.objectStore("outbox").put(e)),
    newHead === null ? meta.delete("head") : meta.put(newHead, "head"),
    tx.done,
  ]);
}

export async function blobs(): Promise<Blob_[]> {
  return (await db()).getAll("blobs");
}

export async function putBlob(b: Blob_): Promise<void> {
  await (await db()).put("blobs", b);
}
