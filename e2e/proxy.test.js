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

test('through nginx: two pages chat over wss and keep their names', { skip: !target && 'CHAT_PROXY_HTTPS is not set (deploy/test.sh sets it)', timeout: 60_000 }, async t => {
  const site = { url: 'https://chat.example.com' }
  // Not alice and bob: deploy/proxytest's chat check uses those names at the same time.
  const amy = await openChat(t, browser, site, 'amy')
  const ben = await openChat(t, browser, site, 'ben', { viewport: phone })
  await connected(amy, 'websocket')
  await connected(ben, 'websocket')
  await send(amy, 'hello through nginx')
  await waitForMessage(ben, 'hello through nginx')
  await send(ben, 'and back over wss')
  await waitForMessage(amy, 'and back over wss')
  assert.equal(new URL(amy.url()).protocol, 'https:')
  assert.equal(await ben.locator('#username').inputValue(), 'ben', 'ben kept his name')
  assert.equal(await amy.locator('#username').inputValue(), 'amy', 'amy kept her name')
  await screenshot(ben, 'phone-through-nginx')
  nothingWentWrong(amy, ben)
})
