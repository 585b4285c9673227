// The outbox: how events reach a session's client, and what happens when
// the client does not keep up (PROTOCOL.md section 5).
//
// Everything a session is told goes through push: the event gets the
// session's next seq and joins the outbox, and the session's transport, if
// one is attached, is woken (websocket.go, poll.go). Pushing never waits:
// the chat's lock is held, and a room's fan-out must not be held up by its
// slowest member. The transport sends what is waiting at its own pace and
// records how far it got (markDelivered).
//
// The outbox keeps the last cfg.Outbox events, sent or not, so that a
// client that lost its connection gets them again when it resumes. A
// client that falls further behind than that is a slow reader: its
// transport is closed (1008, "too slow") and its session ends, instead of
// the server holding its events for ever. A client's own flood of events
// slows it instead (catchUp), like TCP's flow control, so that only a
// client that does not read is dropped; and so does a client that has
// asked for more bytes than its budget (a room's whole history, again and
// again).
package main

import (
	"fmt"
	"time"
)

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
// few full histories (100 messages of 2,000 characters are 200 KiB-1.2 MB
// once encoded); with a longer -history, outboxLimit holds three.
const maxOutboxBytes = 4 << 20

// maxMessageBytes is the most one stored message takes once encoded: 2,000
// characters that JSON writes as \u0001 each, and the other fields.
const maxMessageBytes = 6*maxText + 256

// outboxLimit is the bytes an outbox of this server keeps: maxOutboxBytes,
// or three full histories if that is more, so that a client joining a full
// room (its room_joined and its ack each carry the history) is never too
// slow for that alone.
func outboxLimit(cfg config) int {
	return max(maxOutboxBytes, 3*cfg.History*maxMessageBytes)
}

// push appends one event, encoded without its seq (wire.go), to the outbox
// and wakes the transport. It never waits. srv.mu is held.
func (s *session) push(body []byte) {
	s.pushEvent(outEvent{body: body})
}

// pushEvent is push for an event in parts (wire.go, outEvent); its seq is
// given here.
//
// A session that falls more than cfg.Outbox events, or outboxLimit bytes,
// behind its client is a slow reader: its transport is closed at once
// (1008, "too slow") so that it never holds back anyone else, and the
// session is ended by dropSlow.
func (s *session) pushEvent(e outEvent) {
	s.outboxMu.Lock()
	defer s.outboxMu.Unlock()
	if s.slow || s.ended {
		return
	}
	s.lastSeq++
	e.seq = s.lastSeq
	size := e.size()
	// Keep the last cfg.Outbox events, and of those no more than
	// outboxLimit: past that, the oldest sent ones go even if there are
	// fewer (a resume from before them then starts a new session).
	if s.outbox.len() == s.srv.cfg.Outbox {
		s.outboxBytes -= s.outbox.drop().size()
	}
	s.outbox.add(e)
	s.outboxBytes += size
	s.pushedBytes += size // spends the budget (overspent)
	for s.outboxBytes > s.srv.outboxLimit && s.outbox.at(0).seq <= s.delivered {
		s.outboxBytes -= s.outbox.drop().size()
	}
	if s.lastSeq-s.delivered > int64(s.srv.cfg.Outbox) || s.outboxBytes > s.srv.outboxLimit {
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

// waiting appends to events the events after seq `after`, oldest first,
// and returns them with the seq of the last. Beyond the first, it stops
// before the one that would take them past limit bytes (0: no limit). The
// events share their bytes with the outbox: nothing is copied, and the
// transport sends them with appendEvents or writeEvents (wire.go). None
// are returned once those after `after` are no longer kept: the session
// then has a slow reader, and its transport has been stopped.
func (s *session) waiting(events []outEvent, after int64, limit int) ([]outEvent, int64) {
	s.outboxMu.Lock()
	defer s.outboxMu.Unlock()
	n := int(s.lastSeq - after)
	if n > s.outbox.len() {
		return events, after
	}
	size := 0
	for i := s.outbox.len() - n; i < s.outbox.len(); i++ {
		e := s.outbox.at(i)
		if limit > 0 && size > 0 && size+e.size() > limit {
			break
		}
		size += e.size()
		events = append(events, e)
		after = e.seq
	}
	return events, after
}

// catchUp holds the client's next event back while its transport is far
// behind: a client that sends a long batch of events (each answered, or
// each refused by the rate limit and answered; a join_room answered with a
// room's whole history, twice) must not fall behind on its own answers and
// be dropped as too slow. Like TCP's flow control, the client is slowed to
// the pace at which it reads. It also waits while the session has spent its
// byte budget (overspent). It waits at most writeWait, or until done: a
// client that does not read at all is the slow-reader rule's business.
func (s *session) catchUp(done <-chan struct{}) {
	deadline := time.NewTimer(writeWait)
	defer deadline.Stop()
	for {
		refill := s.overspent()
		if refill == 0 && !s.farBehind() {
			return
		}
		var refilled <-chan time.Time
		if refill > 0 {
			refilled = time.After(refill)
		}
		select {
		case <-s.progress:
		case <-refilled:
		case <-done:
			return
		case <-deadline.C:
			return
		}
	}
}

// The byte budget. A client that reads promptly is never too slow, but
// what it asks for still costs the server the writing: a join_room of a
// room full of long messages is answered with megabytes, and ten clients
// re-joining one at their rate limit had the server write hundreds of
// megabytes a second, and everyone else wait. So every byte pushed to a
// session spends its budget, which refills at cfg.AnswerRate bytes a second
// up to cfg.AnswerBurst; while it is spent, the session's next event waits
// (catchUp; a long-poll POST, waitBudget). Nothing is refused, and what the
// client is sent is never held back: only what it asks for next waits.
// Ordinary chat, even in a busy room, stays far below the rate.

// overspent brings the budget up to date, refilled for the time since it
// last was and spent by the bytes pushed since (push only counts them: no
// clock on the fan-out's path), and returns how long until it is no longer
// spent: 0 if it is not.
func (s *session) overspent() time.Duration {
	s.outboxMu.Lock()
	defer s.outboxMu.Unlock()
	now := time.Now()
	rate := float64(s.srv.cfg.AnswerRate)
	refilled := s.budget + now.Sub(s.budgetAt).Seconds()*rate
	s.budget = min(float64(s.srv.cfg.AnswerBurst), refilled) - float64(s.pushedBytes-s.budgetPushed)
	s.budgetAt, s.budgetPushed = now, s.pushedBytes
	if s.budget >= 0 {
		return 0
	}
	return time.Duration(-s.budget / float64(s.srv.cfg.AnswerRate) * float64(time.Second))
}

// waitBudget is catchUp for a long-poll POST: it waits only for the budget
// (the client may read its answers only after this POST), at most
// writeWait, or until done.
func (s *session) waitBudget(done <-chan struct{}) {
	refill := min(s.overspent(), writeWait)
	if refill == 0 {
		return
	}
	t := time.NewTimer(refill)
	defer t.Stop()
	select {
	case <-t.C:
	case <-done:
	}
}

// farBehind reports whether the transport is more than half way to the
// slow-reader rule: more than half of cfg.Outbox events, or more than a
// quarter of outboxLimit, wait for it. (A quarter: one join_room alone
// may add two copies of a full room's history, its room_joined and its ack.)
func (s *session) farBehind() bool {
	s.outboxMu.Lock()
	defer s.outboxMu.Unlock()
	n := s.lastSeq - s.delivered
	if n > int64(s.srv.cfg.Outbox/2) {
		return true
	}
	bytes := 0
	for i := max(0, s.outbox.len()-int(n)); i < s.outbox.len(); i++ {
		bytes += s.outbox.at(i).size()
	}
	return bytes > s.srv.outboxLimit/4
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
