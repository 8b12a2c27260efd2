// The page: enrolment, the report form, the status list. Everything the observer types is
// validated with the nodes' rules (validate.ts), signed on the device and queued in IndexedDB
// before anything is sent; delivery runs whenever a link is up (outbox.ts).
import * as core from "./core";
import * as store from "./store";
import * as outbox from "./outbox";
import { validate, isObserverId, type FormInput, type Problem } from "./validate";
import { LANGUAGES, browserLanguage, translate, type Lang } from "./i18n";
import type { Profile, Entry } from "./store";

let lang: Lang = browserLanguage(navigator.languages);
let profile: Profile | null = null;
let mandate: core.Mandate | null = null;
let failures = 0;
let retryTimer: number | undefined;
/** Milliseconds from the tap on submit to the report queued on the device (the last one). */
let lastQueueMs = -1;

const $ = <T extends HTMLElement>(id: string): T => document.getElementById(id) as T;
const t = (key: string, values?: Record<string, string | number>): string => translate(lang, key, values);

function el(tag: string, attrs: Record<string, string> = {}, ...kids: (Node | string)[]): HTMLElement {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  e.append(...kids);
  return e;
}

function applyLabels(): void {
  document.documentElement.lang = lang;
  document.title = t("title");
  for (const e of document.querySelectorAll<HTMLElement>("[data-t]")) e.textContent = t(e.dataset.t ?? "");
  const cat = $<HTMLSelectElement>("category");
  const chosen = cat.value;
  cat.replaceChildren(
    el("option", { value: "" }, "—"),
    ...core.rules.categories.map((c) => el("option", { value: c.label }, t(`c.${c.label}`))),
  );
  cat.value = chosen;
  $("net").textContent = navigator.onLine ? t("online") : t("offline");
}

async function setLanguage(l: Lang): Promise<void> {
  lang = l;
  $<HTMLSelectElement>("lang").value = l;
  await store.setMeta("lang", l);
  applyLabels();
  await renderStatus();
}

// -- enrolment ----------------------------------------------------------------------------------

let pendingMandate: Uint8Array | null = null;

async function onMandateFile(): Promise<void> {
  const file = $<HTMLInputElement>("mandate-file").files?.[0];
  if (file === undefined) return;
  try {
    const raw = new Uint8Array(await file.arrayBuffer());
    const v = await core.verifyMandate(raw, Date.now());
    pendingMandate = raw;
    $("fingerprint").textContent = v.fingerprint;
    $<HTMLSelectElement>("org").replaceChildren(
      ...v.mandate.organizations.map((o) => el("option", { value: o.org }, `${o.org}: ${o.name}`)),
    );
    $("enrol-problem").textContent = "";
  } catch (err) {
    $("enrol-problem").textContent = `${(err as core.CheckError).reason ?? "malformed"}: ${(err as Error).message}`;
  }
}

async function onEnrol(): Promise<void> {
  if (pendingMandate === null) return;
  const org = $<HTMLSelectElement>("org").value;
  const observerId = $<HTMLInputElement>("observer-id").value.trim();
  if (!isObserverId(observerId, org)) {
    $("enrol-problem").textContent = `${t("observer_id")}: ${t("p.observer_id", { prefix: `${org}-` })}`;
    return;
  }
  const v = await core.verifyMandate(pendingMandate, Date.now());
  const key = await core.generateKey();
  const who = { observerId, org, mandateId: v.mandate.mandateId };
  const request = await core.accreditationRequest(key, who, Date.now());
  const takeover = $<HTMLInputElement>("takeover").checked;
  profile = { ...who, mandate: pendingMandate, key, request, createdAtMs: Date.now(), takeover };
  await store.setMeta("profile", profile);
  await start();
}

function showRequest(p: Profile): void {
  const text = JSON.stringify(p.request, null, 2);
  $("request").textContent = text;
  const a = $<HTMLAnchorElement>("download");
  a.href = URL.createObjectURL(new Blob([text + "\n"], { type: "application/json" }));
  a.download = `accreditation-request-${p.observerId}.json`;
  $("key-id").textContent = core.hex(p.key.keyId);
}

// -- the form -------------------------------------------------------------------------------------

interface Photo {
  sha256: string;
  data: Blob;
  mediaType: string;
  name: string;
  size: number;
}

async function photos(): Promise<Photo[]> {
  const out: Photo[] = [];
  for (const f of Array.from($<HTMLInputElement>("photos").files ?? [])) {
    // Hashed on the device; files larger than the limit are refused by validate() unread.
    const big = f.size > core.rules.limits.attachment_bytes;
    const digest = big ? new Uint8Array(32) : await core.sha256(new Uint8Array(await f.arrayBuffer()));
    out.push({ sha256: core.hex(digest), data: f, mediaType: f.type || "application/octet-stream", name: f.name, size: f.size });
  }
  return out;
}

function readForm(files: Photo[]): FormInput {
  const v = (id: string): string => $<HTMLInputElement>(id).value;
  return {
    zone: v("zone"),
    observedAt: v("observed-at"),
    lat: v("lat"),
    lon: v("lon"),
    precisionM: v("precision"),
    place: v("place"),
    category: v("category"),
    subType: v("sub-type"),
    severity: v("severity"),
    confidence: v("confidence"),
    killed: v("killed"),
    injured: v("injured"),
    missing: v("missing"),
    civilian: $<HTMLInputElement>("civilian").checked,
    narrative: $<HTMLTextAreaElement>("narrative").value,
    attachments: files.map((p) => ({ sha256: core.unhex(p.sha256), size: p.size, mediaType: p.mediaType, name: p.name })),
    corrects: v("corrects"),
  };
}

function showProblems(problems: Problem[]): void {
  const list = $("problems");
  list.replaceChildren();
  for (const p of problems) {
    const label = t(p.field.replace(/\[\d+\].*/, "")) ;
    list.append(el("li", { "data-field": p.field }, `${label} (${p.field}): ${t(`p.${p.code}`, p.values)}`));
  }
  $("problems-box").hidden = problems.length === 0;
}

/** A report checked and ready to sign, held while the observer answers the clock warning. */
let held: { draft: core.Draft; files: Photo[]; keys: core.EncryptionKey[]; tap: number } | null = null;

async function onSubmit(ev: Event): Promise<void> {
  ev.preventDefault();
  if (profile === null || mandate === null) return;
  const tap = performance.now();
  const files = await photos();
  const { draft, problems } = validate(readForm(files), mandate, outbox.now());
  showProblems(problems);
  if (draft === null) {
    $("problems-box").scrollIntoView();
    return;
  }
  const chosen = Array.from(document.querySelectorAll<HTMLInputElement>("#recipients input:checked")).map((i) => i.value);
  const keys = (await outbox.recipientKeys(profile)).filter((k) => chosen.includes(k.org));
  held = { draft, files, keys, tap };
  // The clock check before signing: a report the nodes would refuse as clock_skew is not
  // signed unless the observer says so (the gateway is asked again when it can be reached,
  // so a clock set right since the last check is seen at once).
  const clock = await outbox.clockCheck();
  renderClock(clock);
  if (clock?.refused === true) {
    $("clock-box").hidden = false;
    $("clock-box").scrollIntoView();
    return;
  }
  await queueHeld();
}

async function queueHeld(): Promise<void> {
  if (profile === null || held === null) return;
  const { draft, files, keys, tap } = held;
  held = null;
  $("clock-box").hidden = true;
  await outbox.signAndQueue(profile, draft, files, keys);
  lastQueueMs = performance.now() - tap;
  ($("report-form") as HTMLFormElement).reset();
  defaults();
  await renderStatus();
  void deliver();
}

function renderClock(c: outbox.ClockCheck | null): void {
  const warn = $("clock");
  const ahead = c === null ? 0 : c.aheadMs;
  warn.hidden = c === null || (!c.refused && Math.abs(ahead) <= c.maxSkewMs / 2);
  if (c === null) return;
  const values = { s: Math.abs(Math.round(ahead / 1000)), max: Math.round(c.maxSkewMs / 1000) };
  warn.textContent = t(ahead >= 0 ? "clock_ahead" : "clock_behind", values);
  $("clock-refuse").textContent = t("clock_refuse", values);
}

/** A datetime-local value (the device's local time, to the second) for a Unix time. */
function localTime(ms: number): string {
  const local = new Date(ms - new Date(ms).getTimezoneOffset() * 60000);
  return local.toISOString().slice(0, 19);
}

function defaults(): void {
  $<HTMLInputElement>("observed-at").value = localTime(Date.now() - (Date.now() % 60000));
}

function usePosition(): void {
  navigator.geolocation.getCurrentPosition(
    (p) => {
      $<HTMLInputElement>("lat").value = p.coords.latitude.toFixed(6);
      $<HTMLInputElement>("lon").value = p.coords.longitude.toFixed(6);
      $<HTMLInputElement>("precision").value = String(Math.min(Math.round(p.coords.accuracy), core.rules.limits.precision_m[1]));
    },
    () => {
      $("position-problem").textContent = t("position_failed");
    },
    { enableHighAccuracy: true, timeout: 20000 },
  );
}

async function fix(e: Entry): Promise<void> {
  const d = e.draft;
  const set = (id: string, value: string | number): void => {
    $<HTMLInputElement>(id).value = String(value);
  };
  set("zone", d.zone);
  set("observed-at", localTime(d.observedAtMs));
  set("lat", d.lat);
  set("lon", d.lon);
  set("precision", d.precisionM);
  set("place", d.place);
  set("category", core.rules.categories.find((c) => c.value === d.category)?.label ?? "");
  set("sub-type", d.subType);
  set("severity", d.severity);
  set("confidence", d.confidence);
  set("killed", d.killed);
  set("injured", d.injured);
  set("missing", d.missing);
  $<HTMLInputElement>("civilian").checked = d.civilian;
  set("narrative", d.narrative);
  set("corrects", d.corrects);
  for (const box of document.querySelectorAll<HTMLInputElement>("#recipients input"))
    box.checked = e.sealedFor.includes(box.value);
  $("report-form").scrollIntoView();
}

// -- status ---------------------------------------------------------------------------------------

async function renderStatus(): Promise<void> {
  const rows = (await store.entries()).reverse();
  const list = $("status-list");
  list.replaceChildren(
    ...rows.map((e) => {
      const receipt =
        e.state === "delivered"
          ? el("span", { class: e.receiptOk ? "ok" : "bad" }, e.receiptOk ? `${t("receipt_ok")} ${e.where}` : `${t("receipt_bad")}: ${e.receiptProblem}`)
          : e.state === "refused"
            ? el("span", { class: "bad" }, `${e.reason}: ${e.detail}`)
            : el("span", {}, e.lastError);
      const li = el(
        "li",
        { class: e.state, "data-report-id": e.reportId, "data-state": e.state },
        el("b", {}, `#${e.seq} ${t(e.state)}`),
        ` ${e.reportId.slice(0, 13)} ${e.sealedFor.length ? `🔒 ${e.sealedFor.join(", ")}` : ""} `,
        receipt,
      );
      if (e.state === "refused") {
        const b = el("button", { type: "button" }, t("fix"));
        b.addEventListener("click", () => void fix(e));
        li.append(" ", b);
      }
      return li;
    }),
  );
  const base = await store.base();
  $("chain-base").hidden = base === null;
  if (base !== null) $("chain-base").textContent = t("chain_base", { seq: base.seq });
  const waiting = profile?.takeover === true && base === null && !rows.some((e) => e.state === "delivered");
  $("chain-wait").hidden = !waiting;
}

async function renderRecipients(): Promise<void> {
  if (profile === null) return;
  const keys = await outbox.recipientKeys(profile).catch(() => []);
  const box = $("recipients");
  box.replaceChildren(
    ...keys.map((k) =>
      el("label", {}, el("input", { type: "checkbox", value: k.org, name: "recipient" }), ` ${k.org}`),
    ),
  );
  $("no-recipients").hidden = keys.length > 0;
}

async function deliver(): Promise<void> {
  if (profile === null) return;
  window.clearTimeout(retryTimer);
  const r = await outbox.sync(profile, failures);
  failures = r.failed ? failures + 1 : 0;
  await renderStatus();
  if (r.failed) retryTimer = window.setTimeout(() => void deliver(), r.retryInS * 1000);
}

async function onOnline(): Promise<void> {
  applyLabels();
  failures = 0;
  if (profile !== null) {
    await outbox.refreshFromGateway(profile).catch(() => undefined);
    renderClock(await outbox.clockCheck());
    await renderRecipients();
  }
  await deliver();
}

// -- start --------------------------------------------------------------------------------------

async function start(): Promise<void> {
  profile = (await store.getMeta<Profile>("profile")) ?? null;
  $("enrol-box").hidden = profile !== null;
  $("main-box").hidden = profile === null;
  if (profile === null) return;
  mandate = (await core.verifyMandate(profile.mandate, Date.now())).mandate;
  showRequest(profile);
  $<HTMLSelectElement>("zone").replaceChildren(...mandate.zones.map((z) => el("option", { value: z.id }, `${z.id}: ${z.name}`)));
  $("who").textContent = `${profile.org} / ${profile.observerId}`;
  defaults();
  await renderRecipients();
  await renderStatus();
  if (navigator.onLine) void onOnline();
}

async function main(): Promise<void> {
  const saved = await store.getMeta<Lang>("lang");
  if (saved !== undefined) lang = saved;
  const sel = $<HTMLSelectElement>("lang");
  sel.replaceChildren(...LANGUAGES.map((l) => el("option", { value: l }, l)));
  sel.value = lang;
  sel.addEventListener("change", () => void setLanguage(sel.value as Lang));
  $("mandate-file").addEventListener("change", () => void onMandateFile());
  $("enrol-button").addEventListener("click", () => void onEnrol());
  $("report-form").addEventListener("submit", (e) => void onSubmit(e));
  $("use-position").addEventListener("click", usePosition);
  $("clock-confirm").addEventListener("click", () => void queueHeld());
  $("clock-recheck").addEventListener("click", () => $<HTMLFormElement>("report-form").requestSubmit());
  window.addEventListener("online", () => void onOnline());
  window.addEventListener("offline", applyLabels);
  applyLabels();
  if ("serviceWorker" in navigator) await navigator.serviceWorker.register("sw.js", { scope: "./" });
  await start();
  document.body.dataset.ready = "1";
}

// For the tests and for diagnosis: the same functions the page uses, and what it measured.
Object.assign(globalThis, {
  obus: { core, store, outbox, validate, isObserverId, deliver, lastQueueMs: () => lastQueueMs, setLanguage },
});

void main();
