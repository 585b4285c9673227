package main

// Tests of the long-poll transport and the plain HTTP form (PROTOCOL.md
// section 6), with a real HTTP client against a real server. Every request
// has a deadline; waits are for an answer or a state, never a bare sleep.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"mime"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// httpAnswer is one HTTP response, read whole.
type httpAnswer struct {
	status int
	header http.Header
	body   []byte
}

func (a httpAnswer) String() string {
	return fmt.Sprintf("%d %s", a.status, bytes.TrimSpace(a.body))
}

// doRequest makes one request and reads the whole answer. It never calls t,
// so goroutines may use it; ctx bounds it.
func doRequest(ctx context.Context, hc *http.Client, method, u string, body []byte, header http.Header) (httpAnswer, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return httpAnswer{}, err
	}
	maps.Copy(req.Header, header)
	resp, err := hc.Do(req)
	if err != nil {
		return httpAnswer{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return httpAnswer{resp.StatusCode, resp.Header, b}, err
}

// mustRequest is doRequest bounded by waitTimeout, failing the test on a
// transport error.
func mustRequest(t testing.TB, hc *http.Client, method, u string, body []byte, header http.Header) httpAnswer {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	a, err := doRequest(ctx, hc, method, u, body, header)
	if err != nil {
		t.Fatalf("%s %s: %v", method, u, err)
	}
	return a
}

// testHTTPClient is an HTTP client of the test server: every request has a
// time limit, and redirects are returned rather than followed.
func testHTTPClient(ts *httptest.Server) *http.Client {
	return &http.Client{
		Transport: ts.Client().Transport, // its idle connections close with ts
		Timeout:   2 * waitTimeout,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
}

var jsonBody = http.Header{"Content-Type": {"application/json"}}

// wantJSON fails unless a has the status and is JSON that is never cached.
func wantJSON(t testing.TB, a httpAnswer, status int) {
	t.Helper()
	if a.status != status {
		t.Fatalf("got %s, want status %d", a, status)
	}
	if mt, _, _ := mime.ParseMediaType(a.header.Get("Content-Type")); mt != "application/json" {
		t.Errorf("%d answer: got Content-Type %q, want application/json", a.status, a.header.Get("Content-Type"))
	}
	if cc := a.header.Get("Cache-Control"); cc != "no-store" {
		t.Errorf("%d answer: got Cache-Control %q, want no-store", a.status, cc)
	}
}

// wantJSONError fails unless a is {"error": {"code": code, "message": …}}
// with the status.
func wantJSONError(t testing.TB, a httpAnswer, status int, code string) {
	t.Helper()
	wantJSON(t, a, status)
	var got struct {
		Error *struct{ Code, Message string }
	}
	if err := json.Unmarshal(a.body, &got); err != nil || got.Error == nil || got.Error.Code != code || got.Error.Message == "" {
		t.Errorf("got body %s, want {\"error\":{\"code\":%q,\"message\":…}}", bytes.TrimSpace(a.body), code)
	}
}

// decodePollEvents decodes the answer to GET /poll?after=N: a JSON array of
// events numbered N+1, N+2, … with no gap, no repeat and no welcome. It
// never calls t.
func decodePollEvents(body []byte, after int64) ([]event, error) {
	var raws []json.RawMessage
	if b := bytes.TrimSpace(body); len(b) == 0 || b[0] != '[' {
		return nil, fmt.Errorf("got %q, want a JSON array", body)
	}
	if err := json.Unmarshal(body, &raws); err != nil {
		return nil, fmt.Errorf("got %q: %v", body, err)
	}
	list := make([]event, len(raws))
	for i, raw := range raws {
		if err := json.Unmarshal(raw, &list[i]); err != nil {
			return nil, fmt.Errorf("event %s: %v", raw, err)
		}
		if e := list[i]; e.Event == "welcome" {
			return nil, fmt.Errorf("a GET carried %s", e)
		} else if want := after + int64(i) + 1; e.Seq != want {
			return nil, fmt.Errorf("got seq %d after %d, want %d: %s", e.Seq, want-1, want, e)
		}
	}
	return list, nil
}

// pollClient is a test's long-polling client: it opens a session with
// POST /poll, receives with GET /poll?sid=S&after=N and sends with
// POST /poll?sid=S. Like the WebSocket client it checks that seq never skips
// or repeats, and it keeps the cursor: after is the highest seq it has
// received, which the next GET sends (and so acknowledges). One goroutine
// uses it; getAsync is the only method that starts another, and that one
// only reads the fixed fields (hc, ts, sid).
type pollClient struct {
	t  testing.TB
	ts *httptest.Server
	hc *http.Client

	sid      string
	username string
	after    int64   // the highest seq received: the next GET's cursor
	queue    []event // received, not yet taken by next
	ackN     int64   // the last ack number used by call
}

func newPollClient(t testing.TB, ts *httptest.Server) *pollClient {
	return &pollClient{t: t, ts: ts, hc: testHTTPClient(ts)}
}

// pollJoined opens a session called name and reads its room_joined.
func pollJoined(t testing.TB, ts *httptest.Server, name string) *pollClient {
	t.Helper()
	c := newPollClient(t, ts)
	c.open(name)
	c.expect("room_joined")
	return c
}

func (c *pollClient) receiveURL(after int64) string {
	return c.ts.URL + "/poll?" + url.Values{"sid": {c.sid}, "after": {fmt.Sprint(after)}}.Encode()
}

func (c *pollClient) sendURL() string {
	return c.ts.URL + "/poll?" + url.Values{"sid": {c.sid}}.Encode()
}

// open starts a session with POST /poll (username empty for a guest) and
// checks the answer: 200, JSON never cached, and the welcome envelope with
// resumed false and no seq.
func (c *pollClient) open(username string) {
	c.t.Helper()
	q := url.Values{}
	if username != "" {
		q.Set("username", username)
	}
	a := mustRequest(c.t, c.hc, "POST", c.ts.URL+"/poll?"+q.Encode(), nil, nil)
	wantJSON(c.t, a, http.StatusOK)
	var env map[string]json.RawMessage
	if err := json.Unmarshal(a.body, &env); err != nil {
		c.t.Fatalf("open: got %s, want the welcome envelope: %v", a.body, err)
	}
	if _, ok := env["seq"]; ok || string(env["event"]) != `"welcome"` {
		c.t.Fatalf("open: got %s, want welcome without seq", a.body)
	}
	var w struct {
		SID      string
		Username string
		Resumed  *bool
	}
	if err := json.Unmarshal(env["data"], &w); err != nil || w.SID == "" || w.Username == "" || w.Resumed == nil || *w.Resumed {
		c.t.Fatalf("open: got %s, want data {sid, username, resumed: false}", a.body)
	}
	c.sid, c.username, c.after = w.SID, w.Username, 0
}

// getAnswer sends GET /poll?sid=S&after=after and returns the raw answer.
// It never calls t.
func (c *pollClient) getAnswer(ctx context.Context, after int64) (httpAnswer, error) {
	return doRequest(ctx, c.hc, "GET", c.receiveURL(after), nil, nil)
}

// get asks for the events after `after` and returns them (checked by
// checkEvents), waiting as long as the server holds the GET.
func (c *pollClient) get(after int64) []event {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	a, err := c.getAnswer(ctx, after)
	if err != nil {
		c.t.Fatalf("%s: GET after=%d: %v", c.username, after, err)
	}
	return c.checkEvents(a, after)
}

// checkEvents checks the answer to a GET with the cursor after: 200, JSON
// never cached, events numbered from after+1 with no welcome. It moves the
// client's cursor past them.
func (c *pollClient) checkEvents(a httpAnswer, after int64) []event {
	c.t.Helper()
	wantJSON(c.t, a, http.StatusOK)
	list, err := decodePollEvents(a.body, after)
	if err != nil {
		c.t.Fatalf("%s: GET after=%d: %v", c.username, after, err)
	}
	if n := len(list); n > 0 {
		c.after = max(c.after, list[n-1].Seq)
	}
	return list
}

// pollResult is what a GET running in its own goroutine got.
type pollResult struct {
	a    httpAnswer
	err  error
	took time.Duration
}

// getAsync starts a GET in a goroutine, bounded by waitTimeout; the caller
// receives its result (which joins the goroutine).
func (c *pollClient) getAsync(after int64) <-chan pollResult {
	ch := make(chan pollResult, 1)
	go func() {
		start := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		defer cancel()
		a, err := c.getAnswer(ctx, after)
		ch <- pollResult{a, err, time.Since(start)}
	}()
	return ch
}

// post sends envelopes with POST /poll?sid=S, one on its own and any other
// number as a JSON array, and wants 204.
func (c *pollClient) post(envelopes ...string) {
	c.t.Helper()
	body := "[" + strings.Join(envelopes, ",") + "]"
	if len(envelopes) == 1 {
		body = envelopes[0]
	}
	a := c.postBody([]byte(body), nil)
	if a.status != http.StatusNoContent {
		c.t.Fatalf("%s: POST %s: got %s, want 204", c.username, body, a)
	}
	if cc := a.header.Get("Cache-Control"); cc != "no-store" {
		c.t.Errorf("204 answer: got Cache-Control %q, want no-store", cc)
	}
}

// postBody sends body as it is with POST /poll?sid=S, with header added, and
// returns the answer.
func (c *pollClient) postBody(body []byte, header http.Header) httpAnswer {
	c.t.Helper()
	h := maps.Clone(jsonBody)
	maps.Copy(h, header)
	return mustRequest(c.t, c.hc, "POST", c.sendURL(), body, h)
}

// emit posts one event, with an ack number when ack > 0.
func (c *pollClient) emit(name string, data any, ack int64) {
	c.t.Helper()
	env := map[string]any{"event": name}
	if data != nil {
		env["data"] = data
	}
	if ack > 0 {
		env["ack"] = ack
	}
	b, _ := json.Marshal(env)
	c.post(string(b))
}

// next returns the next event, asking with GETs while none is waiting, and
// fails the test after waitTimeout.
func (c *pollClient) next() event {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	for len(c.queue) == 0 {
		a, err := c.getAnswer(ctx, c.after)
		if err != nil {
			c.t.Fatalf("%s: no event within %v: %v", c.username, waitTimeout, err)
		}
		c.queue = c.checkEvents(a, c.after)
	}
	e := c.queue[0]
	c.queue = c.queue[1:]
	return e
}

// expect returns the next event and fails unless it is called name.
func (c *pollClient) expect(name string) event {
	c.t.Helper()
	e := c.next()
	if e.Event != name {
		c.t.Fatalf("%s: got %s, want %s", c.username, e, name)
	}
	return e
}

// waitFor skips events until one called name arrives.
func (c *pollClient) waitFor(name string) event {
	c.t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		if e := c.next(); e.Event == name {
			return e
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("%s: no %s within %v", c.username, name, waitTimeout)
		}
	}
}

// quiet fails if an event arrives within d. A GET cut short by d loses
// nothing: the cursor has not moved.
func (c *pollClient) quiet(d time.Duration) {
	c.t.Helper()
	if len(c.queue) > 0 {
		c.t.Fatalf("%s: got %s, want nothing", c.username, c.queue[0])
	}
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	for {
		a, err := c.getAnswer(ctx, c.after)
		if err != nil {
			if ctx.Err() != nil {
				return // d passed with nothing
			}
			c.t.Fatalf("%s: GET: %v", c.username, err)
		}
		if list := c.checkEvents(a, c.after); len(list) > 0 {
			c.t.Fatalf("%s: got %s, want nothing", c.username, list[0])
		}
	}
}

// call emits an event with a fresh ack number and returns the ack's data,
// skipping other events on the way.
func (c *pollClient) call(name string, data any) ackReply {
	c.t.Helper()
	c.ackN++
	n := c.ackN
	c.emit(name, data, n)
	for {
		if e := c.waitFor("ack"); e.Ack == n {
			var r ackReply
			if err := json.Unmarshal(e.Data, &r); err != nil {
				c.t.Fatalf("decode %s: %v", e, err)
			}
			r.raw = e.Data
			return r
		}
	}
}

// waitPolling waits until a GET with the cursor after is the transport of
// the session sid, waiting in the server. (The cursor tells it from the GET
// before, which may not have let go yet when its answer arrives.)
func waitPolling(t *testing.T, srv *server, sid string, after int64) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		srv.mu.Lock()
		s := srv.sessions[sid]
		srv.mu.Unlock()
		if s != nil {
			s.outboxMu.Lock()
			_, polling := s.transport.(*pollWait)
			polling = polling && s.delivered == after
			s.outboxMu.Unlock()
			if polling {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no GET of %s waiting after %v", sid, waitTimeout)
		}
		time.Sleep(time.Millisecond)
	}
}

// liveSessions is the number of sessions the server holds.
func liveSessions(srv *server) int {
	srv.mu.Lock()
	defer srv.mu.Unlock()
	return len(srv.sessions)
}

// postForm posts the page's form to /send_message.
func postForm(t *testing.T, ts *httptest.Server, username, text string, header http.Header) httpAnswer {
	t.Helper()
	h := http.Header{"Content-Type": {"application/x-www-form-urlencoded"}}
	maps.Copy(h, header)
	body := url.Values{"username": {username}, "message": {text}}.Encode()
	return mustRequest(t, testHTTPClient(ts), "POST", ts.URL+"/send_message", []byte(body), h)
}

// ---------------------------------------------------------------------------

func TestPollOpen(t *testing.T) {
	t.Parallel()
	_, ts := startServer(t, nil)
	alice := newPollClient(t, ts)
	alice.open("  alice ") // open checks status, headers and the welcome's shape
	if alice.username != "alice" {
		t.Errorf("username: got %q, want alice (trimmed)", alice.username)
	}
	if !regexp.MustCompile(`^[A-Za-z0-9_-]{22}$`).MatchString(alice.sid) {
		t.Errorf("sid: got %q, want 128 bits URL-safe encoded", alice.sid)
	}
	for _, wanted := range []string{"", "ALICE", "bad/name"} {
		g := newPollClient(t, ts)
		g.open(wanted)
		if !regexp.MustCompile(`^guest-\d{4}$`).MatchString(g.username) {
			t.Errorf("username %q: got %q, want guest-NNNN", wanted, g.username)
		}
		if g.sid == alice.sid {
			t.Errorf("two sessions share the sid %s", g.sid)
		}
	}
}

func TestPollReceive(t *testing.T) {
	t.Parallel()
	const hold = 200 * time.Millisecond
	_, ts := startServer(t, func(c *config) { c.PollTimeout = hold })
	alice := newPollClient(t, ts)
	alice.open("alice")

	// The first GET: room_joined for general, seq 1, at once.
	list := alice.get(0)
	if len(list) != 1 || list[0].Event != "room_joined" || list[0].Seq != 1 {
		t.Fatalf("first GET: got %v, want [room_joined seq 1]", list)
	}
	if got, want := string(list[0].Data), `{"room":"general","count":1,"history":[],"users":["alice"]}`; got != want {
		t.Errorf("room_joined: got %s, want %s", got, want)
	}

	// Nothing waiting: the GET is held for PollTimeout, then answers [].
	start := time.Now()
	if list := alice.get(1); len(list) != 0 {
		t.Errorf("idle GET: got %v, want []", list)
	}
	if took := time.Since(start); took < hold || took > waitTimeout/2 {
		t.Errorf("idle GET answered after %v, want about %v", took, hold)
	}

	// Several waiting: every one after N, in one answer.
	alice.post(`{"event":"echo_message","data":1}`, `{"event":"echo_message","data":2}`, `{"event":"echo_message","data":3}`)
	list = alice.get(1)
	if len(list) != 3 || string(list[0].Data) != "1" || string(list[2].Data) != "3" {
		t.Errorf("got %v, want the three echoes, seq 2 to 4", list)
	}
	if list := alice.get(3); len(list) != 1 || list[0].Seq != 4 {
		t.Errorf("after=3: got %v, want only seq 4", list)
	}

	a := mustRequest(t, alice.hc, "GET", ts.URL+"/poll?sid="+alice.sid+"&after=x", nil, nil)
	wantJSONError(t, a, http.StatusBadRequest, "bad_request")
	// A cursor beyond the last event is refused, and the session lives on.
	a = mustRequest(t, alice.hc, "GET", alice.receiveURL(alice.after+5), nil, nil)
	wantJSONError(t, a, http.StatusBadRequest, "bad_request")
	a = mustRequest(t, alice.hc, "GET", alice.receiveURL(alice.after+1), nil, nil) // at the edge
	wantJSONError(t, a, http.StatusBadRequest, "bad_request")
	alice.call("echo_message", "still alive")
}

// TestPollAcknowledge: each GET acknowledges the events up to its after, and
// a lost response loses nothing: asked again with the same after, the server
// answers the same events.
func TestPollAcknowledge(t *testing.T) {
	t.Parallel()
	const outbox = 8
	_, ts := startServer(t, func(c *config) { c.Outbox = outbox; c.Rate = 1e6; c.Burst = 1e6 })
	alice := pollJoined(t, ts, "alice")

	alice.post(`{"event":"echo_message","data":"x"}`, `{"event":"echo_message","data":"y","ack":1}`)
	lost := mustRequest(t, alice.hc, "GET", alice.receiveURL(1), nil, nil) // lost on the way
	again := mustRequest(t, alice.hc, "GET", alice.receiveURL(1), nil, nil)
	if !bytes.Equal(again.body, lost.body) {
		t.Errorf("asked again: got %s, want the same answer %s", again.body, lost.body)
	}
	list := alice.checkEvents(again, 1)
	if len(list) != 3 || list[0].Event != "echo_response" || list[1].Event != "echo_response" || list[2].Event != "ack" {
		t.Errorf("got %v, want echo_response, echo_response, ack", list)
	}

	// A client that keeps asking never falls behind, however many events it
	// is sent in all: every GET acknowledges what it got before.
	for i := range 2 * outbox {
		alice.post(`{"event":"echo_message","data":1}`, `{"event":"echo_message","data":2}`, `{"event":"echo_message","data":3}`)
		if list := alice.get(alice.after); len(list) != 3 {
			t.Fatalf("round %d: got %v, want 3 echoes", i, list)
		}
	}

	// One that stops asking while more than -outbox events pile up is a slow
	// reader: its session ends.
	var many []string
	for range outbox + 1 {
		many = append(many, `{"event":"echo_message"}`)
	}
	alice.post(many...)
	a := mustRequest(t, alice.hc, "GET", alice.receiveURL(alice.after), nil, nil)
	wantJSONError(t, a, http.StatusNotFound, "unknown_session")
}

// TestPollResumeAtOutboxEdge: TestResumeAtOutboxEdge over long-polling. A
// GET exactly cfg.Outbox events behind gets every one of them; one event
// further behind is 404.
//
// A GET acknowledges what comes before its cursor, and nothing else does:
// so each client parks at its cursor p with a GET after=p that waits (then
// what was delivered is exactly p, and exactly Outbox events later it is
// not a slow reader). dave then asks after=p, erin after=p-1.
func TestPollResumeAtOutboxEdge(t *testing.T) {
	t.Parallel()
	const outbox = 8
	srv, ts := startServer(t, func(c *config) { c.Outbox = outbox; c.Grace = time.Minute })
	bob := joined(t, ts, "bob")
	dave := pollJoined(t, ts, "dave")
	erin := pollJoined(t, ts, "erin")
	park := func(c *pollClient) (int64, <-chan pollResult) {
		t.Helper()
		c.call("echo_message", nil)
		waiting := c.getAsync(c.after)
		waitPolling(t, srv, c.sid, c.after)
		return c.after, waiting
	}
	pd, dWaiting := park(dave)
	pe, eWaiting := park(erin)
	for i := range outbox {
		bob.call("send_message", map[string]any{"text": fmt.Sprint(i)})
	}
	for _, waiting := range []<-chan pollResult{dWaiting, eWaiting} { // answered by the first message
		if r := <-waiting; r.err != nil || r.a.status != http.StatusOK {
			t.Fatalf("the parked GET: got %v %v, want 200", r.a, r.err)
		}
	}

	a := mustRequest(t, dave.hc, "GET", dave.receiveURL(pd), nil, nil)
	if a.status != http.StatusOK {
		t.Fatalf("GET exactly %d events behind: got %s, want them all", outbox, a)
	}
	list := dave.checkEvents(a, pd) // checks seq: pd+1, pd+2, …
	if len(list) != outbox {
		t.Fatalf("exactly %d events behind: got %v, want all %d", outbox, list, outbox)
	}
	for i, e := range list {
		var m message
		e.decode(t, &m)
		if e.Event != "new_message" || m.Text != fmt.Sprint(i) {
			t.Errorf("event %d: got %s, want message %d", i, e, i)
		}
	}

	a = mustRequest(t, erin.hc, "GET", erin.receiveURL(pe-1), nil, nil)
	wantJSONError(t, a, http.StatusNotFound, "unknown_session")
}

// TestPollSecondGet: a second GET for the same session answers the first
// with [] at once, and is the one that waits for events from then on.
func TestPollSecondGet(t *testing.T) {
	t.Parallel()
	const hold = 4 * time.Second // < waitTimeout: a GET held this long still answers
	srv, ts := startServer(t, func(c *config) { c.PollTimeout = hold })
	alice := pollJoined(t, ts, "alice")

	first := alice.getAsync(alice.after)
	waitPolling(t, srv, alice.sid, alice.after)
	second := alice.getAsync(alice.after)

	r := <-first
	if r.err != nil {
		t.Fatalf("first GET: %v", r.err)
	}
	if list := alice.checkEvents(r.a, 1); len(list) != 0 || r.took > hold/2 {
		t.Errorf("first GET: got %v after %v, want [] at once", list, r.took)
	}

	alice.emit("echo_message", "to the second", 0)
	r = <-second
	if r.err != nil {
		t.Fatalf("second GET: %v", r.err)
	}
	if list := alice.checkEvents(r.a, 1); len(list) != 1 || list[0].Event != "echo_response" || r.took > hold/2 {
		t.Errorf("second GET: got %v after %v, want the echo at once", list, r.took)
	}
}

// TestPollSend: POST /poll?sid=S takes one envelope or an array, applies them
// in order, and answers errors per element as the WebSocket does.
func TestPollSend(t *testing.T) {
	t.Parallel()
	_, ts := startServer(t, nil)
	alice := pollJoined(t, ts, "alice")

	alice.post(`{"event":"echo_message","data":"one"}`)
	if e := alice.expect("echo_response"); string(e.Data) != `"one"` {
		t.Errorf("got %s, want echo of \"one\"", e)
	}

	alice.post(
		`{"event":"echo_message","data":"a"}`,
		`{"event":"send_message","data":{"text":"hi"},"ack":1}`,
		`1`,
		`{"event":"teleport"}`,
		`{"event":"send_message","data":{"text":""},"ack":2}`,
		`{"event":"echo_message","data":"b","ack":3}`,
	)
	want := []struct{ event, has string }{
		{"echo_response", `"a"`},
		{"new_message", `"text":"hi"`},
		{"ack", `"ok":true`},
		{"error", `"code":"bad_request"`},
		{"error", `"code":"unknown_event","message":"there is no event \"teleport\"","event":"teleport"`},
		{"ack", `"code":"invalid_message"`},
		{"echo_response", `"b"`},
		{"ack", `"ok":true,"data":"b"`},
	}
	for i, w := range want {
		if e := alice.next(); e.Event != w.event || !strings.Contains(string(e.Data), w.has) {
			t.Errorf("event %d: got %s, want %s with %s", i, e, w.event, w.has)
		}
	}

	// An empty array does nothing; JSON that is not an envelope is answered
	// by an error event, as on a WebSocket.
	alice.post()
	alice.quiet(50 * time.Millisecond)
	if a := alice.postBody([]byte(`"just a string"`), nil); a.status != http.StatusNoContent {
		t.Errorf("a JSON string: got %s, want 204", a)
	}
	if e := alice.expect("error"); !strings.Contains(string(e.Data), `"bad_request"`) {
		t.Errorf("got %s, want bad_request", e)
	}
}

// TestPollBadBody: a body that is not JSON is 400, one over 64 KiB is 413,
// and neither applies anything; exactly 64 KiB is fine.
func TestPollBadBody(t *testing.T) {
	t.Parallel()
	_, ts := startServer(t, nil)
	alice := pollJoined(t, ts, "alice")

	for _, body := range []string{`[{"event":"echo_message","data":"lost"}, oops`, ``, `{"event":"echo_message","data":"lost"}}`} {
		wantJSONError(t, alice.postBody([]byte(body), nil), http.StatusBadRequest, "bad_request")
	}

	const limit = 64 << 10 // PROTOCOL.md section 6
	prefix, suffix := `{"event":"echo_message","data":"`, `"}`
	fill := limit - len(prefix) - len(suffix)
	exact := prefix + strings.Repeat("x", fill) + suffix
	over := prefix + strings.Repeat("y", fill+1) + suffix
	wantJSONError(t, alice.postBody([]byte(over), nil), http.StatusRequestEntityTooLarge, "too_large")
	if a := alice.postBody([]byte(exact), nil); a.status != http.StatusNoContent {
		t.Errorf("exactly 64 KiB: got %d, want 204", a.status)
	}
	if e := alice.expect("echo_response"); len(e.Data) != fill+2 || !strings.HasPrefix(string(e.Data), `"xxx`) {
		t.Errorf("got an echo of %d bytes, want the %d-byte string", len(e.Data), fill+2)
	}
	alice.quiet(50 * time.Millisecond) // nothing of the refused bodies
}

func TestPollUnknownSession(t *testing.T) {
	t.Parallel()
	_, ts := startServer(t, nil)
	hc := testHTTPClient(ts)
	for _, q := range []string{"sid=no-such-session&after=0", "sid=no-such-session", ""} {
		wantJSONError(t, mustRequest(t, hc, "GET", ts.URL+"/poll?"+q, nil, nil), http.StatusNotFound, "unknown_session")
	}
	a := mustRequest(t, hc, "POST", ts.URL+"/poll?sid=no-such-session", []byte(`{"event":"echo_message"}`), jsonBody)
	wantJSONError(t, a, http.StatusNotFound, "unknown_session")
}

// TestPollGraceEnds: a session with no request in progress for longer than
// the grace period ends: the others see user_left, the name is free, and the
// sid is unknown.
func TestPollGraceEnds(t *testing.T) {
	t.Parallel()
	_, ts := startServer(t, func(c *config) { c.Grace = 100 * time.Millisecond })
	bob := joined(t, ts, "bob") // a WebSocket: attached, so his session stays
	alice := newPollClient(t, ts)
	alice.open("alice") // and never asks
	if got := bob.expect("user_joined"); string(got.Data) != `{"room":"general","username":"alice"}` {
		t.Errorf("got %s, want alice joining", got)
	}
	if got := bob.expect("user_left"); string(got.Data) != `{"room":"general","username":"alice"}` {
		t.Errorf("got %s, want alice leaving", got)
	}
	if again := dial(t, ts, "ALICE"); again.username != "ALICE" {
		t.Errorf("name not free after the grace period: got %q", again.username)
	}
	wantJSONError(t, mustRequest(t, alice.hc, "GET", alice.receiveURL(0), nil, nil), http.StatusNotFound, "unknown_session")
	wantJSONError(t, alice.postBody([]byte(`{"event":"echo_message"}`), nil), http.StatusNotFound, "unknown_session")
}

// TestPollRequestsKeepSession: a waiting GET and POSTs are requests in
// progress, so a client that keeps making them is never ended by the grace
// period, even while a GET is held for longer than it; the grace period
// starts when the last answer goes.
func TestPollRequestsKeepSession(t *testing.T) {
	t.Parallel()
	// Long enough that a loaded machine's scheduling (a gap of grace/5
	// between requests, stretched) never looks like silence: at 200 ms this
	// test failed now and then under load.
	const grace = time.Second
	_, ts := startServer(t, func(c *config) { c.Grace = grace; c.PollTimeout = 2 * grace })
	bob := joined(t, ts, "bob")
	alice := pollJoined(t, ts, "alice")
	bob.expect("user_joined")

	if list := alice.get(alice.after); len(list) != 0 { // held for 2 × grace
		t.Fatalf("got %v, want []", list)
	}
	// POSTs only (typing_stop when not typing causes no event).
	for end := time.Now().Add(2 * grace); time.Now().Before(end); {
		alice.post(`{"event":"typing_stop"}`)
		time.Sleep(grace / 5) // the gap between requests of a client
	}
	bob.quiet(20 * time.Millisecond)
	if list := alice.get(alice.after); len(list) != 0 {
		t.Fatalf("the session ended while requests kept coming: got %v", list)
	}
	bob.quiet(20 * time.Millisecond)

	// Then silence: the session ends.
	if got := bob.expect("user_left"); !strings.Contains(string(got.Data), `"alice"`) {
		t.Errorf("got %s, want alice leaving", got)
	}
}

// TestPollCrossSite: a POST from another site is refused with 403 (POST /poll
// with and without sid, POST /send_message) and applies nothing; this site's
// pages, clients that send no browser headers, and origins allowed by
// -origins are served.
func TestPollCrossSite(t *testing.T) {
	t.Parallel()
	_, ts := startServer(t, func(c *config) { c.Origins = []string{"*.example.org"} })
	alice := pollJoined(t, ts, "alice")
	hc := testHTTPClient(ts)

	cases := []struct {
		name   string
		header http.Header
		ok     bool
	}{
		{"other origin", http.Header{"Origin": {"http://evil.example.com"}}, false},
		{"opaque origin", http.Header{"Origin": {"null"}}, false},
		{"lookalike origin", http.Header{"Origin": {"http://example.org.evil.com"}}, false},
		{"cross-site fetch", http.Header{"Sec-Fetch-Site": {"cross-site"}}, false},
		{"cross-site fetch with origin", http.Header{"Origin": {"http://evil.example.com"}, "Sec-Fetch-Site": {"cross-site"}}, false},
		{"cross-site fetch claiming our origin", http.Header{"Origin": {ts.URL}, "Sec-Fetch-Site": {"cross-site"}}, false},
		{"same origin", http.Header{"Origin": {ts.URL}, "Sec-Fetch-Site": {"same-origin"}}, true},
		{"same-origin fetch", http.Header{"Sec-Fetch-Site": {"same-origin"}}, true},
		{"typed address", http.Header{"Sec-Fetch-Site": {"none"}}, true},
		{"allowed origin", http.Header{"Origin": {"https://chat.example.org"}}, true},
		{"allowed origin, cross-site fetch", http.Header{"Origin": {"https://chat.example.org"}, "Sec-Fetch-Site": {"cross-site"}}, true},
		{"no browser headers", nil, true},
	}
	var wantEchoes, wantTexts []string
	for _, tc := range cases {
		open, send, form := http.StatusOK, http.StatusNoContent, http.StatusSeeOther
		if !tc.ok {
			open, send, form = http.StatusForbidden, http.StatusForbidden, http.StatusForbidden
		} else {
			wantEchoes = append(wantEchoes, fmt.Sprintf("%q", tc.name))
			wantTexts = append(wantTexts, tc.name)
		}
		if a := mustRequest(t, hc, "POST", ts.URL+"/poll", nil, tc.header); a.status != open {
			t.Errorf("%s: POST /poll: got %s, want %d", tc.name, a, open)
		} else {
			wantJSON(t, a, open)
		}
		a := alice.postBody([]byte(fmt.Sprintf(`{"event":"echo_message","data":%q}`, tc.name)), tc.header)
		if a.status != send {
			t.Errorf("%s: POST /poll?sid=S: got %s, want %d", tc.name, a, send)
		}
		if a := postForm(t, ts, "visitor", tc.name, tc.header); a.status != form {
			t.Errorf("%s: POST /send_message: got %s, want %d", tc.name, a, form)
		}
	}

	var echoes []string
	alice.emit("echo_message", "end", 1)
	for e := alice.next(); e.Event != "ack"; e = alice.next() {
		if e.Event == "echo_response" && string(e.Data) != `"end"` {
			echoes = append(echoes, string(e.Data))
		}
	}
	if !slices.Equal(echoes, wantEchoes) {
		t.Errorf("applied: got %v, want %v", echoes, wantEchoes)
	}
	var stored []message
	_, body := httpGet(t, ts.URL+"/messages?room=general")
	json.Unmarshal([]byte(body), &stored)
	var texts []string
	for _, m := range stored {
		texts = append(texts, m.Text)
	}
	if !slices.Equal(texts, wantTexts) {
		t.Errorf("stored: got %v, want %v", texts, wantTexts)
	}
}

// TestPollResponseHeaders: every /poll answer with a body is JSON and never
// cached; so is the 204 of a POST (no-store).
func TestPollResponseHeaders(t *testing.T) {
	t.Parallel()
	_, ts := startServer(t, func(c *config) { c.MaxSessions = 1; c.PollTimeout = 50 * time.Millisecond })
	alice := newPollClient(t, ts)
	alice.open("alice")
	hc := alice.hc
	cases := []struct {
		name   string
		method string
		url    string
		body   string
		header http.Header
		status int
	}{
		{"events", "GET", alice.receiveURL(0), "", nil, 200},
		{"no events", "GET", alice.receiveURL(1), "", nil, 200},
		{"bad after", "GET", ts.URL + "/poll?sid=" + alice.sid + "&after=-1", "", nil, 400},
		{"unknown sid", "GET", ts.URL + "/poll?sid=x&after=0", "", nil, 404},
		{"unknown sid, POST", "POST", ts.URL + "/poll?sid=x", "{}", jsonBody, 404},
		{"not JSON", "POST", alice.sendURL(), "{", jsonBody, 400},
		{"too large", "POST", alice.sendURL(), strings.Repeat(" ", 64<<10+1), jsonBody, 413},
		{"cross-site", "POST", alice.sendURL(), "{}", http.Header{"Origin": {"https://evil.example"}}, 403},
		{"too many sessions", "POST", ts.URL + "/poll", "", nil, 503},
	}
	for _, tc := range cases {
		a := mustRequest(t, hc, tc.method, tc.url, []byte(tc.body), tc.header)
		t.Run(tc.name, func(t *testing.T) { wantJSON(t, a, tc.status) })
	}
	a := mustRequest(t, hc, "POST", alice.sendURL(), []byte(`{"event":"typing_stop"}`), jsonBody)
	if a.status != 204 || a.header.Get("Cache-Control") != "no-store" || len(a.body) != 0 {
		t.Errorf("POST: got %s with Cache-Control %q, want 204 no-store and no body", a, a.header.Get("Cache-Control"))
	}
}

func TestPollSessionLimit(t *testing.T) {
	t.Parallel()
	_, ts := startServer(t, func(c *config) { c.MaxSessions = 2 })
	joined(t, ts, "a")
	b := pollJoined(t, ts, "b")
	a := mustRequest(t, b.hc, "POST", ts.URL+"/poll?username=c", nil, nil)
	wantJSONError(t, a, http.StatusServiceUnavailable, "server_busy")
	if r := b.call("echo_message", "still here"); !r.OK { // the live ones go on
		t.Errorf("got %s", r.raw)
	}
}

// TestPollMixedTransports: a long-polling user and a WebSocket user see each
// other's messages, typing and presence.
func TestPollMixedTransports(t *testing.T) {
	t.Parallel()
	_, ts := startServer(t, nil)
	ws := joined(t, ts, "alice")
	lp := newPollClient(t, ts)
	lp.open("bob")
	if got, want := string(lp.expect("room_joined").Data), `{"room":"general","count":2,"history":[],"users":["alice","bob"]}`; got != want {
		t.Errorf("room_joined: got %s, want %s", got, want)
	}
	if got := ws.expect("user_joined"); string(got.Data) != `{"room":"general","username":"bob"}` {
		t.Errorf("got %s, want bob joining", got)
	}

	check := func(who string, e event, want string) {
		t.Helper()
		var got map[string]any
		json.Unmarshal(e.Data, &got)
		delete(got, "id")
		delete(got, "timestamp")
		if b, _ := json.Marshal(got); string(b) != want {
			t.Errorf("%s: got %s %s, want %s", who, e.Event, b, want)
		}
	}

	// Messages, both ways; each also reaches its sender.
	ws.emit("send_message", map[string]any{"text": "from a socket"}, 0)
	check("bob", lp.expect("new_message"), `{"room":"general","text":"from a socket","username":"alice"}`)
	ws.expect("new_message")
	lp.emit("send_message", map[string]any{"text": "from a poll"}, 0)
	check("alice", ws.expect("new_message"), `{"room":"general","text":"from a poll","username":"bob"}`)
	lp.expect("new_message")

	// Typing, both ways.
	lp.emit("typing_start", nil, 0)
	check("alice", ws.expect("user_typing"), `{"room":"general","typing":true,"username":"bob"}`)
	lp.emit("typing_stop", nil, 0)
	check("alice", ws.expect("user_typing"), `{"room":"general","typing":false,"username":"bob"}`)
	ws.emit("typing_start", nil, 0)
	check("bob", lp.expect("user_typing"), `{"room":"general","typing":true,"username":"alice"}`)
	ws.emit("typing_stop", nil, 0)
	check("bob", lp.expect("user_typing"), `{"room":"general","typing":false,"username":"alice"}`)

	// Private messages.
	ws.emit("private_message", map[string]any{"to": "BOB", "text": "psst"}, 0)
	check("bob", lp.expect("private_message"), `{"from":"alice","text":"psst","to":"bob"}`)
	ws.expect("private_message")

	// Renames, both ways, the renamed one included.
	lp.emit("set_username", map[string]any{"username": "robert"}, 0)
	check("alice", ws.expect("user_renamed"), `{"new":"robert","old":"bob","room":"general"}`)
	lp.expect("user_renamed")
	ws.emit("set_username", map[string]any{"username": "alicia"}, 0)
	check("bob", lp.expect("user_renamed"), `{"new":"alicia","old":"alice","room":"general"}`)
	ws.expect("user_renamed")

	// Joins and leaves, both ways.
	lp.call("join_room", map[string]any{"room": "dev"})
	ws.call("join_room", map[string]any{"room": "dev"})
	check("bob", lp.expect("user_joined"), `{"room":"dev","username":"alicia"}`)
	ws.call("leave_room", map[string]any{"room": "dev"})
	check("bob", lp.expect("user_left"), `{"room":"dev","username":"alicia"}`)
	lp.call("leave_room", map[string]any{"room": "general"})
	check("alice", ws.expect("user_left"), `{"room":"general","username":"robert"}`)
	ws.quiet(50 * time.Millisecond)
}

// TestPollResumedOverWebSocket: a long-poll session goes on over a
// WebSocket with /ws?sid=S&after=N: welcome resumed, then exactly the events
// after N.
func TestPollResumedOverWebSocket(t *testing.T) {
	t.Parallel()
	_, ts := startServer(t, nil)
	alice := pollJoined(t, ts, "alice")
	bob := joined(t, ts, "bob")
	alice.expect("user_joined")
	after := alice.after
	for i := range 3 {
		bob.call("send_message", map[string]any{"text": fmt.Sprint("missed ", i)})
	}

	back := dialQuery(t, ts, url.Values{"sid": {alice.sid}, "after": {fmt.Sprint(after)}}, after)
	if !strings.Contains(string(back.welcome.Data), `"resumed":true`) || back.sid != alice.sid || back.username != "alice" {
		t.Fatalf("welcome: got %s, want alice's session resumed", back.welcome)
	}
	for i := range 3 { // the reader checks seq: after+1, after+2, …
		var m message
		back.expect("new_message").decode(t, &m)
		if m.Text != fmt.Sprint("missed ", i) {
			t.Errorf("message %d: got %q", i, m.Text)
		}
	}
	back.quiet(50 * time.Millisecond)
	bob.quiet(50 * time.Millisecond) // alice never left nor joined again
	back.call("echo_message", "live")
}

// TestPollReplacedByWebSocket: a WebSocket taking over a session answers its
// waiting GET with [] at once.
func TestPollReplacedByWebSocket(t *testing.T) {
	t.Parallel()
	const hold = 4 * time.Second
	srv, ts := startServer(t, func(c *config) { c.PollTimeout = hold })
	alice := pollJoined(t, ts, "alice")
	waiting := alice.getAsync(alice.after)
	waitPolling(t, srv, alice.sid, alice.after)
	back := dialQuery(t, ts, url.Values{"sid": {alice.sid}, "after": {fmt.Sprint(alice.after)}}, alice.after)
	if !strings.Contains(string(back.welcome.Data), `"resumed":true`) {
		t.Errorf("welcome: got %s, want resumed", back.welcome)
	}
	r := <-waiting
	if r.err != nil {
		t.Fatal(r.err)
	}
	if list := alice.checkEvents(r.a, alice.after); len(list) != 0 || r.took > hold/2 {
		t.Errorf("the waiting GET: got %v after %v, want [] at once", list, r.took)
	}
	back.call("echo_message", "live")
}

// TestWebSocketContinuedOverPoll: a WebSocket session goes on with
// GET /poll?sid=S&after=N; the WebSocket is closed with 4000 "replaced".
func TestWebSocketContinuedOverPoll(t *testing.T) {
	t.Parallel()
	_, ts := startServer(t, nil)
	alice := joined(t, ts, "alice")
	bob := joined(t, ts, "bob")
	alice.expect("user_joined")
	after := alice.seq()
	bob.call("send_message", map[string]any{"text": "one"})
	alice.expect("new_message") // received, but say it was not processed

	lp := newPollClient(t, ts)
	lp.sid, lp.username, lp.after = alice.sid, alice.username, after
	list := lp.get(after)
	if len(list) != 1 || !strings.Contains(string(list[0].Data), `"text":"one"`) {
		t.Errorf("got %v, want exactly the message after %d", list, after)
	}
	if code, reason := alice.closeStatus(); code != 4000 || reason != "replaced" {
		t.Errorf("the WebSocket: got close %d %q, want 4000 replaced", code, reason)
	}
	bob.call("send_message", map[string]any{"text": "two"})
	if e := lp.expect("new_message"); !strings.Contains(string(e.Data), `"text":"two"`) {
		t.Errorf("got %s, want two", e)
	}
	if r := lp.call("echo_message", "here"); !r.OK {
		t.Errorf("got %s", r.raw)
	}
	bob.quiet(50 * time.Millisecond) // alice never left
}

// TestPollShutdown: closing the server answers a waiting GET at once.
func TestPollShutdown(t *testing.T) {
	t.Parallel()
	srv, ts := startServer(t, func(c *config) { c.PollTimeout = time.Minute })
	alice := pollJoined(t, ts, "alice")
	waiting := alice.getAsync(alice.after)
	waitPolling(t, srv, alice.sid, alice.after)

	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	srv.close(ctx)
	cancel()
	r := <-waiting
	if r.err != nil {
		t.Fatalf("waiting GET: %v", r.err)
	}
	if list := alice.checkEvents(r.a, alice.after); len(list) != 0 {
		t.Errorf("got %v, want []", list)
	}
	if took := time.Since(start); took > time.Second {
		t.Errorf("answered %v after close, want at once", took)
	}
	// After: a GET answers at once, and no session opens.
	if list := alice.get(alice.after); len(list) != 0 {
		t.Errorf("GET after close: got %v", list)
	}
	wantJSONError(t, mustRequest(t, alice.hc, "POST", ts.URL+"/poll", nil, nil), http.StatusServiceUnavailable, "server_busy")
}

// TestSendForm: the page's form stores a message in general like
// send_message, with its own refusals.
func TestSendForm(t *testing.T) {
	t.Parallel()
	_, ts := startServer(t, func(c *config) { c.Rate = 0.001; c.Burst = 3 })
	alice := joined(t, ts, "alice")
	pollJoined(t, ts, "carol")
	alice.expect("user_joined")

	a := postForm(t, ts, " visitor ", "hello <b>all</b>", nil)
	if a.status != http.StatusSeeOther || a.header.Get("Location") != "/" {
		t.Fatalf("got %s, Location %q, want 303 to /", a, a.header.Get("Location"))
	}
	var m message
	alice.expect("new_message").decode(t, &m)
	if m.Room != "general" || m.Username != "visitor" || m.Text != "hello <b>all</b>" || m.ID < 1 {
		t.Errorf("new_message: got %+v", m)
	}
	if _, body := httpGet(t, ts.URL+"/messages?room=general"); !strings.Contains(body, `"username":"visitor"`) {
		t.Errorf("/messages: got %s, want the message", body)
	}

	for _, tc := range []struct{ name, username, text, why string }{
		{"invalid username", "a/b", "x", "username"},
		{"no username", "", "x", "username"},
		{"held by a WebSocket session", "ALICE", "x", "username"},
		{"held by a long-poll session", "Carol", "x", "username"},
		{"empty message", "visitor", "  ", "message"},
	} {
		a := postForm(t, ts, tc.username, tc.text, nil)
		if mt, _, _ := mime.ParseMediaType(a.header.Get("Content-Type")); a.status != http.StatusBadRequest || mt != "text/html" {
			t.Errorf("%s: got %d %s, want 400 HTML", tc.name, a.status, a.header.Get("Content-Type"))
		}
		if !strings.Contains(strings.ToLower(string(a.body)), tc.why) {
			t.Errorf("%s: got page %s, want it to say why (%s)", tc.name, a.body, tc.why)
		}
	}

	// The burst is 3, and no token comes back during the test: one used,
	// two more pass, the fourth is refused.
	for i := range 2 {
		if a := postForm(t, ts, "visitor", fmt.Sprint("more ", i), nil); a.status != http.StatusSeeOther {
			t.Errorf("message %d of the burst: got %s", i+2, a)
		}
	}
	if a := postForm(t, ts, "visitor", "one too many", nil); a.status != http.StatusTooManyRequests {
		t.Errorf("beyond the burst: got %s, want 429", a)
	}
	if a := postForm(t, ts, "visitor", "cross", http.Header{"Origin": {"http://evil.example.com"}}); a.status != http.StatusForbidden {
		t.Errorf("cross-site: got %s, want 403", a)
	}
	for i := range 2 {
		if e := alice.expect("new_message"); !strings.Contains(string(e.Data), fmt.Sprint("more ", i)) {
			t.Errorf("got %s", e)
		}
	}
	alice.quiet(50 * time.Millisecond)
}

// TestPollSessionsExpire: a thousand sessions opened over long-polling and
// left to expire leave no session and no goroutine behind. Not parallel: it
// counts the goroutines of the whole process, which only holds still while
// the other tests are paused.
func TestPollSessionsExpire(t *testing.T) {
	before := runtime.NumGoroutine()
	const n, workers = 1000, 8
	srv, ts := startServer(t, func(c *config) { c.Grace = 50 * time.Millisecond; c.PollTimeout = time.Second })
	tr := &http.Transport{MaxIdleConnsPerHost: workers}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: 2 * waitTimeout}

	var wg sync.WaitGroup
	var opened atomic.Int64
	for w := range workers {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 4*waitTimeout)
			defer cancel()
			for i := w; i < n; i += workers {
				a, err := doRequest(ctx, hc, "POST", ts.URL+"/poll", nil, nil)
				var welcome struct{ Data struct{ SID string } }
				if err != nil || a.status != 200 || json.Unmarshal(a.body, &welcome) != nil {
					t.Errorf("open %d: got %v %v", i, a, err)
					return
				}
				opened.Add(1)
				if i%2 == 1 {
					continue // half never ask; the others take room_joined
				}
				a, err = doRequest(ctx, hc, "GET", ts.URL+"/poll?sid="+welcome.Data.SID+"&after=0", nil, nil)
				// 404: under load the 50 ms grace may pass before the GET.
				if err != nil || a.status != 200 && a.status != 404 {
					t.Errorf("GET %d: got %v %v", i, a, err)
					return
				}
			}
		})
	}
	wg.Wait()
	if opened.Load() != n {
		t.Fatalf("opened %d sessions, want %d", opened.Load(), n)
	}

	deadline := time.Now().Add(waitTimeout)
	for liveSessions(srv) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d sessions still live %v after the last one opened", liveSessions(srv), waitTimeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
	srv.mu.Lock()
	names, rooms := len(srv.names), len(srv.rooms)
	srv.mu.Unlock()
	if names != 0 || rooms != 0 {
		t.Errorf("left behind: %d names, %d rooms", names, rooms)
	}
	tr.CloseIdleConnections()
	// Near the baseline: the test server's accept loop and connections
	// still closing may remain.
	if leaked := waitGoroutines(before + 5); leaked != "" {
		t.Errorf("goroutines: %d, want at most %d:\n%s", runtime.NumGoroutine(), before+5, leaked)
	}
}

// BenchmarkPollFanout: 100 long-polling clients in general, one of them
// sending b.N messages, one POST each; it ends when every client has
// received every message. The sender stays at most `window` messages ahead
// of the slowest client, so that nobody is dropped as a slow reader.
//
//	go test -run XXX -bench PollFanout -benchtime 2000x
func BenchmarkPollFanout(b *testing.B) {
	const clients = 100
	const window = 256
	cfg := testConfig()
	cfg.Rate, cfg.Burst = 1e9, 1e9
	cfg.Outbox = 4 * window
	cfg.PollTimeout = time.Second
	srv := newServer(cfg)
	ts := httptest.NewServer(srv)
	tr := &http.Transport{MaxIdleConnsPerHost: 2 * clients}
	b.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		defer cancel()
		srv.close(ctx)
		ts.Close()
		tr.CloseIdleConnections()
	})
	hc := &http.Client{Transport: tr, Timeout: 2 * waitTimeout}

	pcs := make([]*pollClient, clients)
	for i := range pcs {
		pcs[i] = &pollClient{t: b, ts: ts, hc: hc}
		pcs[i].open(fmt.Sprint("user", i))
	}
	for _, c := range pcs {
		c.get(0) // room_joined and the joins of those after it: nothing else is coming
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	received := make([]atomic.Int64, clients)
	progress := make(chan struct{}, 1) // "some client received more"
	slowest := func() int64 {
		m := received[0].Load()
		for i := range received {
			m = min(m, received[i].Load())
		}
		return m
	}
	fail := func(format string, args ...any) {
		if ctx.Err() == nil {
			b.Errorf(format, args...)
			cancel()
		}
	}

	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	for i, c := range pcs {
		wg.Go(func() {
			after := c.after
			for received[i].Load() < int64(b.N) {
				a, err := c.getAnswer(ctx, after)
				if err != nil {
					fail("client %d: %v", i, err)
					return
				}
				list, err := decodePollEvents(a.body, after)
				if a.status != 200 || err != nil {
					fail("client %d: got %s: %v", i, a, err)
					return
				}
				var n int64
				for _, e := range list {
					if e.Event == "new_message" {
						n++
					}
					after = e.Seq
				}
				received[i].Add(n)
				select {
				case progress <- struct{}{}:
				default:
				}
			}
		})
	}
	wg.Go(func() {
		env := []byte(`{"event":"send_message","data":{"text":"fan-out"}}`)
		for i := range b.N {
			for slowest() < int64(i-window) {
				select {
				case <-progress:
				case <-ctx.Done():
					return
				}
			}
			a, err := doRequest(ctx, hc, "POST", pcs[0].sendURL(), env, jsonBody)
			if err != nil || a.status != http.StatusNoContent {
				fail("send %d: got %v %v", i, a, err)
				return
			}
		}
	})

	// Wait for everyone, failing if deliveries stop for 10 s.
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	total := func() (n int64) {
		for i := range received {
			n += received[i].Load()
		}
		return n
	}
	last, lastMove := int64(-1), time.Now()
	for waiting := true; waiting; {
		select {
		case <-done:
			waiting = false
		case <-tick.C:
			if n := total(); n != last {
				last, lastMove = n, time.Now()
			} else if time.Since(lastMove) > 2*waitTimeout {
				fail("stalled at %d of %d deliveries", n, clients*b.N)
			}
		}
	}
	elapsed := time.Since(start)
	b.StopTimer()
	if !b.Failed() {
		b.ReportMetric(float64(clients*b.N)/elapsed.Seconds(), "deliveries/s")
	}
}
