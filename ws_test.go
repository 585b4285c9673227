package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
)

func TestWelcomeThenGeneral(t *testing.T) {
	t.Parallel()
	_, ts := startServer(t, nil)
	c := dial(t, ts, "  alice ")

	var w struct {
		SID      string
		Username string
		Resumed  bool
	}
	c.welcome.decode(t, &w)
	if !regexp.MustCompile(`^[A-Za-z0-9_-]{22}$`).MatchString(w.SID) {
		t.Errorf("sid: got %q, want 128 bits URL-safe encoded", w.SID)
	}
	if w.Username != "alice" || w.Resumed {
		t.Errorf("welcome: got %s, want username alice (trimmed), resumed false", c.welcome.Data)
	}
	if c.welcome.Seq != 0 || bytes.Contains(c.welcome.Data, []byte("seq")) {
		t.Errorf("welcome has a seq: %s", c.welcome)
	}

	e := c.expect("room_joined")
	if e.Seq != 1 {
		t.Errorf("first seq: got %d, want 1", e.Seq)
	}
	if got, want := string(e.Data), `{"room":"general","count":1,"history":[],"users":["alice"]}`; got != want {
		t.Errorf("room_joined: got %s, want %s", got, want)
	}
}

func TestGuestNames(t *testing.T) {
	t.Parallel()
	_, ts := startServer(t, nil)
	alice := joined(t, ts, "Alice")
	for _, wanted := range []string{"", "ALICE", "bad/name", strings.Repeat("x", 25)} {
		c := dial(t, ts, wanted)
		if !regexp.MustCompile(`^guest-\d{4}$`).MatchString(c.username) {
			t.Errorf("username %q: got %q, want guest-NNNN", wanted, c.username)
		}
	}
	_ = alice
}

func TestEcho(t *testing.T) {
	t.Parallel()
	_, ts := startServer(t, nil)
	alice := joined(t, ts, "alice")
	bob := joined(t, ts, "bob")
	alice.expect("user_joined")

	for _, v := range []string{`"hi"`, `42`, `{"a":[1,2]}`, `null`, `[true,false]`} {
		alice.sendRaw(`{"event":"echo_message","data":` + v + `}`)
		if got := alice.expect("echo_response"); string(got.Data) != v {
			t.Errorf("echo_response: got %s, want %s", got.Data, v)
		}
	}
	alice.sendRaw(`{"event":"echo_message","data":{"x":1},"ack":9}`)
	alice.expect("echo_response")
	if got, want := string(alice.expect("ack").Data), `{"ok":true,"data":{"x":1}}`; got != want {
		t.Errorf("ack: got %s, want %s", got, want)
	}
	bob.quiet(50 * time.Millisecond) // an echo goes to the sender only
}

var timestampRE = regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$`)

func TestSendMessage(t *testing.T) {
	t.Parallel()
	_, ts := startServer(t, nil)
	alice := joined(t, ts, "alice")
	bob := joined(t, ts, "bob")
	alice.expect("user_joined")

	alice.emit("send_message", map[string]any{"text": "  hi <b>bob</b>  "}, 3)
	for _, c := range []*client{alice, bob} {
		var m message
		c.expect("new_message").decode(t, &m)
		if m.ID < 1 || m.Room != "general" || m.Username != "alice" || m.Text != "  hi <b>bob</b>  " {
			t.Errorf("%s got new_message %+v", c.username, m)
		}
		if !timestampRE.MatchString(m.Timestamp) {
			t.Errorf("timestamp: got %q, want RFC 3339 UTC with milliseconds", m.Timestamp)
		}
	}
	ack := alice.expect("ack") // after the event it caused
	var a struct {
		OK      bool
		Message message
	}
	ack.decode(t, &a)
	if ack.Ack != 3 || !a.OK || a.Message.Text != "  hi <b>bob</b>  " {
		t.Errorf("ack: got %s", ack)
	}

	bob.emit("send_message", map[string]any{"room": "general", "text": "yo"}, 0)
	var m2 message
	alice.expect("new_message").decode(t, &m2)
	if m2.ID <= a.Message.ID {
		t.Errorf("ids: got %d after %d, want larger", m2.ID, a.Message.ID)
	}
	bob.expect("new_message")
	bob.quiet(50 * time.Millisecond) // no ack without an ack number

	_, body := httpGet(t, ts.URL+"/messages?room=general")
	var stored []message
	json.Unmarshal([]byte(body), &stored)
	if len(stored) != 2 || stored[1].Text != "yo" {
		t.Errorf("/messages: got %s", body)
	}
}

func TestJoinAndLeave(t *testing.T) {
	t.Parallel()
	_, ts := startServer(t, nil)
	alice := joined(t, ts, "alice")
	bob := joined(t, ts, "Bob")
	alice.expect("user_joined")

	r := alice.call("join_room", map[string]any{"room": "dev"})
	if string(r.raw) != `{"ok":true,"room":"dev","count":1,"history":[],"users":["alice"]}` {
		t.Errorf("join ack: got %s", r.raw)
	}
	var first message
	m := alice.call("send_message", map[string]any{"room": "dev", "text": "one"})
	json.Unmarshal(m.raw, &struct{ Message *message }{&first})
	alice.call("send_message", map[string]any{"room": "dev", "text": "two"})

	bob.emit("join_room", map[string]any{"room": "dev", "since": first.ID}, 0)
	var rj joinedData
	bob.expect("room_joined").decode(t, &rj)
	if rj.Room != "dev" || !slices.Equal(rj.Users, []string{"alice", "Bob"}) || rj.Count != 2 ||
		len(rj.History) != 1 || rj.History[0].Text != "two" {
		t.Errorf("room_joined: got %+v, want alice and Bob, and only the message after since", rj)
	}
	if got := alice.expect("user_joined"); string(got.Data) != `{"room":"dev","username":"Bob"}` {
		t.Errorf("user_joined: got %s", got.Data)
	}

	// Joining again: room_joined again, nothing to others.
	bob.emit("join_room", map[string]any{"room": "dev"}, 0)
	bob.expect("room_joined")
	alice.quiet(50 * time.Millisecond)

	if r := bob.call("leave_room", map[string]any{"room": "dev"}); string(r.raw) != `{"ok":true}` {
		t.Errorf("leave ack: got %s", r.raw)
	}
	if got := alice.expect("user_left"); string(got.Data) != `{"room":"dev","username":"Bob"}` {
		t.Errorf("user_left: got %s", got.Data)
	}
	if r := bob.call("send_message", map[string]any{"room": "dev", "text": "x"}); r.Error.Code != "not_in_room" {
		t.Errorf("send after leaving: got %s, want not_in_room", r.raw)
	}
}

// TestCrowd: a room of more than cfg.PresenceLimit members is a crowd. Its
// presence events stop, and room_joined lists the first PresenceLimit names
// (sorted) with the true count. That list, shared by every joiner
// (room.names), follows each join, leave and rename among those names.
func TestCrowd(t *testing.T) {
	t.Parallel()
	_, ts := startServer(t, func(c *config) { c.PresenceLimit = 3 })
	check := func(c *client, users []string, count int) {
		t.Helper()
		var rj joinedData
		c.expect("room_joined").decode(t, &rj)
		if !slices.Equal(rj.Users, users) || rj.Count != count {
			t.Errorf("%s: room_joined lists %v of %d, want %v of %d", c.username, rj.Users, rj.Count, users, count)
		}
	}
	b := dial(t, ts, "b")
	check(b, []string{"b"}, 1)
	d := dial(t, ts, "d")
	check(d, []string{"b", "d"}, 2)
	b.expect("user_joined")
	f := dial(t, ts, "f")
	check(f, []string{"b", "d", "f"}, 3) // at the limit: still announced
	b.expect("user_joined")
	d.expect("user_joined")

	// One more is a crowd: the first three are listed, and nobody is told.
	check(dial(t, ts, "h"), []string{"b", "d", "f"}, 4)
	a := dial(t, ts, "a")
	check(a, []string{"a", "b", "d"}, 5)
	a.call("set_username", map[string]any{"username": "z"})
	check(dial(t, ts, "c"), []string{"b", "c", "d"}, 6)
	b.call("leave_room", map[string]any{"room": "general"})
	check(dial(t, ts, "e"), []string{"c", "d", "e"}, 6)
	for _, c := range []*client{b, d, f} {
		c.quiet(50 * time.Millisecond)
	}

	// Joining again: room_joined and the ack carry the same list.
	d.emit("join_room", map[string]any{"room": "general"}, 1)
	check(d, []string{"c", "d", "e"}, 6)
	var ack struct {
		OK    bool
		Users []string
		Count int
	}
	d.expect("ack").decode(t, &ack)
	if !ack.OK || !slices.Equal(ack.Users, []string{"c", "d", "e"}) || ack.Count != 6 {
		t.Errorf("join_room's ack: got %+v", ack)
	}
}

// TestPings: the server pings every cfg.PingEvery, also while it writes
// events (a ping then joins the message being gathered, gatheredConn). A client
// that answers stays and gets every event, in order; one that does not
// answer within cfg.PongWait is dropped (and its session ends after grace).
func TestPings(t *testing.T) {
	t.Parallel()
	_, ts := startServer(t, func(c *config) {
		c.PingEvery, c.PongWait, c.Grace = 2*time.Millisecond, 200*time.Millisecond, 50*time.Millisecond
		c.Rate, c.Burst = 1e6, 1e6
	})
	const wantPings = 20
	pinged := make(chan struct{})
	var pings atomic.Int64
	opts := &websocket.DialOptions{OnPingReceived: func(context.Context, []byte) bool {
		if pings.Add(1) == wantPings {
			close(pinged)
		}
		return true // and answer it
	}}
	alice := dialWith(t, ts, url.Values{"username": {"alice"}}, 0, opts)
	alice.expect("room_joined")
	bob := joined(t, ts, "bob")
	alice.expect("user_joined")

	for i := range 300 {
		bob.emit("send_message", map[string]any{"text": strconv.Itoa(i)}, 0)
	}
	for i := range 300 { // the client checks that no seq is skipped
		var m message
		alice.expect("new_message").decode(t, &m)
		if m.Text != strconv.Itoa(i) {
			t.Fatalf("message %d: got %q", i, m.Text)
		}
	}
	// A ping's round trip is a few wake-ups on each side: 20 of them take
	// milliseconds, but on a machine loaded with -race -count=20 and
	// browsers, 15 took 5 s once. Pings that stop never reach 20.
	const pingWait = 30 * time.Second
	select {
	case <-pinged:
	case <-time.After(pingWait):
		t.Fatalf("%d pings in %v, want %d", pings.Load(), pingWait, wantPings)
	}

	// carol never reads, so she never answers a ping.
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	carol, _, err := websocket.Dial(ctx, wsURL(ts, url.Values{"username": {"carol"}}), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer carol.CloseNow()
	for _, c := range []*client{alice, bob} {
		if got := c.waitFor("user_joined"); !bytes.Contains(got.Data, []byte(`"carol"`)) {
			t.Fatalf("%s: got %s, want carol joining", c.username, got)
		}
		if got := c.waitFor("user_left"); !bytes.Contains(got.Data, []byte(`"carol"`)) {
			t.Fatalf("%s: got %s, want carol leaving", c.username, got)
		}
	}
}

// TestIdleHasNoWriter: an idle connection is its reader alone. A writer
// runs while there are events to send (wsConn.wake) and ends when there are
// none (wsConn.rest); pings come from a timer.
func TestIdleHasNoWriter(t *testing.T) {
	t.Parallel()
	srv, ts := startServer(t, nil)
	var clients []*client
	for i := range 20 {
		clients = append(clients, joined(t, ts, fmt.Sprintf("u%d", i)))
	}
	clients[0].emit("send_message", map[string]any{"text": "hello"}, 0)
	for _, c := range clients {
		c.waitFor("new_message")
	}
	waitUntil(t, waitTimeout, "every writer rested", func() bool {
		srv.mu.Lock()
		defer srv.mu.Unlock()
		for _, s := range srv.sessions {
			s.outboxMu.Lock()
			c, ok := s.transport.(*wsConn)
			s.outboxMu.Unlock()
			if !ok {
				return false // every client here is connected: wait for it
			}
			c.mu.Lock()
			state := c.state
			c.mu.Unlock()
			if state != writerIdle {
				return false
			}
		}
		return true
	})

	// And they start again: an event after the rest still arrives.
	clients[1].emit("send_message", map[string]any{"text": "again"}, 0)
	for _, c := range clients {
		if got := c.waitFor("new_message"); !bytes.Contains(got.Data, []byte(`"again"`)) {
			t.Fatalf("%s: got %s", c.username, got)
		}
	}
}

// TestFirstFrameWithHandshake: a client may send its first frame right
// behind the upgrade request, before it sees the answer. net/http has then
// read it already, and the connection keeps net/http's reader to get it
// (hijacker.Hijack).
func TestFirstFrameWithHandshake(t *testing.T) {
	t.Parallel()
	_, ts := startServer(t, nil)
	conn, err := net.DialTimeout("tcp", ts.Listener.Addr().String(), waitTimeout)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(waitTimeout))

	// The request and a masked text frame, in one write.
	payload := []byte(`{"event":"echo_message","data":"early","ack":1}`)
	mask := []byte{1, 2, 3, 4}
	frame := append([]byte{0x81, 0x80 | byte(len(payload))}, mask...)
	for i, b := range payload {
		frame = append(frame, b^mask[i%4])
	}
	req := "GET /ws?username=alice HTTP/1.1\r\nHost: " + ts.Listener.Addr().String() +
		"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13" +
		"\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
	if _, err := conn.Write(append([]byte(req), frame...)); err != nil {
		t.Fatal(err)
	}

	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("handshake: %v %v", resp, err)
	}
	for { // unmasked server frames, each shorter than 64 KiB here
		var head [4]byte
		if _, err := io.ReadFull(br, head[:2]); err != nil {
			t.Fatalf("no echo of the early frame: %v", err)
		}
		n := int(head[1] & 0x7f)
		if n == 126 {
			io.ReadFull(br, head[2:4])
			n = int(binary.BigEndian.Uint16(head[2:4]))
		}
		msg := make([]byte, n)
		if _, err := io.ReadFull(br, msg); err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(msg, []byte(`"ack":1`)) {
			if !bytes.Contains(msg, []byte(`"data":"early"`)) {
				t.Errorf("ack: got %s", msg)
			}
			return
		}
	}
}

// TestClientCloseWhileStreaming: a client that closes while events stream
// to it gets the server's answer to its close frame, even when that answer
// joins a message the writer is gathering (gatheredConn.Close sends it).
//
// Each round ends when bob has his own 200 messages back, so the server has
// handled them all: alice, who joins the next round, gets that round's 200
// and a user_left or so, fewer than cfg.Outbox, and is never too slow.
// (Without that wait the server fell rounds behind bob's sends; a new alice
// got the backlog too, over 256 events, and was dropped as too slow.)
func TestClientCloseWhileStreaming(t *testing.T) {
	t.Parallel()
	_, ts := startServer(t, func(c *config) { c.Rate, c.Burst = 1e6, 1e6 })
	bob := joined(t, ts, "bob")
	const perRound = 200 // < cfg.Outbox
	for i := range 20 {
		alice := joined(t, ts, fmt.Sprintf("alice%d", i))
		for j := range perRound {
			bob.emit("send_message", map[string]any{"text": fmt.Sprintf("%d-%d", i, j)}, 0)
		}
		var m message
		alice.waitFor("new_message").decode(t, &m)
		if want := fmt.Sprintf("%d-0", i); m.Text != want {
			t.Fatalf("alice%d's first message: got %q, want %q", i, m.Text, want)
		}
		if err := alice.conn.Close(websocket.StatusNormalClosure, ""); err != nil {
			t.Fatalf("close %d: no answer from the server: %v", i, err)
		}
		for j := range perRound {
			bob.waitFor("new_message").decode(t, &m)
			if want := fmt.Sprintf("%d-%d", i, j); m.Text != want {
				t.Fatalf("bob: got %q, want %q", m.Text, want)
			}
		}
	}
}

// TestWakeWhileWriting pushes bob two events at a time, the second 0 to
// 300 µs after the first, so that it comes at every point of his writer's
// run: before it looks, while it writes, while it takes turns, as it
// rests. Each must arrive, once and in order (the client checks seq), and
// no second writer may start (-race). The narrowest case, a push between
// the writer's last look and its rest, is about one sync.Pool.Put wide:
// this test reaches it too rarely to catch the mutant that loses it
// (mutate/mutants.txt, wake-forgets-pending).
func TestWakeWhileWriting(t *testing.T) {
	t.Parallel()
	srv, ts := startServer(t, nil)
	bob := joined(t, ts, "bob")
	srv.mu.Lock()
	s := srv.sessions[bob.sid]
	srv.mu.Unlock()
	for i := range 3000 {
		s.push(encodeEvent("typing", map[string]any{"room": "general", "username": "alice", "typing": true}))
		for start := time.Now(); time.Since(start) < time.Duration(i%3000)*100*time.Nanosecond; {
		}
		s.push(encodeEvent("typing", map[string]any{"room": "general", "username": "alice", "typing": false}))
		bob.expect("typing")
		bob.expect("typing")
	}
}

func TestSetUsername(t *testing.T) {
	t.Parallel()
	_, ts := startServer(t, nil)
	alice := joined(t, ts, "alice")
	bob := joined(t, ts, "bob")
	alice.expect("user_joined")
	alice.call("join_room", map[string]any{"room": "dev"})
	bob.call("join_room", map[string]any{"room": "dev"})
	alice.expect("user_joined")

	r := bob.call("set_username", map[string]any{"username": " Robert "})
	if string(r.raw) != `{"ok":true,"username":"Robert"}` {
		t.Errorf("ack: got %s", r.raw)
	}
	for _, c := range []*client{alice} {
		for _, room := range []string{"dev", "general"} {
			if got, want := string(c.expect("user_renamed").Data), `{"room":"`+room+`","old":"bob","new":"Robert"}`; got != want {
				t.Errorf("%s: got %s, want %s", c.username, got, want)
			}
		}
	}
	if r := alice.call("set_username", map[string]any{"username": "ROBERT"}); r.Error.Code != "username_taken" {
		t.Errorf("taken name: got %s", r.raw)
	}
	if r := alice.call("set_username", map[string]any{"username": "a/b"}); r.Error.Code != "invalid_username" {
		t.Errorf("invalid name: got %s", r.raw)
	}
	if r := alice.call("set_username", map[string]any{"username": "ALICE"}); !r.OK {
		t.Errorf("own name in other case: got %s", r.raw)
	}
}

func TestTyping(t *testing.T) {
	t.Parallel()
	_, ts := startServer(t, func(c *config) { c.TypingTimeout = 200 * time.Millisecond })
	alice := joined(t, ts, "alice")
	bob := joined(t, ts, "bob")
	alice.expect("user_joined")
	typing := func(c *client, want bool) {
		t.Helper()
		if got, w := string(c.expect("user_typing").Data), fmt.Sprintf(`{"room":"general","username":"alice","typing":%v}`, want); got != w {
			t.Errorf("got %s, want %s", got, w)
		}
	}

	// Start shows to the others only, then turns itself off.
	alice.emit("typing_start", nil, 0)
	typing(bob, true)
	typing(bob, false)
	alice.quiet(50 * time.Millisecond)

	// A sent message turns it off, before the message.
	alice.emit("typing_start", map[string]any{"room": "general"}, 0)
	typing(bob, true)
	alice.emit("send_message", map[string]any{"text": "done"}, 0)
	typing(bob, false)
	bob.expect("new_message")
	alice.expect("new_message")

	// typing_stop when not typing sends nothing.
	alice.call("typing_stop", nil)
	bob.quiet(50 * time.Millisecond)

	// Leaving the room turns it off.
	alice.emit("typing_start", nil, 0)
	typing(bob, true)
	alice.emit("leave_room", map[string]any{"room": "general"}, 0)
	typing(bob, false)
	bob.expect("user_left")
}

func TestTypingEndsWithSession(t *testing.T) {
	t.Parallel()
	_, ts := startServer(t, func(c *config) { c.Grace = 50 * time.Millisecond; c.TypingTimeout = time.Minute })
	alice := joined(t, ts, "alice")
	bob := joined(t, ts, "bob")
	alice.expect("user_joined")
	alice.emit("typing_start", nil, 0)
	bob.expect("user_typing")
	alice.drop()
	if got := bob.expect("user_typing"); !strings.Contains(string(got.Data), `"typing":false`) {
		t.Errorf("got %s, want typing false", got)
	}
	bob.expect("user_left")
}

func TestPrivateMessage(t *testing.T) {
	t.Parallel()
	_, ts := startServer(t, nil)
	alice := joined(t, ts, "alice")
	bob := joined(t, ts, "Bob")
	carol := joined(t, ts, "carol")
	alice.expect("user_joined")
	alice.expect("user_joined")
	bob.expect("user_joined")

	r := alice.call("private_message", map[string]any{"to": "BOB", "text": "psst"})
	var a struct{ Message privateMessage }
	json.Unmarshal(r.raw, &a)
	if !r.OK || a.Message.From != "alice" || a.Message.To != "Bob" || a.Message.ID < 1 || !timestampRE.MatchString(a.Message.Timestamp) {
		t.Errorf("ack: got %s", r.raw)
	}
	var got privateMessage
	bob.expect("private_message").decode(t, &got)
	if got != a.Message {
		t.Errorf("bob got %+v, want %+v", got, a.Message)
	}
	carol.quiet(50 * time.Millisecond)

	// Matched as names are kept unique: by case and by width.
	if r := alice.call("private_message", map[string]any{"to": "ＢＯＢ", "text": "wide"}); !r.OK {
		t.Errorf("to ＢＯＢ: got %s", r.raw)
	}
	bob.expect("private_message")

	// To oneself: once.
	alice.emit("private_message", map[string]any{"to": "alice", "text": "note"}, 0)
	alice.expect("private_message")
	alice.quiet(50 * time.Millisecond)

	if r := alice.call("private_message", map[string]any{"to": "nobody", "text": "x"}); r.Error.Code != "user_not_found" {
		t.Errorf("unknown user: got %s", r.raw)
	}
}

func TestListRooms(t *testing.T) {
	t.Parallel()
	_, ts := startServer(t, nil)
	alice := joined(t, ts, "alice")
	bob := joined(t, ts, "bob")
	alice.expect("user_joined")
	bob.call("join_room", map[string]any{"room": "zeta"})
	bob.call("send_message", map[string]any{"room": "zeta", "text": "kept"}) // zeta is kept for its history
	bob.call("join_room", map[string]any{"room": "alpha"})
	bob.call("leave_room", map[string]any{"room": "zeta"})

	alice.emit("list_rooms", nil, 0)
	want := `{"rooms":[{"name":"alpha","users":1},{"name":"general","users":2}]}`
	if got := alice.expect("rooms"); string(got.Data) != want {
		t.Errorf("rooms: got %s, want %s", got.Data, want)
	}
	if r := alice.call("list_rooms", map[string]any{}); string(r.raw) != `{"ok":true,"rooms":[{"name":"alpha","users":1},{"name":"general","users":2}]}` {
		t.Errorf("ack: got %s", r.raw)
	}
}

// TestErrorCodes sends each failing event twice, with and without an ack
// number: with one the failure is a failed ack and no error event; without,
// an error event naming the event.
func TestErrorCodes(t *testing.T) {
	t.Parallel()
	_, ts := startServer(t, func(c *config) { c.Burst = 100 }) // two events a case
	alice := joined(t, ts, "alice")
	joined(t, ts, "bob")
	alice.expect("user_joined")

	cases := []struct {
		event string
		data  string
		code  string
	}{
		{"send_message", `{"text":""}`, "invalid_message"},
		{"send_message", `{"text":"   "}`, "invalid_message"},
		{"send_message", `{"text":"x","room":"no such"}`, "invalid_room"},
		{"send_message", `{"text":"x","room":"elsewhere"}`, "not_in_room"},
		{"send_message", `{"text":"x","room":""}`, "invalid_room"}, // empty is not absent
		{"send_message", `{"text":"x","cid":"` + strings.Repeat("c", 65) + `"}`, "bad_request"},
		{"send_message", `{"text":"x","cid":"a.b"}`, "bad_request"},
		{"send_message", `{"text":5}`, "bad_request"},
		{"send_message", `"text"`, "bad_request"},
		{"join_room", `{"room":""}`, "invalid_room"},
		{"join_room", `{}`, "invalid_room"},
		{"leave_room", `{"room":"elsewhere"}`, "not_in_room"},
		{"leave_room", `{"room":"a b"}`, "invalid_room"},
		{"set_username", `{"username":"bob"}`, "username_taken"},
		{"set_username", `{"username":""}`, "invalid_username"},
		{"typing_start", `{"room":"elsewhere"}`, "not_in_room"},
		{"typing_start", `{"room":""}`, "invalid_room"},
		{"typing_stop", `{"room":""}`, "invalid_room"},
		{"typing_stop", `{"room":"!"}`, "invalid_room"},
		{"private_message", `{"to":"zed","text":"x"}`, "user_not_found"},
		{"private_message", `{"to":"bob","text":""}`, "invalid_message"},
		{"list_rooms", `[]`, "bad_request"},
		{"no_such_event", `{}`, "unknown_event"},
	}
	for i, tc := range cases {
		alice.sendRaw(fmt.Sprintf(`{"event":%q,"data":%s,"ack":%d}`, tc.event, tc.data, i+1))
		var a ackReply
		e := alice.expect("ack")
		e.decode(t, &a)
		if e.Ack != int64(i+1) || a.OK || a.Error.Code != tc.code || a.Error.Message == "" {
			t.Errorf("%s %s with ack: got %s, want failed ack %s", tc.event, tc.data, e, tc.code)
		}

		alice.sendRaw(fmt.Sprintf(`{"event":%q,"data":%s}`, tc.event, tc.data))
		var got struct{ Code, Message, Event string }
		alice.expect("error").decode(t, &got)
		if got.Code != tc.code || got.Event != tc.event || got.Message == "" {
			t.Errorf("%s %s: got error %+v, want %s", tc.event, tc.data, got, tc.code)
		}
	}
}

// TestMalformedInput: bad input gets the documented error, and the
// connection stays open and usable.
func TestMalformedInput(t *testing.T) {
	t.Parallel()
	_, ts := startServer(t, nil)
	alice := joined(t, ts, "alice")

	cases := []struct{ msg, code, event string }{
		{`not json`, "bad_request", ""},
		{`{"event":`, "bad_request", ""},
		{`"a string"`, "bad_request", ""},
		{`{}`, "bad_request", ""},
		{`{"data":{}}`, "bad_request", ""},
		{`{"event":""}`, "bad_request", ""},
		{`{"event":"Send_Message"}`, "bad_request", "Send_Message"},
		{`{"event":5}`, "bad_request", ""},
		{`{"event":"` + strings.Repeat("a", 33) + `"}`, "bad_request", strings.Repeat("a", 33)},
		{`{"event":"teleport"}`, "unknown_event", "teleport"},
		{`{"event":"echo_message","ack":0}`, "bad_request", "echo_message"},
		{`{"event":"echo_message","ack":-1}`, "bad_request", "echo_message"},
		{`{"event":"echo_message","ack":1.5}`, "bad_request", "echo_message"},
		{`{"event":"echo_message","ack":"1"}`, "bad_request", "echo_message"},
		{`{"event":"send_message","data":[1]}`, "bad_request", "send_message"},
	}
	for _, tc := range cases {
		alice.sendRaw(tc.msg)
		var got struct{ Code, Message, Event string }
		alice.expect("error").decode(t, &got)
		if got.Code != tc.code || got.Event != tc.event {
			t.Errorf("%s: got %+v, want code %s event %q", tc.msg, got, tc.code, tc.event)
		}
	}

	// An array: each element on its own, in order; an empty one does nothing.
	alice.sendRaw(`[]`)
	alice.sendRaw(`[1, {"event":"echo_message","data":"a"}, {"nope":true}, {"event":"echo_message","data":"b","ack":4}]`)
	alice.expect("error")
	if got := alice.expect("echo_response"); string(got.Data) != `"a"` {
		t.Errorf("got %s", got)
	}
	alice.expect("error")
	alice.expect("echo_response")
	if got := alice.expect("ack"); got.Ack != 4 {
		t.Errorf("got %s", got)
	}
	// Unknown fields are ignored; the connection is still fine.
	alice.sendRaw(`{"event":"echo_message","data":"still here","extra":1}`)
	if got := alice.expect("echo_response"); string(got.Data) != `"still here"` {
		t.Errorf("got %s", got)
	}
}

// TestResentAck: an event resent with an ack number already used gets the
// same answer and is not applied again.
func TestResentAck(t *testing.T) {
	t.Parallel()
	_, ts := startServer(t, nil)
	alice := joined(t, ts, "alice")

	send := `{"event":"send_message","data":{"text":"once"},"ack":7}`
	alice.sendRaw(send)
	alice.expect("new_message")
	first := alice.expect("ack")
	alice.sendRaw(send)
	again := alice.expect("ack")
	if string(again.Data) != string(first.Data) || again.Ack != 7 {
		t.Errorf("answer to the resent event: got %s, want %s", again, first)
	}
	// Also across a reconnect, which is when clients resend.
	alice.close()
	q := url.Values{"sid": {alice.sid}, "after": {fmt.Sprint(alice.seq())}}
	back := dialQuery(t, ts, q, alice.seq())
	back.sendRaw(send)
	if got := back.expect("ack"); string(got.Data) != string(first.Data) {
		t.Errorf("after resume: got %s, want %s", got, first)
	}
	_, body := httpGet(t, ts.URL+"/messages?room=general")
	if n := strings.Count(body, `"once"`); n != 1 {
		t.Errorf("stored %d times, want once: %s", n, body)
	}
}

// TestResentAckAppliedAgain: the events whose answers are too big to keep
// (join_room, list_rooms, echo_message) are applied again when resent with
// their ack number, but as first sent: the answer is the first one's, even
// where the resent event says something else, and nothing happens twice.
func TestResentAckAppliedAgain(t *testing.T) {
	t.Parallel()
	_, ts := startServer(t, nil)
	alice := joined(t, ts, "alice")
	bob := joined(t, ts, "bob")
	bob.sendRaw(`{"event":"join_room","data":{"room":"r2"}}`)
	bob.expect("room_joined")
	alice.expect("user_joined")

	alice.sendRaw(`{"event":"echo_message","data":"first","ack":3}`)
	alice.expect("echo_response")
	first := alice.expect("ack")
	alice.sendRaw(`{"event":"echo_message","data":"second","ack":3}`)
	if got := alice.expect("echo_response"); string(got.Data) != `"first"` {
		t.Errorf("echo resent with ack 3: got %s, want the first data again", got)
	}
	if got := alice.expect("ack"); string(got.Data) != string(first.Data) {
		t.Errorf("echo resent with ack 3: got %s, want %s", got, first)
	}

	// An echo too big to keep (over maxRememberedEvent) is kept as a
	// hash: sent again the same, it is answered the same; another event
	// under its number is refused and not applied.
	big := `{"event":"echo_message","data":"` + strings.Repeat("a", maxRememberedEvent) + `","ack":6}`
	alice.sendRaw(big)
	alice.expect("echo_response")
	first = alice.expect("ack")
	alice.sendRaw(big)
	alice.expect("echo_response")
	if got := alice.expect("ack"); string(got.Data) != string(first.Data) {
		t.Errorf("a big echo resent with ack 6: got a different answer")
	}
	alice.sendRaw(`{"event":"send_message","data":{"text":"under a used number"},"ack":6}`)
	var refused ackReply
	alice.expect("ack").decode(t, &refused)
	if refused.OK || refused.Error.Code != "bad_request" {
		t.Errorf("send_message under the big echo's ack 6: got %+v, want bad_request", refused)
	}
	if got := storedTexts(t, ts); len(got) != 0 {
		t.Errorf("GET /messages: got %q, want nothing stored", got)
	}

	alice.sendRaw(`{"event":"join_room","data":{"room":"r1"},"ack":4}`)
	alice.expect("room_joined")
	first = alice.expect("ack")
	alice.sendRaw(`{"event":"join_room","data":{"room":"r2"},"ack":4}`)
	var joined struct{ Room string }
	alice.expect("room_joined").decode(t, &joined)
	again := alice.expect("ack")
	if joined.Room != "r1" || string(again.Data) != string(first.Data) {
		t.Errorf("join_room resent with ack 4 names r2: got room_joined %q and %s, want r1 and %s", joined.Room, again, first)
	}
	// alice is not in r2: bob, there, heard of nobody joining, and hears
	// his own message first.
	bob.sendRaw(`{"event":"send_message","data":{"text":"only me","room":"r2"}}`)
	if got := bob.expect("new_message"); !strings.Contains(string(got.Data), "only me") {
		t.Errorf("bob in r2: got %s", got)
	}
	alice.sendRaw(`{"event":"send_message","data":{"text":"x","room":"r2"},"ack":5}`)
	var a ackReply
	alice.expect("ack").decode(t, &a)
	if a.OK || a.Error.Code != "not_in_room" {
		t.Errorf("alice sending to r2: got %+v, want not_in_room", a)
	}

	// An absent or null room is general.
	alice.sendRaw(`{"event":"send_message","data":{"text":"to general","room":null}}`)
	var m struct{ Room string }
	alice.expect("new_message").decode(t, &m)
	if m.Room != "general" {
		t.Errorf("room null: the message went to %q, want general", m.Room)
	}
}

func TestResume(t *testing.T) {
	t.Parallel()
	_, ts := startServer(t, nil)
	alice := joined(t, ts, "alice")
	bob := joined(t, ts, "bob")
	alice.expect("user_joined")
	alice.call("send_message", map[string]any{"text": "before"})
	bob.expect("new_message")

	alice.drop()
	after := alice.seq()
	for i := range 5 {
		bob.call("send_message", map[string]any{"text": fmt.Sprint("missed ", i)})
	}
	carol := joined(t, ts, "carol")
	// During the grace period alice is still listed.
	var rj joinedData
	json.Unmarshal(carol.call("join_room", map[string]any{"room": "general"}).raw, &rj)
	if !slices.Contains(rj.Users, "alice") {
		t.Errorf("users during grace: got %v, want alice listed", rj.Users)
	}

	back := dialQuery(t, ts, url.Values{"sid": {alice.sid}, "after": {fmt.Sprint(after)}}, after)
	if !strings.Contains(string(back.welcome.Data), `"resumed":true`) || back.sid != alice.sid {
		t.Fatalf("welcome: got %s, want resumed with the same sid", back.welcome)
	}
	for i := range 5 {
		var m message
		back.expect("new_message").decode(t, &m)
		if m.Text != fmt.Sprint("missed ", i) {
			t.Errorf("missed message %d: got %q", i, m.Text)
		}
	}
	back.expect("user_joined") // carol
	back.quiet(50 * time.Millisecond)
	if e := bob.expect("user_joined"); !strings.Contains(string(e.Data), "carol") {
		t.Errorf("bob: got %s, want carol joining", e)
	}
	bob.quiet(50 * time.Millisecond) // and no leave or join of alice
}

func TestResumeRefused(t *testing.T) {
	t.Parallel()
	_, ts := startServer(t, func(c *config) { c.Outbox = 4; c.Grace = time.Minute })
	c := dialQuery(t, ts, url.Values{"sid": {"no-such-session"}, "username": {"zed"}}, 0)
	if !strings.Contains(string(c.welcome.Data), `"resumed":false`) || c.username != "zed" || c.sid == "no-such-session" {
		t.Errorf("unknown sid: got %s, want a new session", c.welcome)
	}

	// The events after `after` are no longer kept (outbox 4): a new session,
	// and the old one has ended, so its name is free.
	alice := joined(t, ts, "alice")
	alice.drop()
	bob := joined(t, ts, "bob")
	for i := range 3 {
		bob.call("send_message", map[string]any{"text": fmt.Sprint(i)})
	}
	// alice's outbox now has 1 room_joined + 4 more events; after=0 is gone.
	back := dialQuery(t, ts, url.Values{"sid": {alice.sid}, "after": {"0"}, "username": {"alice"}}, 0)
	if !strings.Contains(string(back.welcome.Data), `"resumed":false`) || back.username != "alice" {
		t.Errorf("welcome: got %s, want resumed false and the name alice free again", back.welcome)
	}
}

// TestResumeAtOutboxEdge: a session keeps its last cfg.Outbox events. A
// client exactly Outbox events behind resumes and gets every one of them;
// one event further behind gets a new session.
//
// Neither may be a slow reader (more than Outbox events past what its
// transport delivered), or it would end for that reason instead. So each
// parks at its cursor p: a resume with after=p, dropped at once, sets what
// was delivered to exactly p. Then exactly Outbox events come, and alice
// resumes from p, carol from p-1 (she says she never processed event p).
func TestResumeAtOutboxEdge(t *testing.T) {
	t.Parallel()
	const outbox = 8
	_, ts := startServer(t, func(c *config) { c.Outbox = outbox; c.Grace = time.Minute })
	bob := joined(t, ts, "bob")
	alice := joined(t, ts, "alice")
	carol := joined(t, ts, "carol")
	park := func(c *client) int64 {
		t.Helper()
		c.call("echo_message", nil) // every event up to its ack is read
		c.drop()
		p := c.seq()
		parked := dialQuery(t, ts, url.Values{"sid": {c.sid}, "after": {fmt.Sprint(p)}}, p)
		if !strings.Contains(string(parked.welcome.Data), `"resumed":true`) {
			t.Fatalf("%s: got %s, want resumed", c.username, parked.welcome)
		}
		parked.drop()
		return p
	}
	pa, pc := park(alice), park(carol)
	for i := range outbox {
		bob.call("send_message", map[string]any{"text": fmt.Sprint(i)})
	}

	back := dialQuery(t, ts, url.Values{"sid": {alice.sid}, "after": {fmt.Sprint(pa)}}, pa)
	if !strings.Contains(string(back.welcome.Data), `"resumed":true`) {
		t.Fatalf("exactly %d events behind: got %s, want resumed", outbox, back.welcome)
	}
	for i := range outbox { // the reader checks seq: pa+1, pa+2, …
		var m message
		back.expect("new_message").decode(t, &m)
		if m.Text != fmt.Sprint(i) {
			t.Errorf("message %d: got %q", i, m.Text)
		}
	}
	back.call("echo_message", "live")

	again := dialQuery(t, ts, url.Values{"sid": {carol.sid}, "after": {fmt.Sprint(pc - 1)}}, 0)
	if !strings.Contains(string(again.welcome.Data), `"resumed":false`) || again.sid == carol.sid {
		t.Errorf("%d events behind: got %s, want a new session", outbox+1, again.welcome)
	}
}

func TestReplaced(t *testing.T) {
	t.Parallel()
	_, ts := startServer(t, nil)
	first := joined(t, ts, "alice")
	second := dialQuery(t, ts, url.Values{"sid": {first.sid}, "after": {"1"}}, 1)
	if code, reason := first.closeStatus(); code != 4000 || reason != "replaced" {
		t.Errorf("first connection: got close %d %q, want 4000 replaced", code, reason)
	}
	if second.sid != first.sid {
		t.Errorf("sid changed")
	}
	second.call("echo_message", "still works")
}

func TestGraceEnds(t *testing.T) {
	t.Parallel()
	_, ts := startServer(t, func(c *config) { c.Grace = 100 * time.Millisecond })
	alice := joined(t, ts, "alice")
	bob := joined(t, ts, "bob")
	alice.expect("user_joined")
	bob.call("join_room", map[string]any{"room": "dev"})
	alice.call("join_room", map[string]any{"room": "dev"})
	bob.expect("user_joined")
	alice.close()

	left := []string{string(bob.expect("user_left").Data), string(bob.expect("user_left").Data)}
	slices.Sort(left)
	if want := []string{`{"room":"dev","username":"alice"}`, `{"room":"general","username":"alice"}`}; !slices.Equal(left, want) {
		t.Errorf("got %v, want %v", left, want)
	}
	again := dial(t, ts, "ALICE")
	if again.username != "ALICE" {
		t.Errorf("name not free after the grace period: got %q", again.username)
	}
	back := dialQuery(t, ts, url.Values{"sid": {alice.sid}, "after": {"0"}}, 0)
	if !strings.Contains(string(back.welcome.Data), `"resumed":false`) {
		t.Errorf("expired sid: got %s, want resumed false", back.welcome)
	}
}

func TestNameLimits(t *testing.T) {
	t.Parallel()
	_, ts := startServer(t, nil)
	alice := joined(t, ts, "alice")
	cases := []struct {
		name string
		ok   bool
	}{
		{strings.Repeat("é", 24), true},
		{strings.Repeat("é", 25), false},
		{"  " + strings.Repeat("b", 24) + "  ", true},
		{"x", true},
		{"Ann-Marie_O.Neil 2", true},
		{"   ", false},
		{"a@b", false},
		{"tab\tname", false},
		{"日本語", true},
	}
	for _, tc := range cases {
		r := alice.call("set_username", map[string]any{"username": tc.name})
		if r.OK != tc.ok || !tc.ok && r.Error.Code != "invalid_username" {
			t.Errorf("username %q: got %s, want ok=%v", tc.name, r.raw, tc.ok)
		}
	}
	rooms := []struct {
		name string
		ok   bool
	}{
		{strings.Repeat("r", 32), true},
		{strings.Repeat("r", 33), false},
		{"a.b-c_d", true},
		{"a b", false},
		{"Ünïcödé", true},
		{"", false},
	}
	for _, tc := range rooms {
		r := alice.call("join_room", map[string]any{"room": tc.name})
		if r.OK != tc.ok || !tc.ok && r.Error.Code != "invalid_room" {
			t.Errorf("room %q: got %s, want ok=%v", tc.name, r.raw, tc.ok)
		}
	}
	for _, tc := range []struct {
		text string
		ok   bool
	}{
		{strings.Repeat("ß", 2000), true},
		{strings.Repeat("ß", 2001), false},
		{" " + strings.Repeat("a", 2000) + " ", true},
	} {
		r := alice.call("send_message", map[string]any{"text": tc.text})
		if r.OK != tc.ok || !tc.ok && r.Error.Code != "invalid_message" {
			t.Errorf("text of %d characters: got ok=%v %s", len([]rune(tc.text)), r.OK, r.Error.Code)
		}
	}
}

func TestRoomLimit(t *testing.T) {
	t.Parallel()
	_, ts := startServer(t, nil)
	alice := joined(t, ts, "alice")
	for i := 2; i <= 20; i++ { // general is the first
		if r := alice.call("join_room", map[string]any{"room": fmt.Sprint("r", i)}); !r.OK {
			t.Fatalf("room %d: %s", i, r.raw)
		}
	}
	if r := alice.call("join_room", map[string]any{"room": "r21"}); r.Error.Code != "too_many_rooms" {
		t.Errorf("21st room: got %s, want too_many_rooms", r.raw)
	}
	if r := alice.call("join_room", map[string]any{"room": "r20"}); !r.OK {
		t.Errorf("a room one is already in: got %s", r.raw)
	}
	alice.call("leave_room", map[string]any{"room": "r20"})
	if r := alice.call("join_room", map[string]any{"room": "r21"}); !r.OK {
		t.Errorf("after leaving one: got %s", r.raw)
	}
}

func TestRateLimit(t *testing.T) {
	t.Parallel()
	// A rate so slow that no token comes back during the test.
	_, ts := startServer(t, func(c *config) { c.Rate = 0.001; c.Burst = 40 })
	alice := joined(t, ts, "alice")
	var batch []string
	for i := 1; i <= 41; i++ {
		batch = append(batch, fmt.Sprintf(`{"event":"echo_message","data":%d,"ack":%d}`, i, i))
	}
	alice.sendRaw("[" + strings.Join(batch, ",") + "]")
	for i := 1; i <= 40; i++ {
		alice.expect("echo_response")
		if e := alice.expect("ack"); !strings.Contains(string(e.Data), `"ok":true`) {
			t.Fatalf("event %d of the burst: got %s", i, e)
		}
	}
	var a ackReply
	e := alice.expect("ack")
	e.decode(t, &a)
	if e.Ack != 41 || a.Error.Code != "rate_limited" {
		t.Errorf("41st event: got %s, want rate_limited", e)
	}
	alice.sendRaw(`{"event":"echo_message"}`)
	var got struct{ Code string }
	alice.expect("error").decode(t, &got)
	if got.Code != "rate_limited" {
		t.Errorf("without ack: got %s, want rate_limited", got.Code)
	}
}

func TestRateRefills(t *testing.T) {
	t.Parallel()
	_, ts := startServer(t, func(c *config) { c.Rate = 50; c.Burst = 1 })
	alice := joined(t, ts, "alice")
	alice.sendRaw(`[{"event":"echo_message","ack":1},{"event":"echo_message","ack":2}]`)
	alice.expect("echo_response")
	alice.expect("ack")
	if e := alice.expect("ack"); !strings.Contains(string(e.Data), "rate_limited") {
		t.Errorf("second: got %s", e)
	}
	// A refused event is not remembered: the same ack number later passes.
	deadline := time.Now().Add(waitTimeout)
	for {
		alice.sendRaw(`{"event":"echo_message","ack":2}`)
		e := alice.waitFor("ack")
		if strings.Contains(string(e.Data), `"ok":true`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the bucket never refilled")
		}
		time.Sleep(10 * time.Millisecond) // the bucket refills with time itself
	}
}

func TestFrameLimit(t *testing.T) {
	t.Parallel()
	_, ts := startServer(t, nil)
	alice := joined(t, ts, "alice")

	// Exactly 16 KiB passes.
	prefix, suffix := `{"event":"echo_message","data":"`, `"}`
	exact := prefix + strings.Repeat("x", maxFrame-len(prefix)-len(suffix)) + suffix
	alice.sendRaw(exact)
	alice.expect("echo_response")

	// One byte more closes the connection with 1009.
	alice.sendRaw(prefix + strings.Repeat("x", maxFrame-len(prefix)-len(suffix)+1) + suffix)
	if code, _ := alice.closeStatus(); code != websocket.StatusMessageTooBig {
		t.Errorf("close: got %d, want 1009", code)
	}
	// The session is still resumable.
	back := dialQuery(t, ts, url.Values{"sid": {alice.sid}, "after": {fmt.Sprint(alice.seq())}}, alice.seq())
	if !strings.Contains(string(back.welcome.Data), `"resumed":true`) {
		t.Errorf("after 1009: got %s, want resumed", back.welcome)
	}
	back.call("echo_message", 1)
}

func TestSessionLimit(t *testing.T) {
	t.Parallel()
	_, ts := startServer(t, func(c *config) { c.MaxSessions = 2 })
	joined(t, ts, "a")
	b := joined(t, ts, "b")

	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	conn, _, err := websocket.Dial(ctx, wsURL(ts, nil), nil)
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = conn.Read(ctx)
	if code := websocket.CloseStatus(err); code != websocket.StatusTryAgainLater {
		t.Errorf("third session: got %v, want close 1013", err)
	}
	conn.CloseNow()
	// A resume is not a new session: it still works at the cap.
	b.close()
	dialQuery(t, ts, url.Values{"sid": {b.sid}, "after": {fmt.Sprint(b.seq())}}, b.seq())
}

// TestSlowReader: a client that stops reading is closed with 1008 "too
// slow" once it is more than cfg.Outbox events behind, and nobody else
// waits for it.
func TestSlowReader(t *testing.T) {
	t.Parallel()
	_, ts := startServer(t, func(c *config) { c.Outbox = 32; c.Rate = 1e6; c.Burst = 1e6 })
	alice := joined(t, ts, "alice")
	bob := joined(t, ts, "bob")
	alice.expect("user_joined")

	// The slow client: connected, never reading.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	slow, _, err := websocket.Dial(ctx, wsURL(ts, url.Values{"username": {"slow"}}), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer slow.CloseNow()
	slow.SetReadLimit(-1)
	alice.expect("user_joined")
	bob.expect("user_joined")

	// Big messages fill the kernel's socket buffers fast; then the writer
	// blocks, the outbox grows, and the server drops the slow client.
	text := strings.Repeat("m", maxText)
	sent := 0
	for left := false; !left; {
		alice.emit("send_message", map[string]any{"text": text}, 0)
		sent++
		alice.waitFor("new_message")
		for e := bob.next(); e.Event != "new_message"; e = bob.next() {
			if e.Event == "user_left" {
				left = true
			}
		}
		if sent > 20000 {
			t.Fatal("the slow reader was never dropped")
		}
	}
	// Everyone else got everything promptly (the loop above waited for
	// each message); the slow one reads what was sent, then the close.
	for {
		_, _, err := slow.Read(ctx)
		if err != nil {
			if code := websocket.CloseStatus(err); code != websocket.StatusPolicyViolation {
				t.Errorf("slow reader: got %v, want close 1008", err)
			}
			var ce websocket.CloseError
			if errors.As(err, &ce) && ce.Reason != "too slow" {
				t.Errorf("reason: got %q, want too slow", ce.Reason)
			}
			break
		}
	}
	alice.call("send_message", map[string]any{"text": "still fine"})
}

// TestConcurrentSenders: many senders at once; every client sees every
// message, each room's messages in the same order everywhere.
func TestConcurrentSenders(t *testing.T) {
	t.Parallel()
	_, ts := startServer(t, nil)
	const n, each = 5, 20
	clients := make([]*client, n)
	for i := range clients {
		clients[i] = dial(t, ts, fmt.Sprint("user", i))
	}
	for i, c := range clients { // drain the joins
		for range n - i {
			c.next()
		}
	}
	var wg sync.WaitGroup
	for i, c := range clients {
		wg.Go(func() {
			for j := range each {
				c.emit("send_message", map[string]any{"text": fmt.Sprintf("%d-%d", i, j)}, 0)
			}
		})
	}
	wg.Wait()
	var orders [][]int64
	for _, c := range clients {
		var ids []int64
		for len(ids) < n*each {
			var m message
			c.waitFor("new_message").decode(t, &m)
			ids = append(ids, m.ID)
		}
		orders = append(orders, ids)
	}
	for i := range orders {
		if !slices.IsSorted(orders[i]) || !slices.Equal(orders[i], orders[0]) {
			t.Errorf("client %d saw ids in another order", i)
		}
	}
}

func TestCrossOriginHandshake(t *testing.T) {
	t.Parallel()
	_, ts := startServer(t, func(c *config) { c.Origins = []string{"*.example.org"} })
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	for origin, ok := range map[string]bool{
		"http://evil.example.com":  false,
		"https://chat.example.org": true,
		ts.URL:                     true,
	} {
		h := map[string][]string{"Origin": {origin}}
		conn, resp, err := websocket.Dial(ctx, wsURL(ts, nil), &websocket.DialOptions{HTTPHeader: h})
		if ok != (err == nil) {
			t.Errorf("origin %s: got err %v, want ok=%v", origin, err, ok)
		}
		if !ok && resp != nil && resp.StatusCode != 403 {
			t.Errorf("origin %s: got status %d, want 403", origin, resp.StatusCode)
		}
		if conn != nil {
			conn.CloseNow()
		}
	}
}

func TestHealthz(t *testing.T) {
	t.Parallel()
	_, ts := startServer(t, nil)
	if code, _ := httpGet(t, ts.URL+"/healthz"); code != 200 {
		t.Errorf("got %d", code)
	}
}

func TestMessagesEndpoint(t *testing.T) {
	t.Parallel()
	_, ts := startServer(t, nil)
	alice := joined(t, ts, "alice")
	var ids []int64
	for i := range 3 {
		var a struct{ Message message }
		json.Unmarshal(alice.call("send_message", map[string]any{"text": fmt.Sprint(i)}).raw, &a)
		ids = append(ids, a.Message.ID)
	}
	if _, body := httpGet(t, ts.URL+fmt.Sprintf("/messages?room=general&since=%d", ids[0])); strings.Count(body, `"id"`) != 2 {
		t.Errorf("since: got %s", body)
	}
	if code, body := httpGet(t, ts.URL+"/messages?room=empty"); code != 200 || strings.TrimSpace(body) != "[]" {
		t.Errorf("empty room: got %d %s", code, body)
	}
	if code, _ := httpGet(t, ts.URL+"/messages?room=a%20b"); code != 400 {
		t.Errorf("invalid room: got %d", code)
	}
	if code, _ := httpGet(t, ts.URL+"/messages?since=x"); code != 400 {
		t.Errorf("bad since: got %d", code)
	}
}

// TestHistoryCap: a room keeps its last cfg.History messages. At exactly
// History all are kept; one more drops the oldest, in room_joined's history
// and in /messages alike.
func TestHistoryCap(t *testing.T) {
	t.Parallel()
	const history = 3
	_, ts := startServer(t, func(c *config) { c.History = history })
	alice := joined(t, ts, "alice")
	texts := func(list []message) []string {
		var out []string
		for _, m := range list {
			out = append(out, m.Text)
		}
		return out
	}
	check := func(want []string) {
		t.Helper()
		var rj joinedData
		dial(t, ts, "").expect("room_joined").decode(t, &rj) // a newcomer's
		if got := texts(rj.History); !slices.Equal(got, want) {
			t.Errorf("room_joined history: got %q, want %q", got, want)
		}
		var stored []message
		_, body := httpGet(t, ts.URL+"/messages?room=general")
		if err := json.Unmarshal([]byte(body), &stored); err != nil {
			t.Fatalf("/messages: got %s: %v", body, err)
		}
		if got := texts(stored); !slices.Equal(got, want) {
			t.Errorf("/messages: got %q, want %q", got, want)
		}
	}

	for i := range history {
		alice.call("send_message", map[string]any{"text": fmt.Sprint("m", i)})
	}
	check([]string{"m0", "m1", "m2"}) // exactly History: all kept
	alice.call("send_message", map[string]any{"text": "m3"})
	check([]string{"m1", "m2", "m3"}) // one more: the oldest goes
}

// TestIdleRoomsCapped: rooms nobody is in are kept for their history, but
// only cfg.MaxIdleRooms of them. Past that, the one with the fewest
// messages goes, and of those the one whose history began last: a client
// that churns through rooms of its own, a message each, pushes out its own
// rooms, not the ones used before it; general is never pushed out.
func TestIdleRoomsCapped(t *testing.T) {
	t.Parallel()
	srv, ts := startServer(t, func(c *config) { c.MaxIdleRooms = 3 }) // general, and two
	alice := joined(t, ts, "alice")
	visit := func(name string, messages int) {
		t.Helper()
		alice.call("join_room", map[string]any{"room": name})
		for i := range messages {
			alice.call("send_message", map[string]any{"room": name, "text": fmt.Sprint("in ", name, i)})
		}
		alice.call("leave_room", map[string]any{"room": name})
	}
	alice.call("send_message", map[string]any{"text": "in general"})
	alice.call("leave_room", map[string]any{"room": "general"})
	visit("old", 1)
	visit("busy", 3)
	for _, name := range []string{"junk-1", "junk-2", "junk-3", "quiet"} {
		visit(name, map[bool]int{true: 0, false: 1}[name == "quiet"])
	}
	for room, want := range map[string]int{"general": 1, "old": 1, "busy": 3, "junk-1": 0, "junk-2": 0, "junk-3": 0, "quiet": 0} {
		if _, body := httpGet(t, ts.URL+"/messages?room="+room); strings.Count(body, `"id"`) != want {
			t.Errorf("room %s: got %s, want %d messages", room, body, want)
		}
	}
	srv.mu.Lock()
	n := len(srv.rooms)
	srv.mu.Unlock()
	if n != 3 { // general, old, busy
		t.Errorf("rooms kept: got %d, want 3", n)
	}
	// A room with more messages outweighs an older one with fewer.
	visit("busier", 4)
	for room, want := range map[string]int{"old": 0, "busy": 3, "busier": 4} {
		if _, body := httpGet(t, ts.URL+"/messages?room="+room); strings.Count(body, `"id"`) != want {
			t.Errorf("room %s: got %s, want %d messages", room, body, want)
		}
	}
	// general has the fewest messages now, but it is the page's room.
	visit("late", 2)
	for room, want := range map[string]int{"general": 1, "late": 0} {
		if _, body := httpGet(t, ts.URL+"/messages?room="+room); strings.Count(body, `"id"`) != want {
			t.Errorf("room %s: got %s, want %d messages", room, body, want)
		}
	}
	// Joining an idle room brings it back into use, history and all.
	var rj joinedData
	json.Unmarshal(alice.call("join_room", map[string]any{"room": "busy"}).raw, &rj)
	if len(rj.History) != 3 {
		t.Errorf("history of busy: got %v", rj.History)
	}
}

// TestIdleFullRoomsKept: full rooms all have -history messages; of those
// the one born last goes, not the one used last: a room that was there
// before a client's rooms stays, however recently it was busy.
func TestIdleFullRoomsKept(t *testing.T) {
	t.Parallel()
	_, ts := startServer(t, func(c *config) { c.MaxIdleRooms, c.History = 2, 2 })
	alice := joined(t, ts, "alice")
	alice.call("leave_room", map[string]any{"room": "general"})
	post := func(room string) {
		t.Helper()
		for i := range 3 {
			alice.call("send_message", map[string]any{"room": room, "text": fmt.Sprint("in ", room, i)})
		}
	}
	for _, room := range []string{"old", "junk-1", "junk-2"} {
		alice.call("join_room", map[string]any{"room": room})
		post(room)
		if room != "junk-2" {
			alice.call("leave_room", map[string]any{"room": room})
		}
	}
	// old is busy again, after junk-2 was made: its messages are the newest.
	alice.call("join_room", map[string]any{"room": "old"})
	post("old")
	alice.call("leave_room", map[string]any{"room": "old"})
	alice.call("leave_room", map[string]any{"room": "junk-2"}) // three idle rooms: one goes
	for room, want := range map[string]int{"old": 2, "junk-1": 2, "junk-2": 0} {
		if _, body := httpGet(t, ts.URL+"/messages?room="+room); strings.Count(body, `"id"`) != want {
			t.Errorf("room %s: got %s, want %d messages", room, body, want)
		}
	}
}

// TestIdleRoomBeingWritten: with -data a message is on its way to a room
// for a moment before it is published; the form posts to general even when
// nobody is in it. Meanwhile the room must not be forgotten as idle, or its
// history is gone and a cid sent again is stored twice.
func TestIdleRoomBeingWritten(t *testing.T) {
	t.Parallel()
	srv := newServer(func() config { c := testConfig(); c.MaxIdleRooms = 1; return c }())
	srv.mu.Lock()
	defer srv.mu.Unlock()
	for _, name := range []string{"general", "x"} {
		srv.publish(message{ID: srv.nextID + 1, Room: name, Text: "hi"}) // nobody in it: idle
		srv.nextID++
		if name == "general" {
			srv.rooms["general"].writing++ // as post does while the journal writes
		}
	}
	if srv.rooms["general"] == nil {
		t.Fatal("general was forgotten as idle while a message was on its way into it")
	}
	if srv.rooms["x"] != nil {
		t.Error("x was kept: one idle room is the cap, and general is being written")
	}
}

// TestCursorAhead: a resume whose after is beyond the last event is the
// client's mistake. Over WebSocket it gets a new session; the old session is
// left alone (another tab may be using it).
func TestCursorAhead(t *testing.T) {
	t.Parallel()
	_, ts := startServer(t, nil)
	alice := joined(t, ts, "alice")
	c := dialQuery(t, ts, url.Values{"sid": {alice.sid}, "after": {"99"}, "username": {"alice"}}, 0)
	if !strings.Contains(string(c.welcome.Data), `"resumed":false`) || c.sid == alice.sid || c.username == "alice" {
		t.Errorf("welcome: got %s, want a new session with another name", c.welcome)
	}
	alice.call("echo_message", "still alive")

	// One beyond the last event, at the edge, is as much ahead.
	edge := dialQuery(t, ts, url.Values{"sid": {alice.sid}, "after": {fmt.Sprint(alice.seq() + 1)}}, 0)
	if !strings.Contains(string(edge.welcome.Data), `"resumed":false`) || edge.sid == alice.sid {
		t.Errorf("after = last seq + 1: got %s, want a new session", edge.welcome)
	}
	alice.call("echo_message", "still alive")
}

// TestLongBatchIsNotSlow: one message of 300 events, most of them refused by
// the rate limit and each answered, is more answers than the outbox holds.
// The reader waits for the writer instead of dropping the client.
func TestLongBatchIsNotSlow(t *testing.T) {
	t.Parallel()
	_, ts := startServer(t, func(c *config) { c.Outbox = 64; c.Rate = 0.001 })
	alice := joined(t, ts, "alice")
	batch := "[" + strings.TrimSuffix(strings.Repeat(`{"event":"typing_stop"},`, 300), ",") + "]"
	alice.sendRaw(batch)
	for i := range 300 - 40 {
		if e := alice.expect("error"); !strings.Contains(string(e.Data), "rate_limited") {
			t.Fatalf("answer %d: got %s", i, e)
		}
	}
	alice.sendRaw(`not json`) // rate-limited too: every envelope counts
	if e := alice.expect("error"); !strings.Contains(string(e.Data), "rate_limited") {
		t.Errorf("not JSON: got %s, want rate_limited", e)
	}
}

// TestSinceAtTheEnd: a since beyond every id gives nothing (not, by
// overflow, everything).
func TestSinceAtTheEnd(t *testing.T) {
	t.Parallel()
	_, ts := startServer(t, nil)
	alice := joined(t, ts, "alice")
	alice.call("send_message", map[string]any{"text": "x"})
	if _, body := httpGet(t, ts.URL+"/messages?since=9223372036854775807"); strings.TrimSpace(body) != "[]" {
		t.Errorf("got %s, want []", body)
	}
}

// TestOutboxBytesBounded: an outbox keeps at most maxOutboxBytes, however
// few its events. A client that joins a full room again and again (each
// room_joined and its ack carry the whole history) does not pin them all.
func TestOutboxBytesBounded(t *testing.T) {
	t.Parallel()
	srv, ts := startServer(t, func(c *config) { c.Rate, c.Burst = 1e6, 1e6 })
	alice := joined(t, ts, "alice")
	text := strings.Repeat("<", maxText)
	for range 100 {
		alice.emit("send_message", map[string]any{"text": text}, 0)
		alice.expect("new_message")
	}
	before := alice.seq()
	for range 30 {
		alice.call("join_room", map[string]any{"room": "general"})
	}
	srv.mu.Lock()
	s := srv.sessions[alice.sid]
	srv.mu.Unlock()
	s.outboxMu.Lock()
	kept, bytes := s.outbox.len(), s.outboxBytes
	s.outboxMu.Unlock()
	if bytes > maxOutboxBytes || kept >= 100 {
		t.Errorf("outbox keeps %d events, %d bytes; want at most %d bytes", kept, bytes, maxOutboxBytes)
	}
	// What was let go cannot be resumed from: a new session, not a gap.
	alice.close()
	back := dialQuery(t, ts, url.Values{"sid": {alice.sid}, "after": {fmt.Sprint(before)}}, 0)
	if !strings.Contains(string(back.welcome.Data), `"resumed":false`) {
		t.Errorf("resume from before the trimmed events: got %s, want resumed false", back.welcome)
	}
}
