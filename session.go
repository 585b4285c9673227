// Sessions: one user's presence on the server, and the outbox of numbered
// events that a transport carries to the client.
//
// A session outlives its connection for a grace period, so a reload or a
// dropped network costs nothing: the client comes back with its sid and the
// last seq it processed, and gets exactly what it missed. Everything a
// session is told goes through push into its outbox; a transport (chat.go's
// WebSocket, poll.go's long-poll) attaches to the session, is woken by push,
// and sends what is waiting. Producing an event never waits on a network.
package main

import (
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"maps"
	mathrand "math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"
)

// session is one user's presence: its sid, name and rooms, and the outbox of
// events waiting for its client. It outlives its transport for cfg.Grace.
type session struct {
	srv *server
	sid string // 128 random bits; a secret, never shown to others

	// Guarded by srv.mu.
	name     string
	rooms    map[string]*room
	typing   map[string]*time.Timer // room → timer that turns typing off
	acks     map[int64][]byte       // ack number → the encoded answer
	ackOrder []int64                // answered ack numbers, oldest first
	rate     bucket
	grace    *time.Timer // runs while no transport is attached
	ended    bool

	// mu guards the outbox and the transport reading it. Lock order:
	// srv.mu before s.mu, never the other way round.
	mu        sync.Mutex
	outbox    []outEvent // the last cfg.Outbox events, by seq
	lastSeq   int64      // seq of the newest event; 0 before the first
	delivered int64      // the client has (or was sent) every seq up to this
	slow      bool       // fell more than cfg.Outbox events behind
	transport transport  // nil while detached
}

// outEvent is one event in an outbox. body is the envelope without its seq:
// `{"event":…,"data":…,"seq":`. A broadcast shares one body among all the
// members' outboxes; the writer appends the number and the closing brace.
type outEvent struct {
	seq  int64
	body []byte
}

// transport carries a session's outbox to its client: a WebSocket
// connection, or the long-poll GET waiting right now.
type transport interface {
	// wake says that events are waiting. It never blocks.
	wake()
	// stop ends the transport, telling the client why (a WebSocket close
	// code and reason). It never blocks.
	stop(code websocket.StatusCode, reason string)
}

// newSID returns 128 random bits, URL-safe encoded.
func newSID() string {
	b := make([]byte, 16)
	rand.Read(b) // never fails (crypto/rand panics rather than fail)
	return base64.RawURLEncoding.EncodeToString(b)
}

// errServerBusy is returned by openSession when cfg.MaxSessions are live.
var errServerBusy = &chatError{"server_busy", "too many sessions: try again later"}

// openSession starts a session named wanted (or guest-NNNN when that name is
// invalid or taken), joins it to general, and leaves it detached: the caller
// attaches a transport or the grace timer ends it.
func (srv *server) openSession(wanted string) (*session, error) {
	srv.mu.Lock()
	defer srv.mu.Unlock()
	if srv.closed || len(srv.sessions) >= srv.cfg.MaxSessions {
		return nil, errServerBusy
	}
	s := &session{
		srv:    srv,
		sid:    newSID(),
		rooms:  make(map[string]*room),
		typing: make(map[string]*time.Timer),
		acks:   make(map[int64][]byte),
		rate:   bucket{tokens: float64(srv.cfg.Burst), at: time.Now()},
	}
	name, err := validUsername(wanted)
	if err != nil || srv.names[strings.ToLower(name)] != nil {
		name = srv.guestName()
	}
	s.name = name
	srv.sessions[s.sid] = s
	srv.names[strings.ToLower(name)] = s
	srv.startGrace(s)
	srv.join(s, defaultRoomName, 0) // cannot fail: a new session has no rooms
	return s, nil
}

// guestName returns a free guest-NNNN name.
func (srv *server) guestName() string {
	for digits := 4; ; digits++ {
		for range 20 {
			name := fmt.Sprintf("guest-%0*d", digits, mathrand.IntN(pow10(digits)))
			if srv.names[name] == nil {
				return name
			}
		}
	}
}

func pow10(n int) int {
	p := 1
	for range n {
		p *= 10
	}
	return p
}

// resumeSession finds the session sid and attaches t to it, if its outbox
// still holds every event after `after`. Otherwise it ends that session (the
// client starts over, and must find its name free) and returns nil.
func (srv *server) resumeSession(sid string, after int64, t transport) *session {
	srv.mu.Lock()
	defer srv.mu.Unlock()
	s := srv.sessions[sid]
	if s == nil || srv.closed {
		return nil
	}
	if !srv.attach(s, t, after) {
		srv.endSession(s, "cannot resume")
		return nil
	}
	return s
}

// attach makes t the session's transport, replacing (code 4000) any other,
// and sends from seq after+1 on. It reports false when the outbox no longer
// holds all of those events. srv.mu is held.
func (srv *server) attach(s *session, t transport, after int64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ended || s.slow || after > s.lastSeq || after < s.lastSeq-int64(len(s.outbox)) {
		return false
	}
	if s.transport != nil && s.transport != t {
		s.transport.stop(4000, "replaced")
	}
	s.transport = t
	s.delivered = after
	stopTimer(s.grace)
	s.grace = nil
	if after < s.lastSeq {
		t.wake()
	}
	return true
}

// detach removes t from the session, if it is still the session's
// transport, and starts the grace period.
func (srv *server) detach(s *session, t transport) {
	srv.mu.Lock()
	defer srv.mu.Unlock()
	s.mu.Lock()
	current := s.transport == t
	if current {
		s.transport = nil
	}
	s.mu.Unlock()
	if current && !s.ended {
		srv.startGrace(s)
	}
}

// startGrace (re)starts the timer that ends a detached session after
// cfg.Grace. srv.mu is held.
func (srv *server) startGrace(s *session) {
	stopTimer(s.grace)
	if srv.closed {
		return
	}
	var t *time.Timer
	t = time.AfterFunc(srv.cfg.Grace, func() {
		srv.mu.Lock()
		defer srv.mu.Unlock()
		if s.grace == t { // not stopped or restarted since
			srv.endSession(s, "grace period over")
		}
	})
	s.grace = t
}

func stopTimer(t *time.Timer) {
	if t != nil {
		t.Stop()
	}
}

// endSession removes the session: it leaves every room (user_left to the
// others), its name is free again, and its transport is stopped. srv.mu is
// held.
func (srv *server) endSession(s *session, why string) {
	if s.ended {
		return
	}
	s.ended = true
	stopTimer(s.grace)
	for _, name := range slices.Sorted(maps.Keys(s.rooms)) {
		srv.leave(s, s.rooms[name])
	}
	delete(srv.sessions, s.sid)
	delete(srv.names, strings.ToLower(s.name))
	s.mu.Lock()
	if s.transport != nil {
		s.transport.stop(websocket.StatusNormalClosure, "session ended")
		s.transport = nil
	}
	s.outbox = nil
	s.mu.Unlock()
	srv.log.Debug("session ended", "user", s.name, "why", why)
}

// push appends one event to the outbox and wakes the transport. It never
// waits. A session that falls more than cfg.Outbox events behind its client
// is a slow reader: its transport is closed (1008, "too slow") and the
// session ends, so that it never holds back anyone else.
func (s *session) push(body []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.slow || s.ended { // s.ended: the caller holds srv.mu
		return
	}
	s.lastSeq++
	s.outbox = append(s.outbox, outEvent{s.lastSeq, body})
	if keep := s.srv.cfg.Outbox; len(s.outbox) > keep {
		s.outbox = s.outbox[len(s.outbox)-keep:]
	}
	if s.lastSeq-s.delivered > int64(s.srv.cfg.Outbox) {
		s.slow = true
		if s.transport != nil {
			s.transport.stop(websocket.StatusPolicyViolation, "too slow")
		}
		// The caller holds srv.mu, and may be walking a room's members:
		// end the session as soon as it lets go.
		go func() {
			s.srv.mu.Lock()
			defer s.srv.mu.Unlock()
			s.srv.endSession(s, "too slow")
		}()
		return
	}
	if s.transport != nil {
		s.transport.wake()
	}
}

// appendEvents appends to buf the events after seq `after`, as one JSON
// value: the envelope alone when there is one and array is false, else a
// JSON array. It returns the new buffer and the seq of the last event.
func (s *session) appendEvents(buf []byte, after int64, array bool) ([]byte, int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := int(s.lastSeq - after)
	if n > len(s.outbox) { // only when ended or slow: nothing to send
		n = 0
	}
	array = array || n > 1
	if array {
		buf = append(buf, '[')
	}
	for i, e := range s.outbox[len(s.outbox)-n:] {
		if i > 0 {
			buf = append(buf, ',')
		}
		buf = append(buf, e.body...)
		buf = strconv.AppendInt(buf, e.seq, 10)
		buf = append(buf, '}')
	}
	if array {
		buf = append(buf, ']')
	}
	return buf, after + int64(n)
}

// markDelivered records that the client has every event up to seq.
func (s *session) markDelivered(seq int64) {
	s.mu.Lock()
	s.delivered = max(s.delivered, seq)
	s.mu.Unlock()
}

// bucket is a token bucket: cfg.Rate tokens a second, at most cfg.Burst.
type bucket struct {
	tokens float64
	at     time.Time
}

// take reports whether one event may pass now.
func (b *bucket) take(rate float64, burst int, now time.Time) bool {
	b.tokens = min(float64(burst), b.tokens+now.Sub(b.at).Seconds()*rate)
	b.at = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}
