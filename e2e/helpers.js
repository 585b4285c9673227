// Helpers of the browser tests: build and run the real server, launch
// Debian's Chromium, and open the chat as a named person.
import assert from 'node:assert/strict'
import { execFile, spawn } from 'node:child_process'
import { mkdir, mkdtemp, rm } from 'node:fs/promises'
import { connect, createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import { chromium } from 'playwright-core'

const here = dirname(fileURLToPath(import.meta.url))

export const desktop = { width: 1280, height: 800 }
export const phone = { width: 360, height: 740 }

// buildServer compiles the server once for a test file.
export async function buildServer() {
  const dir = await mkdtemp(join(tmpdir(), 'chat-e2e-'))
  const binary = join(dir, 'chat')
  await promisify(execFile)('go', ['build', '-o', binary, '..'], { cwd: here, timeout: 120_000 })
  return { binary, remove: () => rm(dir, { recursive: true, force: true }) }
}

// startServer runs the server on 127.0.0.1 (port 0: any free port) and
// resolves once it logs the address it listens on.
export async function startServer(binary, { port = 0, args = [] } = {}) {
  const child = spawn(binary, ['-addr', `127.0.0.1:${port}`, '-grace', '10s', ...args], {
    stdio: ['ignore', 'pipe', 'inherit'],
  })
  const exited = new Promise(resolve => child.once('exit', resolve))
  const addr = await new Promise((resolve, reject) => {
    let output = ''
    const timer = setTimeout(() => reject(new Error(`no "listening" line within 10 s:\n${output}`)), 10_000)
    // Keep reading stdout to the end: a full pipe would block the server.
    child.stdout.on('data', chunk => {
      output += chunk
      const found = /chat server listening.*?addr=(\S+)/.exec(output)
      if (found) {
        clearTimeout(timer)
        resolve(found[1])
      }
    })
    child.once('exit', code => {
      clearTimeout(timer)
      reject(new Error(`the server exited (${code}):\n${output}`))
    })
  })
  return {
    url: `http://${addr}`,
    port: Number(addr.split(':').pop()),
    // stop sends SIGTERM (the server closes its WebSockets with 1001) and
    // waits for the exit; SIGKILL after 8 s.
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return
      child.kill('SIGTERM')
      const timer = setTimeout(() => child.kill('SIGKILL'), 8_000)
      await exited
      clearTimeout(timer)
    },
  }
}

// startProxy forwards TCP connections from a port of its own to the
// server's, so that a test can cut the network between a browser and a
// server that stays up: cut() drops every connection and refuses new ones,
// restore() lets them through again. webSockets says what becomes of a
// WebSocket handshake (GET /ws): 'pass', or, as some proxies and firewalls
// do, 'refuse' (the connection is dropped) or 'hang' (never answered).
export async function startProxy(t, server, { webSockets = 'pass' } = {}) {
  const sockets = new Set()
  let down = false
  const proxy = createServer(client => {
    if (down) return client.destroy()
    const upstream = connect(server.port, '127.0.0.1')
    for (const socket of [client, upstream]) {
      sockets.add(socket)
      socket.on('close', () => sockets.delete(socket))
      socket.on('error', () => {}) // a cut connection: close follows
    }
    client.once('data', first => {
      if (webSockets !== 'pass' && first.toString('latin1').startsWith('GET /ws')) {
        if (webSockets === 'refuse') client.destroy()
        return
      }
      upstream.write(first)
      client.pipe(upstream).pipe(client)
    })
    client.on('close', () => upstream.destroy())
    upstream.on('close', () => client.destroy())
  })
  await new Promise(resolve => proxy.listen(0, '127.0.0.1', resolve))
  t.after(() => {
    for (const socket of sockets) socket.destroy()
    proxy.close()
  })
  return {
    url: `http://127.0.0.1:${proxy.address().port}`,
    cut() {
      down = true
      for (const socket of sockets) socket.destroy()
    },
    restore() {
      down = false
    },
  }
}

export function launchBrowser(extraArgs = []) {
  return chromium.launch({
    executablePath: '/usr/bin/chromium',
    headless: true,
    timeout: 30_000,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', ...extraArgs],
  })
}

// openPage opens the chat in a new browser context (a person of their
// own: own storage, own cookies), closed when the test ends. page.dialogs
// collects alert() calls, and page.problems script errors and every error
// on the console (a refusal by the Content-Security-Policy, a failed
// request), which every test expects to stay empty; the only exception is
// a failed attempt to connect during an outage (see outage).
// With E2E_TRACES=folder, a Playwright trace of each context is kept there.
export async function openPage(t, browser, url, { viewport = desktop, javaScriptEnabled = true } = {}) {
  // A phone has a touch screen: the page's (hover: hover) and (pointer: fine)
  // media queries then answer as on a real one.
  const context = await browser.newContext({ viewport, javaScriptEnabled, hasTouch: viewport === phone })
  const trace = process.env.E2E_TRACES && join(process.env.E2E_TRACES, `${t.name.replace(/\W+/g, '-')}-${++traces}.zip`)
  if (trace) await context.tracing.start()
  t.after(async () => {
    if (trace) await context.tracing.stop({ path: trace })
    await context.close()
  })
  context.setDefaultTimeout(10_000)
  const page = await context.newPage()
  page.dialogs = []
  page.problems = []
  page.outages = []
  page.on('dialog', dialog => {
    page.dialogs.push(dialog.message())
    dialog.dismiss()
  })
  page.on('pageerror', err => page.problems.push(err.message))
  page.on('console', msg => {
    if (msg.type() !== 'error') return
    const at = msg.timestamp()
    if (page.outages.some(({ from, to, expected }) => from <= at && at <= to && expected(msg))) return
    page.problems.push(msg.text())
  })
  await page.goto(url)
  return page
}

let traces = 0

// unreachable matches the console errors Chromium logs for a request or a
// WebSocket that could not reach the server: the connection was refused,
// reset, or closed before an answer.
const netError = 'net::ERR_(CONNECTION_[A-Z]+|SOCKET_NOT_CONNECTED|EMPTY_RESPONSE)'
const unreachable = new RegExp(`^(Failed to load resource: ${netError}|WebSocket connection to '[^']*' failed: ` +
  `((Error in connection establishment|Error during WebSocket handshake): ${netError}|Connection closed before receiving a handshake response))$`)

// outage begins the time in which a test keeps the server away from the
// pages (it stops the server, or cuts the network). A page that reconnects
// with backoff still tries now and then, and Chromium logs each failed try
// as an error: those, and only those logged in that time, are no problem.
// After a restart the sessions are gone too, and a page that comes back
// over long-polling first asks for its old one: Chromium logs the 404
// that answers (PROTOCOL.md section 6). restart says that this is expected.
// The outage lasts until the function it returns is called; call it once
// the pages are connected again, so that every failed try came before.
export function outage(pages, { restart = false } = {}) {
  const oldSession = msg => restart && /^http:\/\/[^/]+\/poll\?sid=[\w-]+$/.test(msg.location().url) &&
    msg.text() === 'Failed to load resource: the server responded with a status of 404 (Not Found)'
  const span = { from: Date.now(), to: Infinity, expected: msg => unreachable.test(msg.text()) || oldSession(msg) }
  for (const page of pages) page.outages.push(span)
  return () => { span.to = Date.now() }
}

// openChat opens the chat and chooses a name, as on a first visit.
export async function openChat(t, browser, server, name, { viewport = desktop, query = '' } = {}) {
  const page = await openPage(t, browser, `${server.url}/${query}`, { viewport })
  await page.getByLabel('Username').fill(name)
  await page.getByLabel('Username').press('Enter')
  await connected(page)
  return page
}

// connected waits until the status says the page is connected, over the
// given transport if one is named: 'websocket' or 'polling', as the page
// writes in the status's data-transport (its text is in plain words).
export async function connected(page, transport = '') {
  const over = transport ? `[data-transport="${transport}"]` : ''
  await page.locator(`#status[data-state="connected"]${over}`).waitFor()
}

// nothingWentWrong checks that no page showed a dialog, threw or logged an
// error (a refusal by its Content-Security-Policy, a failed request).
export function nothingWentWrong(...pages) {
  for (const page of pages) {
    assert.deepEqual(page.dialogs, [], 'dialogs')
    assert.deepEqual(page.problems, [], 'script errors and console errors')
  }
}

export function messageBox(page) {
  return page.getByLabel('Message', { exact: true })
}

export async function send(page, text) {
  await messageBox(page).fill(text)
  await messageBox(page).press('Enter')
}

const exactly = text => new RegExp(`^${text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}$`)

// message finds a delivered message (not one still waiting for its ack)
// in the conversation on screen.
export function message(page, text) {
  return page.locator('.log:not([hidden]) .message:not(.pending)').filter({ has: page.locator('.text', { hasText: exactly(text) }) })
}

export async function waitForMessage(page, text) {
  await message(page, text).first().waitFor()
}

// countMessages counts the delivered messages with this text in every
// conversation of the page.
export function countMessages(page, text) {
  return page.locator('.message:not(.pending) .text', { hasText: exactly(text) }).count()
}

// postForm posts the page's form without a browser, as curl would.
export async function postForm(server, username, text) {
  const res = await fetch(`${server.url}/send_message`, {
    method: 'POST',
    body: new URLSearchParams({ username, message: text }),
    redirect: 'manual',
    signal: AbortSignal.timeout(5_000),
  })
  return res.status
}

// eventually retries an async check until it passes or the time is up:
// a wait for a condition, never a fixed sleep.
export async function eventually(check, { timeout = 10_000 } = {}) {
  const deadline = Date.now() + timeout
  for (;;) {
    try {
      return await check()
    } catch (err) {
      if (Date.now() > deadline) throw err
    }
    await new Promise(resolve => setTimeout(resolve, 50))
  }
}

export async function screenshot(page, name) {
  await mkdir(join(here, 'screenshots'), { recursive: true })
  await page.screenshot({ path: join(here, 'screenshots', `${name}.png`) })
}
