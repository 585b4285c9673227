// The server: every knob in one config, the one mutex over the chat, the
// routes, and how it all shuts down. This is where the story starts: each
// file after it is one idea, in the order a message meets them.
//
//	server.go     the server, its one mutex, routes, shutdown   (you are here)
//	pages.go      plain HTTP: the page, a form that posts, /messages
//	chat.go       rooms and their fan-out: the chat itself
//	events.go     the events a client sends, one handler each
//	rules.go      what a name, a room and a message may be
//	names.go      names that pass for other names
//	wire.go       every byte the server sends, encoded in one place
//	session.go    sessions: resuming, the grace period
//	outbox.go     the outbox of numbered events, and slow readers
//	websocket.go  the WebSocket transport
//	poll.go       the long-poll transport, for when WebSockets are blocked
//	speed.go      what exists only for speed and memory (skip it at first)
//	journal.go    with -data: room history on disk, across restarts
//	compact.go    the journal rewritten with only what rooms keep
//	metrics.go    the server in numbers, for Prometheus (-metrics)
//
// There is one lock for the chat, srv.mu. Every handler takes it, changes
// rooms and sessions, appends events to outboxes, and lets go. Nothing ever
// waits while holding it: sending happens elsewhere, on each connection's
// own goroutine. (With -data, a new message waits for the disk: chat.go's
// post lets go of srv.mu meanwhile.) One lock is easy to reason about, and
// a chat's critical sections are so short that it is not what limits the
// server (README, Performance).
//
// The other locks are small and each guards one thing. Where two are held
// at once, they are taken in this order, never the other way:
//
//	session.handling   one event of a session at a time (events.go: handle)
//	srv.mu             the chat
//	journal.mu         with -data, the journal's queue (append, under srv.mu)
//	session.outboxMu   a session's outbox and transport (push, under srv.mu)
//	wsConn.mu          a connection's writer state (wake, under outboxMu)
//	gatheredConn.mu    the bytes a writer gathers, and a framed message's deadline (speed.go)
package main

import (
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"path"
	"strings"
	"sync"
	"time"
)

// config holds every knob of the server. main fills it from flags
// (PROTOCOL.md section 8); tests shrink the timeouts instead of sleeping
// through them.
type config struct {
	Grace         time.Duration  // how long a session outlives its transport (30 s)
	PollTimeout   time.Duration  // how long a long-poll GET waits for an event (25 s)
	History       int            // messages kept per room (100)
	Rate          float64        // events per second per session (20)
	Burst         int            // the rate limiter's bucket size (40)
	MaxSessions   int            // live sessions (10,000)
	SessionsPerIP int            // live sessions of one client address, IPv6 by /64 (1,000)
	Outbox        int            // events kept per session for resuming (256)
	PresenceLimit int            // members above which a room is a crowd (200)
	Origins       []string       // extra origins allowed, as host patterns
	TrustProxy    []netip.Prefix // reverse proxies whose X-Forwarded-For is believed
	TypingTimeout time.Duration  // typing turns itself off after this (5 s)
	PingEvery     time.Duration  // how often the server pings a WebSocket (30 s)
	PongWait      time.Duration  // how long a ping waits for its pong (10 s); shorter than PingEvery
	MaxIdleRooms  int            // rooms kept with history but no members (1,000)
	AnswerRate    int            // bytes a second pushed to a session before its own events wait (2 MiB; outbox.go)
	AnswerBurst   int            // the bytes it may have pushed at once (8 MiB)
	Metrics       bool           // serve GET /metrics, for Prometheus (off)
	Logger        *slog.Logger
}

// defaultConfig returns the defaults of PROTOCOL.md section 8.
func defaultConfig() config {
	return config{
		Grace:         30 * time.Second,
		PollTimeout:   25 * time.Second,
		History:       100,
		Rate:          20,
		Burst:         40,
		MaxSessions:   10000,
		SessionsPerIP: 1000,
		Outbox:        256,
		PresenceLimit: 200,
		TypingTimeout: 5 * time.Second,
		PingEvery:     30 * time.Second,
		PongWait:      10 * time.Second,
		MaxIdleRooms:  1000,
		AnswerRate:    2 << 20,
		AnswerBurst:   8 << 20,
		Logger:        slog.Default(),
	}
}

// Limits of PROTOCOL.md section 7 that have no flag.
const (
	maxUsername     = 24       // characters
	maxRoomName     = 32       // characters
	maxText         = 2000     // characters
	maxRooms        = 20       // rooms per session
	maxFrame        = 16 << 10 // bytes in one client WebSocket message
	maxPollBody     = 64 << 10 // bytes in one POST /poll body, or form post
	rememberedAcks  = 256      // ack numbers a session answers again
	defaultRoomName = "general"
)

// server is the chat: an http.Handler holding every session and room.
// newServer builds it; close ends it.
type server struct {
	cfg config
	log *slog.Logger
	mux *http.ServeMux

	// ctx is the lifetime of every WebSocket connection (not r.Context(),
	// which net/http cancels in ways that have nothing to do with us).
	// close cancels it with the cause closeGoingAway.
	ctx    context.Context
	cancel context.CancelCauseFunc
	conns  sync.WaitGroup // WebSocket connections and waiting long-polls
	// writers runs the WebSocket writers (speed.go).
	writers writerPool
	// outboxLimit is the bytes one session's outbox may hold (outbox.go).
	outboxLimit int
	journal     *journal // with -data, where room messages are kept (journal.go); else nil
	// metrics are counted whether or not GET /metrics serves them: an
	// atomic add each (metrics.go).
	metrics *metrics

	// mu guards the whole chat state: the maps below and every session's
	// name, rooms, typing timers, ack answers, rate bucket and grace timer.
	// Nothing waits while holding it: a broadcast only appends to outboxes.
	// (Each session's outbox has a lock of its own, taken after mu:
	// session.go.)
	mu       sync.Mutex
	sessions map[string]*session // by sid
	perAddr  map[string]int      // live sessions by client address (clientAddress)
	names    map[string]*session // by lowercase username
	rooms    map[string]*room    // by name; kept while they have history
	idle     map[*room]struct{}  // rooms kept only for their history
	idleCap  int                 // how many of them: cfg.MaxIdleRooms, or more just after a restart (chat.go: keepHistory)
	nextID   int64               // the last message id given out
	posted   []*posting          // with -data: messages given to the journal, not yet published, by id (chat.go: post)
	formRate map[string]*bucket  // POST /send_message rate, by client IP
	closed   bool
}

// newServer builds the server and its routes. A test is
// httptest.NewServer(newServer(cfg)).
func newServer(cfg config) *server {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	srv := &server{
		cfg:         cfg,
		log:         cfg.Logger,
		mux:         http.NewServeMux(),
		sessions:    make(map[string]*session),
		perAddr:     make(map[string]int),
		names:       make(map[string]*session),
		rooms:       make(map[string]*room),
		idle:        make(map[*room]struct{}),
		formRate:    make(map[string]*bucket),
		metrics:     newMetrics(),
		outboxLimit: outboxLimit(cfg),
		idleCap:     cfg.MaxIdleRooms,
	}
	// Message ids start from the clock (microseconds, well within what a
	// JavaScript number holds exactly), so that they keep growing across a
	// restart: a client that rejoins with `since` from before it misses
	// nothing.
	srv.nextID = time.Now().UnixMicro()
	srv.ctx, srv.cancel = context.WithCancelCause(context.Background())
	srv.writers = writerPool{next: make(chan *wsConn), done: srv.ctx.Done()}

	// The story in routes: plain HTTP first (pages.go), then the two
	// transports that carry events (websocket.go, poll.go).
	srv.mux.HandleFunc("GET /{$}", srv.servePage)
	srv.mux.HandleFunc("GET /about", srv.serveAbout)
	srv.mux.HandleFunc("POST /send_message", srv.serveSendForm)
	srv.mux.HandleFunc("GET /messages", srv.serveMessages)
	srv.mux.HandleFunc("GET /ws", srv.serveWebSocket)
	srv.mux.HandleFunc("POST /poll", srv.servePollSend)
	srv.mux.HandleFunc("GET /poll", srv.servePollReceive)
	srv.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("ok\n"))
	})
	if cfg.Metrics {
		srv.mux.HandleFunc("GET /metrics", srv.serveMetrics)
	}
	return srv
}

func (srv *server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	srv.mux.ServeHTTP(w, r)
}

// track counts one more connection that close must wait for. It reports
// false once the server is closing.
func (srv *server) track() bool {
	srv.mu.Lock()
	defer srv.mu.Unlock()
	if srv.closed {
		return false
	}
	srv.conns.Add(1)
	return true
}

// close ends the server: every WebSocket is closed with 1001 (going away),
// every waiting long-poll answers at once, and every timer stops. It waits
// for the connections until ctx is done (then one goroutine stays behind,
// waiting for the stragglers: fine for a process about to exit).
func (srv *server) close(ctx context.Context) {
	srv.mu.Lock()
	srv.closed = true
	for _, s := range srv.sessions {
		stopTimer(s.grace)
		for _, t := range s.typing {
			t.Stop()
		}
	}
	// Before mu is let go: a reader that then finds srv.closed must find its
	// connection's context ended with this cause, too.
	srv.cancel(closeGoingAway)
	srv.mu.Unlock()

	done := make(chan struct{})
	go func() { srv.conns.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		srv.log.Warn("shutdown: connections still closing", "err", ctx.Err())
	}
}

// plainWriteWait bounds the writing of a plain HTTP answer (a page,
// /messages): a client that asks and does not read is cut off after it,
// rather than after the server's write timeout, which a long-poll needs to
// be long.
const plainWriteWait = 10 * time.Second

// jsonHeaders sets the headers of every JSON answer: never cached, never
// taken for anything but JSON.
func jsonHeaders(w http.ResponseWriter) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
}

// writeJSON answers with v as JSON. Like the WebSocket events, it is not
// HTML-escaped (encode in wire.go says why).
func writeJSON(w http.ResponseWriter, status int, v any) {
	jsonHeaders(w)
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	enc.Encode(v)
}

// writeError answers {"error": {"code", "message"}}.
func writeError(w http.ResponseWriter, status int, e *chatError) {
	writeJSON(w, status, struct {
		Error *chatError `json:"error"`
	}{e})
}

// writeRawJSON answers with b, which is JSON already.
func writeRawJSON(w http.ResponseWriter, status int, b []byte) {
	jsonHeaders(w)
	w.WriteHeader(status)
	w.Write(b)
}

// crossSite reports whether a state-changing request comes from another
// site: its Origin is not this host, or the browser's Sec-Fetch-Site says
// "cross-site". An origin that -origins allows is not another site, even
// though a browser there says "cross-site" too. A form on another site must
// not post as our users. (A WebSocket handshake is checked by
// coder/websocket, on its Origin alone, by the same -origins patterns.)
func (srv *server) crossSite(r *http.Request) bool {
	origin := r.Header.Get("Origin")
	u, err := url.Parse(origin)
	if origin != "" && err == nil && srv.allowedOrigin(u) {
		return false
	}
	if r.Header.Get("Sec-Fetch-Site") == "cross-site" {
		return true
	}
	if origin == "" {
		return false // not a browser, or an old one: nothing says another site
	}
	// "null" and other opaque origins have no host: another site.
	return err != nil || u.Host == "" || !strings.EqualFold(u.Host, r.Host)
}

// allowedOrigin reports whether the origin u matches a pattern of -origins.
func (srv *server) allowedOrigin(u *url.URL) bool {
	if u.Host == "" {
		return false
	}
	for _, pattern := range srv.cfg.Origins {
		target := u.Host
		if strings.Contains(pattern, "://") {
			target = u.Scheme + "://" + u.Host
		}
		if ok, _ := path.Match(strings.ToLower(pattern), strings.ToLower(target)); ok {
			return true
		}
	}
	return false
}

// clientAddress is the key under which per-address limits count a request:
// its client's IP address, or for IPv6 its /64 network, which one
// household or one cloud machine is usually handed whole. Behind a reverse
// proxy every request comes from the proxy: when it is one of
// cfg.TrustProxy, the client is the rightmost X-Forwarded-For entry that is
// not a trusted proxy itself (entries to its left could be made up by the
// client; only those added by our proxies are believed).
func (srv *server) clientAddress(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return host
	}
	ip = ip.Unmap()
	if srv.trusted(ip) {
		hops := strings.Split(strings.Join(r.Header.Values("X-Forwarded-For"), ","), ",")
		for i := len(hops) - 1; i >= 0 && srv.trusted(ip); i-- {
			hop, err := netip.ParseAddr(strings.TrimSpace(hops[i]))
			if ap, perr := netip.ParseAddrPort(strings.TrimSpace(hops[i])); perr == nil {
				hop, err = ap.Addr(), nil // some proxies add the client's port
			}
			if err != nil {
				break // not an address: believe nothing further left
			}
			ip = hop.Unmap()
		}
	}
	if ip.Is6() {
		prefix, _ := ip.Prefix(64)
		return prefix.String()
	}
	return ip.String()
}

// trusted reports whether ip is one of the reverse proxies of -trust-proxy.
// (PROTOCOL.md says their X-Forwarded-Proto is believed too: nothing here
// depends on it, since the server builds no absolute URL, and its
// redirects are relative.)
func (srv *server) trusted(ip netip.Addr) bool {
	for _, p := range srv.cfg.TrustProxy {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}
