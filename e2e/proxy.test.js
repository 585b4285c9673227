// The page behind the shipped nginx site (deploy/nginx.conf), over https
// and wss, as a person on a phone and one on a desktop would use it.
// deploy/test.sh runs this once nginx is up, with CHAT_PROXY_HTTPS set to
// nginx's https address (127.0.0.1:PORT); anywhere else it is skipped.
// Chromium reaches https://chat.example.com at that address, and accepts the
// test's own certificate.
import assert from 'node:assert/strict'
import { after, before, test } from 'node:test'
import { connected, launchBrowser, nothingWentWrong, openChat, phone, screenshot, send, waitForMessage } from './helpers.js'

const target = process.env.CHAT_PROXY_HTTPS
let browser

before(async () => {
  if (target) {
    browser = await launchBrowser([`--host-resolver-rules=MAP chat.example.com:443 ${target}`, '--ignore-certificate-errors'])
  }
}, { timeout: 60_000 })

after(async () => {
  await browser?.close()
}, { timeout: 30_000 })

test('through nginx: two pages chat over wss, with the online list', { skip: !target && 'CHAT_PROXY_HTTPS is not set (deploy/test.sh sets it)', timeout: 60_000 }, async t => {
  const site = { url: 'https://chat.example.com' }
  const alice = await openChat(t, browser, site, 'alice')
  const bob = await openChat(t, browser, site, 'bob', { viewport: phone })
  await connected(alice, 'websocket')
  await connected(bob, 'websocket')
  await send(alice, 'hello through nginx')
  await waitForMessage(bob, 'hello through nginx')
  await send(bob, 'and back over wss')
  await waitForMessage(alice, 'and back over wss')
  assert.equal(new URL(alice.url()).protocol, 'https:')
  await screenshot(bob, 'phone-through-nginx')
  nothingWentWrong(alice, bob)
})
