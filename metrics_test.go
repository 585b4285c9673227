package main

// Tests of GET /metrics (metrics.go) against a real server with real
// clients: the numbers move as the chat does, and the page is the text
// exposition format, checked by a small parser here and by Prometheus's
// own promtool where it is installed.

import (
	"bytes"
	"context"
	"fmt"
	"math"
	"mime"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os/exec"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"
)

// metricsOn is startServer's edit for a server that serves /metrics.
func metricsOn(c *config) { c.Metrics = true }

// scrape fetches /metrics like Prometheus, checks the format
// (checkExposition) and returns every series by `name{labels}`.
func scrape(t *testing.T, base string) map[string]float64 {
	t.Helper()
	a := mustRequest(t, http.DefaultClient, "GET", base+"/metrics", nil, nil)
	if a.status != http.StatusOK {
		t.Fatalf("GET /metrics: got %s, want 200", a)
	}
	mt, params, _ := mime.ParseMediaType(a.header.Get("Content-Type"))
	if mt != "text/plain" || params["version"] != "0.0.4" {
		t.Errorf("GET /metrics: got Content-Type %q, want text/plain; version=0.0.4", a.header.Get("Content-Type"))
	}
	return checkExposition(t, a.body)
}

// The text format's lines (exposition_formats.md): a comment, or a sample
// `name{label="value",…} value`.
var (
	sampleLine = regexp.MustCompile(`^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*",?)*\})? (\S+)$`)
	helpLine   = regexp.MustCompile(`^# HELP ([a-zA-Z_:][a-zA-Z0-9_:]*) (\S.*)$`)
	typeLine   = regexp.MustCompile(`^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge|histogram|summary|untyped)$`)
)

// checkExposition is a small parser of the text format: every line is a
// HELP, a TYPE or a sample; every sample belongs to a metric that has both,
// given before it, once; no series repeats; a histogram's buckets only grow
// and the last, +Inf, equals its _count. It returns the series.
func checkExposition(t *testing.T, body []byte) map[string]float64 {
	t.Helper()
	series := make(map[string]float64)
	help, kind := make(map[string]bool), make(map[string]string)
	lastBucket := make(map[string]float64) // histogram → its last bucket so far
	for i, line := range strings.Split(strings.TrimSuffix(string(body), "\n"), "\n") {
		if m := helpLine.FindStringSubmatch(line); m != nil {
			if help[m[1]] {
				t.Errorf("line %d: a second HELP for %s", i+1, m[1])
			}
			help[m[1]] = true
			continue
		}
		if m := typeLine.FindStringSubmatch(line); m != nil {
			if kind[m[1]] != "" {
				t.Errorf("line %d: a second TYPE for %s", i+1, m[1])
			}
			kind[m[1]] = m[2]
			continue
		}
		m := sampleLine.FindStringSubmatch(line)
		if m == nil {
			t.Errorf("line %d: got %q, want a HELP, a TYPE or `name{labels} value`", i+1, line)
			continue
		}
		name, labels := m[1], m[2]
		v, err := strconv.ParseFloat(m[3], 64)
		if err != nil {
			t.Errorf("line %d: the value of %q is no number", i+1, line)
		}
		family := name
		if kind[name] == "" {
			for _, suffix := range []string{"_bucket", "_sum", "_count"} {
				if f, ok := strings.CutSuffix(name, suffix); ok && kind[f] == "histogram" {
					family = f
				}
			}
		}
		if kind[family] == "" || !help[family] {
			t.Errorf("line %d: %s has no HELP and TYPE before it", i+1, name)
		}
		if kind[family] == "counter" && v < 0 {
			t.Errorf("line %d: counter %s is negative", i+1, name)
		}
		key := name + labels
		if _, dup := series[key]; dup {
			t.Errorf("line %d: %s a second time", i+1, key)
		}
		series[key] = v
		switch {
		case name == family+"_bucket":
			if v < lastBucket[family] {
				t.Errorf("line %d: bucket %s below the one before (%v)", i+1, key, lastBucket[family])
			}
			lastBucket[family] = v
		case name == family+"_count":
			if inf, ok := series[family+`_bucket{le="+Inf"}`]; !ok || inf != v {
				t.Errorf("line %d: %s is %v, its +Inf bucket %v (found: %v)", i+1, name, v, inf, ok)
			}
		}
	}
	return series
}

// waitMetric scrapes until the series has the value want: the counters move
// just after the event that a client sees, not before it.
func waitMetric(t *testing.T, base, key string, want float64) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		got, ok := scrape(t, base)[key]
		if ok && got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: got %v (present: %v), want %v", key, got, ok, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestMetricsOff: without cfg.Metrics (the -metrics flag) there is no
// /metrics.
func TestMetricsOff(t *testing.T) {
	t.Parallel()
	_, ts := startServer(t, nil)
	if status, body := httpGet(t, ts.URL+"/metrics"); status != http.StatusNotFound {
		t.Errorf("GET /metrics without -metrics: got %d %q, want 404", status, body)
	}
}

// TestMetricsFlag: the real program serves /metrics with -metrics, and only
// then.
func TestMetricsFlag(t *testing.T) {
	for _, on := range []bool{true, false} {
		ctx, cancel := context.WithCancel(context.Background())
		args := []string{"-addr", "127.0.0.1:0"}
		if on {
			args = append(args, "-metrics")
		}
		base, result, _ := startRun(t, ctx, args...)
		status, _ := httpGet(t, base+"/metrics")
		if want := map[bool]int{true: 200, false: 404}[on]; status != want {
			t.Errorf("run %q: GET /metrics: got %d, want %d", args, status, want)
		}
		if on {
			scrape(t, base)
		}
		cancel()
		if err := <-result; err != nil {
			t.Errorf("run %q: %v", args, err)
		}
	}
}

// TestMetricsNames: every metric is there, and the process's figures are
// plausible.
func TestMetricsNames(t *testing.T) {
	t.Parallel()
	_, ts := startServer(t, metricsOn)
	joined(t, ts, "alice")
	got := scrape(t, ts.URL)
	want := []string{
		"chat_sessions", `chat_connections{transport="websocket"}`, `chat_connections{transport="polling"}`,
		"chat_rooms_live", "chat_rooms_kept", "chat_messages_stored_total", "chat_deliveries_total",
		"chat_written_bytes_total", "chat_transports_replaced_total",
		`chat_sessions_ended_total{reason="grace"}`, `chat_sessions_ended_total{reason="too_slow"}`,
		`chat_sessions_ended_total{reason="refused_resume"}`,
		`chat_events_refused_total{code="rate_limited"}`, `chat_events_refused_total{code="invalid_message"}`,
		`chat_websocket_batch_events_bucket{le="1"}`, `chat_websocket_batch_events_bucket{le="256"}`,
		`chat_websocket_batch_events_bucket{le="+Inf"}`, "chat_websocket_batch_events_sum", "chat_websocket_batch_events_count",
		"process_start_time_seconds", "go_goroutines", "go_memstats_heap_alloc_bytes",
	}
	if runtime.GOOS == "linux" {
		want = append(want, "process_cpu_seconds_total", "process_resident_memory_bytes",
			"process_virtual_memory_bytes", "process_open_fds", "process_max_fds")
	}
	for _, key := range want {
		if _, ok := got[key]; !ok {
			t.Errorf("no %s", key)
		}
	}
	if got["chat_sessions"] != 1 || got[`chat_connections{transport="websocket"}`] != 1 || got["chat_rooms_live"] != 1 {
		t.Errorf("one client in general: got sessions %v, websockets %v, live rooms %v, want 1 each",
			got["chat_sessions"], got[`chat_connections{transport="websocket"}`], got["chat_rooms_live"])
	}
	now := float64(time.Now().UnixMicro()) / 1e6 // not whole seconds: the process may be younger than one
	if start := got["process_start_time_seconds"]; start > now || start < now-3600 {
		t.Errorf("process_start_time_seconds: got %v, want within the hour before %v", start, now)
	}
	for _, key := range []string{"go_goroutines", "go_memstats_heap_alloc_bytes"} {
		if got[key] <= 0 {
			t.Errorf("%s: got %v, want more than 0", key, got[key])
		}
	}
	if runtime.GOOS == "linux" {
		if got["process_resident_memory_bytes"] < 1<<20 || got["process_virtual_memory_bytes"] < got["process_resident_memory_bytes"] {
			t.Errorf("got resident %v, virtual %v bytes: want at least 1 MiB, virtual the larger",
				got["process_resident_memory_bytes"], got["process_virtual_memory_bytes"])
		}
		if got["process_open_fds"] < 3 || got["process_max_fds"] < got["process_open_fds"] {
			t.Errorf("got %v open files of at most %v", got["process_open_fds"], got["process_max_fds"])
		}
	}
}

// TestMetricsMessage: one message sent to a room of two is stored once,
// delivered twice (one WebSocket write each), and its bytes are counted.
func TestMetricsMessage(t *testing.T) {
	t.Parallel()
	_, ts := startServer(t, metricsOn)
	alice := joined(t, ts, "alice")
	bob := joined(t, ts, "bob")
	alice.expect("user_joined")
	// alice: room_joined, user_joined; bob: room_joined (welcome has no seq,
	// and is no delivery).
	waitMetric(t, ts.URL, "chat_deliveries_total", 3)
	before := scrape(t, ts.URL)

	text := strings.Repeat("metrics ", 20)
	alice.emit("send_message", map[string]any{"text": text}, 0) // no ack: one event for each member
	alice.expect("new_message")
	bob.expect("new_message")
	waitMetric(t, ts.URL, "chat_deliveries_total", 5)
	after := scrape(t, ts.URL)

	grew := func(key string) float64 { return after[key] - before[key] }
	if got := grew("chat_messages_stored_total"); got != 1 {
		t.Errorf("chat_messages_stored_total grew by %v, want 1", got)
	}
	if got := grew("chat_written_bytes_total"); got < float64(2*len(text)) {
		t.Errorf("chat_written_bytes_total grew by %v, want at least twice the text, %d", got, 2*len(text))
	}
	if got := grew("chat_websocket_batch_events_count"); got != 2 {
		t.Errorf("chat_websocket_batch_events_count grew by %v, want 2 (one write to each member)", got)
	}
	if got := grew(`chat_websocket_batch_events_bucket{le="1"}`); got != 2 {
		t.Errorf(`chat_websocket_batch_events_bucket{le="1"} grew by %v, want 2`, got)
	}
	if got := grew("chat_websocket_batch_events_sum"); got != 2 {
		t.Errorf("chat_websocket_batch_events_sum grew by %v, want 2", got)
	}
}

// TestMetricsJournal: with -data, the journal's fsyncs are counted, one
// per batch; without it there is no such series.
func TestMetricsJournal(t *testing.T) {
	t.Parallel()
	for _, data := range []bool{false, true} {
		ctx, cancel := context.WithCancel(context.Background())
		args := []string{"-addr", "127.0.0.1:0", "-metrics"}
		if data {
			args = append(args, "-data", t.TempDir())
		}
		base, result, _ := startRun(t, ctx, args...)
		ts := &httptest.Server{URL: base}
		alice := joined(t, ts, "alice")
		for i := range 3 {
			if r := alice.call("send_message", map[string]any{"text": fmt.Sprint("kept ", i)}); !r.OK {
				t.Fatalf("send_message: %s", r.raw)
			}
		}
		got := scrape(t, base)
		syncs, ok := got["chat_journal_fsyncs_total"]
		if data && (syncs < 1 || syncs > 3) {
			t.Errorf("with -data: chat_journal_fsyncs_total %v (present %v), want 1 to 3 for 3 messages", syncs, ok)
		}
		if !data && ok {
			t.Errorf("without -data: chat_journal_fsyncs_total is there")
		}
		alice.close()
		cancel()
		if err := <-result; err != nil {
			t.Errorf("run %q: %v", args, err)
		}
	}
}

// TestMetricsRefused: every error answer is counted by its code, the rate
// limit's included.
func TestMetricsRefused(t *testing.T) {
	t.Parallel()
	_, ts := startServer(t, func(c *config) { c.Metrics, c.Rate, c.Burst = true, 0.001, 3 })
	c := joined(t, ts, "alice")
	for _, call := range []struct {
		event string
		data  any
		code  string
	}{
		{"send_message", map[string]any{"text": " "}, "invalid_message"},
		{"join_room", map[string]any{"room": "no room"}, "invalid_room"},
		{"nope", nil, "unknown_event"},
		{"echo_message", nil, "rate_limited"}, // the bucket of 3 is empty
	} {
		if r := c.call(call.event, call.data); r.Error.Code != call.code {
			t.Fatalf("%s: got %+v, want %s", call.event, r, call.code)
		}
	}
	got := scrape(t, ts.URL) // counted before the answers were sent
	for _, code := range []string{"invalid_message", "invalid_room", "unknown_event", "rate_limited"} {
		if key := `chat_events_refused_total{code="` + code + `"}`; got[key] != 1 {
			t.Errorf("%s: got %v, want 1", key, got[key])
		}
	}
	if key := `chat_events_refused_total{code="other"}`; got[key] != 0 {
		t.Errorf("%s: got %v, want 0: a code is missing from newMetrics", key, got[key])
	}
}

// TestMetricsSessionEnds: each way a session ends is counted by its
// reason; a replaced transport is no end.
func TestMetricsSessionEnds(t *testing.T) {
	t.Parallel()
	t.Run("grace", func(t *testing.T) {
		t.Parallel()
		_, ts := startServer(t, func(c *config) { c.Metrics, c.Grace = true, 50*time.Millisecond })
		joined(t, ts, "alice").drop()
		waitMetric(t, ts.URL, `chat_sessions_ended_total{reason="grace"}`, 1)
		waitMetric(t, ts.URL, "chat_sessions", 0)
	})
	t.Run("too_slow", func(t *testing.T) {
		t.Parallel()
		_, ts := startServer(t, func(c *config) { c.Metrics, c.Outbox, c.Grace = true, 4, time.Minute })
		alice := joined(t, ts, "alice")
		bob := joined(t, ts, "bob")
		// bob, whose outbox is as small, leaves: alice's end sends him no
		// user_left that could make him too slow as well.
		bob.call("leave_room", map[string]any{"room": "general"})
		alice.drop()
		waitMetric(t, ts.URL, `chat_connections{transport="websocket"}`, 1) // alice is detached
		// More than alice's outbox holds:
		for range 5 {
			bob.call("private_message", map[string]any{"to": "alice", "text": "hi"})
		}
		waitMetric(t, ts.URL, `chat_sessions_ended_total{reason="too_slow"}`, 1)
	})
	t.Run("refused_resume", func(t *testing.T) {
		t.Parallel()
		_, ts := startServer(t, func(c *config) { c.Metrics, c.Outbox, c.Grace = true, 4, time.Minute })
		alice := joined(t, ts, "alice")
		for range 3 { // echo_response and ack: seq 2 to 7; the outbox keeps 4 to 7
			alice.call("echo_message", "x")
		}
		again := dialQuery(t, ts, url.Values{"sid": {alice.sid}, "after": {"1"}}, 0)
		if bytes.Contains(again.welcome.Data, []byte(`"resumed":true`)) {
			t.Fatalf("resume from seq 1 of 7 with 4 kept: got %s, want a new session", again.welcome)
		}
		waitMetric(t, ts.URL, `chat_sessions_ended_total{reason="refused_resume"}`, 1)
	})
	t.Run("replaced", func(t *testing.T) {
		t.Parallel()
		_, ts := startServer(t, metricsOn)
		alice := joined(t, ts, "alice")
		dialQuery(t, ts, url.Values{"sid": {alice.sid}, "after": {fmt.Sprint(alice.seq())}}, alice.seq())
		if code, reason := alice.closeStatus(); code != 4000 {
			t.Errorf("the replaced connection: got %d %q, want 4000", code, reason)
		}
		got := scrape(t, ts.URL) // counted before the new connection's welcome
		if got["chat_transports_replaced_total"] != 1 {
			t.Errorf("chat_transports_replaced_total: got %v, want 1", got["chat_transports_replaced_total"])
		}
		for _, reason := range []string{"grace", "too_slow", "refused_resume"} {
			if key := `chat_sessions_ended_total{reason="` + reason + `"}`; got[key] != 0 {
				t.Errorf("%s: got %v, want 0: the session goes on", key, got[key])
			}
		}
	})
}

// TestMetricsConnections: the connection gauges follow WebSockets as they
// open and close, and long-poll GETs as they wait and are answered.
func TestMetricsConnections(t *testing.T) {
	t.Parallel()
	_, ts := startServer(t, metricsOn)
	const websockets, polling = `chat_connections{transport="websocket"}`, `chat_connections{transport="polling"}`
	alice := joined(t, ts, "alice")
	bob := joined(t, ts, "bob")
	waitMetric(t, ts.URL, websockets, 2)
	bob.close()
	waitMetric(t, ts.URL, websockets, 1)

	carol := pollJoined(t, ts, "carol")
	waitMetric(t, ts.URL, polling, 0) // the GETs that read room_joined have been answered
	// alice: room_joined, user_joined twice; bob and carol: room_joined
	// (carol's joining, sent to bob's session, waits in its outbox).
	waitMetric(t, ts.URL, "chat_deliveries_total", 5)
	answer := carol.getAsync(carol.after)
	waitMetric(t, ts.URL, polling, 1)
	alice.emit("send_message", map[string]any{"text": "hi carol"}, 0)
	res := <-answer
	if res.err != nil {
		t.Fatalf("GET: %v", res.err)
	}
	if list := carol.checkEvents(res.a, carol.after); len(list) != 1 || list[0].Event != "new_message" {
		t.Fatalf("GET: got %v, want one new_message", list)
	}
	waitMetric(t, ts.URL, polling, 0)
	waitMetric(t, ts.URL, "chat_deliveries_total", 7) // the message to carol and to alice
	alice.close()
	waitMetric(t, ts.URL, websockets, 0)
}

// TestMetricsRooms: rooms with members are live; one left empty with
// history is kept.
func TestMetricsRooms(t *testing.T) {
	t.Parallel()
	_, ts := startServer(t, metricsOn)
	c := joined(t, ts, "alice")
	c.call("join_room", map[string]any{"room": "lobby"})
	c.call("send_message", map[string]any{"room": "lobby", "text": "anyone?"})
	got := scrape(t, ts.URL)
	if got["chat_rooms_live"] != 2 || got["chat_rooms_kept"] != 0 {
		t.Errorf("in general and lobby: got %v live, %v kept, want 2 and 0", got["chat_rooms_live"], got["chat_rooms_kept"])
	}
	c.call("leave_room", map[string]any{"room": "lobby"})
	got = scrape(t, ts.URL)
	if got["chat_rooms_live"] != 1 || got["chat_rooms_kept"] != 1 {
		t.Errorf("lobby left with a message: got %v live, %v kept, want 1 and 1", got["chat_rooms_live"], got["chat_rooms_kept"])
	}
}

// TestMetricsPromtool: Prometheus's own checker, promtool, passes the page
// of a server that has seen some traffic. It is skipped where promtool is
// not installed (Debian: apt-get install prometheus).
func TestMetricsPromtool(t *testing.T) {
	t.Parallel()
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Skip("promtool is not installed")
	}
	_, ts := startServer(t, func(c *config) { c.Metrics, c.Rate, c.Burst = true, 0.001, 1 })
	alice := joined(t, ts, "alice")
	carol := pollJoined(t, ts, "carol")
	alice.call("send_message", map[string]any{"text": "hello"})
	alice.call("send_message", map[string]any{"text": "hello again"}) // rate_limited
	carol.waitFor("new_message")
	a := mustRequest(t, http.DefaultClient, "GET", ts.URL+"/metrics", nil, nil)
	checkExposition(t, a.body)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, promtool, "check", "metrics")
	cmd.Stdin = bytes.NewReader(a.body)
	if out, err := cmd.CombinedOutput(); err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("promtool check metrics: %v\n%s\nthe page:\n%s", err, out, a.body)
	}
}

// TestBatchSizesBuckets: observe puts each size in the smallest bucket
// whose bound holds it.
func TestBatchSizesBuckets(t *testing.T) {
	t.Parallel()
	for n, want := range map[int64]int{1: 0, 2: 1, 3: 2, 4: 2, 5: 3, 8: 3, 9: 4, 128: 7, 129: 8, 256: 8, 257: 9, math.MaxInt32: 9} {
		var h batchSizes
		h.observe(n)
		if h.counts[want].Load() != 1 || h.sum.Load() != n {
			var got []int64
			for i := range h.counts {
				got = append(got, h.counts[i].Load())
			}
			t.Errorf("observe(%d): got buckets %v, want it in bucket %d", n, got, want)
		}
	}
}

// TestMetricsCountingAllocates: counting on a message's path (a write, an
// error answer, a session's end) allocates nothing.
func TestMetricsCountingAllocates(t *testing.T) {
	m := newMetrics()
	allocs := testing.AllocsPerRun(100, func() {
		m.wroteBatch(3)
		m.written.Add(100)
		m.stored.Add(1)
		m.refused.add("rate_limited")
		m.ended.add(string(endGrace))
	})
	if allocs != 0 {
		t.Errorf("got %v allocations per count, want 0", allocs)
	}
}
