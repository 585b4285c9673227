package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/url"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// TestReconnectStorm: 1,000 clients in one room lose their connections at
// once and come back with the page's backoff and jitter. All of them are
// chatting again within 15 s, nobody is dropped as too slow by the storm
// (the presence limit keeps a crowd's joins from costing a million events),
// and the heap stays bounded throughout.
func TestReconnectStorm(t *testing.T) {
	if testing.Short() {
		t.Skip("storm: not in -short")
	}
	const clients = 1000
	srv, ts := startServer(t, nil)
	base := "ws" + strings.TrimPrefix(ts.URL, "http") + "/ws?"

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var heapPeak atomic.Uint64
	sampler := make(chan struct{})
	go func() {
		defer close(sampler)
		for ctx.Err() == nil {
			var m runtime.MemStats
			runtime.ReadMemStats(&m)
			if m.HeapAlloc > heapPeak.Load() {
				heapPeak.Store(m.HeapAlloc)
			}
			select {
			case <-ctx.Done():
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()

	cs := make([]*stormClient, clients)
	for i := range cs {
		cs[i] = &stormClient{t: t, base: base, name: fmt.Sprint("storm", i)}
		if err := cs[i].connect(ctx); err != nil {
			t.Fatalf("client %d: %v", i, err)
		}
	}
	// Everyone is in: the last one's room_joined counts all of them.
	waitUntil(t, 10*time.Second, "all joined", func() bool {
		srv.mu.Lock()
		defer srv.mu.Unlock()
		return len(srv.rooms["general"].members) == clients
	})

	// The storm: every connection dies at once, with no close frame.
	stormAt := time.Now()
	for _, c := range cs {
		c.conn.Load().CloseNow()
	}
	var wg sync.WaitGroup
	for _, c := range cs {
		wg.Go(func() { c.reconnect(ctx) })
	}
	wg.Wait()
	// Then everyone talks: one message each from ten of them reaches all.
	for i := range 10 {
		msg := fmt.Sprintf(`{"event":"send_message","data":{"text":"after the storm %d"}}`, i)
		cs[i*100].conn.Load().Write(ctx, websocket.MessageText, []byte(msg))
	}
	waitUntil(t, 15*time.Second-time.Since(stormAt), "all chatting again", func() bool {
		for _, c := range cs {
			if c.afterStorm.Load() < 10 {
				return false
			}
		}
		return true
	})
	took := time.Since(stormAt)

	resumed, dropped := 0, 0
	for _, c := range cs {
		if c.resumed.Load() {
			resumed++
		}
		if c.tooSlow.Load() {
			dropped++
		}
		if c.seqErr.Load() != nil {
			t.Errorf("%s: %v", c.name, c.seqErr.Load())
		}
	}
	if resumed != clients || dropped != 0 {
		t.Errorf("after the storm: %d of %d resumed, %d dropped as too slow", resumed, clients, dropped)
	}
	for _, c := range cs {
		c.conn.Load().CloseNow()
		<-c.readerDone.Load().(chan struct{})
	}
	cancel()
	<-sampler
	t.Logf("storm: %d clients back and chatting %v after losing their connections; heap peak %d MiB", clients, took.Round(time.Millisecond), heapPeak.Load()>>20)
	if heapPeak.Load() > 1<<30 {
		t.Errorf("heap peaked at %d MiB", heapPeak.Load()>>20)
	}
}

// stormClient is a minimal WebSocket client that resumes as the page does.
type stormClient struct {
	t          *testing.T
	base, name string
	sid        string
	after      atomic.Int64
	conn       atomic.Pointer[websocket.Conn]
	readerDone atomic.Value // chan struct{} of the current reader
	resumed    atomic.Bool
	tooSlow    atomic.Bool
	afterStorm atomic.Int64 // "after the storm" messages received
	seqErr     atomic.Pointer[error]
}

// connect opens (or resumes) the session and starts reading.
func (c *stormClient) connect(ctx context.Context) error {
	q := url.Values{"username": {c.name}}
	if c.sid != "" {
		q.Set("sid", c.sid)
		q.Set("after", fmt.Sprint(c.after.Load()))
	}
	dialCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	conn, _, err := websocket.Dial(dialCtx, c.base+q.Encode(), nil)
	if err != nil {
		return err
	}
	conn.SetReadLimit(-1)
	_, msg, err := conn.Read(dialCtx)
	if err != nil {
		conn.CloseNow()
		return err
	}
	var w struct{ Data struct{ SID string } }
	json.Unmarshal(msg, &w)
	if c.sid != "" {
		c.resumed.Store(bytes.Contains(msg, []byte(`"resumed":true`)))
	}
	c.sid = w.Data.SID
	c.conn.Store(conn)
	done := make(chan struct{})
	c.readerDone.Store(done)
	go func() {
		defer close(done)
		for {
			_, msg, err := conn.Read(context.Background())
			if err != nil {
				if websocket.CloseStatus(err) == websocket.StatusPolicyViolation {
					c.tooSlow.Store(true)
				}
				return
			}
			for _, e := range parseEvents(c.t, msg) {
				if e.Seq != c.after.Load()+1 {
					err := fmt.Errorf("seq %d after %d", e.Seq, c.after.Load())
					c.seqErr.Store(&err)
				}
				c.after.Store(e.Seq)
				if e.Event == "new_message" && bytes.Contains(e.Data, []byte("after the storm")) {
					c.afterStorm.Add(1)
				}
			}
		}
	}()
	return nil
}

// reconnect waits for its reader to see the loss, then comes back with
// the page's exponential backoff with jitter: 0.5–1.5 × 250 ms × 2^attempt,
// at most 5 s.
func (c *stormClient) reconnect(ctx context.Context) {
	<-c.readerDone.Load().(chan struct{})
	for attempt := 0; ctx.Err() == nil; attempt++ {
		delay := time.Duration(float64(250*time.Millisecond<<min(attempt, 4)) * (0.5 + rand.Float64()))
		select {
		case <-ctx.Done():
			return
		case <-time.After(min(delay, 5*time.Second)):
		}
		if c.connect(ctx) == nil {
			return
		}
	}
}

// waitUntil polls cond until it holds, failing the test after d.
func waitUntil(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, d)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
