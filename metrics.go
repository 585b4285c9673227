// Metrics: what the server is doing, in numbers, for Prometheus (-metrics).
//
// Prometheus is a monitoring system that scrapes: every 15 s or so it asks
// each server it watches for GET /metrics, and keeps every number in the
// answer as a time series, to graph and to alert on. The answer is plain
// text, the text exposition format (version 0.0.4): for each metric a HELP
// and a TYPE line, then one line per series, `name{labels} value`:
//
//	# HELP chat_connections Open connections by transport.
//	# TYPE chat_connections gauge
//	chat_connections{transport="websocket"} 17
//
// A counter only goes up (messages stored, bytes written); Prometheus looks
// at how fast it goes up, and sees a restart, which sets it back to 0, for
// what it is. A gauge is a level that goes up and down (sessions, open
// connections). A histogram counts observations into buckets: the writer's
// batch sizes here, as cumulative `_bucket{le="…"}` lines with their `_sum`
// and `_count`.
//
// There is no client library. The format is small and stable (it has not
// changed since 2014), so writing it is one function; and one dependency,
// coder/websocket, is a design rule of this project.
//
// What counting costs: where something happens (a write, a store, an error
// answer) its file makes one call here, an atomic add: no lock, no
// allocation, nothing a message's path would notice. What the chat already
// knows (its sessions, its rooms) is not counted twice: serveMetrics reads
// the sizes of its maps under srv.mu, a moment per scrape.
package main

import (
	"bytes"
	"math/bits"
	"net/http"
	"os"
	"runtime"
	runtimemetrics "runtime/metrics"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// metrics are the server's counters and its own gauges. Each file adds to
// them where the thing happens; serveMetrics writes them out.
type metrics struct {
	stored    atomic.Int64 // room messages stored (chat.go: publish)
	delivered atomic.Int64 // events written to clients, per recipient (websocket.go, poll.go)
	written   atomic.Int64 // bytes written to clients (websocket.go: write; poll.go)
	replaced  atomic.Int64 // transports taken over by a newer one (session.go: attach)

	websockets atomic.Int64 // open WebSockets with a session (websocket.go)
	polling    atomic.Int64 // long-poll GETs waiting (poll.go)

	ended   labeled // sessions ended, by endReason (session.go: endSession)
	refused labeled // error answers to events, by code (events.go: handle)
	batches batchSizes
}

// newMetrics returns metrics at zero, with every label value of ended and
// refused known (Prometheus prefers a series at 0 to a missing one).
func newMetrics() *metrics {
	return &metrics{
		ended: newLabeled("reason", string(endGrace), string(endTooSlow), string(endRefusedResume)),
		// The codes handle can answer (PROTOCOL.md section 4), server_busy
		// for a message the journal could not store; the others (too_large,
		// unknown_session) refuse a request, not an event.
		refused: newLabeled("code", "bad_request", "unknown_event", "rate_limited", "invalid_username",
			"username_taken", "invalid_room", "not_in_room", "too_many_rooms", "invalid_message", "user_not_found",
			"server_busy"),
	}
}

// refuse counts an event answered with err, when err is set. The code is
// the one the client reads (toChatError).
func (m *metrics) refuse(err error) {
	if err != nil {
		m.refused.add(toChatError(err).Code)
	}
}

// wroteBatch counts one WebSocket message that carried n events. The
// deliveries come last, here as in poll.go: a scrape that finds them
// counted finds the rest of that write counted too.
func (m *metrics) wroteBatch(n int64) {
	m.batches.observe(n)
	m.delivered.Add(n)
}

// labeled is a counter for each value of one label, every value known in
// advance. The map is filled by newLabeled and only read after, so counting
// takes no lock; a value not in it counts as "other".
type labeled struct {
	label  string
	values []string // in the order they are written out
	counts map[string]*atomic.Int64
}

func newLabeled(label string, values ...string) labeled {
	l := labeled{label: label, values: append(values, "other"), counts: make(map[string]*atomic.Int64)}
	for _, v := range l.values {
		l.counts[v] = new(atomic.Int64)
	}
	return l
}

// add counts one for value.
func (l *labeled) add(value string) {
	c := l.counts[value]
	if c == nil {
		c = l.counts["other"]
	}
	c.Add(1)
}

// batchSizes is the histogram of events per WebSocket write. Its buckets
// are the powers of two from 1 to 256 and then everything above: counts[i]
// holds the writes of more than 2^(i-1) and at most 2^i events, and
// counts[9] the rest. (Prometheus wants each bucket to count everything up
// to its bound: serveMetrics adds them up as it writes them.)
type batchSizes struct {
	counts [10]atomic.Int64
	sum    atomic.Int64
}

// observe counts one write of n events (n ≥ 1).
func (h *batchSizes) observe(n int64) {
	i := bits.Len64(uint64(n - 1)) // 1 → 0, 2 → 1, 3 and 4 → 2, 5 to 8 → 3, …
	h.counts[min(i, len(h.counts)-1)].Add(1)
	h.sum.Add(n)
}

// serveMetrics is GET /metrics (only with cfg.Metrics): every metric in the
// text exposition format.
func (srv *server) serveMetrics(w http.ResponseWriter, r *http.Request) {
	srv.mu.Lock()
	sessions, rooms, kept := len(srv.sessions), len(srv.rooms), len(srv.idle)
	srv.mu.Unlock()
	m := srv.metrics

	var e exposition
	e.family("chat_sessions", "gauge", "Live sessions: with a transport, or waiting out their grace period.")
	e.int("chat_sessions", "", int64(sessions))
	e.family("chat_connections", "gauge", "Open connections by transport: WebSockets with a session, and long-poll GETs waiting.")
	e.int("chat_connections", `transport="websocket"`, m.websockets.Load())
	e.int("chat_connections", `transport="polling"`, m.polling.Load())
	e.family("chat_rooms_live", "gauge", "Rooms with at least one member.")
	e.int("chat_rooms_live", "", int64(rooms-kept))
	e.family("chat_rooms_kept", "gauge", "Rooms with no member, kept for their history.")
	e.int("chat_rooms_kept", "", int64(kept))

	e.family("chat_messages_stored_total", "counter", "Room messages stored, from events and from the form alike.")
	e.int("chat_messages_stored_total", "", m.stored.Load())
	e.family("chat_deliveries_total", "counter",
		"Events written to clients, one per event and recipient, in WebSocket messages and long-poll answers; an answer sent again counts again.")
	e.int("chat_deliveries_total", "", m.delivered.Load())
	e.family("chat_written_bytes_total", "counter", "Bytes of WebSocket messages and long-poll answers written to clients, without framing or HTTP headers.")
	e.int("chat_written_bytes_total", "", m.written.Load())
	e.family("chat_sessions_ended_total", "counter", "Sessions ended, by reason: grace period over, too slow, or a resume whose events were gone.")
	e.labeled("chat_sessions_ended_total", &m.ended)
	e.family("chat_transports_replaced_total", "counter", "Transports taken over by a newer one for the same session, which goes on (WebSocket close 4000).")
	e.int("chat_transports_replaced_total", "", m.replaced.Load())
	e.family("chat_events_refused_total", "counter", "Client events answered with an error (an ack with ok false, or an error event), by code.")
	e.labeled("chat_events_refused_total", &m.refused)
	if srv.journal != nil {
		e.family("chat_journal_fsyncs_total", "counter", "With -data: fsyncs of the journal, one per batch of messages (group commit).")
		e.int("chat_journal_fsyncs_total", "", srv.journal.syncs.Load())
	}

	e.family("chat_websocket_batch_events", "histogram", "Events per WebSocket message: a writer sends every event waiting in one.")
	var cumulative int64
	for i := range m.batches.counts {
		cumulative += m.batches.counts[i].Load()
		le := "+Inf"
		if i < len(m.batches.counts)-1 {
			le = strconv.Itoa(1 << i)
		}
		e.int("chat_websocket_batch_events_bucket", `le="`+le+`"`, cumulative)
	}
	e.int("chat_websocket_batch_events_sum", "", m.batches.sum.Load())
	e.int("chat_websocket_batch_events_count", "", cumulative) // = the +Inf bucket, as the format requires

	processFigures(&e)

	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.Write(e.buf.Bytes())
}

// exposition is a page of the text format being written.
type exposition struct{ buf bytes.Buffer }

// family starts a metric: its HELP and TYPE lines. (Our help texts have no
// backslash or newline, the two characters the format would escape.)
func (e *exposition) family(name, kind, help string) {
	e.buf.WriteString("# HELP " + name + " " + help + "\n# TYPE " + name + " " + kind + "\n")
}

// int writes one series with an integer value; labels is `k="v",…` or "".
func (e *exposition) int(name, labels string, v int64) {
	e.series(name, labels, strconv.FormatInt(v, 10))
}

// float writes one series with a value in seconds or the like.
func (e *exposition) float(name, labels string, v float64) {
	e.series(name, labels, strconv.FormatFloat(v, 'f', -1, 64))
}

func (e *exposition) series(name, labels, value string) {
	e.buf.WriteString(name)
	if labels != "" {
		e.buf.WriteString("{" + labels + "}")
	}
	e.buf.WriteString(" " + value + "\n")
}

// labeled writes a labeled counter, one series per label value.
func (e *exposition) labeled(name string, l *labeled) {
	for _, v := range l.values {
		e.int(name, l.label+`="`+v+`"`, l.counts[v].Load())
	}
}

// processStart is when the process started, near enough: when this
// package was initialised.
var processStart = time.Now()

// processFigures writes the standard process_ and go_ metrics that every
// Prometheus client library exports, under the same names, so that the
// usual dashboards work. The process's CPU time, memory and files come from
// /proc (Linux); elsewhere they are left out.
func processFigures(e *exposition) {
	if cpu, virtual, resident, ok := procStat(); ok {
		e.family("process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds.")
		e.float("process_cpu_seconds_total", "", cpu)
		e.family("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.")
		e.int("process_virtual_memory_bytes", "", virtual)
		e.family("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.")
		e.int("process_resident_memory_bytes", "", resident)
	}
	if fds, err := os.ReadDir("/proc/self/fd"); err == nil {
		e.family("process_open_fds", "gauge", "Number of open file descriptors.")
		e.int("process_open_fds", "", int64(len(fds)))
	}
	if limit, ok := maxOpenFiles(); ok {
		e.family("process_max_fds", "gauge", "Maximum number of open file descriptors.")
		e.int("process_max_fds", "", limit)
	}
	e.family("process_start_time_seconds", "gauge", "Start time of the process since unix epoch in seconds.")
	e.float("process_start_time_seconds", "", float64(processStart.UnixMicro())/1e6)

	e.family("go_goroutines", "gauge", "Number of goroutines that currently exist.")
	e.int("go_goroutines", "", int64(runtime.NumGoroutine()))
	// runtime/metrics, unlike runtime.ReadMemStats, does not stop the world.
	heap := []runtimemetrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	runtimemetrics.Read(heap)
	if heap[0].Value.Kind() == runtimemetrics.KindUint64 {
		e.family("go_memstats_heap_alloc_bytes", "gauge", "Number of heap bytes allocated and still in use.")
		e.int("go_memstats_heap_alloc_bytes", "", int64(heap[0].Value.Uint64()))
	}
}

// clockTicks is the unit of the CPU times in /proc/self/stat: USER_HZ, 100
// on every Linux that Go runs on (the Prometheus client library assumes the
// same).
const clockTicks = 100

// procStat reads the process's CPU time (seconds), virtual and resident
// memory (bytes) from /proc/self/stat (man 5 proc). Its second field, the
// command's name, is in parentheses and may hold spaces, so the fields are
// counted from the last ')'.
func procStat() (cpu float64, virtual, resident int64, ok bool) {
	b, err := os.ReadFile("/proc/self/stat")
	i := bytes.LastIndexByte(b, ')')
	if err != nil || i < 0 {
		return 0, 0, 0, false
	}
	f := strings.Fields(string(b[i+1:])) // f[0] is field 3, the state
	if len(f) < 22 {
		return 0, 0, 0, false
	}
	field := func(n int) int64 { // field n, counted from 1 as in the manual
		v, _ := strconv.ParseInt(f[n-3], 10, 64)
		return v
	}
	cpu = float64(field(14)+field(15)) / clockTicks // utime + stime
	return cpu, field(23), field(24) * int64(os.Getpagesize()), true
}

// maxOpenFiles reads the soft limit on open files from /proc/self/limits,
// the line "Max open files  <soft>  <hard>  files".
func maxOpenFiles() (int64, bool) {
	b, err := os.ReadFile("/proc/self/limits")
	if err != nil {
		return 0, false
	}
	for line := range strings.Lines(string(b)) {
		if rest, found := strings.CutPrefix(line, "Max open files"); found {
			f := strings.Fields(rest)
			if len(f) == 0 {
				return 0, false
			}
			n, err := strconv.ParseInt(f[0], 10, 64) // "unlimited" is no number: left out
			return n, err == nil
		}
	}
	return 0, false
}
