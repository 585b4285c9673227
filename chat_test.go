package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// TestMain fails the run when goroutines outlive the tests: every test
// closes its clients and its server, so nothing of ours may be left.
func TestMain(m *testing.M) {
	before := runtime.NumGoroutine()
	code := m.Run()
	// The fuzzing engine leaves its own signal handler running.
	fuzzing := flag.Lookup("test.fuzz").Value.String() != ""
	if code == 0 && !fuzzing {
		if leaked := waitGoroutines(before); leaked != "" {
			fmt.Fprintf(os.Stderr, "goroutines left behind after the tests:\n%s\n", leaked)
			code = 1
		}
	}
	os.Exit(code)
}

// waitGoroutines waits up to 5 s for the goroutine count to fall back to n,
// and returns the stacks when it does not.
func waitGoroutines(n int) string {
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > n {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			return string(buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(20 * time.Millisecond)
	}
	return ""
}

// waitTimeout bounds every wait for an event: a lost event fails a test in
// seconds, it never hangs it.
const waitTimeout = 5 * time.Second

// testConfig is the default config with a quiet logger.
func testConfig() config {
	cfg := defaultConfig()
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	cfg.SessionsPerIP = cfg.MaxSessions // every test client comes from 127.0.0.1
	return cfg
}

// startServer starts a server with cfg changed by edit, and closes it
// when the test ends.
func startServer(t testing.TB, edit func(*config)) (*server, *httptest.Server) {
	t.Helper()
	cfg := testConfig()
	if edit != nil {
		edit(&cfg)
	}
	srv := newServer(cfg)
	ts := httptest.NewServer(srv)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.close(ctx)
		ts.Close()
	})
	return srv, ts
}

// event is one envelope from the server.
type event struct {
	Event string          `json:"event"`
	Data  json.RawMessage `json:"data"`
	Ack   int64           `json:"ack"`
	Seq   int64           `json:"seq"`
}

func (e event) String() string {
	return fmt.Sprintf("%s seq=%d ack=%d %s", e.Event, e.Seq, e.Ack, e.Data)
}

// decode decodes the event's data into v, failing the test if it cannot.
func (e event) decode(t *testing.T, v any) {
	t.Helper()
	if err := json.Unmarshal(e.Data, v); err != nil {
		t.Fatalf("decode %s: %v", e, err)
	}
}

// client is a test's WebSocket client. Its reader goroutine splits every
// message into events, checks that seq never skips or repeats, and queues
// them for next.
type client struct {
	t        *testing.T
	conn     *websocket.Conn
	events   chan event
	done     chan struct{} // closed when the reader ends
	closeErr error         // why the reader ended; read after done

	welcome  event
	sid      string
	username string

	ackN int64 // the last ack number used by call

	mu      sync.Mutex
	lastSeq int64 // written by the reader
}

// wsURL turns the test server's URL into a WebSocket URL with query q.
func wsURL(ts *httptest.Server, q url.Values) string {
	return "ws" + strings.TrimPrefix(ts.URL, "http") + "/ws?" + q.Encode()
}

// dial connects a new session named username (empty for a guest) and reads
// its welcome.
func dial(t *testing.T, ts *httptest.Server, username string) *client {
	t.Helper()
	q := url.Values{}
	if username != "" {
		q.Set("username", username)
	}
	return dialQuery(t, ts, q, 0)
}

// dialQuery connects with the query q. seq is the last seq the client saw:
// the first event after welcome must be seq+1.
func dialQuery(t *testing.T, ts *httptest.Server, q url.Values, seq int64) *client {
	t.Helper()
	return dialWith(t, ts, q, seq, nil)
}

// dialWith is dialQuery with the client's dial options.
func dialWith(t *testing.T, ts *httptest.Server, q url.Values, seq int64, opts *websocket.DialOptions) *client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	conn, _, err := websocket.Dial(ctx, wsURL(ts, q), opts)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	conn.SetReadLimit(-1)
	c := &client{t: t, conn: conn, events: make(chan event, 10000), done: make(chan struct{}), lastSeq: seq}
	go c.read()
	t.Cleanup(c.close)
	c.welcome = c.next()
	if c.welcome.Event != "welcome" {
		t.Fatalf("first event: got %s, want welcome", c.welcome)
	}
	var w struct {
		SID      string
		Username string
	}
	c.welcome.decode(t, &w)
	c.sid, c.username = w.SID, w.Username
	return c
}

// read is the client's only reader.
func (c *client) read() {
	defer close(c.done)
	defer close(c.events)
	for {
		_, msg, err := c.conn.Read(context.Background())
		if err != nil {
			c.closeErr = err
			return
		}
		for _, e := range parseEvents(c.t, msg) {
			if e.Event != "welcome" {
				c.mu.Lock()
				if e.Seq != c.lastSeq+1 {
					c.t.Errorf("%s: got seq %d after %d", c.username, e.Seq, c.lastSeq)
				}
				c.lastSeq = e.Seq
				c.mu.Unlock()
			}
			c.events <- e
		}
	}
}

// parseEvents splits a server message: one envelope, or a JSON array of
// them. Bad JSON fails the test.
func parseEvents(t testing.TB, msg []byte) []event {
	var list []event
	if len(msg) > 0 && msg[0] == '[' {
		if err := json.Unmarshal(msg, &list); err != nil {
			t.Errorf("bad JSON from the server: %q", msg)
		}
		return list
	}
	var e event
	if err := json.Unmarshal(msg, &e); err != nil {
		t.Errorf("bad JSON from the server: %q", msg)
	}
	return []event{e}
}

// close closes the connection (if still open) and waits for the reader.
func (c *client) close() {
	c.conn.Close(websocket.StatusNormalClosure, "")
	<-c.done
}

// drop ends the connection abruptly, with no close frame, as a lost network
// would.
func (c *client) drop() {
	c.conn.CloseNow()
	<-c.done
}

// seq is the last seq the client has read.
func (c *client) seq() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lastSeq
}

// emit sends one event, with an ack number when ack > 0.
func (c *client) emit(name string, data any, ack int64) {
	c.t.Helper()
	env := map[string]any{"event": name}
	if data != nil {
		env["data"] = data
	}
	if ack > 0 {
		env["ack"] = ack
	}
	b, _ := json.Marshal(env)
	c.sendRaw(string(b))
}

// sendRaw sends one text message as it is.
func (c *client) sendRaw(msg string) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if err := c.conn.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

// next returns the next event, failing the test after waitTimeout.
func (c *client) next() event {
	c.t.Helper()
	select {
	case e, ok := <-c.events:
		if !ok {
			c.t.Fatalf("%s: connection ended while waiting for an event: %v", c.username, c.closeErr)
		}
		return e
	case <-time.After(waitTimeout):
		c.t.Fatalf("%s: no event within %v", c.username, waitTimeout)
	}
	panic("unreachable")
}

// expect returns the next event and fails unless it is called name.
func (c *client) expect(name string) event {
	c.t.Helper()
	e := c.next()
	if e.Event != name {
		c.t.Fatalf("%s: got %s, want %s", c.username, e, name)
	}
	return e
}

// waitFor skips events until one called name arrives.
func (c *client) waitFor(name string) event {
	c.t.Helper()
	deadline := time.After(waitTimeout)
	for {
		select {
		case e, ok := <-c.events:
			if !ok {
				c.t.Fatalf("%s: connection ended while waiting for %s: %v", c.username, name, c.closeErr)
			}
			if e.Event == name {
				return e
			}
		case <-deadline:
			c.t.Fatalf("%s: no %s within %v", c.username, name, waitTimeout)
		}
	}
}

// quiet fails if an event arrives within d.
func (c *client) quiet(d time.Duration) {
	c.t.Helper()
	select {
	case e, ok := <-c.events:
		if ok {
			c.t.Fatalf("%s: got %s, want nothing", c.username, e)
		}
	case <-time.After(d):
	}
}

// call emits an event with a fresh ack number and returns the ack's data,
// skipping other events on the way.
func (c *client) call(name string, data any) ackReply {
	c.t.Helper()
	c.ackN++
	n := c.ackN
	c.emit(name, data, n)
	for {
		e := c.waitFor("ack")
		if e.Ack == n {
			var r ackReply
			e.decode(c.t, &r)
			r.raw = e.Data
			return r
		}
	}
}

// ackReply is the data of an ack.
type ackReply struct {
	OK    bool
	Error struct{ Code, Message string }
	raw   json.RawMessage
}

// closeStatus waits for the connection to end and returns its close code
// and reason.
func (c *client) closeStatus() (websocket.StatusCode, string) {
	c.t.Helper()
	deadline := time.After(waitTimeout)
	for {
		select {
		case _, ok := <-c.events:
			if !ok {
				var ce websocket.CloseError
				if errors.As(c.closeErr, &ce) {
					return ce.Code, ce.Reason
				}
				return websocket.CloseStatus(c.closeErr), ""
			}
		case <-deadline:
			c.t.Fatalf("%s: connection still open after %v", c.username, waitTimeout)
		}
	}
}

// joined opens a session called name and reads its room_joined for general.
func joined(t *testing.T, ts *httptest.Server, name string) *client {
	t.Helper()
	c := dial(t, ts, name)
	c.expect("room_joined")
	return c
}

// httpGet fetches a URL and returns status and body.
func httpGet(t *testing.T, u string) (int, string) {
	t.Helper()
	resp, err := http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// BenchmarkFanout: 100 WebSocket clients in one room over real loopback
// sockets; one of them sends b.N messages and every client receives each.
// It reports deliveries per second. The sender keeps at most `window`
// messages ahead of the slowest client, so nobody is dropped as too slow.
func BenchmarkFanout(b *testing.B) {
	const clients, window = 100, 128
	_, ts := startServer(b, func(c *config) { c.Rate, c.Burst, c.PresenceLimit = 1e9, 1e9, 0 })

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	conns := make([]*websocket.Conn, clients)
	received := make([]atomic.Int64, clients)
	var readers sync.WaitGroup
	// A client is in the room once it has its room_joined, not when Dial
	// returns: the server joins it after the handshake. A message sent
	// before would miss it, and the benchmark would wait for ever.
	var joined sync.WaitGroup
	joined.Add(clients)
	for i := range conns {
		conn, _, err := websocket.Dial(ctx, wsURL(ts, nil), nil)
		if err != nil {
			b.Fatal(err)
		}
		conn.SetReadLimit(-1)
		conns[i] = conn
		readers.Go(func() {
			first := true
			for {
				_, msg, err := conn.Read(ctx)
				if err != nil {
					return
				}
				if first && bytes.Contains(msg, []byte(`"event":"room_joined"`)) {
					first = false
					joined.Done()
				}
				received[i].Add(int64(bytes.Count(msg, []byte(`"event":"new_message"`))))
			}
		})
	}
	allJoined := make(chan struct{})
	go func() { joined.Wait(); close(allJoined) }()
	select {
	case <-allJoined:
	case <-ctx.Done():
		b.Fatal("timed out waiting for every client's room_joined")
	}
	defer func() {
		for _, c := range conns {
			c.CloseNow()
		}
		readers.Wait()
	}()
	slowest := func() int64 {
		low := received[0].Load()
		for i := range received {
			low = min(low, received[i].Load())
		}
		return low
	}

	msg := []byte(`{"event":"send_message","data":{"text":"a message of about sixty bytes, like a chat line"}}`)
	b.ResetTimer()
	for i := range b.N {
		for int64(i)-slowest() >= window {
			runtime.Gosched()
			if ctx.Err() != nil {
				b.Fatal("timed out")
			}
		}
		if err := conns[0].Write(ctx, websocket.MessageText, msg); err != nil {
			b.Fatal(err)
		}
	}
	for slowest() < int64(b.N) {
		if ctx.Err() != nil {
			b.Fatal("timed out waiting for the deliveries")
		}
		time.Sleep(time.Millisecond)
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N*clients)/b.Elapsed().Seconds(), "deliveries/s")
}

// BenchmarkRooms: the other shape of chat, many small rooms. 100 rooms of
// 2 WebSocket clients over real loopback sockets; the first of each room
// sends, and b.N messages in all reach the second. Where BenchmarkFanout
// measures a delivery in a crowd, this measures a message: its read,
// handling, ack and two writes, each with little to batch. With -data
// each message is also written to the journal before it is published. It
// reports messages per second.
func BenchmarkRooms(b *testing.B) {
	for _, data := range []bool{false, true} {
		b.Run(map[bool]string{false: "memory", true: "data"}[data], func(b *testing.B) {
			benchmarkRooms(b, data)
		})
	}
}

func benchmarkRooms(b *testing.B, data bool) {
	const rooms, window = 100, 64
	edit := func(c *config) { c.Rate, c.Burst = 1e9, 1e9 }
	_, ts := startServer(b, edit)
	if data {
		_, ts = startDataServer(b, b.TempDir(), edit)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	// Room i has sender i and receiver i; each receiver counts its room's
	// messages. The receiver joins first (two connections' events are
	// handled in any order), then the sender, whose join it hears.
	senders := make([]*websocket.Conn, rooms)
	received := make([]atomic.Int64, rooms)
	var readers sync.WaitGroup
	defer func() {
		cancel()
		readers.Wait()
	}()
	for i := range rooms {
		room := fmt.Sprintf("room-%d", i)
		join := []byte(`{"event":"join_room","data":{"room":"` + room + `"}}`)
		receiver, _, err := websocket.Dial(ctx, wsURL(ts, nil), nil)
		if err != nil {
			b.Fatal(err)
		}
		receiver.SetReadLimit(-1)
		joined := make(chan string, 2)
		readers.Go(func() {
			defer receiver.CloseNow()
			for {
				_, msg, err := receiver.Read(ctx)
				if err != nil {
					return
				}
				for _, e := range parseEvents(b, msg) {
					var data struct{ Room string }
					json.Unmarshal(e.Data, &data)
					if (e.Event == "room_joined" || e.Event == "user_joined") && data.Room == room {
						joined <- e.Event
					}
				}
				received[i].Add(int64(bytes.Count(msg, []byte(`"event":"new_message"`))))
			}
		})
		waitJoined := func(event string) {
			b.Helper()
			select {
			case <-joined:
			case <-ctx.Done():
				b.Fatalf("room %d: timed out waiting for %s", i, event)
			}
		}
		if err := receiver.Write(ctx, websocket.MessageText, join); err != nil {
			b.Fatal(err)
		}
		waitJoined("room_joined")
		senders[i], _, err = websocket.Dial(ctx, wsURL(ts, nil), nil)
		if err != nil {
			b.Fatal(err)
		}
		sender := senders[i]
		sender.SetReadLimit(-1)
		readers.Go(func() { // the sender's own copies and acks, unread they would stop it
			defer sender.CloseNow()
			for {
				if _, _, err := sender.Read(ctx); err != nil {
					return
				}
			}
		})
		if err := sender.Write(ctx, websocket.MessageText, join); err != nil {
			b.Fatal(err)
		}
		waitJoined("user_joined")
	}

	b.ResetTimer()
	var sending sync.WaitGroup
	for i, sender := range senders {
		n := int64(b.N / rooms)
		if i < b.N%rooms {
			n++
		}
		msg := []byte(`{"event":"send_message","data":{"room":"room-` + strconv.Itoa(i) + `","text":"a message of about sixty bytes, like a chat line"}}`)
		sending.Go(func() {
			for sent := range n {
				for sent-received[i].Load() >= window && ctx.Err() == nil {
					time.Sleep(50 * time.Microsecond)
				}
				if err := sender.Write(ctx, websocket.MessageText, msg); err != nil {
					return // ctx ended: reported below
				}
			}
			for received[i].Load() < n && ctx.Err() == nil {
				time.Sleep(100 * time.Microsecond)
			}
		})
	}
	sending.Wait()
	if ctx.Err() != nil {
		b.Fatal("timed out waiting for the deliveries")
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "messages/s")
}

// joinedData is the data of room_joined, as a client decodes it.
type joinedData struct {
	Room    string    `json:"room"`
	Users   []string  `json:"users"`
	Count   int       `json:"count"`
	History []message `json:"history"`
}
