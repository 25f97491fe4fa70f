// The console walkthrough in a real browser (Debian's Chromium, headless): sign in, create a
// product, upload a release through the form, approve it, roll it out, watch an agent's install
// appear in the report, download it from /downloads, export events as CSV, disapprove.
// Started by tests/it/browser.rs with a running server and an enrolled agent; exits non-zero on
// the first failed check. Every page visited is checked for unlabelled controls and, at 390px,
// for sideways scrolling; the sign-in page for its Tab order. One screenshot per page goes to
// UPKEEP_SCREENSHOTS.

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { chromium } from "playwright-core";

const need = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};
const base = need("UPKEEP_URL");
const password = need("UPKEEP_ADMIN_PASSWORD");
const agent = need("UPKEEP_AGENT_BIN");
const agentState = need("UPKEEP_AGENT_STATE");
const artifact = need("UPKEEP_ARTIFACT");
const shots = need("UPKEEP_SCREENSHOTS");
mkdirSync(shots, { recursive: true });

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox"],
});
let step = 0;

async function shot(page, name) {
  step += 1;
  await page.screenshot({ path: join(shots, `${String(step).padStart(2, "0")}-${name}.png`), fullPage: true });
}

// Every visible form control has a label a screen reader can read.
async function checkLabels(page) {
  const unlabelled = await page.evaluate(() =>
    [...document.querySelectorAll("input, select, textarea")]
      .filter((el) => el.type !== "hidden" && !el.closest("[hidden]"))
      .filter((el) => el.labels.length === 0 && !el.getAttribute("aria-label"))
      .map((el) => el.name || el.id),
  );
  assert.deepEqual(unlabelled, [], `unlabelled controls on ${page.url()}`);
}

// On a phone-sized screen the page itself never scrolls sideways: a wide table may scroll
// inside its own box, the page body may not.
async function checkNarrow(page) {
  const size = page.viewportSize();
  await page.setViewportSize({ width: 390, height: 844 });
  const { overflow, culprits } = await page.evaluate(() => {
    const width = document.documentElement.clientWidth;
    const describe = (el) => el.tagName.toLowerCase() + (el.id ? `#${el.id}` : "") + [...el.classList].map((c) => `.${c}`).join("");
    return {
      overflow: Math.max(document.documentElement.scrollWidth, document.body.scrollWidth) - width,
      // The elements sticking out whose children do not: where to look.
      culprits: [...document.body.querySelectorAll("*")]
        .filter((el) => el.getBoundingClientRect().right > width + 0.5)
        .filter((el) => ![...el.children].some((c) => c.getBoundingClientRect().right > width + 0.5))
        .slice(0, 5)
        .map(describe),
    };
  });
  await page.setViewportSize(size);
  assert.ok(overflow <= 0, `${page.url()} is ${overflow}px wider than a phone screen: ${culprits.join(", ")}`);
}

// The checks every page gets: labels, no sideways scrolling on a phone, and a screenshot.
async function checkPage(page, name) {
  await checkLabels(page);
  await checkNarrow(page);
  await shot(page, name);
}

async function visit(page, path, name) {
  const response = await page.goto(base + path);
  assert.equal(response.status(), 200, `${path} answered ${response.status()}`);
  await checkPage(page, name);
}

// What has keyboard focus, in words.
const focused = (page) =>
  page.evaluate(() => {
    const el = document.activeElement;
    if (el.matches("a.skip")) return "skip link";
    if (el.matches("button[type=submit]")) return `button ${el.textContent.trim()}`;
    return el.id || el.outerHTML;
  });

try {
  const context = await browser.newContext({ acceptDownloads: true, viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();

  // Signed out, the console sends people to the sign-in form.
  await page.goto(base + "/products");
  assert.match(page.url(), /\/login\?next=%2Fproducts$/);
  await checkPage(page, "sign-in");
  // From the top of the page, Tab reaches the skip link (shown once focused), the user name,
  // the password and the button, in that order.
  await page.mouse.click(1, 1);
  const tabOrder = [];
  for (let i = 0; i < 4; i += 1) {
    await page.keyboard.press("Tab");
    tabOrder.push(await focused(page));
    if (i === 0) {
      const box = await page.locator("a.skip").boundingBox();
      assert.ok(box && box.x >= 0 && box.y >= 0, `the focused skip link is off-screen: ${JSON.stringify(box)}`);
    }
  }
  assert.deepEqual(tabOrder, ["skip link", "user", "password", "button Sign in"]);
  await page.getByLabel("User name").fill("admin");
  await page.getByLabel("Password").fill(password);
  await page.getByRole("button", { name: "Sign in", exact: true }).click();
  await page.waitForURL(base + "/products");

  // A product offered on the download page.
  await page.getByLabel("Name (letters, digits, dot, dash, underscore)").fill("editor");
  await page.getByLabel("Offer its latest approved installers on the public download page").check();
  await checkPage(page, "products");
  await page.getByRole("button", { name: "Create product", exact: true }).click();
  await page.waitForURL(base + "/products/editor");
  assert.match(await page.textContent("main"), /Its latest approved installers are on the/);

  // Upload through the form. The progress box stays hidden until an upload starts (also without
  // the script); then the script shows it, reports in its status line, and lands on the release
  // page.
  const progress = page.locator(".upload-progress");
  assert.equal(await progress.isVisible(), false, "the upload progress bar shows before any upload");
  const noScript = await browser.newContext({ javaScriptEnabled: false, storageState: await context.storageState() });
  const plain = await noScript.newPage();
  await plain.goto(base + "/products/editor");
  assert.equal(await plain.locator("form[data-upload]").count(), 1);
  assert.equal(await plain.locator(".upload-progress").isVisible(), false, "without the script the progress bar shows");
  await noScript.close();
  await page.getByLabel(/^Version/).fill("1.0.0");
  await page.getByLabel(/^Platform/).fill("linux-x86_64");
  await page.getByLabel("Release notes (Markdown)").fill("## What's new\n\n* **Faster** start-up\n* <script>alert('x')</script> shown as text\n");
  await page.getByLabel(/^Program to launch/).fill("bin/demo");
  await page.setInputFiles("#artifact", artifact);
  await checkPage(page, "upload-form");
  const seen = [];
  await page.exposeFunction("uploadProgressSeen", (state) => seen.push(state));
  await page.evaluate(() => {
    const box = document.querySelector(".upload-progress");
    const status = box.querySelector(".upload-status");
    const report = () => window.uploadProgressSeen({ visible: box.checkVisibility(), status: status.textContent });
    new MutationObserver(report).observe(box, { attributes: true, childList: true, characterData: true, subtree: true });
  });
  await page.getByRole("button", { name: "Upload", exact: true }).click();
  await page.waitForURL(base + "/products/editor/releases/1.0.0");
  // What the box showed, in order: empty at first, then "N% uploaded (x of y)", then the wait.
  const shown = JSON.stringify(seen);
  assert.ok(seen.length > 0 && seen.every((s) => s.visible), `the progress box did not show: ${shown}`);
  const percentages = seen.map((s) => s.status).filter((t) => /%/.test(t));
  assert.ok(percentages.length > 0, `the status line showed no percentage: ${shown}`);
  const amount = String.raw`(\d+ bytes|\d+\.\d [KMGT]B)`;
  for (const line of percentages) {
    assert.match(line, new RegExp(String.raw`^\d{1,3}% uploaded \(${amount} of ${amount}\)$`), shown);
  }
  assert.equal(seen.at(-1).status, "Uploaded; the server is checking the file…", shown);
  assert.equal((await page.textContent(".approval .badge")).trim(), "pending");
  assert.equal(await page.textContent(".notes h2"), "What's new");
  assert.equal(await page.textContent(".notes strong"), "Faster");
  assert.equal(await page.locator(".notes script").count(), 0, "a script tag from the notes reached the page");
  assert.match(await page.textContent(".notes"), /<script>alert\('x'\)<\/script> shown as text/);
  const sha256 = createHash("sha256").update(readFileSync(artifact)).digest("hex");
  assert.equal((await page.textContent("code.hash")).trim(), sha256);
  await checkPage(page, "release-pending");

  // Approve with a reason.
  await page.getByLabel("Reason (optional)").fill("passed QA");
  await page.getByRole("button", { name: "Approve", exact: true }).click();
  await page.waitForURL(base + "/products/editor/releases/1.0.0");
  assert.equal((await page.textContent(".approval .badge")).trim(), "approved");
  assert.match(await page.textContent(".approval"), /passed QA/);
  await checkPage(page, "release-approved");

  // Create a rollout from the release page: every workstation, mandatory.
  await page.getByRole("link", { name: "Create a rollout of this release" }).click();
  await page.waitForURL(/\/rollouts\/new\?/);
  assert.equal(await page.locator("#release option:checked").textContent(), "editor 1.0.0");
  await page.getByLabel("All workstations").check();
  await page.getByLabel("Mandatory: the old version").check();
  await checkPage(page, "rollout-new");
  await page.getByRole("button", { name: "Create rollout", exact: true }).click();
  await page.waitForURL(/\/rollouts\/\d+$/);
  const reportUrl = page.url();
  assert.match(await page.textContent("h1"), /Rollout \d+ — editor 1\.0\.0/);
  assert.equal((await page.textContent(".summary .badge")).trim(), "active");

  // The agent installs; the report shows it.
  const out = execFileSync(agent, ["--state", agentState, "update"], {
    env: { ...process.env, UPKEEP_AGENT_PLATFORM: "linux-x86_64", UPKEEP_AGENT_UTC_OFFSET_MINUTES: "0" },
    encoding: "utf8",
  });
  assert.match(out, /editor/);
  await page.goto(reportUrl);
  const row = page.locator("table.workstations tbody tr").first();
  assert.equal((await row.locator(".badge").textContent()).trim(), "installed");
  assert.match(await page.textContent("table.workstations caption"), /^1 of 1 workstations/);
  assert.match(await page.getAttribute(".progress svg", "aria-label"), /1 installed/);
  await checkPage(page, "rollout-report");
  // The filter narrows the table.
  await page.getByLabel("Status").selectOption("failed");
  await page.getByRole("button", { name: "Filter", exact: true }).click();
  assert.match(await page.textContent("table.workstations caption"), /^0 of 1 workstations/);

  // The dashboard counts the fleet and draws the versions installed.
  await visit(page, "/", "dashboard");
  assert.equal((await page.textContent(".tile .big")).trim(), "1");
  assert.match(await page.getAttribute("figure.chart svg", "aria-label"), /1\.0\.0: 1 workstation\b/);
  // The narrow layout, reloaded at phone size.
  await page.setViewportSize({ width: 390, height: 844 });
  await page.reload();
  await checkPage(page, "dashboard-narrow");
  await page.setViewportSize({ width: 1280, height: 900 });

  await visit(page, "/workstations", "workstations");
  await page.locator("table tbody a").first().click();
  assert.match(await page.textContent("main"), /editor/);
  await checkPage(page, "workstation");

  // Public downloads, without signing in: the same bytes, and the digest shown matches.
  const visitor = await browser.newContext({ acceptDownloads: true });
  const pub = await visitor.newPage();
  const downloads = await pub.goto(base + "/downloads");
  assert.equal(downloads.status(), 200);
  assert.match(await pub.textContent("main"), /editor 1\.0\.0 for linux-x86_64/);
  assert.equal((await pub.textContent("code.hash")).trim(), sha256);
  await checkPage(pub, "downloads");
  const [download] = await Promise.all([
    pub.waitForEvent("download"),
    pub.getByRole("link", { name: /^Download / }).click(),
  ]);
  const got = createHash("sha256").update(readFileSync(await download.path())).digest("hex");
  assert.equal(got, sha256, "the downloaded file differs from the release");

  // Events: filter, then export what the filter shows as CSV.
  await visit(page, "/events", "events");
  await page.getByLabel(/^Product/).fill("editor");
  await page.getByRole("button", { name: "Filter", exact: true }).click();
  await page.waitForURL(/\/events\?/);
  const [csv] = await Promise.all([
    page.waitForEvent("download"),
    page.getByRole("link", { name: "Export as CSV" }).click(),
  ]);
  const lines = readFileSync(await csv.path(), "utf8").trim().split(/\r?\n/);
  assert.equal(lines[0], "id,at,type,actor,product,version,workstation_id,rollout_id,error_code,message,details");
  const types = lines.slice(1).map((l) => l.split(",")[2]);
  for (const t of ["release.uploaded", "release.approved", "rollout.created", "workstation.installed"]) {
    assert.ok(types.includes(t), `${t} is missing from the CSV: ${types}`);
  }
  assert.ok(lines.slice(1).every((l) => l.split(",")[4] === "editor"), "the CSV ignored the product filter");

  // Disapprove: the badge changes and /downloads stops offering it.
  await page.goto(base + "/products/editor/releases/1.0.0");
  await page.getByLabel("Reason", { exact: true }).fill("crashes on start");
  await page.getByRole("button", { name: "Disapprove", exact: true }).click();
  await page.waitForURL(base + "/products/editor/releases/1.0.0");
  assert.equal((await page.textContent(".approval .badge")).trim(), "disapproved");
  await checkPage(page, "release-disapproved");
  await pub.reload();
  assert.match(await pub.textContent("main"), /Nothing is offered for download yet/);

  // The remaining pages render for an admin.
  await visit(page, "/rollouts", "rollouts");
  await visit(page, "/notification-groups", "notification-groups");
  await visit(page, "/components", "server-components");
  await visit(page, "/users", "users");
  await visit(page, "/account", "account");

  // Sign out ends the session.
  await page.getByRole("button", { name: "Sign out", exact: true }).click();
  await page.waitForURL(base + "/login");
  await page.goto(base + "/");
  assert.match(page.url(), /\/login\?next=/);
  console.log(`console walkthrough passed; ${step} screenshots in ${shots}`);
} finally {
  await browser.close();
}
