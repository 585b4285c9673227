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

	// The chat state of the session, guarded by srv.mu (chat.go).
	name     string
	key      string // strings.ToLower(name): names are unique by it
	rooms    map[string]*room
	typing   map[string]*time.Timer // room → timer that turns typing off
	acks     map[int64][]byte       // ack number → the encoded answer
	ackOrder []int64                // answered ack numbers, oldest first
	rate     bucket
	grace    *time.Timer // runs while no transport is attached
	ended    bool

	// outboxMu guards the outbox and the transport reading it, so that a
	// transport can send without touching the chat state. Lock order:
	// srv.mu before outboxMu, never the other way round.
	outboxMu    sync.Mutex
	outbox      []outEvent // the last cfg.Outbox events, by seq
	outboxBytes int        // the bytes of their bodies, at most maxOutboxBytes
	lastSeq     int64      // seq of the newest event; 0 before the first
	// delivered: the client has every event up to this seq, or at least
	// it is on its way. For a WebSocket, what the writer has written; for
	// a long-poll, the `after` of the latest GET. The slow-reader rule
	// counts from here.
	delivered int64
	slow      bool      // fell more than cfg.Outbox events behind
	transport transport // nil while detached
}

// outEvent is one event in an outbox: the envelope without its seq,
// `{"event":…,"data":…,"seq":`, is body followed by shared (mostly nil;
// encodeJoined uses it). A broadcast shares one body among all the
// members' outboxes; the writer appends the number and the closing brace.
type outEvent struct {
	seq    int64
	body   []byte
	shared []byte // the end of the envelope, kept once for many outboxes
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

// wakeup is a transport's wake-up call: one slot, so sending never blocks
// and many pushes while the transport is busy wake it once.
type wakeup chan struct{}

func (c wakeup) wake() {
	select {
	case c <- struct{}{}:
	default: // already signalled: the transport will see every event anyway
	}
}

// maxOutboxBytes bounds the bytes an outbox keeps, whatever the number of
// events: a room_joined carries a room's history, and a client joining a
// full room again and again would otherwise pin 256 of them. It holds a
// few full histories (100 messages of 2,000 characters are 200-800 KiB).
const maxOutboxBytes = 4 << 20

// statusReplaced closes a transport that another one (a new connection with
// the same sid) has taken over. A client must not resume that sid again.
const statusReplaced websocket.StatusCode = 4000

// Why a session cannot be opened or resumed.
var (
	errServerBusy     = &chatError{"server_busy", "too many sessions: try again later"}
	errShuttingDown   = &chatError{"server_busy", "the server is shutting down: try again in a moment"}
	errUnknownSession = &chatError{"unknown_session", "no such session: it expired or never was; open a new one"}
	errCursorAhead    = badRequest("after is beyond the last event of this session")
)

// newSID returns 128 random bits, URL-safe encoded.
func newSID() string {
	b := make([]byte, 16)
	rand.Read(b) // never fails (crypto/rand panics rather than fail)
	return base64.RawURLEncoding.EncodeToString(b)
}

// openSession starts a session named wanted (or guest-NNNN when that name is
// invalid or taken) and joins it to general. With a transport t it attaches
// t at once; without one (a long-poll session, which has no GET yet) the
// grace period starts.
func (srv *server) openSession(wanted string, t transport) (*session, error) {
	srv.mu.Lock()
	defer srv.unlock()
	if srv.closed {
		return nil, errShuttingDown
	}
	if len(srv.sessions) >= srv.cfg.MaxSessions {
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
	s.name, s.key = name, strings.ToLower(name)
	srv.sessions[s.sid] = s
	srv.names[s.key] = s
	if t != nil {
		srv.attach(s, t, 0)
	} else {
		srv.startGrace(s)
	}
	srv.join(s, defaultRoomName, 0) // cannot fail: a new session has no rooms
	return s, nil
}

// guestName returns a free guest-NNNN name (more digits if those run out).
func (srv *server) guestName() string {
	for digits, limit := 4, 10000; ; digits, limit = digits+1, limit*10 {
		for range 20 {
			name := fmt.Sprintf("guest-%0*d", digits, mathrand.IntN(limit))
			if srv.names[name] == nil {
				return name
			}
		}
	}
}

// resumeSession attaches t to the session sid, to send the events after
// `after`. It fails with errUnknownSession when there is no such session or
// its outbox no longer holds those events; in the second case it ends the
// session, so that the client, starting over, finds its name free. A cursor
// beyond the last event (errCursorAhead) is a client's mistake: the session
// is left alone.
func (srv *server) resumeSession(sid string, after int64, t transport) (*session, error) {
	srv.mu.Lock()
	defer srv.unlock()
	if srv.closed {
		return nil, errShuttingDown
	}
	s := srv.sessions[sid]
	if s == nil {
		return nil, errUnknownSession
	}
	err := srv.attach(s, t, after)
	if err == errUnknownSession {
		srv.endSession(s, "cannot resume")
	}
	if err != nil {
		return nil, err
	}
	return s, nil
}

// attach makes t the session's transport, replacing (code 4000) any other,
// and sends from seq after+1 on. It fails when the outbox no longer holds
// all of those events. srv.mu is held.
func (srv *server) attach(s *session, t transport, after int64) error {
	s.outboxMu.Lock()
	defer s.outboxMu.Unlock()
	switch {
	case after > s.lastSeq:
		return errCursorAhead
	case s.ended || s.slow || after < s.lastSeq-int64(len(s.outbox)):
		return errUnknownSession
	}
	if s.transport != nil && s.transport != t {
		s.transport.stop(statusReplaced, "replaced")
	}
	s.transport = t
	s.delivered = after
	stopTimer(s.grace)
	s.grace = nil
	if after < s.lastSeq {
		t.wake()
	}
	return nil
}

// detach removes t from the session, if it is still the session's
// transport, and starts the grace period.
func (srv *server) detach(s *session, t transport) {
	srv.mu.Lock()
	defer srv.unlock()
	s.outboxMu.Lock()
	current := s.transport == t
	if current {
		s.transport = nil
	}
	s.outboxMu.Unlock()
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
		defer srv.unlock()
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
	delete(srv.names, s.key)
	s.outboxMu.Lock()
	if s.transport != nil {
		s.transport.stop(websocket.StatusNormalClosure, "session ended")
		s.transport = nil
	}
	s.outbox = nil
	s.outboxMu.Unlock()
	srv.log.Debug("session ended", "user", s.name, "why", why)
}

// push appends one event to the outbox and wakes the transport. It never
// waits. srv.mu is held.
//
// A session that falls more than cfg.Outbox events behind its client is a
// slow reader: its transport is closed at once (1008, "too slow") so that it
// never holds back anyone else, and the session ends when the caller lets go
// of srv.mu (srv.unlock). Not here: the caller may be halfway through a
// room's members, and the others must all see the same order of events.
func (s *session) push(body []byte) {
	s.pushShared(body, nil)
}

// pushShared is push for an event in two parts: body, then shared.
func (s *session) pushShared(body, shared []byte) {
	s.outboxMu.Lock()
	defer s.outboxMu.Unlock()
	if s.slow || s.ended {
		return
	}
	s.lastSeq++
	s.outbox = append(s.outbox, outEvent{s.lastSeq, body, shared})
	s.outboxBytes += len(body) + len(shared)
	// Keep the last cfg.Outbox events, and of those no more than
	// maxOutboxBytes: past that, the oldest sent ones go even if there are
	// fewer (a resume from before them then starts a new session).
	for len(s.outbox) > s.srv.cfg.Outbox || s.outboxBytes > maxOutboxBytes && s.outbox[0].seq <= s.delivered {
		s.outboxBytes -= len(s.outbox[0].body) + len(s.outbox[0].shared)
		s.outbox = s.outbox[1:]
	}
	if s.lastSeq-s.delivered > int64(s.srv.cfg.Outbox) || s.outboxBytes > maxOutboxBytes {
		s.slow = true
		if s.transport != nil {
			s.transport.stop(websocket.StatusPolicyViolation, "too slow")
		}
		s.srv.dropping = append(s.srv.dropping, s)
		return
	}
	if s.transport != nil {
		s.transport.wake()
	}
}

// appendEvents appends to buf the events after seq `after`, as one JSON
// value: the envelope alone when there is one and array is false, else a
// JSON array. It returns the new buffer and the seq of the last event.
// Once the session has ended (or fell behind) there is nothing to send:
// its transport has been stopped.
func (s *session) appendEvents(buf []byte, after int64, array bool) ([]byte, int64) {
	s.outboxMu.Lock()
	defer s.outboxMu.Unlock()
	n := int(s.lastSeq - after)
	if n > len(s.outbox) {
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
		buf = append(buf, e.shared...)
		buf = strconv.AppendInt(buf, e.seq, 10)
		buf = append(buf, '}')
	}
	if array {
		buf = append(buf, ']')
	}
	return buf, after + int64(n)
}

// unsent is how many events wait for the transport.
func (s *session) unsent() int64 {
	s.outboxMu.Lock()
	defer s.outboxMu.Unlock()
	return s.lastSeq - s.delivered
}

// markDelivered records that transport t has sent every event up to seq,
// unless t has been replaced meanwhile.
func (s *session) markDelivered(t transport, seq int64) {
	s.outboxMu.Lock()
	if s.transport == t {
		s.delivered = max(s.delivered, seq)
	}
	s.outboxMu.Unlock()
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
