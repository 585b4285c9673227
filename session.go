// Sessions: one user's presence on the server, which outlives its
// connection (PROTOCOL.md section 5).
//
// A connection is fragile: a reload, a phone changing networks, a proxy
// timing out. A session is not. It outlives its connection for a grace
// period, so a dropped network costs nothing: the client comes back with
// its sid and the last seq it processed, and gets exactly what it missed.
//
// Everything a session is told goes into its outbox (outbox.go), its last
// cfg.Outbox events numbered by seq. A transport (websocket.go, poll.go)
// attaches to the session and sends what is waiting. What makes it
// lossless: nothing leaves the outbox until it is older than cfg.Outbox
// events (or, past the outbox's byte cap, until it has been sent), so
// whatever the client missed is still there when it asks again.
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
	acks     map[int64]answered     // ack number → its answer, or the event to apply again
	ackOrder []int64                // answered ack numbers, oldest first
	rate     bucket
	grace    *time.Timer // runs while no transport is attached
	ended    bool

	// outboxMu guards the outbox and the transport reading it (the top
	// of this file says why it is a lock of its own).
	outboxMu    sync.Mutex
	outbox      eventRing // the last cfg.Outbox events, by seq (a ring: speed.go)
	outboxBytes int       // the bytes they would take to send, at most srv.outboxLimit
	lastSeq     int64     // seq of the newest event; 0 before the first
	// delivered: the client has every event up to this seq, or at least
	// it is on its way. For a WebSocket, what the writer has written; for
	// a long-poll, the `after` of the latest GET. The slow-reader rule
	// counts from here.
	delivered    int64
	progress     bell      // delivered has grown: for catchUp
	pushedBytes  int       // bytes of every event pushed, ever
	budget       float64   // bytes the session may still be pushed before its events wait (catchUp)
	budgetAt     time.Time // when budget was last brought up to date (overspent)
	budgetPushed int       // pushedBytes then
	slow         bool      // fell more than cfg.Outbox events, or outboxLimit bytes, behind
	transport    transport // nil while detached
}

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
		acks:   make(map[int64]answered),
		rate:   bucket{tokens: float64(srv.cfg.Burst), at: time.Now()},

		progress: newBell(),
		budget:   float64(srv.cfg.AnswerBurst),
		budgetAt: time.Now(),
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
	case s.ended || s.slow || after < s.lastSeq-int64(s.outbox.len()):
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
	endTooSlow       endReason = "too_slow"       // more than cfg.Outbox events, or outboxLimit bytes, behind
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
	s.outbox = eventRing{}
	s.outboxMu.Unlock()
	srv.log.Debug("session ended", "user", s.name, "why", why)
}
