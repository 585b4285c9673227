package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"net/http"
	"net/url"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
)

var soakFor = flag.Duration("soak", 3*time.Second, "how long TestSoak runs its chaos")

// TestSoak proves the guarantees of PROTOCOL.md under faults. Dozens of
// clients, half on WebSocket and half on long-polling, chat in several rooms
// with ack numbers while a chaos loop kills connections without a close
// frame, throws long-poll responses away, stops clients from reading for a
// while and lets one client flood past the rate limit. Clients behave as the
// page's client does: they resume with sid and after, join again with since
// when refused, and resend unacknowledged events with the same ack numbers.
//
// At the end: every acknowledged message is in its room's history exactly
// once; every client received every message of its rooms exactly once; no
// seq skipped or repeated (checked as events arrive); the heap is back near
// where it started, and TestMain checks that no goroutine is left.
func TestSoak(t *testing.T) {
	if testing.Short() {
		t.Skip("soak: not in -short")
	}
	var heapBefore runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&heapBefore)

	srv, ts := startServer(t, func(c *config) {
		c.Grace = 2 * time.Second
		c.PollTimeout = 500 * time.Millisecond
		c.History = 1 << 20 // the final check reads every message back
	})
	rooms := []string{"general", "red", "green", "blue"}
	h := &soakHarness{t: t, baseURL: ts.URL, http: &http.Client{Timeout: 10 * time.Second}}
	const clients = 24
	for i := range clients {
		c := &soakClient{h: h, id: i, name: fmt.Sprint("soak", i), poll: i%2 == 1,
			rooms: map[string]int64{"general": 0, rooms[1+i%3]: 0},
			got:   map[string]map[int64]bool{}, pending: map[int64]*pendingSend{}}
		h.clients = append(h.clients, c)
	}
	h.clients[0].flooder = true

	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, c := range h.clients {
		wg.Go(func() { c.run(ctx) })
	}
	// Everyone is in their rooms before anyone talks, so every client must
	// receive every message of its rooms.
	h.waitAll(t, "joined their rooms", func(c *soakClient) bool { return c.ready && len(c.got) == len(c.rooms) })

	chaosDone := make(chan struct{})
	senders, sendStop := context.WithCancel(ctx)
	for _, c := range h.clients {
		wg.Go(func() { c.talk(ctx, senders) })
	}
	go func() { defer close(chaosDone); h.chaos(senders) }()
	time.Sleep(*soakFor) // the length of the soak itself, not a wait for an event
	sendStop()
	<-chaosDone

	// Let every client finish: all acks in, all messages received.
	h.waitAll(t, "had every event acknowledged", func(c *soakClient) bool { return len(c.pending) == 0 })
	history := map[string][]message{}
	for _, room := range rooms {
		_, body := httpGet(t, ts.URL+"/messages?room="+room)
		var list []message
		json.Unmarshal([]byte(body), &list)
		history[room] = list
	}
	h.waitAll(t, "received every message of their rooms", func(c *soakClient) bool {
		for room := range c.rooms {
			if len(c.got[room]) != len(history[room]) {
				return false
			}
		}
		return true
	})
	stop()
	wg.Wait()

	// Every acknowledged message is stored exactly once.
	stored := map[string]int{}
	total := 0
	for _, list := range history {
		for _, m := range list {
			stored[m.Room+"/"+m.Text]++
			total++
		}
	}
	acked := 0
	for _, c := range h.clients {
		for key := range c.acked {
			acked++
			if stored[key] != 1 {
				t.Errorf("%s: acknowledged message %q is stored %d times", c.name, key, stored[key])
			}
		}
	}
	for key, n := range stored {
		if n != 1 {
			t.Errorf("message %q stored %d times", key, n)
		}
	}
	// Every client has exactly the messages of its rooms (duplicates were
	// caught as they arrived).
	for _, c := range h.clients {
		for room := range c.rooms {
			for _, m := range history[room] {
				if !c.got[room][m.ID] {
					t.Errorf("%s never received message %d in %s", c.name, m.ID, room)
				}
			}
		}
	}
	t.Logf("soak %v: %d clients, %d messages stored, %d acknowledged; %d connections killed, %d long-poll responses thrown away, %d pauses, %d resumes, %d new sessions after a refused resume, %d rate-limited",
		*soakFor, clients, total, acked, h.kills.Load(), h.discards.Load(), h.pauses.Load(), h.resumes.Load(), h.restarts.Load(), h.limited.Load())
	if acked < clients || h.kills.Load() == 0 || h.resumes.Load() == 0 || h.limited.Load() == 0 {
		t.Errorf("the soak did not exercise what it should")
	}

	ctxClose, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	srv.close(ctxClose)
	ts.Close()
	h.http.CloseIdleConnections()
	var heapAfter runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&heapAfter)
	if grew := int64(heapAfter.HeapAlloc) - int64(heapBefore.HeapAlloc); grew > 32<<20 {
		t.Errorf("heap grew by %d MiB over the soak", grew>>20)
	}
}

// soakHarness holds the clients and counts what the chaos did.
type soakHarness struct {
	t       *testing.T
	baseURL string
	http    *http.Client
	clients []*soakClient

	kills, discards, pauses, resumes, restarts, limited atomic.Int64
}

func (h *soakHarness) base() string { return h.baseURL }

// waitAll waits up to 20 s until cond holds for every client (cond runs
// with the client's mu held).
func (h *soakHarness) waitAll(t *testing.T, what string, cond func(*soakClient) bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		var behind []string
		for _, c := range h.clients {
			c.mu.Lock()
			if !cond(c) {
				behind = append(behind, c.name)
			}
			c.mu.Unlock()
		}
		if len(behind) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not every client %s: %v", what, behind)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// chaos breaks things at random until ctx ends.
func (h *soakHarness) chaos(ctx context.Context) {
	tick := time.NewTicker(15 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		c := h.clients[rand.IntN(len(h.clients))]
		switch n := rand.IntN(100); {
		case n < 40: // kill the connection: TCP closed, no close frame
			c.kill()
		case n < 70: // lose the next long-poll response
			if c.poll {
				c.discardNext.Store(true)
			}
		case n < 80: // stop reading for a while; sometimes long enough to be dropped
			d := time.Duration(100+rand.IntN(300)) * time.Millisecond
			if rand.IntN(10) == 0 {
				d = 3 * time.Second
			}
			c.pauseUntil.Store(time.Now().Add(d).UnixNano())
			h.pauses.Add(1)
		}
	}
}

// pendingSend is a send_message not yet acknowledged.
type pendingSend struct {
	env     []byte
	room    string
	text    string
	sent    bool // in flight: sent, not yet answered
	limited bool // refused as rate_limited: send again on the next tick
}

// maxInFlight is how many events a client has sent and not yet had
// answered: a careful client does not pour its whole backlog at once.
const maxInFlight = 20

// soakClient is a client as the page's: it resumes, rejoins with since, and
// resends what was not acknowledged.
type soakClient struct {
	h       *soakHarness
	id      int
	name    string
	poll    bool
	flooder bool

	discardNext atomic.Bool  // throw the next long-poll response away
	pauseUntil  atomic.Int64 // unix nanos until which the client does not read

	mu      sync.Mutex
	sid     string
	after   int64 // the last seq processed
	ready   bool  // in every room, and the resends are out
	joining int   // room_joined still expected after a refused resume
	rooms   map[string]int64
	got     map[string]map[int64]bool
	pending map[int64]*pendingSend
	flying  int // pending events sent and not answered
	nextAck int64
	acked   map[string]bool // room/text of every acknowledged message
	conn    *websocket.Conn // the WebSocket now, if any
	cancel  context.CancelFunc
}

// run connects, reconnects and resumes until ctx ends.
func (c *soakClient) run(ctx context.Context) {
	for ctx.Err() == nil {
		if c.poll {
			c.runPoll(ctx)
		} else {
			c.runWebSocket(ctx)
		}
		// Reconnect after a short backoff with jitter, as the page does.
		select {
		case <-ctx.Done():
		case <-time.After(time.Duration(5+rand.IntN(20)) * time.Millisecond):
		}
	}
}

func (c *soakClient) runWebSocket(ctx context.Context) {
	c.mu.Lock()
	q := url.Values{"username": {c.name}}
	if c.sid != "" {
		q.Set("sid", c.sid)
		q.Set("after", fmt.Sprint(c.after))
	}
	c.mu.Unlock()
	connCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	conn, _, err := websocket.Dial(connCtx, "ws"+strings.TrimPrefix(c.h.base(), "http")+"/ws?"+q.Encode(), nil)
	if err != nil {
		return
	}
	defer conn.CloseNow()
	conn.SetReadLimit(-1)
	for {
		c.waitPause(ctx)
		_, msg, err := conn.Read(connCtx)
		if err != nil {
			c.mu.Lock()
			c.conn = nil
			c.mu.Unlock()
			return
		}
		for _, e := range parseEvents(c.h.t, msg) {
			if e.Event == "welcome" {
				c.welcome(e, conn)
				continue
			}
			c.process(e)
		}
	}
}

func (c *soakClient) runPoll(ctx context.Context) {
	c.mu.Lock()
	sid := c.sid
	c.mu.Unlock()
	if sid == "" {
		resp, err := c.h.http.Post(c.h.base()+"/poll?username="+c.name, "application/json", nil)
		if err != nil {
			return
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != 200 {
			return
		}
		c.welcome(parseEvents(c.h.t, body)[0], nil)
	}
	for ctx.Err() == nil {
		c.waitPause(ctx)
		c.mu.Lock()
		sid, after := c.sid, c.after
		reqCtx, cancel := context.WithCancel(ctx)
		c.cancel = cancel
		c.mu.Unlock()
		req, _ := http.NewRequestWithContext(reqCtx, "GET", fmt.Sprintf("%s/poll?sid=%s&after=%d", c.h.base(), sid, after), nil)
		resp, err := c.h.http.Do(req)
		if err != nil {
			cancel()
			return
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		cancel()
		if err != nil { // cut off on the way (the chaos killed it): lost
			c.h.discards.Add(1)
			continue
		}
		if resp.StatusCode == http.StatusNotFound { // the session ended: start again
			c.mu.Lock()
			c.sid = ""
			c.mu.Unlock()
			c.h.restarts.Add(1)
			return
		}
		if c.discardNext.Swap(false) {
			c.h.discards.Add(1)
			continue // lost on the way: ask again with the same after
		}
		for _, e := range parseEvents(c.h.t, body) {
			c.process(e)
		}
	}
}

// welcome starts (or resumes) the session the server announced.
func (c *soakClient) welcome(e event, conn *websocket.Conn) {
	var w struct {
		SID     string
		Resumed bool
	}
	json.Unmarshal(e.Data, &w)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.conn = conn
	if w.Resumed {
		c.h.resumes.Add(1)
		c.resendLocked() // we cannot know what arrived: the same ack numbers again
		return
	}
	if c.sid != "" {
		c.h.restarts.Add(1)
	}
	c.sid, c.after, c.ready = w.SID, 0, false
	// A new session joins general by itself; join the other rooms again
	// with since, and only then resend (after checking the history for
	// messages that did arrive).
	c.joining = len(c.rooms)
	for room, since := range c.rooms {
		if room != "general" {
			c.sendLocked(fmt.Appendf(nil, `{"event":"join_room","data":{"room":%q,"since":%d}}`, room, since))
		}
	}
}

// process handles one event in order, checking the seq.
func (c *soakClient) process(e event) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e.Seq != c.after+1 {
		c.h.t.Errorf("%s: got seq %d after %d (%s)", c.name, e.Seq, c.after, e.Event)
	}
	c.after = e.Seq
	switch e.Event {
	case "new_message":
		var m message
		json.Unmarshal(e.Data, &m)
		c.receive(m)
	case "room_joined":
		var rj joinedData
		json.Unmarshal(e.Data, &rj)
		if _, ok := c.rooms[rj.Room]; !ok {
			return
		}
		for _, m := range rj.History {
			if m.ID > c.rooms[rj.Room] { // older ones were seen before
				c.receive(m)
			}
		}
		if c.got[rj.Room] == nil {
			c.got[rj.Room] = map[int64]bool{}
		}
		if !c.ready {
			if c.joining--; c.joining <= 0 {
				c.ready = true
				c.resendLocked()
			}
		}
	case "ack":
		var a ackReply
		json.Unmarshal(e.Data, &a)
		p := c.pending[e.Ack]
		switch {
		case p == nil || !p.sent:
		case a.OK:
			c.done(e.Ack)
		case a.Error.Code == "rate_limited":
			p.sent, p.limited = false, true
			c.flying--
			c.h.limited.Add(1)
		default:
			c.h.t.Errorf("%s: %s failed: %s", c.name, p.text, e.Data)
			c.done(e.Ack)
		}
		c.flushLocked()
	}
}

// done forgets a pending event: it was applied.
func (c *soakClient) done(ack int64) {
	p := c.pending[ack]
	if c.acked == nil {
		c.acked = map[string]bool{}
	}
	c.acked[p.room+"/"+p.text] = true
	if p.sent {
		c.flying--
	}
	delete(c.pending, ack)
}

// receive records one room message, exactly once.
func (c *soakClient) receive(m message) {
	if c.got[m.Room] == nil {
		c.got[m.Room] = map[int64]bool{}
	}
	if c.got[m.Room][m.ID] {
		c.h.t.Errorf("%s received message %d in %s twice", c.name, m.ID, m.Room)
	}
	if m.ID <= c.rooms[m.Room] {
		c.h.t.Errorf("%s received message %d in %s after %d", c.name, m.ID, m.Room, c.rooms[m.Room])
	}
	c.got[m.Room][m.ID] = true
	c.rooms[m.Room] = m.ID
	// A message of ours that arrived although its ack did not (the session
	// ended first): it is delivered, do not send it again.
	if m.Username == c.name {
		for n, p := range c.pending {
			if p.room == m.Room && p.text == m.Text {
				c.done(n)
			}
		}
	}
}

// talk sends messages until sending ends; the flooder also sends bursts far
// past the rate limit. Until ctx ends it sends again what was refused as
// rate_limited.
func (c *soakClient) talk(ctx, sending context.Context) {
	tick := time.NewTicker(time.Duration(80+rand.IntN(40)) * time.Millisecond)
	defer tick.Stop()
	resend := time.NewTicker(300 * time.Millisecond)
	defer resend.Stop()
	n, ticks := 0, 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-resend.C:
			c.mu.Lock()
			for _, p := range c.pending {
				p.limited = false
			}
			c.flushLocked()
			c.mu.Unlock()
			continue
		case <-tick.C:
			if sending.Err() != nil {
				continue
			}
		}
		c.mu.Lock()
		backlog := len(c.pending)
		c.mu.Unlock()
		burst := 1
		// About once a second, 60 at once: far past the burst of 40. Only
		// when the last flood has drained, or the backlog would grow without
		// end (the rate limit lets 20 a second through).
		if ticks++; c.flooder && ticks%10 == 0 && backlog < 60 {
			burst = 60
		}
		c.mu.Lock()
		for range burst {
			n++
			room := "general"
			if n%2 == 0 {
				for r := range c.rooms {
					room = r
				}
			}
			c.nextAck++
			text := fmt.Sprintf("%s-%d", c.name, n)
			env := fmt.Appendf(nil, `{"event":"send_message","data":{"room":%q,"text":%q},"ack":%d}`, room, text, c.nextAck)
			c.pending[c.nextAck] = &pendingSend{env: env, room: room, text: text}
		}
		c.flushLocked()
		c.mu.Unlock()
	}
}

// resendLocked sends every pending event again, after a reconnect: whether
// they arrived is unknown. c.mu is held.
func (c *soakClient) resendLocked() {
	for _, p := range c.pending {
		p.sent = false
	}
	c.flying = 0
	c.flushLocked()
}

// flushLocked sends pending events, oldest first, keeping at most
// maxInFlight unanswered. c.mu is held.
func (c *soakClient) flushLocked() {
	if !c.ready {
		return
	}
	for _, n := range slices.Sorted(maps.Keys(c.pending)) {
		if c.flying >= maxInFlight {
			return
		}
		if p := c.pending[n]; !p.sent && !p.limited {
			p.sent = true
			c.flying++
			c.sendLocked(p.env)
		}
	}
}

// sendLocked sends one envelope on the current transport; a failure is
// fine, the event stays pending. c.mu is held.
func (c *soakClient) sendLocked(env []byte) {
	if !c.poll {
		if c.conn != nil {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			c.conn.Write(ctx, websocket.MessageText, env)
			cancel()
		}
		return
	}
	if c.sid == "" {
		return
	}
	resp, err := c.h.http.Post(c.h.base()+"/poll?sid="+c.sid, "application/json", bytes.NewReader(env))
	if err == nil {
		resp.Body.Close()
	}
}

// kill drops the connection abruptly: a WebSocket's TCP connection closes
// with no close frame; a waiting long-poll is abandoned.
func (c *soakClient) kill() {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.conn != nil:
		c.conn.CloseNow()
	case c.poll && c.cancel != nil:
		c.cancel()
	default:
		return
	}
	c.h.kills.Add(1)
}

// waitPause blocks while the chaos has the client not reading.
func (c *soakClient) waitPause(ctx context.Context) {
	for {
		d := time.Until(time.Unix(0, c.pauseUntil.Load()))
		if d <= 0 {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(d):
		}
	}
}
