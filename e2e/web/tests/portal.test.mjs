// Browser tests of the admin web portal: a real `postern serve` over a fresh SQLite database,
// driven through Debian's Chromium with playwright-core. The steps run in order and share one
// signed-in browser page, like an administrator working through the service-account flows.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { mkdtempSync, mkdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import WebSocket from "ws";
import { createServer } from "node:http";
import { createHmac, generateKeyPairSync, sign as cryptoSign, timingSafeEqual } from "node:crypto";

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, "../../..");
const binary = process.env.POSTERN_BIN || join(root, "target/debug/postern");
// Screenshots of the main pages; `POSTERN_SCREENSHOTS_DIR=$PWD/docs/screenshots` refreshes the
// README's.
const shots = process.env.POSTERN_SCREENSHOTS_DIR
  ? resolve(process.env.POSTERN_SCREENSHOTS_DIR)
  : join(tmpdir(), "postern-e2e-screenshots");
const EMAIL = "ada@example.com";
const PASSWORD = "correct-horse-battery-staple";

let dataDir;
let server;
let base;
let apiToken;
let browser;
let page;
const state = {};

function postern(args, input) {
  const result = spawnSync(binary, [...args, "--data-dir", dataDir], {
    input,
    encoding: "utf8",
  });
  assert.equal(result.status, 0, `postern ${args.join(" ")} failed: ${result.stderr}`);
  return result.stdout.trim();
}

function startServer() {
  return new Promise((resolveAddr, reject) => {
    server = spawn(binary, ["serve", "--listen", "127.0.0.1:0", "--data-dir", dataDir], {
      env: { ...process.env, RUST_LOG: "info" },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let output = "";
    const timer = setTimeout(() => reject(new Error(`portal did not start:\n${output}`)), 30000);
    const onData = (chunk) => {
      output += chunk.toString();
      const match = output.match(/listening on (http:\/\/[0-9.:]+)/);
      if (match) {
        clearTimeout(timer);
        resolveAddr(match[1]);
      }
    };
    server.stdout.on("data", onData);
    server.stderr.on("data", onData);
    server.on("exit", (code) => reject(new Error(`portal exited with ${code}:\n${output}`)));
  });
}

function dateInDays(days) {
  const d = new Date(Date.now() + days * 86400000);
  return d.toISOString().slice(0, 10);
}

// Opens the client WebSocket with a service-account token; resolves with the first message, or
// with {status} when the upgrade is refused.
function connectClient(token, id = "e2e-client", extra = "") {
  const host = base.replace(/^http/, "ws");
  return new Promise((resolveConn) => {
    const ws = new WebSocket(`${host}/v1/client/websocket?id=${id}&name=${id}&version=1${extra}`, {
      headers: { Authorization: `Bearer ${token}`, "x-postern-protocol": "1" },
    });
    ws.on("message", (data) => resolveConn({ ws, message: JSON.parse(data.toString()) }));
    ws.on("unexpected-response", (_req, res) => {
      resolveConn({ status: res.statusCode });
      ws.terminate();
    });
    ws.on("error", () => {});
  });
}

async function api(path) {
  const res = await fetch(`${base}${path}`, { headers: { Authorization: `Bearer ${apiToken}` } });
  assert.equal(res.status, 200, `GET ${path}`);
  return res.json();
}

// Waits until the API lists `count` clients of the service account: a session is told `init`
// a moment before its device row is written.
async function clientsListed(count) {
  for (let i = 0; i < 250; i++) {
    const listed = await api(`/v1/clients?actor_id=${state.actorId}&limit=500`);
    if (listed.data.length >= count) return;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`fewer than ${count} clients listed`);
}

async function shot(name) {
  await page.screenshot({ path: join(shots, `${name}.png`), fullPage: true });
}

before(async () => {
  dataDir = mkdtempSync(join(tmpdir(), "postern-e2e-"));
  mkdirSync(shots, { recursive: true });
  postern(["admin", "create", "--email", EMAIL, "--name", "Ada Lovelace"], `${PASSWORD}\n`);
  apiToken = postern(["api-token", "create", "--name", "e2e-api"]);
  base = await startServer();
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
  });
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  page = await context.newPage();
  page.setDefaultTimeout(15000);
});

after(async () => {
  await browser?.close();
  server?.removeAllListeners("exit");
  server?.kill("SIGTERM");
  if (dataDir) rmSync(dataDir, { recursive: true, force: true });
});

test("a wrong password is refused with an error on the page", async () => {
  await page.goto(`${base}/actors`);
  assert.match(page.url(), /\/login$/);
  await shot("sign-in");
  await page.fill("#email", EMAIL);
  await page.fill("#password", "not-the-password");
  await page.click("[data-testid=sign-in]");
  await page.waitForSelector("[data-testid=login-error]");
  assert.match(await page.textContent("[data-testid=login-error]"), /not right/);
  assert.match(page.url(), /\/login$/);
});

test("the right password signs in to the actors list", async () => {
  await page.fill("#email", EMAIL);
  await page.fill("#password", PASSWORD);
  await page.click("[data-testid=sign-in]");
  await page.waitForURL(/\/actors$/);
  assert.equal(await page.textContent("[data-testid=page-title]"), "Actors");
  const cookies = await page.context().cookies();
  const session = cookies.find((c) => c.name === "postern_session");
  assert.ok(session, "session cookie set");
  assert.equal(session.httpOnly, true);
  assert.equal(session.sameSite, "Strict");
});

test("a group is created from the Groups page", async () => {
  await page.click("[data-testid=nav-groups]");
  await page.fill("#name", "engineering");
  await page.click("[data-testid=create-group]");
  await page.waitForSelector("[data-testid=page-title]:has-text('engineering')");
  await page.click("[data-testid=nav-groups]");
  await page.fill("#name", "fleet");
  await page.click("[data-testid=create-group]");
  await page.waitForSelector("[data-testid=page-title]:has-text('fleet')");
});

test("Add Actor → Service Account shows the token once, with the chosen expiry", async () => {
  await page.click("[data-testid=nav-actors]");
  await page.click("[data-testid=add-actor]");
  await page.click("[data-testid=type-service-account]");
  const defaultExpiry = await page.inputValue("#expires_at");
  assert.equal(defaultExpiry, dateInDays(365), "expiry defaults to today + 365 days");
  // Validation errors appear next to the field.
  await page.fill("#expires_at", "2001-01-01");
  await page.click("[data-testid=create-service-account]");
  await page.waitForSelector("[data-testid=error-name]");
  await page.waitForSelector("[data-testid=error-expires_at]");
  state.expiry = dateInDays(90);
  await page.fill("#name", "ci-runner");
  await page.check("[data-testid='check-engineering']");
  await page.fill("#expires_at", state.expiry);
  await shot("add-service-account");
  await page.click("[data-testid=create-service-account]");
  await page.waitForSelector("[data-testid=token-once]");
  state.actorUrl = page.url().replace(/\/token$/, "");
  state.actorId = state.actorUrl.split("/").pop();
  state.token = await page.inputValue("[data-testid=token-secret]");
  assert.match(state.token, /^postern_client_[0-9A-Za-z]{71}$/);
  assert.match(await page.textContent("[data-testid=token-once]"), /will not be shown again/);
  assert.ok(await page.isVisible("[data-testid=copy-token]"));
  await shot("token-shown-once");
});

test("after a reload the token is not shown again", async () => {
  await page.reload();
  await page.waitForSelector("[data-testid=token-gone]");
  assert.equal(await page.locator("[data-testid=token-secret]").count(), 0);
  assert.ok(!(await page.content()).includes(state.token), "the secret is gone from the page");
});

test("the token read from the page authenticates a headless client", async () => {
  const { ws, message } = await connectClient(state.token);
  assert.equal(message.type, "init");
  state.ws = ws;
  const tokens = await api(`/v1/actors/${state.actorId}/tokens`);
  const used = tokens.data.find((t) => t.name === "default");
  assert.ok(used.last_used_at, "the API lists the token as used");
  await clientsListed(1);
  await page.goto(state.actorUrl);
  const row = page.locator("[data-testid=token-row][data-name=default]");
  assert.equal((await row.locator("[data-testid=token-online]").textContent()).trim(), "1");
  assert.match(await row.textContent(), new RegExp(state.expiry));
  assert.match(await page.textContent("[data-testid=clients-table]"), /e2e-client/);
  assert.doesNotMatch(await page.textContent("[data-testid=actor-last-seen]"), /Never/);
});

test("a second token is added from the ⋮ menu", async () => {
  await page.click("[data-testid=actor-menu-button]");
  await page.click("[data-testid=menu-add-token]");
  await page.fill("#name", "rotation-2");
  await page.fill("#expires_at", dateInDays(60));
  await page.click("[data-testid=create-token]");
  await page.waitForSelector("[data-testid=token-once]");
  const second = await page.inputValue("[data-testid=token-secret]");
  assert.match(second, /^postern_client_/);
  assert.notEqual(second, state.token);
  state.second = second;
  await page.click("[data-testid=token-done]");
  await page.waitForSelector("[data-testid=token-row][data-name=rotation-2]");
  assert.equal(await page.locator("[data-testid=token-row]").count(), 2);
});

test("the trash icon revokes a token after confirmation; the row stays as revoked", async () => {
  const row = page.locator("[data-testid=token-row][data-name=default]");
  await row.locator("[data-testid=revoke-token]").click();
  const dialog = row.locator("dialog");
  await dialog.waitFor({ state: "visible" });
  await shot("confirm-revoke");
  await dialog.locator("[data-testid=confirm-revoke]").click();
  await page.waitForSelector("[data-testid=token-row][data-name=default][data-state=revoked]");
  assert.match(await row.locator("[data-testid=token-status]").textContent(), /Revoked/);
  assert.equal(await row.locator("[data-testid=revoke-token]").count(), 0);
  const active = page.locator("[data-testid=token-row][data-name=rotation-2]");
  assert.match(await active.locator("[data-testid=token-status]").textContent(), /Active/);
  await shot("service-account-detail");
  state.ws.terminate();
  const refused = await connectClient(state.token, "e2e-client-2");
  assert.equal(refused.status, 401, "a revoked token is refused");
  const { ws, message } = await connectClient(state.second, "e2e-client-3");
  assert.equal(message.type, "init", "the other token still works");
  ws.terminate();
});

test("Block on a client row ends that device and refuses it; Unblock lets it back", async () => {
  const blocked = await connectClient(state.second, "e2e-blocked");
  assert.equal(blocked.message.type, "init");
  const disconnect = new Promise((resolveMsg) => {
    blocked.ws.on("message", (data) => {
      const message = JSON.parse(data.toString());
      if (message.type === "disconnect") resolveMsg(message);
    });
  });
  await clientsListed(3);
  await page.goto(state.actorUrl);
  const row = page.locator("[data-testid=client-row][data-name=e2e-blocked]");
  assert.match(await row.locator("[data-testid=client-status]").textContent(), /Online/);
  await row.locator("[data-testid=block-client]").click();
  const dialog = row.locator("dialog");
  await dialog.waitFor({ state: "visible" });
  await dialog.locator("[data-testid=confirm-block]").click();
  await page.waitForSelector("[data-testid=client-row][data-name=e2e-blocked] [data-testid=unblock-client]");
  assert.match(await row.locator("[data-testid=client-status]").textContent(), /Blocked/);
  await shot("client-blocked");
  assert.equal((await disconnect).reason, "device_blocked", "the live session is ended");
  blocked.ws.terminate();
  const refused = await connectClient(state.second, "e2e-blocked");
  assert.equal(refused.status, 403, "the blocked device is refused");
  const other = await connectClient(state.second, "e2e-other");
  assert.equal(other.message.type, "init", "the token still serves the other devices");
  other.ws.terminate();
  const listed = await api(`/v1/clients?blocked=true`);
  assert.deepEqual(listed.data.map((c) => c.device_id), ["e2e-blocked"]);
  await row.locator("[data-testid=unblock-client]").click();
  await page.waitForSelector("[data-testid=client-row][data-name=e2e-blocked] [data-testid=block-client]");
  const back = await connectClient(state.second, "e2e-blocked");
  assert.equal(back.message.type, "init", "an unblocked device connects again");
  back.ws.terminate();
});

test("the clients section searches, filters by token and status, and pages", async () => {
  const names = async () =>
    page.locator("[data-testid=client-row]").evaluateAll((rows) => rows.map((r) => r.dataset.name));
  await page.goto(state.actorUrl);
  assert.equal((await page.textContent("[data-testid=clients-count]")).trim(), "(4)");
  await page.fill("[data-testid=clients-q]", "CLIENT-3");
  await page.click("[data-testid=clients-apply]");
  await page.waitForURL(/clients_q=CLIENT-3/);
  assert.deepEqual(await names(), ["e2e-client-3"], "search is on name or device id, any case");

  await page.goto(state.actorUrl);
  await page.selectOption("[data-testid=clients-token]", { label: "default" });
  await page.waitForURL(/clients_token=/);
  assert.deepEqual(await names(), ["e2e-client"], "only the devices of that token");
  await page.selectOption("[data-testid=clients-status]", "blocked");
  await page.waitForURL(/clients_status=blocked/);
  assert.match(await page.textContent("[data-testid=empty-state]"), /No clients match/);

  // A fleet: more devices than a page holds.
  for (let n = 0; n < 50; n++) {
    const { ws } = await connectClient(state.second, `bulk-${String(n).padStart(2, "0")}`);
    ws.terminate();
  }
  await clientsListed(54);
  await page.goto(state.actorUrl);
  assert.equal((await page.textContent("[data-testid=clients-count]")).trim(), "(54)");
  assert.equal((await names()).length, 50);
  await page.click("[data-testid=page-next]");
  await page.waitForURL(/clients_cursor=/);
  assert.equal((await names()).length, 4, "the rest on the next page");
  await shot("clients-page-2");
});

test("a token's guardrails are set on Add Token and edited; a waiting device is approved from its row", async () => {
  await page.goto(state.actorUrl);
  await page.click("[data-testid=actor-menu-button]");
  await page.click("[data-testid=menu-add-token]");
  await page.fill("#name", "kiosks");
  await page.fill("#max_clients", "0");
  await page.click("[data-testid=create-token]");
  await page.waitForSelector("#max_clients[aria-invalid=true]");
  assert.match(await page.textContent("[data-testid=token-form]"), /from 1 to 1000000/);
  await page.fill("#max_clients", "1");
  await page.check("[data-testid=require-approval]");
  await page.click("[data-testid=create-token]");
  await page.waitForSelector("[data-testid=token-once]");
  const secret = await page.inputValue("[data-testid=token-secret]");
  await page.click("[data-testid=token-done]");
  const row = page.locator("[data-testid=token-row][data-name=kiosks]");
  assert.match(await row.locator("[data-testid=token-guardrails]").textContent(), /at most 1 device · approval required/);

  const kiosk = await connectClient(secret, "kiosk-1");
  assert.equal(kiosk.message.type, "init");
  assert.equal(kiosk.message.awaiting_approval, true, "a new device waits");
  assert.deepEqual(kiosk.message.resources, []);
  const heard = (type) =>
    new Promise((resolveMsg) => {
      kiosk.ws.on("message", (data) => {
        const message = JSON.parse(data.toString());
        if (message.type === type) resolveMsg(message);
      });
    });
  const approval = heard("approval");
  const disconnect = heard("disconnect");
  const second = await connectClient(secret, "kiosk-2");
  assert.equal(second.status, 403, "the token serves one device at a time");

  await clientsListed(55);
  await page.goto(state.actorUrl);
  await page.selectOption("[data-testid=clients-status]", "awaiting");
  await page.waitForURL(/clients_status=awaiting/);
  const waiting = page.locator("[data-testid=client-row][data-name=kiosk-1]");
  assert.match(await waiting.locator("[data-testid=client-status]").textContent(), /Awaiting approval/);
  await shot("client-awaiting-approval");
  await waiting.locator("[data-testid=approve-client]").click();
  await page.waitForURL((url) => !url.search.includes("clients_status"));
  assert.equal((await approval).awaiting_approval, false, "the live session is let in");
  const approved = await api(`/v1/clients?device_id=kiosk-1`);
  assert.ok(approved.data[0].approved_at, "approved in the API too");

  await page.goto(state.actorUrl);
  await row.locator("[data-testid=edit-token]").click();
  await page.waitForSelector("[data-testid=token-edit-form]");
  assert.equal(await page.inputValue("#max_clients"), "1");
  await page.fill("#max_clients", "");
  await page.fill("#allowed_source_cidrs", "10.1.2.3/8, 192.0.2.7");
  await page.click("[data-testid=save-token]");
  await page.waitForSelector("[data-testid=token-row][data-name=kiosks]");
  assert.match(
    await row.locator("[data-testid=token-guardrails]").textContent(),
    /from 10.0.0.0\/8 and 1 more · approval required/,
  );
  assert.equal((await disconnect).reason, "source_not_allowed", "a device outside the networks is ended");
  kiosk.ws.terminate();
  const outside = await connectClient(secret, "kiosk-1");
  assert.equal(outside.status, 403, "and refused");
});

test("an ephemeral client is badged, and gone from the page once it says goodbye", async () => {
  const eph = await connectClient(state.second, "eph-1", "&ephemeral=true");
  assert.equal(eph.message.type, "init");
  await page.goto(`${state.actorUrl}?clients_q=eph-1#clients`);
  for (let i = 0; i < 50 && (await page.locator("[data-testid=client-row][data-name=eph-1]").count()) === 0; i++) {
    await new Promise((r) => setTimeout(r, 100));
    await page.reload();
  }
  const row = page.locator("[data-testid=client-row][data-name=eph-1]");
  assert.match(await row.textContent(), /Ephemeral/);
  eph.ws.send(JSON.stringify({ type: "goodbye" }));
  eph.ws.close();
  let listed = [];
  for (let i = 0; i < 100; i++) {
    listed = (await api(`/v1/clients?device_id=eph-1`)).data;
    if (listed.length === 0) break;
    await new Promise((r) => setTimeout(r, 50));
  }
  assert.equal(listed.length, 0, "removed when it said goodbye");
  await page.reload();
  assert.equal(await row.count(), 0);
  assert.match(await page.textContent("[data-testid=empty-state]"), /No clients match/);
});

test("Settings keeps the token lifetime and the device timeouts, refusing values out of range", async () => {
  await page.goto(`${base}/settings`);
  assert.equal(await page.inputValue("#ephemeral_device_timeout_seconds"), "600");
  assert.equal(await page.inputValue("#stale_device_days"), "90");
  await page.fill("#stale_device_days", "0");
  await page.click("[data-testid=save-settings]");
  await page.waitForSelector("#stale_device_days[aria-invalid=true]");
  assert.match(await page.textContent("[data-testid=settings-form]"), /between 1 and 3650/);
  await page.fill("#stale_device_days", "30");
  await page.fill("#ephemeral_device_timeout_seconds", "120");
  await page.click("[data-testid=save-settings]");
  await page.waitForSelector("[data-testid=settings-saved]");
  const account = await api("/v1/account");
  assert.equal(account.data.settings.stale_device_days, 30);
  assert.equal(account.data.settings.ephemeral_device_timeout_seconds, 120);
  assert.equal(await page.inputValue("#ephemeral_device_timeout_seconds"), "120");
  assert.equal(await page.inputValue("#token_expiry_warning_days"), "30");
  await page.fill("#token_expiry_warning_days", "366");
  await page.click("[data-testid=save-settings]");
  await page.waitForSelector("#token_expiry_warning_days[aria-invalid=true]");
  assert.match(await page.textContent("[data-testid=settings-form]"), /between 1 and 365/);
});

test("a token expiring within the warning period is badged and listed on the Tokens page", async () => {
  await page.goto(state.actorUrl);
  await page.click("[data-testid=actor-menu-button]");
  await page.click("[data-testid=menu-add-token]");
  await page.fill("#name", "short-lived");
  await page.fill("#expires_at", dateInDays(5));
  await page.click("[data-testid=create-token]");
  await page.waitForSelector("[data-testid=token-once]");
  await page.click("[data-testid=token-done]");
  const short = page.locator("[data-testid=token-row][data-name=short-lived]");
  await short.waitFor();
  assert.match(await short.locator("[data-testid=token-status]").textContent(), /Expires in [45] days/);
  const later = page.locator("[data-testid=token-row][data-name=rotation-2]");
  assert.match(await later.locator("[data-testid=token-status]").textContent(), /Active/);

  await page.click("[data-testid=nav-tokens]");
  await page.waitForSelector("[data-testid=expiring-tokens-table]");
  const rows = page.locator("[data-testid=expiring-token-row]");
  assert.equal(await rows.count(), 1);
  const row = page.locator("[data-testid=expiring-token-row][data-name=short-lived]");
  assert.match(await row.textContent(), /ci-runner/);
  assert.match(await row.textContent(), /Service account/);
  await shot("expiring-tokens");
  // A longer horizon shows the 60-day token too; the account setting sets the default.
  await page.fill("#within", "90");
  await page.click("[data-testid=expiring-filter] button[type=submit]");
  await page.waitForSelector("[data-testid=expiring-token-row][data-name=rotation-2]");
  await page.goto(`${base}/settings`);
  await page.fill("#token_expiry_warning_days", "90");
  await page.click("[data-testid=save-settings]");
  await page.waitForSelector("[data-testid=settings-saved]");
  assert.equal((await api("/v1/account")).data.settings.token_expiry_warning_days, 90);
  await page.goto(state.actorUrl);
  assert.match(await later.locator("[data-testid=token-status]").textContent(), /Expires in 5\d days/);
  const listed = await api("/v1/tokens?expiring=true");
  assert.deepEqual(listed.data.map((t) => t.name).sort(), ["rotation-2", "short-lived"]);
});

/// A webhook receiver on 127.0.0.1 that records each request's headers and raw body.
function startReceiver() {
  const received = [];
  const server = createServer((req, res) => {
    const chunks = [];
    req.on("data", (chunk) => chunks.push(chunk));
    req.on("end", () => {
      received.push({ headers: req.headers, body: Buffer.concat(chunks) });
      res.writeHead(200).end("ok");
    });
  });
  return new Promise((done) =>
    server.listen(0, "127.0.0.1", () =>
      done({ server, received, url: `http://127.0.0.1:${server.address().port}/hooks/postern` }),
    ),
  );
}

/// The receiver's check of Postern-Signature (docs/webhooks.md), in plain Node.
function signedBy(secret, request) {
  const parts = Object.fromEntries(request.headers["postern-signature"].split(",").map((p) => p.split("=")));
  const mac = createHmac("sha256", secret).update(`${parts.t}.`).update(request.body).digest();
  return Math.abs(Date.now() / 1000 - Number(parts.t)) < 300 && timingSafeEqual(mac, Buffer.from(parts.v1, "hex"));
}

test("a webhook is added with its secret shown once, sent a signed test event, paused and deleted", async () => {
  const receiver = await startReceiver();
  try {
    await page.click("[data-testid=nav-webhooks]");
    await page.waitForSelector("[data-testid=empty-state]");
    await page.fill("#url", "http://hooks.example.com/postern");
    await page.click("[data-testid=create-webhook]");
    await page.waitForSelector("#url[aria-invalid=true]");
    assert.match(await page.textContent("[data-testid=webhook-form]"), /must be https/i);
    await page.fill("#url", receiver.url);
    await page.check("[data-testid='check-token.revoked']");
    await page.click("[data-testid=create-webhook]");
    await page.waitForSelector("[data-testid=webhook-secret-once]");
    const secret = await page.inputValue("[data-testid=webhook-secret]");
    assert.match(secret, /^whsec_[0-9a-f]{64}$/);
    await shot("webhook-secret-once");
    await page.click("[data-testid=secret-done]");
    assert.match(await page.textContent("[data-testid=webhook-events]"), /token\.revoked, token\.leaked, token\.expiring/);
    assert.equal(await page.content().then((html) => html.includes(secret)), false, "the secret is shown again");

    await page.click("[data-testid=send-test]");
    await page.waitForSelector("[data-testid=delivery-row][data-event='webhook.test']");
    for (let i = 0; i < 100 && receiver.received.length === 0; i++) await new Promise((r) => setTimeout(r, 100));
    assert.equal(receiver.received.length, 1, "the receiver got the test event");
    const [request] = receiver.received;
    assert.equal(request.headers["postern-event"], "webhook.test");
    assert.ok(signedBy(secret, request), "the signature verifies with the secret");
    for (let i = 0; i < 50; i++) {
      await page.reload();
      if (await page.locator("[data-testid=delivery-row][data-state=delivered]").count()) break;
      await new Promise((r) => setTimeout(r, 200));
    }
    await page.waitForSelector("[data-testid=delivery-row][data-state=delivered]");
    await shot("webhook-detail");

    await page.click("[data-testid=toggle-enabled]");
    await page.waitForSelector("[data-testid=webhook-state]:has-text('Paused')");
    await page.click("[data-testid=delete-webhook]");
    await page.click("[data-testid=confirm-delete-webhook]");
    await page.waitForSelector("[data-testid=empty-state]");
    assert.deepEqual((await api("/v1/webhooks")).data, []);
  } finally {
    receiver.server.close();
  }
});

test("Rotate on a token's row hands the connected client its successor, shown once", async () => {
  const created = await fetch(`${base}/v1/actors/${state.actorId}/tokens`, {
    method: "POST",
    headers: { Authorization: `Bearer ${apiToken}`, "content-type": "application/json" },
    body: JSON.stringify({ name: "fleet-key" }),
  }).then((res) => res.json());
  const old = created.data.secret;
  const { ws, message } = await connectClient(old, "e2e-rotating");
  assert.equal(message.type, "init");
  const handedOver = new Promise((resolveMessage) => {
    ws.on("message", (data) => {
      const next = JSON.parse(data.toString());
      if (next.type === "token_rotated") resolveMessage(next);
    });
  });

  await page.goto(state.actorUrl);
  const row = page.locator("[data-testid=token-row][data-name=fleet-key]");
  await row.locator("[data-testid=rotate-token]").click();
  await page.waitForSelector("[data-testid=token-rotate-form]");
  await page.selectOption("#overlap", "1h");
  await shot("rotate-token");
  await page.click("[data-testid=confirm-rotate]");
  await page.waitForSelector("[data-testid=token-once]");
  const successor = await page.inputValue("[data-testid=token-secret]");
  assert.match(successor, /^postern_client_/);
  assert.notEqual(successor, old);

  const rotated = await handedOver;
  assert.equal(rotated.secret, successor, "the connected client got the successor");
  const windowEnd = Date.parse(rotated.replaced_token_expires_at);
  assert.ok(Math.abs(windowEnd - Date.now() - 3600_000) < 60_000, "a one-hour window");

  await page.click("[data-testid=token-done]");
  await page.waitForSelector("[data-testid=token-rotation]");
  assert.match(await row.locator("[data-testid=token-rotation]").textContent(), /0 clients moved; 1 still on it; it stops/);
  assert.match(await row.locator("[data-testid=token-status]").textContent(), /Rotated/);
  assert.equal(await row.locator("[data-testid=rotate-token]").count(), 0, "rotated once only");
  const next = page.locator("[data-testid=token-row][data-name^='fleet-key (rotated ']");
  assert.match(await next.locator("[data-testid=token-status]").textContent(), /Active/);

  ws.terminate();
  const moved = await connectClient(successor, "e2e-rotating");
  assert.equal(moved.message.type, "init");
  for (let i = 0; i < 100; i++) {
    await page.reload();
    const text = await row.locator("[data-testid=token-rotation]").textContent();
    if (/1 client moved/.test(text)) break;
    assert.ok(i < 99, `never moved: ${text}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  await shot("token-rotated");
  moved.ws.terminate();
});

// An ID token as a CI system signs it: ES256 over base64url(header).base64url(claims).
function signedIdToken(privateKey, claims) {
  const encode = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");
  const input = `${encode({ alg: "ES256", typ: "JWT", kid: "ci-1" })}.${encode(claims)}`;
  const signature = cryptoSign("sha256", Buffer.from(input), { key: privateKey, dsaEncoding: "ieee-p1363" });
  return `${input}.${signature.toString("base64url")}`;
}

test("a workload identity is added on the service account's page, earns a CI job a token, and its deletion revokes it", async () => {
  const { publicKey, privateKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
  const jwks = { keys: [{ ...publicKey.export({ format: "jwk" }), kid: "ci-1", alg: "ES256", use: "sig" }] };
  const now = Math.floor(Date.now() / 1000);
  const claims = (sub) => ({
    iss: "https://ci.example", aud: "postern", sub, iat: now, exp: now + 300, repository_owner: "acme",
  });

  await page.goto(state.actorUrl);
  await page.click("[data-testid=add-workload-identity]");
  await page.waitForSelector("[data-testid=workload-identity-form]");
  await page.fill("#issuer", "https://ci.example");
  await page.fill("#subject", "*");
  await page.click("[data-testid=create-workload-identity]");
  await page.waitForSelector(".field.invalid #subject");
  assert.match(await page.textContent("[data-testid=workload-identity-form]"), /every\s+workload/);

  await page.fill("#subject", "repo:acme/deploy:*");
  await page.fill("#claims", "repository_owner=acme");
  await page.selectOption("#token_lifetime", "15m");
  await page.fill("#jwks", JSON.stringify(jwks));
  await shot("workload-identity-form");
  await page.click("[data-testid=create-workload-identity]");
  const row = page.locator("[data-testid=workload-identity-row][data-subject='repo:acme/deploy:*']");
  await row.waitFor();
  assert.match(await row.textContent(), /repository_owner=acme/);
  assert.match(await row.textContent(), /15 min/);
  assert.match(await row.locator("[data-testid=workload-identity-last-used]").textContent(), /Never/);

  const exchange = (idToken) =>
    fetch(`${base}/v1/workload-identity/exchange`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ id_token: idToken }),
    });
  const refused = await exchange(signedIdToken(privateKey, claims("repo:evil/deploy:ref:refs/heads/main")));
  assert.equal(refused.status, 401);
  assert.match((await refused.json()).detail, /repo:evil\/deploy/);
  const earned = await exchange(signedIdToken(privateKey, claims("repo:acme/deploy:ref:refs/heads/main")));
  assert.equal(earned.status, 201);
  const token = (await earned.json()).data;
  assert.ok(Math.abs(Date.parse(token.expires_at) - Date.now() - 15 * 60_000) < 60_000, "15 minutes");
  const { ws, message } = await connectClient(token.secret, "e2e-ci-job");
  assert.equal(message.type, "init", "the exchanged token opens a session");
  const closed = new Promise((resolveClose) => ws.on("close", resolveClose));

  await page.reload();
  assert.doesNotMatch(await row.locator("[data-testid=workload-identity-last-used]").textContent(), /Never/);
  await shot("workload-identities");
  await row.locator("[data-testid=delete-workload-identity]").click();
  const dialog = row.locator("dialog");
  await dialog.waitFor({ state: "visible" });
  await dialog.locator("[data-testid=confirm-delete-workload-identity]").click();
  await page.waitForSelector("[data-testid=workload-identities-empty]");
  await closed;
  const after = await connectClient(token.secret, "e2e-ci-job");
  assert.equal(after.status, 401, "its token is revoked");
});

// An OpenID provider (npm oidc-provider, with its development sign-in pages: any login, any
// password) on localhost. `grace` is in the admin group, anyone else in `eng`.
async function startOpenIdProvider() {
  const { default: Provider } = await import("oidc-provider");
  const listener = createServer();
  await new Promise((resolveListen) => listener.listen(0, "127.0.0.1", resolveListen));
  const issuer = `http://127.0.0.1:${listener.address().port}`;
  const oidc = new Provider(issuer, {
    clients: [{
      client_id: "postern",
      client_secret: "postern-client-secret",
      redirect_uris: [`${base}/auth/oidc/callback`],
      post_logout_redirect_uris: [`${base}/auth/oidc/signed-out`],
      grant_types: ["authorization_code"],
      response_types: ["code"],
    }],
    async findAccount(_ctx, id) {
      return {
        accountId: id,
        async claims() {
          return {
            sub: id, email: `${id}@example.com`, email_verified: true, name: `${id} (IdP)`,
            groups: id === "grace" ? ["postern-admins", "eng"] : ["eng"],
          };
        },
      };
    },
    claims: { openid: ["sub"], email: ["email", "email_verified"], profile: ["name"], groups: ["groups"] },
    conformIdTokenClaims: false,
    pkce: { required: () => true },
    features: { devInteractions: { enabled: true } },
  });
  listener.on("request", oidc.callback());
  return { issuer, close: () => listener.close() };
}

test("people sign in through an OpenID provider: a user lands on their page, an admin by group on the portal; a forged state and a replayed code are refused", async () => {
  const idp = await startOpenIdProvider();
  try {
    // Added from Settings → Identity providers.
    await page.click("[data-testid=nav-settings]");
    await page.click("[data-testid=identity-providers-link]");
    assert.equal(await page.textContent("[data-testid=callback-url]"), `${base}/auth/oidc/callback`);
    await page.fill("#name", "Acme SSO");
    await page.fill("#issuer", idp.issuer);
    await page.fill("#client_id", "postern");
    await page.fill("#client_secret", "postern-client-secret");
    await page.fill("#scopes", "email profile groups");
    await page.fill("#admin_groups", "postern-admins");
    await page.click("[data-testid=create-identity-provider]");
    await page.waitForSelector(".field.invalid #admin_groups");
    assert.match(await page.textContent("[data-testid=identity-provider-form]"), /groups_claim/);
    await page.fill("#client_secret", "postern-client-secret");
    await page.fill("#groups_claim", "groups");
    await page.selectOption("#session_lifetime", "8h");
    await page.click("[data-testid=create-identity-provider]");
    await page.waitForSelector("[data-testid=identity-provider-row][data-name='Acme SSO']");
    assert.ok(!(await page.content()).includes("postern-client-secret"), "the secret is never shown");
    await shot("identity-providers");
    const provider = (await api("/v1/identity-providers")).data[0];
    assert.equal(provider.has_client_secret, true);
    assert.deepEqual(provider.scopes, ["email", "profile", "groups"]);
    assert.equal(provider.session_lifetime_seconds, 8 * 3600);

    // Each person in a browser of their own (the provider keeps its own session).
    let person;
    let tab;
    const callbacks = [];
    const signIn = async (login) => {
      await person?.close();
      person = await browser.newContext({ viewport: { width: 1280, height: 800 } });
      tab = await person.newPage();
      tab.setDefaultTimeout(15000);
      tab.on("request", (request) => {
        if (request.url().includes("/auth/oidc/callback")) callbacks.push(request.url());
      });
      await tab.goto(`${base}/login`);
      await tab.click("[data-testid=sign-in-provider][data-name='Acme SSO']");
      await tab.waitForSelector("input[name=login]");
      const authorize = callbacks.length;
      await tab.fill("input[name=login]", login);
      await tab.fill("input[name=password]", "any password");
      await tab.click("button.login-submit");
      await tab.click("button.login-submit"); // consent
      await tab.waitForURL((url) => !url.href.startsWith(idp.issuer) && !url.pathname.startsWith("/auth/"));
      assert.ok(callbacks.length > authorize, "came back through the callback");
    };

    // A user: created on first sign-in, in Everyone, on their own page; the admin pages send
    // them back there.
    await signIn("linus");
    assert.match(tab.url(), /\/me$/);
    assert.equal((await tab.textContent("[data-testid=me-email]")).trim(), "linus@example.com");
    assert.match(await tab.textContent("[data-testid=me-role]"), /User/);
    assert.match(await tab.textContent("[data-testid=me-groups]"), /Everyone/);
    await tab.screenshot({ path: join(shots, "oidc-user.png"), fullPage: true });
    await tab.goto(`${base}/actors`);
    assert.match(tab.url(), /\/me$/, "a user does not reach the admin pages");
    const users = await api("/v1/actors?type=user");
    const linus = users.data.find((actor) => actor.email === "linus@example.com");
    assert.ok(linus, "provisioned as a user");
    await tab.click("[data-testid=sign-out]");
    await tab.waitForURL(/signed_out/);
    await tab.goto(`${base}/me`);
    assert.match(tab.url(), /\/login/, "signed out");

    // A replayed callback is refused: once with this browser's state cookie gone, once with it
    // put back (the sign-in was taken already).
    const used = callbacks.at(-1);
    await tab.goto(used);
    assert.match(await tab.textContent("[data-testid=sign-in-failed]"), /did not start in this browser/);
    const usedState = new URL(used).searchParams.get("state");
    await person.addCookies([{ name: "postern_oidc_state", value: usedState, domain: "127.0.0.1", path: "/auth/oidc" }]);
    await tab.goto(used);
    assert.match(await tab.textContent("[data-testid=sign-in-failed]"), /already used/);
    // A state this browser never sent is refused before anything is looked up.
    await tab.goto(`${base}/auth/oidc/callback?code=forged&state=forged`);
    assert.match(await tab.textContent("[data-testid=sign-in-failed]"), /did not start in this browser/);

    // An admin by group: on the portal's pages.
    await signIn("grace");
    assert.match(tab.url(), /\/actors$/);
    const admins = await api("/v1/actors?type=admin");
    assert.ok(admins.data.some((actor) => actor.email === "grace@example.com"), "provisioned as an admin");
    await person.close();

    // A SCIM token for the directory, shown once: it sees the two people the provider brought.
    await page.goto(`${base}/settings/identity-providers`);
    const row = page.locator("[data-testid=identity-provider-row][data-name='Acme SSO']");
    await row.locator("[data-testid=scim-token]").click();
    const scimToken = await page.inputValue("[data-testid=scim-token-value]");
    assert.match(scimToken, /^postern_scim_/);
    assert.equal(await page.textContent("[data-testid=scim-base-url]"), `${base}/scim/v2`);
    const directory = await fetch(`${base}/scim/v2/Users`, { headers: { Authorization: `Bearer ${scimToken}` } });
    assert.equal(directory.status, 200);
    const people = await directory.json();
    assert.deepEqual(people.Resources.map((user) => user.userName).sort(), ["grace@example.com", "linus@example.com"]);
    await page.click("[data-testid=scim-token-done]");
    // Edited: a longer session for people signing in from now on; the secret kept.
    await row.locator("[data-testid=edit-identity-provider]").click();
    assert.equal(await page.inputValue("#session_lifetime"), "8h");
    await page.selectOption("#session_lifetime", "1d");
    assert.equal(await page.isChecked("[data-testid=sign-out-at-provider]"), false, "off by default");
    assert.match(await page.textContent("[data-testid=identity-provider-edit]"), new RegExp(`${base}/auth/oidc/signed-out`));
    await page.check("[data-testid=sign-out-at-provider]");
    await page.click("[data-testid=save-identity-provider]");
    await page.waitForSelector("[data-testid=identity-provider-row][data-name='Acme SSO']");
    assert.match(await row.textContent(), /24 h/);
    const edited = (await api("/v1/identity-providers")).data[0];
    assert.equal(edited.has_client_secret, true);
    assert.equal(edited.sign_out_at_provider, true);

    // Signing out now goes on to the provider's sign-out (RP-initiated logout, with the ID
    // token as the hint), and back: the provider's session has ended too, so the next sign-in
    // asks for a login again.
    await signIn("grace");
    assert.match(tab.url(), /\/actors$/);
    await tab.click("[data-testid=sign-out]");
    await tab.waitForURL((url) => url.href.startsWith(`${idp.issuer}/session/end`));
    await tab.click("button[name=logout][value=yes]");
    await tab.waitForURL(/\/login\?signed_out=1/);
    await tab.goto(`${base}/actors`);
    assert.match(tab.url(), /\/login/, "signed out of the portal");
    await tab.click("[data-testid=sign-in-provider][data-name='Acme SSO']");
    await tab.waitForSelector("input[name=login]");
    await person.close();

    // Deleting the provider leaves people and service accounts be.
    const before = await api(`/v1/actors/${state.actorId}/tokens`);
    await row.locator("[data-testid=delete-identity-provider]").click();
    await row.locator("dialog [data-testid=confirm-delete-identity-provider]").click();
    await page.waitForSelector("[data-testid=identity-providers-table]", { state: "detached" });
    const revoked = await fetch(`${base}/scim/v2/Users`, { headers: { Authorization: `Bearer ${scimToken}` } });
    assert.equal(revoked.status, 401, "the provider's SCIM token is gone with it");
    const after = await api(`/v1/actors/${state.actorId}/tokens`);
    assert.deepEqual(after.data.map((t) => [t.id, t.revoked_at]), before.data.map((t) => [t.id, t.revoked_at]));
    assert.ok((await api("/v1/actors?type=user")).data.some((actor) => actor.email === "linus@example.com"));
  } finally {
    idp.close();
  }
});

test("the service account is added to a group from the group page", async () => {
  await page.click("[data-testid=nav-groups]");
  await page.click("[data-testid=group-row][data-name=fleet] a");
  await page.selectOption("#actor_id", state.actorId);
  await page.click("[data-testid=add-member]");
  await page.waitForSelector("[data-testid=member-row][data-name=ci-runner]");
  await shot("group-detail");
  await page.click("[data-testid=nav-groups]");
  await shot("groups");
  await page.goto(state.actorUrl);
  const groups = await page.textContent("[data-testid=actor-groups]");
  assert.match(groups, /engineering/);
  assert.match(groups, /fleet/);
});

test("a site, a resource and a policy with conditions are created", async () => {
  await page.click("[data-testid=nav-sites]");
  await page.fill("#name", "office");
  await page.click("[data-testid=create-site]");
  await page.waitForSelector("[data-testid=gateway-token-form]");
  await page.fill("#name", "gw-1");
  await page.click("[data-testid=create-gateway-token]");
  await page.waitForSelector("[data-testid=token-once]");
  assert.match(await page.inputValue("[data-testid=token-secret]"), /^postern_gateway_/);
  await page.click("[data-testid=token-done]");
  await page.waitForSelector("[data-testid=token-row][data-name=gw-1]");
  await shot("site-detail");
  await page.click("[data-testid=nav-sites]");
  await shot("sites");

  await page.click("[data-testid=nav-resources]");
  await page.click("[data-testid=add-resource]");
  await page.fill("#name", "office-lan");
  await page.selectOption("#type", "cidr");
  await page.fill("#address", "10.20.0.5/16");
  await page.selectOption("#site_id", { label: "office" });
  await page.check("[data-testid=filter-tcp]");
  await page.fill("[data-testid=filter-tcp-ports]", "22, 443");
  await page.click("[data-testid=save-resource]");
  await page.waitForSelector("[data-testid=error-address]");
  assert.match(await page.textContent("[data-testid=error-address]"), /10\.20\.0\.0\/16/);
  await page.fill("#address", "10.20.0.0/16");
  await page.click("[data-testid=save-resource]");
  await page.waitForSelector("[data-testid=resource-row][data-name=office-lan]");
  assert.match(await page.textContent("[data-testid=resource-row]"), /TCP 22,443/);
  await shot("resources");

  await page.click("[data-testid=nav-policies]");
  await page.click("[data-testid=add-policy]");
  await page.selectOption("#group_id", { label: "fleet" });
  await page.selectOption("#resource_id", { label: "office-lan" });
  await page.fill("#ip_ranges", "10.0.0.0/8, 203.0.113.7");
  await page.fill("#time_windows", "Mon-Fri 09:00-17:00 Europe/Berlin");
  await page.click("[data-testid=save-policy]");
  await page.waitForSelector("[data-testid=policy-row][data-group=fleet]");
  const text = await page.textContent("[data-testid=policy-row]");
  assert.match(text, /Source IP in 10\.0\.0\.0\/8, 203\.0\.113\.7\/32/);
  assert.match(text, /Mon-Fri 09:00-17:00 Europe\/Berlin/);
  await shot("policies");
  const policies = await api("/v1/policies");
  assert.equal(policies.data.length, 1);
});

test("the audit log lists the admin's actions, newest first, filterable", async () => {
  await page.click("[data-testid=nav-audit-log]");
  const first = page.locator("[data-testid=audit-row]").first();
  assert.equal(await first.getAttribute("data-action"), "policy.create");
  assert.match(await first.textContent(), /Ada Lovelace/);
  await shot("audit");
  await page.selectOption("[data-testid=filter-action]", "token.revoke");
  await page.waitForURL(/action=token.revoke/);
  const rows = page.locator("[data-testid=audit-row]");
  // The token revoked from its row, and the one deleting its workload identity revoked.
  assert.equal(await rows.count(), 2);
  for (const action of await rows.evaluateAll((all) => all.map((r) => r.dataset.action))) {
    assert.equal(action, "token.revoke");
  }
});

test("the actors list filters by type and searches by name", async () => {
  await page.click("[data-testid=nav-actors]");
  await shot("actors");
  await page.selectOption("[data-testid=filter-type]", "service_account");
  await page.waitForURL(/type=service_account/);
  assert.equal(await page.locator("[data-testid=actor-row]").count(), 1);
  await page.fill("[data-testid=filter-q]", "nomatch");
  await page.press("[data-testid=filter-q]", "Enter");
  await page.waitForSelector("[data-testid=empty-state]");
});

test("the narrow (390px) layout renders the service account", async () => {
  await page.setViewportSize({ width: 390, height: 844 });
  await page.goto(state.actorUrl);
  await page.waitForSelector("[data-testid=tokens-table]");
  await shot("service-account-mobile");
  await page.setViewportSize({ width: 1280, height: 800 });
});

test("forms without the session's CSRF token are refused", async () => {
  const res = await page.request.post(`${base}/groups`, {
    form: { name: "csrf-test", _csrf: "0".repeat(64) },
    maxRedirects: 0,
  });
  assert.equal(res.status(), 403);
});

test("signing out ends the session", async () => {
  await page.click("[data-testid=sign-out]");
  await page.waitForURL(/\/login\?signed_out=1$/);
  await page.goto(`${base}/actors`);
  assert.match(page.url(), /\/login$/);
});

test("repeated failed sign-ins are rate limited", async () => {
  let last;
  for (let i = 0; i < 6; i += 1) {
    await page.goto(`${base}/login`);
    await page.fill("#email", "mallory@example.com");
    await page.fill("#password", "wrong-password-123");
    [last] = await Promise.all([
      page.waitForResponse((r) => r.url().endsWith("/login") && r.request().method() === "POST"),
      page.click("[data-testid=sign-in]"),
    ]);
  }
  assert.equal(last.status(), 429);
  assert.match(await page.textContent("body"), /Too many failed sign-ins/);
});
