// Drives the manager's console in headless Chromium:
//   node console.mjs SCENARIO URL SCREENSHOT [ARGS...]
// with the bearer token in $CONSOLE_TOKEN (never on the command line). Saves a screenshot of
// the page at the end to SCREENSHOT and prints one JSON object of what the page showed; on
// failure prints what went wrong and the screenshot's path and exits 1.
//
//   inspect                  sign in, wait for the three sections, report what is shown
//   click ID BUTTON SELECTOR sign in, click BUTTON inside #ID (confirming), wait for SELECTOR
//                           and for the action's audit row
//   weights MODEL V=W,...    sign in, type MODEL's traffic weights, submit, wait for "done"
//                           and for the action's audit row
//   refused                  sign in with a token the manager refuses, report the login form
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const [scenario, url, screenshot, ...args] = process.argv.slice(2);
const token = process.env.CONSOLE_TOKEN ?? "";
const TIMEOUT_MS = 30_000;

const profile = mkdtempSync(join(tmpdir(), "console-chromium-"));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: "/usr/bin/chromium",
  headless: true,
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--no-first-run",
  ],
});
const page = context.pages()[0] ?? (await context.newPage());
page.setDefaultTimeout(TIMEOUT_MS);
const consoleErrors = [];
page.on("console", (msg) => { if (msg.type() === "error") consoleErrors.push(msg.text()); });
page.on("dialog", (dialog) => dialog.accept());

async function signIn() {
  await page.goto(`${url}/ui`);
  await page.locator("#login").waitFor({ state: "visible" });
  await page.fill("#token", token);
  await page.click("#login-form button[type=submit]");
}

async function shown() {
  await page.locator("#console").waitFor({ state: "visible" });
  await page.locator("#fleet table.workers").waitFor();
  await page.locator("#models article.model").first().waitFor();
  await page.locator("#audit table, #audit p").first().waitFor();
  return page.evaluate(() => {
    const texts = (sel, root = document) => [...root.querySelectorAll(sel)].map((e) => e.textContent.trim());
    const models = {};
    for (const article of document.querySelectorAll("article.model")) {
      models[article.id.replace(/^model-/, "")] = {
        state: article.dataset.state,
        buttons: texts("button", article),
        weight_inputs: article.querySelectorAll("input[type=number]").length,
        charts: Object.fromEntries(
          [...article.querySelectorAll("figure.chart")].map((f) => [
            f.dataset.chart, f.querySelector("polyline").getAttribute("points").trim().split(/\s+/).filter(Boolean).length,
          ]),
        ),
        versions: article.querySelectorAll("table.versions tbody tr").length,
        message: article.querySelector(".message").textContent.trim(),
      };
    }
    return {
      whoami: texts("#whoami")[0],
      workers: [...document.querySelectorAll("table.workers tbody tr[id]")].map((tr) => ({
        id: tr.id.replace(/^worker-/, ""), text: tr.textContent.replace(/\s+/g, " ").trim(), buttons: texts("button", tr),
      })),
      gateways: [...document.querySelectorAll("table.gateways tbody tr[id]")].map((tr) => tr.textContent.replace(/\s+/g, " ").trim()),
      models,
      audit: texts("#audit tbody tr").concat(texts("#audit p")),
      storage_keys: Object.keys(sessionStorage),
      local_storage_keys: Object.keys(localStorage),
    };
  });
}

// The audit panel refreshes after the action's flash; when the signed-in role may read it
// (the panel holds a table), wait until its newest row is not the one it showed before the
// action, so the report includes the action's own audit entry.
async function newestAudit() {
  return page.evaluate(() => {
    const row = document.querySelector("#audit tbody tr");
    return row === null ? null : row.textContent.trim();
  });
}

async function auditMoved(before) {
  if (before === null) return;
  await page.waitForFunction(
    (previous) => document.querySelector("#audit tbody tr")?.textContent.trim() !== previous,
    before,
  );
}

async function run() {
  if (scenario === "inspect") {
    await signIn();
    return shown();
  }
  if (scenario === "click") {
    const [id, button, selector] = args;
    await signIn();
    await shown();
    const before = await newestAudit();
    await page.locator(`#${id} button`, { hasText: new RegExp(`^${button}$`) }).click();
    await page.locator(selector).waitFor();
    await auditMoved(before);
    return { flash: (await page.textContent("#flash")).trim(), after: await shown() };
  }
  if (scenario === "weights") {
    const [model, weights] = args;
    await signIn();
    await shown();
    const before = await newestAudit();
    const article = page.locator(`#model-${model}`);
    for (const pair of weights.split(",")) {
      const [version, weight] = pair.split("=");
      await article.locator(`input[name="${version}"]`).fill(weight);
    }
    await article.locator("button", { hasText: "set weights" }).click();
    await page.locator("#flash", { hasText: `traffic ${model}: done` }).waitFor();
    await auditMoved(before);
    return { after: await shown() };
  }
  if (scenario === "refused") {
    await signIn();
    await page.locator("#login-error", { hasText: "Token refused" }).waitFor();
    return {
      login_visible: await page.isVisible("#login"),
      console_visible: await page.isVisible("#console"),
      error: (await page.textContent("#login-error")).trim(),
      storage_keys: await page.evaluate(() => Object.keys(sessionStorage)),
    };
  }
  throw new Error(`unknown scenario ${scenario}`);
}

let code = 0;
try {
  const result = await run();
  await page.screenshot({ path: screenshot, fullPage: true });
  console.log(JSON.stringify({ ...result, console_errors: consoleErrors, screenshot }));
} catch (err) {
  code = 1;
  await page.screenshot({ path: screenshot, fullPage: true }).catch(() => {});
  console.error(`${scenario} failed: ${err.stack}\nconsole errors: ${consoleErrors.join("; ")}\nscreenshot: ${screenshot}`);
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
process.exit(code);
