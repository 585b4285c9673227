// Browser tests of the chat page: real headless Chromium against the real
// server, one server per test. Run them with `bash e2e/run.sh` from the
// repository's root, or `npm ci && node --test` in this folder.
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, test } from 'node:test'
import {
  buildServer, connected, countMessages, eventually, launchBrowser, message, messageBox, nothingWentWrong,
  openChat, openPage, outage, phone, postForm, screenshot, send, startProxy, startServer, waitForMessage,
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

// serve starts a server of the test's own, stopped when the test ends.
async function serve(t, options) {
  const server = await startServer(build.binary, options)
  t.after(() => server.stop())
  return server
}

const online = page => page.locator('#online li').allTextContents()
const systemLines = page => page.locator('.log .system').allTextContents()

test('two people chat both ways, with times and the online list', { timeout: 60_000 }, async t => {
  const server = await serve(t)
  const alice = await openChat(t, browser, server, 'alice')
  const bob = await openChat(t, browser, server, 'bob', { viewport: phone })
  await connected(alice, 'websocket')

  await send(alice, 'hello bob')
  await waitForMessage(bob, 'hello bob')
  await send(bob, 'hi alice, how are you?')
  await waitForMessage(alice, 'hi alice, how are you?')

  // Each message has its author and a local time; your own are set apart.
  const received = message(bob, 'hello bob')
  assert.equal(await received.locator('.author').textContent(), 'alice')
  assert.match(await received.locator('time').getAttribute('datetime'), /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/)
  // The time of day in the reader's language: 9:05 AM, not 09:05 AM.
  assert.match(await received.locator('time').textContent(), /^[1-9]\d?[:.]\d\d( [AP]M)?$/)
  assert.equal(await message(alice, 'hello bob').getAttribute('class'), 'message mine')
  assert.equal(await received.getAttribute('class'), 'message')

  await eventually(async () => assert.deepEqual(await online(alice), ['alice (you)', 'bob']))
  await eventually(async () => assert.deepEqual(await online(bob), ['alice', 'bob (you)']))
  assert.deepEqual(await systemLines(alice), ['bob joined'])
  assert.match(await alice.locator('#online-title').textContent(), /Online in #general \(2\)/)

  await screenshot(alice, 'desktop-chat')
  await screenshot(bob, 'phone-chat')
  await bob.getByRole('button', { name: 'Rooms and people' }).click()
  await screenshot(bob, 'phone-sidebar')
  await alice.emulateMedia({ colorScheme: 'dark' })
  await screenshot(alice, 'desktop-chat-dark')
  await bob.emulateMedia({ colorScheme: 'dark' })
  await bob.getByRole('button', { name: 'Rooms and people' }).click()
  await screenshot(bob, 'phone-chat-dark')
  nothingWentWrong(alice, bob)
})

test('a page forced to long-polling chats with one on a WebSocket', { timeout: 60_000 }, async t => {
  const server = await serve(t)
  const alice = await openChat(t, browser, server, 'alice', { query: '?transport=polling' })
  const bob = await openChat(t, browser, server, 'bob')
  await connected(alice, 'polling')
  await connected(bob, 'websocket')
  // The status is in plain words; the transport is in its tooltip.
  assert.equal(await alice.locator('#status').textContent(), 'Connected (slower connection mode)')
  assert.match(await alice.locator('#status').getAttribute('title'), /long-polling/)
  assert.equal(await bob.locator('#status').textContent(), 'Connected')
  assert.match(await bob.locator('#status').getAttribute('title'), /WebSocket/)

  await send(alice, 'sent over long-polling')
  await waitForMessage(bob, 'sent over long-polling')
  await send(bob, 'sent over a WebSocket')
  await waitForMessage(alice, 'sent over a WebSocket')
  await eventually(async () => assert.deepEqual(await online(alice), ['alice (you)', 'bob']))
  await screenshot(alice, 'desktop-polling')
  nothingWentWrong(alice, bob)
})

test('long-polling sends a backlog of long messages in posts the server takes', { timeout: 60_000 }, async t => {
  // Twenty messages of 1,500 Chinese characters: 4.5 KB each once sent,
  // though 1,500 in JavaScript's length. They queue behind a post held
  // back, then go in as few posts as fit the server's 64 KiB each.
  const server = await serve(t)
  const alice = await openChat(t, browser, server, 'alice', { query: '?transport=polling' })
  const bob = await openChat(t, browser, server, 'bob')
  await connected(alice, 'polling')
  let release
  const held = new Promise(resolve => { release = resolve })
  const bodies = []
  await alice.route(url => url.pathname === '/poll' && url.searchParams.has('sid'), async route => {
    if (route.request().method() !== 'POST') return route.continue()
    const first = bodies.length === 0
    bodies.push(Buffer.byteLength(route.request().postData() ?? ''))
    if (first) await held
    await route.continue()
  })
  const texts = Array.from({ length: 20 }, (_, i) => `${i} ` + '漢'.repeat(1500))
  for (const text of texts) await send(alice, text)
  await eventually(async () => assert.equal(await alice.locator('.message.pending').count(), 20))
  release()
  for (const text of texts) await waitForMessage(bob, text)
  for (const text of texts) await waitForMessage(alice, text)
  assert.ok(bodies.length >= 3, `posts: ${bodies}`)
  assert.ok(bodies.every(n => n <= 64 << 10), `bytes in each post: ${bodies}`)
  assert.equal(await alice.locator('.message.pending').count(), 0)
  nothingWentWrong(alice, bob)
})

test('messages refused for the rate go again by themselves and arrive once each', { timeout: 60_000 }, async t => {
  const server = await serve(t, { args: ['-rate', '2', '-burst', '3'] })
  const alice = await openChat(t, browser, server, 'alice')
  const bob = await openChat(t, browser, server, 'bob')
  const texts = Array.from({ length: 6 }, (_, i) => `quick ${i}`)
  for (const text of texts) await send(alice, text)
  for (const text of texts) await waitForMessage(bob, text)
  for (const text of texts) assert.equal(await countMessages(bob, text), 1, text)
  await eventually(async () => assert.equal(await alice.locator('.message.pending').count(), 0))
  // The page said why they were slow to go.
  assert.equal(await alice.locator('#message-error').textContent(), 'Too many events: slow down')
  nothingWentWrong(alice, bob)
})

test('the typing indicator shows on the other pages and clears by itself', { timeout: 60_000 }, async t => {
  const server = await serve(t)
  const alice = await openChat(t, browser, server, 'alice')
  const bob = await openChat(t, browser, server, 'bob')
  const carol = await openChat(t, browser, server, 'carol', { viewport: phone })
  const typing = bob.locator('#typing')

  await messageBox(alice).pressSequentially('hello', { delay: 50 })
  await typing.filter({ hasText: /^alice is typing…$/ }).waitFor()
  assert.equal(await alice.locator('#typing').textContent(), '') // not to yourself
  await screenshot(bob, 'desktop-typing')
  // Nobody presses a key for 1 s: typing_stop, and it clears.
  await typing.filter({ hasText: /^$/ }).waitFor({ timeout: 5_000 })

  // Two at once.
  await Promise.all([
    messageBox(alice).pressSequentially(' there, how is it going', { delay: 80 }),
    messageBox(carol).pressSequentially('I am typing as well', { delay: 80 }),
    typing.filter({ hasText: /^(alice and carol|carol and alice) are typing…$/ }).waitFor(),
  ])
  await typing.filter({ hasText: /^$/ }).waitFor({ timeout: 5_000 })
  nothingWentWrong(alice, bob, carol)
})

test('a second room: join it, talk there, and the first counts unread messages', { timeout: 60_000 }, async t => {
  const server = await serve(t)
  const alice = await openChat(t, browser, server, 'alice')
  const bob = await openChat(t, browser, server, 'bob')

  await alice.getByLabel('Room', { exact: true }).fill('random')
  await alice.getByLabel('Room', { exact: true }).press('Enter')
  await alice.locator('#conversation-title', { hasText: '#random' }).waitFor()
  await bob.getByLabel('Room', { exact: true }).fill('random')
  await bob.getByRole('button', { name: 'Join', exact: true }).click()
  await bob.locator('#conversation-title', { hasText: '#random' }).waitFor()

  await send(bob, 'anyone in random?')
  await waitForMessage(alice, 'anyone in random?')
  await send(alice, 'yes, me')
  await waitForMessage(bob, 'yes, me')
  await eventually(async () => assert.deepEqual(await online(alice), ['alice (you)', 'bob']))
  // The rooms list has the member counts.
  assert.match(await alice.locator('#rooms [data-room="random"]').textContent(), /#random\s*2 members/)

  // Bob goes back to general and writes there: alice, in random, sees it counted.
  await bob.locator('#rooms [data-room="general"] button').click()
  await send(bob, 'back in general')
  await alice.locator('#rooms [data-room="general"] .unread', { hasText: '1' }).waitFor()
  await send(bob, 'and another one')
  await alice.locator('#rooms [data-room="general"] .unread', { hasText: '2' }).waitFor()
  assert.equal(await alice.title(), '(2) Chat')
  await screenshot(alice, 'desktop-rooms')

  await alice.locator('#rooms [data-room="general"] button').click()
  await waitForMessage(alice, 'and another one')
  assert.equal(await alice.locator('#rooms [data-room="general"] .unread').count(), 0)

  // A newcomer finds random in the list of rooms (list_rooms), with its count.
  const carol = await openChat(t, browser, server, 'carol', { viewport: phone })
  await carol.getByRole('button', { name: 'Rooms and people' }).click()
  const join = carol.getByRole('button', { name: /Join #random/ })
  await eventually(async () => assert.match(await join.textContent(), /2 members/))
  await screenshot(carol, 'phone-rooms')
  await join.click()
  await waitForMessage(carol, 'yes, me') // the history
  await carol.getByRole('button', { name: 'Leave #random' }).click()
  await carol.locator('#conversation-title', { hasText: '#general' }).waitFor()
  await alice.locator('#rooms [data-room="random"]').filter({ hasText: /2 members/ }).waitFor()
  nothingWentWrong(alice, bob, carol)
})

test('the view follows new messages only when the reader is at the bottom', { timeout: 60_000 }, async t => {
  const server = await serve(t)
  for (let i = 1; i <= 30; i++) assert.equal(await postForm(server, 'seed', `old message ${i}`), 303)
  const alice = await openChat(t, browser, server, 'alice')
  const bob = await openChat(t, browser, server, 'bob')
  const log = alice.locator('.log:not([hidden])')
  const position = () => log.evaluate(list => ({ top: list.scrollTop, bottom: list.scrollHeight - list.clientHeight }))
  const atBottom = async () => {
    const { top, bottom } = await position()
    assert.ok(bottom > 0 && top >= bottom - 1, `scrolled to ${top} of ${bottom}`)
  }

  await waitForMessage(alice, 'old message 30')
  await eventually(atBottom) // the page opens on the newest messages
  await send(bob, 'new while at the bottom')
  await waitForMessage(alice, 'new while at the bottom')
  await eventually(atBottom)

  // Reading older messages: a new one does not pull the view away.
  await log.evaluate(list => { list.scrollTop = 0 })
  await send(bob, 'new while reading')
  await waitForMessage(alice, 'new while reading')
  assert.equal((await position()).top, 0)
  nothingWentWrong(alice, bob)
})

test('a private message reaches its recipient and nobody else', { timeout: 60_000 }, async t => {
  const server = await serve(t)
  const alice = await openChat(t, browser, server, 'alice')
  const bob = await openChat(t, browser, server, 'bob')
  const carol = await openChat(t, browser, server, 'carol')

  // From the keyboard: the names in the online list are buttons.
  await alice.locator('#online').getByRole('button', { name: 'bob' }).focus()
  await alice.keyboard.press('Enter')
  await alice.locator('#conversation-title', { hasText: 'Private: bob' }).waitFor()
  await send(alice, 'psst, bob: a secret')
  await waitForMessage(alice, 'psst, bob: a secret')

  const fromAlice = bob.locator('#privates').getByRole('button', { name: /alice/ })
  await fromAlice.locator('.unread', { hasText: '1' }).waitFor()
  await fromAlice.click()
  await waitForMessage(bob, 'psst, bob: a secret')
  await send(bob, 'your secret is safe')
  await waitForMessage(alice, 'your secret is safe')
  await screenshot(bob, 'desktop-private')

  // Carol gets alice's next public message, and never the private ones.
  await alice.locator('#rooms [data-room="general"] button').click()
  await send(alice, 'hello everyone')
  await waitForMessage(carol, 'hello everyone')
  assert.equal(await countMessages(carol, 'psst, bob: a secret'), 0)
  assert.equal(await countMessages(carol, 'your secret is safe'), 0)
  assert.equal(await carol.locator('#privates li').count(), 0)
  nothingWentWrong(alice, bob, carol)
})

test('a reload keeps the session: nobody sees the user leave and come back', { timeout: 60_000 }, async t => {
  const server = await serve(t)
  const bob = await openChat(t, browser, server, 'bob')
  const alice = await openChat(t, browser, server, 'alice')
  await send(alice, 'before the reload')
  await waitForMessage(bob, 'before the reload')
  await eventually(async () => assert.deepEqual(await systemLines(bob), ['alice joined']))
  const sid = () => alice.evaluate(() => JSON.parse(sessionStorage.getItem('chat.session')).sid)
  const before = await sid()

  await alice.reload()
  await connected(alice, 'websocket')
  await waitForMessage(alice, 'before the reload') // the history is back
  assert.equal(await sid(), before)
  assert.equal(await alice.getByLabel('Username').inputValue(), 'alice')
  await send(alice, 'after the reload')
  await waitForMessage(bob, 'after the reload')
  // Had alice left and come back, bob would have got both before her message.
  assert.deepEqual(await systemLines(bob), ['alice joined'])
  assert.deepEqual(await online(bob), ['alice', 'bob (you)'])
  assert.equal(await countMessages(alice, 'before the reload'), 1)
  nothingWentWrong(alice, bob)
})

test('after the server restarts, pages reconnect and a message typed offline arrives once', { timeout: 90_000 }, async t => {
  let server = await serve(t)
  const alice = await openChat(t, browser, server, 'alice')
  const bob = await openChat(t, browser, server, 'bob', { viewport: phone })
  await send(alice, 'before the restart')
  await waitForMessage(bob, 'before the restart')

  // While the server is down, the pages' tries to reconnect are refused.
  const over = outage([alice, bob], { restart: true })
  await server.stop()
  await alice.locator('#status', { hasText: 'reconnecting' }).waitFor()
  await bob.locator('#status', { hasText: 'reconnecting' }).waitFor()
  await send(alice, 'typed while offline')
  await alice.locator('.message.pending', { hasText: 'typed while offline' }).waitFor()
  await screenshot(alice, 'desktop-offline')
  await screenshot(bob, 'phone-offline')

  // The same port, an empty server: the sessions are gone, so the pages
  // start new ones and join again; the queued message goes out once.
  server = await serve(t, { port: server.port })
  await connected(alice, 'websocket')
  await connected(bob, 'websocket')
  over()
  await waitForMessage(bob, 'typed while offline')
  await alice.locator('.message.pending').waitFor({ state: 'detached' })
  await send(bob, 'welcome back')
  await waitForMessage(alice, 'welcome back')
  assert.equal(await countMessages(bob, 'typed while offline'), 1)
  assert.equal(await countMessages(alice, 'typed while offline'), 1)
  assert.equal(await countMessages(bob, 'before the restart'), 1)
  const stored = await (await fetch(`${server.url}/messages?room=general`)).json()
  assert.deepEqual(stored.map(m => m.text), ['typed while offline', 'welcome back'])
  await eventually(async () => assert.deepEqual(await online(alice), ['alice (you)', 'bob']))
  nothingWentWrong(alice, bob)
})

test('with -data, a restart keeps the conversation: each page shows it once, and what was typed offline arrives once', { timeout: 90_000 }, async t => {
  const dir = await mkdtemp(join(tmpdir(), 'chat-e2e-data-'))
  t.after(() => rm(dir, { recursive: true, force: true }))
  let server = await serve(t, { args: ['-data', dir] })
  const alice = await openChat(t, browser, server, 'alice')
  const bob = await openChat(t, browser, server, 'bob', { viewport: phone })
  await send(alice, 'first, before the restart')
  await waitForMessage(bob, 'first, before the restart')
  await send(bob, 'second, before the restart')
  await waitForMessage(alice, 'second, before the restart')

  const over = outage([alice, bob], { restart: true })
  await server.stop()
  await alice.locator('#status', { hasText: 'reconnecting' }).waitFor()
  await send(bob, 'typed while the server was down')
  await bob.locator('.message.pending', { hasText: 'typed while the server was down' }).waitFor()

  // The same port and the same directory: the history is back, the
  // sessions are not; the pages join again asking only for what they miss.
  server = await serve(t, { port: server.port, args: ['-data', dir] })
  await connected(alice, 'websocket')
  await connected(bob, 'websocket')
  over()
  await waitForMessage(alice, 'typed while the server was down')
  await bob.locator('.message.pending').waitFor({ state: 'detached' })
  await send(alice, 'after the restart')
  await waitForMessage(bob, 'after the restart')
  await screenshot(bob, 'phone-after-data-restart')

  const conversation = ['first, before the restart', 'second, before the restart', 'typed while the server was down', 'after the restart']
  for (const page of [alice, bob]) {
    const texts = await page.locator('.log .message:not(.pending) .text').allTextContents()
    assert.deepEqual(texts, conversation, 'each message once, in order')
  }
  const stored = await (await fetch(`${server.url}/messages?room=general`)).json()
  assert.deepEqual(stored.map(m => m.text), conversation)
  // Both names were free again: each page came back as itself.
  await eventually(async () => assert.deepEqual(await online(alice), ['alice (you)', 'bob']))
  nothingWentWrong(alice, bob)
})

test('the network drops: the page says so, resumes its session and misses nothing', { timeout: 60_000 }, async t => {
  const server = await serve(t)
  const network = await startProxy(t, server)
  const alice = await openChat(t, browser, network, 'alice')
  const bob = await openChat(t, browser, server, 'bob')
  await send(alice, 'before the drop')
  await waitForMessage(bob, 'before the drop')
  await eventually(async () => assert.deepEqual(await systemLines(alice), ['bob joined']))

  // While the network is cut, the page's tries to reconnect fail.
  const over = outage([alice])
  network.cut()
  await alice.locator('#status', { hasText: 'reconnecting' }).waitFor()
  await send(bob, 'while alice was away')
  await send(alice, 'typed during the drop')
  await alice.locator('.message.pending', { hasText: 'typed during the drop' }).waitFor()

  // Within the grace period the session is still there: resumed, the
  // server sends alice what she missed, and to bob she never left.
  network.restore()
  await connected(alice, 'websocket')
  over()
  await waitForMessage(alice, 'while alice was away')
  await waitForMessage(bob, 'typed during the drop')
  await alice.locator('.message.pending').waitFor({ state: 'detached' })
  await send(bob, 'sync')
  await waitForMessage(alice, 'sync')
  for (const page of [alice, bob]) {
    for (const text of ['before the drop', 'while alice was away', 'typed during the drop']) {
      assert.equal(await countMessages(page, text), 1, text)
    }
  }
  assert.deepEqual(await systemLines(bob), [])
  assert.deepEqual(await systemLines(alice), ['bob joined'])
  nothingWentWrong(alice, bob)
})

test('where WebSockets are blocked, the page falls back to long-polling by itself', { timeout: 60_000 }, async t => {
  const server = await serve(t)
  // Alice's network drops WebSocket handshakes; carol's never answers them
  // (the page gives up after 3 s).
  const refusing = await startProxy(t, server, { webSockets: 'refuse' })
  const hanging = await startProxy(t, server, { webSockets: 'hang' })
  const alice = await openChat(t, browser, refusing, 'alice')
  const carol = await openChat(t, browser, hanging, 'carol')
  const bob = await openChat(t, browser, server, 'bob')
  await connected(alice, 'polling')
  await connected(carol, 'polling')
  await connected(bob, 'websocket')
  // Chromium logs the handshake that alice's network dropped, as an error
  // (carol's, which timed out, only as a warning): that is what this tests.
  await eventually(() => assert.match(alice.problems.join('\n'),
    /^WebSocket connection to '\S+\/ws\?username=alice' failed: Connection closed before receiving a handshake response$/))
  alice.problems = []

  await send(alice, 'no WebSocket here')
  await waitForMessage(bob, 'no WebSocket here')
  await waitForMessage(carol, 'no WebSocket here')
  await send(bob, 'and yet we talk')
  await waitForMessage(alice, 'and yet we talk')
  await waitForMessage(carol, 'and yet we talk')
  nothingWentWrong(alice, bob, carol)
})

test('a second tab with the same session takes it over; the first says so', { timeout: 60_000 }, async t => {
  const server = await serve(t)
  const first = await openChat(t, browser, server, 'alice')
  // A duplicated tab starts with a copy of the first one's sessionStorage.
  const session = await first.evaluate(() => sessionStorage.getItem('chat.session'))
  const second = await openPage(t, browser, 'about:blank')
  await second.context().addInitScript(([name, value]) => {
    sessionStorage.setItem('chat.session', value)
    localStorage.setItem('chat.username', name)
  }, ['alice', session])
  await second.goto(server.url)
  await connected(second, 'websocket')

  await first.locator('#status', { hasText: 'another tab' }).waitFor()
  await screenshot(first, 'desktop-replaced')
  // It does not take the session back by itself; asked to, it starts a new one.
  await first.getByRole('button', { name: 'Start a new session here' }).click()
  await connected(first, 'websocket')
  await first.locator('#name-error', { hasText: /you are guest-\d{4}/ }).waitFor()
  await send(second, 'still alice here')
  await waitForMessage(first, 'still alice here')
  nothingWentWrong(first, second)
})

test('user text is shown as text and runs nothing', { timeout: 60_000 }, async t => {
  const server = await serve(t)
  const alice = await openChat(t, browser, server, 'alice')
  const bob = await openChat(t, browser, server, 'bob')
  const attack = '<img src=x onerror=alert(1)>'

  await send(alice, attack)
  await waitForMessage(bob, attack)
  await waitForMessage(alice, attack)
  // A page opened afterwards gets it twice: rendered by the server, then from the history.
  const carol = await openChat(t, browser, server, 'carol')
  await waitForMessage(carol, attack)
  for (const page of [alice, bob, carol]) {
    assert.equal(await page.locator('#logs img').count(), 0)
  }
  await screenshot(bob, 'desktop-xss')
  nothingWentWrong(alice, bob, carol)
})

test('errors are shown in words where they happen; /echo answers', { timeout: 60_000 }, async t => {
  const server = await serve(t, { args: ['-burst', '12', '-rate', '1'] })
  const alice = await openChat(t, browser, server, 'alice')
  const bob = await openChat(t, browser, server, 'bob')

  await send(bob, '/echo are you there?')
  await bob.locator('.log .system', { hasText: 'Echo from the server: are you there?' }).waitFor()

  await bob.getByLabel('Username').fill('Alice')
  await bob.getByLabel('Username').press('Enter')
  await bob.locator('#name-error', { hasText: '"Alice" is taken' }).waitFor()
  await bob.getByLabel('Username').fill('no <tags>')
  await bob.getByLabel('Username').press('Enter')
  await bob.locator('#name-error', { hasText: 'A username is 1-24 letters' }).waitFor()
  await bob.getByLabel('Username').fill('robert')
  await bob.getByLabel('Username').press('Enter')
  await alice.locator('.log .system', { hasText: 'bob is now robert' }).waitFor()
  await bob.locator('#name-error:empty').waitFor({ state: 'attached' })

  await send(bob, 'x'.repeat(2001))
  await bob.locator('#message-error', { hasText: 'A message is 1-2000 characters' }).waitFor()
  assert.equal((await messageBox(bob).inputValue()).length, 2001) // given back to fix

  await bob.getByLabel('Room', { exact: true }).fill('no spaces allowed')
  await bob.getByLabel('Room', { exact: true }).press('Enter')
  await bob.locator('#room-error', { hasText: 'A room name is 1-32' }).waitFor()
  await screenshot(bob, 'desktop-errors')

  // The server takes one event a second here, after a burst of 12.
  for (let i = 0; i < 15 && await bob.locator('#message-error', { hasText: 'Too many events' }).count() === 0; i++) {
    await send(bob, `message ${i}`)
  }
  await bob.locator('#message-error', { hasText: 'Too many events: slow down' }).waitFor()
  nothingWentWrong(alice, bob)
})

test('without JavaScript the page shows the latest messages and its form posts one', { timeout: 60_000 }, async t => {
  const server = await serve(t)
  assert.equal(await postForm(server, 'curl', 'posted by <b>curl</b>'), 303)

  const page = await openPage(t, browser, server.url, { javaScriptEnabled: false })
  await waitForMessage(page, 'posted by <b>curl</b>')
  assert.match(await page.locator('#status').textContent(), /Without JavaScript/)
  // Nothing can know the reader's time zone without a script: UTC, said so.
  assert.match(await message(page, 'posted by <b>curl</b>').locator('time').textContent(), /^\d{1,2} [A-Z][a-z]{2} \d\d:\d\d UTC$/)
  await page.getByLabel('Username').fill('nojs')
  await messageBox(page).fill('sent without JavaScript')
  await page.getByRole('button', { name: 'Send' }).click()
  await page.waitForURL(`${server.url}/`)
  await waitForMessage(page, 'sent without JavaScript')
  assert.equal(await message(page, 'sent without JavaScript').locator('.author').textContent(), 'nojs')
  await screenshot(page, 'desktop-nojs')
  await page.setViewportSize(phone)
  await screenshot(page, 'phone-nojs')

  const stored = await (await fetch(`${server.url}/messages`)).json()
  assert.deepEqual(stored.map(m => [m.username, m.text]), [['curl', 'posted by <b>curl</b>'], ['nojs', 'sent without JavaScript']])
  nothingWentWrong(page)
})

test('a first visit asks for a name; the about page says what this is', { timeout: 60_000 }, async t => {
  const server = await serve(t)
  assert.equal(await postForm(server, 'curl', 'posted before you came'), 303)
  const page = await openPage(t, browser, server.url, { viewport: phone })
  await page.locator('#name-hint', { hasText: 'Choose a name' }).waitFor()
  assert.equal(await page.locator('#status').textContent(), 'Not connected')
  // Not connected yet, the page shows the messages the server rendered,
  // their times written in the reader's zone like those of live ones.
  const time = message(page, 'posted before you came').locator('time')
  assert.match(await time.textContent(), /^[1-9]\d?[:.]\d\d( [AP]M)?$/)
  assert.ok(await time.getAttribute('title'))
  await screenshot(page, 'phone-first-visit')
  await page.getByRole('link', { name: 'About' }).click()
  await page.getByRole('heading', { name: 'About this chat' }).waitFor()
  assert.match(await page.locator('body').textContent(), /WebSocket[\s\S]*long-polling[\s\S]*PROTOCOL\.md/)
  await screenshot(page, 'phone-about')
  nothingWentWrong(page)
})
