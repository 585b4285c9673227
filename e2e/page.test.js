// Browser tests of the page itself rather than of the chat: whether a
// keyboard reaches the message box at once, whether an accessibility audit
// (axe-core) finds serious problems, and screenshots on a phone and a
// desktop, light and dark, for a person to look at.
import assert from 'node:assert/strict'
import { readFile } from 'node:fs/promises'
import { createRequire } from 'node:module'
import { after, before, test } from 'node:test'
import {
  buildServer, connected, eventually, launchBrowser, messageBox, nothingWentWrong,
  openChat, phone, postForm, screenshot, send, startServer, waitForMessage,
} from './helpers.js'

let build
let browser

before(async () => {
  build = await buildServer()
  browser = await launchBrowser()
}, { timeout: 180_000 })

after(async () => {
  await browser?.close()
  await build?.remove()
}, { timeout: 30_000 })

async function serve(t) {
  const server = await startServer(build.binary)
  t.after(() => server.stop())
  return server
}

// chatWithSomeMessages sets the scene of the screenshots and the audit:
// history from before, alice on a desktop and bob on a phone who talk,
// and carol, whose arrival both see as a system line.
async function chatWithSomeMessages(t, server) {
  assert.equal(await postForm(server, 'dana', 'Good morning! Is the meeting still at ten?'), 303)
  const alice = await openChat(t, browser, server, 'alice')
  const bob = await openChat(t, browser, server, 'bob', { viewport: phone })
  await send(alice, 'hello bob')
  await waitForMessage(bob, 'hello bob')
  await send(bob, 'hi alice, how are you?\nThe train is late again.')
  await waitForMessage(alice, 'hi alice, how are you?\nThe train is late again.')
  await openChat(t, browser, server, 'carol')
  for (const page of [alice, bob]) await page.locator('.log:not([hidden]) .system', { hasText: 'carol joined' }).waitFor()
  return { alice, bob }
}

const axeSource = await readFile(createRequire(import.meta.url).resolve('axe-core/axe.min.js'), 'utf8')

// audit runs axe-core in the page and returns its violations. The script
// goes in through the DevTools protocol, which the page's
// Content-Security-Policy does not govern: the page stays as it is served.
async function audit(page) {
  await page.evaluate(axeSource)
  const { violations, passes } = await page.evaluate(() => window.axe.run(document))
  assert.ok(passes.length > 0, 'axe ran no rules')
  return violations.map(v => ({ id: v.id, impact: v.impact, help: v.help, targets: v.nodes.map(n => n.target.join(' ')) }))
}

test('an accessibility audit finds nothing serious, on a desktop and on a phone, light and dark', { timeout: 60_000 }, async t => {
  const server = await serve(t)
  const { alice, bob } = await chatWithSomeMessages(t, server)
  for (const colorScheme of ['light', 'dark']) {
    for (const [name, page] of [['desktop', alice], ['phone', bob]]) {
      await page.emulateMedia({ colorScheme })
      const violations = await audit(page)
      if (violations.length > 0) t.diagnostic(`${name} ${colorScheme}: ${JSON.stringify(violations)}`)
      assert.deepEqual(violations.filter(v => v.impact === 'serious' || v.impact === 'critical'), [], `${name} ${colorScheme}`)
    }
    // The phone's sidebar, with the menu open.
    await bob.getByRole('button', { name: 'Rooms and people' }).click()
    const violations = await audit(bob)
    if (violations.length > 0) t.diagnostic(`phone menu ${colorScheme}: ${JSON.stringify(violations)}`)
    assert.deepEqual(violations.filter(v => v.impact === 'serious' || v.impact === 'critical'), [], `phone menu ${colorScheme}`)
    await bob.getByRole('button', { name: 'Rooms and people' }).click()
  }
  nothingWentWrong(alice, bob)
})

// tabsToMessageBox loads the page again and presses Tab until the message
// box has the focus, following a skip link on the way (Enter), as a
// keyboard user would. It returns the number of Tab presses.
async function tabsToMessageBox(page) {
  await page.reload()
  await connected(page)
  for (let tabs = 1; tabs <= 40; tabs++) {
    await page.keyboard.press('Tab')
    const focused = await page.evaluate(() => document.activeElement.id || document.activeElement.textContent)
    if (focused === 'message') return tabs
    if (focused === 'skip') {
      await page.keyboard.press('Enter')
      if (await page.evaluate(() => document.activeElement.id) === 'message') return tabs
    }
  }
  assert.fail('40 Tab presses never reached the message box')
}

test('from the keyboard, the message box is at most two Tab presses away', { timeout: 60_000 }, async t => {
  const server = await serve(t)
  const alice = await openChat(t, browser, server, 'alice')
  const bob = await openChat(t, browser, server, 'bob', { viewport: phone })
  for (const page of [alice, bob]) {
    const tabs = await tabsToMessageBox(page)
    t.diagnostic(`Tab presses to the message box (${page === alice ? 'desktop' : 'phone'}): ${tabs}`)
    assert.ok(tabs <= 2, `${tabs} Tab presses`)
    await page.keyboard.type('typed without the mouse')
    await page.keyboard.press('Enter')
    await waitForMessage(page, 'typed without the mouse')
  }
  nothingWentWrong(alice, bob)
})

test('screenshots: a phone and a desktop, light and dark', { timeout: 60_000 }, async t => {
  const server = await serve(t)
  const { alice, bob } = await chatWithSomeMessages(t, server)
  await eventually(async () => assert.equal(await alice.locator('#online li').count(), 3))
  for (const colorScheme of ['light', 'dark']) {
    await alice.emulateMedia({ colorScheme })
    await bob.emulateMedia({ colorScheme })
    await screenshot(alice, `desktop-${colorScheme}`)
    await screenshot(bob, `phone-${colorScheme}`)
    await bob.getByRole('button', { name: 'Rooms and people' }).click()
    await screenshot(bob, `phone-${colorScheme}-menu`)
    await bob.getByRole('button', { name: 'Rooms and people' }).click()
  }

  // On a phone the conversation has the screen: the header is one line, the
  // title shares one with the menu button.
  const first = await bob.locator('.log:not([hidden]) li').first().boundingBox()
  assert.ok(first.y < 120, `the first message starts ${first.y} px down`)
  // The name is changed behind the button that shows it.
  await bob.emulateMedia({ colorScheme: 'light' })
  assert.equal(await bob.getByLabel('Username').isVisible(), false)
  await bob.getByRole('button', { name: 'Change name: bob' }).click()
  await bob.getByLabel('Username').waitFor()
  await screenshot(bob, 'phone-light-name')
  await bob.getByLabel('Username').fill('robert')
  await bob.getByLabel('Username').press('Enter')
  await bob.getByRole('button', { name: 'Change name: robert' }).waitFor()
  assert.equal(await bob.getByLabel('Username').isVisible(), false)

  // In another room, the menu button counts what is unread elsewhere.
  await bob.getByRole('button', { name: 'Rooms and people' }).click()
  await bob.getByLabel('Room', { exact: true }).fill('random')
  await bob.getByLabel('Room', { exact: true }).press('Enter')
  await bob.getByRole('button', { name: 'Leave #random' }).waitFor()
  await send(alice, 'lunch at noon?')
  await bob.getByRole('button', { name: 'Rooms and people (1 unread)' }).waitFor()
  await screenshot(bob, 'phone-light-unread')
  nothingWentWrong(alice, bob)
})
