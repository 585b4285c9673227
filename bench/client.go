// The clients: how they reach the server (only on loopback), join the room,
// send on schedule, and count what they receive.
//
// Each client is one goroutine that receives: it reads the server's
// messages and counts the bench messages in them. The senders are a few
// more goroutines that write through their client's connection. Counters
// shared by all are atomic; a client's own are read only once it stopped.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/coder/websocket"
)

const (
	dialParallel  = 100              // clients connecting at once
	closeParallel = 256              // clients closing at once
	joinWait      = 90 * time.Second // for all the clients to be in the room
	maxMessage    = 32 << 20         // bytes in one server message: a batch of events can be large
)

// network is how the bench reaches the server: one HTTP client per source
// address. A TCP connection is named by its two addresses and two ports, so
// from one source address to one server there are only as many connections
// as ephemeral ports, about 28,000 on Linux; each more source address
// 127.0.0.2, 127.0.0.3, … (all of 127.0.0.0/8 is loopback) brings as many
// again. Connection i uses source address i/perSource.
type network struct {
	base      *url.URL // http://IP:PORT
	perSource int
	clients   []*http.Client
}

func newNetwork(base *url.URL, conns, perSource int) (*network, error) {
	sources := (conns + perSource - 1) / perSource
	if host, _, _ := net.SplitHostPort(base.Host); sources > 1 && net.ParseIP(host).To4() == nil || sources > 250 {
		return nil, fmt.Errorf("%d connections need %d source addresses, and an IPv4 server address", conns, sources)
	}
	nw := &network{base: base, perSource: perSource}
	for k := range sources {
		d := &net.Dialer{Timeout: 10 * time.Second, Control: onlyLoopback}
		if sources > 1 {
			d.LocalAddr = &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(1+k))}
		}
		nw.clients = append(nw.clients, &http.Client{Transport: &http.Transport{
			DialContext: d.DialContext,
			// A long-polling client keeps a connection for its GET, a
			// sender one more for its POSTs; they must not be closed
			// and opened again for every request.
			MaxIdleConnsPerHost: 2 * perSource,
			IdleConnTimeout:     time.Minute,
		}})
	}
	return nw, nil
}

// closeIdle closes the connections the HTTP clients keep for reuse, which
// would otherwise outlive the run, each with two goroutines.
func (nw *network) closeIdle() {
	for _, c := range nw.clients {
		c.CloseIdleConnections()
	}
}

// onlyLoopback is the dialer's last check before each connection: the
// address must be loopback, whatever else happened.
func onlyLoopback(network, address string, _ syscall.RawConn) error {
	host, _, _ := net.SplitHostPort(address)
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("refusing to connect to %s: not a loopback address", address)
	}
	return nil
}

// url returns the server's URL for path, with the query key, value, ….
func (nw *network) url(path string, query ...string) string {
	q := url.Values{}
	for i := 0; i+1 < len(query); i += 2 {
		q.Set(query[i], query[i+1])
	}
	u := *nw.base
	u.Path, u.RawQuery = path, q.Encode()
	return u.String()
}

// ---------------------------------------------------------------------------
// A run: its counters, its clients, its senders
// ---------------------------------------------------------------------------

// loadRun is one run of clients, and the counters they share.
type loadRun struct {
	o       *options
	nw      *network
	clients []*client // every client started
	// The senders: sender i sends messages i+1, i+1+len, …. Set before
	// the send window; the receivers read it to check rooms.
	senders atomic.Pointer[[]*client]
	maxID   int64 // the messages of the send window are numbered 1 to maxID

	sent, sendErrors atomic.Int64 // messages written; messages that could not be
	refused          atomic.Int64 // send_message events the server answered with an error
	lag              atomic.Int64 // how late a sender was at most, in ns
	delivered        atomic.Int64 // distinct bench messages received, by all clients
	batches          atomic.Int64 // server messages (or poll answers) that held any
	lastDelivery     atomic.Int64 // when the last one came, unix ns
	members          atomic.Int64 // the room's size, as the last room_joined told it
	latency          histogram

	mu       sync.Mutex
	refusals map[string]int // error codes meaning "too much" (rate_limited, server_busy), or a peer's error messages
}

func newLoadRun(o *options, nw *network) *loadRun {
	return &loadRun{o: o, nw: nw, maxID: int64(o.rate * o.duration.Seconds()), refusals: map[string]int{}}
}

func (r *loadRun) refusal(code string) {
	r.mu.Lock()
	r.refusals[code]++
	r.mu.Unlock()
}

// connect starts the clients, dialParallel at a time, and returns those that
// are in the room within joinWait.
func (r *loadRun) connect(ctx context.Context, out io.Writer) (joined []*client) {
	began := time.Now()
	wait, cancel := context.WithTimeout(ctx, joinWait)
	defer cancel()
	for i := 0; i < r.o.clients && wait.Err() == nil; i += dialParallel {
		var wave []*client
		for n := i; n < min(i+dialParallel, r.o.clients); n++ {
			c := &client{n: n, room: n % r.o.rooms, run: r, ready: make(chan struct{}), done: make(chan struct{})}
			c.ctx, c.cancel = context.WithCancel(ctx)
			wave = append(wave, c)
			if r.o.transport == "polling" {
				go c.runPolling()
			} else {
				go c.runWebSocket()
			}
		}
		r.clients = append(r.clients, wave...)
		for _, c := range wave {
			select {
			case <-c.ready:
			case <-c.done:
			case <-wait.Done():
			}
			if isClosed(c.ready) {
				joined = append(joined, c)
			}
		}
	}
	largest := (len(joined) + r.o.rooms - 1) / r.o.rooms // a room's members, if all joined
	if r.o.peer != "chat" {
		r.members.Store(int64(largest)) // a peer does not tell
	}
	which := "the room has"
	if r.o.rooms > 1 {
		which = "the largest room has"
	}
	fmt.Fprintf(out, "connected       %d of %d clients in %.1fs; %s %d members\n",
		len(joined), r.o.clients, time.Since(began).Seconds(), which, r.members.Load())
	if extra := r.members.Load() - int64(largest); extra > 0 {
		fmt.Fprintf(out, "warning         %d more: an earlier run's sessions stay for the server's grace period (30 s)\n", extra)
	}
	return joined
}

// closeAll stops every client, closeParallel at a time, and waits for them.
func (r *loadRun) closeAll() {
	sem := make(chan struct{}, closeParallel)
	var wg sync.WaitGroup
	for _, c := range r.clients {
		sem <- struct{}{}
		wg.Go(func() {
			c.cancel()
			<-c.done
			<-sem
		})
	}
	wg.Wait()
}

// sendLoop is sender i. It sends open-loop: message k of the run is due at
// start + (k-1)/rate, and sender i sends every -senders-th one. Each text
// carries the time its message was due, so a server (or a generator) that
// falls behind shows as latency. Whatever is due goes in one write: a late
// sender catches up at once.
func (r *loadRun) sendLoop(ctx context.Context, c *client, i int, start time.Time) {
	due := func(slot int64) time.Time {
		return start.Add(time.Duration(float64(slot) * float64(time.Second) / r.o.rate))
	}
	timer := time.NewTimer(0)
	var buf []byte
	for slot := int64(i); slot < r.maxID; {
		timer.Reset(time.Until(due(slot)))
		select {
		case <-timer.C:
		case <-ctx.Done():
			return
		}
		now := time.Now()
		storeMax(&r.lag, int64(now.Sub(due(slot))))
		if r.o.peer != "chat" { // a peer takes one message a frame
			for ; slot < r.maxID && !due(slot).After(now); slot += int64(r.o.senders) {
				if err := c.send(r.appendSendMessage(buf[:0], c, slot+1, due(slot))); err != nil {
					r.sendErrors.Add(1)
					return
				}
				r.sent.Add(1)
				c.sent.Add(1)
			}
			continue
		}
		buf = append(buf[:0], '[')
		n := int64(0)
		for ; slot < r.maxID && !due(slot).After(now); slot += int64(r.o.senders) {
			if n++; n > 1 {
				buf = append(buf, ',')
			}
			buf = r.appendSendMessage(buf, c, slot+1, due(slot))
		}
		msg := append(buf, ']')
		if n == 1 {
			msg = buf[1:] // one envelope, not an array of one
		}
		if err := c.send(msg); err != nil {
			r.sendErrors.Add(n)
			return // the server closed this client; that is reported
		}
		r.sent.Add(n)
		c.sent.Add(n)
	}
}

// appendSendMessage appends message id, from c to its room, as the server
// takes it: a send_message envelope, a Socket.IO event, or (gorilla) the
// text alone. Room names were checked by parseFlags: they need no escaping.
func (r *loadRun) appendSendMessage(b []byte, c *client, id int64, due time.Time) []byte {
	switch r.o.peer {
	case "gorilla":
		return r.appendText(b, id, due)
	case "socketio":
		b = append(b, `42["chat message","`...)
		return append(r.appendText(b, id, due), `"]`...)
	case "centrifugo": // a publish command; ids 1 and 2 were connect and subscribe
		b = append(b, `{"id":`...)
		b = strconv.AppendInt(b, id+2, 10)
		b = append(b, `,"publish":{"channel":"`...)
		b = append(b, r.o.roomName(c.room)...)
		b = append(b, `","data":{"text":"`...)
		return append(r.appendText(b, id, due), `"}}}`...)
	}
	b = append(b, `{"event":"send_message","data":{"room":"`...)
	b = append(b, r.o.roomName(c.room)...)
	b = append(b, `","text":"`...)
	return append(r.appendText(b, id, due), `"}}`...)
}

// appendText appends a bench message's text: "b <id> <due, unix ns> xxx…",
// -size characters.
func (r *loadRun) appendText(b []byte, id int64, due time.Time) []byte {
	text := len(b)
	b = append(b, "b "...)
	b = strconv.AppendInt(b, id, 10)
	b = append(b, ' ')
	b = strconv.AppendInt(b, due.UnixNano(), 10)
	b = append(b, ' ')
	for len(b)-text < r.o.size {
		b = append(b, 'x')
	}
	return b
}

// ---------------------------------------------------------------------------
// A client, over either transport
// ---------------------------------------------------------------------------

// client is one simulated user: a session in the room that counts the
// bench messages it receives. One goroutine (runWebSocket or runPolling)
// receives; a sender goroutine calls send once ready is closed.
type client struct {
	n      int
	room   int // its room: -room, or with -rooms its number
	run    *loadRun
	ctx    context.Context // cancelled to stop the client
	cancel context.CancelFunc
	ready  chan struct{} // closed once the client is in the room
	done   chan struct{} // closed once it has stopped
	send   func(msg []byte) error

	// A sender's: messages written, and refused by the server.
	sent, refused atomic.Int64

	// Owned by the receiving goroutine; others read them once done is closed.
	seen     bitset // message ids received
	received int64  // distinct bench messages
	dups     int64
	strays   int64  // messages of another room: the server sent them to the wrong client
	closedBy string // why the server ended the client; "" if it did not
}

func (c *client) username() string { return "bench-" + strconv.Itoa(c.n) }

// httpClient is the HTTP client of the client's source address.
func (c *client) httpClient() *http.Client { return c.run.nw.clients[c.n/c.run.nw.perSource] }

// join joins the client's room, unless it is general, where every session
// starts. (It stays in general too: nothing is said there during a run.)
func (c *client) join() {
	if name := c.run.o.roomName(c.room); name != "general" {
		c.send([]byte(`{"event":"join_room","data":{"room":"` + name + `"},"ack":1}`))
	}
}

// runWebSocket is the client over a WebSocket: it connects, joins, and
// reads until it is stopped or the server closes the connection.
func (c *client) runWebSocket() {
	defer close(c.done)
	u := c.run.nw.url("/ws", "username", c.username())
	switch c.run.o.peer {
	case "socketio":
		u = c.run.nw.url("/socket.io/", "EIO", "4", "transport", "websocket")
	case "centrifugo":
		u = c.run.nw.url("/connection/websocket")
	}
	conn, _, err := websocket.Dial(c.ctx, u, &websocket.DialOptions{HTTPClient: c.httpClient()})
	if err != nil {
		c.end(err)
		return
	}
	conn.SetReadLimit(maxMessage)
	context.AfterFunc(c.ctx, func() { conn.Close(websocket.StatusNormalClosure, "bench done") })
	c.send = func(msg []byte) error { return conn.Write(c.ctx, websocket.MessageText, msg) }
	receive := c.receive
	switch c.run.o.peer {
	case "chat":
		c.join()
	case "gorilla": // in the room as soon as connected
		close(c.ready)
		receive = c.receivePeer
	case "socketio":
		receive = c.receiveSocketIO
	case "centrifugo": // connect anonymously, and subscribe to the room's channel
		c.send([]byte(`{"id":1,"connect":{}}`))
		c.send([]byte(`{"id":2,"subscribe":{"channel":"` + c.run.o.roomName(c.room) + `"}}`))
		receive = c.receiveCentrifugo
	}
	// Reads have no context: coder/websocket drops the connection without
	// a close frame when a read's context ends. Stopping closes the
	// connection (above), which ends the read.
	var buf bytes.Buffer
	for {
		_, rd, err := conn.Reader(context.Background())
		if err == nil {
			buf.Reset()
			_, err = buf.ReadFrom(rd)
		}
		if err != nil {
			c.end(err)
			return
		}
		receive(buf.Bytes())
	}
}

// runPolling is the client over long-polling: POST /poll opens a session,
// then GET /poll?sid&after=N asks, again and again, for every event after
// N, the highest seq received so far. Sending is POST /poll?sid.
func (c *client) runPolling() {
	defer close(c.done)
	var buf, sendBuf bytes.Buffer
	body, err := c.request("POST", c.run.nw.url("/poll", "username", c.username()), nil, http.StatusOK, &buf)
	var welcome struct{ Data struct{ SID string } }
	if err == nil {
		err = json.Unmarshal(body, &welcome)
	}
	if err != nil {
		c.end(err)
		return
	}
	sid := welcome.Data.SID
	c.send = func(msg []byte) error {
		_, err := c.request("POST", c.run.nw.url("/poll", "sid", sid), msg, http.StatusNoContent, &sendBuf)
		return err
	}
	c.join()
	after := "0"
	for {
		body, err := c.request("GET", c.run.nw.url("/poll", "sid", sid, "after", after), nil, http.StatusOK, &buf)
		if err != nil {
			c.end(err)
			return
		}
		if last := c.receive(body); last != nil {
			var e struct{ Seq json.Number }
			if json.Unmarshal(last, &e) == nil && e.Seq != "" {
				after = e.Seq.String()
			}
		}
	}
}

// httpError is an answer with an unexpected status, such as 404
// unknown_session for a session the server has ended.
type httpError struct {
	status int
	code   string
}

func (e httpError) Error() string { return fmt.Sprintf("HTTP %d %s", e.status, e.code) }

// request makes one HTTP request and returns the body, read into buf, of
// an answer with status want; any other status is an httpError.
func (c *client) request(method, u string, body []byte, want int, buf *bytes.Buffer) ([]byte, error) {
	req, err := http.NewRequestWithContext(c.ctx, method, u, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	resp, err := c.httpClient().Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	buf.Reset()
	_, err = buf.ReadFrom(resp.Body)
	if resp.StatusCode != want {
		var e struct{ Error struct{ Code string } }
		json.Unmarshal(buf.Bytes(), &e)
		return nil, httpError{resp.StatusCode, e.Error.Code}
	}
	return buf.Bytes(), err
}

// end records why the client stopped, unless the run stopped it: a close
// code and reason ("1008 too slow"), an HTTP status ("HTTP 404
// unknown_session"), or the error.
func (c *client) end(err error) {
	if c.ctx.Err() != nil {
		return
	}
	c.closedBy = errorKind(err)
	var ce websocket.CloseError
	var he httpError
	if errors.As(err, &ce) && ce.Code == websocket.StatusTryAgainLater || errors.As(err, &he) && he.status == http.StatusServiceUnavailable {
		c.run.refusal("server_busy")
	}
}

// errorKind is err as a report counts it, alike for every connection: a
// close code and reason ("1008 too slow"), an HTTP status ("HTTP 404
// unknown_session"), a network operation and its error without the
// addresses, which differ from connection to connection ("read: connection
// reset by peer"), or else the error.
func errorKind(err error) string {
	var ce websocket.CloseError
	var he httpError
	var op *net.OpError
	switch {
	case errors.As(err, &ce):
		return fmt.Sprintf("%d %s", ce.Code, ce.Reason)
	case errors.As(err, &he):
		return he.Error()
	case errors.As(err, &op):
		return op.Op + ": " + op.Err.Error()
	}
	return err.Error()
}

// receive handles one message from the server, one envelope or a JSON
// array of them, and returns the last envelope.
//
// Every client receives every message of the room, so this is where the
// generator spends its time. Bench messages take a fast path
// (scanBenchMessage); only the few other events are decoded.
func (c *client) receive(msg []byte) (last []byte) {
	now := time.Now().UnixNano()
	before := c.received
	for env, rest := nextObject(msg); env != nil; env, rest = nextObject(rest) {
		last = env
		if id, sent, ok := scanBenchMessage(env); ok {
			c.count(id, now-sent)
			continue
		}
		var e struct {
			Event string
			Data  struct {
				Room, Text, Code, Event string
				Count                   int64
				Error                   struct{ Code string } // of a failed ack
			}
		}
		json.Unmarshal(env, &e)
		switch e.Event {
		case "new_message": // not laid out as the fast path expects
			if id, sent, ok := parseBenchText([]byte(e.Data.Text)); ok {
				c.count(id, now-sent)
			}
		case "room_joined":
			if e.Data.Room == c.run.o.roomName(c.room) && !isClosed(c.ready) {
				storeMax(&c.run.members, e.Data.Count)
				close(c.ready)
			}
		case "error": // bench messages are sent without an ack
			c.run.refusal(e.Data.Code)
			if e.Data.Event == "send_message" {
				c.run.refused.Add(1)
				c.refused.Add(1)
			}
		case "ack": // join_room is the only event sent with one
			if e.Data.Error.Code != "" {
				c.run.refusal(e.Data.Error.Code)
			}
		}
	}
	c.tally(before, now)
	return last
}

// tally adds to the run's counters what one server message brought: the
// bench messages the client received since it had `before` of them.
func (c *client) tally(before, now int64) {
	if n := c.received - before; n > 0 {
		c.run.delivered.Add(n)
		c.run.batches.Add(1)
		storeMax(&c.run.lastDelivery, now)
	}
}

// receivePeer counts the bench messages in a message from a peer: lines of
// bench texts (gorilla's chat joins the messages waiting for a client with
// newlines), one Socket.IO event whose text is one, or lines of Centrifugo
// pushes, each with one in its data.
func (c *client) receivePeer(msg []byte) (last []byte) {
	now := time.Now().UnixNano()
	before := c.received
	for line := range bytes.Lines(msg) {
		if i := bytes.Index(line, []byte(`"b `)); i >= 0 {
			line = line[i+1:] // 42["chat message","b …"]
		}
		if id, sent, ok := parseBenchText(line); ok {
			c.count(id, now-sent)
		}
	}
	c.tally(before, now)
	return msg
}

// receiveSocketIO is receivePeer for Socket.IO's packets over a WebSocket
// (Engine.IO 4): "0{…}" opens, and the client then connects with "40"; the
// server's "40{…}" says it is connected; "2" is a ping, answered "3";
// "42[…]" is an event.
func (c *client) receiveSocketIO(msg []byte) (last []byte) {
	switch {
	case bytes.HasPrefix(msg, []byte("42")):
		return c.receivePeer(msg)
	case bytes.Equal(msg, []byte("2")):
		c.send([]byte("3"))
	case bytes.HasPrefix(msg, []byte("40")):
		if !isClosed(c.ready) {
			close(c.ready)
		}
	case bytes.HasPrefix(msg, []byte("0")):
		c.send([]byte("40"))
	}
	return msg
}

// receiveCentrifugo is receivePeer for Centrifugo's JSON protocol: one
// reply or push per line. An empty object is a ping, answered with one; the
// reply to command 2 says the client is subscribed; a reply with an error
// is a refused publish, or a refused connect or subscribe, which ends the
// client.
func (c *client) receiveCentrifugo(msg []byte) (last []byte) {
	for line := range bytes.Lines(msg) {
		line = bytes.TrimSpace(line)
		switch {
		case bytes.Equal(line, []byte("{}")):
			c.send([]byte("{}"))
		case bytes.HasPrefix(line, []byte(`{"id":`)) && bytes.Contains(line, []byte(`"error":`)):
			var e struct {
				ID    int64
				Error struct{ Message string }
			}
			json.Unmarshal(line, &e)
			c.run.refusal(e.Error.Message)
			if e.ID <= 2 { // connect or subscribe refused: this client is done
				c.end(fmt.Errorf("centrifugo: %s", e.Error.Message))
				c.cancel()
				return nil
			}
			c.run.refused.Add(1)
			c.refused.Add(1)
		case bytes.HasPrefix(line, []byte(`{"id":2,`)):
			if !isClosed(c.ready) {
				close(c.ready)
			}
		}
	}
	return c.receivePeer(msg)
}

// nextObject returns the first JSON object in b and what follows it. It
// follows only strings and nesting, which is all it takes to find where an
// object of valid JSON ends, and is much cheaper than decoding it.
func nextObject(b []byte) (obj, rest []byte) {
	start := bytes.IndexByte(b, '{')
	depth := 0
	for i := start; i >= 0 && i < len(b); i++ {
		switch b[i] {
		case '"': // on to the closing quote: the next one not escaped
			for escaped := true; escaped; {
				j := bytes.IndexByte(b[i+1:], '"')
				if j < 0 {
					return nil, nil
				}
				i += 1 + j
				escaped = false
				for k := i - 1; b[k] == '\\'; k-- {
					escaped = !escaped
				}
			}
		case '{', '[':
			depth++
		case '}', ']':
			if depth--; depth == 0 {
				return b[start : i+1], b[i+1:]
			}
		}
	}
	return nil, nil
}

// The server writes an event as {"event":NAME,"data":…,"seq":N} and a
// message as {"id":…,"room":…,"username":…,"text":…,"timestamp":…}
// (encodeEvent and message in chat.go). A room name or a username cannot
// hold a quote, and a quote in a text is escaped: in a new_message envelope
// the first `"text":"b ` is where a bench message's text starts.
var (
	newMessagePrefix = []byte(`{"event":"new_message","data":{`)
	benchTextKey     = []byte(`"text":"b `)
)

// scanBenchMessage reads the id and due time of a bench message laid out
// as the server writes it, without decoding the envelope; for any other
// envelope it reports false.
func scanBenchMessage(env []byte) (id, sent int64, ok bool) {
	if !bytes.HasPrefix(env, newMessagePrefix) {
		return 0, 0, false
	}
	if i := bytes.Index(env, benchTextKey); i >= 0 {
		return parseBenchText(env[i+len(`"text":"`):])
	}
	return 0, 0, false
}

// parseBenchText reads "b <id> <due, unix ns> ", the start of a bench
// message's text.
func parseBenchText(t []byte) (id, sent int64, ok bool) {
	t, ok = bytes.CutPrefix(t, []byte("b "))
	idText, t, ok1 := bytes.Cut(t, []byte(" "))
	sentText, _, ok2 := bytes.Cut(t, []byte(" "))
	id, ok3 := parseDigits(idText)
	sent, ok4 := parseDigits(sentText)
	return id, sent, ok && ok1 && ok2 && ok3 && ok4
}

// parseDigits parses a decimal number of 1 to 19 digits (unix nanoseconds
// have 19). strconv.ParseInt would need a string, and an allocation.
func parseDigits(b []byte) (n int64, ok bool) {
	for _, d := range b {
		if d < '0' || d > '9' {
			return 0, false
		}
		n = n*10 + int64(d-'0')
	}
	return n, len(b) > 0 && len(b) <= 19
}

// ---------------------------------------------------------------------------
// Counting
// ---------------------------------------------------------------------------

// count records that bench message id arrived, `latency` ns after it was due.
func (c *client) count(id, latency int64) {
	if id < 1 || id > c.run.maxID {
		return // not this run's
	}
	if s := c.run.senders.Load(); s == nil || (*s)[(id-1)%int64(len(*s))].room != c.room {
		c.strays++ // counted, but not as a delivery
		return
	}
	if c.seen.testAndSet(id) {
		c.dups++
		return
	}
	c.received++
	c.run.latency.record(latency)
}

// bitset is a set of message ids, one bit each, growing as larger ids come.
type bitset []uint64

// testAndSet adds i and reports whether it was there already.
func (s *bitset) testAndSet(i int64) bool {
	for int(i/64) >= len(*s) {
		*s = append(*s, 0)
	}
	w, bit := &(*s)[i/64], uint64(1)<<(i%64)
	had := *w&bit != 0
	*w |= bit
	return had
}

// histogram counts latencies in buckets 2 % wide: bucket b holds those
// around e^(b/50) - 1 µs, from under 1 µs to hours. Safe for concurrent use.
type histogram struct {
	counts [1200]atomic.Int64
	max    atomic.Int64 // ns
}

func (h *histogram) record(ns int64) {
	ns = max(ns, 0)
	b := int(math.Log1p(float64(ns)/1000) * 50)
	h.counts[min(b, len(h.counts)-1)].Add(1)
	storeMax(&h.max, ns)
}

// total is how many were recorded.
func (h *histogram) total() (n int64) {
	for b := range h.counts {
		n += h.counts[b].Load()
	}
	return n
}

// quantiles returns, in ms, the value at each fraction q of the samples
// (sorted): a bucket's middle, but never above the largest sample.
func (h *histogram) quantiles(q ...float64) []float64 {
	total, seen, ms := h.total(), int64(0), []float64{}
	for b := 0; b < len(h.counts) && len(ms) < len(q); b++ {
		seen += h.counts[b].Load()
		for len(ms) < len(q) && float64(seen) >= q[len(ms)]*float64(total) {
			ms = append(ms, min(math.Expm1((float64(b)+0.5)/50)/1000, h.maxMS()))
		}
	}
	return ms
}

func (h *histogram) maxMS() float64 { return float64(h.max.Load()) / 1e6 }

// summary is "p50 … p90 … p99 … max …", in milliseconds.
func (h *histogram) summary() string {
	total := h.total()
	if total == 0 {
		return "no deliveries"
	}
	s := ""
	for i, ms := range h.quantiles(.5, .9, .99) {
		s += fmt.Sprintf("p%s %.2fms  ", []string{"50", "90", "99"}[i], ms)
	}
	return fmt.Sprintf("%smax %.2fms (%d samples)", s, h.maxMS(), total)
}

// brief is ", p50 …, max …", in milliseconds, or nothing if h is empty:
// for a few dozen samples, which have no p99 worth the name.
func (h *histogram) brief() string {
	if h.total() == 0 {
		return ""
	}
	return fmt.Sprintf(", p50 %.2fms, max %.2fms", h.quantiles(.5)[0], h.maxMS())
}

// storeMax sets a to v if v is larger.
func storeMax(a *atomic.Int64, v int64) {
	for old := a.Load(); v > old && !a.CompareAndSwap(old, v); old = a.Load() {
	}
}

func isClosed(ch chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}
