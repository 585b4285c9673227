package main

// Tests of issue 12, "nothing one client does can take memory from
// everyone": what one client can make the server hold is bounded, however
// it asks and however slowly it reads.
//
// The heap tests measure the live heap (after collections) before and
// after a crowd of clients, and want a bound far below what the server used
// to hold. They are not parallel: parallel tests only start once every
// sequential test has run, so nothing else allocates while they measure.

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// liveHeap is the heap in use once garbage is collected. Two collections:
// sync.Pool keeps what it holds for one.
func liveHeap() int64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapAlloc)
}

// fillRoom stores n messages of text in room, sent by a long-poll session
// of its own that joins the room and never reads (its outbox keeps them,
// 1.2 MB at most), in POSTs of as many as 60 KB holds. The server's rate
// must allow it.
func fillRoom(t *testing.T, ts *httptest.Server, room, text string, n int) {
	t.Helper()
	filler := pollJoined(t, ts, "")
	if room != "general" {
		if a := filler.call("join_room", map[string]any{"room": room}); !a.OK {
			t.Fatalf("join %s: %s", room, a.raw)
		}
	}
	env, _ := json.Marshal(map[string]any{"event": "send_message", "data": map[string]any{"room": room, "text": text}})
	perPost := max(1, 60_000/len(env))
	for sent := 0; sent < n; sent += perPost {
		batch := make([]string, min(perPost, n-sent))
		for i := range batch {
			batch[i] = string(env)
		}
		filler.post(batch...)
	}
}

// Texts that a JSON encoder makes six times larger: '<' (which
// json.Marshal HTML-escapes as \u003c) and a control character (\u0001,
// which every encoder escapes).
var (
	ltText   = strings.Repeat("<", maxText)
	ctrlText = "x" + strings.Repeat("\u0001", maxText-2) + "x"
)

// fullServer starts a server, with cfg changed by edit, whose general room
// holds 100 messages of text (cfg.History).
func fullServer(t *testing.T, text string, edit func(*config)) (*server, *httptest.Server) {
	t.Helper()
	srv, ts := startServer(t, func(c *config) {
		c.Rate, c.Burst = 1e6, 1e6
		if edit != nil {
			edit(c)
		}
	})
	fillRoom(t, ts, "general", text, 100)
	return srv, ts
}

// remoteDialer dials like a client far away, whose kernel takes rcvbuf
// bytes at a time in segments of 536 bytes. Over loopback (segments of
// 64 KiB) the server's kernel would otherwise take a megabyte or more of an
// answer into its send buffer at once, which hides what the server itself
// holds for a client that reads slowly or not at all.
func remoteDialer(rcvbuf int) *net.Dialer {
	return &net.Dialer{
		Timeout: waitTimeout,
		Control: func(_, _ string, rc syscall.RawConn) error {
			var err error
			rc.Control(func(fd uintptr) {
				err = errors.Join(
					syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, rcvbuf),
					syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_MAXSEG, 536))
			})
			return err
		},
	}
}

// stalledGets sends GET path on n connections of remoteDialer(4096) that
// read only the start of each answer, its status line, and then nothing.
// The connections close when the test ends.
func stalledGets(t *testing.T, ts *httptest.Server, path string, n int) {
	t.Helper()
	d := remoteDialer(4096)
	for range n {
		conn, err := d.Dial("tcp", ts.Listener.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: %s\r\n\r\n", path, ts.Listener.Addr())
		conn.SetReadDeadline(time.Now().Add(waitTimeout))
		status := make([]byte, len("HTTP/1.1 200"))
		if _, err := io.ReadFull(conn, status); err != nil || string(status) != "HTTP/1.1 200" {
			t.Fatalf("GET %s: got %q (%v), want HTTP/1.1 200", path, status, err)
		}
	}
}

// TestBoundMessagesSize: /messages sends text as it is, not HTML-escaped:
// a room of 100 messages of 2,000 '<' is about 210 KB, not 1.2 MB.
func TestBoundMessagesSize(t *testing.T) {
	t.Parallel()
	_, ts := fullServer(t, ltText, nil)
	a := mustRequest(t, testHTTPClient(ts), "GET", ts.URL+"/messages?room=general", nil, nil)
	wantJSON(t, a, http.StatusOK)
	var list []message
	if err := json.Unmarshal(a.body, &list); err != nil || len(list) != 100 || list[99].Text != ltText {
		t.Fatalf("GET /messages: got %d messages (%v), want the 100 sent", len(list), err)
	}
	if len(a.body) > 210<<10 {
		t.Errorf("GET /messages: got %d bytes, want under 210 KiB (the text is 200,000 bytes)", len(a.body))
	}
}

// TestBoundStalledMessages: clients that ask for a full room's /messages
// and never read do not each make the server hold a copy of the answer.
// (Each used to pin its own encoding, 1.2 MB.)
func TestBoundStalledMessages(t *testing.T) {
	const clients = 40
	_, ts := fullServer(t, ltText, nil)
	httpGet(t, ts.URL+"/messages?room=general") // whatever is made once for every request
	before := liveHeap()
	stalledGets(t, ts, "/messages?room=general", clients)
	per := (liveHeap() - before) / clients
	t.Logf("heap per stalled /messages: %d KiB", per>>10)
	if per > 100<<10 {
		t.Errorf("each stalled /messages holds %d KiB, want under 100 KiB (the answer is 206 KiB)", per>>10)
	}
}

// TestBoundStalledPage: the same for the page, GET /, which shows the last
// 50 messages of general: it is streamed, not rendered whole first.
func TestBoundStalledPage(t *testing.T) {
	const clients = 40
	_, ts := fullServer(t, ltText, nil)
	httpGet(t, ts.URL+"/")
	before := liveHeap()
	stalledGets(t, ts, "/", clients)
	per := (liveHeap() - before) / clients
	t.Logf("heap per stalled page: %d KiB", per>>10)
	if per > 150<<10 {
		t.Errorf("each stalled page holds %d KiB, want under 150 KiB (the page is 400 KiB)", per>>10)
	}
}

// TestBoundSessionHeap: a new session shares its room's history with every
// other joiner: 200 long-poll sessions of a full room (100 messages of
// 12 KB once encoded) cost a few KiB each, not a copy of the history each.
// The room is a crowd from the start (cfg.PresenceLimit 0): no user_joined
// goes to the others, whose outboxes would grow with every joiner; and no
// session ends before it is counted (cfg.Grace).
func TestBoundSessionHeap(t *testing.T) {
	const sessions = 200
	srv, ts := fullServer(t, ctrlText, func(c *config) { c.PresenceLimit, c.Grace = 0, time.Hour })
	pollJoined(t, ts, "") // whatever is made once for every joiner
	before := liveHeap()
	for range sessions {
		newPollClient(t, ts).open("") // room_joined waits in its outbox
	}
	per := (liveHeap() - before) / sessions
	t.Logf("heap per session: %d KiB", per>>10)
	if per > 32<<10 {
		t.Errorf("each session holds %d KiB, want under 32 KiB (the history is 1.2 MB encoded)", per>>10)
	}
	if n := liveSessions(srv); n != sessions+2 {
		t.Errorf("got %d sessions, want %d", n, sessions+2)
	}
}

// stalledWebSocket opens a WebSocket on a connection of remoteDialer(4096)
// that reads the handshake's answer, the welcome and the first byte of the
// next message, and then nothing: the server's writer has begun that
// message, and waits. The connection closes when the test ends.
func stalledWebSocket(t *testing.T, ts *httptest.Server, query url.Values) {
	t.Helper()
	conn, err := remoteDialer(4096).Dial("tcp", ts.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	fmt.Fprintf(conn, "GET /ws?%s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", query.Encode(), ts.Listener.Addr())
	conn.SetReadDeadline(time.Now().Add(waitTimeout))
	r := bufio.NewReaderSize(conn, 16)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("the handshake's answer: %v", err)
		}
		if line == "\r\n" {
			break
		}
	}
	// The welcome: a text frame of fewer than 126 bytes, then the next
	// message's first byte.
	head := make([]byte, 2)
	if _, err := io.ReadFull(r, head); err != nil || head[0] != 0x81 || head[1] >= 126 {
		t.Fatalf("the welcome's frame: got % x (%v)", head, err)
	}
	if _, err := io.ReadFull(r, make([]byte, int(head[1])+1)); err != nil {
		t.Fatalf("the welcome and what follows: %v", err)
	}
}

// TestBoundStalledAnswers: a client that never reads costs the server no
// copy of what it was sent, although the server waits, for up to
// writeWait, in the middle of a room_joined that carries a full room's
// history (1.2 MB encoded): the answer is written from the outbox's own
// bytes, which the room shares with every joiner. So it is for a
// WebSocket; for one session resumed again and again by such clients, each
// replacing the last while its writer still waits; and for a long-poll GET.
func TestBoundStalledAnswers(t *testing.T) {
	const conns = 40
	srv, ts := fullServer(t, ctrlText, func(c *config) { c.PresenceLimit, c.Grace = 0, time.Hour })
	bob := joined(t, ts, "bob") // (and whatever is made once for every joiner)
	polling := make([]*pollClient, conns)
	for i := range polling {
		polling[i] = newPollClient(t, ts)
		polling[i].open("") // room_joined waits in its outbox
	}
	before := liveHeap()
	for range conns {
		stalledWebSocket(t, ts, nil)
	}
	for range conns {
		stalledWebSocket(t, ts, url.Values{"sid": {bob.sid}, "after": {"0"}})
	}
	for _, c := range polling {
		stalledGets(t, ts, "/poll?sid="+c.sid+"&after=0", 1)
	}
	per := (liveHeap() - before) / (3 * conns)
	t.Logf("heap per stalled answer: %d KiB", per>>10)
	if per > 64<<10 {
		t.Errorf("each stalled answer holds %d KiB, want under 64 KiB (the history is 1.2 MB encoded)", per>>10)
	}
	if n := liveSessions(srv); n != 2*conns+2 {
		t.Errorf("got %d sessions, want %d", n, 2*conns+2)
	}
}

// TestBoundJoinsOfFullRooms: a client that reads as fast as it can (through
// a small receive window, as from far away) and joins three full rooms
// (100 messages of 12 KB each) in one message gets every room_joined and
// ack; it is not dropped as too slow, although the answers (each room's
// history twice, 7.2 MB) are more than an outbox's bytes: the server waits
// for it to catch up. Not parallel, and with more time than waitTimeout for
// the answers: under -race on a busy machine, moving megabytes takes
// seconds.
func TestBoundJoinsOfFullRooms(t *testing.T) {
	_, ts := startServer(t, func(c *config) { c.Rate, c.Burst = 1e6, 1e6 })
	rooms := []string{"r1", "r2", "r3"}
	for _, r := range rooms {
		fillRoom(t, ts, r, ctrlText, 100)
	}

	reader := dialWith(t, ts, nil, 0, &websocket.DialOptions{
		HTTPClient: &http.Client{Transport: &http.Transport{DialContext: remoteDialer(4096).DialContext}},
	})
	reader.expect("room_joined")
	var batch []string
	for i, r := range rooms {
		batch = append(batch, fmt.Sprintf(`{"event":"join_room","data":{"room":%q},"ack":%d}`, r, i+1))
	}
	reader.sendRaw("[" + strings.Join(batch, ",") + "]")
	history, acks := map[string]int{}, map[int64]bool{}
	deadline := time.After(30 * time.Second)
	for len(history) < len(rooms) || len(acks) < len(rooms) {
		var e event
		select {
		case got, ok := <-reader.events:
			if !ok {
				code, reason := reader.closeStatus()
				t.Fatalf("closed %d %q after %d room_joined and %d acks, want 3 of each", code, reason, len(history), len(acks))
			}
			e = got
		case <-deadline:
			t.Fatalf("got %d room_joined and %d acks within 30 s, want 3 of each", len(history), len(acks))
		}
		switch e.Event {
		case "room_joined":
			var j struct {
				Room    string
				History []json.RawMessage
			}
			e.decode(t, &j)
			history[j.Room] = len(j.History)
		case "ack":
			var a ackReply
			e.decode(t, &a)
			if !a.OK {
				t.Errorf("ack %d: got %s, want ok", e.Ack, e.Data)
			}
			acks[e.Ack] = true
		}
	}
	for _, r := range rooms {
		if history[r] != 100 {
			t.Errorf("room_joined %s: got %d messages of history, want 100", r, history[r])
		}
	}
	reader.emit("echo_message", "still here", 0)
	reader.waitFor("echo_response")
}

// TestBoundAnswerBudget: a session that has been pushed more than its byte
// budget waits before its next event is handled, over both transports.
// Re-joining a room full of 2,000-character messages answers each join
// with its history twice (room_joined and the ack, about 420 KB); with a
// budget of 64 KiB refilling at 1 MiB a second, five joins in one go take
// at least (4 × 420 KB - 64 KiB) / 1 MiB/s, about 1.5 s. Without the
// budget they take milliseconds.
func TestBoundAnswerBudget(t *testing.T) {
	t.Parallel()
	_, ts := fullServer(t, strings.Repeat("x", maxText), func(c *config) {
		c.AnswerRate, c.AnswerBurst = 1<<20, 64<<10
	})
	const joins, atLeast = 5, time.Second
	batch := make([]string, joins)
	for i := range batch {
		batch[i] = fmt.Sprintf(`{"event":"join_room","data":{"room":"general"},"ack":%d}`, i+1)
	}

	ws := dial(t, ts, "")
	ws.expect("room_joined")
	start := time.Now()
	ws.sendRaw("[" + strings.Join(batch, ",") + "]")
	for i := range joins {
		for {
			e := ws.waitFor("ack")
			if e.Ack == int64(i+1) {
				break
			}
		}
	}
	if took := time.Since(start); took < atLeast {
		t.Errorf("WebSocket: %d re-joins answered in %v, want at least %v (the budget)", joins, took, atLeast)
	}
	ws.emit("echo_message", "still here", 0)
	ws.waitFor("echo_response")

	poll := pollJoined(t, ts, "")
	start = time.Now()
	poll.post(batch...) // the POST returns once every event is handled
	if took := time.Since(start); took < atLeast {
		t.Errorf("long-poll: a POST of %d re-joins answered in %v, want at least %v (the budget)", joins, took, atLeast)
	}
}

// TestBoundHeaderBytes: the real program refuses a request whose header is
// larger than 16 KiB (net/http would read 1 MB).
func TestBoundHeaderBytes(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	base, result, _ := startRun(t, ctx, "-addr", "127.0.0.1:0")
	defer func() {
		cancel()
		if err := <-result; err != nil {
			t.Errorf("run: %v", err)
		}
	}()
	hc := &http.Client{Timeout: waitTimeout, Transport: &http.Transport{DisableKeepAlives: true}}
	for _, c := range []struct {
		size int
		want int
	}{{1000, http.StatusOK}, {100_000, http.StatusRequestHeaderFieldsTooLarge}} {
		req, _ := http.NewRequest("GET", base+"/healthz", nil)
		req.Header.Set("X-Big", strings.Repeat("a", c.size))
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatalf("a header of %d bytes: %v", c.size, err)
		}
		resp.Body.Close()
		if resp.StatusCode != c.want {
			t.Errorf("a header of %d bytes: got %d, want %d", c.size, resp.StatusCode, c.want)
		}
	}
}

// TestShutdownFreshConnection: a connection that has not sent its request
// yet (a browser opens some ahead of time) does not hold run back: it
// returns nil at once, not after net/http's 5 s with an error.
func TestShutdownFreshConnection(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	base, result, _ := startRun(t, ctx, "-addr", "127.0.0.1:0")
	fresh, err := net.DialTimeout("tcp", strings.TrimPrefix(base, "http://"), waitTimeout)
	if err != nil {
		t.Fatal(err)
	}
	defer fresh.Close()
	// The server accepts connections in order: once a later one has its
	// answer, the fresh one is accepted too.
	hc := &http.Client{Timeout: waitTimeout, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := hc.Get(base + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()

	start := time.Now()
	cancel()
	select {
	case err := <-result:
		if d := time.Since(start); err != nil || d > 2*time.Second {
			t.Errorf("run: got %v after %v, want nil within 2 s", err, d.Round(time.Millisecond))
		}
	case <-time.After(10 * time.Second):
		t.Fatal("run did not return within 10 s of the cancel")
	}
	fresh.SetReadDeadline(time.Now().Add(waitTimeout))
	if _, err := fresh.Read(make([]byte, 1)); !errors.Is(err, io.EOF) && !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("the fresh connection: got %v, want it closed", err)
	}
}

// TestSessionsPerIP: with -sessions-per-ip 3, a fourth session from the
// same address is refused (WebSocket: close 1013; long-poll: 503
// server_busy) until one of the three ends.
func TestSessionsPerIP(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	base, result, _ := startRun(t, ctx, "-addr", "127.0.0.1:0", "-sessions-per-ip", "3", "-grace", "100ms")
	defer func() {
		cancel()
		if err := <-result; err != nil {
			t.Errorf("run: %v", err)
		}
	}()
	ts := &httptest.Server{URL: base} // dial uses only its URL
	hc := &http.Client{Timeout: waitTimeout}

	refused := func(when string) {
		t.Helper()
		dialCtx, cancelDial := context.WithTimeout(context.Background(), waitTimeout)
		defer cancelDial()
		conn, _, err := websocket.Dial(dialCtx, wsURL(ts, nil), nil)
		if err != nil {
			t.Fatalf("%s: dial: %v", when, err)
		}
		defer conn.CloseNow()
		_, msg, err := conn.Read(dialCtx)
		if code := websocket.CloseStatus(err); code != websocket.StatusTryAgainLater {
			t.Errorf("%s: a WebSocket session: got %q, %v; want close 1013", when, msg, err)
		}
		a := mustRequest(t, hc, "POST", base+"/poll", nil, nil)
		wantJSONError(t, a, http.StatusServiceUnavailable, "server_busy")
	}

	a, b, c := dial(t, ts, "a"), dial(t, ts, "b"), dial(t, ts, "c")
	refused("with 3 sessions")
	a.expect("room_joined")
	c.close() // its session ends once the grace period is over
	for {
		var u userEvent
		a.waitFor("user_left").decode(t, &u)
		if u.Username == "c" {
			break
		}
	}
	dial(t, ts, "d") // in c's place
	refused("with 3 sessions again")
	b.close()
}

// TestClientAddress: sessions count by client address, IPv6 by its /64.
func TestClientAddress(t *testing.T) {
	t.Parallel()
	srv := newServer(defaultConfig())
	key := func(remote string) string { return srv.clientAddress(&http.Request{RemoteAddr: remote}) }
	for _, same := range [][2]string{
		{"[2001:db8::1]:5", "[2001:db8::2]:6"},
		{"[2001:db8::1]:5", "[2001:db8:0:0:ffff::1]:5"},
		{"127.0.0.1:5", "127.0.0.1:6"},
		{"[::ffff:192.0.2.1]:5", "192.0.2.1:5"},
	} {
		if a, b := key(same[0]), key(same[1]); a != b {
			t.Errorf("%s is %q and %s is %q: want the same", same[0], a, same[1], b)
		}
	}
	for _, other := range [][2]string{
		{"[2001:db8::1]:5", "[2001:db8:0:1::1]:5"},
		{"192.0.2.1:5", "192.0.2.2:5"},
		{"[::1]:5", "127.0.0.1:5"},
	} {
		if a, b := key(other[0]), key(other[1]); a == b {
			t.Errorf("%s and %s are both %q: want different", other[0], other[1], a)
		}
	}
}

// TestInvalidUTF8WebSocket: a text message that is not UTF-8 closes the
// connection with 1007, and the session is kept for a resume.
func TestInvalidUTF8WebSocket(t *testing.T) {
	t.Parallel()
	_, ts := startServer(t, nil)
	alice := joined(t, ts, "alice")
	alice.sendRaw("{\"event\":\"echo_message\",\"data\":\"a\xffb\"}")
	if code, reason := alice.closeStatus(); code != websocket.StatusInvalidFramePayloadData {
		t.Errorf("got close %d %q, want 1007", code, reason)
	}
	back := dialQuery(t, ts, url.Values{"sid": {alice.sid}, "after": {fmt.Sprint(alice.seq())}}, alice.seq())
	if !strings.Contains(string(back.welcome.Data), `"resumed":true`) {
		t.Errorf("resume: got %s, want resumed true", back.welcome)
	}
	back.emit("echo_message", "ok", 0)
	back.expect("echo_response")
}

// TestInvalidUTF8Poll: a long-poll body that is not UTF-8 gets 400
// bad_request, and none of its events is applied.
func TestInvalidUTF8Poll(t *testing.T) {
	t.Parallel()
	_, ts := startServer(t, nil)
	alice := pollJoined(t, ts, "alice")
	a := alice.postBody([]byte("[{\"event\":\"send_message\",\"data\":{\"text\":\"fine\"}},{\"event\":\"send_message\",\"data\":{\"text\":\"bad\xff\"}}]"), nil)
	wantJSONError(t, a, http.StatusBadRequest, "bad_request")
	if got := storedTexts(t, ts); len(got) != 0 {
		t.Errorf("stored %q, want nothing", got)
	}
	alice.quiet(100 * time.Millisecond)
}

// TestBoundNosniff: every JSON answer says it is nothing but JSON.
func TestBoundNosniff(t *testing.T) {
	t.Parallel()
	_, ts := startServer(t, nil)
	alice := pollJoined(t, ts, "alice")
	hc := testHTTPClient(ts)
	alice.emit("echo_message", "x", 0) // so that the GET answers at once
	for _, c := range []struct {
		method, path string
		body         []byte
	}{
		{"GET", "/messages?room=general", nil},
		{"GET", "/messages?room=a%20b", nil},                   // 400
		{"GET", "/poll?sid=" + alice.sid + "&after=1", nil},    // 200, at once: room_joined is 1
		{"GET", "/poll?sid=nope&after=0", nil},                 // 404
		{"POST", "/poll", nil},                                 // welcome
		{"POST", "/poll?sid=" + alice.sid, []byte("not json")}, // 400
		{"POST", "/poll?sid=nope", []byte("{}")},               // 404
	} {
		a := mustRequest(t, hc, c.method, ts.URL+c.path, c.body, jsonBody)
		if got := a.header.Get("X-Content-Type-Options"); got != "nosniff" {
			t.Errorf("%s %s (%d): got X-Content-Type-Options %q, want nosniff", c.method, c.path, a.status, got)
		}
	}
}

// TestBoundSendBuffer: limitSendBuffer, which run sets as each connection's
// ConnContext, bounds the kernel's send buffer to 64 KiB (Linux reports
// twice what was set: it counts its own bookkeeping).
func TestBoundSendBuffer(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err := net.DialTimeout("tcp", ln.Addr().String(), waitTimeout)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	conn, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	limitSendBuffer(context.Background(), conn)
	rc, err := conn.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var size int
	rc.Control(func(fd uintptr) {
		size, err = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_SNDBUF)
	})
	if err != nil || size < 64<<10 || size > 2*64<<10 {
		t.Errorf("SO_SNDBUF: got %d (%v), want 64 KiB (128 KiB as Linux reports it)", size, err)
	}
}

// TestClientAddressBehindProxy: -trust-proxy. Behind a trusted proxy the
// client is the rightmost X-Forwarded-For entry that is not a trusted proxy
// itself; from anyone else the header is ignored (PROTOCOL.md section 8).
func TestClientAddressBehindProxy(t *testing.T) {
	t.Parallel()
	cfg := defaultConfig()
	cfg.TrustProxy = []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32"), netip.MustParsePrefix("10.0.0.0/8")}
	srv := newServer(cfg)
	for _, c := range []struct{ remote, xff, want string }{
		{"127.0.0.1:5", "203.0.113.7", "203.0.113.7"},               // one trusted proxy
		{"127.0.0.1:5", "198.51.100.1, 203.0.113.7", "203.0.113.7"}, // the client's own entry is not believed
		{"127.0.0.1:5", "203.0.113.7, 10.1.2.3", "203.0.113.7"},     // two trusted proxies
		{"127.0.0.1:5", "203.0.113.7:4711", "203.0.113.7"},          // with a port
		{"127.0.0.1:5", "", "127.0.0.1"},                            // no header: the proxy itself
		{"127.0.0.1:5", "unknown", "127.0.0.1"},                     // not an address: believe nothing
		{"192.0.2.9:5", "203.0.113.7", "192.0.2.9"},                 // not a trusted proxy: ignored
		{"127.0.0.1:5", "2001:db8::1", "2001:db8::/64"},             // IPv6 by its /64
		{"127.0.0.1:5", "10.9.9.9, 10.8.8.8", "10.9.9.9"},           // all trusted: the leftmost
	} {
		r := &http.Request{RemoteAddr: c.remote, Header: http.Header{}}
		if c.xff != "" {
			r.Header.Set("X-Forwarded-For", c.xff)
		}
		if got := srv.clientAddress(r); got != c.want {
			t.Errorf("from %s with X-Forwarded-For %q: got %q, want %q", c.remote, c.xff, got, c.want)
		}
	}
}
