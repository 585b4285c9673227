// Sessions: one user's presence on the server, and the outbox of numbered
// events that a transport carries to the client (PROTOCOL.md section 5).
//
// A connection is fragile: a reload, a phone changing networks, a proxy
// timing out. A session is not. It outlives its connection for a grace
// period, so a dropped network costs nothing: the client comes back with
// its sid and the last seq it processed, and gets exactly what it missed.
//
// Everything a session is told goes through push into its outbox, a list of
// its last cfg.Outbox events numbered by seq. A transport (websocket.go,
// poll.go) attaches to the session, is woken by push, and sends what is
// waiting. What makes it lossless: nothing leaves the outbox until it is
// older than cfg.Outbox events, so whatever the client missed is still
// there when it asks again. What keeps it bounded: a client that falls
// further behind than that is a slow reader, and is dropped.
//
// Locks: srv.mu guards the chat state of a session (name, rooms, acks);
// outboxMu guards its outbox and transport, so that a transport can send
// without the chat's lock. The order is always srv.mu, then outboxMu.
package main

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"maps"
	mathrand "math/rand/v2"
	"slices"
	"sync"
	"time"
)

// session is one user's presence: its sid, name and rooms, and the outbox of
// events waiting for its client. It outlives its transport for cfg.Grace.
type session struct {
	srv  *server
	sid  string // 128 random bits; a secret, never shown to others
	addr string // the client's address, for cfg.SessionsPerIP (clientAddress)

	handling sync.Mutex // held while one of its events is handled (events.go: handle)

	// The chat state of the session, guarded by srv.mu (server.go).
	name     string
	key      string // foldName(name): names are unique by it
	rooms    map[string]*room
	typing   map[string]*time.Timer // room → timer that turns typing off
	acks     map[int64][]byte       // ack number → the encoded answer
	ackOrder []int64                // answered ack numbers, oldest first
	rate     bucket
	grace    *time.Timer // runs while no transport is attached
	ended    bool

	// outboxMu guards the outbox and the transport reading it (the top
	// of this file says why it is a lock of its own).
	outboxMu    sync.Mutex
	outbox      []outEvent // the last cfg.Outbox events, by seq
	outboxBytes int        // the bytes they would take to send, at most maxOutboxBytes
	lastSeq     int64      // seq of the newest event; 0 before the first
	// delivered: the client has every event up to this seq, or at least
	// it is on its way. For a WebSocket, what the writer has written; for
	// a long-poll, the `after` of the latest GET. The slow-reader rule
	// counts from here.
	delivered int64
	progress  bell      // delivered has grown: for catchUp
	slow      bool      // fell more than cfg.Outbox events behind
	transport transport // nil while detached
}

// transport carries a session's outbox to its client: a WebSocket
// connection, or the long-poll GET waiting right now.
type transport interface {
	// wake says that events are waiting. It never blocks.
	wake()
	// stop ends the transport, telling the client why. It never blocks.
	stop(why closeReason)
}

// closeReason is why a transport is stopped: a WebSocket close code and a
// reason the client reads (PROTOCOL.md section 5). A long-poll client
// learns the same from its next GET.
type closeReason struct {
	code   int
	reason string
}

func (c closeReason) Error() string { return fmt.Sprintf("close %d: %s", c.code, c.reason) }

// The reasons a server stops a transport.
var (
	closeEnded     = closeReason{1000, "session ended"}
	closeGoingAway = closeReason{1001, "server shutting down"}
	closeTooSlow   = closeReason{1008, "too slow"}
	// closeInvalidUTF8: the client sent a message that is not UTF-8. The
	// session stays, for the client to resume.
	closeInvalidUTF8 = closeReason{1007, "invalid UTF-8"}
	closeBusy        = closeReason{1013, "server busy"}
	// closeReplaced: another transport (a new connection with the same
	// sid) took the session over. A client must not resume that sid again.
	closeReplaced = closeReason{4000, "replaced"}
)

// bell is a wake-up call: one slot, so ringing never blocks, and many
// rings while the receiver is busy wake it once.
type bell chan struct{}

func newBell() bell { return make(bell, 1) }

func (c bell) ring() {
	select {
	case c <- struct{}{}:
	default: // already rung: the receiver will see everything anyway
	}
}

// maxOutboxBytes bounds the bytes an outbox keeps, whatever the number of
// events: a room_joined carries a room's history, and a client joining a
// full room again and again would otherwise pin 256 of them. It holds a
// few full histories (100 messages of 2,000 characters are 200-800 KiB).
const maxOutboxBytes = 4 << 20

// Why a session cannot be opened or resumed.
var (
	errServerBusy     = &chatError{"server_busy", "too many sessions: try again later"}
	errAddressBusy    = &chatError{"server_busy", "too many sessions from your address: try again later"}
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
// invalid or taken) for a client at addr, and joins it to general. With a
// transport t it attaches t at once; without one (a long-poll session,
// which has no GET yet) the grace period starts.
func (srv *server) openSession(wanted, addr string, t transport) (*session, error) {
	srv.mu.Lock()
	defer srv.mu.Unlock()
	if srv.closed {
		return nil, errShuttingDown
	}
	if len(srv.sessions) >= srv.cfg.MaxSessions {
		return nil, errServerBusy
	}
	// One client must not take every session for itself: sessions cost a
	// request every cfg.Grace to keep, and nothing to make.
	if srv.perAddr[addr] >= srv.cfg.SessionsPerIP {
		return nil, errAddressBusy
	}
	srv.perAddr[addr]++
	s := &session{
		srv:    srv,
		sid:    newSID(),
		addr:   addr,
		rooms:  make(map[string]*room),
		typing: make(map[string]*time.Timer),
		acks:   make(map[int64][]byte),
		rate:   bucket{tokens: float64(srv.cfg.Burst), at: time.Now()},

		progress: newBell(),
	}
	name, err := validUsername(wanted)
	if err != nil || srv.names[foldName(name)] != nil {
		name = srv.guestName()
	}
	s.name, s.key = name, foldName(name)
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

// continueSession attaches t to the session sid, to send the events after
// `after`: a WebSocket that resumes, and every long-poll GET. It fails with errUnknownSession when there is no such session or
// its outbox no longer holds those events; in the second case it ends the
// session, so that the client, starting over, finds its name free. A cursor
// beyond the last event (errCursorAhead) is a client's mistake: the session
// is left alone.
func (srv *server) continueSession(sid string, after int64, t transport) (*session, error) {
	srv.mu.Lock()
	defer srv.mu.Unlock()
	if srv.closed {
		return nil, errShuttingDown
	}
	s := srv.sessions[sid]
	if s == nil {
		return nil, errUnknownSession
	}
	err := srv.attach(s, t, after)
	if errors.Is(err, errUnknownSession) {
		srv.endSession(s, endRefusedResume)
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
		s.transport.stop(closeReplaced)
		srv.metrics.replaced.Add(1)
	}
	s.transport = t
	s.delivered = after
	s.progress.ring()
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
	defer srv.mu.Unlock()
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
		defer srv.mu.Unlock()
		if s.grace == t { // not stopped or restarted since
			srv.endSession(s, endGrace)
		}
	})
	s.grace = t
}

func stopTimer(t *time.Timer) {
	if t != nil {
		t.Stop()
	}
}

// endReason is why a session ended: the log says it, and /metrics counts
// the ends by it. (A replaced transport ends no session: it goes on.)
type endReason string

const (
	endGrace         endReason = "grace"          // no transport for cfg.Grace
	endTooSlow       endReason = "too_slow"       // more than cfg.Outbox events behind
	endRefusedResume endReason = "refused_resume" // a resume whose events are gone
)

// endSession removes the session: it leaves every room (user_left to the
// others), its name is free again, and its transport is stopped. srv.mu is
// held.
func (srv *server) endSession(s *session, why endReason) {
	if s.ended {
		return
	}
	s.ended = true
	srv.metrics.ended.add(string(why))
	stopTimer(s.grace)
	for _, name := range slices.Sorted(maps.Keys(s.rooms)) {
		srv.leave(s, s.rooms[name])
	}
	delete(srv.sessions, s.sid)
	delete(srv.names, s.key)
	if srv.perAddr[s.addr]--; srv.perAddr[s.addr] == 0 {
		delete(srv.perAddr, s.addr)
	}
	s.outboxMu.Lock()
	if s.transport != nil {
		s.transport.stop(closeEnded)
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
// never holds back anyone else, and the session is ended by dropSlow.
func (s *session) push(body []byte) {
	s.pushEvent(outEvent{body: body})
}

// pushEvent is push for an event in parts (wire.go, outEvent); its seq is
// given here.
func (s *session) pushEvent(e outEvent) {
	s.outboxMu.Lock()
	defer s.outboxMu.Unlock()
	if s.slow || s.ended {
		return
	}
	s.lastSeq++
	e.seq = s.lastSeq
	s.outbox = append(s.outbox, e)
	s.outboxBytes += e.size()
	// Keep the last cfg.Outbox events, and of those no more than
	// maxOutboxBytes: past that, the oldest sent ones go even if there are
	// fewer (a resume from before them then starts a new session).
	for len(s.outbox) > s.srv.cfg.Outbox || s.outboxBytes > maxOutboxBytes && s.outbox[0].seq <= s.delivered {
		s.outboxBytes -= s.outbox[0].size()
		s.outbox = s.outbox[1:]
	}
	if s.lastSeq-s.delivered > int64(s.srv.cfg.Outbox) || s.outboxBytes > maxOutboxBytes {
		s.slow = true
		if s.transport != nil {
			s.transport.stop(closeTooSlow)
		}
		go s.srv.dropSlow(s)
		return
	}
	if s.transport != nil {
		s.transport.wake()
	}
}

// dropSlow ends a session that fell behind. It runs on a goroutine of its
// own, once per session, as soon as srv.mu is free: push cannot end the
// session itself, because its caller may be halfway through a room's
// members, and they must all see the same events in the same order.
func (srv *server) dropSlow(s *session) {
	srv.mu.Lock()
	defer srv.mu.Unlock()
	srv.endSession(s, endTooSlow)
}

// appendEvents appends to buf the events after seq `after`, as one JSON
// value: the envelope alone when there is one and array is false, else a
// JSON array. It returns the new buffer and the seq of the last event.
// Once the session has ended there is nothing to send: its transport has
// been stopped. (One that fell behind keeps its events, for a resume that
// is refused.)
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
		buf = e.append(buf)
	}
	if array {
		buf = append(buf, ']')
	}
	return buf, after + int64(n)
}

// catchUp holds the client's next event back while its transport is far
// behind: a client that sends a long batch of events (each answered, or
// each refused by the rate limit and answered; a join_room answered with a
// room's whole history, twice) must not fall behind on its own answers and
// be dropped as too slow. Like TCP's flow control, the client is slowed to
// the pace at which it reads. It waits at most writeWait, or until done: a
// client that does not read at all is the slow-reader rule's business.
func (s *session) catchUp(done <-chan struct{}) {
	deadline := time.NewTimer(writeWait)
	defer deadline.Stop()
	for s.farBehind() {
		select {
		case <-s.progress:
		case <-done:
			return
		case <-deadline.C:
			return
		}
	}
}

// farBehind reports whether the transport is more than half way to the
// slow-reader rule: more than half of cfg.Outbox events, or more than a
// quarter of maxOutboxBytes, wait for it. (A quarter: one join_room alone
// may add two copies of a full room's history, its room_joined and its ack.)
func (s *session) farBehind() bool {
	s.outboxMu.Lock()
	defer s.outboxMu.Unlock()
	n := s.lastSeq - s.delivered
	if n > int64(s.srv.cfg.Outbox/2) {
		return true
	}
	bytes := 0
	for _, e := range s.outbox[max(0, len(s.outbox)-int(n)):] {
		bytes += e.size()
	}
	return bytes > maxOutboxBytes/4
}

// markDelivered records that transport t has sent every event up to seq,
// unless t has been replaced meanwhile.
func (s *session) markDelivered(t transport, seq int64) {
	s.outboxMu.Lock()
	if s.transport == t {
		s.delivered = max(s.delivered, seq)
		s.progress.ring()
	}
	s.outboxMu.Unlock()
}
