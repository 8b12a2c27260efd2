// Every rule the nodes enforce on a report, applied before signing, with every problem listed at
// once (as bus/report_file.py lists them). The numbers, patterns and the taxonomy come from
// build/rules.json, exported from the Python modules at build time (export_rules.py).
//
// What is typed is read as a report file's value would be: a number is JSON number syntax
// (leading and trailing spaces aside; "0x10", ".5", "1,5" are not numbers), a whole number has
// no fraction or exponent ("3.0" is refused where an integer is required, as YAML's 3.0 is);
// an empty number, zone, category, time or report id is a missing field; a category is matched
// as bus.model.Category.parse matches it (case and surrounding spaces aside). The differential
// test tests/integration/test_observer_web_rules.py checks that this refuses exactly what the
// Python rules refuse, naming the same fields.
import { rules, type Draft, type Mandate } from "./core";

/** What the form holds, as typed (strings from inputs; files hashed already). */
export interface FormInput {
  zone: string;
  observedAt: string; // datetime-local value, the device's local time
  lat: string;
  lon: string;
  precisionM: string;
  place: string;
  category: string; // a category label
  subType: string;
  severity: string;
  confidence: string;
  killed: string;
  injured: string;
  missing: string;
  civilian: boolean;
  narrative: string;
  attachments: { sha256: Uint8Array; size: number; mediaType: string; name: string }[];
  corrects: string;
}

/** One problem: the field (as named in report files), a message key and its values. */
export interface Problem {
  field: string;
  code: "required" | "range" | "integer" | "too_long" | "not_allowed" | "outside_zone" |
    "future" | "outside_mandate" | "pattern" | "too_many" | "too_large" | "text";
  values: Record<string, string | number>;
}

const L = rules.limits;
const re = (source: string): RegExp => new RegExp(source);
const idPattern = re(rules.patterns.id);
const uuid7Pattern = re(rules.patterns.uuid7);
const mediaTypePattern = re(rules.patterns.media_type);
/** JSON's number and integer syntax (RFC 8259): what a report file's number is. */
const NUMBER = /^-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?$/;
const INTEGER = /^-?(0|[1-9][0-9]*)$/;
const plusZero = (x: number): number => (Object.is(x, -0) ? 0 : x);

/** Characters as Python counts them (code points, not UTF-16 units). */
export function chars(s: string): number {
  let n = 0;
  for (const _ of s) n++;
  return n;
}

export function isObserverId(id: string, org: string): boolean {
  const prefix = org + rules.subject_namespace_separator;
  return idPattern.test(id) && id.startsWith(prefix) && id.length > prefix.length;
}

export function validate(
  f: FormInput,
  mandate: Mandate,
  nowMs: number,
): { draft: Draft | null; problems: Problem[] } {
  const problems: Problem[] = [];
  const bad = (field: string, code: Problem["code"], values: Problem["values"] = {}): void => {
    problems.push({ field, code, values });
  };
  const num = (field: string, text: string, [lo, hi]: number[], integer: boolean): number => {
    const typed = text.trim();
    if (typed === "") {
      bad(field, "required", { low: lo, high: hi });
      return NaN;
    }
    if (integer && !INTEGER.test(typed)) {
      bad(field, "integer", { low: lo, high: hi });
      return NaN;
    }
    const v = NUMBER.test(typed) ? Number(typed) : NaN;
    if (!Number.isFinite(v) || v < lo || v > hi) bad(field, "range", { low: lo, high: hi });
    else return plusZero(v);
    return NaN;
  };
  const optInt = (field: string, text: string, range: number[]): number =>
    text.trim() === "" ? 0 : num(field, text, range, true);
  const text = (field: string, value: string, limit: number): string => {
    if (!value.isWellFormed()) bad(field, "text");
    else if (chars(value) > limit) bad(field, "too_long", { limit, given: chars(value) });
    return value;
  };

  const zone = mandate.zones.find((z) => z.id === f.zone);
  if (zone === undefined) bad("zone", "not_allowed", { allowed: mandate.zones.map((z) => z.id).join(", ") });

  let observedAtMs = NaN;
  if (f.observedAt.trim() === "") bad("observed_at", "required");
  else {
    observedAtMs = new Date(f.observedAt).getTime();
    if (!Number.isFinite(observedAtMs) || observedAtMs <= 0) bad("observed_at", "required");
    else if (observedAtMs > nowMs + L.max_future_ms) bad("observed_at", "future");
    else if (observedAtMs < Number(mandate.notBeforeMs) || observedAtMs > Number(mandate.notAfterMs))
      bad("observed_at", "outside_mandate");
  }

  const lat = num("location.lat", f.lat, L.lat, false);
  const lon = num("location.lon", f.lon, L.lon, false);
  if (zone !== undefined && Number.isFinite(lat) && Number.isFinite(lon)) {
    if (!(zone.minLat <= lat && lat <= zone.maxLat && zone.minLon <= lon && lon <= zone.maxLon))
      bad("location", "outside_zone", {
        zone: zone.id,
        box: `lat ${zone.minLat}..${zone.maxLat}, lon ${zone.minLon}..${zone.maxLon}`,
      });
  }
  const precisionM = optInt("location.precision_m", f.precisionM, L.precision_m);
  const place = text("location.place", f.place, L.place_chars);

  const typedCategory = f.category.trim().toUpperCase();
  const category = rules.categories.find((c) => c.label.toUpperCase() === typedCategory);
  if (category === undefined)
    bad("category", "not_allowed", { allowed: rules.categories.map((c) => c.label).join(", ") });
  const subType = text("sub_type", f.subType, L.sub_type_chars);
  const severity = num("severity", f.severity, L.severity, true);
  const confidence = num("confidence", f.confidence, L.confidence, false);
  const killed = optInt("casualties.killed", f.killed, L.casualties);
  const injured = optInt("casualties.injured", f.injured, L.casualties);
  const missing = optInt("casualties.missing", f.missing, L.casualties);
  const narrative = text("narrative", f.narrative, L.narrative_chars);

  if (f.attachments.length > L.attachments)
    bad("attachments", "too_many", { limit: L.attachments, given: f.attachments.length });
  f.attachments.forEach((a, i) => {
    if (a.size > L.attachment_bytes)
      bad(`attachments[${i}]`, "too_large", { limit: L.attachment_bytes, given: a.size });
    if (!mediaTypePattern.test(a.mediaType))
      bad(`attachments[${i}].media_type`, "pattern", { given: a.mediaType });
    else if (chars(a.mediaType) > L.media_type_chars)
      bad(`attachments[${i}]`, "too_long", { limit: L.media_type_chars, given: chars(a.mediaType) });
    text(`attachments[${i}].name`, a.name, L.attachment_name_chars);
  });
  const corrects = f.corrects.trim();
  if (corrects !== "" && !uuid7Pattern.test(corrects)) bad("corrects", "pattern", { given: corrects });

  if (problems.length > 0 || category === undefined) return { draft: null, problems };
  return {
    draft: {
      zone: f.zone,
      observedAtMs,
      lat,
      lon,
      precisionM,
      place,
      category: category.value,
      subType,
      severity,
      confidence,
      killed,
      injured,
      missing,
      civilian: f.civilian,
      narrative,
      attachments: f.attachments,
      corrects,
    },
    problems,
  };
}
