package main

// Tests of cid, the client's own id for a message (PROTOCOL.md section 4,
// "Sending exactly once, across sessions and restarts"): a send_message
// repeated with the same cid by the same username, while the first is in the
// room's kept history, stores nothing, broadcasts nothing and is answered
// with the first message and duplicate: true. Over both transports and the
// no-JavaScript form. journal_crash_test.go tests the same across restarts.

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// sendAnswer is the data of send_message's ack.
type sendAnswer struct {
	OK        bool
	Duplicate bool
	Message   message
	Error     struct{ Code, Message string }
}

// chatClient is what the tests below need of a client: the WebSocket one
// (chat_test.go) and the long-polling one (poll_test.go) both have it.
type chatClient interface {
	emit(name string, data any, ack int64)
	next() event
	expect(name string) event
}

// ackNumbers hands out ack numbers: unique in the whole test binary, so
// never one a session has used (a used one would be answered again from
// the session's memory, not applied).
var ackNumbers atomic.Int64

// noCID, as sendCID's cid, leaves the field out.
const noCID = "\x00"

// sendCID sends a message with an ack number and returns the ack's data.
// want says what the sender must receive first: "new_message" (then the
// ack, whose message must be the same one) or "ack" (nothing before it: a
// duplicate or a refusal causes no event).
func sendCID(t *testing.T, c chatClient, room, text, cid, want string) sendAnswer {
	t.Helper()
	data := map[string]any{"room": room, "text": text}
	if cid != noCID {
		data["cid"] = cid
	}
	n := ackNumbers.Add(1)
	c.emit("send_message", data, n)
	var broadcast message
	if want == "new_message" {
		e := c.expect("new_message")
		e.decode(t, &broadcast)
	}
	e := c.expect("ack")
	if e.Ack != n {
		t.Fatalf("got %s, want the ack of %d", e, n)
	}
	var a sendAnswer
	e.decode(t, &a)
	if want == "new_message" && (!a.OK || a.Message != broadcast) {
		t.Fatalf("ack: got %s, want ok with the message of new_message %+v", e.Data, broadcast)
	}
	return a
}

// wantStored fails unless a is a new message of username's with text and
// cid, with an id above after.
func wantStored(t *testing.T, a sendAnswer, username, text, cid string, after int64) {
	t.Helper()
	m := a.Message
	if !a.OK || a.Duplicate || m.Username != username || m.Text != text || m.CID != cid || m.ID <= after {
		t.Fatalf("got %+v, want a new message %q of %s with cid %q and an id above %d", a, text, username, cid, after)
	}
}

// wantDuplicate fails unless a is the duplicate answer: ok, duplicate, and
// the message stored the first time.
func wantDuplicate(t *testing.T, a sendAnswer, first message) {
	t.Helper()
	if !a.OK || !a.Duplicate || a.Message != first {
		t.Fatalf("got %+v, want ok, duplicate and the first message %+v", a, first)
	}
}

// wantBadRequest fails unless a is a refusal with bad_request.
func wantBadRequest(t *testing.T, a sendAnswer, what string) {
	t.Helper()
	if a.OK || a.Error.Code != "bad_request" || a.Error.Message == "" {
		t.Fatalf("%s: got %+v, want bad_request", what, a)
	}
}

// expectMessage reads the next event of c, which must be the new_message m.
func expectMessage(t *testing.T, c chatClient, m message) {
	t.Helper()
	var got message
	c.expect("new_message").decode(t, &got)
	if got != m {
		t.Fatalf("new_message: got %+v, want %+v", got, m)
	}
}

// testCID runs the cid rules with alice as the sender (either transport)
// and bob, another member of general, as a witness: he must get exactly one
// new_message per stored message. Every event bob gets is read in order,
// so a duplicate that was broadcast would show up as the wrong next event.
func testCID(t *testing.T, alice chatClient, bob *client) {
	first := sendCID(t, alice, "general", "hello", "c-1", "new_message")
	wantStored(t, first, "alice", "hello", "c-1", 0)
	e := bob.expect("new_message")
	var got message
	e.decode(t, &got)
	if !strings.Contains(string(e.Data), `"cid":"c-1"`) || got != first.Message {
		t.Fatalf("bob: got %s, want new_message %+v with its cid", e, first.Message)
	}

	// The same cid again, even with another text: the first message, and
	// no event for anyone.
	wantDuplicate(t, sendCID(t, alice, "general", "hello", "c-1", "ack"), first.Message)
	wantDuplicate(t, sendCID(t, alice, "general", "something else", "c-1", "ack"), first.Message)

	// Another username with the same cid is another message.
	bobs := sendCID(t, bob, "general", "mine", "c-1", "new_message")
	wantStored(t, bobs, "bob", "mine", "c-1", first.Message.ID)
	expectMessage(t, alice, bobs.Message)

	// No cid, or an empty one, is no cid: every send is stored.
	last := bobs.Message.ID
	for i, cid := range []string{noCID, noCID, "", ""} {
		a := sendCID(t, alice, "general", "again", cid, "new_message")
		wantStored(t, a, "alice", "again", "", last)
		expectMessage(t, bob, a.Message)
		last = a.Message.ID
		if i == 0 && strings.Contains(string(mustJSON(t, a.Message)), "cid") {
			t.Errorf("a message without cid: got %s, want no cid field", mustJSON(t, a.Message))
		}
	}

	// The edges of a valid cid: 64 characters of A-Z a-z 0-9 - _ is one.
	long := strings.Repeat("Az09-_", 11)[:64]
	a := sendCID(t, alice, "general", "long cid", long, "new_message")
	wantStored(t, a, "alice", "long cid", long, last)
	expectMessage(t, bob, a.Message)
	wantDuplicate(t, sendCID(t, alice, "general", "long cid", long, "ack"), a.Message)
	for _, bad := range []string{long + "x", "a b", "a.b", "a/b", "é", "日本", "c-1\n", `"`} {
		wantBadRequest(t, sendCID(t, alice, "general", "bad cid", bad, "ack"), fmt.Sprintf("cid %q", bad))
	}
	// Nothing of the above reached bob: his next event is this.
	a = sendCID(t, alice, "general", "the end", "c-2", "new_message")
	expectMessage(t, bob, a.Message)
}

// mustJSON encodes v.
func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestCIDWebSocket: the cid rules over WebSocket; then per room, and
// across sessions: a new session of the same username that sends a message
// again stores nothing.
func TestCIDWebSocket(t *testing.T) {
	t.Parallel()
	srv, ts := startServer(t, func(c *config) { c.Grace = 50 * time.Millisecond })
	alice := joined(t, ts, "alice")
	bob := joined(t, ts, "bob")
	alice.expect("user_joined")
	testCID(t, alice, bob)

	// Another room's history is another history.
	first := sendCID(t, alice, "general", "in general", "c-room", "new_message")
	expectMessage(t, bob, first.Message)
	n := ackNumbers.Add(1)
	alice.emit("join_room", map[string]any{"room": "side"}, n)
	alice.expect("room_joined")
	if e := alice.expect("ack"); e.Ack != n || !strings.Contains(string(e.Data), `"ok":true`) {
		t.Fatalf("join_room: got %s", e)
	}
	side := sendCID(t, alice, "side", "in side", "c-room", "new_message")
	wantStored(t, side, "alice", "in side", "c-room", first.Message.ID)
	if side.Message.Room != "side" {
		t.Fatalf("got %+v, want a message of side", side.Message)
	}

	// Alice's session ends; a new one of hers sends the message again.
	alice.close()
	waitUntil(t, waitTimeout, "alice's session ends", func() bool { return liveSessions(srv) == 1 })
	bob.expect("user_left")
	again := joined(t, ts, "alice") // (a connected session outlives a short grace)
	if again.username != "alice" {
		t.Fatalf("got username %q, want alice", again.username)
	}
	bob.expect("user_joined")
	wantDuplicate(t, sendCID(t, again, "general", "in general", "c-room", "ack"), first.Message)
	a := sendCID(t, again, "general", "new", "c-new", "new_message")
	expectMessage(t, bob, a.Message) // and nothing before it
}

// TestCIDLongPoll: the cid rules with a long-polling sender.
func TestCIDLongPoll(t *testing.T) {
	t.Parallel()
	_, ts := startServer(t, nil)
	alice := pollJoined(t, ts, "alice")
	bob := joined(t, ts, "bob")
	alice.expect("user_joined")
	testCID(t, alice, bob)
}

// TestCIDHistoryLimit: only the kept history counts. Once a message has
// fallen out of its room's last cfg.History, its cid is free again.
func TestCIDHistoryLimit(t *testing.T) {
	t.Parallel()
	_, ts := startServer(t, func(c *config) { c.History = 3 })
	alice := joined(t, ts, "alice")
	old := sendCID(t, alice, "general", "old", "c-old", "new_message")
	for _, cid := range []string{"c-a", "c-b"} {
		sendCID(t, alice, "general", cid, cid, "new_message")
	}
	// old, c-a, c-b: old is still kept.
	wantDuplicate(t, sendCID(t, alice, "general", "old", "c-old", "ack"), old.Message)
	c := sendCID(t, alice, "general", "c-c", "c-c", "new_message")
	// c-a, c-b, c-c: old is gone, and sending it again stores it again.
	again := sendCID(t, alice, "general", "old", "c-old", "new_message")
	wantStored(t, again, "alice", "old", "c-old", c.Message.ID)
	wantDuplicate(t, sendCID(t, alice, "general", "old", "c-old", "ack"), again.Message)
	if _, body := httpGet(t, ts.URL+"/messages?room=general"); strings.Count(body, `"cid":"c-old"`) != 1 {
		t.Errorf("/messages: got %s, want c-old once", body)
	}
}

// formCID finds the page's hidden cid field and returns its value.
var formCID = regexp.MustCompile(`<input[^>]*\bname="cid"[^>]*>`)

// TestCIDForm: the page's form carries a fresh server-made cid in a hidden
// field, and a form sent twice with it stores one message.
func TestCIDForm(t *testing.T) {
	t.Parallel()
	ts := pageServer(t, nil)
	watcher := joined(t, ts, "watcher")

	var cids []string
	for range 2 {
		a := pageRequest(t, ts, "GET", "/", nil, nil)
		wantHTML(t, "GET /", a, http.StatusOK)
		input := formCID.FindString(a.body)
		value := regexp.MustCompile(`\bvalue="([^"]*)"`).FindStringSubmatch(input)
		if !strings.Contains(input, `type="hidden"`) || value == nil {
			t.Fatalf("GET /: got the cid input %q, want <input type=\"hidden\" name=\"cid\" value=…>", input)
		}
		if validCID(value[1]) != nil || value[1] == "" || len(value[1]) < 16 {
			t.Fatalf("the form's cid: got %q, want 16-64 characters of A-Z a-z 0-9 - _", value[1])
		}
		cids = append(cids, value[1])
	}
	if cids[0] == cids[1] {
		t.Fatalf("two pages carry the same cid %q", cids[0])
	}

	post := func(username, text, cid string) pageAnswer {
		t.Helper()
		form := url.Values{"username": {username}, "message": {text}, "cid": {cid}}
		return pageRequest(t, ts, "POST", "/send_message", form, nil)
	}
	for range 2 { // the same form, sent twice (a double click, a resubmission)
		if a := post("visitor", "hello from the form", cids[0]); a.status != http.StatusSeeOther {
			t.Fatalf("POST /send_message: got %d %s, want 303", a.status, a.body)
		}
	}
	var m message
	watcher.expect("new_message").decode(t, &m)
	if m.Username != "visitor" || m.Text != "hello from the form" || m.CID != cids[0] {
		t.Fatalf("new_message: got %+v, want the form's message with its cid", m)
	}
	// Another username with the same cid is another message; a bad cid
	// is refused.
	if a := post("guest", "me too", cids[0]); a.status != http.StatusSeeOther {
		t.Fatalf("POST /send_message: got %d %s, want 303", a.status, a.body)
	}
	var other message
	watcher.expect("new_message").decode(t, &other)
	if other.Username != "guest" || other.CID != cids[0] || other.ID <= m.ID {
		t.Fatalf("new_message: got %+v, want guest's message with the same cid", other)
	}
	if a := post("visitor", "bad cid", "a b"); a.status != http.StatusBadRequest {
		t.Fatalf("POST with cid \"a b\": got %d %s, want 400", a.status, a.body)
	}
	if a := post("visitor", "last", cids[1]); a.status != http.StatusSeeOther {
		t.Fatalf("POST /send_message: got %d %s, want 303", a.status, a.body)
	}
	var last message
	watcher.expect("new_message").decode(t, &last) // nothing between
	if last.Text != "last" {
		t.Fatalf("new_message: got %+v, want \"last\"", last)
	}

	var stored []message
	a := pageRequest(t, ts, "GET", "/messages?room=general", nil, nil)
	if err := json.Unmarshal([]byte(a.body), &stored); err != nil {
		t.Fatalf("GET /messages: %v: %s", err, a.body)
	}
	if want := []message{m, other, last}; fmt.Sprint(stored) != fmt.Sprint(want) {
		t.Fatalf("GET /messages: got %+v,\nwant %+v", stored, want)
	}
}

// startDataServer is startServer with -data dir: its journal is closed
// when the test ends.
func startDataServer(t testing.TB, dir string, edit func(*config)) (*server, *httptest.Server) {
	t.Helper()
	srv, ts := startServer(t, edit)
	if err := srv.keepHistory(dir); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.journal.close() })
	return srv, ts
}

// TestCIDJournal: the cid rules with -data, where a message is published
// only once the journal has it.
func TestCIDJournal(t *testing.T) {
	t.Parallel()
	_, ts := startDataServer(t, t.TempDir(), nil)
	alice := joined(t, ts, "alice")
	bob := joined(t, ts, "bob")
	alice.expect("user_joined")
	testCID(t, alice, bob)
}

// TestCIDWhileWriting: with -data, a message sent again while its first
// copy is still being written (the server lets go of its lock while the
// journal syncs) is a duplicate too: a form sent twice at once, a
// long-poll POST retried while the first is still on its way. Each pair
// is sent at once; one of each is stored.
func TestCIDWhileWriting(t *testing.T) {
	t.Parallel()
	_, ts := startDataServer(t, t.TempDir(), nil)
	watcher := joined(t, ts, "watcher")
	alice := pollJoined(t, ts, "alice")
	watcher.expect("user_joined")
	hc := testHTTPClient(ts)
	const pairs = 10

	// both sends body twice at once and returns the two answers.
	both := func(u string, header http.Header, body string) [2]httpAnswer {
		t.Helper()
		var answers [2]httpAnswer
		var errs [2]error
		var wg sync.WaitGroup
		for i := range 2 {
			wg.Go(func() {
				ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
				defer cancel()
				answers[i], errs[i] = doRequest(ctx, hc, "POST", u, []byte(body), header)
			})
		}
		wg.Wait()
		for _, err := range errs {
			if err != nil {
				t.Fatalf("POST %s: %v", u, err)
			}
		}
		return answers
	}
	form := http.Header{"Content-Type": {"application/x-www-form-urlencoded"}}
	for i := range pairs {
		body := url.Values{"username": {"visitor"}, "message": {fmt.Sprint("form ", i)}, "cid": {fmt.Sprint("form-", i)}}.Encode()
		for _, a := range both(ts.URL+"/send_message", form, body) {
			if a.status != http.StatusSeeOther {
				t.Fatalf("POST /send_message: got %s, want 303", a)
			}
		}
	}
	for i := range pairs {
		env := fmt.Sprintf(`[{"event":"send_message","data":{"text":"poll %d","cid":"poll-%d"},"ack":%d}]`, i, i, 1000+i)
		// The same event with another ack number: not the ack's memory,
		// the cid, must tell it is the same message.
		env2 := strings.Replace(env, fmt.Sprint(1000+i), fmt.Sprint(2000+i), 1)
		var answers [2]httpAnswer
		var wg sync.WaitGroup
		for j, body := range []string{env, env2} {
			wg.Go(func() {
				ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
				defer cancel()
				answers[j], _ = doRequest(ctx, hc, "POST", alice.sendURL(), []byte(body), jsonBody)
			})
		}
		wg.Wait()
		for _, a := range answers {
			if a.status != http.StatusNoContent {
				t.Fatalf("POST /poll: got %s, want 204", a)
			}
		}
	}
	// Alice's acks: for each pair, one new message and one duplicate of it.
	acks := map[int64]sendAnswer{}
	for len(acks) < 2*pairs {
		if e := alice.next(); e.Event == "ack" {
			var a sendAnswer
			e.decode(t, &a)
			acks[e.Ack] = a
		}
	}
	for i := range int64(pairs) {
		a, b := acks[1000+i], acks[2000+i]
		if !a.OK || !b.OK || a.Duplicate == b.Duplicate || a.Message != b.Message {
			t.Errorf("pair %d: got %+v and %+v, want one new message and one duplicate of it", i, a, b)
		}
	}
	// The watcher heard of each message once, and each is stored once.
	var stored []message
	if err := json.Unmarshal([]byte(storedJSON(t, ts)), &stored); err != nil {
		t.Fatal(err)
	}
	count := map[string]int{}
	for _, m := range stored {
		count[m.CID]++
	}
	for i := range pairs {
		for _, cid := range []string{fmt.Sprint("form-", i), fmt.Sprint("poll-", i)} {
			if count[cid] != 1 {
				t.Errorf("%s: stored %d times, want once", cid, count[cid])
			}
		}
	}
	for range len(stored) {
		watcher.expect("new_message")
	}
	last := sendCID(t, alice, "general", "the end", "end", "new_message")
	expectMessage(t, watcher, last.Message) // nothing more before it
}

// storedJSON is GET /messages?room=general.
func storedJSON(t *testing.T, ts *httptest.Server) string {
	t.Helper()
	status, body := httpGet(t, ts.URL+"/messages?room=general")
	if status != http.StatusOK {
		t.Fatalf("GET /messages: got %d %s", status, body)
	}
	return body
}

// TestResentAckWhileWriting: with -data, an event sent again with the same
// ack number while the first is still being written (a long-poll POST
// retried, a resumed WebSocket sending what went unanswered) must be
// answered, not applied again (PROTOCOL.md section 4). Without a cid,
// the ack number is all that tells it is the same message.
func TestResentAckWhileWriting(t *testing.T) {
	t.Parallel()
	_, ts := startDataServer(t, t.TempDir(), nil)
	alice := pollJoined(t, ts, "alice")
	const tries = 10
	for i := range tries {
		env := fmt.Sprintf(`{"event":"send_message","data":{"text":"twice %d"},"ack":%d}`, i, 3000+i)
		var wg sync.WaitGroup
		for range 2 {
			wg.Go(func() {
				ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
				defer cancel()
				doRequest(ctx, alice.hc, "POST", alice.sendURL(), []byte(env), jsonBody)
			})
		}
		wg.Wait()
	}
	var stored []message
	if err := json.Unmarshal([]byte(storedJSON(t, ts)), &stored); err != nil {
		t.Fatal(err)
	}
	if len(stored) != tries {
		t.Errorf("%d messages each sent twice with one ack number: got %d stored, want %d", tries, len(stored), tries)
	}
}
