// What exists only for speed and memory. A reader can skip this file: the
// chat would work the same with the plain version of each piece (a loop, a
// new goroutine, a bufio.Writer, a new buffer), only slower or bigger. The
// two rules of a write that live here, its deadline and a gathered close
// frame sent before the close, are in gatheredConn's comment. Each piece
// sits behind a name of its own (a type or a function) that the rest of the
// code calls where it needs it, and each says in a line what it buys;
// README, Performance, has the measurements.
//
//   - takeTurns: between two writes, a connection lets every other busy
//     one go first, and then sends everything that came meanwhile in one
//     write. Buys a crowded room fewer system calls per delivery while the
//     server is behind, and a quiet room's message leaves at once.
//   - writerPool: a writer runs on a goroutine whose stack has grown
//     already, instead of a new one that grows it again.
//   - gatheredConn: a message goes to the network in one system call, and
//     an idle connection holds no write buffer.
//   - writeInFrames: a big message (a room's history) goes in frames
//     straight from the outbox, so a client that does not read holds no
//     copy of it.
//   - hijacker: small read and write buffers for a WebSocket's whole life,
//     instead of net/http's 4 KiB each.
//   - readNext: the reader reads each message on a fresh goroutine, whose
//     stack is small again.
//   - pool: scratch buffers and lists taken for one write or one encoding,
//     and given back, so that an idle connection holds none.
//   - usersList and historyList: a room's users list and history are
//     encoded once and shared by every joiner's room_joined, instead of
//     copied into each joiner's outbox.
//   - eventRing: an outbox reuses its array as events come and go.
//   - letAppendersIn: with -data, one fsync carries every message that is
//     ready, even on one core.
package main

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
)

// takeTurns is what a WebSocket writer does between two writes: it lets
// the other goroutines that are ready to run go first (runtime.Gosched puts
// it at the back of the runtime's global run queue: roughly, every other
// ready goroutine runs before it comes back). While the server keeps up,
// nobody is waiting and it goes on at once: a quiet room's message leaves
// the moment it is pushed. While the server is behind, its turn comes back
// only after every other busy connection has had one, and it sends in one
// write everything that came meanwhile: the more connections are busy, the
// more each write carries, with no clock and no setting.
// Buys: a crowded room keeps up at a fraction of the system calls, a server
// past its core falls behind more slowly, and a room that is not busy waits
// for nothing.
func takeTurns() { runtime.Gosched() }

// writerPool runs the WebSocket writers (wsConn.writeLoop) on goroutines
// that have run one before. A writer runs only while its connection has
// something to send, so a quiet room's message starts one for each member;
// a new goroutine starts with a small stack, and coder/websocket's write
// path needs more: the runtime copied each new writer's stack as it grew,
// and a profile showed it. A goroutine whose writer is done waits here for
// the next, with its stack grown (until a garbage collection shrinks it),
// unless maxParked already wait; the others end.
// Buys: a quiet room's messages cost less CPU (README, Every trick pays its
// way), for at most maxParked stacks kept.
type writerPool struct {
	next   chan *wsConn    // unbuffered: a send succeeds only if one waits
	parked atomic.Int64    // how many wait
	done   <-chan struct{} // the server is closing: the waiting ones end
}

// maxParked bounds the goroutines kept waiting, a few KiB of stack each.
const maxParked = 256

// run runs c's writer on a waiting goroutine, or on a new one.
func (p *writerPool) run(c *wsConn) {
	select {
	case p.next <- c:
	default:
		go p.work(c)
	}
}

// work runs writers, one after the other, as long as it is given one.
func (p *writerPool) work(c *wsConn) {
	for c != nil {
		c.writeLoop()
		c = p.wait()
	}
}

// wait waits for the next writer to run, or returns nil: maxParked wait
// already, or the server is closing.
func (p *writerPool) wait() *wsConn {
	defer p.parked.Add(-1)
	if p.parked.Add(1) > maxParked {
		return nil
	}
	select {
	case c := <-p.next:
		return c
	case <-p.done:
		return nil
	}
}

// The buffers between a WebSocket and the network, in bytes. A connection
// keeps them for its whole life. Client events are small. Server messages
// (and each frame of a big one) are gathered whole by gatheredConn, so the
// write buffer only needs to hold a control frame (at most 127 bytes):
// then a pong or a close, too, is one system call.
const (
	readBuffer  = 512
	writeBuffer = 128
)

// hijacker is the ResponseWriter that websocket.Accept hijacks: it hands
// over the connection as a gatheredConn, with small buffers around it.
// Buys: net/http's 4 KiB buffers would be most of an idle connection.
type hijacker struct {
	http.ResponseWriter
	conn *gatheredConn
}

func (w *hijacker) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	conn, brw, err := http.NewResponseController(w.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	w.conn = &gatheredConn{Conn: conn}
	// net/http's reader is kept only when it holds bytes it has read ahead:
	// a client that sent its first frame before it saw our answer.
	r := brw.Reader
	if r.Buffered() == 0 {
		r = bufio.NewReaderSize(w.conn, readBuffer)
	}
	return w.conn, bufio.NewReadWriter(r, bufio.NewWriterSize(w.conn, writeBuffer)), nil
}

// gatheredConn is the network connection under a WebSocket. While the
// writer gathers (wsConn.write), what coder/websocket writes is appended to
// a pooled buffer, and send writes it all in one system call.
// Buys: one system call per message, and no write buffer while idle.
//
// Other writes (control frames: pongs, pings, the close) go straight to the
// network, or join the gathered message if they come while it is being
// written. mu keeps the writes in order (coder/websocket holds its own lock
// for each frame, and takes mu within it); send and Close take mu alone.
// Whoever holds mu writes with a deadline, so Close waits at most writeWait:
// writeWait from each write, or, while a big message goes in frames
// (writeInFrames), the one deadline of the whole message (within).
type gatheredConn struct {
	net.Conn

	mu       sync.Mutex
	gathered *[]byte   // from writeBuffers; nil when not gathering
	within   time.Time // the deadline of a message written in frames (writeWithin); zero for none
}

func (c *gatheredConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gathered != nil {
		*c.gathered = append(*c.gathered, p...)
		return len(p), nil
	}
	return c.write(p)
}

// Close sends what was gathered, then closes. coder/websocket closes the
// connection as soon as it has answered a client's close frame, and that
// answer may have joined a message that the writer has not sent yet.
func (c *gatheredConn) Close() error {
	c.send()
	return c.Conn.Close()
}

// gather starts gathering writes.
func (c *gatheredConn) gather() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gathered = writeBuffers.get()
}

// send writes what was gathered, in one system call, and stops gathering.
func (c *gatheredConn) send() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	buf := c.gathered
	if buf == nil {
		return net.ErrClosed // Close has sent it
	}
	c.gathered = nil
	_, err := c.write(*buf)
	writeBuffers.put(buf)
	return err
}

// write writes p to the network within writeWait (or by c.within, in the
// middle of a message written in frames), or fails, and then the
// connection is of no more use. The deadline is the write's own, not the
// connection's context: a write cut short by a cancelled context would
// drop the connection without a close frame, and the client would never
// learn why it was closed.
func (c *gatheredConn) write(p []byte) (int, error) {
	deadline := c.within
	if deadline.IsZero() {
		deadline = time.Now().Add(writeWait)
	}
	c.Conn.SetWriteDeadline(deadline)
	return c.Conn.Write(p)
}

// writeWithin gives every write until the next call the same deadline, for
// a message written in frames (writeInFrames): the whole message must go
// within writeWait, not each frame. Zero ends it.
func (c *gatheredConn) writeWithin(deadline time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.within = deadline
}

// maxGathered bounds a message that is copied whole into one buffer, in
// bytes: the events of one write stop there (session.waiting), and a single
// event bigger than that goes in frames (writeInFrames). A writer that
// waits on a client that does not read holds at most this much, twice
// (the message, and the frame gathered from it).
const maxGathered = 32 << 10

// frameSize is the size of the frames of a message written in frames.
const frameSize = 16 << 10

// writeInFrames sends a message bigger than maxGathered, a single event (a
// room_joined that carries a full room's history, up to 1.2 MB), straight
// from the outbox's bytes: in frames of frameSize, each gathered and sent
// in one system call, the whole within writeWait. Buys: a client that does
// not read holds up its writer, but no copy of the message; 200 such
// clients held 800 MB before (README, Where memory is bounded).
func (c *wsConn) writeInFrames(events []outEvent) error {
	c.net.writeWithin(time.Now().Add(writeWait))
	defer c.net.writeWithin(time.Time{})
	w, err := c.conn.Writer(context.Background(), websocket.MessageText)
	if err != nil {
		return err
	}
	frames := gatheredFrames{c.net, w}
	buffered := bufio.NewWriterSize(frames, frameSize) // the small parts (a seq, a comma) join the next frame
	n, err := writeEvents(buffered, events, false)
	if err = errors.Join(err, buffered.Flush(), frames.Close()); err == nil {
		c.s.srv.metrics.written.Add(int64(n))
	}
	return err
}

// gatheredFrames is a message writer of coder/websocket whose every Write
// is one frame, gathered and sent in one system call: coder/websocket
// writes a frame's header and its payload separately.
type gatheredFrames struct {
	net *gatheredConn
	w   io.WriteCloser
}

func (f gatheredFrames) Write(p []byte) (int, error) {
	f.net.gather()
	n, err := f.w.Write(p)
	return n, errors.Join(err, f.net.send())
}

// Close writes the message's last frame, which is empty.
func (f gatheredFrames) Close() error {
	f.net.gather()
	return errors.Join(f.w.Close(), f.net.send())
}

// readNext has the reader read the next message on a fresh goroutine, not
// in a loop. Handling an event (JSON, reflection) grows a goroutine's stack
// from 4 to 8 KiB, and a goroutine keeps the stack it grew to; a fresh one
// waits in Read on 4 KiB, and an idle connection is mostly that goroutine.
// Clients send little: at the rate limit, a new goroutine 20 times a second.
// Buys: a smaller idle connection once it has sent an event.
func (c *wsConn) readNext() { go c.read() }

// pool is a pool of scratch slices, each taken for one write or one
// encoding and given back. Buys: an idle connection holds none.
type pool[T any] struct{ pool sync.Pool }

// get returns an empty slice.
func (p *pool[T]) get() *[]T {
	s, _ := p.pool.Get().(*[]T)
	if s == nil {
		s = new([]T)
	}
	return s
}

// put gives s back, emptied; an outsize one goes to the garbage collector.
// A slice of pointers must be cleared first (eventLists), so that the pool
// keeps nothing alive; bytes need not be.
func (p *pool[T]) put(s *[]T) {
	if cap(*s) > 64<<10 {
		return
	}
	*s = (*s)[:0]
	p.pool.Put(s)
}

var (
	writeBuffers  pool[byte]     // the messages a writer builds and gathers
	encodeBuffers pool[byte]     // encode's scratch space (wire.go)
	eventLists    pool[outEvent] // the events of one write (session.waiting), cleared before put: a write allocates no list
)

// usersList is the users list that room_joined carries: the names of a
// room's first `listed` members (cfg.PresenceLimit), sorted, and the same
// encoded as the end of the event, `],"users":["alice","bob"]},"seq":`. Both are made
// when first asked for, kept, and dropped when a change touches them.
// Buys: every joiner of a crowd gets the same 200 names (3 KiB), which
// their outboxes share instead of keeping a copy each. (An outbox's byte
// count still counts them, as if they were its own.)
type usersList struct {
	listed int
	list   []string
	tail   []byte
}

// changed drops the kept list if member i was among those listed.
func (u *usersList) changed(i int) {
	if i < u.listed {
		u.list, u.tail = nil, nil
	}
}

// names lists the first members' names. The list is shared: it must not
// be changed.
func (u *usersList) names(members []*session) []string {
	if u.list == nil {
		u.list = make([]string, 0, min(len(members), u.listed))
		for _, m := range members[:cap(u.list)] {
			u.list = append(u.list, m.name)
		}
	}
	return u.list
}

// encoded returns the list as the end of a room_joined event.
func (u *usersList) encoded(members []*session) []byte {
	if u.tail == nil {
		u.tail = encode(`],"users":`, u.names(members), `},"seq":`)
	}
	return u.tail
}

// historyList is a room's history as room_joined and /messages send it: the
// messages' JSON (entry.json), with a comma between each two, as one list of
// parts. It is made when first asked for and kept until the history
// changes; every joiner's outbox holds a piece of the same list.
// Buys: a full room's history (up to 100 messages of 2,000 characters,
// 1.2 MB once encoded) is kept once, not once per joiner and per join.
type historyList struct {
	parts [][]byte
}

// comma separates two messages in a historyList.
var comma = []byte(",")

// changed drops the list: the history has changed.
func (h *historyList) changed() { h.parts = nil }

// since returns the parts for the messages of history with an id above
// since. They are shared: they must not be changed.
func (h *historyList) since(history []entry, since int64) [][]byte {
	if h.parts == nil {
		h.parts = make([][]byte, 0, 2*len(history))
		for i, e := range history {
			if i > 0 {
				h.parts = append(h.parts, comma)
			}
			h.parts = append(h.parts, e.json)
		}
	}
	i := after(history, since)
	if i == len(history) {
		return nil
	}
	return h.parts[2*i:]
}

// eventRing is an outbox's events, oldest first, in a ring buffer: the
// newest goes after the last, the oldest leaves from the front, and the
// array is reused. A slice cut from the front (outbox[1:]) would need a new
// array every few hundred events, for every member of a busy room.
// Buys: a push allocates nothing; in a busy room those arrays were most of
// what the server allocated (README, Every trick pays its way).
type eventRing struct {
	events []outEvent // the array; it grows (doubles) only when full
	first  int        // where the oldest is
	n      int        // how many are held
}

func (r *eventRing) len() int { return r.n }

// at returns the i-th oldest event; i must be below len.
func (r *eventRing) at(i int) outEvent { return r.events[(r.first+i)%len(r.events)] }

// add appends e as the newest.
func (r *eventRing) add(e outEvent) {
	if r.n == len(r.events) {
		grown := make([]outEvent, max(4, 2*r.n))
		for i := range r.n {
			grown[i] = r.at(i)
		}
		r.events, r.first = grown, 0
	}
	r.events[(r.first+r.n)%len(r.events)] = e
	r.n++
}

// drop removes the oldest event and returns it; the ring must not be empty.
func (r *eventRing) drop() outEvent {
	e := r.events[r.first]
	r.events[r.first] = outEvent{} // its bytes may go, once nobody else holds them
	r.first = (r.first + 1) % len(r.events)
	r.n--
	return e
}

// letAppendersIn has the journal's committer let every goroutine that is
// ready to run go first, before it takes the queue. On one core (one P),
// a goroutine in fsync keeps the P until the runtime's monitor takes it
// back, and that may take longer than the fsync; and the sender that
// appends next puts the committer ahead of the other ready senders (the
// runtime runs a goroutine just woken next). Without this the committer
// can fall into taking one record at a time, with the core idle during
// each fsync and a thousand woken senders waiting their turn for seconds.
// Letting them in first, the next batch carries them all.
// Buys: with -data, many small rooms keep up where the journal fell
// behind (README, Every trick pays its way).
func letAppendersIn() { runtime.Gosched() }
