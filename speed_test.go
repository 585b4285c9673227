package main

// Tests of the speed machinery (speed.go): each piece must keep what the
// chat promises, only faster or smaller.

import (
	"io"
	"net"
	"strconv"
	"testing"
	"time"
)

// TestGatheredCloseSendsGathered: what was gathered for the writer goes out
// before the connection closes. coder/websocket answers a client's close
// frame and closes at once; while the writer gathers, that answer joins the
// gathered bytes, and without this the client would never get it (it is a
// race TestClientCloseWhileStreaming hits only now and then).
func TestGatheredCloseSendsGathered(t *testing.T) {
	server, client := net.Pipe()
	c := &gatheredConn{Conn: server}
	c.gather()
	if _, err := c.Write([]byte("the answer to a close frame")); err != nil {
		t.Fatal(err)
	}
	got := make(chan string, 1)
	go func() {
		b, _ := io.ReadAll(client)
		got <- string(b)
	}()
	c.Close()
	select {
	case s := <-got:
		if s != "the answer to a close frame" {
			t.Errorf("the client read %q before the close, want the gathered answer", s)
		}
	case <-time.After(waitTimeout):
		t.Fatal("the client read nothing")
	}
}

// TestEventRing: the outbox's ring gives back its events oldest first
// across wraps and growth, and drop takes the oldest.
func TestEventRing(t *testing.T) {
	var r eventRing
	ev := func(seq int) outEvent { return outEvent{seq: int64(seq), body: []byte(strconv.Itoa(seq))} }
	held := func() []int64 {
		var seqs []int64
		for i := range r.len() {
			seqs = append(seqs, r.at(i).seq)
		}
		return seqs
	}
	next, oldest := 1, 1
	// Each round adds 3 and drops 2 (every fourth round drops none), so
	// that the ring wraps (first moves past the end) and grows, again and
	// again.
	for round := range 40 {
		for range 3 {
			r.add(ev(next))
			next++
		}
		if round%4 != 0 {
			for range 2 {
				if got := r.drop().seq; got != int64(oldest) {
					t.Fatalf("round %d: drop gave %d, want the oldest, %d", round, got, oldest)
				}
				oldest++
			}
		}
		seqs := held()
		if len(seqs) != next-oldest {
			t.Fatalf("round %d: %d held, want %d", round, len(seqs), next-oldest)
		}
		for i, seq := range seqs {
			if seq != int64(oldest+i) || string(r.at(i).body) != strconv.Itoa(oldest+i) {
				t.Fatalf("round %d: held %v, want %d to %d in order", round, seqs, oldest, next-1)
			}
		}
	}
	if len(r.events) >= 2*r.len()+8 {
		t.Errorf("the array holds %d for %d events: it grew while it had room", len(r.events), r.len())
	}
}

// TestWriterPoolBounded: at most maxParked goroutines wait for a writer to
// run; the others end at once, and the waiting ones end when the server
// closes. (That a writer's run on a waiting goroutine delivers is every
// WebSocket test's business: they all go through writerPool.)
func TestWriterPoolBounded(t *testing.T) {
	done := make(chan struct{})
	p := writerPool{next: make(chan *wsConn), done: done}
	const extra = 10
	ended := make(chan *wsConn, maxParked+extra)
	for range maxParked + extra {
		go func() { ended <- p.wait() }()
	}
	// returned is what the next goroutine to return from wait returned.
	returned := func(why string) *wsConn {
		t.Helper()
		select {
		case c := <-ended:
			return c
		case <-time.After(waitTimeout):
			t.Fatalf("no goroutine returned from wait: %s", why)
			return nil
		}
	}
	for range extra {
		if c := returned("none ended past maxParked"); c != nil {
			t.Fatalf("wait returned %v with nothing to run", c)
		}
	}
	// The pool now has maxParked waiting: a writer to run goes to one.
	waitUntil(t, waitTimeout, "maxParked waiting", func() bool { return p.parked.Load() == maxParked })
	c := &wsConn{}
	select {
	case p.next <- c:
	case <-time.After(waitTimeout):
		t.Fatal("no waiting goroutine took a writer")
	}
	if got := returned("the one that took the writer"); got != c {
		t.Fatalf("a waiting goroutine got %v, want the writer's connection", got)
	}
	close(done)
	for range maxParked - 1 {
		if c := returned("the waiting ones did not end when the server closed"); c != nil {
			t.Fatalf("wait returned %v after the close", c)
		}
	}
}
