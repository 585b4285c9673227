// Long-polling: the same sessions over plain HTTP, for networks where a
// proxy or firewall blocks WebSockets (PROTOCOL.md section 6).
//
// HTTP cannot push: the server only ever answers. Long-polling turns that
// around by asking in advance. The client sends GET /poll and the server
// simply does not answer until it has something to say (or until
// cfg.PollTimeout passes, when it answers [] and the client asks again). An
// answer the moment an event exists is as good as a push; the client then
// asks again at once. What the client says goes the other way, in ordinary
// POSTs.
//
// What makes it lossless is the cursor. Every GET carries after=N, the
// highest seq the client has processed. The server answers every event of
// the session's outbox (outbox.go) with a larger seq, and forgets nothing
// until a later GET says the client has it. A response lost on the way is
// no loss: the next GET still says after=N and gets the same events again.
//
// A long-poll GET is a transport like a WebSocket connection: while it
// waits it is attached to the session, and push wakes it. Between GETs the
// session is detached and its grace timer runs, exactly as when a WebSocket
// drops; a client that stops polling for longer than cfg.Grace is gone.
package main

import (
	"errors"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"
)

// pollWait is one GET /poll waiting for a session's events: the session's
// transport while it waits.
type pollWait struct {
	ready    bell          // "the outbox has events"
	done     chan struct{} // closed by stop
	once     sync.Once
	replaced atomic.Bool // a newer transport took over: answer [] at once
}

// wake rings the GET that is waiting in servePollReceive, on its own
// request's goroutine (transport.wake). If no GET is waiting, the events
// stay in the outbox, and the next GET's attach finds them.
func (p *pollWait) wake() { p.ready.ring() }

func (p *pollWait) stop(why closeReason) {
	if why == closeReplaced {
		p.replaced.Store(true)
	}
	p.once.Do(func() { close(p.done) })
}

// servePollSend is POST /poll. Without a sid it opens a session and answers
// its welcome; with one it applies the events in the body, in order.
func (srv *server) servePollSend(w http.ResponseWriter, r *http.Request) {
	if srv.crossSite(r) {
		writeError(w, http.StatusForbidden, badRequest("cross-site request refused"))
		return
	}
	sid := r.URL.Query().Get("sid")
	if sid == "" {
		s, err := srv.openSession(r.URL.Query().Get("username"), srv.clientAddress(r), nil)
		if err != nil {
			writeError(w, http.StatusServiceUnavailable, toChatError(err))
			return
		}
		welcome := srv.encodeWelcome(s, false)
		writeRawJSON(w, http.StatusOK, welcome)
		srv.metrics.written.Add(int64(len(welcome)))
		return
	}

	s := srv.findSession(sid)
	if s == nil {
		writeError(w, http.StatusNotFound, errUnknownSession)
		return
	}
	// A request in progress keeps the session, whatever its answer: the
	// grace period starts again when it begins and when it ends.
	srv.keepAlive(s)
	defer srv.keepAlive(s)
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxPollBody))
	var tooLarge *http.MaxBytesError
	if errors.As(err, &tooLarge) {
		writeError(w, http.StatusRequestEntityTooLarge, &chatError{"too_large", "a request body is at most 64 KiB"})
		return
	} else if err != nil {
		writeError(w, http.StatusBadRequest, badRequest("the body could not be read"))
		return
	}
	if !utf8.Valid(body) {
		writeError(w, http.StatusBadRequest, badRequest("the body is not valid UTF-8")) // nothing applied
		return
	}
	list, bad := splitEnvelopes(body)
	if bad != nil {
		writeError(w, http.StatusBadRequest, bad) // nothing applied
		return
	}
	// The answers (acks, errors) go into the outbox like every event: the
	// client reads them with its next GET. The POST itself answers 204.
	for i, raw := range list {
		s.waitBudget(r.Context().Done())
		if srv.handle(s, raw) {
			continue
		}
		// The session ended meanwhile (it fell behind, say), or the server
		// is shutting down. What was applied stays applied, and the next GET
		// tells the client where it stands; if nothing was, say why now.
		if i == 0 && srv.ctx.Err() != nil {
			writeError(w, http.StatusServiceUnavailable, errShuttingDown)
			return
		}
		if i == 0 {
			writeError(w, http.StatusNotFound, errUnknownSession)
			return
		}
		break
	}
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusNoContent)
}

// servePollReceive is GET /poll?sid=S&after=N: it answers every event after
// N, waiting up to cfg.PollTimeout for the first one.
func (srv *server) servePollReceive(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	after, err := parseSeq(q.Get("after"))
	if err != nil {
		writeError(w, http.StatusBadRequest, badRequest("after must be a seq number"))
		return
	}
	if !srv.track() {
		writeRawJSON(w, http.StatusOK, []byte("[]")) // shutting down
		return
	}
	defer srv.conns.Done()

	// Attaching also acknowledges: the client has every event up to after.
	p := &pollWait{ready: newBell(), done: make(chan struct{})}
	s, err := srv.continueSession(q.Get("sid"), after, p)
	switch {
	case err == nil:
	case errors.Is(err, errCursorAhead):
		writeError(w, http.StatusBadRequest, errCursorAhead)
		return
	case errors.Is(err, errShuttingDown):
		writeRawJSON(w, http.StatusOK, []byte("[]"))
		return
	default: // gone, or the events after `after` are
		writeError(w, http.StatusNotFound, errUnknownSession)
		return
	}
	defer srv.detach(s, p) // the grace period starts when the answer goes
	srv.metrics.polling.Add(1)
	defer srv.metrics.polling.Add(-1)

	timeout := time.NewTimer(srv.cfg.PollTimeout)
	defer timeout.Stop()
	srv.log.Debug("long-poll waiting", "after", after)
	select {
	case <-p.ready: // events are waiting: answer now
	case <-p.done: // replaced, ended or shutting down
	case <-timeout.C:
	case <-srv.ctx.Done():
	case <-r.Context().Done(): // the client went away
		return
	}

	var events []outEvent // none, and the answer is [], once replaced
	last := after
	if !p.replaced.Load() {
		events, last = s.waiting(nil, after, 0)
	}
	// Written from the outbox's own bytes (writeEvents; net/http buffers
	// the small parts): a client that does not read holds no copy of its
	// answer. A failed write loses nothing: the client asks again from the
	// same after.
	jsonHeaders(w)
	w.WriteHeader(http.StatusOK)
	n, _ := writeEvents(w, events, true)
	srv.metrics.written.Add(int64(n))
	srv.metrics.delivered.Add(last - after)
}

// findSession returns the live session sid, or nil.
func (srv *server) findSession(sid string) *session {
	srv.mu.Lock()
	defer srv.mu.Unlock()
	return srv.sessions[sid]
}

// keepAlive restarts the grace period of a session with no transport: a
// POST is a request in progress too.
func (srv *server) keepAlive(s *session) {
	srv.mu.Lock()
	defer srv.mu.Unlock()
	s.outboxMu.Lock()
	detached := s.transport == nil
	s.outboxMu.Unlock()
	if detached && !s.ended {
		srv.startGrace(s)
	}
}
