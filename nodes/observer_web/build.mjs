// Bundle the form into dist/ (served by the gateway at /app/, nodes/gateway/webapp.py):
// app.js (the page), sw.js (the service worker, with the list of files it keeps and a version
// that changes with their content), and the static files. Also checks that every category and
// every message has a label in every language, so a new category cannot ship untranslated.
import { build } from "esbuild";
import { createHash } from "node:crypto";
import { copyFile, mkdir, readFile, readdir, rm, writeFile } from "node:fs/promises";

const rules = JSON.parse(await readFile("build/rules.json", "utf8"));
const out = "dist";
await rm(out, { recursive: true, force: true });
await mkdir(out, { recursive: true });

const common = { bundle: true, minify: true, format: "esm", target: "es2022", legalComments: "none" };
await build({ ...common, entryPoints: ["src/app.ts"], outfile: `${out}/app.js` });
for (const name of await readdir("static")) await copyFile(`static/${name}`, `${out}/${name}`);

// The translations, checked against the exported taxonomy.
const i18n = await build({ ...common, entryPoints: ["src/i18n.ts"], write: false, format: "esm" });
const { DICTIONARIES } = await import(
  `data:text/javascript;base64,${Buffer.from(i18n.outputFiles[0].text).toString("base64")}`
);
const keys = new Set([
  ...Object.keys(DICTIONARIES.en),
  ...rules.categories.map((c) => `c.${c.label}`),
]);
const missing = [];
for (const [lang, dict] of Object.entries(DICTIONARIES))
  for (const k of keys) if (!(k in dict)) missing.push(`${lang}:${k}`);
if (missing.length) throw new Error(`labels missing: ${missing.join(", ")}`);

const files = (await readdir(out)).sort();
const hash = createHash("sha256");
for (const f of files) hash.update(f).update(await readFile(`${out}/${f}`));
const version = hash.digest("hex").slice(0, 16);
const appFiles = ["./", ...files.map((f) => `./${f}`)];
await build({
  ...common,
  entryPoints: ["src/sw.ts"],
  outfile: `${out}/sw.js`,
  define: { APP_FILES: JSON.stringify(appFiles), APP_VERSION: JSON.stringify(version) },
});
await writeFile(`${out}/version.txt`, `${version}\n`);
console.log(`built ${out}/ (version ${version}): ${files.concat("sw.js").join(", ")}`);
