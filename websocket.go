// The WebSocket transport: GET /ws (PROTOCOL.md section 5).
//
// A WebSocket is one TCP connection that both sides may write to at any
// time: the server pushes each event the moment it exists. The rules of a
// connection here, the way gorilla/websocket's chat example states its own:
//
//   - One reader (read, which reads each message on a fresh goroutine:
//     readNext in speed.go). Someone always reads the socket, so the
//     client's pings and close frames are answered (but for the moments it
//     handles a message: see ping). It handles each event it reads
//     (events.go), and when the connection ends it lets go of the session,
//     which waits cfg.Grace for the client to come back.
//   - At most one writer at a time (writeLoop), and only while there is
//     something to send: a push to the session's outbox wakes one, and it
//     ends once the outbox is drained. An idle connection has none.
//   - The writer closes the connection. Whoever wants it closed (a
//     replacement, a slow-reader drop, the end of the session, shutdown, a
//     broken socket) cancels the connection's context with a cause; the
//     writer then sends the close frame that cause names (outbox.go,
//     closeReason), or drops a broken connection at once.
//   - A ping every cfg.PingEvery, from a timer (ping); no pong within
//     cfg.PongWait and the connection is dropped.
//
// Locks: the order of all of them is in server.go.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/coder/websocket"
)

// writeWait bounds one write to a WebSocket: a client that takes longer to
// take in one batch of events is dropped.
const writeWait = 10 * time.Second

// wsConn is one WebSocket connection attached to a session.
type wsConn struct {
	conn   *websocket.Conn
	net    *gatheredConn // the network connection under conn (speed.go)
	s      *session
	ctx    context.Context // ends when the connection must close; its cause says why
	cancel context.CancelCauseFunc

	mu      sync.Mutex     // guards state and pinger
	state   writerState    // whether a writer runs, may start, or never will again
	running sync.WaitGroup // writers and pings, which finish waits for
	more    bell           // "the outbox has more": for the running writer

	// What one writer hands on to the next. Only the running writer touches
	// them (mu orders one writer before the next).
	welcome []byte // sent first; nil once it is
	after   int64  // the seq of the last event written

	pinger *time.Timer  // the next ping (guarded by mu)
	busy   atomic.Bool  // the reader is handling a message, so it reads no pongs
	heard  atomic.Int64 // when the reader last read a message (Unix ns)
}

// writerState says whether a connection's writer runs.
type writerState int

const (
	// writerIdle: no writer runs; the next wake starts one.
	writerIdle writerState = iota
	// writerRunning: a writer runs (or the first is about to start); a
	// wake only tells it that more has come.
	writerRunning
	// writerClosed: no writer or ping starts again. A writer has closed
	// the connection, or the reader is done.
	writerClosed
)

// serveWebSocket is GET /ws: it upgrades the request to a WebSocket,
// attaches it to a new or resumed session, and starts its reader, its first
// writer and its pings.
func (srv *server) serveWebSocket(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	after, err := parseSeq(q.Get("after"))
	if err != nil {
		http.Error(w, "after must be a seq number", http.StatusBadRequest)
		return
	}
	hj := &hijacker{ResponseWriter: w} // hands over the connection with small buffers (speed.go)
	conn, err := websocket.Accept(hj, r, &websocket.AcceptOptions{OriginPatterns: srv.cfg.Origins})
	if err != nil {
		return // Accept has answered (403 for a foreign origin)
	}
	// The HTTP part is over: once the session is set up below, this handler
	// returns, the connection goes on in goroutines of its own, and
	// net/http's goroutine, with the request and everything it parsed, is
	// freed.
	if !srv.track() {
		conn.Close(websocket.StatusGoingAway, closeGoingAway.reason)
		return
	}
	conn.SetReadLimit(maxFrame)
	ctx, cancel := context.WithCancelCause(srv.ctx)
	c := &wsConn{
		conn: conn, net: hj.conn, ctx: ctx, cancel: cancel,
		more:  newBell(),
		state: writerRunning, // no writer may start before the welcome is ready
	}

	// Resume the session the client names, or else (no sid, or a resume
	// refused: PROTOCOL.md section 5) open a new one. attach may wake c
	// before c.s is set: state writerRunning above keeps any writer from
	// starting until the welcome is ready.
	var s *session
	if sid := q.Get("sid"); sid != "" {
		s, err = srv.continueSession(sid, after, c)
	}
	resumed := s != nil
	if !resumed && !errors.Is(err, errShuttingDown) {
		after = 0
		s, err = srv.openSession(q.Get("username"), srv.clientAddress(r), c)
	}
	if err != nil {
		why := closeBusy
		if errors.Is(err, errShuttingDown) {
			why = closeGoingAway
		}
		conn.Close(websocket.StatusCode(why.code), why.reason)
		cancel(nil)
		srv.conns.Done()
		return
	}

	c.s, c.after, c.welcome = s, after, srv.encodeWelcome(s, resumed)
	srv.metrics.websockets.Add(1)
	c.running.Add(1)
	srv.writers.run(c)             // writeLoop, on a goroutine of its own (a reused one: speed.go)
	context.AfterFunc(ctx, c.wake) // whenever ctx ends, a writer runs and closes the connection
	c.mu.Lock()
	c.pinger = time.AfterFunc(srv.cfg.PingEvery, c.ping)
	c.mu.Unlock()
	go c.read()
}

// read is the connection's reader: it reads the client's next message and
// handles its events; when the connection ends, it lets go of the session.
//
// It reads with a context that is never cancelled, because coder/websocket
// drops the connection without a close frame when a Read's context ends;
// the writer closes the connection instead.
func (c *wsConn) read() {
	srv := c.s.srv
	_, msg, err := c.conn.Read(context.Background())
	c.heard.Store(time.Now().UnixNano())
	if err == nil && !utf8.Valid(msg) {
		// A browser fails a connection that sends it invalid UTF-8 in a
		// text message: none may come in, to be echoed to anyone.
		err = closeInvalidUTF8
	}
	if err == nil && c.handleMessage(msg) {
		c.readNext() // like a loop, but on a fresh goroutine (speed.go)
		return
	}
	// The connection is broken or closed (err), or the session has ended or
	// the server is closing, which has ended ctx already.
	c.cancel(err)
	c.finish()
	srv.detach(c.s, c)
	srv.metrics.websockets.Add(-1)
	srv.conns.Done()
}

// handleMessage applies every event of one client message, in order: a bad one
// gets its error and the others are still applied. It reports false once
// the session has ended.
func (c *wsConn) handleMessage(msg []byte) bool {
	list, err := splitEnvelopes(msg)
	if err != nil {
		list = []json.RawMessage{msg} // handle answers it: bad_request
	}
	c.busy.Store(true)
	defer c.busy.Store(false)
	for _, raw := range list {
		c.s.catchUp(c.ctx.Done())
		if !c.s.srv.handle(c.s, raw) {
			return false
		}
	}
	return true
}

// finish is the reader's last step: a writer closes the connection (if
// none has), and once it and any ping are done, nothing starts again.
func (c *wsConn) finish() {
	c.wake()
	c.mu.Lock()
	c.state = writerClosed
	c.pinger.Stop()
	c.mu.Unlock()
	c.running.Wait()
}

// stop ends the connection (transport.stop): the context's end has a writer
// close it with why's code and reason.
func (c *wsConn) stop(why closeReason) {
	c.cancel(why)
}

// wake makes sure a writer runs (transport.wake): it tells the running one
// that more has come, or starts one. push calls it for every event.
func (c *wsConn) wake() {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch c.state {
	case writerRunning:
		c.more.ring()
	case writerIdle:
		c.state = writerRunning
		c.running.Add(1)
		c.s.srv.writers.run(c) // writeLoop, on a goroutine of its own (a reused one: speed.go)
	}
}

// rest ends a writer's run, unless more came since it last looked, or ctx
// has ended: then the writer goes on, to close the connection. (The wake
// that ctx's end sends comes only once.)
func (c *wsConn) rest() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	select {
	case <-c.more:
		return false
	default:
	}
	if c.ctx.Err() != nil {
		return false
	}
	c.state = writerIdle
	return true
}

// writeLoop is a writer: while it runs, the only goroutine that writes
// messages to the connection. It sends the welcome first, then the events
// after c.after, as many as are waiting in one message (up to
// maxGathered bytes), and ends when there is nothing more (rest). When ctx
// ends, or a write fails, it closes the connection, and no writer starts
// after it.
func (c *wsConn) writeLoop() {
	defer c.running.Done()
	var err error
	if c.welcome != nil {
		err = c.write(c.welcome)
		c.welcome = nil
	}
	for err == nil {
		takeTurns() // every other busy connection first: what comes meanwhile goes in the same write (speed.go)
		// Take the ring before looking (not after: the wake that ctx's
		// end sends would be lost).
		select {
		case <-c.more:
		default:
		}
		if c.ctx.Err() != nil { // stopped: replaced, too slow, shutting down, or broken
			err = context.Cause(c.ctx)
			break
		}
		// At most maxGathered bytes of events (or one bigger event) at a
		// time: the rest go in the next message.
		list := eventLists.get()
		var last int64
		*list, last = c.s.waiting(*list, c.after, maxGathered)
		sending := len(*list) > 0
		if sending {
			if err = c.sendEvents(*list); err == nil {
				c.s.srv.metrics.wroteBatch(last - c.after)
				c.after = last
				c.s.markDelivered(c, last)
			}
		}
		clear(*list) // the events' bytes may go, once the outbox lets them
		eventLists.put(list)
		if !sending && c.rest() {
			return // drained: the next wake starts a writer again
		}
	}
	c.cancel(err) // (if not yet) a reader waiting in catchUp stops waiting
	c.mu.Lock()
	c.state = writerClosed
	c.mu.Unlock()
	var why closeReason
	if errors.As(err, &why) {
		c.conn.Close(websocket.StatusCode(why.code), why.reason)
	} else {
		c.conn.CloseNow() // the peer is gone or broken: no handshake to wait for
	}
}

// sendEvents sends events in one message: copied into one buffer and sent
// in one system call (write), or, where it is a single event bigger than
// maxGathered (a room_joined with a full room's history), in frames
// straight from the outbox (writeInFrames, speed.go).
func (c *wsConn) sendEvents(events []outEvent) error {
	if len(events) == 1 && events[0].size() > maxGathered {
		return c.writeInFrames(events)
	}
	buf := writeBuffers.get()
	*buf = appendEvents(*buf, events, false)
	err := c.write(*buf)
	writeBuffers.put(buf)
	return err
}

// write sends one message, within writeWait. coder/websocket frames it, and
// the frame is gathered and sent in one system call (speed.go).
func (c *wsConn) write(msg []byte) error {
	c.net.gather()
	err := c.conn.Write(context.Background(), websocket.MessageText, msg)
	if err = errors.Join(err, c.net.send()); err == nil {
		c.s.srv.metrics.written.Add(int64(len(msg)))
	}
	return err
}

// ping sends a ping and waits for the pong, at most cfg.PongWait (a live
// client answers at once); the next ping is cfg.PingEvery after the pong.
// A client that does not answer is dropped. It runs on its timer's own
// goroutine.
func (c *wsConn) ping() {
	c.mu.Lock()
	if c.state == writerClosed {
		c.mu.Unlock()
		return
	}
	c.running.Add(1)
	c.mu.Unlock()
	defer c.running.Done()

	ctx, cancel := context.WithTimeout(context.Background(), c.s.srv.cfg.PongWait)
	defer cancel()
	sent := time.Now().UnixNano()
	err := c.conn.Ping(ctx)
	// A pong is read by the reader, which reads none while it handles a
	// message (that may wait for the writer or the disk). A client whose
	// message is being handled, or that has sent one since the ping, is
	// alive all the same.
	alive := errors.Is(err, context.DeadlineExceeded) && (c.busy.Load() || c.heard.Load() > sent)
	if err != nil && !alive {
		c.cancel(fmt.Errorf("no pong: %w", err)) // a writer drops the connection
		return
	}
	c.mu.Lock()
	if c.state != writerClosed {
		c.pinger.Reset(c.s.srv.cfg.PingEvery)
	}
	c.mu.Unlock()
}
